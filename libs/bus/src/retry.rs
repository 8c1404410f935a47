//! When a shard attempt is retried: one rule for the runner (which marks its final status)
//! and the launcher (which publishes the next attempt). And the one retry policy of every
//! loop that waits for something to come back ([`policy`]).

use assay_proto::{ShardJob, ShardState};

/// Whether an attempt of `job` that ended in `state` is followed by another attempt.
/// Errored ends are retried. Failed ends only with `retry_on: failed` and only when the
/// runner cannot retry the failing tests themselves (no test ids: no `tests.list` and none
/// given), since per-test retries already ran inside the attempt. Timeouts and
/// cancellations never (the workflow's time is up).
pub fn should_retry(job: &ShardJob, state: ShardState) -> bool {
    let knows_ids =
        !job.test_ids.is_empty() || job.tests.as_ref().is_some_and(|t| !t.list.is_empty());
    let retryable = match state {
        ShardState::Errored => true,
        ShardState::Failed => job.retry_on == "failed" && !knows_ids,
        _ => false,
    };
    retryable && job.attempt.max(1) <= job.retries
}

/// How long an attempt of `job` started at `now_ms` may run: the shard's `timeout_ms`, but
/// no later than the execution's `deadline_ms` (a later attempt, or a job that waited for
/// a launcher, has less than the whole timeout left). `None`: no limit. Both the launcher
/// and the runner enforce it.
pub fn attempt_time_left(job: &ShardJob, now_ms: i64) -> Option<std::time::Duration> {
    use std::time::Duration;
    let own = (job.timeout_ms > 0).then(|| Duration::from_millis(job.timeout_ms));
    let left = (job.deadline_ms > 0)
        .then(|| Duration::from_millis(u64::try_from(job.deadline_ms - now_ms).unwrap_or(0)));
    match (own, left) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The job of the next attempt, with a header keyed `<execution>/<shard>/<attempt>`.
pub fn next_attempt(job: &ShardJob, producer: &str) -> ShardJob {
    let attempt = job.attempt.max(1) + 1;
    let mut next = job.clone();
    next.attempt = attempt;
    // The launcher that takes it sets it from `attempt`.
    next.job_attempt = 0;
    next.header = Some(crate::header(
        producer,
        format!("{}/{}/{attempt}", job.execution_id, job.shard_index),
        job.header.as_ref().map(|h| h.traceparent.as_str()),
    ));
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(attempt: u32, retries: u32, on: &str) -> ShardJob {
        ShardJob {
            attempt,
            retries,
            retry_on: on.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn retries_errored_until_the_count_is_used() {
        assert!(should_retry(&job(1, 1, ""), ShardState::Errored));
        assert!(!should_retry(&job(2, 1, ""), ShardState::Errored));
        assert!(!should_retry(&job(1, 0, ""), ShardState::Errored));
        assert!(!should_retry(&job(1, 1, "errored"), ShardState::Failed));
        assert!(should_retry(&job(1, 2, "failed"), ShardState::Failed));
        // With test ids the runner retried the failing tests already.
        let listed = ShardJob {
            tests: Some(assay_proto::TestsSpec {
                list: "ls".into(),
                ..Default::default()
            }),
            ..job(1, 2, "failed")
        };
        assert!(!should_retry(&listed, ShardState::Failed));
        assert!(should_retry(&listed, ShardState::Errored));
        assert!(!should_retry(&job(1, 2, "failed"), ShardState::TimedOut));
        assert!(!should_retry(&job(1, 2, "failed"), ShardState::Passed));
    }

    #[test]
    fn an_attempt_runs_no_later_than_the_execution_deadline() {
        use std::time::Duration;
        let job = |timeout_ms, deadline_ms| ShardJob {
            timeout_ms,
            deadline_ms,
            ..Default::default()
        };
        let s = Duration::from_secs;
        // First attempt, started as planned: the shard's own timeout.
        assert_eq!(
            attempt_time_left(&job(60_000, 160_000), 100_000),
            Some(s(60))
        );
        // A later attempt (or a job that waited for a launcher): what is left.
        assert_eq!(
            attempt_time_left(&job(60_000, 160_000), 130_000),
            Some(s(30))
        );
        assert_eq!(
            attempt_time_left(&job(60_000, 160_000), 170_000),
            Some(s(0))
        );
        assert_eq!(attempt_time_left(&job(60_000, 0), 170_000), Some(s(60)));
        assert_eq!(attempt_time_left(&job(0, 0), 170_000), None);
    }

    #[test]
    fn next_attempt_is_keyed_by_its_number() {
        let mut j = job(1, 2, "");
        j.execution_id = "E".into();
        j.shard_index = 3;
        let n = next_attempt(&j, "t");
        assert_eq!(n.attempt, 2);
        assert_eq!(n.header.unwrap().idempotency_key, "E/3/2");
    }
}

/// Longest wait between two tries of [`policy`].
pub const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// The retry policy of every loop that waits for NATS or a bucket to come back: exponential
/// from 200 ms, doubling, at most [`MAX_DELAY`], with jitter (so that services restarted
/// together do not retry in step), without end.
pub fn policy() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::new()
        .with_min_delay(std::time::Duration::from_millis(200))
        .with_factor(2.0)
        .with_max_delay(MAX_DELAY)
        .with_jitter()
        .without_max_times()
}

/// The waits of [`policy`], one per failed try, without end.
pub fn delays() -> impl Iterator<Item = std::time::Duration> + Send {
    use backon::BackoffBuilder;
    policy().build()
}

#[cfg(test)]
mod policy_tests {
    use backon::BackoffBuilder;

    #[test]
    fn the_policy_grows_caps_and_never_ends() {
        let delays: Vec<_> = super::policy().build().take(50).collect();
        assert_eq!(delays.len(), 50);
        // Jitter adds up to one more delay: between min and twice the cap.
        assert!(
            delays[0] >= std::time::Duration::from_millis(200),
            "{delays:?}"
        );
        assert!(
            delays.iter().all(|d| *d <= 2 * super::MAX_DELAY),
            "{delays:?}"
        );
        assert!(delays[49] >= super::MAX_DELAY, "{delays:?}");
    }
}
