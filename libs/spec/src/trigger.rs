//! Trigger matching: events and cron schedules.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::model::Trigger;

/// An event as seen by trigger matching (from the bus or HTTP).
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    pub source: &'a str,
    pub r#type: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

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
