//! Which triggers a change fires, with which labels, payload and key.

use serde_json::json;

use super::*;

/// A trigger's `on.kubernetes` block, written as JSON (what the watcher reads from a
/// custom resource).
fn trigger(block: Value) -> KubernetesMatch {
    serde_json::from_value(block).unwrap()
}

/// A complete Deployment at `revision` with `replicas`, `image` and labels.
fn deployment(rv: u32, revision: &str, replicas: i64, image: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": "payments", "namespace": "shop", "uid": "u-1",
            "resourceVersion": rv.to_string(), "generation": rv,
            "labels": labels,
            "annotations": {"deployment.kubernetes.io/revision": revision},
            "managedFields": [{"manager": "kubectl"}]
        },
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
        "status": {"observedGeneration": rv, "updatedReplicas": replicas, "readyReplicas": replicas,
                   "availableReplicas": replicas, "replicas": replicas}
    })
}

fn progressing(mut d: Value) -> Value {
    d["status"]["availableReplicas"] = json!(0);
    d
}

fn keys(fired: &[Firing]) -> Vec<String> {
    fired.iter().map(|f| f.key.clone()).collect()
}

#[test]
fn the_design_example_fires_once_per_revision_with_what_was_deployed() {
    let m = trigger(json!({
        "kind": "Deployment", "namespace": "shop", "selector": {"app": "payments"},
        "event": "rollout-complete"
    }));
    let app = json!({"app": "payments"});
    let before = progressing(deployment(10, "4", 3, "shop/app:2", app.clone()));
    let done = deployment(11, "4", 3, "shop/app:2", app.clone());
    let (fired, skipped) = decide("e2e", &m, "Deployment", Some(&before), Some(&done));
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(keys(&fired), ["kubernetes/e2e/u-1/rollout-complete/4"]);
    let ev = &fired[0].event;
    assert_eq!(ev.source, "kubernetes");
    assert_eq!(ev.r#type, "rollout-complete");
    assert_eq!(ev.trigger, "e2e");
    let header = ev.header.as_ref().unwrap();
    assert_eq!(header.idempotency_key, fired[0].key);
    let label = |k: &str| ev.labels.get(k).map(String::as_str);
    assert_eq!(label("kind"), Some("Deployment"));
    assert_eq!(label("apiVersion"), Some("apps/v1"));
    assert_eq!(label("namespace"), Some("shop"));
    assert_eq!(label("name"), Some("payments"));
    assert_eq!(label("uid"), Some("u-1"));
    assert_eq!(label("revision"), Some("4"));
    assert_eq!(label("event"), Some("rollout-complete"));
    assert_eq!(label("images"), Some("app=shop/app:2"));
    assert_eq!(label("image.app"), Some("shop/app:2"));
    assert_eq!(label("label.app"), Some("payments"));
    // The payload is the object without its managed fields.
    let payload: Value = serde_json::from_slice(&ev.payload).unwrap();
    assert_eq!(payload["metadata"]["name"], "payments");
    assert!(payload["metadata"].get("managedFields").is_none());

    // A resync of the complete object fires nothing; nor does the progressing one before.
    assert!(
        decide("e2e", &m, "Deployment", Some(&done), Some(&done))
            .0
            .is_empty()
    );
    let older = progressing(deployment(9, "4", 3, "shop/app:2", app.clone()));
    assert!(
        decide("e2e", &m, "Deployment", Some(&older), Some(&before))
            .0
            .is_empty()
    );
    // Another trigger on the same change has its own key.
    let other = decide("smoke", &m, "Deployment", Some(&before), Some(&done)).0;
    assert_eq!(keys(&other), ["kubernetes/smoke/u-1/rollout-complete/4"]);
}

#[test]
fn selectors_and_object_filters() {
    let before = |labels: Value| progressing(deployment(1, "1", 1, "a:1", labels));
    let after = |labels: Value| deployment(2, "1", 1, "a:1", labels);
    // (trigger, object labels, fires, reason contains)
    let on = |extra: Value| {
        let mut block = json!({"kind": "Deployment", "event": "rollout-complete"});
        for (k, v) in extra.as_object().unwrap() {
            block[k] = v.clone();
        }
        block
    };
    let tier = |op: &str, values: Value| json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]});
    // (trigger, object labels, fires, reason contains)
    let rows: Vec<(Value, Value, bool, &str)> = vec![
        (on(json!({})), json!({}), true, ""),
        (
            on(json!({"selector": {"app": "pay"}})),
            json!({"app": "pay", "x": "y"}),
            true,
            "",
        ),
        (
            on(json!({"selector": {"app": "pay"}})),
            json!({"app": "web"}),
            false,
            "selector app",
        ),
        (
            on(json!({"selector": {"app": "pay"}})),
            json!({}),
            false,
            "no such label",
        ),
        (
            on(tier("In", json!(["web", "api"]))),
            json!({"tier": "api"}),
            true,
            "",
        ),
        (
            on(tier("In", json!(["web", "api"]))),
            json!({}),
            false,
            "matchExpressions tier In",
        ),
        (
            on(tier("NotIn", json!(["db"]))),
            json!({"tier": "db"}),
            false,
            "matchExpressions tier NotIn",
        ),
        (on(tier("NotIn", json!(["db"]))), json!({}), true, ""),
        (
            on(tier("DoesNotExist", json!([]))),
            json!({"tier": "x"}),
            false,
            "tier DoesNotExist",
        ),
        (on(tier("Exists", json!([]))), json!({"tier": ""}), true, ""),
        (
            on(json!({"namespace": "shop", "name": "pay*"})),
            json!({}),
            true,
            "",
        ),
        (
            on(json!({"namespaces": ["prod", "staging"]})),
            json!({}),
            false,
            "namespace \"shop\"",
        ),
        (
            on(json!({"name": "orders"})),
            json!({}),
            false,
            "name \"payments\"",
        ),
        (
            on(json!({"kind": "StatefulSet"})),
            json!({}),
            false,
            "StatefulSet",
        ),
    ];
    for (yaml, labels, fires, why) in rows {
        let m = trigger(yaml.clone());
        let (fired, skipped) = decide(
            "t",
            &m,
            "Deployment",
            Some(&before(labels.clone())),
            Some(&after(labels.clone())),
        );
        assert_eq!(
            fired.len(),
            usize::from(fires),
            "{yaml} on {labels}: {skipped:?}"
        );
        if !fires {
            assert!(
                skipped.iter().any(|s| s.reason.contains(why)),
                "{yaml}: {skipped:?} should say {why:?}"
            );
        }
    }
}

#[test]
fn field_conditions_on_old_and_new_objects() {
    let d = |rv: u32, replicas: i64, version: Option<&str>| {
        let mut labels = json!({"app": "pay"});
        if let Some(v) = version {
            labels["app.kubernetes.io/version"] = json!(v);
        }
        progressing(deployment(rv, "1", replicas, "a:1", labels))
    };
    let ver = ".metadata.labels[\"app.kubernetes.io/version\"]";
    let c = |path: &str, op: &str, v: Value| json!([{"path": path, op: v}]);
    let both = json!([{"path": ".spec.replicas", "changedTo": 5}, {"path": ver, "equals": "v2"}]);
    // (conditions, old, new, fires)
    let rows: Vec<(Value, Value, Value, bool)> = vec![
        (
            c(".spec.replicas", "equals", json!(5)),
            d(1, 3, None),
            d(2, 5, None),
            true,
        ),
        (
            c(".spec.replicas", "equals", json!(5)),
            d(1, 5, None),
            d(2, 3, None),
            false,
        ),
        (
            c(".spec.replicas", "changed", json!(true)),
            d(1, 3, None),
            d(2, 5, None),
            true,
        ),
        (
            c(".spec.replicas", "changed", json!(true)),
            d(1, 3, None),
            d(2, 3, Some("v1")),
            false,
        ),
        (
            c(".spec.replicas", "changed", json!(false)),
            d(1, 3, None),
            d(2, 3, Some("v1")),
            true,
        ),
        (
            c(ver, "changedTo", json!("v2")),
            d(1, 3, Some("v1")),
            d(2, 3, Some("v2")),
            true,
        ),
        (
            c(ver, "changedTo", json!("v2")),
            d(1, 3, Some("v2")),
            d(2, 4, Some("v2")),
            false,
        ),
        (
            c(ver, "changedTo", json!("v2")),
            d(1, 3, None),
            d(2, 3, Some("v2")),
            true,
        ),
        (
            c(ver, "changedFrom", json!("v1")),
            d(1, 3, Some("v1")),
            d(2, 3, None),
            true,
        ),
        (
            c(ver, "changedFrom", json!("v1")),
            d(1, 3, Some("v0")),
            d(2, 3, Some("v2")),
            false,
        ),
        // A path the object does not have: missing on both sides.
        (
            c(".spec.nope", "equals", json!("x")),
            d(1, 3, None),
            d(2, 5, None),
            false,
        ),
        (
            c(".spec.nope", "changed", json!(true)),
            d(1, 3, None),
            d(2, 5, None),
            false,
        ),
        (
            c(".spec.nope", "changed", json!(false)),
            d(1, 3, None),
            d(2, 5, None),
            true,
        ),
        // Every condition must hold.
        (both.clone(), d(1, 3, None), d(2, 5, Some("v1")), false),
        (both, d(1, 3, None), d(2, 5, Some("v2")), true),
    ];
    for (conditions, old, new, fires) in rows {
        let m =
            trigger(json!({"kind": "Deployment", "event": "modified", "conditions": conditions}));
        let (fired, skipped) = decide("t", &m, "Deployment", Some(&old), Some(&new));
        assert_eq!(fired.len(), usize::from(fires), "{conditions}: {skipped:?}");
        if !fires {
            assert_eq!(skipped.len(), 1, "{conditions}: the reason is given");
        }
    }
    // The values the conditions read travel with the event.
    let m = trigger(
        json!({"kind": "Deployment", "event": "modified", "conditions": c(ver, "changedTo", json!("v2"))}),
    );
    let (fired, _) = decide(
        "t",
        &m,
        "Deployment",
        Some(&d(1, 3, Some("v1"))),
        Some(&d(2, 3, Some("v2"))),
    );
    let l = &fired[0].event.labels;
    assert_eq!(
        l.get(&format!("field:{ver}")).map(String::as_str),
        Some("v2")
    );
    assert_eq!(
        l.get(&format!("previous:{ver}")).map(String::as_str),
        Some("v1")
    );
}

#[test]
fn created_image_changed_scaled_and_deleted() {
    let app = json!({"app": "pay"});
    let v1 = deployment(1, "1", 2, "a:1", app.clone());
    let v2 = deployment(2, "1", 2, "a:2", app.clone());
    let scaled = deployment(3, "2", 4, "a:2", app.clone());
    let fire = |event: &str, old: Option<&Value>, new: Option<&Value>| {
        let m = trigger(json!({"kind": "Deployment", "event": event}));
        keys(&decide("t", &m, "Deployment", old, new).0)
    };
    assert_eq!(
        fire("created", None, Some(&v1)),
        ["kubernetes/t/u-1/created"]
    );
    assert!(fire("created", Some(&v1), Some(&v2)).is_empty());
    assert_eq!(
        fire("image-changed", Some(&v1), Some(&v2)),
        ["kubernetes/t/u-1/image-changed/2"]
    );
    assert!(fire("image-changed", Some(&v2), Some(&scaled)).is_empty());
    assert_eq!(
        fire("scaled", Some(&v2), Some(&scaled)),
        ["kubernetes/t/u-1/scaled/3"]
    );
    assert_eq!(
        fire("modified", Some(&v2), Some(&scaled)),
        ["kubernetes/t/u-1/modified/3"]
    );
    // Deleted: the labels describe the object as it last was.
    let (fired, _) = decide(
        "t",
        &trigger(json!({"kind": "Deployment", "event": "deleted"})),
        "Deployment",
        Some(&scaled),
        None,
    );
    assert_eq!(keys(&fired), ["kubernetes/t/u-1/deleted"]);
    assert_eq!(
        fired[0].event.labels.get("revision").map(String::as_str),
        Some("2")
    );
}

#[test]
fn pod_events_carry_image_digests() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "p-1", "resourceVersion": "7"},
        "spec": {"containers": [{"name": "web", "image": "shop/web:3"}]},
        "status": {"containerStatuses": [{"name": "web", "imageID": "docker.io/shop/web@sha256:feed"}]}
    });
    let (fired, _) = decide(
        "t",
        &trigger(json!({"kind": "Pod", "event": "created"})),
        "Pod",
        None,
        Some(&pod),
    );
    let l = &fired[0].event.labels;
    assert_eq!(l.get("digest.web").map(String::as_str), Some("sha256:feed"));
    assert_eq!(l.get("image.web").map(String::as_str), Some("shop/web:3"));
    assert_eq!(l.get("revision").map(String::as_str), Some("7"));
}

#[test]
fn secrets_travel_as_metadata_and_huge_objects_are_cut() {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db", "namespace": "shop", "uid": "s-1", "resourceVersion": "1"},
        "data": {"password": "aHVudGVyMg=="}
    });
    let (fired, _) = decide(
        "t",
        &trigger(json!({"kind": "Secret", "event": "created"})),
        "Secret",
        None,
        Some(&secret),
    );
    let text = String::from_utf8(fired[0].event.payload.clone()).unwrap();
    assert!(!text.contains("aHVudGVyMg"), "{text}");
    let big = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "big", "uid": "c-1", "resourceVersion": "1"},
        "data": {"blob": "x".repeat(MAX_PAYLOAD_BYTES)}
    });
    let (fired, _) = decide(
        "t",
        &trigger(json!({"kind": "ConfigMap", "event": "created"})),
        "ConfigMap",
        None,
        Some(&big),
    );
    let payload: Value = serde_json::from_slice(&fired[0].event.payload).unwrap();
    assert_eq!(payload["metadata"]["name"], "big");
    assert!(payload.get("data").is_none());
}
