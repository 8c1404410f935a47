//! `assay-executor-launcher`: the launcher as its own process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// mimalloc, whose idle threads give memory back (see `assay_alloc`).
#[global_allocator]
static ALLOC: assay_alloc::MiMalloc = assay_alloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "assay executor-launcher: runs shard jobs as assay-runner processes"
)]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "ASSAY_NATS_URL", default_value = assay_bus::DEFAULT_NATS_URL)]
    nats: String,
    /// Where shards run: `local` (assay-runner child processes).
    #[arg(long, env = "ASSAY_BACKEND", default_value = "local")]
    backend: assay_executor_launcher::BackendKind,
    /// Shards run at once (default: number of CPUs).
    #[arg(long, env = "ASSAY_LAUNCHER__CAPACITY")]
    capacity: Option<usize>,
    /// The assay-runner binary (default: $ASSAY_RUNNER, else next to this executable).
    #[arg(long, env = "ASSAY_RUNNER")]
    runner: Option<PathBuf>,
    /// Runners started ahead of time, waiting for a job (0: start each when its job comes).
    #[arg(long, env = "ASSAY_LAUNCHER__WARM", default_value_t = 2)]
    warm: usize,
    /// How long a job held by a launcher that stopped acknowledging it waits before the
    /// server hands it out again (`30s`, `2m`; progress acks keep a running job held). A
    /// launcher that dies is noticed sooner through its heartbeat.
    #[arg(long, env = "ASSAY_LAUNCHER__ACK_WAIT", default_value = "30s", value_parser = assay_spec::parse_duration)]
    ack_wait: std::time::Duration,
    /// Address of the `/healthz` and `/readyz` server for Kubernetes probes
    /// (`0.0.0.0:8081`); off unless set.
    #[arg(long, env = "ASSAY_HEALTH_ADDR")]
    health_addr: Option<std::net::SocketAddr>,
}

fn main() -> ExitCode {
    match assay_alloc::runtime() {
        Ok(runtime) => runtime.block_on(serve()),
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> ExitCode {
    assay_telemetry::init("assay-executor-launcher", assay_telemetry::DEFAULT_FILTER);
    let args = Args::parse();
    let health_addr = args.health_addr;
    let mut options = assay_executor_launcher::Options {
        nats: assay_bus::NatsOptions {
            url: args.nats,
            name: "assay-executor-launcher".into(),
            ..Default::default()
        },
        backend: args.backend,
        runner: args.runner,
        warm: args.warm,
        ack_wait: args.ack_wait,
        ..Default::default()
    };
    if let Some(c) = args.capacity {
        options.capacity = c.max(1);
    }
    let shutdown = CancellationToken::new();
    if let Err(e) =
        assay_telemetry::health::serve_if(health_addr, &options.nats.health, &shutdown).await
    {
        tracing::error!(error = %e, "cannot serve /healthz and /readyz");
        return ExitCode::FAILURE;
    }
    assay_telemetry::cancel_on_signals(shutdown.clone());
    match assay_executor_launcher::run(options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "executor-launcher failed");
            ExitCode::FAILURE
        }
    }
}
