//! Trigger matching: events and cron schedules.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::filter::GlobList;
use crate::model::{EventMatch, Trigger, WebhookMatch};

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
        self.explain(ev).is_ok()
    }

    /// Whether an event fires this trigger, and if not, the first condition that failed, in
    /// words a user can act on: `source "ci" is not "github"`, `label branch: "dev" does not
    /// match "main*"`, `no changed path matches paths ["src/**"]`.
    pub fn explain(&self, ev: &EventView<'_>) -> Result<(), String> {
        let on = &self.spec.on;
        if let Some(w) = &on.webhook {
            return w.explain(ev);
        }
        if let Some(m) = &on.event {
            return m.explain(ev);
        }
        if on.cron.is_some() {
            return Err(format!(
                "cron trigger: fires only on its own schedule (events naming trigger \"{}\")",
                self.name
            ));
        }
        if let Some(k) = &on.kubernetes {
            return k.explain(ev);
        }
        Err("the trigger names nothing to react to".to_string())
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

impl EventMatch {
    /// See [`Trigger::explain`]: source, then type, then labels in key order.
    pub fn explain(&self, ev: &EventView<'_>) -> Result<(), String> {
        fn wanted(w: &Option<String>) -> Option<&str> {
            w.as_deref().filter(|w| !w.is_empty())
        }
        if let Some(want) = wanted(&self.source)
            && want != ev.source
        {
            return Err(format!("source \"{}\" is not \"{want}\"", ev.source));
        }
        if let Some(want) = wanted(&self.r#type)
            && want != ev.r#type
        {
            return Err(format!("type \"{}\" is not \"{want}\"", ev.r#type));
        }
        for (k, want) in &self.labels {
            match ev.labels.get(k) {
                Some(got) if got == want => {}
                Some(got) => return Err(format!("label {k}: \"{got}\" is not \"{want}\"")),
                None => return Err(format!("label {k}: missing (the trigger wants \"{want}\")")),
            }
        }
        Ok(())
    }
}

/// `"main*"` for one pattern, `["main", "release/*"]` for several.
fn patterns(list: &[String]) -> String {
    let quoted: Vec<String> = list.iter().map(|p| format!("\"{p}\"")).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", quoted.join(", ")),
    }
}

impl WebhookMatch {
    /// Whether a webhook event passes this filter (see [`WebhookMatch`]). Events without a
    /// `provider` label did not come from a webhook and never match. Invalid globs (refused
    /// by validation) match nothing.
    pub fn matches(&self, ev: &EventView<'_>) -> bool {
        self.explain(ev).is_ok()
    }

    /// See [`Trigger::explain`]: provider, event type, repository, branch or tag, paths.
    pub fn explain(&self, ev: &EventView<'_>) -> Result<(), String> {
        use webhook_labels::*;
        let label = |k: &str| ev.labels.get(k).map(String::as_str);
        let Some(provider) = label(PROVIDER) else {
            return Err(format!(
                "not a webhook event (no \"{PROVIDER}\" label; source \"{}\")",
                ev.source
            ));
        };
        if let Some(want) = self.provider.as_deref()
            && want != provider
        {
            return Err(format!("provider \"{provider}\" is not \"{want}\""));
        }
        if !self.events.is_empty()
            && !self
                .events
                .iter()
                .any(|e| normalize_webhook_event(e) == ev.r#type)
        {
            return Err(format!(
                "type \"{}\" is not in events [{}]",
                ev.r#type,
                self.events.join(", ")
            ));
        }
        let glob = |key: &str, list: &[String]| {
            GlobList::new(list).map_err(|(i, e)| format!("{key}[{i}]: {e}"))
        };
        let repositories = glob("repositories", &self.repositories)?;
        let repository = label(REPOSITORY).unwrap_or("");
        if !repositories.is_empty() && !repositories.matches(repository) {
            return Err(format!(
                "label {REPOSITORY}: \"{repository}\" does not match {}",
                patterns(&self.repositories)
            ));
        }
        let (branches, tags) = (glob("branches", &self.branches)?, glob("tags", &self.tags)?);
        let ref_problem = match (label(BRANCH), label(TAG)) {
            (_, Some(tag)) if !tags.is_empty() => (!tags.matches(tag)).then(|| {
                format!(
                    "label {TAG}: \"{tag}\" does not match {}",
                    patterns(&self.tags)
                )
            }),
            (_, Some(tag)) if !branches.is_empty() => Some(format!(
                "label {TAG}: \"{tag}\" is a tag and the trigger names only branches {}",
                patterns(&self.branches)
            )),
            (Some(branch), None) if !branches.is_empty() => {
                (!branches.matches(branch)).then(|| {
                    format!(
                        "label {BRANCH}: \"{branch}\" does not match {}",
                        patterns(&self.branches)
                    )
                })
            }
            (Some(branch), None) if !tags.is_empty() => Some(format!(
                "label {BRANCH}: \"{branch}\" is a branch and the trigger names only tags {}",
                patterns(&self.tags)
            )),
            (None, None) if !branches.is_empty() || !tags.is_empty() => Some(format!(
                "no \"{BRANCH}\" or \"{TAG}\" label and the trigger filters on {}",
                if branches.is_empty() {
                    "tags"
                } else {
                    "branches"
                }
            )),
            _ => None,
        };
        if let Some(problem) = ref_problem {
            return Err(problem);
        }
        let paths = glob("paths", &self.paths)?;
        if let Some(changed) = ev.changed_paths
            && !paths.is_empty()
            && !paths.matches_any(changed)
        {
            return Err(if changed.is_empty() {
                format!(
                    "the event changed no path and the trigger filters on paths {}",
                    patterns(&self.paths)
                )
            } else {
                format!("no changed path matches paths {}", patterns(&self.paths))
            });
        }
        Ok(())
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

    fn trigger(yaml_on: &str) -> Trigger {
        let text = format!(
            "apiVersion: assay.dev/v1alpha1\nkind: TestTrigger\nmetadata: {{name: t}}\nspec:\n  on: {yaml_on}\n  run: {{workflow: w}}\n"
        );
        match crate::parse_str(std::path::Path::new("t.yaml"), &text)
            .unwrap()
            .remove(0)
        {
            crate::Definition::Trigger(t) => t,
            other => panic!("not a trigger: {other:?}"),
        }
    }

    fn event<'a>(
        source: &'a str,
        ty: &'a str,
        labels: &'a BTreeMap<String, String>,
        paths: Option<&'a [String]>,
    ) -> EventView<'a> {
        EventView {
            source,
            r#type: ty,
            labels,
            changed_paths: paths,
        }
    }

    #[test]
    fn explain_names_the_failing_event_condition() {
        let t = trigger("{event: {source: github, type: push, labels: {env: prod, team: a}}}");
        let ok = labels(&[("env", "prod"), ("team", "a"), ("x", "y")]);
        assert_eq!(t.explain(&event("github", "push", &ok, None)), Ok(()));
        assert!(t.matches(&event("github", "push", &ok, None)));
        assert_eq!(
            t.explain(&event("ci", "push", &ok, None)).unwrap_err(),
            "source \"ci\" is not \"github\""
        );
        assert_eq!(
            t.explain(&event("github", "tag", &ok, None)).unwrap_err(),
            "type \"tag\" is not \"push\""
        );
        let dev = labels(&[("env", "dev"), ("team", "a")]);
        assert_eq!(
            t.explain(&event("github", "push", &dev, None)).unwrap_err(),
            "label env: \"dev\" is not \"prod\""
        );
        let none = labels(&[("team", "a")]);
        assert_eq!(
            t.explain(&event("github", "push", &none, None))
                .unwrap_err(),
            "label env: missing (the trigger wants \"prod\")"
        );
        assert!(!t.matches(&event("github", "push", &none, None)));
    }

    #[test]
    fn explain_names_the_failing_webhook_condition() {
        let t = trigger(
            "{webhook: {provider: github, events: [push], repositories: ['acme/*'], branches: ['main*'], paths: ['src/**']}}",
        );
        let good = labels(&[
            ("provider", "github"),
            ("repository", "acme/shop"),
            ("branch", "main"),
        ]);
        let src = vec!["src/a.rs".to_string()];
        let docs = vec!["docs/a.md".to_string()];
        let e = |l: &BTreeMap<String, String>, ty: &str, p: Option<&[String]>| {
            t.explain(&event("github", ty, l, p))
        };
        assert_eq!(e(&good, "push", Some(&src)), Ok(()));
        let plain = labels(&[("branch", "main")]);
        assert_eq!(
            t.explain(&event("ci", "push", &plain, None)).unwrap_err(),
            "not a webhook event (no \"provider\" label; source \"ci\")"
        );
        let gitlab = labels(&[("provider", "gitlab"), ("branch", "main")]);
        assert_eq!(
            e(&gitlab, "push", None).unwrap_err(),
            "provider \"gitlab\" is not \"github\""
        );
        assert_eq!(
            e(&good, "pull_request", None).unwrap_err(),
            "type \"pull_request\" is not in events [push]"
        );
        let other = labels(&[
            ("provider", "github"),
            ("repository", "other/shop"),
            ("branch", "main"),
        ]);
        assert_eq!(
            e(&other, "push", None).unwrap_err(),
            "label repository: \"other/shop\" does not match \"acme/*\""
        );
        let dev = labels(&[
            ("provider", "github"),
            ("repository", "acme/shop"),
            ("branch", "dev"),
        ]);
        assert_eq!(
            e(&dev, "push", None).unwrap_err(),
            "label branch: \"dev\" does not match \"main*\""
        );
        let tag = labels(&[
            ("provider", "github"),
            ("repository", "acme/shop"),
            ("tag", "v1"),
        ]);
        assert_eq!(
            e(&tag, "push", None).unwrap_err(),
            "label tag: \"v1\" is a tag and the trigger names only branches \"main*\""
        );
        assert_eq!(
            e(&good, "push", Some(&docs)).unwrap_err(),
            "no changed path matches paths \"src/**\""
        );
        assert_eq!(
            e(&good, "push", Some(&[])).unwrap_err(),
            "the event changed no path and the trigger filters on paths \"src/**\""
        );
        assert_eq!(e(&good, "push", None), Ok(()), "unknown paths pass");

        let tags = trigger("{webhook: {tags: ['v*', 'release-*']}}");
        let main = labels(&[("provider", "github"), ("branch", "main")]);
        assert_eq!(
            tags.explain(&event("github", "push", &main, None))
                .unwrap_err(),
            "label branch: \"main\" is a branch and the trigger names only tags [\"v*\", \"release-*\"]"
        );
        let old = labels(&[("provider", "github"), ("tag", "x1")]);
        assert_eq!(
            tags.explain(&event("github", "tag", &old, None))
                .unwrap_err(),
            "label tag: \"x1\" does not match [\"v*\", \"release-*\"]"
        );
    }

    #[test]
    fn explain_cron_triggers_fire_only_on_their_schedule() {
        let t = trigger("{cron: {schedule: '0 3 * * *'}}");
        let l = labels(&[]);
        let why = t.explain(&event("http", "push", &l, None)).unwrap_err();
        assert!(
            why.starts_with("cron trigger: fires only on its own schedule"),
            "{why}"
        );
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
