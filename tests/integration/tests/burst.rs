//! A burst of 10,000 trigger events, published as fast as JetStream acknowledges them,
//! drains without stalling, and nothing is dropped silently: every acknowledged event
//! yields exactly one execution record, or an errored record that says why (here: events
//! whose trigger runs a workflow without a value for its required parameter). Real nats-server, scheduler and
//! aggregator in-process; no launcher, so the planned executions wait for one, recorded as
//! queued.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use assay_integration::{Sandbox, Service};
use assay_proto::{ExecutionStatus, TriggerEvent};
use futures::StreamExt;

const EVENTS: usize = 10_000;
/// Every this many events is a `bad` one, whose trigger cannot start its workflow.
const BAD_EVERY: usize = 50;
/// Drained events must not stop increasing for this long (a stall), however slow the machine.
const STALL: Duration = Duration::from_secs(90);

const DEFS: &str = r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: burst}
spec:
  steps: [{name: a, run: "true"}]
---
apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: strict}
spec:
  config:
    build: {type: integer}
  steps: [{name: a, run: "echo {{ config.build }}"}]
---
apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: on-go}
spec:
  on: {event: {source: load, type: go}}
  run: {workflow: burst}
---
apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: on-bad}
spec:
  on: {event: {source: load, type: bad}}
  run: {workflow: strict}
"#;

/// (workflow, status) → count of planned execution records, and the number of distinct
/// causes among them.
fn counts(db: &std::path::Path) -> (BTreeMap<(String, i32), usize>, usize) {
    let conn =
        match rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("store not readable yet: {e}");
                return (BTreeMap::new(), 0);
            }
        };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let mut out = BTreeMap::new();
    let mut stmt = match conn.prepare(
        "SELECT workflow, status, count(*) FROM executions WHERE planned = 1 GROUP BY 1, 2",
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("store not queryable yet: {e}");
            return (out, 0);
        }
    };
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i32>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map(|rows| rows.flatten().collect::<Vec<_>>())
        .unwrap_or_default();
    for (w, s, n) in rows {
        out.insert((w, s), n as usize);
    }
    let causes: i64 = conn
        .query_row(
            "SELECT count(DISTINCT cause) FROM executions WHERE planned = 1",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0);
    (out, causes as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_ten_thousand_events_drains_and_every_event_is_accounted_for() {
    let mut sb = Sandbox::empty(&[("defs.yaml", DEFS)]).await;
    sb.start_service(Service::Aggregator);
    sb.start_service(Service::Scheduler);

    // Publish the burst with many publishes in flight; each counts once JetStream acked it.
    let started = Instant::now();
    let bus = sb.bus.clone();
    let acked: usize = futures::stream::iter(0..EVENTS)
        .map(|i| {
            let bus = bus.clone();
            async move {
                let bad = i % BAD_EVERY == 0;
                let ev = TriggerEvent {
                    header: Some(assay_bus::header("burst-test", format!("burst/{i}"), None)),
                    source: "load".into(),
                    r#type: if bad { "bad" } else { "go" }.into(),
                    ..Default::default()
                };
                bus.publish(assay_bus::subjects::event("load"), &ev)
                    .await
                    .map(|duplicate| usize::from(!duplicate))
                    .unwrap_or_else(|e| panic!("event {i} not acknowledged: {e}"))
            }
        })
        .buffer_unordered(256)
        .fold(0, |n, ok| async move { n + ok })
        .await;
    assert_eq!(acked, EVENTS, "every event acknowledged once");
    let published = started.elapsed();

    let bad = EVENTS.div_ceil(BAD_EVERY);
    let good = EVENTS - bad;
    let db = sb.database();
    let (mut last, mut last_change) = (0usize, Instant::now());
    loop {
        let (by_status, _) = counts(&db);
        let total: usize = by_status.values().sum();
        if total >= EVENTS {
            break;
        }
        if total > last {
            (last, last_change) = (total, Instant::now());
        }
        assert!(
            last_change.elapsed() < STALL,
            "stalled: {total} of {EVENTS} events drained, no progress for {STALL:?}: {by_status:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained = started.elapsed();
    eprintln!(
        "{EVENTS} events published in {published:?}, all recorded after {drained:?} ({:.0} events/s end to end)",
        EVENTS as f64 / drained.as_secs_f64()
    );
    // Let anything extra (a double execution) land before counting exactly: every event
    // handled by the scheduler, every plan by the aggregator.
    sb.wait_until_consumed(&[assay_bus::streams::EVENTS, assay_bus::streams::STATUS])
        .await;
    let (by_status, causes) = counts(&db);
    let get = |w: &str, s: ExecutionStatus| {
        by_status
            .get(&(w.to_string(), s as i32))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(
        get("burst", ExecutionStatus::Queued),
        good,
        "one planned execution per good event, waiting for a launcher: {by_status:?}"
    );
    assert_eq!(
        get("strict", ExecutionStatus::Errored),
        bad,
        "one errored record per bad event: {by_status:?}"
    );
    assert_eq!(by_status.values().sum::<usize>(), EVENTS, "{by_status:?}");
    assert_eq!(causes, EVENTS, "each record has its own cause");

    // The rejection says why, and is queryable through the API.
    let list = sb.executions("strict", 1).await;
    assert!(
        list[0]
            .reason
            .contains("parameter \"build\" of workflow \"strict\" has no default"),
        "{:?}",
        list[0]
    );
}
