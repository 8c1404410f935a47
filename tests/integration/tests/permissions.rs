//! The per-service NATS permissions of `deploy/nats/permissions.conf`, used as written (with
//! fresh passwords): every service, the runners (as the launcher's user) and the CLI do a
//! whole queue-mode execution with only their own permissions, and a user cannot publish
//! what another service produces.

use std::collections::HashMap;
use std::time::Duration;

use assay_bus::{Bus, NatsAuth, NatsOptions};
use assay_integration::{ALL, Sandbox, describe, output_text, status_of};
use assay_proto::ExecutionStatus;
use assay_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

const USERS: [&str; 5] = [
    "trigger-watcher",
    "scheduler",
    "executor-launcher",
    "result-aggregator",
    "cli",
];

/// usage: suite.sh REPORT ID... — `t3` fails, the others pass.
const SUITE_SH: &str = r#"#!/bin/sh
report=$1; shift
failed=0
{
echo "<testsuite name=\"s\" tests=\"$#\">"
for id in "$@"; do
  if [ "$id" = t3 ]; then failed=1; echo "<testcase classname=\"s\" name=\"$id\"><failure message=\"no\">x</failure></testcase>"
  else echo "<testcase classname=\"s\" name=\"$id\" time=\"0.01\"/>"; fi
done
echo "</testsuite>"
} > "$report"
exit $failed
"#;

fn secured_server() -> (NatsServer, HashMap<String, NatsAuth>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/nats/permissions.conf"
    );
    let mut conf = std::fs::read_to_string(path).expect("deploy/nats/permissions.conf");
    let mut auth = HashMap::new();
    for user in USERS {
        let password = format!("pw-{}", ulid::Ulid::new());
        let placeholder = format!("CHANGE-ME-{user}");
        assert!(conf.contains(&placeholder), "{user} is in the example");
        conf = conf.replace(&placeholder, &password);
        auth.insert(
            user.to_string(),
            NatsAuth {
                user: Some(user.to_string()),
                password: Some(password),
                ..Default::default()
            },
        );
    }
    (NatsServer::start_with_config(&conf), auth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_works_with_only_its_own_permissions() {
    let (nats, auth) = secured_server();
    let work = tempfile::tempdir().unwrap().keep();
    std::fs::write(work.join("suite.sh"), SUITE_SH).unwrap();
    let yaml = format!(
        r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: locked}}
spec:
  workingDir: {dir}
  tests:
    list: printf 't1\nt2\nt3\nt4\nt5\nt6\n'
    run: sh suite.sh {{report}} {{tests}}
    reports: ["{{report}}"]
  parallel: {{count: 2, strategy: queue}}
  concurrency: {{policy: queue}}
"#,
        dir = work.display()
    );
    let mut sb = Sandbox::secured(nats, auth.clone(), &[("locked.yaml", &yaml)]).await;
    for s in ALL {
        sb.start_service(s);
    }

    // The CLI starts it and follows it to the end.
    let out = sb.assay(&["run", "locked", "--timeout", "60s"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "one test fails: {text}");
    assert!(text.contains("5 passed"), "{text}");
    let id = sb.executions("locked", 1).await[0].execution_id.clone();
    let d = sb.wait_for_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(status_of(&d), ExecutionStatus::Failed, "{}", describe(&d));
    assert_eq!(d.shards.len(), 2);
    // The aggregator wrote the history; the CLI reads it.
    let out = sb.assay(&["history", "locked"]).await;
    assert!(output_text(&out).contains("t3"), "{}", output_text(&out));

    // The owner may publish there (the control), another user may not.
    let scheduler = NatsOptions {
        url: sb.nats.url(),
        auth: auth["scheduler"].clone(),
        ..Default::default()
    };
    let owner = Bus::connect(&scheduler, &CancellationToken::new())
        .await
        .unwrap();
    owner
        .publish_raw("assay.v1.shards.X.0".into(), Default::default(), "x".into())
        .await
        .expect("the scheduler publishes shard jobs");
    for (user, subject) in [
        ("trigger-watcher", "assay.v1.shards.X.0"),
        ("cli", "assay.v1.results.X.0"),
        ("executor-launcher", "assay.v1.plans.X"),
    ] {
        let opts = NatsOptions {
            url: sb.nats.url(),
            auth: auth[user].clone(),
            ..Default::default()
        };
        let bus = Bus::connect(&opts, &CancellationToken::new())
            .await
            .unwrap();
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            bus.publish_raw(subject.to_string(), Default::default(), "x".into()),
        )
        .await;
        assert!(
            !matches!(sent, Ok(Ok(()))),
            "{user} must not publish to {subject}"
        );
    }
}
