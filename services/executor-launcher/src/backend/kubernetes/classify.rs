//! What a shard Pod's status says about its attempt (pure): still going, ended with the
//! runner's own report, or ended by the infrastructure (OOMKilled, evicted, image pull,
//! unschedulable past a limit, node lost, a container the kubelet cannot create, a Secret
//! it cannot mount), kept apart from test failures.

use std::time::Duration;

use assay_proto::ShardState;
use k8s_openapi::api::core::v1::{ContainerState, Event, Pod};

use super::pod::{GIT_CREDENTIALS_VOLUME, INIT_CONTAINER, RUNNER_CONTAINER};
use crate::backend::Outcome;

/// Waiting reasons of a container whose image will not come.
const IMAGE_FAILURES: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];

/// Waiting reasons of a container the kubelet will not create as the Pod stands (a Secret
/// or key its env names is missing, a bad mount): no other node would do better.
const CONFIG_FAILURES: &[&str] = &["CreateContainerConfigError", "CreateContainerError"];

/// Waiting reasons the kubelet shows before a container is created (volumes being set up,
/// images being pulled).
const NOT_CREATED: &[&str] = &["ContainerCreating", "PodInitializing"];

/// How a Pod's attempt stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// Not ended yet; `unschedulable` says since when the scheduler has been refusing it
    /// (`Some(message)` while the PodScheduled condition is False/Unschedulable).
    Going { unschedulable: Option<String> },
    /// Ended: the outcome, and whether an infrastructure retry (on another node) may help.
    Ended { outcome: Outcome, retry: bool },
}

/// The runner's exit code as the state it reported: 0 passed, 1 failed, 4 errored, 5
/// timed out (as the local backend reads them).
pub fn reported(code: i32) -> Option<ShardState> {
    match code {
        0 => Some(ShardState::Passed),
        1 => Some(ShardState::Failed),
        4 => Some(ShardState::Errored),
        5 => Some(ShardState::TimedOut),
        _ => None,
    }
}

fn infra(reason: String, retry: bool) -> PodState {
    PodState::Ended {
        outcome: Outcome::Infrastructure(reason),
        retry,
    }
}

fn with_message(what: &str, message: Option<&String>) -> String {
    match message.filter(|m| !m.is_empty()) {
        Some(m) => format!("{what}: {m}"),
        None => what.to_string(),
    }
}

/// Classifies `pod` as its status stands.
pub fn classify(pod: &Pod) -> PodState {
    let Some(status) = pod.status.as_ref() else {
        return PodState::Going {
            unschedulable: None,
        };
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let pod_reason = status.reason.as_deref().unwrap_or("");
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("?");

    if pod_reason == "Evicted" {
        return infra(
            with_message(
                &format!("pod evicted from node {node}"),
                status.message.as_ref(),
            ),
            true,
        );
    }
    if pod_reason == "NodeLost" || phase == "Unknown" {
        return infra(format!("node {node} was lost while the shard ran"), true);
    }
    if pod_reason == "DeadlineExceeded" {
        return infra(
            "pod exceeded its activeDeadlineSeconds (the shard's time limit)".into(),
            false,
        );
    }

    let statuses = |list: &Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
        list.clone().unwrap_or_default()
    };
    let init = statuses(&status.init_container_statuses);
    let main = statuses(&status.container_statuses);
    for c in init.iter().chain(&main) {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref())
            && let Some(r) = w.reason.as_deref()
            && IMAGE_FAILURES.contains(&r)
        {
            let image = if c.name == INIT_CONTAINER {
                "the runner image"
            } else {
                "the workflow's image"
            };
            return infra(
                with_message(
                    &format!("{r}: cannot pull {image} ({})", c.image),
                    w.message.as_ref(),
                ),
                true,
            );
        }
    }
    for c in init.iter().chain(&main) {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref())
            && let Some(r) = w.reason.as_deref()
            && CONFIG_FAILURES.contains(&r)
        {
            let which = if c.name == INIT_CONTAINER {
                format!("the {INIT_CONTAINER} init container")
            } else {
                "the runner's container".to_string()
            };
            return infra(
                with_message(
                    &format!("{r}: the kubelet cannot create {which} on node {node}"),
                    w.message.as_ref(),
                ),
                false,
            );
        }
    }
    for c in &init {
        if let Some(t) = terminated(&c.state)
            && t.exit_code != 0
        {
            if t.reason.as_deref() == Some("OOMKilled") {
                return infra(
                    format!(
                        "OOMKilled: the {INIT_CONTAINER} init container on node {node} ran out of memory"
                    ),
                    true,
                );
            }
            return infra(
                with_message(
                    &format!(
                        "the {INIT_CONTAINER} init container failed with exit code {} (copying assay-runner out of the runner image)",
                        t.exit_code
                    ),
                    t.message.as_ref(),
                ),
                false,
            );
        }
    }
    if let Some(runner) = main.iter().find(|c| c.name == RUNNER_CONTAINER)
        && let Some(t) = terminated(&runner.state)
    {
        if t.reason.as_deref() == Some("OOMKilled") {
            return infra(
                format!(
                    "OOMKilled: the runner's container on node {node} ran out of memory (exit code {})",
                    t.exit_code
                ),
                true,
            );
        }
        return match reported(t.exit_code) {
            Some(state) => PodState::Ended {
                outcome: Outcome::Reported(state),
                retry: false,
            },
            None => infra(
                with_message(
                    &format!(
                        "runner exited with code {} without reporting{}",
                        t.exit_code,
                        t.reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    ),
                    t.message.as_ref(),
                ),
                false,
            ),
        };
    }
    if matches!(phase, "Succeeded" | "Failed") {
        return infra(
            with_message(
                &format!("pod ended {phase} without the runner's exit status"),
                status.message.as_ref(),
            ),
            false,
        );
    }
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| c.message.clone().unwrap_or_default());
    PodState::Going { unschedulable }
}

fn terminated(
    state: &Option<ContainerState>,
) -> Option<&k8s_openapi::api::core::v1::ContainerStateTerminated> {
    state.as_ref().and_then(|s| s.terminated.as_ref())
}

/// Whether the Pod is on a node whose kubelet has not created any of its containers yet:
/// Pending, bound, every container status absent or waiting as `ContainerCreating` /
/// `PodInitializing`. A Secret volume that cannot be mounted keeps a Pod here, and only the
/// kubelet's `FailedMount` events say why.
pub fn waiting_for_volumes(pod: &Pod) -> bool {
    let bound = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some();
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    let not_created = |list: &Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
        list.iter().flatten().all(|c| match &c.state {
            None => true,
            Some(s) => s
                .waiting
                .as_ref()
                .and_then(|w| w.reason.as_deref())
                .is_some_and(|r| NOT_CREATED.contains(&r)),
        })
    };
    bound
        && status.phase.as_deref().unwrap_or("Pending") == "Pending"
        && not_created(&status.init_container_statuses)
        && not_created(&status.container_statuses)
}

/// The message of a kubelet `FailedMount` event saying the git credentials volume cannot
/// be set up for good (the Secret, or a key of it, does not exist); `None` for other events
/// and for passing trouble (`failed to sync secret cache: timed out`), which the kubelet
/// retries.
pub fn git_mount_failure(event: &Event) -> Option<String> {
    let message = event.message.as_deref()?;
    let permanent = message.contains("not found") || message.contains("non-existent");
    (event.reason.as_deref() == Some("FailedMount")
        && message.contains(&format!("volume \"{GIT_CREDENTIALS_VOLUME}\""))
        && permanent)
        .then(|| message.to_string())
}

/// The reason given when a Pod stayed unschedulable for `waited`.
pub fn unschedulable_reason(waited: Duration, message: &str) -> String {
    with_message(
        &format!("Unschedulable for {}s", waited.as_secs()),
        Some(&message.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("a pod")
    }

    fn terminated_runner(code: i32, reason: &str) -> Pod {
        pod(json!({
            "metadata": {"name": "p"},
            "spec": {"nodeName": "n1", "containers": [{"name": "runner"}]},
            "status": {"phase": if code == 0 {"Succeeded"} else {"Failed"},
                "containerStatuses": [{"name": "runner", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": code, "reason": reason}}}]}
        }))
    }

    fn ended(outcome: Outcome, retry: bool) -> PodState {
        PodState::Ended { outcome, retry }
    }

    #[test]
    fn the_runners_exit_is_its_report() {
        let table = [
            (0, ShardState::Passed),
            (1, ShardState::Failed),
            (4, ShardState::Errored),
            (5, ShardState::TimedOut),
        ];
        for (code, state) in table {
            assert_eq!(
                classify(&terminated_runner(code, "Error")),
                ended(Outcome::Reported(state), false)
            );
        }
        assert_eq!(
            classify(&terminated_runner(2, "Error")),
            ended(
                Outcome::Infrastructure(
                    "runner exited with code 2 without reporting (Error)".into()
                ),
                false
            )
        );
    }

    #[test]
    fn infrastructure_failures_are_named_and_retried_elsewhere() {
        assert_eq!(
            classify(&terminated_runner(137, "OOMKilled")),
            ended(
                Outcome::Infrastructure(
                    "OOMKilled: the runner's container on node n1 ran out of memory (exit code 137)".into()
                ),
                true
            )
        );
        let evicted = pod(json!({"spec": {"nodeName": "n2", "containers": []},
            "status": {"phase": "Failed", "reason": "Evicted", "message": "low on memory"}}));
        assert_eq!(
            classify(&evicted),
            ended(
                Outcome::Infrastructure("pod evicted from node n2: low on memory".into()),
                true
            )
        );
        let lost = pod(json!({"spec": {"nodeName": "n3", "containers": []},
            "status": {"phase": "Unknown", "reason": "NodeLost"}}));
        assert_eq!(
            classify(&lost),
            ended(
                Outcome::Infrastructure("node n3 was lost while the shard ran".into()),
                true
            )
        );
        let pull = pod(
            json!({"spec": {"containers": []}, "status": {"phase": "Pending",
            "containerStatuses": [{"name": "runner", "image": "nope:1", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}}),
        );
        assert_eq!(
            classify(&pull),
            ended(
                Outcome::Infrastructure(
                    "ErrImagePull: cannot pull the workflow's image (nope:1): not found".into()
                ),
                true
            )
        );
    }

    #[test]
    fn a_pending_or_running_pod_goes_on_and_unschedulable_is_noticed() {
        let running = pod(json!({"spec": {"containers": []}, "status": {"phase": "Running"}}));
        assert_eq!(
            classify(&running),
            PodState::Going {
                unschedulable: None
            }
        );
        let refused = pod(
            json!({"spec": {"containers": []}, "status": {"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available"}]}}),
        );
        assert_eq!(
            classify(&refused),
            PodState::Going {
                unschedulable: Some("0/3 nodes are available".into())
            }
        );
        assert_eq!(
            unschedulable_reason(Duration::from_secs(300), "0/3 nodes are available"),
            "Unschedulable for 300s: 0/3 nodes are available"
        );
    }

    #[test]
    fn a_container_the_kubelet_cannot_create_ends_the_attempt_without_retry() {
        let p = pod(
            json!({"spec": {"nodeName": "n1", "containers": []}, "status": {"phase": "Pending",
            "containerStatuses": [{"name": "runner", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"runner-nats\" not found"}}}]}}),
        );
        assert_eq!(
            classify(&p),
            ended(
                Outcome::Infrastructure(
                    "CreateContainerConfigError: the kubelet cannot create the runner's container on node n1: secret \"runner-nats\" not found".into()
                ),
                false
            )
        );
    }

    #[test]
    fn a_pod_whose_containers_are_not_created_waits_for_its_volumes() {
        let waiting = |reason: &str, node: Option<&str>| {
            pod(
                json!({"spec": {"nodeName": node, "containers": []}, "status": {"phase": "Pending",
                "initContainerStatuses": [{"name": "install-runner", "image": "r", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": reason}}}],
                "containerStatuses": [{"name": "runner", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "PodInitializing"}}}]}}),
            )
        };
        assert!(waiting_for_volumes(&waiting("PodInitializing", Some("n1"))));
        assert!(!waiting_for_volumes(&waiting("PodInitializing", None)));
        assert!(!waiting_for_volumes(&waiting("ErrImagePull", Some("n1"))));
        let running = pod(
            json!({"spec": {"nodeName": "n1", "containers": []}, "status": {"phase": "Pending",
            "initContainerStatuses": [{"name": "install-runner", "image": "r", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"running": {}}}]}}),
        );
        assert!(!waiting_for_volumes(&running));
        assert_eq!(
            classify(&waiting("PodInitializing", Some("n1"))),
            PodState::Going {
                unschedulable: None
            }
        );
    }

    #[test]
    fn only_a_missing_secret_or_key_of_the_git_volume_is_a_mount_failure() {
        let event = |reason: &str, message: &str| -> Event {
            serde_json::from_value(
                json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p"},
                "reason": reason, "message": message}),
            )
            .unwrap()
        };
        let missing = "MountVolume.SetUp failed for volume \"assay-git-credentials\" : secret \"shop-git\" not found";
        assert_eq!(
            git_mount_failure(&event("FailedMount", missing)).as_deref(),
            Some(missing)
        );
        let key = "MountVolume.SetUp failed for volume \"assay-git-credentials\" : references non-existent secret key: password";
        assert!(git_mount_failure(&event("FailedMount", key)).is_some());
        for (reason, message) in [
            (
                "FailedMount",
                "MountVolume.SetUp failed for volume \"assay-git-credentials\" : failed to sync secret cache: timed out waiting for the condition",
            ),
            (
                "FailedMount",
                "MountVolume.SetUp failed for volume \"other\" : secret \"x\" not found",
            ),
            ("Scheduled", missing),
        ] {
            assert_eq!(
                git_mount_failure(&event(reason, message)),
                None,
                "{reason}: {message}"
            );
        }
    }

    #[test]
    fn a_failed_init_container_is_not_retried() {
        let p = pod(
            json!({"spec": {"nodeName": "n1", "containers": []}, "status": {"phase": "Failed",
            "initContainerStatuses": [{"name": "install-runner", "image": "r", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}}),
        );
        assert_eq!(
            classify(&p),
            ended(
                Outcome::Infrastructure(
                    "the install-runner init container failed with exit code 1 (copying assay-runner out of the runner image)".into()
                ),
                false
            )
        );
    }
}
