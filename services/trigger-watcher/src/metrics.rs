//! Counters of the trigger-watcher, served at `GET /metrics` in the Prometheus text format.
//!
//! - `assay_trigger_watcher_webhook_deliveries_total{provider, outcome}`: every webhook
//!   request by what came of it (`published`, `ignored`, `replayed`, `rejected`, `invalid`,
//!   `failed`, `disabled`);
//! - `assay_trigger_watcher_webhook_rejections_total{provider, reason}`: signatures refused
//!   (`missing`, `malformed`, `mismatch`);
//! - `assay_trigger_watcher_http_body_too_large_total{route}`: requests refused with 413
//!   for a body over `--max-body-bytes` or `--max-webhook-bytes`;
//! - `assay_trigger_watcher_nats_disconnects_total`, `…_nats_reconnects_total`: this
//!   process's NATS outages and recoveries;
//! - `assay_trigger_watcher_http_overloaded_total{reason}`: requests answered 503 because
//!   too many were in flight (`in_flight`) or one was not handled in time (`timeout`);
//! - `assay_trigger_watcher_http_unauthorized_total{reason}`: requests refused for want of the
//!   bearer token (`missing`, `malformed`, `wrong`) or of a client certificate
//!   (`client_certificate`);
//! - with `--watch-cluster`: `assay_trigger_watcher_kube_events_total{outcome}` (events of
//!   `on.kubernetes` triggers `published`, or not published as a `duplicate` of a key fired
//!   before), `assay_trigger_watcher_kube_superseded_total` (executions cancelled by
//!   `supersede: true`) and the gauge `assay_trigger_watcher_kube_failing_triggers`
//!   (triggers that cannot be watched now: unknown kind, forbidden).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

const HELP: &[(&str, &str)] = &[
    (
        "assay_trigger_watcher_http_body_too_large_total",
        "HTTP requests refused (413) for a body over --max-body-bytes or --max-webhook-bytes, by route.",
    ),
    (
        "assay_trigger_watcher_http_overloaded_total",
        "HTTP requests answered 503: too many in flight, or not handled within the request timeout.",
    ),
    (
        "assay_trigger_watcher_http_unauthorized_total",
        "HTTP requests refused for a missing, malformed or wrong bearer token or a missing client certificate.",
    ),
    (
        "assay_trigger_watcher_webhook_deliveries_total",
        "Webhook requests by provider and outcome.",
    ),
    (
        "assay_trigger_watcher_webhook_rejections_total",
        "Webhook requests refused for a missing, malformed or wrong signature.",
    ),
];

/// The counters; cheap to clone, shared by every request.
#[derive(Clone, Default)]
pub struct Metrics {
    // (metric name, rendered labels) -> value; few series, rarely touched.
    counters: Arc<Mutex<BTreeMap<(&'static str, String), u64>>>,
    cluster: Option<crate::ClusterStatus>,
}

impl Metrics {
    /// Also renders the cluster watch's counters.
    pub fn with_cluster(mut self, status: crate::ClusterStatus) -> Self {
        self.cluster = Some(status);
        self
    }

    fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        let rendered = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(",");
        if let Ok(mut c) = self.counters.lock() {
            *c.entry((name, rendered)).or_default() += 1;
        }
    }

    pub fn overloaded(&self, reason: &str) {
        self.inc(
            "assay_trigger_watcher_http_overloaded_total",
            &[("reason", reason)],
        );
    }

    pub fn delivery(&self, provider: &str, outcome: &str) {
        self.inc(
            "assay_trigger_watcher_webhook_deliveries_total",
            &[("provider", provider), ("outcome", outcome)],
        );
    }

    pub fn rejection(&self, provider: &str, reason: &str) {
        self.inc(
            "assay_trigger_watcher_webhook_rejections_total",
            &[("provider", provider), ("reason", reason)],
        );
    }

    pub fn unauthorized(&self, reason: &str) {
        self.inc(
            "assay_trigger_watcher_http_unauthorized_total",
            &[("reason", reason)],
        );
    }

    pub fn body_too_large(&self, route: &str) {
        self.inc(
            "assay_trigger_watcher_http_body_too_large_total",
            &[("route", route)],
        );
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let counters = self.counters.lock().map(|c| c.clone()).unwrap_or_default();
        let mut out = String::new();
        for (name, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for ((n, labels), v) in &counters {
                if n == name {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        }
        // This process's NATS connections (see assay_bus::connection).
        for (name, help, value) in [
            (
                "assay_trigger_watcher_nats_disconnects_total",
                "NATS connection outages seen by this process.",
                assay_bus::connection::disconnects(),
            ),
            (
                "assay_trigger_watcher_nats_reconnects_total",
                "NATS connections re-established after an outage.",
                assay_bus::connection::reconnects(),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {value}");
        }
        if let Some(c) = &self.cluster {
            let name = "assay_trigger_watcher_kube_events_total";
            let _ = writeln!(
                out,
                "# HELP {name} Events of on.kubernetes triggers: published, or not as the duplicate of a key fired before."
            );
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name}{{outcome=\"published\"}} {}", c.fired());
            let _ = writeln!(out, "{name}{{outcome=\"duplicate\"}} {}", c.duplicates());
            for (name, kind, help, value) in [
                (
                    "assay_trigger_watcher_kube_superseded_total",
                    "counter",
                    "Executions cancelled by supersede: true.",
                    c.superseded(),
                ),
                (
                    "assay_trigger_watcher_kube_failing_triggers",
                    "gauge",
                    "on.kubernetes triggers that cannot be watched now (unknown kind, forbidden).",
                    c.errors().len() as u64,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                let _ = writeln!(out, "{name} {value}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.rejection("github", "mismatch");
        m.rejection("github", "mismatch");
        m.unauthorized("wrong");
        let text = m.render();
        assert!(
            text.contains("assay_trigger_watcher_nats_reconnects_total 0\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE assay_trigger_watcher_webhook_rejections_total counter\n"));
        assert!(text.contains(
            "assay_trigger_watcher_webhook_rejections_total{provider=\"github\",reason=\"mismatch\"} 2\n"
        ));
        assert!(
            text.contains("assay_trigger_watcher_http_unauthorized_total{reason=\"wrong\"} 1\n")
        );
        assert!(
            !text.contains("kube"),
            "no cluster counters without the cluster watch"
        );
        let with = Metrics::default().with_cluster(crate::ClusterStatus::default());
        let text = with.render();
        assert!(
            text.contains("assay_trigger_watcher_kube_events_total{outcome=\"published\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE assay_trigger_watcher_kube_failing_triggers gauge\n"),
            "{text}"
        );
    }
}
