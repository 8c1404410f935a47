//! `assay-result-aggregator`: the aggregator as its own process.

use std::net::SocketAddr;
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
    about = "assay result-aggregator: stores results, serves the query API"
)]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "ASSAY_NATS_URL", default_value = assay_bus::DEFAULT_NATS_URL)]
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
    /// File holding the bearer token every gRPC call must carry (else $ASSAY_TOKEN; none:
    /// open, with a warning).
    #[arg(long, env = "ASSAY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); serve gRPC over TLS with --tls-key.
    #[arg(long, env = "ASSAY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "ASSAY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) of client certificates: every gRPC client must present one
    /// signed by it (mutual TLS).
    #[arg(long, env = "ASSAY_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// How long an ended execution is kept, with its shards and test cases (`30d`, `12h`;
    /// `0s` keeps everything). The duration history of each test is kept regardless.
    #[arg(long, env = "ASSAY_AGGREGATOR__RETENTION", default_value = "30d", value_parser = assay_spec::parse_duration)]
    retention: std::time::Duration,
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
    assay_telemetry::init("assay-result-aggregator", assay_telemetry::DEFAULT_FILTER);
    let args = Args::parse();
    let health_addr = args.health_addr;
    let auth = assay_auth::load_token(args.token_file.as_deref()).and_then(|token| {
        Ok((
            token,
            assay_auth::TlsFiles::from_flags(args.tls_cert, args.tls_key, args.tls_client_ca)?,
        ))
    });
    let (token, tls) = match auth {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::FAILURE;
        }
    };
    let options = assay_result_aggregator::Options {
        nats: assay_bus::NatsOptions {
            url: args.nats,
            name: "assay-result-aggregator".into(),
            ..Default::default()
        },
        database: args.database,
        grpc: args.grpc,
        token,
        tls,
        retention: args.retention,
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    if let Err(e) =
        assay_telemetry::health::serve_if(health_addr, &options.nats.health, &shutdown).await
    {
        tracing::error!(error = %e, "cannot serve /healthz and /readyz");
        return ExitCode::FAILURE;
    }
    assay_telemetry::cancel_on_signals(shutdown.clone());
    match assay_result_aggregator::run(options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "result-aggregator failed");
            ExitCode::FAILURE
        }
    }
}
