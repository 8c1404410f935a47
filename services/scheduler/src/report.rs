//! The scheduler's side of `TestWorkflow` status: each execution's start (its plan record)
//! and every update the aggregator publishes become the workflow object's status through
//! the cluster catalog's [`StatusWriter`], which writes in the background (recording here
//! never waits on the Kubernetes API). Only with `--catalog kubernetes`.

use assay_cluster::{ExecutionReport, StatusWriter};
use assay_proto::{Execution, ExecutionStatus, ExecutionUpdate};
use assay_spec::crd::Counts;

/// The word `status.lastExecutionStatus` uses for `status`.
pub(crate) fn status_word(status: i32) -> &'static str {
    match ExecutionStatus::try_from(status).unwrap_or(ExecutionStatus::Unspecified) {
        ExecutionStatus::Unspecified | ExecutionStatus::Queued => "queued",
        ExecutionStatus::Running => "running",
        ExecutionStatus::Passed => "passed",
        ExecutionStatus::Failed => "failed",
        ExecutionStatus::Errored => "errored",
        ExecutionStatus::Cancelled => "cancelled",
        ExecutionStatus::TimedOut => "timed_out",
    }
}

/// An execution as planned (queued, started or rejected): no counts yet, revision 0, so
/// any update from the aggregator wins over it.
pub(crate) fn planned(writer: Option<&StatusWriter>, exec: &Execution) {
    let Some(writer) = writer else { return };
    writer.execution(ExecutionReport {
        workflow: exec.workflow.clone(),
        execution_id: exec.id.clone(),
        status: status_word(exec.status).to_string(),
        reason: exec.reason.clone(),
        counts: Counts::default(),
        created_at_ms: exec.created_at_ms,
        revision: 0,
    });
}

/// An update of an execution from the aggregator (`assay.v1.executions.<workflow>.<id>`).
pub(crate) fn updated(writer: Option<&StatusWriter>, u: &ExecutionUpdate) {
    let Some(writer) = writer else { return };
    let counts = Counts {
        passed: u.passed.into(),
        failed: u.failed.into(),
        skipped: u.skipped.into(),
        errored: u.errored.into(),
        total: u64::from(u.passed)
            + u64::from(u.failed)
            + u64::from(u.skipped)
            + u64::from(u.errored),
    };
    writer.execution(ExecutionReport {
        workflow: u.workflow.clone(),
        execution_id: u.execution_id.clone(),
        status: status_word(u.status).to_string(),
        reason: u.reason.clone(),
        counts,
        created_at_ms: u.created_at_ms,
        // Plan records are revision 0; the aggregator's updates start above it.
        revision: u.revision.saturating_add(1),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_a_word() {
        assert_eq!(status_word(ExecutionStatus::Passed as i32), "passed");
        assert_eq!(status_word(ExecutionStatus::TimedOut as i32), "timed_out");
        assert_eq!(status_word(99), "queued");
    }
}
