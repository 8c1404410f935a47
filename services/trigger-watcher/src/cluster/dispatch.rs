//! What becomes of the events the watches find: held for the trigger's settle window,
//! superseding older executions, claimed once in the fired-keys bucket, then published.
//!
//! A key's value says how far its event got: `claimed` followed by the encoded event
//! (the claim), then `published` once the stream acknowledged it. A watcher that dies
//! between the two leaves a `claimed` key; every watcher, at start, publishes the events
//! of such keys again ([`recover`]) and marks them published. Publishing twice is
//! harmless: the event's idempotency key is its dedup key (deterministic: trigger, object
//! uid, event, occurrence), which is the stream's `Nats-Msg-Id` within its duplicate
//! window and, after it, what the scheduler deduplicates events on (its `assay_dedup`
//! cause claim), so one occurrence never starts two executions.

use std::collections::HashMap;
use std::time::Duration;

use assay_bus::{Bus, kv_key, subjects};
use assay_proto::TriggerEvent;
use assay_spec::KUBERNETES_SOURCE;
use async_nats::jetstream::kv;
use futures::TryStreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::fire::Firing;
use super::settle::Debouncer;
use super::started::Started;
use super::status::ClusterStatus;
use super::supersede::supersede;

/// At most this many (trigger, object) pairs wait out their settle window; past it the
/// one due soonest fires early rather than being lost.
const MAX_SETTLING: usize = 10_000;

/// An event a trigger fires for one change of one object.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub trigger: String,
    pub uid: String,
    pub revision: String,
    /// `Deployment shop/payments`, for logs and reasons.
    pub describe: String,
    pub settle: Duration,
    pub supersede: bool,
    pub firing: Firing,
}

/// What the watches send.
#[derive(Debug)]
pub(crate) enum Msg {
    Fire(Box<Candidate>),
    /// The object changed without firing the trigger: an event it holds waits longer.
    Touch {
        trigger: String,
        uid: String,
        settle: Duration,
    },
}

/// Publishes what the watches find.
pub(crate) struct Dispatcher {
    pub bus: Bus,
    pub fired: kv::Store,
    pub started: Started,
    pub status: ClusterStatus,
    /// Fault injection for tests ([`super::ClusterOptions::fault_stop_after_claim`]).
    pub stop_after_claim: bool,
}

/// The value of a key whose event is claimed but not known to be published.
const CLAIMED: &[u8] = b"claimed\n";
/// The value of a key whose event went out.
const PUBLISHED: &[u8] = b"published\n";

/// A claim's value: [`CLAIMED`] and the encoded event.
fn claim_value(event: &TriggerEvent) -> bytes::Bytes {
    let mut v = CLAIMED.to_vec();
    v.extend(event.encode_to_vec());
    v.into()
}

/// The event of a claim that was never marked published; `None` for any other value
/// (published, or written by an older version: the revision alone).
fn unpublished(value: &[u8]) -> Option<TriggerEvent> {
    let body = value.strip_prefix(CLAIMED)?;
    TriggerEvent::decode(body).ok()
}

/// Publishes again the events of claims never marked published (their watcher stopped
/// between claim and publish), once, at start; runs beside the dispatcher.
pub(crate) async fn recover(
    bus: Bus,
    fired: kv::Store,
    status: ClusterStatus,
    shutdown: CancellationToken,
) {
    let mut delays = assay_bus::retry::delays();
    let keys: Vec<String> = loop {
        let listed = async {
            let keys = fired.keys().await.map_err(|e| e.to_string())?;
            keys.try_collect::<Vec<String>>()
                .await
                .map_err(|e| e.to_string())
        };
        match listed.await {
            Ok(keys) => break keys,
            Err(e) => {
                let delay = delays.next().unwrap_or(assay_bus::retry::MAX_DELAY);
                warn!(error = %e, retry_in = ?delay, "cannot list the fired keys to recover unpublished events; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    };
    for key in keys {
        if shutdown.is_cancelled() {
            return;
        }
        let value = match fired.get(&key).await {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => {
                warn!(%key, error = %e, "cannot read a fired key; its event is not recovered now");
                continue;
            }
        };
        let Some(event) = unpublished(&value) else {
            continue;
        };
        let subject = subjects::event(KUBERNETES_SOURCE);
        match bus.publish(subject, &event).await {
            Ok(_) => {
                let _ = fired.put(&key, PUBLISHED.to_vec().into()).await;
                status.count_recovered();
                info!(trigger = %event.trigger, key = %assay_bus::kv_key_decode(&key), "published an event claimed by a watcher that stopped before publishing it");
            }
            Err(e) => {
                warn!(key = %assay_bus::kv_key_decode(&key), error = %e, "cannot publish a recovered event; the next start tries again");
            }
        }
    }
    status.recovery_done();
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl Dispatcher {
    /// Runs until `rx` closes or `shutdown`.
    pub async fn run(self, mut rx: mpsc::Receiver<Msg>, shutdown: CancellationToken) {
        let mut settling: Debouncer<(String, String)> = Debouncer::new(MAX_SETTLING);
        let mut held: HashMap<(String, String), Candidate> = HashMap::new();
        loop {
            let next = settling.next_due();
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    None => return,
                    Some(Msg::Fire(c)) if c.settle.is_zero() => self.emit(*c, &shutdown).await,
                    Some(Msg::Fire(c)) => {
                        let key = (c.trigger.clone(), c.uid.clone());
                        let window = c.settle;
                        held.insert(key.clone(), *c);
                        if let Some(early) = settling.observe(key, now(), window)
                            && let Some(c) = held.remove(&early)
                        {
                            self.emit(c, &shutdown).await;
                        }
                    }
                    Some(Msg::Touch { trigger, uid, settle }) => {
                        let key = (trigger, uid);
                        if held.contains_key(&key) {
                            settling.observe(key, now(), settle);
                        }
                    }
                },
                _ = due => {
                    for key in settling.due(now()) {
                        if let Some(c) = held.remove(&key) {
                            self.emit(c, &shutdown).await;
                        }
                    }
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Supersedes, claims, publishes; retries NATS failures until `shutdown`.
    async fn emit(&self, c: Candidate, shutdown: &CancellationToken) {
        let key = c.firing.key.clone();
        if c.supersede {
            let decision = supersede(&self.started.active(&c.trigger), &c.uid, &c.revision);
            if decision.stale {
                info!(trigger = %c.trigger, object = %c.describe, revision = %c.revision, "an execution for a newer revision exists; not firing for this older one");
                return;
            }
            for execution in decision.cancel {
                let reason = format!(
                    "superseded by revision {} of {} (trigger {}, supersede: true)",
                    c.revision, c.describe, c.trigger
                );
                if self
                    .retry(shutdown, "cancel a superseded execution", || {
                        self.bus.cancel(&execution, &reason)
                    })
                    .await
                    .is_none()
                {
                    return;
                }
                self.started.forget(&execution);
                self.status.count_superseded();
                info!(trigger = %c.trigger, %execution, object = %c.describe, revision = %c.revision, "superseded execution cancelled");
            }
        }
        let claim = || async {
            match self
                .fired
                .create(kv_key(&key), claim_value(&c.firing.event))
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(assay_bus::Error::JetStream {
                    what: format!("claim {key}"),
                    reason: e.to_string(),
                }),
            }
        };
        match self.retry(shutdown, "claim a fired key", claim).await {
            Some(true) => {}
            Some(false) => {
                debug!(%key, "fired before; not again");
                self.status.count_duplicate();
                return;
            }
            None => return,
        }
        if self.stop_after_claim {
            // As if the process died here: no publish, and the key is not given back.
            warn!(%key, "fault injected: stopping after the claim");
            return;
        }
        let subject = subjects::event(KUBERNETES_SOURCE);
        let publish = || self.bus.publish(subject.clone(), &c.firing.event);
        if self
            .retry(shutdown, "publish a kubernetes event", publish)
            .await
            .is_some()
        {
            // Marked so that no later start publishes it again; a failure here only means
            // a harmless duplicate publish then.
            if let Err(e) = self
                .fired
                .put(kv_key(&key), PUBLISHED.to_vec().into())
                .await
            {
                debug!(%key, error = %e, "cannot mark a fired key published");
            }
            self.status.count_fired();
            info!(trigger = %c.trigger, event = %c.firing.event.r#type, object = %c.describe, revision = %c.revision, %key, "kubernetes trigger fired");
        } else {
            // Stopping before it went out: give the key back so the next run may fire it.
            let _ = self.fired.delete(kv_key(&key)).await;
        }
    }

    /// Calls `op` until it succeeds (its value) or `shutdown` (None), waiting the one
    /// retry policy's delays between failures.
    async fn retry<T, F, Fut>(&self, shutdown: &CancellationToken, what: &str, op: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, assay_bus::Error>>,
    {
        let mut delays = assay_bus::retry::delays();
        loop {
            match op().await {
                Ok(v) => return Some(v),
                Err(e) if !e.is_retryable() => {
                    warn!(error = %e, "cannot {what}; giving up");
                    return None;
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(assay_bus::retry::MAX_DELAY);
                    warn!(error = %e, retry_in = ?delay, "cannot {what}; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_carries_its_event_until_it_is_marked_published() {
        let event = TriggerEvent {
            header: Some(assay_bus::header(
                "t",
                "kubernetes/t/u/rollout-complete/2",
                None,
            )),
            trigger: "t".into(),
            r#type: "rollout-complete".into(),
            ..Default::default()
        };
        assert_eq!(unpublished(&claim_value(&event)), Some(event));
        assert_eq!(unpublished(PUBLISHED), None);
        // What older versions wrote: the revision alone.
        assert_eq!(unpublished(b"2"), None);
    }
}
