//! The kubernetes backend: each attempt is one Pod (see [`pod`] for its shape), watched
//! until the runner's exit says how it ended or the infrastructure ended it
//! ([`classify`]), and deleted when the attempt is over. A restarted launcher finds the
//! Pod its earlier life started for the same job by its labels instead of starting a
//! second one. [`reaper`] deletes Pods whose execution has ended.
//!
//! A Pod that mounts a `content.git` Secret which does not exist stays Pending for ever,
//! and only the kubelet's `FailedMount` events say why: while such a Pod waits for its
//! volumes, its events are listed every [`EVENTS_EVERY`] (RBAC `list` on events in the
//! shard namespace), and a missing Secret or key ends the attempt, naming the Secret.

pub mod classify;
pub mod pod;
pub mod reaper;

use std::fmt;
use std::time::{Duration, Instant};

use assay_proto::ShardJob;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as KubeEvent, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tracing::{debug, warn};

use super::{Attempt, Backend, Outcome, RetryElsewhere, RunnerNats};
use crate::{Error, Result};
use classify::{PodState, classify, git_mount_failure, unschedulable_reason, waiting_for_volumes};
use pod::{LABEL_ATTEMPT, PodTemplate};

/// Default `--runner-path`: where the runner image keeps `assay-runner`.
pub const DEFAULT_RUNNER_PATH: &str = "/usr/local/bin/assay-runner";
/// Default `--unschedulable-limit`.
pub const DEFAULT_UNSCHEDULABLE_LIMIT: Duration = Duration::from_secs(300);
/// How often a waiting attempt checks how long its Pod has been unschedulable.
const TICK: Duration = Duration::from_secs(1);
/// How often the events of a Pod waiting for its git credentials volume are listed.
pub const EVENTS_EVERY: Duration = Duration::from_secs(2);
/// How long [`Attempt::kill`] waits for a deleted Pod to be gone.
const GONE_WAIT: Duration = Duration::from_secs(30);

/// Settings of the kubernetes backend.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Namespace of the shard Pods.
    pub namespace: String,
    /// Image holding `assay-runner`, run as the init container (and as the main container
    /// of a workflow that names no image).
    pub runner_image: String,
    /// Path of `assay-runner` inside the runner image.
    pub runner_path: String,
    /// Secret with the runners' own NATS user (keys `user`, `password`); `None`: runners
    /// connect without credentials (the launcher's own are never put in a Pod).
    pub runner_nats_secret: Option<String>,
    /// The NATS URL runners in Pods connect to, when it differs from the launcher's own
    /// (a launcher outside the cluster, or one reaching NATS by another name); `None`:
    /// the launcher's.
    pub runner_nats_url: Option<String>,
    /// Pods run at once.
    pub capacity: usize,
    /// Infrastructure retries per shard (OOMKilled, evicted, image pull, node lost,
    /// unschedulable, Pod deleted), each away from the node that failed.
    pub infra_retries: u32,
    /// How long a Pod may stay unschedulable before its attempt ends errored.
    pub unschedulable_limit: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            namespace: "default".into(),
            runner_image: String::new(),
            runner_path: DEFAULT_RUNNER_PATH.into(),
            runner_nats_secret: None,
            runner_nats_url: None,
            capacity: 16,
            infra_retries: 2,
            unschedulable_limit: DEFAULT_UNSCHEDULABLE_LIMIT,
        }
    }
}

/// Runs attempts as Pods through a kube client.
pub struct KubeBackend {
    pods: Api<Pod>,
    events: Api<KubeEvent>,
    secrets: Api<Secret>,
    options: KubeOptions,
}

impl KubeBackend {
    /// A backend creating Pods in `options.namespace` through `client`. Checks the
    /// settings; nothing is created yet.
    pub fn new(client: kube::Client, options: KubeOptions) -> Result<KubeBackend> {
        if options.runner_image.is_empty() {
            return Err(Error::Config(
                "the kubernetes backend needs --runner-image (the image holding assay-runner)"
                    .into(),
            ));
        }
        Ok(KubeBackend {
            pods: Api::namespaced(client.clone(), &options.namespace),
            events: Api::namespaced(client.clone(), &options.namespace),
            secrets: Api::namespaced(client, &options.namespace),
            options,
        })
    }

    /// The Pods API this backend uses.
    pub fn pods(&self) -> &Api<Pod> {
        &self.pods
    }

    fn attempt(
        &self,
        job: &ShardJob,
        name: String,
        preset: Option<(Outcome, bool)>,
    ) -> KubeAttempt {
        KubeAttempt {
            pods: self.pods.clone(),
            events: self.events.clone(),
            creds_secret: None,
            git_secret: pod::git_secret(job).map(str::to_string),
            waiting_for_volumes: false,
            events_listed: None,
            name,
            node: None,
            preset,
            unschedulable: None,
            unschedulable_limit: self.options.unschedulable_limit,
            retry: None,
            adopted_attempt: None,
        }
    }

    fn template(&self, nats: &RunnerNats, creds_secret: Option<String>) -> PodTemplate {
        PodTemplate {
            namespace: self.options.namespace.clone(),
            runner_image: self.options.runner_image.clone(),
            runner_path: self.options.runner_path.clone(),
            nats: pod_nats(nats, self.options.runner_nats_url.as_deref()),
            nats_secret: self.options.runner_nats_secret.clone(),
            creds_secret,
        }
    }

    /// Creates the Secret of an attempt's minted credentials, named and labelled like its
    /// Pod; one that exists already (an earlier life's, for a Pod found running) is kept.
    /// `Err` is the reason the attempt cannot start.
    async fn create_creds_secret(
        &self,
        job: &ShardJob,
        name: &str,
        creds: &super::RunnerCreds,
    ) -> std::result::Result<(), String> {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.options.namespace.clone()),
                labels: Some(pod::labels(&super::AttemptId::of(job))),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            string_data: Some([(super::RUNNER_CREDS_FILE.to_string(), creds.0.to_string())].into()),
            ..Default::default()
        };
        match self.secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
            Err(kube::Error::Api(s)) if s.is_forbidden() => Err(format!(
                "forbidden: the launcher may not create secrets in namespace \"{}\" ({}); operator mode hands each shard Pod its credentials in a Secret: grant its ServiceAccount create, patch and delete on secrets",
                self.options.namespace, s.message
            )),
            Err(e) => Err(format!(
                "cannot create the runner's credentials secret {name}: {e}"
            )),
        }
    }

    /// Makes `pod` the owner of its credentials Secret, so that the cluster deletes the
    /// Secret with the Pod even when no launcher is left to.
    async fn own_creds_secret(&self, name: &str, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let patch = serde_json::json!({"metadata": {"ownerReferences": [{
            "apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid,
        }]}});
        if let Err(e) = self
            .secrets
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            warn!(secret = %name, error = %e, "cannot make the pod own its credentials secret; it is deleted with the attempt");
        }
    }
}

/// Of the launcher's runner settings, what may go into a Pod spec: the URL (`url` when
/// given, `--runner-nats-url`) and whether TLS is required. Credentials and file paths
/// (which would not exist in the Pod) stay out; runners get their own user from
/// `--runner-nats-secret`.
pub fn pod_nats(nats: &RunnerNats, url: Option<&str>) -> RunnerNats {
    let mut env: Vec<(String, String)> = nats
        .env
        .iter()
        .filter(|(k, _)| k == "ASSAY_NATS_URL" || k == "ASSAY_NATS_TLS")
        .filter(|(k, _)| url.is_none() || k != "ASSAY_NATS_URL")
        .cloned()
        .collect();
    if let Some(url) = url {
        env.insert(0, ("ASSAY_NATS_URL".into(), url.to_string()));
    }
    RunnerNats {
        env,
        creds: nats.creds.clone(),
    }
}

/// The message of an API refusal, naming the verb and resource.
fn refused(verb: &str, ns: &str, status: &kube::core::Status) -> String {
    if status.is_forbidden() {
        format!(
            "forbidden: the launcher may not {verb} pods in namespace \"{ns}\" ({}); grant its ServiceAccount {verb} on pods",
            status.message
        )
    } else {
        format!(
            "the API rejected the shard's Pod ({} {}): {}",
            status.code, status.reason, status.message
        )
    }
}

impl Backend for KubeBackend {
    type Attempt = KubeAttempt;

    async fn start(&self, job: &ShardJob, nats: &RunnerNats) -> Result<KubeAttempt> {
        let now = assay_bus::now_ms();
        let deadline = assay_bus::retry::attempt_time_left(job, now)
            .map(|t| t.as_secs() as i64 + 1 + pod::DEADLINE_MARGIN_SECS);
        let creds_secret = nats
            .creds
            .as_ref()
            .map(|_| pod::pod_name(&super::AttemptId::of(job)));
        let spec = match pod::build(job, &self.template(nats, creds_secret.clone()), deadline) {
            Ok(p) => p,
            Err(e) => {
                let reason = format!("the workflow's Pod settings are not valid: {e}");
                return Ok(self.attempt(
                    job,
                    String::new(),
                    Some((Outcome::Infrastructure(reason), false)),
                ));
            }
        };
        let name = spec.metadata.name.clone().unwrap_or_default();
        if let Some(creds) = &nats.creds
            && let Err(reason) = self.create_creds_secret(job, &name, creds).await
        {
            return Ok(self.attempt(job, name, Some((Outcome::Infrastructure(reason), false))));
        }
        let with_secret = |mut a: KubeAttempt| {
            a.creds_secret = creds_secret.as_ref().map(|_| self.secrets.clone());
            a
        };
        match self.pods.create(&PostParams::default(), &spec).await {
            Ok(created) => {
                if creds_secret.is_some() {
                    self.own_creds_secret(&name, &created).await;
                }
                Ok(with_secret(self.attempt(job, name, None)))
            }
            // Created by an earlier life of this launcher: watch that one.
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                Ok(with_secret(self.attempt(job, name, None)))
            }
            Err(kube::Error::Api(s)) if s.is_forbidden() || s.is_invalid() || s.code == 400 => {
                let reason = refused("create", &self.options.namespace, &s);
                Ok(with_secret(self.attempt(
                    job,
                    name,
                    Some((Outcome::Infrastructure(reason), false)),
                )))
            }
            Err(e) => {
                if creds_secret.is_some() {
                    let _ = self.secrets.delete(&name, &DeleteParams::default()).await;
                }
                Err(Error::Kube(format!("cannot create pod {name}: {e}")))
            }
        }
    }

    /// The newest Pod of this shard started for the same job message (attempt label from
    /// the job's published attempt up to this one) by an earlier life of a launcher, and not
    /// being deleted.
    async fn find(&self, job: &ShardJob) -> Result<Option<KubeAttempt>> {
        let lp =
            ListParams::default().labels(&pod::shard_selector(&job.execution_id, job.shard_index));
        let list = match self.pods.list(&lp).await {
            Ok(l) => l,
            Err(kube::Error::Api(s)) if s.is_forbidden() => {
                return Err(Error::Kube(refused("list", &self.options.namespace, &s)));
            }
            Err(e) => return Err(Error::Kube(format!("cannot list pods: {e}"))),
        };
        let first = job.job_attempt.max(1);
        let found = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let attempt: u32 = p
                    .metadata
                    .labels
                    .as_ref()?
                    .get(LABEL_ATTEMPT)?
                    .parse()
                    .ok()?;
                (first..=job.attempt)
                    .contains(&attempt)
                    .then_some((attempt, p))
            })
            .max_by_key(|(a, _)| *a);
        Ok(found.map(|(attempt, p)| {
            let mut a = self.attempt(job, p.metadata.name.unwrap_or_default(), None);
            a.adopted_attempt = Some(attempt);
            a
        }))
    }

    fn capacity(&self) -> usize {
        self.options.capacity.max(1)
    }

    fn infra_retries(&self) -> u32 {
        self.options.infra_retries
    }

    fn outlives_launcher(&self) -> bool {
        true
    }
}

/// One shard Pod, watched.
pub struct KubeAttempt {
    pods: Api<Pod>,
    events: Api<KubeEvent>,
    /// Operator mode: the Secrets API, to delete the attempt's credentials Secret (the
    /// Pod's name) with the attempt.
    creds_secret: Option<Api<Secret>>,
    name: String,
    /// The `content.git` Secret the Pod mounts, if any.
    git_secret: Option<String>,
    /// The Pod is bound and none of its containers is created yet.
    waiting_for_volumes: bool,
    /// When the Pod's events were last listed.
    events_listed: Option<Instant>,
    /// The node it was bound to, once known.
    node: Option<String>,
    /// Decided before any Pod ran (the API refused it): the outcome and whether to retry.
    preset: Option<(Outcome, bool)>,
    /// Since when, and why, the scheduler refuses the Pod.
    unschedulable: Option<(Instant, String)>,
    unschedulable_limit: Duration,
    retry: Option<RetryElsewhere>,
    adopted_attempt: Option<u32>,
}

impl fmt::Display for KubeAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            return f.write_str("pod (not created)");
        }
        write!(
            f,
            "pod {}/{}",
            self.pods.namespace().unwrap_or("default"),
            self.name
        )?;
        if let Some(n) = &self.node {
            write!(f, " on {n}")?;
        }
        Ok(())
    }
}

impl KubeAttempt {
    /// What the Pod's status says; `Some` when the attempt ended.
    fn judge(&mut self, p: &Pod) -> Option<Outcome> {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            self.node = Some(n);
        }
        self.waiting_for_volumes = waiting_for_volumes(p);
        match classify(p) {
            PodState::Going { unschedulable } => {
                self.unschedulable = match (unschedulable, self.unschedulable.take()) {
                    (Some(m), Some((since, _))) => Some((since, m)),
                    (Some(m), None) => Some((Instant::now(), m)),
                    (None, _) => None,
                };
                None
            }
            PodState::Ended { outcome, retry } => {
                if retry {
                    self.retry = Some(RetryElsewhere {
                        avoid_node: self.node.clone(),
                    });
                }
                Some(outcome)
            }
        }
    }

    /// While the Pod waits for its volumes and mounts a git credentials Secret: the
    /// kubelet's `FailedMount` event saying that Secret (or a key of it) does not exist, as
    /// the attempt's end. Not retried: no other node has the Secret either.
    async fn mount_failure(&mut self) -> Option<Outcome> {
        let secret = self.git_secret.clone()?;
        if !self.waiting_for_volumes
            || self
                .events_listed
                .is_some_and(|at| at.elapsed() < EVENTS_EVERY)
        {
            return None;
        }
        self.events_listed = Some(Instant::now());
        let ns = self.pods.namespace().unwrap_or("default").to_string();
        let lp = ListParams::default().fields(&format!(
            "involvedObject.kind=Pod,involvedObject.name={},reason=FailedMount",
            self.name
        ));
        match self.events.list(&lp).await {
            Ok(list) => list.items.iter().find_map(git_mount_failure).map(|message| {
                Outcome::Infrastructure(format!(
                    "the git credentials Secret \"{secret}\" (content.git.credentials.secretName) cannot be mounted into pod {ns}/{}: {message}; create it in namespace \"{ns}\", where the shard Pods run",
                    self.name
                ))
            }),
            Err(kube::Error::Api(s)) if s.is_forbidden() => {
                warn!(pod = %self.name, namespace = %ns, "forbidden: cannot list events in the shard namespace, so a missing git credentials Secret is noticed only at the shard's deadline; grant the launcher's ServiceAccount list on events there ({})", s.message);
                self.git_secret = None;
                None
            }
            Err(e) => {
                debug!(pod = %self.name, error = %e, "cannot list the pod's events; trying again");
                None
            }
        }
    }

    fn gone(&mut self) -> Outcome {
        self.retry = Some(RetryElsewhere {
            avoid_node: self.node.clone(),
        });
        Outcome::Infrastructure(format!(
            "pod {} was deleted before its runner reported",
            self.name
        ))
    }
}

impl Attempt for KubeAttempt {
    async fn wait(&mut self) -> Outcome {
        if let Some((outcome, retry)) = self.preset.clone() {
            if retry {
                self.retry = Some(RetryElsewhere { avoid_node: None });
            }
            return outcome;
        }
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut events = watcher::watcher(self.pods.clone(), config)
            .default_backoff()
            .boxed();
        let mut tick = tokio::time::interval(TICK);
        let mut seen = false;
        loop {
            tokio::select! {
                event = events.next() => match event {
                    None => return Outcome::Infrastructure(format!("the watch of pod {} ended", self.name)),
                    Some(Err(e)) => warn!(pod = %self.name, error = %e, "pod watch failed; retrying"),
                    Some(Ok(Event::Init)) => seen = false,
                    Some(Ok(Event::InitApply(p) | Event::Apply(p))) => {
                        seen = true;
                        if let Some(outcome) = self.judge(&p) {
                            return outcome;
                        }
                    }
                    Some(Ok(Event::InitDone)) => if !seen {
                        return self.gone();
                    },
                    Some(Ok(Event::Delete(_))) => return self.gone(),
                },
                _ = tick.tick() => {
                    if let Some(outcome) = self.mount_failure().await {
                        return outcome;
                    }
                    if let Some((since, message)) = &self.unschedulable
                        && since.elapsed() >= self.unschedulable_limit
                    {
                        let reason = unschedulable_reason(since.elapsed(), message);
                        self.retry = Some(RetryElsewhere { avoid_node: None });
                        return Outcome::Infrastructure(reason);
                    }
                }
            }
        }
    }

    /// Deletes the Pod (no grace: the attempt is over) and waits until it is gone.
    async fn kill(&mut self) {
        if self.name.is_empty() {
            return;
        }
        if let Some(secrets) = &self.creds_secret {
            match secrets.delete(&self.name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => {
                    warn!(secret = %self.name, error = %e, "cannot delete the shard's credentials secret; it goes with its pod")
                }
            }
        }
        let dp = DeleteParams::default().grace_period(0);
        match self.pods.delete(&self.name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => return,
            Err(e) => {
                warn!(pod = %self.name, error = %e, "cannot delete the shard's pod; the reaper will");
                return;
            }
        }
        let until = Instant::now() + GONE_WAIT;
        while Instant::now() < until {
            match self.pods.get_opt(&self.name).await {
                Ok(None) => return,
                Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => {
                    debug!(pod = %self.name, error = %e, "cannot tell whether the pod is gone");
                    return;
                }
            }
        }
    }

    fn retry_elsewhere(&self) -> Option<RetryElsewhere> {
        self.retry.clone()
    }

    fn adopted_attempt(&self) -> Option<u32> {
        self.adopted_attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launchers() -> RunnerNats {
        RunnerNats {
            env: vec![
                ("ASSAY_NATS_URL".into(), "nats://127.0.0.1:4222".into()),
                ("ASSAY_NATS_TLS".into(), "1".into()),
                ("ASSAY_NATS_PASSWORD".into(), "launchers-own".into()),
                ("ASSAY_NATS_CREDS".into(), "/etc/launcher.creds".into()),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_gets_the_url_and_tls_but_never_the_launchers_credentials() {
        assert_eq!(
            pod_nats(&launchers(), None).env,
            vec![
                (
                    "ASSAY_NATS_URL".to_string(),
                    "nats://127.0.0.1:4222".to_string()
                ),
                ("ASSAY_NATS_TLS".to_string(), "1".to_string()),
            ]
        );
    }

    #[test]
    fn runner_nats_url_replaces_the_launchers_url_in_the_pod() {
        assert_eq!(
            pod_nats(&launchers(), Some("nats://assay-nats.assay:4222")).env,
            vec![
                (
                    "ASSAY_NATS_URL".to_string(),
                    "nats://assay-nats.assay:4222".to_string()
                ),
                ("ASSAY_NATS_TLS".to_string(), "1".to_string()),
            ]
        );
    }
}
