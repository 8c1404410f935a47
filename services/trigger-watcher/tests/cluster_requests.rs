//! The exact requests of the cluster watch (tower-test mock, see
//! `assay_testkit::kube_mock`): discovery, the list, a watch that asks for bookmarks and
//! resumes from the list's resourceVersion and then from each bookmark or event, Secrets
//! read as metadata only, and a fired change that writes nothing to the cluster (the claim
//! of its dedup key is on NATS).

mod cluster_support;

use std::time::Duration;

use assay_bus::Bus;
use assay_spec::SharedCatalog;
use assay_testkit::NatsServer;
use assay_testkit::kube_mock::{Expect, MockKube, list};
use assay_trigger_watcher::ClusterOptions;
use assay_trigger_watcher::cluster::Cluster;
use cluster_support::{WORKFLOW, nats_options, trigger, wait_until};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const CONFIGMAPS: &str = "/api/v1/namespaces/shop/configmaps";
const SECRETS: &str = "/api/v1/namespaces/shop/secrets";
const META_LIST: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
const META: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// The core group's discovery, as `kube::discovery::pinned_kind` asks for it.
fn core_discovery() -> Expect {
    let verbs = json!([
        "create", "delete", "get", "list", "patch", "update", "watch"
    ]);
    Expect::get("/api/v1").reply(
        200,
        json!({
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [
                {"name": "configmaps", "singularName": "configmap", "namespaced": true, "kind": "ConfigMap", "verbs": verbs, "shortNames": ["cm"]},
                {"name": "secrets", "singularName": "secret", "namespaced": true, "kind": "Secret", "verbs": verbs},
            ],
        }),
    )
}

fn watch_query(rv: &str) -> String {
    format!("watch=true&timeoutSeconds=60&allowWatchBookmarks=true&resourceVersion={rv}")
}

fn configmap(rv: &str, n: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "shop", "uid": "uid-settings", "resourceVersion": rv},
        "data": {"n": n},
    })
}

struct Running {
    _nats: NatsServer,
    status: assay_trigger_watcher::ClusterStatus,
    shutdown: CancellationToken,
    run: tokio::task::JoinHandle<()>,
}

/// A cluster watch with `kubernetes` as its one trigger, through `client`.
async fn start(kubernetes: &str, client: kube::Client) -> Running {
    let nats = NatsServer::start();
    let shutdown = CancellationToken::new();
    let bus = Bus::connect(&nats_options(&nats.url()), &shutdown)
        .await
        .expect("nats");
    bus.ensure_topology().await.expect("topology");
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(
        dir.path().join("defs.yaml"),
        format!("{WORKFLOW}{}", trigger("watched", kubernetes)),
    )
    .expect("definitions written");
    let catalog = SharedCatalog::load(dir.path()).expect("definitions load");
    let options = ClusterOptions {
        enabled: true,
        client: Some(client),
        watch_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let status = options.status.clone();
    let cluster = Cluster::connect(&bus, &options).await.expect("connected");
    let run = tokio::spawn(cluster.run(catalog, shutdown.clone()));
    Running {
        _nats: nats,
        status,
        shutdown,
        run,
    }
}

impl Running {
    async fn stop(self, mock: &MockKube) {
        self.shutdown.cancel();
        mock.bounded(self.run).await.expect("the watch stops");
    }
}

#[tokio::test]
async fn a_watch_asks_for_bookmarks_resumes_and_fires_without_writing_to_the_cluster() {
    let (client, mock) = MockKube::start("default");
    mock.expect([
        core_discovery(),
        Expect::get(CONFIGMAPS).query("limit=500").reply(
            200,
            list("v1", "ConfigMapList", "100", vec![configmap("90", "0")]),
        ),
        // From the list's resourceVersion; the response ends after a bookmark.
        Expect::get(CONFIGMAPS)
            .query(&watch_query("100"))
            .reply_events(vec![json!({"type": "BOOKMARK", "object": {
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"resourceVersion": "104"}
            }})]),
        // From the bookmark; a change, then the response ends.
        Expect::get(CONFIGMAPS)
            .query(&watch_query("104"))
            .reply_events(vec![
                json!({"type": "MODIFIED", "object": configmap("105", "1")}),
            ]),
        // From the change: left open.
        Expect::get(CONFIGMAPS).query(&watch_query("105")).hold(),
    ]);
    let w = start(
        "{kind: ConfigMap, namespace: shop, event: modified}",
        client,
    )
    .await;
    wait_until("the change fired", async || w.status.fired() == 1).await;
    // The claim and the publish went to NATS: any request to the cluster would be one the
    // mock does not expect.
    mock.served().await;
    assert_eq!(w.status.duplicates(), 0);
    w.stop(&mock).await;
    mock.finish().await;
}

fn secret_meta(rv: &str, rotated: &str) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": "db", "namespace": "shop", "uid": "uid-db", "resourceVersion": rv,
                     "annotations": {"rotated": rotated}},
    })
}

#[tokio::test]
async fn secrets_are_listed_and_watched_as_metadata_only() {
    let (client, mock) = MockKube::start("default");
    mock.expect([
        core_discovery(),
        Expect::get(SECRETS)
            .query("limit=500")
            .header("accept", META_LIST)
            .reply(
                200,
                list(
                    "meta.k8s.io/v1",
                    "PartialObjectMetadataList",
                    "200",
                    vec![secret_meta("190", "no")],
                ),
            ),
        Expect::get(SECRETS)
            .query(&watch_query("200"))
            .header("accept", META)
            .reply_events(vec![
                json!({"type": "MODIFIED", "object": secret_meta("201", "yes")}),
            ]),
        Expect::get(SECRETS)
            .query(&watch_query("201"))
            .header("accept", META)
            .hold(),
    ]);
    let w = start("{kind: Secret, namespace: shop, event: modified}", client).await;
    wait_until("the metadata change fired", async || w.status.fired() == 1).await;
    mock.served().await;
    w.stop(&mock).await;
    mock.finish().await;
}
