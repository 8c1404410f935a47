//! The read side of [`crate::Store`]: an execution's view derived from its rows (the
//! planned record, its shard attempts and their tallies), and the answers built from it
//! (`Execution`, `ExecutionUpdate`, `ExecutionDetail`, listings). Writes are in `ops`.

use std::collections::{BTreeMap, HashMap};

use assay_proto::v1::{
    Execution, ExecutionDetail, ExecutionStatus, ExecutionUpdate, Provenance, ShardDetail,
    ShardState, TestCaseResult,
};
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};

use crate::derive::{ShardProgress, Verdict, derive_status, execution_status_is_terminal};
use crate::tally::{self, Counts};
use crate::{Error, ExecutionFilter, Result};

pub(crate) fn get_execution(conn: &Connection, id: &str) -> Result<Option<Execution>> {
    let row = conn
        .query_row(
            "SELECT workflow, shard_count, status, reason, trigger_name, cause, config_json,
                 labels_json, created_at_ms, timeout_ms, rerun_of, priority, provenance
             FROM executions WHERE id = ?1 AND planned = 1",
            [id],
            |row| {
                Ok((
                    Execution {
                        header: None,
                        id: id.to_owned(),
                        workflow: row.get(0)?,
                        shard_count: row.get(1)?,
                        status: row.get(2)?,
                        reason: row.get(3)?,
                        trigger: row.get(4)?,
                        cause: row.get(5)?,
                        config: HashMap::new(),
                        labels: HashMap::new(),
                        created_at_ms: row.get(8)?,
                        timeout_ms: u64::try_from(row.get::<_, i64>(9)?).unwrap_or(0),
                        rerun_of: row.get(10)?,
                        provenance: None,
                        priority: row.get(11)?,
                    },
                    row.get::<_, String>(6)?,
                    row.get::<_, String>(7)?,
                    row.get::<_, Option<Vec<u8>>>(12)?,
                ))
            },
        )
        .optional()?;
    let Some((mut execution, config, labels, provenance)) = row else {
        return Ok(None);
    };
    execution.config = map_from_json("execution config", &config)?;
    execution.labels = map_from_json("execution labels", &labels)?;
    execution.provenance = decode_provenance(provenance.as_deref())?;
    Ok(Some(execution))
}

pub(crate) fn execution_update(conn: &Connection, id: &str) -> Result<Option<ExecutionUpdate>> {
    Ok(load(conn, id)?.map(|view| view.update()))
}

pub(crate) fn is_planned(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT planned FROM executions WHERE id = ?1",
            [id],
            |row| row.get::<_, bool>(0),
        )
        .optional()?
        .unwrap_or(false))
}

pub(crate) fn execution_detail(conn: &Connection, id: &str) -> Result<Option<ExecutionDetail>> {
    // A shard's tests: its latest attempt's own, plus the work-queue batches any of its
    // attempts reported first (each batch is stored once).
    let mut stmt = conn.prepare(
        "SELECT test_id, name, classname, file, status, duration_ms, failure_message, output,
             attempts, flaky
         FROM test_cases
         WHERE execution_id = ?1 AND shard_index = ?2 AND late = 0
             AND (attempt = ?3 OR queue_batch IS NOT NULL)
         ORDER BY test_id",
    )?;
    detail(conn, id, |shard| {
        Ok(stmt
            .query_map(params![id, shard.index, shard.attempt], |row| {
                test_case(row, 0)
            })?
            .collect::<Result<Vec<_>, _>>()?)
    })
}

/// The execution without test cases: its update, every shard's summary and exit code (no
/// tests), config and `rerun_of`; `None` until the plan record has arrived. The paged reads
/// of [`crate::page`] fill in the tests.
pub(crate) fn execution_head(conn: &Connection, id: &str) -> Result<Option<ExecutionDetail>> {
    detail(conn, id, |_| Ok(Vec::new()))
}

/// The execution's detail with each shard's tests from `tests_of`; `None` until the plan
/// record has arrived.
fn detail(
    conn: &Connection,
    id: &str,
    mut tests_of: impl FnMut(&ShardProgress) -> Result<Vec<TestCaseResult>>,
) -> Result<Option<ExecutionDetail>> {
    let Some(view) = load(conn, id)?.filter(|v| v.row.is_some()) else {
        return Ok(None);
    };
    let mut shards = Vec::with_capacity(view.shards.len());
    for shard in &view.shards {
        shards.push(ShardDetail {
            summary: Some(shard.summary()),
            tests: tests_of(shard)?,
            exit_code: shard.exit_code,
        });
    }
    let (config, rerun_of) = match get_execution(conn, id)? {
        Some(e) => (e.config, e.rerun_of),
        None => (HashMap::new(), String::new()),
    };
    Ok(Some(ExecutionDetail {
        execution: Some(view.update()),
        shards,
        config,
        rerun_of,
        next_page_token: String::new(),
    }))
}

pub(crate) fn list_executions(
    conn: &Connection,
    filter: &ExecutionFilter,
    limit: u32,
) -> Result<Vec<ExecutionUpdate>> {
    let (sql, args) = list_query(filter, limit);
    let ids: Vec<String> = conn
        .prepare(&sql)?
        .query_map(rusqlite::params_from_iter(args), |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut updates = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(view) = load(conn, &id)? {
            updates.push(view.update());
        }
    }
    Ok(updates)
}

/// The ids of the planned executions passing `filter`, newest first, at most `limit`.
///
/// Each label pair is a lookup in `execution_labels_by_pair` and the source one in
/// `executions_by_source`, so the limit applies after filtering and the cost follows the
/// matches rather than the whole table.
fn list_query(filter: &ExecutionFilter, limit: u32) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = String::from("SELECT id FROM executions WHERE planned = 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(workflow) = &filter.workflow {
        sql.push_str(" AND workflow = ?");
        args.push(workflow.clone().into());
    }
    if let Some(source) = &filter.source {
        sql.push_str(" AND source = ?");
        args.push(source.clone().into());
    }
    for (key, value) in &filter.labels {
        sql.push_str(
            " AND id IN (SELECT execution_id FROM execution_labels WHERE key = ? AND value = ?)",
        );
        args.push(key.clone().into());
        args.push(value.clone().into());
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    args.push(i64::from(limit).into());
    (sql, args)
}

/// The planned execution row.
pub(crate) struct Row {
    pub(crate) workflow: String,
    pub(crate) verdict: Verdict,
    created_at_ms: i64,
    provenance: Option<Provenance>,
}

/// Everything the derived views need about one execution.
pub(crate) struct View {
    id: String,
    pub(crate) row: Option<Row>,
    revision: u64,
    shards: Vec<ShardProgress>,
    /// The status derived from the shards (what `settle` persists once terminal).
    pub(crate) verdict: Verdict,
}

impl View {
    fn update(&self) -> ExecutionUpdate {
        let sum = |f: fn(&ShardProgress) -> u32| self.shards.iter().map(f).sum::<u32>();
        ExecutionUpdate {
            header: None,
            execution_id: self.id.clone(),
            workflow: self
                .row
                .as_ref()
                .map(|r| r.workflow.clone())
                .unwrap_or_default(),
            status: self.verdict.status.into(),
            reason: self.verdict.reason.clone(),
            shards: self.shards.iter().map(ShardProgress::summary).collect(),
            passed: sum(|s| s.passed),
            failed: sum(|s| s.failed),
            errored: sum(|s| s.errored),
            skipped: sum(|s| s.skipped),
            flaky: sum(|s| s.flaky),
            created_at_ms: self.row.as_ref().map(|r| r.created_at_ms).unwrap_or(0),
            finished_at_ms: self.verdict.finished_at_ms,
            revision: self.revision,
            queue_position: 0,
            provenance: self.row.as_ref().and_then(|r| r.provenance.clone()),
        }
    }
}

/// A status row of one shard attempt.
struct AttemptRow {
    state: ShardState,
    will_retry: bool,
    reason: String,
    exit_code: i32,
    result_batches: u32,
    started_at_ms: i64,
    finished_at_ms: i64,
}

/// The `executions` columns [`load`] reads.
struct Head {
    planned: bool,
    workflow: String,
    shard_count: u32,
    status: i32,
    reason: String,
    created_at_ms: i64,
    finished_at_ms: i64,
    revision: i64,
    provenance: Option<Vec<u8>>,
}

pub(crate) fn load(conn: &Connection, id: &str) -> Result<Option<View>> {
    let head = conn
        .query_row(
            "SELECT planned, workflow, shard_count, status, reason, created_at_ms,
                 finished_at_ms, revision, provenance
             FROM executions WHERE id = ?1",
            [id],
            |row| {
                Ok(Head {
                    planned: row.get(0)?,
                    workflow: row.get(1)?,
                    shard_count: row.get(2)?,
                    status: row.get(3)?,
                    reason: row.get(4)?,
                    created_at_ms: row.get(5)?,
                    finished_at_ms: row.get(6)?,
                    revision: row.get(7)?,
                    provenance: row.get(8)?,
                })
            },
        )
        .optional()?;
    let revision = head
        .as_ref()
        .map(|h| u64::try_from(h.revision).unwrap_or(0))
        .unwrap_or(0);
    let row = match head {
        Some(head) if head.planned => {
            let status = ExecutionStatus::try_from(head.status)
                .map_err(|_| Error::decode("execution status", head.status.to_string()))?;
            Some((
                Row {
                    workflow: head.workflow,
                    verdict: Verdict {
                        status,
                        reason: head.reason,
                        finished_at_ms: head.finished_at_ms,
                    },
                    created_at_ms: head.created_at_ms,
                    provenance: decode_provenance(head.provenance.as_deref())?,
                },
                head.shard_count,
            ))
        }
        _ => None,
    };

    // Status rows of every attempt, keyed by (shard, attempt).
    let mut attempts: BTreeMap<(u32, u32), AttemptRow> = BTreeMap::new();
    {
        let mut stmt = conn.prepare(
            "SELECT shard_index, attempt, state, reason, exit_code, result_batches,
                 started_at_ms, finished_at_ms, will_retry
             FROM shard_attempts WHERE execution_id = ?1",
        )?;
        let mut rows = stmt.query([id])?;
        while let Some(r) = rows.next()? {
            let state = decode_shard_state(r.get(2)?)?;
            attempts.insert(
                (r.get(0)?, r.get(1)?),
                AttemptRow {
                    state,
                    will_retry: r.get(8)?,
                    reason: r.get(3)?,
                    exit_code: r.get(4)?,
                    result_batches: r.get(5)?,
                    started_at_ms: r.get(6)?,
                    finished_at_ms: r.get(7)?,
                },
            );
        }
    }
    // Batches and test counts per shard attempt, from the running tallies: one row per
    // attempt, however many tests the execution ran.
    let tallies = tally::load(conn, id)?;

    // The latest attempt of each shard is the highest one seen in a status or a batch.
    let mut latest: BTreeMap<u32, u32> = BTreeMap::new();
    let with_batches = tallies
        .iter()
        .filter(|(_, t)| t.batches > 0)
        .map(|(key, _)| key);
    for &(shard, attempt) in attempts.keys().chain(with_batches) {
        let entry = latest.entry(shard).or_insert(attempt);
        *entry = (*entry).max(attempt);
    }

    let (row, shard_count) = match row {
        Some((row, shard_count)) => (Some(row), shard_count),
        None => match latest.keys().next_back() {
            // Status or results before the plan: guess the shard count from what was seen.
            Some(max) => (None, max.saturating_add(1)),
            None => return Ok(None),
        },
    };

    let shards: Vec<ShardProgress> = (0..shard_count)
        .map(|index| {
            let Some(&attempt) = latest.get(&index) else {
                return ShardProgress::queued(index);
            };
            let key = (index, attempt);
            let current = tallies.get(&key);
            let batches_seen = current.map_or(0, |t| t.batches);
            // The latest attempt's own tests, plus the work-queue batches of every attempt:
            // results of a queue batch belong to the batch, not to the attempt, and only its
            // first report is stored.
            let c = tallies
                .range((index, 0)..=(index, u32::MAX))
                .map(|(_, t)| &t.queued)
                .chain(current.map(|t| &t.own))
                .fold(Counts::default(), Counts::plus);
            let mut progress = ShardProgress {
                attempt,
                batches_seen,
                passed: c.passed,
                failed: c.failed,
                errored: c.errored,
                skipped: c.skipped,
                flaky: c.flaky,
                ..ShardProgress::queued(index)
            };
            match attempts.remove(&key) {
                Some(a) => {
                    progress.state = a.state;
                    progress.will_retry = a.will_retry;
                    progress.reason = a.reason;
                    progress.exit_code = a.exit_code;
                    progress.result_batches = a.result_batches;
                    progress.started_at_ms = a.started_at_ms;
                    progress.finished_at_ms = a.finished_at_ms;
                }
                // Results are flowing, so the attempt runs even if its status is not here yet.
                None => progress.state = ShardState::Running,
            }
            progress
        })
        .collect();

    let recorded = row.as_ref().map(|r| r.verdict.clone()).unwrap_or(Verdict {
        status: ExecutionStatus::Queued,
        reason: String::new(),
        finished_at_ms: 0,
    });
    // Work-queue batches whose results are still in flight (only read while it may matter:
    // a terminal recorded status wins anyway).
    let unreported = if execution_status_is_terminal(recorded.status) {
        0
    } else {
        crate::queues::unreported(conn, id)?
    };
    let verdict = derive_status(&recorded, &shards, unreported);
    Ok(Some(View {
        id: id.to_owned(),
        row,
        revision,
        shards,
        verdict,
    }))
}

fn decode_provenance(bytes: Option<&[u8]>) -> Result<Option<Provenance>> {
    bytes
        .map(|b| {
            Provenance::decode(b).map_err(|e| Error::decode("execution provenance", e.to_string()))
        })
        .transpose()
}

pub(crate) fn decode_shard_state(value: i32) -> Result<ShardState> {
    ShardState::try_from(value).map_err(|_| Error::decode("shard state", value.to_string()))
}

fn map_from_json(what: &'static str, json: &str) -> Result<HashMap<String, String>> {
    serde_json::from_str(json).map_err(|e| Error::decode(what, e.to_string()))
}

/// A test case from a `test_cases` row whose columns, from `first`, are `test_id, name,
/// classname, file, status, duration_ms, failure_message, output, attempts, flaky`.
pub(crate) fn test_case(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<TestCaseResult> {
    Ok(TestCaseResult {
        id: row.get(first)?,
        name: row.get(first + 1)?,
        classname: row.get(first + 2)?,
        file: row.get(first + 3)?,
        status: row.get(first + 4)?,
        duration_ms: u64::try_from(row.get::<_, i64>(first + 5)?).unwrap_or(0),
        failure_message: row.get(first + 6)?,
        output: row.get(first + 7)?,
        attempts: row.get(first + 8)?,
        flaky: row.get(first + 9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(conn: &Connection, filter: &ExecutionFilter) -> String {
        let (sql, args) = list_query(filter, 10);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |row| {
                row.get::<_, String>(3)
            })
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn label_and_source_filters_use_their_indexes() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
        let labels = ExecutionFilter {
            labels: [("branch".to_string(), "main".to_string())].into(),
            ..ExecutionFilter::default()
        };
        let plan = plan_of(&conn, &labels);
        assert!(plan.contains("execution_labels_by_pair"), "{plan}");
        assert!(!plan.contains("SCAN execution_labels"), "{plan}");
        let source = ExecutionFilter {
            source: Some("github".into()),
            ..ExecutionFilter::default()
        };
        let plan = plan_of(&conn, &source);
        assert!(plan.contains("executions_by_source"), "{plan}");
    }
}
