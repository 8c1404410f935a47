//! The aggregator started while its database cannot be written (the file made immutable
//! with `chattr +i`, as the chaos harness does) waits for it instead of exiting, and serves
//! as soon as the file is writable again.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use assay_testkit::{NatsServer, free_port};
use tokio_util::sync::CancellationToken;

fn chattr(flag: &str, path: &std::path::Path) -> bool {
    Command::new("chattr")
        .arg(flag)
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_database_at_start_is_waited_for() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("results.db");
    drop(assay_store::Store::open(&db).unwrap());
    if !chattr("+i", &db) {
        // Needs CAP_LINUX_IMMUTABLE and a file system with the flag (ext4, xfs, btrfs).
        eprintln!("SKIPPED: chattr +i is not available here");
        return;
    }
    let refused = assay_store::Store::open(&db).err();
    assert!(
        refused.as_ref().is_some_and(|e| e.is_retryable()),
        "an immutable database refuses to open for writing, retryably: {refused:?}"
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let options = assay_result_aggregator::Options {
        nats: assay_bus::NatsOptions {
            url: nats.url(),
            name: "test".into(),
            ..Default::default()
        },
        database: db.clone(),
        grpc: addr,
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(assay_result_aggregator::run(options, shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still_waiting = !run.is_finished();
    let listening = tokio::net::TcpStream::connect(addr).await.is_ok();
    assert!(chattr("-i", &db), "chattr -i");
    assert!(still_waiting, "exited while the database was unwritable");
    assert!(!listening, "served before its store was open");
    for attempt in 0.. {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(
            attempt < 150,
            "not serving 15 s after the database became writable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    run.await.unwrap().unwrap();
}
