//! The scheduler: matches trigger events to `TestTrigger`s and triggers to `TestWorkflow`s,
//! creates executions (one per event, trigger and workflow, however often the event is
//! delivered), applies the workflow's concurrency policy, and publishes the planned
//! execution and one shard job per shard.
//!
//! State lives in JetStream: the `assay_dedup` bucket maps a cause to its execution (so a
//! redelivered or re-published event plans nothing new) and `assay_active` holds the running
//! execution of each `forbid` workflow, released when the aggregator publishes a terminal
//! execution update.
//!
//! The execution's plan record on `assay.v1.plans.<id>` is always the last thing published
//! for a cause (after its shard jobs or its waiting entry): its presence is what says a cause
//! is done, so the hot path writes one dedup key per execution, not two.

mod decision;
mod dedup;
pub mod plan;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use assay_bus::{
    Bus, ConsumerSpec, Delivery, Failure, NatsOptions, consumer, kv_key, streams, subjects,
};
use assay_proto::{
    EventRecord, Execution, ExecutionStatus, ExecutionUpdate, Header, RunRequest, TriggerEvent,
};
use assay_spec::{EventView, Policy, SharedCatalog, Workflow};
use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use decision::{Outcome, Record};
use dedup::{Dedup, IdClaim, Seen};
pub use plan::{Cause, Plan};

/// `Header.producer` of what the scheduler publishes.
const PRODUCER: &str = "scheduler";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bus(#[from] assay_bus::Error),
    #[error("{0}")]
    Spec(String),
    #[error("key-value {op}: {reason}")]
    Kv { op: &'static str, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn spec(e: assay_spec::Error) -> Error {
        Error::Spec(e.to_string())
    }

    fn kv(op: &'static str, e: impl std::fmt::Display) -> Error {
        Error::Kv {
            op,
            reason: e.to_string(),
        }
    }

    /// Bus and key-value failures are retried; a definition problem is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Bus(e) => e.is_retryable(),
            Error::Kv { .. } => true,
            Error::Spec(_) => false,
        }
    }

    fn failure(self) -> Failure {
        if self.is_retryable() {
            Failure::Retry(self.to_string())
        } else {
            Failure::Reject(self.to_string())
        }
    }
}

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub nats: NatsOptions,
    /// Directory of `TestWorkflow` and `TestTrigger` files (reloaded when it changes).
    pub workflows: PathBuf,
    /// Events handled at once.
    pub concurrency: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nats: NatsOptions::default(),
            workflows: PathBuf::from(".assay"),
            concurrency: 1024,
        }
    }
}

/// Runs the scheduler until `shutdown`.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<()> {
    let defs = SharedCatalog::load(&options.workflows).map_err(Error::spec)?;
    let catalog = defs.get();
    info!(dir = %options.workflows.display(), workflows = catalog.workflows().count(), triggers = catalog.triggers().count(), "definitions loaded");
    let bus = Bus::connect(&options.nats, &shutdown).await?;
    bus.ensure_topology().await?;
    let scheduler = Scheduler {
        bus: bus.clone(),
        dedup: Dedup::new(bus.kv(streams::KV_DEDUP).await?),
        active: bus.kv(streams::KV_ACTIVE).await?,
        waiting: bus.kv(streams::KV_WAITING).await?,
        defs: defs.clone(),
    };
    let watch = tokio::spawn(defs.watch(Duration::from_secs(2), shutdown.clone(), |_| {}));

    let events = {
        let s = scheduler.clone();
        let spec = ConsumerSpec::new(streams::EVENTS, "scheduler-events")
            .filter([subjects::EVENTS_ALL.to_string()])
            .concurrency(options.concurrency);
        consumer::run(
            bus.clone(),
            spec,
            shutdown.clone(),
            move |d: Delivery<TriggerEvent>| {
                let s = s.clone();
                async move { s.on_event(d.msg, &d.subject).await }
            },
        )
    };
    let runs = {
        let s = scheduler.clone();
        let spec = ConsumerSpec::new(streams::EVENTS, "scheduler-runs")
            .filter([subjects::RUN_REQUESTED.to_string()])
            .concurrency(options.concurrency);
        consumer::run(
            bus.clone(),
            spec,
            shutdown.clone(),
            move |d: Delivery<RunRequest>| {
                let s = s.clone();
                async move { s.on_run_request(d.msg, &d.subject).await }
            },
        )
    };
    let releases = {
        let s = scheduler.clone();
        let spec = ConsumerSpec::new(streams::EXECUTIONS, "scheduler-active").concurrency(16);
        consumer::run(
            bus.clone(),
            spec,
            shutdown.clone(),
            move |d: Delivery<ExecutionUpdate>| {
                let s = s.clone();
                async move {
                    s.on_update(d.msg, d.delivered)
                        .await
                        .map_err(Error::failure)
                }
            },
        )
    };
    info!("scheduler running");
    let (a, b, c) = tokio::join!(events, runs, releases);
    watch.abort();
    a?;
    b?;
    c?;
    info!("scheduler stopped");
    Ok(())
}

/// Where an execution's concurrency limit applies: its workflow, or the `concurrency.group`
/// it shares with other workflows, with `max` slots (default 1).
#[derive(Debug, Clone)]
struct Scope {
    /// Key prefix in the slot and waiting buckets.
    key: String,
    /// For messages: `workflow "x"` or `group "db"`.
    name: String,
    max: u32,
}

impl Scope {
    fn of(workflow: &Workflow) -> Scope {
        let c = &workflow.spec.concurrency;
        let (raw, name) = match &c.group {
            Some(g) => (format!("group/{g}"), format!("group \"{g}\"")),
            None => (
                format!("workflow/{}", workflow.name),
                format!("workflow \"{}\"", workflow.name),
            ),
        };
        Scope {
            key: kv_key(&raw),
            name,
            max: c.max.unwrap_or(1).max(1),
        }
    }

    fn slot(&self, n: u32) -> String {
        format!("{}.{n}", self.key)
    }

    /// Key of a waiting execution: the scope, its priority's rank, then the (time-ordered)
    /// execution id.
    fn waiting(&self, priority: i32, execution: &str) -> String {
        streams::waiting_key(&self.key, priority, execution)
    }

    fn prefix(&self) -> String {
        format!("{}.", self.key)
    }
}

/// What a run request asks beyond the workflow: a selection of tests and the execution it
/// reruns.
#[derive(Debug, Clone, Default)]
struct Run {
    selection: plan::Selection,
    rerun_of: String,
    /// Overrides the workflow's `concurrency.priority` (a run request's or a trigger's).
    priority: Option<i32>,
}

#[derive(Clone)]
struct Scheduler {
    bus: Bus,
    dedup: Dedup,
    active: kv::Store,
    waiting: kv::Store,
    defs: SharedCatalog,
}

/// A refusal: terminated and copied to the dead-letter subject with the reason.
fn refuse(reason: String) -> Failure {
    Failure::Reject(reason)
}

impl Scheduler {
    async fn on_run_request(&self, req: RunRequest, subject: &str) -> Result<(), Failure> {
        let header = decision::required_header("RunRequest", subject, req.header.as_ref())
            .map_err(refuse)?;
        let key = decision::request_key(&header);
        if self.dedup.decided(&key).await.map_err(Error::failure)? {
            debug!(request = %key, "run request handled before");
            return Ok(());
        }
        let provenance = decision::of_request(&req, &header);
        let record = Record::new(PRODUCER, &key, provenance.clone(), &header.traceparent);
        let cause = Cause {
            key: format!("{key}/{}", req.workflow),
            trigger: String::new(),
            traceparent: header.traceparent.clone(),
            provenance,
        };
        // A requester-chosen id: a ULID (kept in upper case), and only ever this request's.
        let proposed = if req.execution_id.is_empty() {
            ulid::Ulid::new().to_string()
        } else {
            let id = match decision::execution_id(&req.execution_id) {
                Ok(id) => id,
                Err(reason) => return self.refuse(&key, record, &req.workflow, reason).await,
            };
            let claim = self
                .dedup
                .claim_id(&self.bus, &id, &req.workflow, &cause.key)
                .await
                .map_err(Error::failure)?;
            if let IdClaim::Taken {
                workflow,
                cause: other,
            } = claim
            {
                let reason = format!(
                    "execution_id \"{id}\" is already used by an execution of workflow \"{workflow}\" (another request: {other}); leave execution_id empty or pick a new ULID"
                );
                return self.refuse(&key, record, &req.workflow, reason).await;
            }
            id
        };
        self.handle_request(req, cause, proposed, record, &key)
            .await
            .map_err(Error::failure)
    }

    async fn handle_request(
        &self,
        req: RunRequest,
        cause: Cause,
        proposed: String,
        mut record: Record,
        key: &str,
    ) -> Result<()> {
        let outcome = if req.workflow.is_empty() {
            self.reject_once(
                "",
                &cause,
                proposed,
                ExecutionStatus::Errored,
                "run request names no workflow".to_string(),
            )
            .await?
        } else {
            let overrides: BTreeMap<String, String> = req.config.into_iter().collect();
            let selection = if !req.shards.is_empty() {
                plan::Selection::Frozen(req.shards.into_iter().map(|s| s.ids).collect())
            } else if !req.test_ids.is_empty() {
                plan::Selection::Ids(req.test_ids)
            } else if !req.rerun_of.is_empty() {
                plan::Selection::Ids(Vec::new()) // a rerun of nothing: rejected with the reason
            } else {
                plan::Selection::Listed
            };
            let run = Run {
                selection,
                rerun_of: req.rerun_of,
                priority: req.priority,
            };
            self.start(&req.workflow, &overrides, &cause, proposed, None, &run)
                .await?
        };
        record.outcome("", &req.workflow, &outcome);
        self.publish_record(key, record).await
    }

    /// Refuses a request to the dead-letter subject with `reason`, after recording it.
    async fn refuse(
        &self,
        key: &str,
        mut record: Record,
        workflow: &str,
        reason: String,
    ) -> Result<(), Failure> {
        warn!(request = %key, workflow, %reason, "run request refused");
        record.refused(workflow, reason.clone());
        let record = record.finish(assay_bus::now_ms());
        self.publish_record_only(key, &record)
            .await
            .map_err(Error::failure)?;
        Err(refuse(reason))
    }

    async fn on_event(&self, ev: TriggerEvent, subject: &str) -> Result<(), Failure> {
        let header = decision::required_header("TriggerEvent", subject, ev.header.as_ref())
            .map_err(refuse)?;
        let key = decision::event_key(&header);
        if self.dedup.decided(&key).await.map_err(Error::failure)? {
            debug!(event = %key, "event handled before");
            return Ok(());
        }
        self.handle_event(ev, header, &key)
            .await
            .map_err(Error::failure)
    }

    async fn handle_event(&self, ev: TriggerEvent, header: Header, key: &str) -> Result<()> {
        let provenance = decision::of_event(&ev, &header);
        let mut record = Record::new(PRODUCER, key, provenance.clone(), &header.traceparent);
        let catalog = self.defs.get();
        let labels: BTreeMap<String, String> = ev.labels.clone().into_iter().collect();
        let view = EventView {
            source: &ev.source,
            r#type: &ev.r#type,
            labels: &labels,
            changed_paths: ev
                .changed_paths_known
                .then_some(ev.changed_paths.as_slice()),
        };
        let mut fired = Vec::new();
        for t in catalog.triggers() {
            // A cron event fires only the trigger whose schedule fired.
            let verdict = if ev.trigger.is_empty() {
                t.explain(&view)
            } else if t.name == ev.trigger {
                Ok(())
            } else {
                Err(format!("the event is for trigger \"{}\"", ev.trigger))
            };
            match verdict {
                Ok(()) => fired.push(t),
                Err(reason) => record.not_matched(
                    &t.name,
                    t.spec.run.workflow.as_deref().unwrap_or(""),
                    reason,
                ),
            }
        }
        if fired.is_empty() {
            let known: Vec<&str> = catalog.triggers().map(|t| t.name.as_str()).collect();
            if known.is_empty() {
                record.set_reason("no triggers are defined".to_string());
            } else if !ev.trigger.is_empty() {
                record.set_reason(format!(
                    "trigger \"{}\" is not defined (known: {})",
                    ev.trigger,
                    known.join(", ")
                ));
            }
            info!(source = %ev.source, r#type = %ev.r#type, event = %key, reasons = %record.unmatched_reasons(), reason = %record.record.reason, "event matched no trigger");
        }
        for trigger in fired {
            let mut provenance = provenance.clone();
            provenance.trigger = trigger.name.clone();
            let targets: Vec<&Workflow> =
                match (&trigger.spec.run.workflow, &trigger.spec.run.selector) {
                    (Some(name), _) => match catalog.workflow(name) {
                        Ok(w) => vec![w],
                        Err(e) => {
                            // Recorded as an errored execution so the failure can be queried.
                            let cause = Cause {
                                key: format!("{key}/{}/{name}", trigger.name),
                                trigger: trigger.name.clone(),
                                traceparent: header.traceparent.clone(),
                                provenance,
                            };
                            let outcome = self
                                .reject_once(
                                    name,
                                    &cause,
                                    ulid::Ulid::new().to_string(),
                                    ExecutionStatus::Errored,
                                    e.to_string(),
                                )
                                .await?;
                            record.outcome(&trigger.name, name, &outcome);
                            continue;
                        }
                    },
                    (None, Some(selector)) => catalog.select(selector),
                    (None, None) => Vec::new(),
                };
            if targets.is_empty() {
                let selector = trigger
                    .spec
                    .run
                    .selector
                    .as_ref()
                    .map(|s| {
                        s.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let reason = format!("selector {selector} selects no workflow");
                warn!(trigger = %trigger.name, %reason, "trigger selects no workflow");
                record.matched_nothing(&trigger.name, reason);
            }
            for w in targets {
                let cause = Cause {
                    key: format!("{key}/{}/{}", trigger.name, w.name),
                    trigger: trigger.name.clone(),
                    traceparent: header.traceparent.clone(),
                    provenance: provenance.clone(),
                };
                let policy = trigger.spec.concurrency.as_ref().map(|c| c.policy);
                let config: BTreeMap<String, String> = trigger.spec.run.config.clone();
                let outcome = self
                    .start(
                        &w.name,
                        &config,
                        &cause,
                        ulid::Ulid::new().to_string(),
                        policy,
                        &Run {
                            priority: trigger.spec.concurrency.as_ref().and_then(|c| c.priority),
                            ..Run::default()
                        },
                    )
                    .await?;
                record.outcome(&trigger.name, &w.name, &outcome);
            }
        }
        self.publish_record(key, record).await
    }

    /// Publishes the event's record (after everything it started), then remembers that it
    /// went out, so a later delivery of the event is acknowledged at once.
    async fn publish_record(&self, key: &str, record: Record) -> Result<()> {
        let record = record.finish(assay_bus::now_ms());
        self.publish_record_only(key, &record).await?;
        self.dedup.mark_decided(key).await
    }

    /// Publishes an event's record on `assay.v1.decisions.<source>` with `Nats-Msg-Id`
    /// `<event key>/decision`.
    async fn publish_record_only(&self, key: &str, record: &EventRecord) -> Result<()> {
        let source = record
            .event
            .as_ref()
            .map(|e| e.source.as_str())
            .unwrap_or_default();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(assay_bus::MSG_ID, decision::record_key(key).as_str());
        if let Some(tp) = record.header.as_ref().map(|h| h.traceparent.as_str())
            && !tp.is_empty()
        {
            headers.insert(assay_bus::TRACEPARENT, tp);
        }
        self.bus
            .publish_raw(
                subjects::decision(source),
                headers,
                prost::Message::encode_to_vec(record).into(),
            )
            .await?;
        Ok(())
    }

    /// What an earlier delivery made of a cause, read from its plan record.
    async fn recorded(&self, id: String) -> Result<Outcome> {
        let plan: Option<Execution> = self
            .bus
            .last_message(streams::STATUS, &subjects::execution_plan(&id))
            .await?;
        Ok(match plan {
            Some(p) if p.shard_count == 0 && !p.reason.is_empty() => Outcome::Rejected {
                id,
                reason: p.reason,
            },
            _ => Outcome::Started(id),
        })
    }

    async fn reject_once(
        &self,
        workflow: &str,
        cause: &Cause,
        proposed: String,
        status: ExecutionStatus,
        reason: String,
    ) -> Result<Outcome> {
        let id = match self
            .dedup
            .claim_cause(&self.bus, &cause.key, &proposed)
            .await?
        {
            Seen::Done(id) => return self.recorded(id).await,
            Seen::New(id) | Seen::Pending(id) => id,
        };
        self.publish_rejected(&id, workflow, cause, status, reason)
            .await
    }

    async fn publish_rejected(
        &self,
        id: &str,
        workflow: &str,
        cause: &Cause,
        status: ExecutionStatus,
        reason: String,
    ) -> Result<Outcome> {
        warn!(execution = %id, workflow, %reason, "execution rejected");
        let exec = plan::rejected(id, workflow, cause, status, reason.clone());
        self.bus
            .publish(subjects::execution_plan(id), &exec)
            .await?;
        Ok(Outcome::Rejected {
            id: id.to_string(),
            reason,
        })
    }

    async fn start(
        &self,
        workflow: &str,
        overrides: &BTreeMap<String, String>,
        cause: &Cause,
        proposed: String,
        policy_override: Option<Policy>,
        run: &Run,
    ) -> Result<Outcome> {
        let id = match self
            .dedup
            .claim_cause(&self.bus, &cause.key, &proposed)
            .await?
        {
            Seen::Done(id) => {
                debug!(execution = %id, cause = %cause.key, "duplicate cause; execution exists");
                return self.recorded(id).await;
            }
            Seen::New(id) | Seen::Pending(id) => id,
        };
        let catalog = self.defs.get();
        let history = match catalog.workflow(workflow) {
            Ok(w)
                if matches!(
                    w.spec.strategy(),
                    assay_spec::Strategy::Duration | assay_spec::Strategy::Queue
                ) =>
            {
                self.history(workflow).await?
            }
            _ => assay_plan::History::new(),
        };
        let planned = catalog
            .workflow(workflow)
            .map_err(Error::spec)
            .and_then(|w| {
                let config = w.resolve_config(overrides).map_err(Error::spec)?;
                plan::plan(
                    &id,
                    w,
                    config,
                    cause,
                    &history,
                    &run.selection,
                    &run.rerun_of,
                )
                .map(|p| (w, p))
            });
        let (w, mut plan) = match planned {
            Ok(ok) => ok,
            Err(Error::Spec(reason)) => {
                return self
                    .publish_rejected(&id, workflow, cause, ExecutionStatus::Errored, reason)
                    .await;
            }
            Err(e) => return Err(e),
        };
        let policy = policy_override.unwrap_or(w.spec.concurrency.policy);
        plan.execution.priority = run
            .priority
            .or(w.spec.concurrency.priority)
            .unwrap_or(0)
            .clamp(
                *streams::PRIORITY_RANGE.start(),
                *streams::PRIORITY_RANGE.end(),
            );
        let scope = Scope::of(w);
        if policy == Policy::Forbid
            && let Some((_, running)) = self.acquire(&scope, &id).await?
        {
            let reason = format!(
                "concurrency policy forbid: execution {running} of {} is still running ({} slot{} in use)",
                scope.name,
                scope.max,
                if scope.max == 1 { "" } else { "s" }
            );
            return self
                .publish_rejected(&id, workflow, cause, ExecutionStatus::Cancelled, reason)
                .await;
        }
        if policy == Policy::Queue
            && let Some((_, running)) = self.acquire(&scope, &id).await?
        {
            // Wait for the slot: recorded as queued now, started when the running one ends.
            let pending = assay_proto::PendingPlan {
                execution: Some(plan.execution.clone()),
                shards: plan.shards.clone(),
            };
            self.waiting
                .put(
                    scope.waiting(plan.execution.priority, &id),
                    prost::Message::encode_to_vec(&pending).into(),
                )
                .await
                .map_err(|e| Error::kv("put", e))?;
            // Recorded as queued (no shard runs yet); `assay get executions` shows its place.
            self.bus
                .publish(subjects::execution_plan(&id), &plan.execution)
                .await?;
            info!(execution = %id, workflow, after = %running, priority = plan.execution.priority, "execution queued");
            // The running one may have ended meanwhile.
            self.start_waiting(&scope).await?;
            return Ok(Outcome::Started(id));
        }
        if policy == Policy::Replace
            && let Some((slot, running)) = self.acquire(&scope, &id).await?
        {
            // The newer execution wins: stop the running one and take its slot.
            let reason = format!("replaced by execution {id} (concurrency policy replace)");
            info!(execution = %running, workflow, replaced_by = %id, "cancelling the running execution");
            self.bus.cancel(&running, &reason).await?;
            self.active
                .put(slot, Bytes::from(id.clone()))
                .await
                .map_err(|e| Error::kv("put", e))?;
        }
        self.publish(&plan).await?;
        info!(execution = %id, workflow, shards = plan.shards.len(), trigger = %cause.trigger, "execution planned");
        Ok(Outcome::Started(id))
    }

    /// The workflow's duration estimates, as the aggregator last wrote them (empty before
    /// its first finished execution; an unreadable snapshot is planned without, and said).
    async fn history(&self, workflow: &str) -> Result<assay_plan::History> {
        match self.bus.planning_history(workflow).await {
            Ok(history) => Ok(history),
            Err(e) if e.is_retryable() => Err(e.into()),
            Err(e) => {
                warn!(workflow, error = %e, "history snapshot unreadable; planning without it");
                Ok(assay_plan::History::new())
            }
        }
    }

    /// Takes a free slot of the scope (each slot is a key taken with a compare-and-set
    /// create); when all are held, returns the first slot and its holder.
    async fn acquire(&self, scope: &Scope, id: &str) -> Result<Option<(String, String)>> {
        let mut first_held = None;
        for n in 0..scope.max {
            let key = scope.slot(n);
            match self.active.create(&key, Bytes::from(id.to_string())).await {
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    let holder = self
                        .active
                        .get(&key)
                        .await
                        .map_err(|e| Error::kv("get", e))?
                        .map(|v| String::from_utf8_lossy(&v).to_string())
                        .unwrap_or_default();
                    // A redelivery of our own request holds a slot already.
                    if holder == id {
                        return Ok(None);
                    }
                    first_held.get_or_insert((key, holder));
                }
                Err(e) => return Err(Error::kv("create", e)),
            }
        }
        Ok(first_held)
    }

    /// Keys of `store` that start with `prefix`, sorted.
    async fn keys_with_prefix(store: &kv::Store, prefix: &str) -> Result<Vec<String>> {
        use futures::TryStreamExt;
        let mut keys: Vec<String> = store
            .keys()
            .await
            .map_err(|e| Error::kv("keys", e))?
            .try_collect()
            .await
            .map_err(|e| Error::kv("keys", e))?;
        keys.retain(|k| k.starts_with(prefix));
        keys.sort();
        Ok(keys)
    }

    /// Publishes only the shard jobs (the plan record is out already), all at once.
    async fn publish_shards(&self, plan: &Plan) -> Result<()> {
        let id = &plan.execution.id;
        let shards = plan.shards.iter().map(|job| {
            self.bus
                .publish(subjects::shard_job(id, job.shard_index), job)
        });
        for r in futures::future::join_all(shards).await {
            r?;
        }
        Ok(())
    }

    /// Publishes the shard jobs, then (once the streams acked them all) the plan record,
    /// which marks the cause done.
    async fn publish(&self, plan: &Plan) -> Result<()> {
        self.publish_shards(plan).await?;
        self.bus
            .publish(
                subjects::execution_plan(&plan.execution.id),
                &plan.execution,
            )
            .await?;
        Ok(())
    }

    /// Releases a `forbid` slot when its execution ends.
    async fn on_update(&self, update: ExecutionUpdate, delivered: i64) -> Result<()> {
        let terminal = !matches!(
            ExecutionStatus::try_from(update.status).unwrap_or(ExecutionStatus::Unspecified),
            ExecutionStatus::Unspecified | ExecutionStatus::Queued | ExecutionStatus::Running
        );
        if !terminal {
            return Ok(());
        }
        let catalog = self.defs.get();
        let Ok(w) = catalog.workflow(&update.workflow) else {
            return Ok(()); // a workflow no longer defined holds no slot we could find
        };
        let scope = Scope::of(w);
        let mut released = false;
        for n in 0..scope.max {
            let key = scope.slot(n);
            let entry = self
                .active
                .entry(&key)
                .await
                .map_err(|e| Error::kv("entry", e))?;
            if let Some(entry) = entry
                && entry.operation == kv::Operation::Put
                && entry.value.as_ref() == update.execution_id.as_bytes()
            {
                // Only delete what we read, so a newer holder is never released by mistake.
                self.active
                    .delete_expect_revision(&key, Some(entry.revision))
                    .await
                    .map_err(|e| Error::kv("delete", e))?;
                debug!(workflow = %update.workflow, execution = %update.execution_id, "concurrency slot released");
                released = true;
            }
        }
        // Only a freed slot lets a waiting execution start (a redelivery may be the retry of
        // a release whose start did not happen).
        if released || delivered > 1 {
            self.start_waiting(&scope).await?;
        }
        Ok(())
    }

    /// Starts the first execution waiting for the scope's slot (highest priority, then
    /// oldest), if the slot is free.
    /// Safe to call any time and from several schedulers: the slot is taken with a
    /// compare-and-set create, and the waiting entry is removed only after its shards
    /// are published.
    async fn start_waiting(&self, scope: &Scope) -> Result<()> {
        let keys = Self::keys_with_prefix(&self.waiting, &scope.prefix()).await?;
        let Some(next) = keys.first() else {
            return Ok(());
        };
        let Some(raw) = self
            .waiting
            .get(next)
            .await
            .map_err(|e| Error::kv("get", e))?
        else {
            return Ok(());
        };
        let pending = match <assay_proto::PendingPlan as prost::Message>::decode(raw.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                warn!(key = %next, error = %e, "unreadable waiting execution dropped");
                let _ = self.waiting.delete(next).await;
                return Ok(());
            }
        };
        let Some(execution) = pending.execution.clone() else {
            let _ = self.waiting.delete(next).await;
            return Ok(());
        };
        if self.acquire(scope, &execution.id).await?.is_some() {
            return Ok(()); // still held: its end starts us
        }
        let plan = Plan {
            execution,
            shards: pending.shards,
        };
        self.publish_shards(&plan).await?;
        self.waiting
            .delete(next)
            .await
            .map_err(|e| Error::kv("delete", e))?;
        info!(execution = %plan.execution.id, workflow = %plan.execution.workflow, scope = %scope.name, "queued execution started");
        Ok(())
    }
}
