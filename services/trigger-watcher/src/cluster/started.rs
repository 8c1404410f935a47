//! The executions the triggers started, per object and revision, for `supersede: true`.
//!
//! Followed from the bus, not asked of another service: the scheduler's plan records
//! (`assay.v1.plans.<execution>`, carrying the provenance: trigger, and the event's `uid`
//! and `revision` labels) add executions, the aggregator's execution updates
//! (`assay.v1.executions.>`) remove the ones that ended. Both are read from the last
//! message per subject on, so a restarted watcher knows what ran before. An execution
//! planned a moment ago may not be known yet when a newer revision fires.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use assay_bus::{Bus, BusMessage, streams, subjects};
use assay_proto::{Execution, ExecutionUpdate, Provenance};
use assay_spec::{KUBERNETES_SOURCE, kube_labels};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::status::ClusterStatus;
use super::supersede;

/// Ended executions remembered, so that a plan record read after the update that ended
/// its execution (the two streams are read apart) does not bring it back.
const ENDED_KEPT: usize = 100_000;

/// Trigger → its executions still queued or running (as far as the bus said).
#[derive(Clone, Default)]
pub(crate) struct Started {
    inner: Arc<Mutex<Inner>>,
    status: ClusterStatus,
}

#[derive(Default)]
struct Inner {
    active: BTreeMap<String, Vec<supersede::Started>>,
    ended: HashSet<String>,
    ended_order: VecDeque<String>,
}

impl Started {
    pub fn new(status: ClusterStatus) -> Started {
        Started {
            inner: Default::default(),
            status,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The executions `trigger` started that have not ended.
    pub fn active(&self, trigger: &str) -> Vec<supersede::Started> {
        self.lock().active.get(trigger).cloned().unwrap_or_default()
    }

    /// Drops an execution for good (ended or cancelled).
    pub fn forget(&self, execution: &str) {
        let mut inner = self.lock();
        for list in inner.active.values_mut() {
            list.retain(|s| s.execution != execution);
        }
        inner.active.retain(|_, l| !l.is_empty());
        if inner.ended.insert(execution.to_string()) {
            inner.ended_order.push_back(execution.to_string());
            while inner.ended_order.len() > ENDED_KEPT {
                if let Some(old) = inner.ended_order.pop_front() {
                    inner.ended.remove(&old);
                }
            }
        }
    }

    fn record(&self, execution: &str, ended: bool, provenance: Option<&Provenance>) {
        if ended {
            return self.forget(execution);
        }
        let Some(p) = provenance.filter(|p| p.source == KUBERNETES_SOURCE && !p.trigger.is_empty())
        else {
            return;
        };
        let label = |k: &str| p.labels.get(k).cloned().unwrap_or_default();
        let entry = supersede::Started {
            execution: execution.to_string(),
            uid: label(kube_labels::UID),
            revision: label(kube_labels::REVISION),
        };
        let mut inner = self.lock();
        if inner.ended.contains(execution) {
            return;
        }
        let list = inner.active.entry(p.trigger.clone()).or_default();
        if !list.iter().any(|s| s.execution == execution) {
            list.push(entry);
            self.status.count_tracked();
        }
    }

    /// Follows plan records and execution updates until `shutdown`.
    pub async fn follow(self, bus: Bus, shutdown: CancellationToken) {
        let plans = self.clone().follow_one::<Execution>(
            bus.clone(),
            streams::STATUS,
            subjects::PLANS_ALL,
            |e| (e.id.clone(), e.status().is_terminal(), e.provenance.clone()),
            shutdown.clone(),
        );
        let updates = self.follow_one::<ExecutionUpdate>(
            bus,
            streams::EXECUTIONS,
            subjects::EXECUTIONS_ALL,
            |u| {
                (
                    u.execution_id.clone(),
                    u.status().is_terminal(),
                    u.provenance.clone(),
                )
            },
            shutdown,
        );
        tokio::join!(plans, updates);
    }

    async fn follow_one<M: BusMessage + Default>(
        self,
        bus: Bus,
        stream: &'static str,
        filter: &'static str,
        read: impl Fn(&M) -> (String, bool, Option<Provenance>),
        shutdown: CancellationToken,
    ) {
        let mut delays = assay_bus::retry::delays();
        while !shutdown.is_cancelled() {
            let opened = async {
                let s = bus
                    .jetstream()
                    .get_stream(stream)
                    .await
                    .map_err(|e| e.to_string())?;
                let c = s
                    .create_consumer(pull::OrderedConfig {
                        filter_subject: filter.to_string(),
                        deliver_policy: DeliverPolicy::LastPerSubject,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                c.messages().await.map_err(|e| e.to_string())
            }
            .await;
            let mut messages = match opened {
                Ok(m) => m,
                Err(e) => {
                    let delay = delays.next().unwrap_or(assay_bus::retry::MAX_DELAY);
                    warn!(%stream, error = %e, retry_in = ?delay, "cannot follow executions for supersede; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    continue;
                }
            };
            delays = assay_bus::retry::delays();
            loop {
                let next = tokio::select! {
                    n = messages.next() => n,
                    _ = shutdown.cancelled() => return,
                };
                let Some(Ok(msg)) = next else { break };
                let limit = streams::MAX_MESSAGE_BYTES as usize;
                if let Ok(m) = assay_bus::decode::<M>(&msg.subject, &msg.payload, limit) {
                    let (id, ended, provenance) = read(&m);
                    self.record(&id, ended, provenance.as_ref());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provenance(trigger: &str, uid: &str, revision: &str) -> Provenance {
        Provenance {
            trigger: trigger.into(),
            source: KUBERNETES_SOURCE.into(),
            labels: [("uid", uid), ("revision", revision)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn started_executions_are_kept_per_trigger_until_they_end() {
        let s = Started::default();
        s.record("e1", false, Some(&provenance("t", "u", "3")));
        s.record("e1", false, Some(&provenance("t", "u", "3")));
        s.record("e2", false, Some(&provenance("t", "u", "4")));
        s.record(
            "x",
            false,
            Some(&Provenance {
                source: "cron".into(),
                trigger: "t".into(),
                ..Default::default()
            }),
        );
        assert_eq!(s.active("t").len(), 2);
        s.record("e1", true, None);
        // Its plan record read late does not bring it back.
        s.record("e1", false, Some(&provenance("t", "u", "3")));
        let left: Vec<String> = s.active("t").into_iter().map(|e| e.execution).collect();
        assert_eq!(left, ["e2"]);
        assert!(s.active("other").is_empty());
    }
}
