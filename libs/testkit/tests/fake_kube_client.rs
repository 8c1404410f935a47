//! The fake API server against the real `kube` client: CRUD, selectors, the status
//! subresource, patches and apply, CRDs, logs, 400/403/422, dry runs.

mod common;

use assay_testkit::kube::FakeKube;
use common::{PATIENCE, api_error, next, pod};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams,
    PostParams, WatchEvent, WatchParams,
};
use kube::core::GroupVersionKind;
use serde_json::json;

#[tokio::test]
async fn crud_with_conflicts_and_not_found() {
    let fake = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "settings"}, "data": {"a": "1"}
    }))
    .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    let rv: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();

    let dup = api_error(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert!(dup.is_already_exists(), "{dup:?}");
    assert_eq!(dup.code, 409);

    let mut changed = created.clone();
    changed.data = Some([("a".to_string(), "2".to_string())].into());
    let replaced = cms
        .replace("settings", &PostParams::default(), &changed)
        .await
        .unwrap();
    let rv2: u64 = replaced
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv);
    // `changed` still carries the old resourceVersion.
    let stale = api_error(
        cms.replace("settings", &PostParams::default(), &changed)
            .await
            .unwrap_err(),
    );
    assert!(stale.is_conflict(), "{stale:?}");

    assert_eq!(cms.get("settings").await.unwrap().data.unwrap()["a"], "2");
    let mut watch = cms
        .watch(&WatchParams::default(), &rv2.to_string())
        .await
        .unwrap()
        .boxed();
    cms.delete("settings", &DeleteParams::default())
        .await
        .unwrap();
    match next(&mut watch).await {
        WatchEvent::Deleted(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("settings")),
        other => panic!("expected DELETED, got {other:?}"),
    }
    let gone = api_error(cms.get("settings").await.unwrap_err());
    assert!(gone.is_not_found() && gone.code == 404, "{gone:?}");
    assert!(fake.get("configmaps", "default", "settings").is_none());
}

#[tokio::test]
async fn list_filters_by_label_and_field_selectors() {
    let fake = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    for (name, labels) in [
        ("web-1", json!({"app": "web", "tier": "front"})),
        ("web-2", json!({"app": "web"})),
        ("db-1", json!({"app": "db", "tier": "back"})),
        ("job-1", json!({})),
    ] {
        pods.create(&PostParams::default(), &pod(name, labels))
            .await
            .unwrap();
    }
    let other: Api<Pod> = Api::namespaced(fake.client(), "other");
    other
        .create(&PostParams::default(), &pod("web-9", json!({"app": "web"})))
        .await
        .unwrap();

    let names = |selector: &str, fields: &str| {
        let pods = pods.clone();
        let lp = ListParams::default().labels(selector).fields(fields);
        async move {
            let mut n: Vec<String> = pods
                .list(&lp)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|p| p.metadata.name.unwrap())
                .collect();
            n.sort();
            n
        }
    };
    assert_eq!(names("app=web", "").await, ["web-1", "web-2"]);
    assert_eq!(names("app!=web", "").await, ["db-1", "job-1"]);
    assert_eq!(names("app in (db,web),tier", "").await, ["db-1", "web-1"]);
    assert_eq!(names("app notin (web)", "").await, ["db-1", "job-1"]);
    assert_eq!(names("!tier", "").await, ["job-1", "web-2"]);
    assert_eq!(names("", "metadata.name=web-2").await, ["web-2"]);
    assert_eq!(names("app=web", "metadata.name!=web-2").await, ["web-1"]);

    let all: Api<Pod> = Api::all(fake.client());
    let lp = ListParams::default()
        .labels("app=web")
        .fields("metadata.namespace=other");
    assert_eq!(all.list(&lp).await.unwrap().items.len(), 1);
    assert_eq!(
        all.list(&ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
}

#[tokio::test]
async fn status_subresource_is_separate_from_the_main_resource() {
    let fake = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    let mut p = pod("a", json!({}));
    p.status = Some(serde_json::from_value(json!({"phase": "Running"})).unwrap());
    let created = pods.create(&PostParams::default(), &p).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));

    let status = json!({"status": {"phase": "Running"}});
    let running = pods
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(
        running.status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );
    assert_eq!(running.metadata.generation, Some(1));

    // A main-resource write changes the spec, ignores the status, bumps the generation.
    let mut next = running.clone();
    next.status = Some(serde_json::from_value(json!({"phase": "Failed"})).unwrap());
    next.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    let updated = pods
        .replace("a", &PostParams::default(), &next)
        .await
        .unwrap();
    assert_eq!(
        updated.status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );
    assert_eq!(updated.metadata.generation, Some(2));

    // A status write ignores the spec.
    let mut only_status = updated.clone();
    only_status.spec.as_mut().unwrap().restart_policy = Some("Always".into());
    only_status.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
    let done = pods
        .replace_status("a", &PostParams::default(), &only_status)
        .await
        .unwrap();
    assert_eq!(done.status.unwrap().phase.as_deref(), Some("Succeeded"));
    assert_eq!(done.spec.unwrap().restart_policy.as_deref(), Some("Never"));
    assert_eq!(done.metadata.generation, Some(2));
}

#[tokio::test]
async fn merge_json_patch_and_server_side_apply() {
    let fake = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    let ssa = PatchParams::apply("assay-test");
    let first = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"x": "1"}});
    let created = cms.patch("c", &ssa, &Patch::Apply(&first)).await.unwrap();
    assert_eq!(created.data.as_ref().unwrap()["x"], "1");
    let again = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c"}, "data": {"y": "2"}});
    let applied = cms.patch("c", &ssa, &Patch::Apply(&again)).await.unwrap();
    assert_eq!(applied.data.as_ref().unwrap()["y"], "2");

    let merge = json!({"data": {"x": null, "z": "3"}, "metadata": {"labels": {"b": "2"}}});
    let merged = cms
        .patch("c", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .unwrap();
    let data = merged.data.unwrap();
    assert!(!data.contains_key("x"));
    assert_eq!((data["y"].as_str(), data["z"].as_str()), ("2", "3"));
    assert_eq!(merged.metadata.labels.unwrap().len(), 2);

    // kube's typed JSON patch needs a feature the workspace does not enable: send it raw.
    let request = axum::http::Request::patch("/api/v1/namespaces/default/configmaps/c")
        .header("content-type", "application/json-patch+json")
        .body(
            serde_json::to_vec(&json!([{"op": "replace", "path": "/data/z", "value": "4"}]))
                .unwrap(),
        )
        .unwrap();
    let patched: ConfigMap = fake.client().request(request).await.unwrap();
    assert_eq!(patched.data.unwrap()["z"], "4");

    let stale = json!({"metadata": {"resourceVersion": "1"}, "data": {"q": "1"}});
    let e = api_error(
        cms.patch("c", &PatchParams::default(), &Patch::Merge(&stale))
            .await
            .unwrap_err(),
    );
    assert!(e.is_conflict());
}

#[tokio::test]
async fn a_created_crd_serves_its_custom_resources() {
    let fake = FakeKube::start().await.unwrap();
    let client = fake.client();
    let crd: CustomResourceDefinition =
        serde_norway::from_str(include_str!("fixtures/testworkflow-crd.yaml")).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let established = kube::runtime::wait::await_condition(
        crds.clone(),
        "testworkflows.assay.dev",
        kube::runtime::wait::conditions::is_crd_established(),
    );
    tokio::time::timeout(PATIENCE, established)
        .await
        .unwrap()
        .unwrap();

    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .unwrap();
    let gvk = GroupVersionKind::gvk("assay.dev", "v1alpha1", "TestWorkflow");
    let (ar, caps) = discovery
        .resolve_gvk(&gvk)
        .expect("TestWorkflow is discoverable");
    assert_eq!(ar.plural, "testworkflows");
    assert!(
        caps.supports_operation("status")
            || caps.subresources.iter().any(|(s, _)| s.plural == "status"),
        "{caps:?}"
    );

    let ar = ApiResource::from_gvk_with_plural(&gvk, "testworkflows");
    let workflows: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let wf: DynamicObject =
        serde_norway::from_str(include_str!("fixtures/testworkflow.yaml")).unwrap();
    let created = workflows.create(&PostParams::default(), &wf).await.unwrap();
    assert_eq!(created.data["spec"]["steps"][0]["name"], "unit");
    let status = json!({"status": {"phase": "Running"}});
    workflows
        .patch_status("api-e2e", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let listed = workflows
        .list(&ListParams::default().labels("team=payments"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].data["status"]["phase"], "Running");
    assert_eq!(
        fake.get("testworkflows.assay.dev", "default", "api-e2e")
            .unwrap()["status"]["phase"],
        "Running"
    );

    crds.delete("testworkflows.assay.dev", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api_error(workflows.list(&ListParams::default()).await.unwrap_err()).code,
        404
    );
}

#[tokio::test]
async fn forbidden_verbs_and_rejected_creates() {
    let fake = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    fake.forbid("list", "", "pods");
    let e = api_error(pods.list(&ListParams::default()).await.unwrap_err());
    assert!(e.is_forbidden() && e.code == 403, "{e:?}");
    fake.allow("list", "", "pods");
    pods.list(&ListParams::default()).await.unwrap();

    fake.reject_create("", "pods", "spec.containers: Required value");
    let e = api_error(
        pods.create(&PostParams::default(), &pod("a", json!({})))
            .await
            .unwrap_err(),
    );
    assert!(e.is_invalid() && e.code == 422, "{e:?}");
    assert!(e.message.contains("spec.containers"));
}

#[tokio::test]
async fn pod_logs_and_follow() {
    let fake = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    pods.create(&PostParams::default(), &pod("a", json!({})))
        .await
        .unwrap();
    fake.append_log("default", "a", "main", "hello\n");
    assert_eq!(
        pods.logs("a", &LogParams::default()).await.unwrap(),
        "hello\n"
    );

    let follow = LogParams {
        follow: true,
        ..Default::default()
    };
    let mut lines = pods.log_stream("a", &follow).await.unwrap().lines();
    let first = tokio::time::timeout(PATIENCE, lines.try_next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.as_deref(), Some("hello"));
    fake.append_log("default", "a", "main", "world\n");
    let second = tokio::time::timeout(PATIENCE, lines.try_next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.as_deref(), Some("world"));
    fake.close_log("default", "a", "main");
    let end = tokio::time::timeout(PATIENCE, lines.try_next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, None);

    let missing = api_error(pods.logs("nope", &LogParams::default()).await.unwrap_err());
    assert!(missing.is_not_found());
}

#[tokio::test]
async fn delete_collection_and_namespace_deletion() {
    use k8s_openapi::api::core::v1::Namespace;
    let fake = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "team");
    for (name, app) in [("a", "web"), ("b", "web"), ("c", "db")] {
        pods.create(&PostParams::default(), &pod(name, json!({"app": app})))
            .await
            .unwrap();
    }
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("app=web"),
    )
    .await
    .unwrap();
    let left: Vec<_> = fake
        .list("pods", Some("team"))
        .iter()
        .map(|p| p["metadata"]["name"].clone())
        .collect();
    assert_eq!(left, [json!("c")]);

    let namespaces: Api<Namespace> = Api::all(fake.client());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    namespaces
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    assert!(fake.list("pods", Some("team")).is_empty());
}

#[tokio::test]
async fn malformed_bodies_are_400_not_a_crash() {
    let fake = FakeKube::start().await.unwrap();
    let client = fake.client();
    let send = |method: &str, path: &str, content_type: &str, body: &str| {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type)
            .body(body.as_bytes().to_vec())
            .unwrap();
        let client = client.clone();
        async move { api_error(client.request::<ConfigMap>(request).await.unwrap_err()).code }
    };
    let cms = "/api/v1/namespaces/default/configmaps";
    assert_eq!(send("POST", cms, "application/json", "[1]").await, 400);
    assert_eq!(send("POST", cms, "application/json", "{").await, 400);
    let apply = "application/apply-patch+yaml";
    assert_eq!(send("PATCH", &format!("{cms}/x"), apply, "- 1").await, 400);
    assert_eq!(
        send("PATCH", &format!("{cms}/x"), apply, "metadata: 3").await,
        400
    );
    fake.put(
        "configmaps",
        json!({"metadata": {"name": "x", "namespace": "default"}}),
    )
    .unwrap();
    let merge = "application/merge-patch+json";
    assert_eq!(
        send("PATCH", &format!("{cms}/x"), merge, r#"{"metadata": 3}"#).await,
        400
    );
    assert_eq!(
        send(
            "PUT",
            &format!("{cms}/x"),
            "application/json",
            r#"{"metadata": []}"#
        )
        .await,
        400
    );
    assert_eq!(
        send("PATCH", &format!("{cms}/x"), "text/plain", "{}").await,
        415
    );
    // The server still answers.
    assert!(fake.get("configmaps", "default", "x").is_some());
    let cm: ConfigMap = client
        .request(
            axum::http::Request::get(format!("{cms}/x"))
                .body(vec![])
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(cm.metadata.name.as_deref(), Some("x"));
}

#[tokio::test]
async fn dry_run_writes_change_nothing() {
    let fake = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let rv = fake.resource_version();
    let answered = cms.create(&dry, &cm).await.unwrap();
    assert_eq!(answered.metadata.name.as_deref(), Some("c"));
    assert!(fake.get("configmaps", "default", "c").is_none());
    assert_eq!(fake.resource_version(), rv);

    cms.create(&PostParams::default(), &cm).await.unwrap();
    let dry_delete = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    cms.delete("c", &dry_delete).await.unwrap();
    assert!(fake.get("configmaps", "default", "c").is_some());
}
