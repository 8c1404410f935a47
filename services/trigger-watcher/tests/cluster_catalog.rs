//! The trigger-watcher with `--catalog kubernetes`, against the fake API server and a real
//! nats-server: `POST /v1/workflows/{name}/run` knows exactly the valid `TestWorkflow`
//! objects of its namespace, as they are created and deleted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use assay_cluster::{CatalogSource, Kind, KubeSource, Scope};
use assay_testkit::kube::FakeKube;
use assay_testkit::{NatsServer, free_port};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_workflow(api: &Api<DynamicObject>, name: &str, run: &str) {
    let obj = serde_json::from_value(json!({
        "apiVersion": "assay.dev/v1alpha1", "kind": "TestWorkflow",
        "metadata": {"name": name, "namespace": "ci"},
        "spec": {"steps": [{"name": "s", "run": run}]},
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
}

/// `POST /v1/workflows/{name}/run`: the status code and body.
async fn run(http: &reqwest::Client, addr: SocketAddr, name: &str) -> Option<(u16, String)> {
    let res = http
        .post(format!("http://{addr}/v1/workflows/{name}/run"))
        .json(&json!({}))
        .send()
        .await
        .ok()?;
    Some((res.status().as_u16(), res.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_accepted_for_exactly_the_valid_workflow_objects() {
    let fake = FakeKube::start().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(fake.client());
    for crd in assay_spec::crd::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(fake.client(), "ci", &Kind::Workflow.api_resource());
    create_workflow(&api, "smoke", "echo hi").await;
    create_workflow(&api, "broken", "echo {{ config.nope }}").await;

    let server = NatsServer::start();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn(assay_trigger_watcher::run(
        assay_trigger_watcher::Options {
            nats: assay_bus::NatsOptions {
                url: server.url(),
                ..Default::default()
            },
            workflows: PathBuf::from("/nonexistent/assay"),
            catalog: CatalogSource::Kubernetes(KubeSource {
                scope: Some(Scope::Namespace("ci".into())),
                kubeconfig: Some(fake.kubeconfig_file().unwrap()),
            }),
            http: addr,
            ..Default::default()
        },
        shutdown.clone(),
    ));
    let http = reqwest::Client::new();
    let (code, body) = wait_for("the HTTP server", async || run(&http, addr, "smoke").await).await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = run(&http, addr, "broken").await.unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains("workflow \\\"broken\\\" not found in namespace ci (known: smoke)"),
        "{body}"
    );
    // The trigger-watcher only reads: status is the scheduler's to write.
    assert!(
        fake.get("testworkflows.assay.dev", "ci", "broken")
            .unwrap()
            .get("status")
            .is_none()
    );

    create_workflow(&api, "later", "echo later").await;
    wait_for("a created workflow to be runnable", async || {
        run(&http, addr, "later").await.filter(|(c, _)| *c == 202)
    })
    .await;
    api.delete("smoke", &DeleteParams::default()).await.unwrap();
    let (_, body) = wait_for("a deleted workflow to be refused", async || {
        run(&http, addr, "smoke").await.filter(|(c, _)| *c == 404)
    })
    .await;
    assert!(body.contains("known: later"), "{body}");
    shutdown.cancel();
    watcher.await.unwrap().unwrap();
}
