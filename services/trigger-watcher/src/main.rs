//! `assay-trigger-watcher`: the trigger-watcher as its own process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use assay_auth::TlsFiles;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// mimalloc, whose idle threads give memory back (see `assay_alloc`).
#[global_allocator]
static ALLOC: assay_alloc::MiMalloc = assay_alloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "assay trigger-watcher: HTTP events, signed webhooks, run requests and cron schedules"
)]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "ASSAY_NATS_URL", default_value = assay_bus::DEFAULT_NATS_URL)]
    nats: String,
    /// Directory of TestWorkflow and TestTrigger definitions (`--catalog files`).
    #[arg(long, env = "ASSAY_WORKFLOWS", default_value = ".assay")]
    workflows: PathBuf,
    #[command(flatten)]
    catalog: assay_cluster::CatalogArgs,
    /// HTTP listen address.
    #[arg(
        long,
        env = "ASSAY_TRIGGER_WATCHER__HTTP",
        default_value = "127.0.0.1:7071"
    )]
    http: SocketAddr,
    /// File holding the bearer token every route but /healthz and the webhooks requires
    /// (else $ASSAY_TOKEN; none: open, with a warning).
    #[arg(long, env = "ASSAY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); serve HTTPS with --tls-key.
    #[arg(long, env = "ASSAY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "ASSAY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) of client certificates: /v1/events, /v1/workflows/{name}/run
    /// and /metrics then need one signed by it (mutual TLS); /healthz and the webhooks do not.
    #[arg(long, env = "ASSAY_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    #[command(flatten)]
    watcher: assay_trigger_watcher::WatcherArgs,
}

fn options(args: Args) -> anyhow::Result<assay_trigger_watcher::Options> {
    Ok(assay_trigger_watcher::Options {
        nats: assay_bus::NatsOptions {
            url: args.nats,
            name: "assay-trigger-watcher".into(),
            ..Default::default()
        },
        workflows: args.workflows,
        catalog: args.catalog.source(),
        http: args.http,
        token: assay_auth::load_token(args.token_file.as_deref())?,
        tls: TlsFiles::from_flags(args.tls_cert, args.tls_key, args.tls_client_ca)?,
        webhooks: args
            .watcher
            .webhook_options()
            .context("cannot load a webhook secret")?,
        max_body_bytes: args.watcher.max_body_bytes,
        max_webhook_bytes: args.watcher.max_webhook_bytes,
        max_in_flight: args.watcher.max_in_flight.max(1),
        request_timeout: args.watcher.request_timeout,
        cluster: args.watcher.cluster_options(),
    })
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
    assay_telemetry::init("assay-trigger-watcher", assay_telemetry::DEFAULT_FILTER);
    let options = match options(Args::parse()) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "invalid configuration");
            return ExitCode::FAILURE;
        }
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
