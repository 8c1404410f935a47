//! The launcher bounds a shard job's attempts itself (the server redelivers it without
//! limit): a job whose runner cannot start ends its shard `errored` with the reason after
//! `MAX_JOB_DELIVERIES`, instead of being dropped with no end for the shard.

use std::time::Duration;

use assay_bus::{Bus, NatsOptions, streams, subjects};
use assay_executor_launcher::MAX_JOB_DELIVERIES;
use assay_proto::{ShardJob, ShardState, ShardStatus, Step};
use assay_testkit::NatsServer;
use prost::Message;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_never_starts_ends_its_shard_errored_after_the_last_delivery() {
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
            // Every delivery fails to start its runner and is retried with backoff.
            runner: Some("/nonexistent/assay-runner".into()),
            warm: 0,
            ack_wait: Duration::from_secs(5),
            ..Default::default()
        },
        shutdown.clone(),
    ));

    let id = "01NEVERSTARTS".to_string();
    let job = ShardJob {
        header: Some(assay_bus::header("test", format!("{id}/0/1"), None)),
        execution_id: id.clone(),
        workflow: "never".into(),
        shard_index: 0,
        shard_count: 1,
        attempt: 1,
        steps: vec![Step {
            name: "s".into(),
            run: "true".into(),
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

    let subject = subjects::shard_status(&id, 0);
    // Backoff 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s between the deliveries; a generous bound on
    // waiting only, not on the figure.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let last: Option<ShardStatus> = bus.last_message(streams::STATUS, &subject).await.unwrap();
        if let Some(status) = last {
            break status;
        }
        assert!(
            std::time::Instant::now() < until,
            "the shard of a job that cannot start got no end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.state(), ShardState::Errored, "{status:?}");
    assert_eq!(status.reporter, "launcher");
    assert!(!status.will_retry);
    let said = format!("delivered {} times", MAX_JOB_DELIVERIES + 1);
    assert!(status.reason.contains(&said), "{}", status.reason);
    // The job is gone from the work queue: nothing delivers it again.
    let shards = bus.jetstream().get_stream(streams::SHARDS).await.unwrap();
    let mut left = u64::MAX;
    for _ in 0..50 {
        left = shards.get_info().await.unwrap().state.messages;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the job stayed in the work queue");
    shutdown.cancel();
    launcher.await.unwrap().unwrap();
}

/// A runner started cold gets its job over stdin: a job of 2,000 planned ids of 100
/// characters (267 KB in base64) would be over the kernel's 128 KiB limit for one
/// environment string (`Argument list too long`), as it was in `ASSAY_SHARD_JOB`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_runner_takes_a_job_larger_than_an_environment_variable_can_hold() {
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
            // No warm runner: this one starts cold.
            warm: 0,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        },
        shutdown.clone(),
    ));
    let id = "01COLDSTARTBIGJOB".to_string();
    let job = ShardJob {
        header: Some(assay_bus::header("test", format!("{id}/0/1"), None)),
        execution_id: id.clone(),
        workflow: "big".into(),
        shard_index: 0,
        shard_count: 1,
        attempt: 1,
        steps: vec![Step {
            name: "s".into(),
            run: "true".into(),
            ..Default::default()
        }],
        test_ids: (0..2000)
            .map(|i| {
                format!(
                    "tests/unit/test_module_{i:05}.py::TestClass::test_case[param-{i}-{}]",
                    "x".repeat(30)
                )
            })
            .collect(),
        ..Default::default()
    };
    let encoded = job.encode_to_vec();
    assert!(
        encoded.len() * 4 / 3 > 128 * 1024,
        "{} bytes",
        encoded.len()
    );
    bus.publish_raw(
        subjects::shard_job(&id, 0),
        Default::default(),
        encoded.into(),
    )
    .await
    .unwrap();
    let subject = subjects::shard_status(&id, 0);
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let last: Option<ShardStatus> = bus.last_message(streams::STATUS, &subject).await.unwrap();
        if let Some(s) = last.filter(|s| s.state().is_terminal()) {
            break s;
        }
        assert!(std::time::Instant::now() < until, "the shard never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.state(), ShardState::Passed, "{status:?}");
    assert_eq!(status.reporter, "runner", "{status:?}");
    shutdown.cancel();
    launcher.await.unwrap().unwrap();
}
