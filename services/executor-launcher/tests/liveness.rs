//! A launcher killed with SIGKILL mid-shard: the replacement hands the orphaned job out
//! again at once (through the dead launcher's expired heartbeat), not after the ack wait.
//! The launchers run as their own processes (the `assay-executor-launcher` binary, built by
//! `cargo build --bins`), so the kill is a real one.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assay_bus::{Bus, NatsOptions, streams, subjects};
use assay_proto::{ShardJob, ShardState, ShardStatus, Step};
use assay_testkit::NatsServer;
use prost::Message;
use tokio_util::sync::CancellationToken;

fn launcher_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("assay-executor-launcher"))
        .find(|p| p.is_file())
        .expect("target/*/assay-executor-launcher: run `cargo build --bins` first")
}

/// A launcher process whose ack wait is far longer than the test waits, so only the
/// heartbeat can explain a quick takeover.
fn launcher(url: &str) -> Child {
    Command::new(launcher_bin())
        .args([
            "--nats",
            url,
            "--ack-wait",
            "10m",
            "--warm",
            "0",
            "--capacity",
            "2",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the launcher")
}

async fn wait_for_running(bus: &Bus, id: &str, attempt: u32, within: Duration) -> ShardStatus {
    let subject = subjects::shard_status(id, 0);
    let until = Instant::now() + within;
    loop {
        let last: Option<ShardStatus> = bus.last_message(streams::STATUS, &subject).await.unwrap();
        if let Some(s) = last.filter(|s| s.attempt >= attempt && s.state() == ShardState::Running) {
            return s;
        }
        assert!(
            Instant::now() < until,
            "attempt {attempt} of the shard was not running within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_launchers_shard_runs_again_soon_after_a_replacement_starts() {
    let server = NatsServer::start();
    let nats = NatsOptions {
        url: server.url(),
        ..NatsOptions::default()
    };
    let bus = Bus::connect(&nats, &CancellationToken::new())
        .await
        .unwrap();
    bus.ensure_topology().await.unwrap();
    let mut first = launcher(&server.url());

    let id = "01ORPHANEDSHARD".to_string();
    let job = ShardJob {
        header: Some(assay_bus::header("test", format!("{id}/0/1"), None)),
        execution_id: id.clone(),
        workflow: "orphan".into(),
        shard_index: 0,
        shard_count: 1,
        attempt: 1,
        steps: vec![Step {
            name: "long".into(),
            run: "sleep 300".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    bus.publish_raw(
        subjects::shard_job(&id, 0),
        Default::default(),
        job.encode_to_vec().into(),
    )
    .await
    .unwrap();
    let running = wait_for_running(&bus, &id, 1, Duration::from_secs(30)).await;
    assert_eq!(running.attempt, 1);

    // kill -9 the launcher; its runner notices its parent gone and stops its processes.
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = launcher(&server.url());
    let replaced = Instant::now();
    // The job's ack wait is 10 minutes: only the dead launcher's expired heartbeat can
    // bring the shard back this soon (it expires 3 s after the last beat).
    let again = wait_for_running(&bus, &id, 2, Duration::from_secs(20)).await;
    assert_eq!(again.attempt, 2, "{again:?}");
    // Reported, not asserted (tests do not time things): the bar is 5 s.
    eprintln!(
        "orphaned shard running again {:.2}s after the replacement started",
        replaced.elapsed().as_secs_f64()
    );
    second.kill().unwrap();
    second.wait().unwrap();
}
