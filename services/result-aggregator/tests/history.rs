//! The aggregator's duration history against a real nats-server: a suite far past the 1 MiB
//! payload limit (one value per workflow before) is written in pieces the scheduler reads
//! back whole, and writing it again changes nothing a planner sees.

use std::collections::BTreeSet;

use assay_bus::history::manifest_key;
use assay_bus::{Bus, NatsOptions, streams};
use assay_proto::{
    Execution, ExecutionStatus, ShardState, ShardStatus, TestCaseBatch, TestCaseResult, TestStatus,
};
use assay_result_aggregator::Aggregator;
use assay_store::Store;
use assay_testkit::NatsServer;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

const TESTS: usize = 20_000;
const PER_BATCH: usize = 1_000;

fn id(i: usize) -> String {
    format!(
        "tests/integration/payments/test_checkout_flow.py::TestCheckout::test_case[region=eu-west-1/n={i:06}]"
    )
}

async fn keys(bus: &Bus) -> BTreeSet<String> {
    let kv = bus.kv(streams::KV_HISTORY).await.unwrap();
    kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await
}

/// A bus on `nats` with its streams, a store in `dir`, and an aggregator over both (not
/// consuming: the tests call it directly).
async fn stack(nats: &NatsServer, dir: &std::path::Path) -> (Bus, Store, Aggregator) {
    let bus = Bus::connect(
        &NatsOptions {
            url: nats.url(),
            ..Default::default()
        },
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    bus.ensure_topology().await.unwrap();
    let store = Store::open(&dir.join("results.db")).unwrap();
    let agg = Aggregator::new(bus.clone(), store.clone());
    (bus, store, agg)
}

/// Ends the one-shard execution (attempt 1 reported `batches` batches) and folds its test
/// cases into the store's history, as the aggregator does when an execution ends.
async fn end(store: &Store, execution: &str, batches: u32) {
    store
        .record_shard_status(ShardStatus {
            execution_id: execution.into(),
            attempt: 1,
            state: ShardState::Passed.into(),
            started_at_ms: assay_bus::now_ms(),
            finished_at_ms: assay_bus::now_ms(),
            result_batches: batches,
            ..ShardStatus::default()
        })
        .await
        .unwrap();
    assert!(store.fold_history(Some(execution)).await.unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_of_twenty_thousand_tests_has_its_history_written_and_read_whole() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (bus, store, agg) = stack(&nats, dir.path()).await;

    let execution = "01J00000000000000000000BIG";
    store
        .record_execution(Execution {
            id: execution.into(),
            workflow: "big".into(),
            shard_count: 1,
            status: ExecutionStatus::Queued.into(),
            created_at_ms: assay_bus::now_ms(),
            ..Execution::default()
        })
        .await
        .unwrap();
    for batch in 0..TESTS / PER_BATCH {
        let results = (batch * PER_BATCH..(batch + 1) * PER_BATCH)
            .map(|i| TestCaseResult {
                id: id(i),
                status: TestStatus::Passed.into(),
                duration_ms: 10 + (i % 7) as u64,
                ..TestCaseResult::default()
            })
            .collect();
        store
            .record_batch(TestCaseBatch {
                header: Some(assay_bus::header(
                    "test",
                    format!("{execution}/0/1/results/{batch}"),
                    None,
                )),
                execution_id: execution.into(),
                shard_index: 0,
                attempt: 1,
                batch: batch as u32,
                results,
                workflow: "big".into(),
                queue_batch: 0,
                queue_batches: 0,
            })
            .await
            .unwrap();
    }
    end(&store, execution, (TESTS / PER_BATCH) as u32).await;

    agg.snapshot_history("big").await.unwrap();
    let planning = bus.planning_history("big").await.unwrap();
    assert_eq!(planning.len(), TESTS);
    assert_eq!(planning.get(&id(3)).unwrap().mean_ms, 13.0);
    let first = keys(&bus).await;
    assert!(first.contains(&manifest_key("big")), "{first:?}");
    assert_eq!(
        first.len(),
        1 + TESTS.div_ceil(assay_bus::history::PIECE_TESTS)
    );

    // Written again (the final update delivered twice): the same history, as many pieces,
    // none of the first write's left.
    agg.snapshot_history("big").await.unwrap();
    let again = bus.history_snapshot("big").await.unwrap().unwrap();
    assert_eq!(again.tests.len(), TESTS);
    let second = keys(&bus).await;
    assert_eq!(second.len(), first.len());
    assert_eq!(
        first.intersection(&second).count(),
        1,
        "only the manifest key stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_bucket_deleted_after_start_is_created_again() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (bus, store, agg) = stack(&nats, dir.path()).await;
    let execution = "01J00000000000000000000SML";
    store
        .record_execution(Execution {
            id: execution.into(),
            workflow: "small".into(),
            shard_count: 1,
            status: ExecutionStatus::Queued.into(),
            created_at_ms: assay_bus::now_ms(),
            ..Execution::default()
        })
        .await
        .unwrap();
    store
        .record_batch(TestCaseBatch {
            header: Some(assay_bus::header(
                "test",
                format!("{execution}/0/1/results/0"),
                None,
            )),
            execution_id: execution.into(),
            attempt: 1,
            results: (0..3)
                .map(|i| TestCaseResult {
                    id: id(i),
                    status: TestStatus::Passed.into(),
                    duration_ms: 5,
                    ..TestCaseResult::default()
                })
                .collect(),
            workflow: "small".into(),
            ..TestCaseBatch::default()
        })
        .await
        .unwrap();
    end(&store, execution, 1).await;
    agg.snapshot_history("small").await.unwrap();
    bus.jetstream()
        .delete_key_value(streams::KV_HISTORY)
        .await
        .unwrap();
    agg.snapshot_history("small").await.unwrap();
    assert_eq!(bus.planning_history("small").await.unwrap().len(), 3);
}
