//! Behaviour of the SQLite result store against real files.

use assay_proto::v1::{
    EventRecord, Execution, ExecutionStatus, ExecutionUpdate, Header, Provenance, ShardState,
    ShardStatus, TestCaseBatch, TestCaseResult, TestStatus,
};
use assay_store::{EventFilter, ExecutionFilter, Store};
use proptest::prelude::*;
use tempfile::TempDir;

fn open() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("nested/dir/results.db")).unwrap();
    (dir, store)
}

fn plan(id: &str, workflow: &str, shards: u32) -> Execution {
    Execution {
        header: Some(Header {
            occurred_at_ms: 1_000,
            ..Header::default()
        }),
        id: id.into(),
        workflow: workflow.into(),
        shard_count: shards,
        status: ExecutionStatus::Queued.into(),
        trigger: "on-push".into(),
        cause: "evt-1".into(),
        config: [("baseUrl".to_string(), "http://x".to_string())].into(),
        labels: [("team".to_string(), "payments".to_string())].into(),
        created_at_ms: 1_000,
        timeout_ms: 60_000,
        ..Execution::default()
    }
}

fn status(id: &str, shard: u32, attempt: u32, state: ShardState) -> ShardStatus {
    let terminal = assay_store::shard_state_is_terminal(state);
    ShardStatus {
        execution_id: id.into(),
        shard_index: shard,
        attempt,
        state: state.into(),
        started_at_ms: if state == ShardState::Queued {
            0
        } else {
            2_000
        },
        finished_at_ms: if terminal {
            5_000 + i64::from(shard)
        } else {
            0
        },
        reporter: "runner".into(),
        ..ShardStatus::default()
    }
}

fn finished(id: &str, shard: u32, state: ShardState, batches: u32) -> ShardStatus {
    ShardStatus {
        result_batches: batches,
        exit_code: if state == ShardState::Passed { 0 } else { 1 },
        ..status(id, shard, 1, state)
    }
}

fn test(id: &str, status: TestStatus) -> TestCaseResult {
    TestCaseResult {
        id: id.into(),
        name: id.into(),
        classname: "suite".into(),
        status: status.into(),
        duration_ms: 7,
        ..TestCaseResult::default()
    }
}

fn batch(id: &str, shard: u32, n: u32, results: Vec<TestCaseResult>) -> TestCaseBatch {
    TestCaseBatch {
        execution_id: id.into(),
        shard_index: shard,
        attempt: 1,
        batch: n,
        results,
        ..TestCaseBatch::default()
    }
}

fn of_workflow(workflow: &str) -> ExecutionFilter {
    ExecutionFilter {
        workflow: Some(workflow.into()),
        ..ExecutionFilter::default()
    }
}

async fn update(store: &Store, id: &str) -> ExecutionUpdate {
    store.execution_update(id).await.unwrap().unwrap()
}

fn status_of(u: &ExecutionUpdate) -> ExecutionStatus {
    ExecutionStatus::try_from(u.status).unwrap()
}

#[tokio::test]
async fn full_run_passes_and_counts_tests() {
    let (_dir, store) = open();
    let id = "01J0000000000000000000000A";
    assert!(store.record_execution(plan(id, "e2e", 2)).await.unwrap());
    assert_eq!(
        status_of(&update(&store, id).await),
        ExecutionStatus::Queued
    );

    store
        .record_shard_status(status(id, 0, 1, ShardState::Running))
        .await
        .unwrap();
    assert_eq!(
        status_of(&update(&store, id).await),
        ExecutionStatus::Running
    );

    store
        .record_batch(batch(
            id,
            0,
            0,
            vec![
                test("a", TestStatus::Passed),
                test("b", TestStatus::Skipped),
            ],
        ))
        .await
        .unwrap();
    store
        .record_batch(batch(id, 1, 0, vec![test("c", TestStatus::Passed)]))
        .await
        .unwrap();
    store
        .record_shard_status(finished(id, 0, ShardState::Passed, 1))
        .await
        .unwrap();
    store
        .record_shard_status(finished(id, 1, ShardState::Passed, 1))
        .await
        .unwrap();

    let u = update(&store, id).await;
    assert_eq!(status_of(&u), ExecutionStatus::Passed);
    assert_eq!((u.passed, u.failed, u.errored, u.skipped), (2, 0, 0, 1));
    assert_eq!(u.workflow, "e2e");
    assert_eq!(u.created_at_ms, 1_000);
    assert_eq!(u.finished_at_ms, 5_001);
    assert_eq!(u.shards.len(), 2);
    assert_eq!(u.shards[0].duration_ms, 3_000);
    assert_eq!(u.shards[0].passed, 1);
    assert_eq!(u.shards[0].skipped, 1);

    let detail = store.execution_detail(id).await.unwrap().unwrap();
    assert_eq!(detail.execution.as_ref(), Some(&u));
    let ids: Vec<_> = detail.shards[0]
        .tests
        .iter()
        .map(|t| t.id.as_str())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(detail.shards[1].exit_code, 0);
    assert!(store.non_terminal_executions().await.unwrap().is_empty());

    let record = store.execution(id).await.unwrap().unwrap();
    assert_eq!(record.labels["team"], "payments");
    assert_eq!(record.status, i32::from(ExecutionStatus::Passed));
}

#[tokio::test]
async fn recording_everything_twice_gives_the_same_update() {
    let (_dir, store) = open();
    let id = "01J0000000000000000000000B";
    let messages = || {
        (
            plan(id, "unit", 1),
            status(id, 0, 1, ShardState::Running),
            batch(id, 0, 0, vec![test("a", TestStatus::Failed)]),
            finished(id, 0, ShardState::Failed, 1),
        )
    };
    let (p, r, b, f) = messages();
    assert!(store.record_execution(p).await.unwrap());
    assert!(store.record_shard_status(r).await.unwrap());
    assert!(store.record_batch(b).await.unwrap());
    assert!(store.record_shard_status(f).await.unwrap());
    let first = store.execution_detail(id).await.unwrap();

    let (p, r, b, f) = messages();
    assert!(!store.record_execution(p).await.unwrap());
    assert!(!store.record_shard_status(r).await.unwrap());
    assert!(!store.record_batch(b).await.unwrap());
    assert!(!store.record_shard_status(f).await.unwrap());
    assert_eq!(store.execution_detail(id).await.unwrap(), first);
    let u = update(&store, id).await;
    assert_eq!(status_of(&u), ExecutionStatus::Failed);
    assert_eq!(u.failed, 1);
}

#[tokio::test]
async fn status_before_plan_is_kept_and_plan_fills_in() {
    let (_dir, store) = open();
    let id = "01J0000000000000000000000C";
    assert!(store.execution_update(id).await.unwrap().is_none());
    assert_eq!(store.bump_revision(id).await.unwrap(), 1);
    store
        .record_shard_status(status(id, 2, 1, ShardState::Running))
        .await
        .unwrap();

    let u = update(&store, id).await;
    assert_eq!(status_of(&u), ExecutionStatus::Running);
    assert_eq!(u.workflow, "");
    assert_eq!(
        u.shards.len(),
        3,
        "shard count guessed from the highest index"
    );
    assert_eq!(u.shards[0].state, i32::from(ShardState::Queued));
    assert_eq!(u.revision, 1);
    assert!(
        store
            .list_executions(&Default::default(), 10)
            .await
            .unwrap()
            .is_empty(),
        "unplanned executions are not listed"
    );

    assert!(store.record_execution(plan(id, "e2e", 4)).await.unwrap());
    let u = update(&store, id).await;
    assert_eq!(u.workflow, "e2e");
    assert_eq!(u.shards.len(), 4);
    assert_eq!(u.revision, 1, "the plan keeps the revision");
    assert_eq!(store.bump_revision(id).await.unwrap(), 2);
}

#[tokio::test]
async fn terminal_status_waits_for_its_batches() {
    let (_dir, store) = open();
    let id = "01J0000000000000000000000D";
    store.record_execution(plan(id, "e2e", 1)).await.unwrap();
    store
        .record_shard_status(finished(id, 0, ShardState::Passed, 2))
        .await
        .unwrap();
    assert_eq!(
        status_of(&update(&store, id).await),
        ExecutionStatus::Running
    );

    store
        .record_batch(batch(id, 0, 1, vec![test("b", TestStatus::Passed)]))
        .await
        .unwrap();
    assert_eq!(
        status_of(&update(&store, id).await),
        ExecutionStatus::Running
    );
    assert_eq!(store.non_terminal_executions().await.unwrap().len(), 1);

    store
        .record_batch(batch(id, 0, 0, vec![test("a", TestStatus::Errored)]))
        .await
        .unwrap();
    let u = update(&store, id).await;
    assert_eq!(status_of(&u), ExecutionStatus::Failed);
    assert_eq!(u.reason, "1 test failed");
    assert!(store.non_terminal_executions().await.unwrap().is_empty());
}

#[tokio::test]
async fn first_terminal_state_wins() {
    let (_dir, store) = open();
    let id = "01J0000000000000000000000E";
    store.record_execution(plan(id, "e2e", 2)).await.unwrap();

    // Runner first, launcher later.
    assert!(
        store
            .record_shard_status(finished(id, 0, ShardState::Passed, 0))
            .await
            .unwrap()
    );
    let late = ShardStatus {
        reason: "pod deleted".into(),
        reporter: "launcher".into(),
        ..finished(id, 0, ShardState::Errored, 0)
    };
    assert!(!store.record_shard_status(late).await.unwrap());
    // Launcher first, runner later.
    let early = ShardStatus {
        reason: "OOMKilled".into(),
        ..finished(id, 1, ShardState::Errored, 0)
    };
    assert!(store.record_shard_status(early).await.unwrap());
    assert!(
        !store
            .record_shard_status(finished(id, 1, ShardState::Passed, 0))
            .await
            .unwrap()
    );
    // Nor does a late running status move a shard back.
    assert!(
        !store
            .record_shard_status(status(id, 1, 1, ShardState::Running))
            .await
            .unwrap()
    );

    let u = update(&store, id).await;
    assert_eq!(u.shards[0].state, i32::from(ShardState::Passed));
    assert_eq!(u.shards[1].state, i32::from(ShardState::Errored));
    assert_eq!(status_of(&u), ExecutionStatus::Errored);
    assert_eq!(u.reason, "shard 1: OOMKilled");
}

#[tokio::test]
async fn rejection_and_finalize_end_an_execution_once() {
    let (_dir, store) = open();
    let id = "01J0000000000000000000000F";
    store.record_execution(plan(id, "e2e", 1)).await.unwrap();
    let rejected = Execution {
        status: ExecutionStatus::Cancelled.into(),
        reason: "concurrency policy forbid".into(),
        ..plan(id, "e2e", 1)
    };
    assert!(store.record_execution(rejected.clone()).await.unwrap());
    assert!(!store.record_execution(rejected).await.unwrap());
    assert!(
        !store
            .finalize(id, ExecutionStatus::TimedOut, "timeout", 9)
            .await
            .unwrap()
    );
    let u = update(&store, id).await;
    assert_eq!(status_of(&u), ExecutionStatus::Cancelled);
    assert_eq!(u.reason, "concurrency policy forbid");
    assert_eq!(u.finished_at_ms, 1_000);

    let other = "01J0000000000000000000000G";
    store.record_execution(plan(other, "e2e", 1)).await.unwrap();
    assert_eq!(
        store.non_terminal_executions().await.unwrap(),
        [(other.to_string(), 1_000, 60_000, 1)]
    );
    assert!(
        store
            .finalize(
                other,
                ExecutionStatus::TimedOut,
                "timed out after 1m",
                61_000
            )
            .await
            .unwrap()
    );
    // A shard finishing afterwards does not flip it back.
    store
        .record_shard_status(finished(other, 0, ShardState::Passed, 0))
        .await
        .unwrap();
    let u = update(&store, other).await;
    assert_eq!(status_of(&u), ExecutionStatus::TimedOut);
    assert_eq!(u.finished_at_ms, 61_000);
    assert_eq!(u.shards[0].state, i32::from(ShardState::Passed));

    let err = store
        .finalize(other, ExecutionStatus::Running, "", 0)
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn invalid_messages_are_permanent_errors() {
    let (_dir, store) = open();
    let bad_state = ShardStatus {
        state: 42,
        ..status("x", 0, 1, ShardState::Running)
    };
    let err = store.record_shard_status(bad_state).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let err = store
        .record_batch(batch("x", 0, 0, vec![test("", TestStatus::Passed)]))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let err = store
        .record_execution(plan("", "e2e", 1))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}

#[tokio::test]
async fn list_is_newest_first_and_filters_by_workflow() {
    let (_dir, store) = open();
    let ids = [
        ("01J0000000000000000000000K", "a"),
        ("01J0000000000000000000000M", "b"),
        ("01J0000000000000000000000N", "a"),
        ("01J0000000000000000000000P", "a"),
    ];
    // Recorded out of order: the id (a ULID) decides.
    for (id, workflow) in [ids[2], ids[0], ids[3], ids[1]] {
        store.record_execution(plan(id, workflow, 1)).await.unwrap();
    }
    let listed =
        |v: Vec<ExecutionUpdate>| v.into_iter().map(|u| u.execution_id).collect::<Vec<_>>();
    assert_eq!(
        listed(store.list_executions(&Default::default(), 0).await.unwrap()),
        [ids[3].0, ids[2].0, ids[1].0, ids[0].0]
    );
    assert_eq!(
        listed(store.list_executions(&of_workflow("a"), 2).await.unwrap()),
        [ids[3].0, ids[2].0]
    );
    assert!(
        store
            .list_executions(&of_workflow("nope"), 5)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn data_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.db");
    let id = "01J0000000000000000000000Q";
    let before = {
        let store = Store::open(&path).unwrap();
        store.record_execution(plan(id, "e2e", 1)).await.unwrap();
        store
            .record_batch(batch(id, 0, 0, vec![test("a", TestStatus::Passed)]))
            .await
            .unwrap();
        store
            .record_shard_status(finished(id, 0, ShardState::Passed, 1))
            .await
            .unwrap();
        store.bump_revision(id).await.unwrap();
        store.execution_detail(id).await.unwrap().unwrap()
    };
    let store = Store::open(&path).unwrap();
    assert_eq!(store.execution_detail(id).await.unwrap().unwrap(), before);
    assert_eq!(store.bump_revision(id).await.unwrap(), 2);
    assert!(
        !store
            .record_batch(batch(id, 0, 0, vec![test("a", TestStatus::Passed)]))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn concurrent_clones_share_one_store() {
    let (_dir, store) = open();
    let id = "01J0000000000000000000000R";
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.bump_revision(id).await })
        })
        .collect();
    let mut revisions = Vec::new();
    for task in tasks {
        revisions.push(task.await.unwrap().unwrap());
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=16).collect::<Vec<u64>>());
}

/// Every message of one execution, each shard with one attempt and one terminal outcome.
#[derive(Debug, Clone)]
enum Message {
    Plan(Box<Execution>),
    Status(ShardStatus),
    Batch(TestCaseBatch),
}

fn execution_messages() -> impl Strategy<Value = Vec<Message>> {
    let outcome = prop_oneof![
        Just(ShardState::Passed),
        Just(ShardState::Failed),
        Just(ShardState::Errored),
        Just(ShardState::Cancelled),
        Just(ShardState::TimedOut),
    ];
    let test_status = prop_oneof![
        Just(TestStatus::Passed),
        Just(TestStatus::Failed),
        Just(TestStatus::Errored),
        Just(TestStatus::Skipped),
    ];
    // Per shard: an outcome, batches of test statuses, whether they came through the work
    // queue (which then holds every queued batch of the execution, and says so), and whether
    // its first runner was killed after publishing them (its status then announces none:
    // the launcher reports it errored, and a second attempt finds the queue drained).
    let shard = (
        outcome,
        prop::collection::vec(prop::collection::vec(test_status, 0..4), 0..4),
        any::<bool>(),
        any::<bool>(),
    );
    prop::collection::vec(shard, 1..4).prop_map(|mut shards| {
        let id = "01J0000000000000000000000S";
        // A runner killed with its results in flight is waited for only when every shard
        // passes; otherwise the execution ends without them and what it counts depends on
        // the order, by design.
        if shards
            .iter()
            .any(|(outcome, ..)| *outcome != ShardState::Passed)
        {
            for (_, _, _, killed) in &mut shards {
                *killed = false;
            }
        }
        for (_, _, queued, killed) in &mut shards {
            *killed &= *queued;
        }
        let total: u32 = shards
            .iter()
            .filter(|(_, _, queued, _)| *queued)
            .map(|(_, batches, ..)| batches.len() as u32)
            .sum();
        let mut messages = vec![Message::Plan(Box::new(plan(
            id,
            "prop",
            shards.len() as u32,
        )))];
        let mut seq = 0;
        for (index, (outcome, batches, queued, killed)) in shards.into_iter().enumerate() {
            let index = index as u32;
            messages.push(Message::Status(status(id, index, 1, ShardState::Queued)));
            messages.push(Message::Status(status(id, index, 1, ShardState::Running)));
            // A runner that drained the queue says its total in its final status too.
            let queue_batches = if queued { total } else { 0 };
            if killed {
                let mut errored = finished(id, index, ShardState::Errored, 0);
                errored.will_retry = true;
                messages.push(Message::Status(errored));
                messages.push(Message::Status(ShardStatus {
                    result_batches: 0,
                    exit_code: 0,
                    queue_batches,
                    ..status(id, index, 2, outcome)
                }));
            } else {
                messages.push(Message::Status(ShardStatus {
                    queue_batches,
                    ..finished(id, index, outcome, batches.len() as u32)
                }));
            }
            for (n, statuses) in batches.into_iter().enumerate() {
                let results = statuses
                    .into_iter()
                    .enumerate()
                    .map(|(t, s)| test(&format!("s{index}b{n}t{t}"), s))
                    .collect();
                let mut b = batch(id, index, n as u32, results);
                if queued {
                    seq += 1;
                    b.queue_batch = seq;
                    b.queue_batches = total;
                }
                messages.push(Message::Batch(b));
            }
        }
        messages
    })
}

async fn apply(store: &Store, messages: &[Message]) {
    for message in messages.iter().cloned() {
        match message {
            Message::Plan(e) => store.record_execution(*e).await.unwrap(),
            Message::Status(s) => store.record_shard_status(s).await.unwrap(),
            Message::Batch(b) => store.record_batch(b).await.unwrap(),
        };
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn shuffled_and_duplicated_delivery_gives_the_same_result(
        (messages, shuffled) in execution_messages().prop_flat_map(|messages| {
            let duplicates = prop::collection::vec(any::<prop::sample::Index>(), 0..6);
            (Just(messages.clone()), duplicates).prop_flat_map(|(messages, duplicates)| {
                let mut delivered = messages.clone();
                delivered.extend(duplicates.iter().map(|i| i.get(&messages).clone()));
                (Just(messages), Just(delivered).prop_shuffle())
            })
        })
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (in_order, out_of_order) = runtime.block_on(async {
            let (_a, a) = open();
            let (_b, b) = open();
            apply(&a, &messages).await;
            apply(&b, &shuffled).await;
            let id = "01J0000000000000000000000S";
            (
                a.execution_detail(id).await.unwrap(),
                b.execution_detail(id).await.unwrap(),
            )
        });
        let in_order = in_order.unwrap();
        let status = in_order.execution.as_ref().map(|u| u.status);
        prop_assert!(status.is_some_and(|s| ExecutionStatus::try_from(s)
            .is_ok_and(assay_store::execution_status_is_terminal)));
        prop_assert_eq!(Some(in_order), out_of_order);
    }
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.db");
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, assay_store::Error::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn history_follows_each_new_result_once_and_ignores_skips_for_durations() {
    let (_dir, store) = open();
    let timed = |id: &str, status: TestStatus, ms: u64| TestCaseResult {
        duration_ms: ms,
        ..test(id, status)
    };
    // Two executions of "w"; the batch of the second is delivered twice.
    for (exec, ms) in [("E1", 100), ("E2", 200)] {
        store.record_execution(plan(exec, "w", 1)).await.unwrap();
        let b = batch(
            exec,
            0,
            0,
            vec![
                timed("slow", TestStatus::Passed, ms),
                timed(
                    "flaky",
                    if exec == "E1" {
                        TestStatus::Failed
                    } else {
                        TestStatus::Passed
                    },
                    10,
                ),
                timed("off", TestStatus::Skipped, 0),
            ],
        );
        store.record_batch(b.clone()).await.unwrap();
        store.record_batch(b.clone()).await.unwrap();
        // Test cases reach the history when their execution has ended, once.
        assert_eq!(
            store.fold_history(Some(exec)).await.unwrap(),
            0,
            "still running"
        );
        store
            .record_shard_status(finished(exec, 0, ShardState::Failed, 1))
            .await
            .unwrap();
        assert_eq!(store.fold_history(Some(exec)).await.unwrap(), 3);
        assert_eq!(store.fold_history(None).await.unwrap(), 0, "folded once");
        // A batch delivered again after the end is late: it changes nothing either.
        store.record_batch(b).await.unwrap();
        assert_eq!(store.fold_history(None).await.unwrap(), 0);
    }
    // Each fold that added tests is a new version of the workflow's history.
    assert_eq!(store.history_version("w").await.unwrap(), 2);
    assert_eq!(store.history_version("other").await.unwrap(), 0);
    let h = store.history("w", None).await.unwrap();
    let ids: Vec<_> = h.iter().map(|t| t.test_id.as_str()).collect();
    assert_eq!(ids, ["slow", "flaky", "off"], "slowest first");
    let slow = &h[0];
    assert_eq!((slow.runs, slow.passed, slow.samples), (2, 2, 2));
    // EWMA: 100, then 0.3 * 200 + 0.7 * 100 = 130.
    assert!((slow.mean_ms - 130.0).abs() < 1e-9, "{}", slow.mean_ms);
    assert_eq!((slow.p50_ms, slow.p90_ms, slow.last_ms), (100, 200, 200));
    let flaky = &h[1];
    assert_eq!((flaky.passed, flaky.failed), (1, 1));
    let off = &h[2];
    assert_eq!((off.runs, off.skipped, off.samples), (2, 2, 0));
    // One test, and another workflow sees nothing.
    assert_eq!(store.history("w", Some("flaky")).await.unwrap().len(), 1);
    assert!(store.history("other", None).await.unwrap().is_empty());
}

/// Every estimate of `workflow` read page by page as a snapshot writer does; also how many
/// pages it took.
async fn all_estimates(store: &Store, seen_since: i64, limit: usize) -> (Vec<String>, usize) {
    let (mut ids, mut pages, mut after) = (Vec::new(), 0, String::new());
    loop {
        let (page, last) = store
            .history_estimates("w", seen_since, &after, limit)
            .await
            .unwrap();
        pages += 1;
        ids.extend(page.into_iter().map(|t| t.id));
        match last {
            Some(id) => after = id,
            None => return (ids, pages),
        }
    }
}

#[tokio::test]
async fn history_estimates_page_over_measured_recent_tests_only() {
    let (_dir, store) = open();
    store.record_execution(plan("E1", "w", 1)).await.unwrap();
    let mut results = vec![
        TestCaseResult {
            duration_ms: 5,
            ..test("a", TestStatus::Passed)
        },
        test("b", TestStatus::Skipped),
        TestCaseResult {
            duration_ms: 7,
            ..test("c", TestStatus::Failed)
        },
    ];
    // Ten tests never measured (only ever skipped) between the measured ones and the last.
    results.extend((0..10).map(|i| test(&format!("s{i:02}"), TestStatus::Skipped)));
    results.push(TestCaseResult {
        duration_ms: 9,
        ..test("z", TestStatus::Passed)
    });
    store
        .record_batch(batch("E1", 0, 0, results))
        .await
        .unwrap();
    store
        .record_shard_status(finished("E1", 0, ShardState::Failed, 1))
        .await
        .unwrap();
    store.fold_history(Some("E1")).await.unwrap();

    // Pages of two ids: a page of only skipped tests is empty but not the last.
    let (ids, pages) = all_estimates(&store, 0, 2).await;
    assert_eq!(ids, ["a", "c", "z"]);
    assert_eq!(pages, 8, "14 ids in pages of 2, then the empty end");
    let (ids, _) = all_estimates(&store, 0, 1_000).await;
    assert_eq!(ids, ["a", "c", "z"]);
    // Tests not seen since the given time are left out.
    let (ids, _) = all_estimates(&store, i64::MAX, 3).await;
    assert!(ids.is_empty());
    let (page, _) = store.history_estimates("w", 0, "", 1).await.unwrap();
    assert_eq!((page[0].mean_ms, page[0].p90_ms), (5.0, 5));
}

#[tokio::test]
async fn retried_tests_keep_their_attempts_and_flaky_ones_are_counted_as_passed() {
    let (_dir, store) = open();
    let id = "01J0000000000000000000000F";
    let retried = |id: &str, status: TestStatus, attempts: u32, flaky: bool| TestCaseResult {
        attempts,
        flaky,
        ..test(id, status)
    };
    let messages = || {
        (
            plan(id, "flaky", 2),
            batch(
                id,
                0,
                0,
                vec![
                    retried("a", TestStatus::Passed, 2, true),
                    retried("b", TestStatus::Passed, 1, false),
                    // From a runner before per-test retries: ran once.
                    retried("c", TestStatus::Skipped, 0, false),
                ],
            ),
            batch(
                id,
                1,
                0,
                vec![
                    retried("d", TestStatus::Failed, 3, false),
                    retried("e", TestStatus::Passed, 3, true),
                    // Only a pass can be flaky.
                    retried("f", TestStatus::Errored, 2, true),
                ],
            ),
            finished(id, 0, ShardState::Passed, 1),
            finished(id, 1, ShardState::Failed, 1),
        )
    };
    let (p, b0, b1, f0, f1) = messages();
    store.record_execution(p).await.unwrap();
    assert!(store.record_batch(b0).await.unwrap());
    assert!(store.record_batch(b1).await.unwrap());
    store.record_shard_status(f0).await.unwrap();
    store.record_shard_status(f1).await.unwrap();

    let u = update(&store, id).await;
    assert_eq!(status_of(&u), ExecutionStatus::Failed);
    assert_eq!(
        (u.passed, u.failed, u.errored, u.skipped, u.flaky),
        (3, 1, 1, 1, 2)
    );
    assert_eq!((u.shards[0].flaky, u.shards[1].flaky), (1, 1));
    assert_eq!(u.shards[0].passed, 2);

    let detail = store.execution_detail(id).await.unwrap().unwrap();
    let got: Vec<(&str, u32, bool)> = detail
        .shards
        .iter()
        .flat_map(|s| &s.tests)
        .map(|t| (t.id.as_str(), t.attempts, t.flaky))
        .collect();
    assert_eq!(
        got,
        [
            ("a", 2, true),
            ("b", 1, false),
            ("c", 1, false),
            ("d", 3, false),
            ("e", 3, true),
            ("f", 2, false),
        ]
    );

    // Redelivery changes nothing.
    let (p, b0, b1, f0, f1) = messages();
    assert!(!store.record_execution(p).await.unwrap());
    assert!(!store.record_batch(b0).await.unwrap());
    assert!(!store.record_batch(b1).await.unwrap());
    assert!(!store.record_shard_status(f0).await.unwrap());
    assert!(!store.record_shard_status(f1).await.unwrap());
    assert_eq!(store.execution_detail(id).await.unwrap().unwrap(), detail);
    // History keeps one (the final) result per test case.
    store.fold_history(None).await.unwrap();
    let history = store.history("flaky", Some("d")).await.unwrap();
    assert_eq!((history[0].runs, history[0].failed), (1, 1));
}

#[tokio::test]
async fn test_cases_stored_before_the_attempts_column_ran_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.db");
    let id = "01J0000000000000000000000G";
    {
        let store = Store::open(&path).unwrap();
        store.record_execution(plan(id, "old", 1)).await.unwrap();
    }
    // A row as schema version 4 wrote it: no attempts or flaky.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO test_cases (execution_id, shard_index, attempt, test_id, status)
         VALUES (?1, 0, 1, 'old', 1)",
        [id],
    )
    .unwrap();
    drop(conn);
    let store = Store::open(&path).unwrap();
    store
        .record_shard_status(finished(id, 0, ShardState::Passed, 0))
        .await
        .unwrap();
    let detail = store.execution_detail(id).await.unwrap().unwrap();
    let t = &detail.shards[0].tests[0];
    assert_eq!((t.id.as_str(), t.attempts, t.flaky), ("old", 1, false));
    assert_eq!(update(&store, id).await.flaky, 0);
}

#[tokio::test]
async fn shard_start_cost_is_the_median_creation_to_start_of_first_attempts() {
    let (_dir, store) = open();
    assert_eq!(store.shard_start_ms("w").await.unwrap(), None);
    store.record_execution(plan("E1", "w", 3)).await.unwrap();
    for (shard, started) in [(0, 1_200), (1, 1_400), (2, 1_300)] {
        let mut s = status("E1", shard, 1, ShardState::Running);
        s.started_at_ms = started;
        store.record_shard_status(s).await.unwrap();
    }
    // A retry's late start is not a start cost.
    let mut retry = status("E1", 0, 2, ShardState::Running);
    retry.started_at_ms = 90_000;
    store.record_shard_status(retry).await.unwrap();
    assert_eq!(store.shard_start_ms("w").await.unwrap(), Some(300.0));
    assert_eq!(store.shard_start_ms("other").await.unwrap(), None);
}

fn queued_batch(
    id: &str,
    shard: u32,
    attempt: u32,
    n: u32,
    queue_batch: u32,
    results: Vec<TestCaseResult>,
) -> TestCaseBatch {
    TestCaseBatch {
        attempt,
        queue_batch,
        ..batch(id, shard, n, results)
    }
}

fn ids_of(detail: &assay_proto::v1::ExecutionDetail, shard: usize) -> Vec<(String, i32)> {
    detail.shards[shard]
        .tests
        .iter()
        .map(|t| (t.id.clone(), t.status))
        .collect()
}

#[tokio::test]
async fn a_duration_attempt_counts_its_own_tests_once_and_its_tail_batches_for_good() {
    let (_dir, store) = open();
    let id = "01J0000000000000000000000T";
    let (p, f) = (TestStatus::Passed, TestStatus::Failed);
    store.record_execution(plan(id, "dur", 2)).await.unwrap();
    // Shard 0, attempt 1: its planned tests (a passes, b fails), then tail batch 0.
    for b in [
        queued_batch(id, 0, 1, 0, 0, vec![test("a", p), test("b", f)]),
        queued_batch(id, 0, 1, 1, 1, vec![test("t1", p)]),
    ] {
        assert!(store.record_batch(b).await.unwrap());
    }
    let mut retry = finished(id, 0, ShardState::Errored, 2);
    retry.will_retry = true;
    store.record_shard_status(retry).await.unwrap();
    // Shard 1 took tail batch 0 over after a lease it thought was lost: ignored.
    store
        .record_batch(queued_batch(id, 1, 1, 0, 1, vec![test("t1", f)]))
        .await
        .unwrap();
    store
        .record_batch(queued_batch(id, 1, 1, 1, 0, vec![test("c", p)]))
        .await
        .unwrap();
    store
        .record_shard_status(finished(id, 1, ShardState::Passed, 2))
        .await
        .unwrap();
    // Shard 0, attempt 2: its planned tests again (both pass now), then tail batch 1.
    for b in [
        queued_batch(id, 0, 2, 0, 0, vec![test("a", p), test("b", p)]),
        queued_batch(id, 0, 2, 1, 2, vec![test("t2", p)]),
    ] {
        assert!(store.record_batch(b).await.unwrap());
    }
    store
        .record_shard_status(ShardStatus {
            result_batches: 2,
            ..status(id, 0, 2, ShardState::Passed)
        })
        .await
        .unwrap();

    let u = update(&store, id).await;
    assert_eq!(status_of(&u), ExecutionStatus::Passed, "{u:?}");
    // a, b (attempt 2 only), t1 (attempt 1's tail batch), t2, c: five tests, all passed.
    assert_eq!((u.passed, u.failed, u.errored), (5, 0, 0), "{u:?}");
    let detail = store.execution_detail(id).await.unwrap().unwrap();
    let pass = TestStatus::Passed as i32;
    assert_eq!(
        ids_of(&detail, 0),
        [("a", pass), ("b", pass), ("t1", pass), ("t2", pass)].map(|(t, s)| (t.to_string(), s))
    );
    assert_eq!(ids_of(&detail, 1), [("c".to_string(), pass)]);
}

/// A database written before the tallies (schema version 11) reads the same once upgraded,
/// and counts on from there: the migration backfills them from the stored rows.
#[tokio::test]
async fn a_database_from_before_the_tallies_reads_the_same_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.db");
    let (run, done) = ("01J0000000000000000000UPGR", "01J0000000000000000000UPGD");
    let (p, f, e, s) = (
        TestStatus::Passed,
        TestStatus::Failed,
        TestStatus::Errored,
        TestStatus::Skipped,
    );
    let flaky = |id: &str| TestCaseResult {
        flaky: true,
        attempts: 2,
        ..test(id, p)
    };
    let before = {
        let store = Store::open(&path).unwrap();
        store.record_execution(plan(run, "up", 3)).await.unwrap();
        // Shard 0: attempt 1 fails a test and is retried; attempt 2 (redelivered) passes.
        store
            .record_batch(batch(run, 0, 0, vec![test("a", f), test("b", p)]))
            .await
            .unwrap();
        let mut retry = finished(run, 0, ShardState::Failed, 1);
        retry.will_retry = true;
        store.record_shard_status(retry).await.unwrap();
        for _ in 0..2 {
            store
                .record_batch(TestCaseBatch {
                    attempt: 2,
                    ..batch(run, 0, 0, vec![flaky("a"), test("b", p), test("c", s)])
                })
                .await
                .unwrap();
        }
        // Shard 1: work-queue batches, one also reported by shard 2 (ignored there).
        store
            .record_batch(queued_batch(
                run,
                1,
                1,
                0,
                1,
                vec![test("q1", p), test("q2", e)],
            ))
            .await
            .unwrap();
        store
            .record_batch(queued_batch(run, 2, 1, 0, 1, vec![test("q1", f)]))
            .await
            .unwrap();
        store
            .record_batch(queued_batch(run, 2, 1, 1, 2, vec![test("q3", p)]))
            .await
            .unwrap();
        // Another execution ended, then sent a late batch.
        store.record_execution(plan(done, "up", 1)).await.unwrap();
        store
            .record_batch(batch(done, 0, 0, vec![test("a", p)]))
            .await
            .unwrap();
        store
            .record_shard_status(finished(done, 0, ShardState::Passed, 1))
            .await
            .unwrap();
        store
            .record_batch(batch(done, 0, 1, vec![test("z", f)]))
            .await
            .unwrap();
        let mut before = Vec::new();
        for id in [run, done] {
            before.push(store.execution_detail(id).await.unwrap().unwrap());
        }
        before
    };
    assert_eq!(
        before[0]
            .execution
            .as_ref()
            .map(|u| (u.passed, u.failed, u.errored, u.skipped, u.flaky)),
        Some((4, 0, 1, 1, 1))
    );
    // The same file as schema version 11 left it.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE history_versions; DROP TABLE queue_totals; DROP TABLE attempt_tallies;
         PRAGMA user_version = 11;",
    )
    .unwrap();
    drop(conn);

    let store = Store::open(&path).unwrap();
    for (id, before) in [run, done].into_iter().zip(&before) {
        assert_eq!(&store.execution_detail(id).await.unwrap().unwrap(), before);
    }
    // Counting goes on from the backfilled tallies.
    store
        .record_batch(TestCaseBatch {
            attempt: 2,
            ..batch(run, 0, 1, vec![test("d", f)])
        })
        .await
        .unwrap();
    for (shard, attempt, batches) in [(0, 2, 2), (1, 1, 1), (2, 1, 2)] {
        store
            .record_shard_status(ShardStatus {
                result_batches: batches,
                ..status(run, shard, attempt, ShardState::Passed)
            })
            .await
            .unwrap();
    }
    let u = update(&store, run).await;
    assert_eq!(status_of(&u), ExecutionStatus::Failed, "{u:?}");
    assert_eq!(
        (u.passed, u.failed, u.errored, u.skipped, u.flaky),
        (4, 1, 1, 1, 1)
    );
}

/// Takes a database back from schema version 14 to 7.
const UNDO_8_TO_14: &str = "DROP TABLE history_versions;
    DROP TABLE queue_totals;
    DROP TABLE attempt_tallies;
    DROP INDEX executions_by_end;
    DROP INDEX executions_unended_by_creation;
    ALTER TABLE test_cases DROP COLUMN late;
    DROP TABLE events;
    DROP INDEX executions_by_source;
    ALTER TABLE executions DROP COLUMN source;
    ALTER TABLE executions DROP COLUMN provenance;
    DROP TABLE execution_labels;";

#[tokio::test]
async fn queue_rows_stored_before_the_queue_batch_column_still_count_for_every_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.db");
    let (q, c) = ("01J0000000000000000000000Q", "01J0000000000000000000000C");
    {
        let store = Store::open(&path).unwrap();
        store.record_execution(plan(q, "queue", 1)).await.unwrap();
        store.record_execution(plan(c, "count", 1)).await.unwrap();
    }
    // Rows as schema version 6 wrote them: a queue execution whose attempt 1 reported a
    // batch and attempt 2 another; a count execution whose attempt 1 was retried.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "INSERT INTO queue_claims VALUES ('{q}', 1, 0, 1), ('{q}', 2, 0, 2);
         INSERT INTO batches VALUES ('{q}', 0, 1, 0), ('{q}', 0, 2, 0), ('{c}', 0, 1, 0), ('{c}', 0, 2, 0);
         INSERT INTO test_cases (execution_id, shard_index, attempt, test_id, status)
             VALUES ('{q}', 0, 1, 'x', 1), ('{q}', 0, 2, 'y', 1),
                    ('{c}', 0, 1, 'x', 2), ('{c}', 0, 2, 'x', 1);
         ALTER TABLE test_cases DROP COLUMN queue_batch;
         {UNDO_8_TO_14}
         PRAGMA user_version = 6;"
    ))
    .unwrap();
    drop(conn);
    let store = Store::open(&path).unwrap();
    for id in [q, c] {
        store
            .record_shard_status(ShardStatus {
                result_batches: 1,
                ..status(id, 0, 2, ShardState::Passed)
            })
            .await
            .unwrap();
    }
    let u = update(&store, q).await;
    assert_eq!((u.passed, u.failed), (2, 0), "both batches count: {u:?}");
    let detail = store.execution_detail(q).await.unwrap().unwrap();
    assert_eq!(detail.shards[0].tests.len(), 2);
    let u = update(&store, c).await;
    assert_eq!((u.passed, u.failed), (1, 0), "only the last attempt: {u:?}");
    assert_eq!(
        store.execution_detail(c).await.unwrap().unwrap().shards[0]
            .tests
            .len(),
        1
    );
}

fn provenance(source: &str, labels: &[(&str, &str)]) -> Provenance {
    Provenance {
        trigger: "on-push".into(),
        event_id: "01J00000000000000000000EVT".into(),
        source: source.into(),
        r#type: "push".into(),
        idempotency_key: "github/delivery-1".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        requested_by: String::new(),
        occurred_at_ms: 900,
    }
}

fn caused(id: &str, workflow: &str, provenance: Provenance) -> Execution {
    Execution {
        provenance: Some(provenance),
        ..plan(id, workflow, 1)
    }
}

#[tokio::test]
async fn provenance_is_kept_and_returned_by_every_read() {
    let (_dir, store) = open();
    let id = "01J0000000000000000000PRV1";
    let p = provenance(
        "github",
        &[("branch", "main"), ("sha", "abc123"), ("repository", "o/r")],
    );
    assert!(
        store
            .record_execution(caused(id, "e2e", p.clone()))
            .await
            .unwrap()
    );
    // The same plan again: one row, the same state.
    let before = store.execution_detail(id).await.unwrap();
    assert!(
        !store
            .record_execution(caused(id, "e2e", p.clone()))
            .await
            .unwrap()
    );
    assert_eq!(store.execution_detail(id).await.unwrap(), before);

    assert_eq!(update(&store, id).await.provenance.as_ref(), Some(&p));
    let detail = before.unwrap();
    assert_eq!(
        detail.execution.and_then(|u| u.provenance).as_ref(),
        Some(&p)
    );
    assert_eq!(
        store
            .execution(id)
            .await
            .unwrap()
            .unwrap()
            .provenance
            .as_ref(),
        Some(&p)
    );
    let listed = store.list_executions(&Default::default(), 0).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].provenance.as_ref(), Some(&p));
    assert_eq!(
        store
            .next_update(id)
            .await
            .unwrap()
            .unwrap()
            .provenance
            .as_ref(),
        Some(&p)
    );

    // A plan without provenance (from an older scheduler) reads back without one.
    let old = "01J0000000000000000000PRV2";
    store.record_execution(plan(old, "e2e", 1)).await.unwrap();
    assert_eq!(update(&store, old).await.provenance, None);
    assert_eq!(
        store.execution(old).await.unwrap().unwrap().provenance,
        None
    );
}

#[tokio::test]
async fn listing_filters_by_source_and_every_label_before_the_limit() {
    let (_dir, store) = open();
    // 2,000 executions, newest last: every 100th from GitHub on main, one of them at sha
    // "wanted"; the rest cron runs on other branches.
    let id = |n: u32| format!("01J00000000000000000{n:06}");
    for n in 0..2_000u32 {
        let e = if n % 100 == 0 {
            let sha = if n == 500 { "wanted" } else { "other" };
            caused(
                &id(n),
                "e2e",
                provenance("github", &[("branch", "main"), ("sha", sha)]),
            )
        } else {
            caused(
                &id(n),
                if n % 2 == 0 { "e2e" } else { "unit" },
                provenance("cron", &[("branch", "dev"), ("sha", "other")]),
            )
        };
        store.record_execution(e).await.unwrap();
    }
    let ids = |v: Vec<ExecutionUpdate>| v.into_iter().map(|u| u.execution_id).collect::<Vec<_>>();
    let labels = |pairs: &[(&str, &str)]| ExecutionFilter {
        labels: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..ExecutionFilter::default()
    };

    // The limit applies after filtering: the three newest on main, not the three newest.
    assert_eq!(
        ids(store
            .list_executions(&labels(&[("branch", "main")]), 3)
            .await
            .unwrap()),
        [id(1900), id(1800), id(1700)]
    );
    // Every pair must match.
    assert_eq!(
        ids(store
            .list_executions(&labels(&[("branch", "main"), ("sha", "wanted")]), 0)
            .await
            .unwrap()),
        [id(500)]
    );
    assert!(
        store
            .list_executions(&labels(&[("branch", "dev"), ("sha", "wanted")]), 0)
            .await
            .unwrap()
            .is_empty()
    );
    let github = ExecutionFilter {
        source: Some("github".into()),
        ..ExecutionFilter::default()
    };
    let listed = store.list_executions(&github, 1000).await.unwrap();
    assert_eq!(listed.len(), 20);
    assert!(
        listed
            .iter()
            .all(|u| u.provenance.as_ref().is_some_and(|p| p.source == "github"))
    );
    // Workflow, source and a label together.
    let unit_cron_dev = ExecutionFilter {
        workflow: Some("unit".into()),
        source: Some("cron".into()),
        labels: [("branch".to_string(), "dev".to_string())].into(),
    };
    let listed = store.list_executions(&unit_cron_dev, 0).await.unwrap();
    assert_eq!(listed.len(), 50, "the default limit");
    assert_eq!(listed[0].execution_id, id(1999));
    assert!(listed.iter().all(|u| u.workflow == "unit"));
    // A filter with more pairs than allowed is refused, permanently.
    let many: Vec<(String, String)> = (0..=assay_store::MAX_LABEL_FILTERS)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let err = store
        .list_executions(
            &ExecutionFilter {
                labels: many.into_iter().collect(),
                ..ExecutionFilter::default()
            },
            0,
        )
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}

fn event_record(event_id: &str, source: &str, handled_at_ms: i64) -> EventRecord {
    EventRecord {
        header: Some(Header {
            event_id: format!("{event_id}-record"),
            idempotency_key: format!("{event_id}/decision"),
            occurred_at_ms: handled_at_ms,
            producer: "scheduler".into(),
            ..Header::default()
        }),
        event: Some(Provenance {
            event_id: event_id.into(),
            ..provenance(source, &[("branch", "main")])
        }),
        decisions: vec![assay_proto::v1::TriggerDecision {
            trigger: "on-push".into(),
            workflow: "e2e".into(),
            matched: false,
            reason: "branch \"main\" does not match \"release/*\"".into(),
            execution_id: String::new(),
        }],
        handled_at_ms,
        reason: String::new(),
    }
}

#[tokio::test]
async fn event_records_are_kept_once_and_listed_newest_first() {
    let (_dir, store) = open();
    let now = now_ms();
    let first = event_record("01J000000000000000000EVT01", "github", now - 3_000);
    assert!(store.record_event(first.clone()).await.unwrap());
    // Delivered twice: one row, unchanged.
    assert!(!store.record_event(first.clone()).await.unwrap());
    assert!(
        !store
            .record_event(EventRecord {
                handled_at_ms: now,
                ..first.clone()
            })
            .await
            .unwrap(),
        "a later copy of the same record changes nothing"
    );
    let second = event_record("01J000000000000000000EVT02", "cron", now - 2_000);
    let third = event_record("01J000000000000000000EVT03", "github", now - 1_000);
    store.record_event(third.clone()).await.unwrap();
    store.record_event(second.clone()).await.unwrap();

    let all = store.list_events(&EventFilter::default(), 0).await.unwrap();
    assert_eq!(all, [third.clone(), second.clone(), first.clone()]);
    let github = EventFilter {
        source: Some("github".into()),
        ..EventFilter::default()
    };
    assert_eq!(
        store.list_events(&github, 0).await.unwrap(),
        [third.clone(), first.clone()]
    );
    let recent = EventFilter {
        since_ms: now - 2_000,
        ..EventFilter::default()
    };
    assert_eq!(
        store.list_events(&recent, 0).await.unwrap(),
        [third.clone(), second.clone()]
    );
    assert_eq!(
        store.list_events(&EventFilter::default(), 1).await.unwrap(),
        [third]
    );

    // A record with nothing to tell deliveries apart is refused, permanently.
    let err = store
        .record_event(EventRecord::default())
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}

#[tokio::test]
async fn event_records_older_than_a_week_are_pruned() {
    let (_dir, store) = open();
    let now = now_ms();
    let week = assay_store::EVENT_RETENTION.as_millis() as i64;
    for n in 0..300 {
        let old = event_record(&format!("OLD{n:04}"), "cron", now - week - 60_000 + n);
        store.record_event(old).await.unwrap();
    }
    // Expired records go as records arrive (a bounded batch each) and with the sweep.
    let fresh = event_record("01J000000000000000000EVT04", "cron", now);
    store.record_event(fresh.clone()).await.unwrap();
    while store.prune_events(now - week).await.unwrap() > 0 {}
    assert_eq!(
        store.list_events(&EventFilter::default(), 0).await.unwrap(),
        [fresh]
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn a_plan_without_a_workflow_is_published_and_found_but_no_plan_is_not() {
    let (_dir, store) = open();
    // Statuses before the plan: nothing to publish or show yet.
    let waiting = "01J0000000000000000000WAIT";
    store
        .record_shard_status(status(waiting, 0, 1, ShardState::Running))
        .await
        .unwrap();
    assert!(store.next_update(waiting).await.unwrap().is_none());
    assert!(store.execution_detail(waiting).await.unwrap().is_none());

    // A rejected request that named no workflow is a plan all the same.
    let id = "01J0000000000000000000NOWF";
    let rejected = Execution {
        status: ExecutionStatus::Errored.into(),
        reason: "run request names no workflow".into(),
        ..plan(id, "", 0)
    };
    assert!(store.record_execution(rejected.clone()).await.unwrap());
    let u = store.next_update(id).await.unwrap().unwrap();
    assert_eq!(
        (
            u.workflow.as_str(),
            status_of(&u),
            u.reason.as_str(),
            u.revision
        ),
        (
            "",
            ExecutionStatus::Errored,
            "run request names no workflow",
            1
        )
    );
    let detail = store.execution_detail(id).await.unwrap().unwrap();
    assert_eq!(detail.execution.map(|u| u.status), Some(u.status));
    let listed = store.list_executions(&Default::default(), 0).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].execution_id, id);
    // Delivered again: same state, the next revision.
    assert!(!store.record_execution(rejected).await.unwrap());
    assert_eq!(store.next_update(id).await.unwrap().unwrap().revision, 2);

    // The plan arriving after the statuses makes the waiting one publishable.
    store
        .record_execution(plan(waiting, "e2e", 1))
        .await
        .unwrap();
    assert_eq!(
        store.next_update(waiting).await.unwrap().unwrap().workflow,
        "e2e"
    );
}

#[tokio::test]
async fn a_second_plan_for_a_taken_id_does_not_replace_the_first() {
    let (_dir, store) = open();
    let id = "01J0000000000000000000REU1";
    store.record_execution(plan(id, "first", 1)).await.unwrap();
    let before = store.execution_detail(id).await.unwrap();
    let other_workflow = Execution {
        cause: "evt-2".into(),
        ..plan(id, "second", 3)
    };
    let other_cause = Execution {
        cause: "evt-2".into(),
        status: ExecutionStatus::Errored.into(),
        reason: "should not end the first".into(),
        ..plan(id, "first", 1)
    };
    for second in [other_workflow, other_cause] {
        assert!(!store.record_execution(second).await.unwrap());
        assert_eq!(store.execution_detail(id).await.unwrap(), before);
    }
    let record = store.execution(id).await.unwrap().unwrap();
    assert_eq!(
        (record.workflow.as_str(), record.cause.as_str()),
        ("first", "evt-1")
    );
    assert_eq!(
        status_of(&update(&store, id).await),
        ExecutionStatus::Queued
    );
}

#[tokio::test]
async fn results_and_statuses_after_the_end_do_not_change_the_counts() {
    let (_dir, store) = open();
    // Ended by its shards: one passed test, final.
    let done = "01J0000000000000000000END1";
    store.record_execution(plan(done, "e2e", 1)).await.unwrap();
    store
        .record_batch(batch(done, 0, 0, vec![test("a", TestStatus::Passed)]))
        .await
        .unwrap();
    store
        .record_shard_status(finished(done, 0, ShardState::Passed, 1))
        .await
        .unwrap();
    let final_update = update(&store, done).await;
    assert_eq!(status_of(&final_update), ExecutionStatus::Passed);
    // Another batch of the same attempt (a second plan's shard reporting under the same
    // id), and a new attempt with failing results: nothing changes.
    assert!(
        !store
            .record_batch(batch(done, 0, 1, vec![test("b", TestStatus::Failed)]))
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_shard_status(status(done, 0, 2, ShardState::Running))
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_batch(TestCaseBatch {
                attempt: 2,
                ..batch(done, 0, 0, vec![test("c", TestStatus::Errored)])
            })
            .await
            .unwrap()
    );
    assert_eq!(update(&store, done).await, final_update);
    let detail = store.execution_detail(done).await.unwrap().unwrap();
    let listed: Vec<_> = detail.shards[0]
        .tests
        .iter()
        .map(|t| t.id.as_str())
        .collect();
    assert_eq!(listed, ["a"], "the test lists are final too");
    // Yet nothing acknowledged is lost: the late results are kept apart, once however often
    // they are delivered.
    assert!(
        !store
            .record_batch(batch(done, 0, 1, vec![test("b", TestStatus::Failed)]))
            .await
            .unwrap()
    );
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    let rows: Vec<(u32, String, bool)> = conn
        .prepare(
            "SELECT attempt, test_id, late FROM test_cases WHERE execution_id = ?1
             ORDER BY attempt, test_id",
        )
        .unwrap()
        .query_map([done], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        [
            (1, "a".to_string(), false),
            (1, "b".to_string(), true),
            (2, "c".to_string(), true)
        ]
    );

    // Ended by the timeout sweep while its shard ran: late results do not count, but the
    // shard's own end still shows.
    let late = "01J0000000000000000000END2";
    store.record_execution(plan(late, "e2e", 2)).await.unwrap();
    store
        .record_shard_status(status(late, 0, 1, ShardState::Running))
        .await
        .unwrap();
    store
        .record_batch(batch(late, 0, 0, vec![test("a", TestStatus::Passed)]))
        .await
        .unwrap();
    assert!(
        store
            .finalize(late, ExecutionStatus::TimedOut, "timed out", 61_000)
            .await
            .unwrap()
    );
    let timed_out = update(&store, late).await;
    assert_eq!((timed_out.passed, timed_out.failed), (1, 0));
    assert!(
        !store
            .record_batch(batch(late, 0, 1, vec![test("b", TestStatus::Failed)]))
            .await
            .unwrap()
    );
    assert!(
        store
            .record_shard_status(finished(late, 1, ShardState::Cancelled, 0))
            .await
            .unwrap(),
        "a shard with no attempt yet may still say how it ended"
    );
    let u = update(&store, late).await;
    assert_eq!(status_of(&u), ExecutionStatus::TimedOut);
    assert_eq!(
        (u.passed, u.failed, u.errored, u.skipped),
        (1, 0, 0, 0),
        "the counts of the final update"
    );
    assert_eq!(u.shards[1].state, i32::from(ShardState::Cancelled));
}

/// Executions that ended before the cutoff go with everything recorded for them; those
/// that ended later, or have not ended, stay whole.
#[tokio::test]
async fn retention_deletes_ended_executions_with_all_their_records() {
    let (_dir, store) = open();
    let (old, recent, running) = (
        "01J00000000000000000000OLD",
        "01J0000000000000000000RCNT",
        "01J0000000000000000000RUNS",
    );
    // `old` ends at 5_001 (its shards' finish), `recent` at 50_001, `running` never.
    for (id, offset) in [(old, 0), (recent, 45_000), (running, 0)] {
        let mut p = caused(id, "e2e", provenance("github", &[("branch", "main")]));
        p.shard_count = 2;
        store.record_execution(p).await.unwrap();
        for shard in 0..2 {
            let mut b = batch(
                id,
                shard,
                0,
                vec![test(&format!("t{shard}"), TestStatus::Passed)],
            );
            b.queue_batch = 0;
            store.record_batch(b).await.unwrap();
            if id == running {
                store
                    .record_shard_status(status(id, shard, 1, ShardState::Running))
                    .await
                    .unwrap();
                continue;
            }
            let mut end = finished(id, shard, ShardState::Passed, 1);
            end.finished_at_ms += offset;
            store.record_shard_status(end).await.unwrap();
        }
    }
    assert_eq!(
        status_of(&update(&store, old).await),
        ExecutionStatus::Passed
    );
    assert_eq!(update(&store, old).await.finished_at_ms, 5_001);

    assert_eq!(store.prune_executions(20_000).await.unwrap(), 1);
    assert!(store.execution_detail(old).await.unwrap().is_none());
    assert!(store.execution(old).await.unwrap().is_none());
    let listed = store
        .list_executions(
            &ExecutionFilter {
                labels: [("branch".to_string(), "main".to_string())].into(),
                ..Default::default()
            },
            50,
        )
        .await
        .unwrap();
    let ids: Vec<&str> = listed.iter().map(|u| u.execution_id.as_str()).collect();
    assert!(!ids.contains(&old), "{ids:?}");
    // The others are whole.
    for id in [recent, running] {
        let d = store.execution_detail(id).await.unwrap().unwrap();
        assert_eq!(
            d.shards.iter().map(|s| s.tests.len()).sum::<usize>(),
            2,
            "{id}"
        );
    }
    // Nothing of `old` is left in any table.
    drop(store);
    let conn = rusqlite::Connection::open(_dir.path().join("nested/dir/results.db")).unwrap();
    for table in [
        "shard_attempts",
        "batches",
        "attempt_tallies",
        "test_cases",
        "execution_labels",
    ] {
        let n: i64 = conn
            .query_row(
                &format!("SELECT COUNT(*) FROM {table} WHERE execution_id = ?1"),
                [old],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    // A second prune at the same cutoff finds nothing more.
    let store = Store::open(&_dir.path().join("nested/dir/results.db")).unwrap();
    assert_eq!(store.prune_executions(20_000).await.unwrap(), 0);
    assert_eq!(store.prune_executions(i64::MAX).await.unwrap(), 1);
    assert!(store.execution_detail(running).await.unwrap().is_some());
}

/// Results of work-queue batch `seq` (queue 0, sealed with `total` batches; 0: an older
/// runner that did not say) with `tests` passed tests named after the batch.
fn of_queue(
    id: &str,
    shard: u32,
    attempt: u32,
    n: u32,
    seq: u32,
    total: u32,
    tests: u32,
) -> TestCaseBatch {
    let results = (0..tests)
        .map(|t| test(&format!("q{seq}t{t}"), TestStatus::Passed))
        .collect();
    TestCaseBatch {
        queue_batches: total,
        ..queued_batch(id, shard, attempt, n, seq + 1, results)
    }
}

/// What the chaos harness saw (invariant "exact counts"): a `queue` execution of 4 shards
/// and 8 batches of 2 tests. Shard 1's first runner reported batches 0 and 1, published the
/// results of batch 2 (so the batch was done and nobody ran it again) and was SIGKILLed; the
/// aggregator's handling of those results was held up (a nak with backoff), while the
/// statuses went on: attempt 1 errored (retried), attempt 2 found the queue drained and
/// passed, and the other shards passed with the rest. Returns every message but the held-up
/// batch, in the order they arrived, and that batch.
fn killed_while_its_results_were_in_flight(
    id: &str,
    retry_ends: ShardState,
    total: u32,
) -> (Vec<Message>, TestCaseBatch) {
    let mut killed = status(id, 1, 1, ShardState::Errored);
    killed.reason = "runner was killed by SIGKILL before it reported".into();
    killed.reporter = "launcher".into();
    killed.will_retry = true;
    let ended = |shard: u32, attempt: u32, state: ShardState, batches: u32| ShardStatus {
        result_batches: batches,
        ..status(id, shard, attempt, state)
    };
    let messages = vec![
        Message::Plan(Box::new(plan(id, "q", 4))),
        Message::Status(status(id, 1, 1, ShardState::Running)),
        Message::Batch(of_queue(id, 1, 1, 0, 0, total, 2)),
        Message::Batch(of_queue(id, 1, 1, 1, 1, total, 2)),
        Message::Batch(of_queue(id, 0, 1, 0, 3, total, 2)),
        Message::Batch(of_queue(id, 0, 1, 1, 4, total, 2)),
        Message::Batch(of_queue(id, 2, 1, 0, 5, total, 2)),
        Message::Batch(of_queue(id, 2, 1, 1, 6, total, 2)),
        Message::Batch(of_queue(id, 3, 1, 0, 7, total, 2)),
        Message::Status(killed),
        Message::Status(ended(1, 2, retry_ends, 0)),
        Message::Status(ended(0, 1, ShardState::Passed, 2)),
        Message::Status(ended(2, 1, ShardState::Passed, 2)),
        Message::Status(ended(3, 1, ShardState::Passed, 1)),
    ];
    (messages, of_queue(id, 1, 1, 2, 2, total, 2))
}

fn late_rows(dir: &TempDir, id: &str) -> i64 {
    let conn = rusqlite::Connection::open(dir.path().join("nested/dir/results.db")).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM test_cases WHERE execution_id = ?1 AND late = 1",
        [id],
        |row| row.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn a_queue_batch_in_flight_when_its_runner_died_is_waited_for_and_counted() {
    let (dir, store) = open();
    let id = "01J000000000000000000QFLY1";
    let (messages, held_up) = killed_while_its_results_were_in_flight(id, ShardState::Passed, 8);
    apply(&store, &messages).await;

    // Every shard passed, but one batch of the drained queue is not in: still running.
    let u = update(&store, id).await;
    assert_eq!(status_of(&u), ExecutionStatus::Running, "{u:?}");
    assert_eq!(u.finished_at_ms, 0);
    assert!(u.reason.contains("1 work-queue batch"), "{u:?}");
    assert_eq!(u.passed, 14);
    let passed = ShardState::Passed as i32;
    assert!(u.shards.iter().all(|s| s.state == passed), "{u:?}");
    assert!(
        store
            .non_terminal_executions()
            .await
            .unwrap()
            .iter()
            .any(|(e, ..)| e == id),
        "the timeout sweep still sees it"
    );

    // The held-up batch arrives: recorded, not late, and the execution ends with all 16.
    assert!(store.record_batch(held_up.clone()).await.unwrap());
    let u = update(&store, id).await;
    assert_eq!(status_of(&u), ExecutionStatus::Passed, "{u:?}");
    assert_eq!(u.reason, "");
    assert_eq!((u.passed, u.failed, u.errored, u.skipped), (16, 0, 0, 0));
    assert_eq!(u.finished_at_ms, 5_003, "the last shard's end");
    assert_eq!(late_rows(&dir, id), 0);
    let detail = store.execution_detail(id).await.unwrap().unwrap();
    let shard1: Vec<String> = ids_of(&detail, 1).into_iter().map(|(t, _)| t).collect();
    assert_eq!(shard1, ["q0t0", "q0t1", "q1t0", "q1t1", "q2t0", "q2t1"]);

    // Delivered twice: the same state, and nothing reported as a change.
    for message in &messages {
        let changed = match message.clone() {
            Message::Plan(e) => store.record_execution(*e).await.unwrap(),
            Message::Status(s) => store.record_shard_status(s).await.unwrap(),
            Message::Batch(b) => store.record_batch(b).await.unwrap(),
        };
        assert!(!changed, "{message:?}");
    }
    assert!(!store.record_batch(held_up).await.unwrap());
    assert_eq!(store.execution_detail(id).await.unwrap().unwrap(), detail);
    assert_eq!(late_rows(&dir, id), 0);
}

#[tokio::test]
async fn an_errored_shard_ends_the_execution_without_waiting_for_queue_batches() {
    let (dir, store) = open();
    let id = "01J000000000000000000QFLY2";
    let (messages, held_up) = killed_while_its_results_were_in_flight(id, ShardState::Errored, 8);
    apply(&store, &messages).await;
    let u = update(&store, id).await;
    assert_eq!(status_of(&u), ExecutionStatus::Errored, "{u:?}");
    assert_eq!(u.passed, 14);
    // What arrives after the end is kept apart, as before.
    assert!(!store.record_batch(held_up).await.unwrap());
    assert_eq!(update(&store, id).await.passed, 14);
    assert_eq!(late_rows(&dir, id), 2);
}

#[tokio::test]
async fn queue_results_without_a_total_end_the_execution_when_its_shards_end() {
    // Older runners do not say how many batches their queue holds: nothing to wait for.
    let (dir, store) = open();
    let id = "01J000000000000000000QFLY3";
    let (messages, held_up) = killed_while_its_results_were_in_flight(id, ShardState::Passed, 0);
    apply(&store, &messages).await;
    let u = update(&store, id).await;
    assert_eq!(status_of(&u), ExecutionStatus::Passed, "{u:?}");
    assert_eq!(u.passed, 14);
    assert!(!store.record_batch(held_up).await.unwrap());
    assert_eq!(late_rows(&dir, id), 2);
}

#[tokio::test]
async fn an_execution_waiting_for_a_batch_that_never_comes_is_ended_by_the_timeout_sweep() {
    let (_dir, store) = open();
    let id = "01J000000000000000000QFLY4";
    let (messages, _never) = killed_while_its_results_were_in_flight(id, ShardState::Passed, 8);
    apply(&store, &messages).await;
    assert_eq!(
        status_of(&update(&store, id).await),
        ExecutionStatus::Running
    );
    assert!(
        store
            .finalize(
                id,
                ExecutionStatus::TimedOut,
                "execution exceeded its timeout",
                9_000
            )
            .await
            .unwrap()
    );
    let u = update(&store, id).await;
    assert_eq!(status_of(&u), ExecutionStatus::TimedOut, "{u:?}");
    assert_eq!(u.finished_at_ms, 9_000);
}

#[tokio::test]
async fn a_queue_whose_every_result_is_in_flight_is_waited_for_by_the_total_its_drainer_reports() {
    // One shard of matrix combination 1: its first runner ran both batches of the queue and
    // was killed with their results held up; the second found the queue drained and passed.
    // No result says the total; the second runner's final status does.
    let (dir, store) = open();
    let id = "01J000000000000000000QFLY5";
    store.record_execution(plan(id, "q", 1)).await.unwrap();
    let mut killed = status(id, 0, 1, ShardState::Errored);
    killed.will_retry = true;
    store.record_shard_status(killed).await.unwrap();
    store
        .record_shard_status(ShardStatus {
            queue_batches: 2,
            queue_group: 1,
            ..status(id, 0, 2, ShardState::Passed)
        })
        .await
        .unwrap();
    let u = update(&store, id).await;
    assert_eq!(status_of(&u), ExecutionStatus::Running, "{u:?}");
    assert!(u.reason.contains("2 work-queue batches"), "{u:?}");
    let first = 1 << assay_proto::QUEUE_GROUP_SHIFT;
    for seq in 0..2 {
        assert!(
            store
                .record_batch(of_queue(id, 0, 1, seq, first + seq, 2, 2))
                .await
                .unwrap()
        );
    }
    let u = update(&store, id).await;
    assert_eq!(status_of(&u), ExecutionStatus::Passed, "{u:?}");
    assert_eq!(u.passed, 4);
    assert_eq!(late_rows(&dir, id), 0);
}
