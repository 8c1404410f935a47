//! `bench-sharding`: simulated makespan of the `count`, `duration` and `queue` strategies
//! against the lower bound `LB = max(sum / m, longest)`, over log-normal, uniform and bimodal
//! suites, with and without history. `duration` is the shipped planner
//! ([`assay_plan::duration_plan`]: a longest-first head per shard, then a shared tail of the
//! shortest tests drained from the queue). Prints the table and the quality bars; exits
//! non-zero when a bar fails.
#![allow(clippy::print_stdout)]

use std::f64::consts::PI;
use std::process::ExitCode;

use assay_plan::sim::{self, Config};
use assay_plan::{Estimate, History, Strategy, TestId, lower_bound};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const SEED: u64 = 0x5eed_a55a_7000_0003;
const SIZES: [usize; 3] = [200, 1000, 5000];
const WORKERS: [usize; 4] = [4, 8, 16, 32];
const PER_BATCH_OVERHEAD_MS: f64 = 5.0;
const PER_SHARD_START_MS: f64 = 50.0;
/// History estimates are the true duration times (1 + noise), noise uniform in ±30 %.
const NOISE: f64 = 0.30;
/// Seeded trials per cell; the table shows their mean.
const TRIALS: usize = 10;

const BAR_DURATION_HIST: f64 = 1.05;
const BAR_QUEUE_NOHIST: f64 = 1.15;
const BAR_IMPROVEMENT: f64 = 0.25;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Median 1 s, σ = 1 (mean ≈ 1.65 s, heavy right tail).
    LogNormal,
    /// Uniform in 0.1 s ..= 2 s.
    Uniform,
    /// 90 % short (0.5–1.5 s), 10 % long (24–36 s).
    Bimodal,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::LogNormal => "lognormal",
            Kind::Uniform => "uniform",
            Kind::Bimodal => "bimodal",
        }
    }

    fn heavy_tailed(self) -> bool {
        matches!(self, Kind::LogNormal | Kind::Bimodal)
    }

    fn sample(self, rng: &mut StdRng) -> f64 {
        match self {
            Kind::LogNormal => (1000f64.ln() + standard_normal(rng)).exp(),
            Kind::Uniform => rng.random_range(100.0..=2000.0),
            Kind::Bimodal => {
                if rng.random::<f64>() < 0.9 {
                    rng.random_range(500.0..=1500.0)
                } else {
                    rng.random_range(24_000.0..=36_000.0)
                }
            }
        }
    }
}

/// Box–Muller.
fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

struct Row {
    kind: Kind,
    n: usize,
    m: usize,
    /// Mean LB over the trials.
    lb_ms: f64,
    /// Mean makespan / LB for: count, duration+hist, duration-nohist, queue+hist,
    /// queue-nohist, and (diagnostic) duration with exact estimates.
    ratios: [f64; 6],
    /// Mean of a tighter lower bound on the optimum, over LB: the m-th and (m+1)-th longest
    /// tests must share a shard, so OPT >= their sum (when n > m).
    opt_bound: f64,
}

impl Row {
    fn count(&self) -> f64 {
        self.ratios[0]
    }
    fn duration_hist(&self) -> f64 {
        self.ratios[1]
    }
    fn queue_nohist(&self) -> f64 {
        self.ratios[4]
    }
    fn duration_exact(&self) -> f64 {
        self.ratios[5]
    }
    /// How much shorter the best of duration/queue with history is than count.
    fn improvement(&self) -> f64 {
        1.0 - self.ratios[1].min(self.ratios[3]) / self.count()
    }
    fn cell(&self) -> String {
        format!("{} n={} m={}", self.kind.name(), self.n, self.m)
    }
}

fn main() -> ExitCode {
    println!("bench-sharding: simulated makespan / LB, LB = max(sum / m, longest)");
    println!(
        "per-batch overhead {PER_BATCH_OVERHEAD_MS} ms (queue), per-shard start {PER_SHARD_START_MS} ms (all strategies); \
         history = true x (1 + uniform noise in ±{:.0} %), no history = empty",
        NOISE * 100.0
    );
    println!(
        "suites listed in shuffled order; lognormal σ=1 median 1 s; uniform 0.1–2 s; bimodal 90 % 0.5–1.5 s, 10 % 24–36 s"
    );
    println!(
        "duration: longest-first head per shard + shared tail queue of the shortest tests ({:.0} % of the estimated work)",
        assay_plan::TAIL_FRACTION * 100.0
    );
    println!("each cell is the mean of {TRIALS} seeded trials (StdRng seed {SEED:#x})");
    println!();

    let mut rows = Vec::new();
    let mut rng = StdRng::seed_from_u64(SEED);
    for kind in [Kind::LogNormal, Kind::Uniform, Kind::Bimodal] {
        for n in SIZES {
            let mut sums = [[0.0f64; 8]; WORKERS.len()];
            for _ in 0..TRIALS {
                let mut suite: Vec<(TestId, f64)> = (0..n)
                    .map(|i| {
                        (
                            format!("{}/test_{i:05}", kind.name()),
                            kind.sample(&mut rng),
                        )
                    })
                    .collect();
                suite.shuffle(&mut rng);
                let noisy: History = suite
                    .iter()
                    .map(|(id, d)| {
                        let estimate = d * (1.0 + rng.random_range(-NOISE..=NOISE));
                        (id.clone(), Estimate::exact(estimate))
                    })
                    .collect();
                let exact: History = suite
                    .iter()
                    .map(|(id, d)| (id.clone(), Estimate::exact(*d)))
                    .collect();
                let none = History::new();
                let durations: Vec<f64> = suite.iter().map(|(_, d)| *d).collect();
                for (sum, m) in sums.iter_mut().zip(WORKERS) {
                    let config = Config {
                        m,
                        per_batch_overhead_ms: PER_BATCH_OVERHEAD_MS,
                        per_shard_start_ms: PER_SHARD_START_MS,
                    };
                    let lb = lower_bound(&durations, m);
                    let pair = if durations.len() > m {
                        let mut sorted = durations.clone();
                        sorted.sort_by(|a, b| b.total_cmp(a));
                        sorted[m - 1] + sorted[m]
                    } else {
                        0.0
                    };
                    let run = |h: &History, s: Strategy| sim::makespan(&suite, h, s, &config) / lb;
                    let trial = [
                        run(&none, Strategy::Count),
                        run(&noisy, Strategy::Duration),
                        run(&none, Strategy::Duration),
                        run(&noisy, Strategy::Queue),
                        run(&none, Strategy::Queue),
                        run(&exact, Strategy::Duration),
                        lb,
                        lb.max(pair) / lb,
                    ];
                    for (acc, v) in sum.iter_mut().zip(trial) {
                        *acc += v;
                    }
                }
            }
            for (sum, m) in sums.iter().zip(WORKERS) {
                let mean = sum.map(|v| v / TRIALS as f64);
                rows.push(Row {
                    kind,
                    n,
                    m,
                    lb_ms: mean[6],
                    ratios: [mean[0], mean[1], mean[2], mean[3], mean[4], mean[5]],
                    opt_bound: mean[7],
                });
            }
        }
    }

    print_table(&rows);
    println!();
    if summarize(&rows) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<10} {:>5} {:>3} {:>8} | {:>6} {:>13} {:>15} {:>10} {:>12} | {:>8} | {:>9}",
        "suite",
        "n",
        "m",
        "LB (s)",
        "count",
        "duration+hist",
        "duration-nohist",
        "queue+hist",
        "queue-nohist",
        "vs count",
        "dur-exact"
    );
    println!("{}", "-".repeat(118));
    for row in rows {
        let [count, dh, dn, qh, qn, exact] = row.ratios;
        println!(
            "{:<10} {:>5} {:>3} {:>8.1} | {:>6.3} {:>13.3} {:>15.3} {:>10.3} {:>12.3} | {:>7.1}% | {:>9.3}",
            row.kind.name(),
            row.n,
            row.m,
            row.lb_ms / 1000.0,
            count,
            dh,
            dn,
            qh,
            qn,
            -100.0 * row.improvement(),
            exact,
        );
    }
    println!(
        "ratios: mean makespan / LB. vs count: best of duration+hist / queue+hist relative to count. \
         dur-exact (diagnostic): duration with noise-free estimates."
    );
}

/// Prints one line per bar (and the cells that miss it); true when all pass.
fn summarize(rows: &[Row]) -> bool {
    let mut all = true;
    let mut bar = |pass: bool, line: String| {
        all &= pass;
        println!("{} {line}", if pass { "PASS" } else { "FAIL" });
    };

    let (worst, mean) = stats(rows.iter().map(Row::duration_hist));
    let over: Vec<&Row> = rows
        .iter()
        .filter(|r| r.duration_hist() > BAR_DURATION_HIST)
        .collect();
    bar(
        over.is_empty(),
        format!(
            "duration with history <= {BAR_DURATION_HIST} x LB in every cell: worst {worst:.3}, mean {mean:.3}, {}/{} cells over",
            over.len(),
            rows.len()
        ),
    );
    for r in &over {
        println!(
            "       {}: {:.3} (same plan on exact estimates: {:.3}; {:.1} tests per shard{})",
            r.cell(),
            r.duration_hist(),
            r.duration_exact(),
            r.n as f64 / r.m as f64,
            if r.opt_bound > BAR_DURATION_HIST {
                format!(
                    "; no plan can meet the bar here: OPT >= {:.3} x LB, the {}th and {}th longest tests share a shard",
                    r.opt_bound,
                    r.m,
                    r.m + 1
                )
            } else {
                String::new()
            }
        );
    }

    let (worst, mean) = stats(rows.iter().map(Row::queue_nohist));
    let over: Vec<&Row> = rows
        .iter()
        .filter(|r| r.queue_nohist() > BAR_QUEUE_NOHIST)
        .collect();
    bar(
        over.is_empty(),
        format!(
            "queue without history <= {BAR_QUEUE_NOHIST} x LB in every cell: worst {worst:.3}, mean {mean:.3}, {}/{} cells over",
            over.len(),
            rows.len()
        ),
    );
    for r in &over {
        println!(
            "       {}: {:.3} ({:.1} tests per worker)",
            r.cell(),
            r.queue_nohist(),
            r.n as f64 / r.m as f64
        );
    }

    let heavy: Vec<&Row> = rows.iter().filter(|r| r.kind.heavy_tailed()).collect();
    let improvements: Vec<f64> = heavy.iter().map(|r| r.improvement()).collect();
    let mean = improvements.iter().sum::<f64>() / improvements.len().max(1) as f64;
    let worst = improvements.iter().copied().fold(f64::INFINITY, f64::min);
    let under = improvements
        .iter()
        .filter(|&&i| i < BAR_IMPROVEMENT)
        .count();
    // Even a makespan of exactly LB is not 25 % shorter than count when count < LB / 0.75.
    let reachable: Vec<&&Row> = heavy
        .iter()
        .filter(|r| r.count() >= 1.0 / (1.0 - BAR_IMPROVEMENT))
        .collect();
    let reachable_met = reachable
        .iter()
        .filter(|r| r.improvement() >= BAR_IMPROVEMENT)
        .count();
    bar(
        mean >= BAR_IMPROVEMENT,
        format!(
            "heavy-tailed suites, best of duration/queue (with history) >= {:.0} % shorter than count, on the mean: \
             mean {:.1} %, worst {:.1} %, {under}/{} cells under; met in {reachable_met}/{} cells where count >= {:.3} x LB",
            BAR_IMPROVEMENT * 100.0,
            mean * 100.0,
            worst * 100.0,
            heavy.len(),
            reachable.len(),
            1.0 / (1.0 - BAR_IMPROVEMENT),
        ),
    );
    all
}

/// (worst, mean).
fn stats(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut worst, mut sum, mut count) = (0.0f64, 0.0, 0usize);
    for v in values {
        worst = worst.max(v);
        sum += v;
        count += 1;
    }
    (worst, sum / count.max(1) as f64)
}
