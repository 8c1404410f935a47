//! Schema migrations, tracked in SQLite's `user_version`.

use std::path::Path;

use rusqlite::Connection;

use crate::{Error, Result};

/// Migration `i` moves the schema from version `i` to `i + 1`. Append only; never edit one
/// that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    //
    // `planned` is 0 for a row created only to hold a revision counter before the plan arrived.
    // Enum columns hold the proto enum numbers.
    r#"
    CREATE TABLE executions (
        id             TEXT    NOT NULL PRIMARY KEY,
        planned        INTEGER NOT NULL DEFAULT 0,
        workflow       TEXT    NOT NULL DEFAULT '',
        shard_count    INTEGER NOT NULL DEFAULT 0,
        status         INTEGER NOT NULL DEFAULT 1,
        reason         TEXT    NOT NULL DEFAULT '',
        trigger_name   TEXT    NOT NULL DEFAULT '',
        cause          TEXT    NOT NULL DEFAULT '',
        config_json    TEXT    NOT NULL DEFAULT '{}',
        labels_json    TEXT    NOT NULL DEFAULT '{}',
        created_at_ms  INTEGER NOT NULL DEFAULT 0,
        finished_at_ms INTEGER NOT NULL DEFAULT 0,
        timeout_ms     INTEGER NOT NULL DEFAULT 0,
        revision       INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX executions_by_workflow ON executions (workflow, id) WHERE planned = 1;
    CREATE INDEX executions_by_status ON executions (status) WHERE planned = 1;

    CREATE TABLE shard_attempts (
        execution_id   TEXT    NOT NULL,
        shard_index    INTEGER NOT NULL,
        attempt        INTEGER NOT NULL,
        state          INTEGER NOT NULL,
        reason         TEXT    NOT NULL DEFAULT '',
        exit_code      INTEGER NOT NULL DEFAULT 0,
        result_batches INTEGER NOT NULL DEFAULT 0,
        test_cases     INTEGER NOT NULL DEFAULT 0,
        started_at_ms  INTEGER NOT NULL DEFAULT 0,
        finished_at_ms INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (execution_id, shard_index, attempt)
    ) WITHOUT ROWID;

    CREATE TABLE batches (
        execution_id TEXT    NOT NULL,
        shard_index  INTEGER NOT NULL,
        attempt      INTEGER NOT NULL,
        batch        INTEGER NOT NULL,
        PRIMARY KEY (execution_id, shard_index, attempt, batch)
    ) WITHOUT ROWID;

    CREATE TABLE test_cases (
        execution_id    TEXT    NOT NULL,
        shard_index     INTEGER NOT NULL,
        attempt         INTEGER NOT NULL,
        test_id         TEXT    NOT NULL,
        name            TEXT    NOT NULL DEFAULT '',
        classname       TEXT    NOT NULL DEFAULT '',
        file            TEXT    NOT NULL DEFAULT '',
        status          INTEGER NOT NULL,
        duration_ms     INTEGER NOT NULL DEFAULT 0,
        failure_message TEXT    NOT NULL DEFAULT '',
        output          TEXT    NOT NULL DEFAULT '',
        PRIMARY KEY (execution_id, shard_index, attempt, test_id)
    ) WITHOUT ROWID;
    "#,
    // 2: shard attempts that announce a retry do not end their shard.
    r#"
    ALTER TABLE shard_attempts ADD COLUMN will_retry INTEGER NOT NULL DEFAULT 0;
    "#,
    // 3: per workflow and test, what its runs took and how they ended (for planning).
    // `recent_ms` holds the last durations (JSON array, newest last) for percentiles.
    r#"
    CREATE TABLE test_history (
        workflow      TEXT    NOT NULL,
        test_id       TEXT    NOT NULL,
        runs          INTEGER NOT NULL DEFAULT 0,
        passed        INTEGER NOT NULL DEFAULT 0,
        failed        INTEGER NOT NULL DEFAULT 0,
        errored       INTEGER NOT NULL DEFAULT 0,
        skipped       INTEGER NOT NULL DEFAULT 0,
        ewma_ms       REAL    NOT NULL DEFAULT 0,
        last_ms       INTEGER NOT NULL DEFAULT 0,
        recent_ms     TEXT    NOT NULL DEFAULT '[]',
        updated_at_ms INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (workflow, test_id)
    ) WITHOUT ROWID;
    "#,
    // 4: reruns link to the execution they rerun; queue batches are owned by the first
    // shard attempt that reports them, so a batch re-run after a lease expired counts once.
    r#"
    ALTER TABLE executions ADD COLUMN rerun_of TEXT NOT NULL DEFAULT '';
    CREATE TABLE queue_claims (
        execution_id TEXT    NOT NULL,
        queue_batch  INTEGER NOT NULL,
        shard_index  INTEGER NOT NULL,
        attempt      INTEGER NOT NULL,
        PRIMARY KEY (execution_id, queue_batch)
    ) WITHOUT ROWID;
    "#,
    // 5: per-test retries: how many times a test ran in its shard attempt, and whether it
    // passed only on a retry. Rows from before ran once.
    r#"
    ALTER TABLE test_cases ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE test_cases ADD COLUMN flaky INTEGER NOT NULL DEFAULT 0;
    "#,
    // 6: an execution's priority among those waiting for its concurrency slot.
    r#"
    ALTER TABLE executions ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    "#,
    // 7: which work-queue batch a test case came from, per row: NULL for a shard attempt's
    // own tests (only its latest attempt counts), the 1-based queue batch for a test that
    // came through a work queue (the first report of a batch counts, whichever attempt ran
    // it). A `duration` execution mixes both in one attempt: its planned tests, then the
    // shared tail. Rows from before were all of one kind per execution: those of an
    // execution with queue claims came through the queue, batch unknown (0).
    r#"
    ALTER TABLE test_cases ADD COLUMN queue_batch INTEGER;
    UPDATE test_cases SET queue_batch = 0
        WHERE execution_id IN (SELECT DISTINCT execution_id FROM queue_claims);
    "#,
    // 8: what caused an execution. `provenance` holds the plan record's `Provenance`
    // (protobuf bytes; NULL when it carried none, as every row from before does), `source` its
    // source for filtering, and `execution_labels` its labels, one row per pair, so that
    // listing by labels is an index lookup per pair rather than a scan of every execution.
    r#"
    ALTER TABLE executions ADD COLUMN provenance BLOB;
    ALTER TABLE executions ADD COLUMN source TEXT NOT NULL DEFAULT '';
    CREATE INDEX executions_by_source ON executions (source, id) WHERE planned = 1;
    CREATE TABLE execution_labels (
        execution_id TEXT NOT NULL,
        key          TEXT NOT NULL,
        value        TEXT NOT NULL,
        PRIMARY KEY (execution_id, key)
    ) WITHOUT ROWID;
    CREATE INDEX execution_labels_by_pair ON execution_labels (key, value, execution_id);
    "#,
    // 9: the scheduler's record of every event and run request it handled (`EventRecord`,
    // protobuf bytes in `record`), one row per event id and record key however often it is
    // delivered; kept for a week.
    r#"
    CREATE TABLE events (
        event_id      TEXT    NOT NULL,
        record_key    TEXT    NOT NULL,
        handled_at_ms INTEGER NOT NULL,
        source        TEXT    NOT NULL DEFAULT '',
        type          TEXT    NOT NULL DEFAULT '',
        record        BLOB    NOT NULL,
        UNIQUE (event_id, record_key)
    );
    CREATE INDEX events_by_time ON events (handled_at_ms);
    CREATE INDEX events_by_source ON events (source, handled_at_ms);
    "#,
    // 10: test cases that arrived after their execution ended: kept (no acknowledged result
    // is lost) but left out of the counts and test lists, which were final by then.
    r#"
    ALTER TABLE test_cases ADD COLUMN late INTEGER NOT NULL DEFAULT 0;
    "#,
    // 11: retention finds ended executions by their end (or, ended without one, creation).
    r#"
    CREATE INDEX executions_by_end ON executions (finished_at_ms) WHERE planned = 1;
    CREATE INDEX executions_unended_by_creation ON executions (created_at_ms)
        WHERE planned = 1 AND finished_at_ms = 0;
    "#,
    // 12: running tallies per shard attempt, added to as batches and test cases are
    // inserted, so that an execution's counts and status are read from one row per shard
    // attempt instead of being recounted from every test case after each batch. Columns
    // without a prefix count the attempt's own tests (`queue_batch IS NULL`), `queued_` ones
    // the work-queue batches it reported first; `flaky` sums the column of that name. Late
    // rows count nowhere, as before. Backfilled from the rows already stored.
    r#"
    CREATE TABLE attempt_tallies (
        execution_id   TEXT    NOT NULL,
        shard_index    INTEGER NOT NULL,
        attempt        INTEGER NOT NULL,
        batches        INTEGER NOT NULL DEFAULT 0,
        passed         INTEGER NOT NULL DEFAULT 0,
        failed         INTEGER NOT NULL DEFAULT 0,
        errored        INTEGER NOT NULL DEFAULT 0,
        skipped        INTEGER NOT NULL DEFAULT 0,
        flaky          INTEGER NOT NULL DEFAULT 0,
        queued_passed  INTEGER NOT NULL DEFAULT 0,
        queued_failed  INTEGER NOT NULL DEFAULT 0,
        queued_errored INTEGER NOT NULL DEFAULT 0,
        queued_skipped INTEGER NOT NULL DEFAULT 0,
        queued_flaky   INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (execution_id, shard_index, attempt)
    ) WITHOUT ROWID;
    INSERT INTO attempt_tallies (execution_id, shard_index, attempt, batches)
        SELECT execution_id, shard_index, attempt, COUNT(*) FROM batches
        GROUP BY execution_id, shard_index, attempt;
    INSERT INTO attempt_tallies (execution_id, shard_index, attempt,
            passed, failed, errored, skipped, flaky,
            queued_passed, queued_failed, queued_errored, queued_skipped, queued_flaky)
        SELECT execution_id, shard_index, attempt,
            SUM(queue_batch IS NULL AND status = 1), SUM(queue_batch IS NULL AND status = 2),
            SUM(queue_batch IS NULL AND status = 3), SUM(queue_batch IS NULL AND status = 4),
            SUM(CASE WHEN queue_batch IS NULL THEN flaky ELSE 0 END),
            SUM(queue_batch IS NOT NULL AND status = 1),
            SUM(queue_batch IS NOT NULL AND status = 2),
            SUM(queue_batch IS NOT NULL AND status = 3),
            SUM(queue_batch IS NOT NULL AND status = 4),
            SUM(CASE WHEN queue_batch IS NOT NULL THEN flaky ELSE 0 END)
        FROM test_cases WHERE late = 0
        GROUP BY execution_id, shard_index, attempt
        ON CONFLICT (execution_id, shard_index, attempt) DO UPDATE SET
            passed = excluded.passed, failed = excluded.failed, errored = excluded.errored,
            skipped = excluded.skipped, flaky = excluded.flaky,
            queued_passed = excluded.queued_passed, queued_failed = excluded.queued_failed,
            queued_errored = excluded.queued_errored,
            queued_skipped = excluded.queued_skipped, queued_flaky = excluded.queued_flaky;
    "#,
    // 13: per work queue of an execution (`queue_group`: its matrix combination, from the
    // batch numbers), how many batches it was sealed with (`total`, from the results, 0 while
    // unknown) and how many distinct batches were reported (`reported`: its `queue_claims`
    // rows, added to as they are inserted). A drained queue with fewer reported than total
    // has results in flight: the execution waits for them. Backfilled from the claims.
    r#"
    CREATE TABLE queue_totals (
        execution_id TEXT    NOT NULL,
        queue_group  INTEGER NOT NULL,
        total        INTEGER NOT NULL DEFAULT 0,
        reported     INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (execution_id, queue_group)
    ) WITHOUT ROWID;
    INSERT INTO queue_totals (execution_id, queue_group, reported)
        SELECT execution_id, (queue_batch - 1) >> 20, COUNT(*) FROM queue_claims
        WHERE queue_batch > 0
        GROUP BY execution_id, (queue_batch - 1) >> 20;
    "#,
    // 14: test cases reach the duration history when their execution has ended, folded one
    // shard attempt at a time in test id order (see `history::fold_next`), instead of row by
    // row as batches arrive. `history_folded` marks the attempts done; those stored before
    // this version were recorded on arrival, so they count as folded. `history_versions`
    // counts the folds per workflow, so that a history snapshot is written once per change.
    r#"
    ALTER TABLE attempt_tallies ADD COLUMN history_folded INTEGER NOT NULL DEFAULT 0;
    UPDATE attempt_tallies SET history_folded = 1;
    CREATE INDEX attempt_tallies_unfolded ON attempt_tallies (execution_id, shard_index, attempt)
        WHERE history_folded = 0;
    CREATE TABLE history_versions (
        workflow TEXT    NOT NULL PRIMARY KEY,
        version  INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    "#,
];

pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let supported = MIGRATIONS.len() as i64;
    let tx = conn.transaction()?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > supported {
        return Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported,
        });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        tracing::info!(
            path = %path.display(),
            version = version + 1,
            "migrating result store"
        );
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", supported)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database at `version`, as a build of that time left it.
    fn at_version(version: usize) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..version] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", version as i64)
            .unwrap();
        conn
    }

    #[test]
    fn tallies_are_backfilled_from_the_rows_stored_before_them() {
        let mut conn = at_version(11);
        // E: shard 0 ran twice (attempt 1 failed a test, attempt 2 passed it, flaky) with a
        // late row after the end; shard 1 reported queue batches, one of them twice
        // (one row per queue batch is stored), and a batch with no test cases. F: another
        // execution, kept apart.
        conn.execute_batch(
            "INSERT INTO executions (id, planned, workflow, shard_count) VALUES
                 ('E', 1, 'w', 2), ('F', 1, 'w', 1);
             INSERT INTO batches VALUES ('E', 0, 1, 0), ('E', 0, 2, 0), ('E', 0, 2, 1),
                 ('E', 1, 1, 0), ('E', 1, 1, 1), ('E', 1, 1, 2), ('F', 0, 1, 0);
             INSERT INTO test_cases (execution_id, shard_index, attempt, test_id, status,
                     flaky, queue_batch, late) VALUES
                 ('E', 0, 1, 'a', 2, 0, NULL, 0), ('E', 0, 1, 'b', 1, 0, NULL, 0),
                 ('E', 0, 2, 'a', 1, 1, NULL, 0), ('E', 0, 2, 'b', 1, 0, NULL, 0),
                 ('E', 0, 2, 'c', 3, 0, NULL, 0), ('E', 0, 2, 'd', 4, 0, NULL, 0),
                 ('E', 0, 2, 'z', 2, 0, NULL, 1),
                 ('E', 1, 1, 'q1', 1, 1, 1, 0), ('E', 1, 1, 'q2', 2, 0, 1, 0),
                 ('E', 1, 1, 'q3', 4, 0, 2, 0), ('E', 1, 1, 'q4', 0, 0, 0, 0),
                 ('F', 0, 1, 'a', 3, 0, NULL, 0);",
        )
        .unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        for id in ["E", "F", "none"] {
            assert_eq!(
                crate::tally::load(&conn, id).unwrap(),
                crate::tally::recount(&conn, id).unwrap(),
                "{id}"
            );
        }
        let e = crate::tally::load(&conn, "E").unwrap();
        let counts = |p, f, e, s, flaky| crate::tally::Counts {
            passed: p,
            failed: f,
            errored: e,
            skipped: s,
            flaky,
        };
        assert_eq!(e.len(), 3);
        assert_eq!(e[&(0, 1)].batches, 1);
        assert_eq!(e[&(0, 1)].own, counts(1, 1, 0, 0, 0));
        assert_eq!(e[&(0, 2)].batches, 2);
        assert_eq!(
            e[&(0, 2)].own,
            counts(2, 0, 1, 1, 1),
            "the late row counts nowhere"
        );
        assert_eq!(e[&(1, 1)].batches, 3);
        assert_eq!(e[&(1, 1)].own, counts(0, 0, 0, 0, 0));
        assert_eq!(e[&(1, 1)].queued, counts(1, 1, 0, 1, 1));
    }

    #[test]
    fn queue_totals_are_backfilled_from_the_claims_with_no_total_known() {
        let mut conn = at_version(12);
        // E: two batches of matrix combination 0 and one of combination 1; F: one batch.
        let g1 = (1u32 << assay_proto::QUEUE_GROUP_SHIFT) + 1;
        conn.execute_batch(&format!(
            "INSERT INTO queue_claims VALUES ('E', 1, 0, 1), ('E', 2, 1, 1), ('E', {g1}, 0, 2),
                 ('F', 1, 0, 1);"
        ))
        .unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        assert_eq!(
            crate::queues::load(&conn, "E").unwrap(),
            vec![(0, 0, 2), (1, 0, 1)]
        );
        assert_eq!(crate::queues::load(&conn, "F").unwrap(), vec![(0, 0, 1)]);
        for id in ["E", "F"] {
            assert_eq!(crate::queues::unreported(&conn, id).unwrap(), 0, "{id}");
        }
    }

    #[test]
    fn executions_from_before_provenance_have_none_and_no_source() {
        let mut conn = at_version(7);
        conn.execute(
            "INSERT INTO executions (id, planned, workflow) VALUES ('01OLD', 1, 'w')",
            [],
        )
        .unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        let (provenance, source): (Option<Vec<u8>>, String) = conn
            .query_row(
                "SELECT provenance, source FROM executions WHERE id = '01OLD'",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!((provenance, source.as_str()), (None, ""));
        let labels: i64 = conn
            .query_row("SELECT COUNT(*) FROM execution_labels", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(labels, 0);
        // Migrating again changes nothing.
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }
}
