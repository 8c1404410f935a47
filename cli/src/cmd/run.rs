//! `assay run WORKFLOW`: publish a RunRequest and follow the execution to its end.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use assay_bus::{Bus, header, streams, subjects};
use assay_proto::{
    ExecutionStatus, ExecutionUpdate, LogChunk, RunRequest, ShardState, ShardSummary,
};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::args::{FollowArgs, Global, RunArgs};
use crate::style::{Color, Palette, execution_color, shard_color};
use crate::{api, format, logline, report};

/// Largest update or log chunk decoded.
const MAX_BYTES: usize = streams::MAX_MESSAGE_BYTES as usize;
/// After the execution ends, keep printing late log lines until none came for this long.
const LOG_QUIET: Duration = Duration::from_millis(300);
/// ... but never longer than this.
const LOG_DRAIN_MAX: Duration = Duration::from_secs(3);
/// Consecutive errors of the update stream before giving up.
const MAX_STREAM_ERRORS: u64 = 10;

pub async fn run(global: &Global, args: RunArgs, palette: Palette) -> Result<u8> {
    let config = assay_spec::parse_overrides(&args.set)?;
    let labels = crate::cmd::trigger::parse_labels(&args.labels)?;
    if !args.unchecked {
        check_workflow(global, &args.workflow, &config).await?;
    }
    let id = ulid::Ulid::new().to_string();
    let mut request = run_request(&id, &args.workflow, config);
    request.priority = args.priority;
    request.labels = labels.into_iter().collect();
    start(global, &request, &args.follow, palette).await
}

/// Publishes `request` (its `execution_id` set) and, unless `--detach`, follows the
/// execution to its end; 0 iff it passed. Shared by `run` and `rerun`.
pub async fn start(
    global: &Global,
    request: &RunRequest,
    follow_args: &FollowArgs,
    palette: Palette,
) -> Result<u8> {
    let shutdown = CancellationToken::new();
    let bus = crate::connect_bus(&global.nats, "assay-cli", &shutdown).await?;
    bus.ensure_topology()
        .await
        .context("cannot create the assay streams")?;

    let id = request.execution_id.as_str();
    // A selection of tens of thousands of tests (a rerun at scale) is over the message limit:
    // it travels in the object store and the request names it.
    let mut request = request.clone();
    if bus
        .offload_selection(&mut request)
        .await
        .context("cannot store the test selection of the run")?
    {
        tracing::debug!(execution = %id, object = %request.selection_data, "selection stored apart");
    }
    bus.publish(subjects::RUN_REQUESTED.to_string(), &request)
        .await
        .with_context(|| format!("cannot request a run of \"{}\"", request.workflow))?;
    if follow_args.detach {
        crate::outln!("{id}");
        return Ok(0);
    }
    tracing::debug!(execution = %id, "run requested");
    follow(global, &bus, id, &request.workflow, follow_args, palette).await
}

/// `.assay` → `./.assay`, as a person would type it; other paths as they are.
pub fn shown_dir(dir: &Path) -> PathBuf {
    match dir.components().next() {
        Some(Component::Normal(_)) => Path::new(".").join(dir),
        _ => dir.to_path_buf(),
    }
}

/// Refuses a run of a workflow nobody defined, before anything is published: against the
/// local catalog (`--workflows`, what `assay validate` reads) when that directory exists,
/// also checking the `--set` overrides; else against the workflows the result API has
/// executions of, when it knows any. Without either, nothing can be checked here and the
/// scheduler's answer (an errored execution) says it.
pub async fn check_workflow(
    global: &Global,
    workflow: &str,
    config: &BTreeMap<String, String>,
) -> Result<()> {
    if global.workflows.exists() {
        match crate::cmd::validate::load(&global.workflows) {
            Ok(catalog) => return check_in_catalog(&catalog, &global.workflows, workflow, config),
            Err(e) => {
                // Invalid definitions are the scheduler's to judge (it may read others).
                tracing::debug!(error = %e, "local definitions do not load; asking the API");
            }
        }
    }
    let Ok(mut client) = crate::api::connect(global).await else {
        return Ok(());
    };
    let Ok(list) = client
        .list_executions(assay_proto::ListExecutionsRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
    else {
        return Ok(());
    };
    let known: std::collections::BTreeSet<String> = list
        .into_inner()
        .executions
        .into_iter()
        .map(|u| u.workflow)
        .filter(|w| !w.is_empty())
        .collect();
    if known.is_empty() || known.contains(workflow) {
        return Ok(());
    }
    bail!(
        "workflow \"{workflow}\" not found: {} has no definitions and the result API at {} has run only {} (if it is defined where the scheduler runs but never ran, pass --unchecked)",
        shown_dir(&global.workflows).display(),
        global.api,
        known.into_iter().collect::<Vec<_>>().join(", ")
    )
}

fn check_in_catalog(
    catalog: &assay_spec::Catalog,
    dir: &Path,
    workflow: &str,
    config: &BTreeMap<String, String>,
) -> Result<()> {
    match catalog.workflow(workflow) {
        Ok(w) => {
            w.resolve_config(config)?;
            Ok(())
        }
        Err(assay_spec::Error::WorkflowNotFound { name, known, .. }) => {
            Err(assay_spec::Error::WorkflowNotFound {
                name,
                dir: shown_dir(dir),
                known,
            }
            .into())
        }
        Err(e) => Err(e.into()),
    }
}

pub fn run_request(id: &str, workflow: &str, config: BTreeMap<String, String>) -> RunRequest {
    RunRequest {
        header: Some(header("assay-cli", format!("run/{id}"), None)),
        workflow: workflow.to_string(),
        config: config.into_iter().collect(),
        requested_by: "cli".to_string(),
        execution_id: id.to_string(),
        ..Default::default()
    }
}

async fn ordered(bus: &Bus, stream: &str, filter: String) -> Result<Ordered> {
    let stream_handle = bus
        .jetstream()
        .get_stream(stream)
        .await
        .with_context(|| format!("cannot open stream {stream}"))?;
    let consumer = stream_handle
        .create_consumer(OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot follow {filter}"))?;
    consumer
        .messages()
        .await
        .with_context(|| format!("cannot follow {filter}"))
}

async fn next_log(
    logs: &mut Option<Ordered>,
) -> Option<Result<async_nats::jetstream::Message, String>> {
    match logs {
        Some(s) => s.next().await.map(|r| r.map_err(|e| e.to_string())),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn follow(
    global: &Global,
    bus: &Bus,
    id: &str,
    workflow: &str,
    args: &FollowArgs,
    palette: Palette,
) -> Result<u8> {
    let mut updates = ordered(bus, streams::EXECUTIONS, subjects::execution_updates_of(id)).await?;
    let mut logs = if args.watch {
        Some(ordered(bus, streams::LOGS, subjects::logs_of(id)).await?)
    } else {
        None
    };
    let deadline = args.timeout.map(|d| Instant::now() + d);
    let mut progress = Progress::new(id, workflow, palette);
    let mut last: Option<ExecutionUpdate> = None;
    let mut errors = 0u64;

    loop {
        tokio::select! {
            msg = updates.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        errors += 1;
                        if errors > MAX_STREAM_ERRORS {
                            anyhow::bail!("lost the execution updates ({e}); follow the execution with `assay get execution {id}`");
                        }
                        tracing::warn!(error = %e, "execution updates interrupted; resuming");
                        tokio::time::sleep(Duration::from_millis(100 * errors)).await;
                        continue;
                    }
                    None => anyhow::bail!("the execution update stream closed; follow the execution with `assay get execution {id}`"),
                };
                errors = 0;
                let update: ExecutionUpdate = match assay_bus::decode(&msg.subject, &msg.payload, MAX_BYTES) {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping an undecodable execution update");
                        continue;
                    }
                };
                if last.as_ref().is_some_and(|l| l.revision >= update.revision) {
                    continue;
                }
                progress.update(&update);
                let done = format::is_terminal(update.status());
                last = Some(update);
                if done {
                    break;
                }
            }
            chunk = next_log(&mut logs) => match chunk {
                Some(Ok(m)) => progress.log(&m.subject, &m.payload),
                Some(Err(e)) => tracing::warn!(error = %e, "log stream interrupted; resuming"),
                None => logs = None,
            },
            () = sleep_until(deadline) => {
                progress.finish();
                let waited = args.timeout.map(assay_spec::format_duration).unwrap_or_default();
                eprintln!(
                    "{} execution {id} is still running after {waited}; follow it with `assay get execution {id}` or `assay logs {id} --follow`",
                    palette.paint(Color::Yellow, "timeout:"),
                );
                return Ok(1);
            }
            _ = tokio::signal::ctrl_c() => {
                progress.finish();
                eprintln!(
                    "stopped following; execution {id} keeps running: `assay get execution {id}` shows it"
                );
                return Ok(130);
            }
        }
    }

    // Late log lines of the last shards.
    if let Some(stream) = logs.as_mut() {
        let drain_until = Instant::now() + LOG_DRAIN_MAX;
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout_at((Instant::now() + LOG_QUIET).min(drain_until), stream.next())
                .await
        {
            progress.log(&m.subject, &m.payload);
        }
    }
    progress.finish();

    let Some(last) = last else {
        anyhow::bail!("execution {id} ended without an update");
    };
    let detail = match fetch_detail(global, id).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "{} {e:#}; summarising from the last update (no test details)",
                palette.paint(Color::Yellow, "note:")
            );
            report::detail_from_update(&last)
        }
    };
    let execution = detail.execution.clone().unwrap_or(last);
    let now = assay_bus::now_ms();
    for section in [
        report::shard_table(&detail.shards, &palette),
        report::slowest(&detail.shards, 5, &palette),
        report::flaky(&detail.shards, &palette),
        report::failures(&detail.shards, &palette),
    ] {
        if !section.is_empty() {
            crate::outln!();
            crate::out!("{section}");
        }
    }
    crate::outln!();
    if !execution.reason.is_empty() {
        crate::outln!(
            "{} {}",
            palette.paint(Color::Bold, "reason:"),
            execution.reason
        );
    }
    crate::outln!("{}", report::final_line(&execution, now, &palette));
    Ok(if execution.status() == ExecutionStatus::Passed {
        0
    } else {
        1
    })
}

async fn fetch_detail(global: &Global, id: &str) -> Result<assay_proto::ExecutionDetail> {
    let api_url = global.api.as_str();
    let mut client = api::connect(global).await?;
    api::execution(&mut client, id)
        .await
        .map_err(|s| api::call_error(api_url, &format!("get execution {id}"), &s))
}

/// The plain progress line of a shard whose state changed: `shard 1: passed ✓3 ✗0 ↷0 in
/// 2.1s`, `shard 3: waiting for capacity (2 of 2 runners busy)`.
fn shard_line(s: &ShardSummary) -> String {
    let state = s.state();
    let terminal = format::shard_is_terminal(state);
    let mut line = format!("shard {}: {}", s.index, format::shard_state(state));
    if terminal {
        line.push_str(&format!(
            " ✓{} ✗{} ↷{} in {}",
            s.passed,
            s.failed + s.errored,
            s.skipped,
            format::elapsed(s.duration_ms)
        ));
    }
    if state == ShardState::WaitingForCapacity && !s.reason.is_empty() {
        line.push_str(&format!(" ({})", s.reason));
    }
    if s.attempt > 1 {
        line.push_str(&format!(" (attempt {})", s.attempt));
    }
    if terminal && !s.reason.is_empty() {
        line.push_str(&format!(": {}", s.reason));
    }
    line
}

/// Bars on a terminal, plain state-change lines otherwise.
struct Progress {
    id: String,
    workflow: String,
    palette: Palette,
    multi: Option<MultiProgress>,
    header: Option<ProgressBar>,
    bars: BTreeMap<u32, ProgressBar>,
    seen: BTreeMap<u32, (ShardState, u32)>,
    status: Option<ExecutionStatus>,
}

impl Progress {
    fn new(id: &str, workflow: &str, palette: Palette) -> Progress {
        let (multi, header) = if crate::style::stdout_is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let header = multi.add(ProgressBar::new_spinner());
            header.set_style(spinner_style("{spinner:.cyan} {msg}"));
            header.enable_steady_tick(Duration::from_millis(100));
            header.set_message(format!("{workflow} {id}: waiting for the scheduler"));
            (Some(multi), Some(header))
        } else {
            crate::outln!("execution {id} of {workflow} requested");
            (None, None)
        };
        Progress {
            id: id.to_string(),
            workflow: workflow.to_string(),
            palette,
            multi,
            header,
            bars: BTreeMap::new(),
            seen: BTreeMap::new(),
            status: None,
        }
    }

    fn update(&mut self, u: &ExecutionUpdate) {
        let status = u.status();
        let done = u
            .shards
            .iter()
            .filter(|s| format::shard_is_terminal(s.state()))
            .count();
        let headline = format!(
            "{} {}: {} ({done}/{} shards done, {})",
            self.workflow,
            self.id,
            self.palette
                .paint(execution_color(status), format::execution_status(status)),
            u.shards.len(),
            report::update_counts(u),
        );
        match (&self.multi, &self.header) {
            (Some(_), Some(header)) => header.set_message(headline),
            _ => {
                if self.status != Some(status) {
                    crate::outln!(
                        "execution {}: {}",
                        self.id,
                        format::execution_status(status)
                    );
                }
            }
        }
        self.status = Some(status);
        for s in &u.shards {
            self.shard(s);
        }
    }

    fn shard(&mut self, s: &ShardSummary) {
        let state = s.state();
        let terminal = format::shard_is_terminal(state);
        let changed = self.seen.get(&s.index) != Some(&(state, s.attempt));
        self.seen.insert(s.index, (state, s.attempt));
        let counts = format!("✓{} ✗{} ↷{}", s.passed, s.failed + s.errored, s.skipped);
        let state_text = self.palette.paint(
            shard_color(state),
            &format!("{:<9}", format::shard_state(state)),
        );
        let Some(multi) = &self.multi else {
            if changed {
                crate::outln!("{}", shard_line(s));
            }
            return;
        };
        let bar = self.bars.entry(s.index).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_prefix(format!("shard {}", s.index));
            bar.set_style(spinner_style(
                "  {spinner:.cyan} {prefix:.bold} {msg} {elapsed:.dim}",
            ));
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        if changed && state == ShardState::Running {
            bar.reset_elapsed();
        }
        if terminal {
            let mark = if state == ShardState::Passed {
                self.palette.paint(Color::Green, "✓")
            } else {
                self.palette.paint(Color::Red, "✗")
            };
            bar.set_style(spinner_style("  {prefix:.bold} {msg}"));
            let mut msg = format!(
                "{mark} {state_text} {counts}  {}",
                format::elapsed(s.duration_ms)
            );
            if !s.reason.is_empty() {
                msg.push_str(&format!("  {}", self.palette.paint(Color::Dim, &s.reason)));
            }
            bar.finish_with_message(msg);
        } else if state == ShardState::WaitingForCapacity && !s.reason.is_empty() {
            bar.set_message(format!(
                "{state_text} {}",
                self.palette.paint(Color::Dim, &format!("({})", s.reason))
            ));
        } else {
            bar.set_message(format!("{state_text} {counts}"));
        }
    }

    fn log(&self, subject: &str, payload: &[u8]) {
        let chunk: LogChunk = match assay_bus::decode(subject, payload, MAX_BYTES) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "skipping an undecodable log chunk");
                return;
            }
        };
        let lines = logline::chunk_lines(&chunk, &self.palette);
        match &self.multi {
            Some(multi) => multi.suspend(|| {
                for line in &lines {
                    crate::outln!("{line}");
                }
            }),
            None => {
                for line in &lines {
                    crate::outln!("{line}");
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some(header) = &self.header {
            header.finish();
        }
        for bar in self.bars.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

fn spinner_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carries_overrides_and_id() {
        let config =
            assay_spec::parse_overrides(&["a=1".to_string(), "url=http://x?q=1".to_string()])
                .unwrap();
        let r = run_request("01J", "e2e", config);
        assert_eq!(r.execution_id, "01J");
        assert_eq!(r.requested_by, "cli");
        assert_eq!(
            r.config.get("url").map(String::as_str),
            Some("http://x?q=1")
        );
        let h = r.header.unwrap();
        assert_eq!(h.idempotency_key, "run/01J");
        assert_eq!(h.producer, "assay-cli");
    }

    #[test]
    fn a_shard_waiting_for_capacity_says_so_and_why() {
        let waiting = ShardSummary {
            index: 1,
            state: ShardState::WaitingForCapacity as i32,
            attempt: 1,
            reason: "2 of 2 runners busy".into(),
            ..Default::default()
        };
        assert_eq!(
            shard_line(&waiting),
            "shard 1: waiting for capacity (2 of 2 runners busy)"
        );
        let queued = ShardSummary {
            index: 2,
            state: ShardState::Queued as i32,
            ..Default::default()
        };
        assert_eq!(shard_line(&queued), "shard 2: queued");
        let passed = ShardSummary {
            index: 1,
            state: ShardState::Passed as i32,
            attempt: 1,
            passed: 3,
            duration_ms: 2_100,
            ..Default::default()
        };
        assert!(
            shard_line(&passed).starts_with("shard 1: passed ✓3 ✗0 ↷0 in "),
            "{}",
            shard_line(&passed)
        );
    }

    #[test]
    fn shown_dirs_read_as_typed() {
        assert_eq!(shown_dir(Path::new(".assay")), Path::new("./.assay"));
        assert_eq!(shown_dir(Path::new("defs/x")), Path::new("./defs/x"));
        assert_eq!(shown_dir(Path::new("./defs")), Path::new("./defs"));
        assert_eq!(shown_dir(Path::new("/srv/defs")), Path::new("/srv/defs"));
    }

    #[test]
    fn bad_override_says_how_to_write_it() {
        let err = assay_spec::parse_overrides(&["novalue".to_string()]).unwrap_err();
        assert!(err.to_string().contains("--set name=value"));
    }
}
