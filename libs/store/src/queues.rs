//! Work-queue totals per execution (`queue_totals`): per queue (a matrix combination's, told
//! apart by its batch numbers), how many batches its filler sealed it with, as the results of
//! its batches and the final statuses of the shards that drained it say, and how many
//! distinct batches were reported. A drained queue whose
//! reported batches fall short of its total has results still in flight on the bus (published,
//! so no worker runs those batches again, but not yet recorded): the execution must not end
//! without them. Kept in the transaction that inserts the queue claims, so that `reported`
//! always equals a count of the `queue_claims` rows, and read as one row per queue.

use rusqlite::{Connection, Transaction, params};

use crate::Result;

/// Adds what one report of a work queue tells: `claimed` when it was the first report of one
/// of its batches, `total` the queue's batch count (0: unknown), from the results of one of
/// its batches or the final status of a shard that drained it. The largest total reported
/// wins: every seal counts batches that were all published before it.
pub(crate) fn record(
    tx: &Transaction<'_>,
    execution: &str,
    group: u32,
    claimed: bool,
    total: u32,
) -> Result<()> {
    if !claimed && total == 0 {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO queue_totals (execution_id, queue_group, total, reported)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (execution_id, queue_group) DO UPDATE SET
             total = MAX(total, excluded.total),
             reported = reported + excluded.reported",
    )?
    .execute(params![execution, group, total, u32::from(claimed)])?;
    Ok(())
}

/// How many batches of the execution's work queues with a known total have not been
/// reported yet (0 when no total is known: results of older runners).
pub(crate) fn unreported(conn: &Connection, execution: &str) -> Result<u32> {
    let mut stmt = conn.prepare_cached(
        "SELECT total, reported FROM queue_totals WHERE execution_id = ?1 AND total > 0",
    )?;
    let mut rows = stmt.query([execution])?;
    let mut missing = 0u32;
    while let Some(r) = rows.next()? {
        let (total, reported): (u32, u32) = (r.get(0)?, r.get(1)?);
        missing = missing.saturating_add(total.saturating_sub(reported));
    }
    Ok(missing)
}

/// (queue group, total, reported) of every queue of the execution, ordered by group.
#[cfg(test)]
pub(crate) fn load(conn: &Connection, execution: &str) -> Result<Vec<(u32, u32, u32)>> {
    let mut stmt = conn.prepare(
        "SELECT queue_group, total, reported FROM queue_totals WHERE execution_id = ?1
         ORDER BY queue_group",
    )?;
    let rows = stmt.query_map([execution], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The reported counts per queue group counted afresh from `queue_claims`: what the
/// `reported` column of [`load`] must always equal. Scans the execution; for tests only.
#[cfg(test)]
pub(crate) fn recount_reported(conn: &Connection, execution: &str) -> Result<Vec<(u32, u32)>> {
    let mut stmt = conn.prepare(
        "SELECT (queue_batch - 1) >> 20, COUNT(*) FROM queue_claims
         WHERE execution_id = ?1 AND queue_batch > 0 GROUP BY 1 ORDER BY 1",
    )?;
    let rows = stmt.query_map([execution], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
