//! The custom resources: generated CRDs (committed, structural, with status and columns)
//! and resources that turn into the same definitions, and the same errors, as YAML files.

use std::path::Path;

use assay_spec::crd::{self, CRD_DIR, REGENERATE};
use assay_spec::{Definition, Error, TestTrigger, TestWorkflow, parse_str};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

const WORKFLOW: &str = r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata:
  name: api-e2e
  namespace: shop
  labels: {team: payments, suite: e2e}
spec:
  config:
    baseUrl: {type: string, default: "http://localhost:8080", description: "where the api is"}
    retriesAllowed: {type: boolean, default: true}
  env: {BASE_URL: "{{ config.baseUrl }}", PORT: 8080, DEBUG: false}
  setup:
    - name: install
      run: pip install -r requirements-test.txt
      timeout: 5m
  tests:
    list: pytest --collect-only -q tests
    run: pytest {tests} --junitxml={report}
    reports: ["{report}"]
  after:
    - {name: cleanup, run: rm -rf tmp, condition: always}
  parallel:
    count: 4
    strategy: queue
    lease: 1m30s
    matrix: {python: ["3.11", 3.12], db: [pg]}
  concurrency: {policy: forbid, group: api}
  timeout: 20m
  retries: {count: 1, on: errored}
"#;

const TRIGGER: &str = r#"apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: nightly, namespace: shop}
spec:
  on: {cron: {schedule: "0 3 * * *", timezone: Europe/Berlin}}
  run: {workflow: api-e2e, config: {baseUrl: "http://payments.shop:8080"}}
"#;

/// Problems the validator finds (not serde): a bad name, fields not supported yet, no shards.
const INVALID_WORKFLOW: &str = r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: Bad_Name, namespace: shop}
spec:
  steps:
    - {name: a, run: echo a}
  artifacts: ["screenshots/**"]
  parallel: {count: 0}
  container:
    image: python:3.12-slim
    resources: {requests: {cpu: "1", memory: 1Gi}}
"#;

const INVALID_TRIGGER: &str = r#"apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: t, namespace: shop}
spec:
  on: {cron: {schedule: "every day"}}
  run: {workflow: w}
"#;

fn from_file(text: &str) -> Result<Vec<Definition>, Error> {
    parse_str(Path::new("shop/def.yaml"), text)
}

/// `(message, hint)` of every diagnostic: what must be equal between a file and a resource
/// (the places differ: a file has lines, a resource has a name).
fn messages(e: Error) -> Vec<(String, Option<String>)> {
    let Error::Invalid(diags) = e else {
        panic!("expected diagnostics, got {e}");
    };
    diags.into_iter().map(|d| (d.message, d.hint)).collect()
}

/// The definition with its place blanked, to compare a file's with a resource's.
fn without_source(mut d: Definition) -> Definition {
    let blank = assay_spec::Location {
        file: "".into(),
        line: 0,
        column: 0,
    };
    match &mut d {
        Definition::Workflow(w) => w.source = blank,
        Definition::Trigger(t) => t.source = blank,
    }
    d
}

#[test]
fn a_file_and_a_resource_give_equal_definitions() {
    let file = from_file(WORKFLOW).expect("the file is valid");
    let resource: TestWorkflow = serde_norway::from_str(WORKFLOW).expect("a TestWorkflow");
    let def = resource.to_definition().expect("the resource is valid");
    assert_eq!(def.source().to_string(), "TestWorkflow shop/api-e2e");
    assert_eq!(without_source(def), without_source(file[0].clone()));

    let file = from_file(TRIGGER).expect("the file is valid");
    let resource: TestTrigger = serde_norway::from_str(TRIGGER).expect("a TestTrigger");
    let def = resource.to_definition().expect("the resource is valid");
    assert_eq!(without_source(def), without_source(file[0].clone()));
}

#[test]
fn a_resource_read_as_json_gives_the_same_definition() {
    // The API server hands resources over as JSON: numbers and booleans where the file had
    // them, durations as strings.
    let value: Value = serde_norway::from_str(WORKFLOW).expect("yaml");
    let resource: TestWorkflow = serde_json::from_value(value).expect("a TestWorkflow from JSON");
    let file = from_file(WORKFLOW).expect("the file is valid");
    assert_eq!(
        without_source(resource.to_definition().expect("valid")),
        without_source(file[0].clone())
    );
}

#[test]
fn an_invalid_resource_reports_what_the_file_reports() {
    for (text, kind) in [(INVALID_WORKFLOW, "workflow"), (INVALID_TRIGGER, "trigger")] {
        let file = messages(from_file(text).expect_err("the file is invalid"));
        let resource = if kind == "workflow" {
            serde_norway::from_str::<TestWorkflow>(text)
                .expect("a TestWorkflow")
                .to_definition()
        } else {
            serde_norway::from_str::<TestTrigger>(text)
                .expect("a TestTrigger")
                .to_definition()
        };
        let resource = messages(resource.expect_err("the resource is invalid"));
        assert!(!file.is_empty());
        assert_eq!(resource, file, "{kind}");
    }
}

#[test]
fn a_resource_diagnostic_names_the_resource_and_the_field() {
    let resource: TestWorkflow = serde_norway::from_str(INVALID_WORKFLOW).expect("a TestWorkflow");
    let Err(Error::Invalid(diags)) = resource.to_definition() else {
        panic!("accepted an invalid resource");
    };
    let first = diags[0].to_string();
    assert!(
        first.starts_with("TestWorkflow shop/Bad_Name metadata.name: invalid name `Bad_Name`"),
        "{first}"
    );
}

#[test]
fn the_valid_condition_carries_the_validation_error() {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default());
    let resource: TestWorkflow = serde_norway::from_str(INVALID_WORKFLOW).expect("a TestWorkflow");
    let result = resource.to_definition();
    let expected = result.as_ref().map_err(ToString::to_string).err();
    let c = crd::valid_condition(&result, Some(3), now.clone());
    assert_eq!(
        (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
        ("Valid", "False", "Invalid")
    );
    assert_eq!(Some(c.message), expected);
    assert_eq!(c.observed_generation, Some(3));

    let ok: TestWorkflow = serde_norway::from_str(WORKFLOW).expect("a TestWorkflow");
    let c = crd::valid_condition(&ok.to_definition(), Some(1), now);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "Validated")
    );
}

#[test]
fn the_committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(CRD_DIR);
    for (name, generated) in crd::crd_files() {
        let path = dir.join(&name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{CRD_DIR}/{name} differs from what the spec types generate; regenerate it with \
             `{REGENERATE}` (cargo run -p assay-cli --bin assay -- crds --output-dir {CRD_DIR}) \
             and commit the result"
        );
    }
}

#[test]
fn the_printed_stream_holds_both_crds() {
    let docs: Vec<CustomResourceDefinition> = crd::crds_yaml()
        .split("\n---\n")
        .map(|d| serde_norway::from_str(d).expect("a CRD"))
        .collect();
    let names: Vec<_> = docs.iter().map(|c| c.metadata.name.clone()).collect();
    assert_eq!(
        names,
        [
            Some("testworkflows.assay.dev".to_string()),
            Some("testtriggers.assay.dev".to_string())
        ]
    );
}

#[test]
fn crds_have_names_status_and_columns() {
    for (crd, kind, short) in [
        (&crd::crds()[0], "TestWorkflow", "tw"),
        (&crd::crds()[1], "TestTrigger", "tt"),
    ] {
        let spec = &crd.spec;
        assert_eq!(spec.group, "assay.dev");
        assert_eq!(spec.scope, "Namespaced");
        assert_eq!(spec.names.kind, kind);
        assert_eq!(spec.names.short_names, Some(vec![short.to_string()]));
        let version = &spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind} has no status subresource"
        );
        let columns: Vec<(&str, &str)> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            columns,
            [
                ("Last status", ".status.lastExecutionStatus"),
                ("Passed", ".status.counts.passed"),
                ("Failed", ".status.counts.failed"),
                ("Age", ".metadata.creationTimestamp"),
            ]
        );
        let schema = schema(crd);
        let status = &schema["properties"]["status"]["properties"];
        for field in [
            "lastExecutionId",
            "lastExecutionStatus",
            "counts",
            "lastRunTime",
            "conditions",
        ] {
            assert!(status.get(field).is_some(), "{kind} status lacks {field}");
        }
        for field in ["passed", "failed", "skipped", "errored", "total"] {
            assert!(status["counts"]["properties"].get(field).is_some());
        }
        let condition = &status["conditions"]["items"]["properties"];
        for field in [
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        ] {
            assert!(condition.get(field).is_some(), "condition lacks {field}");
        }
    }
}

#[test]
fn custom_serde_fields_have_schemas_of_what_the_parser_reads() {
    let wf = schema(&crd::crds()[0]);
    let spec = &wf["properties"]["spec"]["properties"];
    assert_eq!(spec["timeout"]["type"], "string");
    assert_eq!(spec["timeout"]["pattern"], crd::DURATION_PATTERN);
    assert_eq!(
        spec["parallel"]["properties"]["count"]["x-kubernetes-int-or-string"],
        true
    );
    assert_eq!(spec["env"]["type"], "object");
    assert_eq!(
        spec["env"]["additionalProperties"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
    assert_eq!(
        spec["concurrency"]["properties"]["policy"]["enum"],
        serde_json::json!(["allow", "forbid", "replace", "queue"])
    );
    // The Pod settings have the Kubernetes schemas, for the Pod backend to come.
    let pod = &spec["pod"]["properties"];
    assert!(pod["affinity"]["properties"].get("nodeAffinity").is_some());
    assert!(
        pod["tolerations"]["items"]["properties"]
            .get("tolerationSeconds")
            .is_some()
    );
    for field in [
        "nodeSelector",
        "serviceAccountName",
        "priorityClassName",
        "labels",
        "annotations",
    ] {
        assert!(pod.get(field).is_some(), "pod lacks {field}");
    }
    let git = &spec["content"]["properties"]["git"]["properties"];
    for field in ["url", "revision", "paths", "credentials"] {
        assert!(git.get(field).is_some(), "content.git lacks {field}");
    }
    assert_eq!(
        git["credentials"]["properties"]["secretName"]["type"],
        "string"
    );
    // What the parser adds itself (where a definition came from, its resolved name and
    // labels) is no field of the resource: the specs hold the files' `spec` keys only.
    let keys = |root: &Value| -> Vec<String> {
        root["properties"]["spec"]["properties"]
            .as_object()
            .expect("spec properties")
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(
        keys(&wf),
        [
            "after",
            "artifacts",
            "concurrency",
            "config",
            "container",
            "content",
            "env",
            "parallel",
            "pod",
            "retries",
            "setup",
            "steps",
            "tests",
            "timeout",
            "workingDir"
        ]
    );
    assert_eq!(
        keys(&schema(&crd::crds()[1])),
        ["concurrency", "on", "run", "settle"]
    );
    for root in [&wf, &schema(&crd::crds()[1])] {
        let top: Vec<&String> = root["properties"]
            .as_object()
            .expect("root")
            .keys()
            .collect();
        assert_eq!(top, ["spec", "status"]);
    }
}

#[test]
fn duration_pattern_accepts_what_the_parser_accepts() {
    // The pattern is a plain regular expression of optional unit groups in order; check it
    // by hand against the parser over a set of spellings.
    for (text, valid) in [
        ("500ms", true),
        ("30s", true),
        ("5m", true),
        ("1h30m", true),
        ("2d", true),
        (" 1h ", true),
        ("1h30m15s250ms", true),
        ("5 minutes", false),
        ("30", false),
        ("1m1h", false),
        ("1.5h", false),
        ("-1s", false),
    ] {
        assert_eq!(
            assay_spec::parse_duration(text).is_ok(),
            valid,
            "parser on {text:?}"
        );
        assert_eq!(matches_duration_pattern(text), valid, "pattern on {text:?}");
    }
}

proptest::proptest! {
    /// Over strings of digits, unit letters and blanks: the parser accepts exactly what the
    /// pattern matches, except the blank string (which the pattern lets through and the
    /// parser refuses with its message).
    #[test]
    fn duration_pattern_and_parser_agree(text in "[0-9dhms ]{0,8}") {
        let parsed = assay_spec::parse_duration(&text).is_ok();
        proptest::prop_assert_eq!(
            parsed,
            matches_duration_pattern(&text) && !text.trim().is_empty(),
            "{:?}",
            text
        );
    }
}

/// [`crd::DURATION_PATTERN`] evaluated by hand: blanks, then `[0-9]+unit` groups in the
/// order d, h, m, s, ms, each at most once, then blanks.
fn matches_duration_pattern(text: &str) -> bool {
    assert_eq!(
        crd::DURATION_PATTERN,
        r"^\s*([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?\s*$",
        "the pattern changed; update this matcher"
    );
    let mut rest = text.trim();
    for unit in ["d", "h", "m", "s", "ms"] {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with(unit) {
            let after = &rest[digits + unit.len()..];
            // `m` must not swallow the `m` of `ms`.
            if unit == "m" && after.starts_with('s') {
                continue;
            }
            rest = after;
        }
    }
    rest.is_empty()
}

#[test]
fn schemas_are_structural() {
    for crd in crd::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let root = schema(&crd);
        let mut problems = Vec::new();
        structural(&root, "", &mut problems);
        assert!(problems.is_empty(), "{name}: {problems:#?}");
    }
}

fn schema(crd: &CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("a schema");
    serde_json::to_value(schema).expect("json")
}

/// Kubernetes' structural rules, as far as a generated schema can break them: every node has
/// a type unless it is int-or-string or preserves unknown fields; no `$ref`, `definitions`,
/// or `additionalProperties` beside `properties`; `anyOf`/`oneOf`/`allOf` and `not` only
/// below a typed node.
fn structural(node: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        problems.push(format!("{at}: not an object"));
        return;
    };
    // `default` too: the parser applies defaults; the API server must not add them.
    for key in ["$ref", "definitions", "$defs", "$schema", "default"] {
        if obj.contains_key(key) {
            problems.push(format!("{at}: has {key}"));
        }
    }
    let flag = |k: &str| obj.get(k) == Some(&Value::Bool(true));
    let typed = obj.get("type").is_some_and(Value::is_string);
    if !typed
        && !flag("x-kubernetes-int-or-string")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        problems.push(format!("{at}: no type"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        problems.push(format!("{at}: properties and additionalProperties"));
    }
    for key in ["anyOf", "oneOf", "allOf", "not"] {
        if obj.contains_key(key) && !typed && !flag("x-kubernetes-int-or-string") {
            problems.push(format!("{at}: {key} without a type"));
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            structural(v, &format!("{at}.{k}"), problems);
        }
    }
    if let Some(items) = obj.get("items") {
        structural(items, &format!("{at}[]"), problems);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        structural(extra, &format!("{at}.*"), problems);
    }
}
