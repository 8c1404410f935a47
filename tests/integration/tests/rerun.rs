//! `assay rerun` end to end: a real nats-server, the four services in-process, real
//! assay-runner child processes and the built `assay` binary (build them first:
//! `cargo build --bins`, which `make test` does).

use std::path::Path;
use std::time::Duration;

use assay_integration::{Sandbox, describe, output_text, status_of, test_ids};
use assay_proto::{ExecutionDetail, ExecutionStatus, TestStatus};

/// usage: suite.sh REPORT ID... — writes a JUnit report. An id containing `flaky` fails the
/// first time it runs and passes from then on (a marker file per id in ./markers).
const SUITE_SH: &str = r#"#!/bin/sh
report=$1; shift
mkdir -p markers
failed=0
{
echo '<?xml version="1.0" encoding="UTF-8"?>'
echo "<testsuite name=\"suite\" tests=\"$#\">"
for id in "$@"; do
  case $id in
    *flaky*)
      if [ -e "markers/$id" ]; then
        echo "<testcase classname=\"suite\" name=\"$id\" time=\"0.010\"/>"
      else
        : > "markers/$id"
        failed=1
        echo "<testcase classname=\"suite\" name=\"$id\" time=\"0.010\"><failure message=\"flaked\">first run fails</failure></testcase>"
      fi;;
    *) echo "<testcase classname=\"suite\" name=\"$id\" time=\"0.010\"/>";;
  esac
done
echo "</testsuite>"
} > "$report"
exit $failed
"#;

const WORKFLOW: &str = "flaky";
const LONG: Duration = Duration::from_secs(60);

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
  parallel: {{count: 3}}
"#,
        dir = dir.display()
    )
}

/// 12 tests; 3 of them (one per shard of the contiguous 4/4/4 split) fail on their first run.
fn ids() -> Vec<String> {
    (0..12)
        .map(|i| {
            if i % 4 == 1 {
                format!("t{i:02}_flaky")
            } else {
                format!("t{i:02}_ok")
            }
        })
        .collect()
}

async fn sandbox() -> Sandbox {
    let work = tempfile::tempdir().unwrap().keep();
    std::fs::write(work.join("suite.sh"), SUITE_SH).unwrap();
    std::fs::write(work.join("ids.txt"), ids().join("\n") + "\n").unwrap();
    Sandbox::start(&[("flaky.yaml", &workflow(&work))]).await
}

/// The first run: 9 pass, the 3 flaky ones fail.
async fn failing_original(sb: &Sandbox) -> (String, ExecutionDetail) {
    let id = sb.run(WORKFLOW, &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(status_of(&d), ExecutionStatus::Failed, "{}", describe(&d));
    assert_eq!(d.shards.len(), 3, "{}", describe(&d));
    let e = d.execution.as_ref().unwrap();
    assert_eq!((e.passed, e.failed), (9, 3), "{}", describe(&d));
    (id, d)
}

/// The newest execution of the workflow (it must not be `not`), once it is terminal.
async fn newest(sb: &Sandbox, not: &str) -> ExecutionDetail {
    let list = sb.executions(WORKFLOW, 1).await;
    let id = list.first().expect("an execution").execution_id.clone();
    assert_ne!(id, not, "no new execution was started");
    sb.wait_for_terminal(&id, LONG).await
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rerun_failed_runs_exactly_the_failed_tests_and_links_the_original() {
    let sb = sandbox().await;
    let (original, first) = failing_original(&sb).await;
    let failed: Vec<String> = first
        .shards
        .iter()
        .flat_map(|s| &s.tests)
        .filter(|t| t.status == TestStatus::Failed as i32)
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(
        sorted(failed.clone()),
        ["t01_flaky", "t05_flaky", "t09_flaky"]
    );

    let out = sb
        .assay(&["rerun", &original, "--failed", "--timeout", "60s"])
        .await;
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains(&format!("rerun of {original} (3 tests: 3 failed)")),
        "{all}"
    );
    assert!(all.contains("PASSED 3 passed"), "{all}");

    let rerun = newest(&sb, &original).await;
    assert_eq!(
        status_of(&rerun),
        ExecutionStatus::Passed,
        "{}",
        describe(&rerun)
    );
    assert_eq!(rerun.rerun_of, original);
    assert_eq!(
        sorted(test_ids(&rerun)),
        sorted(failed),
        "exactly the failed ids"
    );
    let rerun_id = rerun.execution.as_ref().unwrap().execution_id.clone();

    // The link shows in `get execution`, as a table row and in JSON.
    let out = sb.assay(&["get", "execution", &rerun_id]).await;
    assert!(
        output_text(&out).contains(&format!("Rerun of   {original}")),
        "{}",
        output_text(&out)
    );
    let out = sb
        .assay(&["get", "execution", &rerun_id, "-o", "json"])
        .await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["rerun_of"], original.as_str());

    // Nothing failed in the rerun: nothing to rerun, exit 0, no new execution.
    let before = sb.execution_count(WORKFLOW).await;
    let out = sb.assay(&["rerun", &rerun_id, "--failed"]).await;
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains(&format!(
            "nothing to rerun: execution {rerun_id} had no failed or errored tests"
        )),
        "{all}"
    );
    // An unknown execution.
    let out = sb.assay(&["rerun", "01JZZZZZZZZZZZZZZZZZZZZZZZ"]).await;
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(
            "execution 01JZZZZZZZZZZZZZZZZZZZZZZZ not found (list them with `assay get executions`)"
        ),
        "{all}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sb.execution_count(WORKFLOW).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rerun_same_plan_replays_every_shard_with_the_same_tests() {
    let sb = sandbox().await;
    let (original, first) = failing_original(&sb).await;

    let out = sb
        .assay(&["rerun", &original, "--same-plan", "--timeout", "60s"])
        .await;
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains(&format!(
            "rerun of {original} (12 tests: 3 failed, 9 passed) on the original plan (3 shards)"
        )),
        "{all}"
    );

    let rerun = newest(&sb, &original).await;
    assert_eq!(
        status_of(&rerun),
        ExecutionStatus::Passed,
        "{}",
        describe(&rerun)
    );
    assert_eq!(rerun.rerun_of, original);
    assert_eq!(
        rerun.shards.len(),
        first.shards.len(),
        "{}",
        describe(&rerun)
    );
    let by_index = |d: &ExecutionDetail| {
        let mut shards: Vec<(u32, Vec<String>)> = d
            .shards
            .iter()
            .map(|s| {
                (
                    s.summary.as_ref().map(|x| x.index).unwrap_or_default(),
                    sorted(s.tests.iter().map(|t| t.id.clone()).collect()),
                )
            })
            .collect();
        shards.sort();
        shards
    };
    assert_eq!(
        by_index(&rerun),
        by_index(&first),
        "each shard ran the same ids"
    );
}
