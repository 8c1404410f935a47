//! The fake API server against the real `kubectl` (Debian's, v1.32): server-side apply of
//! a CRD, client-side apply of a custom resource, `get -o yaml`, `get pods -w`, `logs`
//! and `delete`. Skipped, with a message, when `kubectl` is not on PATH.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use assay_testkit::kube::{FakeKube, KubeletSim};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Upper bound for one kubectl call; reaching it is a failure.
const PATIENCE: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn kubectl_available() -> bool {
    std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// kubectl pointed at the fake, with its own discovery cache.
struct Kubectl {
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--cache-dir={}", self.cache.path().display()))
            .args(args)
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl to completion; fails the test with its stderr unless it succeeds.
    async fn run(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(PATIENCE, self.command(args).output())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drives_the_fake() {
    if !kubectl_available() {
        eprintln!(
            "SKIPPED kubectl_drives_the_fake: kubectl is not on PATH (apt-get install kubectl)"
        );
        return;
    }
    let fake = FakeKube::start().await.unwrap();
    let kubectl = Kubectl {
        kubeconfig: fake.kubeconfig_file().unwrap(),
        cache: tempfile::tempdir().unwrap(),
    };
    let crd = fixture("testworkflow-crd.yaml");
    let out = kubectl
        .run(&["apply", "--server-side", "-f", crd.to_str().unwrap()])
        .await;
    assert!(out.contains("serverside-applied"), "{out}");
    assert!(
        fake.get(
            "customresourcedefinitions.apiextensions.k8s.io",
            "",
            "testworkflows.assay.dev"
        )
        .is_some()
    );

    let wf = fixture("testworkflow.yaml");
    let out = kubectl.run(&["apply", "-f", wf.to_str().unwrap()]).await;
    assert!(
        out.contains("testworkflow.assay.dev/api-e2e created"),
        "{out}"
    );
    let yaml = kubectl.run(&["get", "testworkflows", "-o", "yaml"]).await;
    let listed: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(listed["items"][0]["metadata"]["name"], "api-e2e");
    assert_eq!(listed["items"][0]["spec"]["steps"][0]["run"], "cargo test");

    // A second client-side apply patches (a merge patch for a custom resource).
    let changed = kubectl.cache.path().join("changed.yaml");
    let text = std::fs::read_to_string(&wf)
        .unwrap()
        .replace("cargo test", "cargo nextest run");
    std::fs::write(&changed, text).unwrap();
    let out = kubectl
        .run(&["apply", "-f", changed.to_str().unwrap()])
        .await;
    assert!(
        out.contains("testworkflow.assay.dev/api-e2e configured"),
        "{out}"
    );
    let run = kubectl
        .run(&[
            "get",
            "tw",
            "api-e2e",
            "-o",
            "jsonpath={.spec.steps[0].run} {.metadata.generation}",
        ])
        .await;
    assert_eq!(run, "cargo nextest run 2");

    // `get pods -w` prints the pod a controller creates while it watches.
    let mut watch = kubectl
        .command(&["get", "pods", "-w", "--no-headers"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    // Once kubectl's watch is open, the pod it must show is created.
    tokio::time::timeout(PATIENCE, async {
        while fake.open_watches() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("kubectl get pods -w opens a watch");
    fake.put(
        "pods",
        json!({"metadata": {"name": "runner-0", "namespace": "default"},
               "spec": {"containers": [{"name": "main", "image": "busybox"}]},
               "status": {"phase": "Running"}}),
    )
    .unwrap();
    let seen = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("runner-0") {
                return line;
            }
        }
        panic!("kubectl get pods -w ended without showing runner-0");
    })
    .await
    .expect("kubectl get pods -w shows the new pod");
    assert!(seen.starts_with("runner-0"));
    watch.kill().await.unwrap();

    fake.append_log(
        "default",
        "runner-0",
        "main",
        "collected 3 items\n3 passed\n",
    );
    let logs = kubectl.run(&["logs", "runner-0"]).await;
    assert_eq!(logs, "collected 3 items\n3 passed\n");

    let out = kubectl.run(&["delete", "testworkflow", "api-e2e"]).await;
    assert!(out.contains("deleted"), "{out}");
    assert!(
        fake.get("testworkflows.assay.dev", "default", "api-e2e")
            .is_none()
    );
    kubectl.run(&["delete", "pod", "runner-0"]).await;
    let out = kubectl.run(&["get", "pods", "-o", "name"]).await;
    assert_eq!(out, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_with_the_kubelet_sim() {
    if !kubectl_available() {
        eprintln!(
            "SKIPPED kubectl_with_the_kubelet_sim: kubectl is not on PATH (apt-get install kubectl)"
        );
        return;
    }
    let fake = FakeKube::start().await.unwrap();
    let _kubelet = KubeletSim::start(&fake, "node-a");
    let kubectl = Kubectl {
        kubeconfig: fake.kubeconfig_file().unwrap(),
        cache: tempfile::tempdir().unwrap(),
    };
    let manifest = kubectl.cache.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: hello}\nspec:\n  containers:\n  \
         - {name: main, image: busybox, command: [sh, -c, 'echo hello from $WHO'], \
         env: [{name: WHO, value: kubectl}]}\n",
    )
    .unwrap();
    kubectl
        .run(&["apply", "-f", manifest.to_str().unwrap()])
        .await;
    kubectl
        .run(&[
            "wait",
            "--for=jsonpath={.status.phase}=Succeeded",
            "pod/hello",
            "--timeout=60s",
        ])
        .await;
    assert_eq!(
        kubectl.run(&["logs", "hello"]).await,
        "hello from kubectl\n"
    );
    let node = kubectl
        .run(&["get", "pod", "hello", "-o", "jsonpath={.spec.nodeName}"])
        .await;
    assert_eq!(node, "node-a");
}
