//! The timeout sweep against a real nats-server: an execution whose shards' ends are already
//! on the bus (the runner or launcher ended them at the deadline while this aggregator was
//! down or could not write) ends at the shards' own end times, recorded by the sweep from the
//! bus; one with no end on the bus is timed out by the sweep; and a bus end that does not
//! complete its execution (a result batch it announced never arrives) does not keep it
//! open.

use std::time::Duration;

use assay_bus::{Bus, NatsOptions, subjects};
use assay_proto::{Execution, ExecutionStatus, ShardState, ShardStatus};
use assay_result_aggregator::Aggregator;
use assay_store::Store;
use assay_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

const TIMEOUT_MS: i64 = 60_000;
const GRACE: Duration = Duration::from_secs(10);

fn execution(id: &str, created_at_ms: i64) -> Execution {
    Execution {
        id: id.into(),
        workflow: "w".into(),
        shard_count: 1,
        status: ExecutionStatus::Queued.into(),
        created_at_ms,
        timeout_ms: TIMEOUT_MS as u64,
        ..Execution::default()
    }
}

/// The launcher's report of a shard it killed at the execution's deadline.
fn killed_at_deadline(id: &str, deadline: i64) -> ShardStatus {
    ShardStatus {
        header: Some(assay_bus::header("test", format!("{id}/0/1/final"), None)),
        execution_id: id.into(),
        workflow: "w".into(),
        shard_index: 0,
        attempt: 1,
        state: ShardState::TimedOut.into(),
        reason: "shard exceeded its timeout of 60s; its processes were killed".into(),
        reporter: "launcher".into(),
        exit_code: -1,
        started_at_ms: deadline - TIMEOUT_MS,
        finished_at_ms: deadline,
        ..ShardStatus::default()
    }
}

async fn status_of(store: &Store, id: &str) -> (ExecutionStatus, i64) {
    let u = store.execution_update(id).await.unwrap().unwrap();
    (
        ExecutionStatus::try_from(u.status).unwrap(),
        u.finished_at_ms,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_records_ends_already_on_the_bus_with_their_own_times() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
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
    let store = Store::open(&dir.path().join("results.db")).unwrap();
    let agg = Aggregator::new(bus.clone(), store.clone());
    let now = assay_bus::now_ms();

    // Past its deadline + grace by 5 s; its shard's end is on the bus, not in the store.
    let (on_bus, created) = ("01J0000000000000000000BUS0", now - TIMEOUT_MS - 15_000);
    store
        .record_execution(execution(on_bus, created))
        .await
        .unwrap();
    let ended = killed_at_deadline(on_bus, created + TIMEOUT_MS);
    bus.publish(subjects::shard_status(on_bus, 0), &ended)
        .await
        .unwrap();
    // Just as late, with nothing on the bus: its runner and launcher are gone.
    let silent = "01J0000000000000000000SIL0";
    store
        .record_execution(execution(silent, created))
        .await
        .unwrap();
    // Its end was on the bus for far longer than the consumer needs, yet the execution
    // cannot complete: the end announced a result batch that never arrived.
    let (stale, old) = ("01J0000000000000000000STA0", now - TIMEOUT_MS - 120_000);
    store.record_execution(execution(stale, old)).await.unwrap();
    let mut incomplete = killed_at_deadline(stale, old + TIMEOUT_MS);
    incomplete.result_batches = 1;
    bus.publish(subjects::shard_status(stale, 0), &incomplete)
        .await
        .unwrap();

    assert_eq!(agg.sweep_timeouts(GRACE).await.unwrap(), 2);
    assert_eq!(
        status_of(&store, on_bus).await,
        (ExecutionStatus::TimedOut, created + TIMEOUT_MS),
        "an end on the bus counts with the shard's own end time"
    );
    let (status, at) = status_of(&store, silent).await;
    assert_eq!(status, ExecutionStatus::TimedOut);
    assert!(at >= now, "the sweep ends it when it runs");
    let (status, at) = status_of(&store, stale).await;
    assert_eq!(status, ExecutionStatus::TimedOut);
    assert!(
        at >= now,
        "an end that cannot complete is overruled by the sweep"
    );

    // The status consumer's turn later changes nothing.
    agg.on_status(ended, 1).await.unwrap();
    assert_eq!(
        status_of(&store, on_bus).await,
        (ExecutionStatus::TimedOut, created + TIMEOUT_MS)
    );
}
