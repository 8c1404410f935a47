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
    let frozen = Selection::Frozen(vec![vec!["x".into()], vec![], vec!["y".into(), "z".into()]]);
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
