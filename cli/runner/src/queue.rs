//! `strategy: queue`: the shards of an execution share one work queue of test batches,
//! longest first, and each worker pulls the next batch when it is free, so slow or late
//! workers do not stretch the run. `strategy: duration` uses the same queue for its shared
//! tail: each shard drains it after running its own planned tests.
//!
//! The first runner of the execution to list its tests fills the queue (a stream subject
//! per execution; in queue mode batches sized from the workflow's duration history, in
//! duration mode the tail batches the scheduler planned) and marks it sealed in the
//! `assay_queues` bucket; the others wait for the seal before they take a batch. A worker holds a batch under a
//! lease (the consumer's ack wait), renewed while the batch runs; a worker that dies or
//! stalls loses it to another after the lease. Results are published, tagged with the batch,
//! before the batch is acked: nothing is lost, and the result store keeps only the first
//! report of a batch, so no test counts twice.

use std::time::Duration;

use assay_bus::{Bus, streams, subjects};
// Queue batch numbers of matrix combination `g` start at `g << QUEUE_GROUP_SHIFT`; the store
// reads the combination back from them.
use assay_proto::{
    QUEUE_GROUP_SHIFT, QueueBatch, ShardJob, ShardState, TestCaseResult, TestStatus,
};
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use claim::{Claims, Renewal, Take};

use crate::job::Identity;
use crate::outcome::Verdict;
use crate::steps::StepRunner;
use crate::suite::TESTS;
use crate::{Published, publish, retries};

mod claim;

/// How long the other workers wait for the first one to fill the queue.
const FILL_WAIT: Duration = Duration::from_secs(600);

/// How long a worker keeps trying to mark a finished batch done while NATS cannot be
/// reached (a server restart): without the mark, the worker that takes the expired claim
/// over runs the batch again.
const FINISH_WITHIN: Duration = Duration::from_secs(30);

/// What fills the queue when this runner is the first.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    /// `strategy: queue`: every listed test, batched from the duration history.
    Listing(&'a [String]),
    /// `strategy: duration`: the job's planned tail, as the listed tests with its hashes.
    Tail(&'a [String]),
}

/// `strategy: queue`: fill the queue (or wait until another worker did), then drain it.
pub(crate) async fn run(
    job: &ShardJob,
    tests: &assay_proto::TestsSpec,
    id: &Identity,
    runner: &StepRunner,
    bus: &Bus,
    listed: &[String],
) -> (Verdict, Vec<TestCaseResult>, Published) {
    let total = match fill_or_wait(job, id, bus, runner, Source::Listing(listed), true).await {
        Ok(total) => total,
        Err(reason) => return (Verdict::errored(reason), Vec::new(), Published::default()),
    };
    let (verdict, published) =
        drain(job, tests, id, runner, bus, total, Published::default()).await;
    (verdict, Vec::new(), published)
}

/// `strategy: duration`, after the shard's own tests: wait until the tail is in the queue
/// (filling it when its filler died), then drain it. `published` counts the result batches
/// this attempt already sent; the tail's are numbered after them.
pub(crate) async fn drain_tail(
    job: &ShardJob,
    tests: &assay_proto::TestsSpec,
    id: &Identity,
    runner: &StepRunner,
    bus: &Bus,
    listed: &[String],
    published: Published,
) -> (Verdict, Published) {
    let total = match fill_or_wait(job, id, bus, runner, Source::Tail(listed), true).await {
        Ok(total) => total,
        Err(reason) => return (Verdict::errored(reason), published),
    };
    drain(job, tests, id, runner, bus, total, published).await
}

/// Takes batches until the queue is empty and nobody holds one that could come back.
/// `total` is how many batches the queue was sealed with (0: unknown); every batch's results
/// carry it.
async fn drain(
    job: &ShardJob,
    tests: &assay_proto::TestsSpec,
    id: &Identity,
    runner: &StepRunner,
    bus: &Bus,
    total_batches: u32,
    mut published: Published,
) -> (Verdict, Published) {
    published.queue_batches = total_batches;
    let logs = runner.logs();
    let lease = Duration::from_millis(job.lease_ms.max(1000));
    let mut consumer = match consumer(bus, &id.queue, lease, id.split_count).await {
        Ok(c) => c,
        Err(reason) => return (Verdict::errored(reason), published),
    };
    let claims = match Claims::open(bus, holder_id(id), lease).await {
        Ok(c) => c,
        Err(reason) => return (Verdict::errored(reason), published),
    };
    let mut claiming = true;
    let (mut batches, mut failed, mut errored, mut total) = (0u32, 0usize, 0usize, 0usize);
    let mut run_failed: Option<String> = None;
    loop {
        let next = match consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(1))
            .messages()
            .await
        {
            Ok(mut msgs) => msgs.next().await,
            Err(e) => {
                debug!(error = %e, "queue fetch failed; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                debug!(error = %e, "queue message error");
                continue;
            }
            None => {
                // Nothing to take now: done when nothing is waiting and nobody holds a batch
                // that could come back.
                match consumer.info().await {
                    Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => break,
                    Ok(_) => continue,
                    Err(e) => {
                        debug!(error = %e, "queue info failed");
                        continue;
                    }
                }
            }
        };
        let batch =
            match assay_bus::decode::<QueueBatch>(&msg.subject, &msg.payload, 8 * 1024 * 1024) {
                Ok(b) => b,
                Err(e) => {
                    logs.system(TESTS, format!("dropping an unreadable queue batch: {e}"))
                        .await;
                    let _ = msg.ack_with(AckKind::Term).await;
                    continue;
                }
            };
        let deliveries = msg.info().map(|i| i.delivered).unwrap_or(1);
        // Run the batch only while holding its claim: the consumer redelivers batches whose
        // holders are alive and renewing (after a nats-server restart, for one).
        let key = claim::key(&id.execution, id.group, batch.seq);
        let took = if claiming {
            claims.take(&key).await
        } else {
            Err(String::new())
        };
        let (revision, taken) = match took {
            Ok(Take::Run { revision, from }) => (Some(revision), from),
            Ok(Take::Held { holder, for_ms }) => {
                logs.system(
                    TESTS,
                    format!(
                        "batch {} is held by {holder}, whose claim runs {} more: left to it (delivery {deliveries})",
                        batch.seq,
                        human_ms(for_ms as f64)
                    ),
                )
                .await;
                // Back when the claim would expire unless renewed.
                let delay = Duration::from_millis(for_ms).min(lease) + HELD_MARGIN;
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                continue;
            }
            Ok(Take::Done) => {
                logs.system(
                    TESTS,
                    format!(
                        "batch {} already ran and reported: dropping a redelivered copy (delivery {deliveries})",
                        batch.seq
                    ),
                )
                .await;
                let _ = msg.double_ack().await;
                continue;
            }
            Err(_) if !claiming => (None, None),
            Err(e) => {
                // Without claims a batch runs as before they existed (its results still
                // count once): better than a queue nobody can drain.
                claiming = false;
                logs.system(
                    TESTS,
                    format!(
                        "cannot claim batch {} ({e}); this shard runs its batches unclaimed, so a nats-server restart may run some twice (the runners' NATS user needs publish on $KV.{}.>)",
                        batch.seq,
                        assay_bus::streams::KV_BATCH_CLAIMS
                    ),
                )
                .await;
                (None, None)
            }
        };
        logs.system(
            TESTS,
            format!(
                "batch {} ({} tests, ~{}){}",
                batch.seq,
                batch.test_ids.len(),
                human_ms(batch.expected_ms),
                match &taken {
                    Some(from) => format!(
                        ", taken over after a lease expired (claim of {from}, delivery {deliveries})"
                    ),
                    None if deliveries > 1 => format!(", delivery {deliveries}"),
                    None => String::new(),
                }
            ),
        )
        .await;
        // Renew the lease and the claim while the batch runs, through NATS outages.
        let stop = CancellationToken::new();
        let heartbeat = tokio::spawn(renew(
            msg.clone(),
            claims.clone(),
            key.clone(),
            revision,
            lease,
            batch.seq,
            logs.clone(),
            stop.clone(),
        ));
        let report = id.report_dir(runner.workdir()).join(format!(
            "shard-{}-attempt-{}-batch-{}.xml",
            id.shard, id.attempt, batch.seq
        ));
        let (verdict, results) =
            retries::run_with_retries(job, tests, id, runner, &batch.test_ids, &report).await;
        // The claim is renewed until the results are out, so that a holder whose publish
        // waits out a NATS outage renews as soon as NATS is back, before anyone takes the
        // batch over.
        let heartbeat = Heartbeat {
            stop,
            task: heartbeat,
        };
        if verdict.state == ShardState::Errored {
            let held = heartbeat.end().await;
            // Give the batch back at once: another worker may manage where this one cannot.
            if let Some(revision) = held
                && let Err(e) = claims.release(&key, revision).await
            {
                warn!(batch = batch.seq, error = %e, "batch claim not released; it expires after the lease");
            }
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return (verdict, published);
        }
        if verdict.state != ShardState::Passed && run_failed.is_none() {
            run_failed = Some(verdict.reason.clone());
        }
        total += results.len();
        failed += results
            .iter()
            .filter(|r| r.status() == TestStatus::Failed)
            .count();
        errored += results
            .iter()
            .filter(|r| r.status() == TestStatus::Errored)
            .count();
        let cases = results.len() as u32;
        let of = publish::QueueBatchOf {
            batch: batch.seq + 1,
            total: total_batches,
        };
        match publish::publish_results(bus, id, results, published.batches, of).await {
            Ok(n) => {
                published.batches += n;
                published.cases += cases;
            }
            Err(e) => {
                if let Some(revision) = heartbeat.end().await {
                    let _ = claims.release(&key, revision).await;
                }
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                return (Verdict::errored(e.to_string()), published);
            }
        }
        // Published: a redelivered copy of the batch is dropped from now on.
        if let Some(revision) = heartbeat.end().await
            && let Err(e) = claims.finish_patiently(&key, revision, FINISH_WITHIN).await
        {
            warn!(batch = batch.seq, error = %e, "batch not marked done; a redelivered copy would run again (its results count once)");
        }
        if let Err(e) = msg.double_ack().await {
            logs.system(
                TESTS,
                format!("batch {}: its lease ended before it finished ({e}); the first report of it counts", batch.seq),
            )
            .await;
        }
        batches += 1;
    }
    logs.system(
        TESTS,
        format!("queue drained: this shard ran {batches} batches, {total} tests"),
    )
    .await;
    let verdict = if failed + errored > 0 {
        let mut v = Verdict::passed();
        v.state = ShardState::Failed;
        v.reason = format!("{} failed of {total} tests", failed + errored);
        v.exit_code = 1;
        v
    } else if let Some(reason) = run_failed {
        let mut v = Verdict::passed();
        v.state = ShardState::Failed;
        v.reason = reason;
        v.exit_code = 1;
        v
    } else {
        Verdict::passed()
    };
    (verdict, published)
}

/// How long after a live holder's claim would expire a batch left to it comes back.
const HELD_MARGIN: Duration = Duration::from_millis(250);

/// This worker's id in the claims it writes: its attempt, process and start time, so that
/// two processes never share one.
fn holder_id(id: &Identity) -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    id.key(&format!("pid{}-{started:x}", std::process::id()))
}

/// The renewal of one batch's lease and claim, running.
struct Heartbeat {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Option<u64>>,
}

impl Heartbeat {
    /// Stops renewing; the claim's revision when this worker still holds it.
    async fn end(self) -> Option<u64> {
        self.stop.cancel();
        self.task.await.unwrap_or(None)
    }
}

/// Renews the batch's lease (a progress ack) and its claim every `lease / 3` until `stop`.
/// Errors (NATS down) are logged and tried again at the next tick, so renewing resumes by
/// itself after a reconnect. Returns the claim's revision, or `None` when another worker
/// took the claim (this worker then stops renewing; its results still count if first) or
/// when the batch runs unclaimed (`revision` `None`).
#[allow(clippy::too_many_arguments)]
async fn renew(
    msg: async_nats::jetstream::Message,
    claims: Claims,
    key: String,
    mut revision: Option<u64>,
    lease: Duration,
    seq: u32,
    logs: crate::publish::LogSink,
    stop: CancellationToken,
) -> Option<u64> {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut failing = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return revision,
            _ = tick.tick() => {}
        }
        if let Err(e) = msg.ack_with(AckKind::Progress).await {
            debug!(batch = seq, error = %e, "progress ack failed; trying again at the next tick");
        }
        let Some(held) = revision else {
            continue; // running unclaimed: the progress ack is all there is to renew
        };
        let renewed = tokio::select! {
            _ = stop.cancelled() => return revision,
            r = claims.renew(&key, held) => r,
        };
        match renewed {
            Ok(Renewal::Renewed(r)) => {
                revision = Some(r);
                if failing > 0 {
                    info!(batch = seq, failed = failing, "batch claim renewed again");
                    failing = 0;
                }
            }
            Ok(Renewal::Lost(by)) => {
                let by = by.unwrap_or_else(|| "nobody (removed)".to_string());
                logs.system(
                    TESTS,
                    format!(
                        "batch {seq}: its claim is now held by {by} ({} stopped renewing it); this run of it goes on, and the first report of it counts",
                        claims.holder()
                    ),
                )
                .await;
                return None;
            }
            Err(e) => {
                failing += 1;
                warn!(batch = seq, attempt = failing, error = %e, "batch claim not renewed; trying again at the next tick");
            }
        }
    }
}

fn human_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else {
        format!("{ms:.0}ms")
    }
}

/// The first worker fills the queue; with `wait`, the others wait until it is sealed. A later
/// attempt of the shard that was filling takes over (batches are deterministic and keyed, so
/// a second fill publishes nothing new). Without `wait` (a duration shard before its own
/// tests) a worker that is not first returns at once.
///
/// Returns how many batches the queue holds: what the filler published, or what the seal it
/// waited for says (0 when not known: not waited for, or a seal without a count).
pub(crate) async fn fill_or_wait(
    job: &ShardJob,
    id: &Identity,
    bus: &Bus,
    runner: &StepRunner,
    source: Source<'_>,
    wait: bool,
) -> Result<u32, String> {
    let logs = runner.logs();
    let kv = bus
        .kv(streams::KV_QUEUES)
        .await
        .map_err(|e| e.to_string())?;
    let key = assay_bus::kv_key(&id.queue);
    let me = format!("filling:{}", id.shard);
    let mut fill = match kv.create(&key, me.clone().into()).await {
        Ok(_) => true,
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => false,
        Err(e) => return Err(format!("cannot claim the work queue: {e}")),
    };
    if !fill && !wait {
        return Ok(0);
    }
    let deadline = tokio::time::Instant::now() + FILL_WAIT;
    let mut sealed = 0;
    if !fill {
        loop {
            let state = kv
                .get(&key)
                .await
                .map_err(|e| format!("cannot read the work queue state: {e}"))?
                .map(|v| String::from_utf8_lossy(&v).to_string())
                .unwrap_or_default();
            if let Some(n) = sealed_count(&state) {
                sealed = n;
                break;
            }
            if state == me && id.attempt > 1 {
                fill = true; // our shard's earlier attempt died while filling
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "the work queue was not filled within {}s (state: {state})",
                    FILL_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    if !fill {
        return Ok(sealed);
    }
    let (batches, what) = match source {
        Source::Listing(listed) => {
            let history = match bus.planning_history(&job.workflow).await {
                Ok(h) => h.for_variant(&id.variant),
                Err(e) => {
                    logs.system(
                        TESTS,
                        format!("no duration history ({e}); batches by count"),
                    )
                    .await;
                    assay_plan::History::new()
                }
            };
            let overhead = job.batch_overhead_ms.max(1) as f64;
            let batches = assay_plan::queue_batches(
                listed,
                &history,
                id.split_count.max(1) as usize,
                overhead,
            );
            let known = listed.iter().filter(|t| history.get(t).is_some()).count();
            let what = format!(
                "filled the work queue: {} tests in {} batches, longest first ({known} with duration history)",
                listed.len(),
                batches.len()
            );
            (batches, what)
        }
        Source::Tail(listed) => {
            let batches = tail_batches(&job.tail, listed);
            let n: usize = batches.iter().map(|b| b.tests.len()).sum();
            let planned: usize = job.tail.iter().map(|b| b.test_hashes.len()).sum();
            let what = format!(
                "filled the shared tail queue: {n} tests in {} batches, longest first ({} planned tests not listed)",
                batches.len(),
                planned.saturating_sub(n)
            );
            (batches, what)
        }
    };
    let subject = subjects::queue(&id.queue);
    for b in &batches {
        // Numbered apart per matrix combination: results name their batch, and the store
        // keeps the first report of each batch of the execution.
        let seq = (id.group << QUEUE_GROUP_SHIFT) | b.seq;
        let msg = QueueBatch {
            header: Some(id.header(&format!("queue/{seq}"))),
            execution_id: id.execution.clone(),
            seq,
            test_ids: b.tests.clone(),
            expected_ms: b.expected_ms,
        };
        // Keyed `<execution>/queue/<seq>` (the header's key), so a second fill adds nothing.
        if let Err(e) = publish::publish_retrying(bus, &subject, &msg, publish::RETRY_BUDGET).await
        {
            return Err(format!("cannot fill the work queue: {e}"));
        }
    }
    kv.put(&key, format!("sealed:{}", batches.len()).into())
        .await
        .map_err(|e| format!("cannot seal the work queue: {e}"))?;
    logs.system(TESTS, what).await;
    Ok(u32::try_from(batches.len()).unwrap_or(u32::MAX))
}

/// The batch count of a sealed queue state (`sealed:<n>`); `Some(0)` for a seal without a
/// readable count, `None` while the queue is not sealed.
fn sealed_count(state: &str) -> Option<u32> {
    let rest = state.strip_prefix("sealed")?;
    Some(
        rest.strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    )
}

/// The planned tail as queue batches of listed ids: each batch's hashes resolved against the
/// listing (tests no longer listed are dropped, and so is a batch left empty), numbered
/// 0, 1, … in the planned order.
pub(crate) fn tail_batches(
    tail: &[assay_proto::TailBatch],
    listed: &[String],
) -> Vec<assay_plan::Batch> {
    tail.iter()
        .map(|b| assay_plan::resolve_hashes(listed, &b.test_hashes))
        .zip(tail)
        .filter(|(tests, _)| !tests.is_empty())
        .enumerate()
        .map(|(seq, (tests, b))| assay_plan::Batch {
            seq: seq as u32,
            tests,
            expected_ms: b.expected_ms,
        })
        .collect()
}

async fn consumer(
    bus: &Bus,
    execution: &str,
    lease: Duration,
    workers: u32,
) -> Result<async_nats::jetstream::consumer::Consumer<pull::Config>, String> {
    let stream = bus
        .jetstream()
        .get_stream(streams::QUEUE)
        .await
        .map_err(|e| format!("work queue stream: {e}"))?;
    let name = streams::queue_consumer(execution);
    stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subjects::queue(execution),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                ack_wait: lease,
                max_deliver: -1,
                max_ack_pending: i64::from(workers.max(1)) * 2,
                inactive_threshold: Duration::from_secs(3600),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("work queue consumer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_tells_how_many_batches_the_queue_holds() {
        assert_eq!(sealed_count("sealed:128"), Some(128));
        assert_eq!(sealed_count("sealed:0"), Some(0));
        assert_eq!(sealed_count("sealed"), Some(0), "a seal without a count");
        assert_eq!(sealed_count("sealed:x"), Some(0));
        assert_eq!(sealed_count("filling:2"), None);
        assert_eq!(sealed_count(""), None);
    }

    #[test]
    fn tail_batches_resolve_listed_ids_and_drop_gone_ones() {
        let h = assay_plan::stable_hash;
        let tail = vec![
            assay_proto::TailBatch {
                test_hashes: vec![h("b"), h("gone")],
                expected_ms: 20.0,
            },
            assay_proto::TailBatch {
                test_hashes: vec![h("also-gone")],
                expected_ms: 10.0,
            },
            assay_proto::TailBatch {
                test_hashes: vec![h("c"), h("a")],
                expected_ms: 5.0,
            },
        ];
        let listed: Vec<String> = ["a", "b", "c", "new"].map(String::from).to_vec();
        let got = tail_batches(&tail, &listed);
        let got: Vec<(u32, Vec<String>)> = got.into_iter().map(|b| (b.seq, b.tests)).collect();
        assert_eq!(
            got,
            vec![
                (0, vec!["b".to_string()]),
                (1, vec!["c".to_string(), "a".to_string()])
            ]
        );
        assert!(tail_batches(&[], &listed).is_empty());
    }
}
