//! What caused an execution (its [`Provenance`]): the "Cause" block of `assay get
//! execution`, the SOURCE column of `assay get executions`, the `provenance` of `-o
//! json|yaml`, and the key labels of `assay get events`.

use std::collections::{BTreeMap, HashMap};

use assay_proto::Provenance;
use serde::Serialize;

use crate::format;
use crate::style::{Color, Palette};

/// Labels shown first, in this order (the ones webhooks set that say what changed); the
/// others follow sorted by name.
pub const KEY_LABELS: &[&str] = &[
    "repository",
    "branch",
    "tag",
    "sha",
    "sender",
    "pull_request",
];

/// How many characters of a sha the short forms show.
const SHORT_SHA: usize = 7;

/// A provenance's labels: [`KEY_LABELS`] first, then the rest by name.
pub fn ordered_labels(labels: &HashMap<String, String>) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = KEY_LABELS
        .iter()
        .filter_map(|k| labels.get_key_value(*k))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut rest: Vec<(&str, &str)> = labels
        .iter()
        .filter(|(k, _)| !KEY_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    rest.sort_unstable();
    out.extend(rest);
    out
}

/// `main@1a2b3c4` (branch or tag, at the short sha), `main`, `@1a2b3c4`, or `None` when the
/// labels name neither.
pub fn short_ref(labels: &HashMap<String, String>) -> Option<String> {
    let name = labels
        .get("branch")
        .or_else(|| labels.get("tag"))
        .filter(|s| !s.is_empty());
    let sha = labels
        .get("sha")
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(SHORT_SHA).collect::<String>());
    match (name, sha) {
        (None, None) => None,
        (Some(n), None) => Some(n.clone()),
        (None, Some(s)) => Some(format!("@{s}")),
        (Some(n), Some(s)) => Some(format!("{n}@{s}")),
    }
}

/// The SOURCE cell of `get executions`: `github main@1a2b3c4`, `run`, or `-` when the
/// cause is not known (yet).
pub fn source_cell(p: Option<&Provenance>) -> String {
    let Some(p) = p.filter(|p| !p.source.is_empty()) else {
        return "-".to_string();
    };
    match short_ref(&p.labels) {
        Some(r) => format!("{} {r}", p.source),
        None => p.source.clone(),
    }
}

/// `source/type` (`github/push`), or whichever is known.
pub fn source_and_type(source: &str, r#type: &str) -> String {
    match (source.is_empty(), r#type.is_empty()) {
        (false, false) => format!("{source}/{type}"),
        (false, true) => source.to_string(),
        (true, false) => r#type.to_string(),
        (true, true) => "-".to_string(),
    }
}

/// The "Cause" block of `get execution`: trigger, source/type, who asked, event id,
/// idempotency key and labels (key labels first). Empty when nothing is known.
pub fn cause_block(p: Option<&Provenance>, palette: &Palette) -> String {
    let Some(p) = p else {
        return String::new();
    };
    if *p == Provenance::default() {
        return String::new();
    }
    let mut rows: Vec<(&str, String)> = Vec::new();
    if !p.trigger.is_empty() {
        rows.push(("Trigger", p.trigger.clone()));
    }
    rows.push(("Source", source_and_type(&p.source, &p.r#type)));
    if !p.requested_by.is_empty() {
        rows.push(("Requested by", p.requested_by.clone()));
    }
    if p.occurred_at_ms > 0 {
        rows.push(("Occurred", format::timestamp(p.occurred_at_ms)));
    }
    if !p.event_id.is_empty() {
        rows.push(("Event id", p.event_id.clone()));
    }
    if !p.idempotency_key.is_empty() {
        rows.push(("Key", p.idempotency_key.clone()));
    }
    let mut out = format!("{}\n", palette.paint(Color::Bold, "Cause"));
    for (k, v) in rows {
        out.push_str(&format!(
            "  {}  {v}\n",
            palette.paint(Color::Bold, &format!("{k:<12}"))
        ));
    }
    let labels = ordered_labels(&p.labels);
    if !labels.is_empty() {
        let width = labels.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        out.push_str(&format!("  {}\n", palette.paint(Color::Bold, "Labels")));
        for (k, v) in labels {
            out.push_str(&format!("    {k:<width$}  {v}\n"));
        }
    }
    out
}

/// The `provenance` of `-o json|yaml` (labels sorted by name, empty fields left out).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProvenanceView {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trigger: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub r#type: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub requested_by: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub event_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub idempotency_key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub occurred_at: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl ProvenanceView {
    /// `None` for an absent or empty provenance (an execution whose cause is not known).
    pub fn from_proto(p: Option<&Provenance>) -> Option<ProvenanceView> {
        let p = p.filter(|p| **p != Provenance::default())?;
        Some(ProvenanceView {
            trigger: p.trigger.clone(),
            source: p.source.clone(),
            r#type: p.r#type.clone(),
            requested_by: p.requested_by.clone(),
            event_id: p.event_id.clone(),
            idempotency_key: p.idempotency_key.clone(),
            occurred_at: format::timestamp(p.occurred_at_ms),
            labels: p
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push() -> Provenance {
        Provenance {
            trigger: "on-push".into(),
            event_id: "01EVENT".into(),
            source: "github".into(),
            r#type: "push".into(),
            idempotency_key: "github/d-1".into(),
            labels: [
                ("zeta", "last"),
                ("sha", "1a2b3c4d5e6f"),
                ("provider", "github"),
                ("repository", "acme/shop"),
                ("branch", "main"),
                ("sender", "octo"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn key_labels_come_first_in_their_order() {
        let p = push();
        let keys: Vec<&str> = ordered_labels(&p.labels).iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            ["repository", "branch", "sha", "sender", "provider", "zeta"]
        );
    }

    #[test]
    fn short_ref_and_source_cell() {
        let p = push();
        assert_eq!(short_ref(&p.labels).as_deref(), Some("main@1a2b3c4"));
        assert_eq!(source_cell(Some(&p)), "github main@1a2b3c4");
        assert_eq!(source_cell(None), "-");
        let run = Provenance {
            source: "run".into(),
            ..Default::default()
        };
        assert_eq!(source_cell(Some(&run)), "run");
        let mut tag = HashMap::new();
        tag.insert("tag".to_string(), "v1.2".to_string());
        assert_eq!(short_ref(&tag).as_deref(), Some("v1.2"));
        tag.clear();
        tag.insert("sha".to_string(), "abc".to_string());
        assert_eq!(short_ref(&tag).as_deref(), Some("@abc"));
    }

    #[test]
    fn cause_block_lists_everything_known() {
        let text = cause_block(Some(&push()), &Palette::plain());
        for want in [
            "Cause\n",
            "Trigger       on-push",
            "Source        github/push",
            "Event id      01EVENT",
            "Key           github/d-1",
            "repository  acme/shop",
            "branch      main",
            "sha         1a2b3c4d5e6f",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        assert!(text.find("repository").unwrap() < text.find("zeta").unwrap());
        assert_eq!(cause_block(None, &Palette::plain()), "");
        assert_eq!(
            cause_block(Some(&Provenance::default()), &Palette::plain()),
            ""
        );
    }

    #[test]
    fn view_leaves_out_empty_fields() {
        assert_eq!(ProvenanceView::from_proto(None), None);
        let v = ProvenanceView::from_proto(Some(&push())).unwrap();
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["type"], "push");
        assert_eq!(json["labels"]["branch"], "main");
        assert!(json.get("requested_by").is_none());
    }
}
