//! Issue 12 end to end on the fake cluster: a Deployment rollout in `FakeKube` starts the
//! suite of a `TestWorkflow` object, checked out from a git revision, as one Pod per shard
//! (`KubeletSim` runs each Pod's containers as local processes: the init container copies
//! the real `assay-runner`, which really checks out, runs and reports), with exact counts,
//! two replicas of every service sharing one nats-server, and the shard Pods' logs read
//! with the real `kubectl`. Build the binaries first: `cargo build --bins` (`make test`
//! does).

use assay_testkit::suite::{JUNIT_SUITE_SH, git};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assay_cluster::{CatalogSource, KubeSource, Scope};
use assay_integration::{
    Sandbox, Service, ServiceTask, describe, nats_as, spawn_service, status_of,
};
use assay_proto::ExecutionStatus;
use assay_testkit::kube::{FakeKube, KubeletSim};
use futures::StreamExt as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A bare repository whose tag `v1` holds 8 tests (5 pass, 2 fail, 1 skips); `main` later
/// gains a ninth, so a run at `v1` shows that the revision was honoured. Returns its URL.
fn repository(root: &Path) -> String {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("suite.sh"), JUNIT_SUITE_SH).unwrap();
    std::fs::write(
        work.join("ids.txt"),
        "t1\nt2\nt3-fail\nt4\nt5-skip\nt6\nt7-fail\nt8\n",
    )
    .unwrap();
    git(&work, &["init", "-q"]);
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "suite"]);
    git(&work, &["tag", "v1"]);
    std::fs::write(
        work.join("ids.txt"),
        "t1\nt2\nt3-fail\nt4\nt5-skip\nt6\nt7-fail\nt8\nt9-new\n",
    )
    .unwrap();
    git(&work, &["commit", "-qam", "a ninth test"]);
    let bare = root.join("suite.git");
    git(
        root,
        &["clone", "-q", "--bare", "work", bare.to_str().unwrap()],
    );
    bare.display().to_string()
}

/// Acts as the Deployment controller rolling out `shop/payments` as `revision`.
fn roll_out(fake: &FakeKube, revision: &str) {
    let steps: [[i64; 4]; 4] = [[1, 0, 0, 3], [2, 1, 1, 3], [2, 2, 1, 2], [2, 2, 2, 2]];
    for [updated, ready, available, replicas] in steps {
        let mut d = fake.get("deployments.apps", "shop", "payments").unwrap();
        d["metadata"]["annotations"] = json!({"deployment.kubernetes.io/revision": revision});
        d["status"] = json!({
            "observedGeneration": d["metadata"]["generation"],
            "updatedReplicas": updated, "readyReplicas": ready,
            "availableReplicas": available, "replicas": replicas,
        });
        fake.put("deployments.apps", d).unwrap();
    }
}

/// The cluster catalog of namespace `ci` in the fake.
fn catalog(fake: &FakeKube) -> CatalogSource {
    CatalogSource::Kubernetes(KubeSource {
        scope: Some(Scope::Namespace("ci".into())),
        kubeconfig: Some(fake.kubeconfig_file().unwrap()),
    })
}

/// One replica of each of scheduler, trigger-watcher (watching the cluster) and
/// executor-launcher (Pods in `tests`), reading the cluster's catalog.
fn replicas(
    fake: &FakeKube,
    sb: &Sandbox,
    n: usize,
    watch: &assay_trigger_watcher::cluster::ClusterStatus,
    shutdown: &CancellationToken,
) -> Vec<ServiceTask> {
    let url = sb.nats.url();
    let mut tasks: Vec<ServiceTask> = Vec::new();
    let scheduler = assay_scheduler::Options {
        nats: nats_as(&url, &format!("scheduler-{n}")),
        catalog: catalog(fake),
        ..Default::default()
    };
    let t = shutdown.clone();
    tasks.push(spawn_service(assay_scheduler::run(scheduler, t)));
    let watcher = assay_trigger_watcher::Options {
        nats: nats_as(&url, &format!("trigger-watcher-{n}")),
        catalog: catalog(fake),
        http: std::net::SocketAddr::from(([127, 0, 0, 1], assay_testkit::free_port())),
        cluster: assay_trigger_watcher::cluster::ClusterOptions {
            enabled: true,
            client: Some(fake.client()),
            status: watch.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let t = shutdown.clone();
    tasks.push(spawn_service(assay_trigger_watcher::run(watcher, t)));
    let runner = assay_executor_launcher::find_runner(None)
        .unwrap_or_else(|e| panic!("{e} (cargo build --bins)"));
    let launcher = assay_executor_launcher::Options {
        nats: nats_as(&url, &format!("executor-launcher-{n}")),
        backend: assay_executor_launcher::BackendKind::Kubernetes,
        capacity: 2,
        ack_wait: Duration::from_secs(6),
        kube: assay_executor_launcher::KubeOptions {
            namespace: "tests".into(),
            runner_image: "assay-runner:e2e".into(),
            runner_path: runner.display().to_string(),
            ..Default::default()
        },
        kubeconfig: Some(fake.kubeconfig_file().unwrap()),
        reap_every: Duration::from_millis(500),
        ..Default::default()
    };
    let t = shutdown.clone();
    tasks.push(spawn_service(assay_executor_launcher::run(launcher, t)));
    tasks
}

/// Every Pod of namespace `tests` the API showed, by name, as last seen.
fn record_pods(fake: &FakeKube) -> Arc<Mutex<BTreeMap<String, Value>>> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let api: Api<DynamicObject> = Api::namespaced_with(
        fake.client(),
        "tests",
        &kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
    );
    let record = seen.clone();
    tokio::spawn(async move {
        // With a backoff: without one, a watcher whose server is gone retries in a loop
        // that never yields, and the runtime's shutdown waits for it forever.
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(e) = events.next().await {
            if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = e {
                let name = p.metadata.name.clone().unwrap_or_default();
                record
                    .lock()
                    .unwrap()
                    .insert(name, serde_json::to_value(&p).unwrap());
            }
        }
    });
    seen
}

/// `kubectl logs -f` of the first Pod that runs in namespace `tests`: its whole output.
fn follow_first_pod_log(fake: &FakeKube) -> JoinHandle<String> {
    let kubeconfig = fake.kubeconfig_file().unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(
        fake.client(),
        "tests",
        &kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
    );
    tokio::spawn(async move {
        let name = loop {
            let running = api
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|p| p.data["status"]["phase"] == "Running");
            if let Some(p) = running {
                break p.metadata.name.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let out = tokio::process::Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .args(["logs", "-f", "-n", "tests", &name])
            .output()
            .await
            .expect("run kubectl (is it on PATH?)");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_rollout_runs_a_git_suite_as_pods_on_two_replicas_of_every_service() {
    let fake = FakeKube::start().await.unwrap();
    let _kubelet = KubeletSim::start(&fake, "node-a");
    let crds: Api<CustomResourceDefinition> = Api::all(fake.client());
    for crd in assay_spec::crd::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let repos = tempfile::tempdir().unwrap();
    let url = repository(repos.path());
    fake.put(
        "testworkflows.assay.dev",
        json!({
            "apiVersion": "assay.dev/v1alpha1", "kind": "TestWorkflow",
            "metadata": {"name": "payments-e2e", "namespace": "ci"},
            "spec": {
                "content": {"git": {"url": url, "revision": "v1"}},
                "container": {"image": "registry.example/payments-tests:1"},
                // The suite sleeps a second, so `kubectl logs -f` finds the Pod running.
                "env": {"HOLD": "1"},
                "pod": {"labels": {"team": "payments"}},
                "tests": {"list": "cat ids.txt", "run": "sh suite.sh {report} {tests}", "reports": ["{report}"]},
                "parallel": {"count": 2},
            },
        }),
    )
    .unwrap();
    fake.put(
        "testtriggers.assay.dev",
        json!({
            "apiVersion": "assay.dev/v1alpha1", "kind": "TestTrigger",
            "metadata": {"name": "after-payments-rollout", "namespace": "ci"},
            "spec": {
                "on": {"kubernetes": {"kind": "Deployment", "namespace": "shop",
                                      "selector": {"app": "payments"}, "event": "rollout-complete"}},
                "run": {"workflow": "payments-e2e"},
            },
        }),
    )
    .unwrap();
    fake.put(
        "deployments.apps",
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "payments", "namespace": "shop", "labels": {"app": "payments"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "payments"}},
                     "template": {"metadata": {"labels": {"app": "payments"}},
                                  "spec": {"containers": [{"name": "app", "image": "shop/payments:2"}]}}}
        }),
    )
    .unwrap();

    // Two replicas of every service: two aggregators on one database, and two of each of
    // the others.
    let mut sb = Sandbox::empty(&[]).await;
    sb.start_service(Service::Aggregator);
    let shutdown = CancellationToken::new();
    let watches = [
        assay_trigger_watcher::cluster::ClusterStatus::default(),
        assay_trigger_watcher::cluster::ClusterStatus::default(),
    ];
    let mut tasks = replicas(&fake, &sb, 1, &watches[0], &shutdown);
    let until = Instant::now() + Duration::from_secs(60);
    while watches[0].lists("Deployment") == 0 {
        assert!(
            Instant::now() < until,
            "the first watcher never listed Deployments"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tasks.extend(replicas(&fake, &sb, 2, &watches[1], &shutdown));
    let second_aggregator = assay_result_aggregator::Options {
        nats: nats_as(&sb.nats.url(), "result-aggregator-2"),
        database: sb.database(),
        grpc: std::net::SocketAddr::from(([127, 0, 0, 1], assay_testkit::free_port())),
        ..Default::default()
    };
    let t = shutdown.clone();
    tasks.push(spawn_service(assay_result_aggregator::run(
        second_aggregator,
        t,
    )));
    // Both watchers have listed the Deployment before it rolls out (the first list records
    // what exists and fires nothing).
    let until = Instant::now() + Duration::from_secs(60);
    while watches.iter().any(|w| w.lists("Deployment") == 0) {
        let errors: Vec<_> = watches.iter().map(|w| w.errors()).collect();
        assert!(
            Instant::now() < until,
            "the watchers never listed Deployments: {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let seen = record_pods(&fake);
    let logs = follow_first_pod_log(&fake);
    roll_out(&fake, "1");

    let until = Instant::now() + Duration::from_secs(90);
    let id = loop {
        if let Some(e) = sb.executions("payments-e2e", 10).await.first() {
            break e.execution_id.clone();
        }
        assert!(Instant::now() < until, "the rollout started no execution");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let detail = sb.wait_for_terminal(&id, Duration::from_secs(120)).await;
    assert_eq!(
        status_of(&detail),
        ExecutionStatus::Failed,
        "{}",
        describe(&detail)
    );
    let exec = detail.execution.clone().unwrap();
    // Exactly the 8 tests of `v1` (the ninth on main is not there), none twice.
    assert_eq!(
        (exec.passed, exec.failed, exec.skipped, exec.errored),
        (5, 2, 1, 0),
        "{}",
        describe(&detail)
    );
    assert_eq!(
        exec.provenance.as_ref().unwrap().trigger,
        "after-payments-rollout"
    );

    // One execution for the one rollout, although two watchers saw it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sb.execution_count("payments-e2e").await, 1);

    // One Pod per shard (no second one from the other launcher), labelled, and the real
    // kubectl read a shard Pod's log while it ran.
    let pods = seen.lock().unwrap().clone();
    let ours: Vec<&Value> = pods
        .values()
        .filter(|p| p["metadata"]["labels"]["assay.dev/execution"] == id.as_str())
        .collect();
    let names: Vec<&str> = ours
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "one Pod per shard: {names:?}");
    for p in &ours {
        assert_eq!(p["metadata"]["labels"]["team"], "payments", "{p:#}");
    }
    let log = logs.await.unwrap();
    // The runner's first line names the shard it runs.
    assert!(
        log.contains(&format!("assay-runner: execution {id} shard ")),
        "kubectl logs -f of a shard Pod:\n{log}"
    );

    shutdown.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
    }
}
