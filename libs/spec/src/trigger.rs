//! Trigger matching: events and cron schedules.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::filter::GlobList;
use crate::model::{Trigger, WebhookMatch};

/// An event as seen by trigger matching (from the bus or HTTP).
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    pub source: &'a str,
    pub r#type: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// The files the event changed, when the whole list is known (webhook pushes).
    pub changed_paths: Option<&'a [String]>,
}

/// Labels the trigger-watcher sets on webhook events (a public contract, see README).
pub mod webhook_labels {
    /// `github`, `gitlab` or `generic`; present on every webhook event.
    pub const PROVIDER: &str = "provider";
    /// `owner/name` (GitLab: `group/sub/name`).
    pub const REPOSITORY: &str = "repository";
    /// The branch pushed to, or the branch a pull request merges into.
    pub const BRANCH: &str = "branch";
    /// The tag pushed.
    pub const TAG: &str = "tag";
}

/// `merge_request` is GitLab's word for a pull request.
pub(crate) fn normalize_webhook_event(name: &str) -> &str {
    match name {
        "merge_request" => "pull_request",
        other => other,
    }
}

/// Event types a webhook trigger can name.
pub(crate) const WEBHOOK_EVENTS: &[&str] = &["push", "tag", "pull_request", "merge_request"];

/// A parsed cron schedule in a time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    expr: String,
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    /// Parses a 5-field cron expression, or 6 fields with seconds first (`@daily` and the
    /// other nicknames work too).
    pub fn new(expr: &str, tz: Tz) -> Result<Schedule, String> {
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "invalid cron schedule \"{expr}\": expected 5 or 6 fields, got {fields}"
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(expr).map_err(|e| {
            format!(
                "invalid cron schedule \"{expr}\": {}",
                lower_first(&e.to_string())
            )
        })?;
        Ok(Schedule {
            expr: expr.to_string(),
            cron,
            tz,
        })
    }

    pub fn expression(&self) -> &str {
        &self.expr
    }

    pub fn cron(&self) -> &Cron {
        &self.cron
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first fire time strictly after `t`, computed on the wall clock of the schedule's
    /// time zone (so `0 3 * * *` in Europe/Berlin is 03:00 Berlin time in summer and winter).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }
}

fn lower_first(s: &str) -> String {
    let s = s.trim_end_matches('.');
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Parses an IANA time zone name.
pub(crate) fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("unknown time zone \"{name}\""))
}

impl Trigger {
    /// Whether an event fires this trigger: source and type equal when the trigger names them,
    /// and every label of the trigger present with the same value. Cron triggers never match.
    pub fn matches(&self, ev: &EventView<'_>) -> bool {
        if let Some(w) = &self.spec.on.webhook {
            return w.matches(ev);
        }
        let Some(m) = &self.spec.on.event else {
            return false;
        };
        let field_ok = |want: &Option<String>, got: &str| {
            want.as_deref().is_none_or(|w| w.is_empty() || w == got)
        };
        field_ok(&m.source, ev.source)
            && field_ok(&m.r#type, ev.r#type)
            && m.labels.iter().all(|(k, v)| ev.labels.get(k) == Some(v))
    }

    /// The parsed cron schedule, for cron triggers.
    pub fn cron(&self) -> Option<Schedule> {
        let spec = self.spec.on.cron.as_ref()?;
        let tz = match &spec.timezone {
            Some(name) => parse_timezone(name).ok()?,
            None => chrono_tz::UTC,
        };
        Schedule::new(&spec.schedule, tz).ok()
    }
}

impl WebhookMatch {
    /// Whether a webhook event passes this filter (see [`WebhookMatch`]). Events without a
    /// `provider` label did not come from a webhook and never match. Invalid globs (refused
    /// by validation) match nothing.
    pub fn matches(&self, ev: &EventView<'_>) -> bool {
        self.check(ev).unwrap_or(false)
    }

    fn check(&self, ev: &EventView<'_>) -> Option<bool> {
        use webhook_labels::*;
        let label = |k: &str| ev.labels.get(k).map(String::as_str);
        let provider = label(PROVIDER)?;
        if self.provider.as_deref().is_some_and(|p| p != provider) {
            return Some(false);
        }
        if !self.events.is_empty()
            && !self
                .events
                .iter()
                .any(|e| normalize_webhook_event(e) == ev.r#type)
        {
            return Some(false);
        }
        let glob = |patterns: &[String]| GlobList::new(patterns).ok();
        let repositories = glob(&self.repositories)?;
        if !repositories.is_empty() && !repositories.matches(label(REPOSITORY).unwrap_or("")) {
            return Some(false);
        }
        let (branches, tags) = (glob(&self.branches)?, glob(&self.tags)?);
        let ref_ok = match (label(BRANCH), label(TAG)) {
            (_, Some(tag)) if !tags.is_empty() => tags.matches(tag),
            (_, Some(_)) => branches.is_empty(),
            (Some(branch), None) if !branches.is_empty() => branches.matches(branch),
            (Some(_), None) => tags.is_empty(),
            (None, None) => branches.is_empty() && tags.is_empty(),
        };
        if !ref_ok {
            return Some(false);
        }
        let paths = glob(&self.paths)?;
        if let Some(changed) = ev.changed_paths
            && !paths.is_empty()
            && !paths.matches_any(changed)
        {
            return Some(false);
        }
        Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn webhook(yaml: &str) -> WebhookMatch {
        serde_norway::from_str(yaml).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn view<'a>(
        ty: &'a str,
        labels: &'a BTreeMap<String, String>,
        paths: Option<&'a [String]>,
    ) -> EventView<'a> {
        EventView {
            source: "github",
            r#type: ty,
            labels,
            changed_paths: paths,
        }
    }

    #[test]
    fn webhook_branch_and_path_filters() {
        let m = webhook(
            "{events: [push, pull_request], branches: [main, 'release/*'], paths: ['src/**', '!docs/**']}",
        );
        let main = labels(&[("provider", "github"), ("branch", "main")]);
        let src = vec!["docs/a.md".to_string(), "src/lib.rs".to_string()];
        let docs = vec!["docs/a.md".to_string()];
        assert!(m.matches(&view("push", &main, Some(&src))));
        assert!(!m.matches(&view("push", &main, Some(&docs))), "docs only");
        assert!(!m.matches(&view("push", &main, Some(&[]))), "no change");
        assert!(m.matches(&view("push", &main, None)), "unknown paths pass");
        let release = labels(&[("provider", "gitlab"), ("branch", "release/2.0")]);
        assert!(m.matches(&view("pull_request", &release, None)));
        let feature = labels(&[("provider", "github"), ("branch", "feature/x")]);
        assert!(!m.matches(&view("push", &feature, Some(&src))));
        let tag = labels(&[("provider", "github"), ("tag", "v1.0.0")]);
        assert!(
            !m.matches(&view("tag", &tag, None)),
            "events leave out tags"
        );
    }

    #[test]
    fn webhook_tags_and_branches_exclude_each_other() {
        let only_branches = webhook("{branches: [main]}");
        let only_tags = webhook("{tags: ['v*']}");
        let tag = labels(&[("provider", "github"), ("tag", "v1.2.0")]);
        let main = labels(&[("provider", "github"), ("branch", "main")]);
        assert!(!only_branches.matches(&view("tag", &tag, None)));
        assert!(only_branches.matches(&view("push", &main, None)));
        assert!(only_tags.matches(&view("tag", &tag, None)));
        assert!(!only_tags.matches(&view("push", &main, None)));
        let any = webhook("{}");
        assert!(any.matches(&view("tag", &tag, None)));
        assert!(any.matches(&view("push", &main, None)));
    }

    #[test]
    fn webhook_provider_repository_and_origin() {
        let m = webhook("{provider: gitlab, events: [merge_request], repositories: ['acme/*']}");
        let mr = labels(&[
            ("provider", "gitlab"),
            ("repository", "acme/shop"),
            ("branch", "main"),
        ]);
        assert!(m.matches(&view("pull_request", &mr, None)));
        assert!(!m.matches(&view("push", &mr, None)));
        let other = labels(&[("provider", "gitlab"), ("repository", "other/shop")]);
        assert!(!m.matches(&view("pull_request", &other, None)));
        let github = labels(&[("provider", "github"), ("repository", "acme/shop")]);
        assert!(!m.matches(&view("pull_request", &github, None)));
        // An event that did not come from a webhook never matches a webhook trigger.
        let plain = labels(&[("branch", "main")]);
        assert!(!webhook("{}").matches(&view("push", &plain, None)));
    }

    #[test]
    fn berlin_is_dst_aware() {
        let s = Schedule::new("0 3 * * *", chrono_tz::Europe::Berlin).unwrap();
        let winter = Utc.with_ymd_and_hms(2025, 1, 15, 0, 0, 0).unwrap();
        assert_eq!(
            s.next_after(winter),
            Some(Utc.with_ymd_and_hms(2025, 1, 15, 2, 0, 0).unwrap())
        );
        let summer = Utc.with_ymd_and_hms(2025, 7, 15, 0, 0, 0).unwrap();
        assert_eq!(
            s.next_after(summer),
            Some(Utc.with_ymd_and_hms(2025, 7, 15, 1, 0, 0).unwrap())
        );
        // strictly after
        let at = Utc.with_ymd_and_hms(2025, 7, 15, 1, 0, 0).unwrap();
        assert_eq!(
            s.next_after(at),
            Some(Utc.with_ymd_and_hms(2025, 7, 16, 1, 0, 0).unwrap())
        );
    }

    #[test]
    fn seconds_field_optional() {
        let s = Schedule::new("*/10 * * * * *", chrono_tz::UTC).unwrap();
        let t = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 1).unwrap();
        assert_eq!(
            s.next_after(t),
            Some(Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 10).unwrap())
        );
    }

    #[test]
    fn bad_schedules() {
        assert!(Schedule::new("* * *", chrono_tz::UTC).is_err());
        assert!(Schedule::new("0 0 0 * * * 2025", chrono_tz::UTC).is_err());
        assert!(Schedule::new("61 * * * *", chrono_tz::UTC).is_err());
        assert!(parse_timezone("Mars/Olympus").is_err());
    }
}
