//! One watch: a resource type in one namespace (or all), listed and watched with
//! `kube::runtime::watcher`, each change diffed against the last state seen and handed to
//! the triggers that name the type.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use assay_spec::{KubeEvent, KubernetesMatch};
use futures::StreamExt;
use futures::stream::BoxStream;
use kube::api::{Api, DynamicObject, GroupVersionKind, PartialObjectMeta};
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::dispatch::{Candidate, Msg};
use super::status::ClusterStatus;
use super::{changes, fire, object};

/// The triggers with `on.kubernetes` by name, as the catalog has them now.
pub(crate) type Triggers = Arc<RwLock<BTreeMap<String, KubernetesMatch>>>;
/// When each trigger's `TestTrigger` object was created (ms since the epoch), for the
/// triggers that came from the cluster: what a rollout seen at a first list is caught up
/// against ([`changes::caught_up`]).
pub(crate) type Since = Arc<RwLock<BTreeMap<String, i64>>>;

/// What one watch covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct WatchKey {
    pub group: String,
    pub version: String,
    pub kind: String,
    /// None: every namespace (and cluster-scoped kinds).
    pub namespace: Option<String>,
    /// Watched as `PartialObjectMetadata` (Secrets).
    pub metadata_only: bool,
}

impl WatchKey {
    /// `Deployment apps/v1 in shop`: the kind first (see [`ClusterStatus::lists`]).
    pub fn name(&self) -> String {
        let gv = if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        };
        match &self.namespace {
            Some(ns) => format!("{} {gv} in {ns}", self.kind),
            None => format!("{} {gv}", self.kind),
        }
    }

    /// The triggers (name, match) this watch serves now: same type, and a namespace this
    /// watch covers.
    fn triggers(&self, all: &Triggers) -> Vec<(String, KubernetesMatch)> {
        let all = all.read().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .filter(|(_, m)| {
                m.resource().is_ok_and(|r| {
                    r.group == self.group && r.version == self.version && r.kind == self.kind
                }) && match &self.namespace {
                    Some(ns) => m.watches_namespace(Some(ns)),
                    None => true,
                }
            })
            .map(|(n, m)| (n.clone(), m.clone()))
            .collect()
    }
}

/// A running watch's parts.
pub(crate) struct WatchTask {
    pub key: WatchKey,
    pub client: kube::Client,
    pub triggers: Triggers,
    pub tx: mpsc::Sender<Msg>,
    pub status: ClusterStatus,
    pub timeout: Duration,
    pub since: Since,
    /// Rollouts that completed longer ago than this (the fired-keys TTL) are not caught up.
    pub catch_up_within: Duration,
    /// The error last logged: a watch that lists but may not watch fails, relists and
    /// fails again; it is logged once, and again only when the error changes or the watch
    /// delivered a live change in between.
    pub logged: std::sync::Mutex<Option<String>>,
}

type Events = BoxStream<'static, Result<watcher::Event<Value>, watcher::Error>>;

impl WatchTask {
    /// Resolves the type (retrying while the server does not serve it), then watches until
    /// `shutdown`. Errors are reported on the status (and logged when they change); the
    /// watch retries with kube's backoff, so a fixed RBAC rule or an installed CRD heals it.
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.key.name();
        let (resource, caps) = {
            let mut delays = assay_bus::retry::delays();
            loop {
                match self.resolve().await {
                    Ok(found) => break found,
                    Err(why) => {
                        self.failed(&why);
                        let delay = delays.next().unwrap_or(assay_bus::retry::MAX_DELAY);
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                }
            }
        };
        let config =
            watcher::Config::default().timeout(self.timeout.as_secs().clamp(1, 3600) as u32);
        let namespace = match (&caps.scope, &self.key.namespace) {
            (Scope::Namespaced, Some(ns)) => Some(ns.as_str()),
            _ => None,
        };
        let mut events: Events = if self.key.metadata_only {
            let api: Api<PartialObjectMeta<DynamicObject>> = self.api(namespace, &resource);
            watcher::watcher(api, config)
                .default_backoff()
                .map(|r| r.map(to_json))
                .boxed()
        } else {
            let api: Api<DynamicObject> = self.api(namespace, &resource);
            watcher::watcher(api, config)
                .default_backoff()
                .map(|r| r.map(to_json))
                .boxed()
        };
        info!(watch = %name, "watching");
        let mut state = State::default();
        loop {
            let next = tokio::select! {
                n = events.next() => n,
                _ = shutdown.cancelled() => return,
            };
            match next {
                None => return,
                Some(Ok(event)) => {
                    if matches!(event, watcher::Event::Apply(_) | watcher::Event::Delete(_)) {
                        // Delivering again: whatever failed before works now.
                        *self.logged.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        self.status.watch_ok(&name);
                    }
                    for (old, new) in state.apply(event, &self.key) {
                        self.changed(old.as_ref(), new.as_ref()).await;
                    }
                    for obj in std::mem::take(&mut state.first_seen) {
                        self.catch_up(&obj).await;
                    }
                    if state.just_listed {
                        state.just_listed = false;
                        self.status.listed(&name);
                        debug!(watch = %name, objects = state.cache.len(), "listed");
                    }
                }
                Some(Err(e)) => self.watch_error(e, &resource.plural),
            }
        }
    }

    fn api<K>(&self, namespace: Option<&str>, resource: &ApiResource) -> Api<K>
    where
        K: kube::Resource<DynamicType = ApiResource, Scope = kube::core::DynamicResourceScope>,
    {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        }
    }

    async fn resolve(&self) -> Result<(ApiResource, ApiCapabilities), String> {
        let gvk = GroupVersionKind::gvk(&self.key.group, &self.key.version, &self.key.kind);
        let gv = if self.key.group.is_empty() {
            self.key.version.clone()
        } else {
            format!("{}/{}", self.key.group, self.key.version)
        };
        kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| match &e {
                kube::Error::Api(s) if s.code == 403 => format!(
                    "forbidden: the trigger-watcher may not read the API discovery of {gv} ({}); grant its service account get on non-resource URLs /api, /apis and /apis/*",
                    s.message
                ),
                kube::Error::Api(s) if s.code == 404 => format!(
                    "unknown kind `{}`: the API server does not serve {gv}; install its CustomResourceDefinition or fix group/version",
                    self.key.kind
                ),
                kube::Error::Discovery(_) => format!(
                    "unknown kind `{}`: {gv} has no such kind ({e}); install its CustomResourceDefinition or fix the kind",
                    self.key.kind
                ),
                _ => format!("cannot resolve {} {gv}: {e}", self.key.kind),
            })
    }

    fn failed(&self, why: &str) {
        let name = self.key.name();
        self.status.watch_failed(&name, why);
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.as_deref() != Some(why) {
            *logged = Some(why.to_string());
            let triggers: Vec<String> = self
                .key
                .triggers(&self.triggers)
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            warn!(watch = %name, triggers = %triggers.join(","), error = %why, "kubernetes watch failing; its triggers do not fire until it recovers");
        }
    }

    fn watch_error(&self, e: watcher::Error, plural: &str) {
        let (verb, err) = match &e {
            watcher::Error::InitialListFailed(err) => ("list", Some(err)),
            watcher::Error::WatchStartFailed(err) | watcher::Error::WatchFailed(err) => {
                ("watch", Some(err))
            }
            watcher::Error::WatchError(s) if s.code == 410 => {
                info!(watch = %self.key.name(), "resourceVersion expired (410 Gone); relisting");
                return;
            }
            _ => ("watch", None),
        };
        let why = match err {
            Some(kube::Error::Api(s)) if s.code == 403 => {
                forbidden(&self.key, plural, verb, &s.message)
            }
            _ => e.to_string(),
        };
        self.failed(&why);
    }

    /// Hands one change to every trigger of this watch.
    async fn changed(&self, old: Option<&Value>, new: Option<&Value>) {
        let kind = self.key.kind.as_str();
        let Some(current) = new.or(old) else { return };
        if let (Some(o), Some(n)) = (old, new)
            && object::resource_version(o) == object::resource_version(n)
        {
            // A relist handing back what was known: no change, and no reason to hold a
            // settling event longer.
            return;
        }
        let uid = object::identity(current).uid;
        let revision = object::revision(kind, current);
        for (trigger, m) in self.key.triggers(&self.triggers) {
            let (fired, skipped) = fire::decide(&trigger, &m, kind, old, new);
            for s in skipped {
                debug!(%trigger, %uid, event = %s.event, reason = %s.reason, "change not fired");
            }
            let settle = m.settle();
            if fired.is_empty() {
                if !settle.is_zero() {
                    // The object is not quiet: a pending event waits longer.
                    let _ = self
                        .tx
                        .send(Msg::Touch {
                            trigger,
                            uid: uid.clone(),
                            settle,
                        })
                        .await;
                }
                continue;
            }
            for firing in fired {
                let c = Candidate {
                    trigger: trigger.clone(),
                    uid: uid.clone(),
                    revision: revision.clone(),
                    describe: describe(current),
                    settle,
                    supersede: m.supersede,
                    firing,
                };
                let _ = self.tx.send(Msg::Fire(Box::new(c))).await;
            }
        }
    }
}

impl WatchTask {
    /// An object of the first list: the rollout it completed while no watcher saw it, for
    /// the triggers with `rollout-complete` ([`changes::caught_up`] says which).
    async fn catch_up(&self, obj: &Value) {
        let kind = self.key.kind.as_str();
        if !object::rollout_complete(kind, obj) {
            return;
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let uid = object::identity(obj).uid;
        let revision = object::revision(kind, obj);
        for (trigger, m) in self.key.triggers(&self.triggers) {
            if m.event != KubeEvent::RolloutComplete {
                continue;
            }
            let created = self
                .since
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&trigger)
                .copied();
            let Some(change) = changes::caught_up(kind, obj, created, now_ms, self.catch_up_within)
            else {
                continue;
            };
            let (fired, _) =
                fire::decide_changes(&trigger, &m, kind, None, Some(obj), vec![change]);
            for firing in fired {
                debug!(%trigger, %uid, %revision, "catching up a rollout completed while not watched");
                let c = Candidate {
                    trigger: trigger.clone(),
                    uid: uid.clone(),
                    revision: revision.clone(),
                    describe: describe(obj),
                    settle: m.settle(),
                    supersede: m.supersede,
                    firing,
                };
                let _ = self.tx.send(Msg::Fire(Box::new(c))).await;
            }
        }
    }
}

/// `Deployment shop/payments`.
fn describe(obj: &Value) -> String {
    let id = object::identity(obj);
    match id.namespace {
        Some(ns) => format!("{} {ns}/{}", id.kind, id.name),
        None => format!("{} {}", id.kind, id.name),
    }
}

/// The error of a 403: the verb and resource the service account lacks, and the rule that
/// grants them.
pub(crate) fn forbidden(key: &WatchKey, plural: &str, verb: &str, message: &str) -> String {
    let resource = if key.group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{}", key.group)
    };
    let scope = match &key.namespace {
        Some(ns) => format!("in namespace {ns}"),
        None => "cluster-wide".to_string(),
    };
    format!(
        "forbidden: the trigger-watcher's service account may not {verb} {resource} {scope}; grant it get, list and watch on {plural} in apiGroups [\"{}\"] ({message})",
        key.group
    )
}

/// Any watched object as JSON, with the kind and apiVersion of its type (list items and
/// `PartialObjectMetadata` carry none or their own).
fn to_json<K: serde::Serialize>(e: watcher::Event<K>) -> watcher::Event<Value> {
    let json = |k: K| serde_json::to_value(k).unwrap_or(Value::Null);
    match e {
        watcher::Event::Apply(k) => watcher::Event::Apply(json(k)),
        watcher::Event::Delete(k) => watcher::Event::Delete(json(k)),
        watcher::Event::InitApply(k) => watcher::Event::InitApply(json(k)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// The objects a watch knows (by uid) and where a list stands.
#[derive(Default)]
struct State {
    cache: HashMap<String, Value>,
    /// Seen in the list under way; `None` outside a list.
    listing: Option<HashSet<String>>,
    /// A list completed before: the first list only seeds the cache (objects that existed
    /// before the watch began fire no change; only a rollout they completed unseen may be
    /// caught up, see [`changes::caught_up`]); relists are diffed against it.
    listed_once: bool,
    /// Set by the InitDone that just went by.
    just_listed: bool,
    /// Objects of the first list, for [`WatchTask::catch_up`].
    first_seen: Vec<Value>,
}

impl State {
    /// The changes (old, new) one watcher event means, updating the cache.
    fn apply(
        &mut self,
        e: watcher::Event<Value>,
        key: &WatchKey,
    ) -> Vec<(Option<Value>, Option<Value>)> {
        let typed = |mut v: Value| {
            if v.is_object() {
                let api_version = if key.group.is_empty() {
                    key.version.clone()
                } else {
                    format!("{}/{}", key.group, key.version)
                };
                v["apiVersion"] = Value::String(api_version);
                v["kind"] = Value::String(key.kind.clone());
            }
            v
        };
        let uid = |v: &Value| object::identity(v).uid;
        match e {
            watcher::Event::Init => {
                self.listing = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(v) => {
                let v = typed(v);
                let id = uid(&v);
                if let Some(seen) = &mut self.listing {
                    seen.insert(id.clone());
                }
                let old = self.cache.insert(id, v.clone());
                if self.listed_once {
                    vec![(old, Some(v))]
                } else {
                    self.first_seen.push(v);
                    Vec::new()
                }
            }
            watcher::Event::InitDone => {
                let seen = self.listing.take().unwrap_or_default();
                let mut out = Vec::new();
                if self.listed_once {
                    let gone: Vec<String> = self
                        .cache
                        .keys()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect();
                    for k in gone {
                        out.push((self.cache.remove(&k), None));
                    }
                } else {
                    self.cache.retain(|k, _| seen.contains(k));
                }
                self.listed_once = true;
                self.just_listed = true;
                out
            }
            watcher::Event::Apply(v) => {
                let v = typed(v);
                let old = self.cache.insert(uid(&v), v.clone());
                vec![(old, Some(v))]
            }
            watcher::Event::Delete(v) => {
                let v = typed(v);
                let old = self.cache.remove(&uid(&v)).unwrap_or(v);
                vec![(Some(old), None)]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> WatchKey {
        WatchKey {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: None,
            metadata_only: false,
        }
    }

    fn cm(uid: &str, rv: &str) -> Value {
        json!({"metadata": {"name": uid, "uid": uid, "resourceVersion": rv}})
    }

    #[test]
    fn the_first_list_seeds_and_a_relist_yields_only_what_changed() {
        use watcher::Event::*;
        let k = key();
        let mut s = State::default();
        let feed = |s: &mut State, es: Vec<watcher::Event<Value>>| {
            es.into_iter()
                .flat_map(|e| s.apply(e, &k))
                .collect::<Vec<_>>()
        };
        assert!(
            feed(
                &mut s,
                vec![
                    Init,
                    InitApply(cm("a", "1")),
                    InitApply(cm("b", "2")),
                    InitDone
                ]
            )
            .is_empty()
        );
        assert!(s.just_listed);
        // Live changes: old and new.
        let out = feed(&mut s, vec![Apply(cm("a", "3"))]);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].0.as_ref().unwrap()["metadata"]["resourceVersion"],
            "1"
        );
        assert_eq!(out[0].1.as_ref().unwrap()["kind"], "ConfigMap");
        // A relist after 410: `a` unchanged, `b` gone, `c` new.
        let out = feed(
            &mut s,
            vec![
                Init,
                InitApply(cm("a", "3")),
                InitApply(cm("c", "5")),
                InitDone,
            ],
        );
        let shape: Vec<(Option<String>, Option<String>)> = out
            .iter()
            .map(|(o, n)| {
                let rv = |v: &Option<Value>| {
                    v.as_ref().map(|v| {
                        v["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    })
                };
                (rv(o), rv(n))
            })
            .collect();
        let s_ = |x: &str| Some(x.to_string());
        assert_eq!(
            shape,
            vec![(s_("3"), s_("3")), (None, s_("5")), (s_("2"), None)],
            "the unchanged one is handed on as old == new (no events), the new one as created, the gone one as deleted"
        );
    }
}
