//! The catalog flags the scheduler and the trigger-watcher share (flattened into both, same
//! names and environment variables).

use std::path::PathBuf;
use std::str::FromStr;

use crate::{CatalogSource, KubeSource, Scope};

/// `--catalog`: where workflows and triggers come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CatalogKind {
    /// The `--workflows` directory.
    #[default]
    Files,
    /// `TestWorkflow` and `TestTrigger` objects in the cluster.
    Kubernetes,
}

impl FromStr for CatalogKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "files" => Ok(CatalogKind::Files),
            "kubernetes" => Ok(CatalogKind::Kubernetes),
            other => Err(format!(
                "unknown catalog \"{other}\"; accepted: files (the --workflows directory), kubernetes (TestWorkflow and TestTrigger objects in the cluster)"
            )),
        }
    }
}

/// `--catalog`, `--namespace`, `--all-namespaces`, `--kubeconfig`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CatalogArgs {
    /// Where workflows and triggers come from: `files` (the --workflows directory) or
    /// `kubernetes` (TestWorkflow and TestTrigger objects; --workflows is then ignored).
    #[arg(long, env = "ASSAY_CATALOG", default_value = "files", value_parser = CatalogKind::from_str)]
    pub catalog: CatalogKind,
    /// With `--catalog kubernetes`: the namespace to read (empty: all namespaces; not
    /// given: the kubeconfig context's namespace, or in a Pod its own).
    #[arg(long, env = "ASSAY_NAMESPACE")]
    pub namespace: Option<String>,
    /// With `--catalog kubernetes`: read every namespace (needs a ClusterRole).
    #[arg(long, env = "ASSAY_ALL_NAMESPACES", conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// With `--catalog kubernetes`: the kubeconfig file (default: in a Pod its service
    /// account, else $KUBECONFIG or ~/.kube/config).
    #[arg(long, env = "ASSAY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

impl CatalogArgs {
    /// The source these flags choose.
    pub fn source(&self) -> CatalogSource {
        match self.catalog {
            CatalogKind::Files => CatalogSource::Files,
            CatalogKind::Kubernetes => {
                let scope = if self.all_namespaces {
                    Some(Scope::All)
                } else {
                    match self.namespace.as_deref().map(str::trim) {
                        Some("") => Some(Scope::All),
                        Some(ns) => Some(Scope::Namespace(ns.to_string())),
                        None => None,
                    }
                };
                CatalogSource::Kubernetes(KubeSource {
                    scope,
                    kubeconfig: self.kubeconfig.clone(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CatalogArgs,
    }

    fn source(argv: &[&str]) -> Result<CatalogSource, String> {
        let mut all = vec!["x"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all)
            .map(|c| c.args.source())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn files_by_default_and_kubernetes_scopes() {
        assert_eq!(source(&[]).unwrap(), CatalogSource::Files);
        let kube = |scope| {
            CatalogSource::Kubernetes(KubeSource {
                scope,
                kubeconfig: None,
            })
        };
        assert_eq!(source(&["--catalog", "kubernetes"]).unwrap(), kube(None));
        assert_eq!(
            source(&["--catalog", "kubernetes", "--namespace", "shop"]).unwrap(),
            kube(Some(Scope::Namespace("shop".into())))
        );
        assert_eq!(
            source(&["--catalog", "kubernetes", "--namespace", ""]).unwrap(),
            kube(Some(Scope::All))
        );
        assert_eq!(
            source(&["--catalog", "kubernetes", "--all-namespaces"]).unwrap(),
            kube(Some(Scope::All))
        );
        assert!(source(&["--namespace", "a", "--all-namespaces"]).is_err());
    }

    #[test]
    fn an_unknown_catalog_lists_the_accepted_ones() {
        let err = source(&["--catalog", "etcd"]).unwrap_err();
        assert!(err.contains("unknown catalog \"etcd\""), "{err}");
        assert!(err.contains("files") && err.contains("kubernetes"), "{err}");
    }
}
