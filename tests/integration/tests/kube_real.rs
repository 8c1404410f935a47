//! The real-cluster tier of issue 12 (`make test-k8s`): the scenarios the fake-cluster tests
//! check (`kube_e2e.rs`, the trigger-watcher's `cluster.rs`, the launcher's
//! `kubernetes.rs`) against a real Kubernetes cluster. Every test here is `#[ignore]`d:
//! `make test` has no cluster; `make test-k8s` runs them with `--run-ignored only`.
//!
//! The services run on this machine (in this process, as in `kube_e2e.rs`), talking to the
//! cluster's API server through `KUBECONFIG`; the shards run as real Pods, whose runners
//! reach this machine's nats-server at `ASSAY_K8S_HOST`. Needs:
//! - `KUBECONFIG`: a cluster where the user may create namespaces, CRDs, Deployments,
//!   ConfigMaps and Pods (kind or minikube will do);
//! - `ASSAY_K8S_RUNNER_IMAGE`: the runner image (`deploy/docker/runner.Dockerfile`,
//!   `make images`), pullable by the cluster (`kind load docker-image` for kind);
//! - `ASSAY_K8S_HOST`: this machine's address as the Pods see it (kind on Linux: the
//!   gateway of the `kind` docker network);
//! - `ASSAY_K8S_TEST_IMAGE` (default `busybox:1.37`): the image the test suites run in.
//!
//! Each test makes its own namespaces (`assay-it-<random>-…`) and deletes them at the end.
//! Not covered here, because a real API server cannot be made to: a forced 410 Gone relist
//! (the fake tier covers it).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assay_cluster::{CatalogSource, KubeSource, Scope};
use assay_integration::{
    Sandbox, Service, ServiceTask, describe, nats_as, spawn_service, status_of,
};
use assay_proto::ExecutionStatus;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// What the tier needs from its environment; panics naming what is missing.
struct Real {
    runner_image: String,
    /// `ASSAY_K8S_RUNNER_PATH`: assay-runner's path in the runner image, if not the default.
    runner_path: Option<String>,
    host: String,
    test_image: String,
    /// Prefix of this test's namespaces.
    prefix: String,
}

impl Real {
    fn from_env() -> Real {
        let need = |name: &str, what: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| panic!("the real-cluster tier needs {name}: {what}"))
        };
        need("KUBECONFIG", "the kubeconfig of a real cluster");
        let runner_image = need(
            "ASSAY_K8S_RUNNER_IMAGE",
            "the runner image (deploy/docker/runner.Dockerfile), pullable by the cluster",
        );
        let host = need(
            "ASSAY_K8S_HOST",
            "this machine's address as the cluster's Pods see it (kind: the kind network's gateway)",
        );
        let test_image =
            std::env::var("ASSAY_K8S_TEST_IMAGE").unwrap_or_else(|_| "busybox:1.37".into());
        let prefix = format!(
            "assay-it-{:08x}",
            std::process::id() ^ (assay_bus::now_ms() as u32)
        );
        Real {
            runner_image,
            runner_path: std::env::var("ASSAY_K8S_RUNNER_PATH").ok(),
            host,
            test_image,
            prefix,
        }
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Creates this test's namespaces and applies the CRDs with the real kubectl.
    fn set_up(&self, namespaces: &[&str]) {
        let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/crds");
        let file = |name: &str| crds.join(name).display().to_string();
        kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &file("testworkflows.assay.dev.yaml"),
            "-f",
            &file("testtriggers.assay.dev.yaml"),
        ]);
        kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/testworkflows.assay.dev",
            "crd/testtriggers.assay.dev",
            "--timeout=60s",
        ]);
        for n in namespaces {
            apply(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}}}\n",
                self.ns(n)
            ));
        }
    }

    /// A TestWorkflow in namespace `ci` running `ids` in the test image, `run_prefix`
    /// before the suite's command, with `container_extra` (YAML lines at the container's
    /// indentation) and `extra` (at the spec's) added.
    fn workflow(
        &self,
        name: &str,
        ids: &[&str],
        run_prefix: &str,
        container_extra: &str,
        extra: &str,
    ) -> String {
        let script: String = assay_testkit::suite::JUNIT_SUITE_SH
            .lines()
            .map(|l| format!("        {l}\n"))
            .collect();
        format!(
            r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: {name}, namespace: {ci}}}
spec:
  container:
    image: {image}
    workingDir: /tmp
{container_extra}  setup:
    - name: write-suite
      run: |
        cat > suite.sh <<'EOF'
{script}        EOF
        printf '%s\n' {ids} > ids.txt
  tests:
    list: cat ids.txt
    run: {run_prefix}sh suite.sh {{report}} {{tests}}
    reports: ["{{report}}"]
  timeout: 5m
{extra}"#,
            ci = self.ns("ci"),
            image = self.test_image,
            ids = ids.join(" "),
        )
    }

    /// The catalog of this test's namespace `ci`, read from the cluster.
    fn catalog(&self) -> CatalogSource {
        CatalogSource::Kubernetes(KubeSource {
            scope: Some(Scope::Namespace(self.ns("ci"))),
            kubeconfig: None,
        })
    }
}

impl Drop for Real {
    fn drop(&mut self) {
        for n in ["ci", "shop", "tests"] {
            let _ = Command::new("kubectl")
                .args(["delete", "namespace", &self.ns(n), "--wait=false"])
                .args(["--ignore-not-found"])
                .output();
        }
    }
}

/// Runs the real kubectl (on `KUBECONFIG`) with `args`; panics with its output on failure.
fn kubectl(args: &[&str]) -> String {
    kubectl_in(args, None)
}

fn kubectl_in(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl (is it on PATH?)");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply(yaml: &str) {
    kubectl_in(&["apply", "-f", "-"], Some(yaml));
}

/// The executor-launcher on the kubernetes backend, its shard Pods in namespace `tests`.
fn launcher(
    real: &Real,
    sb: &Sandbox,
    n: usize,
    infra_retries: u32,
    stop: &CancellationToken,
) -> ServiceTask {
    let options = assay_executor_launcher::Options {
        nats: nats_as(&sb.nats.url(), &format!("executor-launcher-{n}")),
        backend: assay_executor_launcher::BackendKind::Kubernetes,
        capacity: 4,
        ack_wait: Duration::from_secs(10),
        kube: assay_executor_launcher::KubeOptions {
            namespace: real.ns("tests"),
            runner_image: real.runner_image.clone(),
            runner_path: real.runner_path.clone().unwrap_or_else(|| {
                assay_executor_launcher::backend::kubernetes::DEFAULT_RUNNER_PATH.into()
            }),
            runner_nats_url: Some(format!("nats://{}:{}", real.host, sb.nats.port())),
            infra_retries,
            ..Default::default()
        },
        reap_every: Duration::from_secs(2),
        ..Default::default()
    };
    let t = stop.clone();
    spawn_service(assay_executor_launcher::run(options, t))
}

/// One replica of each of scheduler and trigger-watcher (watching the cluster), reading
/// the cluster's catalog.
fn scheduler_and_watcher(
    real: &Real,
    sb: &Sandbox,
    client: &kube::Client,
    n: usize,
    watch: &assay_trigger_watcher::cluster::ClusterStatus,
    stop: &CancellationToken,
) -> Vec<ServiceTask> {
    let url = sb.nats.url();
    let scheduler = assay_scheduler::Options {
        nats: nats_as(&url, &format!("scheduler-{n}")),
        catalog: real.catalog(),
        ..Default::default()
    };
    let watcher = assay_trigger_watcher::Options {
        nats: nats_as(&url, &format!("trigger-watcher-{n}")),
        catalog: real.catalog(),
        http: std::net::SocketAddr::from(([127, 0, 0, 1], assay_testkit::free_port())),
        cluster: assay_trigger_watcher::cluster::ClusterOptions {
            enabled: true,
            client: Some(client.clone()),
            status: watch.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let (t1, t2) = (stop.clone(), stop.clone());
    vec![
        spawn_service(assay_scheduler::run(scheduler, t1)),
        spawn_service(assay_trigger_watcher::run(watcher, t2)),
    ]
}

/// Every Pod of `namespace` the API showed, by name, as last seen; stops with `stop`.
fn record_pods(
    client: &kube::Client,
    namespace: &str,
    stop: &CancellationToken,
) -> Arc<Mutex<BTreeMap<String, Pod>>> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let record = seen.clone();
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        loop {
            let e = tokio::select! {
                e = events.next() => e,
                _ = stop.cancelled() => return,
            };
            match e {
                None => return,
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    record.lock().unwrap().insert(name, p);
                }
                Some(_) => {}
            }
        }
    });
    seen
}

async fn wait_listed(watches: &[&assay_trigger_watcher::cluster::ClusterStatus], kind: &str) {
    let until = Instant::now() + Duration::from_secs(120);
    while watches.iter().any(|w| w.lists(kind) == 0) {
        let errors: Vec<_> = watches.iter().map(|w| w.errors()).collect();
        assert!(
            Instant::now() < until,
            "the watchers never listed {kind}: {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn first_execution(sb: &Sandbox, workflow: &str, within: Duration) -> String {
    let until = Instant::now() + within;
    loop {
        if let Some(e) = sb.executions(workflow, 10).await.first() {
            return e.execution_id.clone();
        }
        assert!(Instant::now() < until, "no execution of {workflow} started");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Names of the recorded Pods of execution `id`.
fn pods_of(seen: &Mutex<BTreeMap<String, Pod>>, id: &str) -> Vec<String> {
    seen.lock()
        .unwrap()
        .values()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("assay.dev/execution"))
                .map(String::as_str)
                == Some(id)
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// The final shard statuses of shard 0 of execution `id`, every attempt's.
async fn final_statuses(sb: &Sandbox, id: &str) -> Vec<assay_proto::ShardStatus> {
    use prost::Message as _;
    let stream = sb
        .bus
        .jetstream()
        .get_stream(assay_bus::streams::STATUS)
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: assay_bus::subjects::shard_status(id, 0),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.clone().info().await.unwrap().num_pending as usize;
    let mut out = Vec::new();
    if pending == 0 {
        return out;
    }
    let mut batch = consumer
        .fetch()
        .max_messages(pending)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    while let Some(Ok(m)) = batch.next().await {
        out.push(assay_proto::ShardStatus::decode(m.payload.as_ref()).unwrap());
        if out.len() == pending {
            break;
        }
    }
    out.retain(|s| s.state().is_terminal());
    out
}

async fn stop_all(stop: &CancellationToken, tasks: Vec<ServiceTask>) {
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
}

#[ignore = "needs a real cluster: make test-k8s"]
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_rollout_runs_the_suite_as_pods_on_two_replicas_of_every_service() {
    let real = Real::from_env();
    real.set_up(&["ci", "shop", "tests"]);
    let (ci, shop, tests) = (real.ns("ci"), real.ns("shop"), real.ns("tests"));
    apply(&real.workflow(
        "payments-e2e",
        &[
            "t1", "t2", "t3-fail", "t4", "t5-skip", "t6", "t7-fail", "t8",
        ],
        "",
        "",
        "  parallel: {count: 2}\n  pod:\n    labels: {team: payments}\n",
    ));
    apply(&format!(
        r#"apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {{name: after-payments-rollout, namespace: {ci}}}
spec:
  "on":
    kubernetes: {{kind: Deployment, namespace: {shop}, selector: {{app: payments}}, event: rollout-complete}}
  run: {{workflow: payments-e2e}}
"#
    ));
    apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: payments, namespace: {shop}, labels: {{app: payments}}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: payments}}}}
  template:
    metadata: {{labels: {{app: payments}}}}
    spec:
      containers: [{{name: app, image: "{image}", command: [sleep, "3600"]}}]
"#,
        image = real.test_image
    ));
    kubectl(&[
        "-n",
        &shop,
        "rollout",
        "status",
        "deployment/payments",
        "--timeout=180s",
    ]);

    let client = assay_cluster::client(None).await.unwrap();
    let mut sb = Sandbox::empty_listening("0.0.0.0", &[]).await;
    sb.start_service(Service::Aggregator);
    let stop = CancellationToken::new();
    let watches = [
        assay_trigger_watcher::cluster::ClusterStatus::default(),
        assay_trigger_watcher::cluster::ClusterStatus::default(),
    ];
    let mut tasks = Vec::new();
    for (n, w) in watches.iter().enumerate() {
        tasks.extend(scheduler_and_watcher(&real, &sb, &client, n, w, &stop));
        tasks.push(launcher(&real, &sb, n, 2, &stop));
    }
    let second_aggregator = assay_result_aggregator::Options {
        nats: nats_as(&sb.nats.url(), "result-aggregator-2"),
        database: sb.database(),
        grpc: std::net::SocketAddr::from(([127, 0, 0, 1], assay_testkit::free_port())),
        ..Default::default()
    };
    let t = stop.clone();
    tasks.push(spawn_service(assay_result_aggregator::run(
        second_aggregator,
        t,
    )));
    wait_listed(&[&watches[0], &watches[1]], "Deployment").await;
    let seen = record_pods(&client, &tests, &stop);

    // A real rollout: a new template, the Deployment controller replaces the Pods.
    kubectl(&[
        "-n",
        &shop,
        "set",
        "env",
        "deployment/payments",
        "REVISION=2",
    ]);
    let id = first_execution(&sb, "payments-e2e", Duration::from_secs(300)).await;
    // The real kubectl reads a shard Pod's log while it runs.
    let until = Instant::now() + Duration::from_secs(300);
    let pod = loop {
        let running = kubectl(&[
            "-n",
            &tests,
            "get",
            "pods",
            "-l",
            &format!("assay.dev/execution={id}"),
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        if let Some(name) = running.split_whitespace().next() {
            break name.to_string();
        }
        assert!(Instant::now() < until, "no shard Pod of {id} ever ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = Command::new("kubectl")
        .args(["-n", &tests, "logs", "-f", &pod])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.contains(&format!("assay-runner: execution {id} shard ")),
        "kubectl logs -f {pod}:\n{log}"
    );

    let detail = sb.wait_for_terminal(&id, Duration::from_secs(300)).await;
    assert_eq!(
        status_of(&detail),
        ExecutionStatus::Failed,
        "{}",
        describe(&detail)
    );
    let exec = detail.execution.clone().unwrap();
    assert_eq!(
        (exec.passed, exec.failed, exec.skipped, exec.errored),
        (5, 2, 1, 0),
        "{}",
        describe(&detail)
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(sb.execution_count("payments-e2e").await, 1);
    let pods = pods_of(&seen, &id);
    assert_eq!(pods.len(), 2, "one Pod per shard: {pods:?}");
    // The scheduler wrote the TestWorkflow's status; kubectl shows it.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let status: Value = serde_json::from_str(&kubectl(&[
            "-n",
            &ci,
            "get",
            "testworkflow",
            "payments-e2e",
            "-o",
            "json",
        ]))
        .unwrap();
        if status["status"]["lastExecutionId"] == id.as_str() {
            break;
        }
        assert!(
            Instant::now() < until,
            "status never named {id}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // No shard Pod outlives its execution by a minute.
    let until = Instant::now() + Duration::from_secs(60);
    while !kubectl(&["-n", &tests, "get", "pods", "-o", "name"])
        .trim()
        .is_empty()
    {
        assert!(Instant::now() < until, "shard Pods left behind");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop_all(&stop, tasks).await;
}

#[ignore = "needs a real cluster: make test-k8s"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_modifications_within_the_settle_window_start_one_execution() {
    let real = Real::from_env();
    real.set_up(&["ci", "shop", "tests"]);
    let (ci, shop) = (real.ns("ci"), real.ns("shop"));
    apply(&real.workflow("settings-check", &["a", "b"], "", "", ""));
    apply(&format!(
        r#"apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {{name: on-settings, namespace: {ci}}}
spec:
  "on":
    kubernetes: {{kind: ConfigMap, namespace: {shop}, name: settings, event: modified, settle: 5s}}
  run: {{workflow: settings-check}}
"#
    ));
    apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: {shop}}}\ndata: {{n: \"0\"}}\n"
    ));
    let client = assay_cluster::client(None).await.unwrap();
    let mut sb = Sandbox::empty_listening("0.0.0.0", &[]).await;
    sb.start_service(Service::Aggregator);
    let stop = CancellationToken::new();
    let watch = assay_trigger_watcher::cluster::ClusterStatus::default();
    let mut tasks = scheduler_and_watcher(&real, &sb, &client, 0, &watch, &stop);
    tasks.push(launcher(&real, &sb, 0, 2, &stop));
    wait_listed(&[&watch], "ConfigMap").await;
    for i in 1..=10 {
        kubectl(&[
            "-n",
            &shop,
            "annotate",
            "--overwrite",
            "configmap/settings",
            &format!("burst={i}"),
        ]);
    }
    let id = first_execution(&sb, "settings-check", Duration::from_secs(120)).await;
    let detail = sb.wait_for_terminal(&id, Duration::from_secs(300)).await;
    assert_eq!(
        status_of(&detail),
        ExecutionStatus::Passed,
        "{}",
        describe(&detail)
    );
    // Well past the settle window: still one.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(sb.execution_count("settings-check").await, 1);
    stop_all(&stop, tasks).await;
}

#[ignore = "needs a real cluster: make test-k8s"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oom_killed_shard_is_retried_as_an_infrastructure_failure_with_exact_counts() {
    let real = Real::from_env();
    real.set_up(&["ci", "tests"]);
    // Attempt 1 allocates 256 MiB under a 64 MiB limit: the kernel kills the container
    // (OOMKilled, with cgroup v2's group kill, the kubelet's default since 1.28).
    apply(&real.workflow(
        "oom",
        &["a", "b", "c"],
        r#"if [ "$ASSAY_ATTEMPT" = 1 ]; then dd if=/dev/zero of=/dev/null bs=256M count=1; fi; "#,
        "    resources: {limits: {memory: 64Mi}}\n",
        "",
    ));
    let client = assay_cluster::client(None).await.unwrap();
    let mut sb = Sandbox::empty_listening("0.0.0.0", &[]).await;
    sb.start_service(Service::Aggregator);
    let stop = CancellationToken::new();
    let watch = assay_trigger_watcher::cluster::ClusterStatus::default();
    let mut tasks = scheduler_and_watcher(&real, &sb, &client, 0, &watch, &stop);
    tasks.push(launcher(&real, &sb, 0, 2, &stop));
    let id = sb.run("oom", &[]).await;
    let detail = sb.wait_for_terminal(&id, Duration::from_secs(300)).await;
    assert_eq!(
        status_of(&detail),
        ExecutionStatus::Passed,
        "{}",
        describe(&detail)
    );
    let exec = detail.execution.clone().unwrap();
    assert_eq!((exec.passed, exec.failed, exec.errored), (3, 0, 0));
    // Attempt 1 ended errored by the infrastructure, retried; attempt 2 passed.
    let statuses = final_statuses(&sb, &id).await;
    let first = statuses
        .iter()
        .find(|s| s.attempt == 1)
        .unwrap_or_else(|| panic!("no end of attempt 1: {statuses:?}"));
    assert_eq!(first.state(), assay_proto::ShardState::Errored, "{first:?}");
    assert!(first.reason.contains("OOMKilled"), "{}", first.reason);
    assert!(first.will_retry, "{first:?}");
    assert!(
        statuses
            .iter()
            .any(|s| s.attempt == 2 && s.state() == assay_proto::ShardState::Passed),
        "{statuses:?}"
    );
    stop_all(&stop, tasks).await;
}

#[ignore = "needs a real cluster: make test-k8s"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_launcher_restarted_mid_run_adopts_the_shard_pod() {
    let real = Real::from_env();
    real.set_up(&["ci", "tests"]);
    let tests = real.ns("tests");
    apply(&real.workflow("slow", &["a", "b"], "sleep 20; ", "", ""));
    let client = assay_cluster::client(None).await.unwrap();
    let mut sb = Sandbox::empty_listening("0.0.0.0", &[]).await;
    sb.start_service(Service::Aggregator);
    let stop = CancellationToken::new();
    let watch = assay_trigger_watcher::cluster::ClusterStatus::default();
    let mut tasks = scheduler_and_watcher(&real, &sb, &client, 0, &watch, &stop);
    let seen = record_pods(&client, &tests, &stop);
    let first_life = CancellationToken::new();
    let first = launcher(&real, &sb, 0, 2, &first_life);
    let id = sb.run("slow", &[]).await;
    let until = Instant::now() + Duration::from_secs(300);
    while !seen
        .lock()
        .unwrap()
        .values()
        .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    {
        assert!(Instant::now() < until, "the shard Pod never ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    first_life.cancel();
    let _ = first.await;
    tasks.push(launcher(&real, &sb, 1, 2, &stop));
    let detail = sb.wait_for_terminal(&id, Duration::from_secs(300)).await;
    assert_eq!(
        status_of(&detail),
        ExecutionStatus::Passed,
        "{}",
        describe(&detail)
    );
    let exec = detail.execution.clone().unwrap();
    assert_eq!((exec.passed, exec.failed, exec.errored), (2, 0, 0));
    let pods = pods_of(&seen, &id);
    assert_eq!(pods.len(), 1, "a second Pod was created: {pods:?}");
    stop_all(&stop, tasks).await;
}
