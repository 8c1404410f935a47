//! Cron schedules declared by `TestTrigger`s.

use std::collections::BTreeMap;
use std::time::Duration;

use assay_bus::{Bus, subjects};
use assay_proto::TriggerEvent;
use assay_spec::{Catalog, SharedCatalog};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The next fire time of every cron trigger after `now`, soonest first.
pub fn next_fires(catalog: &Catalog, now: DateTime<Utc>) -> Vec<(DateTime<Utc>, String)> {
    let mut fires: Vec<_> = catalog
        .triggers()
        .filter_map(|t| Some((t.cron()?.next_after(now)?, t.name.clone())))
        .collect();
    fires.sort();
    fires
}

/// The event a cron trigger fires at `at`. Its key names the trigger and the instant, so
/// every replica of the watcher (and every retry) publishes the same event once.
pub fn cron_event(trigger: &str, at: DateTime<Utc>) -> TriggerEvent {
    TriggerEvent {
        header: Some(assay_bus::header(
            "trigger-watcher",
            format!("cron/{trigger}/{}", at.to_rfc3339()),
            None,
        )),
        source: "cron".into(),
        r#type: "schedule".into(),
        labels: BTreeMap::from([("trigger".to_string(), trigger.to_string())])
            .into_iter()
            .collect(),
        payload: Vec::new(),
        trigger: trigger.to_string(),
        ..Default::default()
    }
}

/// Sleeps until the next scheduled time (re-reading the catalog at least every 30 s so
/// edits take effect), then publishes the due events.
pub async fn run(bus: Bus, catalog: SharedCatalog, shutdown: CancellationToken) {
    let mut from = Utc::now();
    loop {
        let now = Utc::now();
        let fires = next_fires(&catalog.get(), from);
        let next = fires.first().map(|(at, _)| *at);
        let wait = next
            .map(|at| (at - now).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(30))
            .min(Duration::from_secs(30));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        let now = Utc::now();
        for (at, trigger) in fires.iter().filter(|(at, _)| *at <= now) {
            let event = cron_event(trigger, *at);
            // Retried until published: a missed schedule is a lost event.
            let mut delays = assay_bus::retry::delays();
            loop {
                match bus.publish(subjects::event("cron"), &event).await {
                    Ok(_) => {
                        info!(trigger, at = %at, "cron trigger fired");
                        break;
                    }
                    Err(e) => {
                        let delay = delays.next().unwrap_or(assay_bus::retry::MAX_DELAY);
                        warn!(trigger, error = %e, retry_in = ?delay, "cannot publish cron event, retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                }
            }
        }
        if next.is_some_and(|at| at <= now) {
            from = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_events_are_keyed_by_trigger_and_instant() {
        let at = DateTime::parse_from_rfc3339("2026-01-01T03:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let a = cron_event("nightly", at);
        let b = cron_event("nightly", at);
        let key = |e: &TriggerEvent| e.header.as_ref().unwrap().idempotency_key.clone();
        assert_eq!(key(&a), key(&b));
        assert_eq!(key(&a), "cron/nightly/2026-01-01T03:00:00+00:00");
        assert_eq!(a.trigger, "nightly");
    }
}
