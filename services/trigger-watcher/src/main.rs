//! `assay-trigger-watcher`: the trigger-watcher as its own process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "assay trigger-watcher: HTTP events, run requests and cron schedules"
)]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "ASSAY_NATS_URL", default_value = "nats://127.0.0.1:4223")]
    nats: String,
    /// Directory of TestWorkflow and TestTrigger definitions.
    #[arg(long, env = "ASSAY_WORKFLOWS", default_value = ".assay")]
    workflows: PathBuf,
    /// HTTP listen address.
    #[arg(
        long,
        env = "ASSAY_TRIGGER_WATCHER__HTTP",
        default_value = "127.0.0.1:7071"
    )]
    http: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    assay_telemetry::init("assay-trigger-watcher", assay_telemetry::DEFAULT_FILTER);
    let args = Args::parse();
    let options = assay_trigger_watcher::Options {
        nats: assay_bus::NatsOptions {
            url: args.nats,
            name: "assay-trigger-watcher".into(),
            ..Default::default()
        },
        workflows: args.workflows,
        http: args.http,
    };
    let shutdown = CancellationToken::new();
    assay_telemetry::cancel_on_signals(shutdown.clone());
    match assay_trigger_watcher::run(options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "trigger-watcher failed");
            ExitCode::FAILURE
        }
    }
}
