//! `assay get events`: recent trigger events and run requests, newest first, each with the
//! executions it started or why nothing ran.

use std::time::Duration;

use anyhow::Result;
use assay_proto::{EventRecord, ListEventsRequest, TriggerDecision};
use serde::Serialize;

use crate::api;
use crate::args::{Global, Output};
use crate::cmd::get::print_structured;
use crate::format::{self, Table, cell};
use crate::provenance::{self, ProvenanceView};
use crate::style::{Color, Palette};

pub async fn run(
    global: &Global,
    since: Option<Duration>,
    source: Option<String>,
    limit: u32,
    output: Output,
    palette: &Palette,
) -> Result<u8> {
    let now = assay_bus::now_ms();
    let since_ms = since
        .map(|d| now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        .unwrap_or(0)
        .max(0);
    let source = source.filter(|s| !s.is_empty());
    let mut client = api::connect(global).await?;
    let list = client
        .list_events(ListEventsRequest {
            since_ms,
            limit,
            source: source.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| api::call_error(&global.api, "list events", &s))?
        .into_inner();
    match output {
        Output::Json | Output::Yaml => {
            let views: Vec<EventView> = list.events.iter().map(EventView::from_record).collect();
            print_structured(&views, output)?;
        }
        Output::Name => {
            for e in &list.events {
                crate::out!("{}\n", event_id(e));
            }
        }
        Output::Table => {
            if list.events.is_empty() {
                let mut what = String::from("no events");
                if let Some(s) = &source {
                    what.push_str(&format!(" from source {s}"));
                }
                if let Some(d) = since {
                    what.push_str(&format!(" in the last {}", assay_spec::format_duration(d)));
                }
                eprintln!(
                    "{what}; send one with `assay trigger --source S --type T` or `assay run WORKFLOW`"
                );
                return Ok(0);
            }
            crate::out!("{}", render(&list.events, now, palette));
        }
    }
    Ok(0)
}

fn event_id(e: &EventRecord) -> &str {
    e.event
        .as_ref()
        .map(|p| p.event_id.as_str())
        .filter(|s| !s.is_empty())
        .or_else(|| e.header.as_ref().map(|h| h.event_id.as_str()))
        .unwrap_or_default()
}

/// The key labels of an event, sha shortened: `repository=acme/shop branch=main
/// sha=1a2b3c4`; all labels when it has none of the key ones.
pub fn labels_cell(labels: &std::collections::HashMap<String, String>) -> String {
    let ordered = provenance::ordered_labels(labels);
    let has_key = ordered
        .iter()
        .any(|(k, _)| provenance::KEY_LABELS.contains(k));
    ordered
        .into_iter()
        .filter(|(k, _)| !has_key || provenance::KEY_LABELS.contains(k))
        .map(|(k, v)| {
            if k == "sha" {
                format!("{k}={}", v.chars().take(7).collect::<String>())
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One decision: `on-push → execution 01J… (shop)` or `✗ nightly: type is "push", not
/// "schedule"`.
pub fn decision_line(d: &TriggerDecision, palette: &Palette) -> String {
    let who = if d.trigger.is_empty() {
        d.workflow.as_str()
    } else {
        d.trigger.as_str()
    };
    if d.matched && d.reason.is_empty() && !d.execution_id.is_empty() {
        let lead = if d.trigger.is_empty() {
            String::new()
        } else {
            format!("{} ", d.trigger)
        };
        return format!(
            "{lead}{} execution {} ({})",
            palette.paint(Color::Green, "→"),
            d.execution_id,
            d.workflow
        );
    }
    let mut line = format!(
        "{} {who}: {}",
        palette.paint(Color::Red, "✗"),
        if d.reason.is_empty() {
            "did not match"
        } else {
            d.reason.as_str()
        }
    );
    if !d.execution_id.is_empty() {
        line.push_str(&format!(" (execution {})", d.execution_id));
    }
    line
}

/// The table: one line per event, its decisions indented under it.
pub fn render(events: &[EventRecord], now_ms: i64, palette: &Palette) -> String {
    let mut table = Table::new(["TIME", "AGE", "SOURCE", "TYPE", "LABELS"]);
    let mut below: Vec<Vec<String>> = Vec::new();
    for e in events {
        let p = e.event.clone().unwrap_or_default();
        table.row(vec![
            cell(format::timestamp(e.handled_at_ms)),
            cell(if e.handled_at_ms > 0 {
                format::age(now_ms - e.handled_at_ms)
            } else {
                "-".into()
            }),
            (
                if p.source.is_empty() {
                    "-".into()
                } else {
                    p.source.clone()
                },
                Color::Bold,
            ),
            cell(if p.r#type.is_empty() {
                "-".into()
            } else {
                p.r#type.clone()
            }),
            cell(labels_cell(&p.labels)),
        ]);
        let mut lines: Vec<String> = e
            .decisions
            .iter()
            .map(|d| decision_line(d, palette))
            .collect();
        if lines.is_empty() {
            let reason = if e.reason.is_empty() {
                "no trigger considered it"
            } else {
                e.reason.as_str()
            };
            lines.push(format!("{} {reason}", palette.paint(Color::Yellow, "∅")));
        } else if !e.reason.is_empty() {
            lines.push(palette.paint(Color::Dim, &e.reason));
        }
        below.push(lines);
    }
    let rendered = table.render(palette);
    let mut rows = rendered.lines();
    let mut out = String::new();
    if let Some(header) = rows.next() {
        out.push_str(header);
        out.push('\n');
    }
    for (row, lines) in rows.zip(below) {
        out.push_str(row);
        out.push('\n');
        for line in lines {
            out.push_str("    ");
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// What `get events -o json|yaml` prints for one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventView {
    pub id: String,
    #[serde(flatten)]
    pub event: Option<ProvenanceView>,
    pub handled_at: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub decisions: Vec<DecisionView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionView {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trigger: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub workflow: String,
    pub matched: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub execution_id: String,
}

impl EventView {
    pub fn from_record(e: &EventRecord) -> EventView {
        EventView {
            id: event_id(e).to_string(),
            event: ProvenanceView::from_proto(e.event.as_ref()),
            handled_at: format::timestamp(e.handled_at_ms),
            reason: e.reason.clone(),
            decisions: e
                .decisions
                .iter()
                .map(|d| DecisionView {
                    trigger: d.trigger.clone(),
                    workflow: d.workflow.clone(),
                    matched: d.matched,
                    reason: d.reason.clone(),
                    execution_id: d.execution_id.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assay_proto::Provenance;

    fn record() -> EventRecord {
        EventRecord {
            event: Some(Provenance {
                event_id: "01EV".into(),
                source: "github".into(),
                r#type: "push".into(),
                labels: [
                    ("repository", "acme/shop"),
                    ("branch", "main"),
                    ("sha", "1a2b3c4d5e6f"),
                    ("delivery", "d-1"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
                ..Default::default()
            }),
            handled_at_ms: 1_700_000_000_000,
            decisions: vec![
                TriggerDecision {
                    trigger: "on-push".into(),
                    workflow: "shop".into(),
                    matched: true,
                    execution_id: "01EXEC".into(),
                    ..Default::default()
                },
                TriggerDecision {
                    trigger: "nightly".into(),
                    workflow: "shop".into(),
                    matched: false,
                    reason: "source is \"github\", the trigger wants \"cron\"".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn table_shows_decisions_under_their_event() {
        let text = render(&[record()], 1_700_000_060_000, &Palette::plain());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TIME"), "{text}");
        assert!(lines[1].contains("github"), "{text}");
        assert!(lines[1].contains("push"), "{text}");
        assert!(
            lines[1].contains("repository=acme/shop branch=main sha=1a2b3c4"),
            "{text}"
        );
        assert!(!lines[1].contains("delivery"), "only key labels: {text}");
        assert_eq!(lines[2], "    on-push → execution 01EXEC (shop)");
        assert_eq!(
            lines[3],
            "    ✗ nightly: source is \"github\", the trigger wants \"cron\""
        );
    }

    #[test]
    fn event_without_triggers_shows_its_reason() {
        let mut r = record();
        r.decisions.clear();
        r.reason = "no triggers are defined".into();
        let text = render(&[r], 0, &Palette::plain());
        assert!(text.contains("∅ no triggers are defined"), "{text}");
    }

    #[test]
    fn run_request_decisions_name_the_workflow() {
        let d = TriggerDecision {
            workflow: "nosuch".into(),
            matched: true,
            reason: "workflow \"nosuch\" not found".into(),
            execution_id: "01X".into(),
            ..Default::default()
        };
        assert_eq!(
            decision_line(&d, &Palette::plain()),
            "✗ nosuch: workflow \"nosuch\" not found (execution 01X)"
        );
    }

    #[test]
    fn json_view_carries_the_event_and_decisions() {
        let v = EventView::from_record(&record());
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["id"], "01EV");
        assert_eq!(json["source"], "github");
        assert_eq!(json["labels"]["branch"], "main");
        assert_eq!(json["decisions"][0]["execution_id"], "01EXEC");
        assert_eq!(json["decisions"][1]["matched"], false);
        assert_eq!(json["handled_at"], "2023-11-14T22:13:20Z");
    }
}
