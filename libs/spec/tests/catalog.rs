//! Loading a definitions directory, and parsing that never panics.

use std::collections::BTreeMap;
use std::path::Path;

use assay_spec::{Catalog, Error, EventView, Policy, parse_str, shard};
use chrono::TimeZone;
use proptest::prelude::*;

const WORKFLOWS: &str = r#"
apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: api-e2e, labels: {team: payments, suite: e2e}}
spec:
  config:
    baseUrl: {type: string, default: "http://localhost:8080", description: "where the api is"}
    token: {type: string, sensitive: true, default: "t"}
  env: {BASE_URL: "{{ config.baseUrl }}", PORT: 8080}
  workingDir: ./examples/python
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
  parallel: {count: 4}
  concurrency: {policy: forbid, group: api}
  timeout: 20m
  retries: {count: 1, on: errored}
---
apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata:
  name: unit
  labels:
    suite: unit
spec:
  steps:
    - name: test
      run: cargo test
"#;

const TRIGGERS: &str = r#"
apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: nightly}
spec:
  on:
    cron: {schedule: "0 3 * * *", timezone: Europe/Berlin}
  run: {workflow: api-e2e, config: {baseUrl: "http://x"}}
  concurrency: {policy: forbid}
---
apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: on-push}
spec:
  on:
    event: {source: ci, type: push, labels: {branch: main}}
  run: {selector: {suite: e2e}}
"#;

#[test]
fn loads_both_kinds_from_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("workflows.yaml"), WORKFLOWS).unwrap();
    std::fs::create_dir(dir.path().join("triggers")).unwrap();
    std::fs::write(dir.path().join("triggers/all.yml"), TRIGGERS).unwrap();
    std::fs::write(dir.path().join("README.md"), "not yaml: [").unwrap();

    let catalog = Catalog::load(dir.path()).unwrap();
    assert_eq!(catalog.dir(), dir.path());
    let names: Vec<&str> = catalog.workflows().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["api-e2e", "unit"]);
    let names: Vec<&str> = catalog.triggers().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["nightly", "on-push"]);

    let w = catalog.workflow("api-e2e").unwrap();
    assert_eq!(w.spec.parallel.count, assay_spec::ShardCount::Fixed(4));
    assert_eq!(w.spec.concurrency.policy, Policy::Forbid);
    assert_eq!(w.spec.env["PORT"], "8080");
    assert_eq!(w.spec.timeout, Some(std::time::Duration::from_secs(1200)));
    assert_eq!(w.source.line, 2);
    let wd = w.spec.working_dir.as_deref().unwrap();
    assert!(wd.is_absolute());
    assert!(wd.ends_with("examples/python"), "{}", wd.display());
    assert!(wd.starts_with(std::path::absolute(dir.path()).unwrap()));

    let sel: BTreeMap<String, String> = [("suite".to_string(), "e2e".to_string())].into();
    let picked: Vec<&str> = catalog
        .select(&sel)
        .iter()
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(picked, ["api-e2e"]);

    let err = catalog.workflow("e2e").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "workflow \"e2e\" not found in {} (known: api-e2e, unit)",
            dir.path().display()
        )
    );

    let push = catalog.triggers().find(|t| t.name == "on-push").unwrap();
    let mut labels = BTreeMap::new();
    labels.insert("branch".to_string(), "main".to_string());
    labels.insert("sha".to_string(), "abc".to_string());
    let ev = EventView {
        source: "ci",
        r#type: "push",
        labels: &labels,
        changed_paths: None,
    };
    assert!(push.matches(&ev));
    assert!(!push.matches(&EventView {
        r#type: "tag",
        ..ev
    }));
    let no_labels = BTreeMap::new();
    assert!(!push.matches(&EventView {
        labels: &no_labels,
        ..ev
    }));

    let nightly = catalog.triggers().next().unwrap();
    assert!(!nightly.matches(&ev));
    let sched = nightly.cron().unwrap();
    let t = chrono::Utc.with_ymd_and_hms(2025, 7, 1, 12, 0, 0).unwrap();
    assert_eq!(
        sched.next_after(t),
        Some(chrono::Utc.with_ymd_and_hms(2025, 7, 2, 1, 0, 0).unwrap())
    );
    let cfg = w.resolve_config(&nightly.spec.run.config).unwrap();
    assert_eq!(cfg["baseUrl"], "http://x");
}

#[test]
fn load_reports_every_file_and_cross_references() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), WORKFLOWS).unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        WORKFLOWS.replace("api-e2e", "other"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("c.yaml"),
        TRIGGERS
            .replace("workflow: api-e2e", "workflow: api-e2")
            .replace("suite: e2e}}", "suite: e2e}, config: {nope: 1}}"),
    )
    .unwrap();
    std::fs::write(dir.path().join("d.yaml"), "apiVersion: x\nkind: [\n").unwrap();
    let Err(Error::Invalid(d)) = Catalog::load(dir.path()) else {
        panic!("expected invalid")
    };
    let all: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all[0].contains("d.yaml:"), "{all:#?}");
    assert!(
        all[1].contains("duplicate workflow name \"unit\""),
        "{all:#?}"
    );

    std::fs::remove_file(dir.path().join("d.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    let Err(Error::Invalid(d)) = Catalog::load(dir.path()) else {
        panic!("expected invalid")
    };
    let all: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all[0]
            .contains("runs workflow \"api-e2\", which is not defined; did you mean \"api-e2e\"?"),
        "{all:#?}"
    );
    assert!(
        all[1].contains("sets parameter \"nope\" that workflow \"api-e2e\" does not declare"),
        "{all:#?}"
    );
}

#[test]
fn missing_directory_says_what_to_do() {
    let err = Catalog::load(Path::new("/nonexistent/.assay")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with("definitions directory /nonexistent/.assay does not exist"),
        "{msg}"
    );
    assert!(msg.ends_with("create it or pass --workflows DIR"), "{msg}");
}

proptest! {
    #[test]
    fn parse_never_panics(text in "\\PC*") {
        let _ = parse_str(Path::new("x.yaml"), &text);
    }

    #[test]
    fn parse_never_panics_on_yamlish(text in "(apiVersion|kind|metadata|spec|name|steps|  |- |: |\\{|\\}|\\[|\\]|---|\n|TestWorkflow|TestTrigger|assay.dev/v1alpha1|count|0|on|cron|run|#|\"|,){0,60}") {
        let _ = parse_str(Path::new("x.yaml"), &text);
    }

    #[test]
    fn split_is_deterministic(tests in proptest::collection::vec("[a-z]{1,5}", 0..100), n in 1usize..10) {
        prop_assert_eq!(shard::split_by_count(&tests, n), shard::split_by_count(&tests, n));
    }
}
