//! Every subject assay uses. Services call these functions; no subject literal lives
//! anywhere else. Shape: `assay.v1.<domain>.<ids…>`, ids last so consumers can filter.

/// Prefix shared by every subject; `v1` matches the proto package.
pub const PREFIX: &str = "assay.v1";

/// All trigger events (`assay.v1.events.<source>`).
pub const EVENTS_ALL: &str = "assay.v1.events.>";
/// Direct run requests ([`assay_proto::RunRequest`]).
pub const RUN_REQUESTED: &str = "assay.v1.runs.requested";
/// All run subjects (requests and future run commands).
pub const RUNS_ALL: &str = "assay.v1.runs.>";
pub const SHARDS_ALL: &str = "assay.v1.shards.>";
pub const STATUS_ALL: &str = "assay.v1.status.>";
pub const PLANS_ALL: &str = "assay.v1.plans.>";
pub const RESULTS_ALL: &str = "assay.v1.results.>";
pub const LOGS_ALL: &str = "assay.v1.logs.>";
pub const EXECUTIONS_ALL: &str = "assay.v1.executions.>";
pub const DEAD_ALL: &str = "assay.v1.dead.>";
pub const QUEUE_ALL: &str = "assay.v1.queue.>";
/// Every [`assay_proto::EventRecord`] (what an event or run request started, or why nothing).
pub const DECISIONS_ALL: &str = "assay.v1.decisions.>";

/// Longest token [`token`] returns, in bytes. Tokens come from outside input (an event's
/// `source` from `POST /v1/events`, an execution id from a run request), and a subject
/// longer than nats-server's control line (4 KiB) makes the server answer `maximum control
/// line exceeded` and drop the publisher's connection, with every service sharing it.
pub const MAX_TOKEN_BYTES: usize = 128;

/// Makes a value safe as one subject token: `.`, `*`, `>`, whitespace become `_`;
/// empty becomes `_`. A value longer than [`MAX_TOKEN_BYTES`] keeps its head and ends in
/// `~` and a hash of the whole value, so that long values stay apart.
pub fn token(s: &str) -> String {
    if s.is_empty() {
        return "_".to_string();
    }
    let safe: String = s
        .chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect();
    if safe.len() <= MAX_TOKEN_BYTES {
        return safe;
    }
    let mut end = MAX_TOKEN_BYTES - 17;
    while !safe.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}~{:016x}", &safe[..end], fnv1a(s.as_bytes()))
}

/// 64-bit FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `assay.v1.events.<source>`
pub fn event(source: &str) -> String {
    format!("{PREFIX}.events.{}", token(source))
}

/// `assay.v1.shards.<execution>.<shard>`
pub fn shard_job(execution: &str, shard: u32) -> String {
    format!("{PREFIX}.shards.{}.{shard}", token(execution))
}

/// `assay.v1.plans.<execution>`: the planned (or rejected) [`assay_proto::Execution`].
pub fn execution_plan(execution: &str) -> String {
    format!("{PREFIX}.plans.{}", token(execution))
}

/// `assay.v1.status.<execution>.<shard>`: [`assay_proto::ShardStatus`].
pub fn shard_status(execution: &str, shard: u32) -> String {
    format!("{PREFIX}.status.{}.{shard}", token(execution))
}

/// `assay.v1.results.<execution>.<shard>`: [`assay_proto::TestCaseBatch`].
pub fn results(execution: &str, shard: u32) -> String {
    format!("{PREFIX}.results.{}.{shard}", token(execution))
}

/// `assay.v1.logs.<execution>.<shard>`: [`assay_proto::LogChunk`].
pub fn logs(execution: &str, shard: u32) -> String {
    format!("{PREFIX}.logs.{}.{shard}", token(execution))
}

/// `assay.v1.logs.<execution>.>`: every shard's logs of one execution.
pub fn logs_of(execution: &str) -> String {
    format!("{PREFIX}.logs.{}.>", token(execution))
}

/// `assay.v1.executions.<workflow>.<execution>`: public [`assay_proto::ExecutionUpdate`]s.
pub fn execution_update(workflow: &str, execution: &str) -> String {
    format!(
        "{PREFIX}.executions.{}.{}",
        token(workflow),
        token(execution)
    )
}

/// `assay.v1.executions.*.<execution>`: updates of one execution, whatever its workflow.
pub fn execution_updates_of(execution: &str) -> String {
    format!("{PREFIX}.executions.*.{}", token(execution))
}

/// `assay.v1.queue.<execution>`: the work queue of a `strategy: queue` execution
/// ([`assay_proto::QueueBatch`]).
pub fn queue(execution: &str) -> String {
    format!("{PREFIX}.queue.{}", token(execution))
}

/// `_INBOX.assay-runner.<execution>.<shard>`: the reply subject prefix of a shard's runner
/// (its minted NATS user may subscribe to nothing else; see [`crate::runner_jwt`]).
pub fn runner_inbox(execution: &str, shard: u32) -> String {
    format!("_INBOX.assay-runner.{}.{shard}", token(execution))
}

/// `assay.v1.decisions.<source>`: the scheduler's [`assay_proto::EventRecord`] for one
/// event or run request.
pub fn decision(source: &str) -> String {
    format!("{PREFIX}.decisions.{}", token(source))
}

/// `assay.v1.dead.<stream>`: poison messages of a stream, with the reason in headers.
pub fn dead(stream: &str) -> String {
    format!("{PREFIX}.dead.{}", token(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_have_ids_last_and_safe_tokens() {
        assert_eq!(shard_job("01H", 3), "assay.v1.shards.01H.3");
        assert_eq!(event("ci.github"), "assay.v1.events.ci_github");
        assert_eq!(execution_update("a.b", "x"), "assay.v1.executions.a_b.x");
        assert_eq!(token(""), "_");
        assert_eq!(token("a *>b"), "a___b");
    }

    #[test]
    fn long_tokens_are_bounded_and_stay_apart() {
        let exact = "a".repeat(MAX_TOKEN_BYTES);
        assert_eq!(token(&exact), exact);
        let (a, b) = (format!("{exact}a"), format!("{exact}b"));
        assert_eq!(token(&a).len(), MAX_TOKEN_BYTES);
        assert_ne!(token(&a), token(&b));
        assert_eq!(token(&a), token(&a));
        let wide = "é.".repeat(1000);
        let t = token(&wide);
        assert!(t.len() <= MAX_TOKEN_BYTES && t.starts_with("é_é_"), "{t}");
        assert!(event(&"x".repeat(5000)).len() < 200);
    }
}
