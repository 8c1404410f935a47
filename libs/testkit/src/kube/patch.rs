//! Patch bodies: JSON merge patch (RFC 7386, also used for strategic merge and server-side
//! apply, which the fake treats as merges) and JSON patch (RFC 6902).

use serde_json::Value;

/// The kinds of PATCH body, named by their `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`: merged like a merge patch (lists replaced).
    Strategic,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml`: server-side apply, create-or-merge.
    Apply,
}

impl PatchKind {
    /// The kind for a `Content-Type` header value, `None` if unknown.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let base = content_type.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/json-patch+json" => Some(Self::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Applies an RFC 7386 merge patch to `target`: objects merge key by key, `null` removes
/// a key, anything else replaces. Keys starting with `$` (strategic-merge directives) are
/// skipped.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(map) = target else { return };
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            map.remove(key);
        } else {
            merge(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Applies an RFC 6902 JSON patch (`add`, `remove`, `replace`, `test`, `move`, `copy`).
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch must be an array")?;
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("missing path")?;
        let from = op.get("from").and_then(Value::as_str);
        let value = op.get("value").cloned();
        match name {
            "add" => add(target, path, value.ok_or("add needs a value")?)?,
            "remove" => {
                remove(target, path)?;
            }
            "replace" => {
                remove(target, path)?;
                add(target, path, value.ok_or("replace needs a value")?)?;
            }
            "test" => {
                if target.pointer(path) != value.as_ref() {
                    return Err(format!("test failed at {path}"));
                }
            }
            "move" => {
                let v = remove(target, from.ok_or("move needs from")?)?;
                add(target, path, v)?;
            }
            "copy" => {
                let from = from.ok_or("copy needs from")?;
                let v = target.pointer(from).cloned().ok_or("copy: no such path")?;
                add(target, path, v)?;
            }
            other => return Err(format!("unknown JSON patch op {other:?}")),
        }
    }
    Ok(())
}

/// Splits a JSON pointer into its parent pointer and last token (unescaped).
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let i = path
        .rfind('/')
        .ok_or_else(|| format!("bad path {path:?}"))?;
    let last = path[i + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..i], last))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
            Ok(())
        }
        Some(Value::Array(list)) => {
            if last == "-" {
                list.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| format!("bad index in {path}"))?;
            if i > list.len() {
                return Err(format!("index out of range in {path}"));
            }
            list.insert(i, value);
            Ok(())
        }
        _ => Err(format!("no parent for {path}")),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&last).ok_or_else(|| format!("no {path}")),
        Some(Value::Array(list)) => {
            let i: usize = last.parse().map_err(|_| format!("bad index in {path}"))?;
            if i >= list.len() {
                return Err(format!("index out of range in {path}"));
            }
            Ok(list.remove(i))
        }
        _ => Err(format!("no parent for {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_merges_and_removes() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": [1, 2]});
        merge(
            &mut v,
            &json!({"a": {"b": null, "e": 3}, "d": [9], "$patch": "x"}),
        );
        assert_eq!(v, json!({"a": {"c": 2, "e": 3}, "d": [9]}));
    }

    #[test]
    fn json_patch_ops() {
        let mut v = json!({"a": {"b": 1}, "l": [1, 2]});
        json_patch(
            &mut v,
            &json!([
                {"op": "add", "path": "/a/c", "value": 2},
                {"op": "replace", "path": "/a/b", "value": 5},
                {"op": "add", "path": "/l/-", "value": 3},
                {"op": "remove", "path": "/l/0"},
                {"op": "test", "path": "/a/c", "value": 2},
                {"op": "move", "from": "/a/c", "path": "/m"},
            ]),
        )
        .unwrap();
        assert_eq!(v, json!({"a": {"b": 5}, "l": [2, 3], "m": 2}));
        assert!(json_patch(&mut v, &json!([{"op": "test", "path": "/m", "value": 9}])).is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml; charset=utf-8"),
            Some(PatchKind::Apply)
        );
        assert_eq!(PatchKind::from_content_type("text/plain"), None);
    }
}
