//! Every field of the `TestWorkflow` and `TestTrigger` models has an observed effect or is
//! refused by the validator with the reason.
//!
//! The list of fields comes from the model itself ([`trace::fields`] drives the types'
//! derived `Deserialize`), so a field added to the model without a row here fails
//! `every_model_field_has_a_row`. Each row says how the field is honoured:
//! - `Here(test)`: a test in this file uses the field and asserts what it does;
//! - `Elsewhere(file, test)`: a named test in `tests/integration/tests/<file>` does (checked
//!   to exist and to use the field's YAML key);
//! - `Refused(reason)`: the validator refuses the field with a message naming it, its
//!   file:line:column and the reason (checked by `refused_fields_are_refused_with_a_reason`);
//! - `Metadata(why)`: Kubernetes object metadata, accepted so that resources read back from a
//!   cluster parse, with no behaviour by design.

#[path = "fields/trace.rs"]
mod trace;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use assay_integration::{Sandbox, describe, output_text, status_of};
use assay_proto::{ExecutionStatus, Header, ListEventsRequest, TriggerEvent};

#[derive(Debug, Clone, Copy)]
enum Row {
    Here(&'static str),
    Elsewhere(&'static str, &'static str),
    Refused(&'static str),
    Metadata(&'static str),
}
use Row::*;

const STEPS: Row = Here("steps_honour_condition_env_retries_and_timeout");
const TRIGGERS: Row = Here("triggers_fire_only_on_what_they_declare");
/// container and pod: the kubernetes backend puts them on the shard's Pod
/// (services/executor-launcher/tests/kubernetes.rs checks the Pod); the local backend ignores
/// them, so the same workflow runs on a laptop and on a cluster.
const K8S: Row = Elsewhere(
    "../../../services/executor-launcher/tests/kubernetes.rs",
    "the_pod_carries_the_workflows_settings_and_the_runner_credentials_secret",
);
/// container.command/args: the container runs assay-runner, so they are refused.
const K8S_CMD: Row = Refused("the shard's container runs assay-runner");
/// Kubernetes triggers: fired by trigger-watcher's cluster watch, tested against the fake
/// API server in the trigger-watcher's own tests.
const CLUSTER_TESTS: &str = "../../../services/trigger-watcher/tests/cluster.rs";
const CLUSTER: Row = Elsewhere(
    CLUSTER_TESTS,
    "namespaces_match_expressions_and_conditions_pick_the_objects_and_changes",
);
/// content.git: checked out by the runner (tests/integration/tests/content_git.rs: the
/// revision, the paths written, the secret handed to the job).
const GIT: Row = Elsewhere(
    "content_git.rs",
    "a_suite_checked_out_from_git_runs_at_the_workflow_revision_or_the_event_sha",
);
const KEPT: Row = Metadata("Kubernetes object metadata, kept for resources read from a cluster");

/// Every leaf field of both models. Paths as in YAML: `a.b`, `a[].b` (list items), `a.*.b`
/// (values of a map keyed by the user).
const TABLE: &[(&str, Row)] = &[
    ("metadata.name", STEPS),
    ("metadata.labels", TRIGGERS),
    ("metadata.annotations", KEPT),
    ("metadata.namespace", KEPT),
    // TestWorkflow
    (
        "TestWorkflow spec.config.*.type",
        Here("config_parameters_are_typed_defaulted_and_described"),
    ),
    (
        "TestWorkflow spec.config.*.default",
        Here("config_parameters_are_typed_defaulted_and_described"),
    ),
    (
        "TestWorkflow spec.config.*.description",
        Here("config_parameters_are_typed_defaulted_and_described"),
    ),
    (
        "TestWorkflow spec.config.*.sensitive",
        Elsewhere(
            "secrets.rs",
            "sensitive_values_are_masked_in_logs_results_and_the_record",
        ),
    ),
    ("TestWorkflow spec.container.args", K8S_CMD),
    ("TestWorkflow spec.container.command", K8S_CMD),
    ("TestWorkflow spec.container.env", K8S),
    ("TestWorkflow spec.container.image", K8S),
    ("TestWorkflow spec.container.imagePullPolicy", K8S),
    ("TestWorkflow spec.container.resources.limits", K8S),
    ("TestWorkflow spec.container.resources.requests", K8S),
    ("TestWorkflow spec.container.workingDir", K8S),
    ("TestWorkflow spec.pod.affinity", K8S),
    ("TestWorkflow spec.pod.nodeSelector", K8S),
    ("TestWorkflow spec.pod.priorityClassName", K8S),
    ("TestWorkflow spec.pod.serviceAccountName", K8S),
    ("TestWorkflow spec.pod.tolerations", K8S),
    ("TestWorkflow spec.pod.labels", K8S),
    ("TestWorkflow spec.pod.annotations", K8S),
    ("TestWorkflow spec.content.git.url", GIT),
    ("TestWorkflow spec.content.git.revision", GIT),
    ("TestWorkflow spec.content.git.paths", GIT),
    ("TestWorkflow spec.content.git.credentials.secretName", GIT),
    ("TestWorkflow spec.artifacts", Refused("not supported yet")),
    ("TestWorkflow spec.env", STEPS),
    ("TestWorkflow spec.workingDir", STEPS),
    ("TestWorkflow spec.setup[].name", STEPS),
    ("TestWorkflow spec.setup[].run", STEPS),
    ("TestWorkflow spec.setup[].env", STEPS),
    ("TestWorkflow spec.setup[].condition", STEPS),
    ("TestWorkflow spec.setup[].retries", STEPS),
    (
        "TestWorkflow spec.setup[].timeout",
        Here("step_timeouts_end_the_step_and_fail_the_shard"),
    ),
    ("TestWorkflow spec.steps[].name", STEPS),
    ("TestWorkflow spec.steps[].run", STEPS),
    ("TestWorkflow spec.steps[].env", STEPS),
    ("TestWorkflow spec.steps[].condition", STEPS),
    ("TestWorkflow spec.steps[].retries", STEPS),
    (
        "TestWorkflow spec.steps[].timeout",
        Here("step_timeouts_end_the_step_and_fail_the_shard"),
    ),
    ("TestWorkflow spec.after[].name", STEPS),
    ("TestWorkflow spec.after[].run", STEPS),
    ("TestWorkflow spec.after[].env", STEPS),
    ("TestWorkflow spec.after[].condition", STEPS),
    ("TestWorkflow spec.after[].retries", STEPS),
    (
        "TestWorkflow spec.after[].timeout",
        Here("step_timeouts_end_the_step_and_fail_the_shard"),
    ),
    (
        "TestWorkflow spec.tests.list",
        Elsewhere(
            "e2e.rs",
            "multi_shard_suite_runs_end_to_end_and_every_test_lands_once",
        ),
    ),
    (
        "TestWorkflow spec.tests.run",
        Elsewhere(
            "e2e.rs",
            "multi_shard_suite_runs_end_to_end_and_every_test_lands_once",
        ),
    ),
    (
        "TestWorkflow spec.tests.reports",
        Elsewhere(
            "e2e.rs",
            "a_report_that_is_not_xml_errors_the_shard_with_the_file_named",
        ),
    ),
    (
        "TestWorkflow spec.parallel.count",
        Elsewhere(
            "e2e.rs",
            "multi_shard_suite_runs_end_to_end_and_every_test_lands_once",
        ),
    ),
    (
        "TestWorkflow spec.parallel.maxCount",
        Here("auto_count_uses_max_count_without_history"),
    ),
    (
        "TestWorkflow spec.parallel.targetDuration",
        Here("auto_count_uses_max_count_without_history"),
    ),
    (
        "TestWorkflow spec.parallel.strategy",
        Elsewhere(
            "e2e.rs",
            "duration_strategy_balances_shards_from_history_and_runs_new_tests_once",
        ),
    ),
    (
        "TestWorkflow spec.parallel.failFast",
        Elsewhere(
            "e2e.rs",
            "fail_fast_cancels_the_other_shards_at_the_first_failure",
        ),
    ),
    (
        "TestWorkflow spec.parallel.batchOverhead",
        Here("batch_overhead_sizes_queue_batches"),
    ),
    (
        "TestWorkflow spec.parallel.lease",
        Elsewhere(
            "e2e.rs",
            "queue_mode_survives_a_stalled_worker_and_counts_every_test_once",
        ),
    ),
    (
        "TestWorkflow spec.parallel.matrix",
        Elsewhere(
            "matrix.rs",
            "matrix_runs_every_combination_in_its_own_shards_and_reruns_only_where_it_failed",
        ),
    ),
    (
        "TestWorkflow spec.concurrency.policy",
        Elsewhere(
            "e2e.rs",
            "concurrency_forbid_rejects_a_second_run_with_the_reason",
        ),
    ),
    (
        "TestWorkflow spec.concurrency.group",
        Elsewhere(
            "e2e.rs",
            "a_concurrency_group_limits_executions_across_workflows",
        ),
    ),
    (
        "TestWorkflow spec.concurrency.max",
        Elsewhere(
            "e2e.rs",
            "a_concurrency_group_limits_executions_across_workflows",
        ),
    ),
    (
        "TestWorkflow spec.concurrency.priority",
        Elsewhere(
            "e2e.rs",
            "queued_executions_start_by_priority_then_in_arrival_order",
        ),
    ),
    (
        "TestWorkflow spec.timeout",
        Elsewhere("e2e.rs", "a_shard_over_its_timeout_is_killed_and_timed_out"),
    ),
    (
        "TestWorkflow spec.retries.count",
        Elsewhere(
            "e2e.rs",
            "an_errored_shard_is_retried_up_to_the_workflow_retries",
        ),
    ),
    (
        "TestWorkflow spec.retries.on",
        Elsewhere(
            "flaky.rs",
            "failing_tests_are_retried_and_a_pass_on_retry_is_flaky",
        ),
    ),
    // TestTrigger
    ("TestTrigger spec.on.event.source", TRIGGERS),
    ("TestTrigger spec.on.event.type", TRIGGERS),
    ("TestTrigger spec.on.event.labels", TRIGGERS),
    (
        "TestTrigger spec.on.cron.schedule",
        Elsewhere("e2e.rs", "a_cron_trigger_fires_on_schedule"),
    ),
    (
        "TestTrigger spec.on.cron.timezone",
        Here("cron_timezone_moves_the_next_fire_time"),
    ),
    ("TestTrigger spec.on.kubernetes.kind", CLUSTER),
    (
        "TestTrigger spec.on.kubernetes.group",
        Elsewhere(
            CLUSTER_TESTS,
            "forbidden_and_unknown_kinds_are_errors_of_their_triggers_only",
        ),
    ),
    (
        "TestTrigger spec.on.kubernetes.version",
        Elsewhere(
            CLUSTER_TESTS,
            "forbidden_and_unknown_kinds_are_errors_of_their_triggers_only",
        ),
    ),
    (
        "TestTrigger spec.on.kubernetes.namespace",
        Elsewhere(
            CLUSTER_TESTS,
            "a_deployment_rollout_fires_exactly_one_event_with_what_was_deployed",
        ),
    ),
    ("TestTrigger spec.on.kubernetes.namespaces", CLUSTER),
    (
        "TestTrigger spec.on.kubernetes.name",
        Elsewhere(
            CLUSTER_TESTS,
            "ten_modifications_within_the_settle_window_fire_one_event",
        ),
    ),
    (
        "TestTrigger spec.on.kubernetes.selector",
        Elsewhere(
            CLUSTER_TESTS,
            "a_deployment_rollout_fires_exactly_one_event_with_what_was_deployed",
        ),
    ),
    (
        "TestTrigger spec.on.kubernetes.matchExpressions[].key",
        CLUSTER,
    ),
    (
        "TestTrigger spec.on.kubernetes.matchExpressions[].operator",
        CLUSTER,
    ),
    (
        "TestTrigger spec.on.kubernetes.matchExpressions[].values",
        CLUSTER,
    ),
    ("TestTrigger spec.on.kubernetes.event", CLUSTER),
    ("TestTrigger spec.on.kubernetes.conditions[].path", CLUSTER),
    (
        "TestTrigger spec.on.kubernetes.conditions[].equals",
        CLUSTER,
    ),
    (
        "TestTrigger spec.on.kubernetes.conditions[].changed",
        CLUSTER,
    ),
    (
        "TestTrigger spec.on.kubernetes.conditions[].changedTo",
        Elsewhere(
            CLUSTER_TESTS,
            "a_changed_to_condition_fires_on_the_transition_only",
        ),
    ),
    (
        "TestTrigger spec.on.kubernetes.conditions[].changedFrom",
        CLUSTER,
    ),
    (
        "TestTrigger spec.on.kubernetes.settle",
        Elsewhere(
            CLUSTER_TESTS,
            "ten_modifications_within_the_settle_window_fire_one_event",
        ),
    ),
    (
        "TestTrigger spec.on.kubernetes.supersede",
        Elsewhere(
            "../../../services/trigger-watcher/tests/cluster_supersede.rs",
            "a_new_revision_supersedes_the_execution_of_the_older_one",
        ),
    ),
    ("TestTrigger spec.on.webhook.provider", TRIGGERS),
    ("TestTrigger spec.on.webhook.events", TRIGGERS),
    ("TestTrigger spec.on.webhook.repositories", TRIGGERS),
    ("TestTrigger spec.on.webhook.branches", TRIGGERS),
    ("TestTrigger spec.on.webhook.tags", TRIGGERS),
    ("TestTrigger spec.on.webhook.paths", TRIGGERS),
    ("TestTrigger spec.run.workflow", TRIGGERS),
    ("TestTrigger spec.run.selector", TRIGGERS),
    ("TestTrigger spec.run.config", TRIGGERS),
    (
        "TestTrigger spec.concurrency.policy",
        Here("trigger_concurrency_policy_overrides_the_workflows"),
    ),
    (
        "TestTrigger spec.concurrency.priority",
        Here("trigger_concurrency_policy_overrides_the_workflows"),
    ),
    (
        "TestTrigger spec.concurrency.group",
        Refused("the workflow's"),
    ),
    (
        "TestTrigger spec.concurrency.max",
        Refused("the workflow's"),
    ),
    ("TestTrigger spec.settle", Refused("not supported yet")),
];

/// The leaf fields of both models (a field with fields of its own is covered by them).
fn model_fields() -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for f in trace::fields::<assay_spec::Metadata>() {
        all.insert(format!("metadata.{f}"));
    }
    for f in trace::fields::<assay_spec::WorkflowSpec>() {
        all.insert(format!("TestWorkflow spec.{f}"));
    }
    for f in trace::fields::<assay_spec::TriggerSpec>() {
        all.insert(format!("TestTrigger spec.{f}"));
    }
    let parents: BTreeSet<String> = all
        .iter()
        .filter(|p| {
            all.iter().any(|q| {
                q.len() > p.len()
                    && q.starts_with(p.as_str())
                    && matches!(&q[p.len()..p.len() + 1], "." | "[")
            })
        })
        .cloned()
        .collect();
    all.difference(&parents).cloned().collect()
}

#[test]
fn the_tracer_sees_nested_fields() {
    let fields = model_fields();
    for expected in [
        "TestWorkflow spec.steps[].condition",
        "TestWorkflow spec.config.*.sensitive",
        "TestWorkflow spec.container.resources.limits",
        "TestTrigger spec.on.webhook.paths",
        "metadata.name",
    ] {
        assert!(
            fields.contains(expected),
            "{expected} missing from {fields:#?}"
        );
    }
    assert!(fields.len() >= 80, "only {} fields traced", fields.len());
}

#[test]
fn every_model_field_has_a_row() {
    let fields = model_fields();
    let rows: BTreeSet<String> = TABLE.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(rows.len(), TABLE.len(), "a field has two rows");
    let missing: Vec<_> = fields.difference(&rows).collect();
    let stale: Vec<_> = rows.difference(&fields).collect();
    assert!(
        missing.is_empty(),
        "model fields without a row in TABLE (add a test of what they do, or refuse them \
         in the validator and add a Refused row): {missing:#?}"
    );
    assert!(
        stale.is_empty(),
        "rows for fields the model no longer has: {stale:#?}"
    );
}

#[test]
fn here_rows_name_tests_of_this_file_and_elsewhere_rows_real_tests_using_the_field() {
    let here = include_str!("fields.rs");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    for (path, row) in TABLE {
        let key = path
            .rsplit(['.', ' '])
            .next()
            .unwrap_or(path)
            .trim_end_matches("[]");
        match row {
            Here(test) => assert!(
                here.contains(&format!("async fn {test}()"))
                    || here.contains(&format!("fn {test}()")),
                "{path}: no test {test} in fields.rs"
            ),
            Elsewhere(file, test) => {
                let text = std::fs::read_to_string(dir.join(file))
                    .unwrap_or_else(|e| panic!("{path}: cannot read {file}: {e}"));
                let start = text
                    .find(&format!("fn {test}("))
                    .unwrap_or_else(|| panic!("{path}: no test {test} in {file}"));
                // The test's own body, or the helpers of its file, use the key.
                assert!(
                    text[start..].contains(key) || text.contains(&format!("{key}:")),
                    "{path}: {file}::{test} does not use `{key}`"
                );
            }
            Refused(_) | Metadata(_) => {}
        }
    }
}

/// A minimal document using the field at `path`, and the YAML key the error must name.
fn document_with(path: &str) -> String {
    let (kind, rest) = path.split_once(' ').unwrap_or(("", path));
    let rest = rest.trim_start_matches("spec.");
    // Build the nested YAML for `a.b.c` with a sample value.
    let parts: Vec<&str> = rest.split('.').collect();
    let value = match *parts.last().unwrap_or(&"") {
        "args" | "command" | "tolerations" | "artifacts" | "paths" => "[x]".to_string(),
        "limits" | "requests" => "{cpu: \"1\"}".to_string(),
        "env" | "nodeSelector" | "affinity" | "selector" | "labels" | "annotations" => {
            "{A: b}".to_string()
        }
        "namespaces" | "values" => "[x]".to_string(),
        "changed" | "supersede" => "true".to_string(),
        "event" => "modified".to_string(),
        "operator" => "Exists".to_string(),
        "kubernetes" => "{kind: Deployment, event: modified}".to_string(),
        "settle" => "5s".to_string(),
        "max" => "2".to_string(),
        _ => "x".to_string(),
    };
    let mut yaml = value;
    for (i, p) in parts.iter().enumerate().rev() {
        // Required siblings, so that the document gets as far as the validator: a
        // container's image, a git checkout's url, a kubernetes trigger's kind and event, a
        // match expression's key and operator, a condition's path.
        let required: &[&str] = match parts[..i].join(".").as_str() {
            "container" => &["image: x"],
            "content.git" => &["url: x"],
            "on.kubernetes" => &["kind: Deployment", "event: modified"],
            "on.kubernetes.matchExpressions[]" => &["key: a", "operator: Exists"],
            "on.kubernetes.conditions[]" => &["path: .a"],
            _ => &[],
        };
        let key = p.trim_end_matches("[]");
        let sibling: String = required
            .iter()
            .filter(|r| !r.starts_with(&format!("{key}:")))
            .map(|r| format!("{r}, "))
            .collect();
        // `a[]` is a list of one item.
        yaml = if p.ends_with("[]") {
            format!("{{{sibling}{key}: [{yaml}]}}")
        } else {
            format!("{{{sibling}{p}: {yaml}}}")
        };
    }
    // `{a: {b: v}}` -> the spec's own keys inline.
    let inner = &yaml[1..yaml.len() - 1];
    match kind {
        "TestWorkflow" => format!(
            "apiVersion: assay.dev/v1alpha1\nkind: TestWorkflow\nmetadata: {{name: w}}\nspec:\n  steps: [{{name: s, run: \"true\"}}]\n  {inner}\n"
        ),
        _ => {
            let on = if rest.starts_with("on.") {
                String::new()
            } else {
                "  on: {event: {source: ci}}\n".to_string()
            };
            format!(
                "apiVersion: assay.dev/v1alpha1\nkind: TestTrigger\nmetadata: {{name: t}}\nspec:\n{on}  run: {{workflow: w}}\n  {inner}\n"
            )
        }
    }
}

#[test]
fn refused_fields_are_refused_with_a_reason() {
    for (path, row) in TABLE {
        let Refused(reason) = row else { continue };
        let doc = document_with(path);
        // The message names the field, or the whole setting it belongs to (`container`).
        let leaf = path.rsplit('.').next().unwrap_or(path);
        let top = path
            .split_once(" spec.")
            .map(|(_, rest)| rest.split('.').next().unwrap_or(rest))
            .unwrap_or(leaf);
        let err = match assay_spec::parse_str(Path::new("defs.yaml"), &doc) {
            Ok(_) => panic!("{path} was accepted, but its row says it is refused:\n{doc}"),
            Err(e) => e.to_string(),
        };
        assert!(
            (err.contains(leaf) || err.contains(top))
                && err.contains(reason)
                && err.contains("defs.yaml:"),
            "{path}: the error should name `{leaf}` or `{top}`, its location and `{reason}`:\n{err}\n---\n{doc}"
        );
    }
}

#[test]
fn metadata_fields_are_accepted() {
    for (path, row) in TABLE {
        let Metadata(why) = row else { continue };
        assert!(!why.is_empty(), "{path}: say why it has no behaviour");
        let key = path.trim_start_matches("metadata.");
        let value = if key == "annotations" { "{a: b}" } else { "ns" };
        let doc = format!(
            "apiVersion: assay.dev/v1alpha1\nkind: TestWorkflow\nmetadata: {{name: w, {key}: {value}}}\nspec:\n  steps: [{{name: s, run: \"true\"}}]\n"
        );
        if let Err(e) = assay_spec::parse_str(Path::new("defs.yaml"), &doc) {
            panic!("{path} refused: {e}");
        }
    }
}

// ---- behaviour ---------------------------------------------------------------------------

const LONG: Duration = Duration::from_secs(60);

fn workflow_file(name: &str, dir: &Path, body: &str) -> String {
    format!(
        "apiVersion: assay.dev/v1alpha1\nkind: TestWorkflow\nmetadata: {{name: {name}}}\nspec:\n  workingDir: {}\n{body}",
        dir.display()
    )
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

fn reason(d: &assay_proto::ExecutionDetail) -> String {
    d.execution
        .as_ref()
        .map(|e| e.reason.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steps_honour_condition_env_retries_and_timeout() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let body = r#"  env: {WF: wf-env}
  config:
    greeting: {type: string, default: hello}
  setup:
    - name: prepare
      run: 'echo "setup $WF $SETUP_ONLY" > setup.txt; if [ ! -f s.marker ]; then touch s.marker; exit 3; fi'
      env: {SETUP_ONLY: s-env}
      retries: 1
    - name: setup-on-failure
      condition: failure
      run: touch setup-failure-ran
  steps:
    - name: flaky-step
      run: 'echo run >> flaky.log; if [ ! -f f.marker ]; then touch f.marker; exit 3; fi'
      retries: 2
    - name: greet
      run: 'echo "{{ config.greeting }} $WF $STEP_ONLY" > greet.txt'
      env: {STEP_ONLY: st-env}
    - name: boom
      run: exit 7
    - name: skipped-after-failure
      run: touch should-not-exist
    - name: on-failure
      condition: failure
      run: 'echo "$STEP_ONLY" > failure-ran'
    - name: always-step
      condition: always
      run: touch always-ran
  after:
    - name: after-success
      condition: success
      run: touch after-success-ran
    - name: after-failure
      condition: failure
      run: 'echo "$AFTER_ONLY" >> after-failure-ran; [ "$(wc -l < after-failure-ran)" -ge 2 ]'
      env: {AFTER_ONLY: a-env}
      retries: 1
    - name: after-always
      condition: always
      run: touch after-always-ran
    - name: after-undeclared
      run: touch after-undeclared-ran
"#;
    let sb = Sandbox::start(&[("w.yaml", &workflow_file("stepwise", dir, body))]).await;
    let id = sb.run("stepwise", &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    // The first failure decides: `boom`, not the steps that passed on a retry.
    assert_eq!(status_of(&d), ExecutionStatus::Failed, "{}", describe(&d));
    assert!(reason(&d).contains("boom"), "{}", describe(&d));
    // setup: retried once, workflow and step env.
    assert_eq!(
        read(dir, "setup.txt").as_deref(),
        Some("setup wf-env s-env")
    );
    assert!(
        read(dir, "setup-failure-ran").is_none(),
        "setup failure step ran without a failure"
    );
    // steps: retries, templating of config defaults, step env only in its own step.
    assert_eq!(read(dir, "flaky.log").as_deref(), Some("run\nrun"));
    assert_eq!(
        read(dir, "greet.txt").as_deref(),
        Some("hello wf-env st-env")
    );
    assert!(
        read(dir, "should-not-exist").is_none(),
        "a success step ran after a failure"
    );
    assert_eq!(
        read(dir, "failure-ran").as_deref(),
        Some(""),
        "on-failure: ran, without greet's env"
    );
    assert!(read(dir, "always-ran").is_some());
    // after: by the shard's outcome.
    assert!(
        read(dir, "after-success-ran").is_none(),
        "after-success ran on a failed shard"
    );
    assert_eq!(
        read(dir, "after-failure-ran").as_deref(),
        Some("a-env\na-env")
    );
    assert!(read(dir, "after-always-ran").is_some());
    // An after step that does not say runs whatever happened.
    assert!(read(dir, "after-undeclared-ran").is_some());
    // Step names label the logs.
    let logs = sb.logs_text(&id, false, Duration::from_secs(5)).await;
    for name in ["prepare", "flaky-step", "boom", "after-always"] {
        assert!(logs.contains(name), "step {name} not in the logs:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn step_timeouts_end_the_step_and_fail_the_shard() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let setup = "  setup:\n    - {name: slow-setup, run: 'sleep 30', timeout: 1s}\n  steps:\n    - {name: never, run: 'touch never-ran'}\n  after:\n    - {name: slow-after, condition: always, run: 'sleep 30', timeout: 1s}\n    - {name: after-after, condition: always, run: 'touch after-ran'}\n";
    let steps = "  steps:\n    - {name: slow-step, run: 'sleep 30', timeout: 1s}\n";
    let sb = Sandbox::start(&[
        ("a.yaml", &workflow_file("slow-setup", dir, setup)),
        ("b.yaml", &workflow_file("slow-step", dir, steps)),
    ])
    .await;
    for (wf, step) in [("slow-setup", "slow-setup"), ("slow-step", "slow-step")] {
        let id = sb.run(wf, &[]).await;
        let d = sb.wait_for_terminal(&id, LONG).await;
        assert!(
            matches!(
                status_of(&d),
                ExecutionStatus::Failed | ExecutionStatus::Errored
            ),
            "{}",
            describe(&d)
        );
        let why = reason(&d);
        assert!(
            why.contains(step) && why.contains("timed out"),
            "{}",
            describe(&d)
        );
    }
    // The after step over its timeout was ended too: the one after it ran; the step after
    // the failed setup did not.
    assert!(read(dir, "after-ran").is_some());
    assert!(read(dir, "never-ran").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_parameters_are_typed_defaulted_and_described() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let body = "  config:\n    count: {type: integer, default: \"2\", description: how many widgets}\n  steps:\n    - {name: s, run: 'echo {{ config.count }} > count.txt'}\n";
    let sb = Sandbox::start(&[("w.yaml", &workflow_file("typed", dir, body))]).await;
    // default
    let id = sb.run("typed", &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(status_of(&d), ExecutionStatus::Passed, "{}", describe(&d));
    assert_eq!(read(dir, "count.txt").as_deref(), Some("2"));
    // type: a value that is not an integer is refused with the reason.
    let id = sb.run("typed", &[("count", "many")]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(status_of(&d), ExecutionStatus::Errored, "{}", describe(&d));
    assert!(reason(&d).contains("integer"), "{}", describe(&d));
    // description: shown with the workflow's parameters.
    let out = sb
        .assay(&[
            "get",
            "workflows",
            "-o",
            "json",
            "--workflows",
            &sb.workflows_dir().display().to_string(),
        ])
        .await;
    let text = output_text(&out);
    assert!(text.contains("how many widgets"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_count_uses_max_count_without_history() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let body = |max: u32| {
        format!(
            "  parallel: {{count: auto, maxCount: {max}, targetDuration: 1ms}}\n  steps:\n    - {{name: s, run: 'true'}}\n"
        )
    };
    let sb = Sandbox::start(&[
        ("a.yaml", &workflow_file("auto3", dir, &body(3))),
        ("b.yaml", &workflow_file("auto2", dir, &body(2))),
    ])
    .await;
    for (wf, shards) in [("auto3", 3), ("auto2", 2)] {
        let id = sb.run(wf, &[]).await;
        let d = sb.wait_for_terminal(&id, LONG).await;
        assert_eq!(status_of(&d), ExecutionStatus::Passed, "{}", describe(&d));
        assert_eq!(d.shards.len(), shards, "{}", describe(&d));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_overhead_sizes_queue_batches() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let ids: Vec<String> = (0..40).map(|i| format!("t{i:02}")).collect();
    std::fs::write(dir.join("ids.txt"), ids.join("\n") + "\n").unwrap();
    // One line per invocation of tests.run in $LOG, then a JUnit report of its ids.
    let suite = "#!/bin/sh\nreport=$1; shift\necho \"$#\" >> \"$LOG\"\n{ echo '<testsuite>'; for id in \"$@\"; do echo \"<testcase classname=\\\"s\\\" name=\\\"$id\\\" time=\\\"0.05\\\"/>\"; done; echo '</testsuite>'; } > \"$report\"\n";
    std::fs::write(dir.join("suite.sh"), suite).unwrap();
    let body = |overhead: &str, log: &str| {
        format!(
            "  env: {{LOG: {log}}}\n  tests:\n    list: cat ids.txt\n    run: sh suite.sh {{report}} {{tests}}\n    reports: [\"{{report}}\"]\n  parallel: {{count: 2, strategy: queue, batchOverhead: {overhead}}}\n"
        )
    };
    let sb = Sandbox::start(&[
        (
            "a.yaml",
            &workflow_file("cheap", dir, &body("1ms", "cheap.log")),
        ),
        (
            "b.yaml",
            &workflow_file("costly", dir, &body("1h", "costly.log")),
        ),
    ])
    .await;
    let kv = sb.bus.kv(assay_bus::streams::KV_HISTORY).await.unwrap();
    for wf in ["cheap", "costly"] {
        // The first run teaches the planner the tests' durations (50 ms each).
        let id = sb.run(wf, &[]).await;
        let d = sb.wait_for_terminal(&id, LONG).await;
        assert_eq!(status_of(&d), ExecutionStatus::Passed, "{}", describe(&d));
        let deadline = tokio::time::Instant::now() + LONG;
        while kv.get(assay_bus::kv_key(wf)).await.unwrap().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no history for {wf}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::fs::remove_file(dir.join(format!("{wf}.log"))).unwrap();
        let id = sb.run(wf, &[]).await;
        let d = sb.wait_for_terminal(&id, LONG).await;
        assert_eq!(status_of(&d), ExecutionStatus::Passed, "{}", describe(&d));
    }
    let calls = |f: &str| read(dir, f).map(|s| s.lines().count()).unwrap_or(0);
    // A start-up that costs an hour is paid once per worker (batches as large as the
    // suite allows: half each); a cheap one buys batches cut finer towards the end.
    assert_eq!(
        calls("costly.log"),
        2,
        "costly: {:?}",
        read(dir, "costly.log")
    );
    assert!(
        calls("cheap.log") > 2,
        "cheap: {:?}",
        read(dir, "cheap.log")
    );
}

#[test]
fn cron_timezone_moves_the_next_fire_time() {
    let trigger = |tz: &str| {
        format!(
            "apiVersion: assay.dev/v1alpha1\nkind: TestTrigger\nmetadata: {{name: t}}\nspec:\n  on: {{cron: {{schedule: \"0 9 * * *\"{tz}}}}}\n  run: {{workflow: w}}\n"
        )
    };
    let next = |doc: String| {
        let defs = assay_spec::parse_str(Path::new("t.yaml"), &doc).unwrap();
        let assay_spec::Definition::Trigger(t) = &defs[0] else {
            panic!("not a trigger")
        };
        let start = "2026-01-01T00:30:00Z".parse().unwrap();
        t.cron().unwrap().next_after(start).unwrap().to_rfc3339()
    };
    assert_eq!(next(trigger("")), "2026-01-01T09:00:00+00:00");
    assert_eq!(
        next(trigger(", timezone: Asia/Tokyo")),
        "2026-01-02T00:00:00+00:00"
    );
}

/// A workflow that writes `<name>.txt` with its `v` parameter.
fn noop(name: &str, dir: &Path, labels: &str) -> String {
    format!(
        "apiVersion: assay.dev/v1alpha1\nkind: TestWorkflow\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec:\n  workingDir: {}\n  config:\n    v: {{default: d}}\n  steps:\n    - {{name: s, run: 'echo {{{{ config.v }}}} >> {name}.txt'}}\n",
        dir.display()
    )
}

fn trigger(name: &str, on: &str, run: &str) -> String {
    format!(
        "apiVersion: assay.dev/v1alpha1\nkind: TestTrigger\nmetadata: {{name: {name}}}\nspec:\n  on: {on}\n  run: {run}\n"
    )
}

async fn publish_event(
    sb: &Sandbox,
    source: &str,
    r#type: &str,
    labels: &[(&str, &str)],
    paths: Option<&[&str]>,
) -> String {
    let id = ulid::Ulid::new().to_string();
    let ev = TriggerEvent {
        header: Some(Header {
            event_id: id.clone(),
            idempotency_key: format!("fields/{id}"),
            occurred_at_ms: 1,
            producer: "fields-test".into(),
            ..Default::default()
        }),
        source: source.into(),
        r#type: r#type.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        changed_paths: paths
            .unwrap_or_default()
            .iter()
            .map(|p| p.to_string())
            .collect(),
        changed_paths_known: paths.is_some(),
        ..Default::default()
    };
    sb.bus
        .publish(assay_bus::subjects::event(source), &ev)
        .await
        .expect("publish event");
    id
}

/// The scheduler's record of the event: (trigger, matched, reason, execution) per trigger.
async fn decisions(sb: &Sandbox, event_id: &str) -> Vec<(String, bool, String, String)> {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let mut c = sb.client().await;
        if let Ok(r) = c
            .list_events(ListEventsRequest {
                limit: 1000,
                ..Default::default()
            })
            .await
        {
            let found = r
                .into_inner()
                .events
                .into_iter()
                .find(|e| e.event.as_ref().is_some_and(|p| p.event_id == event_id));
            if let Some(rec) = found {
                return rec
                    .decisions
                    .into_iter()
                    .map(|d| (d.trigger, d.matched, d.reason, d.execution_id))
                    .collect();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event record for {event_id} within {LONG:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn triggers_fire_only_on_what_they_declare() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let gh = "{webhook: {provider: github, events: [push], repositories: [acme/*], branches: [main], paths: [\"src/**\"]}}";
    let files = [
        (
            "w.yaml".to_string(),
            [
                noop("by-source", dir, ""),
                noop("by-type", dir, ""),
                noop("by-label", dir, ""),
                noop("by-webhook", dir, ""),
                noop("by-tag", dir, ""),
                noop("selected-a", dir, "team: pay"),
                noop("selected-b", dir, "team: pay"),
                noop("not-selected", dir, "team: ops"),
            ]
            .join("---\n"),
        ),
        (
            "t.yaml".to_string(),
            [
                trigger(
                    "t-source",
                    "{event: {source: src-a}}",
                    "{workflow: by-source, config: {v: from-trigger}}",
                ),
                trigger(
                    "t-type",
                    "{event: {source: src-b, type: deploy}}",
                    "{workflow: by-type}",
                ),
                trigger(
                    "t-label",
                    "{event: {source: src-c, labels: {env: prod}}}",
                    "{workflow: by-label}",
                ),
                trigger("t-webhook", gh, "{workflow: by-webhook}"),
                trigger(
                    "t-tag",
                    "{webhook: {provider: gitlab, tags: [\"v*\"]}}",
                    "{workflow: by-tag}",
                ),
                trigger(
                    "t-selector",
                    "{event: {source: src-d}}",
                    "{selector: {team: pay}}",
                ),
            ]
            .join("---\n"),
        ),
    ];
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let sb = Sandbox::start(&refs).await;

    // Each case: an event that must not fire the trigger (and the word its reason names),
    // then one that must.
    let cases: Vec<(&str, &str, _, &str)> = vec![
        (
            "t-source",
            "by-source",
            (
                ("src-x", "any", vec![], None),
                ("src-a", "any", vec![], None),
            ),
            "source",
        ),
        (
            "t-type",
            "by-type",
            (
                ("src-b", "push", vec![], None),
                ("src-b", "deploy", vec![], None),
            ),
            "type",
        ),
        (
            "t-label",
            "by-label",
            (
                ("src-c", "any", vec![("env", "dev")], None),
                ("src-c", "any", vec![("env", "prod")], None),
            ),
            "env",
        ),
        (
            "t-webhook",
            "by-webhook",
            (
                (
                    "github",
                    "push",
                    vec![
                        ("provider", "github"),
                        ("repository", "other/shop"),
                        ("branch", "main"),
                    ],
                    Some(vec!["src/a.rs"]),
                ),
                (
                    "github",
                    "push",
                    vec![
                        ("provider", "github"),
                        ("repository", "acme/shop"),
                        ("branch", "main"),
                    ],
                    Some(vec!["src/a.rs"]),
                ),
            ),
            "repositor",
        ),
        (
            "t-webhook",
            "by-webhook",
            (
                (
                    "github",
                    "push",
                    vec![
                        ("provider", "github"),
                        ("repository", "acme/shop"),
                        ("branch", "dev"),
                    ],
                    Some(vec!["src/a.rs"]),
                ),
                (
                    "github",
                    "push",
                    vec![
                        ("provider", "github"),
                        ("repository", "acme/api"),
                        ("branch", "main"),
                    ],
                    Some(vec!["src/b.rs"]),
                ),
            ),
            "branch",
        ),
        (
            "t-webhook",
            "by-webhook",
            (
                (
                    "github",
                    "push",
                    vec![
                        ("provider", "github"),
                        ("repository", "acme/shop"),
                        ("branch", "main"),
                    ],
                    Some(vec!["docs/x.md"]),
                ),
                (
                    "github",
                    "push",
                    vec![
                        ("provider", "github"),
                        ("repository", "acme/x"),
                        ("branch", "main"),
                    ],
                    Some(vec!["src/c.rs"]),
                ),
            ),
            "path",
        ),
        (
            "t-webhook",
            "by-webhook",
            (
                (
                    "github",
                    "pull_request",
                    vec![
                        ("provider", "github"),
                        ("repository", "acme/shop"),
                        ("branch", "main"),
                    ],
                    None,
                ),
                (
                    "github",
                    "push",
                    vec![
                        ("provider", "github"),
                        ("repository", "acme/y"),
                        ("branch", "main"),
                    ],
                    Some(vec!["src/d.rs"]),
                ),
            ),
            "event",
        ),
        (
            "t-webhook",
            "by-webhook",
            (
                (
                    "gitlab",
                    "push",
                    vec![
                        ("provider", "gitlab"),
                        ("repository", "acme/shop"),
                        ("branch", "main"),
                    ],
                    Some(vec!["src/a.rs"]),
                ),
                (
                    "github",
                    "push",
                    vec![
                        ("provider", "github"),
                        ("repository", "acme/z"),
                        ("branch", "main"),
                    ],
                    Some(vec!["src/e.rs"]),
                ),
            ),
            "provider",
        ),
        (
            "t-tag",
            "by-tag",
            (
                (
                    "gitlab",
                    "tag",
                    vec![("provider", "gitlab"), ("tag", "release-1")],
                    None,
                ),
                (
                    "gitlab",
                    "tag",
                    vec![("provider", "gitlab"), ("tag", "v1.2.0")],
                    None,
                ),
            ),
            "tag",
        ),
    ];
    let mut expected_runs = std::collections::BTreeMap::<&str, usize>::new();
    for (trigger, workflow, (no, yes), word) in cases {
        let miss = publish_event(&sb, no.0, no.1, &no.2, no.3.as_deref()).await;
        let d = decisions(&sb, &miss).await;
        let mine = d.iter().find(|x| x.0 == trigger);
        let Some((_, matched, why, exec)) = mine else {
            panic!("{trigger}: no decision for the non-matching event: {d:?}")
        };
        assert!(
            !matched && exec.is_empty(),
            "{trigger} fired on {no:?}: {d:?}"
        );
        assert!(
            why.to_lowercase().contains(word),
            "{trigger}: reason {why:?} does not name {word}"
        );

        let hit = publish_event(&sb, yes.0, yes.1, &yes.2, yes.3.as_deref()).await;
        let d = decisions(&sb, &hit).await;
        let Some((_, true, _, exec)) = d.iter().find(|x| x.0 == trigger) else {
            panic!("{trigger} did not fire on {yes:?}: {d:?}")
        };
        let done = sb.wait_for_terminal(exec, LONG).await;
        assert_eq!(
            status_of(&done),
            ExecutionStatus::Passed,
            "{}",
            describe(&done)
        );
        *expected_runs.entry(workflow).or_default() += 1;
    }
    for (workflow, n) in expected_runs {
        assert_eq!(sb.execution_count(workflow).await, n, "{workflow}");
    }
    // run.config reaches the workflow.
    assert_eq!(read(dir, "by-source.txt").as_deref(), Some("from-trigger"));

    // run.selector with metadata.labels: both `team: pay` workflows, not the other.
    let ev = publish_event(&sb, "src-d", "any", &[], None).await;
    let d = decisions(&sb, &ev).await;
    let started: BTreeSet<String> = d
        .iter()
        .filter(|x| x.0 == "t-selector" && x.1)
        .map(|x| x.3.clone())
        .collect();
    assert_eq!(started.len(), 2, "{d:?}");
    for id in &started {
        let done = sb.wait_for_terminal(id, LONG).await;
        let wf = done
            .execution
            .as_ref()
            .map(|e| e.workflow.clone())
            .unwrap_or_default();
        assert!(wf.starts_with("selected-"), "{wf}");
    }
    assert_eq!(sb.execution_count("not-selected").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trigger_concurrency_policy_overrides_the_workflows() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    // The workflow allows parallel runs; the trigger forbids them, with a priority.
    let wf = workflow_file(
        "held",
        dir,
        "  steps:\n    - {name: wait, run: 'while [ ! -f release ]; do sleep 0.1; done'}\n",
    );
    let t = trigger(
        "t-forbid",
        "{event: {source: hold}}",
        "{workflow: held}\n  concurrency: {policy: forbid, priority: 7}",
    );
    let sb = Sandbox::start(&[("w.yaml", &wf), ("t.yaml", &t)]).await;
    let first = publish_event(&sb, "hold", "x", &[], None).await;
    let d = decisions(&sb, &first).await;
    let running = d
        .iter()
        .find(|x| x.0 == "t-forbid")
        .map(|x| x.3.clone())
        .unwrap_or_default();
    assert!(!running.is_empty(), "{d:?}");
    sb.wait_for(&running, LONG, "running", |d| {
        status_of(d) == ExecutionStatus::Running
    })
    .await;
    let second = publish_event(&sb, "hold", "x", &[], None).await;
    let d = decisions(&sb, &second).await;
    let (_, _, why, rejected) = d
        .iter()
        .find(|x| x.0 == "t-forbid")
        .cloned()
        .expect("decision");
    assert!(why.contains("forbid"), "{d:?}");
    let r = sb.wait_for_terminal(&rejected, LONG).await;
    assert_eq!(
        status_of(&r),
        ExecutionStatus::Cancelled,
        "{}",
        describe(&r)
    );
    // A run request of the same workflow is not under the trigger's policy.
    let direct = sb.run("held", &[]).await;
    sb.wait_for(&direct, LONG, "running", |d| {
        status_of(d) == ExecutionStatus::Running
    })
    .await;
    std::fs::write(dir.join("release"), "").unwrap();
    for id in [&running, &direct] {
        let done = sb.wait_for_terminal(id, LONG).await;
        assert_eq!(
            status_of(&done),
            ExecutionStatus::Passed,
            "{}",
            describe(&done)
        );
    }
    // The priority is the trigger's: recorded on the plan.
    let plan = sb
        .bus
        .last_message::<assay_proto::Execution>(
            assay_bus::streams::STATUS,
            &assay_bus::subjects::execution_plan(&running),
        )
        .await;
    let priority = plan.ok().flatten().map(|p| p.priority);
    assert_eq!(priority, Some(7));
}
