//! `parallel.matrix` end to end: each combination runs as its own group of shards, with
//! `{{ matrix.KEY }}` templates and `ASSAY_MATRIX_*` in the environment, its test ids
//! suffixed with the combination, and `assay rerun --failed` running a failed test only in
//! the combination where it failed. Real nats-server, the services in-process, real
//! assay-runner processes and the built `assay` binary.

use std::path::Path;
use std::time::Duration;

use assay_integration::{Sandbox, describe, output_text, status_of, test_ids};
use assay_proto::{ExecutionStatus, TestStatus};

/// usage: suite.sh REPORT OS ID... — checks that the templated OS matches the environment,
/// and fails `t03` on mac the first time it runs there (a marker file per combination).
const SUITE_SH: &str = r#"#!/bin/sh
report=$1; os=$2; shift 2
if [ "$os" != "$ASSAY_MATRIX_OS" ] || [ "$ASSAY_MATRIX" != "db=pg,os=$os" ]; then
  echo "template says $os, environment says $ASSAY_MATRIX_OS ($ASSAY_MATRIX)" >&2
  exit 3
fi
mkdir -p markers
failed=0
{
echo '<?xml version="1.0" encoding="UTF-8"?>'
echo "<testsuite name=\"suite\" tests=\"$#\">"
for id in "$@"; do
  if [ "$id" = t03 ] && [ "$os" = mac ] && [ ! -e "markers/$WF-$os-$id" ]; then
    : > "markers/$WF-$os-$id"
    failed=1
    echo "<testcase classname=\"suite\" name=\"$id\" time=\"0.010\"><failure message=\"mac only\">boom</failure></testcase>"
  else
    echo "<testcase classname=\"suite\" name=\"$id\" time=\"0.010\"/>"
  fi
done
echo "</testsuite>"
} > "$report"
exit $failed
"#;

const LONG: Duration = Duration::from_secs(90);

fn workflow(dir: &Path, name: &str, strategy: &str) -> String {
    format!(
        r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: {name}}}
spec:
  workingDir: {dir}
  env: {{WF: {name}}}
  tests:
    list: cat ids.txt
    run: sh suite.sh {{report}} {{{{ matrix.os }}}} {{tests}}
    reports: ["{{report}}"]
  parallel:
    count: 2
    strategy: {strategy}
    matrix: {{os: [linux, mac], db: [pg]}}
"#,
        dir = dir.display()
    )
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

fn expected_ids() -> Vec<String> {
    sorted(
        ["linux", "mac"]
            .iter()
            .flat_map(|os| (0..8).map(move |i| format!("t{i:02} [db=pg,os={os}]")))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn matrix_runs_every_combination_in_its_own_shards_and_reruns_only_where_it_failed() {
    let work = tempfile::tempdir().unwrap().keep();
    std::fs::write(work.join("suite.sh"), SUITE_SH).unwrap();
    let ids: Vec<String> = (0..8).map(|i| format!("t{i:02}")).collect();
    std::fs::write(work.join("ids.txt"), ids.join("\n") + "\n").unwrap();
    let sb = Sandbox::start(&[
        ("mx-queue.yaml", &workflow(&work, "mx-queue", "queue")),
        ("mx-count.yaml", &workflow(&work, "mx-count", "count")),
    ])
    .await;

    for name in ["mx-queue", "mx-count"] {
        let id = sb.run(name, &[]).await;
        let d = sb.wait_for_terminal(&id, LONG).await;
        assert_eq!(status_of(&d), ExecutionStatus::Failed, "{}", describe(&d));
        assert_eq!(
            d.shards.len(),
            4,
            "2 combinations x 2 shards: {}",
            describe(&d)
        );
        assert_eq!(sorted(test_ids(&d)), expected_ids(), "{}", describe(&d));
        let failed: Vec<String> = d
            .shards
            .iter()
            .flat_map(|s| &s.tests)
            .filter(|t| t.status == TestStatus::Failed as i32)
            .map(|t| t.id.clone())
            .collect();
        assert_eq!(failed, ["t03 [db=pg,os=mac]"], "{}", describe(&d));
        let out = sb.assay(&["get", "execution", &id]).await;
        let table = output_text(&out);
        assert!(table.contains("SHARD  MATRIX"), "{table}");
        assert_eq!(table.matches("db=pg,os=mac ").count(), 2, "{table}");

        let out = sb
            .assay(&["rerun", &id, "--failed", "--timeout", "60s"])
            .await;
        let all = output_text(&out);
        assert_eq!(out.status.code(), Some(0), "{all}");
        let list = sb.executions(name, 1).await;
        let rerun_id = list[0].execution_id.clone();
        assert_ne!(rerun_id, id);
        let rerun = sb.wait_for_terminal(&rerun_id, LONG).await;
        assert_eq!(
            status_of(&rerun),
            ExecutionStatus::Passed,
            "{}",
            describe(&rerun)
        );
        assert_eq!(rerun.shards.len(), 1, "{}", describe(&rerun));
        assert_eq!(test_ids(&rerun), ["t03 [db=pg,os=mac]"]);
    }

    // History is kept per combination.
    let out = sb.assay(&["history", "mx-queue"]).await;
    let all = output_text(&out);
    assert!(all.contains("t03 [db=pg,os=mac]"), "{all}");
    assert!(all.contains("t03 [db=pg,os=linux]"), "{all}");
}

/// Each shard's test ids, in shard order.
fn per_shard(d: &assay_proto::ExecutionDetail) -> Vec<Vec<String>> {
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
    shards.into_iter().map(|(_, ids)| ids).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duration_with_history_shares_a_tail_per_combination_and_same_plan_replays_it() {
    let work = tempfile::tempdir().unwrap().keep();
    std::fs::write(work.join("suite.sh"), SUITE_SH).unwrap();
    let ids: Vec<String> = (0..10).map(|i| format!("t{i:02}")).collect();
    std::fs::write(work.join("ids.txt"), ids.join("\n") + "\n").unwrap();
    let sb = Sandbox::start(&[("mx-dur.yaml", &workflow(&work, "mx-dur", "duration"))]).await;
    let want: Vec<String> = sorted(
        ["linux", "mac"]
            .iter()
            .flat_map(|os| (0..10).map(move |i| format!("t{i:02} [db=pg,os={os}]")))
            .collect(),
    );

    // First run: no history, no tail (t03 fails on mac the first time).
    let first = sb.run("mx-dur", &[]).await;
    let d = sb.wait_for_terminal(&first, LONG).await;
    assert_eq!(sorted(test_ids(&d)), want, "{}", describe(&d));
    let text = sb.logs_text(&first, false, LONG).await;
    assert!(!text.contains("tail queue"), "{text}");
    let kv = sb.bus.kv(assay_bus::streams::KV_HISTORY).await.unwrap();
    for _ in 0..100 {
        if kv.get(assay_bus::kv_key("mx-dur")).await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Second run: per combination, 10 tests of 10 ms on 2 shards: the 2 shortest (a fifth of
    // the work) are that combination's tail, in its own queue.
    let second = sb.run("mx-dur", &[]).await;
    let d = sb.wait_for_terminal(&second, LONG).await;
    assert_eq!(status_of(&d), ExecutionStatus::Passed, "{}", describe(&d));
    assert_eq!(
        sorted(test_ids(&d)),
        want,
        "every test once: {}",
        describe(&d)
    );
    assert_eq!(d.execution.as_ref().unwrap().passed, 20, "{}", describe(&d));
    let text = sb.logs_text(&second, false, LONG).await;
    assert_eq!(
        text.matches("filled the shared tail queue: 2 tests in")
            .count(),
        2,
        "one tail per combination: {text}"
    );

    // --same-plan replays what each shard ran, tail tests included.
    let out = sb
        .assay(&["rerun", &second, "--same-plan", "--timeout", "60s"])
        .await;
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let list = sb.executions("mx-dur", 1).await;
    let rerun = sb.wait_for_terminal(&list[0].execution_id, LONG).await;
    assert_eq!(
        status_of(&rerun),
        ExecutionStatus::Passed,
        "{}",
        describe(&rerun)
    );
    let original: Vec<Vec<String>> = per_shard(&d)
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(per_shard(&rerun), original, "{}", describe(&rerun));
}
