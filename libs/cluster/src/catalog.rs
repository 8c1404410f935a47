//! [`ClusterCatalog`]: watches `TestWorkflow` and `TestTrigger` objects and keeps the
//! catalog of the valid ones in a [`SharedCatalog`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use assay_spec::SharedCatalog;
use assay_spec::crd::CONDITION_VALID;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::judge::{self, Kind, ObjKey, Problem};
use crate::status::{StatusWriter, View};
use crate::{Error, Result, Scope};

type Events = std::pin::Pin<
    Box<dyn Stream<Item = (Kind, Result<watcher::Event<DynamicObject>, watcher::Error>)> + Send>,
>;

/// The catalog read from the cluster. The rest of a service reads [`ClusterCatalog::shared`]
/// exactly as it reads a directory's catalog.
pub struct ClusterCatalog {
    shared: SharedCatalog,
}

impl ClusterCatalog {
    /// Starts watching both kinds in `scope` and returns once both were listed, with the
    /// future that keeps the catalog current until `shutdown` (it also runs `status`'s
    /// writer). A list refused for good (403: the missing verb and resource are named;
    /// 404: the CRDs are not installed) fails the start; other errors are retried.
    /// With `status`, every object gets a `Valid` condition and an invalid one a Warning
    /// Event; without, problems are only logged.
    pub async fn start(
        client: kube::Client,
        scope: Scope,
        status: Option<StatusWriter>,
        shutdown: CancellationToken,
    ) -> Result<(ClusterCatalog, impl Future<Output = ()> + Send + 'static)> {
        let stream = |kind: Kind| {
            let ar = kind.api_resource();
            let api: Api<DynamicObject> = match &scope {
                Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                Scope::All => Api::all_with(client.clone(), &ar),
            };
            watcher(api, watcher::Config::default())
                .default_backoff()
                .map(move |e| (kind, e))
        };
        let mut events: Events = Box::pin(futures::stream::select(
            stream(Kind::Workflow),
            stream(Kind::Trigger),
        ));
        let shared = SharedCatalog::new(assay_spec::Catalog::default());
        let view = status.as_ref().map(StatusWriter::view).unwrap_or_default();
        let mut state = State {
            label: scope.to_string(),
            scope,
            live: BTreeMap::new(),
            buffer: HashMap::new(),
            synced: BTreeSet::new(),
            shared: shared.clone(),
            view,
            status: status.clone(),
            reported: HashMap::new(),
        };
        while state.synced.len() < 2 {
            let Some((kind, event)) = events.next().await else {
                return Err(Error::Config(
                    "the watch ended before the first list".into(),
                ));
            };
            if let Err(e) = state.apply(kind, event)
                && e.is_permanent()
            {
                return Err(e);
            }
        }
        state.rebuild();
        let keeper = async move {
            let writer = status.map(|w| tokio::spawn(w.run(shutdown.clone())));
            loop {
                let next = tokio::select! {
                    next = events.next() => next,
                    _ = shutdown.cancelled() => break,
                };
                let Some((kind, event)) = next else { break };
                let _ = state.apply(kind, event);
                // Everything already delivered goes into one rebuild.
                while let Some(Some((kind, event))) = events.next().now_or_never() {
                    let _ = state.apply(kind, event);
                }
                state.rebuild();
            }
            if let Some(w) = writer {
                let _ = w.await;
            }
        };
        Ok((ClusterCatalog { shared }, keeper))
    }

    /// The catalog of the valid objects, replaced atomically on every change.
    pub fn shared(&self) -> SharedCatalog {
        self.shared.clone()
    }
}

struct State {
    scope: Scope,
    label: String,
    /// Every object as last seen.
    live: BTreeMap<ObjKey, DynamicObject>,
    /// Objects of a relist in progress, installed at its end.
    buffer: HashMap<Kind, BTreeMap<ObjKey, DynamicObject>>,
    /// Kinds listed at least once.
    synced: BTreeSet<Kind>,
    shared: SharedCatalog,
    view: Arc<Mutex<View>>,
    status: Option<StatusWriter>,
    /// The verdict last acted on per object, and the generation it was about.
    reported: HashMap<ObjKey, (Option<Problem>, Option<i64>)>,
}

fn key_of(kind: Kind, obj: &DynamicObject) -> ObjKey {
    ObjKey {
        kind,
        namespace: obj.metadata.namespace.clone().unwrap_or_default(),
        name: obj.metadata.name.clone().unwrap_or_default(),
    }
}

impl State {
    /// Applies one watch event; an error is logged (naming what failed) and returned.
    fn apply(
        &mut self,
        kind: Kind,
        event: Result<watcher::Event<DynamicObject>, watcher::Error>,
    ) -> Result<()> {
        match event {
            Ok(watcher::Event::Apply(o)) => {
                self.live.insert(key_of(kind, &o), o);
            }
            Ok(watcher::Event::Delete(o)) => {
                self.live.remove(&key_of(kind, &o));
            }
            Ok(watcher::Event::Init) => {
                self.buffer.insert(kind, BTreeMap::new());
            }
            Ok(watcher::Event::InitApply(o)) => {
                self.buffer
                    .entry(kind)
                    .or_default()
                    .insert(key_of(kind, &o), o);
            }
            Ok(watcher::Event::InitDone) => {
                let listed = self.buffer.remove(&kind).unwrap_or_default();
                self.live.retain(|k, _| k.kind != kind);
                self.live.extend(listed);
                self.synced.insert(kind);
            }
            Err(e) => {
                let error = describe(kind, &self.scope, &e);
                warn!(error = %error, "watching the catalog failed; retrying");
                return Err(error);
            }
        }
        Ok(())
    }

    /// Judges every object, installs the catalog of the valid ones, and reports what
    /// changed: a log line per object whose verdict changed and, with a status writer, its
    /// `Valid` condition and (when invalid) a Warning Event.
    fn rebuild(&mut self) {
        let judged = judge::judge(self.live.iter().map(|(k, o)| (k.clone(), o)), &self.label);
        let (workflows, triggers) = (
            judged.catalog.workflows().count(),
            judged.catalog.triggers().count(),
        );
        self.shared.replace(judged.catalog);
        {
            let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
            view.objects = self.live.clone();
            view.workflows = judged.workflows;
            view.triggers = judged.triggers;
        }
        if let Some(writer) = &self.status {
            // Another writer (the scheduler's `Valid`, the trigger-watcher's `Watching`)
            // may have replaced the conditions with a list that lacks ours: compare again.
            writer.recheck();
        }
        let mut changed = 0;
        for (key, problem) in judged.verdicts {
            let Some(obj) = self.live.get(&key) else {
                continue;
            };
            let generation = obj.metadata.generation;
            let now = (problem, generation);
            if self.reported.get(&key) == Some(&now) {
                continue;
            }
            changed += 1;
            let (problem, generation) = &now;
            match problem {
                Some(p) => {
                    warn!(object = %key, reason = p.reason, problem = %p.message, "definition left out of the catalog")
                }
                None if self.reported.contains_key(&key) => {
                    info!(object = %key, "definition accepted")
                }
                None => {}
            }
            if let Some(writer) = self.status.as_ref().filter(|w| w.reports_validity()) {
                let current = judge::conditions(obj)
                    .into_iter()
                    .find(|c| c.type_ == CONDITION_VALID);
                let wanted = judge::valid_condition(
                    problem.as_ref(),
                    *generation,
                    current.as_ref(),
                    Time(k8s_openapi::jiff::Timestamp::now()),
                );
                let said = current.as_ref().is_some_and(|c| judge::same(c, &wanted));
                if !said {
                    writer.condition(&key, wanted);
                }
                let told = current.as_ref().is_some_and(|c| {
                    problem.as_ref().is_some_and(|p| {
                        c.status == "False" && c.reason == p.reason && c.message == p.message
                    })
                });
                if let Some(p) = problem
                    && !told
                {
                    writer.event(&key, p.reason, p.message.clone());
                }
            }
            self.reported.insert(key, now);
        }
        let live = &self.live;
        self.reported.retain(|k, _| live.contains_key(k));
        if let Some(writer) = &self.status {
            writer.retain(|k| live.contains_key(k));
        }
        if changed > 0 {
            info!(scope = %self.label, workflows, triggers, "catalog updated from the cluster");
        }
    }
}

/// A watcher error as one of ours: the verb that failed (`list` or `watch`) on which
/// resource, where.
fn describe(kind: Kind, scope: &Scope, e: &watcher::Error) -> Error {
    let scope = scope.to_string();
    match e {
        watcher::Error::InitialListFailed(k) => {
            Error::from_kube("list", kind.resource(), &scope, k)
        }
        watcher::Error::WatchStartFailed(k) | watcher::Error::WatchFailed(k) => {
            Error::from_kube("watch", kind.resource(), &scope, k)
        }
        watcher::Error::WatchError(status) => Error::from_kube(
            "watch",
            kind.resource(),
            &scope,
            &kube::Error::Api(status.clone()),
        ),
        other => Error::Api {
            verb: "watch".into(),
            resource: kind.resource().into(),
            scope,
            message: other.to_string(),
        },
    }
}
