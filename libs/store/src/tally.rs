//! Running tallies per shard attempt (`attempt_tallies`): the batches recorded for it and the
//! counts of its test cases by status, kept apart by kind (its own tests, and those that came
//! through a work queue). They are added to in the transaction that inserts the rows, only
//! for rows that were new and not late, so that they always equal a recount of the
//! `batches` and `test_cases` rows the counts read, and an execution's view costs a read of
//! one row per shard attempt however many tests it ran.

use std::collections::BTreeMap;

use assay_proto::v1::TestStatus;
use rusqlite::{Connection, Transaction, params};

use crate::Result;

/// Test case counts by status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub passed: u32,
    pub failed: u32,
    pub errored: u32,
    pub skipped: u32,
    /// Passed only on a retry; also counted in `passed`.
    pub flaky: u32,
}

impl Counts {
    /// Counts one stored test case: its status and its `flaky` column.
    pub fn add(&mut self, status: i32, flaky: bool) {
        match TestStatus::try_from(status) {
            Ok(TestStatus::Passed) => self.passed += 1,
            Ok(TestStatus::Failed) => self.failed += 1,
            Ok(TestStatus::Errored) => self.errored += 1,
            Ok(TestStatus::Skipped) => self.skipped += 1,
            Ok(TestStatus::Unspecified) | Err(_) => {}
        }
        self.flaky += u32::from(flaky);
    }

    pub fn plus(self, other: &Counts) -> Counts {
        Counts {
            passed: self.passed + other.passed,
            failed: self.failed + other.failed,
            errored: self.errored + other.errored,
            skipped: self.skipped + other.skipped,
            flaky: self.flaky + other.flaky,
        }
    }
}

/// What is recorded for one shard attempt (or what one batch adds to it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Distinct result batches in the ledger.
    pub batches: u32,
    /// The attempt's own tests (counted only while it is its shard's latest attempt).
    pub own: Counts,
    /// Tests of the work-queue batches it reported first (counted whatever attempt follows).
    pub queued: Counts,
}

/// Adds `delta` to the tally of one shard attempt, creating it if absent.
pub(crate) fn add(
    tx: &Transaction<'_>,
    execution: &str,
    shard: u32,
    attempt: u32,
    delta: &Tally,
) -> Result<()> {
    let (o, q) = (&delta.own, &delta.queued);
    tx.prepare_cached(
        "INSERT INTO attempt_tallies (execution_id, shard_index, attempt, batches,
             passed, failed, errored, skipped, flaky,
             queued_passed, queued_failed, queued_errored, queued_skipped, queued_flaky)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (execution_id, shard_index, attempt) DO UPDATE SET
             batches = batches + excluded.batches,
             passed = passed + excluded.passed,
             failed = failed + excluded.failed,
             errored = errored + excluded.errored,
             skipped = skipped + excluded.skipped,
             flaky = flaky + excluded.flaky,
             queued_passed = queued_passed + excluded.queued_passed,
             queued_failed = queued_failed + excluded.queued_failed,
             queued_errored = queued_errored + excluded.queued_errored,
             queued_skipped = queued_skipped + excluded.queued_skipped,
             queued_flaky = queued_flaky + excluded.queued_flaky",
    )?
    .execute(params![
        execution,
        shard,
        attempt,
        delta.batches,
        o.passed,
        o.failed,
        o.errored,
        o.skipped,
        o.flaky,
        q.passed,
        q.failed,
        q.errored,
        q.skipped,
        q.flaky,
    ])?;
    Ok(())
}

/// The tallies of every attempt of an execution that recorded a batch, keyed by (shard,
/// attempt): one row per shard attempt, read through the primary key.
pub(crate) fn load(conn: &Connection, execution: &str) -> Result<BTreeMap<(u32, u32), Tally>> {
    let mut stmt = conn.prepare_cached(
        "SELECT shard_index, attempt, batches, passed, failed, errored, skipped, flaky,
             queued_passed, queued_failed, queued_errored, queued_skipped, queued_flaky
         FROM attempt_tallies WHERE execution_id = ?1",
    )?;
    let mut rows = stmt.query([execution])?;
    let mut out = BTreeMap::new();
    while let Some(r) = rows.next()? {
        out.insert(
            (r.get(0)?, r.get(1)?),
            Tally {
                batches: r.get(2)?,
                own: Counts {
                    passed: r.get(3)?,
                    failed: r.get(4)?,
                    errored: r.get(5)?,
                    skipped: r.get(6)?,
                    flaky: r.get(7)?,
                },
                queued: Counts {
                    passed: r.get(8)?,
                    failed: r.get(9)?,
                    errored: r.get(10)?,
                    skipped: r.get(11)?,
                    flaky: r.get(12)?,
                },
            },
        );
    }
    Ok(out)
}

/// The tallies of an execution counted afresh from its `batches` and `test_cases` rows, as
/// the views read them before there were tallies: what [`load`] must always equal. Scans the
/// execution; for tests only.
#[cfg(test)]
pub(crate) fn recount(conn: &Connection, execution: &str) -> Result<BTreeMap<(u32, u32), Tally>> {
    let mut out: BTreeMap<(u32, u32), Tally> = BTreeMap::new();
    let mut stmt = conn.prepare(
        "SELECT shard_index, attempt, COUNT(*) FROM batches
         WHERE execution_id = ?1 GROUP BY shard_index, attempt",
    )?;
    let mut rows = stmt.query([execution])?;
    while let Some(r) = rows.next()? {
        out.entry((r.get(0)?, r.get(1)?)).or_default().batches = r.get(2)?;
    }
    let mut stmt = conn.prepare(
        "SELECT shard_index, attempt, queue_batch IS NOT NULL, status, flaky
         FROM test_cases WHERE execution_id = ?1 AND late = 0",
    )?;
    let mut rows = stmt.query([execution])?;
    while let Some(r) = rows.next()? {
        let tally = out.entry((r.get(0)?, r.get(1)?)).or_default();
        let counts = if r.get::<_, bool>(2)? {
            &mut tally.queued
        } else {
            &mut tally.own
        };
        counts.add(r.get(3)?, r.get(4)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use assay_proto::v1::{
        Execution, ExecutionStatus, ShardState, ShardStatus, TestCaseBatch, TestCaseResult,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::ops;

    const ID: &str = "01J00000000000000000000TAL";

    /// One message or event the store may see, from a universe small enough that the same
    /// batch, test case or queue batch comes up again (a redelivery, a retry, a second
    /// report of a queue batch).
    #[derive(Debug, Clone)]
    enum Step {
        Plan {
            shards: u32,
            terminal: bool,
        },
        Status {
            shard: u32,
            attempt: u32,
            state: ShardState,
            batches: u32,
        },
        Batch(Box<TestCaseBatch>),
        Finalize,
    }

    fn step() -> impl Strategy<Value = Step> {
        let state = prop_oneof![
            Just(ShardState::Queued),
            Just(ShardState::Running),
            Just(ShardState::Passed),
            Just(ShardState::Failed),
            Just(ShardState::Errored),
        ];
        let result =
            (0..6u32, 0..5i32, any::<bool>()).prop_map(|(t, status, flaky)| TestCaseResult {
                id: format!("t{t}"),
                status,
                flaky,
                attempts: 1 + u32::from(flaky),
                ..TestCaseResult::default()
            });
        // Queue batches of two work queues (matrix combinations 0 and 1), with or without
        // their queue's total.
        let queue_batch = prop_oneof![
            Just(0u32),
            Just(1),
            Just(2),
            Just((1 << assay_proto::QUEUE_GROUP_SHIFT) + 1),
        ];
        let batch = (
            0..3u32,
            1..3u32,
            0..3u32,
            queue_batch,
            0..4u32,
            prop::collection::vec(result, 0..4),
        )
            .prop_map(
                |(shard, attempt, batch, queue_batch, queue_batches, results)| {
                    Step::Batch(Box::new(TestCaseBatch {
                        execution_id: ID.into(),
                        shard_index: shard,
                        attempt,
                        batch,
                        queue_batch,
                        queue_batches,
                        results,
                        ..TestCaseBatch::default()
                    }))
                },
            );
        prop_oneof![
            2 => (1..4u32, prop::bool::weighted(0.1))
                .prop_map(|(shards, terminal)| Step::Plan { shards, terminal }),
            3 => (0..3u32, 1..3u32, state, 0..4u32).prop_map(|(shard, attempt, state, batches)| {
                Step::Status {
                    shard,
                    attempt,
                    state,
                    batches,
                }
            }),
            6 => batch,
            1 => Just(Step::Finalize),
        ]
    }

    fn apply(conn: &mut Connection, step: &Step) {
        match step {
            Step::Plan { shards, terminal } => {
                let status = if *terminal {
                    ExecutionStatus::Cancelled
                } else {
                    ExecutionStatus::Queued
                };
                ops::record_execution(
                    conn,
                    &Execution {
                        id: ID.into(),
                        workflow: "w".into(),
                        shard_count: *shards,
                        status: status.into(),
                        created_at_ms: 1,
                        ..Execution::default()
                    },
                )
                .unwrap();
            }
            Step::Status {
                shard,
                attempt,
                state,
                batches,
            } => {
                ops::record_shard_status(
                    conn,
                    &ShardStatus {
                        execution_id: ID.into(),
                        shard_index: *shard,
                        attempt: *attempt,
                        state: (*state).into(),
                        result_batches: *batches,
                        finished_at_ms: 10,
                        ..ShardStatus::default()
                    },
                )
                .unwrap();
            }
            Step::Batch(b) => {
                ops::record_batch(conn, b).unwrap();
            }
            Step::Finalize => {
                ops::finalize(conn, ID, ExecutionStatus::TimedOut, "timed out", 20).unwrap();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// After any sequence of plans, statuses, batches (redelivered, retried, reported
        /// twice through a queue, arriving after the end) and timeouts, the running tallies
        /// equal a recount of the rows, and so do the reported batches of each work queue.
        #[test]
        fn tallies_equal_a_recount_after_every_step(
            steps in prop::collection::vec(step(), 1..40)
        ) {
            let mut conn = Connection::open_in_memory().unwrap();
            crate::schema::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
            for (i, step) in steps.iter().enumerate() {
                apply(&mut conn, step);
                prop_assert_eq!(
                    load(&conn, ID).unwrap(),
                    recount(&conn, ID).unwrap(),
                    "after step {}: {:?}",
                    i,
                    step
                );
                let reported: Vec<(u32, u32)> = crate::queues::load(&conn, ID)
                    .unwrap()
                    .into_iter()
                    .filter(|&(_, _, reported)| reported > 0)
                    .map(|(group, _, reported)| (group, reported))
                    .collect();
                prop_assert_eq!(
                    reported,
                    crate::queues::recount_reported(&conn, ID).unwrap(),
                    "queues after step {}: {:?}",
                    i,
                    step
                );
            }
        }
    }

    #[test]
    fn counts_add_by_status_and_flaky_column() {
        let mut c = Counts::default();
        for status in 0..6 {
            c.add(status, status == 1);
        }
        assert_eq!(
            c,
            Counts {
                passed: 1,
                failed: 1,
                errored: 1,
                skipped: 1,
                flaky: 1,
            }
        );
    }
}
