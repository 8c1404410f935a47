//! assay-runner: executes one shard of an execution.
//!
//! It runs the job's `setup`, `steps`, tests and `after` steps as `sh -c` processes in the
//! shard's working directory (each step when its `condition` says so: [`conditions`]; with a
//! clean environment: [`mod@env`]), streams their output as [`assay_proto::LogChunk`]s, parses
//! JUnit reports into [`assay_proto::TestCaseBatch`]es and ends with a final
//! [`assay_proto::ShardStatus`], published only after every log chunk and result batch was
//! acked. The NATS connection is made while the first step already runs: the time from the
//! event to the first test process is what users wait for.
//!
//! Exit codes of the binary: 0 shard passed, 1 shard did not pass (both after the final
//! status was published), 2 no final status could be published, 3 the launcher went away.

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

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use assay_bus::{Bus, NatsOptions, now_ms, subjects};
use assay_proto::{ShardJob, ShardState, ShardStatus, TestCaseResult};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::conditions::{Condition, Phase};
use crate::job::{Identity, quote_all, render_report_glob, render_run};
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

/// Result batches already published while the shard ran (queue mode).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Published {
    pub batches: u32,
    pub cases: u32,
    /// How many batches the work queue this shard drained holds (0: none, or not known);
    /// the final status says it, for the store to wait for results still in flight.
    pub queue_batches: u32,
}

type BusSlot = publish::BusState;

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
    let mut env: Vec<(String, String)> = job
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.sort();
    env.extend(id.env());
    let runner = StepRunner::new(dir, env, logs)
        .kill_leftovers(true)
        .scratch_name(&format!("{}-{}-{}", id.execution, id.shard, id.attempt));

    if let Err(reason) = conditions::check(job) {
        runner.logs().system("runner", &reason).await;
        runner.finish().await;
        return (Verdict::errored(reason), Vec::new(), published);
    }
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
        (verdict, results, published) = match with_plan(job, bus_rx).await {
            Ok(job) => run_tests(&job, tests, id, &runner, bus_rx).await,
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

const TESTS: &str = "tests";

/// The job with its plan filled in, when the plan was too large to travel in it and was
/// stored apart (`ShardJob.plan_data`).
async fn with_plan<'a>(
    job: &'a ShardJob,
    bus_rx: &BusSlot,
) -> std::result::Result<std::borrow::Cow<'a, ShardJob>, String> {
    if job.plan_data.is_empty() {
        return Ok(std::borrow::Cow::Borrowed(job));
    }
    let mut bus_rx = bus_rx.clone();
    let bus = wait_bus(&mut bus_rx).await.map_err(|e| e.to_string())?;
    let mut full = job.clone();
    bus.load_plan(&mut full)
        .await
        .map_err(|e| format!("cannot read this shard's plan ({}): {e}", job.plan_data))?;
    Ok(std::borrow::Cow::Owned(full))
}

/// Lists (or takes) this shard's test ids, runs them and reads their reports. Queue mode
/// publishes each batch's results itself (before acking the batch) and returns how many
/// result batches it published, so the caller numbers the rest after them.
async fn run_tests(
    job: &ShardJob,
    tests: &assay_proto::TestsSpec,
    id: &Identity,
    runner: &StepRunner,
    bus_rx: &BusSlot,
) -> (Verdict, Vec<TestCaseResult>, Published) {
    let logs = runner.logs();
    let errored = |reason: String| (Verdict::errored(reason), Vec::new(), Published::default());

    let report = id.report_path(runner.workdir());
    if let Some(parent) = report.parent()
        && let Err(e) = std::fs::create_dir_all(parent)
    {
        return errored(format!(
            "cannot create the report directory {}: {e}; is the working directory writable?",
            parent.display()
        ));
    }
    // A report left by an earlier run in the same directory must not count as ours.
    let _ = std::fs::remove_file(&report);

    let by_duration = job.strategy == "duration" && !tests.list.is_empty();
    let by_queue = job.strategy == "queue" && !tests.list.is_empty() && job.test_ids.is_empty();
    if !job.test_ids.is_empty() && !by_duration {
        logs.system(
            TESTS,
            format!(
                "this shard runs {} test ids given by the scheduler",
                job.test_ids.len()
            ),
        )
        .await;
        let (v, r) =
            retries::run_with_retries(job, tests, id, runner, &job.test_ids, &report).await;
        return (v, r, Published::default());
    }
    if tests.list.is_empty() {
        if job.retries > 0 {
            logs.system(
                TESTS,
                "no tests.list, so failing tests cannot be run again by id: no per-test retries",
            )
            .await;
        }
        let (v, r) = run_subset(tests, id, runner, None, &report).await;
        return (v, r, Published::default());
    }
    let all = match list_tests(tests, runner).await {
        Ok(all) => all,
        Err(v) => return (v, Vec::new(), Published::default()),
    };
    if by_queue {
        let mut bus_rx = bus_rx.clone();
        let bus = match wait_bus(&mut bus_rx).await {
            Ok(bus) => bus,
            Err(e) => return errored(e.to_string()),
        };
        return queue::run(job, tests, id, runner, &bus, &all).await;
    }
    let (share, how) = if by_duration {
        // The planned tests of this shard, plus tests no shard was planned for (new ones)
        // whose stable hash falls here: every listed test runs on exactly one shard.
        let planned: std::collections::HashSet<u64> = job.planned_hashes.iter().copied().collect();
        let share = assay_plan::share_from_hashes(
            &all,
            &job.test_ids,
            &planned,
            id.split_index as usize,
            id.split_count.max(1) as usize,
        );
        let new = share
            .iter()
            .filter(|t| !planned.contains(&assay_plan::stable_hash(t)))
            .count();
        (share, format!("by duration history; {new} of them new"))
    } else {
        let share = assay_spec::shard::shard_of_count(
            &all,
            id.split_index as usize,
            id.split_count.max(1) as usize,
        );
        (share, "by count".to_string())
    };
    logs.system(
        TESTS,
        format!(
            "listed {} tests, this shard runs {} ({how})",
            all.len(),
            share.len()
        ),
    )
    .await;
    if by_duration && !job.tail.is_empty() {
        return run_with_tail(job, tests, id, runner, bus_rx, &all, &share, &report).await;
    }
    let (v, r) = retries::run_with_retries(job, tests, id, runner, &share, &report).await;
    (v, r, Published::default())
}

/// `strategy: duration` with a shared tail: the first shard to get here puts the tail in the
/// group's work queue; then this shard runs its own tests (`share`), publishes their results,
/// and drains the tail with the other shards. A shard whose own tests errored leaves the tail
/// to the others.
#[allow(clippy::too_many_arguments)]
async fn run_with_tail(
    job: &ShardJob,
    tests: &assay_proto::TestsSpec,
    id: &Identity,
    runner: &StepRunner,
    bus_rx: &BusSlot,
    all: &[String],
    share: &[String],
    report: &Path,
) -> (Verdict, Vec<TestCaseResult>, Published) {
    let errored = |reason: String| (Verdict::errored(reason), Vec::new(), Published::default());
    let mut bus_rx = bus_rx.clone();
    let bus = match wait_bus(&mut bus_rx).await {
        Ok(bus) => bus,
        Err(e) => return errored(e.to_string()),
    };
    if let Err(reason) =
        queue::fill_or_wait(job, id, &bus, runner, queue::Source::Tail(all), false).await
    {
        return errored(reason);
    }
    let (head, results) = retries::run_with_retries(job, tests, id, runner, share, report).await;
    if head.state == ShardState::Errored {
        return (head, results, Published::default());
    }
    let cases = results.len() as u32;
    let published = match publish::publish_results(
        &bus,
        id,
        results,
        0,
        publish::QueueBatchOf::default(),
    )
    .await
    {
        Ok(batches) => Published {
            batches,
            cases,
            ..Published::default()
        },
        Err(e) => return errored(e.to_string()),
    };
    let (tail, published) = queue::drain_tail(job, tests, id, runner, &bus, all, published).await;
    let verdict = match (head.state, tail.state) {
        (_, ShardState::Errored) | (ShardState::Passed, _) => tail,
        _ => head,
    };
    (verdict, Vec::new(), published)
}

/// What the log says of a listing: its size and a sample, not every id (a listing of
/// 100,000 ids would otherwise be megabytes of log per shard).
fn listing_summary(ids: &[String]) -> String {
    const SAMPLE: usize = 3;
    let first: Vec<&str> = ids.iter().take(SAMPLE).map(String::as_str).collect();
    match ids.len() {
        n if n <= SAMPLE + 1 => format!("tests.list printed {n} id(s): {}", ids.join(", ")),
        n => format!(
            "tests.list printed {n} ids: {}, … {}",
            first.join(", "),
            ids[n - 1]
        ),
    }
}

/// Runs `tests.list` and returns the ids it printed, once each (duplicates are reported).
async fn list_tests(
    tests: &assay_proto::TestsSpec,
    runner: &StepRunner,
) -> std::result::Result<Vec<String>, Verdict> {
    let logs = runner.logs();
    let list = StepDef::internal("list", tests.list.clone());
    let run = runner.run(&list, true).await;
    if !run.exit.success() {
        let mut v = Verdict::errored(format!("tests.list failed: {}", run.exit.describe()));
        v.exit_code = run.exit.code();
        return Err(v);
    }
    let (all, dups) = job::parse_ids(&String::from_utf8_lossy(&run.stdout));
    if all.is_empty() {
        return Err(Verdict::errored(
            "tests.list printed no test ids".to_string(),
        ));
    }
    logs.system(TESTS, listing_summary(&all)).await;
    if !dups.is_empty() {
        let shown: Vec<&str> = dups.iter().take(20).map(String::as_str).collect();
        let more = dups.len().saturating_sub(shown.len());
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        logs.system(
            TESTS,
            format!(
                "tests.list printed {} duplicate id(s), kept the first of each: {}{tail}",
                dups.len(),
                shown.join(", ")
            ),
        )
        .await;
    }
    Ok(all)
}

/// Runs `tests.run` for `ids` (all tests when `None`) with `report` as `{report}`, and reads
/// the JUnit reports it wrote.
pub(crate) async fn run_subset(
    tests: &assay_proto::TestsSpec,
    id: &Identity,
    runner: &StepRunner,
    ids: Option<&[String]>,
    report: &Path,
) -> (Verdict, Vec<TestCaseResult>) {
    let logs = runner.logs();
    let _ = std::fs::remove_file(report);
    if ids.is_some_and(<[String]>::is_empty) {
        logs.system(
            TESTS,
            format!(
                "shard {} of {} has no tests to run; skipping tests.run",
                id.shard, id.shard_count
            ),
        )
        .await;
        return (Verdict::passed(), Vec::new());
    }

    let batch = ids.unwrap_or_default();
    let split = command::split(&tests.run, batch, command::MAX_COMMAND_BYTES);
    if split.parts.len() > 1 {
        logs.system(
            TESTS,
            format!(
                "batch of {} tests split into {} invocations (command would be {} bytes, limit {})",
                batch.len(),
                split.parts.len(),
                split.bytes,
                command::MAX_COMMAND_BYTES
            ),
        )
        .await;
    }
    let started = SystemTime::now();
    let mut exit = steps::Exit::Code(0);
    let mut reports = Vec::with_capacity(split.parts.len());
    for (k, part) in split.parts.iter().enumerate() {
        let part_report = command::part_report(report, k + 1);
        if k > 0 {
            let _ = std::fs::remove_file(&part_report);
        }
        let part = &batch[part.clone()];
        let tests_file = if tests.run.contains("{tests_file}") {
            match runner.scratch_file("tests", "txt", command::tests_file(part).as_bytes()) {
                Ok(path) => Some(path),
                Err(e) => return (Verdict::errored(e.to_string()), Vec::new()),
            }
        } else {
            None
        };
        let run = render_run(
            &tests.run,
            &quote_all(part),
            tests_file.as_deref(),
            &part_report,
        );
        let ran = runner.run(&StepDef::internal(TESTS, run), false).await;
        // The first invocation that fails speaks for the batch.
        if exit.success() {
            exit = ran.exit;
        }
        reports.push(part_report);
    }

    if tests.reports.is_empty() {
        return (Verdict::of_tests(&[], &exit), Vec::new());
    }
    match collect_reports(&tests.reports, &reports, runner.workdir(), started) {
        Ok((files, mut results, stale)) => {
            if let Some(listed) = ids {
                let mapped = job::map_to_listed(&mut results, listed);
                if mapped > 0 {
                    logs.system(
                        TESTS,
                        format!("{mapped} report ids mapped to the listed test ids"),
                    )
                    .await;
                }
            }
            for path in &stale {
                logs.system(
                    TESTS,
                    format!("ignored report {}: it predates this run", path.display()),
                )
                .await;
            }
            logs.system(
                TESTS,
                format!("read {} test cases from {} report(s)", results.len(), files),
            )
            .await;
            (Verdict::of_tests(&results, &exit), results)
        }
        Err(mut reason) => {
            if !exit.success() {
                reason.push_str(&format!(
                    " (the test command ended with {})",
                    exit.describe()
                ));
            }
            let mut v = Verdict::errored(reason);
            v.exit_code = exit.code();
            (v, Vec::new())
        }
    }
}

/// Finds and parses the reports: a pattern with `{report}` once per invocation's report,
/// others once. Returns (files read, results, stale files ignored).
fn collect_reports(
    patterns: &[String],
    reports: &[PathBuf],
    workdir: &Path,
    started: SystemTime,
) -> Result<(usize, Vec<TestCaseResult>, Vec<PathBuf>), String> {
    // Coarse file-system clocks: allow two seconds of slack.
    let not_before = started
        .checked_sub(Duration::from_secs(2))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stale = Vec::new();
    let globs = patterns.iter().flat_map(|pattern| {
        let each: &[PathBuf] = if pattern.contains("{report}") {
            reports
        } else {
            &reports[..reports.len().min(1)]
        };
        each.iter()
            .map(move |report| (pattern, render_report_glob(pattern, report, workdir)))
    });
    for (pattern, glob_pattern) in globs {
        let paths = glob::glob(&glob_pattern)
            .map_err(|e| format!("report glob {pattern:?} is invalid: {e}"))?;
        for path in paths.filter_map(std::result::Result::ok) {
            if !path.is_file() || files.contains(&path) || stale.contains(&path) {
                continue;
            }
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            if modified.is_some_and(|m| m < not_before) {
                stale.push(path);
            } else {
                files.push(path);
            }
        }
    }
    if files.is_empty() {
        let mut reason = format!(
            "no JUnit report matched {patterns:?} in {}",
            workdir.display()
        );
        if !stale.is_empty() {
            reason.push_str(&format!(
                " ({} older file(s) ignored because they predate this run)",
                stale.len()
            ));
        }
        return Err(reason);
    }
    let mut results = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read report {}: {e}", path.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        let parsed = junit::parse(&text)
            .map_err(|e| format!("report {} is not valid JUnit XML: {e}", path.display()))?;
        results.extend(parsed);
    }
    Ok((files.len(), results, stale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_is_logged_as_its_size_and_a_sample() {
        let ids = |n: usize| (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>();
        assert_eq!(
            listing_summary(&ids(2)),
            "tests.list printed 2 id(s): t0, t1"
        );
        assert_eq!(
            listing_summary(&ids(100_000)),
            "tests.list printed 100000 ids: t0, t1, t2, … t99999"
        );
    }

    #[test]
    fn reports_are_found_parsed_and_explained() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join(".assay/reports/shard-0-attempt-1.xml");
        std::fs::create_dir_all(report.parent().unwrap()).unwrap();
        let started = SystemTime::now();
        let patterns = vec!["{report}".to_string(), "out/*.xml".to_string()];

        let err = collect_reports(
            &patterns,
            std::slice::from_ref(&report),
            dir.path(),
            started,
        )
        .unwrap_err();
        assert!(
            err.starts_with("no JUnit report matched [\"{report}\", \"out/*.xml\"] in "),
            "{err}"
        );

        std::fs::write(&report, "<testsuite><testcase name=\"a\"/></testsuite>").unwrap();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        std::fs::write(
            dir.path().join("out/b.xml"),
            "<testsuite><testcase name=\"b\"><failure/></testcase></testsuite>",
        )
        .unwrap();
        let (files, results, stale) = collect_reports(
            &patterns,
            std::slice::from_ref(&report),
            dir.path(),
            started,
        )
        .unwrap();
        assert_eq!((files, results.len(), stale.len()), (2, 2, 0));

        std::fs::write(
            dir.path().join("out/c.xml"),
            "<testsuite>\n  <x></testsuite>",
        )
        .unwrap();
        let err = collect_reports(
            &patterns,
            std::slice::from_ref(&report),
            dir.path(),
            started,
        )
        .unwrap_err();
        assert!(err.contains("out/c.xml is not valid JUnit XML"), "{err}");
        assert!(err.contains("line 2, column"), "{err}");

        // Files from long before the run started are someone else's.
        let later = SystemTime::now() + Duration::from_secs(60);
        let err = collect_reports(&patterns, std::slice::from_ref(&report), dir.path(), later)
            .unwrap_err();
        assert!(err.contains("3 older file(s) ignored"), "{err}");
    }
}
