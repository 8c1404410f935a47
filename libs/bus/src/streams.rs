//! JetStream streams and key-value buckets, created idempotently at start-up.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};

use crate::subjects;

pub const EVENTS: &str = "ASSAY_EVENTS";
pub const SHARDS: &str = "ASSAY_SHARDS";
pub const STATUS: &str = "ASSAY_STATUS";
pub const RESULTS: &str = "ASSAY_RESULTS";
pub const LOGS: &str = "ASSAY_LOGS";
pub const EXECUTIONS: &str = "ASSAY_EXECUTIONS";
pub const DEAD: &str = "ASSAY_DEAD";
pub const QUEUE: &str = "ASSAY_QUEUE";
/// Object store of shard plans too large for a job message (see [`crate::plans`]).
pub const OBJ_PLANS: &str = "assay_plans";
/// Launcher heartbeats: a key per launcher instance, put every [`LAUNCHER_BEAT`]; an
/// instance whose last beat is older than [`LAUNCHER_EXPIRY`] is gone.
pub const KV_LAUNCHERS: &str = "assay_launchers";
/// The shard attempts running now: which launcher instance holds each, and the reply
/// subject of its job delivery (so a peer can hand an orphaned job out again at once).
pub const KV_ATTEMPTS: &str = "assay_attempts";
/// How often a launcher beats.
pub const LAUNCHER_BEAT: std::time::Duration = std::time::Duration::from_millis(500);
/// How long after its last beat a launcher counts as gone.
pub const LAUNCHER_EXPIRY: std::time::Duration = std::time::Duration::from_secs(3);

/// The scheduler's record of every event and run request it handled (7 days).
pub const DECISIONS: &str = "ASSAY_DECISIONS";

/// KV bucket: idempotency key of a trigger event or run request → execution id.
pub const KV_DEDUP: &str = "assay_dedup";
/// KV bucket: workflow → its active (non-terminal) execution, for `concurrency: forbid`.
pub const KV_ACTIVE: &str = "assay_active";
/// KV bucket: workflow → `HistorySnapshot` of its tests' durations, for planning.
pub const KV_HISTORY: &str = "assay_history";
/// KV bucket: `<scope>.<rank>.<execution>` → `PendingPlan` of an execution waiting for its
/// workflow's or group's slot (`concurrency.policy: queue`); see [`waiting_key`]. Sorted keys
/// are the order executions start in: higher priority first, then oldest first.
pub const KV_WAITING: &str = "assay_waiting";

/// Lowest and highest `concurrency.priority`.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;

/// Key of a waiting execution: the scope (a [`crate::kv_key`]), the rank (`1000 - priority`,
/// four digits, so a higher priority sorts first) and the execution id (a ULID, so equal
/// priorities keep their arrival order).
pub fn waiting_key(scope: &str, priority: i32, execution: &str) -> String {
    let p = priority.clamp(*PRIORITY_RANGE.start(), *PRIORITY_RANGE.end());
    format!("{scope}.{:04}.{execution}", 1000 - p)
}

/// The scope and execution of a [`waiting_key`].
pub fn parse_waiting_key(key: &str) -> Option<(&str, &str)> {
    let (rest, execution) = key.rsplit_once('.')?;
    let (scope, rank) = rest.rsplit_once('.')?;
    (rank.len() == 4 && rank.bytes().all(|b| b.is_ascii_digit())).then_some((scope, execution))
}
/// KV bucket: execution → why it was cancelled. Launchers watch it, stop the execution's
/// runners and report its remaining shards cancelled.
pub const KV_CANCELLED: &str = "assay_cancelled";
/// KV bucket: execution → state of its work queue (`filling`, `sealed:<batches>`); the first
/// runner to create the key fills the queue.
pub const KV_QUEUES: &str = "assay_queues";
/// KV bucket: `<execution>.<group>.<seq>` (see [`crate::kv_key`]) → who holds a queue
/// batch and until when (`<expiry unix ms> <holder>`), or `done` once its results are
/// published. A worker runs a batch only after creating or taking over (compare-and-set)
/// its claim; entries age out after a day.
pub const KV_BATCH_CLAIMS: &str = "assay_batch_claims";
/// How long a batch claim lives past its last write.
pub const BATCH_CLAIMS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// KV bucket: `<provider>/<delivery id>` (hex, see [`crate::kv_key`]) of every webhook
/// delivery the trigger-watchers accepted. Its `max_age` is the replay window: a delivery id
/// seen within it is not published again, whichever replica receives it. Opened with
/// [`crate::Bus::webhook_deliveries`].
pub const KV_WEBHOOK_DELIVERIES: &str = "assay_webhook_deliveries";
/// KV bucket: dedup keys (hex, see [`crate::kv_key`]) of the events the trigger-watchers'
/// Kubernetes watches fired (`kubernetes/<trigger>/<uid>/<event>/<occurrence>`). A watcher
/// publishes an event only after creating its key, so a relist, a restart or a second
/// replica never fires one twice while the key lives (its `max_age`).
pub const KV_KUBE_FIRED: &str = "assay_kube_fired";

/// Durable consumer name of an execution's work queue (one per execution, shared by its
/// runners; removed by the server after an hour unused).
pub fn queue_consumer(execution: &str) -> String {
    format!("queue-{}", crate::subjects::token(execution))
}

/// Largest message any stream accepts (bytes). Consumers check their own, smaller limit
/// before decoding.
pub const MAX_MESSAGE_BYTES: i32 = 1024 * 1024;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The stream configurations. Storage is file-backed everywhere: these hold what must not
/// be lost. `duplicate_window` is the Nats-Msg-Id dedup window; consumers are idempotent on
/// their own keys as well, so correctness does not rest on it.
pub fn all(replicas: usize) -> Vec<Config> {
    let base = |name: &str, subjects: Vec<&str>| Config {
        name: name.to_string(),
        subjects: subjects.into_iter().map(str::to_string).collect(),
        storage: StorageType::File,
        num_replicas: replicas.max(1),
        duplicate_window: Duration::from_secs(120),
        max_message_size: MAX_MESSAGE_BYTES,
        max_age: 7 * DAY,
        ..Default::default()
    };
    vec![
        base(EVENTS, vec![subjects::EVENTS_ALL, subjects::RUNS_ALL]),
        Config {
            retention: RetentionPolicy::WorkQueue,
            ..base(SHARDS, vec![subjects::SHARDS_ALL])
        },
        base(STATUS, vec![subjects::PLANS_ALL, subjects::STATUS_ALL]),
        base(RESULTS, vec![subjects::RESULTS_ALL]),
        Config {
            max_bytes: 4 * 1024 * 1024 * 1024,
            discard: DiscardPolicy::Old,
            ..base(LOGS, vec![subjects::LOGS_ALL])
        },
        Config {
            max_messages_per_subject: 64,
            ..base(EXECUTIONS, vec![subjects::EXECUTIONS_ALL])
        },
        Config {
            max_age: 30 * DAY,
            ..base(DEAD, vec![subjects::DEAD_ALL])
        },
        Config {
            retention: RetentionPolicy::WorkQueue,
            max_age: DAY,
            ..base(QUEUE, vec![subjects::QUEUE_ALL])
        },
        base(DECISIONS, vec![subjects::DECISIONS_ALL]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_keys_sort_by_priority_then_arrival() {
        let mut keys = [
            waiting_key("ab", 0, "01B"),
            waiting_key("ab", 5, "01C"),
            waiting_key("ab", 0, "01A"),
            waiting_key("ab", -3, "010"),
            waiting_key("ab", 5000, "01D"),
        ];
        keys.sort();
        let order: Vec<&str> = keys
            .iter()
            .map(|k| parse_waiting_key(k).unwrap().1)
            .collect();
        assert_eq!(order, ["01D", "01C", "01A", "01B", "010"]);
        assert_eq!(
            parse_waiting_key(&waiting_key("a.b", 1, "X")),
            Some(("a.b", "X"))
        );
        assert_eq!(parse_waiting_key("scope.exec"), None);
    }
}
