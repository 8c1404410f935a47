//! Retention of executions: one that ended before a cutoff is deleted with everything
//! recorded for it (shard attempts, result batches and their tallies, test cases, queue
//! claims, labels). The
//! per-test duration history (`test_history`) is kept: it is per workflow, bounded by the
//! number of tests, and what planning learns from.

use rusqlite::{Connection, params};

use crate::Result;

/// At most this many executions are deleted by one prune, so a sweep never holds the write
/// lock for long; the aggregator prunes on every sweep, so deletion keeps pace.
pub const PRUNE_EXECUTIONS: u32 = 64;

/// Deletes up to [`PRUNE_EXECUTIONS`] executions that ended (any terminal status) before
/// `ended_before_ms`, oldest first; an ended execution without an end time (rejected before
/// it ran) counts from its creation. Returns how many were deleted.
pub(crate) fn prune(conn: &mut Connection, ended_before_ms: i64) -> Result<usize> {
    let tx = conn.transaction()?;
    let ids: Vec<String> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id FROM executions
             WHERE planned = 1 AND status IN (3, 4, 5, 6, 7)
               AND finished_at_ms > 0 AND finished_at_ms < ?1
             UNION ALL
             SELECT id FROM executions
             WHERE planned = 1 AND status IN (3, 4, 5, 6, 7)
               AND finished_at_ms = 0 AND created_at_ms < ?1
             LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![ended_before_ms, PRUNE_EXECUTIONS], |row| {
            row.get::<_, String>(0)
        })?;
        rows.collect::<std::result::Result<_, _>>()?
    };
    for id in &ids {
        for table in [
            "shard_attempts",
            "batches",
            "attempt_tallies",
            "test_cases",
            "queue_claims",
            "queue_totals",
            "execution_labels",
        ] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE execution_id = ?1"),
                [id],
            )?;
        }
        tx.execute("DELETE FROM executions WHERE id = ?1", [id])?;
    }
    tx.commit()?;
    Ok(ids.len())
}
