//! The scheduler with `--catalog kubernetes`, against the fake API server and a real
//! nats-server: a workflow that exists only as a `TestWorkflow` object is planned, and its
//! status shows the execution's start and (from the aggregator's update) its end and
//! counts. The last test drives the fake with the real `kubectl` and runs the real
//! `assay-scheduler` binary.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use assay_bus::{Bus, NatsOptions, streams, subjects};
use assay_cluster::{CatalogSource, KubeSource, Scope};
use assay_proto::{Execution, ExecutionStatus, ExecutionUpdate, RunRequest};
use assay_testkit::NatsServer;
use assay_testkit::kube::FakeKube;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(30);

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let until = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn plan(bus: &Bus, id: &str) -> Execution {
    wait_for(&format!("the plan record of {id}"), async || {
        bus.last_message::<Execution>(streams::STATUS, &subjects::execution_plan(id))
            .await
            .unwrap()
    })
    .await
}

fn run_request(workflow: &str, id: &str) -> RunRequest {
    RunRequest {
        header: Some(assay_bus::header("test", format!("run/{id}"), None)),
        workflow: workflow.into(),
        requested_by: "test".into(),
        execution_id: id.into(),
        ..Default::default()
    }
}

/// The end of an execution, as the result aggregator publishes it.
fn ended(workflow: &str, id: &str, created_at_ms: i64) -> ExecutionUpdate {
    ExecutionUpdate {
        header: Some(assay_bus::header(
            "result-aggregator",
            format!("{id}/final"),
            None,
        )),
        execution_id: id.into(),
        workflow: workflow.into(),
        status: ExecutionStatus::Failed as i32,
        passed: 7,
        failed: 2,
        errored: 1,
        skipped: 3,
        created_at_ms,
        revision: 12,
        ..Default::default()
    }
}

fn status_of(fake: &FakeKube, ns: &str, name: &str) -> Value {
    fake.get("testworkflows.assay.dev", ns, name)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

async fn connect(server: &NatsServer) -> (Bus, NatsOptions) {
    let nats = NatsOptions {
        url: server.url(),
        ..NatsOptions::default()
    };
    let bus = Bus::connect(&nats, &CancellationToken::new())
        .await
        .unwrap();
    bus.ensure_topology().await.unwrap();
    (bus, nats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_that_exists_only_as_an_object_is_planned_and_its_status_written() {
    let fake = FakeKube::start().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(fake.client());
    for crd in assay_spec::crd::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let tw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        fake.client(),
        "ci",
        &assay_cluster::Kind::Workflow.api_resource(),
    );
    let obj = serde_json::from_value(json!({
        "apiVersion": "assay.dev/v1alpha1", "kind": "TestWorkflow",
        "metadata": {"name": "smoke", "namespace": "ci"},
        "spec": {"steps": [{"name": "hello", "run": "echo hello"}], "parallel": {"count": 2}},
    }))
    .unwrap();
    tw.create(&PostParams::default(), &obj).await.unwrap();

    let server = NatsServer::start();
    let (bus, nats) = connect(&server).await;
    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(assay_scheduler::run(
        assay_scheduler::Options {
            nats,
            // No such directory: with the cluster catalog it is not read.
            workflows: PathBuf::from("/nonexistent/assay"),
            catalog: CatalogSource::Kubernetes(KubeSource {
                scope: Some(Scope::Namespace("ci".into())),
                kubeconfig: Some(fake.kubeconfig_file().unwrap()),
            }),
            ..Default::default()
        },
        shutdown.clone(),
    ));

    let id = ulid::Ulid::new().to_string();
    bus.publish(
        subjects::RUN_REQUESTED.to_string(),
        &run_request("smoke", &id),
    )
    .await
    .unwrap();
    let planned = plan(&bus, &id).await;
    assert_eq!(planned.workflow, "smoke");
    assert_eq!(planned.shard_count, 2, "{planned:?}");
    assert!(planned.reason.is_empty(), "{planned:?}");
    // The start is in the object's status.
    let started = wait_for("the start in the status", async || {
        let s = status_of(&fake, "ci", "smoke");
        (s["lastExecutionId"] == id.as_str()).then_some(s)
    })
    .await;
    assert_eq!(started["lastExecutionStatus"], "queued", "{started}");

    // The end, as the aggregator says it.
    bus.publish(
        subjects::execution_update("smoke", &id),
        &ended("smoke", &id, planned.created_at_ms),
    )
    .await
    .unwrap();
    let done = wait_for("the end in the status", async || {
        let s = status_of(&fake, "ci", "smoke");
        (s["lastExecutionStatus"] == "failed").then_some(s)
    })
    .await;
    assert_eq!(done["lastExecutionId"], id.as_str());
    assert_eq!(
        done["counts"],
        json!({"passed": 7, "failed": 2, "errored": 1, "skipped": 3, "total": 13})
    );
    let conditions = done["conditions"].as_array().unwrap();
    let passed = conditions.iter().find(|c| c["type"] == "Passed").unwrap();
    assert_eq!(passed["status"], "False");
    assert_eq!(passed["reason"], "Failed");
    let valid = conditions.iter().find(|c| c["type"] == "Valid").unwrap();
    assert_eq!(valid["status"], "True");

    // A workflow not in the namespace is rejected with the catalog's words.
    let other = ulid::Ulid::new().to_string();
    bus.publish(
        subjects::RUN_REQUESTED.to_string(),
        &run_request("nope", &other),
    )
    .await
    .unwrap();
    let rejected = plan(&bus, &other).await;
    assert!(
        rejected
            .reason
            .contains("workflow \"nope\" not found in namespace ci"),
        "{rejected:?}"
    );
    shutdown.cancel();
    scheduler.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_catalog_stops_the_start_with_the_missing_permission() {
    let fake = FakeKube::start().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(fake.client());
    for crd in assay_spec::crd::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    fake.forbid("watch", "assay.dev", "testworkflows");
    fake.forbid("list", "assay.dev", "testworkflows");
    let server = NatsServer::start();
    let (_bus, nats) = connect(&server).await;
    let err = assay_scheduler::run(
        assay_scheduler::Options {
            nats,
            catalog: CatalogSource::Kubernetes(KubeSource {
                scope: Some(Scope::All),
                kubeconfig: Some(fake.kubeconfig_file().unwrap()),
            }),
            ..Default::default()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("forbidden: list testworkflows.assay.dev in all namespaces: the service account needs get/list/watch on it"),
        "{err}"
    );
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kubectl_available() -> bool {
    std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Kubectl {
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

impl Kubectl {
    async fn run(&self, args: &[&str]) -> String {
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--cache-dir={}", self.cache.path().display()))
            .args(args)
            .kill_on_drop(true);
        let out = tokio::time::timeout(PATIENCE, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish"))
            .expect("kubectl runs");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// The real binary, killed when dropped.
struct Scheduler(std::process::Child);

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const WORKFLOW_YAML: &str = "apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata:
  name: api-e2e
  namespace: ci
spec:
  steps:
    - name: test
      run: pytest
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_a_workflow_that_the_scheduler_binary_runs_and_shows_its_status() {
    if !kubectl_available() {
        eprintln!("SKIPPED: kubectl is not on PATH (apt-get install kubectl)");
        return;
    }
    let fake = FakeKube::start().await.unwrap();
    let kubeconfig = fake.kubeconfig_file().unwrap();
    let kubectl = Kubectl {
        kubeconfig: kubeconfig.clone(),
        cache: tempfile::tempdir().unwrap(),
    };
    // The CRD files of deploy/k8s/crds (its kustomization.yaml is for `-k`, not an object).
    let crds = repo_root().join(assay_spec::crd::CRD_DIR);
    let files: Vec<String> = [
        "testworkflows.assay.dev.yaml",
        "testtriggers.assay.dev.yaml",
    ]
    .iter()
    .map(|f| crds.join(f).display().to_string())
    .collect();
    let out = kubectl
        .run(&["apply", "--server-side", "-f", &files[0], "-f", &files[1]])
        .await;
    assert!(
        out.contains("testworkflows.assay.dev serverside-applied"),
        "{out}"
    );
    let file = kubectl.cache.path().join("api-e2e.yaml");
    std::fs::write(&file, WORKFLOW_YAML).unwrap();
    let out = kubectl.run(&["apply", "-f", file.to_str().unwrap()]).await;
    assert!(
        out.contains("testworkflow.assay.dev/api-e2e created"),
        "{out}"
    );

    let server = NatsServer::start();
    let (bus, _) = connect(&server).await;
    let _scheduler = Scheduler(
        std::process::Command::new(env!("CARGO_BIN_EXE_assay-scheduler"))
            .args(["--nats", &server.url(), "--catalog", "kubernetes"])
            .args(["--namespace", "ci", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["--workflows", "/nonexistent/assay"])
            .stdout(Stdio::null())
            .spawn()
            .expect("assay-scheduler starts"),
    );
    let id = ulid::Ulid::new().to_string();
    // Published until the binary's consumer exists (a request before it is kept anyway:
    // the stream holds it).
    bus.publish(
        subjects::RUN_REQUESTED.to_string(),
        &run_request("api-e2e", &id),
    )
    .await
    .unwrap();
    let planned = plan(&bus, &id).await;
    assert_eq!(planned.workflow, "api-e2e");
    bus.publish(
        subjects::execution_update("api-e2e", &id),
        &ended("api-e2e", &id, planned.created_at_ms),
    )
    .await
    .unwrap();
    let listed = wait_for("kubectl to show the execution's end", async || {
        let yaml = kubectl
            .run(&["get", "testworkflows", "-n", "ci", "-o", "yaml"])
            .await;
        let listed: Value = serde_norway::from_str(&yaml).unwrap();
        (listed["items"][0]["status"]["lastExecutionStatus"] == "failed").then_some(listed)
    })
    .await;
    let status = &listed["items"][0]["status"];
    assert_eq!(status["lastExecutionId"], id.as_str());
    assert_eq!(status["counts"]["passed"], 7);
    assert_eq!(status["counts"]["total"], 13);
    // The same fields as kubectl prints them in columns (the fake does not render the
    // CRD's printer columns server-side, so they are asked for by path).
    let table = kubectl
        .run(&[
            "get",
            "tw",
            "-n",
            "ci",
            "-o",
            "custom-columns=NAME:.metadata.name,LAST:.status.lastExecutionStatus,PASSED:.status.counts.passed,FAILED:.status.counts.failed",
        ])
        .await;
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row, ["api-e2e", "failed", "7", "2"], "{table}");
    let out = kubectl
        .run(&["delete", "-n", "ci", "testworkflow", "api-e2e"])
        .await;
    assert!(out.contains("deleted"), "{out}");
    // Gone from the catalog: a new run of it is rejected as unknown.
    let reason = wait_for("a run of the deleted workflow to be rejected", async || {
        let again = ulid::Ulid::new().to_string();
        bus.publish(
            subjects::RUN_REQUESTED.to_string(),
            &run_request("api-e2e", &again),
        )
        .await
        .unwrap();
        let p = plan(&bus, &again).await;
        (!p.reason.is_empty()).then_some(p.reason)
    })
    .await;
    assert!(
        reason.contains("workflow \"api-e2e\" not found in namespace ci"),
        "{reason}"
    );
}

#[test]
fn an_unknown_catalog_value_lists_the_accepted_ones() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_assay-scheduler"))
        .args(["--catalog", "etcd"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown catalog \"etcd\"")
            && stderr.contains("files")
            && stderr.contains("kubernetes"),
        "{stderr}"
    );
}
