//! assay's fault harness ("nothing lost, no one let in"): the four services and nats-server
//! as separate real processes, a 1,000-test sleep suite over several shards triggered again
//! and again through the trigger-watcher's HTTP API and the bus, and faults injected at
//! seeded random points — `kill -9` of each service, SIGSTOP past the ack wait, nats-server
//! restarts, an unwritable result database, the loss of the launcher's machine, killed
//! runners. Then, on the quiet stack, targeted scenarios ([`plan::Scenario`]) aim one fault
//! each at a chosen moment of one execution: nats-server restarted while queue batches are
//! held, the launcher killed mid-run and replaced, the scheduler killed between its first
//! shard job and the plan record. Afterwards it checks eight invariants against the final
//! state and what the scenarios recorded, and returns a [`Report`] with the faults injected
//! and the evidence for each invariant.
//!
//! The fault schedule and the scenario rounds are functions of the seed
//! ([`plan::schedule`], [`plan::rounds`]); `--seed N` replays them.

pub mod check;
pub mod load;
pub mod monitor;
pub mod plan;
pub mod procs;
pub mod scenario;
pub mod stack;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use assay_bus::{Bus, NatsOptions};
use assay_proto::results_client::ResultsClient;
use assay_proto::{ExecutionDetail, GetExecutionRequest, TestCaseBatch};
use tokio_util::sync::CancellationToken;

use crate::check::Verdict;
use crate::load::{Ledger, Load};
use crate::plan::{Kind, Scenario, Shape, Target};
use crate::stack::{Binaries, Immutable, Layout, Stack};

/// What one run does. [`Config::nightly`] and [`Config::short`] are the two sizes.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Faults injected (the schedule's length).
    pub faults: usize,
    /// Mean gap between faults.
    pub mean_gap: Duration,
    /// Mean gap between two triggers.
    pub trigger_every: Duration,
    /// Test cases in the suite, and shards per execution.
    pub tests: usize,
    pub shards: u32,
    /// What one test sleeps.
    pub test_ms: u64,
    /// Execution timeout of the workflows.
    pub timeout: Duration,
    pub pause: (Duration, Duration),
    pub unwritable: (Duration, Duration),
    /// Launcher capacity (runners at once).
    pub capacity: usize,
    /// Targeted scenarios run after the fault phase, and rounds of each.
    pub scenarios: Vec<Scenario>,
    pub rounds: usize,
    /// Where the service binaries are (default: next to this executable).
    pub bin_dir: Option<PathBuf>,
    /// Keep the run directory (logs, database, NATS store) even when every invariant held.
    pub keep: bool,
}

impl Config {
    /// `make chaos`: 1,000 faults, one every ~1.5 s, about 25 minutes plus the drain, then
    /// 5 rounds of each targeted scenario (about 5 minutes).
    pub fn nightly(seed: u64) -> Config {
        Config {
            seed,
            faults: 1000,
            mean_gap: Duration::from_millis(1500),
            trigger_every: Duration::from_secs(12),
            tests: 1000,
            shards: 4,
            test_ms: 30,
            timeout: Duration::from_secs(90),
            pause: (Duration::from_secs(31), Duration::from_secs(40)),
            unwritable: (Duration::from_secs(3), Duration::from_secs(30)),
            capacity: 8,
            scenarios: plan::SCENARIOS.to_vec(),
            rounds: 5,
            bin_dir: None,
            keep: false,
        }
    }

    /// The run inside `make test`: 24 faults in about two minutes, then one round of each
    /// targeted scenario (about a minute and a half).
    pub fn short(seed: u64) -> Config {
        Config {
            faults: 24,
            rounds: 1,
            mean_gap: Duration::from_secs(4),
            trigger_every: Duration::from_secs(10),
            test_ms: 20,
            timeout: Duration::from_secs(60),
            ..Config::nightly(seed)
        }
    }

    /// The command line that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "make chaos SEED={} CHAOS_ARGS='--faults {} --gap-ms {} --trigger-ms {} --tests {} --shards {} --test-ms {} --timeout-s {} --scenarios {} --rounds {}'",
            self.seed,
            self.faults,
            self.mean_gap.as_millis(),
            self.trigger_every.as_millis(),
            self.tests,
            self.shards,
            self.test_ms,
            self.timeout.as_secs(),
            if self.scenarios.is_empty() {
                "none".to_string()
            } else {
                self.scenarios
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            self.rounds
        )
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub replay: String,
    pub faults: BTreeMap<Kind, u64>,
    pub skipped: BTreeMap<Kind, u64>,
    /// Rounds of each targeted scenario.
    pub scenarios: BTreeMap<Scenario, u64>,
    pub unavailable: Vec<String>,
    pub invariants: Vec<Verdict>,
    pub restarts: Vec<(Target, u64, Vec<String>)>,
    pub elapsed: Duration,
    pub dir: Option<PathBuf>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(|v| v.held)
    }

    /// Every invariant held, measured wall-clock bounds aside (what `make test` asserts).
    pub fn passed_untimed(&self) -> bool {
        self.invariants.iter().all(|v| v.held || v.timing)
    }

    pub fn injected(&self) -> u64 {
        self.faults.values().sum::<u64>() + self.scenarios.values().sum::<u64>()
    }

    /// The fault table and the invariant table, plain text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "\nassay chaos — seed {} — {} faults injected in {:.0}s\n\n",
            self.seed,
            self.injected(),
            self.elapsed.as_secs_f64()
        ));
        out.push_str(&format!("{:<54} {:>7}\n", "fault", "count"));
        for (k, n) in &self.faults {
            out.push_str(&format!("{:<54} {:>7}\n", k.to_string(), n));
        }
        for (k, n) in &self.skipped {
            out.push_str(&format!(
                "{:<54} {:>7}\n",
                format!("(skipped, no target) {k}"),
                n
            ));
        }
        for (s, n) in &self.scenarios {
            out.push_str(&format!("{:<54} {:>7}\n", format!("(targeted) {s}"), n));
        }
        out.push_str(&format!("{:<54} {:>7}\n", "total", self.injected()));
        for u in &self.unavailable {
            out.push_str(&format!("not injected: {u}\n"));
        }
        out.push_str("\nprocess starts (unexpected exits):");
        for (t, starts, exits) in &self.restarts {
            out.push_str(&format!(" {} {} ({})", t.name(), starts, exits.len()));
        }
        out.push_str("\n\n");
        out.push_str(&format!("{:<54} {:<6} evidence\n", "invariant", "held"));
        for v in &self.invariants {
            out.push_str(&format!(
                "{:<54} {:<6} {}\n",
                v.name,
                match (v.held, v.timing) {
                    (true, _) => "yes",
                    (false, false) => "NO",
                    (false, true) => "SLOW",
                },
                v.evidence
            ));
            for line in v.violations.iter().take(10) {
                out.push_str(&format!("    ! {line}\n"));
            }
            if v.violations.len() > 10 {
                out.push_str(&format!("    ! … and {} more\n", v.violations.len() - 10));
            }
        }
        if self.passed() {
            out.push_str(&format!("\nall invariants held (seed {})\n", self.seed));
        } else {
            out.push_str(&format!(
                "\nINVARIANTS BROKEN with seed {}; replay with:\n  {}\n",
                self.seed, self.replay
            ));
        }
        if let Some(d) = &self.dir {
            out.push_str(&format!(
                "run directory (logs/, data/results.db, nats/): {}\n",
                d.display()
            ));
        }
        out
    }
}

const TESTS_SH: &str = r#"#!/bin/sh
# usage: tests.sh REPORT ID... — every test sleeps $CHAOS_TEST_MS ms (in one sleep for the
# whole batch), then passes.
report=$1; shift
n=$#
ms=$((n * ${CHAOS_TEST_MS:-20}))
sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
{
  echo '<?xml version="1.0" encoding="UTF-8"?>'
  echo "<testsuite name=\"chaos\" tests=\"$n\">"
  for id in "$@"; do
    echo "<testcase classname=\"chaos\" name=\"$id\" time=\"0.001\"/>"
  done
  echo '</testsuite>'
} > "$report.part" && mv "$report.part" "$report"
"#;

fn definitions(cfg: &Config, work: &std::path::Path) -> String {
    let mut out = String::new();
    for (workflow, strategy, policy) in [
        ("chaos-queue", "queue", "allow"),
        ("chaos-count", "count", "forbid"),
        ("chaos-duration", "duration", "allow"),
    ] {
        let extra = if strategy == "queue" {
            ", batchOverhead: 5ms, lease: 10s"
        } else {
            ""
        };
        out.push_str(&format!(
            r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: {workflow}}}
spec:
  workingDir: {work}
  env: {{CHAOS_TEST_MS: "{ms}"}}
  tests:
    list: cat ids.txt
    run: sh tests.sh {{report}} {{tests}}
    reports: ["{{report}}"]
  parallel: {{count: {shards}, strategy: {strategy}{extra}}}
  concurrency: {{policy: {policy}}}
  timeout: {timeout}s
  retries: {{count: 2, on: errored}}
---
apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {{name: {trigger}}}
spec:
  on:
    event: {{source: chaos, type: push, labels: {{suite: {workflow}}}}}
  run: {{workflow: {workflow}}}
---
"#,
            work = work.display(),
            ms = cfg.test_ms,
            shards = cfg.shards,
            timeout = cfg.timeout.as_secs(),
            trigger = load::trigger_of(workflow),
        ));
    }
    // The targeted scenarios' workflows, started by run requests only.
    for (s, list, run, ms, shards, parallel) in [
        (
            Scenario::HeldBatches,
            "claims-ids.txt",
            "claims.sh",
            cfg.test_ms,
            4,
            "strategy: queue, batchOverhead: 5ms, lease: 2s",
        ),
        // 10 s per shard: still running when the launcher dies, and when it is replaced.
        (
            Scenario::LauncherReplaced,
            "ids.txt",
            "tests.sh",
            10_000 * scenario::ORPHAN_SHARDS as u64 / cfg.tests.max(1) as u64,
            scenario::ORPHAN_SHARDS,
            "strategy: count",
        ),
        // Many shard jobs: a wider window between the first job and the plan record.
        (
            Scenario::SchedulerBeforePlan,
            "ids.txt",
            "tests.sh",
            cfg.test_ms,
            16,
            "strategy: count",
        ),
    ] {
        out.push_str(&format!(
            r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: {workflow}}}
spec:
  workingDir: {work}
  env: {{CHAOS_TEST_MS: "{ms}"}}
  tests:
    list: cat {list}
    run: sh {run} {{report}} {{tests}}
    reports: ["{{report}}"]
  parallel: {{count: {shards}, {parallel}}}
  concurrency: {{policy: allow}}
  timeout: {timeout}s
  retries: {{count: 2, on: errored}}
---
"#,
            workflow = scenario::workflow(s),
            work = work.display(),
            timeout = cfg.timeout.as_secs(),
        ));
    }
    out
}

fn say(msg: impl AsRef<str>) {
    eprintln!("[chaos {}] {}", chrono_like_now(), msg.as_ref());
}

fn chrono_like_now() -> String {
    let s = assay_bus::now_ms() / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// Runs the harness: stack up, load and faults, drain, checks. `Err` only when the harness
/// itself could not run (a missing binary, no free port); broken invariants are in the
/// report.
pub async fn run(cfg: Config) -> anyhow::Result<Report> {
    let started = Instant::now();
    let bin_dir = cfg.bin_dir.clone().unwrap_or_else(stack::default_bin_dir);
    let bins = Binaries::find(&bin_dir)?;
    let tmp = tempfile::Builder::new()
        .prefix("assay-chaos-")
        .tempdir()
        .context("run directory")?;
    let layout = Layout {
        dir: tmp.path().to_path_buf(),
        nats_port: assay_testkit::free_port(),
        grpc: std::net::SocketAddr::from(([127, 0, 0, 1], assay_testkit::free_port())),
        http: std::net::SocketAddr::from(([127, 0, 0, 1], assay_testkit::free_port())),
        capacity: cfg.capacity,
    };
    let work = layout.dir.join("work");
    stack::write(&work.join("tests.sh"), TESTS_SH)?;
    let ids: Vec<String> = (0..cfg.tests).map(|i| format!("t{i:05}")).collect();
    stack::write(&work.join("ids.txt"), &(ids.join("\n") + "\n"))?;
    stack::write(&work.join("claims.sh"), scenario::CLAIMS_SH)?;
    let claims: Vec<String> = (0..scenario::CLAIMS_SUITE)
        .map(|i| format!("c{i:03}"))
        .collect();
    stack::write(&work.join("claims-ids.txt"), &(claims.join("\n") + "\n"))?;
    let mut suites: HashMap<String, usize> = load::WORKFLOWS
        .iter()
        .chain(&[
            scenario::workflow(Scenario::LauncherReplaced),
            scenario::workflow(Scenario::SchedulerBeforePlan),
        ])
        .map(|w| (w.to_string(), cfg.tests))
        .collect();
    suites.insert(
        scenario::workflow(Scenario::HeldBatches).to_string(),
        scenario::CLAIMS_SUITE,
    );
    stack::write(
        &layout.workflows().join("chaos.yaml"),
        &definitions(&cfg, &work),
    )?;
    std::fs::create_dir_all(layout.data())?;
    std::fs::create_dir_all(layout.logs())?;

    let mut unavailable = Vec::new();
    let db_fault = match Immutable::probe(&layout.data()) {
        Ok(()) => true,
        Err(e) => {
            unavailable.push(format!(
                "aggregator database unwritable: chattr +i does not stop writes here ({e})"
            ));
            false
        }
    };
    // Drawn with spares: a fault whose target is down (between restarts) is skipped and the
    // next one in the schedule counts instead, so the run injects `cfg.faults`.
    let shape = Shape {
        faults: cfg.faults + cfg.faults / 4 + 8,
        mean_gap: cfg.mean_gap,
        pause: cfg.pause,
        unwritable: cfg.unwritable,
        db_fault,
    };
    let schedule = plan::schedule(cfg.seed, &shape);
    say(format!(
        "seed {}: {} faults over ~{:.0}s, run directory {}",
        cfg.seed,
        cfg.faults,
        schedule
            .get(cfg.faults.saturating_sub(1))
            .map(|f| f.at.as_secs_f64())
            .unwrap_or(0.0),
        layout.dir.display()
    ));

    let stack = Stack::new(layout.clone(), bins);
    stack.start(Target::Nats);
    if !stack::wait_port(layout.nats_port, Duration::from_secs(20)).await {
        anyhow::bail!("nats-server did not listen on port {}", layout.nats_port);
    }
    for t in [
        Target::Aggregator,
        Target::Scheduler,
        Target::Launcher,
        Target::TriggerWatcher,
    ] {
        stack.start(t);
    }
    let bus = Bus::connect(
        &NatsOptions {
            url: layout.nats_url(),
            connect_attempts: 0,
            name: "assay-chaos".into(),
            ..Default::default()
        },
        &CancellationToken::new(),
    )
    .await?;
    bus.ensure_topology().await?;
    for (port, what) in [
        (layout.http.port(), "trigger-watcher HTTP"),
        (layout.grpc.port(), "aggregator gRPC"),
    ] {
        if !stack::wait_port(port, Duration::from_secs(60)).await {
            anyhow::bail!(
                "{what} did not listen on port {port} within 60s (see {})",
                layout.logs().display()
            );
        }
    }
    // The scheduler is ready once it has loaded the definitions and opened its consumers.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let monitor = monitor::Monitor::new(layout.nats_url(), work.clone());
    let monitor_stop = CancellationToken::new();
    let monitor_task = monitor.spawn(
        stack.clone(),
        Duration::from_millis(250),
        monitor_stop.clone(),
    );

    // Load: triggers until the fault phase ends.
    let ledger = Arc::new(tokio::sync::Mutex::new(Ledger::default()));
    let load_stop = CancellationToken::new();
    let load_task = {
        let (ledger, stop) = (ledger.clone(), load_stop.clone());
        let mut load = Load::new(cfg.seed, bus.clone(), layout.http);
        let every = cfg.trigger_every;
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                {
                    let mut l = ledger.lock().await;
                    load.submit(&mut l, Duration::from_secs(60)).await;
                }
                let gap = load.gap(every);
                tokio::select! {
                    _ = tokio::time::sleep(gap) => {}
                    _ = stop.cancelled() => {}
                }
            }
        })
    };

    // Faults.
    let (mut faults, mut skipped) = (BTreeMap::<Kind, u64>::new(), BTreeMap::<Kind, u64>::new());
    let immutable = Arc::new(Immutable::default());
    let mut holds = Vec::new();
    let t0 = tokio::time::Instant::now();
    let mut injected_total = 0usize;
    let mut outages: Vec<(i64, i64, String)> = Vec::new();
    for f in &schedule {
        if injected_total >= cfg.faults {
            break;
        }
        tokio::time::sleep_until(t0 + f.at).await;
        let injected = inject(&stack, f, &layout, &immutable, &mut holds).await;
        if injected {
            // When the aggregator could not write (for the triage of invariant 4).
            let start = assay_bus::now_ms();
            let len = f.hold.as_millis() as i64;
            match f.kind {
                Kind::Pause(Target::Aggregator) | Kind::DbUnwritable => {
                    outages.push((start, start + len, f.kind.to_string()));
                }
                Kind::Kill(Target::Aggregator) => {
                    outages.push((start, start + len + 1_000, f.kind.to_string()));
                }
                _ => {}
            }
            *faults.entry(f.kind).or_default() += 1;
            injected_total += 1;
            if injected_total.is_multiple_of(25) || injected_total == cfg.faults {
                say(format!("{injected_total} / {} faults", cfg.faults));
            }
        } else {
            *skipped.entry(f.kind).or_default() += 1;
        }
    }
    load_stop.cancel();
    for h in holds {
        let _ = h.await;
    }
    stack.resume_all();
    immutable.clear();
    let _ = load_task.await;
    say("fault phase over; draining");

    // Drain: every acknowledged trigger has its execution, and every execution ends.
    let mut ledger = Arc::try_unwrap(ledger)
        .map(|m| m.into_inner())
        .unwrap_or_default();
    let last_trigger = ledger.acked.iter().map(|a| a.at_ms).max().unwrap_or(0);
    // Wait as long as the invariants allow: until every execution is past its own bound
    // (created + timeout + 60 s), and long enough after the last trigger for its execution
    // to be created; at most 15 minutes.
    let cap = assay_bus::now_ms() + 15 * 60_000;
    loop {
        let now = assay_bus::now_ms();
        let (settled, bound) = match check::read_db(&layout.database()) {
            Ok(db) => {
                let causes: std::collections::HashSet<&str> =
                    db.executions.iter().map(|e| e.cause.as_str()).collect();
                let settled = ledger
                    .acked
                    .iter()
                    .all(|a| causes.contains(a.cause.as_str()))
                    && db.executions.iter().all(|e| e.terminal());
                let bound = db
                    .executions
                    .iter()
                    .filter(|e| !e.terminal())
                    .map(|e| e.created_at_ms + e.timeout_ms + check::GRACE_MS + 5_000)
                    .max()
                    .unwrap_or(0)
                    .max(last_trigger + cfg.timeout.as_millis() as i64 + check::GRACE_MS);
                (settled, bound)
            }
            Err(_) => (false, now + 2_000),
        };
        if settled || now > bound.min(cap) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The targeted scenarios, one round at a time on the quiet stack.
    let rounds = plan::rounds(cfg.seed, &cfg.scenarios, cfg.rounds);
    if !rounds.is_empty() {
        say(format!("{} targeted scenario rounds", rounds.len()));
    }
    let env = scenario::Env {
        stack: &stack,
        bus: &bus,
        seed: cfg.seed,
        timeout: cfg.timeout,
    };
    let recorded = scenario::run(&env, &rounds, &mut ledger).await;

    // Invariant 5 needs 60 s after the last end only if processes of ended executions live.
    let db = check::read_db(&layout.database()).unwrap_or_default();
    let last_end = db
        .executions
        .iter()
        .map(|e| e.finished_at_ms)
        .max()
        .unwrap_or(0);
    while monitor.sample(stack.pid(Target::Launcher).map(|p| p as i32)) > 0
        && assay_bus::now_ms() < last_end + check::GRACE_MS + 5_000
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    monitor_stop.cancel();
    let _ = monitor_task.await;

    say("reading the results stream and the API");
    let stream = read_results(&bus).await?;
    let api = read_api(&layout, &db).await;
    say("stopping the stack");
    stack.shutdown().await;
    for _ in 0..20 {
        if monitor.sample(None) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    monitor.leftovers();
    procs::kill_leftovers(&layout.nats_url(), &work);
    let db = check::read_db(&layout.database())?;
    let observed = monitor.observed();
    let mut invariants = check::all(&check::Inputs {
        db: &db,
        stream: &stream,
        api: &api,
        ledger: &ledger,
        observed: &observed,
        suites: &suites,
        aggregator_outages: &outages,
    });
    let has = |s: Scenario| cfg.rounds > 0 && cfg.scenarios.contains(&s);
    if has(Scenario::HeldBatches) {
        let runs = std::fs::read_to_string(work.join("runs.log")).unwrap_or_default();
        invariants.push(check::targeted::no_batch_twice(
            &recorded.held,
            &check::targeted::parse_runs(&runs),
            &db,
            scenario::CLAIMS_SUITE,
            scenario::CLAIMS_LEASE.as_millis() as i64,
        ));
    }
    if has(Scenario::LauncherReplaced) {
        invariants.push(check::targeted::orphans_rerun(&recorded.orphans));
    }
    if has(Scenario::SchedulerBeforePlan) {
        invariants.push(check::targeted::created_at_kept(&recorded.replans, &db));
    }
    let mut report = Report {
        seed: cfg.seed,
        replay: cfg.replay_command(),
        faults,
        skipped,
        scenarios: recorded.rounds,
        unavailable,
        invariants,
        restarts: stack.restarts(),
        elapsed: started.elapsed(),
        dir: None,
    };
    if cfg.keep || !report.passed() {
        report.dir = Some(tmp.keep());
    }
    Ok(report)
}

/// Injects one fault; returns false when it had no target (no live runner, a service
/// between restarts). Faults with a hold push the task that ends them.
async fn inject(
    stack: &Stack,
    f: &plan::Fault,
    layout: &Layout,
    immutable: &Arc<Immutable>,
    holds: &mut Vec<tokio::task::JoinHandle<()>>,
) -> bool {
    // A target between two restarts: wait a little for it to be back.
    let target = match f.kind {
        Kind::Kill(t) | Kind::Pause(t) => Some(t),
        Kind::NatsRestart => Some(Target::Nats),
        Kind::MachineLoss => Some(Target::Launcher),
        Kind::DbUnwritable | Kind::RunnerKill => None,
    };
    if let Some(t) = target {
        for _ in 0..50 {
            if stack.pid(t).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    match f.kind {
        Kind::Kill(t) => stack.kill9(t, f.hold).is_some(),
        Kind::NatsRestart => stack.kill9(Target::Nats, f.hold).is_some(),
        Kind::Pause(t) => {
            let Some(pid) = stack.pause(t) else {
                return false;
            };
            let (stack, hold) = (stack.clone(), f.hold);
            holds.push(tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                stack.resume(t, pid);
            }));
            true
        }
        Kind::DbUnwritable => {
            let data = layout.data();
            let db = layout.database();
            let paths = vec![
                db.clone(),
                PathBuf::from(format!("{}-wal", db.display())),
                data,
            ];
            if immutable.set(paths).is_err() {
                return false;
            }
            let (immutable, hold) = (immutable.clone(), f.hold);
            holds.push(tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                immutable.clear();
            }));
            true
        }
        Kind::MachineLoss => {
            let work = layout.dir.join("work");
            let snap = procs::snapshot(&layout.nats_url(), &work, &mut HashMap::new());
            let killed = stack.kill9(Target::Launcher, f.hold).is_some();
            for pid in snap.runners.keys() {
                // Each runner leads its own process group: the group holds its tests.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            killed
        }
        Kind::RunnerKill => {
            let work = layout.dir.join("work");
            // Wait a little for a runner that is working on a shard.
            for _ in 0..20 {
                let snap = procs::snapshot(&layout.nats_url(), &work, &mut HashMap::new());
                let busy: Vec<i32> = snap
                    .runners
                    .iter()
                    .filter(|(_, r)| r.busy)
                    .map(|(p, _)| *p)
                    .collect();
                if !busy.is_empty() {
                    let pid = busy[(f.pick % busy.len() as u64) as usize];
                    return nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .is_ok();
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            false
        }
    }
}

/// Every message of `ASSAY_RESULTS` (everything in it was acknowledged to its publisher).
async fn read_results(bus: &Bus) -> anyhow::Result<Vec<TestCaseBatch>> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    use futures::StreamExt;
    use prost::Message;
    let mut stream = bus
        .jetstream()
        .get_stream(assay_bus::streams::RESULTS)
        .await
        .map_err(|e| anyhow::anyhow!("results stream: {e}"))?;
    let last = stream
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("results stream info: {e}"))?
        .state
        .last_sequence;
    let mut out = Vec::new();
    if last == 0 {
        return Ok(out);
    }
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("results consumer: {e}"))?;
    let mut seen = 0;
    while seen < last {
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("fetch results: {e}"))?;
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("results message: {e}"))?;
            seen = m.info().map(|i| i.stream_sequence).unwrap_or(seen + 1);
            got += 1;
            out.push(TestCaseBatch::decode(m.payload.as_ref())?);
        }
        if got == 0 {
            break;
        }
    }
    Ok(out)
}

/// Reads every execution back through the gRPC API.
async fn read_api(
    layout: &Layout,
    db: &check::Db,
) -> HashMap<String, Result<ExecutionDetail, String>> {
    let url = format!("http://{}", layout.grpc);
    let mut out = HashMap::new();
    let mut client = None;
    for _ in 0..60 {
        if let Ok(c) = ResultsClient::connect(url.clone()).await {
            client = Some(c.max_decoding_message_size(64 * 1024 * 1024));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let Some(mut client) = client else {
        for e in &db.executions {
            out.insert(e.id.clone(), Err(format!("API at {url} unreachable")));
        }
        return out;
    };
    for e in &db.executions {
        let r = client
            .get_execution(GetExecutionRequest {
                id: e.id.clone(),
                // Every case of an execution the size chaos runs in one page.
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.to_string());
        out.insert(e.id.clone(), r);
    }
    out
}
