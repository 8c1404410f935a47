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
            let (held_workflow, held_cause) = held.split_once('\n').unwrap_or(("", held.as_str()));
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
    use std::sync::Arc;

    use assay_bus::kv_key;
    use assay_proto::Execution;

    use super::{Dedup, IdClaim, Seen, parse_pending};
    use crate::kv::{Memory, Op, PlanBook, now};

    fn plan(id: &str, workflow: &str, cause: &str) -> Execution {
        Execution {
            id: id.to_string(),
            workflow: workflow.to_string(),
            cause: cause.to_string(),
            ..Default::default()
        }
    }

    /// Two schedulers (two `Dedup`s over one bucket) and the plan records.
    fn two() -> (Arc<Memory>, Dedup, Dedup, Arc<PlanBook>) {
        let kv = Arc::new(Memory::default());
        (
            kv.clone(),
            Dedup::new(kv.clone()),
            Dedup::new(kv),
            Arc::new(PlanBook::default()),
        )
    }

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

    #[test]
    fn of_two_schedulers_claiming_one_cause_one_wins_and_the_other_plans_its_execution() {
        let (kv, a, b, plans) = two();
        // B's claim lands between A's proposal and A's create.
        let (b2, p2) = (b.clone(), plans.clone());
        kv.before(Op::Create, kv_key("event/t/w"), move |_| {
            let seen = now(b2.claim_cause(p2.as_ref(), "event/t/w", "B1")).unwrap();
            assert!(
                matches!(seen, Seen::New(ref id, _) if id == "B1"),
                "{seen:?}"
            );
        });
        let seen = now(a.claim_cause(plans.as_ref(), "event/t/w", "A1")).unwrap();
        assert!(kv.all_steps_ran());
        // A plans B's execution (the same id, created when B claimed it), not one of its own.
        let Seen::Pending(id, Some(at)) = seen else {
            panic!("the loser sees the cause taken, got {seen:?}");
        };
        assert_eq!(id, "B1");
        assert_eq!(
            kv.value(&kv_key("event/t/w")),
            Some(format!("pending:B1:{at}"))
        );
        // Once B's plan record is out, the cause is done for everyone.
        plans.publish(plan("B1", "w", "event/t/w"));
        for d in [&a, &b] {
            assert_eq!(
                now(d.claim_cause(plans.as_ref(), "event/t/w", "C1")).unwrap(),
                Seen::Done("B1".to_string())
            );
        }
    }

    #[test]
    fn a_cause_claimed_by_a_scheduler_that_stopped_is_planned_again_as_the_same_execution() {
        let (_, a, b, plans) = two();
        let Seen::New(id, at) = now(a.claim_cause(plans.as_ref(), "req/w", "A1")).unwrap() else {
            panic!("first claim");
        };
        // A stops before its plan record goes out; the redelivery reaches B.
        for _ in 0..2 {
            assert_eq!(
                now(b.claim_cause(plans.as_ref(), "req/w", "B1")).unwrap(),
                Seen::Pending(id.clone(), Some(at))
            );
        }
        plans.publish(plan(&id, "w", "req/w"));
        assert_eq!(
            now(b.claim_cause(plans.as_ref(), "req/w", "B2")).unwrap(),
            Seen::Done(id)
        );
    }

    #[test]
    fn claims_written_by_earlier_versions_are_read() {
        let (kv, a, _, plans) = two();
        kv.set(&kv_key("old"), "pending:X1");
        kv.set(&kv_key("older"), "done:X2");
        assert_eq!(
            now(a.claim_cause(plans.as_ref(), "old", "A1")).unwrap(),
            Seen::Pending("X1".to_string(), None)
        );
        assert_eq!(
            now(a.claim_cause(plans.as_ref(), "older", "A1")).unwrap(),
            Seen::Done("X2".to_string())
        );
    }

    #[test]
    fn a_claim_that_ages_out_while_read_is_claimed_again() {
        let (kv, a, _, plans) = two();
        kv.set(&kv_key("c"), "pending:X1:1");
        kv.before(Op::Entry, kv_key("c"), |kv| kv.remove(&kv_key("c")));
        let seen = now(a.claim_cause(plans.as_ref(), "c", "A1")).unwrap();
        assert!(
            matches!(seen, Seen::New(ref id, _) if id == "A1"),
            "{seen:?}"
        );
        assert!(kv.value(&kv_key("c")).unwrap().starts_with("pending:A1:"));
    }

    #[test]
    fn of_two_requests_naming_one_execution_id_only_the_first_gets_it() {
        let (kv, a, b, plans) = two();
        let (b2, p2) = (b.clone(), plans.clone());
        kv.before(Op::Create, "id.01X", move |_| {
            let claim = now(b2.claim_id(p2.as_ref(), "01X", "w", "req2/w")).unwrap();
            assert_eq!(claim, IdClaim::Ours);
        });
        assert_eq!(
            now(a.claim_id(plans.as_ref(), "01X", "v", "req1/v")).unwrap(),
            IdClaim::Taken {
                workflow: "w".to_string(),
                cause: "req2/w".to_string()
            }
        );
        // The winner's redelivery still owns it.
        assert_eq!(
            now(b.claim_id(plans.as_ref(), "01X", "w", "req2/w")).unwrap(),
            IdClaim::Ours
        );
    }

    #[test]
    fn an_execution_id_planned_under_another_cause_stays_with_it() {
        let (kv, a, _, plans) = two();
        // An execution a trigger started, planned before ids were claimed.
        plans.publish(plan("01Y", "w", "event/t/w"));
        assert_eq!(
            now(a.claim_id(plans.as_ref(), "01Y", "v", "req/v")).unwrap(),
            IdClaim::Taken {
                workflow: "w".to_string(),
                cause: "event/t/w".to_string()
            }
        );
        assert_eq!(kv.value("id.01Y").as_deref(), Some("w\nevent/t/w"));
        assert_eq!(
            now(a.claim_id(plans.as_ref(), "01Y", "w", "event/t/w")).unwrap(),
            IdClaim::Ours
        );
    }

    #[test]
    fn a_decided_event_is_remembered() {
        let (_, a, b, _) = two();
        assert!(!now(a.decided("ev")).unwrap());
        now(b.mark_decided("ev")).unwrap();
        assert!(now(a.decided("ev")).unwrap());
    }
}
