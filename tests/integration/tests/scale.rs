//! Size is not a cliff: plans too large for a job message travel apart from it.

use std::time::Duration;

use assay_integration::{Sandbox, describe, status_of, test_ids};
use assay_proto::{ExecutionStatus, RunRequest};

/// Writes a JUnit report with one passing case per id given.
const SUITE_SH: &str = r#"#!/bin/sh
report=$1; shift
{
echo '<testsuite name="s">'
for id in "$@"; do
  printf '<testcase classname="s" name="%s" time="0.001"/>\n' "$id"
done
echo '</testsuite>'
} > "$report"
"#;

/// 4,000 ids of ~95 characters in one shard: the job would carry ~380 KB of ids, over the
/// launcher's 256 KiB message check (such jobs were dead-lettered and the execution stayed
/// queued). The plan goes to the object store instead; every test runs once. The request
/// itself (as `assay rerun` of 4,000 failures would send) is handled up to the stream's
/// 1 MiB limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_selection_too_large_for_a_job_message_runs_every_test_once() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("suite.sh"), SUITE_SH).unwrap();
    let workflow = format!(
        "apiVersion: assay.dev/v1alpha1\nkind: TestWorkflow\nmetadata: {{name: big}}\nspec:\n  workingDir: {}\n  tests:\n    run: sh suite.sh {{report}} {{tests}}\n    reports: [\"{{report}}\"]\n  parallel: {{count: 1, strategy: count}}\n",
        work.path().display()
    );
    let sb = Sandbox::start(&[("big.yaml", &workflow)]).await;
    let ids: Vec<String> = (0..4000)
        .map(|i| {
            format!("tests/unit/module_{:03}/test_case.py::TestCase::test_value[params-{i:05}-xxxxxxxxxxxx]", i % 97)
        })
        .collect();
    let id = ulid::Ulid::new().to_string();
    sb.publish_request(&RunRequest {
        header: Some(assay_bus::header("test", format!("run/{id}"), None)),
        workflow: "big".into(),
        requested_by: "test".into(),
        execution_id: id.clone(),
        test_ids: ids.clone(),
        ..Default::default()
    })
    .await;
    let d = sb.wait_for_terminal(&id, Duration::from_secs(120)).await;
    assert_eq!(status_of(&d), ExecutionStatus::Passed, "{}", describe(&d));
    let mut ran = test_ids(&d);
    ran.sort();
    let mut want = ids;
    want.sort();
    assert_eq!(ran.len(), want.len());
    assert!(ran == want, "the tests run differ from the selection");
    assert_eq!(d.shards.len(), 1);
}
