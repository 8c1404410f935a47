//! The pure core: an execution's status, counts and shard summaries from what the store holds.

use assay_proto::v1::{ExecutionStatus, ShardState, ShardSummary};

/// What the store knows about the latest attempt of one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardProgress {
    pub index: u32,
    /// Latest attempt seen in a status or a result batch; 0 when nothing was seen.
    pub attempt: u32,
    /// State of the latest attempt: `Queued` when nothing was seen, `Running` when results
    /// arrived before any status.
    pub state: ShardState,
    pub reason: String,
    pub exit_code: i32,
    /// Batches the terminal status announced (0 before a terminal status).
    pub result_batches: u32,
    /// Distinct batches recorded for the latest attempt.
    pub batches_seen: u32,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub passed: u32,
    pub failed: u32,
    pub errored: u32,
    pub skipped: u32,
    /// Tests that passed only on a retry (also counted in `passed`).
    pub flaky: u32,
    /// The latest attempt ended but announced another attempt.
    pub will_retry: bool,
}

impl ShardProgress {
    /// A shard nothing is known about yet.
    pub fn queued(index: u32) -> Self {
        ShardProgress {
            index,
            attempt: 0,
            state: ShardState::Queued,
            reason: String::new(),
            exit_code: 0,
            result_batches: 0,
            batches_seen: 0,
            started_at_ms: 0,
            finished_at_ms: 0,
            passed: 0,
            failed: 0,
            errored: 0,
            skipped: 0,
            flaky: 0,
            will_retry: false,
        }
    }

    /// Terminal, and every batch the terminal status announced has been recorded.
    pub fn is_complete(&self) -> bool {
        shard_state_is_terminal(self.state)
            && !self.will_retry
            && self.batches_seen >= self.result_batches
    }

    pub fn duration_ms(&self) -> u64 {
        if self.started_at_ms > 0 && self.finished_at_ms >= self.started_at_ms {
            u64::try_from(self.finished_at_ms - self.started_at_ms).unwrap_or(0)
        } else {
            0
        }
    }

    /// The shard as readers see it: a terminal state counts only once every result batch
    /// it announced has landed; until then the shard still shows as running.
    pub fn summary(&self) -> ShardSummary {
        let state = if shard_state_is_terminal(self.state) && !self.is_complete() {
            ShardState::Running
        } else {
            self.state
        };
        let reason = if self.will_retry {
            format!("attempt {} {}; retrying", self.attempt, self.reason)
        } else {
            self.reason.clone()
        };
        ShardSummary {
            index: self.index,
            state: state.into(),
            attempt: self.attempt,
            passed: self.passed,
            failed: self.failed,
            errored: self.errored,
            skipped: self.skipped,
            reason,
            duration_ms: self.duration_ms(),
            flaky: self.flaky,
        }
    }
}

/// An execution's status with why and when it ended (0 while it runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: ExecutionStatus,
    pub reason: String,
    pub finished_at_ms: i64,
}

pub fn execution_status_is_terminal(status: ExecutionStatus) -> bool {
    status.is_terminal()
}

pub fn shard_state_is_terminal(state: ShardState) -> bool {
    state.is_terminal()
}

/// Order in which a shard attempt's states may move: queued < waiting for capacity <
/// running < terminal.
pub(crate) fn shard_state_rank(state: ShardState) -> u8 {
    match state {
        ShardState::Unspecified => 0,
        ShardState::Queued => 1,
        ShardState::WaitingForCapacity => 2,
        ShardState::Running => 3,
        _ => 4,
    }
}

/// The status of an execution from its recorded status, its shards `0..shard_count`
/// (`shards` holds exactly those, in index order) and how many batches of its work queues
/// have not been reported although their queues' totals are known (`unreported_queue_batches`).
///
/// A terminal recorded status wins. Otherwise the execution is terminal once every shard is
/// complete, the worst outcome deciding (timed out > errored > failed > cancelled > passed);
/// running once any shard is; queued before that. Except: when every shard passed, their
/// queues were drained, so a queue batch not reported yet ran and its results are on their
/// way (published by a worker that died, say, and held up on the bus); the execution runs on
/// until they arrive, so that its counts are exact. When a shard did not pass, the execution
/// ends without waiting: nothing says its queue was drained, and a batch left in it would
/// never be reported.
pub fn derive_status(
    recorded: &Verdict,
    shards: &[ShardProgress],
    unreported_queue_batches: u32,
) -> Verdict {
    if execution_status_is_terminal(recorded.status) {
        return recorded.clone();
    }
    let complete = shards.iter().all(ShardProgress::is_complete);
    if complete
        && unreported_queue_batches > 0
        && shards.iter().all(|s| s.state == ShardState::Passed)
    {
        let noun = if unreported_queue_batches == 1 {
            "batch"
        } else {
            "batches"
        };
        return Verdict {
            status: ExecutionStatus::Running,
            reason: format!(
                "every shard passed; waiting for the results of {unreported_queue_batches} work-queue {noun} still on their way"
            ),
            finished_at_ms: 0,
        };
    }
    if !complete {
        let running = shards
            .iter()
            .any(|s| shard_state_rank(s.state) >= shard_state_rank(ShardState::Running));
        let status = if running {
            ExecutionStatus::Running
        } else {
            ExecutionStatus::Queued
        };
        return Verdict {
            status,
            reason: recorded.reason.clone(),
            finished_at_ms: 0,
        };
    }

    let finished_at_ms = shards.iter().map(|s| s.finished_at_ms).max().unwrap_or(0);
    let first_in = |state: ShardState| shards.iter().find(|s| s.state == state);
    let (status, reason) = if let Some(shard) = first_in(ShardState::TimedOut) {
        (ExecutionStatus::TimedOut, shard_reason(shard, "timed out"))
    } else if let Some(shard) = first_in(ShardState::Errored) {
        (ExecutionStatus::Errored, shard_reason(shard, "errored"))
    } else if let Some(shard) = first_in(ShardState::Failed) {
        (ExecutionStatus::Failed, shard_reason(shard, "failed"))
    } else if shards.iter().any(|s| s.failed + s.errored > 0) {
        let failing: u32 = shards.iter().map(|s| s.failed + s.errored).sum();
        let noun = if failing == 1 { "test" } else { "tests" };
        (ExecutionStatus::Failed, format!("{failing} {noun} failed"))
    } else if let Some(shard) = first_in(ShardState::Cancelled) {
        (ExecutionStatus::Cancelled, shard_reason(shard, "cancelled"))
    } else {
        (ExecutionStatus::Passed, recorded.reason.clone())
    };
    Verdict {
        status,
        reason,
        finished_at_ms,
    }
}

fn shard_reason(shard: &ShardProgress, what: &str) -> String {
    if shard.reason.is_empty() {
        format!("shard {} {what}", shard.index)
    } else {
        format!("shard {}: {}", shard.index, shard.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued() -> Verdict {
        Verdict {
            status: ExecutionStatus::Queued,
            reason: String::new(),
            finished_at_ms: 0,
        }
    }

    fn done(index: u32, state: ShardState, finished_at_ms: i64) -> ShardProgress {
        ShardProgress {
            attempt: 1,
            state,
            result_batches: 1,
            batches_seen: 1,
            started_at_ms: 10,
            finished_at_ms,
            passed: 1,
            ..ShardProgress::queued(index)
        }
    }

    #[test]
    fn recorded_terminal_status_wins() {
        let recorded = Verdict {
            status: ExecutionStatus::Cancelled,
            reason: "replaced by a newer execution".into(),
            finished_at_ms: 5,
        };
        let shards = [done(0, ShardState::Passed, 100)];
        assert_eq!(derive_status(&recorded, &shards, 0), recorded);
    }

    #[test]
    fn nothing_seen_is_queued() {
        let shards = [ShardProgress::queued(0), ShardProgress::queued(1)];
        assert_eq!(
            derive_status(&queued(), &shards, 0).status,
            ExecutionStatus::Queued
        );
    }

    #[test]
    fn any_running_shard_makes_it_running() {
        let mut running = ShardProgress::queued(1);
        running.state = ShardState::Running;
        let shards = [ShardProgress::queued(0), running];
        assert_eq!(
            derive_status(&queued(), &shards, 0).status,
            ExecutionStatus::Running
        );
    }

    #[test]
    fn terminal_shard_waiting_for_batches_is_not_complete() {
        let mut waiting = done(0, ShardState::Passed, 100);
        waiting.result_batches = 3;
        waiting.batches_seen = 2;
        assert!(!waiting.is_complete());
        let verdict = derive_status(&queued(), &[waiting], 0);
        assert_eq!(verdict.status, ExecutionStatus::Running);
        assert_eq!(verdict.finished_at_ms, 0);
    }

    #[test]
    fn all_passed_is_passed_at_the_last_finish() {
        let shards = [
            done(0, ShardState::Passed, 100),
            done(1, ShardState::Passed, 300),
        ];
        let verdict = derive_status(&queued(), &shards, 0);
        assert_eq!(verdict.status, ExecutionStatus::Passed);
        assert_eq!(verdict.finished_at_ms, 300);
    }

    #[test]
    fn worst_outcome_decides() {
        let cases = [
            (
                [
                    ShardState::Passed,
                    ShardState::TimedOut,
                    ShardState::Errored,
                ],
                ExecutionStatus::TimedOut,
            ),
            (
                [
                    ShardState::Failed,
                    ShardState::Errored,
                    ShardState::Cancelled,
                ],
                ExecutionStatus::Errored,
            ),
            (
                [
                    ShardState::Cancelled,
                    ShardState::Failed,
                    ShardState::Passed,
                ],
                ExecutionStatus::Failed,
            ),
            (
                [
                    ShardState::Passed,
                    ShardState::Cancelled,
                    ShardState::Passed,
                ],
                ExecutionStatus::Cancelled,
            ),
        ];
        for (states, expected) in cases {
            let shards: Vec<_> = states
                .iter()
                .enumerate()
                .map(|(i, s)| done(i as u32, *s, 100))
                .collect();
            assert_eq!(
                derive_status(&queued(), &shards, 0).status,
                expected,
                "{states:?}"
            );
        }
    }

    #[test]
    fn failing_test_cases_fail_a_passed_shard() {
        let mut shard = done(0, ShardState::Passed, 100);
        shard.errored = 1;
        let verdict = derive_status(&queued(), &[shard, done(1, ShardState::Cancelled, 50)], 0);
        assert_eq!(verdict.status, ExecutionStatus::Failed);
        assert_eq!(verdict.reason, "1 test failed");
    }

    #[test]
    fn reason_names_the_deciding_shard() {
        let mut oom = done(1, ShardState::Errored, 100);
        oom.reason = "OOMKilled".into();
        let verdict = derive_status(&queued(), &[done(0, ShardState::Passed, 90), oom], 0);
        assert_eq!(verdict.reason, "shard 1: OOMKilled");
        let verdict = derive_status(&queued(), &[done(0, ShardState::TimedOut, 90)], 0);
        assert_eq!(verdict.reason, "shard 0 timed out");
    }

    #[test]
    fn passed_shards_wait_for_queue_batches_still_in_flight() {
        let shards = [
            done(0, ShardState::Passed, 100),
            done(1, ShardState::Passed, 300),
        ];
        let waiting = derive_status(&queued(), &shards, 2);
        assert_eq!(waiting.status, ExecutionStatus::Running);
        assert_eq!(waiting.finished_at_ms, 0);
        assert!(
            waiting.reason.contains("2 work-queue batches"),
            "{waiting:?}"
        );
        // Failing tests in the batches already in do not end it early either.
        let mut failing = shards.clone();
        failing[0].failed = 1;
        assert_eq!(
            derive_status(&queued(), &failing, 1).status,
            ExecutionStatus::Running
        );
        // All in: passed at the last finish.
        let verdict = derive_status(&queued(), &shards, 0);
        assert_eq!(verdict.status, ExecutionStatus::Passed);
        assert_eq!(verdict.finished_at_ms, 300);
        // A recorded end (cancelled, timed out by the sweep) wins over waiting.
        let recorded = Verdict {
            status: ExecutionStatus::TimedOut,
            reason: "execution exceeded its timeout".into(),
            finished_at_ms: 9,
        };
        assert_eq!(derive_status(&recorded, &shards, 3), recorded);
    }

    #[test]
    fn a_shard_that_did_not_pass_ends_it_without_waiting_for_queue_batches() {
        for state in [
            ShardState::Failed,
            ShardState::Errored,
            ShardState::Cancelled,
            ShardState::TimedOut,
        ] {
            let shards = [done(0, ShardState::Passed, 100), done(1, state, 300)];
            let verdict = derive_status(&queued(), &shards, 5);
            assert!(verdict.status.is_terminal(), "{state:?}: {verdict:?}");
            assert_eq!(verdict.finished_at_ms, 300);
        }
        // Shards still running: running, whatever the queues say.
        let mut running = done(1, ShardState::Running, 0);
        running.result_batches = 0;
        let verdict = derive_status(&queued(), &[done(0, ShardState::Passed, 1), running], 5);
        assert_eq!(verdict.status, ExecutionStatus::Running);
        assert_eq!(verdict.reason, "");
    }

    #[test]
    fn duration_is_zero_until_finished() {
        let mut shard = ShardProgress::queued(0);
        shard.started_at_ms = 1_000;
        assert_eq!(shard.duration_ms(), 0);
        shard.finished_at_ms = 1_250;
        assert_eq!(shard.summary().duration_ms, 250);
    }
}
