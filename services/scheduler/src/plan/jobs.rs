//! The [`ShardJob`] of every shard: the workflow's steps, env and tests with their
//! templates expanded per matrix combination, plus what every shard of the execution
//! shares (deadline, strategy, workload, git checkout).

use std::collections::BTreeMap;

use assay_proto::{ShardJob, Step, TestsSpec};
use assay_spec::{EventContext, TemplateVars, Workflow};

use super::groups::Group;
use super::{Cause, DEFAULT_BATCH_OVERHEAD_MS, PRODUCER, ms};
use crate::{Error, Result};

/// What every shard job of one execution shares.
pub(super) struct Shared<'a> {
    pub id: &'a str,
    pub workflow: &'a Workflow,
    pub config: &'a BTreeMap<String, String>,
    pub cause: &'a Cause,
    pub shard_count: u32,
    pub timeout_ms: u64,
    pub deadline_ms: i64,
    /// The execution's trace context, continued by every job.
    pub trace: Option<String>,
    pub strategy: &'static str,
    /// Sensitive config values the runners mask.
    pub masked: &'a [String],
    pub workload: Option<assay_proto::Workload>,
    pub working_dir: String,
}

/// The jobs of every shard of `groups`, numbered across groups in order.
pub(super) fn shard_jobs(shared: &Shared<'_>, groups: &[Group]) -> Result<Vec<ShardJob>> {
    let Shared {
        id,
        workflow,
        config,
        cause,
        shard_count,
        timeout_ms,
        deadline_ms,
        ref trace,
        strategy,
        masked,
        ref workload,
        ref working_dir,
    } = *shared;
    let spec = &workflow.spec;
    let event: EventContext = crate::decision::template_context(&cause.provenance);
    let mut shards = Vec::with_capacity(shard_count as usize);
    for (group, g) in groups.iter().enumerate() {
        if g.shards.is_empty() {
            continue;
        }
        let c = &g.combination;
        let vars = TemplateVars {
            config,
            matrix: Some(c),
            event: Some(&event),
        };
        let mut env = BTreeMap::new();
        for (k, v) in &spec.env {
            env.insert(k.clone(), expand(&vars, v, &|| format!("env.{k}"), false)?);
        }
        let (setup, main, after) = (
            steps("setup", &spec.setup, &vars)?,
            steps("steps", &spec.steps, &vars)?,
            steps("after", &spec.after, &vars)?,
        );
        let tests = match &spec.tests {
            Some(t) => Some(TestsSpec {
                list: expand(
                    &vars,
                    t.list.as_deref().unwrap_or(""),
                    &|| "tests.list".to_string(),
                    true,
                )?,
                run: expand(&vars, &t.run, &|| "tests.run".to_string(), true)?,
                reports: t.reports.clone(),
            }),
            None => None,
        };
        let group_shard_count = g.shards.len() as u32;
        for (j, test_ids) in g.shards.iter().enumerate() {
            let i = shards.len() as u32;
            shards.push(ShardJob {
                header: Some(assay_bus::header(
                    PRODUCER,
                    format!("{id}/{i}/1"),
                    trace.as_deref(),
                )),
                execution_id: id.to_string(),
                workflow: workflow.name.clone(),
                shard_index: i,
                shard_count,
                attempt: 1,
                setup: setup.clone(),
                steps: main.clone(),
                after: after.clone(),
                tests: tests.clone(),
                env: env.clone().into_iter().collect(),
                timeout_ms,
                deadline_ms,
                // Set by the launcher from `attempt` when it takes the job.
                job_attempt: 0,
                // Set when the scheduler stores a large plan apart.
                plan_data: String::new(),
                provenance: Some(cause.provenance.clone()),
                working_dir: working_dir.clone(),
                test_ids: test_ids.clone(),
                strategy: strategy.to_string(),
                planned_hashes: g.planned_hashes.clone(),
                retries: spec.retries.count,
                retry_on: format!("{:?}", spec.retries.on).to_lowercase(),
                batch_overhead_ms: ms(spec.parallel.batch_overhead, DEFAULT_BATCH_OVERHEAD_MS),
                lease_ms: ms(spec.parallel.lease, 30_000),
                fail_fast: spec.parallel.fail_fast,
                matrix: c.clone().into_iter().collect(),
                variant: g.variant.clone(),
                group: group as u32,
                group_shard_index: j as u32,
                group_shard_count,
                masked: masked.to_vec(),
                tail: g.tail.clone(),
                workload: workload.clone(),
                git: crate::content::git_checkout(
                    spec.content.as_ref().and_then(|c| c.git.as_ref()),
                    &cause.provenance,
                ),
            });
        }
    }
    Ok(shards)
}

/// Expands `text` from `vars`, saying where a template went wrong: `template {{ event.labels.sha }}
/// in steps[0].run: the event has no label "sha" (labels: branch, repository)`.
fn expand(
    vars: &TemplateVars<'_>,
    text: &str,
    at: &dyn Fn() -> String,
    shell: bool,
) -> Result<String> {
    let expanded = if shell {
        vars.expand_shell(text)
    } else {
        vars.expand(text)
    };
    expanded.map_err(|e| match &e {
        assay_spec::Error::MissingEventLabel { placeholder, .. }
        | assay_spec::Error::UnsafeEventValue { placeholder, .. } => {
            Error::Spec(format!("template {placeholder} in {}: {e}", at()))
        }
        assay_spec::Error::UnknownEventField { .. } => Error::Spec(format!("{}: {e}", at())),
        _ => Error::spec(e),
    })
}

fn steps(section: &str, list: &[assay_spec::Step], vars: &TemplateVars<'_>) -> Result<Vec<Step>> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            Ok(Step {
                name: s.name.clone(),
                run: expand(vars, &s.run, &|| format!("{section}[{i}].run"), true)?,
                timeout_ms: s.timeout.map(|d| d.as_millis() as u64).unwrap_or(0),
                retries: s.retries,
                // Empty when the step does not say: the runner applies the list's default.
                condition: s
                    .condition
                    .map(|c| format!("{c:?}").to_lowercase())
                    .unwrap_or_default(),
                env: s
                    .env
                    .iter()
                    .map(|(k, v)| {
                        let at = || format!("{section}[{i}].env.{k}");
                        Ok((k.clone(), expand(vars, v, &at, false)?))
                    })
                    .collect::<Result<_>>()?,
            })
        })
        .collect()
}

/// The workflow's `container` and `pod` settings as the kubernetes backend reads them
/// (ignored by the local backend); `None` when the workflow sets neither.
pub(super) fn workload(spec: &assay_spec::WorkflowSpec) -> Result<Option<assay_proto::Workload>> {
    if spec.container.is_none() && spec.pod.is_none() {
        return Ok(None);
    }
    let json = |what: &str, v: Result<String, serde_json::Error>| {
        v.map_err(|e| Error::Spec(format!("{what}: cannot be written as JSON: {e}")))
    };
    let container_json = match &spec.container {
        Some(c) => json("container", serde_json::to_string(c))?,
        None => String::new(),
    };
    let pod_json = match &spec.pod {
        Some(p) => json("pod", serde_json::to_string(p))?,
        None => String::new(),
    };
    Ok(Some(assay_proto::Workload {
        image: spec
            .container
            .as_ref()
            .map(|c| c.image.clone())
            .unwrap_or_default(),
        container_json,
        pod_json,
        ..Default::default()
    }))
}
