//! `/readyz` follows the result-aggregator's set-up and its NATS connection: 503 while it cannot set
//! up, 200 once it has, 503 while the nats-server is stopped, 200 after it restarts.

use assay_telemetry::health::{self, Health};
use assay_testkit::{NatsServer, http_get, readiness_follows_nats};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_set_up_and_the_nats_connection() {
    let mut server = NatsServer::start();
    // Stopped: the service's set-up cannot finish until the server is back.
    server.stop();
    let health = Health::new();
    let shutdown = CancellationToken::new();
    let addr = health::serve(([127, 0, 0, 1], 0).into(), health.clone(), shutdown.clone())
        .await
        .unwrap();
    let nats = assay_bus::NatsOptions {
        url: server.url(),
        name: "test".into(),
        health: health.clone(),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let options = assay_result_aggregator::Options {
        nats,
        database: dir.path().join("results.db"),
        grpc: ([127, 0, 0, 1], assay_testkit::free_port()).into(),
        ..Default::default()
    };
    let run = tokio::spawn(assay_result_aggregator::run(options, shutdown.clone()));
    let (status, body) = http_get(addr, "/readyz").await.unwrap();
    assert_eq!(status, 503, "not ready before set-up: {body}");
    assert!(body.contains("starting"), "{body}");
    assert_eq!(
        http_get(addr, "/healthz").await,
        Some((200, "ok".to_string()))
    );
    server.restart();
    readiness_follows_nats(&mut server, addr).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
}
