//! `cargo bench -p assay-store --bench ingest`: what ingesting one execution costs per test
//! case, as its size grows.
//!
//! Per size (default 1,000 and 100,000 test cases; `ASSAY_INGEST_SIZES=1000,10000` picks
//! others): a fresh store file, one execution of 4 shards, results in batches of 100 spread
//! over the shards, and after every batch what the aggregator does after each write: the
//! update to publish (`Store::next_update`). Then the shards' terminal statuses. Small sizes
//! are repeated (each in a fresh store) until at least 100,000 test cases were ingested, so
//! that the process CPU clock (10 ms ticks) resolves them.
//!
//! Prints CPU and wall time per test case for each size and the ratio of the largest size's
//! per-test CPU to the smallest's: 1.0 is ingest cost proportional to the batches, as it
//! should be. Figures are printed, not asserted.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use assay_proto::v1::{
    Execution, ShardState, ShardStatus, TestCaseBatch, TestCaseResult, TestStatus,
};
use assay_store::Store;

const SHARDS: u32 = 4;
const BATCH: u32 = 100;
/// Small sizes are repeated until this many test cases were ingested.
const MIN_TESTS_MEASURED: u32 = 100_000;

fn sizes() -> Vec<u32> {
    match std::env::var("ASSAY_INGEST_SIZES") {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("ASSAY_INGEST_SIZES: {n:?} is not a count"))
            })
            .collect(),
        _ => vec![1_000, 100_000],
    }
}

/// CPU time of this process (every thread, the store's blocking pool included).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// Whether test ids arrive in the order they sort in (`ASSAY_INGEST_IDS=sorted`: a runner
/// going through its files in order) or scattered over the id space (the default, as in
/// `make bench-scale`: every batch inserts into as many places of the stored B-trees as it
/// has tests).
fn sorted_ids() -> bool {
    std::env::var("ASSAY_INGEST_IDS").is_ok_and(|v| v == "sorted")
}

fn result(n: u32, sorted: bool) -> TestCaseResult {
    // Ids of 80-100 characters, as real suites have.
    let id = format!(
        "tests/e2e/checkout/payment_flow_{:03}.spec.ts::Checkout > pays with card and sees the receipt #{n:06}",
        if sorted { 0 } else { n % 173 }
    );
    let status = match n % 50 {
        0 => TestStatus::Failed,
        1 => TestStatus::Skipped,
        _ => TestStatus::Passed,
    };
    TestCaseResult {
        name: id.clone(),
        id,
        classname: "Checkout".into(),
        file: "tests/e2e/checkout/payment_flow.spec.ts".into(),
        status: status.into(),
        duration_ms: u64::from(n % 900),
        failure_message: if status == TestStatus::Failed {
            "expected receipt to be visible".into()
        } else {
            String::new()
        },
        ..TestCaseResult::default()
    }
}

fn status(id: &str, shard: u32, state: ShardState, batches: u32) -> ShardStatus {
    ShardStatus {
        execution_id: id.into(),
        shard_index: shard,
        attempt: 1,
        state: state.into(),
        started_at_ms: 2_000,
        finished_at_ms: if state == ShardState::Running {
            0
        } else {
            9_000
        },
        result_batches: batches,
        ..ShardStatus::default()
    }
}

/// Ingests one execution of `tests` test cases into `store`, as the aggregator would.
async fn ingest(store: &Store, id: &str, tests: u32, sorted: bool) {
    store
        .record_execution(Execution {
            id: id.into(),
            workflow: "bench".into(),
            shard_count: SHARDS,
            created_at_ms: 1_000,
            ..Execution::default()
        })
        .await
        .expect("plan recorded");
    for shard in 0..SHARDS {
        store
            .record_shard_status(status(id, shard, ShardState::Running, 0))
            .await
            .expect("status recorded");
        store.next_update(id).await.expect("update built");
    }
    let mut batches = [0u32; SHARDS as usize];
    for (n, first) in (0..tests).step_by(BATCH as usize).enumerate() {
        let shard = n as u32 % SHARDS;
        let seq = &mut batches[shard as usize];
        let batch = TestCaseBatch {
            execution_id: id.into(),
            shard_index: shard,
            attempt: 1,
            batch: *seq,
            workflow: "bench".into(),
            results: (first..(first + BATCH).min(tests))
                .map(|n| result(n, sorted))
                .collect(),
            ..TestCaseBatch::default()
        };
        *seq += 1;
        assert!(store.record_batch(batch).await.expect("batch recorded"));
        store.next_update(id).await.expect("update built");
    }
    for shard in 0..SHARDS {
        store
            .record_shard_status(status(
                id,
                shard,
                ShardState::Passed,
                batches[shard as usize],
            ))
            .await
            .expect("status recorded");
    }
    let update = store
        .next_update(id)
        .await
        .expect("update built")
        .expect("the execution is planned");
    assert!(update.status().is_terminal(), "{update:?}");
    assert_eq!(
        update.passed + update.failed + update.errored + update.skipped,
        tests
    );
}

struct Figures {
    tests: u32,
    runs: u32,
    cpu: Duration,
    wall: Duration,
}

impl Figures {
    fn cpu_us_per_test(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / f64::from(self.tests * self.runs)
    }
    fn wall_us_per_test(&self) -> f64 {
        self.wall.as_secs_f64() * 1e6 / f64::from(self.tests * self.runs)
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let sorted = sorted_ids();
    println!(
        "test ids {}",
        if sorted {
            "sorted (arriving in key order)"
        } else {
            "scattered over the id space"
        }
    );
    let mut all = Vec::new();
    for tests in sizes() {
        let runs = MIN_TESTS_MEASURED.div_ceil(tests.max(1)).max(1);
        let mut figures = Figures {
            tests,
            runs,
            cpu: Duration::ZERO,
            wall: Duration::ZERO,
        };
        for run in 0..runs {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Store::open(&dir.path().join("results.db")).expect("store opens");
            let id = format!("01JBENCH{tests:010}{run:08}");
            let (cpu, wall) = (cpu_time(), Instant::now());
            runtime.block_on(ingest(&store, &id, tests, sorted));
            figures.cpu += cpu_time().saturating_sub(cpu);
            figures.wall += wall.elapsed();
        }
        println!(
            "{:>7} tests x {:>3} runs, batches of {BATCH}, {SHARDS} shards: {:>7.2} µs CPU/test  {:>7.2} µs wall/test  ({:.2} s CPU, {:.2} s wall)",
            tests,
            runs,
            figures.cpu_us_per_test(),
            figures.wall_us_per_test(),
            figures.cpu.as_secs_f64(),
            figures.wall.as_secs_f64(),
        );
        all.push(figures);
    }
    if let (Some(small), Some(large)) = (all.first(), all.last())
        && all.len() > 1
    {
        println!(
            "per-test cost at {} / at {}: CPU {:.2}x, wall {:.2}x (1.0: proportional to the batches)",
            large.tests,
            small.tests,
            large.cpu_us_per_test() / small.cpu_us_per_test(),
            large.wall_us_per_test() / small.wall_us_per_test(),
        );
    }
}
