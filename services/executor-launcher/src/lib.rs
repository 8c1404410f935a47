//! The executor-launcher: pulls shard jobs from the `ASSAY_SHARDS` work queue, at most
//! `capacity` at once, decides whether each delivery starts an attempt ([`admission`]) and
//! runs it on a [`Backend`] (locally: an `assay-runner` child process in its own process
//! group). It enforces the shard timeout by killing the attempt, and when a runner ends
//! without reporting (signal, crash, lost infrastructure) it reports the shard `errored`
//! with the reason, so no shard is left running.
//!
//! A job is acked only when its attempt has ended. A job redelivered after a launcher
//! crash runs again as the next attempt (`attempt + deliveries - 1`), so results of the
//! interrupted attempt never mix with the new one. A launcher that dies is noticed by its
//! peers (or its own next start) within seconds through its heartbeat (see [`liveness`]),
//! and its jobs are handed out again at once instead of after the ack wait.

mod admission;
pub mod backend;
mod cancellations;
mod capacity;
mod live;
mod liveness;

pub use admission::MAX_JOB_DELIVERIES;
pub use backend::kubernetes::{KubeBackend, KubeOptions};
pub use backend::local::{LocalBackend, LocalOptions, classify, find_runner};
pub use backend::{Attempt, AttemptId, Backend, BackendKind, Outcome, RetryElsewhere, RunnerNats};

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use admission::{Admission, Known, Skip};
use assay_bus::{Bus, ConsumerSpec, Delivery, Failure, NatsOptions, consumer, streams, subjects};
use assay_proto::{ExecutionStatus, ExecutionUpdate, ShardJob, ShardState, ShardStatus};
use cancellations::Cancellations;
use live::LiveAttempts;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bus(#[from] assay_bus::Error),
    #[error(
        "assay-runner not found (looked in {looked}); build it with `cargo build --bins` or set ASSAY_RUNNER to its path"
    )]
    RunnerNotFound { looked: String },
    #[error("cannot start {runner}: {reason}")]
    Spawn { runner: String, reason: String },
    #[error("launcher liveness: {0}")]
    Liveness(String),
    #[error("{0}")]
    Config(String),
    #[error("kubernetes: {0}")]
    Kube(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The durable consumer every launcher takes shard jobs from.
const CONSUMER: &str = "executor-launcher";

/// How long past an attempt's time limit the launcher waits for the runner to end it (the
/// runner kills its steps and reports `timed_out` itself) before killing the attempt.
const RUNNER_GRACE: Duration = Duration::from_secs(2);

/// Launcher settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub nats: NatsOptions,
    /// Where attempts run.
    pub backend: BackendKind,
    /// Shards run at once on this machine.
    pub capacity: usize,
    /// The `assay-runner` binary; `None`: `$ASSAY_RUNNER`, else next to this executable.
    pub runner: Option<PathBuf>,
    /// How long an unacknowledged job waits before redelivery (kept alive by progress acks
    /// while its runner works).
    pub ack_wait: Duration,
    /// Runners started ahead of time and waiting for a job on stdin, so a shard does not
    /// wait for a process to load (0: start every runner when its job arrives).
    pub warm: usize,
    /// Settings of the kubernetes backend (its `capacity` is [`Options::capacity`]).
    pub kube: KubeOptions,
    /// The kubeconfig the kubernetes backend reads; `None`: the usual places (`KUBECONFIG`,
    /// `~/.kube/config`, the Pod's service account).
    pub kubeconfig: Option<PathBuf>,
    /// How often the kubernetes backend's reaper looks for Pods of ended executions.
    pub reap_every: Duration,
    /// Operator (JWT) mode: mints each attempt's runner a NATS user of its own, allowed only
    /// its shard's subjects and expiring with its execution (see [`assay_bus::runner_jwt`]).
    pub runner_signer: Option<Arc<assay_bus::runner_jwt::Signer>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nats: NatsOptions::default(),
            backend: BackendKind::default(),
            capacity: num_cpus::get().max(1),
            runner: None,
            ack_wait: Duration::from_secs(30),
            warm: 2,
            kube: KubeOptions::default(),
            kubeconfig: None,
            reap_every: backend::kubernetes::reaper::DEFAULT_EVERY,
            runner_signer: None,
        }
    }
}

/// Runs the launcher until `shutdown`, with the backend `options` name.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<()> {
    let runner_nats = RunnerNats::like(&options.nats);
    match options.backend {
        BackendKind::Local => {
            let local = Arc::new(LocalBackend::new(LocalOptions {
                runner: options.runner.clone(),
                capacity: options.capacity,
                // Warm runners cannot hold credentials minted for a job not yet known.
                warm: if options.runner_signer.is_some() {
                    0
                } else {
                    options.warm
                },
                nats: runner_nats.clone(),
            })?);
            let bus = connect(&options, &shutdown).await?;
            local.fill_warm_pool();
            info!(runner = %local.runner().display(), warm = options.warm, "local backend");
            info!(
                "local backend: a workflow's container and pod settings are ignored (steps run with this machine's tools)"
            );
            let served = serve(bus, local.clone(), runner_nats, &options, shutdown).await;
            local.drain();
            served
        }
        BackendKind::Kubernetes => {
            if options.kube.runner_image.is_empty() {
                return Err(Error::Config(
                    "the kubernetes backend needs --runner-image (the image holding assay-runner)"
                        .into(),
                ));
            }
            let client = kube_client(options.kubeconfig.as_deref()).await?;
            let kube = KubeOptions {
                capacity: options.capacity,
                ..options.kube.clone()
            };
            let backend = Arc::new(KubeBackend::new(client, kube.clone())?);
            if options.nats.auth.method() != "none"
                && kube.runner_nats_secret.is_none()
                && options.runner_signer.is_none()
            {
                warn!(
                    "the launcher's own NATS credentials are never put in a Pod; without --runner-nats-secret runners connect without credentials"
                );
            }
            let bus = connect(&options, &shutdown).await?;
            info!(namespace = %kube.namespace, runner_image = %kube.runner_image, infra_retries = kube.infra_retries, "kubernetes backend");
            let reaper = tokio::spawn(backend::kubernetes::reaper::run(
                bus.clone(),
                backend.pods().clone(),
                options.reap_every,
                shutdown.clone(),
            ));
            let served = serve(bus, backend, runner_nats, &options, shutdown).await;
            reaper.abort();
            served
        }
    }
}

/// A kube client from `kubeconfig`, else from the usual places.
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client> {
    let unreachable = |e: String| {
        Error::Kube(format!(
            "cannot configure a client for the Kubernetes API: {e}; set KUBECONFIG or run in a Pod with a service account"
        ))
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| unreachable(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| unreachable(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| unreachable(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| unreachable(e.to_string()))
}

async fn connect(options: &Options, shutdown: &CancellationToken) -> Result<Bus> {
    let bus = Bus::connect(&options.nats, shutdown).await?;
    bus.ensure_topology().await?;
    if options.runner_signer.is_some() {
        // Runners with minted credentials may use the batch claims bucket, not create it.
        bus.kv_with_age(
            assay_bus::streams::KV_BATCH_CLAIMS,
            assay_bus::streams::BATCH_CLAIMS_MAX_AGE,
        )
        .await?;
    }
    Ok(bus)
}

/// Takes shard jobs and runs them on `backend` until `shutdown`.
async fn serve<B: Backend>(
    bus: Bus,
    backend: Arc<B>,
    runner_nats: RunnerNats,
    options: &Options,
    shutdown: CancellationToken,
) -> Result<()> {
    let capacity = backend.capacity();
    let cancels = Cancellations::default();
    let watcher = tokio::spawn(cancels.clone().follow(bus.clone(), shutdown.clone()));
    let liveness = liveness::Liveness::start(&bus).await?;
    // Set-up that can fail is done: /readyz may answer 200 (while NATS stays connected).
    options.nats.health.set_ready();
    // Beats in this task, not a spawned one: a launcher that dies (or whose task is
    // aborted) stops beating with it.
    let beat_stop = shutdown.child_token();
    let beating = liveness.clone().run(beat_stop.clone());
    let launcher = Launcher {
        bus: bus.clone(),
        backend,
        runner_nats: Arc::new(runner_nats),
        signer: options.runner_signer.clone(),
        ack_wait: options.ack_wait,
        shutdown: shutdown.clone(),
        cancels,
        live: LiveAttempts::default(),
        liveness: liveness.clone(),
    };
    let busy = capacity::Busy::new(capacity);
    let announcing = tokio::spawn(capacity::announce_waiting(
        bus.clone(),
        CONSUMER,
        busy.clone(),
        Duration::from_secs(1),
        shutdown.clone(),
    ));
    let spec = ConsumerSpec::new(streams::SHARDS, CONSUMER)
        .concurrency(capacity)
        .ack_wait(options.ack_wait)
        // The server never gives up on a job: a job dropped after its last delivery would
        // leave its shard with no end at all (every delivery can be lost to a paused or
        // killed launcher). `launch` bounds the attempts itself and ends the shard instead.
        .unlimited_deliveries();
    info!(capacity, backend = %options.backend, instance = liveness.instance(), "executor-launcher running");
    info!(
        capacity,
        "launcher capacity: at most {} shard{} at once; raise with --capacity",
        capacity,
        if capacity == 1 { "" } else { "s" }
    );
    let consuming = async {
        let r = consumer::run(bus, spec, shutdown, move |d: Delivery<ShardJob>| {
            let l = launcher.clone();
            let slot = busy.enter();
            async move {
                let r = l.launch(d).await;
                drop(slot);
                r
            }
        })
        .await;
        beat_stop.cancel();
        r
    };
    let (consumed, ()) = tokio::join!(consuming, beating);
    consumed?;
    watcher.abort();
    announcing.abort();
    info!("executor-launcher stopped");
    Ok(())
}

struct Launcher<B> {
    bus: Bus,
    backend: Arc<B>,
    /// How every runner reaches NATS.
    runner_nats: Arc<RunnerNats>,
    /// Mints each attempt's runner credentials (operator mode).
    signer: Option<Arc<assay_bus::runner_jwt::Signer>>,
    ack_wait: Duration,
    shutdown: CancellationToken,
    cancels: Cancellations,
    live: LiveAttempts,
    liveness: liveness::Liveness,
}

impl<B> Clone for Launcher<B> {
    fn clone(&self) -> Self {
        Launcher {
            bus: self.bus.clone(),
            backend: self.backend.clone(),
            runner_nats: self.runner_nats.clone(),
            signer: self.signer.clone(),
            ack_wait: self.ack_wait,
            shutdown: self.shutdown.clone(),
            cancels: self.cancels.clone(),
            live: self.live.clone(),
            liveness: self.liveness.clone(),
        }
    }
}

/// How an attempt ended: its state, the launcher's own final status when the runner did not
/// report, whether an infrastructure retry elsewhere may help, the adopted attempt number.
type Ended = (
    ShardState,
    Option<ShardStatus>,
    Option<RetryElsewhere>,
    Option<u32>,
);

/// Why the launcher stopped waiting for an attempt before it ended on its own.
enum Interrupted {
    TimedOut,
    Shutdown,
    Cancelled(String),
}

impl<B: Backend> Launcher<B> {
    /// The execution's terminal status, if its last update on `assay.v1.executions` is one.
    /// `None` when it is still going or the update cannot be read (the job then runs).
    async fn ended(&self, job: &ShardJob) -> Option<ExecutionStatus> {
        let subject = subjects::execution_update(&job.workflow, &job.execution_id);
        let update: ExecutionUpdate = self
            .bus
            .last_message(streams::EXECUTIONS, &subject)
            .await
            .ok()??;
        let status = update.status();
        status.is_terminal().then_some(status)
    }

    /// The shard's last status on `assay.v1.status`; `None` when there is none or it cannot
    /// be read (the job then runs).
    async fn last_status(&self, job: &ShardJob) -> Option<ShardStatus> {
        let subject = subjects::shard_status(&job.execution_id, job.shard_index);
        self.bus
            .last_message(streams::STATUS, &subject)
            .await
            .ok()?
    }

    async fn launch(&self, d: Delivery<ShardJob>) -> std::result::Result<(), Failure> {
        let job = admission::numbered(&d.msg, d.delivered);
        let (exec, shard, attempt) = (job.execution_id.clone(), job.shard_index, job.attempt);
        let _live = match self.live.claim(AttemptId::of(&job), d.stream_sequence()) {
            Ok(live) => live,
            Err(mut ended) => {
                info!(execution = %exec, shard, attempt, deliveries = d.delivered, "this job is already running here; waiting for it instead of starting a second runner");
                let mut progress = tokio::time::interval(self.ack_wait / 3);
                loop {
                    tokio::select! {
                        r = ended.changed() => if r.is_err() { break },
                        _ = progress.tick() => d.progress().await,
                        _ = self.shutdown.cancelled() => {
                            return Err(Failure::Retry("launcher shut down".into()));
                        }
                    }
                }
                return Ok(());
            }
        };
        // Subscribed before the cancellations are read, so none is missed in between.
        let cancelled = self.cancels.subscribe();
        // The shard's status matters only while the execution goes on.
        let execution_ended = self.ended(&job).await;
        let last_status = match execution_ended {
            None => self.last_status(&job).await,
            Some(_) => None,
        };
        let cancel_reason = self.cancels.reason(&exec);
        let now = assay_bus::now_ms();
        let known = Known {
            execution_ended,
            last_status: last_status.as_ref(),
            cancelled: cancel_reason.as_deref(),
            now_ms: now,
            delivered: d.delivered,
            max_deliveries: MAX_JOB_DELIVERIES,
        };
        match admission::admit(&job, &known) {
            Admission::Run => {}
            Admission::Skip(Skip::ExecutionEnded(status)) => {
                info!(execution = %exec, shard, attempt, status = ?status, "execution already ended; shard job dropped");
                return Ok(());
            }
            Admission::Skip(Skip::Stale(why)) => {
                info!(execution = %exec, shard, attempt, job_attempt = job.job_attempt, %why, "shard job dropped");
                return Ok(());
            }
            Admission::EnsureRetry { ended_attempt } => {
                info!(execution = %exec, shard, ended_attempt, "this job's run already ended with a retry; making sure its next attempt's job is out");
                // Published again under its idempotency key: a copy already out is kept once.
                let ended = ShardJob {
                    attempt: ended_attempt,
                    ..job.clone()
                };
                return self.publish_next_attempt(&ended, None).await;
            }
            Admission::End { state, reason } => {
                if state == ShardState::Cancelled {
                    info!(execution = %exec, shard, attempt, %reason, "execution cancelled; shard not started");
                } else {
                    warn!(execution = %exec, shard, attempt, deliveries = d.delivered, state = ?state, %reason, "shard ended without starting");
                }
                let status = launcher_status(&job, state, reason);
                return self.finish(&job, state, Some(status), None).await;
            }
        }

        let (ended, report, elsewhere, adopted) = self.attempt(&d, &job, now, cancelled).await?;
        // A Pod found running was started as an earlier attempt number of this job: its
        // runner reports under that number, and so does what follows here.
        let job = match adopted {
            Some(attempt) if attempt != job.attempt => ShardJob { attempt, ..job },
            _ => job,
        };
        match &report {
            Some(status) => {
                warn!(execution = %exec, shard, attempt, reason = %status.reason, "shard ended without a runner report")
            }
            None => debug!(execution = %exec, shard, attempt, "runner reported and exited"),
        }
        self.finish(&job, ended, report, elsewhere).await
    }

    /// Runs the attempt `job` is numbered as, started at `now`, to its end: on the backend
    /// (found already running, else started), held by progress acks, killed at its time
    /// limit, on a cancellation seen through `cancelled`, or when the launcher stops.
    /// Returns the state it ended in, the launcher's own final status when the runner
    /// did not report one, whether an infrastructure failure may be retried elsewhere, and
    /// the attempt number of a runner found already running; a launcher that stops leaves
    /// the job to be redelivered.
    async fn attempt(
        &self,
        d: &Delivery<ShardJob>,
        job: &ShardJob,
        now: i64,
        mut cancelled: tokio::sync::watch::Receiver<u64>,
    ) -> std::result::Result<Ended, Failure> {
        let (exec, shard, attempt) = (&job.execution_id, job.shard_index, job.attempt);
        // After a launcher restart the attempt may already run (a Pod of its name).
        let found = self
            .backend
            .find(job)
            .await
            .map_err(|e| Failure::Retry(e.to_string()))?;
        let adopted = found.is_some();
        let adopted_attempt = found.as_ref().and_then(|a| a.adopted_attempt());
        let mut running = match found {
            Some(running) => running,
            None => {
                let minted = match &self.signer {
                    Some(signer) => Some(
                        self.runner_nats
                            .minted(signer, job)
                            .map_err(|e| Failure::Retry(e.to_string()))?,
                    ),
                    None => None,
                };
                self.backend
                    .start(job, minted.as_ref().unwrap_or(&self.runner_nats))
                    .await
                    .map_err(|e| Failure::Retry(e.to_string()))?
            }
        };
        info!(execution = %exec, shard, attempt, runner = %running, adopted, "runner started");
        // Lets a peer hand the job out again at once if this launcher dies; removed when
        // the attempt ends here (whatever the path out of this function).
        let _recorded = self.liveness.record(exec, shard, attempt, d.reply()).await;

        // The shard's own timeout, cut short by the execution's deadline (a later attempt, or
        // a job that waited for a launcher, has less than the whole timeout left).
        // The runner stops itself at that moment and reports the shard timed out (so a stalled
        // launcher does not hold the end back); the launcher kills it a little later if not.
        let timeout = assay_bus::retry::attempt_time_left(job, now).map(|t| t + RUNNER_GRACE);
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            outcome = running.wait() => Ok(outcome),
            () = deadline => Err(Interrupted::TimedOut),
            () = self.shutdown.cancelled() => Err(Interrupted::Shutdown),
            reason = self.cancels.wait_for(exec, &mut cancelled) => Err(Interrupted::Cancelled(reason)),
            never = keep_alive(d, self.ack_wait / 3) => match never {},
        };
        // Whatever happened, nothing of this shard may outlive it; but a Pod left by a
        // launcher that stops goes on, for the next launcher to find.
        let stopping = matches!(outcome, Err(Interrupted::Shutdown));
        if !(stopping && self.backend.outlives_launcher()) {
            running.kill().await;
        }
        let job = &match adopted_attempt {
            Some(attempt) => ShardJob {
                attempt,
                ..job.clone()
            },
            None => job.clone(),
        };
        let final_status = |state: ShardState, reason: String| launcher_status(job, state, reason);
        let mut elsewhere = None;
        let ended = match outcome {
            Ok(Outcome::Reported(state)) => (state, None),
            // Killed because its execution was cancelled, not broken.
            Ok(Outcome::Infrastructure(_)) if self.cancels.reason(exec).is_some() => {
                let reason = self.cancels.reason(exec).unwrap_or_default();
                (
                    ShardState::Cancelled,
                    Some(final_status(ShardState::Cancelled, reason)),
                )
            }
            Ok(Outcome::Infrastructure(reason)) => {
                elsewhere = running.retry_elsewhere();
                (
                    ShardState::Errored,
                    Some(final_status(ShardState::Errored, reason)),
                )
            }
            Err(Interrupted::Cancelled(reason)) => (
                ShardState::Cancelled,
                Some(final_status(ShardState::Cancelled, reason)),
            ),
            Err(Interrupted::TimedOut) => (
                ShardState::TimedOut,
                Some(final_status(
                    ShardState::TimedOut,
                    format!(
                        "shard exceeded its timeout of {}s; its processes were killed",
                        job.timeout_ms / 1000
                    ),
                )),
            ),
            Err(Interrupted::Shutdown) => {
                warn!(execution = %exec, shard, attempt, "launcher stopping; shard will run again as the next attempt");
                // Not acked: redelivered to the next launcher as a new attempt.
                return Err(Failure::Retry(
                    "launcher shut down while the shard ran".into(),
                ));
            }
        };
        Ok((ended.0, ended.1, elsewhere, adopted_attempt))
    }

    /// What follows an attempt's end in `ended`: the launcher's own final status when the
    /// runner did not report (`report`), fail-fast cancellation, and the next attempt's job
    /// (a retry the workflow asks for, or an infrastructure retry away from the failed node
    /// while the backend's budget lasts).
    async fn finish(
        &self,
        job: &ShardJob,
        ended: ShardState,
        report: Option<ShardStatus>,
        elsewhere: Option<RetryElsewhere>,
    ) -> std::result::Result<(), Failure> {
        let (exec, shard) = (&job.execution_id, job.shard_index);
        let spent = job.workload.as_ref().map_or(0, |w| w.infra_retries);
        let elsewhere = elsewhere.filter(|_| spent < self.backend.infra_retries());
        if elsewhere.is_some() {
            info!(execution = %exec, shard, attempt = job.attempt, spent, budget = self.backend.infra_retries(), "infrastructure failure; retrying the shard elsewhere");
        }
        let retry = assay_bus::retry::should_retry(job, ended) || elsewhere.is_some();
        if let Some(mut status) = report {
            status.will_retry = retry;
            self.send(subjects::shard_status(exec, shard), &status)
                .await?;
        }
        if job.fail_fast && !retry && matches!(ended, ShardState::Failed | ShardState::Errored) {
            let reason = format!(
                "fail-fast: shard {shard} {}",
                if ended == ShardState::Failed {
                    "failed"
                } else {
                    "errored"
                }
            );
            info!(execution = %exec, %reason, "cancelling the other shards");
            self.bus
                .cancel(exec, &reason)
                .await
                .map_err(|e| Failure::Retry(e.to_string()))?;
        }
        if retry {
            // The ended attempt's status already says a retry follows; publish it before
            // acking this job, so a crash in between redelivers the job instead.
            self.publish_next_attempt(job, elsewhere).await?;
        }
        Ok(())
    }

    /// Publishes the job of the attempt after `ended`'s; after an infrastructure failure
    /// (`elsewhere`) it counts against the infrastructure budget and avoids the failed node.
    async fn publish_next_attempt(
        &self,
        ended: &ShardJob,
        elsewhere: Option<RetryElsewhere>,
    ) -> std::result::Result<(), Failure> {
        let mut next = assay_bus::retry::next_attempt(ended, "executor-launcher");
        if let Some(e) = elsewhere {
            let w = next.workload.get_or_insert_with(Default::default);
            w.infra_retries += 1;
            if let Some(node) = e.avoid_node
                && !w.avoid_nodes.contains(&node)
            {
                w.avoid_nodes.push(node);
            }
        }
        info!(execution = %next.execution_id, shard = next.shard_index, attempt = next.attempt, "retrying shard");
        self.send(
            subjects::shard_job(&next.execution_id, next.shard_index),
            &next,
        )
        .await
    }

    /// Publishes `msg`; a failure is retried with the job (nak, redelivery).
    async fn send<M: assay_bus::BusMessage>(
        &self,
        subject: String,
        msg: &M,
    ) -> std::result::Result<(), Failure> {
        self.bus
            .publish(subject, msg)
            .await
            .map(|_| ())
            .map_err(|e| Failure::Retry(e.to_string()))
    }
}

/// Tells the server every `every` that the delivery's attempt is still going, so the job
/// stays held while it runs. Never returns.
async fn keep_alive<M>(d: &Delivery<M>, every: Duration) -> Infallible {
    let mut progress = tokio::time::interval(every);
    progress.tick().await;
    loop {
        progress.tick().await;
        d.progress().await;
    }
}

/// A final status the launcher reports for a shard attempt (cancelled, timed out, or a
/// runner that died unreported). Keyed like the runner's own final status, so whichever is
/// first is the one the stream keeps.
fn launcher_status(job: &ShardJob, state: ShardState, reason: String) -> ShardStatus {
    let (exec, shard, attempt) = (&job.execution_id, job.shard_index, job.attempt);
    ShardStatus {
        header: Some(assay_bus::header(
            "executor-launcher",
            format!("{exec}/{shard}/{attempt}/final"),
            job.header.as_ref().map(|h| h.traceparent.as_str()),
        )),
        execution_id: exec.clone(),
        shard_index: shard,
        attempt,
        job_attempt: job.job_attempt,
        state: state as i32,
        reason,
        exit_code: -1,
        workflow: job.workflow.clone(),
        reporter: "launcher".into(),
        finished_at_ms: assay_bus::now_ms(),
        ..Default::default()
    }
}
