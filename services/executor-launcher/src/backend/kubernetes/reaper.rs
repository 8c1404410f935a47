//! Deletes shard Pods whose execution has ended: every `every`, lists the Pods this
//! launcher kind manages (by label) and deletes those whose execution's last update on
//! `assay.v1.executions` is terminal. Catches Pods left by a launcher that died between an
//! attempt's end and its Pod's deletion. Several launchers reaping at once is harmless (a
//! Pod already gone is skipped).

use std::collections::HashMap;
use std::time::Duration;

use assay_bus::{Bus, streams, subjects};
use assay_proto::ExecutionUpdate;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::pod::{ANNOTATION_EXECUTION, ANNOTATION_WORKFLOW, LABEL_MANAGED_BY, MANAGED_BY};

/// Default time between two sweeps.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(15);

/// Sweeps until `shutdown`.
pub async fn run(bus: Bus, pods: Api<Pod>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match sweep(&bus, &pods).await {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, "reaped pods of ended executions"),
            Err(e) => warn!(error = %e, "pod reaper: {e}"),
        }
    }
}

/// One sweep; returns how many Pods it deleted.
pub async fn sweep(bus: &Bus, pods: &Api<Pod>) -> Result<usize, String> {
    let lp = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let list = pods.list(&lp).await.map_err(|e| match e {
        kube::Error::Api(s) if s.is_forbidden() => format!(
            "forbidden: the launcher may not list pods ({}); grant its ServiceAccount list on pods",
            s.message
        ),
        e => format!("cannot list pods: {e}"),
    })?;
    let mut ended: HashMap<(String, String), bool> = HashMap::new();
    let mut deleted = 0;
    for p in list.items {
        let meta = &p.metadata;
        let (Some(name), Some(execution), Some(workflow)) = (
            meta.name.clone(),
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_EXECUTION))
                .cloned(),
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_WORKFLOW))
                .cloned(),
        ) else {
            continue;
        };
        let key = (workflow, execution);
        let done = match ended.get(&key) {
            Some(d) => *d,
            None => {
                let d = execution_ended(bus, &key.0, &key.1).await;
                ended.insert(key.clone(), d);
                d
            }
        };
        if !done {
            continue;
        }
        match pods
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => {
                debug!(pod = %name, execution = %key.1, "reaped");
                deleted += 1;
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => warn!(pod = %name, error = %e, "cannot delete the pod of an ended execution"),
        }
    }
    Ok(deleted)
}

/// Whether the execution's last update is terminal (unreadable: not ended).
async fn execution_ended(bus: &Bus, workflow: &str, execution: &str) -> bool {
    let subject = subjects::execution_update(workflow, execution);
    let update: Option<ExecutionUpdate> = bus
        .last_message(streams::EXECUTIONS, &subject)
        .await
        .ok()
        .flatten();
    update.is_some_and(|u| u.status().is_terminal())
}
