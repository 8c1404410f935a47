//! Launcher liveness, so a shard whose launcher died runs again within seconds instead of
//! after the job's ack wait (30 s).
//!
//! Each launcher instance (a fresh ULID per start) puts its key in `assay_launchers` every
//! [`LAUNCHER_BEAT`]; an instance whose last put is older than [`LAUNCHER_EXPIRY`] (by the
//! server's timestamp) is gone. Each
//! running attempt has an entry in `assay_attempts` naming its instance and the reply
//! subject of its job delivery. Every launcher looks over the attempts as often as it
//! beats: an attempt whose instance has no key any more is orphaned (the launcher was
//! killed, or its machine lost), and the looker naks its delivery, so the server hands the
//! job out again at once as the next attempt, and removes the entry. A launcher restarted
//! after a crash is a new instance, so it recovers its previous incarnation's attempts too.
//!
//! A launcher that is only paused past the expiry is treated like a dead one, as the ack
//! wait already does: its job runs again as a new attempt, and the shard's latest attempt
//! is the one that counts.

use assay_bus::{Bus, kv_key, kv_key_decode, streams};
use async_nats::jetstream::kv;
use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Error, Result};

pub(crate) use assay_bus::streams::{LAUNCHER_BEAT, LAUNCHER_EXPIRY};

/// How long the heartbeat bucket keeps a gone launcher's last beat (garbage collection).
const BEATS_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

/// This launcher instance's heartbeat and attempt records. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Liveness {
    instance: String,
    bus: Bus,
    beats: kv::Store,
    attempts: kv::Store,
}

/// What `assay_attempts` holds for one running attempt: `<instance>\n<reply subject>`.
fn encode(instance: &str, reply: &str) -> String {
    format!("{instance}\n{reply}")
}

fn decode(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?;
    let (instance, reply) = text.split_once('\n')?;
    (!instance.is_empty() && !reply.is_empty()).then(|| (instance.to_string(), reply.to_string()))
}

/// An attempt's entry, removed when the attempt ends here (dropped).
pub(crate) struct Recorded {
    attempts: kv::Store,
    key: String,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let attempts = self.attempts.clone();
        let key = std::mem::take(&mut self.key);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = attempts.delete(&key).await {
                    debug!(key = %kv_key_decode(&key), error = %e, "attempt record not removed; it ages out");
                }
            });
        }
    }
}

impl Liveness {
    /// Opens the buckets (creating them) and puts the first beat.
    pub(crate) async fn start(bus: &Bus) -> Result<Liveness> {
        let beats = bus.kv_with_age(streams::KV_LAUNCHERS, BEATS_KEPT).await?;
        let attempts = bus.kv(streams::KV_ATTEMPTS).await?;
        let live = Liveness {
            instance: ulid::Ulid::new().to_string(),
            bus: bus.clone(),
            beats,
            attempts,
        };
        live.beat().await?;
        info!(instance = %live.instance, "launcher instance registered");
        Ok(live)
    }

    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    async fn beat(&self) -> Result<()> {
        self.beats
            .put(&self.instance, assay_bus::now_ms().to_string().into())
            .await
            .map_err(|e| Error::Liveness(format!("heartbeat: {e}")))?;
        Ok(())
    }

    /// Records a running attempt of this instance; the entry goes when the guard drops.
    pub(crate) async fn record(
        &self,
        execution: &str,
        shard: u32,
        attempt: u32,
        reply: Option<&str>,
    ) -> Option<Recorded> {
        let reply = reply?;
        let key = kv_key(&format!("{execution}/{shard}/{attempt}"));
        match self
            .attempts
            .put(&key, encode(&self.instance, reply).into())
            .await
        {
            Ok(_) => Some(Recorded {
                attempts: self.attempts.clone(),
                key,
            }),
            Err(e) => {
                // Recovery then waits for the ack wait, as before.
                warn!(execution, shard, attempt, error = %e, "cannot record the running attempt");
                None
            }
        }
    }

    /// Beats and looks for orphaned attempts until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(LAUNCHER_BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            if let Err(e) = self.beat().await {
                warn!(error = %e, "launcher heartbeat failed; peers may take over this launcher's shards");
            }
            match self.requeue_orphans().await {
                Ok(0) => {}
                Ok(n) => info!(attempts = n, "orphaned shard attempts handed out again"),
                Err(e) => debug!(error = %e, "cannot look for orphaned attempts"),
            }
        }
        // A clean stop: the beat goes at once, the attempts were nak'ed by the consumer.
        let _ = self.beats.delete(&self.instance).await;
    }

    /// Whether `instance` beat within [`LAUNCHER_EXPIRY`], by the time written in its last
    /// beat (the bucket's own age-out is only garbage collection: its timer is too coarse to
    /// tell within seconds; launchers on several machines need clocks in step, as NTP keeps
    /// them, within a fraction of the expiry). Unreadable or unknown: alive.
    async fn beating(&self, instance: &str) -> bool {
        match self.beats.get(instance).await {
            Ok(Some(value)) => match std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
            {
                Some(last) => assay_bus::now_ms() - last < LAUNCHER_EXPIRY.as_millis() as i64,
                None => true,
            },
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Naks the deliveries of attempts whose launcher instance is gone; returns how many.
    pub(crate) async fn requeue_orphans(&self) -> Result<usize> {
        let keys: Vec<String> = self
            .attempts
            .keys()
            .await
            .map_err(|e| Error::Liveness(format!("list attempts: {e}")))?
            .try_collect()
            .await
            .map_err(|e| Error::Liveness(format!("list attempts: {e}")))?;
        let mut alive: std::collections::HashMap<String, bool> = Default::default();
        let mut requeued = 0;
        for key in keys {
            let Ok(Some(entry)) = self.attempts.entry(&key).await else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let Some((instance, reply)) = decode(&entry.value) else {
                let _ = self.attempts.delete(&key).await;
                continue;
            };
            if instance == self.instance {
                continue;
            }
            let is_alive = match alive.get(&instance) {
                Some(a) => *a,
                None => {
                    let a = self.beating(&instance).await;
                    alive.insert(instance.clone(), a);
                    a
                }
            };
            if is_alive {
                continue;
            }
            // Only the looker that removes the entry naks, so a delivery is handed out once.
            if self
                .attempts
                .delete_expect_revision(&key, Some(entry.revision))
                .await
                .is_err()
            {
                continue;
            }
            let attempt = kv_key_decode(&key);
            match self.bus.client().publish(reply, "-NAK".into()).await {
                Ok(()) => {
                    info!(attempt = %attempt, gone = %instance, "launcher gone; its shard job handed out again");
                    requeued += 1;
                }
                Err(e) => {
                    warn!(attempt = %attempt, error = %e, "cannot hand an orphaned job out again; it returns after the ack wait")
                }
            }
        }
        if requeued > 0 {
            let _ = self.bus.client().flush().await;
        }
        Ok(requeued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_records_round_trip_and_refuse_garbage() {
        let v = encode("01ABC", "$JS.ACK.ASSAY_SHARDS.executor-launcher.1.2.3.4.5");
        assert_eq!(
            decode(v.as_bytes()),
            Some((
                "01ABC".to_string(),
                "$JS.ACK.ASSAY_SHARDS.executor-launcher.1.2.3.4.5".to_string()
            ))
        );
        assert_eq!(decode(b"no-newline"), None);
        assert_eq!(decode(b"\nreply"), None);
        assert_eq!(decode(b"inst\n"), None);
        assert_eq!(decode(&[0xff, b'\n', b'x']), None);
    }
}
