//! The public contract as a client in another language meets it: the Python client in
//! `examples/clients/python` (nats-py + modules generated from proto/) runs its scenario
//! against a live sandbox: a run request and a trigger event followed to the end with
//! counts compared between the bus and the API, a reused execution id, messages without a
//! header, an execution id that is not a ULID and one in lower case, an empty and a dotted
//! workflow name. Needs `make tools` (the client's packages
//! in ./.tools) and `cargo build --bins` (the runner), as `make test` does.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use assay_integration::Sandbox;

const SUITE_SH: &str = r#"#!/bin/sh
# usage: suite.sh REPORT ID...  — writes a JUnit report; ids containing fail or skip fail
# or are skipped, the others pass.
report=$1; shift
{
echo '<?xml version="1.0" encoding="UTF-8"?>'
echo "<testsuite name=\"pyclient\" tests=\"$#\">"
for id in "$@"; do
  case $id in
    *fail*) echo "<testcase classname=\"pyclient\" name=\"$id\" time=\"0.010\"><failure message=\"expected 1, got 2\">assert 1 == 2</failure></testcase>";;
    *skip*) echo "<testcase classname=\"pyclient\" name=\"$id\" time=\"0\"><skipped/></testcase>";;
    *) echo "<testcase classname=\"pyclient\" name=\"$id\" time=\"0.020\"/>";;
  esac
done
echo "</testsuite>"
} > "$report"
case "$*" in *fail*) exit 1;; esac
exit 0
"#;

const IDS: &[&str] = &[
    "a_ok", "b_ok", "c_fail", "d_skip", "e_ok", "f_ok", "g_fail", "h_skip", "i_ok",
];

fn workflow(name: &str, dir: &Path, count: u32) -> String {
    format!(
        r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: {name}}}
spec:
  workingDir: {dir}
  tests:
    list: cat ids.txt
    run: sh suite.sh {{report}} {{tests}}
    reports: ["{{report}}"]
  parallel: {{count: {count}}}
  timeout: 2m
"#,
        dir = dir.display()
    )
}

const TRIGGER: &str = r#"apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: pyclient-on-push}
spec:
  on:
    event: {source: pyclient, type: push}
  run: {workflow: pyclient}
"#;

/// Time for one check of the scenario.
const CHECK_LIMIT: Duration = Duration::from_secs(60);
/// Time for the whole scenario: eight checks of at most [`CHECK_LIMIT`] each, and a margin.
const SCENARIO_LIMIT: Duration = Duration::from_secs(10 * 60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root above tests/integration")
}

/// `./.tools/bin/python` with the client's packages, or a panic saying to run `make tools`.
fn client_python(root: &Path) -> PathBuf {
    let python = root.join(".tools/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `make tools` (it installs the Python client's packages into ./.tools)",
        python.display()
    );
    let check = std::process::Command::new(&python)
        .args([
            "-c",
            "import nats, grpc, grpc_tools, google.protobuf, pytest",
        ])
        .output()
        .expect("run ./.tools/bin/python");
    assert!(
        check.status.success(),
        "./.tools/bin/python lacks the Python client's packages (nats-py, grpcio, grpcio-tools, \
         protobuf, pytest): run `make tools`\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    python
}

/// Runs generate.sh, which builds the modules when they are missing or older than a .proto
/// file (under a lock, so the tests of this binary can call it at once).
fn ensure_generated(client: &Path, python: &Path) {
    let out = std::process::Command::new(client.join("generate.sh"))
        .env("PYTHON", python)
        .stdin(Stdio::null())
        .output()
        .expect("run examples/clients/python/generate.sh");
    assert!(
        out.status.success(),
        "generate.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The client's pure parts (subject tokens equal to assay-bus's, ULIDs, headers, results
/// delivered twice or replaced by a retry), with pytest from ./.tools.
#[test]
fn python_client_unit_tests_pass() {
    let root = repo_root();
    let client = root.join("examples/clients/python");
    let python = client_python(&root);
    ensure_generated(&client, &python);
    let out = std::process::Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_assay_client.py",
        ])
        .current_dir(&client)
        .stdin(Stdio::null())
        .output()
        .expect("run pytest from ./.tools (`make tools` installs it)");
    assert!(
        out.status.success(),
        "the Python client's unit tests failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_client_scenario_passes_against_a_live_stack() {
    let root = repo_root();
    let client = root.join("examples/clients/python");
    let python = client_python(&root);
    ensure_generated(&client, &python);

    let work = tempfile::tempdir().expect("temp dir");
    std::fs::write(work.path().join("suite.sh"), SUITE_SH).expect("write suite.sh");
    std::fs::write(work.path().join("ids.txt"), IDS.join("\n") + "\n").expect("write ids.txt");
    let main = workflow("pyclient", work.path(), 2);
    let other = workflow("pyclient-other", work.path(), 1);
    let sb = Sandbox::start(&[
        ("pyclient.yaml", &main),
        ("pyclient-other.yaml", &other),
        ("trigger.yaml", TRIGGER),
    ])
    .await;
    // The result API answers before the scenario asks it anything.
    drop(sb.client().await);

    let grpc = sb.grpc.to_string();
    let nats = sb.nats.url();
    let run = tokio::process::Command::new(&python)
        .arg("-u")
        .arg(client.join("scenario.py"))
        .args(["--nats", &nats, "--grpc", &grpc])
        .args([
            "--workflow",
            "pyclient",
            "--other-workflow",
            "pyclient-other",
        ])
        .args(["--event-source", "pyclient", "--event-type", "push"])
        .args(["--timeout", &CHECK_LIMIT.as_secs().to_string()])
        .current_dir(&client)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SCENARIO_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("scenario.py did not end within {SCENARIO_LIMIT:?}"))
        .expect("run scenario.py");
    let text = format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scenario.py failed ({}):\n{text}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for check in [
        "run-request",
        "trigger-event",
        "reused-execution-id",
        "headerless-request",
        "non-ulid-execution-id",
        "lowercase-execution-id",
        "empty-workflow",
        "dotted-workflow",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("ok {check} "))),
            "no `ok {check}` line:\n{text}"
        );
    }
}
