//! Which resources to watch, from the triggers with `on.kubernetes`: one watch per
//! resource type, over the namespaces its triggers name (or all), and a clear error for
//! each trigger that cannot be watched while the others keep working.

use std::collections::{BTreeMap, BTreeSet};

use assay_spec::{KubernetesMatch, ResourceType};

/// One resource type to list and watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub resource: ResourceType,
    /// None: every namespace (one cluster-wide watch); else one watch per namespace.
    pub namespaces: Option<BTreeSet<String>>,
    /// Watch `PartialObjectMetadata` only (Secrets: their data never reaches the watcher).
    pub metadata_only: bool,
    /// The triggers this watch serves, sorted.
    pub triggers: Vec<String>,
}

/// The watches the triggers need, and the triggers that need something impossible.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchPlan {
    /// Sorted by group, version and kind.
    pub watches: Vec<Watch>,
    /// (trigger, why): the trigger's status condition; nothing is watched for it.
    pub errors: Vec<(String, String)>,
}

/// Groups `(trigger name, on.kubernetes)` pairs by resource type. Validation refuses the
/// same problems at load; this guards the watcher when a custom resource read from the
/// cluster skipped it.
pub fn plan<'a>(triggers: impl IntoIterator<Item = (&'a str, &'a KubernetesMatch)>) -> WatchPlan {
    let mut by_type: BTreeMap<(String, String, String), Watch> = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, m) in triggers {
        let resource = match m.resource() {
            Ok(r) if !r.supports(m.event) => {
                errors.push((
                    name.to_string(),
                    format!("event `{}` does not happen to a {}", m.event, r.kind),
                ));
                continue;
            }
            Ok(r) => r,
            Err(e) => {
                errors.push((name.to_string(), e));
                continue;
            }
        };
        let wanted: Option<BTreeSet<String>> = match (&m.namespace, m.namespaces.as_slice()) {
            (Some(ns), _) => Some(BTreeSet::from([ns.clone()])),
            (None, []) => None,
            (None, list) => Some(list.iter().cloned().collect()),
        };
        let key = (
            resource.group.clone(),
            resource.version.clone(),
            resource.kind.clone(),
        );
        let metadata_only = resource.builtin.is_some_and(|b| b.metadata_only);
        let watch = by_type.entry(key).or_insert_with(|| Watch {
            resource,
            namespaces: Some(BTreeSet::new()),
            metadata_only,
            triggers: Vec::new(),
        });
        watch.namespaces = match (watch.namespaces.take(), wanted) {
            (Some(mut have), Some(more)) => {
                have.extend(more);
                Some(have)
            }
            _ => None,
        };
        watch.triggers.push(name.to_string());
    }
    let mut watches: Vec<Watch> = by_type.into_values().collect();
    for w in &mut watches {
        w.triggers.sort();
    }
    WatchPlan { watches, errors }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(block: serde_json::Value) -> KubernetesMatch {
        serde_json::from_value(block).unwrap()
    }

    #[test]
    fn one_watch_per_type_over_the_union_of_namespaces() {
        let a = m(json!({"kind": "Deployment", "namespace": "shop", "event": "rollout-complete"}));
        let b = m(json!({"kind": "Deployment", "namespaces": ["pay", "shop"], "event": "scaled"}));
        let c = m(json!({"kind": "ConfigMap", "event": "modified"}));
        let d = m(json!({"kind": "ConfigMap", "namespace": "x", "event": "deleted"}));
        let s = m(json!({"kind": "Secret", "namespace": "shop", "event": "modified"}));
        let p = plan([("a", &a), ("b", &b), ("c", &c), ("d", &d), ("s", &s)]);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        // (type, namespaces, metadata only, triggers)
        type Row = (String, Option<Vec<String>>, bool, Vec<String>);
        let summary: Vec<Row> = p
            .watches
            .iter()
            .map(|w| {
                (
                    format!("{} {}", w.resource.api_version(), w.resource.kind),
                    w.namespaces.as_ref().map(|n| n.iter().cloned().collect()),
                    w.metadata_only,
                    w.triggers.clone(),
                )
            })
            .collect();
        let s = |x: &str| x.to_string();
        assert_eq!(
            summary,
            vec![
                (s("v1 ConfigMap"), None, false, vec![s("c"), s("d")]),
                (s("v1 Secret"), Some(vec![s("shop")]), true, vec![s("s")]),
                (
                    s("apps/v1 Deployment"),
                    Some(vec![s("pay"), s("shop")]),
                    false,
                    vec![s("a"), s("b")]
                ),
            ]
        );
    }

    #[test]
    fn a_bad_trigger_gets_its_error_and_the_others_their_watches() {
        let bad = m(json!({"kind": "Widget", "event": "modified"}));
        let wrong = m(json!({"kind": "Service", "event": "rollout-complete"}));
        let good = m(
            json!({"kind": "Widget", "group": "example.com", "version": "v1", "event": "modified"}),
        );
        let p = plan([("bad", &bad), ("wrong", &wrong), ("good", &good)]);
        assert_eq!(p.watches.len(), 1);
        assert_eq!(p.watches[0].resource.api_version(), "example.com/v1");
        assert_eq!(p.errors.len(), 2);
        assert!(
            p.errors[0]
                .1
                .starts_with("unknown kind `Widget` (known: ConfigMap"),
            "{:?}",
            p.errors
        );
        assert_eq!(
            p.errors[1],
            (
                "wrong".to_string(),
                "event `rollout-complete` does not happen to a Service".to_string()
            )
        );
    }
}
