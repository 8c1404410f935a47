//! Operator (JWT) mode against a real nats-server: an operator, a system account and an
//! account with a signing key, the services on users minted with that key, and every runner
//! on credentials the launcher mints for its shard alone (`assay_bus::runner_jwt`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use assay_bus::runner_jwt::{Creds, Signer, encode_jwt, runner_permissions};
use assay_bus::{NatsAuth, subjects};
use assay_integration::{ALL, Sandbox, describe, output_text, status_of};
use assay_proto::{ExecutionStatus, ShardJob};
use assay_testkit::NatsServer;
use serde_json::json;

/// An operator-mode nats-server, a signer of its one account (JetStream enabled), and a
/// directory for credentials files.
struct Operator {
    server: NatsServer,
    signer: Arc<Signer>,
    dir: tempfile::TempDir,
}

fn operator() -> Operator {
    let op = nkeys::KeyPair::new_operator();
    let sys = nkeys::KeyPair::new_account();
    let account = nkeys::KeyPair::new_account();
    let signing = nkeys::KeyPair::new_account();
    let operator_jwt = encode_jwt(
        json!({
            "sub": op.public_key(),
            "name": "assay-test",
            "nats": {"system_account": sys.public_key(), "type": "operator", "version": 2},
        }),
        &op,
    )
    .unwrap();
    let unlimited = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    let sys_jwt = encode_jwt(
        json!({
            "sub": sys.public_key(),
            "name": "SYS",
            "nats": {"limits": unlimited, "type": "account", "version": 2},
        }),
        &op,
    )
    .unwrap();
    let mut limits = unlimited.clone();
    for k in ["mem_storage", "disk_storage", "streams", "consumer"] {
        limits[k] = json!(-1);
    }
    let account_jwt = encode_jwt(
        json!({
            "sub": account.public_key(),
            "name": "assay",
            "nats": {
                "signing_keys": [signing.public_key()],
                "limits": limits,
                "type": "account",
                "version": 2,
            },
        }),
        &op,
    )
    .unwrap();
    let config = format!(
        "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {sys}: {sys_jwt}\n  {acc}: {account_jwt}\n}}\n",
        sys = sys.public_key(),
        acc = account.public_key(),
    );
    Operator {
        server: NatsServer::start_with_config(&config),
        signer: Arc::new(Signer::new(&signing.seed().unwrap(), &account.public_key()).unwrap()),
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Operator {
    fn write(&self, name: &str, creds: &Creds) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.creds"));
        std::fs::write(&path, creds.file_text()).unwrap();
        path
    }

    /// A user with the account's full permissions (the services, the CLI).
    fn service_user(&self, name: &str) -> NatsAuth {
        let creds = self.signer.mint(name, None, None).unwrap();
        NatsAuth {
            creds_file: Some(self.write(name, &creds)),
            ..Default::default()
        }
    }
}

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

/// A whole execution per strategy, the runners on minted per-shard credentials: exact
/// counts, and no step sees any NATS setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executions_run_with_per_shard_minted_runner_credentials() {
    let op = operator();
    let auth: HashMap<String, NatsAuth> = [
        "trigger-watcher",
        "scheduler",
        "executor-launcher",
        "result-aggregator",
        "cli",
    ]
    .into_iter()
    .map(|u| (u.to_string(), op.service_user(u)))
    .collect();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("suite.sh"), SUITE_SH).unwrap();
    let workflow = |name: &str, strategy: &str| {
        format!(
            r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: {name}}}
spec:
  workingDir: {dir}
  setup:
    - name: no-nats-settings
      run: 'if env | grep -q ASSAY_NATS; then echo "a step sees NATS settings" >&2; exit 1; fi'
  tests:
    list: printf 't1\nt2\nt3\nt4\nt5\nt6\nt7\n'
    run: sh suite.sh {{report}} {{tests}}
    reports: ["{{report}}"]
  parallel: {{count: 3, strategy: {strategy}}}
"#,
            dir = work.path().display()
        )
    };
    let (queue, count) = (workflow("viaqueue", "queue"), workflow("viacount", "count"));
    let Operator {
        server,
        signer,
        dir: _creds,
    } = op;
    let mut sb = Sandbox::secured(
        server,
        auth,
        &[("viaqueue.yaml", &queue), ("viacount.yaml", &count)],
    )
    .await;
    sb.runner_signer = Some(signer);
    for s in ALL {
        sb.start_service(s);
    }
    // The second queue run reads the duration history the first one left.
    for (run, name) in ["viaqueue", "viacount", "viaqueue"].into_iter().enumerate() {
        let out = sb.assay(&["run", name, "--timeout", "60s"]).await;
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: one test fails: {text}");
        assert!(text.contains("6 passed"), "{name}: {text}");
        let id = sb.executions(name, 1).await[0].execution_id.clone();
        let d = sb.wait_for_terminal(&id, Duration::from_secs(60)).await;
        assert_eq!(status_of(&d), ExecutionStatus::Failed, "{}", describe(&d));
        assert_eq!(d.shards.len(), 3, "{}", describe(&d));
        let e = d.execution.clone().unwrap_or_default();
        assert_eq!((e.passed, e.failed), (6, 1), "{}", describe(&d));
        // No path fell back for want of a permission (claims, history).
        let logs = sb.logs_text(&id, false, Duration::from_secs(10)).await;
        for fallback in ["cannot claim", "no duration history", "unclaimed"] {
            assert!(!logs.contains(fallback), "{name}: {fallback}: {logs}");
        }
        if run == 0 {
            assert!(logs.contains("filled the work queue"), "{logs}");
        }
        if run == 2 {
            assert!(logs.contains("(7 with duration history)"), "{logs}");
        }
    }
}

/// Connects with `creds` the way a runner does (its inbox prefix), collecting the server's
/// errors (permission violations arrive asynchronously).
async fn connect_as(
    creds: &std::path::Path,
    url: &str,
    execution: &str,
    shard: u32,
) -> Result<
    (
        async_nats::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ),
    async_nats::ConnectError,
> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .credentials_file(creds)
        .await
        .expect("a credentials file")
        .custom_inbox_prefix(subjects::runner_inbox(execution, shard))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await?;
    Ok((client, rx))
}

/// Waits for the server's permissions violation naming `subject`.
async fn violation(errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>, subject: &str) {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = errors.recv().await {
            if e.to_lowercase().contains("permissions violation") && e.contains(subject) {
                return e;
            }
        }
        String::new()
    })
    .await;
    assert!(
        matches!(&found, Ok(e) if !e.is_empty()),
        "no permissions violation for {subject}: {found:?}"
    );
}

/// One shard's credentials publish its own results (acked by the stream) and are refused
/// another shard's and another execution's subjects; credentials past their `exp` cannot
/// connect at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runners_credentials_reach_only_its_shard_and_expire() {
    let op = operator();
    let url = op.server.url();
    let admin = assay_bus::Bus::connect(
        &assay_bus::NatsOptions {
            url: url.clone(),
            auth: op.service_user("admin"),
            ..Default::default()
        },
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    admin.ensure_topology().await.unwrap();

    let job = ShardJob {
        execution_id: "01EXECA".into(),
        shard_index: 1,
        attempt: 1,
        workflow: "w".into(),
        deadline_ms: assay_bus::now_ms() + 600_000,
        ..Default::default()
    };
    let creds = op.write(
        "shard",
        &op.signer.mint_runner(&job, assay_bus::now_ms()).unwrap(),
    );
    let (client, mut errors) = connect_as(&creds, &url, "01EXECA", 1).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    // The control: its own results subject is published and stored.
    js.publish(subjects::results("01EXECA", 1), "own".into())
        .await
        .expect("publish own results")
        .await
        .expect("the stream acks its own results");
    for other in [
        subjects::results("01EXECA", 0),
        subjects::shard_status("01EXECA", 2),
        subjects::results("01EXECB", 1),
        subjects::logs("01EXECB", 1),
        subjects::shard_job("01EXECA", 1),
    ] {
        client.publish(other.clone(), "x".into()).await.unwrap();
        client.flush().await.unwrap();
        violation(&mut errors, &other).await;
    }
    // Nothing else's replies either: another shard's inbox is refused.
    let other_inbox = format!("{}.x", subjects::runner_inbox("01EXECA", 0));
    let _sub = client.subscribe(other_inbox.clone()).await.unwrap();
    client.flush().await.unwrap();
    violation(&mut errors, &other_inbox).await;
    assert!(
        !runner_permissions(&job)
            .publish
            .contains(&subjects::results("01EXECA", 0)),
        "the permissions name only its shard"
    );

    // Expiry: works before `exp`, refused after it.
    let exp_ms = assay_bus::now_ms() + 2_000;
    let short = op
        .signer
        .mint(
            "runner-short",
            Some(&runner_permissions(&job)),
            Some(exp_ms),
        )
        .unwrap();
    let short = op.write("short", &short);
    let (early, _) = connect_as(&short, &url, "01EXECA", 1)
        .await
        .expect("valid before exp");
    drop(early);
    // `exp` is in whole seconds, rounded up, and the server refuses only once the clock's
    // second is past it.
    let wait = ((exp_ms + 999) / 1000 + 1) * 1000 + 200 - assay_bus::now_ms();
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
    match connect_as(&short, &url, "01EXECA", 1).await {
        Ok(_) => panic!("expired credentials connected"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation
                    | async_nats::ConnectErrorKind::Authentication
            ),
            "{e:?}"
        ),
    }
}
