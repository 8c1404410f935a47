//! Watches of the fake API server through the real `kube` client: from a resourceVersion,
//! bookmarks, timeouts, 410 Gone after compaction, selectors, kube-runtime's watcher.

mod common;

use std::time::Duration;

use assay_testkit::kube::{FakeKube, FakeKubeOptions};
use common::{PATIENCE, api_error, next, pod};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

#[tokio::test]
async fn watch_from_resource_version_with_label_selector() {
    let fake = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    pods.create(
        &PostParams::default(),
        &pod("before", json!({"app": "web"})),
    )
    .await
    .unwrap();
    let from = fake.resource_version().to_string();
    pods.create(&PostParams::default(), &pod("a", json!({"app": "web"})))
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("ignored", json!({"app": "db"})),
    )
    .await
    .unwrap();
    let patch = json!({"metadata": {"annotations": {"x": "y"}}});
    pods.patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    let wp = WatchParams::default().labels("app=web");
    let mut watch = pods.watch(&wp, &from).await.unwrap().boxed();
    assert!(
        matches!(next(&mut watch).await, WatchEvent::Added(p) if p.metadata.name.as_deref() == Some("a"))
    );
    assert!(
        matches!(next(&mut watch).await, WatchEvent::Modified(p) if p.metadata.annotations.is_some())
    );
    // Live events after the history, through the direct API as a controller would write.
    fake.delete("pods", "default", "before").unwrap();
    assert!(
        matches!(next(&mut watch).await, WatchEvent::Deleted(p) if p.metadata.name.as_deref() == Some("before"))
    );
}

#[tokio::test]
async fn watch_without_resource_version_starts_with_current_objects() {
    let fake = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    pods.create(&PostParams::default(), &pod("a", json!({})))
        .await
        .unwrap();
    let mut watch = pods
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(
        matches!(next(&mut watch).await, WatchEvent::Added(p) if p.metadata.name.as_deref() == Some("a"))
    );
}

#[tokio::test]
async fn bookmarks_carry_the_latest_resource_version() {
    let fake = FakeKube::start_with(FakeKubeOptions {
        bookmark_interval: Duration::from_millis(50),
        ..Default::default()
    })
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    let from = fake.resource_version().to_string();
    let mut watch = pods
        .watch(
            &WatchParams {
                bookmarks: true,
                ..Default::default()
            },
            &from,
        )
        .await
        .unwrap()
        .boxed();
    pods.create(&PostParams::default(), &pod("a", json!({})))
        .await
        .unwrap();
    let created_rv = fake.resource_version().to_string();
    loop {
        match next(&mut watch).await {
            WatchEvent::Added(_) => continue,
            WatchEvent::Bookmark(b) if b.metadata.resource_version == created_rv => break,
            WatchEvent::Bookmark(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn watch_timeout_seconds_ends_the_stream() {
    let fake = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    let rv = fake.resource_version().to_string();
    let watch = pods
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(PATIENCE, watch.collect::<Vec<_>>())
        .await
        .unwrap();
    // The stream ended; at most bookmarks came (kube asks for them by default).
    assert!(
        events
            .iter()
            .all(|e| matches!(e, Ok(WatchEvent::Bookmark(_)))),
        "{events:?}"
    );
}

#[tokio::test]
async fn compaction_gives_410_gone_and_a_relist_recovers() {
    let fake = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    let old = fake.resource_version().to_string();
    pods.create(&PostParams::default(), &pod("a", json!({})))
        .await
        .unwrap();
    fake.compact();

    let mut watch = pods
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match next(&mut watch).await {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    let exact = ListParams::default()
        .at(&old)
        .matching(kube::api::VersionMatch::Exact);
    assert_eq!(api_error(pods.list(&exact).await.unwrap_err()).code, 410);

    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let rv = list.metadata.resource_version.unwrap();
    let mut watch = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    pods.create(&PostParams::default(), &pod("b", json!({})))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut watch).await, WatchEvent::Added(p) if p.metadata.name.as_deref() == Some("b"))
    );
}

#[tokio::test]
async fn runtime_watcher_relists_after_410() {
    use kube::runtime::watcher::{self, Event};
    let fake = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    pods.create(&PostParams::default(), &pod("a", json!({})))
        .await
        .unwrap();
    let mut events = watcher::watcher(pods.clone(), watcher::Config::default()).boxed();
    let mut wait_for = async |want: &str| loop {
        let e = tokio::time::timeout(PATIENCE, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Event::InitApply(p) | Event::Apply(p) = e
            && p.metadata.name.as_deref() == Some(want)
        {
            return;
        }
    };
    wait_for("a").await;
    // The watcher's watch is open now or about to be: compaction makes its next watch 410,
    // and it must relist to see what follows.
    fake.compact();
    pods.create(&PostParams::default(), &pod("b", json!({})))
        .await
        .unwrap();
    wait_for("b").await;
}

#[tokio::test]
async fn dropping_the_fake_ends_open_watches() {
    let fake = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    let rv = fake.resource_version().to_string();
    let watch = pods.watch(&WatchParams::default(), &rv).await.unwrap();
    drop(fake);
    let events: Vec<_> = tokio::time::timeout(PATIENCE, watch.collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .all(|e| matches!(e, Ok(WatchEvent::Bookmark(_)))),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_selector_watch_sees_objects_enter_and_leave_the_selection() {
    let fake = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    pods.create(&PostParams::default(), &pod("a", json!({"app": "db"})))
        .await
        .unwrap();
    let rv = fake.resource_version().to_string();
    let mut watch = pods
        .watch(&WatchParams::default().labels("app=web"), &rv)
        .await
        .unwrap()
        .boxed();
    let relabel = |app: &str| json!({"metadata": {"labels": {"app": app}}});
    pods.patch("a", &PatchParams::default(), &Patch::Merge(&relabel("web")))
        .await
        .unwrap();
    pods.patch("a", &PatchParams::default(), &Patch::Merge(&relabel("db")))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next(&mut watch).await {
            WatchEvent::Added(_) => seen.push("ADDED"),
            WatchEvent::Deleted(_) => seen.push("DELETED"),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["ADDED", "DELETED"]);
}

#[tokio::test]
async fn runtime_watcher_with_streaming_lists() {
    use kube::runtime::watcher::{self, Event};
    let fake = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    pods.create(&PostParams::default(), &pod("a", json!({})))
        .await
        .unwrap();
    let config = watcher::Config::default().streaming_lists();
    let mut events = watcher::watcher(pods.clone(), config).boxed();
    let mut init_done = false;
    loop {
        let e = tokio::time::timeout(PATIENCE, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match e {
            Event::InitDone => init_done = true,
            Event::Apply(p) if init_done && p.metadata.name.as_deref() == Some("b") => break,
            _ => {}
        }
        if init_done && fake.get("pods", "default", "b").is_none() {
            pods.create(&PostParams::default(), &pod("b", json!({})))
                .await
                .unwrap();
        }
    }
}
