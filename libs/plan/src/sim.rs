//! Discrete-event simulation of the three strategies on a suite whose true durations are
//! known, for the `bench-sharding` benchmark and for tests. Pure and deterministic.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::{Batch, History, Ms, Strategy, TestId, count_split, duration_plan, queue_batches};

/// The simulated environment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Number of shards (`count`, `duration`) or workers (`queue`).
    pub m: usize,
    /// Cost of dispatching one queue batch (fetch, ack, result upload), per batch.
    pub per_batch_overhead_ms: f64,
    /// Cost of starting a shard or worker (pod start, runner start), paid once by each, for
    /// every strategy.
    pub per_shard_start_ms: f64,
}

/// The time at which the last worker finishes, for `suite` (ids, unique, with their true
/// durations, in listing order) planned from `estimates`:
///
/// - `count`: contiguous shards of the listing; each costs the start plus its true sum.
/// - `duration`: the [`duration_plan`] on the estimates (what the scheduler ships): each
///   shard runs its head (the start plus its true sum), then takes the next tail batch
///   whenever it is free, paying the batch's true sum plus the per-batch overhead. Without a
///   tail this is the static longest-first plan.
/// - `queue`: [`queue_batches`] on the estimates; each worker, after the start, takes the next
///   batch whenever it is free, paying the batch's true sum plus the per-batch overhead.
pub fn makespan(
    suite: &[(TestId, f64)],
    estimates: &History,
    strategy: Strategy,
    config: &Config,
) -> f64 {
    let m = config.m.max(1);
    let start = config.per_shard_start_ms;
    let actual: HashMap<&str, f64> = suite.iter().map(|(id, d)| (id.as_str(), *d)).collect();
    let cost = |tests: &[TestId]| -> f64 {
        tests
            .iter()
            .map(|id| actual.get(id.as_str()).copied().unwrap_or(0.0))
            .sum()
    };
    let longest_shard = |sums: Vec<f64>| start + sums.into_iter().fold(0.0, f64::max);
    match strategy {
        Strategy::Count => longest_shard(
            count_split(suite.len(), m)
                .iter()
                .map(|shard| shard.iter().map(|&i| suite[i].1).sum())
                .collect(),
        ),
        Strategy::Duration => {
            let ids: Vec<TestId> = suite.iter().map(|(id, _)| id.clone()).collect();
            let plan = duration_plan(&ids, estimates, m, config.per_batch_overhead_ms);
            let heads: Vec<f64> = plan.head.shards.iter().map(|s| start + cost(s)).collect();
            drain(&heads, &plan.tail, config.per_batch_overhead_ms, &cost)
        }
        Strategy::Queue => {
            let ids: Vec<TestId> = suite.iter().map(|(id, _)| id.clone()).collect();
            let batches = queue_batches(&ids, estimates, m, config.per_batch_overhead_ms);
            drain(
                &vec![start; m],
                &batches,
                config.per_batch_overhead_ms,
                &cost,
            )
        }
    }
}

/// Workers free at `free_at[w]` take `batches` in order, each when it is the first free one;
/// returns when the last one finishes (the latest `free_at` when there are no batches).
fn drain(
    free_at: &[f64],
    batches: &[Batch],
    per_batch_overhead_ms: f64,
    cost: &dyn Fn(&[TestId]) -> f64,
) -> f64 {
    let mut free: BinaryHeap<Reverse<(Ms, usize)>> = free_at
        .iter()
        .enumerate()
        .map(|(w, &at)| Reverse((Ms(at), w)))
        .collect();
    let mut finish = free_at.iter().copied().fold(0.0, f64::max);
    for batch in batches {
        let Some(Reverse((Ms(at), w))) = free.pop() else {
            break;
        };
        let done = at + cost(&batch.tests) + per_batch_overhead_ms;
        finish = finish.max(done);
        free.push(Reverse((Ms(done), w)));
    }
    finish
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Estimate, lower_bound};
    use proptest::prelude::{prop_assert, proptest};

    fn suite(durations: &[f64]) -> Vec<(TestId, f64)> {
        durations
            .iter()
            .enumerate()
            .map(|(i, &d)| (format!("t{i:03}"), d))
            .collect()
    }

    fn exact(suite: &[(TestId, f64)]) -> History {
        suite
            .iter()
            .map(|(id, d)| (id.clone(), Estimate::exact(*d)))
            .collect()
    }

    const CONFIG: Config = Config {
        m: 2,
        per_batch_overhead_ms: 0.0,
        per_shard_start_ms: 10.0,
    };

    #[test]
    fn strategies_on_a_small_suite() {
        // Listing order puts both long tests in the first half.
        let s = suite(&[100.0, 100.0, 1.0, 1.0]);
        let h = exact(&s);
        assert_eq!(makespan(&s, &h, Strategy::Count, &CONFIG), 210.0);
        assert_eq!(makespan(&s, &h, Strategy::Duration, &CONFIG), 111.0);
        assert_eq!(makespan(&s, &h, Strategy::Queue, &CONFIG), 111.0);
        let overhead = Config {
            per_batch_overhead_ms: 1.0,
            ..CONFIG
        };
        // The 1 % floor (100 ms) gives batches [100], [100], [1, 1]: 10 + 100 + 1, then
        // 111 + 2 + 1 on the first free worker.
        assert_eq!(makespan(&s, &h, Strategy::Queue, &overhead), 114.0);
        assert_eq!(makespan(&[], &h, Strategy::Queue, &CONFIG), 10.0);
    }

    proptest! {
        #[test]
        fn no_strategy_beats_the_lower_bound(
            durations in proptest::collection::vec(0.0f64..1000.0, 0..60),
            m in 1usize..10,
        ) {
            let s = suite(&durations);
            let config = Config { m, per_batch_overhead_ms: 1.0, per_shard_start_ms: 5.0 };
            let lb = lower_bound(&durations, m);
            for strategy in [Strategy::Count, Strategy::Duration, Strategy::Queue] {
                for history in [exact(&s), History::new()] {
                    let makespan = makespan(&s, &history, strategy, &config);
                    prop_assert!(makespan + 1e-6 >= lb + 5.0, "{strategy}: {makespan} < {lb}");
                }
            }
        }
    }
}
