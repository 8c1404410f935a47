//! Pure planning: a workflow, its resolved config and a cause become an [`Execution`]
//! record and its [`ShardJob`]s. No I/O, so it is unit-tested directly.

use std::collections::BTreeMap;

use assay_proto::{Execution, ExecutionStatus, Provenance, ShardJob, Step, TailBatch, TestsSpec};
use assay_spec::{EventContext, MASKED, TemplateVars, Workflow, variant_label};

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

/// One matrix combination's shards (the whole workflow when it has no matrix).
struct Group {
    combination: BTreeMap<String, String>,
    variant: String,
    /// The shards' explicit test ids (listed ids, without the variant suffix); empty lists
    /// when the runners list the tests themselves.
    shards: Vec<Vec<String>>,
    /// Duration mode: stable hashes of every test the group's plan assigned (head and tail).
    planned_hashes: Vec<u64>,
    /// Duration mode: the plan's shared tail, which every shard of the group drains after
    /// its own tests.
    tail: Vec<TailBatch>,
}

/// Which group a qualified test id belongs to, and the listed id inside it.
fn group_of<'a>(variants: &[String], id: &'a str) -> Option<(usize, &'a str)> {
    variants
        .iter()
        .enumerate()
        .find_map(|(g, v)| assay_plan::unqualify(id, v).map(|raw| (g, raw)))
}

fn unknown_variant(workflow: &str, id: &str) -> Error {
    Error::Spec(format!(
        "test id \"{id}\" belongs to no matrix combination of workflow \"{workflow}\" (did its matrix change?); run the workflow again instead"
    ))
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
    let combinations = spec.combinations().map_err(Error::spec)?;
    let variants: Vec<String> = combinations.iter().map(variant_label).collect();
    let strategy = spec.strategy();
    let by_duration =
        matches!(selection, Selection::Listed) && strategy == assay_spec::Strategy::Duration;
    let by_queue =
        matches!(selection, Selection::Listed) && strategy == assay_spec::Strategy::Queue;
    let mut groups: Vec<Group> = combinations
        .into_iter()
        .zip(&variants)
        .map(|(combination, variant)| Group {
            combination,
            variant: variant.clone(),
            shards: Vec::new(),
            planned_hashes: Vec::new(),
            tail: Vec::new(),
        })
        .collect();
    match selection {
        Selection::Listed => {
            for g in &mut groups {
                let h = history.for_variant(&g.variant);
                let n = shard_count_for(spec, &h) as usize;
                g.shards = if by_duration {
                    let known: Vec<String> = h.ids().map(str::to_string).collect();
                    let overhead = ms(spec.parallel.batch_overhead, DEFAULT_BATCH_OVERHEAD_MS);
                    let p = assay_plan::duration_plan(&known, &h, n, overhead as f64);
                    g.planned_hashes = p.all_ids().map(assay_plan::stable_hash).collect();
                    g.tail = p
                        .tail
                        .iter()
                        .map(|b| TailBatch {
                            test_hashes: b
                                .tests
                                .iter()
                                .map(|t| assay_plan::stable_hash(t))
                                .collect(),
                            expected_ms: b.expected_ms,
                        })
                        .collect();
                    p.head.shards
                } else {
                    vec![Vec::new(); n]
                };
            }
        }
        // Explicit selections fix the shards: no empty shard (it would list the whole suite).
        Selection::Ids(ids) => {
            let mut by_group: Vec<Vec<String>> = vec![Vec::new(); groups.len()];
            for qualified in ids {
                let (g, raw) = group_of(&variants, qualified)
                    .ok_or_else(|| unknown_variant(&workflow.name, qualified))?;
                by_group[g].push(raw.to_string());
            }
            for (g, ids) in groups.iter_mut().zip(by_group) {
                if ids.is_empty() {
                    continue;
                }
                let n = (spec.parallel.max_shards() as usize).min(ids.len()).max(1);
                g.shards = assay_spec::shard::split_by_count(&ids, n);
            }
        }
        Selection::Frozen(shards) => {
            for shard in shards.iter().filter(|s| !s.is_empty()) {
                let (g, _) = group_of(&variants, &shard[0])
                    .ok_or_else(|| unknown_variant(&workflow.name, &shard[0]))?;
                let raw = shard
                    .iter()
                    .map(|t| {
                        assay_plan::unqualify(t, &variants[g])
                            .map(str::to_string)
                            .ok_or_else(|| unknown_variant(&workflow.name, t))
                    })
                    .collect::<Result<Vec<_>>>()?;
                groups[g].shards.push(raw);
            }
        }
    }
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
    let workload = workload(spec)?;
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
    let strategy = if by_duration {
        "duration"
    } else if by_queue {
        "queue"
    } else {
        "count"
    };
    let event: EventContext = crate::decision::template_context(&cause.provenance);
    let mut shards = Vec::with_capacity(shard_count as usize);
    for (group, g) in groups.iter().enumerate() {
        if g.shards.is_empty() {
            continue;
        }
        let c = &g.combination;
        let vars = TemplateVars {
            config: &config,
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
                masked: masked.clone(),
                tail: g.tail.clone(),
                workload: workload.clone(),
                git: crate::content::git_checkout(
                    spec.content.as_ref().and_then(|c| c.git.as_ref()),
                    &cause.provenance,
                ),
            });
        }
    }
    Ok(Plan { execution, shards })
}

/// The workflow's `container` and `pod` settings as the kubernetes backend reads them
/// (ignored by the local backend); `None` when the workflow sets neither.
fn workload(spec: &assay_spec::WorkflowSpec) -> Result<Option<assay_proto::Workload>> {
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
    fn an_execution_without_a_timeout_gets_the_maximum_and_one_with_keeps_its_own() {
        let cause = Cause::default();
        let planned = |yaml: &str| {
            let w = workflow(yaml);
            let config = w.resolve_config(&BTreeMap::new()).unwrap();
            let history = assay_plan::History::new();
            plan("E1", &w, config, &cause, &history, &Selection::Listed, "").unwrap()
        };
        let day = std::time::Duration::from_secs(24 * 3600);
        let mut p = planned(&W.replace("  timeout: 2m\n", ""));
        assert_eq!((p.execution.timeout_ms, p.shards[0].deadline_ms), (0, 0));
        limit_time(&mut p, day);
        assert_eq!(p.execution.timeout_ms, 86_400_000);
        assert!(
            p.shards
                .iter()
                .all(|j| j.deadline_ms == p.execution.created_at_ms + 86_400_000)
        );
        // Its own timeout stands; zero means no maximum.
        let mut own = planned(W);
        let before = own.clone();
        limit_time(&mut own, day);
        assert_eq!(own.execution, before.execution);
        let mut free = planned(&W.replace("  timeout: 2m\n", ""));
        limit_time(&mut free, std::time::Duration::ZERO);
        assert_eq!(free.execution.timeout_ms, 0);
    }

    fn pushed(labels: &[(&str, &str)]) -> Cause {
        Cause {
            key: "gh-1/on-push/demo".into(),
            trigger: "on-push".into(),
            traceparent: String::new(),
            provenance: Provenance {
                trigger: "on-push".into(),
                event_id: "01EVENT".into(),
                source: "github".into(),
                r#type: "push".into(),
                idempotency_key: "gh-1".into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                requested_by: String::new(),
                occurred_at_ms: 1_700_000_000_000,
            },
        }
    }

    #[test]
    fn every_record_and_shard_job_carries_the_provenance() {
        let w = workflow(W);
        let c = w.resolve_config(&BTreeMap::new()).unwrap();
        let cause = pushed(&[("branch", "main"), ("sha", "abc")]);
        let p = plan(
            "E",
            &w,
            c,
            &cause,
            &assay_plan::History::new(),
            &Selection::Listed,
            "",
        )
        .unwrap();
        assert_eq!(p.execution.provenance.as_ref(), Some(&cause.provenance));
        assert_eq!(p.execution.trigger, "on-push");
        assert_eq!(p.execution.cause, "gh-1/on-push/demo");
        assert_eq!(p.shards.len(), 3);
        for job in &p.shards {
            assert_eq!(job.provenance.as_ref(), Some(&cause.provenance));
        }
        let r = rejected("R", "", &cause, ExecutionStatus::Errored, "why".into());
        assert_eq!(r.provenance.as_ref(), Some(&cause.provenance));
        assert_eq!((r.shard_count, r.reason.as_str()), (0, "why"));
    }

    const EV: &str = r#"
apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: ev}
spec:
  env: {BRANCH: "{{ event.labels.branch }}", FROM: "{{ event.source }}/{{ event.type }}"}
  steps:
    - name: checkout
      run: git checkout {{ event.labels.sha }}
      env: {BY: "{{ event.trigger }}"}
  tests:
    list: ls tests-{{ event.labels.branch }}
    run: run {tests} --sha {{ event.labels.sha }}
"#;

    #[test]
    fn event_templates_expand_at_plan_time() {
        let w = workflow(EV);
        let c = w.resolve_config(&BTreeMap::new()).unwrap();
        let h = assay_plan::History::new();
        let cause = pushed(&[("branch", "main"), ("sha", "abc123")]);
        let p = plan("E", &w, c.clone(), &cause, &h, &Selection::Listed, "").unwrap();
        let job = &p.shards[0];
        assert_eq!(job.env["BRANCH"], "main");
        assert_eq!(job.env["FROM"], "github/push");
        assert_eq!(job.steps[0].run, "git checkout abc123");
        assert_eq!(job.steps[0].env["BY"], "on-push");
        let tests = job.tests.as_ref().unwrap();
        assert_eq!(tests.list, "ls tests-main");
        assert_eq!(tests.run, "run {tests} --sha abc123");

        // A label the event does not carry: a plan-time error naming the template and place.
        let cause = pushed(&[("repository", "acme/shop"), ("branch", "main")]);
        let err = plan("E", &w, c.clone(), &cause, &h, &Selection::Listed, "")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "template {{ event.labels.sha }} in steps[0].run: the event has no label \"sha\" (labels: branch, repository)"
        );
        // A value a shell would interpret stays out of commands, but env may carry it.
        let cause = pushed(&[("branch", "main"), ("sha", "$(reboot)")]);
        let err = plan("E", &w, c.clone(), &cause, &h, &Selection::Listed, "")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "template {{ event.labels.sha }} in steps[0].run: the event's value \"$(reboot)\""
            ),
            "{err}"
        );
        let cause = pushed(&[("branch", "a b"), ("sha", "abc")]);
        let err = plan("E", &w, c, &cause, &h, &Selection::Listed, "")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("in tests.list"),
            "env took it, the listing did not: {err}"
        );
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
        // Headers and deadlines (creation time + timeout) follow the clock.
        let strip = |mut j: ShardJob| {
            j.header = None;
            j.deadline_ms = 0;
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

    #[test]
    fn duration_plans_a_head_per_shard_and_one_shared_tail() {
        let yaml = W.replace(
            "parallel: {count: 3}",
            "parallel: {count: 2, strategy: duration}",
        );
        let w = workflow(&yaml);
        let c = w.resolve_config(&BTreeMap::new()).unwrap();
        // 4 long tests and 12 short ones: the short ones (1,200 of 9,200 ms) are the tail.
        let history: assay_plan::History = (0..16)
            .map(|i| {
                let ms = if i < 4 { 2000.0 } else { 100.0 };
                (format!("t{i:02}"), assay_plan::Estimate::exact(ms))
            })
            .collect();
        let p = plan(
            "E",
            &w,
            c.clone(),
            &Cause::default(),
            &history,
            &Selection::Listed,
            "",
        )
        .unwrap();
        assert_eq!(p.shards.len(), 2);
        assert_eq!(p.shards[0].strategy, "duration");
        assert_eq!(p.shards[0].tail, p.shards[1].tail, "one tail for the group");
        let tail: Vec<u64> = p.shards[0]
            .tail
            .iter()
            .flat_map(|b| b.test_hashes.clone())
            .collect();
        assert!(!tail.is_empty());
        let head: Vec<&String> = p.shards.iter().flat_map(|s| &s.test_ids).collect();
        // Every known test once: in one shard's head or in the tail, never both.
        assert_eq!(head.len() + tail.len(), 16);
        for id in &head {
            assert!(!tail.contains(&assay_plan::stable_hash(id)), "{id} twice");
        }
        let mut planned = p.shards[1].planned_hashes.clone();
        planned.sort_unstable();
        let mut all: Vec<u64> = history.ids().map(assay_plan::stable_hash).collect();
        all.sort_unstable();
        assert_eq!(planned, all);
        // The expected time of the tail is at most a fifth of the work.
        let tail_ms: f64 = p.shards[0].tail.iter().map(|b| b.expected_ms).sum();
        assert!(tail_ms > 0.0 && tail_ms <= 0.2 * 9200.0, "{tail_ms}");
        // Deterministic.
        let again = plan(
            "E",
            &w,
            c,
            &Cause::default(),
            &history,
            &Selection::Listed,
            "",
        )
        .unwrap();
        assert_eq!(again.shards[1].tail, p.shards[1].tail);
        assert_eq!(again.shards[1].test_ids, p.shards[1].test_ids);
    }

    const M: &str = r#"
apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: mx}
spec:
  env: {PY: "python{{ matrix.py }}"}
  steps:
    - name: hello
      run: echo {{ matrix.os }} {{ config.url }}
  config:
    url: {type: string, default: "http://a"}
  tests:
    list: ls tests-{{ matrix.os }}
    run: run {tests} --out {report}
  parallel: {count: 2, strategy: duration, matrix: {os: [linux, mac], py: ["3.11", "3.12"]}}
"#;

    #[test]
    fn matrix_plans_a_group_of_shards_per_combination() {
        let w = workflow(M);
        let c = w.resolve_config(&BTreeMap::new()).unwrap();
        let history: assay_plan::History = [
            ("a [os=linux,py=3.11]", 5.0),
            ("b [os=linux,py=3.11]", 3.0),
            ("c [os=linux,py=3.11]", 1.0),
            ("a [os=mac,py=3.12]", 2.0),
        ]
        .into_iter()
        .map(|(id, ms)| (id.to_string(), assay_plan::Estimate::exact(ms)))
        .collect();
        let p = plan(
            "E",
            &w,
            c.clone(),
            &Cause::default(),
            &history,
            &Selection::Listed,
            "",
        )
        .unwrap();
        assert_eq!(p.execution.shard_count, 8, "4 combinations x 2 shards");
        let got: Vec<(u32, u32, u32, u32, &str)> = p
            .shards
            .iter()
            .map(|s| {
                (
                    s.shard_index,
                    s.group,
                    s.group_shard_index,
                    s.group_shard_count,
                    s.variant.as_str(),
                )
            })
            .collect();
        assert_eq!(got[0], (0, 0, 0, 2, "os=linux,py=3.11"));
        assert_eq!(got[3], (3, 1, 1, 2, "os=linux,py=3.12"));
        assert_eq!(got[7], (7, 3, 1, 2, "os=mac,py=3.12"));
        let s5 = &p.shards[5];
        assert_eq!(s5.matrix.get("os").map(String::as_str), Some("mac"));
        assert_eq!(s5.steps[0].run, "echo mac http://a");
        assert_eq!(s5.env["PY"], "python3.11");
        assert_eq!(s5.tests.as_ref().unwrap().list, "ls tests-mac");
        // Duration plans per combination, on that combination's own history, by listed id.
        assert_eq!(p.shards[0].test_ids, ["a"]);
        assert_eq!(p.shards[1].test_ids, ["b", "c"]);
        assert_eq!(p.shards[0].planned_hashes.len(), 3);
        assert!(p.shards[2].test_ids.is_empty() && p.shards[2].planned_hashes.is_empty());
        assert_eq!(p.shards[6].test_ids, ["a"]);

        // A rerun of failed ids runs each in its own combination, and only those.
        let ids = Selection::Ids(vec![
            "x [os=mac,py=3.12]".into(),
            "y [os=linux,py=3.11]".into(),
            "z [os=mac,py=3.12]".into(),
        ]);
        let p = plan("R", &w, c.clone(), &Cause::default(), &history, &ids, "E").unwrap();
        let got: Vec<(&str, Vec<String>)> = p
            .shards
            .iter()
            .map(|s| (s.variant.as_str(), s.test_ids.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("os=linux,py=3.11", vec!["y".to_string()]),
                ("os=mac,py=3.12", vec!["x".to_string()]),
                ("os=mac,py=3.12", vec!["z".to_string()]),
            ]
        );
        assert_eq!(p.shards[2].group_shard_index, 1);
        let bad = Selection::Ids(vec!["x [os=win,py=3.12]".into()]);
        let err = plan("R", &w, c.clone(), &Cause::default(), &history, &bad, "E").unwrap_err();
        assert!(
            err.to_string().contains("belongs to no matrix combination"),
            "{err}"
        );

        // A frozen plan goes back to the combinations its shards ran in.
        let frozen = Selection::Frozen(vec![vec![
            "q [os=mac,py=3.11]".into(),
            "r [os=mac,py=3.11]".into(),
        ]]);
        let p = plan("F", &w, c, &Cause::default(), &history, &frozen, "E").unwrap();
        assert_eq!(p.shards.len(), 1);
        assert_eq!(p.shards[0].variant, "os=mac,py=3.11");
        assert_eq!(p.shards[0].test_ids, ["q", "r"]);
        assert_eq!(p.shards[0].steps[0].run, "echo mac http://a");
    }
}
