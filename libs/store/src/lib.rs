//! The result store: executions, shards and test cases, in one embedded SQLite file.
//!
//! Every write is idempotent (delivering the same message twice leaves the same state) and
//! tolerates messages arriving out of order across streams: a shard status before the plan,
//! results before the status. The execution's status is derived from what has arrived (see
//! [`derive_status`]) and persisted once it is terminal, so it never flips back.

mod derive;
mod error;
mod events;
pub mod history;
mod ops;
mod page;
mod queues;
mod retention;
mod schema;
mod tally;
mod view;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use assay_proto::v1::{
    EventRecord, Execution, ExecutionDetail, ExecutionStatus, ExecutionUpdate, ShardStatus,
    TestCaseBatch,
};
use rusqlite::Connection;

pub use derive::{
    ShardProgress, Verdict, derive_status, execution_status_is_terminal, shard_state_is_terminal,
};
pub use error::{Error, Result};
pub use events::{EVENT_RETENTION, EventFilter};
pub use page::{MAX_PAGE_SIZE, PAGE_BYTES, Page};
pub use retention::PRUNE_EXECUTIONS;

/// How long a statement waits for a lock held by another connection before failing with a
/// retryable error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Listing returns at most this many executions, whatever the caller asks.
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Listing with a limit of 0 returns this many executions.
pub const DEFAULT_LIST_LIMIT: u32 = 50;

/// At most this many label pairs in one [`ExecutionFilter`].
pub const MAX_LABEL_FILTERS: usize = 32;

/// Which executions [`Store::list_executions`] returns: those matching every given part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionFilter {
    /// Only executions of this workflow.
    pub workflow: Option<String>,
    /// Only executions whose provenance source is this (`github`, `cron`, `run`, ...).
    pub source: Option<String>,
    /// Only executions whose provenance labels include every one of these pairs.
    pub labels: BTreeMap<String, String>,
}

impl ExecutionFilter {
    fn check(&self) -> Result<()> {
        if self.labels.len() > MAX_LABEL_FILTERS {
            return Err(Error::Invalid {
                what: "execution filter",
                detail: format!(
                    "{} label pairs given, at most {MAX_LABEL_FILTERS} are allowed; filter by fewer labels",
                    self.labels.len()
                ),
            });
        }
        Ok(())
    }
}

/// A handle to the result store; cheap to clone, shared across tasks.
#[derive(Debug, Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// One statement runs at a time on the one connection; callers wait here, as tasks,
    /// rather than each on a blocking-pool thread of its own parked on the mutex. A burst
    /// of result batches otherwise grew the pool to dozens of threads, each keeping its own
    /// allocator heap after the burst (the aggregator idled at 3.8x its RSS before a
    /// 100,000-test run).
    turn: Arc<tokio::sync::Semaphore>,
    path: Arc<PathBuf>,
}

impl Store {
    /// Opens (or creates) the store at `path`, creating parent directories, and migrates its
    /// schema.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| Error::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "result store is not in WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        schema::migrate(&mut conn, path)?;
        tracing::debug!(path = %path.display(), "result store open");
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            turn: Arc::new(tokio::sync::Semaphore::new(1)),
            path: Arc::new(path.to_path_buf()),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a planned execution if absent. An existing row is kept, except that a terminal
    /// status (e.g. a rejection) is applied to a row that is not terminal yet. Returns whether
    /// anything changed.
    pub async fn record_execution(&self, e: Execution) -> Result<bool> {
        self.run(move |conn| ops::record_execution(conn, &e)).await
    }

    /// Records the status of one shard attempt. States only move forward (queued < running <
    /// terminal) and the first terminal state wins. Returns whether anything changed.
    pub async fn record_shard_status(&self, s: ShardStatus) -> Result<bool> {
        self.run(move |conn| ops::record_shard_status(conn, &s))
            .await
    }

    /// Records a batch of test case results; returns whether the batch was new.
    pub async fn record_batch(&self, b: TestCaseBatch) -> Result<bool> {
        self.run(move |conn| ops::record_batch(conn, &b)).await
    }

    /// The current state of an execution, or `None` if nothing is known about it.
    pub async fn execution_update(&self, id: &str) -> Result<Option<ExecutionUpdate>> {
        let id = id.to_owned();
        self.run(move |conn| view::execution_update(conn, &id))
            .await
    }

    /// The update plus, per shard, its summary, exit code and the test cases of its latest
    /// attempt ordered by test id; `None` until the plan record has arrived.
    pub async fn execution_detail(&self, id: &str) -> Result<Option<ExecutionDetail>> {
        let id = id.to_owned();
        self.run(move |conn| view::execution_detail(conn, &id))
            .await
    }

    /// One page of an execution's test cases (see [`Page`]) under its whole head: update,
    /// counters, every shard's summary and exit code, config. Within a shard, cases come in
    /// attempt then test id order; `next_page_token` is set when more follow. `None` until
    /// the plan record has arrived; a malformed token is [`Error::Invalid`].
    pub async fn execution_page(&self, id: &str, page: &Page) -> Result<Option<ExecutionDetail>> {
        let (id, page) = (id.to_owned(), page.clone());
        self.run(move |conn| page::execution_page(conn, &id, &page))
            .await
    }

    /// The planned execution record as the scheduler sent it (status and reason as stored now).
    pub async fn execution(&self, id: &str) -> Result<Option<Execution>> {
        let id = id.to_owned();
        self.run(move |conn| view::get_execution(conn, &id)).await
    }

    /// Planned executions that pass `filter`, newest first. A `limit` of 0 means
    /// [`DEFAULT_LIST_LIMIT`]; it is capped at [`MAX_LIST_LIMIT`] and applies after filtering.
    pub async fn list_executions(
        &self,
        filter: &ExecutionFilter,
        limit: u32,
    ) -> Result<Vec<ExecutionUpdate>> {
        filter.check()?;
        let filter = filter.clone();
        let limit = match limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        };
        self.run(move |conn| view::list_executions(conn, &filter, limit))
            .await
    }

    /// Ends a planned execution with a terminal `status` unless it has ended already (used for
    /// execution timeouts). Returns whether it changed.
    pub async fn finalize(
        &self,
        id: &str,
        status: ExecutionStatus,
        reason: &str,
        finished_at_ms: i64,
    ) -> Result<bool> {
        let id = id.to_owned();
        let reason = reason.to_owned();
        self.run(move |conn| ops::finalize(conn, &id, status, &reason, finished_at_ms))
            .await
    }

    /// `(id, reason)` of the executions that timed out at or after `since_ms`.
    pub async fn timed_out_since(&self, since_ms: i64) -> Result<Vec<(String, String)>> {
        self.run(move |conn| ops::timed_out_since(conn, since_ms))
            .await
    }

    /// `(id, created_at_ms, timeout_ms)` of every planned execution not terminal yet.
    /// Planned executions not ended yet: (id, created at ms, timeout ms, shard count).
    pub async fn non_terminal_executions(&self) -> Result<Vec<(String, i64, u64, u32)>> {
        self.run(|conn| ops::non_terminal_executions(conn)).await
    }

    /// The update to publish next: the execution's current view with its revision bumped
    /// (persisted, for `ExecutionUpdate.revision`), in one step under the connection lock,
    /// so a higher revision never carries an older view than a lower one. `None` until the
    /// plan record has arrived (it publishes when it does), whatever its workflow: a
    /// rejected request's plan may name none.
    pub async fn next_update(&self, id: &str) -> Result<Option<ExecutionUpdate>> {
        let id = id.to_owned();
        self.run(move |conn| {
            if !view::is_planned(conn, &id)? {
                return Ok(None);
            }
            let revision = ops::bump_revision(conn, &id)?;
            Ok(view::execution_update(conn, &id)?.map(|mut u| {
                u.revision = revision;
                u
            }))
        })
        .await
    }

    /// Folds the test cases of ended executions into the duration history, one shard attempt
    /// per transaction (so other writes interleave with a large fold): those of `execution`,
    /// or of every ended execution not folded yet. Idempotent; returns the test cases folded.
    /// The aggregator calls it when an execution ends and from its sweep (an end whose fold
    /// a crash interrupted).
    pub async fn fold_history(&self, execution: Option<&str>) -> Result<usize> {
        let mut folded = 0;
        loop {
            let execution = execution.map(str::to_owned);
            match self
                .run(move |conn| history::fold_next(conn, execution.as_deref()))
                .await?
            {
                Some(n) => folded += n,
                None => return Ok(folded),
            }
        }
    }

    /// Duration and outcome history of a workflow's tests (one test when `test` is given),
    /// slowest first.
    pub async fn history(
        &self,
        workflow: &str,
        test: Option<&str>,
    ) -> Result<Vec<assay_proto::TestHistory>> {
        let (workflow, test) = (workflow.to_owned(), test.map(str::to_owned));
        self.run(move |conn| history::list(conn, &workflow, test.as_deref()))
            .await
    }

    /// How many folds ([`Store::fold_history`]) changed `workflow`'s history so far: a
    /// snapshot written at one version need not be written again until it grows.
    pub async fn history_version(&self, workflow: &str) -> Result<u64> {
        let workflow = workflow.to_owned();
        self.run(move |conn| history::version(conn, &workflow))
            .await
    }

    /// Duration estimates of `workflow`'s tests among the next `limit` ids after `after`
    /// (empty: from the first), in id order, and the last id read, to pass as `after` for
    /// the next page (`None`: no ids left). Estimates are those of the tests measured at least
    /// once and seen since `seen_since_ms`: what a history snapshot carries, a page at a time.
    pub async fn history_estimates(
        &self,
        workflow: &str,
        seen_since_ms: i64,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<assay_proto::TestEstimate>, Option<String>)> {
        let (workflow, after) = (workflow.to_owned(), after.to_owned());
        self.run(move |conn| history::estimates(conn, &workflow, seen_since_ms, &after, limit))
            .await
    }

    /// One page of [`Store::history`] (see [`Page`]): pages follow test id order, each is
    /// sorted slowest first; the second value is the next page's token, empty after the last.
    pub async fn history_page(
        &self,
        workflow: &str,
        test: Option<&str>,
        page: &Page,
    ) -> Result<(Vec<assay_proto::TestHistory>, String)> {
        let (workflow, test, page) = (workflow.to_owned(), test.map(str::to_owned), page.clone());
        self.run(move |conn| page::history_page(conn, &workflow, test.as_deref(), &page))
            .await
    }

    /// Measured cost of starting a shard of `workflow` (median creation-to-start of recent
    /// first attempts), if any shard started yet.
    pub async fn shard_start_ms(&self, workflow: &str) -> Result<Option<f64>> {
        let workflow = workflow.to_owned();
        self.run(move |conn| history::shard_start_ms(conn, &workflow))
            .await
    }

    /// Records the scheduler's record of one event or run request unless it is there
    /// already (same `event.event_id` and `header.idempotency_key`); returns whether it was
    /// new. Records older than [`EVENT_RETENTION`] are pruned on the way, a bounded number
    /// per call.
    pub async fn record_event(&self, r: EventRecord) -> Result<bool> {
        let expired_before = history::now_ms() - EVENT_RETENTION.as_millis() as i64;
        self.run(move |conn| events::record(conn, &r, expired_before))
            .await
    }

    /// Event records passing `filter`, newest first. A `limit` of 0 means
    /// [`DEFAULT_LIST_LIMIT`]; it is capped at [`MAX_LIST_LIMIT`].
    pub async fn list_events(&self, filter: &EventFilter, limit: u32) -> Result<Vec<EventRecord>> {
        let filter = filter.clone();
        let limit = match limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        };
        self.run(move |conn| events::list(conn, &filter, limit))
            .await
    }

    /// Deletes event records handled before `expired_before_ms` (a bounded number per call,
    /// oldest first); returns how many.
    pub async fn prune_events(&self, expired_before_ms: i64) -> Result<usize> {
        self.run(move |conn| events::prune(conn, expired_before_ms))
            .await
    }

    /// Deletes executions that ended before `ended_before_ms` with all their records (at
    /// most [`PRUNE_EXECUTIONS`] per call, oldest first); returns how many.
    pub async fn prune_executions(&self, ended_before_ms: i64) -> Result<usize> {
        self.run(move |conn| retention::prune(conn, ended_before_ms))
            .await
    }

    pub async fn bump_revision(&self, id: &str) -> Result<u64> {
        let id = id.to_owned();
        self.run(move |conn| ops::bump_revision(conn, &id)).await
    }

    /// Gives SQLite's page cache back once an execution has ended (`PRAGMA shrink_memory`),
    /// so what a large execution read does not stay resident while the service idles.
    pub async fn release_memory(&self) -> Result<()> {
        self.run(|conn| {
            conn.execute_batch("PRAGMA shrink_memory")?;
            Ok(())
        })
        .await
    }

    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        // Never closed, so acquiring only waits.
        let turn = Arc::clone(&self.turn).acquire_owned().await.ok();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            // A panic while holding the lock left no open transaction behind (it rolls back on
            // drop), so the connection is still usable.
            let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        })
        .await?
    }
}
