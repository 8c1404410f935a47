//! The trigger-watcher: turns outside happenings into bus messages.
//!
//! - HTTP: `POST /v1/events` (a generic event → `TriggerEvent` on `assay.v1.events.<source>`)
//!   and `POST /v1/workflows/{name}/run` (→ `RunRequest` on `assay.v1.runs.requested`);
//! - cron: every `TestTrigger` with `on.cron` fires a `TriggerEvent` (source `cron`) at each
//!   scheduled time, in the trigger's time zone; the idempotency key is the trigger and the
//!   scheduled instant, so several replicas fire once;
//! - signed webhooks: `POST /v1/webhooks/{github,gitlab,generic}` (→ `TriggerEvent` on
//!   `assay.v1.events.<github|gitlab|webhook>`, see [`webhook`]), each delivery id published
//!   once within the replay window;
//! - the bus itself: any NATS client may publish `TriggerEvent`s directly (see README).
//!
//! Every HTTP route but `/healthz` and the webhooks needs the bearer token when one is
//! configured; the server speaks TLS when given a certificate and key.
//!
//! - Kubernetes: with `--watch-cluster`, every `TestTrigger` with `on.kubernetes` fires a
//!   `TriggerEvent` (source `kubernetes`) when the objects it names change (see
//!   [`cluster`]); without it such triggers are inert and a warning at start and at each
//!   reload names the flag.

pub mod args;
pub mod cluster;
mod cron;
mod http;
pub mod metrics;
mod tls;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use assay_auth::{Bearer, Secret, TlsFiles};
use assay_bus::{Bus, NatsOptions};
use assay_cluster::CatalogSource;
use assay_spec::SharedCatalog;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use args::{DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_WEBHOOK_BYTES, WatcherArgs};
pub use cluster::{ClusterOptions, ClusterStatus};
pub use cron::next_fires;
pub use http::{AppState, EventBody, parse_event_body, router};
pub use webhook::Provider;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bus(#[from] assay_bus::Error),
    #[error("{0}")]
    Spec(#[from] assay_spec::Error),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error(transparent)]
    Auth(#[from] assay_auth::Error),
    #[error("{0}")]
    Config(String),
    /// The cluster catalog cannot be read (RBAC, CRDs, kubeconfig).
    #[error(transparent)]
    Catalog(#[from] assay_cluster::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The component named on the Events the trigger-watcher records.
pub const COMPONENT: &str = "assay-trigger-watcher";

/// Trigger-watcher settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub nats: NatsOptions,
    /// Directory of `TestWorkflow` and `TestTrigger` definitions (reloaded when it changes);
    /// unused with [`CatalogSource::Kubernetes`].
    pub workflows: PathBuf,
    /// Where workflows and triggers come from: the `workflows` directory (default) or the
    /// cluster's `TestWorkflow`/`TestTrigger` objects (the scheduler writes their `Valid`
    /// condition; with the cluster watch on, the trigger-watcher writes each trigger's
    /// `Watching` condition and Warning Events).
    pub catalog: CatalogSource,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Bearer token every HTTP route but `/healthz` and the webhooks requires; open (with a
    /// warning at start) when `None`.
    pub token: Option<Secret>,
    /// Serve HTTPS with this certificate and key; with a client CA, the bearer-protected
    /// routes also need a client certificate signed by it.
    pub tls: Option<TlsFiles>,
    pub webhooks: WebhookOptions,
    /// Largest body of `POST /v1/events` and `POST /v1/workflows/{name}/run`
    /// (`--max-body-bytes`); a larger one is answered 413 in JSON.
    pub max_body_bytes: usize,
    /// Largest webhook body (`--max-webhook-bytes`).
    pub max_webhook_bytes: usize,
    /// HTTP requests handled at once; more are answered 503 at once.
    pub max_in_flight: usize,
    /// An HTTP request not answered within this is answered 503.
    pub request_timeout: std::time::Duration,
    /// The cluster watch for `on.kubernetes` triggers (`--watch-cluster`); off by default.
    pub cluster: ClusterOptions,
}

/// [`Options::max_in_flight`] by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;
/// [`Options::request_timeout`] by default.
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Default for Options {
    fn default() -> Self {
        Options {
            nats: NatsOptions::default(),
            workflows: PathBuf::from(".assay"),
            catalog: CatalogSource::default(),
            http: SocketAddr::from(([127, 0, 0, 1], 7071)),
            token: None,
            tls: None,
            webhooks: WebhookOptions::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_webhook_bytes: DEFAULT_MAX_WEBHOOK_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            cluster: ClusterOptions::default(),
        }
    }
}

/// Webhook secrets and settings. A provider without a secret is off (its endpoint answers
/// 404 saying how to turn it on).
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// GitHub's webhook secret (`X-Hub-Signature-256`).
    pub github_secret: Option<Secret>,
    /// GitLab's secret token (`X-Gitlab-Token`).
    pub gitlab_token: Option<Secret>,
    /// The generic endpoint's HMAC-SHA256 secret.
    pub generic_secret: Option<Secret>,
    /// Header carrying the generic endpoint's signature (`sha256=<hex>` or bare hex).
    pub generic_signature_header: String,
    /// Header carrying the generic endpoint's delivery id.
    pub generic_delivery_header: String,
    /// A delivery id seen within this window is not published again.
    pub replay_window: Duration,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            github_secret: None,
            gitlab_token: None,
            generic_secret: None,
            generic_signature_header: "X-Signature-256".into(),
            generic_delivery_header: "X-Delivery-Id".into(),
            replay_window: Duration::from_secs(24 * 3600),
        }
    }
}

impl WebhookOptions {
    /// Says which flag or variable turns `provider` on.
    pub fn how_to_enable(provider: Provider) -> &'static str {
        match provider {
            Provider::GitHub => {
                "set --github-secret-file (ASSAY_TRIGGER_WATCHER__GITHUB_SECRET_FILE) or ASSAY_TRIGGER_WATCHER__GITHUB_SECRET"
            }
            Provider::GitLab => {
                "set --gitlab-token-file (ASSAY_TRIGGER_WATCHER__GITLAB_TOKEN_FILE) or ASSAY_TRIGGER_WATCHER__GITLAB_TOKEN"
            }
            Provider::Generic => {
                "set --webhook-secret-file (ASSAY_TRIGGER_WATCHER__WEBHOOK_SECRET_FILE) or ASSAY_TRIGGER_WATCHER__WEBHOOK_SECRET"
            }
        }
    }

    fn validate(&self) -> Result<()> {
        for (flag, name) in [
            ("--webhook-signature-header", &self.generic_signature_header),
            ("--webhook-delivery-header", &self.generic_delivery_header),
        ] {
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(Error::Config(format!(
                    "{flag} \"{name}\" is not a valid HTTP header name; use letters, digits and '-', e.g. X-Signature-256"
                )));
            }
        }
        if self.replay_window.is_zero() {
            return Err(Error::Config(
                "the webhook replay window must be longer than 0s; give e.g. --replay-window 24h"
                    .into(),
            ));
        }
        Ok(())
    }

    fn enabled(&self) -> Vec<&'static str> {
        [
            (Provider::GitHub, self.github_secret.is_some()),
            (Provider::GitLab, self.gitlab_token.is_some()),
            (Provider::Generic, self.generic_secret.is_some()),
        ]
        .into_iter()
        .filter_map(|(p, on)| on.then_some(p.as_str()))
        .collect()
    }
}

/// Runs the trigger-watcher until `shutdown`.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<()> {
    options.webhooks.validate()?;
    let tls = options
        .tls
        .as_ref()
        .map(|t| t.server_config(&[b"h2", b"http/1.1"]))
        .transpose()?;
    let bearer = Bearer::new(options.token.clone());
    bearer.warn_if_open(
        "assay-trigger-watcher",
        "/v1/events, /v1/workflows/{name}/run and /metrics",
    );
    let (catalog, writer) = match &options.catalog {
        CatalogSource::Files => (SharedCatalog::load(&options.workflows)?, None),
        // Kept current by its own task; the directory watch below then only waits. The
        // writer records each trigger's `Watching` condition (`Valid` is the scheduler's).
        source => {
            let report = if options.cluster.enabled {
                assay_cluster::Report::Own(COMPONENT)
            } else {
                assay_cluster::Report::Nothing
            };
            let opened =
                assay_cluster::open_with(source, &options.workflows, report, &shutdown).await?;
            tokio::spawn(opened.keeper);
            (opened.catalog, opened.status)
        }
    };
    let bus = Bus::connect(&options.nats, &shutdown).await?;
    bus.ensure_topology().await?;
    let deliveries = bus
        .webhook_deliveries(options.webhooks.replay_window)
        .await?;
    let cluster = if options.cluster.enabled {
        Some(
            cluster::Cluster::connect(&bus, &options.cluster)
                .await?
                .report_to(writer),
        )
    } else {
        cluster::warn_if_inert(&catalog.get());
        None
    };
    let listener = tokio::net::TcpListener::bind(options.http)
        .await
        .map_err(|e| Error::Listen {
            addr: options.http,
            reason: e.to_string(),
        })?;
    let addr = listener.local_addr().unwrap_or(options.http);
    let webhooks = options.webhooks.enabled();
    if webhooks.is_empty() {
        info!("no webhook secret configured: /v1/webhooks/* are off");
    }
    let app = http::router(AppState {
        bus: bus.clone(),
        catalog: catalog.clone(),
        bearer,
        client_cert_required: options.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        metrics: match &cluster {
            Some(_) => metrics::Metrics::default().with_cluster(options.cluster.status.clone()),
            None => metrics::Metrics::default(),
        },
        webhooks: Arc::new(options.webhooks.clone()),
        deliveries,
        limits: http::BodyLimits {
            api: options.max_body_bytes.max(1),
            webhook: options.max_webhook_bytes.max(1),
        },
        in_flight: Arc::new(tokio::sync::Semaphore::new(options.max_in_flight.max(1))),
        request_timeout: options.request_timeout,
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Set-up that can fail is done: /readyz may answer 200 (while NATS stays connected).
    options.nats.health.set_ready();
    let server = {
        let shutdown = shutdown.clone();
        async move {
            match tls {
                Some(config) => {
                    tls::serve(listener, app, config, shutdown).await;
                    Ok(())
                }
                None => axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await
                    .map_err(|e| Error::Listen {
                        addr,
                        reason: e.to_string(),
                    }),
            }
        }
    };
    let inert = cluster.is_none();
    let watch = catalog
        .clone()
        .watch(Duration::from_secs(2), shutdown.clone(), move |c| {
            if inert {
                cluster::warn_if_inert(c);
            }
        });
    let kube = {
        let (catalog, shutdown) = (catalog.clone(), shutdown.clone());
        async move {
            if let Some(c) = cluster {
                c.run(catalog, shutdown).await;
            }
        }
    };
    let cron = cron::run(bus, catalog, shutdown.clone());
    if webhooks.is_empty() {
        info!(%scheme, http = %addr, "trigger-watcher running");
    } else {
        info!(%scheme, http = %addr, webhooks = %webhooks.join(","), "trigger-watcher running");
    }
    let (served, (), (), ()) = tokio::join!(server, watch, cron, kube);
    if let Err(e) = &served {
        warn!(error = %e, "http server failed");
    }
    served?;
    info!("trigger-watcher stopped");
    Ok(())
}
