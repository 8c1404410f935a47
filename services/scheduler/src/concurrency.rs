//! Concurrency slots: taking one for an execution (`forbid`, `replace`, `queue`), releasing
//! it when the execution ends, and starting the next waiting execution.
//!
//! Several schedulers may do any of this at once. Each slot is a key of `assay_active`
//! holding its execution, taken with a compare-and-set create and given back with a delete
//! at the revision read; a waiting execution is a key of `assay_waiting`, removed only after
//! its shards are published (or when it ends while waiting).

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
            if let Some(revision) = self.active.create(&key, Bytes::from(id.to_string())).await? {
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

    /// Gives the held slot to `id` (policy `replace`), unless it changed hands since it was
    /// read: `false` then.
    pub(crate) async fn take_over(&self, held: &Held, id: &str) -> Result<bool> {
        self.active
            .update(&held.slot, Bytes::from(id.to_string()), held.revision)
            .await
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
    pub(crate) async fn start_next(
        &self,
        scope: &Scope,
        start: impl AsyncFnOnce(Plan) -> Result<()>,
    ) -> Result<Option<String>> {
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
            .start_next(scope, async |plan: Plan| {
                self.publish_shards(&plan).await?;
                info!(execution = %plan.execution.id, workflow = %plan.execution.workflow, scope = %scope.name, "queued execution started");
                Ok(())
            })
            .await?;
        debug!(scope = %scope.name, started = ?started, "waiting executions looked at");
        Ok(())
    }
}
