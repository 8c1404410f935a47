//! What the scheduler tells about every trigger event and run request it handles: the
//! event's provenance (carried by every execution it starts), the header fields it
//! requires, and the [`EventRecord`] saying which triggers were considered, what they
//! started, or why nothing ran. Pure: no I/O, unit-tested here.

use assay_proto::{EventRecord, Header, Provenance, RunRequest, TriggerDecision, TriggerEvent};
use assay_spec::EventContext;

/// `source` of a run request's provenance.
pub const RUN_SOURCE: &str = "run";
/// `type` of a run request's provenance.
pub const RUN_TYPE: &str = "request";

/// Most decisions about triggers that did not match kept in one record (a record stays
/// far below the stream's message limit however many triggers are defined).
pub const MAX_UNMATCHED: usize = 200;

/// The message's header, when it has what the scheduler needs to deduplicate it: a header
/// with an `event_id` or an `idempotency_key`. Otherwise the reason it is refused.
pub fn required_header(
    kind: &str,
    subject: &str,
    header: Option<&Header>,
) -> Result<Header, String> {
    match header {
        None => Err(format!(
            "{kind} on {subject} has no header; set header.idempotency_key (what deduplicates it) and header.event_id (a ULID)"
        )),
        Some(h) if h.event_id.trim().is_empty() && h.idempotency_key.trim().is_empty() => {
            Err(format!(
                "{kind} on {subject} has neither header.event_id nor header.idempotency_key; set at least one (the idempotency key is what deduplicates it)"
            ))
        }
        Some(h) => Ok(h.clone()),
    }
}

/// The key an event is deduplicated on: its idempotency key, else its event id.
pub fn event_key(header: &Header) -> String {
    if header.idempotency_key.is_empty() {
        header.event_id.clone()
    } else {
        header.idempotency_key.clone()
    }
}

/// The key a run request is deduplicated on: its idempotency key, else `run/<event id>`.
pub fn request_key(header: &Header) -> String {
    if header.idempotency_key.is_empty() {
        format!("run/{}", header.event_id)
    } else {
        header.idempotency_key.clone()
    }
}

/// A trigger event's provenance (the trigger is filled per execution).
pub fn of_event(ev: &TriggerEvent, header: &Header) -> Provenance {
    Provenance {
        trigger: String::new(),
        event_id: header.event_id.clone(),
        source: ev.source.clone(),
        r#type: ev.r#type.clone(),
        idempotency_key: header.idempotency_key.clone(),
        labels: ev.labels.clone(),
        requested_by: String::new(),
        occurred_at_ms: header.occurred_at_ms,
    }
}

/// A run request's provenance: source `run`, type `request`.
pub fn of_request(req: &RunRequest, header: &Header) -> Provenance {
    Provenance {
        trigger: String::new(),
        event_id: header.event_id.clone(),
        source: RUN_SOURCE.to_string(),
        r#type: RUN_TYPE.to_string(),
        idempotency_key: header.idempotency_key.clone(),
        labels: req.labels.clone(),
        requested_by: req.requested_by.clone(),
        occurred_at_ms: header.occurred_at_ms,
    }
}

/// What `{{ event.… }}` templates see of a provenance.
pub fn template_context(p: &Provenance) -> EventContext {
    EventContext {
        source: p.source.clone(),
        r#type: p.r#type.clone(),
        trigger: p.trigger.clone(),
        labels: p.labels.clone().into_iter().collect(),
    }
}

/// A requester-chosen execution id as the scheduler keeps it: a ULID in upper case.
pub fn execution_id(raw: &str) -> Result<String, String> {
    ulid::Ulid::from_string(raw.trim())
        .map(|u| u.to_string())
        .map_err(|_| {
            format!(
                "execution_id \"{raw}\" is not a ULID (26 characters of Crockford base32); leave it empty and the scheduler picks one"
            )
        })
}

/// What handling one cause came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Planned (running or queued), or planned by an earlier delivery.
    Started(String),
    /// Recorded as an execution that will not run, with the reason.
    Rejected { id: String, reason: String },
}

impl Outcome {
    pub fn id(&self) -> &str {
        match self {
            Outcome::Started(id) | Outcome::Rejected { id, .. } => id,
        }
    }
}

/// An [`EventRecord`] being filled while the event is handled.
#[derive(Debug, Clone)]
pub struct Record {
    pub record: EventRecord,
    unmatched: usize,
}

impl Record {
    /// A record for the event whose dedup key is `key` (its own key is `<key>/decision`).
    pub fn new(producer: &str, key: &str, event: Provenance, traceparent: &str) -> Record {
        let parent = (!traceparent.is_empty()).then_some(traceparent);
        Record {
            record: EventRecord {
                header: Some(assay_bus::header(producer, record_key(key), parent)),
                event: Some(event),
                decisions: Vec::new(),
                handled_at_ms: 0,
                reason: String::new(),
            },
            unmatched: 0,
        }
    }

    /// A trigger that did not match, and the first condition that failed.
    pub fn not_matched(&mut self, trigger: &str, workflow: &str, reason: String) {
        self.unmatched += 1;
        if self.unmatched > MAX_UNMATCHED {
            return;
        }
        self.record.decisions.push(TriggerDecision {
            trigger: trigger.to_string(),
            workflow: workflow.to_string(),
            matched: false,
            reason,
            execution_id: String::new(),
        });
    }

    /// A matched trigger (empty for a run request) and what it came to for `workflow`.
    pub fn outcome(&mut self, trigger: &str, workflow: &str, outcome: &Outcome) {
        let reason = match outcome {
            Outcome::Started(_) => String::new(),
            Outcome::Rejected { reason, .. } => reason.clone(),
        };
        self.record.decisions.push(TriggerDecision {
            trigger: trigger.to_string(),
            workflow: workflow.to_string(),
            matched: true,
            reason,
            execution_id: outcome.id().to_string(),
        });
    }

    /// A matched trigger that started nothing (a selector that selects no workflow).
    pub fn matched_nothing(&mut self, trigger: &str, reason: String) {
        self.record.decisions.push(TriggerDecision {
            trigger: trigger.to_string(),
            workflow: String::new(),
            matched: true,
            reason,
            execution_id: String::new(),
        });
    }

    /// A request refused as a whole (its decision and the record's reason say why).
    pub fn refused(&mut self, workflow: &str, reason: String) {
        self.record.decisions.push(TriggerDecision {
            trigger: String::new(),
            workflow: workflow.to_string(),
            matched: true,
            reason: reason.clone(),
            execution_id: String::new(),
        });
        self.record.reason = reason;
    }

    /// Why the event as a whole started nothing, when no decision says more.
    pub fn set_reason(&mut self, reason: String) {
        self.record.reason = reason;
    }

    /// Whether any execution was started or recorded.
    pub fn started_any(&self) -> bool {
        self.record
            .decisions
            .iter()
            .any(|d| !d.execution_id.is_empty())
    }

    /// The reasons triggers did not match, `trigger: reason; …`, for the log.
    pub fn unmatched_reasons(&self) -> String {
        let mut out: Vec<String> = self
            .record
            .decisions
            .iter()
            .filter(|d| !d.matched)
            .map(|d| format!("{}: {}", d.trigger, d.reason))
            .collect();
        if self.unmatched > MAX_UNMATCHED {
            out.push(format!(
                "and {} more triggers",
                self.unmatched - MAX_UNMATCHED
            ));
        }
        out.join("; ")
    }

    /// The finished record, stamped with the time it was handled.
    pub fn finish(mut self, now_ms: i64) -> EventRecord {
        if self.unmatched > MAX_UNMATCHED && self.record.reason.is_empty() && !self.started_any() {
            self.record.reason = format!(
                "no trigger matched ({} considered; the first {MAX_UNMATCHED} are listed)",
                self.unmatched
            );
        }
        self.record.handled_at_ms = now_ms;
        self.record
    }
}

/// `Nats-Msg-Id` of an event's record: `<event key>/decision`.
pub fn record_key(event_key: &str) -> String {
    format!("{event_key}/decision")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(event_id: &str, key: &str) -> Header {
        Header {
            event_id: event_id.into(),
            idempotency_key: key.into(),
            occurred_at_ms: 42,
            ..Default::default()
        }
    }

    #[test]
    fn a_message_needs_a_header_with_an_id_or_a_key() {
        let missing = required_header("RunRequest", "assay.v1.runs.requested", None).unwrap_err();
        assert_eq!(
            missing,
            "RunRequest on assay.v1.runs.requested has no header; set header.idempotency_key (what deduplicates it) and header.event_id (a ULID)"
        );
        let empty = header("", " ");
        let why = required_header("TriggerEvent", "assay.v1.events.ci", Some(&empty)).unwrap_err();
        assert!(
            why.starts_with(
                "TriggerEvent on assay.v1.events.ci has neither header.event_id nor header.idempotency_key"
            ),
            "{why}"
        );
        assert!(required_header("T", "s", Some(&header("E", ""))).is_ok());
        assert!(required_header("T", "s", Some(&header("", "k"))).is_ok());
        assert_eq!(event_key(&header("E", "")), "E");
        assert_eq!(event_key(&header("E", "k")), "k");
        assert_eq!(request_key(&header("E", "")), "run/E");
        assert_eq!(request_key(&header("E", "k")), "k");
    }

    #[test]
    fn execution_ids_are_ulids_in_upper_case() {
        let id = ulid::Ulid::new().to_string();
        assert_eq!(execution_id(&id.to_lowercase()).unwrap(), id);
        assert_eq!(
            execution_id("abc").unwrap_err(),
            "execution_id \"abc\" is not a ULID (26 characters of Crockford base32); leave it empty and the scheduler picks one"
        );
    }

    #[test]
    fn provenance_of_events_and_requests() {
        let ev = TriggerEvent {
            source: "github".into(),
            r#type: "push".into(),
            labels: [("branch".to_string(), "main".to_string())].into(),
            ..Default::default()
        };
        let p = of_event(&ev, &header("E1", "gh/1"));
        assert_eq!(
            (p.source.as_str(), p.r#type.as_str(), p.event_id.as_str()),
            ("github", "push", "E1")
        );
        assert_eq!(p.idempotency_key, "gh/1");
        assert_eq!(p.occurred_at_ms, 42);
        assert_eq!(p.labels["branch"], "main");
        let req = RunRequest {
            requested_by: "ci".into(),
            labels: [("sha".to_string(), "abc".to_string())].into(),
            ..Default::default()
        };
        let p = of_request(&req, &header("E2", ""));
        assert_eq!((p.source.as_str(), p.r#type.as_str()), ("run", "request"));
        assert_eq!(p.requested_by, "ci");
        assert_eq!(p.idempotency_key, "");
        let ctx = template_context(&p);
        assert_eq!(ctx.labels["sha"], "abc");
    }

    #[test]
    fn records_list_decisions_and_cap_the_unmatched() {
        let mut r = Record::new("scheduler", "k", Provenance::default(), "");
        assert_eq!(
            r.record.header.as_ref().unwrap().idempotency_key,
            "k/decision"
        );
        for i in 0..MAX_UNMATCHED + 3 {
            r.not_matched(&format!("t{i}"), "w", "source \"a\" is not \"b\"".into());
        }
        assert!(!r.started_any());
        assert!(r.unmatched_reasons().ends_with("and 3 more triggers"));
        let rec = r.clone().finish(7);
        assert_eq!(rec.decisions.len(), MAX_UNMATCHED);
        assert_eq!(rec.handled_at_ms, 7);
        assert!(rec.reason.starts_with("no trigger matched (203 considered"));
        r.outcome("t", "w", &Outcome::Started("E".into()));
        r.outcome(
            "t",
            "v",
            &Outcome::Rejected {
                id: "F".into(),
                reason: "bad".into(),
            },
        );
        assert!(r.started_any());
        let rec = r.finish(8);
        assert_eq!(rec.reason, "", "decisions say why");
        let last = rec.decisions.last().unwrap();
        assert_eq!(
            (
                last.matched,
                last.reason.as_str(),
                last.execution_id.as_str()
            ),
            (true, "bad", "F")
        );
    }
}
