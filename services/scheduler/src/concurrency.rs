//! Concurrency slots: taking one for an execution (`forbid`, `replace`, `queue`), releasing
//! it when the execution ends, and starting the next waiting execution.

use assay_bus::{kv_key, streams};
use assay_proto::{ExecutionStatus, ExecutionUpdate};
use assay_spec::Workflow;
use async_nats::jetstream::kv;
use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::{Error, Plan, Result, Scheduler};

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

impl Scheduler {
    /// Takes a free slot of the scope (each slot is a key taken with a compare-and-set
    /// create); when all are held, returns the first slot and its holder.
    pub(crate) async fn acquire(
        &self,
        scope: &Scope,
        id: &str,
    ) -> Result<Option<(String, String)>> {
        let mut first_held = None;
        for n in 0..scope.max {
            let key = scope.slot(n);
            match self.active.create(&key, Bytes::from(id.to_string())).await {
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    let holder = self
                        .active
                        .get(&key)
                        .await
                        .map_err(|e| Error::kv("get", e))?
                        .map(|v| String::from_utf8_lossy(&v).to_string())
                        .unwrap_or_default();
                    // A redelivery of our own request holds a slot already.
                    if holder == id {
                        return Ok(None);
                    }
                    first_held.get_or_insert((key, holder));
                }
                Err(e) => return Err(Error::kv("create", e)),
            }
        }
        Ok(first_held)
    }

    /// Keys of `store` that start with `prefix`, sorted.
    async fn keys_with_prefix(store: &kv::Store, prefix: &str) -> Result<Vec<String>> {
        use futures::TryStreamExt;
        let mut keys: Vec<String> = store
            .keys()
            .await
            .map_err(|e| Error::kv("keys", e))?
            .try_collect()
            .await
            .map_err(|e| Error::kv("keys", e))?;
        keys.retain(|k| k.starts_with(prefix));
        keys.sort();
        Ok(keys)
    }

    /// Releases a `forbid` slot when its execution ends.
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
        let mut released = false;
        for n in 0..scope.max {
            let key = scope.slot(n);
            let entry = self
                .active
                .entry(&key)
                .await
                .map_err(|e| Error::kv("entry", e))?;
            if let Some(entry) = entry
                && entry.operation == kv::Operation::Put
                && entry.value.as_ref() == update.execution_id.as_bytes()
            {
                // Only delete what we read, so a newer holder is never released by mistake.
                self.active
                    .delete_expect_revision(&key, Some(entry.revision))
                    .await
                    .map_err(|e| Error::kv("delete", e))?;
                debug!(workflow = %update.workflow, execution = %update.execution_id, "concurrency slot released");
                released = true;
            }
        }
        // Only a freed slot lets a waiting execution start (a redelivery may be the retry of
        // a release whose start did not happen).
        if released || delivered > 1 {
            self.start_waiting(&scope).await?;
        }
        Ok(())
    }

    /// Starts the first execution waiting for the scope's slot (highest priority, then
    /// oldest), if the slot is free.
    /// Safe to call any time and from several schedulers: the slot is taken with a
    /// compare-and-set create, and the waiting entry is removed only after its shards
    /// are published.
    pub(crate) async fn start_waiting(&self, scope: &Scope) -> Result<()> {
        let keys = Self::keys_with_prefix(&self.waiting, &scope.prefix()).await?;
        let Some(next) = keys.first() else {
            return Ok(());
        };
        let Some(raw) = self
            .waiting
            .get(next)
            .await
            .map_err(|e| Error::kv("get", e))?
        else {
            return Ok(());
        };
        let pending = match <assay_proto::PendingPlan as prost::Message>::decode(raw.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                warn!(key = %next, error = %e, "unreadable waiting execution dropped");
                let _ = self.waiting.delete(next).await;
                return Ok(());
            }
        };
        let Some(execution) = pending.execution.clone() else {
            let _ = self.waiting.delete(next).await;
            return Ok(());
        };
        if self.acquire(scope, &execution.id).await?.is_some() {
            return Ok(()); // still held: its end starts us
        }
        let plan = Plan {
            execution,
            shards: pending.shards,
        };
        self.publish_shards(&plan).await?;
        self.waiting
            .delete(next)
            .await
            .map_err(|e| Error::kv("delete", e))?;
        info!(execution = %plan.execution.id, workflow = %plan.execution.workflow, scope = %scope.name, "queued execution started");
        Ok(())
    }
}
