//! `make bench`: event → first test process started, local backend.
//!
//! The four services run in this process against a real nats-server; each iteration
//! publishes a `RunRequest` and records when the workflow's first process (a `date`
//! writing the wall clock in nanoseconds) started. The baseline, measured in the same
//! harness, is a bare fork/exec of the same shell command. Both are reported as
//! percentiles and as a ratio.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use assay_integration::Sandbox;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn read_stamp(path: &Path) -> Option<u128> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok()
}

async fn wait_stamp(path: &Path, within: Duration) -> Option<u128> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = read_stamp(path) {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn stats(mut ms: Vec<f64>) -> Stats {
    ms.sort_by(|a, b| a.total_cmp(b));
    Stats {
        p50: percentile(&ms, 50.0),
        p90: percentile(&ms, 90.0),
        p99: percentile(&ms, 99.0),
        max: ms.last().copied().unwrap_or(f64::NAN),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let runs: usize = std::env::var("ASSAY_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let warmup = 20;
    let marks = tempfile::tempdir().expect("temp dir");
    let dir = marks.path().display().to_string();
    let command = format!("date +%s%N > {dir}/$ASSAY_EXECUTION_ID");
    let workflow = format!(
        r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: latency}}
spec:
  workingDir: {dir}
  steps:
    - name: first
      run: "{command}"
"#
    );
    let sb = Sandbox::start(&[("latency.yaml", &workflow)]).await;

    // Baseline: fork/exec of the same command from this harness.
    let mut baseline = Vec::with_capacity(runs);
    for i in 0..runs + warmup {
        let id = format!("base-{i}");
        let mark = marks.path().join(&id);
        let t0 = now_ns();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .env("ASSAY_EXECUTION_ID", &id)
            .spawn()
            .expect("spawn sh");
        let _ = child.wait();
        if let Some(stamp) = read_stamp(&mark)
            && i >= warmup
        {
            baseline.push((stamp.saturating_sub(t0)) as f64 / 1e6);
        }
    }

    // assay: RunRequest published → the step's process started.
    let mut assay = Vec::with_capacity(runs);
    let mut missing = 0;
    let started = Instant::now();
    for i in 0..runs + warmup {
        let id = ulid::Ulid::new().to_string();
        let mark = marks.path().join(&id);
        let t0 = now_ns();
        sb.run_with_key("latency", &[], &id, &format!("bench/{id}"))
            .await;
        if std::env::var_os("ASSAY_BENCH_TRACE").is_some() {
            eprintln!("run {id}: published at {t0} ns");
        }
        match wait_stamp(&mark, Duration::from_secs(30)).await {
            Some(stamp) if i >= warmup => assay.push((stamp.saturating_sub(t0)) as f64 / 1e6),
            Some(_) => {}
            None => missing += 1,
        }
        if (i + 1) % 100 == 0 {
            eprintln!(
                "  {} / {} runs ({:.1}s)",
                i + 1,
                runs + warmup,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let a = stats(assay.clone());
    let b = stats(baseline.clone());
    let rows = [
        ("assay event → first process", &a, assay.len()),
        ("bare fork/exec (baseline)", &b, baseline.len()),
    ];
    let mut out = String::new();
    out.push_str(&format!(
        "\n{:<30} {:>6} {:>9} {:>9} {:>9} {:>9}\n",
        "measurement", "runs", "p50 ms", "p90 ms", "p99 ms", "max ms"
    ));
    for (name, s, n) in rows {
        out.push_str(&format!(
            "{:<30} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
            name, n, s.p50, s.p90, s.p99, s.max
        ));
    }
    out.push_str(&format!(
        "ratio assay/baseline: p50 {:.1}x, p99 {:.1}x   (bar: p50 <= 5 ms, p99 <= 20 ms: {})\n",
        a.p50 / b.p50,
        a.p99 / b.p99,
        if a.p50 <= 5.0 && a.p99 <= 20.0 {
            "met"
        } else {
            "NOT met"
        }
    ));
    if missing > 0 {
        out.push_str(&format!(
            "{missing} runs never started their process within 30 s\n"
        ));
    }
    eprint!("{out}");
    drop(sb);
    if missing > 0 {
        std::process::exit(1);
    }
}
