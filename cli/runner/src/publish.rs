//! Everything the runner sends to NATS: log chunks (buffered in a bounded channel until the
//! connection is up), result batches and shard statuses, each published with a deterministic
//! `Nats-Msg-Id` and retried with backoff while NATS is restarting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use assay_bus::{Bus, BusMessage, subjects};
use assay_proto::{LogChunk, LogStream, TestCaseBatch, TestCaseResult};
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::job::Identity;
use crate::mask::Masker;
use crate::{Error, Result};

/// Log chunks buffered while NATS is not (yet) reachable; producers wait beyond this.
pub const LOG_QUEUE: usize = 1024;
/// Chunks smaller than this that queue up behind each other are merged before publishing.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Most test cases per [`TestCaseBatch`].
pub const BATCH_CASES: usize = 500;
/// Target encoded size of a [`TestCaseBatch`] (streams accept up to 1 MiB).
pub const BATCH_BYTES: usize = 256 * 1024;
/// How long one message is retried while NATS is unavailable.
pub const RETRY_BUDGET: Duration = Duration::from_secs(60);

/// The connection, once [`Bus::connect`] finished (or failed, with the reason).
pub type BusState = watch::Receiver<Option<Result<Bus, String>>>;

/// Waits for the connection attempt to finish.
pub async fn wait_bus(rx: &mut BusState) -> Result<Bus> {
    let state = rx
        .wait_for(Option::is_some)
        .await
        .map_err(|_| Error::Connect("the nats connection task ended without a result".into()))?;
    match state.as_ref() {
        Some(Ok(bus)) => Ok(bus.clone()),
        Some(Err(e)) => Err(Error::Connect(e.clone())),
        None => Err(Error::Connect("no nats connection".into())),
    }
}

/// Resolves only when connecting failed for good.
pub async fn bus_failed(mut rx: BusState) -> Error {
    match wait_bus(&mut rx).await {
        Err(e) => e,
        Ok(_) => std::future::pending().await,
    }
}

/// Publishes `msg` and waits for the stream's ack, retrying retryable failures with
/// exponential backoff for up to `budget`.
pub async fn publish_retrying<M: BusMessage>(
    bus: &Bus,
    subject: &str,
    msg: &M,
    budget: Duration,
) -> Result<()> {
    let start = Instant::now();
    let mut delays = assay_bus::retry::delays();
    let mut delay = delays.next().unwrap_or(assay_bus::retry::MAX_DELAY);
    loop {
        match bus.publish(subject.to_string(), msg).await {
            Ok(duplicate) => {
                if duplicate {
                    debug!(subject, "stream saw a duplicate; already published");
                }
                return Ok(());
            }
            Err(e) if e.is_retryable() && start.elapsed() + delay < budget => {
                warn!(subject, error = %e, retry_in = ?delay, "publish failed, retrying");
                tokio::time::sleep(delay).await;
                delay = delays.next().unwrap_or(assay_bus::retry::MAX_DELAY);
            }
            Err(e) => {
                return Err(Error::Publish {
                    what: M::NAME,
                    source: e,
                });
            }
        }
    }
}

/// One piece of output on its way to NATS.
#[derive(Debug)]
pub struct LogLine {
    pub step: Arc<str>,
    pub stream: LogStream,
    pub data: Vec<u8>,
}

/// A cheap handle to send log output; the publisher ends when every handle is dropped.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::Sender<LogLine>,
    masker: Masker,
}

impl LogSink {
    /// Queues output (waits while the queue is full).
    pub async fn send(&self, step: Arc<str>, stream: LogStream, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        let data = if self.masker.is_empty() {
            data
        } else {
            self.masker.mask(&data)
        };
        // The publisher only goes away after a fatal error, which `run` reports itself.
        let _ = self.tx.send(LogLine { step, stream, data }).await;
    }

    /// Queues output already masked (by [`Masker::mask_prefix`]).
    pub async fn send_masked(&self, step: Arc<str>, stream: LogStream, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        let _ = self.tx.send(LogLine { step, stream, data }).await;
    }

    /// A line of the runner's own (the SYSTEM stream).
    pub async fn system(&self, step: &str, line: impl Into<String>) {
        let mut line = self.masker.mask_str(&line.into());
        debug!(step, "{line}");
        line.push('\n');
        self.send(Arc::from(step), LogStream::System, line.into_bytes())
            .await;
    }

    /// A sink whose lines go nowhere but into the returned receiver (tests).
    pub fn channel(capacity: usize) -> (LogSink, mpsc::Receiver<LogLine>) {
        Self::masked(capacity, Masker::default())
    }

    /// A sink that masks `masker`'s values in everything sent through it.
    pub fn masked(capacity: usize, masker: Masker) -> (LogSink, mpsc::Receiver<LogLine>) {
        let (tx, rx) = mpsc::channel(capacity);
        (LogSink { tx, masker }, rx)
    }

    /// The values this sink masks (a streaming writer holds back a possibly started one).
    pub fn masker(&self) -> &Masker {
        &self.masker
    }
}

/// Starts the log publisher. It waits for the connection (the channel buffers meanwhile),
/// then publishes chunks in order with `seq` 0, 1, … and returns how many it published.
pub fn spawn_log_publisher(
    id: Identity,
    bus: BusState,
    masker: Masker,
) -> (LogSink, JoinHandle<Result<u64>>) {
    let (sink, rx) = LogSink::masked(LOG_QUEUE, masker);
    let task = tokio::spawn(publish_logs(id, bus, rx));
    (sink, task)
}

async fn publish_logs(
    id: Identity,
    mut bus: BusState,
    mut rx: mpsc::Receiver<LogLine>,
) -> Result<u64> {
    let bus = match wait_bus(&mut bus).await {
        Ok(bus) => bus,
        Err(e) => {
            rx.close();
            return Err(e);
        }
    };
    let subject = subjects::logs(&id.execution, id.shard);
    let mut seq = 0u64;
    let mut held: Option<LogLine> = None;
    loop {
        let mut line = match held.take() {
            Some(line) => line,
            None => match rx.recv().await {
                Some(line) => line,
                None => break,
            },
        };
        // Merge what already queued up behind it, same step and stream, up to a chunk.
        while line.data.len() < CHUNK_BYTES {
            match rx.try_recv() {
                Ok(next) if next.step == line.step && next.stream == line.stream => {
                    line.data.extend_from_slice(&next.data);
                }
                Ok(next) => {
                    held = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        let chunk = LogChunk {
            header: Some(id.header(&format!("log/{seq}"))),
            execution_id: id.execution.clone(),
            shard_index: id.shard,
            attempt: id.attempt,
            seq,
            step: line.step.to_string(),
            stream: line.stream as i32,
            data: line.data,
        };
        if let Err(e) = publish_retrying(&bus, &subject, &chunk, RETRY_BUDGET).await {
            rx.close();
            return Err(e);
        }
        seq += 1;
    }
    Ok(seq)
}

/// Splits results into batches of at most `max_cases` cases and (where a case fits)
/// `max_bytes` encoded bytes, keeping order.
pub fn batches(
    results: Vec<TestCaseResult>,
    max_cases: usize,
    max_bytes: usize,
) -> Vec<Vec<TestCaseResult>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0usize;
    for r in results {
        // Field tag + length prefix + body.
        let size = r.encoded_len() + 8;
        if !current.is_empty() && (current.len() >= max_cases || bytes + size > max_bytes) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(r);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Which work-queue batch results belong to, if any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueBatchOf {
    /// 1 + the batch's sequence number (0: not a queue batch).
    pub batch: u32,
    /// How many batches the queue holds (its sealed count; 0: unknown).
    pub total: u32,
}

/// Publishes the results as [`TestCaseBatch`]es numbered from `first` and returns how many.
/// `queue` names the work-queue batch they belong to (the default outside queue mode). A
/// queue batch that produced no results is still reported, as one empty batch: the store
/// counts reported queue batches against the queue's total before it ends the execution.
pub async fn publish_results(
    bus: &Bus,
    id: &Identity,
    results: Vec<TestCaseResult>,
    first: u32,
    queue: QueueBatchOf,
) -> Result<u32> {
    let subject = subjects::results(&id.execution, id.shard);
    let mut results = results;
    for r in &mut results {
        if !id.variant.is_empty() {
            r.id = id.qualify(&r.id);
        }
        id.masker.result(r);
    }
    let mut chunks = batches(results, BATCH_CASES, BATCH_BYTES);
    if chunks.is_empty() && queue.batch > 0 {
        chunks.push(Vec::new());
    }
    let mut n = 0u32;
    for cases in chunks {
        let number = first + n;
        let batch = TestCaseBatch {
            header: Some(id.header(&format!("results/{number}"))),
            execution_id: id.execution.clone(),
            shard_index: id.shard,
            attempt: id.attempt,
            batch: number,
            results: cases,
            workflow: id.workflow.clone(),
            queue_batch: queue.batch,
            queue_batches: if queue.batch > 0 { queue.total } else { 0 },
        };
        publish_retrying(bus, &subject, &batch, RETRY_BUDGET).await?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(i: usize, output: usize) -> TestCaseResult {
        TestCaseResult {
            id: format!("t{i}"),
            output: "x".repeat(output),
            ..Default::default()
        }
    }

    #[test]
    fn batches_respect_count_and_size() {
        let b = batches((0..1201).map(|i| case(i, 0)).collect(), 500, BATCH_BYTES);
        assert_eq!(
            b.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![500, 500, 201]
        );
        let b = batches((0..10).map(|i| case(i, 60_000)).collect(), 500, BATCH_BYTES);
        assert!(b.len() >= 3);
        for batch in &b {
            let size: usize = batch.iter().map(|c| c.encoded_len()).sum();
            assert!(size <= BATCH_BYTES, "{size}");
        }
        let flat: Vec<String> = b.into_iter().flatten().map(|c| c.id).collect();
        assert_eq!(flat, (0..10).map(|i| format!("t{i}")).collect::<Vec<_>>());
        assert!(batches(Vec::new(), 500, BATCH_BYTES).is_empty());
        // A case bigger than the target still goes out, alone.
        assert_eq!(batches(vec![case(0, 300_000)], 500, BATCH_BYTES).len(), 1);
    }
}
