//! `make bench-scale`: suites of 1,000 to 100,000 tests through the whole stack, the
//! services as separate release processes on a real nats-server, four shards sharing one
//! `workingDir`, each strategy, a first run and one with the history the first left.
//!
//! Per cell: whether the counts are exact (every id passed once), wall time (creation to
//! the final update's arrival), ingest lag (the last shard's end to the final update's
//! arrival), the aggregator's CPU per test (to the microsecond, up to when it is idle
//! again after the final update: the history fold and snapshot count), and each service's
//! peak RSS; at the end each service's idle RSS against the one before the first run. Ids
//! are 80–100 characters with brackets and slashes, as pytest prints them. Figures are
//! printed, not asserted; a cell that does not end within its bound is reported as such and
//! the next one runs.
//!
//! `ASSAY_SCALE_SIZES=1000,10000` and `ASSAY_SCALE_STRATEGIES=queue` pick cells.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use assay_bus::{Bus, NatsOptions, header, subjects};
use assay_integration::proc_stat::CpuMeter;
use assay_integration::release::Services;
use assay_proto::{ExecutionStatus, ExecutionUpdate, RunRequest};
use assay_testkit::{NatsServer, free_port};
use futures::StreamExt;
use prost::Message;
use tokio_util::sync::CancellationToken;

const SERVICES: [&str; 3] = [
    "assay-scheduler",
    "assay-result-aggregator",
    "assay-executor-launcher",
];

/// Writes a JUnit report with one passing case per id given (ids as arguments).
const SUITE_SH: &str = r#"#!/bin/sh
report=$1; shift
{
echo '<testsuite name="s">'
for id in "$@"; do
  printf '<testcase classname="s" name="%s" time="0.001"/>\n' "$id"
done
echo '</testsuite>'
} > "$report"
"#;

fn list(var: &str, default: &[&str]) -> Vec<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => default.iter().map(|s| s.to_string()).collect(),
    }
}

/// `n` distinct ids of 80–100 characters, with brackets and slashes.
fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let pad = "x".repeat(i % 21);
            format!(
                "tests/unit/pkg_{:03}/test_module_{:04}.py::TestCase::test_value[param-{i:06}-{pad}]",
                i % 211,
                i % 4999
            )
        })
        .collect()
}

const AGGREGATOR: &str = "assay-result-aggregator";

fn start(nats: &NatsServer, dir: &Path, defs: &Path) -> Services {
    let mut services = Services::new(nats.url(), defs, Some(dir));
    services.spawn("assay-scheduler", &[]);
    services.spawn(
        AGGREGATOR,
        &[
            "--database".into(),
            dir.join("results.db").display().to_string(),
            "--grpc".into(),
            format!("127.0.0.1:{}", free_port()),
        ],
    );
    services.spawn(
        "assay-executor-launcher",
        &["--capacity".into(), "4".into()],
    );
    services
}

fn workflow(strategy: &str, work: &Path) -> String {
    format!(
        "apiVersion: assay.dev/v1alpha1\nkind: TestWorkflow\nmetadata: {{name: scale-{strategy}}}\nspec:\n  workingDir: {}\n  config:\n    n: {{type: integer, default: \"1000\"}}\n  tests:\n    list: cat ids-{{{{ config.n }}}}.txt\n    run: sh suite.sh {{report}} {{tests}}\n    reports: [\"{{report}}\"]\n  parallel: {{count: 4, strategy: {strategy}}}\n  timeout: 30m\n",
        work.display()
    )
}

struct Cell {
    strategy: String,
    n: usize,
    run: &'static str,
    outcome: String,
    wall_s: f64,
    lag_s: f64,
    cpu_us_per_test: f64,
    peak: BTreeMap<&'static str, u64>,
}

/// Waits for the terminal update of `id`; returns it with its arrival time, sampling
/// the services' RSS meanwhile.
async fn follow(
    mut sub: async_nats::Subscriber,
    services: &Services,
    peak: &mut BTreeMap<&'static str, u64>,
    within: Duration,
) -> Option<(ExecutionUpdate, Instant)> {
    let deadline = tokio::time::Instant::now() + within;
    let mut sample = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            m = sub.next() => {
                let m = m?;
                if let Ok(u) = ExecutionUpdate::decode(m.payload.as_ref())
                    && u.status().is_terminal()
                {
                    return Some((u, Instant::now()));
                }
            }
            _ = sample.tick() => {
                for (name, kib) in services.rss() {
                    let p = peak.entry(name).or_default();
                    *p = (*p).max(kib);
                }
            }
            _ = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

/// Waits (at most `within`) until the aggregator is idle — under 5 ms of CPU in half a
/// second — after an execution's final update: what it does after that update (the fold of
/// the test cases into the duration history, the history snapshot) belongs to this cell, not
/// to the next one. Samples the services' RSS meanwhile.
async fn settle(services: &Services, peak: &mut BTreeMap<&'static str, u64>, within: Duration) {
    let deadline = Instant::now() + within;
    let pid = services.pid(AGGREGATOR).unwrap_or(0);
    while Instant::now() < deadline {
        let window = CpuMeter::start(pid);
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (name, kib) in services.rss() {
            let p = peak.entry(name).or_default();
            *p = (*p).max(kib);
        }
        if window.ms() < 5.0 {
            return;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = list("ASSAY_SCALE_SIZES", &["1000", "10000", "100000"])
        .iter()
        .map(|s| s.parse().expect("ASSAY_SCALE_SIZES: numbers"))
        .collect();
    let strategies = list("ASSAY_SCALE_STRATEGIES", &["count", "duration", "queue"]);
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let defs = dir.path().join("defs");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&defs).unwrap();
    std::fs::write(work.join("suite.sh"), SUITE_SH).unwrap();
    for &n in &sizes {
        std::fs::write(work.join(format!("ids-{n}.txt")), ids(n).join("\n") + "\n").unwrap();
    }
    for s in &strategies {
        std::fs::write(defs.join(format!("{s}.yaml")), workflow(s, &work)).unwrap();
    }
    let services = start(&nats, dir.path(), &defs);
    let bus = Bus::connect(
        &NatsOptions {
            url: nats.url(),
            ..Default::default()
        },
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    bus.ensure_topology().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_before = services.rss();

    let mut cells = Vec::new();
    for strategy in &strategies {
        for &n in &sizes {
            for run in ["first", "history"] {
                let id = ulid::Ulid::new().to_string();
                let req = RunRequest {
                    header: Some(header("bench-scale", format!("run/{id}"), None)),
                    workflow: format!("scale-{strategy}"),
                    config: [("n".to_string(), n.to_string())].into(),
                    requested_by: "bench".into(),
                    execution_id: id.clone(),
                    ..Default::default()
                };
                // Subscribed before the request goes out, so no update is missed.
                let sub = bus
                    .client()
                    .subscribe(subjects::execution_updates_of(&id))
                    .await
                    .unwrap();
                let cpu = CpuMeter::start(services.pid(AGGREGATOR).unwrap_or(0));
                let started = Instant::now();
                bus.publish(subjects::RUN_REQUESTED.to_string(), &req)
                    .await
                    .unwrap();
                let mut peak = BTreeMap::new();
                let within = Duration::from_secs(60 + n as u64 / 100);
                let ended = follow(sub, &services, &mut peak, within).await;
                if ended.is_some() {
                    settle(&services, &mut peak, within).await;
                }
                let cpu = cpu.ms();
                let cell = match ended {
                    None => Cell {
                        strategy: strategy.clone(),
                        n,
                        run,
                        outcome: format!("no end within {}s", within.as_secs()),
                        wall_s: f64::NAN,
                        lag_s: f64::NAN,
                        cpu_us_per_test: cpu * 1000.0 / n as f64,
                        peak,
                    },
                    Some((u, at)) => {
                        let exact = u.status() == ExecutionStatus::Passed
                            && u.passed as usize == n
                            && u.failed + u.errored + u.skipped == 0;
                        // The execution's finish is its last shard's end.
                        let finished_ms = u.finished_at_ms.max(u.created_at_ms);
                        let arrival_ms = assay_bus::now_ms()
                            - i64::try_from(at.elapsed().as_millis()).unwrap_or(0);
                        Cell {
                            strategy: strategy.clone(),
                            n,
                            run,
                            outcome: if exact {
                                "exact".to_string()
                            } else {
                                format!(
                                    "{:?} {}/{}/{}/{} of {n}: {}",
                                    u.status(),
                                    u.passed,
                                    u.failed,
                                    u.errored,
                                    u.skipped,
                                    u.reason
                                )
                            },
                            wall_s: (at - started).as_secs_f64(),
                            lag_s: (arrival_ms - finished_ms) as f64 / 1000.0,
                            cpu_us_per_test: cpu * 1000.0 / n as f64,
                            peak,
                        }
                    }
                };
                println!(
                    "{:>9} {:>7} {:>8}  {:<8} wall {:>7.1}s  lag {:>6.2}s  aggregator {:>7.1} µs CPU/test",
                    cell.strategy,
                    cell.n,
                    cell.run,
                    if cell.outcome == "exact" {
                        "exact"
                    } else {
                        "WRONG"
                    },
                    cell.wall_s,
                    cell.lag_s,
                    cell.cpu_us_per_test
                );
                if cell.outcome != "exact" {
                    println!("          {}", cell.outcome);
                }
                cells.push(cell);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_after = services.rss();

    println!();
    println!(
        "{:>9} {:>7} {:>8}  {:<8} {:>8} {:>8} {:>12}  peak MiB: {}",
        "strategy",
        "tests",
        "run",
        "counts",
        "wall s",
        "lag s",
        "agg µs/test",
        SERVICES.join(" / ")
    );
    for c in &cells {
        let peaks: Vec<String> = SERVICES
            .iter()
            .map(|s| format!("{:.1}", *c.peak.get(s).unwrap_or(&0) as f64 / 1024.0))
            .collect();
        println!(
            "{:>9} {:>7} {:>8}  {:<8} {:>8.1} {:>8.2} {:>12.1}  {}",
            c.strategy,
            c.n,
            c.run,
            if c.outcome == "exact" {
                "exact"
            } else {
                "WRONG"
            },
            c.wall_s,
            c.lag_s,
            c.cpu_us_per_test,
            peaks.join(" / ")
        );
    }
    println!();
    println!(
        "{:<26} {:>12} {:>12} {:>8}",
        "service", "idle before", "idle after", "ratio"
    );
    for s in SERVICES {
        let (b, a) = (idle_before[s], idle_after[s]);
        println!(
            "{:<26} {:>9.1} MiB {:>9.1} MiB {:>8.2}",
            s,
            b as f64 / 1024.0,
            a as f64 / 1024.0,
            a as f64 / b.max(1) as f64
        );
    }
    let wrong = cells.iter().filter(|c| c.outcome != "exact").count();
    println!(
        "{} cells, {} exact, {} not",
        cells.len(),
        cells.len() - wrong,
        wrong
    );
}
