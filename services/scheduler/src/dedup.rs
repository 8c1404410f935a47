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

use std::sync::Arc;

use assay_bus::kv_key;
use bytes::Bytes;

use crate::Result;
use crate::kv::{Kv, Plans};

/// What the bucket says of a cause: new (claimed now), claimed by an earlier delivery that
/// may not have finished publishing, or done (its plan record is out).
#[derive(Debug, PartialEq, Eq)]
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
    kv: Arc<dyn Kv>,
}

fn id_key(id: &str) -> String {
    format!("id.{id}")
}

fn decision_key(event_key: &str) -> String {
    format!("decision.{}", kv_key(event_key))
}

impl Dedup {
    pub(crate) fn new(kv: Arc<dyn Kv>) -> Dedup {
        Dedup { kv }
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .kv
            .entry(key)
            .await?
            .map(|(v, _)| String::from_utf8_lossy(&v).to_string()))
    }

    /// Claims the cause. For a cause claimed before, the plan record tells whether the
    /// earlier delivery finished publishing (`done:<id>` values, written by earlier
    /// versions, say so too).
    pub(crate) async fn claim_cause(
        &self,
        plans: &dyn Plans,
        cause: &str,
        proposed: &str,
    ) -> Result<Seen> {
        let key = kv_key(cause);
        let now = assay_bus::now_ms();
        let value = Bytes::from(format!("pending:{proposed}:{now}"));
        if self.kv.create(&key, value.clone()).await?.is_some() {
            return Ok(Seen::New(proposed.to_string(), now));
        }
        let Some(held) = self.get(&key).await? else {
            // Gone between the two reads (aged out): claim it again rather than plan an
            // execution nobody holds.
            return if self.kv.create(&key, value).await?.is_some() {
                Ok(Seen::New(proposed.to_string(), now))
            } else {
                Err(crate::Error::Kv {
                    op: "create",
                    reason: format!("cause {cause} changed hands twice; retrying"),
                })
            };
        };
        match held.split_once(':') {
            Some(("done", id)) => Ok(Seen::Done(id.to_string())),
            Some((_, rest)) => {
                let (id, at) = parse_pending(rest);
                if plans.plan(&id).await?.is_some() {
                    Ok(Seen::Done(id))
                } else {
                    Ok(Seen::Pending(id, at))
                }
            }
            None => Ok(Seen::Pending(proposed.to_string(), None)),
        }
    }

    /// Claims a requester-chosen execution id for `cause` (compare-and-set create). An id
    /// whose plan record exists under another cause (an execution a trigger started, or one
    /// planned before ids were claimed) belongs to that execution.
    pub(crate) async fn claim_id(
        &self,
        plans: &dyn Plans,
        id: &str,
        workflow: &str,
        cause: &str,
    ) -> Result<IdClaim> {
        let key = id_key(id);
        if self
            .kv
            .create(&key, Bytes::from(format!("{workflow}\n{cause}")))
            .await?
            .is_none()
        {
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
        match plans.plan(id).await? {
            Some(p) if p.cause != cause => {
                // Give the id back to the execution that has it.
                self.kv
                    .put(&key, Bytes::from(format!("{}\n{}", p.workflow, p.cause)))
                    .await?;
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
                &decision_key(event_key),
                Bytes::from(assay_bus::now_ms().to_string()),
            )
            .await
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
