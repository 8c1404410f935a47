//! Sensitive parameters never show: their values are masked as `***` in every log chunk
//! (even when a program prints one in two pieces, across a flush) and in test results, and
//! the execution's record shows `***` for them. Real nats-server, services in-process, real
//! assay-runner processes.

use std::time::Duration;

use assay_integration::{Sandbox, describe, status_of};
use assay_proto::{ExecutionStatus, TestStatus};

const SECRET: &str = "s3cr3t-value-42";
const LONG: Duration = Duration::from_secs(60);

/// usage: suite.sh REPORT ID... — fails every test with the token in its message.
const SUITE_SH: &str = r#"#!/bin/sh
report=$1; shift
{
echo '<?xml version="1.0" encoding="UTF-8"?>'
echo "<testsuite name=\"suite\" tests=\"$#\">"
for id in "$@"; do
  echo "<testcase classname=\"suite\" name=\"$id\" time=\"0.010\"><failure message=\"login with $TOKEN refused\">token was $TOKEN</failure><system-out>using $TOKEN</system-out></testcase>"
done
echo "</testsuite>"
} > "$report"
exit 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sensitive_values_are_masked_in_logs_results_and_the_record() {
    let work = tempfile::tempdir().unwrap().keep();
    std::fs::write(work.join("suite.sh"), SUITE_SH).unwrap();
    let yaml = format!(
        r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: secretive}}
spec:
  workingDir: {dir}
  config:
    token: {{type: string, default: "{SECRET}", sensitive: true}}
    user: {{type: string, default: "alice"}}
  env: {{TOKEN: "{{{{ config.token }}}}"}}
  steps:
    - name: show
      run: |
        echo "command line has {{{{ config.token }}}} for {{{{ config.user }}}}"
        printf 's3cr3t-'; sleep 0.5; printf 'value-42 split in two writes\n'
        echo "stderr has $TOKEN" >&2
  tests:
    list: printf 't1\nt2\n'
    run: sh suite.sh {{report}} {{tests}}
    reports: ["{{report}}"]
"#,
        dir = work.display()
    );
    let sb = Sandbox::start(&[("secretive.yaml", &yaml)]).await;
    let id = sb.run("secretive", &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(status_of(&d), ExecutionStatus::Failed, "{}", describe(&d));

    // Results: failure messages and output masked.
    let tests: Vec<_> = d.shards.iter().flat_map(|s| &s.tests).collect();
    assert_eq!(tests.len(), 2, "{}", describe(&d));
    for t in &tests {
        assert_eq!(t.status, TestStatus::Failed as i32);
        assert_eq!(t.failure_message, "login with *** refused", "{t:?}");
        assert!(!t.output.contains(SECRET), "{t:?}");
        assert!(t.output.contains("token was ***"), "{t:?}");
    }
    // The record: the sensitive value masked, the other kept.
    assert_eq!(d.config.get("token").map(String::as_str), Some("***"));
    assert_eq!(d.config.get("user").map(String::as_str), Some("alice"));

    // Logs: every chunk, stdout and stderr.
    let text = sb.logs_text(&id, true, LONG).await;
    assert!(!text.contains(SECRET), "{text}");
    assert!(
        !text.contains("s3cr3t-"),
        "the split value leaked its start: {text}"
    );
    assert!(text.contains("command line has *** for alice"), "{text}");
    assert!(text.contains("*** split in two writes"), "{text}");
    assert!(text.contains("stderr has ***"), "{text}");

    // And through the CLI.
    let out = sb.assay(&["logs", &id]).await;
    let all = assay_integration::output_text(&out);
    assert!(!all.contains(SECRET), "{all}");
}
