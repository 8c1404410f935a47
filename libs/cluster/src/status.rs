//! Writing `status` back to `TestWorkflow`s and `TestTrigger`s, and Warning Events.
//!
//! Callers only record what they want written ([`StatusWriter::condition`],
//! [`StatusWriter::execution`], [`StatusWriter::event`]); one background task
//! ([`StatusWriter::run`]) merge-patches the `status` subresource of each object that has
//! something new, with the latest of everything for it. A failed write is logged with the
//! reason and tried again on the next record or after a backoff, whichever comes first.
//!
//! A merge patch replaces `conditions` whole, so each write carries the conditions the
//! object has in the cluster with this writer's own types on top.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use assay_spec::crd::Counts;
use backon::BackoffBuilder;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::judge::{ObjKey, conditions};
use crate::{Error, judge};

/// The condition about the last execution: `True` when it passed, `False` when it failed,
/// errored or was cancelled, `Unknown` while it is queued or running.
pub const CONDITION_PASSED: &str = "Passed";

/// One execution of a workflow as the scheduler saw it start, or an update of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionReport {
    pub workflow: String,
    pub execution_id: String,
    /// `queued`, `running`, `passed`, `failed`, `errored`, `cancelled`, `timed_out`.
    pub status: String,
    /// Why it has that status (a rejection, an infrastructure failure); may be empty.
    pub reason: String,
    pub counts: Counts,
    /// When it was created (milliseconds since the epoch): of two executions the later one
    /// is the last.
    pub created_at_ms: i64,
    /// Updates of one execution are applied in this order; an older one is ignored.
    pub revision: u64,
}

/// What the cluster catalog knows that status writes need: the objects as last seen and
/// which object each accepted workflow came from.
#[derive(Default)]
pub(crate) struct View {
    pub objects: BTreeMap<ObjKey, DynamicObject>,
    pub workflows: HashMap<String, ObjKey>,
    pub triggers: HashMap<String, ObjKey>,
}

/// What this writer wants an object's status to say.
#[derive(Default)]
struct Wanted {
    conditions: BTreeMap<String, Condition>,
    execution: Option<ExecutionReport>,
}

#[derive(Default)]
struct State {
    wanted: HashMap<ObjKey, Wanted>,
    dirty: BTreeSet<ObjKey>,
    events: Vec<(ObjKey, &'static str, String)>,
}

struct Inner {
    client: kube::Client,
    component: String,
    view: Arc<Mutex<View>>,
    state: Mutex<State>,
    wake: Notify,
    failed: std::sync::atomic::AtomicU64,
    /// Writes the catalog's `Valid` conditions and Events (the scheduler's writer); a
    /// writer without writes only what its owner records.
    validity: bool,
}

/// A `TestTrigger` object behind a trigger of the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerObject {
    pub key: ObjKey,
    /// `metadata.creationTimestamp` in milliseconds since the epoch, when it has one.
    pub created_ms: Option<i64>,
    pub generation: Option<i64>,
    /// Its `status.conditions` as last seen.
    pub conditions: Vec<Condition>,
}

/// Records status to write and writes it from one background task. Cheap to clone.
#[derive(Clone)]
pub struct StatusWriter {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

impl StatusWriter {
    /// A writer through `client`; `component` is the Events' source (`assay-scheduler`).
    /// Given to a [`crate::ClusterCatalog`], it writes each object's `Valid` condition.
    /// Nothing is written until [`StatusWriter::run`] runs.
    pub fn new(client: kube::Client, component: &str) -> StatusWriter {
        Self::build(client, component, true)
    }

    /// A writer that leaves `Valid` to the scheduler and writes only the conditions and
    /// Events its owner records (the trigger-watcher's `Watching`), merged with what the
    /// objects already say.
    pub fn without_validity(client: kube::Client, component: &str) -> StatusWriter {
        Self::build(client, component, false)
    }

    fn build(client: kube::Client, component: &str, validity: bool) -> StatusWriter {
        StatusWriter {
            inner: Arc::new(Inner {
                client,
                component: component.to_string(),
                view: Arc::default(),
                state: Mutex::default(),
                wake: Notify::new(),
                failed: Default::default(),
                validity,
            }),
        }
    }

    /// Status writes and event creations that failed so far (each is retried).
    pub fn failed_writes(&self) -> u64 {
        self.inner.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn view(&self) -> Arc<Mutex<View>> {
        self.inner.view.clone()
    }

    pub(crate) fn reports_validity(&self) -> bool {
        self.inner.validity
    }

    /// The `TestTrigger` object the catalog's trigger `name` came from, if it is in the
    /// catalog.
    pub fn trigger(&self, name: &str) -> Option<TriggerObject> {
        let view = lock(&self.inner.view);
        let key = view.triggers.get(name)?.clone();
        let obj = view.objects.get(&key);
        Some(TriggerObject {
            created_ms: obj
                .and_then(|o| o.metadata.creation_timestamp.as_ref())
                .map(|t| t.0.as_millisecond()),
            generation: obj.and_then(|o| o.metadata.generation),
            conditions: obj.map(conditions).unwrap_or_default(),
            key,
        })
    }

    /// Compares every object with what is wanted for it again at the next write (the
    /// objects were seen anew).
    pub(crate) fn recheck(&self) {
        let mut state = lock(&self.inner.state);
        let keys: Vec<ObjKey> = state.wanted.keys().cloned().collect();
        if keys.is_empty() {
            return;
        }
        state.dirty.extend(keys);
        drop(state);
        self.inner.wake.notify_one();
    }

    /// Sets condition `condition.type_` of `key` (written unless it already says that).
    pub fn condition(&self, key: &ObjKey, condition: Condition) {
        let mut state = lock(&self.inner.state);
        state
            .wanted
            .entry(key.clone())
            .or_default()
            .conditions
            .insert(condition.type_.clone(), condition);
        state.dirty.insert(key.clone());
        drop(state);
        self.inner.wake.notify_one();
    }

    /// Records an execution of a workflow that came from a `TestWorkflow` object: its id,
    /// status and counts become the object's status, with the [`CONDITION_PASSED`]
    /// condition, unless a later execution (or a newer revision of this one) is already
    /// recorded. A workflow that is not in the cluster catalog is ignored.
    pub fn execution(&self, mut report: ExecutionReport) {
        let Some(key) = lock(&self.inner.view)
            .workflows
            .get(&report.workflow)
            .cloned()
        else {
            debug!(workflow = %report.workflow, "no TestWorkflow object for this workflow; status not written");
            return;
        };
        let mut state = lock(&self.inner.state);
        let wanted = state.wanted.entry(key.clone()).or_default();
        if let Some(old) = &wanted.execution {
            // An update that does not say when its execution was created keeps the time
            // the plan said.
            if report.created_at_ms == 0 && report.execution_id == old.execution_id {
                report.created_at_ms = old.created_at_ms;
            }
            let newer = if report.execution_id == old.execution_id {
                report.revision >= old.revision
            } else {
                (report.created_at_ms, &report.execution_id)
                    > (old.created_at_ms, &old.execution_id)
            };
            if !newer || *old == report {
                return;
            }
        }
        wanted.execution = Some(report);
        state.dirty.insert(key);
        drop(state);
        self.inner.wake.notify_one();
    }

    /// Forgets what is wanted for objects that no longer exist.
    pub(crate) fn retain(&self, exists: impl Fn(&ObjKey) -> bool) {
        let mut state = lock(&self.inner.state);
        state.wanted.retain(|k, _| exists(k));
        state.dirty.retain(|k| exists(k));
    }

    /// Queues a Warning Event about `key` with `reason` and `message`.
    pub fn event(&self, key: &ObjKey, reason: &'static str, message: String) {
        lock(&self.inner.state)
            .events
            .push((key.clone(), reason, message));
        self.inner.wake.notify_one();
    }

    /// Writes what is recorded until `shutdown`; failures are logged and retried on the
    /// next record or after a backoff (up to 30 s).
    pub async fn run(self, shutdown: CancellationToken) {
        let backoff = || {
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(30))
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = backoff();
        let mut failing = false;
        loop {
            let retry = async {
                if failing {
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(30))).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = retry => {}
                _ = shutdown.cancelled() => return,
            }
            failing = !self.write_all().await;
            if !failing {
                delays = backoff();
            }
        }
    }

    /// Writes every dirty object and queued event; whether all went through.
    async fn write_all(&self) -> bool {
        let (dirty, events) = {
            let mut state = lock(&self.inner.state);
            (
                std::mem::take(&mut state.dirty),
                std::mem::take(&mut state.events),
            )
        };
        let mut ok = true;
        for key in dirty {
            let Some(patch) = self.patch_for(&key) else {
                continue;
            };
            let api = self.api(&key);
            let result = api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            match result {
                Ok(obj) => {
                    // Seen at once, so that the next write merges onto it.
                    lock(&self.inner.view).objects.insert(key.clone(), obj);
                    debug!(object = %key, "status written");
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    debug!(object = %key, "object gone; status not written");
                    lock(&self.inner.state).wanted.remove(&key);
                }
                Err(e) => {
                    let error = Error::from_kube(
                        "patch",
                        &format!("{}/status", key.kind.resource()),
                        &format!("namespace {}", key.namespace),
                        &e,
                    );
                    warn!(object = %key, error = %error, "cannot write status; retrying");
                    self.inner
                        .failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    lock(&self.inner.state).dirty.insert(key);
                    ok = false;
                }
            }
        }
        for (key, reason, message) in events {
            if let Err(e) = self.create_event(&key, reason, &message).await {
                let error = Error::from_kube(
                    "create",
                    "events",
                    &format!("namespace {}", key.namespace),
                    &e,
                );
                let retry = !matches!(&e, kube::Error::Api(s) if s.code < 500);
                warn!(object = %key, error = %error, retry, "cannot record an event");
                self.inner
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if retry {
                    lock(&self.inner.state).events.push((key, reason, message));
                    ok = false;
                }
            }
        }
        ok
    }

    fn api(&self, key: &ObjKey) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.inner.client.clone(),
            &key.namespace,
            &key.kind.api_resource(),
        )
    }

    /// The status patch that makes `key` say what is wanted, or `None` when it already does
    /// (or nothing is wanted).
    fn patch_for(&self, key: &ObjKey) -> Option<serde_json::Value> {
        let current = lock(&self.inner.view).objects.get(key).cloned();
        let state = lock(&self.inner.state);
        let wanted = state.wanted.get(key)?;
        let existing = current.as_ref().map(conditions).unwrap_or_default();
        let mut merged = existing.clone();
        let mut own: Vec<Condition> = wanted.conditions.values().cloned().collect();
        if let Some(e) = &wanted.execution {
            own.push(passed_condition(e));
        }
        for mut c in own {
            match merged.iter_mut().find(|m| m.type_ == c.type_) {
                Some(m) => {
                    if m.status == c.status {
                        c.last_transition_time = m.last_transition_time.clone();
                    }
                    *m = c;
                }
                None => merged.push(c),
            }
        }
        let mut status = json!({});
        let mut changed = merged.len() != existing.len()
            || merged
                .iter()
                .zip(&existing)
                .any(|(a, b)| !judge::same(a, b));
        status["conditions"] = json!(merged);
        if let Some(e) = &wanted.execution {
            let fields = json!({
                "lastExecutionId": e.execution_id,
                "lastExecutionStatus": e.status,
                "counts": e.counts,
                "lastRunTime": Time(
                    k8s_openapi::jiff::Timestamp::from_millisecond(e.created_at_ms).unwrap_or_else(|_| now().0)
                ),
            });
            let data = current.as_ref().map(|o| &o.data["status"]);
            for (k, v) in fields.as_object().into_iter().flatten() {
                if data.and_then(|d| d.get(k)) != Some(v) {
                    changed = true;
                }
                status[k] = v.clone();
            }
        }
        changed.then(|| json!({ "status": status }))
    }

    async fn create_event(
        &self,
        key: &ObjKey,
        reason: &str,
        message: &str,
    ) -> Result<Event, kube::Error> {
        let obj = lock(&self.inner.view).objects.get(key).cloned();
        let at = now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", key.name, at.0.as_nanosecond())),
                namespace: Some(key.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some(assay_spec::API_VERSION.to_string()),
                kind: Some(key.kind.kind().to_string()),
                name: Some(key.name.clone()),
                namespace: Some(key.namespace.clone()),
                uid: obj.as_ref().and_then(|o| o.metadata.uid.clone()),
                resource_version: obj
                    .as_ref()
                    .and_then(|o| o.metadata.resource_version.clone()),
                ..ObjectReference::default()
            },
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some("Warning".to_string()),
            source: Some(EventSource {
                component: Some(self.inner.component.clone()),
                host: None,
            }),
            reporting_component: Some(self.inner.component.clone()),
            first_timestamp: Some(at.clone()),
            last_timestamp: Some(at),
            count: Some(1),
            ..Event::default()
        };
        Api::<Event>::namespaced(self.inner.client.clone(), &key.namespace)
            .create(&PostParams::default(), &event)
            .await
    }
}

/// The [`CONDITION_PASSED`] condition for an execution.
fn passed_condition(e: &ExecutionReport) -> Condition {
    let (status, reason) = match e.status.as_str() {
        "passed" => ("True", "Passed"),
        "failed" => ("False", "Failed"),
        "errored" => ("False", "Errored"),
        "cancelled" => ("False", "Cancelled"),
        "timed_out" => ("False", "TimedOut"),
        "queued" => ("Unknown", "Queued"),
        _ => ("Unknown", "Running"),
    };
    let c = &e.counts;
    let mut message = format!(
        "execution {}: {} passed, {} failed, {} errored, {} skipped of {}",
        e.execution_id, c.passed, c.failed, c.errored, c.skipped, c.total
    );
    if !e.reason.is_empty() {
        message.push_str(&format!("; {}", e.reason));
    }
    Condition {
        type_: CONDITION_PASSED.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: now(),
        observed_generation: None,
    }
}
