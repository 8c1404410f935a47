//! The `duration` strategy with a shared tail.
//!
//! A static longest-first plan is only as good as its estimates: with history noisy by tens
//! of percent, one shard's planned work comes out a few percent longer than another's and the
//! makespan misses the lower bound by that much. So the plan keeps the shortest tests (about
//! [`TAIL_FRACTION`] of the estimated work) out of the static part: the rest (the *head*) is
//! split longest-first onto the shards, and the tail becomes a per-execution work queue, in
//! batches longest first, that every shard drains after its own head. The shards that finish
//! their heads early take more of the tail, which absorbs the estimates' errors.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::queue::{OVERHEAD_FACTOR, cut_batches};
use crate::split::{assign, lpt_order};
use crate::{Batch, History, Plan, TestId, stable_hash};

/// Share of the estimated work kept out of the static plan and served from the shared queue
/// (the shortest tests). Measured by `bench-sharding`: enough to absorb ±30 % estimates.
pub const TAIL_FRACTION: f64 = 0.20;

/// A tail is used only when there are at least this many planned tests per shard, and the
/// tail itself holds at least one test per shard: with fewer, the longest tests dominate the
/// makespan and a queue only adds dispatch cost.
pub const TAIL_MIN_TESTS_PER_SHARD: usize = 4;

/// A `duration` plan: `head.shards[i]` runs on shard `i` first, then every shard drains the
/// `tail` batches (longest first) from the shared queue. `tail` is empty when the plan has no
/// tail (no history, one shard, or too few tests), which is a purely static plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DurationPlan {
    pub head: Plan,
    pub tail: Vec<Batch>,
}

impl DurationPlan {
    /// The tests of the tail, in queue order.
    pub fn tail_ids(&self) -> impl Iterator<Item = &str> {
        self.tail
            .iter()
            .flat_map(|b| b.tests.iter().map(String::as_str))
    }

    /// Every test the plan knows, head then tail.
    pub fn all_ids(&self) -> impl Iterator<Item = &str> {
        self.head
            .shards
            .iter()
            .flatten()
            .map(String::as_str)
            .chain(self.tail_ids())
    }

    /// Estimated work in the tail.
    pub fn tail_ms(&self) -> f64 {
        self.tail.iter().map(|b| b.expected_ms).sum()
    }
}

/// The `duration` plan of `tests` on `m` shards: the tests (deduplicated) in longest-first
/// order (ties by id; unknown tests weigh the mean of the known ones), the shortest of them
/// holding at most [`TAIL_FRACTION`] of the estimated work form the tail, the others are
/// assigned longest-first to the least-loaded shard (the [`crate::lpt`] rule), and the tail
/// is cut into queue batches like [`crate::queue_batches`] cuts a queue (finer towards the
/// end), but with a minimum batch of `per_batch_overhead_ms` × 100 × [`TAIL_FRACTION`]: the
/// tail's dispatch overhead stays under 1 % of the whole suite's estimated work.
///
/// No tail when `m` is 1, when the history knows none of the tests, when there are fewer
/// than [`TAIL_MIN_TESTS_PER_SHARD`] tests per shard, or when the tail would hold fewer
/// tests than there are shards: the plan is then [`crate::lpt`] itself. Deterministic and
/// independent of the order of `tests`.
pub fn duration_plan(
    tests: &[TestId],
    history: &History,
    m: usize,
    per_batch_overhead_ms: f64,
) -> DurationPlan {
    let m = m.max(1);
    let order = lpt_order(tests, history);
    let cut = tail_start(&order, history, m);
    let head = assign(&order[..cut], m);
    let tail_ids: Vec<TestId> = order[cut..].iter().map(|&(id, _)| id.to_owned()).collect();
    let tail = if tail_ids.is_empty() {
        Vec::new()
    } else {
        // The tail is the end of the run, where batch size is what is left unbalanced; it is
        // also a fifth of the work, so batches a fifth of the queue strategy's minimum still
        // keep the dispatch overhead under 1 % of the whole suite's work.
        cut_batches(
            &tail_ids,
            history,
            m,
            per_batch_overhead_ms,
            OVERHEAD_FACTOR * TAIL_FRACTION,
        )
    };
    DurationPlan { head, tail }
}

/// Where the tail starts in `order` (longest first): `order.len()` for no tail.
fn tail_start(order: &[(&str, f64)], history: &History, m: usize) -> usize {
    let n = order.len();
    let known = order.iter().any(|(id, _)| history.get(id).is_some());
    if m < 2 || !known || n < TAIL_MIN_TESTS_PER_SHARD * m {
        return n;
    }
    let total: f64 = order.iter().map(|&(_, e)| e).sum();
    if total.is_nan() || total <= 0.0 {
        return n;
    }
    let budget = TAIL_FRACTION * total;
    let (mut cut, mut sum) = (n, 0.0);
    while cut > 0 && sum + order[cut - 1].1 <= budget {
        sum += order[cut - 1].1;
        cut -= 1;
    }
    if n - cut < m { n } else { cut }
}

/// The listed tests whose [`stable_hash`] is one of `hashes`, in the order of `hashes` (a
/// tail batch as a runner receives it: hashes, so the shard job stays small). A hash no
/// listed test has is skipped (the test is gone); a listed id appears once.
pub fn resolve_hashes(listed: &[TestId], hashes: &[u64]) -> Vec<TestId> {
    let wanted: HashSet<u64> = hashes.iter().copied().collect();
    let mut by_hash: HashMap<u64, Vec<&str>> = HashMap::new();
    let mut seen = HashSet::with_capacity(listed.len());
    for id in listed {
        if !seen.insert(id.as_str()) {
            continue;
        }
        let h = stable_hash(id);
        if wanted.contains(&h) {
            by_hash.entry(h).or_default().push(id.as_str());
        }
    }
    let mut out = Vec::new();
    for h in hashes {
        if let Some(ids) = by_hash.remove(h) {
            out.extend(ids.into_iter().map(str::to_owned));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{history, ids};
    use crate::{Estimate, LeaseQueue, lpt, queue_batches, share_from_hashes};
    use proptest::prelude::*;

    #[test]
    fn shortest_tests_up_to_the_fraction_form_the_tail() {
        // 3 long tests and 9 short ones on 2 shards: 900+500+400 = 1800, shorts 9 x 100 =
        // 900; total 2700, tail budget 540: the 5 shortest (ties by id, the last ones).
        let mut d = vec![900.0, 500.0, 400.0];
        d.extend([100.0; 9]);
        let p = duration_plan(&ids(12), &history(&d), 2, 0.0);
        let tail: Vec<&str> = p.tail_ids().collect();
        assert_eq!(tail, ["t007", "t008", "t009", "t010", "t011"]);
        assert_eq!(p.tail_ms(), 500.0);
        // Head: LPT of the rest, 900+100+100 | 500+400+100+100 = 1100 | 1100.
        assert_eq!(p.head.expected_ms, vec![1100.0, 1100.0]);
        assert_eq!(p.all_ids().count(), 12);
        // Tail batches are a queue: longest first, numbered from 0.
        assert!(p.tail.iter().enumerate().all(|(i, b)| b.seq as usize == i));
    }

    #[test]
    fn no_tail_without_history_one_shard_or_too_few_tests() {
        let d = vec![100.0; 40];
        let h = history(&d);
        assert!(
            duration_plan(&ids(40), &History::new(), 4, 5.0)
                .tail
                .is_empty()
        );
        assert!(duration_plan(&ids(40), &h, 1, 5.0).tail.is_empty());
        // A tail of 8 tests (20 % of 40 equal tests) for 8 shards; not for 9 (fewer tail
        // tests than shards), nor for 11 (fewer than 4 tests per shard).
        assert_eq!(duration_plan(&ids(40), &h, 8, 5.0).tail_ids().count(), 8);
        assert!(duration_plan(&ids(40), &h, 9, 5.0).tail.is_empty());
        assert!(duration_plan(&ids(40), &h, 11, 5.0).tail.is_empty());
        // Without a tail the plan is LPT itself.
        let p = duration_plan(&ids(40), &h, 11, 5.0);
        assert_eq!(p.head, lpt(&ids(40), &h, 11));
        // One long test and tiny ones: every tiny test is in the tail, some shards start on it.
        let mut skew = vec![10_000.0];
        skew.extend([1.0; 15]);
        let p = duration_plan(&ids(16), &history(&skew), 4, 0.0);
        assert_eq!(
            p.tail_ids().count(),
            15,
            "15 tiny tests fit the budget: {p:?}"
        );
    }

    #[test]
    fn tail_batches_are_finer_than_queue_batches_within_one_percent_overhead() {
        // 200 tests of 300 ms on 8 shards, 5 ms per batch: a queue's batches are at least
        // 500 ms (two tests); the tail's at least 100 ms, so its end is single tests (both
        // start larger: guided self-scheduling).
        let d = vec![300.0; 200];
        let h = history(&d);
        let p = duration_plan(&ids(200), &h, 8, 5.0);
        assert_eq!(p.tail_ids().count(), 40);
        let singles = p
            .tail
            .iter()
            .rev()
            .take_while(|b| b.tests.len() == 1)
            .count();
        assert!(singles >= 8, "{:?}", p.tail);
        let queue = queue_batches(&ids(40), &h, 8, 5.0);
        assert!(
            queue.iter().rev().skip(1).all(|b| b.tests.len() >= 2),
            "{queue:?}"
        );
        // Dispatch overhead of the tail: under 1 % of the suite's work.
        assert!(p.tail.len() as f64 * 5.0 <= 0.01 * 200.0 * 300.0);
    }

    #[test]
    fn unknown_tests_weigh_the_mean() {
        // Known: 10 x 1000 and 10 x 10 (mean 505): the unknown test is planned exactly like a
        // known one of 505 ms, wherever that puts it (here: the tail).
        let mut d = vec![1000.0; 10];
        d.extend([10.0; 10]);
        let mut tests = ids(20);
        tests.push("new".into());
        let h = history(&d);
        let p = duration_plan(&tests, &h, 2, 0.0);
        let mut known = h.clone();
        known.insert("new", Estimate::exact(505.0));
        assert_eq!(p, duration_plan(&tests, &known, 2, 0.0));
        assert!(p.tail_ids().any(|t| t == "new"), "{p:?}");
    }

    #[test]
    fn resolve_hashes_follows_the_hash_order_and_skips_gone_tests() {
        let listed: Vec<TestId> = ["a", "b", "c", "b"].map(String::from).to_vec();
        let hashes = [stable_hash("c"), stable_hash("gone"), stable_hash("a")];
        assert_eq!(resolve_hashes(&listed, &hashes), ["c", "a"]);
        assert!(resolve_hashes(&listed, &[]).is_empty());
    }

    fn arb_suite() -> impl Strategy<Value = (Vec<TestId>, History)> {
        proptest::collection::vec(("[a-h]{1,3}", proptest::option::of(0.0f64..1000.0)), 0..120)
            .prop_map(|entries| {
                let tests: Vec<TestId> = entries.iter().map(|(id, _)| id.clone()).collect();
                let history = entries
                    .iter()
                    .filter_map(|(id, d)| d.map(|d| (id.clone(), Estimate::exact(d))))
                    .collect();
                (tests, history)
            })
    }

    fn sorted_unique(tests: &[TestId]) -> Vec<TestId> {
        let mut v = tests.to_vec();
        v.sort();
        v.dedup();
        v
    }

    /// One step of a random run of the tail queue.
    #[derive(Debug, Clone)]
    enum Op {
        Take(usize),
        Complete(usize),
        /// The worker dies holding its batch; its old self may complete it later (a zombie).
        Die(usize),
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..8).prop_map(Op::Take),
            4 => (0usize..8).prop_map(Op::Complete),
            1 => (0usize..8).prop_map(Op::Die),
            2 => (1u64..80).prop_map(Op::Tick),
        ]
    }

    proptest! {
        #[test]
        fn every_test_is_planned_once_deterministically(
            (tests, history) in arb_suite(),
            m in 0usize..12,
            overhead in 0.0f64..20.0,
        ) {
            let p = duration_plan(&tests, &history, m, overhead);
            prop_assert_eq!(p.head.shards.len(), m.max(1));
            let mut all: Vec<TestId> = p.all_ids().map(str::to_owned).collect();
            all.sort();
            prop_assert_eq!(all, sorted_unique(&tests));
            prop_assert!(p.tail.iter().all(|b| !b.tests.is_empty()));
            prop_assert_eq!(&duration_plan(&tests, &history, m, overhead), &p);
            let mut reversed = tests.clone();
            reversed.reverse();
            prop_assert_eq!(&duration_plan(&reversed, &history, m, overhead), &p);
            // The tail is the shortest work, within its share of the total.
            let fallback = history.fallback_ms();
            let est = |id: &str| history.estimate_ms(id, fallback);
            let total: f64 = p.all_ids().map(est).sum();
            prop_assert!(p.tail_ms() <= TAIL_FRACTION * total + 1e-6);
            let longest_tail = p.tail_ids().map(est).fold(0.0, f64::max);
            let shortest_head = p.head.shards.iter().flatten().map(|t| est(t)).fold(f64::INFINITY, f64::min);
            prop_assert!(longest_tail <= shortest_head);
            if !p.tail.is_empty() {
                prop_assert!(m >= 2 && p.tail_ids().count() >= m);
            }
        }

        /// What the runners do: each lists the tests (some planned ones gone, new ones
        /// added), runs its head share (new tests by hash), and the tail is filled from the
        /// listing by hash; random worker deaths and stalls while the tail drains. Every
        /// listed test runs exactly once.
        #[test]
        fn head_and_tail_run_every_listed_test_exactly_once_under_worker_deaths(
            (planned, history) in arb_suite(),
            extra in proptest::collection::vec("[a-j]{1,4}", 0..30),
            m in 1usize..8,
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let p = duration_plan(&planned, &history, m, 1.0);
            let hashes: HashSet<u64> = p.all_ids().map(stable_hash).collect();
            let listed: Vec<TestId> = planned.iter().step_by(2).cloned().chain(extra).collect();
            let mut ran: Vec<TestId> = p.head.shards.iter().enumerate()
                .flat_map(|(i, own)| share_from_hashes(&listed, own, &hashes, i, m))
                .collect();
            let batches: Vec<Batch> = p.tail.iter()
                .map(|b| Batch {
                    tests: resolve_hashes(&listed, &b.tests.iter().map(|t| stable_hash(t)).collect::<Vec<_>>()),
                    ..b.clone()
                })
                .collect();
            let lease = 50;
            let mut queue = LeaseQueue::new(batches, lease).unwrap();
            let workers = m;
            let (mut now, mut holding, mut generation) = (0u64, vec![None; workers], vec![0u32; workers]);
            let mut zombies: Vec<(String, Batch)> = Vec::new();
            let name = |w: usize, g: &[u32]| format!("w{w}.{}", g[w]);
            let mut step = |op: &Op, queue: &mut LeaseQueue, ran: &mut Vec<TestId>| match *op {
                Op::Take(w) => {
                    let w = w % workers;
                    if holding[w].is_none() {
                        holding[w] = queue.take(&name(w, &generation), now);
                    }
                }
                Op::Complete(w) => {
                    let w = w % workers;
                    if let Some(b) = holding[w].take() {
                        if queue.complete(&name(w, &generation), b.seq) {
                            ran.extend(b.tests);
                        }
                    } else if let Some((zombie, b)) = zombies.pop()
                        && queue.complete(&zombie, b.seq)
                    {
                        ran.extend(b.tests);
                    }
                }
                Op::Die(w) => {
                    let w = w % workers;
                    if let Some(b) = holding[w].take() {
                        zombies.push((name(w, &generation), b));
                    }
                    generation[w] += 1;
                }
                Op::Tick(dt) => {
                    now += dt;
                    queue.expire(now);
                }
            };
            for op in &ops {
                step(op, &mut queue, &mut ran);
            }
            let mut rounds = 0;
            while !queue.is_drained() {
                rounds += 1;
                prop_assert!(rounds < 10_000, "tail did not drain");
                for w in 0..workers {
                    step(&Op::Complete(w), &mut queue, &mut ran);
                    step(&Op::Take(w), &mut queue, &mut ran);
                }
                step(&Op::Tick(lease / 2), &mut queue, &mut ran);
            }
            ran.sort();
            prop_assert_eq!(ran, sorted_unique(&listed));
        }
    }
}
