//! The scheduler: matches trigger events to `TestTrigger`s and triggers to `TestWorkflow`s,
//! creates executions (one per event, trigger and workflow, however often the event is
//! delivered), applies the workflow's concurrency policy, and publishes the planned
//! execution and one shard job per shard.
//!
//! - `intake`: the header check, requester-chosen ids, which triggers fire;
//! - [`plan`]: a workflow, its config and a cause become an execution and its shard jobs
//!   (pure), with `{{ config.* }}`, `{{ matrix.* }}` and `{{ event.* }}` expanded;
//! - `decision`: provenance and the `EventRecord` of each event (pure);
//! - `dedup`: what the `assay_dedup` bucket remembers;
//! - `concurrency`: slots (`assay_active`) and waiting executions (`assay_waiting`);
//! - `kv`: the bucket operations those two are built on, replaced in their unit tests.
//!
//! The execution's plan record on `assay.v1.plans.<id>` is always the last thing published
//! for a cause (after its shard jobs or its waiting entry): its presence is what says a cause
//! is done, so the hot path writes one dedup key per execution, not two. The event's record
//! on `assay.v1.decisions.<source>` comes after every execution it started.

mod concurrency;
mod content;
mod decision;
mod dedup;
mod intake;
mod kv;
pub mod plan;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use assay_bus::{Bus, ConsumerSpec, Delivery, Failure, NatsOptions, consumer, streams, subjects};
use assay_cluster::{CatalogSource, StatusWriter};
use assay_proto::{Execution, ExecutionStatus, ExecutionUpdate, RunRequest, TriggerEvent};
use assay_spec::{Policy, SharedCatalog};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use concurrency::{Scope, Slots};
use decision::Outcome;
use dedup::{Dedup, Seen};
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
    /// The catalog cannot be opened (a directory, or the cluster's objects).
    #[error(transparent)]
    Catalog(#[from] assay_cluster::Error),
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
            Error::Spec(_) | Error::Catalog(_) => false,
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
    /// Directory of `TestWorkflow` and `TestTrigger` files (reloaded when it changes);
    /// unused with [`CatalogSource::Kubernetes`].
    pub workflows: PathBuf,
    /// Where workflows and triggers come from: the `workflows` directory (default) or the
    /// cluster's `TestWorkflow`/`TestTrigger` objects, whose status the scheduler then
    /// writes (validity, and each workflow's last execution).
    pub catalog: CatalogSource,
    /// Events handled at once.
    pub concurrency: usize,
    /// The timeout of an execution whose workflow sets none, so that nothing stays queued
    /// or running forever; zero: no limit.
    pub max_execution_time: Duration,
}

/// [`Options::max_execution_time`] by default.
pub const DEFAULT_MAX_EXECUTION_TIME: Duration = Duration::from_secs(24 * 3600);

impl Default for Options {
    fn default() -> Self {
        Options {
            nats: NatsOptions::default(),
            workflows: PathBuf::from(".assay"),
            catalog: CatalogSource::default(),
            concurrency: 1024,
            max_execution_time: DEFAULT_MAX_EXECUTION_TIME,
        }
    }
}

/// Runs the scheduler until `shutdown`.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<()> {
    let opened = match assay_cluster::open(
        &options.catalog,
        &options.workflows,
        Some("assay-scheduler"),
        &shutdown,
    )
    .await
    {
        Ok(opened) => opened,
        // A directory's problems stay a definition error, as before.
        Err(assay_cluster::Error::Spec(e)) => return Err(Error::spec(e)),
        Err(e) => return Err(e.into()),
    };
    let defs = opened.catalog;
    let catalog = defs.get();
    info!(from = %catalog.dir().display(), workflows = catalog.workflows().count(), triggers = catalog.triggers().count(), "definitions loaded");
    let bus = Bus::connect(&options.nats, &shutdown).await?;
    bus.ensure_topology().await?;
    let scheduler = Scheduler {
        bus: bus.clone(),
        dedup: Dedup::new(Arc::new(kv::Bucket(bus.kv(streams::KV_DEDUP).await?))),
        slots: Slots::new(
            Arc::new(kv::Bucket(bus.kv(streams::KV_ACTIVE).await?)),
            Arc::new(kv::Bucket(bus.kv(streams::KV_WAITING).await?)),
        ),
        defs: defs.clone(),
        max_execution_time: options.max_execution_time,
        status: opened.status,
    };
    // Set-up that can fail is done: /readyz may answer 200 (while NATS stays connected).
    options.nats.health.set_ready();
    let watch = tokio::spawn(opened.keeper);

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
        // A rerun's selection of test ids may be large: any request the stream took
        // (up to its 1 MiB limit) is handled.
        let spec = ConsumerSpec {
            max_message_bytes: streams::MAX_MESSAGE_BYTES as usize,
            ..ConsumerSpec::new(streams::EVENTS, "scheduler-runs")
                .filter([subjects::RUN_REQUESTED.to_string()])
                .concurrency(options.concurrency)
        };
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
                    report::updated(s.status.as_ref(), &d.msg);
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
    slots: Slots,
    defs: SharedCatalog,
    max_execution_time: Duration,
    /// Writes `TestWorkflow` status (`--catalog kubernetes` only).
    status: Option<StatusWriter>,
}

impl Scheduler {
    /// What an earlier delivery made of a cause, read from its plan record.
    pub(crate) async fn recorded(&self, id: String) -> Result<Outcome> {
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

    pub(crate) async fn reject_once(
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
            Seen::New(id, _) | Seen::Pending(id, _) => id,
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
        report::planned(self.status.as_ref(), &exec);
        self.bus
            .publish(subjects::execution_plan(id), &exec)
            .await?;
        Ok(Outcome::Rejected {
            id: id.to_string(),
            reason,
        })
    }

    pub(crate) async fn start(
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
            // An execution is created when its cause was first claimed, however often a
            // crashed scheduler's redelivery plans it again.
            Seen::New(id, at) => (id, Some(at)),
            Seen::Pending(id, at) => (id, at),
        };
        let (id, claimed_at) = id;
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
        let planned = planned.map(|(w, mut p)| {
            if let Some(at) = claimed_at {
                plan::created_at(&mut p, at);
            }
            plan::limit_time(&mut p, self.max_execution_time);
            (w, p)
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
        // Plans of large suites travel apart from their jobs (jobs, and the waiting
        // entry that holds them, stay small).
        let mut offloaded = 0;
        for job in &mut plan.shards {
            offloaded += usize::from(self.bus.offload_plan(job).await?);
        }
        if offloaded > 0 {
            info!(execution = %id, workflow, shards = offloaded, "shard plans stored apart (too large for a job message)");
        }
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
            && let Some(held) = self.slots.acquire(&scope, &id).await?
        {
            let running = held.holder;
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
            && let Some(held) = self.slots.acquire(&scope, &id).await?
        {
            let running = held.holder;
            // Wait for the slot: recorded as queued now, started when the running one ends.
            let pending = assay_proto::PendingPlan {
                execution: Some(plan.execution.clone()),
                shards: plan.shards.clone(),
            };
            self.slots.enqueue(&scope, &pending).await?;
            // Recorded as queued (no shard runs yet); `assay get executions` shows its place.
            self.bus
                .publish(subjects::execution_plan(&id), &plan.execution)
                .await?;
            info!(execution = %id, workflow, after = %running, priority = plan.execution.priority, "execution queued");
            report::planned(self.status.as_ref(), &plan.execution);
            // The running one may have ended meanwhile.
            self.start_waiting(&scope).await?;
            return Ok(Outcome::Started(id));
        }
        if policy == Policy::Replace {
            // The newer execution wins: stop the running one and take its slot.
            let reason = format!("replaced by execution {id} (concurrency policy replace)");
            self.slots
                .replace(&scope, &id, |running| {
                    info!(execution = %running, workflow, replaced_by = %id, "cancelling the running execution");
                    let (bus, reason) = (&self.bus, &reason);
                    async move { Ok(bus.cancel(&running, reason).await?) }
                })
                .await?;
        }
        self.publish(&plan).await?;
        report::planned(self.status.as_ref(), &plan.execution);
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
}
