//! `cargo bench -p assay-store --bench ingest`: what ingesting one execution costs per test
//! case, as its size grows.
//!
//! Per size (default 1,000 and 100,000 test cases; `ASSAY_INGEST_SIZES=1000,10000` picks
//! others): a fresh store file, one execution of 4 shards, results in batches of 100 spread
//! over the shards, and after every batch what the aggregator does after each write: the
//! update to publish (`Store::next_update`). Then the shards' terminal statuses and the fold of
//! the execution's test cases into the duration history (`Store::fold_history`). Small sizes
//! are repeated (each in a fresh store) until at least 100,000 test cases were ingested, so
//! that the process CPU clock (10 ms ticks) resolves them.
//!
//! Test ids are scattered over the id space by default, so that every batch inserts into as
//! many places of the stored B-trees as it has tests; `ASSAY_INGEST_IDS=sorted` sends them in
//! key order instead.
//!
//! Prints per test case, for each size: CPU (user: SQLite and the store; sys: the kernel's
//! share of the file I/O), wall time, and the bytes written and read through system calls;
//! then the ratio of the largest size's per-test figures to the smallest's: 1.0 is ingest
//! cost proportional to the batches. Figures are printed, not asserted.
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

/// What this process (every thread, the store's blocking pool included) has spent so far:
/// user and system CPU, and bytes written and read through system calls (the WAL's frames,
/// checkpoints, and pages read back that SQLite's cache did not hold).
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    user: Duration,
    sys: Duration,
    written: u64,
    read: u64,
}

impl Usage {
    fn now() -> Usage {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at ") ".
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // USER_HZ is 100 on every Linux this runs on.
        let ticks = |i: usize| {
            Duration::from_millis(fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) * 10)
        };
        let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        let io_field = |name: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Usage {
            user: ticks(11),
            sys: ticks(12),
            written: io_field("wchar:"),
            read: io_field("rchar:"),
        }
    }

    fn since(self, start: Usage) -> Usage {
        Usage {
            user: self.user.saturating_sub(start.user),
            sys: self.sys.saturating_sub(start.sys),
            written: self.written.saturating_sub(start.written),
            read: self.read.saturating_sub(start.read),
        }
    }

    fn add(&mut self, other: Usage) {
        self.user += other.user;
        self.sys += other.sys;
        self.written += other.written;
        self.read += other.read;
    }
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
    // What the aggregator does next: the test cases go into the duration history.
    let folded = store.fold_history(Some(id)).await.expect("history folded");
    assert_eq!(folded, tests as usize);
}

struct Figures {
    tests: u32,
    runs: u32,
    usage: Usage,
    wall: Duration,
}

impl Figures {
    fn per_test(&self, total: f64) -> f64 {
        total / f64::from(self.tests * self.runs)
    }
    fn cpu_us_per_test(&self) -> f64 {
        self.per_test((self.usage.user + self.usage.sys).as_secs_f64() * 1e6)
    }
    fn user_us_per_test(&self) -> f64 {
        self.per_test(self.usage.user.as_secs_f64() * 1e6)
    }
    fn sys_us_per_test(&self) -> f64 {
        self.per_test(self.usage.sys.as_secs_f64() * 1e6)
    }
    fn wall_us_per_test(&self) -> f64 {
        self.per_test(self.wall.as_secs_f64() * 1e6)
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
            usage: Usage::default(),
            wall: Duration::ZERO,
        };
        for run in 0..runs {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Store::open(&dir.path().join("results.db")).expect("store opens");
            let id = format!("01JBENCH{tests:010}{run:08}");
            let (start, wall) = (Usage::now(), Instant::now());
            runtime.block_on(ingest(&store, &id, tests, sorted));
            figures.usage.add(Usage::now().since(start));
            figures.wall += wall.elapsed();
        }
        println!(
            "{:>7} tests x {:>3} runs, batches of {BATCH}, {SHARDS} shards: {:>6.1} µs CPU/test (user {:>5.1}, sys {:>5.1})  {:>6.1} µs wall/test  {:>5.1} KiB written/test  {:>5.1} KiB read/test",
            tests,
            runs,
            figures.cpu_us_per_test(),
            figures.user_us_per_test(),
            figures.sys_us_per_test(),
            figures.wall_us_per_test(),
            figures.per_test(figures.usage.written as f64 / 1024.0),
            figures.per_test(figures.usage.read as f64 / 1024.0),
        );
        all.push(figures);
    }
    if let (Some(small), Some(large)) = (all.first(), all.last())
        && all.len() > 1
    {
        println!(
            "per-test cost at {} / at {}: CPU {:.2}x (user {:.2}x, sys {:.2}x), wall {:.2}x (1.0: proportional to the batches)",
            large.tests,
            small.tests,
            large.cpu_us_per_test() / small.cpu_us_per_test(),
            large.user_us_per_test() / small.user_us_per_test(),
            large.sys_us_per_test() / small.sys_us_per_test(),
            large.wall_us_per_test() / small.wall_us_per_test(),
        );
    }
}
