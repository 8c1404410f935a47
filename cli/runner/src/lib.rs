//! assay-runner: executes one shard of an execution.
//!
//! With `content.git` ([`ShardJob::git`]) it first checks the repository out into the
//! shard's working directory ([`checkout`]). It runs the job's `setup`, `steps`, tests and
//! `after` steps as `sh -c` processes in the shard's working directory (each step when its `condition` says so: [`conditions`]; with a
//! clean environment: [`mod@env`]), streams their output as [`assay_proto::LogChunk`]s, parses
//! JUnit reports into [`assay_proto::TestCaseBatch`]es and ends with a final
//! [`assay_proto::ShardStatus`], published only after every log chunk and result batch was
//! acked. The NATS connection is made while the first step already runs: the time from the
//! event to the first test process is what users wait for.
//!
//! Exit codes of the binary: 0 shard passed, 1 shard did not pass (both after the final
//! status was published), 2 no final status could be published, 3 the launcher went away.

pub mod checkout;
pub mod command;
pub mod conditions;
pub mod env;
pub mod job;
pub mod junit;
pub mod mask;
pub mod outcome;
pub mod publish;
mod queue;
pub mod retries;
pub mod steps;
mod suite;

use std::path::{Path, PathBuf};
use std::time::Duration;

use assay_bus::{Bus, NatsOptions, now_ms, subjects};
use assay_proto::{ShardJob, ShardState, ShardStatus, TestCaseResult};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::conditions::{Condition, Phase};
use crate::job::Identity;
use crate::outcome::Verdict;
use crate::publish::{LogSink, RETRY_BUDGET, publish_retrying, wait_bus};
use crate::steps::{StepDef, StepRunner};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid shard job: {0}")]
    InvalidJob(String),
    #[error("cannot connect to nats, so no result can be reported: {0}")]
    Connect(String),
    #[error("cannot publish {what} (gave up after retrying): {source}")]
    Publish {
        what: &'static str,
        #[source]
        source: assay_bus::Error,
    },
    #[error("the launcher (parent pid {parent}) went away; killed the shard's processes")]
    Orphaned { parent: i32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the runner reported as the final status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardOutcome {
    pub state: ShardState,
    pub reason: String,
    pub exit_code: i32,
    pub test_cases: u32,
    pub result_batches: u32,
}

impl ShardOutcome {
    /// 0 when the shard passed, 4 when it errored, 5 when it timed out, 1 otherwise (the
    /// launcher reads the state from it to decide on a retry).
    pub fn exit_code(&self) -> i32 {
        match self.state {
            ShardState::Passed => 0,
            ShardState::Errored => 4,
            ShardState::TimedOut => 5,
            _ => 1,
        }
    }
}

/// How often the orphan guard looks at the parent pid.
const ORPHAN_CHECK: Duration = Duration::from_millis(500);

/// Runs the shard and reports it. `Err` means no final status was published.
pub async fn run(job: ShardJob, nats_url: String) -> Result<ShardOutcome> {
    let parent = nix::unistd::getppid();
    // Orphaned grandchildren (`server &` in a setup step) re-parent to us instead of init,
    // so the process tree walked at the end and by the orphan guard still holds them.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!(error = %e, "cannot become a child subreaper; background processes may outlive the shard");
    }
    let started_at_ms = now_ms();
    let id = Identity::of(&job);

    let (bus_tx, bus_rx) = watch::channel(None);
    let opts = NatsOptions {
        url: nats_url,
        connect_attempts: 10,
        name: "assay-runner".to_string(),
        // The only replies a runner's minted NATS user may receive.
        inbox_prefix: Some(subjects::runner_inbox(&id.execution, id.shard)),
        ..NatsOptions::default()
    };
    tokio::spawn(async move {
        let result = Bus::connect(&opts, &CancellationToken::new())
            .await
            .map_err(|e| e.to_string());
        let _ = bus_tx.send(Some(result));
    });
    let (logs, log_task) =
        publish::spawn_log_publisher(id.clone(), bus_rx.clone(), id.masker.clone());
    let running = {
        let (id, mut bus_rx) = (id.clone(), bus_rx.clone());
        tokio::spawn(async move {
            let bus = wait_bus(&mut bus_rx).await?;
            let status = status(&id, ShardState::Running, started_at_ms, "running");
            publish_status(&bus, &id, &status).await
        })
    };

    let work = async {
        let (verdict, results, published) = execute(&job, &id, logs, &bus_rx).await;
        // Everything else first: the final status promises all of it was acked.
        let chunks = log_task
            .await
            .map_err(|e| Error::Connect(format!("log publisher stopped: {e}")))??;
        running
            .await
            .map_err(|e| Error::Connect(format!("status publisher stopped: {e}")))??;
        let mut bus_rx = bus_rx.clone();
        let bus = wait_bus(&mut bus_rx).await?;
        let test_cases = published.cases + results.len() as u32;
        let result_batches = published.batches
            + publish::publish_results(
                &bus,
                &id,
                results,
                published.batches,
                publish::QueueBatchOf::default(),
            )
            .await?;
        let mut final_status = status(&id, verdict.state, started_at_ms, "final");
        final_status.reason = verdict.reason.clone();
        final_status.exit_code = verdict.exit_code;
        final_status.result_batches = result_batches;
        final_status.test_cases = test_cases;
        if published.queue_batches > 0 {
            final_status.queue_batches = published.queue_batches;
            final_status.queue_group = id.group;
        }
        final_status.will_retry = assay_bus::retry::should_retry(&job, verdict.state);
        final_status.finished_at_ms = now_ms();
        publish_status(&bus, &id, &final_status).await?;
        info!(state = ?verdict.state, test_cases, result_batches, log_chunks = chunks, "shard reported");
        Ok(ShardOutcome {
            state: verdict.state,
            reason: verdict.reason,
            exit_code: verdict.exit_code,
            test_cases,
            result_batches,
        })
    };

    // The attempt's time limit (the shard's timeout, cut short by the execution's deadline):
    // the runner ends the shard itself when it passes, so the end does not wait for a
    // launcher that is stalled or gone.
    let limit = assay_bus::retry::attempt_time_left(&job, started_at_ms);
    let out_of_time = async {
        match limit {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };

    tokio::select! {
        // Polled first: the first step starts before anything else gets a turn.
        biased;
        outcome = work => outcome,
        _ = out_of_time => {
            steps::kill_descendants();
            report_timed_out(&job, &id, started_at_ms, bus_rx.clone()).await
        }
        e = publish::bus_failed(bus_rx.clone()) => {
            steps::kill_descendants();
            Err(e)
        }
        parent = orphaned(parent) => {
            steps::kill_descendants();
            Err(Error::Orphaned { parent })
        }
    }
}

/// Publishes one of the shard attempt's statuses, retrying within the runner's budget.
async fn publish_status(bus: &Bus, id: &Identity, status: &ShardStatus) -> Result<()> {
    publish_retrying(
        bus,
        &subjects::shard_status(&id.execution, id.shard),
        status,
        RETRY_BUDGET,
    )
    .await
}

/// Ends an attempt that ran out of time: its processes are already killed; what it published
/// so far stays, and its final status says `timed_out` (never retried: the time is up).
async fn report_timed_out(
    job: &ShardJob,
    id: &Identity,
    started_at_ms: i64,
    mut bus_rx: publish::BusState,
) -> Result<ShardOutcome> {
    let bus = wait_bus(&mut bus_rx).await?;
    let reason = format!(
        "shard exceeded its timeout of {}s; its processes were killed",
        job.timeout_ms / 1000
    );
    let mut final_status = status(id, ShardState::TimedOut, started_at_ms, "final");
    final_status.reason = reason.clone();
    final_status.exit_code = -1;
    final_status.finished_at_ms = now_ms();
    publish_status(&bus, id, &final_status).await?;
    warn!(%reason, "shard timed out");
    Ok(ShardOutcome {
        state: ShardState::TimedOut,
        reason,
        exit_code: -1,
        test_cases: 0,
        result_batches: 0,
    })
}

/// Resolves when the parent process changed (the launcher died and we were re-parented).
async fn orphaned(parent: nix::unistd::Pid) -> i32 {
    let mut tick = tokio::time::interval(ORPHAN_CHECK);
    loop {
        tick.tick().await;
        if nix::unistd::getppid() != parent {
            return parent.as_raw();
        }
    }
}

fn status(id: &Identity, state: ShardState, started_at_ms: i64, key: &str) -> ShardStatus {
    ShardStatus {
        header: Some(id.header(key)),
        execution_id: id.execution.clone(),
        shard_index: id.shard,
        attempt: id.attempt,
        job_attempt: id.job_attempt,
        state: state as i32,
        workflow: id.workflow.clone(),
        reporter: "runner".to_string(),
        started_at_ms,
        ..Default::default()
    }
}

/// The working directory: the job's (which must exist) or a fresh temporary one, removed
/// when the returned guard drops.
fn workdir(job: &ShardJob) -> Result<(PathBuf, Option<tempfile::TempDir>), String> {
    if job.working_dir.is_empty() {
        let dir = tempfile::Builder::new()
            .prefix("assay-shard-")
            .tempdir()
            .map_err(|e| {
                format!(
                    "cannot create a temporary working directory: {e}; check TMPDIR and free space"
                )
            })?;
        return Ok((dir.path().to_path_buf(), Some(dir)));
    }
    let path = Path::new(&job.working_dir);
    if !path.is_dir() {
        return Err(format!(
            "working directory {} does not exist; create it or leave working_dir empty for a temporary one",
            path.display()
        ));
    }
    let abs = path
        .canonicalize()
        .map_err(|e| format!("cannot resolve working directory {}: {e}", path.display()))?;
    Ok((abs, None))
}

/// Checks `git` out into `dir` on a blocking thread, with the credentials of
/// [`checkout::CREDENTIALS_DIR`]; the error is the shard's reason.
async fn check_out(
    git: &assay_proto::GitCheckout,
    dir: &Path,
) -> Result<checkout::Checked, String> {
    let creds = checkout::Credentials::from_env()?;
    let (git, dir) = (git.clone(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || checkout::checkout(&git, &dir, creds.as_ref()))
        .await
        .map_err(|e| format!("the checkout of content.git stopped: {e}"))?
}

/// Result batches already published while the shard ran (queue mode).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Published {
    pub batches: u32,
    pub cases: u32,
    /// How many batches the work queue this shard drained holds (0: none, or not known);
    /// the final status says it, for the store to wait for results still in flight.
    pub queue_batches: u32,
}

pub(crate) type BusSlot = publish::BusState;

/// Runs every step and the tests; never fails: what goes wrong becomes the verdict.
async fn execute(
    job: &ShardJob,
    id: &Identity,
    logs: LogSink,
    bus_rx: &BusSlot,
) -> (Verdict, Vec<TestCaseResult>, Published) {
    let (dir, _temp) = match workdir(job) {
        Ok(d) => d,
        Err(reason) => {
            logs.system("runner", &reason).await;
            return (Verdict::errored(reason), Vec::new(), Published::default());
        }
    };
    let mut published = Published::default();
    if let Err(reason) = conditions::check(job) {
        logs.system("runner", &reason).await;
        return (Verdict::errored(reason), Vec::new(), published);
    }
    let content = match &job.git {
        Some(git) => match check_out(git, &dir).await {
            Ok(checked) => {
                logs.system("checkout", checked.summary(&git.revision_source))
                    .await;
                checked.env()
            }
            Err(reason) => {
                logs.system("checkout", &reason).await;
                return (Verdict::errored(reason), Vec::new(), published);
            }
        },
        None => Vec::new(),
    };
    let mut env: Vec<(String, String)> = job
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.sort();
    env.extend(id.env());
    env.extend(content);
    let runner = StepRunner::new(dir, env, logs)
        .kill_leftovers(true)
        .scratch_name(&format!("{}-{}-{}", id.execution, id.shard, id.attempt));
    let mut verdict = Verdict::passed();
    let mut results = Vec::new();
    for (phase, steps) in [(Phase::Setup, &job.setup), (Phase::Steps, &job.steps)] {
        for step in steps {
            let Some(exit) =
                run_step(&runner, step, phase, verdict.state != ShardState::Passed).await
            else {
                continue;
            };
            // The first failure decides the verdict; later ones only log.
            if !exit.success() && verdict.state == ShardState::Passed {
                verdict = match phase {
                    Phase::Setup => Verdict::setup_failed(&step.name, &exit),
                    _ => Verdict::step_failed(&step.name, &exit),
                };
            }
        }
    }
    if verdict.state == ShardState::Passed
        && let Some(tests) = job.tests.as_ref().filter(|t| !t.run.is_empty())
    {
        (verdict, results, published) = match suite::with_plan(job, bus_rx).await {
            Ok(job) => suite::run_tests(&job, tests, id, &runner, bus_rx).await,
            Err(reason) => (Verdict::errored(reason), Vec::new(), Published::default()),
        };
    }
    if verdict.state != ShardState::Passed {
        runner
            .logs()
            .system(
                "runner",
                format!("shard {}: {}", state_name(verdict.state), verdict.reason),
            )
            .await;
    }
    for step in &job.after {
        let failed = verdict.state != ShardState::Passed;
        if let Some(exit) = run_step(&runner, step, Phase::After, failed).await
            && !exit.success()
        {
            verdict.after_failed(&step.name, &exit);
        }
    }
    runner.finish().await;
    (verdict, results, published)
}

/// Runs `step` when its condition allows it given whether something `failed` so far, and
/// returns how it ended; `None` when skipped (and logged as such).
async fn run_step(
    runner: &StepRunner,
    step: &assay_proto::Step,
    phase: Phase,
    failed: bool,
) -> Option<steps::Exit> {
    // Checked before anything ran (`conditions::check`); a step that slips through is skipped.
    let condition = match Condition::parse(&step.condition, phase, &step.name) {
        Ok(c) => c,
        Err(reason) => {
            runner.logs().system(&step.name, reason).await;
            return None;
        }
    };
    if !condition.runs(failed) {
        runner
            .logs()
            .system(
                &step.name,
                conditions::skipped_line(phase, &step.name, condition, failed),
            )
            .await;
        return None;
    }
    Some(runner.run(&StepDef::from(step), false).await.exit)
}

fn state_name(state: ShardState) -> &'static str {
    match state {
        ShardState::Passed => "passed",
        ShardState::Failed => "failed",
        ShardState::Errored => "errored",
        ShardState::TimedOut => "timed out",
        ShardState::Cancelled => "cancelled",
        _ => "not passed",
    }
}
