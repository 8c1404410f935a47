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
    selection: &Selection,
    rerun_of: &str,
) -> Result<Plan> {
    let spec = &workflow.spec;
    // Explicit selections fix the shards: no empty shard (it would list the whole suite).
    let fixed: Option<Vec<Vec<String>>> = match selection {
        Selection::Listed => None,
        Selection::Ids(ids) => {
            let n = (spec.parallel.max_shards() as usize).min(ids.len()).max(1);
            Some(assay_spec::shard::split_by_count(ids, n))
        }
        Selection::Frozen(shards) => {
            Some(shards.iter().filter(|s| !s.is_empty()).cloned().collect())
        }
    };
    if fixed.as_ref().is_some_and(|f| f.iter().all(Vec::is_empty)) {
        return Err(Error::Spec(
            "nothing to rerun: the selection names no test".to_string(),
        ));
    }
    let shard_count = match &fixed {
        Some(f) => f.len() as u32,
        None => shard_count_for(spec, history),
    };
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
        rerun_of: rerun_of.to_string(),
    };
    let trace = execution.header.as_ref().map(|h| h.traceparent.clone());
    let by_duration = fixed.is_none() && spec.strategy() == assay_spec::Strategy::Duration;
    let by_queue = fixed.is_none() && spec.strategy() == assay_spec::Strategy::Queue;
    let (planned, planned_hashes): (Vec<Vec<String>>, Vec<u64>) = if let Some(f) = fixed {
        (f, Vec::new())
    } else if by_duration {
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
    let strategy = if by_duration {
        "duration"
    } else if by_queue {
        "queue"
    } else {
        "count"
    };
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
            batch_overhead_ms: ms(spec.parallel.batch_overhead, 100),
            lease_ms: ms(spec.parallel.lease, 30_000),
            fail_fast: spec.parallel.fail_fast,
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
        let p = plan(
            "E1",
            &w,
            config,
            &cause,
            &assay_plan::History::new(),
            &Selection::Listed,
            "",
        )
        .unwrap();
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
        let a = plan(
            "E",
            &w,
            c.clone(),
            &Cause::default(),
            &h,
            &Selection::Listed,
            "",
        )
        .unwrap();
        let b = plan("E", &w, c, &Cause::default(), &h, &Selection::Listed, "").unwrap();
        let strip = |mut j: ShardJob| {
            j.header = None;
            j
        };
        let a: Vec<_> = a.shards.into_iter().map(strip).collect();
        let b: Vec<_> = b.shards.into_iter().map(strip).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn reruns_fix_the_shards_and_never_leave_one_empty() {
        let w = workflow(W);
        let c = w.resolve_config(&BTreeMap::new()).unwrap();
        let h = assay_plan::History::new();
        let ids = Selection::Ids(vec!["a".into(), "b".into()]);
        let p = plan("E", &w, c.clone(), &Cause::default(), &h, &ids, "OLD").unwrap();
        assert_eq!(p.execution.rerun_of, "OLD");
        assert_eq!(p.shards.len(), 2, "count 3 but only 2 tests");
        assert_eq!(p.shards[1].test_ids, ["b"]);
        assert_eq!(p.shards[1].strategy, "count");
        let frozen =
            Selection::Frozen(vec![vec!["x".into()], vec![], vec!["y".into(), "z".into()]]);
        let p = plan("E", &w, c.clone(), &Cause::default(), &h, &frozen, "OLD").unwrap();
        let got: Vec<_> = p.shards.iter().map(|s| s.test_ids.clone()).collect();
        assert_eq!(
            got,
            vec![
                vec!["x".to_string()],
                vec!["y".to_string(), "z".to_string()]
            ]
        );
        assert_eq!(p.execution.shard_count, 2);
        let none = Selection::Ids(vec![]);
        assert!(plan("E", &w, c, &Cause::default(), &h, &none, "OLD").is_err());
    }

    #[test]
    fn count_auto_picks_the_fewest_shards_that_meet_the_target() {
        let yaml = W.replace(
            "parallel: {count: 3}",
            "parallel: {count: auto, maxCount: 8, targetDuration: 2s}",
        );
        let w = workflow(&yaml);
        let mut h: assay_plan::History = (0..10)
            .map(|i| (format!("t{i}"), assay_plan::Estimate::exact(1000.0)))
            .collect();
        h.set_shard_start_ms(0.0);
        assert_eq!(shard_count_for(&w.spec, &h), 5, "10 s of work, 2 s target");
        h.set_shard_start_ms(500.0);
        assert_eq!(
            shard_count_for(&w.spec, &h),
            8,
            "1.5 s per shard needs 7; at most 8"
        );
        h.set_shard_start_ms(1500.0);
        assert_eq!(shard_count_for(&w.spec, &h), 8, "cannot meet it: maxCount");
        assert_eq!(
            shard_count_for(&w.spec, &assay_plan::History::new()),
            8,
            "no history: maxCount"
        );
        let c = w.resolve_config(&BTreeMap::new()).unwrap();
        h.set_shard_start_ms(0.0);
        let p = plan("E", &w, c, &Cause::default(), &h, &Selection::Listed, "").unwrap();
        assert_eq!(p.shards.len(), 5);
    }
}
