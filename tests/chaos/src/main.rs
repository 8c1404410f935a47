//! `assay-chaos`: runs the fault harness and prints the fault and invariant tables. Exits 1
//! when an invariant broke (the seed and the replay command are printed), 2 when the harness
//! itself could not run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "assay fault harness: real processes, seeded faults and targeted scenarios, eight invariants checked at the end"
)]
struct Args {
    /// Seed of the fault and load schedule (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// The short run of `make test` (24 faults) instead of the nightly size (1,000).
    #[arg(long)]
    short: bool,
    /// Faults to inject.
    #[arg(long)]
    faults: Option<usize>,
    /// Mean gap between faults, in milliseconds.
    #[arg(long)]
    gap_ms: Option<u64>,
    /// Mean gap between triggers, in milliseconds.
    #[arg(long)]
    trigger_ms: Option<u64>,
    /// Test cases in the suite.
    #[arg(long)]
    tests: Option<usize>,
    /// Shards per execution.
    #[arg(long)]
    shards: Option<u32>,
    /// What one test sleeps, in milliseconds.
    #[arg(long)]
    test_ms: Option<u64>,
    /// Execution timeout of the workflows, in seconds.
    #[arg(long)]
    timeout_s: Option<u64>,
    /// Targeted scenarios to run after the faults, comma-separated, or `none` (default: all
    /// of held-batches, launcher-replaced, scheduler-before-plan).
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<String>>,
    /// Rounds of each targeted scenario (default: 5, 1 with --short).
    #[arg(long)]
    rounds: Option<usize>,
    /// Directory of the service binaries (default: next to this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep the run directory even when every invariant held.
    #[arg(long)]
    keep: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args
        .seed
        .unwrap_or_else(|| assay_bus::now_ms() as u64 % 1_000_000);
    let mut cfg = if args.short {
        assay_chaos::Config::short(seed)
    } else {
        assay_chaos::Config::nightly(seed)
    };
    if let Some(n) = args.faults {
        cfg.faults = n;
    }
    if let Some(ms) = args.gap_ms {
        cfg.mean_gap = Duration::from_millis(ms);
    }
    if let Some(ms) = args.trigger_ms {
        cfg.trigger_every = Duration::from_millis(ms);
    }
    if let Some(n) = args.tests {
        cfg.tests = n;
    }
    if let Some(n) = args.shards {
        cfg.shards = n.max(1);
    }
    if let Some(ms) = args.test_ms {
        cfg.test_ms = ms;
    }
    if let Some(s) = args.timeout_s {
        cfg.timeout = Duration::from_secs(s);
    }
    if let Some(names) = args.scenarios {
        cfg.scenarios.clear();
        for name in names.iter().filter(|n| *n != "none" && !n.is_empty()) {
            match assay_chaos::plan::Scenario::parse(name) {
                Ok(s) if !cfg.scenarios.contains(&s) => cfg.scenarios.push(s),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("assay-chaos: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    if let Some(n) = args.rounds {
        cfg.rounds = n;
    }
    cfg.bin_dir = args.bin_dir;
    cfg.keep = args.keep;
    eprintln!("assay-chaos seed {seed}; replay: {}", cfg.replay_command());
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("assay-chaos: cannot handle SIGTERM: {e}");
            return ExitCode::from(2);
        }
    };
    // On a signal the run is dropped: its processes are killed (kill on drop) and the
    // database made writable again before exiting.
    let outcome = tokio::select! {
        r = assay_chaos::run(cfg) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    match outcome {
        Ok(report) => {
            #[allow(clippy::print_stdout)]
            {
                print!("{}", report.render());
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("assay-chaos could not run (seed {seed}): {e:#}");
            ExitCode::from(2)
        }
    }
}
