//! The scheduler's [`EventRecord`]s: what each trigger event or run request started, or why
//! nothing. One row per record however often it is delivered, newest first for readers,
//! pruned after [`EVENT_RETENTION`].

use std::time::Duration;

use assay_proto::v1::EventRecord;
use prost::Message;
use rusqlite::{Connection, params};

use crate::{Error, Result};

/// How long event records are kept (the `ASSAY_DECISIONS` stream keeps them as long).
pub const EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// At most this many expired records are deleted by one prune, so that a write never waits
/// on a large clean-up; each insert prunes, so expiry keeps pace with arrivals.
pub(crate) const PRUNE_BATCH: u32 = 256;

/// Which event records [`crate::Store::list_events`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only records handled at or after this time (Unix ms); 0: no bound.
    pub since_ms: i64,
    /// Only records of events from this source (`github`, `cron`, `run`, ...).
    pub source: Option<String>,
}

/// Stores `r` unless a record with its event id and record key is there already; returns
/// whether it was new. Then prunes up to [`PRUNE_BATCH`] records older than `expired_before_ms`.
pub(crate) fn record(
    conn: &mut Connection,
    r: &EventRecord,
    expired_before_ms: i64,
) -> Result<bool> {
    let event = r.event.clone().unwrap_or_default();
    let record_key = r
        .header
        .as_ref()
        .map(|h| h.idempotency_key.as_str())
        .unwrap_or_default();
    if event.event_id.is_empty() && record_key.is_empty() {
        return Err(Error::invalid(
            "event record",
            "neither event.event_id nor header.idempotency_key is set, so deliveries cannot be told apart from new records; the scheduler sets both",
        ));
    }
    let handled_at_ms = match r.handled_at_ms {
        0 => r
            .header
            .as_ref()
            .map(|h| h.occurred_at_ms)
            .filter(|t| *t > 0)
            .unwrap_or_else(crate::history::now_ms),
        t => t,
    };
    let tx = conn.transaction()?;
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO events (event_id, record_key, handled_at_ms, source, type, record)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            event.event_id,
            record_key,
            handled_at_ms,
            event.source,
            event.r#type,
            r.encode_to_vec(),
        ],
    )?;
    prune(&tx, expired_before_ms)?;
    tx.commit()?;
    Ok(inserted == 1)
}

/// Deletes up to [`PRUNE_BATCH`] records handled before `expired_before_ms`, oldest first;
/// returns how many.
pub(crate) fn prune(conn: &Connection, expired_before_ms: i64) -> Result<usize> {
    Ok(conn.execute(
        "DELETE FROM events WHERE rowid IN (
             SELECT rowid FROM events WHERE handled_at_ms < ?1
             ORDER BY handled_at_ms LIMIT ?2)",
        params![expired_before_ms, PRUNE_BATCH],
    )?)
}

/// Records passing `filter`, newest first (by the time they were handled, then by arrival),
/// at most `limit`.
pub(crate) fn list(
    conn: &Connection,
    filter: &EventFilter,
    limit: u32,
) -> Result<Vec<EventRecord>> {
    let mut stmt = conn.prepare(
        "SELECT record FROM events
         WHERE handled_at_ms >= ?1 AND (?2 IS NULL OR source = ?2)
         ORDER BY handled_at_ms DESC, rowid DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![filter.since_ms.max(0), filter.source, limit],
        |row| row.get::<_, Vec<u8>>(0),
    )?;
    let mut out = Vec::new();
    for bytes in rows {
        let bytes = bytes?;
        out.push(
            EventRecord::decode(bytes.as_slice())
                .map_err(|e| Error::decode("event record", e.to_string()))?,
        );
    }
    Ok(out)
}
