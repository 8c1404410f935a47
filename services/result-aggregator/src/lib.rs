//! The result-aggregator: stores planned executions (with their provenance), shard statuses
//! and test-case results (idempotent on execution, shard, attempt and test id) and the
//! scheduler's event records, derives each execution's status, publishes public
//! `ExecutionUpdate`s on `assay.v1.executions.<workflow>.<execution>` (`_` for a plan that
//! names no workflow), ends executions that outlive their timeout, and serves the query API
//! over gRPC.

mod api;
mod cancelled;
mod history;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use assay_bus::{Bus, ConsumerSpec, Delivery, Failure, NatsOptions, consumer, streams, subjects};
use assay_proto::{EventRecord, Execution, ExecutionStatus, ShardStatus, TestCaseBatch};
use assay_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use api::ResultsApi;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bus(#[from] assay_bus::Error),
    #[error(transparent)]
    Store(#[from] assay_store::Error),
    #[error("cannot serve gRPC on {addr}: {reason}")]
    Serve { addr: SocketAddr, reason: String },
    #[error(transparent)]
    Auth(#[from] assay_auth::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn failure(self) -> Failure {
        let retry = match &self {
            Error::Bus(e) => e.is_retryable(),
            Error::Store(e) => e.is_retryable(),
            Error::Serve { .. } => true,
            Error::Auth(_) => false,
        };
        if retry {
            Failure::Retry(self.to_string())
        } else {
            Failure::Reject(self.to_string())
        }
    }

    /// The gRPC status an error maps to.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            Error::Store(e) if !e.is_retryable() => {
                tonic::Status::invalid_argument(self.to_string())
            }
            _ => tonic::Status::unavailable(self.to_string()),
        }
    }
}

/// A gRPC call not answered within this ends with DEADLINE_EXCEEDED.
pub const GRPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Calls one gRPC connection may have running at once.
pub const GRPC_CONCURRENCY: usize = 256;

/// How long an ended execution is kept by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Aggregator settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub nats: NatsOptions,
    /// SQLite database file.
    pub database: PathBuf,
    /// gRPC listen address.
    pub grpc: SocketAddr,
    /// Extra time past an execution's timeout before it is declared timed out (its
    /// launcher normally reports first). Kept well under the 60 s within which every
    /// execution must end, so that the aggregator's own outages (a restart, a paused
    /// process, a disk that refuses writes for a while) still fit in that budget.
    pub timeout_grace: Duration,
    /// How often timeouts are checked.
    pub sweep_every: Duration,
    /// Bearer token every gRPC call must carry; open (with a warning at start) when `None`.
    pub token: Option<assay_auth::Secret>,
    /// Serve gRPC over TLS with this certificate and key; with a client CA, every client
    /// must present a certificate signed by it.
    pub tls: Option<assay_auth::TlsFiles>,
    /// How long an ended execution is kept (pruned by the sweep); zero keeps everything.
    pub retention: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nats: NatsOptions::default(),
            database: PathBuf::from(".assay/data/results.db"),
            grpc: SocketAddr::from(([127, 0, 0, 1], 7070)),
            timeout_grace: Duration::from_secs(10),
            sweep_every: Duration::from_secs(2),
            token: None,
            tls: None,
            retention: DEFAULT_RETENTION,
        }
    }
}

/// Writes to the store and publishes updates. Cheap to clone.
#[derive(Clone)]
pub struct Aggregator {
    bus: Bus,
    store: Store,
    /// The `assay_history` bucket, opened on first use.
    history: std::sync::Arc<tokio::sync::OnceCell<async_nats::jetstream::kv::Store>>,
    /// Per workflow, the history version ([`Store::history_version`]) of the last snapshot
    /// this process wrote. Held while a snapshot is written, so that the updates after an
    /// execution's end (every shard's last status, redeliveries) write one snapshot, one at
    /// a time, instead of one each, concurrently.
    snapshots: std::sync::Arc<tokio::sync::Mutex<std::collections::HashMap<String, u64>>>,
    /// Executions the timeout sweep ended whose cancellation or final update did not go
    /// out yet (NATS was down): retried by every sweep, since the next sweep no longer
    /// sees them among the running ones. Execution → reason.
    followups: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
    /// Cancellations seen, for [`Aggregator::end_cancelled`].
    cancelled: cancelled::Cancelled,
}

impl Aggregator {
    pub fn new(bus: Bus, store: Store) -> Aggregator {
        Aggregator {
            bus,
            store,
            history: Default::default(),
            snapshots: Default::default(),
            followups: Default::default(),
            cancelled: Default::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Publishes the execution's current view. Called after every write that changed
    /// something, and after redeliveries (the earlier publish may not have happened).
    async fn publish_update(&self, id: &str) -> Result<()> {
        let Some(mut update) = self.store.next_update(id).await? else {
            // The plan has not arrived yet; it will publish when it does. A plan that names
            // no workflow (a rejected request) publishes on `assay.v1.executions._.<id>`.
            return Ok(());
        };
        update.header = Some(assay_bus::header(
            "result-aggregator",
            format!("{id}/rev/{}", update.revision),
            None,
        ));
        self.bus
            .publish(subjects::execution_update(&update.workflow, id), &update)
            .await?;
        // Only executions that produced test results change what planning knows.
        let tests = update.passed + update.failed + update.errored + update.skipped;
        if update.status().is_terminal() {
            // After the final update went out: what the next plan of the workflow reads.
            self.store.fold_history(Some(id)).await?;
        }
        if update.status().is_terminal() && tests > 0 && !update.workflow.is_empty() {
            self.snapshot_history_if_changed(&update.workflow).await?;
        }
        if update.status().is_terminal() {
            // Memory an execution took (its batches, the history snapshot) goes back now,
            // not when the process exits.
            if let Err(e) = self.store.release_memory().await {
                debug!(execution = id, error = %e, "could not release memory after the execution");
            }
        }
        Ok(())
    }

    /// Writes the workflow's history snapshot ([`Aggregator::snapshot_history`]) unless this
    /// process already wrote it at the history's current version.
    async fn snapshot_history_if_changed(&self, workflow: &str) -> Result<()> {
        let mut written = self.snapshots.lock().await;
        let version = self.store.history_version(workflow).await?;
        if written.get(workflow) == Some(&version) {
            return Ok(());
        }
        self.snapshot_history(workflow).await?;
        written.insert(workflow.to_string(), version);
        Ok(())
    }

    /// Writes the workflow's duration estimates to the `assay_history` bucket, in bounded
    /// pieces (see `assay_bus::history`), where the scheduler reads them to plan `strategy:
    /// duration` executions. Tests not seen for 30 days are left out.
    pub async fn snapshot_history(&self, workflow: &str) -> Result<()> {
        let shard_start_ms = self.store.shard_start_ms(workflow).await?.unwrap_or(0.0);
        let pieces =
            history::pieces(&self.store, workflow, shard_start_ms, assay_bus::now_ms()).await?;
        let kv = self
            .history
            .get_or_try_init(|| self.bus.kv(streams::KV_HISTORY))
            .await?;
        match assay_bus::history::write_pieces(kv, &pieces).await {
            Ok(_) => Ok(()),
            // The bucket may have been deleted since it was opened: open (or create) it again.
            Err(e) if e.is_retryable() => {
                debug!(workflow, error = %e, "writing the duration history again through a fresh bucket handle");
                self.bus.write_history_pieces(&pieces).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn on_execution(&self, e: Execution, delivered: i64) -> Result<()> {
        let id = e.id.clone();
        if self.store.record_execution(e).await? || delivered > 1 {
            self.publish_update(&id).await?;
        }
        Ok(())
    }

    pub async fn on_status(&self, s: ShardStatus, delivered: i64) -> Result<()> {
        let id = s.execution_id.clone();
        if self.store.record_shard_status(s).await? || delivered > 1 {
            self.publish_update(&id).await?;
        }
        Ok(())
    }

    /// Stores the scheduler's record of an event (idempotent: one row per record).
    pub async fn on_event_record(&self, r: EventRecord) -> Result<()> {
        let (event, source) = r
            .event
            .as_ref()
            .map(|e| (e.event_id.clone(), e.source.clone()))
            .unwrap_or_default();
        if self.store.record_event(r).await? {
            debug!(%event, %source, "event record stored");
        }
        Ok(())
    }

    pub async fn on_batch(&self, b: TestCaseBatch, delivered: i64) -> Result<()> {
        let id = b.execution_id.clone();
        if self.store.record_batch(b).await? || delivered > 1 {
            self.publish_update(&id).await?;
        }
        Ok(())
    }

    /// Ends executions that outlived `timeout + grace` (their runner or launcher is gone).
    pub async fn sweep_timeouts(&self, grace: Duration) -> Result<usize> {
        let now = assay_bus::now_ms();
        let mut ended = 0;
        for (id, created, timeout_ms, shards) in self.store.non_terminal_executions().await? {
            if timeout_ms == 0 {
                continue;
            }
            let deadline = created + timeout_ms as i64 + grace.as_millis() as i64;
            if now < deadline {
                continue;
            }
            if let Some(ends) = self.ends_on_the_bus(&id, shards).await {
                // Its shards' ends (the runner or launcher ends them at the deadline) are on
                // the bus but not in the store yet, e.g. the status consumer is still held
                // by a database that refused writes: record them now, with their own
                // times, as the consumer would (it finds them there and changes nothing).
                let mut changed = false;
                for end in ends {
                    changed |= self.store.record_shard_status(end).await?;
                }
                if changed && let Err(e) = self.publish_update(&id).await {
                    warn!(execution = %id, error = %e, "cannot publish the update of an execution ended from the bus; retried by the next sweep");
                    self.followups
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.clone(), "execution ended".to_string());
                }
                if now < deadline + BUS_END_WAIT_MS {
                    // Not for ever: an end that does not complete the execution (a result
                    // batch it announced never arrives) must not keep it open.
                    continue;
                }
            }
            let reason = format!(
                "execution exceeded its timeout of {}s and no shard reported an end",
                timeout_ms / 1000
            );
            if self
                .store
                .finalize(&id, ExecutionStatus::TimedOut, &reason, now)
                .await?
            {
                warn!(execution = %id, %reason, "execution timed out");
                self.followups
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, reason);
                ended += 1;
            }
        }
        self.follow_up().await?;
        Ok(ended)
    }

    /// Every shard's last status on the bus, when each is a final one with no attempt to
    /// follow, so the execution's end is already decided and only needs recording. `None`
    /// when a shard has not ended or a status cannot be read (the sweep then ends the
    /// execution itself).
    async fn ends_on_the_bus(&self, id: &str, shards: u32) -> Option<Vec<ShardStatus>> {
        if shards == 0 {
            return None;
        }
        let mut ends = Vec::with_capacity(shards as usize);
        for shard in 0..shards {
            let last: ShardStatus = self
                .bus
                .last_message(streams::STATUS, &subjects::shard_status(id, shard))
                .await
                .ok()??;
            if !last.state().is_terminal() || last.will_retry {
                return None;
            }
            ends.push(last);
        }
        Some(ends)
    }

    /// Queues the follow-up of every execution timed out in the last `window`: the list of
    /// follow-ups lives in memory, so a crash between ending an execution and cancelling it
    /// would otherwise leave its runners (and later attempts of its shards) running.
    /// Cancelling and publishing again is harmless.
    pub async fn resume_follow_ups(&self, window: Duration) -> Result<usize> {
        let since = assay_bus::now_ms() - window.as_millis() as i64;
        let ended = self.store.timed_out_since(since).await?;
        let n = ended.len();
        self.followups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(ended);
        Ok(n)
    }

    /// For each execution the sweep ended: cancel it, so launchers kill its runners and
    /// start no further attempt of its shards (nothing outlives the execution), and publish
    /// its final update (which frees its concurrency slot). Both are idempotent; an
    /// execution stays on the list until both went out.
    async fn follow_up(&self) -> Result<()> {
        let pending: Vec<(String, String)> = self
            .followups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, reason) in pending {
            self.bus.cancel(&id, &reason).await?;
            self.publish_update(&id).await?;
            self.followups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
        Ok(())
    }
}

/// Opens the result store, waiting while it cannot be written (a read-only or full disk, a
/// lock) instead of exiting: a supervisor's restart loop would only add its own back-off
/// to the outage. `None` when shutdown came first. Other errors (a schema newer than this
/// build) end the service.
async fn open_store(path: &std::path::Path, shutdown: &CancellationToken) -> Result<Option<Store>> {
    let mut delays = assay_bus::retry::delays();
    let mut delay = delays.next().unwrap_or(assay_bus::retry::MAX_DELAY);
    loop {
        match Store::open(path) {
            Ok(store) => return Ok(Some(store)),
            Err(e) if e.is_retryable() => {
                warn!(database = %path.display(), error = %e, retry_in = ?delay, "result store cannot be opened for writing; waiting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
                delay = delays.next().unwrap_or(assay_bus::retry::MAX_DELAY);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How long past `timeout + grace` the sweep waits for the shards' ends it recorded from the
/// bus to complete an execution (their announced result batches to arrive) before it times
/// the execution out itself.
const BUS_END_WAIT_MS: i64 = 30_000;

/// Runs a handler until the store takes its write. A store that cannot write for a while
/// (a read-only or failing disk, a full one, a lock) is not the message's fault: naking
/// would spend the message's `max_deliver` in about 20 s and dead-letter acknowledged test
/// results, statuses and plans, which then never reach the store. The message is held
/// instead, its ack deadline extended, while the store is retried with backoff; at most
/// `max_ack_pending` messages wait so, which is the backpressure. Other failures (a bus
/// error, an invalid message) take the consumer's usual path.
async fn until_stored<M, F, Fut>(
    d: &Delivery<M>,
    shutdown: &CancellationToken,
    handle: F,
) -> std::result::Result<(), Failure>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut delays = assay_bus::retry::delays();
    let mut delay = delays.next().unwrap_or(assay_bus::retry::MAX_DELAY);
    loop {
        match handle().await {
            Ok(()) => return Ok(()),
            Err(Error::Store(e)) if e.is_retryable() => {
                warn!(subject = %d.subject, error = %e, retry_in = ?delay, "result store unavailable; holding the message until it takes the write");
                d.progress().await;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Err(Failure::Retry(e.to_string())),
                }
                delay = delays.next().unwrap_or(assay_bus::retry::MAX_DELAY);
            }
            Err(e) => return Err(e.failure()),
        }
    }
}

fn handler_spec(durable: &str, filter: &str, concurrency: usize) -> ConsumerSpec {
    let stream = match filter {
        subjects::RESULTS_ALL => streams::RESULTS,
        subjects::DECISIONS_ALL => streams::DECISIONS,
        _ => streams::STATUS,
    };
    ConsumerSpec::new(stream, durable)
        .filter([filter.to_string()])
        .concurrency(concurrency)
}

/// Runs the aggregator until `shutdown`.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<()> {
    let bearer = assay_auth::Bearer::new(options.token.clone());
    bearer.warn_if_open("assay-result-aggregator", "the gRPC Results API");
    let tls = match &options.tls {
        Some(files) => {
            let (cert, key) = files.read()?;
            let config = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key));
            // With a client CA, tonic requires every client to present a certificate it
            // signed: the gRPC API has no unauthenticated callers to keep out of this.
            Some(match files.client_ca_pem()? {
                Some(ca) => config.client_ca_root(tonic::transport::Certificate::from_pem(ca)),
                None => config,
            })
        }
        None => None,
    };
    let Some(store) = open_store(&options.database, &shutdown).await? else {
        return Ok(()); // shut down while waiting for the store
    };
    info!(database = %options.database.display(), "result store open");
    let bus = Bus::connect(&options.nats, &shutdown).await?;
    bus.ensure_topology().await?;
    let agg = Aggregator::new(bus.clone(), store.clone());
    // The first sweep cancels them again (idempotent), in case the last run crashed first.
    let resumed = match agg.resume_follow_ups(Duration::from_secs(600)).await {
        Ok(n) => n,
        Err(Error::Store(e)) if e.is_retryable() => {
            warn!(error = %e, "cannot read recent timeouts; their cancellations are not re-checked");
            0
        }
        Err(e) => return Err(e),
    };
    if resumed > 0 {
        info!(
            executions = resumed,
            "re-checking the cancellation of recently timed-out executions"
        );
    }
    // Set-up that can fail is done: /readyz may answer 200 (while NATS stays connected).
    options.nats.health.set_ready();

    let plans = {
        let (a, stop) = (agg.clone(), shutdown.clone());
        consumer::run(
            bus.clone(),
            handler_spec("result-aggregator-plans", subjects::PLANS_ALL, 16),
            shutdown.clone(),
            move |d: Delivery<Execution>| {
                let (a, stop) = (a.clone(), stop.clone());
                async move {
                    until_stored(&d, &stop, || a.on_execution(d.msg.clone(), d.delivered)).await
                }
            },
        )
    };
    let statuses = {
        let (a, stop) = (agg.clone(), shutdown.clone());
        consumer::run(
            bus.clone(),
            handler_spec("result-aggregator-status", subjects::STATUS_ALL, 16),
            shutdown.clone(),
            move |d: Delivery<ShardStatus>| {
                let (a, stop) = (a.clone(), stop.clone());
                async move { until_stored(&d, &stop, || a.on_status(d.msg.clone(), d.delivered)).await }
            },
        )
    };
    let results = {
        let (a, stop) = (agg.clone(), shutdown.clone());
        consumer::run(
            bus.clone(),
            handler_spec("result-aggregator-results", subjects::RESULTS_ALL, 16),
            shutdown.clone(),
            move |d: Delivery<TestCaseBatch>| {
                let (a, stop) = (a.clone(), stop.clone());
                async move { until_stored(&d, &stop, || a.on_batch(d.msg.clone(), d.delivered)).await }
            },
        )
    };
    let decisions = {
        let (a, stop) = (agg.clone(), shutdown.clone());
        consumer::run(
            bus.clone(),
            ConsumerSpec {
                max_message_bytes: streams::MAX_MESSAGE_BYTES as usize,
                ..handler_spec("result-aggregator-decisions", subjects::DECISIONS_ALL, 4)
            },
            shutdown.clone(),
            move |d: Delivery<assay_proto::EventRecord>| {
                let (a, stop) = (a.clone(), stop.clone());
                async move { until_stored(&d, &stop, || a.on_event_record(d.msg.clone())).await }
            },
        )
    };
    let sweeper = {
        let (a, shutdown) = (agg.clone(), shutdown.clone());
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(options.sweep_every) => {}
                    _ = shutdown.cancelled() => return,
                }
                if let Err(e) = a.end_cancelled(options.timeout_grace).await {
                    warn!(error = %e, "ending cancelled executions failed; will try again");
                }
                if let Err(e) = a.sweep_timeouts(options.timeout_grace).await {
                    warn!(error = %e, "timeout sweep failed; will try again");
                }
                // Ends whose fold into the history was interrupted (a crash between the final
                // update and the fold); normally nothing is left.
                match a.store.fold_history(None).await {
                    Ok(0) => {}
                    Ok(n) => info!(
                        tests = n,
                        "ended executions' test cases folded into the duration history"
                    ),
                    Err(e) => {
                        warn!(error = %e, "folding ended executions into the history failed; will try again")
                    }
                }
                let expired_before =
                    assay_bus::now_ms() - assay_store::EVENT_RETENTION.as_millis() as i64;
                if let Err(e) = a.store.prune_events(expired_before).await {
                    warn!(error = %e, "pruning expired event records failed; will try again");
                }
                if !options.retention.is_zero() {
                    let ended_before = assay_bus::now_ms() - options.retention.as_millis() as i64;
                    match a.store.prune_executions(ended_before).await {
                        Ok(0) => {}
                        Ok(n) => {
                            info!(executions = n, retention = ?options.retention, "ended executions past their retention deleted")
                        }
                        Err(e) => {
                            warn!(error = %e, "pruning executions past their retention failed; will try again")
                        }
                    }
                }
            }
        }
    };
    let listener = tokio::net::TcpListener::bind(options.grpc)
        .await
        .map_err(|e| Error::Serve {
            addr: options.grpc,
            reason: e.to_string(),
        })?;
    let addr = listener.local_addr().unwrap_or(options.grpc);
    let server = {
        let api = ResultsApi::new(bus.clone(), store.clone(), shutdown.clone());
        let shutdown = shutdown.clone();
        async move {
            // Bounded: a unary call that takes longer than GRPC_TIMEOUT (a store that stopped
            // answering) ends with DEADLINE_EXCEEDED (streams are not cut: their handler
            // returns at once), and one connection runs at most GRPC_CONCURRENCY calls at once.
            let mut builder = tonic::transport::Server::builder()
                .timeout(GRPC_TIMEOUT)
                .concurrency_limit_per_connection(GRPC_CONCURRENCY);
            if let Some(tls) = tls {
                builder = builder.tls_config(tls).map_err(|e| Error::Serve {
                    addr,
                    reason: format!("invalid TLS certificate or key: {e}"),
                })?;
            }
            builder
                .add_service(
                    assay_proto::results_server::ResultsServer::with_interceptor(api, bearer),
                )
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    shutdown.cancelled_owned(),
                )
                .await
                .map_err(|e| Error::Serve {
                    addr,
                    reason: e.to_string(),
                })
        }
    };
    let mutual_tls = options.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    info!(grpc = %addr, tls = options.tls.is_some(), mutual_tls, "result-aggregator running");
    let following = agg.cancelled.clone().follow(bus.clone(), shutdown.clone());
    let (p, s, r, d, (), (), g) = tokio::join!(
        plans, statuses, results, decisions, sweeper, following, server
    );
    p?;
    s?;
    r?;
    d?;
    g?;
    info!("result-aggregator stopped");
    Ok(())
}
