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
    about = "assay executor-launcher: runs shard jobs as assay-runner processes or Pods"
)]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "ASSAY_NATS_URL", default_value = assay_bus::DEFAULT_NATS_URL)]
    nats: String,
    /// Where shards run: `local` (assay-runner child processes) or `kubernetes` (one Pod per
    /// shard attempt).
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
    /// kubernetes backend: namespace of the shard Pods.
    #[arg(long, env = "ASSAY_LAUNCHER__NAMESPACE", default_value = "default")]
    namespace: String,
    /// kubernetes backend: the image holding assay-runner (the Pods' init container copies
    /// it out; also the main image of a workflow that names no container image).
    #[arg(long, env = "ASSAY_RUNNER_IMAGE")]
    runner_image: Option<String>,
    /// kubernetes backend: the path of assay-runner inside --runner-image.
    #[arg(long, env = "ASSAY_LAUNCHER__RUNNER_PATH", default_value = assay_executor_launcher::backend::kubernetes::DEFAULT_RUNNER_PATH)]
    runner_path: String,
    /// kubernetes backend: a Secret with the runners' own NATS user (keys `user` and
    /// `password`), given to the runner container only.
    #[arg(long, env = "ASSAY_LAUNCHER__RUNNER_NATS_SECRET")]
    runner_nats_secret: Option<String>,
    /// kubernetes backend: the NATS URL runners in Pods connect to, when it is not the
    /// launcher's own `--nats` (a launcher outside the cluster, or NATS known by another
    /// name inside it).
    #[arg(long, env = "ASSAY_LAUNCHER__RUNNER_NATS_URL")]
    runner_nats_url: Option<String>,
    /// kubernetes backend: retries of a shard after infrastructure failures (OOMKilled,
    /// evicted, image pull, node lost, unschedulable, Pod deleted), each away from the node
    /// that failed.
    #[arg(long, env = "ASSAY_LAUNCHER__INFRA_RETRIES", default_value_t = 2)]
    infra_retries: u32,
    /// kubernetes backend: how long a Pod may stay unschedulable before its shard errors
    /// (`5m`).
    #[arg(long, env = "ASSAY_LAUNCHER__UNSCHEDULABLE_LIMIT", default_value = "5m", value_parser = assay_spec::parse_duration)]
    unschedulable_limit: std::time::Duration,
    /// kubernetes backend: how often Pods of ended executions are looked for and deleted.
    #[arg(long, env = "ASSAY_LAUNCHER__REAP_EVERY", default_value = "15s", value_parser = assay_spec::parse_duration)]
    reap_every: std::time::Duration,
    /// Operator (JWT) mode: a file holding an account signing key seed (`SA...`, from `nsc
    /// edit account --sk generate`) the launcher mints each runner's own NATS user with
    /// (only its shard's subjects, expiring with its execution). Needs --runner-account.
    #[arg(
        long,
        env = "ASSAY_LAUNCHER__RUNNER_SIGNING_KEY",
        requires = "runner_account"
    )]
    runner_signing_key: Option<PathBuf>,
    /// Operator (JWT) mode: the public key (`A...`) of the account the signing key belongs
    /// to. Needs --runner-signing-key.
    #[arg(
        long,
        env = "ASSAY_LAUNCHER__RUNNER_ACCOUNT",
        requires = "runner_signing_key"
    )]
    runner_account: Option<String>,
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
    let runner_signer = match (&args.runner_signing_key, &args.runner_account) {
        (Some(path), Some(account)) => {
            match assay_bus::runner_jwt::Signer::from_file(path, account) {
                Ok(signer) => Some(std::sync::Arc::new(signer)),
                Err(e) => {
                    tracing::error!(error = %e, "executor-launcher cannot start");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
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
        kube: assay_executor_launcher::KubeOptions {
            namespace: args.namespace,
            runner_image: args.runner_image.unwrap_or_default(),
            runner_path: args.runner_path,
            runner_nats_secret: args.runner_nats_secret,
            runner_nats_url: args.runner_nats_url,
            infra_retries: args.infra_retries,
            unschedulable_limit: args.unschedulable_limit,
            ..Default::default()
        },
        reap_every: args.reap_every,
        runner_signer,
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
