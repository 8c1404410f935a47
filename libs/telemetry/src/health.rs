//! Liveness and readiness over HTTP, for Kubernetes probes.
//!
//! `/healthz` answers 200 `ok` while the process serves HTTP at all. `/readyz` answers 200
//! `ready` only when the service finished its set-up (streams, buckets and whatever else its
//! start can fail on) and every
//! condition registered with [`Health::add_check`] holds (its NATS connections are up);
//! otherwise 503 with the first reason that fails, so that `kubectl describe pod` says why.
//!
//! Services other than trigger-watcher serve these on `--health-addr` / `ASSAY_HEALTH_ADDR`
//! (off unless set; the Kubernetes manifests set `0.0.0.0:8081`); trigger-watcher adds them
//! to its own HTTP router.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// The environment variable naming the address of the health server.
pub const HEALTH_ADDR_ENV: &str = "ASSAY_HEALTH_ADDR";

/// The port the Kubernetes manifests give the health server (`0.0.0.0:8081`).
pub const DEFAULT_HEALTH_PORT: u16 = 8081;

type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A service's readiness: cheap to clone, every clone sees the same state.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    set_up: AtomicBool,
    checks: Mutex<Vec<Check>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("ready", &self.readiness().is_ok())
            .finish()
    }
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// Records that set-up finished; readiness then depends on the checks alone.
    pub fn set_ready(&self) {
        self.inner.set_up.store(true, Ordering::Release);
    }

    /// Adds a condition evaluated on every readiness probe (`Err(reason)`: not ready); it
    /// is kept as long as this `Health` (and its clones) live.
    pub fn add_check(&self, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        self.checks().push(Box::new(check));
    }

    /// `Ok` when set-up finished and every check holds, else the first reason it is not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.inner.set_up.load(Ordering::Acquire) {
            return Err("starting: streams, buckets and consumers are not set up yet".to_string());
        }
        self.checks().iter().try_for_each(|check| check())
    }

    fn checks(&self) -> std::sync::MutexGuard<'_, Vec<Check>> {
        self.inner.checks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `/healthz` and `/readyz` for `health`, to serve alone or merge into a service's router
/// (of any state type `S`).
pub fn router<S: Clone + Send + Sync + 'static>(health: Health) -> Router<S> {
    Router::<Health>::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn readyz(State(health): State<Health>) -> (StatusCode, String) {
    match health.readiness() {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        ),
    }
}

/// Binds `addr` and serves [`router`] on it until `shutdown`; returns the bound address
/// (port 0 picks a free one). Fails only when the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, router::<()>(health))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(addr = %bound, error = %e, "health server failed");
        }
    });
    tracing::info!(addr = %bound, "health server listening (/healthz, /readyz)");
    Ok(bound)
}

/// [`serve`] when `addr` is given (`--health-addr`), nothing otherwise.
pub async fn serve_if(
    addr: Option<SocketAddr>,
    health: &Health,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    if let Some(addr) = addr {
        serve(addr, health.clone(), shutdown.clone()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_set_up_then_as_the_checks_say() {
        let health = Health::new();
        assert!(health.readiness().unwrap_err().contains("starting"));
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        health.add_check(move || {
            if flag.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("disconnected".into())
            }
        });
        health.clone().set_ready();
        assert_eq!(health.readiness(), Ok(()));
        up.store(false, Ordering::Relaxed);
        assert_eq!(health.readiness(), Err("disconnected".to_string()));
    }
}
