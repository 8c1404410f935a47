//! The blocking SQL that writes [`crate::Store`]: each message in one transaction, then the
//! execution settled. The views it is read through are in `view`.

use std::collections::{BTreeMap, HashMap};

use assay_proto::v1::{
    Execution, ExecutionStatus, ShardState, ShardStatus, TestCaseBatch, TestStatus,
};
use prost::Message;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tracing::{debug, info, warn};

use crate::derive::{execution_status_is_terminal, shard_state_is_terminal, shard_state_rank};
use crate::tally::{self, Tally};
use crate::view::{decode_shard_state, load};
use crate::{Error, Result};

/// Statuses below this number are not terminal (unspecified, queued, running).
const FIRST_TERMINAL_STATUS: i32 = ExecutionStatus::Passed as i32;

pub(crate) fn record_execution(conn: &mut Connection, e: &Execution) -> Result<bool> {
    if e.id.is_empty() {
        return Err(Error::invalid("execution", "empty id"));
    }
    let status = match ExecutionStatus::try_from(e.status) {
        Ok(ExecutionStatus::Unspecified) => ExecutionStatus::Queued,
        Ok(status) => status,
        Err(_) => {
            return Err(Error::invalid(
                "execution",
                format!("unknown status {} for execution {}", e.status, e.id),
            ));
        }
    };
    let terminal = execution_status_is_terminal(status);
    let finished_at_ms = if !terminal {
        0
    } else {
        e.header
            .as_ref()
            .map(|h| h.occurred_at_ms)
            .filter(|t| *t > 0)
            .unwrap_or(e.created_at_ms)
    };

    let provenance = e.provenance.as_ref().map(Message::encode_to_vec);
    let source = e.provenance.as_ref().map_or("", |p| p.source.as_str());

    let tx = conn.transaction()?;
    let existing: Option<(bool, i32, String, String)> = tx
        .query_row(
            "SELECT planned, status, workflow, cause FROM executions WHERE id = ?1",
            [&e.id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()?;
    let changed = match existing {
        None | Some((false, ..)) => {
            tx.execute(
                "INSERT INTO executions (id, planned, workflow, shard_count, status, reason,
                     trigger_name, cause, config_json, labels_json, created_at_ms,
                     finished_at_ms, timeout_ms, rerun_of, priority, provenance, source)
                 VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                     ?16)
                 ON CONFLICT (id) DO UPDATE SET
                     planned = 1, workflow = excluded.workflow,
                     shard_count = excluded.shard_count, status = excluded.status,
                     reason = excluded.reason, trigger_name = excluded.trigger_name,
                     cause = excluded.cause, config_json = excluded.config_json,
                     labels_json = excluded.labels_json, created_at_ms = excluded.created_at_ms,
                     finished_at_ms = excluded.finished_at_ms, timeout_ms = excluded.timeout_ms,
                     rerun_of = excluded.rerun_of, priority = excluded.priority,
                     provenance = excluded.provenance, source = excluded.source",
                params![
                    e.id,
                    e.workflow,
                    e.shard_count,
                    status as i32,
                    e.reason,
                    e.trigger,
                    e.cause,
                    map_to_json(&e.config),
                    map_to_json(&e.labels),
                    e.created_at_ms,
                    finished_at_ms,
                    clamp_u64(e.timeout_ms),
                    e.rerun_of,
                    e.priority,
                    provenance,
                    source,
                ],
            )?;
            tx.execute(
                "DELETE FROM execution_labels WHERE execution_id = ?1",
                [&e.id],
            )?;
            if let Some(p) = &e.provenance {
                let mut insert = tx.prepare(
                    "INSERT INTO execution_labels (execution_id, key, value) VALUES (?1, ?2, ?3)",
                )?;
                for (key, value) in &p.labels {
                    insert.execute(params![e.id, key, value])?;
                }
            }
            true
        }
        Some((true, _, workflow, cause)) if workflow != e.workflow || cause != e.cause => {
            // The id is taken by another plan (an execution id reused by a second request):
            // the first one stays, or the second one's shards would report into it.
            warn!(
                execution = %e.id,
                kept_workflow = %workflow,
                kept_cause = %cause,
                ignored_workflow = %e.workflow,
                ignored_cause = %e.cause,
                "a second plan record for this execution names another workflow or cause; the first one is kept"
            );
            false
        }
        Some((true, old, ..)) if terminal && old < FIRST_TERMINAL_STATUS => {
            tx.execute(
                "UPDATE executions SET status = ?2, reason = ?3, finished_at_ms = ?4
                 WHERE id = ?1",
                params![e.id, status as i32, e.reason, finished_at_ms],
            )?;
            info!(execution = %e.id, status = status.as_str_name(), reason = %e.reason, "execution ended by its record");
            true
        }
        Some(_) => false,
    };
    if changed {
        settle(&tx, &e.id)?;
    }
    tx.commit()?;
    Ok(changed)
}

pub(crate) fn record_shard_status(conn: &mut Connection, s: &ShardStatus) -> Result<bool> {
    if s.execution_id.is_empty() {
        return Err(Error::invalid("shard status", "empty execution id"));
    }
    let state = match ShardState::try_from(s.state) {
        Ok(ShardState::Unspecified) | Err(_) => {
            return Err(Error::invalid(
                "shard status",
                format!(
                    "state {} for {}/{}/{} is not a known shard state",
                    s.state, s.execution_id, s.shard_index, s.attempt
                ),
            ));
        }
        Ok(state) => state,
    };

    let tx = conn.transaction()?;
    if execution_ended(&tx, &s.execution_id)? {
        // The execution's counts are final: a status may still show how a shard ended, but
        // not make a new attempt the shard's latest (its tests would replace the counted ones).
        let latest: Option<u32> = tx.query_row(
            "SELECT MAX(attempt) FROM (
                 SELECT attempt FROM shard_attempts WHERE execution_id = ?1 AND shard_index = ?2
                 UNION ALL
                 SELECT attempt FROM attempt_tallies
                 WHERE execution_id = ?1 AND shard_index = ?2 AND batches > 0)",
            params![s.execution_id, s.shard_index],
            |row| row.get(0),
        )?;
        if latest.is_some_and(|latest| s.attempt > latest) {
            debug!(
                execution = %s.execution_id,
                shard = s.shard_index,
                attempt = s.attempt,
                reporter = %s.reporter,
                "status of a new attempt after its execution ended ignored; the counts are final"
            );
            return Ok(false);
        }
    }
    // The total of the queue the shard drained, before the settle below: a shard that found
    // its queue drained must not end the execution while its batches' results are in flight.
    crate::queues::record(&tx, &s.execution_id, s.queue_group, false, s.queue_batches)?;
    let existing: Option<(i32, i64)> = tx
        .query_row(
            "SELECT state, started_at_ms FROM shard_attempts
             WHERE execution_id = ?1 AND shard_index = ?2 AND attempt = ?3",
            params![s.execution_id, s.shard_index, s.attempt],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let changed = match existing {
        None => {
            tx.execute(
                "INSERT INTO shard_attempts (execution_id, shard_index, attempt, state, reason,
                     exit_code, result_batches, test_cases, started_at_ms, finished_at_ms,
                     will_retry)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    s.execution_id,
                    s.shard_index,
                    s.attempt,
                    state as i32,
                    s.reason,
                    s.exit_code,
                    s.result_batches,
                    s.test_cases,
                    s.started_at_ms,
                    s.finished_at_ms,
                    s.will_retry,
                ],
            )?;
            true
        }
        Some((old, old_started)) => {
            let old = decode_shard_state(old)?;
            if shard_state_rank(state) > shard_state_rank(old) {
                // Forward move: the new status replaces everything but a start time it lacks.
                tx.execute(
                    "UPDATE shard_attempts SET state = ?4, reason = ?5, exit_code = ?6,
                         result_batches = ?7, test_cases = ?8,
                         started_at_ms = CASE WHEN ?9 != 0 THEN ?9 ELSE started_at_ms END,
                         finished_at_ms = ?10, will_retry = ?11
                     WHERE execution_id = ?1 AND shard_index = ?2 AND attempt = ?3",
                    params![
                        s.execution_id,
                        s.shard_index,
                        s.attempt,
                        state as i32,
                        s.reason,
                        s.exit_code,
                        s.result_batches,
                        s.test_cases,
                        s.started_at_ms,
                        s.finished_at_ms,
                        s.will_retry,
                    ],
                )?;
                true
            } else {
                if shard_state_is_terminal(old) && shard_state_is_terminal(state) && old != state {
                    debug!(
                        execution = %s.execution_id,
                        shard = s.shard_index,
                        attempt = s.attempt,
                        kept = old.as_str_name(),
                        ignored = state.as_str_name(),
                        reporter = %s.reporter,
                        "later terminal status ignored, the first one wins"
                    );
                }
                // A late or repeated status only fills a start time still unknown, so the
                // outcome does not depend on arrival order.
                if old_started == 0 && s.started_at_ms != 0 {
                    tx.execute(
                        "UPDATE shard_attempts SET started_at_ms = ?4
                         WHERE execution_id = ?1 AND shard_index = ?2 AND attempt = ?3",
                        params![s.execution_id, s.shard_index, s.attempt, s.started_at_ms],
                    )?;
                    true
                } else {
                    false
                }
            }
        }
    };
    if changed {
        settle(&tx, &s.execution_id)?;
    }
    tx.commit()?;
    Ok(changed)
}

pub(crate) fn record_batch(conn: &mut Connection, b: &TestCaseBatch) -> Result<bool> {
    if b.execution_id.is_empty() {
        return Err(Error::invalid("test case batch", "empty execution id"));
    }
    for result in &b.results {
        if result.id.is_empty() {
            return Err(Error::invalid(
                "test case batch",
                format!(
                    "a test case without an id in batch {}/{}/{}/{}",
                    b.execution_id, b.shard_index, b.attempt, b.batch
                ),
            ));
        }
        if TestStatus::try_from(result.status).is_err() {
            return Err(Error::invalid(
                "test case batch",
                format!("unknown status {} for test {}", result.status, result.id),
            ));
        }
    }

    let tx = conn.transaction()?;
    // Results of an execution that ended already (a runner past the timeout the sweep
    // enforced, a shard of a request that reused the id) are kept, so that no acknowledged
    // result is lost, but as `late` rows that neither the counts nor the test lists read:
    // the final update's totals are final. They touch no batch ledger (which decides when a
    // shard is complete) and report no change, so no update follows the final one.
    let late = execution_ended(&tx, &b.execution_id)?;
    if late {
        debug!(
            execution = %b.execution_id,
            shard = b.shard_index,
            attempt = b.attempt,
            batch = b.batch,
            "results after the execution ended kept apart; its counts are final"
        );
    } else {
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO batches (execution_id, shard_index, attempt, batch)
             VALUES (?1, ?2, ?3, ?4)",
            params![b.execution_id, b.shard_index, b.attempt, b.batch],
        )?;
        if inserted == 0 {
            return Ok(false);
        }
    }
    // What this batch adds to its attempt's tally: the ledger entry (unless late), then the
    // test cases that are new and not late.
    let mut delta = Tally {
        batches: u32::from(!late),
        ..Tally::default()
    };
    if b.queue_batch > 0 {
        let claimed = tx.execute(
            "INSERT OR IGNORE INTO queue_claims (execution_id, queue_batch, shard_index, attempt)
             VALUES (?1, ?2, ?3, ?4)",
            params![b.execution_id, b.queue_batch, b.shard_index, b.attempt],
        )? == 1;
        // Before the settle below: a drained queue's last batch is what ends the execution.
        if let Some(group) = assay_proto::queue_group(b.queue_batch) {
            crate::queues::record(&tx, &b.execution_id, group, claimed, b.queue_batches)?;
        }
        let owner: (u32, u32) = tx.query_row(
            "SELECT shard_index, attempt FROM queue_claims
             WHERE execution_id = ?1 AND queue_batch = ?2",
            params![b.execution_id, b.queue_batch],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        if owner != (b.shard_index, b.attempt) {
            // Another worker reported this queue batch first (this one's lease had
            // expired): keep the ledger entry so the shard completes, count no test twice.
            debug!(
                execution = %b.execution_id,
                queue_batch = b.queue_batch - 1,
                shard = b.shard_index,
                owner = owner.0,
                "queue batch already reported by another shard; results ignored"
            );
            if !late {
                tally::add(&tx, &b.execution_id, b.shard_index, b.attempt, &delta)?;
                settle(&tx, &b.execution_id)?;
            }
            tx.commit()?;
            return Ok(!late);
        }
    }
    {
        let mut insert = tx.prepare(
            "INSERT OR IGNORE INTO test_cases (execution_id, shard_index, attempt, test_id, name,
                 classname, file, status, duration_ms, failure_message, output, attempts, flaky,
                 queue_batch, late)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        // Per row: a queue batch's tests count whichever attempt ran them; an attempt's own
        // tests count only for the shard's latest attempt.
        let queue_batch = (b.queue_batch > 0).then_some(b.queue_batch);
        let counts = if queue_batch.is_some() {
            &mut delta.queued
        } else {
            &mut delta.own
        };
        for r in &b.results {
            let flaky = r.flaky && r.status() == TestStatus::Passed;
            let new = insert.execute(params![
                b.execution_id,
                b.shard_index,
                b.attempt,
                r.id,
                r.name,
                r.classname,
                r.file,
                r.status,
                clamp_u64(r.duration_ms),
                r.failure_message,
                r.output,
                r.attempts.max(1),
                flaky,
                queue_batch,
                late,
            ])?;
            if new == 1 && !late {
                counts.add(r.status, flaky);
            }
        }
    }
    if !late {
        tally::add(&tx, &b.execution_id, b.shard_index, b.attempt, &delta)?;
        settle(&tx, &b.execution_id)?;
    }
    tx.commit()?;
    Ok(!late)
}

pub(crate) fn finalize(
    conn: &mut Connection,
    id: &str,
    status: ExecutionStatus,
    reason: &str,
    finished_at_ms: i64,
) -> Result<bool> {
    if !execution_status_is_terminal(status) {
        return Err(Error::invalid(
            "final status",
            format!(
                "{} is not terminal; use passed, failed, errored, cancelled or timed out",
                status.as_str_name()
            ),
        ));
    }
    let changed = conn.execute(
        "UPDATE executions SET status = ?2, reason = ?3, finished_at_ms = ?4
         WHERE id = ?1 AND planned = 1 AND status < ?5",
        params![
            id,
            status as i32,
            reason,
            finished_at_ms,
            FIRST_TERMINAL_STATUS
        ],
    )?;
    if changed > 0 {
        info!(execution = %id, status = status.as_str_name(), reason, "execution finalized");
    }
    Ok(changed > 0)
}

pub(crate) fn timed_out_since(conn: &Connection, since_ms: i64) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT id, reason FROM executions
         WHERE planned = 1 AND status = ?1 AND finished_at_ms >= ?2 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![ExecutionStatus::TimedOut as i32, since_ms], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn non_terminal_executions(conn: &Connection) -> Result<Vec<(String, i64, u64, u32)>> {
    let mut stmt = conn.prepare(
        "SELECT id, created_at_ms, timeout_ms, shard_count FROM executions
         WHERE planned = 1 AND status < ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([FIRST_TERMINAL_STATUS], |row| {
        let timeout: i64 = row.get(2)?;
        let shards: i64 = row.get(3)?;
        Ok((
            row.get(0)?,
            row.get(1)?,
            u64::try_from(timeout).unwrap_or(0),
            u32::try_from(shards).unwrap_or(0),
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn bump_revision(conn: &Connection, id: &str) -> Result<u64> {
    if id.is_empty() {
        return Err(Error::invalid("execution", "empty id"));
    }
    let revision: i64 = conn.query_row(
        "INSERT INTO executions (id, revision) VALUES (?1, 1)
         ON CONFLICT (id) DO UPDATE SET revision = revision + 1
         RETURNING revision",
        [id],
        |row| row.get(0),
    )?;
    Ok(u64::try_from(revision).unwrap_or(0))
}

/// Whether the execution is planned and its status persisted as terminal (ended by its
/// shards, its plan record or the timeout sweep): from then on its counts and test lists do
/// not change.
fn execution_ended(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM executions WHERE id = ?1 AND planned = 1 AND status >= ?2",
            params![id, FIRST_TERMINAL_STATUS],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Persists a terminal derived status on a planned execution, so that it never flips back and
/// listing stays cheap. Not done before the plan arrives: the shard count is only a guess then.
fn settle(tx: &Transaction<'_>, id: &str) -> Result<()> {
    let Some(view) = load(tx, id)? else {
        return Ok(());
    };
    let Some(row) = &view.row else {
        return Ok(());
    };
    if execution_status_is_terminal(row.verdict.status)
        || !execution_status_is_terminal(view.verdict.status)
    {
        return Ok(());
    }
    tx.execute(
        "UPDATE executions SET status = ?2, reason = ?3, finished_at_ms = ?4 WHERE id = ?1",
        params![
            id,
            view.verdict.status as i32,
            view.verdict.reason,
            view.verdict.finished_at_ms
        ],
    )?;
    info!(
        execution = %id,
        workflow = %row.workflow,
        status = %view
            .verdict
            .status
            .as_str_name()
            .trim_start_matches("EXECUTION_STATUS_")
            .to_lowercase()
            .replace('_', "-"),
        reason = %view.verdict.reason,
        "execution finished"
    );
    Ok(())
}

fn map_to_json(map: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = map.iter().collect();
    // Serializing a map of strings cannot fail.
    serde_json::to_string(&sorted).unwrap_or_else(|_| "{}".to_owned())
}

fn clamp_u64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{execution_update, is_planned};
    use assay_proto::v1::TestCaseResult;

    /// What the statements run while [`observe`] traces a connection cost: (SQL, VM steps).
    mod observed {
        use std::cell::RefCell;

        use rusqlite::StatementStatus;
        use rusqlite::trace::TraceEvent;

        thread_local! {
            /// The VM step count of each running statement when it started.
            static STARTED: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
            static RAN: RefCell<Vec<(String, i64)>> = const { RefCell::new(Vec::new()) };
        }

        /// A `trace_v2` callback: a statement's steps are its counter at its end less its
        /// counter at its start (the counter of a reused statement only grows).
        pub fn observe(event: TraceEvent<'_>) {
            match event {
                TraceEvent::Stmt(stmt, _) => {
                    let steps = stmt.get_status(StatementStatus::VmStep);
                    STARTED.with(|s| s.borrow_mut().push(steps));
                }
                TraceEvent::Profile(stmt, _) => {
                    let start = STARTED.with(|s| s.borrow_mut().pop()).unwrap_or(0);
                    let steps = stmt.get_status(StatementStatus::VmStep) - start;
                    RAN.with(|r| {
                        r.borrow_mut()
                            .push((stmt.sql().into_owned(), i64::from(steps)))
                    });
                }
                _ => {}
            }
        }

        pub fn take() -> Vec<(String, i64)> {
            STARTED.with(|s| s.borrow_mut().clear());
            RAN.with(|r| std::mem::take(&mut *r.borrow_mut()))
        }
    }

    fn test_batch(shard: u32, batch: u32, first_test: u32, n: u32) -> TestCaseBatch {
        TestCaseBatch {
            execution_id: "E".into(),
            shard_index: shard,
            attempt: 1,
            batch,
            workflow: "w".into(),
            results: (first_test..first_test + n)
                .map(|t| TestCaseResult {
                    id: format!("suite/test-{t:06}"),
                    status: 1 + (t % 4) as i32,
                    duration_ms: u64::from(t % 50),
                    ..TestCaseResult::default()
                })
                .collect(),
            ..TestCaseBatch::default()
        }
    }

    /// An execution of 4 shards that stored `stored` test cases in batches of 10, then the
    /// statements (SQL, VM steps) that one more batch and the update published after it run.
    fn one_more_batch_after(stored: u32) -> Vec<(String, i64)> {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
        let plan = Execution {
            id: "E".into(),
            workflow: "w".into(),
            shard_count: 4,
            created_at_ms: 1,
            ..Execution::default()
        };
        record_execution(&mut conn, &plan).unwrap();
        for shard in 0..4 {
            let running = ShardStatus {
                execution_id: "E".into(),
                shard_index: shard,
                attempt: 1,
                state: ShardState::Running.into(),
                started_at_ms: 2,
                ..ShardStatus::default()
            };
            record_shard_status(&mut conn, &running).unwrap();
        }
        for n in 0..stored / 10 {
            record_batch(&mut conn, &test_batch(n % 4, n / 4, n * 10, 10)).unwrap();
        }
        let next = stored / 10;
        conn.trace_v2(
            rusqlite::trace::TraceEventCodes::SQLITE_TRACE_STMT
                | rusqlite::trace::TraceEventCodes::SQLITE_TRACE_PROFILE,
            Some(observed::observe),
        );
        observed::take();
        // What the aggregator does per batch: record it, then build the update to publish.
        assert!(record_batch(&mut conn, &test_batch(next % 4, next / 4, next * 10, 10)).unwrap());
        assert!(is_planned(&conn, "E").unwrap());
        bump_revision(&conn, "E").unwrap();
        let update = execution_update(&conn, "E").unwrap().unwrap();
        assert_eq!(
            update.passed + update.failed + update.errored + update.skipped,
            stored + 10
        );
        conn.trace_v2(rusqlite::trace::TraceEventCodes::empty(), None);
        observed::take()
    }

    /// Recording a batch and building the update that follows it cost the same however many
    /// test cases the execution stored before (counted in SQLite VM steps, not time), and
    /// none of their statements scans a table.
    #[test]
    fn a_batch_costs_the_same_however_large_its_execution() {
        let total = |ran: &[(String, i64)]| ran.iter().map(|(_, steps)| steps).sum::<i64>();
        let small = one_more_batch_after(40);
        let large = one_more_batch_after(4_000);
        let (small_steps, large_steps) = (total(&small), total(&large));
        assert!(small_steps > 0);
        // The same statements in the same order; a B-tree one level deeper may cost a step
        // here and there, a recount of 4,000 rows would cost tens of thousands.
        assert_eq!(
            small.iter().map(|(sql, _)| sql).collect::<Vec<_>>(),
            large.iter().map(|(sql, _)| sql).collect::<Vec<_>>()
        );
        assert!(
            large_steps <= small_steps + small_steps / 20,
            "{small_steps} VM steps after 40 test cases, {large_steps} after 4,000: {large:#?}"
        );

        let conn = Connection::open_in_memory().unwrap();
        let mut conn = conn;
        crate::schema::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for (sql, _) in &large {
            if !seen.insert(sql.as_str()) {
                continue;
            }
            assert!(
                !sql.contains("FROM test_cases") && !sql.contains("FROM batches"),
                "a batch reads stored test cases or batches: {sql}"
            );
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next().unwrap() {
                let detail: String = row.get(3).unwrap();
                assert!(
                    !detail.starts_with("SCAN "),
                    "a statement of the batch path scans a table ({detail}): {sql}"
                );
            }
        }
    }
}
