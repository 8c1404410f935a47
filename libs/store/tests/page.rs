//! Reading test cases and history a page at a time against real store files.

use std::collections::BTreeSet;

use assay_proto::v1::{
    Execution, ExecutionDetail, ExecutionStatus, ShardState, ShardStatus, TestCaseBatch,
    TestCaseResult, TestStatus,
};
use assay_store::{Error, MAX_PAGE_SIZE, PAGE_BYTES, Page, Store};
use prost::Message;
use tempfile::TempDir;

fn open() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("results.db")).unwrap();
    (dir, store)
}

fn plan(id: &str, workflow: &str, shards: u32) -> Execution {
    Execution {
        id: id.into(),
        workflow: workflow.into(),
        shard_count: shards,
        status: ExecutionStatus::Queued.into(),
        created_at_ms: 1_000,
        timeout_ms: 60_000,
        ..Execution::default()
    }
}

fn case(id: &str, status: TestStatus) -> TestCaseResult {
    TestCaseResult {
        id: id.into(),
        name: id.into(),
        status: status.into(),
        duration_ms: id.len() as u64,
        ..TestCaseResult::default()
    }
}

fn batch(
    id: &str,
    shard: u32,
    attempt: u32,
    n: u32,
    results: Vec<TestCaseResult>,
) -> TestCaseBatch {
    TestCaseBatch {
        execution_id: id.into(),
        shard_index: shard,
        attempt,
        batch: n,
        workflow: "w".into(),
        results,
        ..TestCaseBatch::default()
    }
}

fn started(id: &str, shard: u32, attempt: u32) -> ShardStatus {
    ShardStatus {
        execution_id: id.into(),
        shard_index: shard,
        attempt,
        state: ShardState::Running.into(),
        started_at_ms: 2_000,
        ..ShardStatus::default()
    }
}

/// Ends the one-shard execution `id` (its attempt 1 reported `batches` batches) and folds its
/// test cases into the duration history, as the aggregator does at an execution's end.
async fn end_and_fold(store: &Store, id: &str, batches: u32) {
    let end = ShardStatus {
        state: ShardState::Passed.into(),
        finished_at_ms: 3_000,
        result_batches: batches,
        ..started(id, 0, 1)
    };
    store.record_shard_status(end).await.unwrap();
    store.fold_history(Some(id)).await.unwrap();
}

/// `(shard, test id)` of every case in `detail`.
fn cases(detail: &ExecutionDetail) -> Vec<(u32, String)> {
    detail
        .shards
        .iter()
        .flat_map(|s| {
            let index = s.summary.as_ref().map(|s| s.index).unwrap_or_default();
            s.tests.iter().map(move |t| (index, t.id.clone()))
        })
        .collect()
}

/// Reads every page of `id`, `between` running before each page after the first.
async fn all_pages<F, Fut>(
    store: &Store,
    id: &str,
    size: u32,
    mut between: F,
) -> (Vec<(u32, String)>, usize)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut page = Page {
        size,
        token: String::new(),
    };
    let (mut out, mut pages) = (Vec::new(), 0);
    loop {
        let detail = store.execution_page(id, &page).await.unwrap().unwrap();
        pages += 1;
        let got = cases(&detail);
        if size > 0 {
            assert!(got.len() <= size.min(MAX_PAGE_SIZE) as usize);
        }
        // Every page carries the whole head.
        let u = detail.execution.as_ref().unwrap();
        assert_eq!(u.execution_id, id);
        assert_eq!(detail.shards.len(), u.shards.len());
        out.extend(got);
        if detail.next_page_token.is_empty() {
            return (out, pages);
        }
        page.token = detail.next_page_token;
        between(pages).await;
    }
}

/// An execution of three shards: shard 0 with 25 tests, shard 1 retried (its first attempt's
/// 10 tests are superseded by the second attempt's 6), shard 2 with none yet.
async fn three_shards(store: &Store, id: &str) {
    store.record_execution(plan(id, "w", 3)).await.unwrap();
    let ids = |prefix: &str, n: usize| -> Vec<TestCaseResult> {
        (0..n)
            .map(|i| case(&format!("{prefix}{i:03}"), TestStatus::Passed))
            .collect()
    };
    store.record_shard_status(started(id, 0, 1)).await.unwrap();
    store
        .record_batch(batch(id, 0, 1, 0, ids("a", 12)))
        .await
        .unwrap();
    store
        .record_batch(batch(id, 0, 1, 1, ids("b", 13)))
        .await
        .unwrap();
    store.record_shard_status(started(id, 1, 1)).await.unwrap();
    store
        .record_batch(batch(id, 1, 1, 0, ids("old", 10)))
        .await
        .unwrap();
    store.record_shard_status(started(id, 1, 2)).await.unwrap();
    store
        .record_batch(batch(id, 1, 2, 0, ids("new", 6)))
        .await
        .unwrap();
}

#[tokio::test]
async fn every_case_comes_exactly_once_across_pages_whatever_the_page_size() {
    let (_dir, store) = open();
    three_shards(&store, "E1").await;
    let whole = store.execution_detail("E1").await.unwrap().unwrap();
    let mut expected = cases(&whole);
    assert_eq!(expected.len(), 31);
    assert!(expected.iter().all(|(_, t)| !t.starts_with("old")));
    expected.sort();
    for size in [1, 2, 5, 6, 25, 30, 31, 32, 1_000, 0, u32::MAX] {
        let (mut got, pages) = all_pages(&store, "E1", size, |_| async {}).await;
        let n = got.len();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), n, "page size {size}: a case came twice");
        assert_eq!(got, expected, "page size {size}");
        let full_pages = if size == 0 || size > 31 {
            1
        } else {
            31usize.div_ceil(size as usize)
        };
        assert_eq!(pages, full_pages, "page size {size}");
    }
    // A request without a page size answers like the unpaged read did.
    let first = store
        .execution_page("E1", &Page::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, whole);
    assert!(
        store
            .execution_page("nope", &Page::default())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn pages_stay_stable_while_other_executions_and_new_results_arrive() {
    let (_dir, store) = open();
    three_shards(&store, "E1").await;
    let mut expected = cases(&store.execution_detail("E1").await.unwrap().unwrap());
    expected.sort();
    let other = store.clone();
    let (mut got, pages) = all_pages(&store, "E1", 4, move |n| {
        let other = other.clone();
        async move {
            // Another execution of the same workflow, with ids on both sides of the cursor.
            let id = format!("E2-{n}");
            other.record_execution(plan(&id, "w", 3)).await.unwrap();
            let results: Vec<TestCaseResult> = ["a000", "b005", "new999", "zzz"]
                .iter()
                .map(|t| case(t, TestStatus::Failed))
                .collect();
            for shard in 0..3 {
                other
                    .record_batch(batch(&id, shard, 1, 0, results.clone()))
                    .await
                    .unwrap();
            }
        }
    })
    .await;
    assert_eq!(pages, 8);
    got.sort();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_page_stays_under_the_byte_budget() {
    let (_dir, store) = open();
    store.record_execution(plan("BIG", "w", 1)).await.unwrap();
    // 40 cases of 200 KiB: 8 MiB in all, over two answers' worth.
    let big = "x".repeat(200 * 1024);
    for b in 0..4 {
        let results = (0..10)
            .map(|i| TestCaseResult {
                output: big.clone(),
                ..case(&format!("t{b}{i}"), TestStatus::Failed)
            })
            .collect();
        store
            .record_batch(batch("BIG", 0, 1, b, results))
            .await
            .unwrap();
    }
    let mut page = Page::default();
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let detail = store.execution_page("BIG", &page).await.unwrap().unwrap();
        pages += 1;
        let bytes: usize = detail.shards[0].tests.iter().map(|t| t.encoded_len()).sum();
        assert!(bytes <= PAGE_BYTES, "{bytes} bytes on one page");
        assert!(detail.encoded_len() < 4 * 1024 * 1024);
        seen += detail.shards[0].tests.len();
        if detail.next_page_token.is_empty() {
            break;
        }
        page.token = detail.next_page_token;
    }
    assert_eq!(seen, 40);
    assert!(pages >= 3, "{pages} pages");
}

#[tokio::test]
async fn malformed_and_foreign_tokens_are_refused_as_invalid() {
    let (_dir, store) = open();
    three_shards(&store, "E1").await;
    three_shards(&store, "E2").await;
    fn invalid<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
        match r {
            Err(e @ Error::Invalid { .. }) => {
                assert!(!e.is_retryable());
                e.to_string()
            }
            other => panic!("expected an invalid page token, got {other:?}"),
        }
    }
    let page = |token: &str| Page {
        size: 3,
        token: token.into(),
    };
    let msg = invalid(store.execution_page("E1", &page("garbage!")).await);
    assert!(
        msg.contains("page token") && msg.contains("not base64"),
        "{msg}"
    );
    let msg = invalid(store.execution_page("E1", &page("e30")).await);
    assert!(msg.contains("not a page token"), "{msg}");
    let of_e2 = store
        .execution_page("E2", &page(""))
        .await
        .unwrap()
        .unwrap()
        .next_page_token;
    let msg = invalid(store.execution_page("E1", &page(&of_e2)).await);
    assert!(msg.contains("execution E2, not E1"), "{msg}");
    let msg = invalid(store.history_page("w", None, &page(&of_e2)).await);
    assert!(msg.contains("not test history"), "{msg}");
}

#[tokio::test]
async fn history_pages_cover_every_test_once_while_it_grows() {
    let (_dir, store) = open();
    store.record_execution(plan("H1", "w", 1)).await.unwrap();
    let results: Vec<TestCaseResult> = (0..50)
        .map(|i| TestCaseResult {
            duration_ms: (i * 37 % 50) as u64,
            ..case(&format!("t{i:02}"), TestStatus::Passed)
        })
        .collect();
    store
        .record_batch(batch("H1", 0, 1, 0, results))
        .await
        .unwrap();
    end_and_fold(&store, "H1", 1).await;
    let whole = store.history("w", None).await.unwrap();
    assert_eq!(whole.len(), 50);

    // Unpaged-style request: everything, slowest first, as before.
    let (first, next) = store
        .history_page("w", None, &Page::default())
        .await
        .unwrap();
    assert_eq!(first, whole);
    assert!(next.is_empty());

    let mut page = Page {
        size: 7,
        token: String::new(),
    };
    let mut seen = BTreeSet::new();
    let mut pages = 0;
    loop {
        let (tests, next) = store.history_page("w", None, &page).await.unwrap();
        pages += 1;
        assert!(tests.len() <= 7);
        assert!(
            tests.windows(2).all(|w| w[0].mean_ms >= w[1].mean_ms),
            "slowest first within a page"
        );
        for t in tests {
            assert!(seen.insert(t.test_id.clone()), "{} came twice", t.test_id);
        }
        if next.is_empty() {
            break;
        }
        page.token = next;
        // A new run changes durations (and so the slowest-first order) between pages.
        let id = format!("H-{pages}");
        store.record_execution(plan(&id, "w", 1)).await.unwrap();
        let rerun = (0..50)
            .map(|i| TestCaseResult {
                duration_ms: ((i + pages) * 13 % 97) as u64,
                ..case(&format!("t{i:02}"), TestStatus::Passed)
            })
            .collect();
        store
            .record_batch(batch(&id, 0, 1, 0, rerun))
            .await
            .unwrap();
        end_and_fold(&store, &id, 1).await;
    }
    assert_eq!(pages, 8);
    assert_eq!(seen.len(), 50);

    // One test; a token of another workflow or test is refused.
    let (one, next) = store
        .history_page("w", Some("t07"), &Page::default())
        .await
        .unwrap();
    assert_eq!((one.len(), next.is_empty()), (1, true));
    let (_, token) = store
        .history_page(
            "w",
            None,
            &Page {
                size: 1,
                token: String::new(),
            },
        )
        .await
        .unwrap();
    let err = store
        .history_page(
            "other",
            None,
            &Page {
                size: 1,
                token: token.clone(),
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"w\", not \"other\""), "{err}");
    let err = store
        .history_page("w", Some("t07"), &Page { size: 1, token })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
}
