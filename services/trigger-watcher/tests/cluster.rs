//! Kubernetes triggers end to end: the trigger-watcher's cluster watch with the real kube
//! client against the fake API server, publishing to a real nats-server.

mod cluster_support;

use std::time::Duration;

use assay_testkit::kube::FakeKubeOptions;
use cluster_support::*;
use serde_json::json;

const ROLLOUT: &str =
    "{kind: Deployment, namespace: shop, selector: {app: payments}, event: rollout-complete}";

#[tokio::test]
async fn a_deployment_rollout_fires_exactly_one_event_with_what_was_deployed() {
    let env = Env::start(&trigger("e2e-after-rollout", ROLLOUT)).await;
    let w = env.watcher();
    wait_until("the deployments are listed", async || {
        w.status.lists("Deployment") >= 1
    })
    .await;
    let created = env.create_deployment("shop/app:1");
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    env.roll_out("1");
    wait_until("the rollout fired", async || w.status.fired() == 1).await;
    // A status heartbeat and a resync-like rewrite of the complete object: nothing.
    env.update("deployments.apps", "shop", "payments", |d| {
        d["status"]["conditions"] = json!([{"type": "Available", "status": "True"}]);
    });
    // The next rollout (new image, revision 2) is the sentinel: had the heartbeat fired,
    // its event would be before this one.
    env.update("deployments.apps", "shop", "payments", |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("shop/app:2");
    });
    env.roll_out("2");
    wait_until("the second rollout fired", async || w.status.fired() == 2).await;
    let events = env.events().await;
    let got: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e.r#type.as_str(),
                label(e, "revision"),
                label(e, "image.app"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("rollout-complete", "1", "shop/app:1"),
            ("rollout-complete", "2", "shop/app:2")
        ]
    );
    let first = &events[0];
    assert_eq!(first.source, "kubernetes");
    assert_eq!(first.trigger, "e2e-after-rollout");
    assert_eq!(label(first, "kind"), "Deployment");
    assert_eq!(label(first, "namespace"), "shop");
    assert_eq!(label(first, "name"), "payments");
    assert_eq!(label(first, "uid"), uid);
    assert_eq!(
        first.header.as_ref().unwrap().idempotency_key,
        format!("kubernetes/e2e-after-rollout/{uid}/rollout-complete/1")
    );
    let (code, metrics) = assay_testkit::http_get(w.http, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("assay_trigger_watcher_kube_events_total{outcome=\"published\"} 2\n"),
        "{metrics}"
    );
    w.stop().await;
}

#[tokio::test]
async fn ten_modifications_within_the_settle_window_fire_one_event() {
    let env = Env::start(&trigger(
        "config-changed",
        "{kind: ConfigMap, namespace: shop, name: settings, event: modified, settle: 2s}",
    ))
    .await;
    let w = env.watcher();
    wait_until("the configmaps are listed", async || {
        w.status.lists("ConfigMap") >= 1
    })
    .await;
    env.fake
        .put(
            "configmaps",
            json!({"metadata": {"name": "settings", "namespace": "shop"}, "data": {"n": "0"}}),
        )
        .unwrap();
    let mut last = String::new();
    for i in 1..=10 {
        let obj = env.update("configmaps", "shop", "settings", |c| {
            c["data"]["n"] = json!(i.to_string())
        });
        last = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
    }
    wait_until("the burst fired", async || w.status.fired() == 1).await;
    // A change after the burst settles on its own: the sentinel.
    let sentinel = env.update("configmaps", "shop", "settings", |c| {
        c["data"]["n"] = json!("after")
    });
    wait_until("the sentinel fired", async || w.status.fired() == 2).await;
    let events = env.events().await;
    let keys: Vec<String> = events
        .iter()
        .map(|e| {
            e.header
                .as_ref()
                .unwrap()
                .idempotency_key
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let sentinel_rv = sentinel["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        keys,
        [last, sentinel_rv],
        "one event for the burst, for its last change"
    );
    let payload: serde_json::Value = serde_json::from_slice(&events[0].payload).unwrap();
    assert_eq!(payload["data"]["n"], "10");
    w.stop().await;
}

#[tokio::test]
async fn a_relist_after_410_gone_fires_nothing_again() {
    // No bookmarks: the watch resumes from the last event it saw, which compaction expires.
    let env = Env::start_with(
        &trigger("e2e-after-rollout", ROLLOUT),
        FakeKubeOptions {
            bookmark_interval: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .await;
    let w = Watcher::start(
        &env.nats.url(),
        env.dir.path(),
        &env.fake,
        Duration::from_secs(1),
    );
    wait_until("the deployments are listed", async || {
        w.status.lists("Deployment") >= 1
    })
    .await;
    env.create_deployment("shop/app:1");
    env.roll_out("1");
    wait_until("the rollout fired", async || w.status.fired() == 1).await;
    // While the watch is between requests: a heartbeat of the complete Deployment, another
    // object, then compaction.
    env.update("deployments.apps", "shop", "payments", |d| {
        d["status"]["conditions"] = json!([]);
    });
    env.fake
        .put(
            "configmaps",
            json!({"metadata": {"name": "other", "namespace": "shop"}}),
        )
        .unwrap();
    env.fake.compact();
    wait_until("the watch relisted after 410 Gone", async || {
        w.status.lists("Deployment") >= 2
    })
    .await;
    env.update("deployments.apps", "shop", "payments", |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("shop/app:2");
    });
    env.roll_out("2");
    wait_until("the second rollout fired", async || w.status.fired() == 2).await;
    let revisions: Vec<String> = env
        .events()
        .await
        .iter()
        .map(|e| label(e, "revision").to_string())
        .collect();
    assert_eq!(revisions, ["1", "2"]);
    assert_eq!(
        w.status.duplicates(),
        0,
        "the relist was diffed, not fired and deduplicated"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_restarted_watcher_and_a_second_replica_never_fire_a_key_twice() {
    let env = Env::start(&trigger("e2e-after-rollout", ROLLOUT)).await;
    let first = env.watcher();
    wait_until("the deployments are listed", async || {
        first.status.lists("Deployment") >= 1
    })
    .await;
    env.create_deployment("shop/app:1");
    env.roll_out("1");
    wait_until("the rollout fired", async || first.status.fired() == 1).await;
    first.stop().await;

    // Restarted: scaling to 5 completes revision 1 again, the same key as before.
    let again = env.watcher();
    wait_until("the deployments are listed", async || {
        again.status.lists("Deployment") >= 1
    })
    .await;
    env.update("deployments.apps", "shop", "payments", |d| {
        d["spec"]["replicas"] = json!(5)
    });
    env.roll_out("1");
    wait_until("the repeat was refused by its key", async || {
        again.status.duplicates() == 1
    })
    .await;
    assert_eq!(again.status.fired(), 0);

    // Two replicas see the next rollout: one fires it.
    let other = env.watcher();
    wait_until("the second replica listed", async || {
        other.status.lists("Deployment") >= 1
    })
    .await;
    env.update("deployments.apps", "shop", "payments", |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("shop/app:2");
    });
    env.roll_out("2");
    wait_until("both replicas decided", async || {
        again.status.fired()
            + other.status.fired()
            + again.status.duplicates()
            + other.status.duplicates()
            == 3
    })
    .await;
    assert_eq!(again.status.fired() + other.status.fired(), 1);
    let revisions: Vec<String> = env
        .events()
        .await
        .iter()
        .map(|e| label(e, "revision").to_string())
        .collect();
    assert_eq!(revisions, ["1", "2"]);
    again.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn forbidden_and_unknown_kinds_are_errors_of_their_triggers_only() {
    let defs = [
        trigger("rollouts", ROLLOUT),
        trigger(
            "widgets",
            "{kind: Widget, group: example.com, version: v1, event: modified}",
        ),
        trigger(
            "config",
            "{kind: ConfigMap, namespace: shop, event: modified}",
        ),
        trigger("services", "{kind: Service, event: created}"),
    ]
    .concat();
    let env = Env::start(&defs).await;
    env.fake.forbid("list", "apps", "deployments");
    env.fake.forbid("watch", "", "services");
    let w = env.watcher();
    wait_until("the three errors are known", async || {
        w.status.errors().len() == 3
    })
    .await;
    let errors = w.status.errors();
    assert!(
        errors["services"].contains("may not watch services cluster-wide"),
        "{}",
        errors["services"]
    );
    let forbidden = &errors["rollouts"];
    assert!(
        forbidden.contains("may not list deployments.apps in namespace shop")
            && forbidden
                .contains("grant it get, list and watch on deployments in apiGroups [\"apps\"]"),
        "{forbidden}"
    );
    assert!(
        errors["widgets"].contains("unknown kind `Widget`"),
        "{}",
        errors["widgets"]
    );
    // The third trigger works meanwhile.
    wait_until("the configmaps are listed", async || {
        w.status.lists("ConfigMap") >= 1
    })
    .await;
    env.fake
        .put(
            "configmaps",
            json!({"metadata": {"name": "c", "namespace": "shop"}, "data": {"a": "1"}}),
        )
        .unwrap();
    env.update("configmaps", "shop", "c", |c| c["data"]["a"] = json!("2"));
    wait_until("the configmap trigger fired", async || {
        w.status.fired() == 1
    })
    .await;
    assert_eq!(env.events().await[0].trigger, "config");
    // Granting the permission heals the watch.
    env.fake.allow("list", "apps", "deployments");
    wait_until("the deployments are listed", async || {
        w.status.lists("Deployment") >= 1
    })
    .await;
    env.fake.allow("watch", "", "services");
    env.fake
        .put(
            "services",
            json!({"metadata": {"name": "web", "namespace": "shop"}}),
        )
        .unwrap();
    wait_until("the services trigger fired", async || w.status.fired() == 2).await;
    wait_until("only the unknown kind is left", async || {
        w.status.errors().keys().collect::<Vec<_>>() == ["widgets"]
    })
    .await;
    w.stop().await;
}

#[tokio::test]
async fn a_changed_to_condition_fires_on_the_transition_only() {
    let env = Env::start(&trigger(
        "mode-on",
        "{kind: ConfigMap, namespace: shop, event: modified, conditions: [{path: .data.mode, changedTo: \"on\"}]}",
    ))
    .await;
    let w = env.watcher();
    wait_until("the configmaps are listed", async || {
        w.status.lists("ConfigMap") >= 1
    })
    .await;
    env.fake
        .put(
            "configmaps",
            json!({"metadata": {"name": "flags", "namespace": "shop"}, "data": {"mode": "off"}}),
        )
        .unwrap();
    for (mode, extra) in [("on", "1"), ("on", "2"), ("off", "3"), ("on", "4")] {
        env.update("configmaps", "shop", "flags", |c| {
            c["data"]["mode"] = json!(mode);
            c["data"]["extra"] = json!(extra);
        });
    }
    wait_until("the second transition fired", async || {
        w.status.fired() == 2
    })
    .await;
    let events = env.events().await;
    let extras: Vec<String> = events
        .iter()
        .map(|e| {
            assert_eq!(label(e, "field:.data.mode"), "on");
            assert_eq!(label(e, "previous:.data.mode"), "off");
            let p: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
            p["data"]["extra"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(extras, ["1", "4"]);
    w.stop().await;
}

#[tokio::test]
async fn an_image_change_carries_the_pulled_digests() {
    let env = Env::start(&trigger(
        "new-image",
        "{kind: Pod, namespace: shop, event: image-changed}",
    ))
    .await;
    let w = env.watcher();
    wait_until("the pods are listed", async || w.status.lists("Pod") >= 1).await;
    let pod = |image: &str, digest: &str| {
        json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"containers": [{"name": "web", "image": image}, {"name": "proxy", "image": "envoy@sha256:e1"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "web", "imageID": format!("docker.io/shop/web@{digest}")},
                {"name": "proxy", "imageID": "docker.io/envoy@sha256:e1"}
            ]}
        })
    };
    env.fake
        .put("pods", pod("shop/web:1", "sha256:aaa"))
        .unwrap();
    env.fake
        .put("pods", pod("shop/web:2", "sha256:bbb"))
        .unwrap();
    wait_until("the image change fired", async || w.status.fired() == 1).await;
    let ev = &env.events().await[0];
    assert_eq!(ev.r#type, "image-changed");
    assert_eq!(label(ev, "image.web"), "shop/web:2");
    assert_eq!(label(ev, "digest.web"), "sha256:bbb");
    assert_eq!(label(ev, "digest.proxy"), "sha256:e1");
    assert_eq!(label(ev, "images"), "web=shop/web:2,proxy=envoy@sha256:e1");
    w.stop().await;
}

#[tokio::test]
async fn namespaces_match_expressions_and_conditions_pick_the_objects_and_changes() {
    let env = Env::start(&trigger(
        "picky",
        "{kind: ConfigMap, namespaces: [shop, pay], matchExpressions: [{key: tier, operator: In, values: [web, api]}], event: modified, conditions: [{path: .data.mode, changedFrom: \"off\"}, {path: .data.owner, equals: team-a}, {path: .metadata.labels.tier, changed: false}]}",
    ))
    .await;
    let w = env.watcher();
    wait_until("both namespaces are listed", async || {
        w.status.lists("ConfigMap") >= 2
    })
    .await;
    let cm = |ns: &str, name: &str, tier: &str, owner: &str| {
        json!({"metadata": {"name": name, "namespace": ns, "labels": {"tier": tier}},
               "data": {"mode": "off", "owner": owner}})
    };
    // (namespace, name, tier, owner, new tier): each switched from mode off to on.
    let cases = [
        ("shop", "fires", "web", "team-a", "web"),
        ("dev", "unwatched-namespace", "web", "team-a", "web"),
        ("pay", "db-tier", "db", "team-a", "db"),
        ("pay", "other-owner", "web", "team-b", "web"),
        ("pay", "tier-changed", "web", "team-a", "api"),
        ("pay", "fires-too", "api", "team-a", "api"),
    ];
    for (ns, name, tier, owner, _) in cases {
        env.fake
            .put("configmaps", cm(ns, name, tier, owner))
            .unwrap();
    }
    for (ns, name, _, _, new_tier) in cases {
        env.update("configmaps", ns, name, |c| {
            c["data"]["mode"] = json!("on");
            c["metadata"]["labels"]["tier"] = json!(new_tier);
        });
    }
    wait_until("the two matching changes fired", async || {
        w.status.fired() == 2
    })
    .await;
    let mut names: Vec<String> = env
        .events()
        .await
        .iter()
        .map(|e| label(e, "name").to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["fires", "fires-too"]);
    w.stop().await;
}

#[tokio::test]
async fn a_trigger_added_by_a_reload_gets_its_watch() {
    let env = Env::start(&trigger(
        "config",
        "{kind: ConfigMap, namespace: shop, event: modified}",
    ))
    .await;
    let w = env.watcher();
    wait_until("the configmaps are listed", async || {
        w.status.lists("ConfigMap") >= 1
    })
    .await;
    assert_eq!(w.status.lists("Deployment"), 0);
    std::fs::write(
        env.dir.path().join("rollout.yaml"),
        trigger("e2e-after-rollout", ROLLOUT),
    )
    .unwrap();
    wait_until("the reload started a deployment watch", async || {
        w.status.lists("Deployment") >= 1
    })
    .await;
    env.create_deployment("shop/app:1");
    env.roll_out("1");
    wait_until("the new trigger fired", async || w.status.fired() == 1).await;
    assert_eq!(env.events().await[0].trigger, "e2e-after-rollout");
    w.stop().await;
}

#[tokio::test]
async fn secrets_are_watched_as_metadata_only() {
    let env = Env::start(&trigger(
        "secret-rotated",
        "{kind: Secret, namespace: shop, event: modified, conditions: [{path: .metadata.annotations.rotated, changed: true}]}",
    ))
    .await;
    let w = env.watcher();
    wait_until("the secrets are listed", async || {
        w.status.lists("Secret") >= 1
    })
    .await;
    env.fake
        .put(
            "secrets",
            json!({"metadata": {"name": "db", "namespace": "shop", "annotations": {"rotated": "1"}},
                   "type": "Opaque", "data": {"password": "aHVudGVyMg=="}}),
        )
        .unwrap();
    env.update("secrets", "shop", "db", |s| {
        s["metadata"]["annotations"]["rotated"] = json!("2");
        s["data"]["password"] = json!("c2VjcmV0");
    });
    wait_until("the rotation fired", async || w.status.fired() == 1).await;
    let ev = &env.events().await[0];
    assert_eq!(label(ev, "kind"), "Secret");
    assert_eq!(label(ev, "field:.metadata.annotations.rotated"), "2");
    let payload = String::from_utf8(ev.payload.clone()).unwrap();
    assert!(
        !payload.contains("c2VjcmV0") && !payload.contains("password"),
        "{payload}"
    );
    w.stop().await;
}
