//! Writes the `bus_proto` seeds: one realistic encoded message of every type the harness
//! decodes, into `fuzz/corpus/bus_proto/`. Run again after changing the .proto files:
//! `cargo run -p assay-fuzzing --example write_seeds`.

use std::collections::HashMap;
use std::path::Path;

use assay_proto::{
    Execution, ExecutionStatus, ExecutionUpdate, Header, HistorySnapshot, LogChunk, LogStream,
    PendingPlan, Provenance, QueueBatch, RunRequest, ShardJob, ShardState, ShardStatus,
    ShardSummary, Step, TestCaseBatch, TestCaseResult, TestEstimate, TestIdList, TestStatus,
    TestsSpec, TriggerEvent,
};
use prost::Message;

fn header(key: &str) -> Option<Header> {
    Some(Header {
        event_id: "01JDQ7Z6X8ZK1V3W9Y4B2C5N7M".into(),
        idempotency_key: key.into(),
        occurred_at_ms: 1_764_237_600_000,
        producer: "scheduler".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        tracestate: "vendor=opaque".into(),
    })
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn provenance() -> Option<Provenance> {
    Some(Provenance {
        trigger: "smoke-on-push".into(),
        event_id: "01JDQ7Z6X8ZK1V3W9Y4B2C5N7E".into(),
        source: "github".into(),
        r#type: "push".into(),
        idempotency_key: "github/5f1c2a".into(),
        labels: map(&[
            ("repository", "acme/shop"),
            ("branch", "main"),
            ("sha", "4b825dc642cb6eb9a060e54bf8d69288fbee4904"),
        ]),
        requested_by: String::new(),
        occurred_at_ms: 1_764_237_599_000,
    })
}

fn execution() -> Execution {
    Execution {
        header: header("ci/push/abc123"),
        id: "01JDQ7Z6X8ZK1V3W9Y4B2C5N7M".into(),
        workflow: "shop".into(),
        shard_count: 4,
        status: ExecutionStatus::Running as i32,
        reason: String::new(),
        trigger: "smoke-on-push".into(),
        cause: "ci/push".into(),
        config: map(&[("seed", "7"), ("baseUrl", "http://localhost:8080")]),
        labels: map(&[("team", "payments"), ("suite", "e2e")]),
        created_at_ms: 1_764_237_600_000,
        timeout_ms: 300_000,
        rerun_of: String::new(),
        priority: 5,
        provenance: provenance(),
    }
}

fn shard_job(index: u32) -> ShardJob {
    let step = |name: &str, run: &str| Step {
        name: name.into(),
        run: run.into(),
        timeout_ms: 30_000,
        retries: 1,
        condition: "success".into(),
        env: map(&[("A", "1")]),
    };
    ShardJob {
        provenance: provenance(),
        plan_data: String::new(),
        workload: Some(assay_proto::Workload {
            image: "registry.example/shop-tests:1".into(),
            container_json: r#"{"image":"registry.example/shop-tests:1"}"#.into(),
            pod_json: r#"{"nodeSelector":{"pool":"tests"}}"#.into(),
            infra_retries: 1,
            avoid_nodes: vec!["node-a".into()],
        }),
        git: Some(assay_proto::GitCheckout {
            url: "https://git.example/acme/shop.git".into(),
            revision: "4b825dc642cb6eb9a060e54bf8d69288fbee4904".into(),
            paths: vec!["tests".into()],
            secret_name: "shop-git".into(),
            revision_source: "event".into(),
        }),
        header: header(&format!("01JDQ7Z6X8ZK1V3W9Y4B2C5N7M/{index}/1")),
        execution_id: "01JDQ7Z6X8ZK1V3W9Y4B2C5N7M".into(),
        workflow: "shop".into(),
        shard_index: index,
        shard_count: 4,
        attempt: 1,
        setup: vec![step("check", "python3 -c 'import pytest'")],
        steps: vec![step("lint", "ruff check .")],
        after: vec![step("cleanup", "rm -rf tmp")],
        tests: Some(TestsSpec {
            list: "python3 -m pytest --collect-only -q tests | grep '::'".into(),
            run: "python3 -m pytest -q {tests} --junitxml={report}".into(),
            reports: vec!["{report}".into()],
        }),
        env: map(&[("SHOP_SEED", "7"), ("ASSAY_WORKFLOW", "shop")]),
        timeout_ms: 300_000,
        deadline_ms: 1_790_000_300_000,
        job_attempt: 1,
        working_dir: "/work/examples/shop".into(),
        test_ids: vec![
            "tests/test_cart.py::test_add".into(),
            "tests/test_cart.py::test_remove".into(),
        ],
        retries: 2,
        retry_on: "failed".into(),
        strategy: "duration".into(),
        planned_hashes: vec![0xdead_beef_0000_0001, u64::MAX],
        batch_overhead_ms: 100,
        lease_ms: 30_000,
        fail_fast: true,
        matrix: map(&[("os", "linux"), ("python", "3.12")]),
        variant: "os=linux,python=3.12".into(),
        group: 1,
        group_shard_index: index % 2,
        group_shard_count: 2,
        masked: vec!["s3cr3t-token".into()],
        tail: vec![assay_proto::TailBatch {
            test_hashes: vec![0xdead_beef_0000_0002, 7],
            expected_ms: 250.0,
        }],
    }
}

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/bus_proto");
    std::fs::create_dir_all(&dir)?;
    let result = |id: &str, status: TestStatus| TestCaseResult {
        id: format!("tests/test_cart.py::{id}"),
        name: id.into(),
        classname: "tests.test_cart".into(),
        file: "tests/test_cart.py".into(),
        status: status as i32,
        duration_ms: 12,
        failure_message: if status == TestStatus::Failed {
            "assert 1 == 2".into()
        } else {
            String::new()
        },
        output: "E   assert 1 == 2\ncaptured stdout".into(),
        attempts: 2,
        flaky: status == TestStatus::Passed,
    };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "trigger-event",
            TriggerEvent {
                header: header("http/7f3c"),
                source: "ci".into(),
                r#type: "push".into(),
                labels: map(&[("branch", "main"), ("repo", "acme/shop")]),
                payload: br#"{"ref":"refs/heads/main","sha":"abc123"}"#.to_vec(),
                trigger: "smoke-on-push".into(),
                changed_paths: vec!["src/app.py".into(), "tests/test_cart.py".into()],
                changed_paths_known: true,
            }
            .encode_to_vec(),
        ),
        (
            "run-request",
            RunRequest {
                header: header("run/01JDQ7Z6X8ZK1V3W9Y4B2C5N7M"),
                workflow: "shop".into(),
                config: map(&[("seed", "3")]),
                requested_by: "cli".into(),
                labels: map(&[("branch", "main"), ("sha", "4b825dc6")]),
                execution_id: "01JDQ7Z6X8ZK1V3W9Y4B2C5N7M".into(),
                rerun_of: "01JDQ7Z6X8ZK1V3W9Y4B2C5N7A".into(),
                test_ids: vec!["tests/test_cart.py::test_add".into()],
                shards: vec![
                    TestIdList {
                        ids: vec!["a".into(), "b".into()],
                    },
                    TestIdList { ids: vec![] },
                ],
                priority: Some(10),
                selection_data: String::new(),
            }
            .encode_to_vec(),
        ),
        ("execution", execution().encode_to_vec()),
        ("shard-job", shard_job(2).encode_to_vec()),
        (
            "shard-status",
            ShardStatus {
                header: header("01JDQ7Z6X8ZK1V3W9Y4B2C5N7M/2/1/status/finished"),
                execution_id: "01JDQ7Z6X8ZK1V3W9Y4B2C5N7M".into(),
                shard_index: 2,
                attempt: 1,
                state: ShardState::Failed as i32,
                reason: "2 tests failed".into(),
                exit_code: -9,
                result_batches: 3,
                test_cases: 8,
                workflow: "shop".into(),
                reporter: "runner".into(),
                started_at_ms: 1_764_237_600_100,
                finished_at_ms: 1_764_237_660_100,
                will_retry: true,
                job_attempt: 1,
                queue_batches: 0,
                queue_group: 0,
            }
            .encode_to_vec(),
        ),
        (
            "test-case-batch",
            TestCaseBatch {
                header: header("01JDQ7Z6X8ZK1V3W9Y4B2C5N7M/2/1/results/0"),
                execution_id: "01JDQ7Z6X8ZK1V3W9Y4B2C5N7M".into(),
                shard_index: 2,
                attempt: 1,
                batch: 0,
                results: vec![
                    result("test_add", TestStatus::Passed),
                    result("test_total", TestStatus::Failed),
                    result("test_skip", TestStatus::Skipped),
                ],
                workflow: "shop".into(),
                queue_batch: 4,
                queue_batches: 9,
            }
            .encode_to_vec(),
        ),
        (
            "log-chunk",
            LogChunk {
                header: header("01JDQ7Z6X8ZK1V3W9Y4B2C5N7M/2/1/logs/17"),
                execution_id: "01JDQ7Z6X8ZK1V3W9Y4B2C5N7M".into(),
                shard_index: 2,
                attempt: 1,
                seq: 17,
                step: "tests".into(),
                stream: LogStream::Stderr as i32,
                data: b"FAILED tests/test_cart.py::test_total\n\xff\xfe".to_vec(),
            }
            .encode_to_vec(),
        ),
        (
            "execution-update",
            ExecutionUpdate {
                provenance: provenance(),
                header: header("01JDQ7Z6X8ZK1V3W9Y4B2C5N7M/update/9"),
                execution_id: "01JDQ7Z6X8ZK1V3W9Y4B2C5N7M".into(),
                workflow: "shop".into(),
                status: ExecutionStatus::Failed as i32,
                reason: "2 tests failed".into(),
                shards: (0..2)
                    .map(|i| ShardSummary {
                        index: i,
                        state: ShardState::Passed as i32,
                        attempt: 1,
                        passed: 7,
                        failed: i,
                        errored: 0,
                        skipped: 1,
                        reason: String::new(),
                        duration_ms: 61_000,
                        flaky: 1,
                    })
                    .collect(),
                passed: 27,
                failed: 2,
                errored: 0,
                skipped: 3,
                created_at_ms: 1_764_237_600_000,
                finished_at_ms: 1_764_237_700_000,
                revision: 9,
                flaky: 1,
                queue_position: 0,
            }
            .encode_to_vec(),
        ),
        (
            "queue-batch",
            QueueBatch {
                header: header("01JDQ7Z6X8ZK1V3W9Y4B2C5N7M/queue/3"),
                execution_id: "01JDQ7Z6X8ZK1V3W9Y4B2C5N7M".into(),
                seq: 3,
                test_ids: vec!["tests/test_a.py::t1".into(), "tests/test_b.py::t2".into()],
                expected_ms: 1234.5,
            }
            .encode_to_vec(),
        ),
        (
            "kv-pending-plan",
            PendingPlan {
                execution: Some(execution()),
                shards: vec![shard_job(0), shard_job(1)],
            }
            .encode_to_vec(),
        ),
        (
            "kv-history-snapshot",
            HistorySnapshot {
                workflow: "shop".into(),
                tests: vec![
                    TestEstimate {
                        id: "tests/test_cart.py::test_add".into(),
                        mean_ms: 12.25,
                        p90_ms: 20,
                    },
                    TestEstimate {
                        id: "tests/test_cart.py::test_slow".into(),
                        mean_ms: 30_000.0,
                        p90_ms: 45_000,
                    },
                ],
                updated_at_ms: 1_764_237_700_000,
                shard_start_ms: 180.5,
            }
            .encode_to_vec(),
        ),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("{name}.bin")), bytes)?;
    }
    Ok(())
}
