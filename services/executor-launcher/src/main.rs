//! `assay-executor-launcher`: the launcher as its own process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// mimalloc (built without transparent huge pages, which would raise the idle RSS by
/// several MiB): glibc malloc was a third of the services' CPU under load (bench-load).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "assay executor-launcher: runs shard jobs as assay-runner processes"
)]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "ASSAY_NATS_URL", default_value = assay_bus::DEFAULT_NATS_URL)]
    nats: String,
    /// Shards run at once (default: number of CPUs).
    #[arg(long, env = "ASSAY_LAUNCHER__CAPACITY")]
    capacity: Option<usize>,
    /// The assay-runner binary (default: $ASSAY_RUNNER, else next to this executable).
    #[arg(long)]
    runner: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    assay_telemetry::init("assay-executor-launcher", assay_telemetry::DEFAULT_FILTER);
    let args = Args::parse();
    let mut options = assay_executor_launcher::Options {
        nats: assay_bus::NatsOptions {
            url: args.nats,
            name: "assay-executor-launcher".into(),
            ..Default::default()
        },
        runner: args.runner,
        ..Default::default()
    };
    if let Some(c) = args.capacity {
        options.capacity = c.max(1);
    }
    let shutdown = CancellationToken::new();
    assay_telemetry::cancel_on_signals(shutdown.clone());
    match assay_executor_launcher::run(options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "executor-launcher failed");
            ExitCode::FAILURE
        }
    }
}
