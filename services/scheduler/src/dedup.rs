//! What the `assay_dedup` bucket remembers, so that a message delivered or published twice
//! has one effect:
//!
//! - `<hex of the cause key>` → `pending:<execution>:<claimed at, Unix ms>`: the cause (event
//!   or request, plus trigger and workflow) was claimed for that execution at that time (the
//!   execution's creation time, however often it is planned again). Whether it is done is
//!   read from the execution's plan record, which the scheduler publishes last.
//! - `id.<ULID>` → `<workflow>\n<cause key>`: a requester-chosen execution id and the
//!   request that claimed it, written before the cause claim, so that another request naming
//!   the same id is refused instead of planning a second execution under it.
//! - `decision.<hex of the event key>` → the time the event's `EventRecord` went out: a
//!   later delivery of the whole event is acknowledged at once, and its record is not
//!   published again after the stream's duplicate window has passed.
//!
//! Keys of the first kind are hex ([`kv_key`]), so the `id.` and `decision.` prefixes never
//! collide with them.

use assay_bus::{Bus, kv_key};
use async_nats::jetstream::kv;
use bytes::Bytes;

use crate::{Error, Result};

/// What the bucket says of a cause: new (claimed now), claimed by an earlier delivery that
/// may not have finished publishing, or done (its plan record is out).
pub(crate) enum Seen {
    /// Claimed now, at this time (Unix ms).
    New(String, i64),
    /// Claimed by an earlier delivery, at this time when it said (older values did not).
    Pending(String, Option<i64>),
    Done(String),
}

/// `pending:<execution>:<ms>`, or `pending:<execution>` as earlier versions wrote it.
fn parse_pending(rest: &str) -> (String, Option<i64>) {
    match rest.rsplit_once(':') {
        Some((id, ms)) if !id.is_empty() && ms.parse::<i64>().is_ok() => {
            (id.to_string(), ms.parse().ok())
        }
        _ => (rest.to_string(), None),
    }
}

/// Who holds a requester-chosen execution id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IdClaim {
    /// This request (claimed now, or by an earlier delivery of it).
    Ours,
    /// Another request: the workflow it named and its cause key.
    Taken { workflow: String, cause: String },
}

#[derive(Clone)]
pub(crate) struct Dedup {
    kv: kv::Store,
}

fn id_key(id: &str) -> String {
    format!("id.{id}")
}

fn decision_key(event_key: &str) -> String {
    format!("decision.{}", kv_key(event_key))
}

impl Dedup {
    pub(crate) fn new(kv: kv::Store) -> Dedup {
        Dedup { kv }
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .kv
            .get(key)
            .await
            .map_err(|e| Error::kv("get", e))?
            .map(|v| String::from_utf8_lossy(&v).to_string()))
    }

    /// Claims the cause. For a cause claimed before, the plan record tells whether the
    /// earlier delivery finished publishing (`done:<id>` values, written by earlier
    /// versions, say so too).
    pub(crate) async fn claim_cause(&self, bus: &Bus, cause: &str, proposed: &str) -> Result<Seen> {
        let key = kv_key(cause);
        let now = assay_bus::now_ms();
        match self
            .kv
            .create(&key, Bytes::from(format!("pending:{proposed}:{now}")))
            .await
        {
            Ok(_) => Ok(Seen::New(proposed.to_string(), now)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let value = self.get(&key).await?.unwrap_or_default();
                match value.split_once(':') {
                    Some(("done", id)) => Ok(Seen::Done(id.to_string())),
                    Some((_, rest)) => {
                        let (id, at) = parse_pending(rest);
                        if bus.plan_published(&id).await? {
                            Ok(Seen::Done(id))
                        } else {
                            Ok(Seen::Pending(id, at))
                        }
                    }
                    None => Ok(Seen::Pending(proposed.to_string(), None)),
                }
            }
            Err(e) => Err(Error::kv("create", e)),
        }
    }

    /// Claims a requester-chosen execution id for `cause` (compare-and-set create). An id
    /// whose plan record exists under another cause (an execution a trigger started, or one
    /// planned before ids were claimed) belongs to that execution.
    pub(crate) async fn claim_id(
        &self,
        bus: &Bus,
        id: &str,
        workflow: &str,
        cause: &str,
    ) -> Result<IdClaim> {
        let key = id_key(id);
        match self
            .kv
            .create(&key, Bytes::from(format!("{workflow}\n{cause}")))
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let held = self.get(&key).await?.unwrap_or_default();
                let (held_workflow, held_cause) =
                    held.split_once('\n').unwrap_or(("", held.as_str()));
                if held_cause != cause {
                    return Ok(IdClaim::Taken {
                        workflow: held_workflow.to_string(),
                        cause: held_cause.to_string(),
                    });
                }
            }
            Err(e) => return Err(Error::kv("create", e)),
        }
        let plan: Option<assay_proto::Execution> = bus
            .last_message(
                assay_bus::streams::STATUS,
                &assay_bus::subjects::execution_plan(id),
            )
            .await?;
        match plan {
            Some(p) if p.cause != cause => {
                // Give the id back to the execution that has it.
                self.kv
                    .put(&key, Bytes::from(format!("{}\n{}", p.workflow, p.cause)))
                    .await
                    .map_err(|e| Error::kv("put", e))?;
                Ok(IdClaim::Taken {
                    workflow: p.workflow,
                    cause: p.cause,
                })
            }
            _ => Ok(IdClaim::Ours),
        }
    }

    /// Whether the event's record went out already (so everything it started did too).
    pub(crate) async fn decided(&self, event_key: &str) -> Result<bool> {
        Ok(self.get(&decision_key(event_key)).await?.is_some())
    }

    /// Remembers that the event's record went out.
    pub(crate) async fn mark_decided(&self, event_key: &str) -> Result<()> {
        self.kv
            .put(
                decision_key(event_key),
                Bytes::from(assay_bus::now_ms().to_string()),
            )
            .await
            .map_err(|e| Error::kv("put", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_pending;

    #[test]
    fn claims_carry_their_time_and_older_ones_parse_without() {
        assert_eq!(
            parse_pending("01ABC:1764237600000"),
            ("01ABC".to_string(), Some(1_764_237_600_000))
        );
        assert_eq!(parse_pending("01ABC"), ("01ABC".to_string(), None));
        assert_eq!(parse_pending(":12"), (":12".to_string(), None));
        assert_eq!(parse_pending("01ABC:x"), ("01ABC:x".to_string(), None));
    }
}
