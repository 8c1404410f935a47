//! Kubernetes triggers (issue 12, part 3): the `TestTrigger`s with `on.kubernetes`, fired
//! by what happens in the cluster.
//!
//! The pure decisions, with time as an argument:
//! - [`object`]: facts read from an object: identity, revision, container images and
//!   digests, whether its rollout is complete;
//! - [`changes`]: the events one change yields (`created`, `modified`, `deleted`,
//!   `rollout-complete`, `image-changed`, `scaled`), each with the part of its dedup key
//!   that tells one occurrence from the next;
//! - [`path`]: field conditions' JSON paths evaluated on an object;
//! - [`fire`]: for one trigger, the `TriggerEvent`s a change fires, with their dedup keys;
//! - [`settle`]: the settle window, a debouncer with explicit time;
//! - [`supersede`]: which executions a new revision of an object cancels;
//! - [`watches`]: which resources to watch for which triggers, and the triggers that
//!   cannot be watched (each with its error, the others unaffected).
//!
//! The loop that feeds them, started by [`Cluster::run`] when the trigger-watcher runs with
//! `--watch-cluster`:
//! - `runner`: re-plans the watches from the catalog every second (a reload adds and
//!   stops watches; an edited trigger takes effect at its next change);
//! - `stream`: one `kube::runtime::watcher` per resource type and namespace (discovery
//!   first; bookmarks; resume from the last resourceVersion; relist on 410 Gone, diffed
//!   against what it knew so nothing fires twice), turning changes into candidates;
//! - `dispatch`: settle windows on tokio time, supersede, the claim of each dedup key in
//!   the [`assay_bus::streams::KV_KUBE_FIRED`] bucket (a KV create, which fails when the key
//!   exists; the claim holds the event), then the publish on
//!   `assay.v1.events.kubernetes`, then the key marked published; at start, the events of
//!   claims a dead watcher never published go out again;
//! - `started`: the executions each trigger started per object and revision, followed
//!   from the scheduler's plan records and the aggregator's execution updates, for
//!   `supersede: true`;
//! - `status`: what the loop knows, for logs and tests ([`ClusterStatus`]);
//! - [`report`]: with `--catalog kubernetes`, each trigger's `Watching` condition and
//!   Warning Events on its `TestTrigger` object.

pub mod changes;
mod dispatch;
pub mod fire;
pub mod object;
pub mod path;
pub mod report;
mod runner;
pub mod settle;
mod started;
mod status;
mod stream;
pub mod supersede;
pub mod watches;

use std::time::Duration;

pub use runner::{Cluster, kube_triggers, warn_if_inert};
pub use status::ClusterStatus;

/// [`ClusterOptions::fired_ttl`] by default: a week, as long as the events stream keeps
/// events.
pub const DEFAULT_FIRED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// [`ClusterOptions::watch_timeout`] by default (kube's own default).
pub const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(290);

/// The cluster watch: off unless `enabled` (`--watch-cluster`).
#[derive(Clone)]
pub struct ClusterOptions {
    /// Watch the cluster for the triggers with `on.kubernetes`. Off: such triggers are
    /// inert and the watcher says so at start and at each reload, naming the flag.
    pub enabled: bool,
    /// How long the key of a fired event is remembered (`--kube-fired-ttl`): within it, the
    /// same occurrence never fires again, whatever restarts or relists.
    pub fired_ttl: Duration,
    /// The client to use; `None`: `kube::Client::try_default()` (KUBECONFIG, else the
    /// in-cluster service account).
    pub client: Option<kube::Client>,
    /// Each watch request ends after this and resumes from its last resourceVersion.
    pub watch_timeout: Duration,
    /// What the loop reports (errors per trigger, lists done, events fired).
    pub status: ClusterStatus,
    /// Fault injection for tests only: after claiming a key, stop as if the process died
    /// (no publish, the key not given back).
    #[doc(hidden)]
    pub fault_stop_after_claim: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            enabled: false,
            fired_ttl: DEFAULT_FIRED_TTL,
            client: None,
            watch_timeout: DEFAULT_WATCH_TIMEOUT,
            status: ClusterStatus::default(),
            fault_stop_after_claim: false,
        }
    }
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("enabled", &self.enabled)
            .field("fired_ttl", &self.fired_ttl)
            .field("client", &self.client.as_ref().map(|_| "given"))
            .field("watch_timeout", &self.watch_timeout)
            .finish()
    }
}

/// The flag that turns the cluster watch on, for messages.
pub const ENABLE_HINT: &str =
    "start the trigger-watcher with --watch-cluster (ASSAY_TRIGGER_WATCHER__WATCH_CLUSTER=true)";
