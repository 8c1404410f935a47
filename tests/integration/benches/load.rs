//! `make bench-load`: the scheduler under an open-loop load of trigger events, with the
//! services as separate release processes (scheduler, result-aggregator, trigger-watcher and
//! executor-launcher) on a real nats-server.
//!
//! - Open loop: events are sent on a fixed schedule (rate R for a few seconds) whatever the
//!   system does; each event's latency runs from its *scheduled* send time to the moment its
//!   execution plan appears on `assay.v1.plans.>`, so a stalled system cannot hide its
//!   queueing delay (no coordinated omission). Reports planned/s and p50/p99 latency per rate.
//! - Burst: 100,000 events published as fast as JetStream acknowledges them; waits until
//!   every one is planned, without any manual step.
//! - RSS (VmRSS from /proc) of each service idle, and its peak under load.
//!
//! The launcher is stopped before the load (every execution would start a process); its
//! idle RSS is measured first. Figures are printed, not asserted.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assay_bus::{Bus, NatsOptions, header, subjects};
use assay_proto::{Execution, TriggerEvent};
use assay_testkit::{NatsServer, free_port};
use futures::StreamExt;
use prost::Message;
use tokio_util::sync::CancellationToken;

const RATES: [u64; 6] = [500, 1_000, 2_000, 5_000, 10_000, 15_000];
const STEP: Duration = Duration::from_secs(5);
const BURST: usize = 100_000;

/// `ASSAY_LOAD_RATES=10000,15000` runs only those rates; `ASSAY_LOAD_BURST=0` skips the
/// burst (for quick comparisons while tuning).
fn rates() -> Vec<u64> {
    match std::env::var("ASSAY_LOAD_RATES") {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|r| {
                r.trim()
                    .parse()
                    .expect("ASSAY_LOAD_RATES: comma-separated numbers")
            })
            .collect(),
        _ => RATES.to_vec(),
    }
}

fn burst_size() -> usize {
    std::env::var("ASSAY_LOAD_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BURST)
}

const DEFS: &str = r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: load}
spec:
  steps: [{name: a, run: "true"}]
---
apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: on-load}
spec:
  on: {event: {source: load, type: go}}
  run: {workflow: load}
"#;

use assay_integration::proc_stat::{cpu_ms, rss_kib};
use assay_integration::release::Services;

fn start(nats: &NatsServer, dir: &std::path::Path) -> Services {
    let defs = dir.join("defs");
    std::fs::create_dir_all(&defs).unwrap();
    std::fs::write(defs.join("load.yaml"), DEFS).unwrap();
    let mut services = Services::new(nats.url(), &defs, None);
    services.spawn("assay-scheduler", &[]);
    services.spawn(
        "assay-result-aggregator",
        &[
            "--database".into(),
            dir.join("results.db").display().to_string(),
            "--grpc".into(),
            format!("127.0.0.1:{}", free_port()),
        ],
    );
    services.spawn(
        "assay-trigger-watcher",
        &["--http".into(), format!("127.0.0.1:{}", free_port())],
    );
    services.spawn("assay-executor-launcher", &[]);
    services
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut services = start(&nats, dir.path());
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

    // Plans as they are published: cause key -> arrival.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut sub = bus.client().subscribe(subjects::PLANS_ALL).await.unwrap();
    {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Ok(e) = Execution::decode(msg.payload) {
                    seen.lock().unwrap().insert(e.cause, Instant::now());
                }
            }
        });
    }
    let baseline = bare_jetstream_rate(&bus).await;

    // Warm up: one event through, then idle RSS.
    publish(&bus, "warm").await;
    wait_for(&seen, 1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let names = [
        "assay-scheduler",
        "assay-result-aggregator",
        "assay-trigger-watcher",
        "assay-executor-launcher",
    ];
    let idle: Vec<(String, u64)> = names
        .iter()
        .map(|n| (n.to_string(), services.pid(n).map(rss_kib).unwrap_or(0)))
        .collect();
    services.stop("assay-executor-launcher");

    // Peak RSS sampler.
    let peaks: Arc<Mutex<HashMap<u32, u64>>> = Arc::default();
    let pids: Vec<(String, u32)> = names[..3]
        .iter()
        .filter_map(|n| services.pid(n).map(|p| (n.to_string(), p)))
        .collect();
    {
        let (peaks, pids) = (peaks.clone(), pids.clone());
        tokio::spawn(async move {
            loop {
                for (_, pid) in &pids {
                    let r = rss_kib(*pid);
                    let mut p = peaks.lock().unwrap();
                    let e = p.entry(*pid).or_default();
                    *e = (*e).max(r);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    println!(
        "bench-load: scheduler under open-loop trigger events (release binaries, one nats-server)"
    );
    // Where the CPU went during each step: CPU-ms per 1,000 planned executions of the
    // scheduler, the aggregator, nats-server and this load generator.
    let mut meters: Vec<(&str, u32)> = pids
        .iter()
        .map(|(n, p)| (n.trim_start_matches("assay-"), *p))
        .collect();
    meters.retain(|(n, _)| *n != "trigger-watcher");
    if let Some(p) = nats.pid() {
        meters.push(("nats-server", p));
    }
    meters.push(("generator", std::process::id()));
    let cpu_header: String = meters
        .iter()
        .map(|(n, _)| format!(" {:>12}", format!("{}*", n.split('-').next().unwrap_or(n))))
        .collect();
    println!(
        "{:>8} {:>8} {:>12} {:>10} {:>10} {:>10}{cpu_header}",
        "rate/s", "sent", "planned/s", "p50 ms", "p99 ms", "max ms"
    );
    for rate in rates() {
        let tag = format!("r{rate}");
        let n = (rate * STEP.as_secs()) as usize;
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let cpu_before: Vec<u64> = meters.iter().map(|(_, p)| cpu_ms(*p)).collect();
        let start = Instant::now();
        let mut scheduled = Vec::with_capacity(n);
        for i in 0..n {
            let at = start + interval * i as u32;
            tokio::time::sleep_until(at.into()).await;
            let key = format!("{tag}/{i}");
            scheduled.push((format!("{key}/on-load/load"), at));
            let bus = bus.clone();
            tokio::spawn(async move { publish(&bus, &key).await });
        }
        let done = wait_for_keys(
            &seen,
            scheduled.iter().map(|(k, _)| k.as_str()),
            Duration::from_secs(120),
        )
        .await;
        let map = seen.lock().unwrap().clone();
        let mut lat: Vec<f64> = scheduled
            .iter()
            .filter_map(|(k, at)| {
                map.get(k)
                    .map(|t| t.duration_since(*at).as_secs_f64() * 1000.0)
            })
            .collect();
        lat.sort_by(f64::total_cmp);
        let last = scheduled
            .iter()
            .filter_map(|(k, _)| map.get(k))
            .max()
            .copied()
            .unwrap_or(start);
        let planned_per_s = lat.len() as f64
            / last
                .duration_since(start)
                .as_secs_f64()
                .max(STEP.as_secs_f64());
        let cpu: String = meters
            .iter()
            .zip(&cpu_before)
            .map(|((_, p), before)| {
                let per_k = (cpu_ms(*p) - before) as f64 * 1000.0 / lat.len().max(1) as f64;
                format!(" {per_k:>12.0}")
            })
            .collect();
        println!(
            "{rate:>8} {n:>8} {planned_per_s:>12.0} {:>10.1} {:>10.1} {:>10.1}{cpu}{}",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            if done {
                ""
            } else {
                "  (not all planned within 120 s)"
            }
        );
        if !done {
            break;
        }
    }

    println!("  (name* columns: CPU milliseconds per 1,000 executions planned, user + system)");
    println!(
        "baseline, same nats-server and generator: {baseline:.0} bare JetStream publishes/s \
         acknowledged ({BASELINE_N} trigger-event-sized messages to a stream no one consumes, \
         512 in flight); each execution costs the stack 4 such writes (event, dedup claim, shard \
         job, plan) plus the aggregator's update"
    );

    // Burst.
    let burst = burst_size();
    let start = Instant::now();
    let sent: Vec<String> = futures::stream::iter(0..burst)
        .map(|i| {
            let bus = bus.clone();
            async move {
                let key = format!("burst/{i}");
                publish(&bus, &key).await;
                format!("{key}/on-load/load")
            }
        })
        .buffer_unordered(512)
        .collect()
        .await;
    let accepted = start.elapsed();
    let done = wait_for_keys(
        &seen,
        sent.iter().map(String::as_str),
        Duration::from_secs(900),
    )
    .await;
    println!(
        "burst: {burst} events accepted by JetStream in {:.1} s; {} planned after {:.1} s ({:.0} planned/s)",
        accepted.as_secs_f64(),
        if done { "all" } else { "NOT all" },
        start.elapsed().as_secs_f64(),
        burst as f64 / start.elapsed().as_secs_f64()
    );

    println!("{:<26} {:>10} {:>12}", "service", "idle MiB", "peak MiB");
    let peaks = peaks.lock().unwrap().clone();
    for (name, kib) in idle {
        let peak = pids
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, p)| peaks.get(p))
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .unwrap_or_else(|| "(stopped)".into());
        println!("{name:<26} {:>10.1} {peak:>12}", kib as f64 / 1024.0);
    }
}

const BASELINE_N: usize = 100_000;

/// The ceiling the stack works under: acknowledged JetStream publishes per second from this
/// generator to this nats-server, with nothing consuming them (a stream made for the
/// measurement and deleted after).
async fn bare_jetstream_rate(bus: &Bus) -> f64 {
    let js = bus.jetstream();
    let _ = js.delete_stream("BENCH_BASELINE").await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_BASELINE".into(),
        subjects: vec!["bench.baseline".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("baseline stream");
    let payload = TriggerEvent {
        header: Some(header("bench-load", "baseline/0000000", None)),
        source: "load".into(),
        r#type: "go".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let start = Instant::now();
    futures::stream::iter(0..BASELINE_N)
        .map(|_| {
            let payload = payload.clone();
            async move {
                js.publish("bench.baseline", payload.into())
                    .await
                    .expect("publish")
                    .await
                    .expect("ack");
            }
        })
        .buffer_unordered(512)
        .collect::<Vec<()>>()
        .await;
    let rate = BASELINE_N as f64 / start.elapsed().as_secs_f64();
    let _ = js.delete_stream("BENCH_BASELINE").await;
    rate
}

async fn publish(bus: &Bus, key: &str) {
    let ev = TriggerEvent {
        header: Some(header("bench-load", key, None)),
        source: "load".into(),
        r#type: "go".into(),
        ..Default::default()
    };
    for _ in 0..5 {
        if bus.publish(subjects::event("load"), &ev).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("event {key} not acknowledged after 5 tries");
}

async fn wait_for(seen: &Arc<Mutex<HashMap<String, Instant>>>, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while seen.lock().unwrap().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_keys<'a>(
    seen: &Arc<Mutex<HashMap<String, Instant>>>,
    keys: impl Iterator<Item = &'a str>,
    within: Duration,
) -> bool {
    let keys: Vec<&str> = keys.collect();
    let deadline = Instant::now() + within;
    loop {
        let missing = {
            let map = seen.lock().unwrap();
            keys.iter().filter(|k| !map.contains_key(**k)).count()
        };
        if missing == 0 {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
