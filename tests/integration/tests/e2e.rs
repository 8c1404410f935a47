//! End to end: a real nats-server, the four services in-process, real assay-runner child
//! processes (build them first: `cargo build --bins`, which `make test` does).

use std::time::Duration;

use assay_integration::{Sandbox, Service, assay_bin, describe, status_of, test_ids};
use assay_proto::{ExecutionStatus, ShardState, TestStatus};

const SUITE_SH: &str = r#"#!/bin/sh
# usage: suite.sh REPORT ID...  — writes a JUnit report; ids containing fail/skip/slow
# fail, skip or sleep $SLOW seconds.
report=$1; shift
{
echo '<?xml version="1.0" encoding="UTF-8"?>'
echo "<testsuite name=\"suite\" tests=\"$#\">"
for id in "$@"; do
  case $id in *slow*) sleep "${SLOW:-1}";; esac
  case $id in
    *fail*) echo "<testcase classname=\"suite\" name=\"$id\" time=\"0.010\"><failure message=\"expected 1, got 2\">assert 1 == 2</failure></testcase>";;
    *skip*) echo "<testcase classname=\"suite\" name=\"$id\" time=\"0\"><skipped/></testcase>";;
    *) echo "<testcase classname=\"suite\" name=\"$id\" time=\"0.020\"/>";;
  esac
done
echo "</testsuite>"
} > "$report"
case "$*" in *fail*) exit 1;; esac
exit 0
"#;

fn workflow(name: &str, dir: &std::path::Path, count: u32, extra: &str) -> String {
    format!(
        r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: {name}, labels: {{suite: e2e}}}}
spec:
  workingDir: {dir}
  tests:
    list: cat ids.txt
    run: sh suite.sh {{report}} {{tests}}
    reports: ["{{report}}"]
  parallel: {{count: {count}}}
{extra}"#,
        dir = dir.display()
    )
}

/// The same workflow split by count (contiguous shares), for tests that check the split.
fn counted(yaml: String) -> String {
    yaml.replacen(
        "parallel: {count: ",
        "parallel: {strategy: count, count: ",
        1,
    )
}

/// A sandbox whose working directory holds suite.sh and `ids`.
async fn sandbox(
    defs: impl Fn(&std::path::Path) -> Vec<(String, String)>,
    ids: &[String],
) -> Sandbox {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.keep();
    std::fs::write(work.join("suite.sh"), SUITE_SH).unwrap();
    std::fs::write(work.join("ids.txt"), ids.join("\n") + "\n").unwrap();
    let files = defs(&work);
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    Sandbox::start(&refs).await
}

fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 10 {
            3 => format!("t{i:03}_fail"),
            7 => format!("t{i:03}_skip"),
            _ => format!("t{i:03}_ok"),
        })
        .collect()
}

const LONG: Duration = Duration::from_secs(60);

/// Whether any shard of the execution is running.
fn shard_running(d: &assay_proto::ExecutionDetail) -> bool {
    d.shards.iter().any(|s| {
        s.summary
            .as_ref()
            .is_some_and(|x| x.state == ShardState::Running as i32)
    })
}

/// A sandbox running `n` tests (every `slow_every`-th sleeps `slow` seconds) over `shards`
/// shards, with one execution started and one of its shards running.
async fn running_suite(
    name: &str,
    n: usize,
    slow_every: usize,
    shards: u32,
    slow: &str,
) -> (Sandbox, String, Vec<String>) {
    let all: Vec<String> = (0..n)
        .map(|i| {
            if i % slow_every == 0 {
                format!("t{i}_slow")
            } else {
                format!("t{i}_ok")
            }
        })
        .collect();
    let extra = format!("  env: {{SLOW: \"{slow}\"}}\n");
    let sb = sandbox(
        |w| vec![("suite.yaml".into(), workflow(name, w, shards, &extra))],
        &all,
    )
    .await;
    let id = sb.run(name, &[]).await;
    sb.wait_for(&id, LONG, "a running shard", shard_running)
        .await;
    (sb, id, all)
}

/// The execution passed and every listed test landed exactly once.
fn assert_passed_once(d: &assay_proto::ExecutionDetail, all: &[String]) {
    assert_eq!(
        d.execution.as_ref().unwrap().status,
        ExecutionStatus::Passed as i32,
        "{}",
        describe(d)
    );
    let mut got = test_ids(d);
    got.sort();
    let mut want = all.to_vec();
    want.sort();
    assert_eq!(got, want, "{}", describe(d));
    assert_eq!(d.execution.as_ref().unwrap().passed as usize, all.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_shard_suite_runs_end_to_end_and_every_test_lands_once() {
    let all = ids(40);
    let sb = sandbox(
        |w| vec![("suite.yaml".into(), counted(workflow("suite", w, 4, "")))],
        &all,
    )
    .await;
    let id = sb.run("suite", &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    let e = d.execution.clone().unwrap();
    assert_eq!(
        ExecutionStatus::try_from(e.status).unwrap(),
        ExecutionStatus::Failed,
        "{}",
        describe(&d)
    );
    assert_eq!(d.shards.len(), 4);
    let mut got = test_ids(&d);
    got.sort();
    let mut want: Vec<String> = all.clone();
    want.sort();
    assert_eq!(got, want, "every test exactly once");
    assert_eq!((e.passed, e.failed, e.skipped), (32, 4, 4));
    // Contiguous split by count: 10 tests per shard, in listing order.
    for s in &d.shards {
        assert_eq!(s.tests.len(), 10, "{}", describe(&d));
    }
    let failing = d
        .shards
        .iter()
        .flat_map(|s| &s.tests)
        .find(|t| t.status == TestStatus::Failed as i32)
        .unwrap();
    assert_eq!(failing.failure_message, "expected 1, got 2");
    // Every test now has a history entry for the planner.
    let history = sb
        .client()
        .await
        .get_history(assay_proto::GetHistoryRequest {
            workflow: "suite".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tests;
    assert_eq!(history.len(), 40);
    assert!(history.iter().all(|t| t.runs == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_passing_workflow_passes_and_a_run_request_delivered_twice_runs_once() {
    let all: Vec<String> = (0..12).map(|i| format!("t{i}_ok")).collect();
    let sb = sandbox(
        |w| vec![("suite.yaml".into(), workflow("green", w, 3, ""))],
        &all,
    )
    .await;
    let id = ulid::Ulid::new().to_string();
    sb.run_with_key("green", &[], &id, "same-key").await;
    // The same request again, under a new message id (bypassing the stream's dedup window),
    // as a client retrying after a lost ack would.
    let other = ulid::Ulid::new().to_string();
    sb.run_with_key("green", &[], &other, "same-key").await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(
        d.execution.as_ref().unwrap().status,
        ExecutionStatus::Passed as i32,
        "{}",
        describe(&d)
    );
    assert_eq!(d.execution.as_ref().unwrap().passed, 12);
    // Both deliveries handled by the scheduler, and the plans by the aggregator.
    sb.wait_until_consumed(&[assay_bus::streams::EVENTS, assay_bus::streams::STATUS])
        .await;
    assert_eq!(
        sb.execution_count("green").await,
        1,
        "one cause, one execution"
    );
    assert!(sb.detail(&other).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_delivered_twice_leaves_the_same_state() {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    use futures::StreamExt;
    let all = ids(20);
    let sb = sandbox(
        |w| vec![("suite.yaml".into(), workflow("twice", w, 2, ""))],
        &all,
    )
    .await;
    let id = sb.run("twice", &[]).await;
    let before = sb.wait_for_terminal(&id, LONG).await;
    // Re-publish every plan, status and result message of the execution without its
    // Nats-Msg-Id, so the streams take them again and the consumers see them twice.
    let mut copied = 0;
    for (stream, filter) in [
        (assay_bus::streams::STATUS, assay_bus::subjects::PLANS_ALL),
        (assay_bus::streams::STATUS, assay_bus::subjects::STATUS_ALL),
        (
            assay_bus::streams::RESULTS,
            assay_bus::subjects::RESULTS_ALL,
        ),
    ] {
        let s = sb.bus.jetstream().get_stream(stream).await.unwrap();
        let c = s
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter.to_string(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut msgs = c.messages().await.unwrap();
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(500), msgs.next()).await
        {
            let pending = m.info().map(|i| i.pending).unwrap_or(0);
            sb.bus
                .publish_raw(m.subject.to_string(), Default::default(), m.payload.clone())
                .await
                .unwrap();
            copied += 1;
            if pending == 0 {
                break;
            }
        }
    }
    assert!(copied >= 5, "copied {copied}");
    sb.wait_until_consumed(&[assay_bus::streams::STATUS, assay_bus::streams::RESULTS])
        .await;
    let after = sb.detail(&id).await.unwrap();
    let strip = |mut d: assay_proto::ExecutionDetail| {
        if let Some(e) = d.execution.as_mut() {
            e.revision = 0;
            e.header = None;
        }
        d
    };
    assert_eq!(strip(before), strip(after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_restarted_mid_run_lose_nothing() {
    let (mut sb, id, all) = running_suite("restart", 16, 4, 4, "2").await;
    // Once shards are running, take the aggregator and the scheduler away, and stop the
    // launcher (its runners are killed; the jobs come back as attempt 2).
    sb.stop_service(Service::Aggregator).await;
    sb.stop_service(Service::Scheduler).await;
    sb.stop_service(Service::Launcher).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sb.start_service(Service::Launcher);
    sb.start_service(Service::Scheduler);
    sb.start_service(Service::Aggregator);
    let d = sb.wait_for_terminal(&id, Duration::from_secs(90)).await;
    assert_passed_once(&d, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_dead_lettered_or_rejected_while_other_work_goes_on() {
    use futures::StreamExt;
    let all: Vec<String> = (0..4).map(|i| format!("t{i}_ok")).collect();
    let sb = sandbox(
        |w| vec![("suite.yaml".into(), workflow("good", w, 2, ""))],
        &all,
    )
    .await;
    let dead = sb
        .bus
        .client()
        .subscribe(assay_bus::subjects::dead(assay_bus::streams::EVENTS))
        .await
        .unwrap();
    // Garbage and an oversized message on the events subjects.
    sb.bus
        .publish_raw(
            assay_bus::subjects::event("ci"),
            Default::default(),
            vec![0xde, 0xad, 0xbe, 0xef, 0xff].into(),
        )
        .await
        .unwrap();
    // (A run request may use the stream's whole 1 MiB: an event may not.)
    sb.bus
        .publish_raw(
            assay_bus::subjects::event("ci"),
            Default::default(),
            vec![7u8; 512 * 1024].into(),
        )
        .await
        .unwrap();
    // An unknown workflow and an undeclared parameter.
    let unknown = sb.run("no-such-workflow", &[]).await;
    let bad_param = sb.run("good", &[("colour", "blue")]).await;
    // And good work alongside.
    let good = sb.run("good", &[]).await;

    let reasons: Vec<String> =
        tokio::time::timeout(Duration::from_secs(30), dead.take(2).collect::<Vec<_>>())
            .await
            .expect("two dead letters")
            .into_iter()
            .map(|m| {
                m.headers
                    .unwrap()
                    .get(assay_bus::DEAD_REASON)
                    .unwrap()
                    .to_string()
            })
            .collect();
    assert!(
        reasons.iter().any(|r| r.contains("cannot decode")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("over the limit")),
        "{reasons:?}"
    );

    let d = sb.wait_for_terminal(&unknown, LONG).await;
    let e = d.execution.unwrap();
    assert_eq!(e.status, ExecutionStatus::Errored as i32);
    assert!(
        e.reason.contains("workflow \"no-such-workflow\" not found")
            && e.reason.contains("known: good"),
        "{}",
        e.reason
    );

    let d = sb.wait_for_terminal(&bad_param, LONG).await;
    let e = d.execution.unwrap();
    assert_eq!(e.status, ExecutionStatus::Errored as i32);
    assert!(
        e.reason.contains("unknown parameter \"colour\""),
        "{}",
        e.reason
    );

    let d = sb.wait_for_terminal(&good, LONG).await;
    assert_eq!(d.execution.unwrap().status, ExecutionStatus::Passed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_cron_stops_start_up_with_its_location_and_a_bad_reload_keeps_the_old_definitions()
 {
    let bad = r#"apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: nightly}
spec:
  on:
    cron: {schedule: "61 * * * *"}
  run: {workflow: good}
"#;
    let all: Vec<String> = vec!["a_ok".into()];
    let mut sb = Sandbox::empty(&[]).await;
    let work = sb.path("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("suite.sh"), SUITE_SH).unwrap();
    std::fs::write(work.join("ids.txt"), all.join("\n")).unwrap();
    std::fs::write(
        sb.workflows_dir().join("good.yaml"),
        workflow("good", &work, 1, ""),
    )
    .unwrap();
    std::fs::write(sb.workflows_dir().join("nightly.yaml"), bad).unwrap();
    sb.start_service(Service::Scheduler);
    let err = sb
        .service_exit(Service::Scheduler, Duration::from_secs(20))
        .await
        .expect("scheduler refuses to start");
    let err = err.unwrap_err();
    assert!(err.contains("nightly.yaml:6:"), "{err}");
    assert!(err.contains("cron"), "{err}");

    // Fix the file, start everything, then break it again: the running stack keeps the
    // last good definitions and goes on working.
    std::fs::remove_file(sb.workflows_dir().join("nightly.yaml")).unwrap();
    for s in assay_integration::ALL {
        sb.start_service(s);
    }
    let id = sb.run("good", &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(d.execution.unwrap().status, ExecutionStatus::Passed as i32);
    std::fs::write(sb.workflows_dir().join("nightly.yaml"), bad).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let id = sb.run("good", &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(d.execution.unwrap().status, ExecutionStatus::Passed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_killed_mid_shard_errors_its_shard_instead_of_hanging() {
    let all: Vec<String> = vec!["a_slow".into(), "b_ok".into()];
    let sb = sandbox(
        |w| {
            vec![(
                "suite.yaml".into(),
                workflow("killme", w, 1, "  env: {SLOW: \"60\"}\n"),
            )]
        },
        &all,
    )
    .await;
    let id = sb.run("killme", &[]).await;
    sb.wait_for(&id, LONG, "a running shard", shard_running)
        .await;
    let mut pid = None;
    for _ in 0..200 {
        pid = runner_pid(&id);
        if pid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = pid.expect("the shard's assay-runner process, with its test running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let d = sb.wait_for_terminal(&id, LONG).await;
    let e = d.execution.clone().unwrap();
    assert_eq!(
        e.status,
        ExecutionStatus::Errored as i32,
        "{}",
        describe(&d)
    );
    let reason = &d.shards[0].summary.as_ref().unwrap().reason;
    assert!(reason.contains("SIGKILL"), "{reason}");
    // The test process (sleep 60) went with its group (reaped within a moment).
    assert_eq!(
        processes_gone(&id).await,
        Vec::<i32>::new(),
        "processes of the shard outlived it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_over_its_timeout_is_killed_and_timed_out() {
    let all: Vec<String> = vec!["a_slow".into()];
    let sb = sandbox(
        |w| {
            vec![(
                "suite.yaml".into(),
                workflow("slow", w, 1, "  env: {SLOW: \"60\"}\n  timeout: 2s\n"),
            )]
        },
        &all,
    )
    .await;
    let id = sb.run("slow", &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(
        d.execution.clone().unwrap().status,
        ExecutionStatus::TimedOut as i32,
        "{}",
        describe(&d)
    );
    assert!(
        d.shards[0]
            .summary
            .as_ref()
            .unwrap()
            .reason
            .contains("timeout"),
        "{}",
        describe(&d)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_forbid_rejects_a_second_run_with_the_reason() {
    let all: Vec<String> = vec!["a_slow".into()];
    let sb = sandbox(
        |w| {
            vec![(
                "suite.yaml".into(),
                workflow(
                    "solo",
                    w,
                    1,
                    "  env: {SLOW: \"3\"}\n  concurrency: {policy: forbid}\n",
                ),
            )]
        },
        &all,
    )
    .await;
    let first = sb.run("solo", &[]).await;
    sb.wait_for(&first, LONG, "being planned", |_| true).await;
    let second = sb.run("solo", &[]).await;
    let d2 = sb.wait_for_terminal(&second, LONG).await;
    let e2 = d2.execution.unwrap();
    assert_eq!(e2.status, ExecutionStatus::Cancelled as i32);
    assert!(
        e2.reason.contains(&format!("execution {first}")),
        "{}",
        e2.reason
    );
    let d1 = sb.wait_for_terminal(&first, LONG).await;
    assert_eq!(d1.execution.unwrap().status, ExecutionStatus::Passed as i32);
    // The slot is free again once the scheduler has seen the first one's final update.
    let subject = assay_bus::subjects::execution_update("solo", &first);
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let last: Option<assay_proto::ExecutionUpdate> = sb
            .bus
            .last_message(assay_bus::streams::EXECUTIONS, &subject)
            .await
            .unwrap();
        if last.is_some_and(|u| u.status().is_terminal()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no final update published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sb.wait_until_consumed(&[assay_bus::streams::EXECUTIONS])
        .await;
    let third = sb.run("solo", &[]).await;
    let d3 = sb.wait_for_terminal(&third, LONG).await;
    assert_eq!(d3.execution.unwrap().status, ExecutionStatus::Passed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_and_bus_events_fire_triggers_and_http_refuses_unknown_workflows() {
    let trigger = r#"apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: on-push}
spec:
  on:
    event: {source: ci, type: push, labels: {branch: main}}
  run: {selector: {suite: e2e}}
"#;
    let all: Vec<String> = vec!["a_ok".into()];
    let sb = sandbox(
        |w| {
            vec![
                ("suite.yaml".into(), workflow("web", w, 1, "")),
                ("trigger.yaml".into(), trigger.into()),
            ]
        },
        &all,
    )
    .await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", sb.http);
    // Wait for the HTTP endpoint.
    for _ in 0..100 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http
        .post(format!("{base}/v1/workflows/nope/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("known: web"));
    let r = http
        .post(format!("{base}/v1/events"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = http
        .post(format!("{base}/v1/workflows/web/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.unwrap();
    let id = body["executionId"].as_str().unwrap().to_string();
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(d.execution.unwrap().status, ExecutionStatus::Passed as i32);

    // A push to another branch matches nothing; a push to main fires the trigger, once,
    // even when sent twice with the same Idempotency-Key.
    for (branch, key) in [("dev", "k0"), ("main", "k1"), ("main", "k1")] {
        let r = http
            .post(format!("{base}/v1/events"))
            .header("Idempotency-Key", key)
            .body(format!(
                r#"{{"source": "ci", "type": "push", "labels": {{"branch": "{branch}"}}}}"#
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let mut count = 0;
    for _ in 0..100 {
        count = sb.execution_count("web").await;
        if count >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every event handled by the scheduler and every plan by the aggregator: a third
    // execution could come from nowhere now.
    sb.wait_until_consumed(&[assay_bus::streams::EVENTS, assay_bus::streams::STATUS])
        .await;
    assert_eq!(
        sb.execution_count("web").await,
        2,
        "one direct run, one triggered (count seen {count})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cron_trigger_fires_on_schedule() {
    let trigger = r#"apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: every-second}
spec:
  on:
    cron: {schedule: "* * * * * *", timezone: Europe/Berlin}
  run: {workflow: tick}
"#;
    let all: Vec<String> = vec!["a_ok".into()];
    let sb = sandbox(
        |w| {
            vec![
                ("suite.yaml".into(), workflow("tick", w, 1, "")),
                ("cron.yaml".into(), trigger.into()),
            ]
        },
        &all,
    )
    .await;
    let mut n = 0;
    for _ in 0..150 {
        n = sb.execution_count("tick").await;
        if n >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(n >= 2, "cron fired {n} times in 15s");
}

/// The execution's processes once they are gone, or those still there after 10 s (a killed
/// group takes a moment to be reaped).
async fn processes_gone(execution: &str) -> Vec<i32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_of(execution);
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pid of the assay-runner process working on `execution`, found through /proc: the
/// nearest assay-runner ancestor of a process whose environment names the execution.
fn runner_pid(execution: &str) -> Option<i32> {
    let marker = format!("ASSAY_EXECUTION_ID={execution}");
    let is_runner = |pid: i32| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmd).contains("assay-runner")
    };
    let parent = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid …; comm may hold spaces, so split after the last ')'.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if !env.split(|b| *b == 0).any(|v| v == marker.as_bytes()) || is_runner(pid) {
            continue;
        }
        let mut p = pid;
        for _ in 0..8 {
            p = parent(p)?;
            if is_runner(p) {
                return Some(p);
            }
        }
    }
    None
}

/// Every process whose environment names the execution.
fn processes_of(execution: &str) -> Vec<i32> {
    let marker = format!("ASSAY_EXECUTION_ID={execution}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let env = std::fs::read(e.path().join("environ")).ok()?;
            env.split(|b| *b == 0)
                .any(|v| v == marker.as_bytes())
                .then_some(pid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_report_that_is_not_xml_errors_the_shard_with_the_file_named() {
    let yaml = |w: &std::path::Path| {
        format!(
            r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: broken}}
spec:
  workingDir: {}
  tests:
    run: echo 'this is not xml <' > {{report}}
    reports: ["{{report}}"]
"#,
            w.display()
        )
    };
    let sb = sandbox(|w| vec![("broken.yaml".into(), yaml(w))], &[]).await;
    let id = sb.run("broken", &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(
        d.execution.clone().unwrap().status,
        ExecutionStatus::Errored as i32,
        "{}",
        describe(&d)
    );
    let reason = &d.shards[0].summary.as_ref().unwrap().reason;
    assert!(reason.contains("is not valid JUnit XML"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_streams_logs_and_watches_an_execution_to_its_end() {
    use assay_proto::{StreamLogsRequest, WatchExecutionRequest};
    use futures::StreamExt;
    let all: Vec<String> = (0..6).map(|i| format!("t{i}_ok")).collect();
    let sb = sandbox(
        |w| vec![("suite.yaml".into(), workflow("api", w, 2, ""))],
        &all,
    )
    .await;
    let id = sb.run("api", &[]).await;
    let mut client = sb.client().await;
    // Watch from the start: updates arrive with growing revisions and end at the terminal one.
    let mut updates = client
        .watch_execution(WatchExecutionRequest {
            execution_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(u) = tokio::time::timeout(LONG, updates.next())
        .await
        .expect("an update in time")
    {
        seen.push(u.unwrap());
    }
    let last = seen.last().expect("updates");
    assert_eq!(last.status, ExecutionStatus::Passed as i32);
    // Updates are published by concurrent handlers, so they may arrive out of order; the
    // terminal one carries the highest revision, which is what consumers keep.
    let max = seen.iter().map(|u| u.revision).max().unwrap_or(0);
    assert_eq!(
        last.revision,
        max,
        "revisions: {:?}",
        seen.iter().map(|u| u.revision).collect::<Vec<_>>()
    );
    // Logs of both shards, ending by themselves once the execution is over.
    let mut logs = client
        .stream_logs(StreamLogsRequest {
            execution_id: id.clone(),
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    let mut shards = std::collections::BTreeSet::new();
    while let Some(chunk) = tokio::time::timeout(LONG, logs.next())
        .await
        .expect("logs end in time")
    {
        let chunk = chunk.unwrap();
        shards.insert(chunk.shard_index);
        text.push_str(&String::from_utf8_lossy(&chunk.data));
    }
    assert_eq!(shards.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    assert!(text.contains("tests"), "{text}");
    // An unknown execution is NOT_FOUND with a hint.
    let err = client
        .get_execution(assay_proto::GetExecutionRequest {
            id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("assay get executions"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assay_run_exits_0_for_a_passing_workflow_and_1_for_a_failing_one() {
    let pass: Vec<String> = (0..4).map(|i| format!("t{i}_ok")).collect();
    let sb = sandbox(
        |w| {
            std::fs::write(w.join("failing.txt"), "a_ok\nb_fail\n").unwrap();
            let failing = workflow("red", w, 2, "").replace("cat ids.txt", "cat failing.txt");
            vec![
                ("green.yaml".into(), workflow("green", w, 2, "")),
                ("red.yaml".into(), failing),
            ]
        },
        &pass,
    )
    .await;
    let run = |wf: &str| {
        let mut cmd = tokio::process::Command::new(assay_bin());
        cmd.args(["run", wf, "--timeout", "60s"])
            .env("ASSAY_WORKFLOWS", sb.workflows_dir())
            .env("ASSAY_NATS_URL", sb.nats.url())
            .env("ASSAY_API", format!("http://{}", sb.grpc))
            .env("NO_COLOR", "1");
        cmd
    };
    let green = run("green").output().await.unwrap();
    let out = String::from_utf8_lossy(&green.stdout);
    assert_eq!(
        green.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&green.stderr)
    );
    assert!(out.contains("PASSED 4 passed"), "{out}");
    let red = run("red").output().await.unwrap();
    let out = String::from_utf8_lossy(&red.stdout);
    assert_eq!(red.status.code(), Some(1), "{out}");
    assert!(
        out.contains("suite::b_fail") && out.contains("expected 1, got 2"),
        "{out}"
    );
    let unknown = run("nope").output().await.unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&unknown.stdout),
        String::from_utf8_lossy(&unknown.stderr)
    );
    assert_eq!(unknown.status.code(), Some(1), "{all}");
    assert!(all.contains("workflow \"nope\" not found"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_aborted_mid_run_lose_nothing_and_count_nothing_twice() {
    let (mut sb, id, all) = running_suite("crash", 12, 3, 3, "1").await;
    // No graceful stop: the tasks vanish at their current await point, unacked messages
    // are redelivered after the ack wait.
    sb.crash_service(Service::Aggregator);
    sb.crash_service(Service::Launcher);
    tokio::time::sleep(Duration::from_millis(500)).await;
    sb.start_service(Service::Aggregator);
    sb.start_service(Service::Launcher);
    let d = sb.wait_for_terminal(&id, Duration::from_secs(90)).await;
    assert_passed_once(&d, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_errored_shard_is_retried_up_to_the_workflow_retries() {
    // Setup fails the first time per execution and shard, then works.
    let flaky = r#"  setup:
    - name: flaky
      run: "m=once-$ASSAY_EXECUTION_ID-$ASSAY_SHARD_INDEX; if [ -f $m ]; then exit 0; fi; touch $m; echo 'infrastructure hiccup' >&2; exit 1"
  retries: {count: 1, on: errored}
"#;
    let always = "  setup:\n    - name: broken\n      run: exit 3\n  retries: {count: 2}\n";
    let all: Vec<String> = (0..4).map(|i| format!("t{i}_ok")).collect();
    let sb = sandbox(
        |w| {
            vec![
                ("flaky.yaml".into(), counted(workflow("flaky", w, 2, flaky))),
                ("always.yaml".into(), workflow("always", w, 1, always)),
            ]
        },
        &all,
    )
    .await;
    let id = sb.run("flaky", &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(
        d.execution.clone().unwrap().status,
        ExecutionStatus::Passed as i32,
        "{}",
        describe(&d)
    );
    for s in &d.shards {
        assert_eq!(s.summary.as_ref().unwrap().attempt, 2, "{}", describe(&d));
        assert_eq!(s.tests.len(), 2);
    }
    assert_eq!(
        d.execution.unwrap().passed,
        4,
        "tests of the errored attempt are not counted"
    );

    let id = sb.run("always", &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(
        d.execution.clone().unwrap().status,
        ExecutionStatus::Errored as i32,
        "{}",
        describe(&d)
    );
    assert_eq!(
        d.shards[0].summary.as_ref().unwrap().attempt,
        3,
        "1 + 2 retries: {}",
        describe(&d)
    );
}

const TIMED_SH: &str = r#"#!/bin/sh
# usage: timed.sh REPORT ID...  — ids end in _<ms>; the report says each took that long.
report=$1; shift
{
echo '<?xml version="1.0" encoding="UTF-8"?>'
echo "<testsuite name=\"timed\" tests=\"$#\">"
for id in "$@"; do
  ms=${id##*_}
  echo "<testcase classname=\"timed\" name=\"$id\" time=\"$(awk "BEGIN{print $ms/1000}")\"/>"
done
echo "</testsuite>"
} > "$report"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duration_strategy_balances_shards_from_history_and_runs_new_tests_once() {
    let mut ids: Vec<String> = vec!["big_900".into(), "mid_500".into(), "mid_400".into()];
    ids.extend((0..6).map(|i| format!("small{i}_100")));
    let sb = sandbox(
        |w| {
            std::fs::write(w.join("timed.sh"), TIMED_SH).unwrap();
            let yaml = workflow("dur", w, 2, "")
                .replace("sh suite.sh", "sh timed.sh")
                .replace(
                    "parallel: {count: 2}",
                    "parallel: {count: 2, strategy: duration}",
                );
            vec![("dur.yaml".into(), yaml)]
        },
        &ids,
    )
    .await;
    let load = |d: &assay_proto::ExecutionDetail| -> Vec<u64> {
        d.shards
            .iter()
            .map(|s| s.tests.iter().map(|t| t.duration_ms).sum())
            .collect()
    };
    // First run: no history, tests spread by hash; it teaches the planner their durations.
    let first = sb.run("dur", &[]).await;
    let d1 = sb.wait_for_terminal(&first, LONG).await;
    assert_eq!(
        d1.execution.clone().unwrap().status,
        ExecutionStatus::Passed as i32,
        "{}",
        describe(&d1)
    );
    assert_eq!(test_ids(&d1).len(), 9);
    // The aggregator writes the workflow's history snapshot when an execution ends.
    let kv = sb.bus.kv(assay_bus::streams::KV_HISTORY).await.unwrap();
    for _ in 0..100 {
        if kv.get(assay_bus::kv_key("dur")).await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Second run: the shortest tests holding at most a fifth of the work (4 x 100 of 2400)
    // are the shared tail; the rest goes longest first onto the least-loaded shard:
    // 900+100 | 500+400+100 → 1000 | 1000. Each shard then drains the tail (2 batches of
    // 200), so it ran its head and whatever part of the tail it took.
    let second = sb.run("dur", &[]).await;
    let d2 = sb.wait_for_terminal(&second, LONG).await;
    let loads = load(&d2);
    assert_eq!(loads.iter().sum::<u64>(), 2400, "{}", describe(&d2));
    assert!(
        loads.iter().all(|l| (1000..=1400).contains(l)),
        "loads {loads:?}: {}",
        describe(&d2)
    );
    let mut got = test_ids(&d2);
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 9, "every test once: {}", describe(&d2));
    let text = sb.logs_text(&second, false, LONG).await;
    assert!(
        text.contains("filled the shared tail queue: 4 tests in 2 batches"),
        "{text}"
    );
    assert!(text.contains("queue drained"), "{text}");
    // A new test appears: it runs exactly once, on the shard its hash picks.
    let ids_file = {
        // The sandbox's working directory is the one holding timed.sh.
        let wf = std::fs::read_to_string(sb.workflows_dir().join("dur.yaml")).unwrap();
        let dir = wf
            .lines()
            .find_map(|l| l.trim().strip_prefix("workingDir: "))
            .unwrap()
            .to_string();
        std::path::PathBuf::from(dir).join("ids.txt")
    };
    let mut listed = std::fs::read_to_string(&ids_file).unwrap();
    listed.push_str("fresh_300\n");
    std::fs::write(&ids_file, listed).unwrap();
    let third = sb.run("dur", &[]).await;
    let d3 = sb.wait_for_terminal(&third, LONG).await;
    let mut got = test_ids(&d3);
    got.sort();
    assert_eq!(got.len(), 10, "{}", describe(&d3));
    got.dedup();
    assert_eq!(got.len(), 10, "every test once: {}", describe(&d3));
    assert!(got.contains(&"fresh_300".to_string()));
}

/// Like TIMED_SH, and a test whose id holds "stall" first sleeps $SLOW seconds.
const TIMED_STALL_SH: &str = r#"#!/bin/sh
report=$1; shift
{
echo '<?xml version="1.0" encoding="UTF-8"?>'
echo "<testsuite name=\"timed\" tests=\"$#\">"
for id in "$@"; do
  case $id in *stall*) sleep "${SLOW:-1}";; esac
  ms=${id##*_}
  echo "<testcase classname=\"timed\" name=\"$id\" time=\"$(awk "BEGIN{print $ms/1000}")\"/>"
done
echo "</testsuite>"
} > "$report"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duration_tail_survives_a_stalled_worker_and_counts_every_test_once() {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    // 4 long tests (3,000 ms) are planned onto the shards; the 9 short ones (450 ms, under a
    // fifth of the work) are the shared tail, "zz_stall_50" (last by id) among them.
    let mut all: Vec<String> = ["a_900", "b_800", "c_700", "d_600"]
        .map(String::from)
        .to_vec();
    all.extend((0..8).map(|i| format!("s{i}_50")));
    all.push("zz_stall_50".into());
    let sb = sandbox(
        |w| {
            std::fs::write(w.join("timed.sh"), TIMED_STALL_SH).unwrap();
            let yaml = workflow("dtail", w, 2, "  env: {SLOW: \"3\"}\n")
                .replace("sh suite.sh", "sh timed.sh")
                .replace(
                    "parallel: {count: 2}",
                    "parallel: {count: 2, strategy: duration, lease: 2s, batchOverhead: 1ms}",
                );
            vec![("dtail.yaml".into(), yaml)]
        },
        &all,
    )
    .await;
    // First run: no history, no tail (the tests spread by hash).
    let first = sb.run("dtail", &[]).await;
    let d1 = sb.wait_for_terminal(&first, LONG).await;
    assert_passed_once(&d1, &all);
    let text = sb.logs_text(&first, false, LONG).await;
    assert!(!text.contains("tail queue"), "no history, no tail: {text}");
    let kv = sb.bus.kv(assay_bus::streams::KV_HISTORY).await.unwrap();
    for _ in 0..100 {
        if kv.get(assay_bus::kv_key("dtail")).await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Second run: freeze the worker running the stalling tail test past its lease.
    let id = sb.run("dtail", &[]).await;
    let mut found = None;
    for _ in 0..400 {
        found = process_with_arg("zz_stall_50");
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_script, pgrp) = found.expect("the suite script running the stalling test");
    let group = Pid::from_raw(pgrp);
    killpg(group, Signal::SIGSTOP).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    killpg(group, Signal::SIGCONT).unwrap();
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_passed_once(&d, &all);
    let text = sb.logs_text(&id, false, LONG).await;
    assert!(
        text.contains("filled the shared tail queue: 9 tests in"),
        "{text}"
    );
    assert!(text.contains("taken over after a lease expired"), "{text}");
    // Both shards ran their planned heads: 900+600 | 800+700.
    for shard in &d.shards {
        let head: u64 = shard
            .tests
            .iter()
            .filter(|t| !t.id.contains("_50"))
            .map(|t| t.duration_ms)
            .sum();
        assert_eq!(head, 1500, "{}", describe(&d));
    }
}

/// The pid of the process whose command line has the argument `needle` (e.g. a test id
/// passed to the suite script), and its process group (its shard's runner's group).
/// Waits until the launcher took every shard job (the work-queue stream is empty).
async fn wait_until_shard_jobs_taken(sb: &Sandbox) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut s = sb
            .bus
            .jetstream()
            .get_stream(assay_bus::streams::SHARDS)
            .await
            .unwrap();
        if s.info().await.unwrap().state.messages == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job was never taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn process_with_arg(needle: &str) -> Option<(i32, i32)> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmd.split(|b| *b == 0).any(|a| a == needle.as_bytes()) {
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // After the ')' of comm: state, ppid, pgrp, …
            let pgrp = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(2)?
                .parse()
                .ok()?;
            return Some((pid, pgrp));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_mode_survives_a_stalled_worker_and_counts_every_test_once() {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let mut all: Vec<String> = (0..10).map(|i| format!("t{i}_ok")).collect();
    all.push("zz_stall_slow".into());
    let extra = "  env: {SLOW: \"3\"}\n";
    let sb = sandbox(
        |w| {
            let yaml = workflow("queued", w, 2, extra).replace(
                "parallel: {count: 2}",
                "parallel: {count: 2, strategy: queue, lease: 2s, batchOverhead: 1ms}",
            );
            vec![("queued.yaml".into(), yaml)]
        },
        &all,
    )
    .await;
    let id = sb.run("queued", &[]).await;
    // Find the worker running the slow test and freeze its whole process group past the lease.
    let mut found = None;
    for _ in 0..400 {
        found = process_with_arg("zz_stall_slow");
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_script, pgrp) = found.expect("the suite script running the slow test");
    let group = Pid::from_raw(pgrp);
    killpg(group, Signal::SIGSTOP).unwrap_or_else(|e| {
        let ps = std::process::Command::new("ps")
            .args(["-eo", "pid,pgid,ppid,stat,args"])
            .output()
            .unwrap();
        panic!(
            "SIGSTOP to group {pgrp} ({found:?}): {e}\n{}",
            String::from_utf8_lossy(&ps.stdout)
        )
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    killpg(group, Signal::SIGCONT).unwrap();
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(
        d.execution.clone().unwrap().status,
        ExecutionStatus::Passed as i32,
        "{}",
        describe(&d)
    );
    let mut got = test_ids(&d);
    got.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(got, want, "every test exactly once: {}", describe(&d));
    assert_eq!(d.execution.unwrap().passed, 11);
    // The frozen worker's batch went to the other one after its lease.
    let text = sb.logs_text(&id, false, LONG).await;
    assert!(text.contains("taken over after a lease expired"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_fast_cancels_the_other_shards_at_the_first_failure() {
    // Shard 0 fails at once; shards 1 and 2 would sleep 30 s each.
    let all: Vec<String> = vec!["a_fail".into(), "b_slow".into(), "c_slow".into()];
    let sb = sandbox(
        |w| {
            let yaml = counted(workflow("ff", w, 3, "  env: {SLOW: \"30\"}\n")).replace(
                "strategy: count, count: 3}",
                "strategy: count, count: 3, failFast: true}",
            );
            vec![("ff.yaml".into(), yaml)]
        },
        &all,
    )
    .await;
    let id = sb.run("ff", &[]).await;
    let d = sb.wait_for_terminal(&id, Duration::from_secs(25)).await;
    assert_eq!(
        d.execution.clone().unwrap().status,
        ExecutionStatus::Failed as i32,
        "{}",
        describe(&d)
    );
    let states: Vec<i32> = d
        .shards
        .iter()
        .map(|s| s.summary.as_ref().unwrap().state)
        .collect();
    assert_eq!(
        states,
        vec![
            ShardState::Failed as i32,
            ShardState::Cancelled as i32,
            ShardState::Cancelled as i32
        ],
        "{}",
        describe(&d)
    );
    let reason = &d.shards[1].summary.as_ref().unwrap().reason;
    assert!(reason.contains("fail-fast: shard 0 failed"), "{reason}");
    // Nothing of the cancelled shards keeps running.
    assert_eq!(processes_gone(&id).await, Vec::<i32>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assay_cancel_stops_a_running_execution_and_replace_cancels_the_older_one() {
    let all: Vec<String> = vec!["a_slow".into(), "b_slow".into()];
    let sb = sandbox(
        |w| {
            vec![
                (
                    "long.yaml".into(),
                    counted(workflow("long", w, 2, "  env: {SLOW: \"30\"}\n")),
                ),
                (
                    "newest.yaml".into(),
                    counted(workflow(
                        "newest",
                        w,
                        1,
                        "  env: {SLOW: \"30\"}\n  concurrency: {policy: replace}\n",
                    )),
                ),
            ]
        },
        &all,
    )
    .await;
    let running = |d: &assay_proto::ExecutionDetail| {
        d.shards.iter().any(|s| {
            s.summary
                .as_ref()
                .is_some_and(|x| x.state == ShardState::Running as i32)
        })
    };
    // assay cancel
    let id = sb.run("long", &[]).await;
    sb.wait_for(&id, LONG, "a running shard", running).await;
    let out = tokio::process::Command::new(assay_bin())
        .args(["cancel", &id, "--reason", "not needed any more"])
        .env("ASSAY_NATS_URL", sb.nats.url())
        .env("ASSAY_API", format!("http://{}", sb.grpc))
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = sb.wait_for_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(
        d.execution.clone().unwrap().status,
        ExecutionStatus::Cancelled as i32,
        "{}",
        describe(&d)
    );
    assert!(
        d.shards
            .iter()
            .all(|s| s.summary.as_ref().unwrap().reason == "not needed any more"),
        "{}",
        describe(&d)
    );

    // concurrency: replace
    let first = sb.run("newest", &[]).await;
    sb.wait_for(&first, LONG, "a running shard", running).await;
    let second = sb.run("newest", &[]).await;
    let d1 = sb.wait_for_terminal(&first, Duration::from_secs(20)).await;
    assert_eq!(
        d1.execution.clone().unwrap().status,
        ExecutionStatus::Cancelled as i32,
        "{}",
        describe(&d1)
    );
    assert!(
        d1.shards[0]
            .summary
            .as_ref()
            .unwrap()
            .reason
            .contains(&format!("replaced by execution {second}"))
    );
    sb.wait_for(&second, LONG, "a running shard", running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_queue_runs_waiting_executions_one_at_a_time_in_order() {
    let all: Vec<String> = vec!["a_slow".into()];
    let sb = sandbox(
        |w| {
            vec![(
                "line.yaml".into(),
                counted(workflow(
                    "line",
                    w,
                    1,
                    "  env: {SLOW: \"1\"}\n  concurrency: {policy: queue}\n",
                )),
            )]
        },
        &all,
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(sb.run("line", &[]).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The later two wait, queued, while the first runs; `assay get executions` shows places.
    sb.wait_for(&ids[0], LONG, "a running shard", shard_running)
        .await;
    let d2 = sb.wait_for(&ids[2], LONG, "being recorded", |_| true).await;
    assert_eq!(d2.execution.unwrap().status, ExecutionStatus::Queued as i32);
    let out = sb.assay(&["get", "executions", "--workflow", "line"]).await;
    let table = assay_integration::output_text(&out);
    assert!(
        table.contains("queued #1") && table.contains("queued #2"),
        "{table}"
    );
    // All three pass, never two at once, in order.
    let mut spans = Vec::new();
    for id in &ids {
        let d = sb.wait_for_terminal(id, LONG).await;
        let e = d.execution.clone().unwrap();
        assert_eq!(e.status, ExecutionStatus::Passed as i32, "{}", describe(&d));
        let s = d.shards[0].summary.clone().unwrap();
        spans.push((e.finished_at_ms - s.duration_ms as i64, e.finished_at_ms));
    }
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0 + 50, "overlapping runs: {spans:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrency_group_limits_executions_across_workflows() {
    let all: Vec<String> = vec!["a_slow".into()];
    let extra = "  env: {SLOW: \"1\"}\n  concurrency: {policy: queue, group: db, max: 2}\n";
    let sb = sandbox(
        |w| {
            vec![
                ("a.yaml".into(), counted(workflow("wa", w, 1, extra))),
                ("b.yaml".into(), counted(workflow("wb", w, 1, extra))),
            ]
        },
        &all,
    )
    .await;
    let mut ids = Vec::new();
    for wf in ["wa", "wb", "wa"] {
        ids.push(sb.run(wf, &[]).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sb.wait_for(&ids[1], LONG, "a running shard", shard_running)
        .await;
    let third = sb.wait_for(&ids[2], LONG, "being recorded", |_| true).await;
    assert_eq!(
        third.execution.unwrap().status,
        ExecutionStatus::Queued as i32,
        "two slots in group db are taken"
    );
    let mut spans = Vec::new();
    for id in &ids {
        let d = sb.wait_for_terminal(id, LONG).await;
        let e = d.execution.clone().unwrap();
        assert_eq!(e.status, ExecutionStatus::Passed as i32, "{}", describe(&d));
        let s = d.shards[0].summary.clone().unwrap();
        spans.push((e.finished_at_ms - s.duration_ms as i64, e.finished_at_ms));
    }
    // The third started only after one of the first two ended.
    let first_end = spans[0].1.min(spans[1].1);
    assert!(spans[2].0 + 50 >= first_end, "{spans:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_executions_start_by_priority_then_in_arrival_order() {
    let all: Vec<String> = vec!["a_slow".into()];
    let sb = sandbox(
        |w| {
            vec![(
                "line.yaml".into(),
                counted(workflow(
                    "line",
                    w,
                    1,
                    "  env: {SLOW: \"1\"}\n  concurrency: {policy: queue, priority: -5}\n",
                )),
            )]
        },
        &all,
    )
    .await;
    let first = sb.run("line", &[]).await;
    sb.wait_for(&first, LONG, "a running shard", shard_running)
        .await;
    // Two at the workflow's priority (-5), then one asked for at priority 10: it goes first.
    let mut ids = Vec::new();
    for priority in [None, None, Some(10)] {
        let id = ulid::Ulid::new().to_string();
        sb.publish_request(&assay_proto::RunRequest {
            header: Some(assay_bus::header("test", format!("run/{id}"), None)),
            workflow: "line".into(),
            execution_id: id.clone(),
            priority,
            ..Default::default()
        })
        .await;
        sb.wait_for(&id, LONG, "being recorded", |_| true).await;
        ids.push(id);
    }
    let list = sb.executions("line", 10).await;
    let place = |id: &str| {
        list.iter()
            .find(|u| u.execution_id == id)
            .map(|u| u.queue_position)
    };
    assert_eq!(
        (place(&ids[2]), place(&ids[0]), place(&ids[1])),
        (Some(1), Some(2), Some(3)),
        "{list:#?}"
    );
    let out = sb.assay(&["get", "executions", "--workflow", "line"]).await;
    let table = assay_integration::output_text(&out);
    let row = |id: &str| {
        table
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or("")
            .to_string()
    };
    assert!(row(&ids[2]).contains("queued #1"), "{table}");
    assert!(row(&ids[1]).contains("queued #3"), "{table}");
    // They run one at a time: the high-priority one first, then the other two in order.
    let mut starts = Vec::new();
    for id in &ids {
        let d = sb.wait_for_terminal(id, LONG).await;
        let e = d.execution.clone().unwrap();
        assert_eq!(e.status, ExecutionStatus::Passed as i32, "{}", describe(&d));
        let s = d.shards[0].summary.clone().unwrap();
        starts.push(e.finished_at_ms - s.duration_ms as i64);
    }
    assert!(
        starts[2] < starts[0] && starts[0] < starts[1],
        "start order by priority, then arrival: {starts:?}"
    );
    let d = sb.detail(&ids[2]).await.unwrap();
    assert_eq!(
        d.execution.unwrap().queue_position,
        0,
        "no place once it ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_job_of_an_ended_execution_starts_no_runner() {
    use prost::Message as _;
    let all = ids(4);
    let sb = sandbox(
        |w| vec![("suite.yaml".into(), workflow("over", w, 1, ""))],
        &all,
    )
    .await;
    let id = sb.run("over", &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_ne!(status_of(&d), ExecutionStatus::Running, "{}", describe(&d));
    let statuses = |sb: &Sandbox| {
        let (bus, subject) = (sb.bus.clone(), assay_bus::subjects::shard_status(&id, 0));
        async move {
            let mut stream = bus
                .jetstream()
                .get_stream(assay_bus::streams::STATUS)
                .await
                .unwrap();
            let info = stream.info().await.unwrap().state.clone();
            let mut n = 0;
            for seq in info.first_sequence..=info.last_sequence {
                if let Ok(m) = stream.get_raw_message(seq).await
                    && m.subject.as_str() == subject
                {
                    n += 1;
                }
            }
            n
        }
    };
    let before = statuses(&sb).await;
    assert!(before >= 2, "running and final statuses of shard 0");
    // The shard job again, as a redelivery after a lost ack would bring it.
    let job = assay_proto::ShardJob {
        header: Some(assay_bus::header("test", format!("{id}/0/late"), None)),
        execution_id: id.clone(),
        workflow: "over".into(),
        shard_index: 0,
        shard_count: 1,
        attempt: 2,
        steps: vec![assay_proto::Step {
            name: "late".into(),
            run: "echo late".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    sb.bus
        .publish_raw(
            assay_bus::subjects::shard_job(&id, 0),
            Default::default(),
            job.encode_to_vec().into(),
        )
        .await
        .unwrap();
    // Consumed (the work-queue stream empties) without a runner or a status.
    // The launcher acks a job only after publishing what it decided: once the work queue
    // is empty, a status of a new attempt would be on the bus already.
    wait_until_shard_jobs_taken(&sb).await;
    assert_eq!(statuses(&sb).await, before, "no new attempt reported");
    let after = sb.detail(&id).await.unwrap();
    assert_eq!(after.shards[0].summary.as_ref().unwrap().attempt, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_job_past_its_execution_deadline_times_out_without_a_runner() {
    let all = ids(2);
    let sb = sandbox(
        |w| vec![("suite.yaml".into(), workflow("late", w, 1, ""))],
        &all,
    )
    .await;
    // A job that waited in the queue while every launcher was gone: its execution's
    // deadline (creation + 5 s) passed a second ago.
    let id = ulid::Ulid::new().to_string();
    let marker = sb.dir.path().join("ran");
    let job = assay_proto::ShardJob {
        timeout_ms: 5_000,
        deadline_ms: assay_bus::now_ms() - 1_000,
        ..touching_job(&id, "late", 1, 1, &marker)
    };
    publish_job(&sb, &job).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = last_status(&sb, &id).await {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no status for a job past its deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status.state(),
        assay_proto::ShardState::TimedOut,
        "{status:?}"
    );
    assert_eq!(status.reporter, "launcher");
    assert!(
        status
            .reason
            .contains("timeout of 5s passed before this attempt could start"),
        "{}",
        status.reason
    );
    assert!(!status.will_retry);
    // The job is acked (gone from the work queue) only when the launcher is done with it.
    wait_until_shard_jobs_taken(&sb).await;
    assert!(!marker.exists(), "no runner may start after the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_job_of_a_shard_that_already_ended_starts_no_runner() {
    let all = ids(2);
    let sb = sandbox(
        |w| vec![("suite.yaml".into(), workflow("again", w, 2, ""))],
        &all,
    )
    .await;
    // Shard 0 of a running execution passed on attempt 2 (no plan needed: the launcher
    // reads the shard's last status); a stale copy of its job comes back as attempt 3.
    let id = ulid::Ulid::new().to_string();
    let passed = assay_proto::ShardStatus {
        header: Some(assay_bus::header("test", format!("{id}/0/2/final"), None)),
        execution_id: id.clone(),
        workflow: "again".into(),
        shard_index: 0,
        attempt: 2,
        state: assay_proto::ShardState::Passed.into(),
        reporter: "runner".into(),
        started_at_ms: assay_bus::now_ms() - 1_000,
        finished_at_ms: assay_bus::now_ms(),
        ..Default::default()
    };
    sb.bus
        .publish(assay_bus::subjects::shard_status(&id, 0), &passed)
        .await
        .unwrap();
    let marker = sb.dir.path().join("ran");
    publish_job(&sb, &touching_job(&id, "again", 2, 3, &marker)).await;
    // Taken (the work-queue stream empties) without a runner or a new status.
    wait_until_shard_jobs_taken(&sb).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!marker.exists(), "no runner for a shard that ended");
    let last = last_status(&sb, &id).await.expect("the passed status");
    assert_eq!(
        last.attempt, 2,
        "the passed attempt stays the shard's last word"
    );
}

/// A job for shard 0 of `id` whose one step touches `marker`: whether a runner started.
fn touching_job(
    id: &str,
    workflow: &str,
    shard_count: u32,
    attempt: u32,
    marker: &std::path::Path,
) -> assay_proto::ShardJob {
    assay_proto::ShardJob {
        header: Some(assay_bus::header("test", format!("{id}/0/{attempt}"), None)),
        execution_id: id.to_string(),
        workflow: workflow.into(),
        shard_index: 0,
        shard_count,
        attempt,
        steps: vec![assay_proto::Step {
            name: workflow.into(),
            run: format!("touch {}", marker.display()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Puts `job` on the shard work queue, as the scheduler would.
async fn publish_job(sb: &Sandbox, job: &assay_proto::ShardJob) {
    use prost::Message as _;
    sb.bus
        .publish_raw(
            assay_bus::subjects::shard_job(&job.execution_id, job.shard_index),
            Default::default(),
            job.encode_to_vec().into(),
        )
        .await
        .unwrap();
}

/// The last status of shard 0 of `id` on the bus.
async fn last_status(sb: &Sandbox, id: &str) -> Option<assay_proto::ShardStatus> {
    sb.bus
        .last_message(
            assay_bus::streams::STATUS,
            &assay_bus::subjects::shard_status(id, 0),
        )
        .await
        .unwrap()
}
