//! A launcher at capacity says so: a shard whose job is out while every runner is busy is
//! announced `waiting for capacity` (with how many runners are busy), then runs when a
//! runner frees.

use std::time::{Duration, Instant};

use assay_bus::{Bus, NatsOptions, streams, subjects};
use assay_proto::{ShardJob, ShardState, ShardStatus, Step};
use assay_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

fn job(id: &str, shard: u32, run: &str) -> ShardJob {
    ShardJob {
        header: Some(assay_bus::header("test", format!("{id}/{shard}/1"), None)),
        execution_id: id.to_string(),
        workflow: "wide".into(),
        shard_index: shard,
        shard_count: 2,
        attempt: 1,
        steps: vec![Step {
            name: "s".into(),
            run: run.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The shard's last status.
async fn last(bus: &Bus, id: &str, shard: u32) -> Option<ShardStatus> {
    let subject = subjects::shard_status(id, shard);
    bus.last_message(streams::STATUS, &subject).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_runner_the_second_shard_waits_for_capacity_then_runs() {
    let server = NatsServer::start();
    let nats = NatsOptions {
        url: server.url(),
        ..NatsOptions::default()
    };
    let shutdown = CancellationToken::new();
    let bus = Bus::connect(&nats, &shutdown).await.unwrap();
    bus.ensure_topology().await.unwrap();
    let launcher = tokio::spawn(assay_executor_launcher::run(
        assay_executor_launcher::Options {
            nats,
            capacity: 1,
            runner: None,
            warm: 0,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        },
        shutdown.clone(),
    ));
    let id = "01CAPACITYONE";
    // The first shard holds the only runner until the second was seen waiting.
    let flag = tempfile::NamedTempFile::new().unwrap();
    let hold = format!("while [ -e {} ]; do sleep 0.1; done", flag.path().display());
    for (shard, run) in [(0, hold.as_str()), (1, "true")] {
        bus.publish(subjects::shard_job(id, shard), &job(id, shard, run))
            .await
            .unwrap();
    }

    let until = Instant::now() + Duration::from_secs(60);
    let waiting = loop {
        if let Some(s) = last(&bus, id, 1)
            .await
            .filter(|s| s.state() == ShardState::WaitingForCapacity)
        {
            break s;
        }
        assert!(Instant::now() < until, "shard 1 was never shown waiting");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(waiting.reason, "1 of 1 runner busy");
    assert_eq!(
        (waiting.attempt, waiting.reporter.as_str()),
        (1, "launcher")
    );
    // Shard 0 is the one running meanwhile.
    let running = last(&bus, id, 0).await;
    assert!(
        running
            .as_ref()
            .is_none_or(|s| s.state() == ShardState::Running),
        "{running:?}"
    );

    flag.close().unwrap();
    for shard in [0, 1] {
        let ended = loop {
            if let Some(s) = last(&bus, id, shard)
                .await
                .filter(|s| s.state().is_terminal())
            {
                break s;
            }
            assert!(Instant::now() < until, "shard {shard} never ended");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(ended.state(), ShardState::Passed, "{ended:?}");
        assert_eq!(ended.attempt, 1, "{ended:?}");
    }
    shutdown.cancel();
    launcher.await.unwrap().unwrap();
}
