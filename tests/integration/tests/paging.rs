//! Answers over 4 MiB: an execution whose test cases would not fit one gRPC message is read
//! page by page, by the API's clients and by `assay get execution` and `assay rerun`.

use std::collections::BTreeSet;
use std::time::Duration;

use assay_bus::{streams, subjects};
use assay_integration::{Sandbox, Service, output_text};
use assay_proto::{
    Execution, ExecutionStatus, GetExecutionRequest, ShardJob, ShardState, ShardStatus,
    TestCaseBatch, TestCaseResult, TestStatus,
};
use prost::Message;

const WORKFLOW: &str = "apiVersion: assay.dev/v1alpha1\nkind: TestWorkflow\nmetadata: {name: huge}\nspec:\n  tests:\n    run: \"true {tests}\"\n  parallel: {count: 2, strategy: count}\n";

/// Cases per shard: 30,000 ids of ~150 characters in all, about 5 MiB of test cases.
const PER_SHARD: usize = 15_000;
const PER_BATCH: usize = 1_000;

fn test_id(shard: u32, i: usize) -> String {
    let id = format!(
        "tests/integration/suite_{shard}/module_{:03}/test_checkout_flow.py::TestCheckoutFlow::test_a_rather_long_descriptive_case_name[params-{i:05}-variant]",
        i % 97
    );
    debug_assert!(id.len() >= 140);
    id
}

/// Records a finished execution of `huge` straight on the bus: shard 0's cases failed, shard
/// 1's passed.
async fn record_huge(sb: &Sandbox, id: &str) {
    let bus = &sb.bus;
    bus.publish(
        subjects::execution_plan(id),
        &Execution {
            header: Some(assay_bus::header("test", format!("{id}/plan"), None)),
            id: id.into(),
            workflow: "huge".into(),
            shard_count: 2,
            status: ExecutionStatus::Queued.into(),
            created_at_ms: assay_bus::now_ms(),
            ..Execution::default()
        },
    )
    .await
    .unwrap();
    let batches = PER_SHARD.div_ceil(PER_BATCH) as u32;
    for shard in 0..2u32 {
        let status = if shard == 0 {
            TestStatus::Failed
        } else {
            TestStatus::Passed
        };
        for batch in 0..batches {
            let results = (batch as usize * PER_BATCH..((batch as usize + 1) * PER_BATCH))
                .map(|i| TestCaseResult {
                    id: test_id(shard, i),
                    name: format!("test_case_{i}"),
                    classname: "TestCheckoutFlow".into(),
                    status: status.into(),
                    duration_ms: 3,
                    failure_message: if shard == 0 {
                        "assert 1 == 2".into()
                    } else {
                        String::new()
                    },
                    ..TestCaseResult::default()
                })
                .collect();
            bus.publish(
                subjects::results(id, shard),
                &TestCaseBatch {
                    header: Some(assay_bus::header(
                        "test",
                        format!("{id}/{shard}/1/{batch}"),
                        None,
                    )),
                    execution_id: id.into(),
                    shard_index: shard,
                    attempt: 1,
                    batch,
                    workflow: "huge".into(),
                    results,
                    ..TestCaseBatch::default()
                },
            )
            .await
            .unwrap();
        }
        let state = if shard == 0 {
            ShardState::Failed
        } else {
            ShardState::Passed
        };
        bus.publish(
            subjects::shard_status(id, shard),
            &ShardStatus {
                header: Some(assay_bus::header(
                    "test",
                    format!("{id}/{shard}/1/{}", state.as_str_name()),
                    None,
                )),
                execution_id: id.into(),
                shard_index: shard,
                attempt: 1,
                state: state.into(),
                result_batches: batches,
                test_cases: PER_SHARD as u32,
                exit_code: i32::from(shard == 0),
                workflow: "huge".into(),
                reporter: "runner".into(),
                started_at_ms: assay_bus::now_ms(),
                finished_at_ms: assay_bus::now_ms(),
                ..ShardStatus::default()
            },
        )
        .await
        .unwrap();
    }
}

/// The test ids the scheduler planned for execution `id` (its shard jobs, plans stored apart
/// read back); the launcher is not running, so the jobs wait in their stream.
async fn planned(sb: &Sandbox, id: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for shard in 0..2 {
        let subject = subjects::shard_job(id, shard);
        let mut job: Option<ShardJob> = None;
        for _ in 0..600 {
            job = sb
                .bus
                .last_message(streams::SHARDS, &subject)
                .await
                .unwrap();
            if job.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut job = job.unwrap_or_else(|| panic!("no shard job on {subject} within 60 s"));
        sb.bus.load_plan(&mut job).await.unwrap();
        ids.extend(job.test_ids);
    }
    ids
}

/// 30,000 cases with ~150-character ids: one GetExecution answer would be ~5 MiB, over the
/// 4 MiB every gRPC client accepts by default. Every page fits; the sandbox's client, `assay
/// get execution`, `assay history` and `assay rerun` (same plan, and failures) read all of
/// them, and the reruns — requests too large for one message — are planned whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_execution_over_4_mib_is_read_and_rerun_whole() {
    let mut sb = Sandbox::empty(&[("huge.yaml", WORKFLOW)]).await;
    sb.start_service(Service::Aggregator);
    sb.start_service(Service::Scheduler);
    let id = ulid::Ulid::new().to_string();
    record_huge(&sb, &id).await;
    sb.wait_until_consumed(&[streams::RESULTS, streams::STATUS])
        .await;
    let detail = sb.wait_for_terminal(&id, Duration::from_secs(60)).await;
    let all: BTreeSet<String> = (0..2)
        .flat_map(|shard| (0..PER_SHARD).map(move |i| test_id(shard, i)))
        .collect();
    let got: Vec<&str> = detail
        .shards
        .iter()
        .flat_map(|s| s.tests.iter().map(|t| t.id.as_str()))
        .collect();
    assert_eq!(got.len(), 2 * PER_SHARD);
    assert_eq!(
        got.iter().copied().collect::<BTreeSet<_>>().len(),
        got.len()
    );
    assert!(got.iter().all(|t| all.contains(*t)));

    // A client that asks without a page size gets a first page that fits, and a token.
    let first = sb
        .client()
        .await
        .get_execution(GetExecutionRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(first.encoded_len() < 4 * 1024 * 1024);
    assert!(!first.next_page_token.is_empty());
    let counters = first.execution.unwrap();
    assert_eq!(
        (counters.passed, counters.failed),
        (PER_SHARD as u32, PER_SHARD as u32)
    );

    // `assay get execution -o json` lists every case.
    let out = sb.assay(&["get", "execution", &id, "-o", "json"]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: usize = json["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tests"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(listed, 2 * PER_SHARD);
    // The table too (it counts and lists the failures).
    let out = sb.assay(&["get", "execution", &id]).await;
    assert!(out.status.success(), "{}", output_text(&out));

    // `assay history` (30,000 tests, ~6 MiB in one answer) reads every page; the table
    // shows the slowest of all.
    let out = sb.assay(&["history", "huge", "-o", "json"]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.as_array().map_or(0, Vec::len), 2 * PER_SHARD);
    let out = sb.assay(&["history", "huge"]).await;
    assert!(out.status.success(), "{}", output_text(&out));

    // `assay rerun --same-plan` replays all 30,000, shard by shard.
    let out = sb.assay(&["rerun", &id, "--same-plan", "--detach"]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let same = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut plan = planned(&sb, &same).await;
    plan.sort();
    assert_eq!(plan.len(), 2 * PER_SHARD);
    assert!(
        plan.iter().eq(all.iter()),
        "the same plan differs from the original"
    );

    // `assay rerun` of the failures plans the 15,000 failed ones.
    let out = sb.assay(&["rerun", &id, "--detach"]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let failed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut plan = planned(&sb, &failed).await;
    plan.sort();
    let want: Vec<String> = (0..PER_SHARD)
        .map(|i| test_id(0, i))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(plan, want);
}
