//! Cancelled executions, followed from the `assay_cancelled` bucket (its current keys, then
//! every new one), with a generation counter that wakes running shards to look.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use assay_bus::Bus;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The cancelled executions this launcher knows of. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Cancellations {
    reasons: Arc<Mutex<HashMap<String, String>>>,
    generation: Arc<watch::Sender<u64>>,
}

impl Cancellations {
    /// Why `execution` was cancelled, when it was.
    pub(crate) fn reason(&self, execution: &str) -> Option<String> {
        self.reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(execution)
            .cloned()
    }

    /// A receiver that changes with every cancellation from now on.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Returns why `execution` was cancelled once a cancellation seen through `changes`
    /// names it (a cancellation before `changes` was subscribed is not waited for).
    pub(crate) async fn wait_for(
        &self,
        execution: &str,
        changes: &mut watch::Receiver<u64>,
    ) -> String {
        loop {
            if changes.changed().await.is_err() {
                // No more cancellations can come.
                std::future::pending::<()>().await;
            }
            if let Some(reason) = self.reason(execution) {
                return reason;
            }
        }
    }

    /// Follows the cancellations bucket until `shutdown`.
    pub(crate) async fn follow(self, bus: Bus, shutdown: CancellationToken) {
        use assay_bus::cancellations::Cancellation;
        bus.follow_cancellations(&shutdown, |change| match change {
            // Aged out or purged: forget it.
            Cancellation::Forgotten { execution } => {
                self.reasons
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&execution);
            }
            Cancellation::Cancelled { execution, reason } => {
                info!(execution = %execution, %reason, "execution cancelled");
                self.reasons
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(execution, reason);
                self.generation.send_modify(|g| *g += 1);
            }
        })
        .await;
    }
}
