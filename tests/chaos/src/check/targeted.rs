//! The invariants of the targeted scenarios (6 to 8), judged from what each round recorded:
//! the tests' own run log, the store, and the shard statuses, jobs and plan records seen
//! on the bus.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use assay_proto::ExecutionStatus;

use super::{Db, Verdict, verdict};

/// The bar for orphaned shards: running again within this long after a replacement
/// launcher started.
pub const ORPHAN_BOUND_MS: i64 = 5_000;

/// One run of one test, as the test script logged it (`runs.log`: `execution shard attempt
/// test batch` per line, `batch` unique per invocation of the script).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub execution: String,
    pub shard: u32,
    pub attempt: u32,
    pub test: String,
    pub batch: String,
}

/// Parses the run log; a torn or foreign line is skipped.
pub fn parse_runs(text: &str) -> Vec<Run> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let run = Run {
                execution: f.next()?.to_string(),
                shard: f.next()?.parse().ok()?,
                attempt: f.next()?.parse().ok()?,
                test: f.next()?.to_string(),
                batch: f.next()?.to_string(),
            };
            f.next().is_none().then_some(run)
        })
        .collect()
}

/// A held-batches round: its execution, what the nats-server restart hit, and what the
/// runners said of redelivered batches in their system log.
#[derive(Debug, Clone, Default)]
pub struct HeldRound {
    pub execution: String,
    /// Whether nats-server was killed and restarted during the execution.
    pub restarted: bool,
    /// Busy runners of the execution (each holding a batch) at the kill.
    pub held_at_kill: usize,
    /// From the kill until the new nats-server listened (ms).
    pub outage_ms: Option<i64>,
    /// Redelivered batches a runner left to their live holder.
    pub left_to_holder: usize,
    /// Batches a runner took over because their claim had expired.
    pub takeovers: usize,
    /// Redelivered copies of batches that had already reported, dropped.
    pub dropped_done: usize,
    /// Runners that could not claim a batch and ran the rest of their batches unclaimed.
    pub unclaimed: usize,
}

/// Invariant 6: no queue batch runs twice across a nats-server restart while it is held (a
/// test runs more than once only as a retry of an errored shard attempt, or when a runner
/// took the batch over after its claim expired during an outage long enough to span a whole
/// claim after its last renewal, two thirds of the lease: its holder could not renew, by
/// design), and each execution ends passed with exactly its suite in the store.
pub fn no_batch_twice(
    rounds: &[HeldRound],
    runs: &[Run],
    db: &Db,
    suite: usize,
    lease_ms: i64,
) -> Verdict {
    let mut violations = Vec::new();
    let (mut batches, mut retried, mut exact) = (0usize, 0usize, 0usize);
    let (mut held, mut left, mut dropped, mut unclaimed) = (0usize, 0usize, 0usize, 0usize);
    let (mut twice, mut past_lease, mut takeovers) = (0usize, 0usize, 0usize);
    let mut outages: Vec<i64> = Vec::new();
    for r in rounds {
        held += r.held_at_kill;
        outages.extend(r.outage_ms);
        takeovers += r.takeovers;
        let outlasted = r.takeovers > 0 && r.outage_ms.is_some_and(|o| o * 3 >= lease_ms * 2);
        left += r.left_to_holder;
        dropped += r.dropped_done;
        unclaimed += r.unclaimed;
        let mine: Vec<&Run> = runs.iter().filter(|x| x.execution == r.execution).collect();
        batches += mine
            .iter()
            .map(|x| (x.shard, x.attempt, x.batch.as_str()))
            .collect::<BTreeSet<_>>()
            .len();
        let mut by_test: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
        for x in &mine {
            by_test.entry(x.test.as_str()).or_default().push(x);
        }
        for (test, ran) in &by_test {
            if ran.len() < 2 {
                continue;
            }
            // A retry attempt of a shard re-runs what its errored attempt had not reported.
            let first = ran[0];
            let all_retries = ran[1..].iter().all(|x| x.attempt > first.attempt);
            if all_retries {
                retried += 1;
                continue;
            }
            if outlasted {
                past_lease += 1;
                continue;
            }
            twice += 1;
            violations.push(format!(
                "execution {}: test {test} ran {} times: {}",
                r.execution,
                ran.len(),
                ran.iter()
                    .map(|x| format!("shard {} attempt {} batch {}", x.shard, x.attempt, x.batch))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        if by_test.len() != suite {
            violations.push(format!(
                "execution {}: {} of its {suite} tests ran",
                r.execution,
                by_test.len()
            ));
        }
        match db.executions.iter().find(|e| e.id == r.execution) {
            None => violations.push(format!("execution {} is not in the store", r.execution)),
            Some(e) => {
                let stored: BTreeSet<&str> = db
                    .rows
                    .iter()
                    .filter(|k| k.0 == r.execution)
                    .map(|k| k.3.as_str())
                    .collect();
                if e.status != ExecutionStatus::Passed as i32 || stored.len() != suite {
                    violations.push(format!(
                        "execution {} ended {} with {} of its {suite} tests stored: {}",
                        r.execution,
                        e.status_name(),
                        stored.len(),
                        e.reason
                    ));
                } else {
                    exact += 1;
                }
            }
        }
    }
    let restarts = rounds.iter().filter(|r| r.restarted).count();
    verdict(
        "6 no queue batch runs twice (nats restart, held)",
        format!(
            "{} queue executions, {restarts} nats-server kill -9 + restart (down {}) while \
             {held} batches were held (batches of 4 s, lease {:.0} s); redelivered batches: \
             {left} left to their live holder, {dropped} dropped as done, {takeovers} taken \
             over after their claim expired; {unclaimed} runners \
             fell back to running unclaimed; {batches} batches ran, {twice} tests ran twice \
             outside a retry, {retried} re-ran only as a retry, {past_lease} after an outage \
             that outlasted their claim; {exact} passed with exactly {suite} tests stored",
            rounds.len(),
            match (outages.iter().min(), outages.iter().max()) {
                (Some(a), Some(b)) =>
                    format!("{:.1}-{:.1}s", *a as f64 / 1000.0, *b as f64 / 1000.0),
                _ => "-".into(),
            },
            lease_ms as f64 / 1000.0,
        ),
        violations,
    )
}

/// A launcher-replaced round.
#[derive(Debug, Clone)]
pub struct OrphanRound {
    pub execution: String,
    /// When the launcher was killed, and when its replacement was spawned (unix ms).
    pub killed_ms: i64,
    pub replacement_ms: Option<i64>,
    /// Shards running at the kill: (shard, attempt), and when a later attempt of each was
    /// seen running (unix ms).
    pub orphans: Vec<(u32, u32, Option<i64>)>,
}

/// Invariant 7 (a measured bound): every shard orphaned by a killed launcher runs again
/// within [`ORPHAN_BOUND_MS`] of its replacement starting.
pub fn orphans_rerun(rounds: &[OrphanRound]) -> Verdict {
    let mut violations = Vec::new();
    let mut delays: Vec<i64> = Vec::new();
    let mut downs: Vec<i64> = Vec::new();
    for r in rounds {
        let Some(started) = r.replacement_ms else {
            violations.push(format!(
                "execution {}: the replacement launcher never started",
                r.execution
            ));
            continue;
        };
        downs.push(started - r.killed_ms);
        for (shard, attempt, again) in &r.orphans {
            match again {
                None => violations.push(format!(
                    "execution {}: shard {shard} (attempt {attempt} orphaned) never ran again",
                    r.execution
                )),
                Some(at) => {
                    let d = (at - started).max(0);
                    delays.push(d);
                    if d > ORPHAN_BOUND_MS {
                        violations.push(format!(
                            "execution {}: shard {shard} ran again {:.1}s after the replacement \
                             launcher started (bound {:.0}s)",
                            r.execution,
                            d as f64 / 1000.0,
                            ORPHAN_BOUND_MS as f64 / 1000.0
                        ));
                    }
                }
            }
        }
    }
    delays.sort_unstable();
    let secs = |ms: i64| ms as f64 / 1000.0;
    let spread = if delays.is_empty() {
        "none measured".to_string()
    } else {
        format!(
            "after the replacement started in min {:.1}s, median {:.1}s, max {:.1}s ({} measured)",
            secs(delays[0]),
            secs(delays[delays.len() / 2]),
            secs(delays[delays.len() - 1]),
            delays.len()
        )
    };
    let mut v = verdict(
        "7 orphaned shards run again <= 5s after replacement",
        format!(
            "{} launcher kill -9 (down {}), {} orphaned shards ran again {spread}",
            rounds.len(),
            match (downs.iter().min(), downs.iter().max()) {
                (Some(a), Some(b)) => format!("{:.1}-{:.1}s", secs(*a), secs(*b)),
                _ => "-".into(),
            },
            rounds.iter().map(|r| r.orphans.len()).sum::<usize>(),
        ),
        violations,
    );
    v.timing = true;
    v
}

/// A scheduler-before-plan round.
#[derive(Debug, Clone, Default)]
pub struct ReplanRound {
    pub execution: String,
    /// When the run request was published, and when its first shard job was seen (unix ms).
    pub submitted_ms: i64,
    pub first_job_ms: i64,
    /// Whether the scheduler was stopped before any plan record of the execution went out
    /// (the window the round aims at); tries that missed it are counted.
    pub hit: bool,
    pub missed: usize,
    /// When the restarted scheduler was spawned (unix ms).
    pub restarted_ms: Option<i64>,
    /// `created_at_ms` of the plan record the restarted scheduler published, and when that
    /// record was seen (unix ms).
    pub planned_created_ms: Option<i64>,
    pub planned_seen_ms: Option<i64>,
    /// The deadlines of every shard job seen, first publication and re-plan.
    pub deadlines: BTreeSet<i64>,
    pub jobs_seen: usize,
    /// Shard jobs of the execution that were out when the scheduler was killed.
    pub jobs_before_kill: usize,
}

/// Invariant 8: an execution re-planned after the scheduler died between its first shard job
/// and its plan record keeps the creation time of its original request (its first claim),
/// in the plan record, the store and every shard job's deadline.
pub fn created_at_kept(rounds: &[ReplanRound], db: &Db) -> Verdict {
    let mut violations = Vec::new();
    let stored: HashMap<&str, i64> = db
        .executions
        .iter()
        .map(|e| (e.id.as_str(), e.created_at_ms))
        .collect();
    let (mut hits, mut missed, mut kept) = (0usize, 0usize, 0usize);
    let mut out_before: Vec<i64> = Vec::new();
    let mut lags: Vec<i64> = Vec::new();
    let mut replans: Vec<i64> = Vec::new();
    for r in rounds {
        missed += r.missed;
        if !r.hit {
            continue;
        }
        hits += 1;
        out_before.push(r.jobs_before_kill as i64);
        let Some(planned) = r.planned_created_ms else {
            violations.push(format!(
                "execution {}: no plan record after the scheduler came back",
                r.execution
            ));
            continue;
        };
        let mut bad = Vec::new();
        if planned < r.submitted_ms || planned > r.first_job_ms {
            bad.push(format!(
                "plan record created_at {planned} is not between the request ({}) and its \
                 first shard job ({})",
                r.submitted_ms, r.first_job_ms
            ));
        }
        match stored.get(r.execution.as_str()) {
            Some(at) if *at == planned => {}
            Some(at) => bad.push(format!("store says created_at {at}, plan record {planned}")),
            None => bad.push("not in the store".into()),
        }
        if r.deadlines.len() > 1 {
            bad.push(format!(
                "its {} shard jobs carry {} different deadlines",
                r.jobs_seen,
                r.deadlines.len()
            ));
        }
        if bad.is_empty() {
            kept += 1;
            lags.push(planned - r.submitted_ms);
            if let Some(at) = r.planned_seen_ms {
                replans.push(at - r.submitted_ms);
            }
        } else {
            violations.push(format!("execution {}: {}", r.execution, bad.join("; ")));
        }
    }
    let range = |v: &[i64], unit: &str| match (v.iter().min(), v.iter().max()) {
        (Some(a), Some(b)) if unit == "s" => {
            format!("{:.1}-{:.1}s", *a as f64 / 1000.0, *b as f64 / 1000.0)
        }
        (Some(a), Some(b)) => format!("{a}-{b} ms"),
        _ => "-".into(),
    };
    verdict(
        "8 re-planned execution keeps its request's time",
        format!(
            "{} scheduler kill -9 between first shard job and plan record ({} shard jobs out \
             by then; {missed} tries missed the window: the plan was out first); {kept} of \
             {hits} re-planned executions dated {} after their request, though planned {} \
             after it",
            rounds.len(),
            match (out_before.iter().min(), out_before.iter().max()) {
                (Some(a), Some(b)) => format!("{a}-{b}"),
                _ => "-".into(),
            },
            range(&lags, "ms"),
            range(&replans, "s"),
        ),
        violations,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::ExecRow;

    fn run(exec: &str, shard: u32, attempt: u32, test: &str, batch: &str) -> Run {
        Run {
            execution: exec.into(),
            shard,
            attempt,
            test: test.into(),
            batch: batch.into(),
        }
    }

    fn db_with(exec: &str, tests: &[&str], status: ExecutionStatus) -> Db {
        let mut db = Db::default();
        db.executions.push(ExecRow {
            id: exec.into(),
            workflow: "w".into(),
            status: status as i32,
            reason: String::new(),
            cause: "c".into(),
            created_at_ms: 1_000,
            finished_at_ms: 2_000,
            timeout_ms: 10_000,
        });
        for t in tests {
            db.rows.insert((exec.into(), 0, 1, t.to_string()));
        }
        db
    }

    #[test]
    fn the_run_log_parses_and_skips_torn_lines() {
        let runs = parse_runs("e 0 1 a 11\ne 1 1 b 12\ne 1 1\ne 1 x b 3\n");
        assert_eq!(
            runs,
            vec![run("e", 0, 1, "a", "11"), run("e", 1, 1, "b", "12")]
        );
    }

    #[test]
    fn a_batch_run_twice_breaks_invariant_6_and_a_retry_does_not() {
        let mut round = HeldRound {
            execution: "e".into(),
            restarted: true,
            held_at_kill: 2,
            outage_ms: Some(1_000),
            takeovers: 1,
            ..Default::default()
        };
        let db = db_with("e", &["a", "b"], ExecutionStatus::Passed);
        let once = [run("e", 0, 1, "a", "1"), run("e", 1, 1, "b", "2")];
        let check = |round: &HeldRound, runs: &[Run], db: &Db| {
            no_batch_twice(std::slice::from_ref(round), runs, db, 2, 5_000)
        };
        assert!(check(&round, &once, &db).held);
        let mut retried = once.to_vec();
        retried.push(run("e", 1, 2, "b", "3"));
        let v = check(&round, &retried, &db);
        assert!(v.held, "{v:?}");
        assert!(v.evidence.contains("1 re-ran only as a retry"), "{v:?}");
        let mut twice = once.to_vec();
        twice.push(run("e", 0, 1, "b", "4"));
        let v = check(&round, &twice, &db);
        assert!(!v.held);
        assert!(v.violations[0].contains("test b ran 2 times"), "{v:?}");
        let failed = db_with("e", &["a"], ExecutionStatus::Errored);
        assert!(!check(&round, &once, &failed).held);
        // An outage longer than the lease: the holder could not renew, its batch may run again.
        round.outage_ms = Some(4_000);
        let v = check(&round, &twice, &db);
        assert!(v.held, "{v:?}");
        assert!(
            v.evidence.contains("1 after an outage that outlasted"),
            "{v:?}"
        );
        // ... but only when a runner says it took the batch over.
        round.takeovers = 0;
        assert!(!check(&round, &twice, &db).held);
    }

    #[test]
    fn an_orphan_past_the_bound_or_never_rerun_breaks_invariant_7() {
        let round = |again: Option<i64>| OrphanRound {
            execution: "e".into(),
            killed_ms: 1_000,
            replacement_ms: Some(2_000),
            orphans: vec![(0, 1, Some(4_500)), (1, 1, again)],
        };
        let v = orphans_rerun(&[round(Some(6_900))]);
        assert!(v.held && v.timing, "{v:?}");
        assert!(v.evidence.contains("max 4.9s"), "{v:?}");
        assert!(!orphans_rerun(&[round(Some(7_100))]).held);
        assert!(!orphans_rerun(&[round(None)]).held);
    }

    #[test]
    fn a_replan_dated_later_than_its_first_job_breaks_invariant_8() {
        let db = db_with("e", &[], ExecutionStatus::Passed);
        let mut r = ReplanRound {
            execution: "e".into(),
            submitted_ms: 990,
            first_job_ms: 1_010,
            hit: true,
            restarted_ms: Some(3_000),
            planned_created_ms: Some(1_000),
            deadlines: [61_000].into(),
            jobs_seen: 8,
            ..Default::default()
        };
        assert!(created_at_kept(std::slice::from_ref(&r), &db).held);
        r.planned_created_ms = Some(3_100);
        let v = created_at_kept(std::slice::from_ref(&r), &db);
        assert!(!v.held);
        assert!(v.violations[0].contains("not between"), "{v:?}");
        r.planned_created_ms = Some(1_000);
        r.deadlines.insert(63_100);
        assert!(!created_at_kept(&[r], &db).held);
    }
}
