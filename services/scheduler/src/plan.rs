//! Pure planning: a workflow, its resolved config and a cause become an [`Execution`]
//! record and its [`ShardJob`]s. No I/O, so it is unit-tested directly.

use std::collections::BTreeMap;

use assay_proto::{Execution, ExecutionStatus, ShardJob, Step, TestsSpec};
use assay_spec::{Workflow, expand};

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
        created_at_ms: assay_bus::now_ms(),
        ..Default::default()
    }
}

fn steps(list: &[assay_spec::Step], config: &BTreeMap<String, String>) -> Result<Vec<Step>> {
    list.iter()
        .map(|s| {
            Ok(Step {
                name: s.name.clone(),
                run: expand(&s.run, config).map_err(Error::spec)?,
                timeout_ms: s.timeout.map(|d| d.as_millis() as u64).unwrap_or(0),
                retries: s.retries,
                condition: format!("{:?}", s.condition).to_lowercase(),
                env: s
                    .env
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), expand(v, config).map_err(Error::spec)?)))
                    .collect::<Result<_>>()?,
            })
        })
        .collect()
}

/// Plans `workflow` with `config` (already resolved) into `parallel.count` shards. With
/// `strategy: duration`, the tests `history` knows are split longest-first (LPT) and each
/// shard is told its own and the hashes of all planned tests; tests without history are
/// placed by the runners with a stable hash.
pub fn plan(
    id: &str,
    workflow: &Workflow,
    config: BTreeMap<String, String>,
    cause: &Cause,
    history: &assay_plan::History,
) -> Result<Plan> {
    let spec = &workflow.spec;
    let shard_count = spec.parallel.count.max(1);
    let timeout_ms = spec.timeout.map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut env = BTreeMap::new();
    for (k, v) in &spec.env {
        env.insert(k.clone(), expand(v, &config).map_err(Error::spec)?);
    }
    let tests = match &spec.tests {
        Some(t) => Some(TestsSpec {
            list: expand(t.list.as_deref().unwrap_or(""), &config).map_err(Error::spec)?,
            run: expand(&t.run, &config).map_err(Error::spec)?,
            reports: t.reports.clone(),
        }),
        None => None,
    };
    let (setup, main, after) = (
        steps(&spec.setup, &config)?,
        steps(&spec.steps, &config)?,
        steps(&spec.after, &config)?,
    );
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
        config: config.clone().into_iter().collect(),
        labels: workflow.labels.clone().into_iter().collect(),
        created_at_ms: assay_bus::now_ms(),
        timeout_ms,
    };
    let trace = execution.header.as_ref().map(|h| h.traceparent.clone());
    let by_duration = spec.parallel.strategy == assay_spec::Strategy::Duration;
    let (planned, planned_hashes): (Vec<Vec<String>>, Vec<u64>) = if by_duration {
        let known: Vec<String> = history.ids().map(str::to_string).collect();
        let p = assay_plan::lpt(&known, history, shard_count as usize);
        let hashes = p
            .shards
            .iter()
            .flatten()
            .map(|t| assay_plan::stable_hash(t))
            .collect();
        (p.shards, hashes)
    } else {
        (Vec::new(), Vec::new())
    };
    let strategy = if by_duration { "duration" } else { "count" };
    let shards = (0..shard_count)
        .map(|i| ShardJob {
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
            working_dir: working_dir.clone(),
            test_ids: planned.get(i as usize).cloned().unwrap_or_default(),
            strategy: strategy.to_string(),
            planned_hashes: planned_hashes.clone(),
            retries: spec.retries.count,
            retry_on: format!("{:?}", spec.retries.on).to_lowercase(),
        })
        .collect();
    Ok(Plan { execution, shards })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn workflow(yaml: &str) -> Workflow {
        match assay_spec::parse_str(Path::new("w.yaml"), yaml)
            .unwrap()
            .remove(0)
        {
            assay_spec::Definition::Workflow(w) => w,
            other => panic!("not a workflow: {other:?}"),
        }
    }

    const W: &str = r#"
apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: demo, labels: {suite: e2e}}
spec:
  config:
    url: {type: string, default: "http://a"}
  env: {BASE: "{{ config.url }}"}
  steps:
    - name: hello
      run: echo {{ config.url }}
  tests:
    list: printf 'a\nb\n'
    run: run {tests} --out {report}
    reports: ["{report}"]
  parallel: {count: 3}
  timeout: 2m
"#;

    #[test]
    fn plans_one_job_per_shard_with_expanded_templates() {
        let w = workflow(W);
        let config = w
            .resolve_config(&BTreeMap::from([("url".into(), "http://b".into())]))
            .unwrap();
        let cause = Cause {
            key: "k".into(),
            ..Default::default()
        };
        let p = plan("E1", &w, config, &cause, &assay_plan::History::new()).unwrap();
        assert_eq!(p.execution.shard_count, 3);
        assert_eq!(p.execution.timeout_ms, 120_000);
        assert_eq!(p.shards.len(), 3);
        let keys: Vec<_> = p
            .shards
            .iter()
            .map(|s| s.header.as_ref().unwrap().idempotency_key.clone())
            .collect();
        assert_eq!(keys, ["E1/0/1", "E1/1/1", "E1/2/1"]);
        assert_eq!(p.shards[1].env["BASE"], "http://b");
        assert_eq!(p.shards[2].steps[0].run, "echo http://b");
        assert_eq!(
            p.shards[0].tests.as_ref().unwrap().run,
            "run {tests} --out {report}"
        );
        // One trace for the whole execution.
        let trace = |h: &Option<assay_proto::Header>| {
            assay_bus::trace::trace_id(&h.as_ref().unwrap().traceparent).map(str::to_string)
        };
        assert_eq!(trace(&p.execution.header), trace(&p.shards[2].header));
    }

    #[test]
    fn plan_is_deterministic_apart_from_headers() {
        let w = workflow(W);
        let c = w.resolve_config(&BTreeMap::new()).unwrap();
        let h = assay_plan::History::new();
        let a = plan("E", &w, c.clone(), &Cause::default(), &h).unwrap();
        let b = plan("E", &w, c, &Cause::default(), &h).unwrap();
        let strip = |mut j: ShardJob| {
            j.header = None;
            j
        };
        let a: Vec<_> = a.shards.into_iter().map(strip).collect();
        let b: Vec<_> = b.shards.into_iter().map(strip).collect();
        assert_eq!(a, b);
    }
}
