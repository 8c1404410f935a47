//! Capacity is not silent: with one runner and a two-shard workflow, the shard that cannot
//! start is shown `waiting for capacity` (by the API and `assay get execution`), then runs
//! when the runner frees. Real nats-server, the services in-process, real assay-runner
//! processes and the built `assay` binary.

use std::time::Duration;

use assay_integration::{ALL, Sandbox, describe, output_text, status_of};
use assay_proto::{ExecutionStatus, ShardState};

/// usage: suite.sh REPORT ID... — waits while `hold` exists, then passes its tests.
const SUITE_SH: &str = r#"#!/bin/sh
report=$1; shift
while [ -e hold ]; do sleep 0.1; done
{
echo '<?xml version="1.0" encoding="UTF-8"?>'
echo "<testsuite name=\"suite\" tests=\"$#\">"
for id in "$@"; do echo "<testcase classname=\"suite\" name=\"$id\" time=\"0.010\"/>"; done
echo "</testsuite>"
} > "$report"
"#;

const LONG: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_runner_the_second_shard_is_shown_waiting_for_capacity_then_runs() {
    let mut sb = Sandbox::empty(&[]).await;
    let dir = sb.path("work");
    sb.write("work/suite.sh", SUITE_SH);
    sb.write("work/ids.txt", "t0\nt1\n");
    sb.write("work/hold", "");
    sb.write(
        ".assay/wide.yaml",
        &format!(
            r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: wide}}
spec:
  workingDir: {dir}
  tests:
    list: cat ids.txt
    run: sh suite.sh {{report}} {{tests}}
    reports: ["{{report}}"]
  parallel: {{strategy: count, count: 2}}
"#,
            dir = dir.display()
        ),
    );
    sb.capacity = 1;
    for s in ALL {
        sb.start_service(s);
    }
    let id = sb.run("wide", &[]).await;

    let d = sb
        .wait_for(&id, LONG, "a shard waiting for capacity", |d| {
            d.shards.iter().any(|s| {
                s.summary.as_ref().map(|s| s.state()) == Some(ShardState::WaitingForCapacity)
            })
        })
        .await;
    let waiting = d
        .shards
        .iter()
        .filter_map(|s| s.summary.as_ref())
        .find(|s| s.state() == ShardState::WaitingForCapacity)
        .unwrap();
    assert_eq!(waiting.reason, "1 of 1 runner busy", "{}", describe(&d));
    assert_eq!(status_of(&d), ExecutionStatus::Running, "{}", describe(&d));

    let out = sb.assay(&["get", "execution", &id]).await;
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("waiting for capacity"), "{text}");
    assert!(text.contains("1 of 1 runner busy"), "{text}");

    std::fs::remove_file(dir.join("hold")).unwrap();
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(status_of(&d), ExecutionStatus::Passed, "{}", describe(&d));
    assert_eq!(d.shards.len(), 2);
}
