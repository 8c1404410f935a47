//! The kubernetes backend on the fake API server (`FakeKube`, real HTTP, the real kube
//! client), with `KubeletSim` running each Pod's containers as local processes: the init
//! container really copies the real `assay-runner` into the Pod's emptyDir, and the main
//! container really runs it, reporting over a real nats-server. Build the runner first
//! (`cargo build -p assay-runner`, which `make test` does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assay_bus::{Bus, NatsOptions, streams, subjects};
use assay_executor_launcher::{Backend, KubeBackend, KubeOptions, Options, RunnerNats};
use assay_proto::{
    GitCheckout, ShardJob, ShardState, ShardStatus, TestCaseBatch, TestsSpec, Workload,
};
use assay_testkit::NatsServer;
use assay_testkit::kube::{FakeKube, Fault, KubeletSim};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use prost::Message;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const NODE: &str = "node-a";

/// The suite of the git repository: every test fails when the git credentials reach the
/// test code, by the variable or by the password in any variable.
const GIT_SUITE_SH: &str = r#"#!/bin/sh
report=$1; shift
leak=
if [ -n "${ASSAY_GIT_CREDENTIALS_DIR+set}" ] || env | grep -q s3cret-token; then leak=1; fi
{
echo '<?xml version="1.0" encoding="UTF-8"?>'
echo "<testsuite name=\"suite\" tests=\"$#\">"
for id in "$@"; do
  if [ -n "$leak" ]; then
    echo "<testcase classname=\"suite\" name=\"$id\"><failure message=\"credentials leaked\">x</failure></testcase>"
  else
    echo "<testcase classname=\"suite\" name=\"$id\"/>"
  fi
done
echo "</testsuite>"
} > "$report"
[ -z "$leak" ]
"#;

/// A bare repository holding `suite.sh` ([`GIT_SUITE_SH`]) on branch main; its `file://` url.
fn bare_repo(dir: &Path) -> String {
    use assay_testkit::suite::git;
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    std::fs::write(work.join("suite.sh"), GIT_SUITE_SH).unwrap();
    git(&work, &["add", "suite.sh"]);
    git(&work, &["commit", "-q", "-m", "suite"]);
    git(dir, &["clone", "-q", "--bare", "work", "repo.git"]);
    format!("file://{}", dir.join("repo.git").display())
}

fn runner() -> PathBuf {
    assay_executor_launcher::find_runner(None)
        .unwrap_or_else(|e| panic!("{e} (cargo build -p assay-runner)"))
}

struct World {
    _nats: NatsServer,
    fake: FakeKube,
    kubelet: KubeletSim,
    bus: Bus,
    nats: NatsOptions,
    dir: tempfile::TempDir,
    /// Every Pod the API ever showed, by name, as last seen.
    seen: Arc<Mutex<BTreeMap<String, Pod>>>,
    recorder: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
}

impl Drop for World {
    fn drop(&mut self) {
        self.recorder.abort();
    }
}

impl World {
    async fn start() -> World {
        let server = NatsServer::start();
        let nats = NatsOptions {
            url: server.url(),
            ..NatsOptions::default()
        };
        let shutdown = CancellationToken::new();
        let bus = Bus::connect(&nats, &shutdown).await.unwrap();
        bus.ensure_topology().await.unwrap();
        let fake = FakeKube::start().await.unwrap();
        let kubelet = KubeletSim::start(&fake, NODE);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("suite.sh"),
            assay_testkit::suite::JUNIT_SUITE_SH,
        )
        .unwrap();
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let pods: kube::Api<Pod> = kube::Api::namespaced(fake.client(), "tests");
        let record = seen.clone();
        let recorder = tokio::spawn(async move {
            // With a backoff: once the fake is dropped at the end of a test, a watcher
            // without one retries in a loop that never yields, and the runtime's shutdown
            // waits for it forever.
            let mut events = watcher::watcher(pods, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(e) = events.next().await {
                if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = e {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    record.lock().unwrap().insert(name, p);
                }
            }
        });
        World {
            _nats: server,
            fake,
            kubelet,
            bus,
            nats,
            dir,
            seen,
            recorder,
            shutdown,
        }
    }

    fn kube_options(&self, infra_retries: u32) -> KubeOptions {
        KubeOptions {
            namespace: "tests".into(),
            runner_image: "assay-runner:test".into(),
            runner_path: runner().display().to_string(),
            infra_retries,
            ..Default::default()
        }
    }

    fn launcher(
        &self,
        infra_retries: u32,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<assay_executor_launcher::Result<()>> {
        self.launcher_signing(infra_retries, None, shutdown)
    }

    /// A launcher that, given `signer`, mints each attempt's runner its own NATS user.
    fn launcher_signing(
        &self,
        infra_retries: u32,
        signer: Option<Arc<assay_bus::runner_jwt::Signer>>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<assay_executor_launcher::Result<()>> {
        let options = Options {
            runner_signer: signer,
            nats: self.nats.clone(),
            backend: assay_executor_launcher::BackendKind::Kubernetes,
            capacity: 2,
            ack_wait: Duration::from_secs(5),
            kube: self.kube_options(infra_retries),
            kubeconfig: Some(self.fake.kubeconfig_file().unwrap()),
            reap_every: Duration::from_millis(200),
            ..Default::default()
        };
        tokio::spawn(assay_executor_launcher::run(options, shutdown))
    }

    fn job(&self, id: &str, tests: &[&str], gate: Option<&Path>) -> ShardJob {
        let container = json!({"image": "python:3.12-slim",
            "env": gate.map(|g| json!({"GATE": g.display().to_string()})).unwrap_or(json!({}))});
        let mut env = std::collections::HashMap::new();
        if let Some(g) = gate {
            env.insert("GATE".to_string(), g.display().to_string());
        }
        ShardJob {
            header: Some(assay_bus::header("test", format!("{id}/0/1"), None)),
            execution_id: id.into(),
            workflow: "pods".into(),
            shard_index: 0,
            shard_count: 1,
            attempt: 1,
            working_dir: self.dir.path().display().to_string(),
            tests: Some(TestsSpec {
                list: String::new(),
                run: "sh suite.sh {report} {tests}".into(),
                reports: vec!["{report}".into()],
            }),
            test_ids: tests.iter().map(|t| t.to_string()).collect(),
            env,
            timeout_ms: 120_000,
            workload: Some(Workload {
                image: "python:3.12-slim".into(),
                container_json: container.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A job checking `suite.sh` out of `url` with the credentials of Secret `secret`.
    fn git_job(&self, id: &str, tests: &[&str], url: &str, secret: &str) -> ShardJob {
        let mut job = self.job(id, tests, None);
        job.working_dir = String::new();
        job.git = Some(GitCheckout {
            url: url.into(),
            secret_name: secret.into(),
            revision_source: "default".into(),
            ..Default::default()
        });
        job
    }

    /// Puts Secret `tests/name` holding `data` into the fake.
    fn secret(&self, name: &str, data: &[(&str, &str)]) {
        use base64::Engine as _;
        let encoded: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| {
                let v = base64::engine::general_purpose::STANDARD.encode(v);
                (k.to_string(), json!(v))
            })
            .collect();
        self.fake
            .put(
                "secrets",
                json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name, "namespace": "tests"}, "data": encoded}),
            )
            .unwrap();
    }

    async fn publish(&self, job: &ShardJob) {
        self.bus
            .publish_raw(
                subjects::shard_job(&job.execution_id, job.shard_index),
                Default::default(),
                job.encode_to_vec().into(),
            )
            .await
            .unwrap();
    }

    /// The shard's final statuses, one per attempt, once the one of `attempt` is there.
    async fn finals(&self, id: &str, attempt: u32) -> Vec<ShardStatus> {
        let subject = subjects::shard_status(id, 0);
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let all: Vec<ShardStatus> = self.all(streams::STATUS, &subject).await;
            let finals: Vec<ShardStatus> = all
                .into_iter()
                .filter(|s| s.state().is_terminal())
                .collect();
            if finals.iter().any(|s| s.attempt == attempt) {
                return finals;
            }
            assert!(
                Instant::now() < until,
                "no final status of attempt {attempt}: {finals:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every message on `subject` of `stream`, decoded.
    async fn all<M: Message + Default>(&self, stream: &str, subject: &str) -> Vec<M> {
        let js = self.bus.jetstream();
        let s = js.get_stream(stream).await.unwrap();
        let consumer = s
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                filter_subject: subject.to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
        let pending = consumer.clone().info().await.unwrap().num_pending;
        let mut out = Vec::new();
        if pending == 0 {
            return out;
        }
        let mut batch = consumer
            .fetch()
            .max_messages(pending as usize)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(m)) = batch.next().await {
            out.push(M::decode(m.payload.as_ref()).unwrap());
            if out.len() as u64 == pending {
                break;
            }
        }
        out
    }

    /// The test results of one attempt: (passed, failed).
    async fn counts(&self, id: &str, attempt: u32) -> (usize, usize) {
        let batches: Vec<TestCaseBatch> =
            self.all(streams::RESULTS, &subjects::results(id, 0)).await;
        let results: Vec<_> = batches
            .iter()
            .filter(|b| b.attempt == attempt)
            .flat_map(|b| b.results.iter())
            .collect();
        let failed = results
            .iter()
            .filter(|r| r.status() == assay_proto::TestStatus::Failed)
            .count();
        (results.len() - failed, failed)
    }

    fn pod_names(&self) -> Vec<String> {
        self.seen.lock().unwrap().keys().cloned().collect()
    }

    async fn wait_until(&self, what: &str, mut f: impl FnMut(&World) -> bool) {
        let until = Instant::now() + Duration::from_secs(60);
        while !f(self) {
            assert!(Instant::now() < until, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_runs_as_a_pod_and_its_results_land() {
    let w = World::start().await;
    let launcher = w.launcher(2, w.shutdown.clone());
    let id = "01PODRUNS";
    w.publish(&w.job(id, &["a", "b", "c_fail", "d"], None))
        .await;
    let finals = w.finals(id, 1).await;
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].state(), ShardState::Failed, "{:?}", finals[0]);
    assert_eq!(finals[0].reporter, "runner");
    assert_eq!(w.counts(id, 1).await, (3, 1));
    assert_eq!(w.pod_names(), vec!["assay-01podruns-0-1".to_string()]);
    // Deleted once the attempt ended.
    w.wait_until("the pod is deleted", |w| {
        w.fake.list("pods", Some("tests")).is_empty()
    })
    .await;
    w.shutdown.cancel();
    launcher.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_shard_is_an_infrastructure_failure_retried_away_from_its_node() {
    let w = World::start().await;
    let id = "01PODOOM";
    w.kubelet
        .inject("tests", "assay-01podoom-0-1", Fault::OomKilled);
    let launcher = w.launcher(2, w.shutdown.clone());
    w.publish(&w.job(id, &["a", "b", "c"], None)).await;
    let finals = w.finals(id, 2).await;
    let first = finals
        .iter()
        .find(|s| s.attempt == 1)
        .expect("attempt 1's end");
    assert_eq!(first.state(), ShardState::Errored, "{first:?}");
    assert!(first.reason.contains("OOMKilled"), "{}", first.reason);
    assert!(first.will_retry, "{first:?}");
    assert_eq!(first.reporter, "launcher");
    let second = finals
        .iter()
        .find(|s| s.attempt == 2)
        .expect("attempt 2's end");
    assert_eq!(second.state(), ShardState::Passed, "{second:?}");
    assert_eq!(w.counts(id, 2).await, (3, 0));
    assert_eq!(w.counts(id, 1).await, (0, 0));
    let seen = w.seen.lock().unwrap().clone();
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["assay-01podoom-0-1", "assay-01podoom-0-2"]
    );
    let retry = serde_json::to_value(&seen["assay-01podoom-0-2"]).unwrap();
    assert_eq!(
        retry.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions/0"),
        Some(&json!({"key": "kubernetes.io/hostname", "operator": "NotIn", "values": [NODE]})),
        "{retry:#}"
    );
    w.shutdown.cancel();
    launcher.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_errors_the_shard_with_the_reason() {
    let w = World::start().await;
    let id = "01PODPULL";
    w.kubelet
        .inject("tests", "assay-01podpull-0-1", Fault::ErrImagePull);
    let launcher = w.launcher(0, w.shutdown.clone());
    w.publish(&w.job(id, &["a"], None)).await;
    let finals = w.finals(id, 1).await;
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].state(), ShardState::Errored);
    assert!(!finals[0].will_retry);
    assert!(
        finals[0]
            .reason
            .starts_with("ErrImagePull: cannot pull the workflow's image ("),
        "{}",
        finals[0].reason
    );
    w.shutdown.cancel();
    launcher.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_launcher_finds_the_running_pod_instead_of_starting_a_second() {
    let w = World::start().await;
    let id = "01PODRESTART";
    let gate = w.dir.path().join("gate");
    let first_life = CancellationToken::new();
    let launcher = w.launcher(2, first_life.clone());
    w.publish(&w.job(id, &["a", "b"], Some(&gate))).await;
    w.wait_until("the pod runs", |w| {
        w.fake
            .get("pods", "tests", "assay-01podrestart-0-1")
            .and_then(|p| p.pointer("/status/phase").cloned())
            == Some(json!("Running"))
    })
    .await;
    first_life.cancel();
    launcher.await.unwrap().unwrap();
    // The Pod goes on without its launcher.
    assert!(
        w.fake
            .get("pods", "tests", "assay-01podrestart-0-1")
            .is_some()
    );
    let second_life = w.launcher(2, w.shutdown.clone());
    // Whether the runner ends before or after the second launcher takes the redelivered
    // job, that launcher must adopt the Pod its earlier life started.
    std::fs::write(&gate, "").unwrap();
    let finals = w.finals(id, 1).await;
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].state(), ShardState::Passed, "{:?}", finals[0]);
    assert_eq!(w.counts(id, 1).await, (2, 0));
    assert_eq!(
        w.pod_names(),
        vec!["assay-01podrestart-0-1".to_string()],
        "a second pod was created"
    );
    w.shutdown.cancel();
    second_life.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refusing_the_pod_errors_the_shard_with_its_message() {
    let w = World::start().await;
    w.fake.reject_create(
        "",
        "pods",
        "spec.containers[0].resources.limits: Invalid value: \"lots\"",
    );
    let launcher = w.launcher(2, w.shutdown.clone());
    w.publish(&w.job("01PODREJECT", &["a"], None)).await;
    let finals = w.finals("01PODREJECT", 1).await;
    assert_eq!(finals.len(), 1, "a refused spec is not retried: {finals:?}");
    assert_eq!(finals[0].state(), ShardState::Errored);
    assert!(
        finals[0].reason.contains("Invalid value: \"lots\""),
        "{}",
        finals[0].reason
    );
    w.fake.accept_create("", "pods");
    w.fake.forbid("create", "", "pods");
    w.publish(&w.job("01PODFORBID", &["a"], None)).await;
    let finals = w.finals("01PODFORBID", 1).await;
    assert!(
        finals[0]
            .reason
            .starts_with("forbidden: the launcher may not create pods in namespace \"tests\""),
        "{}",
        finals[0].reason
    );
    w.shutdown.cancel();
    launcher.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_carries_the_workflows_settings_and_the_runner_credentials_secret() {
    let w = World::start().await;
    let client = kube::Client::try_from(kube::Config::new(w.fake.url().parse().unwrap())).unwrap();
    let backend = KubeBackend::new(
        client,
        KubeOptions {
            runner_nats_secret: Some("runner-nats".into()),
            ..w.kube_options(2)
        },
    )
    .unwrap();
    let mut job = w.job("01PODSPEC", &["a"], None);
    job.workload = Some(Workload {
        image: "python:3.12-slim".into(),
        container_json: json!({"image": "python:3.12-slim", "workingDir": "/src", "imagePullPolicy": "IfNotPresent",
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}})
        .to_string(),
        pod_json: json!({"nodeSelector": {"pool": "tests"}, "serviceAccountName": "e2e",
            "priorityClassName": "low", "labels": {"team": "shop"}, "annotations": {"note": "x"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"podAffinity": {}}})
        .to_string(),
        avoid_nodes: vec!["node-z".into()],
        ..Default::default()
    });
    let nats = RunnerNats {
        env: vec![
            ("ASSAY_NATS_URL".into(), "nats://nats:4222".into()),
            ("ASSAY_NATS_PASSWORD".into(), "launchers-own".into()),
        ],
        ..Default::default()
    };
    // The spec as created (the kubelet sim runs it too; its runner cannot reach
    // nats://nats:4222 and nothing here waits for it).
    let _attempt = backend.start(&job, &nats).await.unwrap();
    let pod = w
        .fake
        .get("pods", "tests", "assay-01podspec-0-1")
        .expect("created");
    let spec = &pod["spec"];
    assert_eq!(spec["nodeSelector"], json!({"pool": "tests"}));
    assert_eq!(
        spec["containers"][0]["imagePullPolicy"],
        json!("IfNotPresent")
    );
    assert_eq!(spec["serviceAccountName"], json!("e2e"));
    assert_eq!(spec["priorityClassName"], json!("low"));
    assert_eq!(spec["restartPolicy"], json!("Never"));
    assert_eq!(
        spec["tolerations"],
        json!([{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert!(spec["activeDeadlineSeconds"].as_i64().unwrap() >= 120);
    assert_eq!(
        spec.pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions/0/values"),
        Some(&json!(["node-z"]))
    );
    assert_eq!(pod["metadata"]["labels"]["team"], json!("shop"));
    assert_eq!(
        pod["metadata"]["labels"]["assay.dev/execution"],
        json!("01PODSPEC")
    );
    assert_eq!(pod["metadata"]["labels"]["assay.dev/shard"], json!("0"));
    assert_eq!(pod["metadata"]["labels"]["assay.dev/attempt"], json!("1"));
    assert_eq!(pod["metadata"]["annotations"]["note"], json!("x"));
    let init = &spec["initContainers"][0];
    assert_eq!(init["image"], json!("assay-runner:test"));
    assert_eq!(init["command"][2], json!("/assay/bin/assay-runner"));
    let main = &spec["containers"][0];
    assert_eq!(main["image"], json!("python:3.12-slim"));
    assert_eq!(main["command"], json!(["/assay/bin/assay-runner"]));
    assert_eq!(main["workingDir"], json!("/src"));
    assert_eq!(
        main["resources"],
        json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}})
    );
    let env = main["env"].as_array().unwrap();
    let names: Vec<&str> = env.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(
        names.contains(&"ASSAY_SHARD_JOB") && names.contains(&"ASSAY_NATS_URL"),
        "{names:?}"
    );
    assert!(
        !env.iter().any(|e| e["value"] == json!("launchers-own")),
        "the launcher's own credentials went into the pod: {env:?}"
    );
    let user = env
        .iter()
        .find(|e| e["name"] == json!("ASSAY_NATS_USER"))
        .unwrap();
    assert_eq!(
        user["valueFrom"]["secretKeyRef"],
        json!({"name": "runner-nats", "key": "user", "optional": false})
    );
    assert!(
        init.get("env").is_none(),
        "the init container gets no credentials: {init}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_git_credentials_secret_is_mounted_into_the_runner_container_only() {
    let w = World::start().await;
    let client = kube::Client::try_from(kube::Config::new(w.fake.url().parse().unwrap())).unwrap();
    let backend = KubeBackend::new(client, w.kube_options(2)).unwrap();
    let mut job = w.git_job(
        "01PODGITSPEC",
        &["a"],
        "file:///nonexistent/shop.git",
        "shop-git",
    );
    // A workflow env of the same name does not win over the mount.
    job.workload = Some(Workload {
        image: "python:3.12-slim".into(),
        container_json: json!({"image": "python:3.12-slim",
            "env": {"ASSAY_GIT_CREDENTIALS_DIR": "/elsewhere"}})
        .to_string(),
        ..Default::default()
    });
    let nats = RunnerNats {
        env: vec![("ASSAY_NATS_URL".into(), "nats://nats:4222".into())],
        creds: None,
    };
    let _attempt = backend.start(&job, &nats).await.unwrap();
    let pod = w
        .fake
        .get("pods", "tests", "assay-01podgitspec-0-1")
        .expect("created");
    let spec = &pod["spec"];
    let volumes = spec["volumes"].as_array().unwrap();
    let secret_volumes: Vec<_> = volumes
        .iter()
        .filter(|v| v.get("secret").is_some())
        .collect();
    assert_eq!(
        secret_volumes,
        vec![&json!({"name": "assay-git-credentials", "secret": {
            "secretName": "shop-git", "defaultMode": 0o400, "optional": false}})],
        "{volumes:?}"
    );
    assert_eq!(spec["securityContext"], json!({"fsGroup": 65532}));
    let main = &spec["containers"][0];
    let mounts = main["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.contains(&json!({"name": "assay-git-credentials",
            "mountPath": "/var/run/assay/git-credentials", "readOnly": true})),
        "{mounts:?}"
    );
    let env = main["env"].as_array().unwrap();
    let dirs: Vec<&serde_json::Value> = env
        .iter()
        .filter(|e| e["name"] == json!("ASSAY_GIT_CREDENTIALS_DIR"))
        .map(|e| &e["value"])
        .collect();
    assert_eq!(
        dirs.last(),
        Some(&&json!("/var/run/assay/git-credentials")),
        "the mount's entry comes last and wins: {env:?}"
    );
    let init = &spec["initContainers"][0];
    let init_mounts = init["volumeMounts"].as_array().unwrap();
    assert!(
        init_mounts
            .iter()
            .all(|m| m["name"] != json!("assay-git-credentials")),
        "the init container mounts the credentials: {init_mounts:?}"
    );
    assert!(init.get("env").is_none(), "{init}");

    // Without a Secret: no volume, no variable, no fsGroup.
    let plain = w.git_job("01PODGITNONE", &["a"], "file:///nonexistent/shop.git", "");
    let _attempt = backend.start(&plain, &nats).await.unwrap();
    let pod = w
        .fake
        .get("pods", "tests", "assay-01podgitnone-0-1")
        .expect("created");
    assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 1);
    assert!(pod["spec"].get("securityContext").is_none());
    assert!(
        !pod.to_string().contains("ASSAY_GIT_CREDENTIALS_DIR"),
        "{pod}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_reads_the_mounted_secret_and_the_tests_do_not_see_it() {
    let w = World::start().await;
    let url = bare_repo(w.dir.path());
    w.secret(
        "shop-git",
        &[("username", "bot\n"), ("password", "s3cret-token\n")],
    );
    // Only a username: the runner must refuse it, which it can only do after reading the
    // mounted directory.
    w.secret("half-git", &[("username", "bot")]);
    let launcher = w.launcher(2, w.shutdown.clone());

    w.publish(&w.git_job("01PODGITOK", &["a", "b", "c"], &url, "shop-git"))
        .await;
    let finals = w.finals("01PODGITOK", 1).await;
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].state(), ShardState::Passed, "{:?}", finals[0]);
    assert_eq!(w.counts("01PODGITOK", 1).await, (3, 0));

    w.publish(&w.git_job("01PODGITHALF", &["a"], &url, "half-git"))
        .await;
    let finals = w.finals("01PODGITHALF", 1).await;
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].state(), ShardState::Errored, "{:?}", finals[0]);
    assert_eq!(finals[0].reporter, "runner", "{:?}", finals[0]);
    assert!(
        finals[0]
            .reason
            .contains("has only one of username and password"),
        "{}",
        finals[0].reason
    );
    assert_eq!(w.counts("01PODGITHALF", 1).await, (0, 0));
    w.shutdown.cancel();
    launcher.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_git_credentials_secret_errors_the_shard_naming_it_without_retry() {
    let w = World::start().await;
    let url = bare_repo(w.dir.path());
    let launcher = w.launcher(2, w.shutdown.clone());
    w.publish(&w.git_job("01PODGITMISSING", &["a"], &url, "absent-git"))
        .await;
    let finals = w.finals("01PODGITMISSING", 1).await;
    assert_eq!(finals.len(), 1, "not retried: {finals:?}");
    let end = &finals[0];
    assert_eq!(end.state(), ShardState::Errored, "{end:?}");
    assert!(!end.will_retry, "{end:?}");
    assert_eq!(end.reporter, "launcher");
    assert!(
        end.reason.starts_with(
            "the git credentials Secret \"absent-git\" (content.git.credentials.secretName) cannot be mounted into pod tests/assay-01podgitmissing-0-1: "
        ) && end.reason.contains("secret \"absent-git\" not found")
            && end.reason.ends_with("create it in namespace \"tests\", where the shard Pods run"),
        "{}",
        end.reason
    );
    assert_eq!(w.counts("01PODGITMISSING", 1).await, (0, 0));
    w.wait_until("the pod is deleted", |w| {
        w.fake.list("pods", Some("tests")).is_empty()
    })
    .await;
    w.shutdown.cancel();
    launcher.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_runner_nats_secret_errors_the_shard_without_retry() {
    let w = World::start().await;
    let options = Options {
        nats: w.nats.clone(),
        backend: assay_executor_launcher::BackendKind::Kubernetes,
        capacity: 2,
        ack_wait: Duration::from_secs(5),
        kube: KubeOptions {
            runner_nats_secret: Some("no-such-runner-nats".into()),
            ..w.kube_options(2)
        },
        kubeconfig: Some(w.fake.kubeconfig_file().unwrap()),
        ..Default::default()
    };
    let launcher = tokio::spawn(assay_executor_launcher::run(options, w.shutdown.clone()));
    w.publish(&w.job("01PODNATSSECRET", &["a"], None)).await;
    let finals = w.finals("01PODNATSSECRET", 1).await;
    assert_eq!(finals.len(), 1, "not retried: {finals:?}");
    assert_eq!(finals[0].state(), ShardState::Errored);
    assert!(!finals[0].will_retry);
    assert_eq!(
        finals[0].reason,
        format!(
            "CreateContainerConfigError: the kubelet cannot create the runner's container on node {NODE}: secret \"no-such-runner-nats\" not found"
        )
    );
    w.shutdown.cancel();
    launcher.await.unwrap().unwrap();
}

/// Operator mode on Pods: the attempt's minted credentials go into a Secret of the Pod's
/// name (owned by the Pod), mounted read-only for the runner only and named by
/// `ASSAY_NATS_CREDS`, in place of the runner user's Secret; deleted with the attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_runner_credentials_reach_the_pod_in_a_secret_of_its_own() {
    let w = World::start().await;
    let account = nkeys::KeyPair::new_account();
    let signing = nkeys::KeyPair::new_account();
    let signer =
        assay_bus::runner_jwt::Signer::new(&signing.seed().unwrap(), &account.public_key())
            .unwrap();
    let gate = w.dir.path().join("gate-creds");
    let launcher = w.launcher_signing(0, Some(Arc::new(signer)), w.shutdown.clone());
    w.publish(&w.job("01PODJWT", &["a", "b"], Some(&gate)))
        .await;
    let name = "assay-01podjwt-0-1";
    w.wait_until("the pod runs", |w| {
        w.fake
            .get("pods", "tests", name)
            .and_then(|p| p.pointer("/status/phase").cloned())
            == Some(json!("Running"))
    })
    .await;
    let secret = w
        .fake
        .get("secrets", "tests", name)
        .expect("the creds secret");
    let creds = secret
        .pointer("/stringData/runner.creds")
        .or_else(|| secret.pointer("/data/runner.creds"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .expect("runner.creds");
    let creds = if creds.contains("BEGIN") {
        creds
    } else {
        use base64::Engine as _;
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(creds)
                .unwrap(),
        )
        .unwrap()
    };
    assert!(creds.contains("-----BEGIN NATS USER JWT-----"), "{creds}");
    assert_eq!(
        secret["metadata"]["labels"]["assay.dev/execution"],
        json!("01PODJWT")
    );
    let pod = w.fake.get("pods", "tests", name).unwrap();
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!(
        (
            owner["kind"].clone(),
            owner["name"].clone(),
            owner["uid"].clone()
        ),
        (json!("Pod"), json!(name), pod["metadata"]["uid"].clone()),
        "{secret:#}"
    );
    let spec = &pod["spec"];
    assert!(
        spec["volumes"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "assay-nats-creds",
            "secret": {"secretName": name, "defaultMode": 0o400, "optional": false}})),
        "{spec:#}"
    );
    let main = &spec["containers"][0];
    assert!(
        main["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "assay-nats-creds",
            "mountPath": "/var/run/assay/nats", "readOnly": true})),
        "{main:#}"
    );
    let env = main["env"].as_array().unwrap();
    assert!(
        env.contains(
            &json!({"name": "ASSAY_NATS_CREDS", "value": "/var/run/assay/nats/runner.creds"})
        ),
        "{env:?}"
    );
    assert!(
        !env.iter()
            .any(|e| e["name"] == json!("ASSAY_NATS_USER")
                || e["name"] == json!("ASSAY_NATS_PASSWORD")),
        "{env:?}"
    );
    let init = &spec["initContainers"][0];
    assert_eq!(init["volumeMounts"].as_array().unwrap().len(), 1, "{init}");
    std::fs::write(&gate, "").unwrap();
    // The runner reads the mounted file (this nats-server checks no credentials).
    let finals = w.finals("01PODJWT", 1).await;
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].state(), ShardState::Passed, "{:?}", finals[0]);
    assert_eq!(w.counts("01PODJWT", 1).await, (2, 0));
    w.wait_until("the secret is deleted with the attempt", |w| {
        w.fake.get("secrets", "tests", name).is_none()
    })
    .await;
    w.shutdown.cancel();
    launcher.await.unwrap().unwrap();
}
