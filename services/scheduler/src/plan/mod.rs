//! Pure planning: a workflow, its resolved config and a cause become an [`Execution`]
//! record and its [`ShardJob`]s. No I/O, so it is unit-tested directly. [`groups`] decides
//! which tests each shard gets; [`jobs`] writes each shard's job.

mod groups;
mod jobs;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use assay_proto::{Execution, ExecutionStatus, Provenance, ShardJob};
use assay_spec::{MASKED, Workflow};

use crate::{Error, Result};

const PRODUCER: &str = "scheduler";

/// What caused an execution.
#[derive(Debug, Clone, Default)]
pub struct Cause {
    /// Idempotency key of the event or request (plus trigger and workflow for events).
    pub key: String,
    /// Trigger name, for triggered executions.
    pub trigger: String,
    /// Trace context to continue.
    pub traceparent: String,
    /// The event or request, as the execution's record and every shard job carry it (its
    /// `trigger` is this cause's trigger).
    pub provenance: Provenance,
}

/// A planned execution ready to publish.
#[derive(Debug, Clone)]
pub struct Plan {
    pub execution: Execution,
    pub shards: Vec<ShardJob>,
}

fn parent(cause: &Cause) -> Option<&str> {
    (!cause.traceparent.is_empty()).then_some(cause.traceparent.as_str())
}

/// Dates the execution `at` (Unix ms: when its cause was first claimed), its shards'
/// deadlines with it.
pub fn created_at(plan: &mut Plan, at: i64) {
    plan.execution.created_at_ms = at;
    if plan.execution.timeout_ms > 0 {
        let deadline =
            at.saturating_add(i64::try_from(plan.execution.timeout_ms).unwrap_or(i64::MAX));
        for job in &mut plan.shards {
            job.deadline_ms = deadline;
        }
    }
}

/// Gives an execution whose workflow sets no `timeout` the scheduler's maximum (zero: none),
/// deadline included, so that nothing it starts can stay queued or running forever.
pub fn limit_time(plan: &mut Plan, max: std::time::Duration) {
    if plan.execution.timeout_ms > 0 || max.is_zero() {
        return;
    }
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    plan.execution.timeout_ms = ms;
    let deadline = plan
        .execution
        .created_at_ms
        .saturating_add(i64::try_from(ms).unwrap_or(i64::MAX));
    for job in &mut plan.shards {
        job.deadline_ms = deadline;
    }
}

/// An execution that will not run (unknown workflow, bad parameters, concurrency
/// rejection): recorded with a terminal status and the reason, so it can be queried.
pub fn rejected(
    id: &str,
    workflow: &str,
    cause: &Cause,
    status: ExecutionStatus,
    reason: String,
) -> Execution {
    Execution {
        header: Some(assay_bus::header(
            PRODUCER,
            format!("{id}/plan"),
            parent(cause),
        )),
        id: id.to_string(),
        workflow: workflow.to_string(),
        shard_count: 0,
        status: status as i32,
        reason,
        trigger: cause.trigger.clone(),
        cause: cause.key.clone(),
        provenance: Some(cause.provenance.clone()),
        created_at_ms: assay_bus::now_ms(),
        ..Default::default()
    }
}

/// Per-shard start cost assumed by `count: auto` until the history measures it.
pub const DEFAULT_SHARD_START_MS: f64 = 1000.0;

/// The shard count: fixed, or with `count: auto` the fewest shards whose longest-first plan
/// over the known tests (plus the start cost of a shard) meets `targetDuration`, at most
/// `maxCount`; `maxCount` when there is no history to judge by.
pub fn shard_count_for(spec: &assay_spec::WorkflowSpec, history: &assay_plan::History) -> u32 {
    let par = &spec.parallel;
    match par.count {
        assay_spec::ShardCount::Fixed(n) => n.max(1),
        assay_spec::ShardCount::Auto => {
            let max = par.max_shards();
            let target = par
                .target_duration
                .map(|d| d.as_millis() as f64)
                .unwrap_or(0.0);
            if history.is_empty() || target <= 0.0 {
                return max;
            }
            let known: Vec<String> = history.ids().map(str::to_string).collect();
            let start = history.shard_start_ms().unwrap_or(DEFAULT_SHARD_START_MS);
            assay_plan::auto_count(&known, history, target, max as usize, start)
                .map(|n| n as u32)
                .unwrap_or(max)
                .clamp(1, max)
        }
    }
}

/// `parallel.batchOverhead` when the workflow does not say: the start-up of `tests.run`.
const DEFAULT_BATCH_OVERHEAD_MS: u64 = 100;

fn ms(d: Option<std::time::Duration>, default_ms: u64) -> u64 {
    d.map(|d| d.as_millis() as u64).unwrap_or(default_ms)
}

/// Which tests an execution runs.
#[derive(Debug, Clone, Default)]
pub enum Selection {
    /// Whatever `tests.list` prints, split by the workflow's strategy.
    #[default]
    Listed,
    /// Only these ids (a rerun of failed tests), split by count over at most
    /// `parallel.count` shards.
    Ids(Vec<String>),
    /// A frozen shard plan to replay (`assay rerun --same-plan`): one list per shard.
    Frozen(Vec<Vec<String>>),
}

/// Plans `workflow` with `config` (already resolved). Each matrix combination (one without
/// matrix) is a group of `parallel.count` shards that splits the suite among themselves.
/// With `strategy: duration`, the tests `history` knows for the combination are planned by
/// [`assay_plan::duration_plan`]: the shortest ones (about a fifth of the estimated work) form
/// a shared tail, in queue batches that every shard of the group carries (as hashes); the
/// rest are split longest-first (LPT). Each shard is told its own head tests and the hashes
/// of all planned tests; tests without history are placed by the runners with a stable hash.
pub fn plan(
    id: &str,
    workflow: &Workflow,
    config: BTreeMap<String, String>,
    cause: &Cause,
    history: &assay_plan::History,
    selection: &Selection,
    rerun_of: &str,
) -> Result<Plan> {
    let spec = &workflow.spec;
    let (groups, strategy) = groups::assign(workflow, history, selection)?;
    let shard_count: u32 = groups.iter().map(|g| g.shards.len() as u32).sum();
    if shard_count == 0 {
        return Err(Error::Spec(
            "nothing to rerun: the selection names no test".to_string(),
        ));
    }
    let timeout_ms = spec.timeout.map(|d| d.as_millis() as u64).unwrap_or(0);
    // Sensitive values: masked by the runners, and never in the execution's record.
    let sensitive = |k: &str| spec.config.get(k).is_some_and(|p| p.sensitive);
    let masked: Vec<String> = config
        .iter()
        .filter(|(k, v)| sensitive(k) && !v.is_empty())
        .map(|(_, v)| v.clone())
        .collect();
    let recorded_config = config
        .iter()
        .map(|(k, v)| {
            let v = if sensitive(k) {
                MASKED.to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    let workload = jobs::workload(spec)?;
    let working_dir = spec
        .working_dir
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let execution = Execution {
        header: Some(assay_bus::header(
            PRODUCER,
            format!("{id}/plan"),
            parent(cause),
        )),
        id: id.to_string(),
        workflow: workflow.name.clone(),
        shard_count,
        status: ExecutionStatus::Queued as i32,
        reason: String::new(),
        trigger: cause.trigger.clone(),
        cause: cause.key.clone(),
        provenance: Some(cause.provenance.clone()),
        config: recorded_config,
        labels: workflow.labels.clone().into_iter().collect(),
        created_at_ms: assay_bus::now_ms(),
        timeout_ms,
        rerun_of: rerun_of.to_string(),
        priority: spec.concurrency.priority.unwrap_or(0),
    };
    let deadline_ms = if timeout_ms > 0 {
        execution.created_at_ms + timeout_ms as i64
    } else {
        0
    };
    let trace = execution.header.as_ref().map(|h| h.traceparent.clone());
    let shards = jobs::shard_jobs(
        &jobs::Shared {
            id,
            workflow,
            config: &config,
            cause,
            shard_count,
            timeout_ms,
            deadline_ms,
            trace,
            strategy,
            masked: &masked,
            workload,
            working_dir,
        },
        &groups,
    )?;
    Ok(Plan { execution, shards })
}
