//! Per workflow and test: how often it ran, how it ended, and what it took — an
//! exponentially weighted mean and a high percentile over the recent runs. The planner
//! reads these to split suites by duration.

use assay_proto::{ExecutionStatus, TestEstimate, TestHistory, TestStatus};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::Result;

/// Weight of the newest run in the moving mean.
pub const EWMA_ALPHA: f64 = 0.3;
/// Durations kept for percentiles.
pub const RECENT: usize = 32;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The q-quantile (0..=1) of `values` by nearest rank; 0 for none.
pub fn quantile(values: &[u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = (q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// One stored test case, as history folds it: its id, status and duration.
struct Outcome {
    id: String,
    status: i32,
    duration_ms: u64,
}

/// Folds the test cases of one shard attempt of an ended execution into its workflow's
/// history and marks the attempt folded, in one transaction: the attempt that comes first
/// among those of `execution` (or of any ended execution) not folded yet. Returns the
/// attempt's test cases, `None` when nothing is left to fold.
///
/// History used to be updated row by row as each batch arrived; its rows are keyed by test
/// id, so every batch wrote into as many places of that B-tree as it had tests (at 100,000
/// tests, more than a page per test and half the ingest CPU). Folded after the end, one
/// attempt's rows are read in test id order (their key order) and upserted in that order:
/// the history B-tree is walked once, front to back. Rows from every attempt count, the
/// older attempts first (as they did when recorded on arrival); late rows do not.
pub(crate) fn fold_next(conn: &mut Connection, execution: Option<&str>) -> Result<Option<usize>> {
    let tx = conn.transaction()?;
    let next: Option<(String, u32, u32, String)> = tx
        .query_row(
            "SELECT t.execution_id, t.shard_index, t.attempt, e.workflow
             FROM attempt_tallies t JOIN executions e ON e.id = t.execution_id
             WHERE t.history_folded = 0 AND e.planned = 1 AND e.status >= ?1
               AND (?2 IS NULL OR t.execution_id = ?2)
             ORDER BY t.execution_id, t.shard_index, t.attempt LIMIT 1",
            params![ExecutionStatus::Passed as i32, execution],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()?;
    let Some((id, shard, attempt, workflow)) = next else {
        return Ok(None);
    };
    let mut folded = 0;
    if !workflow.is_empty() {
        let now = now_ms();
        let mut rows = tx.prepare(
            "SELECT test_id, status, duration_ms FROM test_cases
             WHERE execution_id = ?1 AND shard_index = ?2 AND attempt = ?3 AND late = 0
             ORDER BY test_id",
        )?;
        let mut rows = rows.query(params![id, shard, attempt])?;
        while let Some(row) = rows.next()? {
            let outcome = Outcome {
                id: row.get(0)?,
                status: row.get(1)?,
                duration_ms: row.get::<_, i64>(2)?.max(0) as u64,
            };
            record(&tx, &workflow, &outcome, now)?;
            folded += 1;
        }
    }
    tx.execute(
        "UPDATE attempt_tallies SET history_folded = 1
         WHERE execution_id = ?1 AND shard_index = ?2 AND attempt = ?3",
        params![id, shard, attempt],
    )?;
    if folded > 0 {
        tx.execute(
            "INSERT INTO history_versions (workflow, version) VALUES (?1, 1)
             ON CONFLICT (workflow) DO UPDATE SET version = version + 1",
            [&workflow],
        )?;
    }
    tx.commit()?;
    Ok(Some(folded))
}

/// Folds one test case into its history row.
fn record(tx: &Transaction<'_>, workflow: &str, r: &Outcome, now: i64) -> Result<()> {
    let status = TestStatus::try_from(r.status).unwrap_or(TestStatus::Unspecified);
    // Both statements run once per new test case: cached, so a batch parses neither again.
    let row: Option<(f64, String, i64)> = tx
        .prepare_cached(
            "SELECT ewma_ms, recent_ms, runs FROM test_history WHERE workflow = ?1 AND test_id = ?2",
        )?
        .query_row(params![workflow, r.id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let (mut ewma, mut recent, runs) = match row {
        Some((e, json, runs)) => (
            e,
            serde_json::from_str::<Vec<u64>>(&json).unwrap_or_default(),
            runs,
        ),
        None => (0.0, Vec::new(), 0),
    };
    // A skipped test says nothing about how long the test takes.
    if status != TestStatus::Skipped {
        let d = r.duration_ms as f64;
        ewma = if recent.is_empty() {
            d
        } else {
            EWMA_ALPHA * d + (1.0 - EWMA_ALPHA) * ewma
        };
        recent.push(r.duration_ms);
        if recent.len() > RECENT {
            recent.remove(0);
        }
    }
    let json = serde_json::to_string(&recent).unwrap_or_else(|_| "[]".to_string());
    let (p, f, e, s) = match status {
        TestStatus::Passed => (1, 0, 0, 0),
        TestStatus::Failed => (0, 1, 0, 0),
        TestStatus::Errored => (0, 0, 1, 0),
        TestStatus::Skipped => (0, 0, 0, 1),
        TestStatus::Unspecified => (0, 0, 0, 0),
    };
    tx.prepare_cached(
        "INSERT INTO test_history (workflow, test_id, runs, passed, failed, errored, skipped,
             ewma_ms, last_ms, recent_ms, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (workflow, test_id) DO UPDATE SET
             runs = ?3, passed = passed + ?4, failed = failed + ?5, errored = errored + ?6,
             skipped = skipped + ?7, ewma_ms = ?8, last_ms = ?9, recent_ms = ?10,
             updated_at_ms = ?11",
    )?
    .execute(params![
        workflow,
        r.id,
        runs + 1,
        p,
        f,
        e,
        s,
        ewma,
        r.duration_ms as i64,
        json,
        now
    ])?;
    Ok(())
}

/// Duration estimates of `workflow`'s tests among the next `limit` ids after `after`, in
/// id order, with the last id read (`None`: nothing after `after`): the tests measured at
/// least once and seen since `seen_since_ms` — what a history snapshot carries, read a page
/// at a time so that a writer never holds the whole suite.
pub(crate) fn estimates(
    conn: &rusqlite::Connection,
    workflow: &str,
    seen_since_ms: i64,
    after: &str,
    limit: usize,
) -> Result<(Vec<TestEstimate>, Option<String>)> {
    let mut stmt = conn.prepare_cached(
        "SELECT test_id, ewma_ms, recent_ms, updated_at_ms FROM test_history
         WHERE workflow = ?1 AND test_id > ?2 ORDER BY test_id LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![workflow, after, limit as i64])?;
    let mut out = Vec::with_capacity(limit.min(4096));
    let mut last = None;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let recent: Vec<u64> = serde_json::from_str(&row.get::<_, String>(2)?).unwrap_or_default();
        // Never measured (only skipped so far) or not seen for the kept time (renamed,
        // deleted, moved): nothing to plan with.
        if !recent.is_empty() && row.get::<_, i64>(3)? >= seen_since_ms {
            out.push(TestEstimate {
                id: id.clone(),
                mean_ms: row.get(1)?,
                p90_ms: quantile(&recent, 0.9),
            });
        }
        last = Some(id);
    }
    Ok((out, last))
}

/// How many folds changed `workflow`'s history so far (0: none).
pub(crate) fn version(conn: &rusqlite::Connection, workflow: &str) -> Result<u64> {
    Ok(conn
        .query_row(
            "SELECT version FROM history_versions WHERE workflow = ?1",
            [workflow],
            |row| row.get::<_, i64>(0),
        )
        .optional()?
        .unwrap_or(0)
        .max(0) as u64)
}

/// History rows of a workflow (one test when `test` is given), slowest first.
pub(crate) fn list(
    conn: &rusqlite::Connection,
    workflow: &str,
    test: Option<&str>,
) -> Result<Vec<TestHistory>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM test_history WHERE workflow = ?1 AND (?2 IS NULL OR test_id = ?2)"
    ))?;
    let mut rows = stmt.query(params![workflow, test])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(from_row(row)?);
    }
    slowest_first(&mut out);
    Ok(out)
}

/// The columns of a `test_history` row read back, selected in this order: `test_id, runs,
/// passed, failed, errored, skipped, ewma_ms, last_ms, recent_ms, updated_at_ms`.
pub(crate) const COLUMNS: &str = "test_id, runs, passed, failed, errored, skipped, ewma_ms, \
    last_ms, recent_ms, updated_at_ms";

/// One row selected with [`COLUMNS`].
pub(crate) fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TestHistory> {
    let recent: Vec<u64> = serde_json::from_str(&row.get::<_, String>(8)?).unwrap_or_default();
    Ok(TestHistory {
        test_id: row.get(0)?,
        runs: row.get(1)?,
        passed: row.get(2)?,
        failed: row.get(3)?,
        errored: row.get(4)?,
        skipped: row.get(5)?,
        mean_ms: row.get(6)?,
        last_ms: row.get::<_, i64>(7)?.max(0) as u64,
        p50_ms: quantile(&recent, 0.5),
        p90_ms: quantile(&recent, 0.9),
        samples: recent.len() as u32,
        updated_at_ms: row.get(9)?,
    })
}

/// Slowest (highest mean) first, ties by test id.
pub(crate) fn slowest_first(tests: &mut [TestHistory]) {
    tests.sort_by(|a, b| {
        b.mean_ms
            .total_cmp(&a.mean_ms)
            .then_with(|| a.test_id.cmp(&b.test_id))
    });
}

/// The median time from an execution's creation to the start of its shards' first attempts,
/// over the workflow's 50 most recent such shards; `None` before any shard started.
pub(crate) fn shard_start_ms(conn: &rusqlite::Connection, workflow: &str) -> Result<Option<f64>> {
    let mut stmt = conn.prepare(
        "SELECT sa.started_at_ms - e.created_at_ms
         FROM shard_attempts sa JOIN executions e ON e.id = sa.execution_id
         WHERE e.workflow = ?1 AND sa.attempt = 1 AND sa.started_at_ms > 0
           AND e.created_at_ms > 0 AND sa.started_at_ms >= e.created_at_ms
         ORDER BY sa.execution_id DESC LIMIT 50",
    )?;
    let values: Vec<u64> = stmt
        .query_map(params![workflow], |row| row.get::<_, i64>(0))?
        .filter_map(|v| v.ok())
        .map(|v| v.max(0) as u64)
        .collect();
    Ok((!values.is_empty()).then(|| quantile(&values, 0.5) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        assert_eq!(quantile(&[], 0.9), 0);
        assert_eq!(quantile(&[5], 0.9), 5);
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(quantile(&v, 0.5), 5);
        assert_eq!(quantile(&v, 0.9), 9);
        assert_eq!(quantile(&v, 1.0), 10);
    }
}
