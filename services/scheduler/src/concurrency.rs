//! Concurrency slots: taking one for an execution (`forbid`, `replace`, `queue`), releasing
//! it when the execution ends, and starting the next waiting execution.
//!
//! Several schedulers may do any of this at once. Each slot is a key of `assay_active`
//! holding its execution, taken with a compare-and-set create and given back with a delete
//! at the revision read; a waiting execution is a key of `assay_waiting`, removed only after
//! its shards are published (or when it ends while waiting).

use std::future::Future;
use std::sync::Arc;

use assay_bus::{kv_key, streams};
use assay_proto::{ExecutionStatus, ExecutionUpdate, PendingPlan};
use assay_spec::Workflow;
use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::kv::Kv;
use crate::{Plan, Result, Scheduler};

/// Where an execution's concurrency limit applies: its workflow, or the `concurrency.group`
/// it shares with other workflows, with `max` slots (default 1).
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    /// Key prefix in the slot and waiting buckets.
    key: String,
    /// For messages: `workflow "x"` or `group "db"`.
    pub(crate) name: String,
    pub(crate) max: u32,
}

impl Scope {
    pub(crate) fn of(workflow: &Workflow) -> Scope {
        let c = &workflow.spec.concurrency;
        let (raw, name) = match &c.group {
            Some(g) => (format!("group/{g}"), format!("group \"{g}\"")),
            None => (
                format!("workflow/{}", workflow.name),
                format!("workflow \"{}\"", workflow.name),
            ),
        };
        Scope {
            key: kv_key(&raw),
            name,
            max: c.max.unwrap_or(1).max(1),
        }
    }

    fn slot(&self, n: u32) -> String {
        format!("{}.{n}", self.key)
    }

    /// Key of a waiting execution: the scope, its priority's rank, then the (time-ordered)
    /// execution id.
    pub(crate) fn waiting(&self, priority: i32, execution: &str) -> String {
        streams::waiting_key(&self.key, priority, execution)
    }

    fn prefix(&self) -> String {
        format!("{}.", self.key)
    }
}

/// A slot held by another execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) slot: String,
    pub(crate) holder: String,
    revision: u64,
}

/// What taking a slot came to.
enum Take {
    /// Taken now, at this revision.
    Taken(String, u64),
    /// Held by this execution already (an earlier delivery or another scheduler took it).
    Ours,
    /// All held: the first slot and its holder.
    Full(Held),
}

/// The slot and waiting buckets.
#[derive(Clone)]
pub(crate) struct Slots {
    active: Arc<dyn Kv>,
    waiting: Arc<dyn Kv>,
}

impl Slots {
    pub(crate) fn new(active: Arc<dyn Kv>, waiting: Arc<dyn Kv>) -> Slots {
        Slots { active, waiting }
    }

    async fn take(&self, scope: &Scope, id: &str) -> Result<Take> {
        let mut first_held = None;
        for n in 0..scope.max {
            let key = scope.slot(n);
            if let Some(revision) = self
                .active
                .create(&key, Bytes::from(id.to_string()))
                .await?
            {
                return Ok(Take::Taken(key, revision));
            }
            // Freed since the create: the next round (or the next slot) may take it.
            let Some((holder, revision)) = self.active.entry(&key).await? else {
                continue;
            };
            let holder = String::from_utf8_lossy(&holder).to_string();
            // A redelivery of our own request holds a slot already.
            if holder == id {
                return Ok(Take::Ours);
            }
            first_held.get_or_insert(Held {
                slot: key,
                holder,
                revision,
            });
        }
        Ok(match first_held {
            Some(held) => Take::Full(held),
            // Every slot was freed while we looked: take one of them.
            None => Box::pin(self.take(scope, id)).await?,
        })
    }

    /// Takes a free slot of the scope for `id`; when all are held, returns the first slot
    /// and its holder.
    pub(crate) async fn acquire(&self, scope: &Scope, id: &str) -> Result<Option<Held>> {
        Ok(match self.take(scope, id).await? {
            Take::Taken(..) | Take::Ours => None,
            Take::Full(held) => Some(held),
        })
    }

    /// Takes a slot for `id` (policy `replace`): a free one, or else the first held one,
    /// after `cancel` was called with its holder. The slot is taken with a compare-and-set
    /// at the revision read, so that of two replacing executions only one gets it (the
    /// other then replaces that one): never more than `max` run.
    pub(crate) async fn replace<F>(
        &self,
        scope: &Scope,
        id: &str,
        mut cancel: impl FnMut(String) -> F,
    ) -> Result<()>
    where
        F: Future<Output = Result<()>>,
    {
        while let Some(held) = self.acquire(scope, id).await? {
            cancel(held.holder.clone()).await?;
            if self
                .active
                .update(&held.slot, Bytes::from(id.to_string()), held.revision)
                .await?
            {
                break;
            }
        }
        Ok(())
    }

    /// Puts an execution in the scope's waiting line.
    pub(crate) async fn enqueue(&self, scope: &Scope, pending: &PendingPlan) -> Result<()> {
        let Some(execution) = &pending.execution else {
            return Ok(());
        };
        self.waiting
            .put(
                &scope.waiting(execution.priority, &execution.id),
                prost::Message::encode_to_vec(pending).into(),
            )
            .await
    }

    /// Releases what an ended execution holds in the scope: its waiting entry first (it
    /// ended while waiting, or a scheduler that started it stopped before removing the
    /// entry), so that no slot is ever handed to it again, then its slots. Returns whether
    /// a slot was freed.
    pub(crate) async fn release(&self, scope: &Scope, id: &str) -> Result<bool> {
        for key in self.waiting.keys(&scope.prefix()).await? {
            if streams::parse_waiting_key(&key).is_some_and(|(_, e)| e == id) {
                self.waiting.delete(&key, None).await?;
                debug!(execution = %id, "waiting entry of an ended execution removed");
            }
        }
        let mut released = false;
        for n in 0..scope.max {
            let key = scope.slot(n);
            if let Some((holder, revision)) = self.active.entry(&key).await?
                && holder.as_ref() == id.as_bytes()
            {
                // Only delete what we read, so a newer holder is never released by mistake.
                released |= self.active.delete(&key, Some(revision)).await?;
            }
        }
        Ok(released)
    }

    /// Starts the first execution waiting for the scope (highest priority, then oldest)
    /// if a slot is free: takes the slot, calls `start` with its plan, then removes its
    /// waiting entry. Returns the execution started.
    ///
    /// Safe to call any time and from several schedulers: `start` may run twice for one
    /// execution (it must be idempotent), a slot is only ever held by one execution, and an
    /// execution that ended while waiting never takes one.
    pub(crate) async fn start_next<F>(
        &self,
        scope: &Scope,
        start: impl FnOnce(Plan) -> F,
    ) -> Result<Option<String>>
    where
        F: Future<Output = Result<()>>,
    {
        loop {
            let keys = self.waiting.keys(&scope.prefix()).await?;
            let Some(next) = keys.first() else {
                return Ok(None);
            };
            let Some((raw, _)) = self.waiting.entry(next).await? else {
                return Ok(None); // started or ended meanwhile, by someone who goes on
            };
            let pending = match <PendingPlan as prost::Message>::decode(raw.as_ref()) {
                Ok(PendingPlan {
                    execution: Some(execution),
                    shards,
                }) => Plan { execution, shards },
                Ok(_) => {
                    self.waiting.delete(next, None).await?;
                    continue;
                }
                Err(e) => {
                    warn!(key = %next, error = %e, "unreadable waiting execution dropped");
                    self.waiting.delete(next, None).await?;
                    continue;
                }
            };
            match self.take(scope, &pending.execution.id).await? {
                Take::Full(_) => return Ok(None), // still held: its end starts us
                Take::Ours => {}
                Take::Taken(slot, revision) => {
                    // Its entry gone since we read it: the execution ended (its release
                    // found no slot to free, as we had not taken it yet), and the slot
                    // would be held forever. Give it back and look again.
                    if self.waiting.entry(next).await?.is_none() {
                        self.active.delete(&slot, Some(revision)).await?;
                        debug!(execution = %pending.execution.id, "slot given back: the waiting execution ended");
                        continue;
                    }
                }
            }
            let id = pending.execution.id.clone();
            start(pending).await?;
            self.waiting.delete(next, None).await?;
            return Ok(Some(id));
        }
    }
}

impl Scheduler {
    /// Releases a slot when its execution ends, and starts the next waiting one.
    pub(crate) async fn on_update(&self, update: ExecutionUpdate, delivered: i64) -> Result<()> {
        let terminal = !matches!(
            ExecutionStatus::try_from(update.status).unwrap_or(ExecutionStatus::Unspecified),
            ExecutionStatus::Unspecified | ExecutionStatus::Queued | ExecutionStatus::Running
        );
        if !terminal {
            return Ok(());
        }
        let catalog = self.defs.get();
        let Ok(w) = catalog.workflow(&update.workflow) else {
            return Ok(()); // a workflow no longer defined holds no slot we could find
        };
        let scope = Scope::of(w);
        let released = self.slots.release(&scope, &update.execution_id).await?;
        if released {
            debug!(workflow = %update.workflow, execution = %update.execution_id, "concurrency slot released");
        }
        // Only a freed slot lets a waiting execution start (a redelivery may be the retry of
        // a release whose start did not happen).
        if released || delivered > 1 {
            self.start_waiting(&scope).await?;
        }
        Ok(())
    }

    /// Starts the first execution waiting for the scope's slot, if the slot is free.
    pub(crate) async fn start_waiting(&self, scope: &Scope) -> Result<()> {
        let started = self
            .slots
            .start_next(scope, |plan: Plan| async move {
                self.publish_shards(&plan).await?;
                info!(execution = %plan.execution.id, workflow = %plan.execution.workflow, scope = %scope.name, "queued execution started");
                Ok(())
            })
            .await?;
        debug!(scope = %scope.name, started = ?started, "waiting executions looked at");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use assay_proto::{Execution, PendingPlan};

    use super::{Held, Scope, Slots};
    use crate::kv::{Memory, now};
    use crate::{Plan, Result};

    fn scope(max: u32) -> Scope {
        Scope {
            key: "w".to_string(),
            name: "workflow \"w\"".to_string(),
            max,
        }
    }

    fn pending(id: &str, priority: i32) -> PendingPlan {
        PendingPlan {
            execution: Some(Execution {
                id: id.to_string(),
                priority,
                ..Default::default()
            }),
            shards: Vec::new(),
        }
    }

    /// Slots over one in-memory bucket pair, and the executions started so far (in order).
    #[derive(Clone)]
    struct World {
        active: Arc<Memory>,
        waiting: Arc<Memory>,
        slots: Slots,
        started: Arc<Mutex<Vec<String>>>,
    }

    impl World {
        fn new() -> World {
            let (active, waiting) = (Arc::new(Memory::default()), Arc::new(Memory::default()));
            World {
                slots: Slots::new(active.clone(), waiting.clone()),
                active,
                waiting,
                started: Arc::default(),
            }
        }

        /// Another scheduler: the same buckets and record of starts.
        fn other(&self) -> World {
            self.clone()
        }

        fn holders(&self) -> Vec<String> {
            self.active
                .live_keys("w.")
                .iter()
                .filter_map(|k| self.active.value(k))
                .collect()
        }

        fn waiting_ids(&self) -> Vec<String> {
            self.waiting
                .live_keys("w.")
                .iter()
                .filter_map(|k| {
                    assay_bus::streams::parse_waiting_key(k).map(|(_, e)| e.to_string())
                })
                .collect()
        }

        fn started(&self) -> Vec<String> {
            self.started.lock().unwrap().clone()
        }

        /// What the scheduler does for an execution of policy `queue`: take a slot or wait
        /// for one (then look again, the holder may have ended meanwhile).
        fn queue(&self, scope: &Scope, id: &str) -> Result<()> {
            if now(self.slots.acquire(scope, id))?.is_none() {
                self.started.lock().unwrap().push(id.to_string());
                return Ok(());
            }
            now(self.slots.enqueue(scope, &pending(id, 0)))?;
            self.start_next(scope)?;
            Ok(())
        }

        fn start_next(&self, scope: &Scope) -> Result<Option<String>> {
            let started = self.started.clone();
            now(self.slots.start_next(scope, |plan: Plan| async move {
                started.lock().unwrap().push(plan.execution.id);
                Ok(())
            }))
        }

        /// What the scheduler does when an execution ends.
        fn ended(&self, scope: &Scope, id: &str) -> Result<()> {
            if now(self.slots.release(scope, id))? {
                self.start_next(scope)?;
            }
            Ok(())
        }
    }

    /// Runs `first` once for every point where `second` can cut into it (before each of its
    /// operations on either bucket, and after the last), checking `then` each time on a
    /// fresh world.
    fn interleavings(
        setup: impl Fn(&World),
        first: impl Fn(&World),
        second: impl Fn(&World) + Clone + Send + 'static,
        then: impl Fn(&World, &str),
    ) {
        for bucket in ["active", "waiting"] {
            for n in 0.. {
                let w = World::new();
                setup(&w);
                let b = w.other();
                let kv = if bucket == "active" {
                    &w.active
                } else {
                    &w.waiting
                };
                let step = second.clone();
                kv.before_op(n, move |_| step(&b));
                first(&w);
                let ran = kv.all_steps_ran();
                if !ran {
                    second(&w.other());
                }
                then(&w, &format!("{bucket} operation {n}"));
                if !ran {
                    break;
                }
            }
        }
    }

    #[test]
    fn of_two_schedulers_taking_the_last_slot_only_one_gets_it() {
        let s = scope(2);
        interleavings(
            |w| assert!(now(w.slots.acquire(&s, "X")).unwrap().is_none()),
            |w| {
                let _ = now(w.slots.acquire(&scope(2), "A")).unwrap();
            },
            |w| {
                let _ = now(w.slots.acquire(&scope(2), "B")).unwrap();
            },
            |w, n| {
                let holders = w.holders();
                assert_eq!(holders.len(), 2, "cut at {n}: {holders:?}");
                assert!(
                    holders.contains(&"X".to_string()),
                    "cut at {n}: {holders:?}"
                );
            },
        );
    }

    #[test]
    fn slots_held_never_exceed_the_maximum() {
        for max in 1..=3 {
            let s = scope(max);
            let w = World::new();
            let mut taken = Vec::new();
            for id in ["A", "B", "C", "D"] {
                let other = w.other();
                // Another scheduler takes a slot in the middle of each attempt.
                let them = format!("{id}'");
                w.active.before_op(1, move |_| {
                    let _ = now(other.slots.acquire(&scope(max), &them));
                });
                if now(w.slots.acquire(&s, id)).unwrap().is_none() {
                    taken.push(id);
                }
                let holders = w.holders();
                assert!(holders.len() <= max as usize, "{max}: {holders:?}");
                let mut unique = holders.clone();
                unique.dedup();
                assert_eq!(unique.len(), holders.len(), "a slot per execution");
            }
            assert!(taken.len() <= max as usize);
        }
    }

    #[test]
    fn a_slot_freed_while_a_waiter_is_added_starts_the_waiter() {
        // X runs; A queues W while B handles the end of X, at every point of A's steps.
        let s = scope(1);
        interleavings(
            |w| w.queue(&s, "X").unwrap(),
            |w| w.queue(&scope(1), "W").unwrap(),
            |b| b.ended(&scope(1), "X").unwrap(),
            |w, n| {
                assert_eq!(w.holders(), ["W"], "cut at {n}: W holds the slot");
                assert!(w.waiting_ids().is_empty(), "cut at {n}: nothing stranded");
                assert!(
                    w.started().iter().any(|id| id == "W"),
                    "cut at {n}: W started: {:?}",
                    w.started()
                );
            },
        );
    }

    #[test]
    fn a_waiter_that_ends_while_the_slot_is_handed_on_never_takes_it() {
        // X runs, W waits. W is cancelled (it ends while waiting) while B hands X's slot on.
        let s = scope(1);
        interleavings(
            |w| {
                w.queue(&s, "X").unwrap();
                w.queue(&s, "W").unwrap();
            },
            |w| w.ended(&scope(1), "X").unwrap(),
            |b| b.ended(&scope(1), "W").unwrap(),
            |w, n| {
                // W may have been started just before it ended (then its end freed the slot),
                // but no ended execution holds a slot.
                assert!(w.holders().is_empty(), "cut at {n}: {:?}", w.holders());
                assert!(w.waiting_ids().is_empty(), "cut at {n}");
            },
        );
    }

    #[test]
    fn a_waiter_started_by_a_scheduler_that_stopped_before_forgetting_it_is_not_started_again() {
        let s = scope(1);
        let w = World::new();
        w.queue(&s, "X").unwrap();
        w.queue(&s, "W").unwrap();
        assert!(now(w.slots.release(&s, "X")).unwrap());
        // The scheduler publishes W's shards and stops before removing its waiting entry.
        let err = now(w.slots.start_next(&s, |plan: Plan| async {
            w.started.lock().unwrap().push(plan.execution.id);
            Err(crate::Error::Kv {
                op: "put",
                reason: "stopped".to_string(),
            })
        }));
        assert!(err.is_err());
        assert_eq!(w.holders(), ["W"]);
        // W runs and ends: its slot is freed, and W is not started a second time.
        w.ended(&s, "W").unwrap();
        assert!(w.holders().is_empty(), "{:?}", w.holders());
        assert!(w.waiting_ids().is_empty());
        assert_eq!(w.started(), ["X", "W"]);
    }

    #[test]
    fn a_redelivered_start_finishes_what_the_first_began() {
        let s = scope(1);
        let w = World::new();
        w.queue(&s, "X").unwrap();
        w.queue(&s, "W").unwrap();
        now(w.slots.release(&s, "X")).unwrap();
        // Another scheduler took W's slot and has not published yet.
        assert!(now(w.slots.acquire(&s, "W")).unwrap().is_none());
        assert_eq!(w.start_next(&s).unwrap().as_deref(), Some("W"));
        assert_eq!(w.holders(), ["W"]);
        assert!(w.waiting_ids().is_empty());
    }

    #[test]
    fn waiters_start_by_priority_then_arrival() {
        let s = scope(1);
        let w = World::new();
        w.queue(&s, "X").unwrap();
        for (id, priority) in [("01A", 0), ("01B", 5), ("01C", 0)] {
            now(w.slots.enqueue(&s, &pending(id, priority))).unwrap();
        }
        for (ended, next) in [("X", "01B"), ("01B", "01A"), ("01A", "01C")] {
            w.ended(&s, ended).unwrap();
            assert_eq!(w.holders(), [next]);
        }
    }

    #[test]
    fn of_two_replacing_executions_only_one_runs() {
        let s = scope(1);
        interleavings(
            |w| w.queue(&s, "X").unwrap(),
            |w| {
                now(w.slots.replace(&scope(1), "A", |_| async { Ok(()) })).unwrap();
            },
            |b| {
                now(b.slots.replace(&scope(1), "B", |_| async { Ok(()) })).unwrap();
            },
            |w, n| {
                let holders = w.holders();
                assert_eq!(holders.len(), 1, "cut at {n}: {holders:?}");
                assert_ne!(holders[0], "X", "cut at {n}");
            },
        );
    }

    #[test]
    fn a_replaced_execution_is_cancelled_before_its_slot_is_taken() {
        let s = scope(1);
        let w = World::new();
        w.queue(&s, "X").unwrap();
        let cancelled = Mutex::new(Vec::new());
        now(w.slots.replace(&s, "A", |running| {
            assert_eq!(w.holders(), ["X"]);
            cancelled.lock().unwrap().push(running);
            async { Ok(()) }
        }))
        .unwrap();
        assert_eq!(*cancelled.lock().unwrap(), ["X"]);
        assert_eq!(w.holders(), ["A"]);
        let _: Option<Held> = now(w.slots.acquire(&s, "A")).unwrap();
    }
}
