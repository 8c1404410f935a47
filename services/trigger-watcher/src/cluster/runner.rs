//! The cluster watch's supervisor: connects, then keeps one watch per resource type and
//! namespace that the catalog's `on.kubernetes` triggers need, re-planned every second.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use assay_bus::{Bus, streams};
use assay_cluster::StatusWriter;
use assay_spec::{Catalog, KubernetesMatch, SharedCatalog};
use async_nats::jetstream::kv;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::dispatch::Dispatcher;
use super::report::Reporter;
use super::started::Started;
use super::stream::{Since, Triggers, WatchKey, WatchTask};
use super::{ClusterOptions, ENABLE_HINT, watches};
use crate::{Error, Result};

/// How often the catalog is compared with the watches running.
const REPLAN_EVERY: Duration = Duration::from_secs(1);
/// Changes waiting for the dispatcher; a full queue slows the watches down.
const QUEUE: usize = 1024;

/// The `on.kubernetes` triggers of a catalog, by name.
pub fn kube_triggers(catalog: &Catalog) -> BTreeMap<String, KubernetesMatch> {
    catalog
        .triggers()
        .filter_map(|t| Some((t.name.clone(), t.spec.on.kubernetes.clone()?)))
        .collect()
}

/// Says, when the cluster watch is off, which triggers it leaves inert and how to turn
/// it on; nothing when there are none.
pub fn warn_if_inert(catalog: &Catalog) {
    let names: Vec<String> = kube_triggers(catalog).into_keys().collect();
    if !names.is_empty() {
        warn!(triggers = %names.join(","), "these triggers have on.kubernetes but the cluster watch is off, so they never fire; {ENABLE_HINT}");
    }
}

/// A connected cluster watch, ready to [`Cluster::run`].
pub struct Cluster {
    client: kube::Client,
    bus: Bus,
    fired: kv::Store,
    options: ClusterOptions,
    /// With `--catalog kubernetes`: writes each trigger's `Watching` condition.
    writer: Option<StatusWriter>,
}

impl Cluster {
    /// Builds the kube client (the given one, else KUBECONFIG or the in-cluster service
    /// account) and opens the fired-keys bucket with its TTL.
    pub async fn connect(bus: &Bus, options: &ClusterOptions) -> Result<Cluster> {
        let client = match &options.client {
            Some(c) => c.clone(),
            None => kube::Client::try_default().await.map_err(|e| {
                Error::Config(format!(
                    "--watch-cluster: cannot build a Kubernetes client ({e}); set KUBECONFIG or run in a Pod with a service account, or drop --watch-cluster"
                ))
            })?,
        };
        if options.fired_ttl.is_zero() {
            return Err(Error::Config(
                "--kube-fired-ttl must be longer than 0s; give e.g. 7d".into(),
            ));
        }
        let fired = bus
            .kv_with_age(streams::KV_KUBE_FIRED, options.fired_ttl)
            .await?;
        Ok(Cluster {
            client,
            bus: bus.clone(),
            fired,
            options: options.clone(),
            writer: None,
        })
    }

    /// Reports each trigger's watch on its `TestTrigger` object through `writer` (the
    /// cluster catalog's), and catches up the rollouts completed after a trigger's object
    /// was created while no watcher saw them.
    pub fn report_to(mut self, writer: Option<StatusWriter>) -> Cluster {
        self.writer = writer;
        self
    }

    /// Watches until `shutdown`.
    pub async fn run(self, catalog: SharedCatalog, shutdown: CancellationToken) {
        let status = self.options.status.clone();
        let started = Started::new(status.clone());
        let follow = tokio::spawn(started.clone().follow(self.bus.clone(), shutdown.clone()));
        let (tx, rx) = mpsc::channel(QUEUE);
        let dispatcher = Dispatcher {
            bus: self.bus.clone(),
            fired: self.fired.clone(),
            started,
            status: status.clone(),
            stop_after_claim: self.options.fault_stop_after_claim,
        };
        let dispatch = tokio::spawn(dispatcher.run(rx, shutdown.clone()));
        let recovery = tokio::spawn(super::dispatch::recover(
            self.bus.clone(),
            self.fired.clone(),
            status.clone(),
            shutdown.clone(),
        ));
        let table: Triggers = Default::default();
        let since: Since = Default::default();
        let mut reporter = self.writer.clone().map(Reporter::new);
        let mut last: Option<BTreeMap<String, KubernetesMatch>> = None;
        let mut running: HashMap<WatchKey, (CancellationToken, JoinHandle<()>)> = HashMap::new();
        info!("cluster watch on");
        loop {
            let now = kube_triggers(&catalog.get());
            if let Some(writer) = &self.writer {
                let created: BTreeMap<String, i64> = now
                    .keys()
                    .filter_map(|t| Some((t.clone(), writer.trigger(t)?.created_ms?)))
                    .collect();
                *since.write().unwrap_or_else(|p| p.into_inner()) = created;
            }
            if last.as_ref() != Some(&now) {
                *table.write().unwrap_or_else(|p| p.into_inner()) = now.clone();
                let plan = watches::plan(now.iter().map(|(n, m)| (n.as_str(), m)));
                for (trigger, why) in &plan.errors {
                    warn!(%trigger, error = %why, "kubernetes trigger cannot be watched; the others are");
                }
                let mut wanted: BTreeMap<WatchKey, Vec<String>> = BTreeMap::new();
                for w in &plan.watches {
                    let namespaces: Vec<Option<String>> = match &w.namespaces {
                        None => vec![None],
                        Some(set) => set.iter().cloned().map(Some).collect(),
                    };
                    for namespace in namespaces {
                        let key = WatchKey {
                            group: w.resource.group.clone(),
                            version: w.resource.version.clone(),
                            kind: w.resource.kind.clone(),
                            namespace,
                            metadata_only: w.metadata_only,
                        };
                        wanted.insert(key, w.triggers.clone());
                    }
                }
                status.set_plan(
                    plan.errors.into_iter().collect(),
                    wanted.iter().map(|(k, t)| (k.name(), t.clone())).collect(),
                );
                running.retain(|key, (stop, _)| {
                    let keep = wanted.contains_key(key);
                    if !keep {
                        info!(watch = %key.name(), "no trigger needs this watch any more");
                        stop.cancel();
                    }
                    keep
                });
                for key in wanted.into_keys() {
                    if running.contains_key(&key) {
                        continue;
                    }
                    let stop = shutdown.child_token();
                    let task = WatchTask {
                        key: key.clone(),
                        client: self.client.clone(),
                        triggers: table.clone(),
                        tx: tx.clone(),
                        status: status.clone(),
                        timeout: self.options.watch_timeout,
                        since: since.clone(),
                        catch_up_within: self.options.fired_ttl,
                        logged: Default::default(),
                    };
                    let handle = tokio::spawn(task.run(stop.clone()));
                    running.insert(key, (stop, handle));
                }
                last = Some(now);
            }
            if let Some(r) = &mut reporter {
                r.tick(&status.watching());
            }
            tokio::select! {
                _ = tokio::time::sleep(REPLAN_EVERY) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        for (_, (stop, handle)) in running {
            stop.cancel();
            let _ = handle.await;
        }
        drop(tx);
        let _ = dispatch.await;
        let _ = recovery.await;
        let _ = follow.await;
        info!("cluster watch stopped");
    }
}
