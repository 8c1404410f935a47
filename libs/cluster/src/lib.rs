//! The catalog from the cluster: `TestWorkflow` and `TestTrigger` objects read through kube
//! watches, checked by the validation definition files get, and their status written back.
//!
//! - [`client`]: a kube client from the environment (in-cluster or `KUBECONFIG`) or from a
//!   kubeconfig file;
//! - [`ClusterCatalog`]: watches both kinds in one namespace or all and keeps a
//!   [`SharedCatalog`] of the valid ones current; with a [`StatusWriter`], each object gets
//!   a `Valid` condition and an invalid one a Warning Event;
//! - [`StatusWriter`]: merge-patches the `status` subresource (`Valid`, and the last
//!   execution of a workflow with its counts) from a background task, never blocking its
//!   callers;
//! - [`CatalogArgs`] / [`open`]: the `--catalog files|kubernetes` flags both services share,
//!   and what they start.

pub mod args;
mod catalog;
mod judge;
mod status;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use assay_spec::SharedCatalog;
use tokio_util::sync::CancellationToken;

pub use args::{CatalogArgs, CatalogKind};
pub use catalog::ClusterCatalog;
pub use judge::{Kind, ObjKey};
pub use status::{ExecutionReport, StatusWriter, TriggerObject};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A definitions directory that cannot be loaded (files mode).
    #[error("{0}")]
    Spec(#[from] assay_spec::Error),
    /// No usable kube configuration.
    #[error("{0}")]
    Config(String),
    /// The API server refused a call with 403.
    #[error(
        "forbidden: {verb} {resource} in {scope}: the service account needs {needs} on it ({message})"
    )]
    Forbidden {
        verb: String,
        resource: String,
        scope: String,
        needs: &'static str,
        message: String,
    },
    /// The CRD is not installed (404 on a list).
    #[error(
        "{resource} is not served by the API server ({message}); install the CRDs: kubectl apply --server-side -k deploy/k8s/crds/"
    )]
    NotInstalled { resource: String, message: String },
    /// Any other failure of a Kubernetes API call.
    #[error("{verb} {resource} in {scope}: {message}")]
    Api {
        verb: String,
        resource: String,
        scope: String,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failed call of `verb` on `resource` in `scope`, named: a 403 says which permission
    /// is missing, a 404 on a list that the CRD is not installed.
    pub fn from_kube(verb: &str, resource: &str, scope: &str, e: &kube::Error) -> Error {
        let status = match e {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        };
        let message = match e {
            kube::Error::Api(s) => s.message.clone(),
            other => other.to_string(),
        };
        match status {
            Some(403) => Error::Forbidden {
                verb: verb.to_string(),
                resource: resource.to_string(),
                scope: scope.to_string(),
                needs: needs(verb),
                message,
            },
            Some(404) if verb == "list" || verb == "watch" => Error::NotInstalled {
                resource: resource.to_string(),
                message,
            },
            _ => Error::Api {
                verb: verb.to_string(),
                resource: resource.to_string(),
                scope: scope.to_string(),
                message,
            },
        }
    }

    /// Whether retrying cannot help until someone changes the cluster (RBAC, CRDs) or the
    /// configuration.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::Spec(_)
                | Error::Config(_)
                | Error::Forbidden { .. }
                | Error::NotInstalled { .. }
        )
    }
}

/// The verbs a role must grant for a call of `verb` to work.
fn needs(verb: &str) -> &'static str {
    match verb {
        "get" | "list" | "watch" => "get/list/watch",
        "patch" | "update" => "update/patch",
        "create" => "create",
        "delete" => "delete",
        _ => "that verb",
    }
}

/// Which objects a [`ClusterCatalog`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    All,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Namespace(ns) => write!(f, "namespace {ns}"),
            Scope::All => f.write_str("all namespaces"),
        }
    }
}

/// Where a service's workflows and triggers come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CatalogSource {
    /// The definitions directory (`--workflows`), reloaded when it changes.
    #[default]
    Files,
    /// `TestWorkflow` and `TestTrigger` objects in the cluster.
    Kubernetes(KubeSource),
}

/// The cluster [`CatalogSource::Kubernetes`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeSource {
    /// The namespace or all of them; `None`: the client's default namespace (the
    /// kubeconfig context's, or in a Pod its service account's).
    pub scope: Option<Scope>,
    /// A kubeconfig file; `None`: the environment (in-cluster, else `KUBECONFIG` or
    /// `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
}

/// A kube client for `kubeconfig`, or from the environment (`kube::Client::try_default`:
/// in-cluster service account, else `KUBECONFIG` / `~/.kube/config`).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        None => kube::Config::infer().await.map_err(|e| {
            Error::Config(format!(
                "no Kubernetes configuration: {e}; run in a Pod with a service account, set KUBECONFIG, or pass --kubeconfig FILE"
            ))
        })?,
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                Error::Config(format!("cannot read kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| {
                    Error::Config(format!("kubeconfig {} is unusable: {e}", path.display()))
                })?
        }
    };
    kube::Client::try_from(config)
        .map_err(|e| Error::Config(format!("cannot build a Kubernetes client: {e}")))
}

/// A boxed future that keeps a catalog current until shutdown.
pub type Keeper = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A service's catalog, opened from its source.
pub struct Opened {
    /// What the service reads.
    pub catalog: SharedCatalog,
    /// Writes status back (Kubernetes with `report`); `None` for files.
    pub status: Option<StatusWriter>,
    /// Keeps `catalog` current until shutdown: the directory poll, or the watches.
    pub keeper: Keeper,
}

/// What a service writes back to the catalog's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report<'a> {
    /// Nothing: it only reads.
    Nothing,
    /// Each object's `Valid` condition and Events, and what the service records (the
    /// scheduler: last executions); the component is named on Events.
    Definitions(&'a str),
    /// Only what the service records on its [`StatusWriter`] (the trigger-watcher:
    /// `Watching`); `Valid` stays the scheduler's.
    Own(&'a str),
}

/// Opens the catalog of `source`: loads `dir` (files; polled every two seconds), or starts
/// a [`ClusterCatalog`] and waits for its first complete view. `reporter`: the component
/// named on Events, and whether this service writes status (`None`: it only reads); see
/// [`open_with`].
pub async fn open(
    source: &CatalogSource,
    dir: &Path,
    reporter: Option<&str>,
    shutdown: &CancellationToken,
) -> Result<Opened> {
    let report = match reporter {
        Some(component) => Report::Definitions(component),
        None => Report::Nothing,
    };
    open_with(source, dir, report, shutdown).await
}

/// [`open`], saying what the service writes back.
pub async fn open_with(
    source: &CatalogSource,
    dir: &Path,
    report: Report<'_>,
    shutdown: &CancellationToken,
) -> Result<Opened> {
    match source {
        CatalogSource::Files => {
            let catalog = SharedCatalog::load(dir)?;
            let keeper = catalog
                .clone()
                .watch(Duration::from_secs(2), shutdown.clone(), |_| {});
            Ok(Opened {
                catalog,
                status: None,
                keeper: Box::pin(keeper),
            })
        }
        CatalogSource::Kubernetes(k) => {
            let client = client(k.kubeconfig.as_deref()).await?;
            let scope = k
                .scope
                .clone()
                .unwrap_or_else(|| Scope::Namespace(client.default_namespace().to_string()));
            let status = match report {
                Report::Nothing => None,
                Report::Definitions(c) => Some(StatusWriter::new(client.clone(), c)),
                Report::Own(c) => Some(StatusWriter::without_validity(client.clone(), c)),
            };
            let (cluster, keeper) =
                ClusterCatalog::start(client, scope, status.clone(), shutdown.clone()).await?;
            Ok(Opened {
                catalog: cluster.shared(),
                status,
                keeper: Box::pin(keeper),
            })
        }
    }
}
