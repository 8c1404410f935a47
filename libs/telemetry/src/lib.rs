//! Logging set-up shared by every assay binary.
//!
//! `RUST_LOG` filters (default `info` for assay crates, `warn` for the rest); pretty,
//! human-readable lines on a terminal, one JSON object per line with `ASSAY_LOG_FORMAT=json`.
//! OTLP export is not wired yet: trace context (`traceparent`) already travels in every
//! NATS message header, so an exporter can be added without changing the contract.
//!
//! [`health`]: `/healthz` and `/readyz` for Kubernetes probes.

pub mod health;

use tracing_subscriber::EnvFilter;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pretty,
    Json,
}

impl Format {
    /// `ASSAY_LOG_FORMAT=json` selects JSON; anything else is pretty.
    pub fn from_env() -> Format {
        match std::env::var("ASSAY_LOG_FORMAT").as_deref() {
            Ok("json") => Format::Json,
            _ => Format::Pretty,
        }
    }
}

/// Installs the global subscriber, writing to stderr. `default_filter` applies when
/// `RUST_LOG` is unset. Safe to call twice (the second call does nothing).
pub fn init(service: &str, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours())
        .with_target(false);
    let result = match Format::from_env() {
        Format::Json => builder.json().flatten_event(true).try_init(),
        Format::Pretty => builder.compact().try_init(),
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
}

/// Colours only on a terminal, and never with `NO_COLOR` set.
fn colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// The default filter for a service binary: its own crates at `info`, dependencies at `warn`.
pub const DEFAULT_FILTER: &str = "warn,assay=info,assay_bus=info,assay_scheduler=info,assay_trigger_watcher=info,assay_executor_launcher=info,assay_result_aggregator=info,assay_cli=info";

/// Cancels `token` on the first SIGINT or SIGTERM; a second signal exits the process at once.
pub fn cancel_on_signals(token: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        for n in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                tracing::info!("shutting down (signal again to exit at once)");
                token.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
}
