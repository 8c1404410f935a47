//! `assay-scheduler`: the scheduler as its own process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(version, about = "assay scheduler: plans executions and shards")]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "ASSAY_NATS_URL", default_value = "nats://127.0.0.1:4223")]
    nats: String,
    /// Directory of TestWorkflow and TestTrigger definitions.
    #[arg(long, env = "ASSAY_WORKFLOWS", default_value = ".assay")]
    workflows: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    assay_telemetry::init("assay-scheduler", assay_telemetry::DEFAULT_FILTER);
    let args = Args::parse();
    let options = assay_scheduler::Options {
        nats: assay_bus::NatsOptions {
            url: args.nats,
            name: "assay-scheduler".into(),
            ..Default::default()
        },
        workflows: args.workflows,
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    assay_telemetry::cancel_on_signals(shutdown.clone());
    match assay_scheduler::run(options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "scheduler failed");
            ExitCode::FAILURE
        }
    }
}
