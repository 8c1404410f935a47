//! Error messages users see: location, what was wrong, and a hint.

use std::collections::BTreeMap;
use std::path::Path;

use assay_spec::{Catalog, Definition, Diagnostic, Error, parse_overrides, parse_str};

fn diags(text: &str) -> Vec<Diagnostic> {
    match parse_str(Path::new("wf/file.yaml"), text) {
        Err(Error::Invalid(d)) => d,
        other => panic!("expected invalid, got {other:?}"),
    }
}

fn one(text: &str) -> String {
    let d = diags(text);
    assert_eq!(d.len(), 1, "{d:#?}");
    d[0].to_string()
}

const HEAD: &str = "apiVersion: assay.dev/v1alpha1\nkind: TestWorkflow\nmetadata:\n  name: api\n";
const TRIGGER: &str =
    "apiVersion: assay.dev/v1alpha1\nkind: TestTrigger\nmetadata:\n  name: nightly\n";

#[test]
fn invalid_yaml_has_line_and_column() {
    let text = format!("{HEAD}spec:\n  steps: [\n  x: : y\n");
    let msg = one(&text);
    assert!(msg.starts_with("wf/file.yaml:7:6: invalid YAML: "), "{msg}");
    assert!(msg.contains("check indentation"), "{msg}");
}

#[test]
fn unknown_field_did_you_mean() {
    let text = format!("{HEAD}spec:\n  paralel: {{count: 2}}\n  steps: [{{name: a, run: b}}]\n");
    let msg = one(&text);
    assert!(
        msg.starts_with(
            "wf/file.yaml:6:3: unknown field `paralel` in `spec`; did you mean `parallel`? (expected one of: config, "
        ),
        "{msg}"
    );
}

#[test]
fn unknown_top_level_field() {
    let text = format!("{HEAD}spek: {{}}\n");
    let msg = one(&text);
    assert!(
        msg.contains("5:1: unknown field `spek` at the top level; did you mean `spec`?"),
        "{msg}"
    );
}

#[test]
fn missing_required_field_points_at_mapping() {
    let text = format!("{HEAD}spec:\n  tests:\n    list: pytest --collect-only\n");
    assert_eq!(
        one(&text),
        "wf/file.yaml:6:3: missing field `run` in `spec.tests`; add `run:` to `spec.tests`"
    );
    let text = format!("{HEAD}spec:\n  steps:\n    - name: a\n      run: b\n    - name: c\n");
    let msg = one(&text);
    assert!(
        msg.starts_with("wf/file.yaml:9:5: missing field `run` in `spec.steps[1]`"),
        "{msg}"
    );
}

#[test]
fn missing_spec() {
    assert_eq!(
        one(HEAD),
        "wf/file.yaml:1:1: missing field `spec`; add `spec:` to the document"
    );
}

#[test]
fn count_zero() {
    let text = format!("{HEAD}spec:\n  steps: [{{name: a, run: b}}]\n  parallel:\n    count: 0\n");
    assert_eq!(
        one(&text),
        "wf/file.yaml:8:5: parallel.count must be at least 1, got 0; set `count: 1` or more, or remove it to run one shard"
    );
}

#[test]
fn a_queue_without_a_listing_is_named() {
    let text = format!(
        "{HEAD}spec:\n  steps: [{{name: a, run: b}}]\n  parallel: {{count: 2, strategy: queue, matrix: {{os: [a, b]}}}}\n  concurrency: {{policy: queue}}\n"
    );
    let d = diags(&text);
    let all: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0]
            .contains("strategies `queue` and `duration` split the tests that `tests.list` prints"),
        "{all:#?}"
    );
}

#[test]
fn matrix_problems_are_located() {
    // 9 values x 9 values x 4 values = 324 combinations, over the default limit of 256.
    let nine = "[1, 2, 3, 4, 5, 6, 7, 8, 9]";
    let text = format!(
        "{HEAD}spec:\n  steps: [{{name: a, run: 'echo {{{{ matrix.pyton }}}}'}}]\n  parallel:\n    matrix:\n      python: {nine}\n      os: {nine}\n      db: [a, b, c, d]\n"
    );
    let all: Vec<String> = diags(&text).iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all.iter().any(|m| m.starts_with(
            "wf/file.yaml:8:5: parallel.matrix expands to 324 combinations, over the limit of 256"
        )),
        "{all:#?}"
    );
    assert!(
        all.iter().any(|m| m.starts_with("wf/file.yaml:6:")
            && m.contains("undeclared matrix parameter `matrix.pyton`")
            && m.contains("did you mean `python`?")),
        "{all:#?}"
    );

    let text = format!(
        "{HEAD}spec:\n  steps: [{{name: a, run: b}}]\n  parallel:\n    matrix:\n      os: []\n      db: [a, {{x: 1}}]\n"
    );
    let all: Vec<String> = diags(&text).iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all.iter()
            .any(|m| m.starts_with("wf/file.yaml:9:7: matrix parameter `os` has no values")),
        "{all:#?}"
    );
    assert!(
        all.iter().any(|m| m.starts_with(
            "wf/file.yaml:10:11: matrix value 2 of `db` is not a string, number or boolean"
        )),
        "{all:#?}"
    );
}

#[test]
fn bad_duration_and_variant_locations() {
    let text = format!("{HEAD}spec:\n  steps: [{{name: a, run: b}}]\n  timeout: 5x\n");
    let msg = one(&text);
    assert!(
        msg.starts_with("wf/file.yaml:7:12: invalid duration \"5x\""),
        "{msg}"
    );
    let text =
        format!("{HEAD}spec:\n  steps:\n    - name: a\n      run: b\n      condition: sometimes\n");
    assert_eq!(
        one(&text),
        "wf/file.yaml:9:18: unknown value `sometimes` for `spec.steps[0].condition`; use one of: always, success, failure"
    );
}

#[test]
fn unknown_kind_lists_known() {
    let text = "apiVersion: assay.dev/v1alpha1\nkind: TestWorkflw\nmetadata: {name: a}\nspec: {}\n";
    assert_eq!(
        one(text),
        "wf/file.yaml:2:1: unknown kind `TestWorkflw`; did you mean `TestWorkflow`? (expected one of: TestWorkflow, TestTrigger)"
    );
    let msg = one("apiVersion: assay.dev/v1alpha1\nkind: Pod\nmetadata: {name: a}\n");
    assert!(
        msg.ends_with("expected one of: TestWorkflow, TestTrigger"),
        "{msg}"
    );
}

#[test]
fn bad_api_version_and_name() {
    let text = "apiVersion: assay.dev/v1\nkind: TestWorkflow\nmetadata: {name: Api_E2E}\nspec: {steps: [{name: a, run: b}]}\n";
    let d = diags(text);
    assert_eq!(d.len(), 2, "{d:#?}");
    assert_eq!(
        d[0].to_string(),
        "wf/file.yaml:1:1: unsupported apiVersion `assay.dev/v1`; use `apiVersion: assay.dev/v1alpha1`"
    );
    assert!(
        d[1].to_string()
            .starts_with("wf/file.yaml:3:12: invalid name `Api_E2E`"),
        "{}",
        d[1]
    );
}

#[test]
fn bad_cron_and_timezone() {
    let text = format!(
        "{TRIGGER}spec:\n  on:\n    cron:\n      schedule: \"61 * * * *\"\n      timezone: Europe/Berln\n  run: {{workflow: api}}\n"
    );
    let d = diags(&text);
    assert_eq!(d.len(), 2, "{d:#?}");
    assert!(
        d[0].to_string()
            .starts_with("wf/file.yaml:9:7: unknown time zone \"Europe/Berln\"; use an IANA"),
        "{}",
        d[0]
    );
    assert!(
        d[1].to_string()
            .starts_with("wf/file.yaml:8:7: invalid cron schedule \"61 * * * *\""),
        "{}",
        d[1]
    );
    let text = format!(
        "{TRIGGER}spec:\n  on: {{cron: {{schedule: \"* * *\"}}}}\n  run: {{workflow: api}}\n"
    );
    assert!(one(&text).contains("expected 5 or 6 fields, got 3"));
}

#[test]
fn trigger_with_workflow_and_selector() {
    let text = format!(
        "{TRIGGER}spec:\n  on:\n    event: {{source: ci, type: push}}\n  run:\n    workflow: api\n    selector: {{suite: e2e}}\n"
    );
    assert_eq!(
        one(&text),
        "wf/file.yaml:10:5: spec.run names both `workflow` and `selector`; keep exactly one: `workflow: NAME` or `selector: {label: value}`"
    );
}

#[test]
fn kubernetes_trigger_loads() {
    let text = format!(
        "{TRIGGER}spec:\n  on:\n    kubernetes: {{kind: Deployment, event: rollout-complete}}\n  run: {{workflow: api}}\n"
    );
    let defs = parse_str(Path::new("wf/file.yaml"), &text).unwrap();
    assert_eq!(defs.len(), 1);
}

#[test]
fn undeclared_template_reference() {
    let text = format!(
        "{HEAD}spec:\n  config:\n    baseUrl: {{default: x}}\n  env: {{URL: \"{{{{ config.baseUrll }}}}\"}}\n  steps: [{{name: a, run: b}}]\n"
    );
    let msg = one(&text);
    assert!(
        msg.contains("undeclared parameter `config.baseUrll`; did you mean `baseUrl`?"),
        "{msg}"
    );
}

#[test]
fn event_templates_are_accepted_and_unknown_event_fields_located() {
    let ok = format!(
        "{HEAD}spec:\n  env: {{SHA: \"{{{{ event.labels.sha }}}}\", SRC: \"{{{{ event.source }}}}\"}}\n  steps:\n    - name: a\n      run: echo {{{{ event.type }}}} {{{{ event.trigger }}}} ${{{{ github.sha }}}} {{{{ env.X }}}}\n  tests:\n    list: ls {{{{ event.labels.dir }}}}\n    run: run {{tests}}\n"
    );
    assert!(parse_str(Path::new("wf/file.yaml"), &ok).is_ok());
    let text = format!(
        "{HEAD}spec:\n  steps:\n    - name: a\n      run: git checkout {{{{ event.sha }}}}\n"
    );
    assert_eq!(
        one(&text),
        "wf/file.yaml:8:7: template refers to unknown event field `event.sha`; use event.labels.<key>, event.source, event.type, event.trigger"
    );
    let text = format!(
        "{HEAD}spec:\n  steps:\n    - name: a\n      run: b\n      env: {{SHA: \"{{{{ evnet.labels.sha }}}}\"}}\n"
    );
    let msg = one(&text);
    assert!(
        msg.starts_with(
            "wf/file.yaml:9:13: template refers to unknown root `evnet`; did you mean `event`?"
        ),
        "{msg}"
    );
}

#[test]
fn artifacts_are_refused_until_supported() {
    let text =
        format!("{HEAD}spec:\n  steps: [{{name: a, run: b}}]\n  artifacts: [\"screenshots/**\"]\n");
    assert_eq!(
        one(&text),
        "wf/file.yaml:7:3: artifacts: not supported yet (planned with the artifacts store); remove `artifacts` for now"
    );
}

#[test]
fn unknown_step_condition_lists_the_allowed_values() {
    let text = format!(
        "{HEAD}spec:\n  after:\n    - {{name: a, run: b, condition: allways}}\n  steps: [{{name: c, run: d}}]\n"
    );
    assert_eq!(
        one(&text),
        "wf/file.yaml:7:36: unknown value `allways` for `spec.after[0].condition`; did you mean `always`? (expected one of: always, success, failure)"
    );
}

#[test]
fn collects_all_errors_across_documents() {
    let text = format!(
        "{HEAD}spec:\n  steps: [{{name: a, run: b}}]\n  parallel: {{count: 0}}\n---\n{TRIGGER}spec:\n  on: {{}}\n  run: {{}}\n"
    );
    let d = diags(&text);
    let lines: Vec<usize> = d.iter().map(|d| d.location.line).collect();
    assert_eq!(lines, vec![7, 14, 15], "{d:#?}");
    let joined = Error::Invalid(d).to_string();
    assert_eq!(joined.lines().count(), 3);
}

#[test]
fn set_undeclared_parameter() {
    let text = format!(
        "{HEAD}spec:\n  config:\n    baseUrl: {{type: string, default: \"http://localhost\"}}\n    workers: {{type: integer}}\n  steps: [{{name: a, run: \"echo {{{{ config.baseUrl }}}}\"}}]\n"
    );
    let defs = parse_str(Path::new("f.yaml"), &text).unwrap();
    let Definition::Workflow(w) = &defs[0] else {
        panic!()
    };

    let err = w
        .resolve_config(&parse_overrides(&["basUrl=x".into()]).unwrap())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown parameter \"basUrl\" for workflow \"api\"; did you mean \"baseUrl\"? (known: baseUrl, workers); declare it under spec.config to make it settable"
    );
    let err = w.resolve_config(&BTreeMap::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "parameter \"workers\" of workflow \"api\" has no default; pass --set workers=VALUE"
    );
    let err = w
        .resolve_config(&parse_overrides(&["workers=many".into()]).unwrap())
        .unwrap_err();
    assert!(matches!(err, Error::BadParameterValue { .. }), "{err}");
    let got = w
        .resolve_config(&parse_overrides(&["workers=4".into()]).unwrap())
        .unwrap();
    assert_eq!(got["baseUrl"], "http://localhost");
    assert_eq!(got["workers"], "4");
    assert_eq!(
        assay_spec::expand(&w.spec.steps[0].run, &got).unwrap(),
        "echo http://localhost"
    );
    assert_eq!(w.parameters().len(), 2);
    assert!(w.parameters()[1].required);
}

#[test]
fn duplicate_names_name_both_files() {
    let text = format!("{HEAD}spec: {{steps: [{{name: a, run: b}}]}}\n");
    let mut defs = parse_str(Path::new("a.yaml"), &text).unwrap();
    defs.extend(parse_str(Path::new("b.yaml"), &format!("# x\n{text}")).unwrap());
    let err = Catalog::from_definitions(".assay".into(), defs).unwrap_err();
    assert_eq!(
        err.to_string(),
        "b.yaml:2:1: duplicate workflow name \"api\": defined in a.yaml:1:1 and b.yaml:2:1; rename one of them; workflow names must be unique"
    );
}

#[test]
fn count_auto_needs_a_target_and_a_bound_and_max_count_must_be_positive() {
    let text = format!(
        "{HEAD}spec:\n  steps: [{{name: a, run: b}}]\n  parallel: {{count: auto, maxCount: 0}}\n"
    );
    let all: Vec<String> = diags(&text).iter().map(ToString::to_string).collect();
    assert!(
        all.iter()
            .any(|d| d.contains("parallel.maxCount must be at least 1, got 0")),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|d| d.contains("`count: auto` needs `targetDuration`")),
        "{all:#?}"
    );
    let text =
        format!("{HEAD}spec:\n  steps: [{{name: a, run: b}}]\n  parallel: {{count: many}}\n");
    let all: Vec<String> = diags(&text).iter().map(ToString::to_string).collect();
    assert!(
        all[0].contains("expected a number of shards or `auto`, got `many`"),
        "{all:#?}"
    );
}

#[test]
fn priority_out_of_range_is_located() {
    let text = format!(
        "{HEAD}spec:\n  steps: [{{name: a, run: b}}]\n  concurrency:\n    policy: queue\n    priority: 5000\n"
    );
    assert_eq!(
        one(&text),
        "wf/file.yaml:9:5: concurrency.priority must be between -1000 and 1000, got 5000; higher runs first among queued executions; 0 is the default"
    );
}

#[test]
fn webhook_trigger_bad_glob_points_at_the_pattern() {
    let text = format!(
        "{TRIGGER}spec:\n  on:\n    webhook:\n      branches: [main]\n      paths:\n        - \"src/**\"\n        - \"!docs/**x\"\n  run: {{workflow: api}}\n"
    );
    let msg = one(&text);
    assert!(
        msg.starts_with("wf/file.yaml:11:9: paths[1]: invalid glob `!docs/**x`: "),
        "{msg}"
    );
    assert!(msg.contains("a leading `!` excludes"), "{msg}");
}

#[test]
fn webhook_trigger_unknown_event_and_provider() {
    let text = format!(
        "{TRIGGER}spec:\n  on:\n    webhook:\n      provider: githb\n      events: [push, pull_requests]\n  run: {{workflow: api}}\n"
    );
    let d = diags(&text);
    let all: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all[0].starts_with(
            "wf/file.yaml:8:7: unknown webhook provider `githb`; did you mean `github`?"
        ),
        "{all:#?}"
    );
    assert!(
        all[1].contains("unknown webhook event `pull_requests`; did you mean `pull_request`?"),
        "{all:#?}"
    );
    assert!(all[1].starts_with("wf/file.yaml:9:"), "{all:#?}");
}

#[test]
fn webhook_trigger_is_accepted_and_matches() {
    let text = format!(
        "{TRIGGER}spec:\n  on:\n    webhook:\n      events: [push]\n      branches: [main, \"release/*\"]\n      paths: [\"src/**\", \"!docs/**\"]\n  run: {{workflow: api}}\n"
    );
    let defs = parse_str(Path::new("wf/file.yaml"), &text).unwrap();
    let Definition::Trigger(t) = &defs[0] else {
        panic!("expected a trigger")
    };
    let labels: BTreeMap<String, String> = [("provider", "github"), ("branch", "release/1.0")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let changed = vec!["src/app.py".to_string()];
    let view = assay_spec::EventView {
        source: "github",
        r#type: "push",
        labels: &labels,
        changed_paths: Some(&changed),
    };
    assert!(t.matches(&view));
}

#[test]
fn content_git_is_accepted_and_checked() {
    let text = format!(
        "{HEAD}spec:\n  steps: [{{name: a, run: b}}]\n  content:\n    git: {{url: \"https://example.com/shop.git\", revision: main, paths: [tests], credentials: {{secretName: git-creds}}}}\n"
    );
    let defs = parse_str(Path::new("wf/file.yaml"), &text).unwrap();
    let Definition::Workflow(w) = &defs[0] else {
        panic!("expected a workflow")
    };
    let git = w
        .spec
        .content
        .as_ref()
        .and_then(|c| c.git.as_ref())
        .unwrap();
    assert_eq!(git.url, "https://example.com/shop.git");
    assert_eq!(git.revision.as_deref(), Some("main"));

    let bad = format!(
        "{HEAD}spec:\n  steps: [{{name: a, run: b}}]\n  workingDir: /srv\n  content:\n    git:\n      url: \"\"\n      paths: [tests, ../etc, /abs]\n      credentials: {{secretName: \"\"}}\n"
    );
    let msgs: Vec<String> = diags(&bad).iter().map(|d| d.to_string()).collect();
    assert_eq!(
        msgs,
        [
            "wf/file.yaml:10:7: content.git.url is empty; set the clone url, e.g. `https://github.com/acme/shop.git`",
            "wf/file.yaml:11:14: content.git.paths[1] \"../etc\" is not a path inside the repository; use a path relative to the repository root, without `..`, e.g. `tests/e2e`",
            "wf/file.yaml:11:14: content.git.paths[2] \"/abs\" is not a path inside the repository; use a path relative to the repository root, without `..`, e.g. `tests/e2e`",
            "wf/file.yaml:12:21: content.git.credentials.secretName is empty; name the Secret holding `username` and `password`, or `ssh-privatekey`",
            "wf/file.yaml:7:3: workingDir cannot be combined with content.git: the runner checks the repository out into a fresh directory of the shard's own and runs the steps there; remove `workingDir`",
        ],
        "{msgs:#?}"
    );
    assert_eq!(
        one(&format!(
            "{HEAD}spec:\n  steps: [{{name: a, run: b}}]\n  content: {{}}\n"
        )),
        "wf/file.yaml:7:3: content: names no source; add `git: {url: ...}` or remove `content`"
    );
}

#[test]
fn pod_settings_read_as_kubernetes_types_and_are_accepted() {
    let text = format!(
        "{HEAD}spec:\n  steps: [{{name: a, run: b}}]\n  pod:\n    serviceAccountName: tests\n    labels: {{team: shop}}\n    tolerations: [{{key: gpu, operator: Exists, effect: NoSchedule}}]\n    affinity: {{nodeAffinity: {{requiredDuringSchedulingIgnoredDuringExecution: {{nodeSelectorTerms: [{{matchExpressions: [{{key: zone, operator: In, values: [a]}}]}}]}}}}}}\n"
    );
    let wf = parse_str(Path::new("wf/file.yaml"), &text);
    assert!(wf.is_ok(), "pod settings are accepted: {:?}", wf.err());
    let doc: serde_norway::Value = serde_norway::from_str(&text).expect("yaml");
    let pod: assay_spec::PodOverrides =
        serde_norway::from_value(doc["spec"]["pod"].clone()).expect("pod settings");
    assert_eq!(pod.service_account_name.as_deref(), Some("tests"));
    let tolerations = pod.tolerations().expect("tolerations");
    assert_eq!(tolerations[0].key.as_deref(), Some("gpu"));
    let affinity = pod.affinity().expect("affinity").expect("set");
    assert!(affinity.node_affinity.is_some());
}
