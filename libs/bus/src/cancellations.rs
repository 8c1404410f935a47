//! Following the `assay_cancelled` bucket: its current keys, then every change, through
//! NATS outages. The launcher kills runners by it and the aggregator ends executions no
//! launcher would pick up.

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{Bus, kv_key_decode, streams};

/// A change of the bucket: an execution was cancelled with a reason, or its key went
/// (aged out or purged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancellation {
    Cancelled { execution: String, reason: String },
    Forgotten { execution: String },
}

impl Bus {
    /// Calls `on` for every key of `assay_cancelled` and then every change, until
    /// `shutdown`; reconnects (with the one retry policy, [`crate::retry::policy`]) when the
    /// watch cannot be opened or ends.
    pub async fn follow_cancellations(
        &self,
        shutdown: &CancellationToken,
        mut on: impl FnMut(Cancellation),
    ) {
        let mut delays = crate::retry::delays();
        while !shutdown.is_cancelled() {
            let watch = match self.kv(streams::KV_CANCELLED).await {
                Ok(kv) => kv.watch_with_history(">").await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let mut watch = match watch {
                Ok(w) => w,
                Err(e) => {
                    let delay = delays.next().unwrap_or(crate::retry::MAX_DELAY);
                    warn!(error = %e, retry_in = ?delay, "cannot follow cancellations; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    continue;
                }
            };
            delays = crate::retry::delays();
            loop {
                let entry = tokio::select! {
                    e = watch.next() => e,
                    _ = shutdown.cancelled() => return,
                };
                let Some(Ok(entry)) = entry else { break };
                let execution = kv_key_decode(&entry.key);
                on(
                    if entry.operation == async_nats::jetstream::kv::Operation::Put {
                        Cancellation::Cancelled {
                            execution,
                            reason: String::from_utf8_lossy(&entry.value).to_string(),
                        }
                    } else {
                        Cancellation::Forgotten { execution }
                    },
                );
            }
        }
    }
}
