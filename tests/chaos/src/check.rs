//! The five invariants, checked against the final state: the aggregator's database and
//! gRPC API, the `ASSAY_RESULTS` stream, the harness's own ledger of acknowledged
//! submissions, and what the process monitor saw. The targeted scenarios' invariants are in
//! [`targeted`].

pub mod targeted;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use assay_proto::{ExecutionDetail, ExecutionStatus, TestCaseBatch};

use crate::load::{Acked, Ledger};
use crate::monitor::Observed;

/// Extra time past an execution's timeout within which it must be terminal (invariant 4),
/// and how long a runner may outlive its execution (invariant 5).
pub const GRACE_MS: i64 = 60_000;

#[derive(Debug, Clone)]
pub struct ExecRow {
    pub id: String,
    pub workflow: String,
    pub status: i32,
    pub reason: String,
    pub cause: String,
    pub created_at_ms: i64,
    pub finished_at_ms: i64,
    pub timeout_ms: i64,
}

impl ExecRow {
    pub fn terminal(&self) -> bool {
        self.status >= ExecutionStatus::Passed as i32
    }
    pub fn status_name(&self) -> &'static str {
        ExecutionStatus::try_from(self.status)
            .map(|s| s.as_str_name())
            .unwrap_or("?")
    }
}

pub type Key = (String, u32, u32, String);

/// What the database holds at the end.
#[derive(Debug, Default)]
pub struct Db {
    pub executions: Vec<ExecRow>,
    pub rows: HashSet<Key>,
    /// (execution, queue batch) → (shard, attempt) of its first report.
    pub claims: HashMap<(String, u32), (u32, u32)>,
}

pub fn read_db(path: &Path) -> anyhow::Result<Db> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut db = Db::default();
    let mut stmt = conn.prepare(
        "SELECT id, workflow, status, reason, cause, created_at_ms, finished_at_ms, timeout_ms
         FROM executions WHERE planned = 1",
    )?;
    db.executions = stmt
        .query_map([], |r| {
            Ok(ExecRow {
                id: r.get(0)?,
                workflow: r.get(1)?,
                status: r.get(2)?,
                reason: r.get(3)?,
                cause: r.get(4)?,
                created_at_ms: r.get(5)?,
                finished_at_ms: r.get(6)?,
                timeout_ms: r.get(7)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut stmt =
        conn.prepare("SELECT execution_id, shard_index, attempt, test_id FROM test_cases")?;
    db.rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut stmt =
        conn.prepare("SELECT execution_id, queue_batch, shard_index, attempt FROM queue_claims")?;
    db.claims = stmt
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?))))?
        .collect::<Result<_, _>>()?;
    Ok(db)
}

/// One invariant's verdict, with the numbers behind it.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub name: &'static str,
    pub held: bool,
    pub evidence: String,
    pub violations: Vec<String>,
    /// A measured wall-clock bound (the bar): it fails `make chaos`, while `make
    /// test` only reports it (tests never assert wall-clock time on a shared machine).
    pub timing: bool,
}

fn verdict(name: &'static str, evidence: String, violations: Vec<String>) -> Verdict {
    Verdict {
        name,
        held: violations.is_empty(),
        evidence,
        violations,
        timing: false,
    }
}

pub struct Inputs<'a> {
    pub db: &'a Db,
    pub stream: &'a [TestCaseBatch],
    pub api: &'a HashMap<String, Result<ExecutionDetail, String>>,
    pub ledger: &'a Ledger,
    pub observed: &'a Observed,
    /// Tests in the suite of each workflow.
    pub suites: &'a HashMap<String, usize>,
    /// When the harness made the aggregator unable to write: (from, to, fault), unix ms.
    pub aggregator_outages: &'a [(i64, i64, String)],
}

pub fn all(i: &Inputs<'_>) -> Vec<Verdict> {
    vec![
        results_once(i),
        one_runner(i),
        triggers(i),
        terminal(i),
        no_orphans(i),
    ]
}

/// Invariant 1: Every test-case result in the `ASSAY_RESULTS` stream (all of it was acknowledged to
/// a runner) is in the store exactly once under (execution, shard, attempt, test id). A
/// queue batch reported by two workers counts under its first report (the store keeps that
/// one by design), and the API never shows a test twice in an execution.
fn results_once(i: &Inputs<'_>) -> Verdict {
    let mut keys: BTreeMap<Key, u32> = BTreeMap::new();
    for b in i.stream {
        for r in &b.results {
            keys.entry((
                b.execution_id.clone(),
                b.shard_index,
                b.attempt,
                r.id.clone(),
            ))
            .or_insert(b.queue_batch);
        }
    }
    let mut violations = Vec::new();
    let (mut direct, mut superseded) = (0usize, 0usize);
    for ((exec, shard, attempt, test), qb) in &keys {
        let owner = if *qb == 0 {
            Some((*shard, *attempt))
        } else {
            i.db.claims.get(&(exec.clone(), *qb)).copied()
        };
        match owner {
            Some(o) if o == (*shard, *attempt) => {
                if i.db
                    .rows
                    .contains(&(exec.clone(), *shard, *attempt, test.clone()))
                {
                    direct += 1;
                } else {
                    violations.push(format!(
                        "lost: {exec}/{shard}/{attempt} {test} is in ASSAY_RESULTS but not in the store"
                    ));
                }
            }
            Some((os, oa)) => {
                if i.db.rows.contains(&(exec.clone(), os, oa, test.clone())) {
                    superseded += 1;
                } else {
                    violations.push(format!(
                        "lost: {exec}/{shard}/{attempt} {test} (queue batch {}) reported first by {os}/{oa}, which the store does not hold",
                        qb - 1
                    ));
                }
            }
            None => violations.push(format!(
                "lost: {exec}/{shard}/{attempt} {test}: queue batch {} has no claim in the store",
                qb - 1
            )),
        }
    }
    let stream_keys: HashSet<&Key> = keys.keys().collect();
    let phantoms =
        i.db.rows
            .iter()
            .filter(|k| !stream_keys.contains(k))
            .count();
    if phantoms > 0 {
        violations.push(format!(
            "{phantoms} stored test cases were never published on ASSAY_RESULTS"
        ));
    }
    // The API view: a test appears at most once per execution; a passed execution shows
    // its whole suite.
    let (mut views, mut complete) = (0usize, 0usize);
    for (id, detail) in i.api {
        let Ok(d) = detail else { continue };
        views += 1;
        let mut seen: HashMap<&str, u32> = HashMap::new();
        for s in &d.shards {
            for t in &s.tests {
                *seen.entry(t.id.as_str()).or_default() += 1;
            }
        }
        let twice: Vec<&str> = seen
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(t, _)| *t)
            .collect();
        if !twice.is_empty() {
            violations.push(format!(
                "execution {id}: the API shows {} tests more than once (e.g. {})",
                twice.len(),
                twice[0]
            ));
        }
        let status = d.execution.as_ref().map(|e| e.status).unwrap_or(0);
        let workflow = d.execution.as_ref().map(|e| e.workflow.as_str());
        let suite = workflow
            .and_then(|w| i.suites.get(w))
            .copied()
            .unwrap_or_default();
        if status == ExecutionStatus::Passed as i32 {
            if seen.len() == suite {
                complete += 1;
            } else {
                violations.push(format!(
                    "execution {id} passed but the API shows {} of its {suite} tests",
                    seen.len(),
                ));
            }
        }
    }
    verdict(
        "1 acked results stored exactly once",
        format!(
            "{} result batches, {} distinct acked results: {direct} stored under their own key, \
             {superseded} under the first report of their queue batch; {} rows in the store; \
             {views} executions read back through the API, {complete} passed with their whole suite once",
            i.stream.len(),
            keys.len(),
            i.db.rows.len(),
        ),
        violations,
    )
}

/// Invariant 2: At most one live runner per (execution, shard, attempt), in every process-table sample.
fn one_runner(i: &Inputs<'_>) -> Verdict {
    let o = i.observed;
    verdict(
        "2 at most one live runner per shard attempt",
        format!(
            "{} process-table samples, {} runner processes seen, {} shard attempts identified, \
             at most {} runners alive at once",
            o.samples,
            o.runners_seen,
            o.attempt_last_seen.len(),
            o.max_live
        ),
        o.twins.clone(),
    )
}

/// Invariant 3: Every acknowledged trigger event or run request yields exactly one execution (planned,
/// or rejected with a reason), readable through the API.
fn triggers(i: &Inputs<'_>) -> Verdict {
    let mut by_cause: HashMap<&str, Vec<&ExecRow>> = HashMap::new();
    for e in &i.db.executions {
        by_cause.entry(e.cause.as_str()).or_default().push(e);
    }
    let mut violations = Vec::new();
    let (mut planned, mut rejected, mut duplicates) = (0usize, 0usize, 0usize);
    let mut by_via: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &i.ledger.acked {
        *by_via.entry(a.via.name()).or_default() += 1;
        if a.acks > 1 {
            duplicates += 1;
        }
        let found = by_cause.get(a.cause.as_str()).cloned().unwrap_or_default();
        match found.as_slice() {
            [] => violations.push(describe_missing(a)),
            [e] => {
                if let Some(want) = &a.execution
                    && *want != e.id
                {
                    violations.push(format!(
                        "{} for {}: asked for execution {want}, got {}",
                        a.via.name(),
                        a.cause,
                        e.id
                    ));
                }
                match i.api.get(&e.id) {
                    Some(Ok(d)) if d.execution.as_ref().is_some_and(|x| x.execution_id == e.id) => {
                    }
                    Some(Err(err)) => violations.push(format!(
                        "execution {} ({}) is in the store but the API says: {err}",
                        e.id, a.cause
                    )),
                    _ => violations.push(format!(
                        "execution {} ({}) is in the store but not readable through the API",
                        e.id, a.cause
                    )),
                }
                let is_rejection = e.terminal()
                    && e.status != ExecutionStatus::Passed as i32
                    && e.reason.contains("concurrency policy");
                if is_rejection {
                    rejected += 1;
                } else {
                    planned += 1;
                }
            }
            many => violations.push(format!(
                "{} for {} yielded {} executions: {}",
                a.via.name(),
                a.cause,
                many.len(),
                many.iter()
                    .map(|e| e.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    // Not a violation of the invariant (each is an explicit rejection), but a sign of a
    // concurrency slot never released: rejections citing a holder that had ended earlier.
    let by_id: HashMap<&str, &ExecRow> =
        i.db.executions.iter().map(|e| (e.id.as_str(), e)).collect();
    let stale =
        i.db.executions
            .iter()
            .filter(|e| e.reason.contains("concurrency policy"))
            .filter(|e| {
                e.reason
                    .split_whitespace()
                    .skip_while(|w| *w != "execution")
                    .nth(1)
                    .and_then(|holder| by_id.get(holder))
                    .is_some_and(|h| h.terminal() && h.finished_at_ms + 10_000 < e.created_at_ms)
            })
            .count();
    let vias = by_via
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    verdict(
        "3 acked trigger -> exactly one execution or rejection",
        format!(
            "{} acknowledged ({vias}); {duplicates} of them submitted twice on purpose; \
             {} retried submissions, {} never acknowledged (not counted); \
             {planned} executions, {rejected} explicit rejections ({stale} of them citing a \
             holder that had ended more than 10 s before)",
            i.ledger.acked.len(),
            i.ledger.retries,
            i.ledger.unacked
        ),
        violations,
    )
}

fn describe_missing(a: &Acked) -> String {
    format!(
        "{} acknowledged at {} for workflow {} (cause {}) yielded no execution and no rejection",
        a.via.name(),
        a.at_ms,
        a.workflow,
        a.cause
    )
}

/// Invariant 4: Every execution is terminal within its timeout plus 60 s.
fn terminal(i: &Inputs<'_>) -> Verdict {
    let mut violations = Vec::new();
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    let mut worst: i64 = i64::MIN;
    for e in &i.db.executions {
        *by_status.entry(e.status_name()).or_default() += 1;
        if !e.terminal() {
            violations.push(format!(
                "execution {} ({}) is still {} at the end (created {} ms ago, timeout {} ms)",
                e.id,
                e.workflow,
                e.status_name(),
                assay_bus::now_ms() - e.created_at_ms,
                e.timeout_ms
            ));
            continue;
        }
        let took = e.finished_at_ms - e.created_at_ms;
        let over = took - e.timeout_ms;
        if e.timeout_ms > 0 {
            worst = worst.max(over);
        }
        if over > GRACE_MS {
            // Triage: how long the aggregator could not write after the deadline.
            let deadline = e.created_at_ms + e.timeout_ms;
            let mut blocked: Vec<(i64, i64)> = i
                .aggregator_outages
                .iter()
                .map(|(a, b, _)| ((*a).max(deadline), (*b).min(e.finished_at_ms)))
                .filter(|(a, b)| a < b)
                .collect();
            blocked.sort();
            let mut down = 0;
            let mut reach = i64::MIN;
            for (a, b) in blocked {
                let a = a.max(reach);
                if b > a {
                    down += b - a;
                }
                reach = reach.max(b);
            }
            violations.push(format!(
                "execution {} ({}) ended {} after {} ms, {} ms past its timeout of {} ms \
                 (the aggregator was paused, killed or its database unwritable for {} ms of that): {}",
                e.id,
                e.workflow,
                e.status_name(),
                took,
                over,
                e.timeout_ms,
                down,
                e.reason
            ));
        }
    }
    let statuses = by_status
        .iter()
        .map(|(k, n)| {
            format!(
                "{n} {}",
                k.trim_start_matches("EXECUTION_STATUS_").to_lowercase()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    verdict(
        "4 every execution terminal within timeout + 60s",
        format!(
            "{} executions: {statuses}; latest end relative to its timeout: {:+.1}s",
            i.db.executions.len(),
            if worst == i64::MIN {
                0.0
            } else {
                worst as f64 / 1000.0
            }
        ),
        violations,
    )
}

/// Invariant 5: No runner process (or a process it started) is alive 60 s after its execution ended.
fn no_orphans(i: &Inputs<'_>) -> Verdict {
    let o = i.observed;
    let ended: HashMap<&str, &ExecRow> =
        i.db.executions
            .iter()
            .filter(|e| e.terminal())
            .map(|e| (e.id.as_str(), e))
            .collect();
    let mut violations = o.orphans.clone();
    let mut checked = 0;
    for ((exec, shard, attempt), last) in &o.attempt_last_seen {
        let Some(e) = ended.get(exec.as_str()) else {
            continue;
        };
        checked += 1;
        if *last > e.finished_at_ms + GRACE_MS {
            violations.push(format!(
                "a process of {exec}/{shard}/{attempt} was alive {:.1}s after its execution ended ({})",
                (*last - e.finished_at_ms) as f64 / 1000.0,
                e.status_name()
            ));
        }
    }
    violations.extend(o.leftovers.iter().cloned());
    // Not a violation by itself, but what makes one when shards run long: attempts that
    // started after their execution had ended (a redelivered job, a retry).
    let late_starts = o
        .attempt_first_seen
        .iter()
        .filter(|((exec, _, _), first)| {
            ended
                .get(exec.as_str())
                .is_some_and(|e| **first > e.finished_at_ms + 1_000)
        })
        .count();
    verdict(
        "5 no runner outlives its execution by 60s",
        format!(
            "{checked} shard attempts of ended executions followed in /proc ({} runner processes, \
             {} test processes), {late_starts} of them started after their execution ended; \
             {} runners left after the stack stopped",
            o.runners_seen,
            o.tests_seen,
            o.leftovers.len()
        ),
        violations,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Via;
    use assay_proto::TestCaseResult;

    fn batch(exec: &str, shard: u32, attempt: u32, qb: u32, ids: &[&str]) -> TestCaseBatch {
        TestCaseBatch {
            execution_id: exec.into(),
            shard_index: shard,
            attempt,
            queue_batch: qb,
            results: ids
                .iter()
                .map(|id| TestCaseResult {
                    id: id.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn key(exec: &str, shard: u32, attempt: u32, id: &str) -> Key {
        (exec.into(), shard, attempt, id.into())
    }

    fn exec(id: &str, cause: &str, status: ExecutionStatus) -> ExecRow {
        ExecRow {
            id: id.into(),
            workflow: "w".into(),
            status: status as i32,
            reason: String::new(),
            cause: cause.into(),
            created_at_ms: 1_000,
            finished_at_ms: 2_000,
            timeout_ms: 10_000,
        }
    }

    fn check(db: &Db, stream: &[TestCaseBatch], ledger: &Ledger) -> Vec<Verdict> {
        let api = db
            .executions
            .iter()
            .map(|e| {
                let d = ExecutionDetail {
                    execution: Some(assay_proto::ExecutionUpdate {
                        execution_id: e.id.clone(),
                        workflow: e.workflow.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                (e.id.clone(), Ok(d))
            })
            .collect();
        all(&Inputs {
            db,
            stream,
            api: &api,
            ledger,
            observed: &Observed::default(),
            suites: &[("w".to_string(), 2)].into(),
            aggregator_outages: &[],
        })
    }

    #[test]
    fn a_lost_result_breaks_invariant_1_and_a_superseded_queue_batch_does_not() {
        let stream = vec![
            batch("e", 0, 1, 0, &["a", "b"]),
            // Queue batch 0 (1 on the wire), reported by shard 1 first, then shard 2.
            batch("e", 1, 1, 1, &["c"]),
            batch("e", 2, 1, 1, &["c"]),
        ];
        let mut db = Db::default();
        db.rows.insert(key("e", 0, 1, "a"));
        db.rows.insert(key("e", 0, 1, "b"));
        db.rows.insert(key("e", 1, 1, "c"));
        db.claims.insert(("e".into(), 1), (1, 1));
        let v = check(&db, &stream, &Ledger::default());
        assert!(v[0].held, "{:?}", v[0]);
        db.rows.remove(&key("e", 0, 1, "b"));
        let v = check(&db, &stream, &Ledger::default());
        assert!(!v[0].held);
        assert!(
            v[0].violations[0].contains("e/0/1 b"),
            "{:?}",
            v[0].violations
        );
    }

    #[test]
    fn an_acked_trigger_needs_exactly_one_execution() {
        let acked = |cause: &str| Acked {
            via: Via::BusEvent,
            workflow: "w".into(),
            cause: cause.into(),
            execution: None,
            acks: 1,
            at_ms: 0,
        };
        let ledger = Ledger {
            acked: vec![acked("k1/t/w"), acked("k2/t/w"), acked("k3/t/w")],
            ..Default::default()
        };
        let db = Db {
            executions: vec![
                exec("x1", "k1/t/w", ExecutionStatus::Passed),
                exec("x2", "k2/t/w", ExecutionStatus::Passed),
                exec("x3", "k2/t/w", ExecutionStatus::Passed),
            ],
            ..Default::default()
        };
        let v = check(&db, &[], &ledger);
        assert!(!v[2].held);
        assert_eq!(v[2].violations.len(), 2, "{:?}", v[2].violations);
        assert!(
            v[2].violations
                .iter()
                .any(|m| m.contains("yielded 2 executions"))
        );
        assert!(v[2].violations.iter().any(|m| m.contains("k3/t/w")));
    }

    #[test]
    fn late_or_unfinished_executions_break_invariant_4() {
        let mut late = exec("x1", "c1", ExecutionStatus::TimedOut);
        late.finished_at_ms = late.created_at_ms + late.timeout_ms + GRACE_MS + 1;
        let db = Db {
            executions: vec![
                late,
                exec("x2", "c2", ExecutionStatus::Running),
                exec("x3", "c3", ExecutionStatus::Passed),
            ],
            ..Default::default()
        };
        let v = check(&db, &[], &Ledger::default());
        assert_eq!(v[3].violations.len(), 2, "{:?}", v[3].violations);
    }
}
