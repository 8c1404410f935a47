//! Taking in trigger events and run requests: the header check, requester-chosen ids,
//! which triggers fire, and the event's record, published after what it started.

use std::collections::BTreeMap;

use assay_bus::{Failure, subjects};
use assay_proto::{EventRecord, ExecutionStatus, Header, RunRequest, TriggerEvent};
use assay_spec::{EventView, Workflow};
use tracing::{debug, info, warn};

use crate::decision::{self, Record};
use crate::dedup::IdClaim;
use crate::{Cause, Error, PRODUCER, Result, Run, Scheduler, plan};

/// A refusal: terminated and copied to the dead-letter subject with the reason.
fn refuse(reason: String) -> Failure {
    Failure::Reject(reason)
}

impl Scheduler {
    pub(crate) async fn on_run_request(
        &self,
        req: RunRequest,
        subject: &str,
    ) -> Result<(), Failure> {
        let header = decision::required_header("RunRequest", subject, req.header.as_ref())
            .map_err(refuse)?;
        let key = decision::request_key(&header);
        if self.dedup.decided(&key).await.map_err(Error::failure)? {
            debug!(request = %key, "run request handled before");
            return Ok(());
        }
        // A selection too large for the message travels in the object store.
        let mut req = req;
        if !req.selection_data.is_empty() {
            let name = req.selection_data.clone();
            self.bus
                .load_selection(&mut req)
                .await
                .map_err(|e| Error::from(e).failure())?;
            debug!(request = %key, object = %name, tests = req.test_ids.len(), shards = req.shards.len(), "run request selection read");
        }
        let provenance = decision::of_request(&req, &header);
        let record = Record::new(PRODUCER, &key, provenance.clone(), &header.traceparent);
        let cause = Cause {
            key: format!("{key}/{}", req.workflow),
            trigger: String::new(),
            traceparent: header.traceparent.clone(),
            provenance,
        };
        // A requester-chosen id: a ULID (kept in upper case), and only ever this request's.
        let proposed = if req.execution_id.is_empty() {
            ulid::Ulid::new().to_string()
        } else {
            let id = match decision::execution_id(&req.execution_id) {
                Ok(id) => id,
                Err(reason) => return self.refuse(&key, record, &req.workflow, reason).await,
            };
            let claim = self
                .dedup
                .claim_id(&self.bus, &id, &req.workflow, &cause.key)
                .await
                .map_err(Error::failure)?;
            if let IdClaim::Taken {
                workflow,
                cause: other,
            } = claim
            {
                let reason = format!(
                    "execution_id \"{id}\" is already used by an execution of workflow \"{workflow}\" (another request: {other}); leave execution_id empty or pick a new ULID"
                );
                return self.refuse(&key, record, &req.workflow, reason).await;
            }
            id
        };
        self.handle_request(req, cause, proposed, record, &key)
            .await
            .map_err(Error::failure)
    }

    async fn handle_request(
        &self,
        req: RunRequest,
        cause: Cause,
        proposed: String,
        mut record: Record,
        key: &str,
    ) -> Result<()> {
        let outcome = if req.workflow.is_empty() {
            self.reject_once(
                "",
                &cause,
                proposed,
                ExecutionStatus::Errored,
                "run request names no workflow".to_string(),
            )
            .await?
        } else {
            let overrides: BTreeMap<String, String> = req.config.into_iter().collect();
            let selection = if !req.shards.is_empty() {
                plan::Selection::Frozen(req.shards.into_iter().map(|s| s.ids).collect())
            } else if !req.test_ids.is_empty() {
                plan::Selection::Ids(req.test_ids)
            } else if !req.rerun_of.is_empty() {
                plan::Selection::Ids(Vec::new()) // a rerun of nothing: rejected with the reason
            } else {
                plan::Selection::Listed
            };
            let run = Run {
                selection,
                rerun_of: req.rerun_of,
                priority: req.priority,
            };
            self.start(&req.workflow, &overrides, &cause, proposed, None, &run)
                .await?
        };
        record.outcome("", &req.workflow, &outcome);
        self.publish_record(key, record).await
    }

    /// Refuses a request to the dead-letter subject with `reason`, after recording it.
    async fn refuse(
        &self,
        key: &str,
        mut record: Record,
        workflow: &str,
        reason: String,
    ) -> Result<(), Failure> {
        warn!(request = %key, workflow, %reason, "run request refused");
        record.refused(workflow, reason.clone());
        let record = record.finish(assay_bus::now_ms());
        self.publish_record_only(key, &record)
            .await
            .map_err(Error::failure)?;
        Err(refuse(reason))
    }

    pub(crate) async fn on_event(&self, ev: TriggerEvent, subject: &str) -> Result<(), Failure> {
        let header = decision::required_header("TriggerEvent", subject, ev.header.as_ref())
            .map_err(refuse)?;
        let key = decision::event_key(&header);
        if self.dedup.decided(&key).await.map_err(Error::failure)? {
            debug!(event = %key, "event handled before");
            return Ok(());
        }
        self.handle_event(ev, header, &key)
            .await
            .map_err(Error::failure)
    }

    async fn handle_event(&self, ev: TriggerEvent, header: Header, key: &str) -> Result<()> {
        let provenance = decision::of_event(&ev, &header);
        let mut record = Record::new(PRODUCER, key, provenance.clone(), &header.traceparent);
        let catalog = self.defs.get();
        let labels: BTreeMap<String, String> = ev.labels.clone().into_iter().collect();
        let view = EventView {
            source: &ev.source,
            r#type: &ev.r#type,
            labels: &labels,
            changed_paths: ev
                .changed_paths_known
                .then_some(ev.changed_paths.as_slice()),
        };
        let mut fired = Vec::new();
        for t in catalog.triggers() {
            // A cron event fires only the trigger whose schedule fired.
            let verdict = if ev.trigger.is_empty() {
                t.explain(&view)
            } else if t.name == ev.trigger {
                Ok(())
            } else {
                Err(format!("the event is for trigger \"{}\"", ev.trigger))
            };
            match verdict {
                Ok(()) => fired.push(t),
                Err(reason) => record.not_matched(
                    &t.name,
                    t.spec.run.workflow.as_deref().unwrap_or(""),
                    reason,
                ),
            }
        }
        if fired.is_empty() {
            let known: Vec<&str> = catalog.triggers().map(|t| t.name.as_str()).collect();
            if known.is_empty() {
                record.set_reason("no triggers are defined".to_string());
            } else if !ev.trigger.is_empty() {
                record.set_reason(format!(
                    "trigger \"{}\" is not defined (known: {})",
                    ev.trigger,
                    known.join(", ")
                ));
            }
            info!(source = %ev.source, r#type = %ev.r#type, event = %key, reasons = %record.unmatched_reasons(), reason = %record.record.reason, "event matched no trigger");
        }
        for trigger in fired {
            let mut provenance = provenance.clone();
            provenance.trigger = trigger.name.clone();
            let targets: Vec<&Workflow> =
                match (&trigger.spec.run.workflow, &trigger.spec.run.selector) {
                    (Some(name), _) => match catalog.workflow(name) {
                        Ok(w) => vec![w],
                        Err(e) => {
                            // Recorded as an errored execution so the failure can be queried.
                            let cause = Cause {
                                key: format!("{key}/{}/{name}", trigger.name),
                                trigger: trigger.name.clone(),
                                traceparent: header.traceparent.clone(),
                                provenance,
                            };
                            let outcome = self
                                .reject_once(
                                    name,
                                    &cause,
                                    ulid::Ulid::new().to_string(),
                                    ExecutionStatus::Errored,
                                    e.to_string(),
                                )
                                .await?;
                            record.outcome(&trigger.name, name, &outcome);
                            continue;
                        }
                    },
                    (None, Some(selector)) => catalog.select(selector),
                    (None, None) => Vec::new(),
                };
            if targets.is_empty() {
                let selector = trigger
                    .spec
                    .run
                    .selector
                    .as_ref()
                    .map(|s| {
                        s.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let reason = format!("selector {selector} selects no workflow");
                warn!(trigger = %trigger.name, %reason, "trigger selects no workflow");
                record.matched_nothing(&trigger.name, reason);
            }
            for w in targets {
                let cause = Cause {
                    key: format!("{key}/{}/{}", trigger.name, w.name),
                    trigger: trigger.name.clone(),
                    traceparent: header.traceparent.clone(),
                    provenance: provenance.clone(),
                };
                let policy = trigger.spec.concurrency.as_ref().map(|c| c.policy);
                let config: BTreeMap<String, String> = trigger.spec.run.config.clone();
                let outcome = self
                    .start(
                        &w.name,
                        &config,
                        &cause,
                        ulid::Ulid::new().to_string(),
                        policy,
                        &Run {
                            priority: trigger.spec.concurrency.as_ref().and_then(|c| c.priority),
                            ..Run::default()
                        },
                    )
                    .await?;
                record.outcome(&trigger.name, &w.name, &outcome);
            }
        }
        self.publish_record(key, record).await
    }

    /// Publishes the event's record (after everything it started), then remembers that it
    /// went out, so a later delivery of the event is acknowledged at once.
    async fn publish_record(&self, key: &str, record: Record) -> Result<()> {
        let record = record.finish(assay_bus::now_ms());
        self.publish_record_only(key, &record).await?;
        self.dedup.mark_decided(key).await
    }

    /// Publishes an event's record on `assay.v1.decisions.<source>` with `Nats-Msg-Id`
    /// `<event key>/decision`.
    async fn publish_record_only(&self, key: &str, record: &EventRecord) -> Result<()> {
        let source = record
            .event
            .as_ref()
            .map(|e| e.source.as_str())
            .unwrap_or_default();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(assay_bus::MSG_ID, decision::record_key(key).as_str());
        if let Some(tp) = record.header.as_ref().map(|h| h.traceparent.as_str())
            && !tp.is_empty()
        {
            headers.insert(assay_bus::TRACEPARENT, tp);
        }
        self.bus
            .publish_raw(
                subjects::decision(source),
                headers,
                prost::Message::encode_to_vec(record).into(),
            )
            .await?;
        Ok(())
    }
}
