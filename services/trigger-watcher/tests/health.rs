//! `/readyz` on the trigger-watcher's HTTP router follows its set-up and its NATS
//! connection: not ready while it cannot set up (its HTTP server starts after set-up), 200
//! once it has, 503 while the nats-server is stopped, 200 after it restarts.

use std::net::SocketAddr;

use assay_telemetry::health::Health;
use assay_testkit::{NatsServer, free_port, readiness_follows_nats};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_set_up_and_the_nats_connection() {
    let mut server = NatsServer::start();
    // Stopped: the service's set-up cannot finish until the server is back.
    server.stop();
    let health = Health::new();
    let shutdown = CancellationToken::new();
    let workflows = tempfile::tempdir().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let options = assay_trigger_watcher::Options {
        nats: assay_bus::NatsOptions {
            url: server.url(),
            name: "test".into(),
            health: health.clone(),
            ..Default::default()
        },
        workflows: workflows.path().to_path_buf(),
        http: addr,
        ..Default::default()
    };
    let run = tokio::spawn(assay_trigger_watcher::run(options, shutdown.clone()));
    let starting = health.readiness().unwrap_err();
    assert!(starting.contains("starting"), "{starting}");
    server.restart();
    readiness_follows_nats(&mut server, addr).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
}
