//! Shard plans too large to travel in a job message. A job carries its shard's test ids,
//! planned hashes and shared-tail batches; for a large suite those are megabytes (about 26
//! bytes per known test), over the message limits. Such a plan goes to the `assay_plans`
//! object store (chunked, no size limit) and the job carries only its name
//! (`ShardJob.plan_data`); the runner fetches it before running tests.

use std::time::Duration;

use assay_proto::{RunRequest, RunSelection, ShardJob, ShardPlanData};
use async_nats::jetstream::object_store;
use prost::Message;
use tokio::io::AsyncReadExt;

use crate::{Bus, Error, Result, streams};

/// A job whose encoding is larger than this has its plan stored apart. Well under the
/// launcher's 256 KiB message check and the 1 MiB stream limit, and under the 128 KiB a
/// warm runner's job line may comfortably be.
pub const INLINE_JOB_BYTES: usize = 64 * 1024;

/// How long stored plans are kept: longer than any execution may run (the scheduler's
/// maximum execution time defaults to a day; retries and reruns replay within it).
pub const PLAN_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Object name of a shard's plan.
pub fn object_name(job: &ShardJob) -> String {
    format!(
        "{}.{}.{}",
        crate::subjects::token(&job.execution_id),
        job.group,
        job.shard_index
    )
}

/// A run request whose encoding is larger than this has its selection (test ids, frozen
/// shard plan) stored apart: well under the 1 MiB stream limit.
pub const INLINE_REQUEST_BYTES: usize = 256 * 1024;

/// Object name of a run request's selection: its execution id, else its event id.
pub fn selection_name(req: &RunRequest) -> String {
    let id = if req.execution_id.is_empty() {
        req.header
            .as_ref()
            .map(|h| h.event_id.as_str())
            .unwrap_or_default()
    } else {
        req.execution_id.as_str()
    };
    format!("request.{}", crate::subjects::token(id))
}

impl Bus {
    async fn plans(&self) -> Result<object_store::ObjectStore> {
        if let Ok(store) = self.js.get_object_store(streams::OBJ_PLANS).await {
            return Ok(store);
        }
        self.js
            .create_object_store(object_store::Config {
                bucket: streams::OBJ_PLANS.to_string(),
                description: Some("shard plans too large for a job message".into()),
                max_age: PLAN_KEPT,
                storage: async_nats::jetstream::stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::js(format!("create object store {}", streams::OBJ_PLANS), e))
    }

    /// Moves the job's plan to the object store when the job would be larger than
    /// [`INLINE_JOB_BYTES`]; returns whether it did. Idempotent: the object is named after
    /// the execution and shard and written again with the same content.
    pub async fn offload_plan(&self, job: &mut ShardJob) -> Result<bool> {
        if !job.plan_data.is_empty() || job.encoded_len() <= INLINE_JOB_BYTES {
            return Ok(false);
        }
        let data = ShardPlanData {
            test_ids: std::mem::take(&mut job.test_ids),
            planned_hashes: std::mem::take(&mut job.planned_hashes),
            tail: std::mem::take(&mut job.tail),
        };
        let name = object_name(job);
        let bytes = data.encode_to_vec();
        let store = self.plans().await?;
        store
            .put(name.as_str(), &mut bytes.as_slice())
            .await
            .map_err(|e| Error::js(format!("store the plan of {name}"), e))?;
        job.plan_data = name;
        Ok(true)
    }

    /// Fills in a job's plan stored apart (nothing to do when it travelled inline).
    pub async fn load_plan(&self, job: &mut ShardJob) -> Result<()> {
        if job.plan_data.is_empty() {
            return Ok(());
        }
        let name = job.plan_data.clone();
        let store = self.plans().await?;
        let mut object = store
            .get(&name)
            .await
            .map_err(|e| Error::js(format!("read the plan {name}"), e))?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| Error::js(format!("read the plan {name}"), e))?;
        let data = ShardPlanData::decode(bytes.as_slice()).map_err(|e| Error::Decode {
            what: "ShardPlanData",
            subject: format!("object {}/{name}", streams::OBJ_PLANS),
            reason: e.to_string(),
        })?;
        job.test_ids = data.test_ids;
        job.planned_hashes = data.planned_hashes;
        job.tail = data.tail;
        Ok(())
    }

    /// Moves a run request's selection (`test_ids`, `shards`) to the object store when the
    /// request would be larger than [`INLINE_REQUEST_BYTES`]; returns whether it did.
    /// Idempotent: the object is named after the request's execution (or event) id.
    pub async fn offload_selection(&self, req: &mut RunRequest) -> Result<bool> {
        if !req.selection_data.is_empty() || req.encoded_len() <= INLINE_REQUEST_BYTES {
            return Ok(false);
        }
        let data = RunSelection {
            test_ids: std::mem::take(&mut req.test_ids),
            shards: std::mem::take(&mut req.shards),
        };
        let name = selection_name(req);
        let bytes = data.encode_to_vec();
        let store = self.plans().await?;
        store
            .put(name.as_str(), &mut bytes.as_slice())
            .await
            .map_err(|e| Error::js(format!("store the selection of {name}"), e))?;
        req.selection_data = name;
        Ok(true)
    }

    /// Fills in a run request's selection stored apart (nothing to do when it travelled
    /// inline).
    pub async fn load_selection(&self, req: &mut RunRequest) -> Result<()> {
        if req.selection_data.is_empty() {
            return Ok(());
        }
        let name = req.selection_data.clone();
        let store = self.plans().await?;
        let mut object = store
            .get(&name)
            .await
            .map_err(|e| Error::js(format!("read the selection {name}"), e))?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| Error::js(format!("read the selection {name}"), e))?;
        let data = RunSelection::decode(bytes.as_slice()).map_err(|e| Error::Decode {
            what: "RunSelection",
            subject: format!("object {}/{name}", streams::OBJ_PLANS),
            reason: e.to_string(),
        })?;
        req.test_ids = data.test_ids;
        req.shards = data.shards;
        req.selection_data.clear();
        Ok(())
    }
}
