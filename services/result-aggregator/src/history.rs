//! What the aggregator writes as a workflow's duration history: the estimates of the tests
//! it has measured and seen within [`HISTORY_KEPT`], and the measured shard start cost.
//! Tests not seen for that long (renamed, deleted, moved to another workflow) are left out,
//! so the history stays as large as the suite is, not as large as it ever was.

use assay_bus::history::HISTORY_KEPT;
use assay_proto::{HistorySnapshot, TestEstimate, TestHistory};

/// The snapshot of `workflow` from its history rows, at `now_ms`.
pub(crate) fn snapshot(
    workflow: &str,
    rows: &[TestHistory],
    shard_start_ms: f64,
    now_ms: i64,
) -> HistorySnapshot {
    let seen_since = now_ms - HISTORY_KEPT.as_millis() as i64;
    HistorySnapshot {
        workflow: workflow.to_string(),
        tests: rows
            .iter()
            .filter(|t| t.samples > 0 && t.updated_at_ms >= seen_since)
            .map(|t| TestEstimate {
                id: t.test_id.clone(),
                mean_ms: t.mean_ms,
                p90_ms: t.p90_ms,
            })
            .collect(),
        updated_at_ms: now_ms,
        shard_start_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, samples: u32, updated_at_ms: i64) -> TestHistory {
        TestHistory {
            test_id: id.into(),
            samples,
            mean_ms: 10.0,
            p90_ms: 12,
            updated_at_ms,
            ..Default::default()
        }
    }

    #[test]
    fn tests_unseen_for_the_kept_time_or_never_measured_are_left_out() {
        let now = 100 * 24 * 3600 * 1000;
        let kept = HISTORY_KEPT.as_millis() as i64;
        let rows = [
            row("fresh", 3, now - 1_000),
            row("edge", 1, now - kept),
            row("stale", 5, now - kept - 1),
            row("skipped-only", 0, now),
        ];
        let s = snapshot("w", &rows, 250.0, now);
        let ids: Vec<_> = s.tests.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["fresh", "edge"]);
        assert_eq!(s.shard_start_ms, 250.0);
        assert_eq!(s.updated_at_ms, now);
        assert_eq!(s.workflow, "w");
    }
}
