//! Matching the cluster watcher's events: label requirements, field conditions and a
//! whole `on.kubernetes` block, reading only the event's labels.

use super::{
    FieldCondition, FieldPath, KUBERNETES_SOURCE, KubernetesMatch, LabelRequirement,
    SelectorOperator, kube_labels,
};
use crate::filter::GlobList;
use crate::trigger::EventView;

impl LabelRequirement {
    /// Whether an object with `value` for this requirement's key (None: no such label)
    /// satisfies it.
    pub fn holds(&self, value: Option<&str>) -> bool {
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.iter().any(|w| w == v)),
            SelectorOperator::NotIn => !value.is_some_and(|v| self.values.iter().any(|w| w == v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

impl FieldCondition {
    /// Whether the condition holds for the values at its path before (`old`) and after
    /// (`new`) the change, and if not, why. A condition naming no operator (refused by
    /// validation) holds; one naming several (also refused) needs all of them.
    pub fn check(&self, old: Option<&str>, new: Option<&str>) -> Result<(), String> {
        let show =
            |v: Option<&str>| v.map_or_else(|| "missing".to_string(), |v| format!("\"{v}\""));
        let p = &self.path;
        if let Some(want) = self.equals.as_deref()
            && new != Some(want)
        {
            return Err(format!("{p}: {} is not \"{want}\"", show(new)));
        }
        match self.changed {
            Some(true) if old == new => {
                return Err(format!("{p}: unchanged ({})", show(new)));
            }
            Some(false) if old != new => {
                return Err(format!("{p}: changed from {} to {}", show(old), show(new)));
            }
            _ => {}
        }
        if let Some(want) = self.changed_to.as_deref()
            && (old == Some(want) || new != Some(want))
        {
            return Err(format!(
                "{p}: did not change to \"{want}\" (from {} to {})",
                show(old),
                show(new)
            ));
        }
        if let Some(want) = self.changed_from.as_deref()
            && (old != Some(want) || new == Some(want))
        {
            return Err(format!(
                "{p}: did not change from \"{want}\" (from {} to {})",
                show(old),
                show(new)
            ));
        }
        Ok(())
    }
}

impl KubernetesMatch {
    /// Whether an event of the cluster watcher fires this trigger, and if not, the first
    /// thing that differs: source, type, kind and apiVersion, namespace, name, selector,
    /// match expressions, then conditions, reading only [`kube_labels`].
    pub fn explain(&self, ev: &EventView<'_>) -> Result<(), String> {
        use kube_labels::*;
        let label = |k: &str| ev.labels.get(k).map(String::as_str);
        if ev.source != KUBERNETES_SOURCE {
            return Err(format!("not a kubernetes event (source \"{}\")", ev.source));
        }
        if ev.r#type != self.event.as_str() {
            return Err(format!("type \"{}\" is not \"{}\"", ev.r#type, self.event));
        }
        let resource = self.resource()?;
        let kind = label(KIND).unwrap_or("");
        let api = label(API_VERSION).unwrap_or("");
        if kind != resource.kind || api != resource.api_version() {
            return Err(format!(
                "object {api} {kind} is not {} {}",
                resource.api_version(),
                resource.kind
            ));
        }
        let ns = label(NAMESPACE);
        if !self.watches_namespace(ns) {
            let want = match &self.namespace {
                Some(n) => format!("\"{n}\""),
                None => format!("one of [{}]", self.namespaces.join(", ")),
            };
            return Err(format!(
                "namespace {} is not {want}",
                ns.map_or_else(|| "(none)".to_string(), |n| format!("\"{n}\""))
            ));
        }
        if let Some(pattern) = &self.name {
            let name = label(NAME).unwrap_or("");
            let glob = GlobList::new(std::slice::from_ref(pattern)).map_err(|(_, e)| e)?;
            if !glob.matches(name) {
                return Err(format!("name \"{name}\" does not match \"{pattern}\""));
            }
        }
        let object_label = |k: &str| label(&format!("{LABEL_PREFIX}{k}"));
        for (k, want) in &self.selector {
            match object_label(k) {
                Some(got) if got == want => {}
                Some(got) => return Err(format!("selector {k}: \"{got}\" is not \"{want}\"")),
                None => return Err(format!("selector {k}: the object has no such label")),
            }
        }
        for r in &self.match_expressions {
            if !r.holds(object_label(&r.key)) {
                return Err(format!(
                    "matchExpressions {} {:?} [{}]: the object's label is {}",
                    r.key,
                    r.operator,
                    r.values.join(", "),
                    object_label(&r.key).map_or_else(|| "absent".into(), |v| format!("\"{v}\""))
                ));
            }
        }
        for c in &self.conditions {
            let path = FieldPath::parse(&c.path)?.to_string();
            let new = label(&format!("{FIELD_PREFIX}{path}"));
            let old = label(&format!("{PREVIOUS_PREFIX}{path}"));
            c.check(old, new)?;
        }
        Ok(())
    }
}
