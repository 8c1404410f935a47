//! Durable pull consumers with the contract every assay service follows:
//! size checked before decode, ack only after the handler succeeded, finite `max_deliver`
//! with exponential backoff, and poison messages copied to `assay.v1.dead.<stream>` with
//! the reason before being terminated.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::{
    Bus, BusMessage, DEAD_DELIVERIES, DEAD_REASON, DEAD_SUBJECT, Error, Result, decode, subjects,
};

/// What a handler says when it could not handle a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Try again later (nak with backoff); dead-lettered after `max_deliver` attempts.
    Retry(String),
    /// Never going to work: terminate now and dead-letter with the reason.
    Reject(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Retry(r) => write!(f, "retryable: {r}"),
            Failure::Reject(r) => write!(f, "rejected: {r}"),
        }
    }
}

/// A durable consumer's settings.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Stream name (see [`crate::streams`]).
    pub stream: String,
    /// Durable name: the service's name (plus a role when one service has several).
    pub durable: String,
    /// Subjects to take; empty: the whole stream.
    pub filter_subjects: Vec<String>,
    pub max_deliver: i64,
    pub ack_wait: Duration,
    /// Messages handled at once (also the consumer's `max_ack_pending`, for backpressure).
    pub concurrency: usize,
    /// Largest payload decoded; larger ones are dead-lettered.
    pub max_message_bytes: usize,
    /// First and largest redelivery delay.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl ConsumerSpec {
    pub fn new(stream: &str, durable: &str) -> ConsumerSpec {
        ConsumerSpec {
            stream: stream.to_string(),
            durable: durable.to_string(),
            filter_subjects: Vec::new(),
            max_deliver: 8,
            ack_wait: Duration::from_secs(30),
            concurrency: 1,
            max_message_bytes: 256 * 1024,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        }
    }

    pub fn filter(mut self, subjects: impl IntoIterator<Item = String>) -> Self {
        self.filter_subjects = subjects.into_iter().collect();
        self
    }

    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }

    pub fn max_deliver(mut self, n: i64) -> Self {
        self.max_deliver = n.max(1);
        self
    }

    /// No delivery limit at the server: the message comes back after every failed or
    /// unanswered delivery until its handler ends it, so the handler must bound its own
    /// attempts (see `Delivery::delivered`). For messages whose silent loss after the last
    /// delivery would leave work unfinished for ever (a shard job: nobody would end the
    /// shard). A `Failure::Reject` still dead-letters.
    pub fn unlimited_deliveries(mut self) -> Self {
        self.max_deliver = -1;
        self
    }

    fn retries_left(&self, delivered: i64) -> bool {
        self.max_deliver < 0 || delivered < self.max_deliver
    }

    /// Delay before redelivery number `delivered` + 1.
    pub fn backoff(&self, delivered: i64) -> Duration {
        let exp = delivered.clamp(1, 16) as u32 - 1;
        self.backoff_min
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.backoff_max)
    }
}

/// One decoded message being handled.
pub struct Delivery<M> {
    pub msg: M,
    pub subject: String,
    /// How many times this message has been delivered (1 the first time).
    pub delivered: i64,
    raw: Arc<async_nats::jetstream::Message>,
}

impl<M> Delivery<M> {
    /// Tells the server work is ongoing, extending the ack deadline by `ack_wait`.
    pub async fn progress(&self) {
        if let Err(e) = self.raw.ack_with(AckKind::Progress).await {
            debug!(subject = %self.subject, error = %e, "progress ack failed");
        }
    }

    /// The message's position in its stream: the same for every delivery of one message
    /// (a redelivery), different for a message published again.
    pub fn stream_sequence(&self) -> Option<u64> {
        self.raw.info().ok().map(|i| i.stream_sequence)
    }

    /// The subject that acknowledges this delivery. Any connection may answer it: a peer
    /// that sees this delivery's holder gone naks it so the server hands it out at once
    /// rather than after the ack wait.
    pub fn reply(&self) -> Option<&str> {
        self.raw.reply.as_deref()
    }

    /// The NATS headers of the message.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.raw.headers.as_ref()
    }
}

/// Runs a durable consumer until `shutdown`, handling up to `spec.concurrency` messages at
/// once. Messages in hand when shutdown comes are finished and acked.
pub async fn run<M, F, Fut>(
    bus: Bus,
    spec: ConsumerSpec,
    shutdown: CancellationToken,
    handler: F,
) -> Result<()>
where
    M: BusMessage,
    F: Fn(Delivery<M>) -> Fut + Send + Sync,
    Fut: Future<Output = std::result::Result<(), Failure>> + Send,
{
    let handler = &handler;
    let spec = &spec;
    let bus = &bus;
    let mut delays = crate::retry::delays();
    while !shutdown.is_cancelled() {
        let messages = match open(bus, spec).await {
            Ok(m) => m,
            Err(e) => {
                let retry_delay = delays.next().unwrap_or(crate::retry::MAX_DELAY);
                warn!(stream = %spec.stream, consumer = %spec.durable, error = %e, retry_in = ?retry_delay, "cannot open consumer, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(retry_delay) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
        };
        delays = crate::retry::delays();
        messages
            .take_until(shutdown.cancelled())
            .for_each_concurrent(spec.concurrency, |item| async move {
                match item {
                    Ok(m) => handle_one(bus, spec, handler, Arc::new(m)).await,
                    Err(e) => debug!(consumer = %spec.durable, error = %e, "consumer stream error"),
                }
            })
            .await;
    }
    Ok(())
}

async fn open(bus: &Bus, spec: &ConsumerSpec) -> Result<pull::Stream> {
    let stream = bus
        .jetstream()
        .get_stream(&spec.stream)
        .await
        .map_err(|e| Error::js(format!("get stream {}", spec.stream), e))?;
    let config = pull::Config {
        durable_name: Some(spec.durable.clone()),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: spec.ack_wait,
        max_deliver: spec.max_deliver,
        max_ack_pending: (spec.concurrency as i64).max(1),
        filter_subjects: spec.filter_subjects.clone(),
        ..Default::default()
    };
    let consumer = match stream.create_consumer(config.clone()).await {
        Ok(c) => c,
        // Exists with other settings: update what may change.
        Err(_) => stream
            .update_consumer(config)
            .await
            .map_err(|e| Error::js(format!("consumer {}", spec.durable), e))?,
    };
    consumer
        .stream()
        .max_messages_per_batch(spec.concurrency.max(1))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| Error::js(format!("messages of {}", spec.durable), e))
}

async fn handle_one<M, F, Fut>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &F,
    raw: Arc<async_nats::jetstream::Message>,
) where
    M: BusMessage,
    F: Fn(Delivery<M>) -> Fut + Send + Sync,
    Fut: Future<Output = std::result::Result<(), Failure>> + Send,
{
    let subject = raw.subject.to_string();
    let delivered = raw.info().map(|i| i.delivered).unwrap_or(1);
    let msg = match decode::<M>(&subject, &raw.payload, spec.max_message_bytes) {
        Ok(m) => m,
        Err(e) => {
            dead_letter(bus, spec, &raw, &subject, delivered, &e.to_string()).await;
            return;
        }
    };
    let delivery = Delivery {
        msg,
        subject: subject.clone(),
        delivered,
        raw: raw.clone(),
    };
    match handler(delivery).await {
        Ok(()) => {
            if let Err(e) = raw.ack().await {
                warn!(%subject, error = %e, "ack failed; the message will be redelivered and handled idempotently");
            }
        }
        Err(Failure::Retry(reason)) if spec.retries_left(delivered) => {
            let delay = spec.backoff(delivered);
            warn!(%subject, delivered, retry_in = ?delay, %reason, "handler failed, will retry");
            if let Err(e) = raw.ack_with(AckKind::Nak(Some(delay))).await {
                debug!(%subject, error = %e, "nak failed");
            }
        }
        Err(Failure::Retry(reason)) => {
            let reason = format!("gave up after {delivered} deliveries: {reason}");
            dead_letter(bus, spec, &raw, &subject, delivered, &reason).await;
        }
        Err(Failure::Reject(reason)) => {
            dead_letter(bus, spec, &raw, &subject, delivered, &reason).await;
        }
    }
}

/// Copies the message with its reason to `assay.v1.dead.<stream>`, then terminates it.
/// If the copy cannot be written, the message is nak'ed instead so nothing is lost.
async fn dead_letter(
    bus: &Bus,
    spec: &ConsumerSpec,
    raw: &async_nats::jetstream::Message,
    subject: &str,
    delivered: i64,
    reason: &str,
) {
    error!(%subject, stream = %spec.stream, consumer = %spec.durable, %reason, "dead letter");
    let mut headers = HeaderMap::new();
    headers.insert(DEAD_REASON, sanitize_header(reason).as_str());
    headers.insert(DEAD_SUBJECT, subject);
    headers.insert(DEAD_DELIVERIES, delivered.to_string().as_str());
    headers.insert("Assay-Consumer", spec.durable.as_str());
    if let Some(seq) = raw.info().ok().map(|i| i.stream_sequence) {
        // Dedup key: the original stream position, so a retried dead-lettering is one copy.
        headers.insert(
            crate::MSG_ID,
            format!("{}/{}/{seq}", spec.stream, spec.durable).as_str(),
        );
    }
    let payload = raw.payload.clone();
    match bus
        .publish_raw(subjects::dead(&spec.stream), headers, payload)
        .await
    {
        Ok(()) => {
            if let Err(e) = raw.ack_with(AckKind::Term).await {
                debug!(%subject, error = %e, "term failed");
            }
        }
        Err(e) => {
            warn!(%subject, error = %e, "cannot write dead letter; will retry the message");
            let _ = raw
                .ack_with(AckKind::Nak(Some(spec.backoff(delivered))))
                .await;
        }
    }
}

fn sanitize_header(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.chars().take(1024).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let spec = ConsumerSpec::new("S", "d");
        assert_eq!(spec.backoff(1), Duration::from_millis(200));
        assert_eq!(spec.backoff(2), Duration::from_millis(400));
        assert_eq!(spec.backoff(50), Duration::from_secs(10));
    }

    #[test]
    fn unlimited_deliveries_always_leave_a_retry() {
        let spec = ConsumerSpec::new("S", "d").max_deliver(3);
        assert!(spec.retries_left(2));
        assert!(!spec.retries_left(3));
        let spec = spec.unlimited_deliveries();
        assert_eq!(spec.max_deliver, -1);
        assert!(spec.retries_left(1_000_000));
    }
}
