//! `make bench-sharding` (second part): a real run on the local backend. 400 sleep-based
//! tests with log-normal durations (σ = 1, seeded) scaled so that 8 workers need about a
//! minute, run three times in one stack — `count` (which also records the history), then
//! `duration` and `queue` planned from that history — and the wall-clock makespan of each
//! is printed beside the lower bound LB = max(sum / m, longest).
//!
//! `ASSAY_BENCH_SCALE=0.1` shrinks every duration tenfold for a quick look.

use std::time::Duration;

use assay_integration::{Sandbox, describe};
use assay_proto::ExecutionStatus;

const TESTS: usize = 400;
const WORKERS: u32 = 8;
/// Seconds of work per worker the suite is scaled to (sum / m).
const TARGET_S: f64 = 60.0;

/// A small, seeded generator (xorshift64*) so the suite is the same on every run.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal by Box–Muller.
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next_f64(), self.next_f64());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

const SCRIPT: &str = r#"#!/bin/sh
# usage: sleepy.sh REPORT ID...  — each id ends in _<ms>: the test sleeps that long.
report=$1; shift
{
echo '<?xml version="1.0" encoding="UTF-8"?>'
echo "<testsuite name=\"sleepy\" tests=\"$#\">"
for id in "$@"; do
  ms=${id##*_}
  s=$(awk "BEGIN{printf \"%.3f\", $ms/1000}")
  sleep "$s"
  echo "<testcase classname=\"sleepy\" name=\"$id\" time=\"$s\"/>"
done
echo "</testsuite>"
} > "$report"
"#;

fn workflow(dir: &std::path::Path, strategy: &str) -> String {
    format!(
        r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: sleepy}}
spec:
  workingDir: {}
  tests:
    list: cat ids.txt
    run: sh sleepy.sh {{report}} {{tests}}
    reports: ["{{report}}"]
  parallel: {{count: {WORKERS}, strategy: {strategy}, batchOverhead: 20ms}}
  timeout: 30m
"#,
        dir.display()
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let scale: f64 = std::env::var("ASSAY_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let raw: Vec<f64> = (0..TESTS).map(|_| rng.normal().exp()).collect();
    let sum: f64 = raw.iter().sum();
    let factor = TARGET_S * f64::from(WORKERS) * 1000.0 * scale / sum;
    let ms: Vec<u64> = raw
        .iter()
        .map(|d| ((d * factor).round() as u64).max(1))
        .collect();
    // Listed alphabetically, as real suites are: not by duration.
    let ids: Vec<String> = ms
        .iter()
        .enumerate()
        .map(|(i, d)| format!("t{i:03}_{d}"))
        .collect();
    let total_s = ms.iter().sum::<u64>() as f64 / 1000.0;
    let longest_s = *ms.iter().max().unwrap_or(&0) as f64 / 1000.0;
    let lb = (total_s / f64::from(WORKERS)).max(longest_s);

    let work = tempfile::tempdir().expect("temp dir");
    std::fs::write(work.path().join("sleepy.sh"), SCRIPT).expect("script");
    std::fs::write(work.path().join("ids.txt"), ids.join("\n") + "\n").expect("ids");
    let sb = Sandbox::start(&[("sleepy.yaml", &workflow(work.path(), "count"))]).await;
    eprintln!(
        "{TESTS} tests, log-normal (σ = 1), {total_s:.1}s of work, longest {longest_s:.1}s, {WORKERS} workers: LB = {lb:.1}s"
    );

    let mut rows = Vec::new();
    for strategy in ["count", "duration", "queue"] {
        std::fs::write(
            sb.workflows_dir().join("sleepy.yaml"),
            workflow(work.path(), strategy),
        )
        .expect("workflow");
        // The services reload definitions every 2 s.
        tokio::time::sleep(Duration::from_secs(3)).await;
        eprintln!("  running {strategy} …");
        let id = sb.run("sleepy", &[]).await;
        let d = sb
            .wait_for_terminal(
                &id,
                Duration::from_secs((TARGET_S * scale * 10.0) as u64 + 120),
            )
            .await;
        let e = d.execution.clone().unwrap_or_default();
        if e.status != ExecutionStatus::Passed as i32 || e.passed as usize != TESTS {
            eprintln!(
                "{strategy} did not pass all {TESTS} tests: {}",
                describe(&d)
            );
            std::process::exit(1);
        }
        let makespan = (e.finished_at_ms - e.created_at_ms) as f64 / 1000.0;
        let shards: Vec<f64> = d
            .shards
            .iter()
            .map(|s| s.summary.as_ref().map(|x| x.duration_ms).unwrap_or(0) as f64 / 1000.0)
            .collect();
        let spread = shards.iter().cloned().fold(f64::MIN, f64::max)
            - shards.iter().cloned().fold(f64::MAX, f64::min);
        rows.push((strategy, makespan, spread));
        // Let the aggregator write the history snapshot the next strategies plan from.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let count = rows[0].1;
    let mut out = format!(
        "\n{:<10} {:>12} {:>9} {:>10} {:>22}\n",
        "strategy", "makespan s", "/ LB", "vs count", "shard end spread s"
    );
    for (s, m, spread) in &rows {
        out.push_str(&format!(
            "{:<10} {:>12.1} {:>9.3} {:>9.1}% {:>22.1}\n",
            s,
            m,
            m / lb,
            (m / count - 1.0) * 100.0,
            spread
        ));
    }
    out.push_str(&format!(
        "LB = max(sum / {WORKERS}, longest) = {lb:.1}s; makespan is request to last result, start costs included\n"
    ));
    eprint!("{out}");
}
