//! The trigger-watcher: turns outside happenings into bus messages.
//!
//! - HTTP: `POST /v1/events` (a generic event → `TriggerEvent` on `assay.v1.events.<source>`)
//!   and `POST /v1/workflows/{name}/run` (→ `RunRequest` on `assay.v1.runs.requested`);
//! - cron: every `TestTrigger` with `on.cron` fires a `TriggerEvent` (source `cron`) at each
//!   scheduled time, in the trigger's time zone; the idempotency key is the trigger and the
//!   scheduled instant, so several replicas fire once;
//! - the bus itself: any NATS client may publish `TriggerEvent`s directly (see README).
//!
//! Kubernetes watches come with their own issue.

mod cron;
mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use assay_bus::{Bus, NatsOptions};
use assay_spec::SharedCatalog;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use cron::next_fires;
pub use http::{EventBody, parse_event_body, router};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bus(#[from] assay_bus::Error),
    #[error("{0}")]
    Spec(#[from] assay_spec::Error),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Trigger-watcher settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub nats: NatsOptions,
    /// Directory of `TestWorkflow` and `TestTrigger` definitions.
    pub workflows: PathBuf,
    /// HTTP listen address.
    pub http: SocketAddr,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nats: NatsOptions::default(),
            workflows: PathBuf::from(".assay"),
            http: SocketAddr::from(([127, 0, 0, 1], 7071)),
        }
    }
}

/// Runs the trigger-watcher until `shutdown`.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<()> {
    let catalog = SharedCatalog::load(&options.workflows)?;
    let bus = Bus::connect(&options.nats, &shutdown).await?;
    bus.ensure_topology().await?;
    let listener = tokio::net::TcpListener::bind(options.http)
        .await
        .map_err(|e| Error::Listen {
            addr: options.http,
            reason: e.to_string(),
        })?;
    let addr = listener.local_addr().unwrap_or(options.http);
    let app = http::router(bus.clone(), catalog.clone());
    let server = {
        let shutdown = shutdown.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
                .map_err(|e| Error::Listen {
                    addr,
                    reason: e.to_string(),
                })
        }
    };
    let watch = catalog
        .clone()
        .watch(Duration::from_secs(2), shutdown.clone(), |_| {});
    let cron = cron::run(bus, catalog, shutdown.clone());
    info!(http = %addr, "trigger-watcher running");
    let (served, (), ()) = tokio::join!(server, watch, cron);
    served?;
    info!("trigger-watcher stopped");
    Ok(())
}
