//! The aggregator's side of the public contract against a real nats-server: the scheduler's
//! event records stored once and listed, and the plan records a client must hear about.

use std::net::SocketAddr;
use std::time::Duration;

use assay_bus::{Bus, NatsOptions, streams, subjects};
use assay_proto::results_client::ResultsClient;
use assay_proto::{
    EventRecord, Execution, ExecutionStatus, ExecutionUpdate, GetExecutionRequest,
    ListEventsRequest, Provenance, ShardState, ShardStatus, TestCaseBatch, TestCaseResult,
    TestStatus, TriggerDecision,
};
use assay_testkit::{NatsServer, free_port};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

struct Stack {
    _nats: NatsServer,
    _dir: tempfile::TempDir,
    bus: Bus,
    api: ResultsClient<Channel>,
    shutdown: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> Stack {
    start_with(|_| {}).await
}

async fn start_with(tune: impl FnOnce(&mut assay_result_aggregator::Options)) -> Stack {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let nats_options = NatsOptions {
        url: nats.url(),
        name: "test".into(),
        ..Default::default()
    };
    let mut options = assay_result_aggregator::Options {
        nats: nats_options.clone(),
        database: dir.path().join("results.db"),
        grpc: addr,
        ..Default::default()
    };
    tune(&mut options);
    let shutdown = CancellationToken::new();
    let t = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = assay_result_aggregator::run(options, t).await {
            panic!("aggregator failed: {e}");
        }
    });
    for attempt in 0.. {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(attempt < 1500, "aggregator did not listen within 15s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bus = Bus::connect(&nats_options, &shutdown).await.unwrap();
    let api = ResultsClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Stack {
        _nats: nats,
        _dir: dir,
        bus,
        api,
        shutdown,
    }
}

impl Stack {
    /// Polls `probe` every 20 ms until it yields a value; panics naming `what` after 15 s.
    async fn wait_for<T>(&self, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
        for _ in 0..750 {
            if let Some(v) = probe().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out after 15 s waiting for {what}");
    }

    /// Waits until the durable consumer has taken and acknowledged everything in its stream.
    async fn wait_until_consumed(&self, stream: &str, durable: &str) {
        let what = format!("consumer {durable} on {stream} to have nothing pending");
        self.wait_for(&what, async || {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = self
                .bus
                .jetstream()
                .get_stream(stream)
                .await
                .ok()?
                .get_consumer(durable)
                .await
                .ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        })
        .await
    }
}

fn record(event_id: &str, handled_at_ms: i64) -> EventRecord {
    EventRecord {
        header: Some(assay_bus::header(
            "scheduler",
            format!("github/{event_id}/decision"),
            None,
        )),
        event: Some(Provenance {
            event_id: event_id.into(),
            source: "github".into(),
            r#type: "push".into(),
            idempotency_key: format!("github/{event_id}"),
            labels: [("branch".to_string(), "feature/x".to_string())].into(),
            ..Provenance::default()
        }),
        decisions: vec![TriggerDecision {
            trigger: "on-main".into(),
            workflow: "e2e".into(),
            matched: false,
            reason: "label branch is \"feature/x\", the trigger wants \"main\"".into(),
            execution_id: String::new(),
        }],
        handled_at_ms,
        reason: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_record_delivered_twice_is_listed_once() {
    let stack = start().await;
    let now = assay_bus::now_ms();
    let published = record("01J000000000000000000EVT01", now);
    // Two copies in the stream (no Nats-Msg-Id, so the server keeps both), as a scheduler
    // that crashed between publishing and remembering it would leave them.
    for _ in 0..2 {
        stack
            .bus
            .publish_raw(
                subjects::decision("github"),
                async_nats::HeaderMap::new(),
                prost::Message::encode_to_vec(&published).into(),
            )
            .await
            .unwrap();
    }
    stack
        .wait_until_consumed(streams::DECISIONS, "result-aggregator-decisions")
        .await;
    let mut api = stack.api.clone();
    let listed = api
        .list_events(ListEventsRequest {
            since_ms: now - 60_000,
            limit: 0,
            source: "github".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(listed, [published]);
    // Another source, or a later window, lists nothing.
    for request in [
        ListEventsRequest {
            source: "cron".into(),
            ..ListEventsRequest::default()
        },
        ListEventsRequest {
            since_ms: now + 1,
            ..ListEventsRequest::default()
        },
    ] {
        let events = api.list_events(request).await.unwrap().into_inner().events;
        assert!(events.is_empty(), "{events:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_plan_without_a_workflow_reaches_its_client() {
    let stack = start().await;
    let id = "01J0000000000000000000NOWF";
    let rejected = Execution {
        header: Some(assay_bus::header("scheduler", format!("{id}/plan"), None)),
        id: id.into(),
        workflow: String::new(),
        status: ExecutionStatus::Errored.into(),
        reason: "run request names no workflow".into(),
        cause: "run/key-1/".into(),
        created_at_ms: assay_bus::now_ms(),
        ..Execution::default()
    };
    stack
        .bus
        .publish(subjects::execution_plan(id), &rejected)
        .await
        .unwrap();
    // The final update on assay.v1.executions._.<id>, where a client follows it.
    let subject = subjects::execution_update("", id);
    assert_eq!(subject, format!("assay.v1.executions._.{id}"));
    let update: ExecutionUpdate = stack
        .wait_for(&format!("an update on {subject}"), async || {
            stack
                .bus
                .last_message(streams::EXECUTIONS, &subject)
                .await
                .unwrap()
        })
        .await;
    assert_eq!(update.status(), ExecutionStatus::Errored);
    assert_eq!(update.reason, "run request names no workflow");
    assert_eq!(update.workflow, "");
    // And the API finds it.
    let mut api = stack.api.clone();
    let detail = api
        .get_execution(GetExecutionRequest {
            id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        detail.execution.map(|u| u.status()),
        Some(ExecutionStatus::Errored)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_id_reused_by_a_second_plan_stays_final() {
    let stack = start().await;
    let id = "01J0000000000000000000REU1";
    let plan = |workflow: &str, cause: &str| Execution {
        header: Some(assay_bus::header(
            "scheduler",
            format!("{cause}/plan"),
            None,
        )),
        id: id.into(),
        workflow: workflow.into(),
        shard_count: 1,
        status: ExecutionStatus::Queued.into(),
        cause: cause.into(),
        created_at_ms: assay_bus::now_ms(),
        ..Execution::default()
    };
    let results = |batch: u32, attempt: u32, test: &str, status: TestStatus| TestCaseBatch {
        header: Some(assay_bus::header(
            "runner",
            format!("{id}/0/{attempt}/{batch}"),
            None,
        )),
        execution_id: id.into(),
        shard_index: 0,
        attempt,
        batch,
        results: vec![TestCaseResult {
            id: test.into(),
            status: status.into(),
            ..TestCaseResult::default()
        }],
        ..TestCaseBatch::default()
    };
    let shard = |attempt: u32, state: ShardState, batches: u32| ShardStatus {
        header: Some(assay_bus::header(
            "runner",
            format!("{id}/0/{attempt}/{}", state.as_str_name()),
            None,
        )),
        execution_id: id.into(),
        shard_index: 0,
        attempt,
        state: state.into(),
        result_batches: batches,
        finished_at_ms: if state.is_terminal() {
            assay_bus::now_ms()
        } else {
            0
        },
        ..ShardStatus::default()
    };
    let bus = &stack.bus;
    bus.publish(subjects::execution_plan(id), &plan("first", "run/k1/first"))
        .await
        .unwrap();
    bus.publish(
        subjects::results(id, 0),
        &results(0, 1, "a", TestStatus::Passed),
    )
    .await
    .unwrap();
    bus.publish(
        subjects::shard_status(id, 0),
        &shard(1, ShardState::Passed, 1),
    )
    .await
    .unwrap();
    let first = subjects::execution_update("first", id);
    let last = async || -> Option<ExecutionUpdate> {
        bus.last_message(streams::EXECUTIONS, &first).await.unwrap()
    };
    let final_update = stack
        .wait_for("the first plan's final update", async || {
            last().await.filter(|u| u.status().is_terminal())
        })
        .await;
    assert_eq!(
        (final_update.status(), final_update.passed),
        (ExecutionStatus::Passed, 1)
    );

    // A second request's plan under the same id, and its shard reporting there.
    bus.publish(
        subjects::execution_plan(id),
        &plan("second", "run/k2/second"),
    )
    .await
    .unwrap();
    bus.publish(
        subjects::results(id, 0),
        &results(1, 1, "b", TestStatus::Failed),
    )
    .await
    .unwrap();
    bus.publish(
        subjects::shard_status(id, 0),
        &shard(2, ShardState::Running, 0),
    )
    .await
    .unwrap();
    for (stream, durable) in [
        (streams::STATUS, "result-aggregator-plans"),
        (streams::STATUS, "result-aggregator-status"),
        (streams::RESULTS, "result-aggregator-results"),
    ] {
        stack.wait_until_consumed(stream, durable).await;
    }
    assert_eq!(
        last().await,
        Some(final_update.clone()),
        "no update after the final one"
    );
    let second: Option<ExecutionUpdate> = bus
        .last_message(
            streams::EXECUTIONS,
            &subjects::execution_update("second", id),
        )
        .await
        .unwrap();
    assert_eq!(second, None);
    let mut api = stack.api.clone();
    let shown = api
        .get_execution(GetExecutionRequest {
            id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(
        (
            shown.workflow.as_str(),
            shown.status(),
            shown.passed,
            shown.failed
        ),
        ("first", ExecutionStatus::Passed, 1, 0)
    );
}

/// `--retention`: the sweep deletes an execution that ended longer ago than the retention,
/// and keeps one that has not ended, however old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_executions_past_their_retention_are_deleted() {
    let stack = start_with(|o| o.retention = Duration::from_millis(1)).await;
    let (ended, open) = ("01J0000000000000000000ENDD", "01J0000000000000000000OPEN");
    let plan = |id: &str, status: ExecutionStatus| Execution {
        header: Some(assay_bus::header("scheduler", format!("{id}/plan"), None)),
        id: id.into(),
        workflow: "w".into(),
        shard_count: if status == ExecutionStatus::Queued {
            1
        } else {
            0
        },
        status: status.into(),
        reason: "rejected".into(),
        cause: format!("run/{id}/w"),
        created_at_ms: 1_000,
        ..Execution::default()
    };
    stack
        .bus
        .publish(
            subjects::execution_plan(open),
            &plan(open, ExecutionStatus::Queued),
        )
        .await
        .unwrap();
    stack
        .bus
        .publish(
            subjects::execution_plan(ended),
            &plan(ended, ExecutionStatus::Errored),
        )
        .await
        .unwrap();
    // Recorded (its final update went out), then gone from the store.
    let subject = subjects::execution_update("w", ended);
    let _: ExecutionUpdate = stack
        .wait_for(&format!("the final update on {subject}"), async || {
            stack
                .bus
                .last_message(streams::EXECUTIONS, &subject)
                .await
                .unwrap()
        })
        .await;
    let mut api = stack.api.clone();
    stack
        .wait_for("the ended execution to be deleted", async || {
            let found = api
                .get_execution(GetExecutionRequest {
                    id: ended.into(),
                    ..Default::default()
                })
                .await;
            matches!(found, Err(s) if s.code() == tonic::Code::NotFound).then_some(())
        })
        .await;
    let kept = api
        .get_execution(GetExecutionRequest {
            id: open.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kept.execution.map(|u| u.status()),
        Some(ExecutionStatus::Queued)
    );
}

#[test]
fn a_malformed_retention_is_refused_with_the_reason() {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("assay-result-aggregator"))
        .find(|p| p.is_file())
        .expect("target/*/assay-result-aggregator: run `cargo build --bins` first");
    let out = std::process::Command::new(bin)
        .args(["--retention", "30 days"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--retention") && err.contains("invalid duration \"30 days\""),
        "{err}"
    );
}

/// `assay cancel` of an execution that no launcher will pick up (here: a plan whose shard
/// job never comes) ends it *cancelled* with the reason, rather than leaving it queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_execution_no_launcher_picks_up_is_ended_cancelled() {
    let stack = start_with(|o| {
        o.timeout_grace = Duration::from_millis(200);
        o.sweep_every = Duration::from_millis(100);
    })
    .await;
    let id = "01J0000000000000000000STCK";
    let plan = Execution {
        header: Some(assay_bus::header("scheduler", format!("{id}/plan"), None)),
        id: id.into(),
        workflow: "w".into(),
        shard_count: 2,
        status: ExecutionStatus::Queued.into(),
        cause: format!("run/{id}/w"),
        created_at_ms: assay_bus::now_ms(),
        ..Execution::default()
    };
    stack
        .bus
        .publish(subjects::execution_plan(id), &plan)
        .await
        .unwrap();
    let subject = subjects::execution_update("w", id);
    let queued: ExecutionUpdate = stack
        .wait_for("the queued update", async || {
            stack
                .bus
                .last_message(streams::EXECUTIONS, &subject)
                .await
                .unwrap()
        })
        .await;
    assert_eq!(queued.status(), ExecutionStatus::Queued);
    stack.bus.cancel(id, "wrong branch").await.unwrap();
    let ended: ExecutionUpdate = stack
        .wait_for("the cancelled update", async || {
            let u: Option<ExecutionUpdate> = stack
                .bus
                .last_message(streams::EXECUTIONS, &subject)
                .await
                .unwrap();
            u.filter(|u| u.status().is_terminal())
        })
        .await;
    assert_eq!(ended.status(), ExecutionStatus::Cancelled, "{ended:?}");
    assert!(ended.reason.contains("wrong branch"), "{}", ended.reason);
}

/// GetExecution and GetHistory answer a page at a time: every case once whatever the page
/// size, sizes over the maximum are taken as the maximum, a request without a page size
/// still gets the execution whole when it fits, and a malformed token is INVALID_ARGUMENT
/// saying what was wrong.
#[tokio::test]
async fn executions_and_history_are_read_a_page_at_a_time() {
    use assay_proto::GetHistoryRequest;
    let stack = start().await;
    let id = "01J0000000000000000000PAGE";
    let bus = &stack.bus;
    bus.publish(
        subjects::execution_plan(id),
        &Execution {
            header: Some(assay_bus::header("scheduler", format!("{id}/plan"), None)),
            id: id.into(),
            workflow: "paged".into(),
            shard_count: 2,
            status: ExecutionStatus::Queued.into(),
            created_at_ms: assay_bus::now_ms(),
            ..Execution::default()
        },
    )
    .await
    .unwrap();
    // 12,000 cases over two shards, 1,000 per batch.
    const CASES: usize = 12_000;
    for shard in 0..2u32 {
        for batch in 0..6u32 {
            let results = (0..1_000)
                .map(|i| TestCaseResult {
                    id: format!("s{shard}/t{batch}-{i:04}"),
                    status: TestStatus::Passed.into(),
                    duration_ms: i,
                    ..TestCaseResult::default()
                })
                .collect();
            bus.publish(
                subjects::results(id, shard),
                &TestCaseBatch {
                    header: Some(assay_bus::header(
                        "runner",
                        format!("{id}/{shard}/1/{batch}"),
                        None,
                    )),
                    execution_id: id.into(),
                    shard_index: shard,
                    attempt: 1,
                    batch,
                    workflow: "paged".into(),
                    results,
                    ..TestCaseBatch::default()
                },
            )
            .await
            .unwrap();
        }
        // The shard ends, so the execution does and its tests reach the history.
        bus.publish(
            subjects::shard_status(id, shard),
            &ShardStatus {
                header: Some(assay_bus::header(
                    "runner",
                    format!("{id}/{shard}/1/end"),
                    None,
                )),
                execution_id: id.into(),
                shard_index: shard,
                attempt: 1,
                state: ShardState::Passed.into(),
                result_batches: 6,
                started_at_ms: assay_bus::now_ms(),
                finished_at_ms: assay_bus::now_ms(),
                ..ShardStatus::default()
            },
        )
        .await
        .unwrap();
    }
    for (stream, durable) in [
        (streams::STATUS, "result-aggregator-plans"),
        (streams::RESULTS, "result-aggregator-results"),
    ] {
        stack.wait_until_consumed(stream, durable).await;
    }
    // Folded into the history after the final update, then snapshot: once the snapshot
    // holds every test, so does the history.
    for attempt in 0.. {
        if bus.planning_history("paged").await.unwrap().len() == CASES {
            break;
        }
        assert!(attempt < 600, "the history never held the {CASES} tests");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut api = stack.api.clone();
    let count = |d: &assay_proto::ExecutionDetail| d.shards.iter().map(|s| s.tests.len()).sum();

    // Without a page size: everything (it fits one answer), no token.
    let whole = api
        .get_execution(GetExecutionRequest {
            id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(count(&whole), CASES);
    assert!(whole.next_page_token.is_empty());
    assert_eq!(whole.execution.as_ref().unwrap().passed, CASES as u32);

    for (size, per_page) in [
        (5_000, 5_000),
        (50_000, assay_store::MAX_PAGE_SIZE as usize),
    ] {
        let mut token = String::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut pages = 0;
        loop {
            let page = api
                .get_execution(GetExecutionRequest {
                    id: id.into(),
                    page_size: size,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            let n: usize = count(&page);
            assert!(n <= per_page, "{n} cases on a page of {size}");
            // Every page carries the whole summary.
            assert_eq!(page.shards.len(), 2);
            assert_eq!(page.execution.as_ref().unwrap().passed, CASES as u32);
            for t in page.shards.iter().flat_map(|s| &s.tests) {
                assert!(seen.insert(t.id.clone()), "{} came twice", t.id);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen.len(), CASES, "page size {size}");
        assert_eq!(pages, CASES.div_ceil(per_page), "page size {size}");
    }

    let refused = api
        .get_execution(GetExecutionRequest {
            id: id.into(),
            page_size: 10,
            page_token: "not a token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("page token") && refused.message().contains("base64"),
        "{}",
        refused.message()
    );

    // History, 5,000 tests a page.
    let mut token = String::new();
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let page = api
            .get_history(GetHistoryRequest {
                workflow: "paged".into(),
                page_size: 5_000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.tests.len() <= 5_000);
        seen.extend(page.tests.into_iter().map(|t| t.test_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), CASES);
    let execution_token = whole_token(&mut api, id).await;
    let refused = api
        .get_history(GetHistoryRequest {
            workflow: "paged".into(),
            page_size: 10,
            page_token: execution_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("not test history"),
        "{}",
        refused.message()
    );
}

/// The token after the first case of `id`.
async fn whole_token(api: &mut ResultsClient<Channel>, id: &str) -> String {
    api.get_execution(GetExecutionRequest {
        id: id.into(),
        page_size: 1,
        page_token: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .next_page_token
}
