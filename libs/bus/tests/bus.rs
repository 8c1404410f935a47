//! The bus contract against a real nats-server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use assay_bus::{Bus, ConsumerSpec, Failure, NatsOptions, consumer, header, streams, subjects};
use assay_proto::TriggerEvent;
use assay_testkit::NatsServer;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

async fn bus(server: &NatsServer) -> Bus {
    let opts = NatsOptions {
        url: server.url(),
        ..Default::default()
    };
    let bus = Bus::connect(&opts, &CancellationToken::new())
        .await
        .unwrap();
    bus.ensure_topology().await.unwrap();
    bus
}

fn event(key: &str) -> TriggerEvent {
    TriggerEvent {
        header: Some(header("test", key, None)),
        source: "ci".into(),
        r#type: "push".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn topology_is_idempotent_and_publish_dedups_on_key() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    bus.ensure_topology().await.unwrap();
    assert!(
        !bus.publish(subjects::event("ci"), &event("k1"))
            .await
            .unwrap()
    );
    assert!(
        bus.publish(subjects::event("ci"), &event("k1"))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let opts = NatsOptions {
        url: format!("nats://127.0.0.1:{}", assay_testkit::free_port()),
        connect_attempts: 2,
        ..Default::default()
    };
    let err = Bus::connect(&opts, &CancellationToken::new())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("cannot reach nats"), "{err}");
}

#[tokio::test]
async fn poison_and_oversized_messages_go_to_dead_letters_and_others_flow() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let shutdown = CancellationToken::new();
    let spec = ConsumerSpec::new(streams::EVENTS, "test").max_deliver(2);
    let task = {
        let (bus, seen, shutdown) = (bus.clone(), seen.clone(), shutdown.clone());
        tokio::spawn(consumer::run(
            bus,
            spec,
            shutdown,
            move |d: assay_bus::Delivery<TriggerEvent>| {
                let seen = seen.clone();
                async move {
                    let key = d.msg.header.map(|h| h.idempotency_key).unwrap_or_default();
                    if key == "retry-forever" {
                        return Err(Failure::Retry("flaky".into()));
                    }
                    seen.lock().unwrap().push(key);
                    Ok(())
                }
            },
        ))
    };
    let dead = bus
        .client()
        .subscribe(subjects::dead(streams::EVENTS))
        .await
        .unwrap();
    bus.publish_raw(
        subjects::event("x"),
        Default::default(),
        vec![0xff, 0xff, 0xff].into(),
    )
    .await
    .unwrap();
    bus.publish_raw(
        subjects::event("x"),
        Default::default(),
        vec![0u8; 300 * 1024].into(),
    )
    .await
    .unwrap();
    bus.publish(subjects::event("x"), &event("retry-forever"))
        .await
        .unwrap();
    bus.publish(subjects::event("x"), &event("good"))
        .await
        .unwrap();
    let reasons: Vec<String> =
        tokio::time::timeout(Duration::from_secs(20), dead.take(3).collect::<Vec<_>>())
            .await
            .expect("three dead letters")
            .into_iter()
            .map(|m| {
                m.headers
                    .unwrap()
                    .get(assay_bus::DEAD_REASON)
                    .unwrap()
                    .to_string()
            })
            .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("cannot decode TriggerEvent")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("over the limit")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("gave up after 2 deliveries")),
        "{reasons:?}"
    );
    for _ in 0..200 {
        if !seen.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(*seen.lock().unwrap(), vec!["good".to_string()]);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A server that speaks just enough of the NATS protocol to announce itself as 2.9.
fn fake_old_server() -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut w = stream.try_clone().unwrap();
            let info = format!(
                "INFO {{\"server_id\":\"fake\",\"server_name\":\"fake\",\"version\":\"2.9.25\",\"proto\":1,\"host\":\"127.0.0.1\",\"port\":{port},\"headers\":true,\"max_payload\":1048576}}\r\n"
            );
            let _ = w.write_all(info.as_bytes());
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.starts_with("PING") {
                    let _ = w.write_all(b"PONG\r\n");
                }
                line.clear();
            }
        }
    });
    port
}

#[tokio::test]
async fn a_server_older_than_2_10_is_refused_with_its_version() {
    let port = fake_old_server();
    let opts = NatsOptions {
        url: format!("nats://127.0.0.1:{port}"),
        connect_attempts: 1,
        ..Default::default()
    };
    let err = Bus::connect(&opts, &CancellationToken::new())
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("version 2.9.25") && text.contains("needs 2.10 or newer"),
        "{text}"
    );
}

/// An outage is noticed, counted once and ended: the connection comes back by itself after
/// a nats-server restart, and publishing works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_counted_as_one_outage_and_the_connection_comes_back() {
    let mut server = NatsServer::start();
    let bus = bus(&server).await;
    assert_eq!(
        (
            assay_bus::connection::disconnects(),
            assay_bus::connection::reconnects()
        ),
        (0, 0)
    );
    server.restart();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while assay_bus::connection::reconnects() == 0 {
        assert!(
            std::time::Instant::now() < until,
            "no reconnect seen (disconnects: {})",
            assay_bus::connection::disconnects()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(assay_bus::connection::disconnects(), 1);
    assert_eq!(assay_bus::connection::reconnects(), 1);
    assert_eq!(assay_bus::connection::down(), 0);
    bus.publish(subjects::event("ci"), &event("after-restart"))
        .await
        .unwrap();
}

/// A job too large for a message has its plan stored apart and filled in again; a small
/// one travels as it is.
#[tokio::test]
async fn a_large_plan_travels_apart_from_its_job_and_comes_back_whole() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let ids: Vec<String> = (0..5000)
        .map(|i| format!("tests/test_module_{i:05}.py::TestThing::test_case[param-{i}]"))
        .collect();
    let full = assay_proto::ShardJob {
        execution_id: "01JPLANAPART".into(),
        shard_index: 1,
        test_ids: ids.clone(),
        planned_hashes: (0..5000u64).collect(),
        tail: vec![assay_proto::TailBatch {
            test_hashes: vec![1, 2, 3],
            expected_ms: 7.0,
        }],
        ..Default::default()
    };
    let mut job = full.clone();
    assert!(bus.offload_plan(&mut job).await.unwrap());
    assert!(job.test_ids.is_empty() && job.planned_hashes.is_empty() && job.tail.is_empty());
    assert_eq!(job.plan_data, "01JPLANAPART.0.1");
    assert!(
        prost::Message::encoded_len(&job) < assay_bus::plans::INLINE_JOB_BYTES,
        "{}",
        prost::Message::encoded_len(&job)
    );
    // Offloading again changes nothing.
    assert!(!bus.offload_plan(&mut job).await.unwrap());
    let mut back = job.clone();
    bus.load_plan(&mut back).await.unwrap();
    assert_eq!(
        assay_proto::ShardJob {
            plan_data: String::new(),
            ..back
        },
        full
    );
    let mut small = assay_proto::ShardJob {
        test_ids: vec!["a".into()],
        ..Default::default()
    };
    assert!(!bus.offload_plan(&mut small).await.unwrap());
    assert_eq!(small.test_ids, ["a"]);
}

#[tokio::test]
async fn a_large_run_selection_travels_apart_from_its_request_and_comes_back_whole() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let ids: Vec<String> = (0..20_000)
        .map(|i| format!("tests/module_{:03}/test_file.py::test_case[{i:05}]", i % 97))
        .collect();
    let full = assay_proto::RunRequest {
        execution_id: "01JSELECTAPART".into(),
        workflow: "w".into(),
        test_ids: ids[..10_000].to_vec(),
        shards: vec![
            assay_proto::TestIdList {
                ids: ids[10_000..].to_vec(),
            },
            assay_proto::TestIdList::default(),
        ],
        ..Default::default()
    };
    let mut req = full.clone();
    assert!(bus.offload_selection(&mut req).await.unwrap());
    assert!(req.test_ids.is_empty() && req.shards.is_empty());
    assert_eq!(req.selection_data, "request.01JSELECTAPART");
    assert!(prost::Message::encoded_len(&req) < assay_bus::plans::INLINE_REQUEST_BYTES);
    // Offloading again changes nothing.
    assert!(!bus.offload_selection(&mut req).await.unwrap());
    let mut back = req.clone();
    bus.load_selection(&mut back).await.unwrap();
    assert_eq!(back, full);
    let mut small = assay_proto::RunRequest {
        test_ids: vec!["a".into()],
        ..Default::default()
    };
    assert!(!bus.offload_selection(&mut small).await.unwrap());
    assert_eq!(small.test_ids, ["a"]);
    // Loading a request that travelled whole changes nothing.
    bus.load_selection(&mut small).await.unwrap();
    assert_eq!(small.test_ids, ["a"]);
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_at_once_as_not_retryable() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let mut big = event("big");
    big.labels
        .insert("blob".into(), "x".repeat(streams::MAX_MESSAGE_BYTES as usize));
    let err = bus
        .publish(subjects::event("ci"), &big)
        .await
        .expect_err("a message over 1 MiB cannot be published");
    assert!(!err.is_retryable(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("assay.v1.events.ci") && text.contains("over the limit of 1048576"),
        "{text}"
    );
}
