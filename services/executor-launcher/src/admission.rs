//! Whether a delivery of a shard job starts an attempt: one pure decision over the job and
//! what the launcher knows when it takes it (the execution's end, the shard's last status,
//! a cancellation, the clock, the delivery count). The launcher reads those facts from the
//! bus and carries the decision out; nothing here does I/O.

use assay_proto::{ExecutionStatus, ShardJob, ShardState, ShardStatus};

/// Deliveries of one shard job after which the launcher stops starting attempts and ends
/// the shard errored. Each delivery past the first is a new attempt (or a stall of the
/// launcher holding it), so this also bounds the attempts one job can start.
pub const MAX_JOB_DELIVERIES: i64 = 5;

/// The job a delivery runs. A redelivered job is a new attempt (the old runner may have
/// produced partial output): `attempt` = the message's own number + deliveries - 1. The
/// message's number stays in `job_attempt` for every status of the run.
pub(crate) fn numbered(msg: &ShardJob, delivered: i64) -> ShardJob {
    let mut job = msg.clone();
    job.job_attempt = job.attempt.max(1);
    job.attempt = job.job_attempt + (delivered.max(1) as u32 - 1);
    job
}

/// What the launcher knows about a job's shard when a delivery of it comes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Known<'a> {
    /// The execution's terminal status, when its last update says it ended.
    pub execution_ended: Option<ExecutionStatus>,
    /// The shard's last status on the bus (`None`: none yet, or unreadable).
    pub last_status: Option<&'a ShardStatus>,
    /// Why the execution was cancelled, when it was.
    pub cancelled: Option<&'a str>,
    /// The time (ms since the Unix epoch).
    pub now_ms: i64,
    /// How many times this job message has been delivered (1 the first time).
    pub delivered: i64,
    /// Deliveries after which the shard ends errored (see [`MAX_JOB_DELIVERIES`]).
    pub max_deliveries: i64,
}

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Start the attempt.
    Run,
    /// Acknowledge the delivery and do nothing else: nothing is left to do for it.
    Skip(Skip),
    /// This job message's run already ended and said a retry follows (attempt
    /// `ended_attempt`): make sure the next attempt's job is out (a crash or a NATS outage
    /// may have come between the two), then acknowledge.
    EnsureRetry { ended_attempt: u32 },
    /// End the shard without starting an attempt: the launcher reports its final status in
    /// `state`, with `reason`, and follows the end as any attempt's (fail-fast, retries).
    End { state: ShardState, reason: String },
}

/// Why a delivery is acknowledged without a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Skip {
    /// The execution ended (typically the job was redelivered because its ack was lost to a
    /// NATS restart or a launcher crash after the runner reported): a runner would start for
    /// an execution that is over.
    ExecutionEnded(ExecutionStatus),
    /// The shard already ended for good, or a newer job message of the shard has run (this
    /// is a stale copy of an older one, which a nats-server restart can bring back after it
    /// was handled): a new attempt would replace a finished one's results with nothing.
    Stale(String),
}

/// Decides what a delivery of `job` (numbered by [`numbered`]) does. The rules, first
/// match wins: an ended execution skips it; a shard that ended for good or ran a newer job
/// skips it; a run of this job message that ended with a retry has its retry made sure of;
/// a cancelled execution ends the shard cancelled; an execution past its deadline ends it
/// timed out; a job delivered more than `max_deliveries` times ends it errored; otherwise
/// the attempt runs.
pub(crate) fn admit(job: &ShardJob, known: &Known<'_>) -> Admission {
    if let Some(status) = known.execution_ended {
        return Admission::Skip(Skip::ExecutionEnded(status));
    }
    if let Some(last) = known.last_status {
        match stale_against(job, last) {
            Some(Stale::Drop(why)) => return Admission::Skip(Skip::Stale(why)),
            Some(Stale::Retried(ended_attempt)) => {
                return Admission::EnsureRetry { ended_attempt };
            }
            None => {}
        }
    }
    if let Some(reason) = known.cancelled {
        return Admission::End {
            state: ShardState::Cancelled,
            reason: reason.to_string(),
        };
    }
    // The job waited while launchers were gone, or this is a retry after the deadline.
    if job.deadline_ms > 0 && known.now_ms >= job.deadline_ms {
        return Admission::End {
            state: ShardState::TimedOut,
            reason: format!(
                "the execution's timeout of {}s passed before this attempt could start",
                job.timeout_ms / 1000
            ),
        };
    }
    // Delivered again and again without an end (its launchers kept dying or stalling past
    // the ack wait, or its runner cannot start): end the shard errored, as the server's
    // delivery limit would have, but with a status, so the execution ends.
    if known.delivered > known.max_deliveries {
        return Admission::End {
            state: ShardState::Errored,
            reason: format!(
                "the shard's job was delivered {} times without an attempt ending (its launchers \
                 died or stalled, or its runner could not start); giving up",
                known.delivered
            ),
        };
    }
    Admission::Run
}

/// Why a delivery is stale against the shard's last status.
#[derive(Debug, PartialEq)]
enum Stale {
    /// Nothing left to do for it.
    Drop(String),
    /// Its run ended and said a retry follows, from this attempt.
    Retried(u32),
}

/// Whether `job` is stale against the shard's last status `last`: an attempt already ended
/// for good (only `will_retry` brings a next one), a newer job message of the shard has run,
/// or this message's run already ended and published its retry.
fn stale_against(job: &ShardJob, last: &ShardStatus) -> Option<Stale> {
    let ended = last.state().is_terminal();
    if ended && !last.will_retry {
        return Some(Stale::Drop(format!(
            "the shard already ended ({:?}, attempt {})",
            last.state(),
            last.attempt
        )));
    }
    if last.job_attempt > job.job_attempt {
        return Some(Stale::Drop(format!(
            "a newer job of the shard (attempt {}) has run; this copy of job attempt {} is stale",
            last.job_attempt, job.job_attempt
        )));
    }
    if ended
        && last.will_retry
        && (last.job_attempt == job.job_attempt && last.job_attempt > 0
            || last.attempt >= job.attempt)
    {
        return Some(Stale::Retried(last.attempt));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use ShardState::*;

    /// `job_attempt` is the message's number, `attempt` the delivery's.
    fn job(job_attempt: u32, attempt: u32) -> ShardJob {
        ShardJob {
            job_attempt,
            attempt,
            timeout_ms: 60_000,
            deadline_ms: 10_000,
            ..Default::default()
        }
    }

    fn status(job_attempt: u32, attempt: u32, state: ShardState, will_retry: bool) -> ShardStatus {
        ShardStatus {
            job_attempt,
            attempt,
            state: state as i32,
            will_retry,
            ..Default::default()
        }
    }

    /// Nothing known against the job: it runs.
    fn fresh() -> Known<'static> {
        Known {
            execution_ended: None,
            last_status: None,
            cancelled: None,
            now_ms: 5_000,
            delivered: 1,
            max_deliveries: MAX_JOB_DELIVERIES,
        }
    }

    /// The kind of each decision, for tables that do not compare reasons.
    fn kind(a: &Admission) -> String {
        match a {
            Admission::Run => "run".into(),
            Admission::Skip(Skip::ExecutionEnded(_)) => "skip: ended".into(),
            Admission::Skip(Skip::Stale(_)) => "skip: stale".into(),
            Admission::EnsureRetry { ended_attempt } => format!("retry of {ended_attempt}"),
            Admission::End { state, .. } => format!("end {state:?}"),
        }
    }

    #[test]
    fn a_delivery_runs_as_the_next_attempt_of_its_message() {
        let msg = |attempt| ShardJob {
            attempt,
            ..Default::default()
        };
        // (published attempt, deliveries) → (job_attempt, attempt)
        for (published, delivered, want) in [
            (0, 1, (1, 1)),
            (1, 1, (1, 1)),
            (1, 2, (1, 2)),
            (1, 3, (1, 3)),
            (2, 1, (2, 2)),
            (2, 3, (2, 4)),
            (1, 0, (1, 1)),
        ] {
            let j = numbered(&msg(published), delivered);
            assert_eq!(
                (j.job_attempt, j.attempt),
                want,
                "published {published}, delivered {delivered}"
            );
        }
    }

    #[test]
    fn each_rule_alone() {
        let running = status(1, 1, Running, false);
        let passed = status(1, 1, Passed, false);
        let errored_retry = status(1, 1, Errored, true);
        let table: Vec<(&str, Known<'_>, &str)> = vec![
            ("nothing known", fresh(), "run"),
            (
                "execution ended",
                Known {
                    execution_ended: Some(ExecutionStatus::Passed),
                    ..fresh()
                },
                "skip: ended",
            ),
            (
                "the shard's attempt still running (its launcher died)",
                Known {
                    last_status: Some(&running),
                    delivered: 2,
                    ..fresh()
                },
                "run",
            ),
            (
                "the shard ended for good",
                Known {
                    last_status: Some(&passed),
                    ..fresh()
                },
                "skip: stale",
            ),
            (
                "this message's run ended with a retry",
                Known {
                    last_status: Some(&errored_retry),
                    ..fresh()
                },
                "retry of 1",
            ),
            (
                "execution cancelled",
                Known {
                    cancelled: Some("by alice"),
                    ..fresh()
                },
                "end Cancelled",
            ),
            (
                "deadline reached",
                Known {
                    now_ms: 10_000,
                    ..fresh()
                },
                "end TimedOut",
            ),
            (
                "just before the deadline",
                Known {
                    now_ms: 9_999,
                    ..fresh()
                },
                "run",
            ),
            (
                "last delivery allowed",
                Known {
                    delivered: MAX_JOB_DELIVERIES,
                    ..fresh()
                },
                "run",
            ),
            (
                "delivered once too often",
                Known {
                    delivered: MAX_JOB_DELIVERIES + 1,
                    ..fresh()
                },
                "end Errored",
            ),
        ];
        for (case, known, want) in table {
            let j = job(1, known.delivered.max(1) as u32);
            assert_eq!(kind(&admit(&j, &known)), want, "{case}");
        }
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let passed = status(1, 1, Passed, false);
        let errored_retry = status(1, 1, Errored, true);
        // Every later rule also matches in each row; the first one decides.
        let everything = Known {
            execution_ended: Some(ExecutionStatus::Cancelled),
            last_status: Some(&passed),
            cancelled: Some("by alice"),
            now_ms: 20_000,
            delivered: MAX_JOB_DELIVERIES + 1,
            max_deliveries: MAX_JOB_DELIVERIES,
        };
        let table: Vec<(&str, Known<'_>, &str)> = vec![
            ("ended before stale", everything, "skip: ended"),
            (
                "stale before cancelled",
                Known {
                    execution_ended: None,
                    ..everything
                },
                "skip: stale",
            ),
            (
                "a retry to make sure of before cancelled",
                Known {
                    execution_ended: None,
                    last_status: Some(&errored_retry),
                    ..everything
                },
                "retry of 1",
            ),
            (
                "cancelled before the deadline",
                Known {
                    execution_ended: None,
                    last_status: None,
                    ..everything
                },
                "end Cancelled",
            ),
            (
                "the deadline before the delivery cap",
                Known {
                    execution_ended: None,
                    last_status: None,
                    cancelled: None,
                    ..everything
                },
                "end TimedOut",
            ),
        ];
        for (case, known, want) in table {
            assert_eq!(kind(&admit(&job(1, 1), &known)), want, "{case}");
        }
    }

    #[test]
    fn every_combination_of_facts_is_decided_by_its_first_rule() {
        // The shard's last status, and what it alone decides for job 1 delivered as
        // attempt 1.
        let statuses = [
            (None, None),
            (Some(status(1, 1, Running, false)), None),
            (Some(status(1, 1, Passed, false)), Some("skip: stale")),
            (Some(status(2, 2, Running, false)), Some("skip: stale")),
            (Some(status(1, 1, Errored, true)), Some("retry of 1")),
        ];
        for ended in [false, true] {
            for (last, by_status) in &statuses {
                for cancelled in [false, true] {
                    for late in [false, true] {
                        for over_cap in [false, true] {
                            let known = Known {
                                execution_ended: ended.then_some(ExecutionStatus::Failed),
                                last_status: last.as_ref(),
                                cancelled: cancelled.then_some("by alice"),
                                now_ms: if late { 10_000 } else { 9_999 },
                                delivered: if over_cap { MAX_JOB_DELIVERIES + 1 } else { 1 },
                                max_deliveries: MAX_JOB_DELIVERIES,
                            };
                            let want = [
                                ended.then_some("skip: ended"),
                                *by_status,
                                cancelled.then_some("end Cancelled"),
                                late.then_some("end TimedOut"),
                                over_cap.then_some("end Errored"),
                            ]
                            .into_iter()
                            .flatten()
                            .next()
                            .unwrap_or("run");
                            assert_eq!(kind(&admit(&job(1, 1), &known)), want, "{known:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ends_say_why() {
        let cancelled = admit(
            &job(1, 1),
            &Known {
                cancelled: Some("fail-fast: shard 2 failed"),
                ..fresh()
            },
        );
        assert_eq!(
            cancelled,
            Admission::End {
                state: Cancelled,
                reason: "fail-fast: shard 2 failed".into()
            }
        );
        let late = admit(
            &job(1, 1),
            &Known {
                now_ms: 10_001,
                ..fresh()
            },
        );
        assert_eq!(
            late,
            Admission::End {
                state: TimedOut,
                reason: "the execution's timeout of 60s passed before this attempt could start"
                    .into()
            }
        );
        let Admission::End { state, reason } = admit(
            &job(1, 6),
            &Known {
                delivered: 6,
                ..fresh()
            },
        ) else {
            panic!("the delivery cap ends the shard");
        };
        assert_eq!(state, Errored);
        assert!(reason.contains("delivered 6 times"), "{reason}");
        // No deadline: never too late.
        let no_deadline = ShardJob {
            deadline_ms: 0,
            ..job(1, 1)
        };
        let much_later = Known {
            now_ms: i64::MAX,
            ..fresh()
        };
        assert_eq!(admit(&no_deadline, &much_later), Admission::Run);
    }

    #[test]
    fn stale_copies_of_handled_jobs_are_told_apart_from_redeliveries() {
        let against = |j: ShardJob, s: ShardStatus| {
            admit(
                &j,
                &Known {
                    last_status: Some(&s),
                    ..fresh()
                },
            )
        };
        // The launcher died while attempt 1 ran: the redelivery runs as attempt 2.
        assert_eq!(
            against(job(1, 2), status(1, 1, Running, false)),
            Admission::Run
        );
        // Again, while the redelivery (attempt 2) ran: attempt 3.
        assert_eq!(
            against(job(1, 3), status(1, 2, Running, false)),
            Admission::Run
        );
        // A retry's job after attempt 1 errored.
        assert_eq!(
            against(job(2, 2), status(1, 1, Errored, true)),
            Admission::Run
        );
        // Chaos seed 11: the retry (job 2) runs; an old copy of job 1 comes back as
        // attempt 3 after a nats-server restart.
        assert!(matches!(
            against(job(1, 3), status(2, 2, Running, false)),
            Admission::Skip(Skip::Stale(_))
        ));
        // A copy of job 1 whose run ended with a retry, back with its delivery count lost
        // (attempt 1 again) or not (attempt 2): the retry's job is made sure of instead.
        assert_eq!(
            against(job(1, 1), status(1, 1, Errored, true)),
            Admission::EnsureRetry { ended_attempt: 1 }
        );
        assert_eq!(
            against(job(1, 2), status(1, 1, Errored, true)),
            Admission::EnsureRetry { ended_attempt: 1 }
        );
        // Statuses of older builds carry no job number: the attempt decides.
        assert_eq!(
            against(job(1, 1), status(0, 1, Errored, true)),
            Admission::EnsureRetry { ended_attempt: 1 }
        );
        assert_eq!(
            against(job(1, 2), status(0, 1, Errored, true)),
            Admission::Run
        );
        // Over for good.
        assert_eq!(
            against(job(3, 3), status(2, 2, Passed, false)),
            Admission::Skip(Skip::Stale(
                "the shard already ended (Passed, attempt 2)".into()
            ))
        );
    }
}
