//! Helpers of the cluster catalog's tests: a fake API server with the CRDs installed, objects
//! created through the real kube client, and waiting on observable conditions.

#![allow(dead_code)]

use std::time::Duration;

use assay_testkit::kube::FakeKube;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};

use assay_cluster::Kind;

/// Upper bound for anything to happen; reaching it is a failure.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A fake API server with both CRDs created through its API, from the Rust types.
pub async fn fake_with_crds() -> FakeKube {
    let fake = FakeKube::start().await.expect("the fake starts");
    let crds: Api<CustomResourceDefinition> = Api::all(fake.client());
    for crd in assay_spec::crd::crds() {
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("a CRD is created");
    }
    fake
}

pub fn api(fake: &FakeKube, kind: Kind, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(fake.client(), ns, &kind.api_resource())
}

/// Creates an object of `kind` with this `spec` (anything, valid or not).
pub async fn create(fake: &FakeKube, kind: Kind, ns: &str, name: &str, spec: Value) {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": assay_spec::API_VERSION,
        "kind": kind.kind(),
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap();
    api(fake, kind, ns)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

/// Replaces the object's spec (get, then update with the resourceVersion read).
pub async fn set_spec(fake: &FakeKube, kind: Kind, ns: &str, name: &str, spec: Value) {
    let api = api(fake, kind, ns);
    let mut obj = api.get(name).await.unwrap();
    obj.data["spec"] = spec;
    api.replace(name, &PostParams::default(), &obj)
        .await
        .unwrap();
}

pub async fn delete(fake: &FakeKube, kind: Kind, ns: &str, name: &str) {
    api(fake, kind, ns)
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
}

/// A workflow with one step.
pub fn workflow(cmd: &str) -> Value {
    json!({"steps": [{"name": "test", "run": cmd}]})
}

/// A cron trigger that runs `workflow`.
pub fn trigger(workflow: &str) -> Value {
    json!({"on": {"cron": {"schedule": "0 3 * * *"}}, "run": {"workflow": workflow}})
}

/// Waits until `check` gives `Some`, polling; fails the test with `what` after
/// [`PATIENCE`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The object's condition of `type_`, as stored in the fake.
pub fn condition(fake: &FakeKube, kind: Kind, ns: &str, name: &str, type_: &str) -> Option<Value> {
    let obj = fake.get(kind.resource(), ns, name)?;
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Events in `ns` about the object `name`.
pub async fn events_about(fake: &FakeKube, ns: &str, name: &str) -> Vec<Value> {
    let events: Api<DynamicObject> = Api::namespaced_with(
        fake.client(),
        ns,
        &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Event>(&()),
    );
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .filter(|e| e["involvedObject"]["name"] == name)
        .collect()
}
