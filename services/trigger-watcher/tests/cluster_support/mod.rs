//! Shared by the cluster-trigger tests: a trigger-watcher with `--watch-cluster` against
//! the fake Kubernetes API server and a real nats-server, a controller acting on the fake,
//! and readers of what went out.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use assay_bus::{Bus, NatsOptions, streams};
use assay_proto::TriggerEvent;
use assay_testkit::kube::FakeKube;
use assay_testkit::{NatsServer, free_port};
use assay_trigger_watcher::{ClusterOptions, ClusterStatus, Options};
use prost::Message;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any wait may take before the test fails saying what it waited for.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub const WORKFLOW: &str = "apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: smoke}
spec:
  steps: [{name: check, run: \"true\"}]
";

/// A `TestTrigger` named `name` with `on.kubernetes` set to `kubernetes` (flow YAML).
pub fn trigger(name: &str, kubernetes: &str) -> String {
    format!(
        "---\napiVersion: assay.dev/v1alpha1\nkind: TestTrigger\nmetadata: {{name: {name}}}\nspec:\n  on:\n    kubernetes: {kubernetes}\n  run: {{workflow: smoke}}\n"
    )
}

pub fn nats_options(url: &str) -> NatsOptions {
    NatsOptions {
        url: url.to_string(),
        name: "test".into(),
        ..Default::default()
    }
}

/// A running trigger-watcher.
pub struct Watcher {
    pub status: ClusterStatus,
    /// Its HTTP address (no token: open).
    pub http: SocketAddr,
    shutdown: CancellationToken,
    run: JoinHandle<()>,
}

impl Watcher {
    /// Starts one on `dir`'s definitions, watching `fake`; `timeout` ends each watch
    /// request (so a compaction is noticed at the next one).
    pub fn start(nats: &str, dir: &std::path::Path, fake: &FakeKube, timeout: Duration) -> Watcher {
        let options = Options {
            workflows: dir.to_path_buf(),
            cluster: ClusterOptions {
                watch_timeout: timeout,
                ..Default::default()
            },
            ..Default::default()
        };
        Watcher::start_with(nats, fake, options)
    }

    /// Starts one with `options`, its NATS, HTTP address and cluster watch of `fake` set.
    pub fn start_with(nats: &str, fake: &FakeKube, mut options: Options) -> Watcher {
        let status = ClusterStatus::default();
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        options.nats = nats_options(nats);
        options.http = http;
        options.cluster.enabled = true;
        options.cluster.client = Some(fake.client());
        options.cluster.status = status.clone();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let run = tokio::spawn(async move {
            if let Err(e) = assay_trigger_watcher::run(options, token).await {
                panic!("trigger-watcher failed: {e}");
            }
        });
        Watcher {
            status,
            http,
            shutdown,
            run,
        }
    }

    /// Stops it and waits until it has.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.run.await.unwrap();
    }
}

/// NATS, the fake cluster and a definitions directory.
pub struct Env {
    pub nats: NatsServer,
    pub fake: FakeKube,
    pub dir: tempfile::TempDir,
    pub bus: Bus,
    _shutdown: CancellationToken,
}

impl Env {
    pub async fn start(defs: &str) -> Env {
        Env::start_with(defs, assay_testkit::kube::FakeKubeOptions::default()).await
    }

    pub async fn start_with(defs: &str, options: assay_testkit::kube::FakeKubeOptions) -> Env {
        let nats = NatsServer::start();
        let fake = FakeKube::start_with(options).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("defs.yaml"), format!("{WORKFLOW}{defs}")).unwrap();
        let shutdown = CancellationToken::new();
        let bus = Bus::connect(&nats_options(&nats.url()), &shutdown)
            .await
            .unwrap();
        bus.ensure_topology().await.unwrap();
        Env {
            nats,
            fake,
            dir,
            bus,
            _shutdown: shutdown,
        }
    }

    pub fn watcher(&self) -> Watcher {
        Watcher::start(
            &self.nats.url(),
            self.dir.path(),
            &self.fake,
            Duration::from_secs(290),
        )
    }

    /// Every event on `assay.v1.events.kubernetes`, in order.
    pub async fn events(&self) -> Vec<TriggerEvent> {
        let stream = self
            .bus
            .jetstream()
            .get_stream(streams::EVENTS)
            .await
            .unwrap();
        let last = stream.get_info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(m) = stream.get_raw_message(seq).await
                && m.subject.as_str() == "assay.v1.events.kubernetes"
            {
                out.push(TriggerEvent::decode(m.payload.as_ref()).unwrap());
            }
        }
        out
    }

    /// A controller's write: the object as stored, changed by `f`.
    pub fn update(
        &self,
        resource: &str,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Value {
        let mut obj = self
            .fake
            .get(resource, ns, name)
            .unwrap_or_else(|| panic!("{resource} {ns}/{name} not found"));
        f(&mut obj);
        self.fake.put(resource, obj).unwrap()
    }

    /// Creates Deployment `shop/payments` (3 replicas of `image`), not rolled out yet.
    pub fn create_deployment(&self, image: &str) -> Value {
        self.fake
            .put(
                "deployments.apps",
                json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "payments", "namespace": "shop", "labels": {"app": "payments"}},
                    "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "payments"}},
                             "template": {"metadata": {"labels": {"app": "payments"}},
                                          "spec": {"containers": [{"name": "app", "image": image}]}}}
                }),
            )
            .unwrap()
    }

    /// Acts as the Deployment controller rolling out the current spec as `revision`:
    /// surge, one replica at a time, ready, then available.
    pub fn roll_out(&self, revision: &str) {
        let want = self
            .fake
            .get("deployments.apps", "shop", "payments")
            .unwrap()["spec"]["replicas"]
            .as_i64()
            .unwrap();
        let steps: Vec<[i64; 4]> = (1..=want)
            .map(|n| [n, n - 1, n - 1, want + 1])
            .chain([[want, want, want - 1, want], [want, want, want, want]])
            .collect();
        for [updated, ready, available, replicas] in steps {
            let done = [updated, ready, available, replicas] == [want; 4];
            // The controller's `Progressing` condition: `NewReplicaSetAvailable` when the
            // rollout is done, stamped with that time (what a restart catches up by).
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let progressing = if done {
                json!({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                       "lastUpdateTime": now, "lastTransitionTime": now})
            } else {
                json!({"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                       "lastUpdateTime": now, "lastTransitionTime": now})
            };
            self.update("deployments.apps", "shop", "payments", |d| {
                d["metadata"]["annotations"] =
                    json!({"deployment.kubernetes.io/revision": revision});
                d["status"] = json!({
                    "observedGeneration": d["metadata"]["generation"],
                    "updatedReplicas": updated, "readyReplicas": ready,
                    "availableReplicas": available, "replicas": replicas,
                    "conditions": [progressing],
                });
            });
        }
    }
}

/// Waits until `cond` holds, failing with `what` after [`PATIENCE`].
pub async fn wait_until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn label<'a>(ev: &'a TriggerEvent, k: &str) -> &'a str {
    ev.labels.get(k).map(String::as_str).unwrap_or("")
}
