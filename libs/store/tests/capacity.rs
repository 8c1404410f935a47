//! A shard waiting for a runner: between queued and running, shown with its reason, and
//! overtaken by its attempt's start whatever the order the statuses arrive in.

use assay_proto::v1::{Execution, ExecutionStatus, ShardState, ShardStatus};
use assay_store::Store;

fn status(id: &str, shard: u32, state: ShardState, reason: &str) -> ShardStatus {
    ShardStatus {
        execution_id: id.into(),
        shard_index: shard,
        attempt: 1,
        job_attempt: 1,
        state: state.into(),
        reason: reason.into(),
        started_at_ms: if state == ShardState::Running {
            2_000
        } else {
            0
        },
        reporter: "launcher".into(),
        ..ShardStatus::default()
    }
}

async fn shard_states(store: &Store, id: &str) -> (ExecutionStatus, Vec<(ShardState, String)>) {
    let u = store.execution_update(id).await.unwrap().unwrap();
    (
        u.status(),
        u.shards
            .iter()
            .map(|s| (s.state(), s.reason.clone()))
            .collect(),
    )
}

#[tokio::test]
async fn a_shard_waiting_for_capacity_shows_so_until_its_runner_starts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("results.db")).unwrap();
    let id = "01J00000000000000000000CAP";
    store
        .record_execution(Execution {
            id: id.into(),
            workflow: "wide".into(),
            shard_count: 2,
            status: ExecutionStatus::Queued.into(),
            created_at_ms: 1_000,
            ..Execution::default()
        })
        .await
        .unwrap();
    let busy = "1 of 1 runner busy";
    store
        .record_shard_status(status(id, 0, ShardState::Running, ""))
        .await
        .unwrap();
    assert!(
        store
            .record_shard_status(status(id, 1, ShardState::WaitingForCapacity, busy))
            .await
            .unwrap()
    );
    let (exec, shards) = shard_states(&store, id).await;
    assert_eq!(exec, ExecutionStatus::Running);
    assert_eq!(
        shards,
        [
            (ShardState::Running, String::new()),
            (ShardState::WaitingForCapacity, busy.to_string())
        ]
    );
    // Its start moves it on; a late copy of the waiting status does not move it back.
    store
        .record_shard_status(status(id, 1, ShardState::Running, ""))
        .await
        .unwrap();
    assert!(
        !store
            .record_shard_status(status(id, 1, ShardState::WaitingForCapacity, busy))
            .await
            .unwrap()
    );
    let (_, shards) = shard_states(&store, id).await;
    assert_eq!(shards[1], (ShardState::Running, String::new()));
}

#[tokio::test]
async fn an_execution_whose_shards_all_wait_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("results.db")).unwrap();
    let id = "01J00000000000000000000CAQ";
    store
        .record_shard_status(status(
            id,
            0,
            ShardState::WaitingForCapacity,
            "2 of 2 runners busy",
        ))
        .await
        .unwrap();
    let (exec, shards) = shard_states(&store, id).await;
    assert_eq!(exec, ExecutionStatus::Queued);
    assert_eq!(shards[0].0, ShardState::WaitingForCapacity);
}
