//! `assay-result-aggregator`: the aggregator as its own process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "assay result-aggregator: stores results, serves the query API"
)]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "ASSAY_NATS_URL", default_value = "nats://127.0.0.1:4223")]
    nats: String,
    /// SQLite database file.
    #[arg(
        long,
        env = "ASSAY_AGGREGATOR__DATABASE",
        default_value = ".assay/data/results.db"
    )]
    database: PathBuf,
    /// gRPC listen address.
    #[arg(long, env = "ASSAY_AGGREGATOR__GRPC", default_value = "127.0.0.1:7070")]
    grpc: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    assay_telemetry::init("assay-result-aggregator", assay_telemetry::DEFAULT_FILTER);
    let args = Args::parse();
    let options = assay_result_aggregator::Options {
        nats: assay_bus::NatsOptions {
            url: args.nats,
            name: "assay-result-aggregator".into(),
            ..Default::default()
        },
        database: args.database,
        grpc: args.grpc,
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    assay_telemetry::cancel_on_signals(shutdown.clone());
    match assay_result_aggregator::run(options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "result-aggregator failed");
            ExitCode::FAILURE
        }
    }
}
