//! The Pod of one shard attempt, built from the job alone (pure, no I/O): its name, its
//! labels, an init container (the runner image) that copies `assay-runner` into an
//! emptyDir, and a main container (the workflow's image) that runs the copied runner,
//! which runs the steps. A `content.git` Secret is mounted read-only into the main
//! container only, where `ASSAY_GIT_CREDENTIALS_DIR` points. The workflow's `container`
//! and `pod` settings go where Kubernetes reads them; nodes where an earlier attempt failed for an infrastructure
//! reason are avoided through required node anti-affinity.

use std::collections::BTreeMap;

use assay_proto::ShardJob;
use assay_spec::{Container as WorkflowContainer, PodOverrides};
use base64::Engine;
use k8s_openapi::api::core::v1::{
    Affinity, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prost::Message;

use crate::backend::{AttemptId, RunnerNats};

/// Label: the execution a Pod runs a shard of.
pub const LABEL_EXECUTION: &str = "assay.dev/execution";
/// Label: the shard index.
pub const LABEL_SHARD: &str = "assay.dev/shard";
/// Label: the attempt number.
pub const LABEL_ATTEMPT: &str = "assay.dev/attempt";
/// Label every shard Pod carries, so the reaper lists only ours.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "assay-executor-launcher";
/// Annotation: the workflow (names may not fit a label value).
pub const ANNOTATION_WORKFLOW: &str = "assay.dev/workflow";
/// Annotation: the execution id as it is (its label may be cut to fit).
pub const ANNOTATION_EXECUTION: &str = "assay.dev/execution";
/// The main container's name: the runner, in the workflow's image.
pub const RUNNER_CONTAINER: &str = "runner";
/// The init container's name: copies the runner in.
pub const INIT_CONTAINER: &str = "install-runner";
/// Where the emptyDir holding the copied runner is mounted in both containers.
pub const RUNNER_DIR: &str = "/assay/bin";
/// The emptyDir's volume name.
const RUNNER_VOLUME: &str = "assay-runner";
/// The volume of the `content.git.credentials.secretName` Secret.
pub const GIT_CREDENTIALS_VOLUME: &str = "assay-git-credentials";
/// Where that Secret is mounted in the main container (read-only; not in the init
/// container).
pub const GIT_CREDENTIALS_DIR: &str = "/var/run/assay/git-credentials";
/// The runner's variable naming the credentials directory (the runner's contract,
/// `assay_runner::checkout::CREDENTIALS_DIR`).
pub const GIT_CREDENTIALS_ENV: &str = "ASSAY_GIT_CREDENTIALS_DIR";
/// Mode of the Secret's files: read by their owner only.
pub const GIT_CREDENTIALS_MODE: i32 = 0o400;
/// The Pod's `fsGroup` when the Secret is mounted: the kubelet then gives the files this
/// group with group read, and every container process this supplementary group, so a
/// runner whose image runs as a non-root user can read files that are otherwise root's
/// with mode 0400.
pub const GIT_CREDENTIALS_GROUP: i64 = 65532;
/// The volume of an attempt's minted NATS credentials (operator mode): a Secret of the
/// Pod's own name, key [`crate::backend::RUNNER_CREDS_FILE`].
pub const NATS_CREDS_VOLUME: &str = "assay-nats-creds";
/// Where that Secret is mounted (read-only) in the runner container only.
pub const NATS_CREDS_DIR: &str = "/var/run/assay/nats";
/// Seconds the Pod may outlive the shard's time limit before Kubernetes kills it (the
/// runner and the launcher end it first; this bounds a Pod whose launcher is gone).
pub const DEADLINE_MARGIN_SECS: i64 = 30;

/// What every shard Pod shares: where the runner comes from and how it reaches NATS.
#[derive(Debug, Clone)]
pub struct PodTemplate {
    pub namespace: String,
    /// The image holding `assay-runner` (the init container).
    pub runner_image: String,
    /// The runner's path inside [`PodTemplate::runner_image`].
    pub runner_path: String,
    /// The runner's NATS settings passed as plain env (the URL, TLS required).
    pub nats: RunnerNats,
    /// A Secret holding the runner's NATS user (`user` and `password` keys), given to the
    /// runner container only.
    pub nats_secret: Option<String>,
    /// The Secret holding this attempt's minted credentials (operator mode), mounted for
    /// the runner in place of [`PodTemplate::nats_secret`].
    pub creds_secret: Option<String>,
}

/// The Pod's name: `assay-<execution>-<shard>-<attempt>`, lower-cased, anything outside
/// `[a-z0-9-]` turned into `-`, cut (with a hash of the whole) to the 63 characters of a
/// DNS-1123 label. Deterministic: a restarted launcher computes the same name.
pub fn pod_name(id: &AttemptId) -> String {
    let tail = format!("-{}-{}", id.shard, id.attempt);
    let exec = dns_part(&id.execution);
    let room = 63 - "assay-".len() - tail.len();
    let exec = if exec.len() > room {
        let hash = fnv(&id.execution);
        let keep = room - 9;
        format!("{}-{hash:08x}", exec[..keep].trim_end_matches('-'))
    } else {
        exec
    };
    format!("assay-{exec}{tail}")
}

/// A label value for `s`: at most 63 characters of `[A-Za-z0-9._-]`, starting and ending
/// alphanumeric (a hash replaces what does not fit).
pub fn label_value(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = if clean.len() > 63 || clean != s {
        format!("{}-{:08x}", &clean[..clean.len().min(54)], fnv(s))
    } else {
        clean
    };
    clean
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn dns_part(s: &str) -> String {
    let lower: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let trimmed = lower.trim_matches('-');
    if trimmed.is_empty() {
        "x".to_string()
    } else {
        trimmed.to_string()
    }
}

/// FNV-1a, 32 bits: a stable short hash for names that had to be cut.
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The labels that find an execution's Pods, a shard's, and one attempt's.
pub fn labels(id: &AttemptId) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_EXECUTION.to_string(), label_value(&id.execution)),
        (LABEL_SHARD.to_string(), id.shard.to_string()),
        (LABEL_ATTEMPT.to_string(), id.attempt.to_string()),
    ])
}

/// The label selector of every Pod of one shard, whatever its attempt.
pub fn shard_selector(execution: &str, shard: u32) -> String {
    format!(
        "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_EXECUTION}={},{LABEL_SHARD}={shard}",
        label_value(execution)
    )
}

/// The workflow's `container`, or `None`; the error names the field that does not read.
fn workflow_container(job: &ShardJob) -> Result<Option<WorkflowContainer>, String> {
    match job.workload.as_ref().map(|w| w.container_json.as_str()) {
        Some(json) if !json.is_empty() => serde_json::from_str(json)
            .map(Some)
            .map_err(|e| format!("container: {e}")),
        _ => Ok(None),
    }
}

fn workflow_pod(job: &ShardJob) -> Result<Option<PodOverrides>, String> {
    match job.workload.as_ref().map(|w| w.pod_json.as_str()) {
        Some(json) if !json.is_empty() => serde_json::from_str(json)
            .map(Some)
            .map_err(|e| format!("pod: {e}")),
        _ => Ok(None),
    }
}

/// The Pod that runs `job`'s attempt, limited to `active_deadline_secs` when set. An error
/// (a workflow setting that is not a valid Kubernetes value) says which.
pub fn build(
    job: &ShardJob,
    template: &PodTemplate,
    active_deadline_secs: Option<i64>,
) -> Result<Pod, String> {
    let id = AttemptId::of(job);
    let container = workflow_container(job)?;
    let overrides = workflow_pod(job)?.unwrap_or_default();
    let image = job
        .workload
        .as_ref()
        .map(|w| w.image.clone())
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| template.runner_image.clone());

    let mut labels = overrides.labels.clone();
    labels.extend(self::labels(&id));
    let mut annotations = overrides.annotations.clone();
    annotations.insert(ANNOTATION_WORKFLOW.into(), job.workflow.clone());
    annotations.insert(ANNOTATION_EXECUTION.into(), job.execution_id.clone());

    let mount = VolumeMount {
        name: RUNNER_VOLUME.into(),
        mount_path: RUNNER_DIR.into(),
        ..Default::default()
    };
    let git_secret = git_secret(job);
    let mut main_mounts = vec![mount.clone()];
    let mut volumes = vec![Volume {
        name: RUNNER_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    if let Some(secret) = git_secret {
        main_mounts.push(VolumeMount {
            name: GIT_CREDENTIALS_VOLUME.into(),
            mount_path: GIT_CREDENTIALS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: GIT_CREDENTIALS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_string()),
                default_mode: Some(GIT_CREDENTIALS_MODE),
                optional: Some(false),
                items: None,
            }),
            ..Default::default()
        });
    }
    if let Some(secret) = &template.creds_secret {
        main_mounts.push(VolumeMount {
            name: NATS_CREDS_VOLUME.into(),
            mount_path: NATS_CREDS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: NATS_CREDS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                default_mode: Some(GIT_CREDENTIALS_MODE),
                optional: Some(false),
                items: None,
            }),
            ..Default::default()
        });
    }
    let runner = format!("{RUNNER_DIR}/assay-runner");
    let init = Container {
        name: INIT_CONTAINER.into(),
        image: Some(template.runner_image.clone()),
        command: Some(vec![
            "cp".into(),
            template.runner_path.clone(),
            runner.clone(),
        ]),
        volume_mounts: Some(vec![mount.clone()]),
        ..Default::default()
    };

    let mut env: Vec<EnvVar> = Vec::new();
    if let Some(c) = &container {
        env.extend(c.env.iter().map(|(k, v)| plain(k, v)));
    }
    env.extend(template.nats.env.iter().map(|(k, v)| plain(k, v)));
    // After the workflow's env: of two entries with one name the later wins.
    if git_secret.is_some() {
        env.push(plain(GIT_CREDENTIALS_ENV, GIT_CREDENTIALS_DIR));
    }
    if template.creds_secret.is_some() {
        env.push(plain(
            "ASSAY_NATS_CREDS",
            &format!("{NATS_CREDS_DIR}/{}", crate::backend::RUNNER_CREDS_FILE),
        ));
    } else if let Some(secret) = &template.nats_secret {
        env.push(from_secret("ASSAY_NATS_USER", secret, "user"));
        env.push(from_secret("ASSAY_NATS_PASSWORD", secret, "password"));
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(job.encode_to_vec());
    env.push(plain("ASSAY_SHARD_JOB", &encoded));

    let resources = container
        .as_ref()
        .and_then(|c| c.resources.as_ref())
        .map(|r| {
            let q = |m: &BTreeMap<String, String>| {
                (!m.is_empty()).then(|| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                        .collect()
                })
            };
            ResourceRequirements {
                requests: q(&r.requests),
                limits: q(&r.limits),
                ..Default::default()
            }
        });
    let main = Container {
        name: RUNNER_CONTAINER.into(),
        image: Some(image),
        image_pull_policy: container.as_ref().and_then(|c| c.image_pull_policy.clone()),
        command: Some(vec![runner]),
        env: Some(env),
        working_dir: container.as_ref().and_then(|c| c.working_dir.clone()),
        resources,
        volume_mounts: Some(main_mounts),
        ..Default::default()
    };

    let avoid: Vec<String> = job
        .workload
        .as_ref()
        .map(|w| w.avoid_nodes.clone())
        .unwrap_or_default();
    let affinity = avoid_nodes(overrides.affinity()?, &avoid);
    let tolerations = overrides.tolerations()?;
    let spec = PodSpec {
        restart_policy: Some("Never".into()),
        init_containers: Some(vec![init]),
        containers: vec![main],
        volumes: Some(volumes),
        security_context: (git_secret.is_some() || template.creds_secret.is_some()).then(|| {
            PodSecurityContext {
                fs_group: Some(GIT_CREDENTIALS_GROUP),
                ..Default::default()
            }
        }),
        node_selector: (!overrides.node_selector.is_empty())
            .then(|| overrides.node_selector.clone()),
        affinity,
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        service_account_name: overrides.service_account_name.clone(),
        priority_class_name: overrides.priority_class_name.clone(),
        active_deadline_seconds: active_deadline_secs,
        ..Default::default()
    };
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&id)),
            namespace: Some(template.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// The Secret named by the job's `content.git.credentials.secretName`, if any.
pub fn git_secret(job: &ShardJob) -> Option<&str> {
    job.git
        .as_ref()
        .map(|g| g.secret_name.as_str())
        .filter(|s| !s.is_empty())
}

fn plain(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
    }
}

/// `affinity` with `kubernetes.io/hostname NotIn nodes` required: added to every required
/// node selector term (terms are ORed, so each must exclude the nodes), or as the one term.
pub fn avoid_nodes(affinity: Option<Affinity>, nodes: &[String]) -> Option<Affinity> {
    if nodes.is_empty() {
        return affinity;
    }
    let not_in = NodeSelectorRequirement {
        key: "kubernetes.io/hostname".into(),
        operator: "NotIn".into(),
        values: Some(nodes.to_vec()),
    };
    let mut affinity = affinity.unwrap_or_default();
    let node = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let required = node
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector {
            node_selector_terms: Vec::new(),
        });
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        term.match_expressions
            .get_or_insert_with(Vec::new)
            .push(not_in.clone());
    }
    Some(affinity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(execution: &str, shard: u32, attempt: u32) -> AttemptId {
        AttemptId {
            execution: execution.into(),
            shard,
            attempt,
        }
    }

    fn dns1123(name: &str) -> bool {
        name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric())
    }

    #[test]
    fn pod_names_are_deterministic_dns_labels() {
        let name = pod_name(&id("01KBX2Y7ZKQ9M3V5T8W1N4P6RS", 3, 2));
        assert_eq!(name, "assay-01kbx2y7zkq9m3v5t8w1n4p6rs-3-2");
        assert_eq!(name, pod_name(&id("01KBX2Y7ZKQ9M3V5T8W1N4P6RS", 3, 2)));
        let long = "X".repeat(100) + "_weird/ID";
        for (e, s, a) in [
            (long.as_str(), u32::MAX, u32::MAX),
            ("--", 0, 1),
            ("é", 1, 1),
        ] {
            let n = pod_name(&id(e, s, a));
            assert!(dns1123(&n), "{n}");
        }
        // Cut names of different executions stay apart.
        let a = pod_name(&id(&("a".repeat(80) + "1"), 1, 1));
        let b = pod_name(&id(&("a".repeat(80) + "2"), 1, 1));
        assert_ne!(a, b);
    }

    #[test]
    fn label_values_fit() {
        assert_eq!(label_value("01KBX2Y7ZK"), "01KBX2Y7ZK");
        let v = label_value(&"é/".repeat(50));
        assert!(
            v.len() <= 63
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "{v}"
        );
    }

    #[test]
    fn avoided_nodes_join_every_required_term() {
        let none = avoid_nodes(None, &["n1".into()]).unwrap();
        let terms = none
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        let e = &terms[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!(
            (e.key.as_str(), e.operator.as_str()),
            ("kubernetes.io/hostname", "NotIn")
        );
        assert_eq!(e.values.as_deref(), Some(&["n1".to_string()][..]));

        let two_terms = Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![
                        NodeSelectorTerm::default(),
                        NodeSelectorTerm::default(),
                    ],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = avoid_nodes(Some(two_terms), &["n1".into()]).unwrap();
        let terms = out
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert!(
            terms
                .iter()
                .all(|t| t.match_expressions.as_ref().unwrap().len() == 1)
        );
        assert_eq!(avoid_nodes(None, &[]), None);
    }
}
