//! The executor-launcher (local backend): pulls shard jobs from the `ASSAY_SHARDS` work
//! queue, at most `capacity` at once, and runs each as an `assay-runner` child process in
//! its own process group. It enforces the shard timeout by killing the whole group, and
//! when a runner dies without reporting (signal, crash) it reports the shard `errored`
//! with the reason, so no shard is left running.
//!
//! A job is acked only when its runner has ended. A job redelivered after a launcher
//! crash runs again as the next attempt (`attempt + deliveries - 1`), so results of the
//! interrupted attempt never mix with the new one. A launcher that dies is noticed by its
//! peers (or its own next start) within seconds through its heartbeat (see [`liveness`]),
//! and its jobs are handed out again at once instead of after the ack wait.

mod capacity;
mod liveness;
mod process;

pub use process::{Ended, classify};
use process::{WarmPool, capture_stderr};

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assay_bus::{Bus, ConsumerSpec, Delivery, Failure, NatsOptions, consumer, streams, subjects};
use assay_proto::{ExecutionStatus, ExecutionUpdate, ShardJob, ShardState, ShardStatus};
use base64::Engine;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use prost::Message;
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The durable consumer every launcher takes shard jobs from.
const CONSUMER: &str = "executor-launcher";

/// Launcher settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub nats: NatsOptions,
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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nats: NatsOptions::default(),
            capacity: num_cpus::get().max(1),
            runner: None,
            ack_wait: Duration::from_secs(30),
            warm: 2,
        }
    }
}

/// Finds the runner binary: the given path, `$ASSAY_RUNNER`, or `assay-runner` next to the
/// current executable or one directory up (test binaries live in `target/*/deps`).
pub fn find_runner(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Ok(p) = std::env::var("ASSAY_RUNNER") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| Error::RunnerNotFound {
        looked: e.to_string(),
    })?;
    let mut looked = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("assay-runner");
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(dir.display().to_string());
    }
    Err(Error::RunnerNotFound {
        looked: looked.join(", "),
    })
}

/// Runs the launcher until `shutdown`.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<()> {
    let runner = find_runner(options.runner.as_deref())?;
    let bus = Bus::connect(&options.nats, &shutdown).await?;
    bus.ensure_topology().await?;
    let runner = Arc::new(runner);
    // What a runner needs to reach NATS as this launcher does: the URL and, when the
    // launcher was given its credentials in code, those (from the environment they are
    // inherited anyway).
    let mut env = vec![("ASSAY_NATS_URL".to_string(), options.nats.url.clone())];
    env.extend(options.nats.auth.env_vars());
    let runner_env = Arc::new(env);
    let warm = Arc::new(WarmPool::new(
        options.warm.min(options.capacity),
        runner.clone(),
        runner_env.clone(),
    ));
    warm.refill();
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
        runner,
        runner_env,
        ack_wait: options.ack_wait,
        shutdown: shutdown.clone(),
        warm: warm.clone(),
        cancels,
        live: LiveAttempts::default(),
        liveness: liveness.clone(),
    };
    let busy = capacity::Busy::new(options.capacity);
    let announcing = tokio::spawn(capacity::announce_waiting(
        bus.clone(),
        CONSUMER,
        busy.clone(),
        Duration::from_secs(1),
        shutdown.clone(),
    ));
    let spec = ConsumerSpec::new(streams::SHARDS, CONSUMER)
        .concurrency(options.capacity)
        .ack_wait(options.ack_wait)
        // The server never gives up on a job: a job dropped after its last delivery would
        // leave its shard with no end at all (every delivery can be lost to a paused or
        // killed launcher). `launch` bounds the attempts itself and ends the shard instead.
        .unlimited_deliveries();
    info!(capacity = options.capacity, runner = %launcher.runner.display(), instance = liveness.instance(), "executor-launcher running");
    info!(
        capacity = options.capacity,
        "launcher capacity: at most {} shard{} at once; raise with --capacity",
        options.capacity,
        if options.capacity == 1 { "" } else { "s" }
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
    warm.drain();
    info!("executor-launcher stopped");
    Ok(())
}

#[derive(Clone)]
struct Launcher {
    bus: Bus,
    runner: Arc<PathBuf>,
    /// `ASSAY_NATS_URL` and the NATS credentials every runner gets.
    runner_env: Arc<Vec<(String, String)>>,
    ack_wait: Duration,
    shutdown: CancellationToken,
    warm: Arc<WarmPool>,
    cancels: Cancellations,
    live: LiveAttempts,
    liveness: liveness::Liveness,
}

/// The shard attempts this launcher is running. A second delivery of an attempt already
/// running here must not start a second runner: it waits for the running one and is then
/// acknowledged with it. That is a delivery of the same job message (the launcher stalled
/// past the ack wait, so the server handed the job out again while its runner went on), or
/// a job that came back as the same attempt (NATS restarted and lost the consumer's
/// delivery count).
#[derive(Clone, Default)]
struct LiveAttempts {
    running: Arc<Mutex<LiveMaps>>,
}

#[derive(Default)]
struct LiveMaps {
    by_attempt: std::collections::HashMap<AttemptKey, tokio::sync::watch::Receiver<()>>,
    /// Stream sequence of the job message being handled → its attempt.
    by_message: std::collections::HashMap<u64, AttemptKey>,
}

/// (execution, shard, attempt).
type AttemptKey = (String, u32, u32);

/// Held while an attempt runs; dropping it ends the attempt for the waiters.
struct LiveAttempt {
    live: LiveAttempts,
    key: AttemptKey,
    message: Option<u64>,
    _ended: tokio::sync::watch::Sender<()>,
}

impl LiveAttempts {
    /// Takes the attempt, or returns a receiver that says when the running copy of the
    /// same attempt or of the same job message ends.
    fn claim(
        &self,
        key: AttemptKey,
        message: Option<u64>,
    ) -> std::result::Result<LiveAttempt, tokio::sync::watch::Receiver<()>> {
        let mut maps = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let same_message = message.and_then(|m| maps.by_message.get(&m).cloned());
        for k in same_message.iter().chain([&key]) {
            if let Some(rx) = maps.by_attempt.get(k) {
                return Err(rx.clone());
            }
        }
        let (tx, rx) = tokio::sync::watch::channel(());
        maps.by_attempt.insert(key.clone(), rx);
        if let Some(m) = message {
            maps.by_message.insert(m, key.clone());
        }
        Ok(LiveAttempt {
            live: self.clone(),
            key,
            message,
            _ended: tx,
        })
    }
}

impl Drop for LiveAttempt {
    fn drop(&mut self) {
        let mut maps = self.live.running.lock().unwrap_or_else(|p| p.into_inner());
        maps.by_attempt.remove(&self.key);
        if let Some(m) = self.message {
            maps.by_message.remove(&m);
        }
    }
}

/// Cancelled executions, followed from the `assay_cancelled` bucket (its current keys, then
/// every new one), with a generation counter that wakes running shards to look.
#[derive(Clone, Default)]
struct Cancellations {
    reasons: Arc<Mutex<std::collections::HashMap<String, String>>>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Cancellations {
    fn reason(&self, execution: &str) -> Option<String> {
        self.reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(execution)
            .cloned()
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    async fn follow(self, bus: Bus, shutdown: CancellationToken) {
        use assay_bus::cancellations::Cancellation;
        bus.follow_cancellations(&shutdown, |change| match change {
            // Aged out or purged: forget it.
            Cancellation::Forgotten { execution } => {
                self.reasons
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&execution);
            }
            Cancellation::Cancelled { execution, reason } => {
                info!(execution = %execution, %reason, "execution cancelled");
                self.reasons
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(execution, reason);
                self.generation.send_modify(|g| *g += 1);
            }
        })
        .await;
    }
}

impl Launcher {
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

    /// Why this delivery of `job` must not run, judged by the shard's last status on
    /// `assay.v1.status`: an attempt already ended for good (only `will_retry` brings a next
    /// one), a newer job message of the shard has run (this is a stale copy of an older one,
    /// which a nats-server restart can bring back after it was handled), or this message's
    /// run already ended and published its retry. `None` when it may run (or the status
    /// cannot be read).
    async fn stale(&self, job: &ShardJob) -> Option<Stale> {
        let subject = subjects::shard_status(&job.execution_id, job.shard_index);
        let last: ShardStatus = self
            .bus
            .last_message(streams::STATUS, &subject)
            .await
            .ok()??;
        stale_against(job, &last)
    }

    async fn launch(&self, d: Delivery<ShardJob>) -> std::result::Result<(), Failure> {
        let mut job = d.msg.clone();
        // A redelivered job is a new attempt: the old runner may have produced partial output.
        // The message's own number stays in `job_attempt` for every status of the run.
        job.job_attempt = job.attempt.max(1);
        job.attempt = job.job_attempt + (d.delivered.max(1) as u32 - 1);
        let (exec, shard, attempt) = (job.execution_id.clone(), job.shard_index, job.attempt);
        let _live = match self
            .live
            .claim((exec.clone(), shard, attempt), d.stream_sequence())
        {
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
        // A job of an execution that has ended (typically redelivered because its ack was
        // lost to a NATS restart or a launcher crash after the runner reported) has nothing
        // left to do: running it again would start a runner for an execution that is over.
        if let Some(status) = self.ended(&job).await {
            info!(execution = %exec, shard, attempt, status = ?status, "execution already ended; shard job dropped");
            return Ok(());
        }
        // The same for a shard whose earlier attempt already ended for good while its
        // execution goes on (a copy of its job redelivered after a NATS restart waited for a
        // free slot): a new attempt would replace the finished one's results with nothing.
        match self.stale(&job).await {
            None => {}
            Some(Stale::Drop(why)) => {
                info!(execution = %exec, shard, attempt, job_attempt = job.job_attempt, %why, "shard job dropped");
                return Ok(());
            }
            Some(Stale::Retried(ended)) => {
                info!(execution = %exec, shard, ended_attempt = ended, "this job's run already ended with a retry; making sure its next attempt's job is out");
                // Published again under its idempotency key: a copy already out is kept once.
                let ended = ShardJob {
                    attempt: ended,
                    ..job.clone()
                };
                return self.publish_next_attempt(&ended).await;
            }
        }
        let mut cancelled = self.cancels.subscribe();
        if let Some(reason) = self.cancels.reason(&exec) {
            let status = launcher_status(&job, ShardState::Cancelled, reason);
            info!(execution = %exec, shard, "execution cancelled; shard not started");
            return self
                .send(subjects::shard_status(&exec, shard), &status)
                .await;
        }
        // The execution's time is up (the job waited while launchers were gone, or this is a
        // retry after the deadline): end the shard as timed out without starting it.
        let now = assay_bus::now_ms();
        if job.deadline_ms > 0 && now >= job.deadline_ms {
            let status = launcher_status(
                &job,
                ShardState::TimedOut,
                format!(
                    "the execution's timeout of {}s passed before this attempt could start",
                    job.timeout_ms / 1000
                ),
            );
            warn!(execution = %exec, shard, attempt, "execution past its deadline; shard not started");
            return self
                .send(subjects::shard_status(&exec, shard), &status)
                .await;
        }
        // Delivered again and again without an end (its launchers kept dying or stalling
        // past the ack wait, or its runner cannot start): end the shard errored, as the
        // server's delivery limit would have, but with a status, so the execution ends.
        if d.delivered > MAX_JOB_DELIVERIES {
            let reason = format!(
                "the shard's job was delivered {} times without an attempt ending (its launchers \
                 died or stalled, or its runner could not start); giving up",
                d.delivered
            );
            warn!(execution = %exec, shard, attempt, deliveries = d.delivered, "shard job delivered too often; shard ended errored");
            let status = launcher_status(&job, ShardState::Errored, reason);
            return self.finish(&job, ShardState::Errored, Some(status)).await;
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(job.encode_to_vec());
        let (mut child, warm) = match self.start_warm(&encoded).await {
            Some(child) => (child, true),
            None => (self.start_cold(&encoded).await?, false),
        };
        // Keep the pool full, off this shard's path.
        let pool = self.warm.clone();
        tokio::task::spawn_blocking(move || pool.refill());
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        info!(execution = %exec, shard, attempt, pid = ?child.id(), warm, "runner started");
        // Lets a peer hand the job out again at once if this launcher dies; removed when
        // the attempt ends here (whatever the path out of this function).
        let _recorded = self.liveness.record(&exec, shard, attempt, d.reply()).await;
        let tail = capture_stderr(&mut child, format!("{exec}/{shard}"));

        // The shard's own timeout, cut short by the execution's deadline (a later attempt, or
        // a job that waited for a launcher, has less than the whole timeout left).
        // The runner stops itself at that moment and reports the shard timed out (so a stalled
        // launcher does not hold the end back); the launcher kills it a little later if not.
        let timeout = assay_bus::retry::attempt_time_left(&job, now).map(|t| t + RUNNER_GRACE);
        let mut progress = tokio::time::interval(self.ack_wait / 3);
        progress.tick().await;
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let outcome = loop {
            tokio::select! {
                status = child.wait() => break Outcome::Exited(status),
                _ = &mut deadline => break Outcome::TimedOut,
                _ = self.shutdown.cancelled() => break Outcome::Shutdown,
                _ = progress.tick() => d.progress().await,
                Ok(()) = cancelled.changed() => {
                    if let Some(reason) = self.cancels.reason(&exec) {
                        break Outcome::Cancelled(reason);
                    }
                }
            }
        };
        // Whatever happened, nothing of this shard may outlive it: kill the group.
        if let Some(pgid) = pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let final_status = |state: ShardState, reason: String| launcher_status(&job, state, reason);
        let mut ended = ShardState::Errored;
        let report = match outcome {
            Outcome::Exited(Ok(status)) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), tail.done.notified()).await;
                match classify(status, &tail.text()) {
                    Ended::Reported(state) => {
                        ended = state;
                        None
                    }
                    // Killed because its execution was cancelled, not broken.
                    Ended::Died(_) if self.cancels.reason(&exec).is_some() => {
                        ended = ShardState::Cancelled;
                        let reason = self.cancels.reason(&exec).unwrap_or_default();
                        Some(final_status(ShardState::Cancelled, reason))
                    }
                    Ended::Died(reason) => Some(final_status(ShardState::Errored, reason)),
                }
            }
            Outcome::Cancelled(reason) => {
                ended = ShardState::Cancelled;
                let _ = child.wait().await;
                Some(final_status(ShardState::Cancelled, reason))
            }
            Outcome::Exited(Err(e)) => Some(final_status(
                ShardState::Errored,
                format!("cannot wait for the runner: {e}"),
            )),
            Outcome::TimedOut => {
                ended = ShardState::TimedOut;
                let _ = child.wait().await;
                Some(final_status(
                    ShardState::TimedOut,
                    format!(
                        "shard exceeded its timeout of {}s; its processes were killed",
                        job.timeout_ms / 1000
                    ),
                ))
            }
            Outcome::Shutdown => {
                let _ = child.wait().await;
                warn!(execution = %exec, shard, attempt, "launcher stopping; shard will run again as the next attempt");
                // Not acked: redelivered to the next launcher as a new attempt.
                return Err(Failure::Retry(
                    "launcher shut down while the shard ran".into(),
                ));
            }
        };
        self.finish(&job, ended, report).await
    }

    /// What follows an attempt's end: the launcher's own final status when the runner did
    /// not report (`report`), fail-fast cancellation, and the next attempt's job.
    async fn finish(
        &self,
        job: &ShardJob,
        ended: ShardState,
        report: Option<ShardStatus>,
    ) -> std::result::Result<(), Failure> {
        let (exec, shard, attempt) = (&job.execution_id, job.shard_index, job.attempt);
        let retry = assay_bus::retry::should_retry(job, ended);
        if let Some(mut status) = report {
            status.will_retry = retry;
            warn!(execution = %exec, shard, attempt, reason = %status.reason, "shard ended without a runner report");
            self.send(subjects::shard_status(exec, shard), &status)
                .await?;
        } else {
            debug!(execution = %exec, shard, attempt, "runner reported and exited");
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
            self.publish_next_attempt(job).await?;
        }
        Ok(())
    }

    /// Publishes the job of the attempt after `ended`'s.
    async fn publish_next_attempt(&self, ended: &ShardJob) -> std::result::Result<(), Failure> {
        let next = assay_bus::retry::next_attempt(ended, "executor-launcher");
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

/// Deliveries of one shard job after which the launcher stops starting attempts and ends
/// the shard errored. Each delivery past the first is a new attempt (or a stall of the
/// launcher holding it), so this also bounds the attempts one job can start.
pub const MAX_JOB_DELIVERIES: i64 = 5;

/// How long past an attempt's time limit the launcher waits for the runner to end it (the
/// runner kills its steps and reports `timed_out` itself) before killing its group.
const RUNNER_GRACE: Duration = Duration::from_secs(2);

/// Why a delivery does not run (see [`Launcher::stale`]).
#[derive(Debug, PartialEq)]
enum Stale {
    /// Nothing left to do for it.
    Drop(String),
    /// Its run ended and said a retry follows: make sure the next attempt's job is out (a
    /// crash or a NATS outage may have come between the two), then drop it.
    Retried(u32),
}

/// [`Launcher::stale`] against the shard's last status `last`.
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

enum Outcome {
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    Shutdown,
    Cancelled(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[tokio::test]
    async fn a_second_delivery_of_a_running_attempt_waits_for_it() {
        let live = LiveAttempts::default();
        let key = |a| ("01EXEC".to_string(), 3, a);
        let first = live.claim(key(2), Some(40)).expect("first delivery runs");
        let Err(mut second) = live.claim(key(2), Some(40)) else {
            panic!("the same attempt must wait");
        };
        // Another attempt of the same shard (a retry, a new message) is not held back.
        let retry = live.claim(key(3), Some(41)).expect("next attempt runs");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), second.changed())
                .await
                .is_err(),
            "still running"
        );
        drop(first);
        assert!(second.changed().await.is_err(), "ended with the runner");
        drop(second);
        assert!(
            live.claim(key(2), Some(40)).is_ok(),
            "a later redelivery runs again"
        );
        drop(retry);
    }

    #[tokio::test]
    async fn a_redelivery_of_a_running_job_waits_whatever_its_attempt_number() {
        // The launcher stalled past the ack wait: the server delivered the same message
        // again, which counts as attempt 2, while attempt 1's runner still works.
        let live = LiveAttempts::default();
        let key = |a| ("01EXEC".to_string(), 0, a);
        let first = live.claim(key(1), Some(7)).expect("first delivery runs");
        let Err(mut again) = live.claim(key(2), Some(7)) else {
            panic!("a redelivery of the running message must wait, not start attempt 2");
        };
        drop(first);
        assert!(
            again.changed().await.is_err(),
            "ended with the first runner"
        );
        let later = live.claim(key(2), Some(7)).expect("nothing runs any more");
        // The sequence is released with the attempt.
        drop(later);
        assert!(live.running.lock().unwrap().by_message.is_empty());
    }

    #[test]
    fn stale_copies_of_handled_jobs_are_told_apart_from_redeliveries() {
        // `job_attempt` is the message's number, `attempt` the delivery's.
        let job = |job_attempt, attempt| ShardJob {
            job_attempt,
            attempt,
            ..Default::default()
        };
        let status = |job_attempt, attempt, state: ShardState, will_retry| ShardStatus {
            job_attempt,
            attempt,
            state: state as i32,
            will_retry,
            ..Default::default()
        };
        use ShardState::*;
        // The launcher died while attempt 1 ran: the redelivery runs as attempt 2.
        assert_eq!(
            stale_against(&job(1, 2), &status(1, 1, Running, false)),
            None
        );
        // Again, while the redelivery (attempt 2) ran: attempt 3.
        assert_eq!(
            stale_against(&job(1, 3), &status(1, 2, Running, false)),
            None
        );
        // A retry's job after attempt 1 errored.
        assert_eq!(
            stale_against(&job(2, 2), &status(1, 1, Errored, true)),
            None
        );
        // Chaos seed 11: the retry (job 2) runs; an old copy of job 1 comes back as
        // attempt 3 after a nats-server restart.
        assert!(matches!(
            stale_against(&job(1, 3), &status(2, 2, Running, false)),
            Some(Stale::Drop(_))
        ));
        // A copy of job 1 whose run ended with a retry, back with its delivery count lost
        // (attempt 1 again) or not (attempt 2): the retry's job is made sure of instead.
        assert_eq!(
            stale_against(&job(1, 1), &status(1, 1, Errored, true)),
            Some(Stale::Retried(1))
        );
        assert_eq!(
            stale_against(&job(1, 2), &status(1, 1, Errored, true)),
            Some(Stale::Retried(1))
        );
        // Statuses of older builds carry no job number: the attempt decides.
        assert_eq!(
            stale_against(&job(1, 1), &status(0, 1, Errored, true)),
            Some(Stale::Retried(1))
        );
        assert_eq!(
            stale_against(&job(1, 2), &status(0, 1, Errored, true)),
            None
        );
        // Over for good.
        assert!(matches!(
            stale_against(&job(3, 3), &status(2, 2, Passed, false)),
            Some(Stale::Drop(_))
        ));
    }

    #[test]
    fn classifies_runner_exits() {
        assert_eq!(
            classify(ExitStatus::from_raw(0), ""),
            Ended::Reported(ShardState::Passed)
        );
        assert_eq!(
            classify(ExitStatus::from_raw(1 << 8), ""),
            Ended::Reported(ShardState::Failed)
        );
        assert_eq!(
            classify(ExitStatus::from_raw(4 << 8), ""),
            Ended::Reported(ShardState::Errored)
        );
        match classify(ExitStatus::from_raw(2 << 8), "cannot reach nats") {
            Ended::Died(r) => assert_eq!(
                r,
                "runner exited with code 2 without reporting: cannot reach nats"
            ),
            other => panic!("{other:?}"),
        }
        match classify(ExitStatus::from_raw(9), "") {
            Ended::Died(r) => assert_eq!(r, "runner was killed by SIGKILL before it reported"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn explicit_runner_wins() {
        assert_eq!(
            find_runner(Some(Path::new("/x/r"))).unwrap(),
            PathBuf::from("/x/r")
        );
    }
}
