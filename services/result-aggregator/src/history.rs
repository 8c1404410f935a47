//! What the aggregator writes as a workflow's duration history: the estimates of the tests
//! it has measured and seen within [`HISTORY_KEPT`], and the measured shard start cost.
//! Tests not seen for that long (renamed, deleted, moved to another workflow) are left out,
//! so the history stays as large as the suite is, not as large as it ever was.
//!
//! The snapshot is read from the store a page at a time and encoded piece by piece as it
//! is read: the aggregator holds one page of estimates and the encoded pieces, never the
//! suite's history as rows and messages (which took it from 27 to 290 MiB at 100,000 tests).

use assay_bus::history::{HISTORY_KEPT, PieceEncoder, Pieces};
use assay_store::Store;

/// Tests read from the store per page while a snapshot is built.
const PAGE: usize = 2_000;

/// The encoded pieces of `workflow`'s snapshot at `now_ms`.
pub(crate) async fn pieces(
    store: &Store,
    workflow: &str,
    shard_start_ms: f64,
    now_ms: i64,
) -> assay_store::Result<Pieces> {
    let seen_since = now_ms - HISTORY_KEPT.as_millis() as i64;
    let mut encoder = PieceEncoder::new(workflow, now_ms, shard_start_ms);
    let mut after = String::new();
    loop {
        let (page, last) = store
            .history_estimates(workflow, seen_since, &after, PAGE)
            .await?;
        for t in page {
            encoder.push(t);
        }
        match last {
            Some(id) => after = id,
            None => return Ok(encoder.finish()),
        }
    }
}
