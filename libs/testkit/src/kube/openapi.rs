//! Just enough OpenAPI v3 for kubectl: the `/openapi/v3` index of group versions and, per
//! group version, a document whose PATCH operations declare the `fieldValidation` query
//! parameter. From that kubectl concludes that the server validates fields itself and
//! skips its own schema validation (which would need the full OpenAPI v2 document).

use serde_json::{Map, Value, json};

use super::resources::ResourceType;

/// The index path of a group version: `api/v1` or `apis/<group>/<version>`.
fn gv_path(kind: &ResourceType) -> String {
    if kind.group.is_empty() {
        format!("api/{}", kind.version)
    } else {
        format!("apis/{}/{}", kind.group, kind.version)
    }
}

/// `/openapi/v3`: `{"paths": {"api/v1": {"serverRelativeURL": ...}, ...}}`.
pub fn index(kinds: &[ResourceType]) -> Value {
    let mut paths = Map::new();
    for k in kinds {
        let p = gv_path(k);
        let url = format!("/openapi/v3/{p}?hash=fake");
        paths.insert(p, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<gv path>`: one PATCH operation per kind, `None` if nothing is served there.
pub fn group_version(kinds: &[ResourceType], gv: &str) -> Option<Value> {
    let mut paths = Map::new();
    for k in kinds.iter().filter(|k| gv_path(k) == gv) {
        let collection = if k.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}/{{name}}", k.plural)
        } else {
            format!("/{gv}/{}/{{name}}", k.plural)
        };
        let operation = json!({
            "operationId": format!("patch{}", k.kind),
            "x-kubernetes-group-version-kind": {"group": k.group, "version": k.version, "kind": k.kind},
            "x-kubernetes-action": "patch",
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            ],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(collection, json!({"patch": operation}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-assay-fake"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
