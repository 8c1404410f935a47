//! The duration history in bounded pieces, against a real nats-server: suites far past the
//! 1 MiB payload limit round-trip, a rewrite leaves nothing stale, readers never mix two
//! snapshots, and what does not decode is planned without.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use assay_bus::history::{self, PIECE_TESTS, manifest_key, piece_key};
use assay_bus::{Bus, NatsOptions, streams};
use assay_proto::{HistorySnapshot, TestEstimate};
use assay_testkit::NatsServer;
use futures::StreamExt;
use prost::Message;
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

/// A pytest-style id of about 100 characters.
fn long_id(prefix: &str, i: usize) -> String {
    let id = format!(
        "tests/integration/payments/test_{prefix}_checkout_flow.py::TestCheckout::test_case[region=eu-west-1/n={i:06}]"
    );
    assert!((95..=110).contains(&id.len()), "{}", id.len());
    id
}

fn snapshot(workflow: &str, prefix: &str, n: usize, mean_ms: f64) -> HistorySnapshot {
    HistorySnapshot {
        workflow: workflow.into(),
        tests: (0..n)
            .map(|i| TestEstimate {
                id: long_id(prefix, i),
                mean_ms,
                p90_ms: mean_ms as u64 + 1,
            })
            .collect(),
        updated_at_ms: assay_bus::now_ms(),
        shard_start_ms: 321.0,
    }
}

/// Keys of the history bucket that hold a value.
async fn keys(bus: &Bus) -> BTreeSet<String> {
    let kv = bus.kv(streams::KV_HISTORY).await.unwrap();
    kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await
}

/// Messages in the history bucket's stream (values and delete markers alike).
async fn stored_messages(bus: &Bus) -> u64 {
    let kv = bus.kv(streams::KV_HISTORY).await.unwrap();
    let mut stream = kv.stream.clone();
    stream.info().await.unwrap().state.messages
}

async fn write_and_measure(bus: &Bus, n: usize) -> (history::Written, Duration, Duration) {
    let wrote = snapshot("big", "big", n, 42.0);
    let start = Instant::now();
    let written = bus.write_history(&wrote).await.unwrap();
    let write_time = start.elapsed();
    let start = Instant::now();
    let read = bus.history_snapshot("big").await.unwrap().unwrap();
    let read_time = start.elapsed();
    assert_eq!(read.tests, wrote.tests);
    (written, write_time, read_time)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_tests_with_long_ids_round_trip() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let wrote = snapshot("big", "big", 20_000, 42.0);
    // What was stored before: the whole snapshot as one value, refused by the server.
    let kv = bus.kv(streams::KV_HISTORY).await.unwrap();
    let whole = kv
        .put("whole", wrote.encode_to_vec().into())
        .await
        .expect_err("a 20,000-test snapshot in one value passes the payload limit");
    assert!(
        whole.to_string().contains("maximum payload exceeded")
            || whole.to_string().contains("max payload"),
        "{whole}"
    );

    let (written, write_time, read_time) = write_and_measure(&bus, 20_000).await;
    assert_eq!(written.tests, 20_000);
    assert_eq!(written.pieces, 20_000usize.div_ceil(PIECE_TESTS));
    eprintln!(
        "history of 20000 tests: {} bytes in {} pieces, written in {:?}, read in {:?}",
        written.bytes, written.pieces, write_time, read_time
    );
    let planning = bus.planning_history("big").await.unwrap();
    assert_eq!(planning.len(), 20_000);
    let e = planning.get(&long_id("big", 19_999)).unwrap();
    assert_eq!((e.mean_ms, e.p90_ms), (42.0, 43.0));
    assert_eq!(planning.shard_start_ms(), Some(321.0));
    // The manifest is where it always was (what tests and tools wait on).
    assert!(kv.get(manifest_key("big")).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_with_fewer_tests_leaves_no_stale_pieces() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let first = bus
        .write_history(&snapshot("w", "a", 5_000, 1.0))
        .await
        .unwrap();
    assert_eq!(first.pieces, 3);
    // Another workflow's history is not touched by w's rewrites.
    let other = bus
        .write_history(&snapshot("w2", "o", 10, 1.0))
        .await
        .unwrap();
    let second = bus
        .write_history(&snapshot("w", "b", 100, 2.0))
        .await
        .unwrap();
    assert_eq!(second.pieces, 1);
    assert_ne!(first.generation, second.generation);
    let want: BTreeSet<String> = [
        manifest_key("w"),
        piece_key("w", &second.generation, 0),
        manifest_key("w2"),
        piece_key("w2", &other.generation, 0),
    ]
    .into();
    assert_eq!(keys(&bus).await, want);
    // No delete markers either: the stream holds exactly those four values.
    assert_eq!(stored_messages(&bus).await, 4);
    let read = bus.history_snapshot("w").await.unwrap().unwrap();
    assert_eq!(read.tests.len(), 100);
    assert!(read.tests.iter().all(|t| t.mean_ms == 2.0));
    assert_eq!(
        bus.history_snapshot("w2")
            .await
            .unwrap()
            .unwrap()
            .tests
            .len(),
        10
    );

    // Rewriting to no tests at all leaves the manifest alone.
    bus.write_history(&snapshot("w", "c", 0, 0.0))
        .await
        .unwrap();
    assert!(
        !keys(&bus)
            .await
            .iter()
            .any(|k| k.starts_with(&format!("{}.", manifest_key("w"))))
    );
    let read = bus.history_snapshot("w").await.unwrap().unwrap();
    assert!(read.tests.is_empty());
    assert_eq!(read.shard_start_ms, 321.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_mix_of_two_snapshots() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    // A and B differ in every test id and estimate, and in their size.
    let a = snapshot("w", "a", 3 * PIECE_TESTS + 10, 1.0);
    let b = snapshot("w", "b", 5 * PIECE_TESTS + 20, 2.0);
    bus.write_history(&a).await.unwrap();
    let writer = {
        let (bus, a, b) = (bus.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            for round in 0..16 {
                let next = if round % 2 == 0 { &b } else { &a };
                bus.write_history(next).await.unwrap();
            }
        })
    };
    let (mut seen_a, mut seen_b, mut replaced) = (0, 0, 0);
    while !writer.is_finished() {
        match bus.history_snapshot("w").await {
            Ok(Some(read)) if read.tests == a.tests => seen_a += 1,
            Ok(Some(read)) if read.tests == b.tests => seen_b += 1,
            Ok(other) => panic!(
                "a reader saw neither snapshot whole: {:?} tests",
                other.map(|s| s.tests.len())
            ),
            // Replaced on every try while reading: said so, never mixed.
            Err(e) if e.is_retryable() && e.to_string().contains("replaced") => replaced += 1,
            Err(e) => panic!("{e}"),
        }
    }
    writer.await.unwrap();
    eprintln!("reads: {seen_a} saw A, {seen_b} saw B, {replaced} replaced while reading");
    assert!(seen_a + seen_b > 0);
    // The last write (A) is what remains, with only its own pieces.
    let last = bus.history_snapshot("w").await.unwrap().unwrap();
    assert_eq!(last.tests, a.tests);
    assert_eq!(keys(&bus).await.len(), 1 + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_racing_leave_one_whole_snapshot_and_no_stray_pieces() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let a = snapshot("w", "a", 2 * PIECE_TESTS + 1, 1.0);
    let b = snapshot("w", "b", 4 * PIECE_TESTS + 1, 2.0);
    for _ in 0..5 {
        let (wa, wb) = tokio::join!(bus.write_history(&a), bus.write_history(&b));
        let (wa, wb) = (wa.unwrap(), wb.unwrap());
        let read = bus.history_snapshot("w").await.unwrap().unwrap();
        let winner = if read.tests == a.tests {
            wa
        } else {
            assert_eq!(read.tests, b.tests, "neither snapshot whole");
            wb
        };
        let want: BTreeSet<String> = std::iter::once(manifest_key("w"))
            .chain((0..winner.pieces).map(|i| piece_key("w", &winner.generation, i)))
            .collect();
        assert_eq!(keys(&bus).await, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_piece_or_manifest_is_planned_without() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let kv = bus.kv(streams::KV_HISTORY).await.unwrap();
    let garbage = bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]);

    let written = bus
        .write_history(&snapshot("w", "a", 3 * PIECE_TESTS, 1.0))
        .await
        .unwrap();
    kv.put(piece_key("w", &written.generation, 1), garbage.clone())
        .await
        .unwrap();
    let err = bus.history_snapshot("w").await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("cannot decode a history piece")
            && err
                .to_string()
                .contains(&piece_key("w", &written.generation, 1)),
        "{err}"
    );
    assert!(bus.planning_history("w").await.unwrap().is_empty());

    // A piece gone under an unchanged manifest.
    let written = bus
        .write_history(&snapshot("w", "a", 3 * PIECE_TESTS, 1.0))
        .await
        .unwrap();
    kv.purge(piece_key("w", &written.generation, 2))
        .await
        .unwrap();
    let err = bus.history_snapshot("w").await.unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(bus.planning_history("w").await.unwrap().is_empty());

    // A manifest that does not decode.
    kv.put(manifest_key("w"), garbage).await.unwrap();
    let err = bus.history_snapshot("w").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot decode the history manifest"),
        "{err}"
    );
    assert!(bus.planning_history("w").await.unwrap().is_empty());

    // The next write repairs it.
    bus.write_history(&snapshot("w", "a", 10, 1.0))
        .await
        .unwrap();
    assert_eq!(bus.planning_history("w").await.unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_snapshot_from_an_older_aggregator_still_reads() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let kv = bus.kv(streams::KV_HISTORY).await.unwrap();
    let old = snapshot("w", "old", 50, 5.0);
    kv.put(manifest_key("w"), old.encode_to_vec().into())
        .await
        .unwrap();
    assert_eq!(
        bus.history_snapshot("w").await.unwrap().unwrap().tests,
        old.tests
    );
    assert_eq!(bus.planning_history("w").await.unwrap().len(), 50);
    // And is replaced by pieces on the next write.
    let written = bus
        .write_history(&snapshot("w", "new", 5, 1.0))
        .await
        .unwrap();
    assert_eq!(written.pieces, 1);
    assert_eq!(bus.planning_history("w").await.unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_created() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    bus.jetstream()
        .delete_key_value(streams::KV_HISTORY)
        .await
        .unwrap();
    assert!(bus.planning_history("w").await.unwrap().is_empty());
    bus.write_history(&snapshot("w", "a", 3, 1.0))
        .await
        .unwrap();
    assert_eq!(bus.planning_history("w").await.unwrap().len(), 3);
}
