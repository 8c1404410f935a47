//! `assay-scheduler`: the scheduler as its own process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// mimalloc, whose idle threads give memory back (see `assay_alloc`).
#[global_allocator]
static ALLOC: assay_alloc::MiMalloc = assay_alloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "assay scheduler: plans executions and shards")]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "ASSAY_NATS_URL", default_value = assay_bus::DEFAULT_NATS_URL)]
    nats: String,
    /// Directory of TestWorkflow and TestTrigger definitions (`--catalog files`).
    #[arg(long, env = "ASSAY_WORKFLOWS", default_value = ".assay")]
    workflows: PathBuf,
    #[command(flatten)]
    catalog: assay_cluster::CatalogArgs,
    /// Trigger events (and run requests) handled at once; also the consumers'
    /// `max_ack_pending`. Each event waits for a few JetStream acks in turn, so throughput is
    /// about this many events per round-trip time.
    #[arg(long, env = "ASSAY_SCHEDULER_CONCURRENCY", default_value_t = assay_scheduler::Options::default().concurrency)]
    concurrency: usize,
    /// Timeout of an execution whose workflow sets none (`24h`, `90m`; `0s`: no limit), so
    /// that nothing stays queued or running forever.
    #[arg(long, env = "ASSAY_SCHEDULER__MAX_EXECUTION_TIME", default_value = "24h", value_parser = assay_spec::parse_duration)]
    max_execution_time: std::time::Duration,
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
    assay_telemetry::init("assay-scheduler", assay_telemetry::DEFAULT_FILTER);
    let args = Args::parse();
    let health_addr = args.health_addr;
    let options = assay_scheduler::Options {
        nats: assay_bus::NatsOptions {
            url: args.nats,
            name: "assay-scheduler".into(),
            ..Default::default()
        },
        workflows: args.workflows,
        catalog: args.catalog.source(),
        concurrency: args.concurrency.max(1),
        max_execution_time: args.max_execution_time,
    };
    let shutdown = CancellationToken::new();
    if let Err(e) =
        assay_telemetry::health::serve_if(health_addr, &options.nats.health, &shutdown).await
    {
        tracing::error!(error = %e, "cannot serve /healthz and /readyz");
        return ExitCode::FAILURE;
    }
    assay_telemetry::cancel_on_signals(shutdown.clone());
    match assay_scheduler::run(options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "scheduler failed");
            ExitCode::FAILURE
        }
    }
}
