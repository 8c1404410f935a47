//! Field conditions' JSON paths ([`assay_spec::FieldPath`]) evaluated on objects, and the
//! text their values are compared as.

use assay_spec::{FieldPath, PathSeg};
use serde_json::Value;

/// The value at `path` in `obj`; None when a step is missing.
pub fn lookup<'a>(obj: &'a Value, path: &FieldPath) -> Option<&'a Value> {
    path.0.iter().try_fold(obj, |v, seg| match seg {
        PathSeg::Key(k) => v.get(k.as_str()),
        PathSeg::Index(i) => v.get(*i),
    })
}

/// The value as conditions compare it: strings as they are, numbers and booleans as JSON
/// writes them, objects and lists as compact JSON, `null` as no value (Kubernetes leaves
/// out empty fields, so `null` and missing mean the same).
pub fn render(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The text at `path` in `obj`, if the object exists and has a value there.
pub fn text_at(obj: Option<&Value>, path: &FieldPath) -> Option<String> {
    obj.and_then(|o| lookup(o, path)).and_then(render)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(obj: &Value, path: &str) -> Option<String> {
        text_at(Some(obj), &FieldPath::parse(path).unwrap())
    }

    #[test]
    fn paths_reach_keys_indexes_and_quoted_keys() {
        let obj = json!({
            "metadata": {"labels": {"app": "pay", "app.kubernetes.io/version": "v2"}},
            "spec": {"replicas": 3, "paused": false, "template": {"spec": {"containers": [{"image": "a:1"}, {"image": "b:2"}]}}},
            "status": {"conditions": null, "selector": {"a": "b"}}
        });
        assert_eq!(at(&obj, ".spec.replicas").as_deref(), Some("3"));
        assert_eq!(at(&obj, ".spec.paused").as_deref(), Some("false"));
        assert_eq!(at(&obj, ".metadata.labels.app").as_deref(), Some("pay"));
        assert_eq!(
            at(&obj, ".metadata.labels[\"app.kubernetes.io/version\"]").as_deref(),
            Some("v2")
        );
        assert_eq!(
            at(&obj, ".spec.template.spec.containers[1].image").as_deref(),
            Some("b:2")
        );
        assert_eq!(
            at(&obj, ".status.selector").as_deref(),
            Some("{\"a\":\"b\"}")
        );
        // Missing steps, indexes past the end, null and indexing a map: no value.
        assert_eq!(at(&obj, ".spec.nope"), None);
        assert_eq!(at(&obj, ".spec.template.spec.containers[5].image"), None);
        assert_eq!(at(&obj, ".status.conditions"), None);
        assert_eq!(at(&obj, ".spec[0]"), None);
        assert_eq!(text_at(None, &FieldPath::parse(".spec").unwrap()), None);
    }
}
