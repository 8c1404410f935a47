//! Cancelled executions that nothing else would end. A cancellation (`assay cancel`,
//! fail-fast, `concurrency: replace`) is a key in `assay_cancelled`; launchers kill the
//! execution's runners and end its shards *cancelled* when they pick their jobs up. An
//! execution with no job a launcher will pick up — waiting for a concurrency slot, a job
//! refused as too large, launchers gone — would stay queued. So the aggregator follows the
//! bucket too and ends, as *cancelled* with the reason, any cancelled execution that is
//! not over `grace` after the cancellation (the shards that did report keep their ends).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assay_bus::Bus;
use assay_bus::cancellations::Cancellation;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How long a cancellation whose execution is not in the store yet (its plan is late) is
/// remembered.
const UNKNOWN_KEPT_MS: i64 = 3_600_000;

/// Cancellations seen and not yet settled: execution → (reason, when seen, Unix ms).
#[derive(Clone, Default)]
pub(crate) struct Cancelled {
    seen: Arc<Mutex<HashMap<String, (String, i64)>>>,
}

impl Cancelled {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, i64)>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the bucket (its current keys, then every new one) until `shutdown`.
    pub(crate) async fn follow(self, bus: Bus, shutdown: CancellationToken) {
        bus.follow_cancellations(&shutdown, |change| {
            if let Cancellation::Cancelled { execution, reason } = change {
                self.lock()
                    .entry(execution)
                    .or_insert((reason, assay_bus::now_ms()));
            }
        })
        .await;
    }

    /// Cancellations seen at least `grace` ago.
    fn due(&self, grace: Duration, now: i64) -> Vec<(String, String, i64)> {
        let cutoff = now - grace.as_millis() as i64;
        self.lock()
            .iter()
            .filter(|(_, (_, seen))| *seen <= cutoff)
            .map(|(id, (reason, seen))| (id.clone(), reason.clone(), *seen))
            .collect()
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}

impl crate::Aggregator {
    /// Ends, as *cancelled*, every execution cancelled at least `grace` ago that is still
    /// not over; returns how many.
    pub async fn end_cancelled(&self, grace: Duration) -> crate::Result<usize> {
        let now = assay_bus::now_ms();
        let mut ended = 0;
        for (id, reason, seen) in self.cancelled.due(grace, now) {
            match self.store.execution_update(&id).await? {
                None if now - seen < UNKNOWN_KEPT_MS => continue,
                None => {}
                Some(u) if u.status().is_terminal() => {}
                Some(_) => {
                    let why = format!("cancelled ({reason}); no shard reported an end");
                    if self
                        .store
                        .finalize(&id, assay_proto::ExecutionStatus::Cancelled, &why, now)
                        .await?
                    {
                        info!(execution = %id, %reason, "cancelled execution ended");
                        // Its final update goes out with the sweep's follow-ups (retried
                        // until it does).
                        self.followups
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(id.clone(), reason);
                        ended += 1;
                    }
                }
            }
            self.cancelled.forget(&id);
        }
        Ok(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cancellations_older_than_the_grace_are_due() {
        let c = Cancelled::default();
        c.lock().insert("old".into(), ("why".into(), 1_000));
        c.lock().insert("new".into(), ("why".into(), 9_500));
        let due = c.due(Duration::from_secs(1), 10_000);
        assert_eq!(due, [("old".to_string(), "why".to_string(), 1_000)]);
        c.forget("old");
        assert!(c.due(Duration::from_secs(1), 10_000).is_empty());
    }
}
