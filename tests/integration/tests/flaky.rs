//! Per-test retries end to end: a real nats-server, the four services in-process, real
//! assay-runner child processes and the built `assay` binary (build them first:
//! `cargo build --bins`, which `make test` does).

use std::path::Path;
use std::time::Duration;

use assay_bus::{streams, subjects};
use assay_integration::{Sandbox, describe, output_text, status_of};
use assay_proto::{
    ExecutionDetail, ExecutionStatus, ExecutionUpdate, LogChunk, LogStream, ShardState,
    TestCaseResult, TestStatus,
};

/// usage: suite.sh REPORT ID... — writes a JUnit report. An id containing `flaky` fails the
/// first time it runs and passes from then on (a marker file per id in ./markers); an id
/// containing `broken` always fails.
const SUITE_SH: &str = r#"#!/bin/sh
report=$1; shift
mkdir -p markers
failed=0
{
echo '<?xml version="1.0" encoding="UTF-8"?>'
echo "<testsuite name=\"suite\" tests=\"$#\">"
for id in "$@"; do
  echo "$id" >> runs.log
  case $id in
    *flaky*)
      if [ -e "markers/$id" ]; then
        echo "<testcase classname=\"suite\" name=\"$id\" time=\"0.010\"/>"
      else
        : > "markers/$id"
        failed=1
        echo "<testcase classname=\"suite\" name=\"$id\" time=\"0.010\"><failure message=\"flaked\">first run fails</failure></testcase>"
      fi;;
    *broken*)
      failed=1
      echo "<testcase classname=\"suite\" name=\"$id\" time=\"0.010\"><failure message=\"always\">never passes</failure></testcase>";;
    *) echo "<testcase classname=\"suite\" name=\"$id\" time=\"0.010\"/>";;
  esac
done
echo "</testsuite>"
} > "$report"
exit $failed
"#;

const WORKFLOW: &str = "retrying";
const LONG: Duration = Duration::from_secs(90);

fn workflow(dir: &Path) -> String {
    format!(
        r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: {WORKFLOW}}}
spec:
  workingDir: {dir}
  tests:
    list: cat ids.txt
    run: sh suite.sh {{report}} {{tests}}
    reports: ["{{report}}"]
  parallel: {{count: 2, strategy: count}}
  retries: {{count: 2, on: failed}}
"#,
        dir = dir.display()
    )
}

/// 8 tests split 4/4: shard 0 holds the flaky one, shard 1 the broken one.
const IDS: [&str; 8] = [
    "t00_ok",
    "t01_flaky",
    "t02_ok",
    "t03_ok",
    "t04_ok",
    "t05_broken",
    "t06_ok",
    "t07_ok",
];

fn test<'a>(d: &'a ExecutionDetail, id: &str) -> &'a TestCaseResult {
    d.shards
        .iter()
        .flat_map(|s| &s.tests)
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("no result for {id}: {}", describe(d)))
}

/// The newest public update of the execution on `assay.v1.executions.>`.
async fn last_public_update(sb: &Sandbox, id: &str) -> ExecutionUpdate {
    let stream = sb
        .bus
        .jetstream()
        .get_stream(streams::EXECUTIONS)
        .await
        .unwrap();
    let subject = subjects::execution_update(WORKFLOW, id);
    let msg = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap();
    assay_bus::decode(&subject, &msg.payload, 1 << 20).unwrap()
}

/// Everything the runners of `shard` wrote on the SYSTEM stream, in order.
async fn system_log(sb: &Sandbox, id: &str, shard: u32) -> String {
    let mut stream = sb.bus.jetstream().get_stream(streams::LOGS).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let subject = subjects::logs(id, shard);
    let mut out = String::new();
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        if msg.subject.as_str() != subject {
            continue;
        }
        let chunk: LogChunk = assay_bus::decode(&subject, &msg.payload, 1 << 20).unwrap();
        if chunk.stream == LogStream::System as i32 {
            out.push_str(&String::from_utf8_lossy(&chunk.data));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_tests_are_retried_and_a_pass_on_retry_is_flaky() {
    let work = tempfile::tempdir().unwrap().keep();
    std::fs::write(work.join("suite.sh"), SUITE_SH).unwrap();
    std::fs::write(work.join("ids.txt"), IDS.join("\n") + "\n").unwrap();
    let sb = Sandbox::start(&[("retrying.yaml", &workflow(&work))]).await;

    let id = sb.run(WORKFLOW, &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    let why = describe(&d);
    assert_eq!(status_of(&d), ExecutionStatus::Failed, "{why}");

    // Shard 0: the flaky test failed once and passed on its first retry.
    let flaky = test(&d, "t01_flaky");
    assert_eq!(flaky.status(), TestStatus::Passed, "{why}");
    assert_eq!((flaky.attempts, flaky.flaky), (2, true), "{why}");
    assert!(
        flaky
            .output
            .starts_with("flaky: passed on attempt 2; attempt 1 failed: flaked"),
        "{}",
        flaky.output
    );
    let ok = test(&d, "t00_ok");
    assert_eq!((ok.attempts, ok.flaky), (1, false), "{why}");
    let shard0 = d.shards[0].summary.clone().unwrap();
    assert_eq!(shard0.state(), ShardState::Passed, "{why}");
    assert_eq!((shard0.passed, shard0.flaky), (4, 1), "{why}");

    // Shard 1: the broken test ran 1 + 2 times and stays failed.
    let broken = test(&d, "t05_broken");
    assert_eq!(broken.status(), TestStatus::Failed, "{why}");
    assert_eq!((broken.attempts, broken.flaky), (3, false), "{why}");
    assert_eq!(
        d.shards[1].summary.as_ref().unwrap().state(),
        ShardState::Failed,
        "{why}"
    );

    let e = d.execution.as_ref().unwrap();
    assert_eq!((e.passed, e.failed, e.flaky), (7, 1, 1), "{why}");
    assert_eq!(last_public_update(&sb, &id).await.flaky, 1);

    // Only the failing tests ran again.
    let runs = std::fs::read_to_string(work.join("runs.log")).unwrap();
    let count = |t: &str| runs.lines().filter(|l| *l == t).count();
    assert_eq!(count("t01_flaky"), 2, "{runs}");
    assert_eq!(count("t00_ok"), 1, "{runs}");

    let log = system_log(&sb, &id, 0).await;
    assert!(
        log.contains("retrying 1 failed test (retry 1 of 2)"),
        "{log}"
    );
    assert!(
        log.contains("1 flaky test passed on retry: t01_flaky"),
        "{log}"
    );
    assert!(!log.contains("retry 2 of 2"), "{log}");
    let log = system_log(&sb, &id, 1).await;
    assert!(
        log.contains("retrying 1 failed test (retry 2 of 2)"),
        "{log}"
    );

    // The CLI shows the flaky count and lists the test with its attempts.
    let out = sb.assay(&["get", "execution", &id]).await;
    let all = output_text(&out);
    assert!(all.contains("7 passed (1 flaky), 1 failed"), "{all}");
    assert!(
        all.contains("Flaky\n~ suite::t01_flaky [2 attempts, shard 0]"),
        "{all}"
    );
    let out = sb.assay(&["get", "execution", &id, "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["flaky"], 1, "{json}");
    let tests = json["shards"][0]["tests"].as_array().unwrap();
    let t = tests.iter().find(|t| t["id"] == "t01_flaky").unwrap();
    assert_eq!(
        (t["attempts"].as_u64(), t["flaky"].as_bool()),
        (Some(2), Some(true))
    );
}
