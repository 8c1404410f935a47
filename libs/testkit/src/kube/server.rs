//! The HTTP side: routes a request to discovery, a collection, an object, a subresource or
//! a watch, checks the test's forbid and reject rules, and answers as the real server does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::patch::{self, PatchKind};
use super::resources::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, ApiResult};
use super::store::{Store, WriteMode};
use super::{Shared, discovery, logs, openapi, watch};

/// The fake's router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/version", get(|| async { json_ok(discovery::version()) }))
        .route("/api", get(core_versions))
        .route("/apis", get(group_list))
        .fallback(resource)
        .with_state(shared)
}

fn json_ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

async fn core_versions(State(shared): State<Arc<Shared>>) -> Response {
    json_ok(discovery::core_versions(&shared.address))
}

async fn group_list(State(shared): State<Arc<Shared>>) -> Response {
    json_ok(discovery::group_list(shared.lock().kinds()))
}

/// A request for something under `/api/v1` or `/apis/<group>/<version>`.
struct Target {
    kind: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

async fn resource(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = Query::<HashMap<String, String>>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default();
    match handle(shared, &method, uri.path(), &query, &headers, &body) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, path = uri.path(), code = e.code, reason = e.reason, "fake kube error");
            e.into_response()
        }
    }
}

fn handle(
    shared: Arc<Shared>,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Response> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["openapi", "v3"] => return Ok(json_ok(openapi::index(shared.lock().kinds()))),
        ["openapi", "v3", gv @ ..] => {
            let gv = gv.join("/");
            return openapi::group_version(shared.lock().kinds(), &gv)
                .map(json_ok)
                .ok_or_else(|| ApiError::not_found("openapi document", &gv));
        }
        ["apis", group] => {
            return discovery::group(shared.lock().kinds(), group)
                .map(json_ok)
                .ok_or_else(|| ApiError::not_found("group", group));
        }
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::not_found("path", path)),
    };
    if rest.is_empty() {
        return discovery::resource_list(shared.lock().kinds(), group, version)
            .map(json_ok)
            .ok_or_else(|| ApiError::not_found("group version", &format!("{group}/{version}")));
    }
    let target = resolve(&shared, group, version, rest)?;
    let verb = verb(method, &target, query)?;
    let resource_name = match &target.subresource {
        Some(s) => format!("{}/{s}", target.kind.plural),
        None => target.kind.plural.clone(),
    };
    {
        let store = shared.lock();
        let rule = (verb.to_string(), group.to_string(), resource_name.clone());
        let any = (verb.to_string(), group.to_string(), "*".to_string());
        if store.forbidden.contains(&rule) || store.forbidden.contains(&any) {
            return Err(ApiError::forbidden(verb, group, &resource_name));
        }
        if verb == "create"
            && let Some(message) = store
                .rejected
                .get(&(group.to_string(), target.kind.plural.clone()))
        {
            return Err(ApiError::invalid(message.clone()));
        }
    }
    let ns = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let dry_run = is_dry_run(query, (*method == Method::DELETE).then_some(body));
    match (verb, target.subresource.as_deref()) {
        ("get", Some("log")) => logs::respond(
            shared,
            &ns,
            &name,
            query.get("container").map(String::as_str),
            flag(query, "follow"),
        ),
        ("get", _) => {
            let store = shared.lock();
            let obj = store
                .get(&target.kind, &ns, &name)
                .ok_or_else(|| ApiError::not_found(&target.kind.qualified(), &name))?;
            Ok(json_ok(obj))
        }
        ("list", _) => list(&shared, &target, query),
        ("watch", _) => Ok(watch::respond(
            shared.clone(),
            watch_request(&target, query)?,
        )),
        ("create", _) => {
            let obj = parse_json(body)?;
            if target.kind.namespaced && target.namespace.is_none() {
                return Err(ApiError::bad_request(
                    "a namespaced kind is created in a namespace",
                ));
            }
            let created = write(&shared, dry_run, |s| {
                s.create(&target.kind, &ns, obj, WriteMode::Main)
            })?;
            Ok((StatusCode::CREATED, axum::Json(created)).into_response())
        }
        ("update", sub) => {
            let obj = parse_json(body)?;
            let mode = write_mode(sub)?;
            let updated = write(&shared, dry_run, |s| {
                s.replace(&target.kind, &ns, &name, obj, mode)
            })?;
            Ok(json_ok(updated))
        }
        ("patch", sub) => {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let kind = PatchKind::from_content_type(content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
            let mode = write_mode(sub)?;
            write(&shared, dry_run, |s| {
                patch_object(s, &target, &ns, &name, kind, mode, body)
            })
        }
        ("delete", None) => Ok(json_ok(write(&shared, dry_run, |s| {
            s.delete(&target.kind, &ns, &name)
        })?)),
        ("deletecollection", None) => {
            write(&shared, dry_run, |s| delete_collection(s, &target, query))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `dryRun=All` in the query, or (deletes) `"dryRun": ["All"]` in the DeleteOptions body.
fn is_dry_run(query: &HashMap<String, String>, delete_options: Option<&[u8]>) -> bool {
    if query.get("dryRun").map(String::as_str) == Some("All") {
        return true;
    }
    delete_options
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|b| b.get("dryRun").cloned())
        .is_some_and(|d| d.as_array().is_some_and(|a| a.iter().any(|v| v == "All")))
}

/// Runs a write on the store, or with `dryRun=All` on a throwaway copy of it, so the
/// answer is what the write would give and nothing is stored or watched.
fn write<T>(
    shared: &Shared,
    dry_run: bool,
    f: impl FnOnce(&mut Store) -> ApiResult<T>,
) -> ApiResult<T> {
    if dry_run {
        let mut copy = shared.lock().dry_run_copy();
        return f(&mut copy);
    }
    f(&mut shared.lock())
}

/// Finds the kind and splits `[namespaces/<ns>/]<plural>[/<name>[/<subresource>]]`.
fn resolve(shared: &Shared, group: &str, version: &str, rest: &[&str]) -> ApiResult<Target> {
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && !(rest.len() == 3 && group.is_empty() && matches!(rest[2], "status" | "finalize"));
    let (namespace, rest) = if namespaced_path {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let plural = rest[0];
    let kind = shared
        .lock()
        .kind_at(group, version, plural)
        .ok_or_else(|| {
            ApiError::not_found("resource", &format!("{plural} in {group}/{version}"))
        })?;
    let subresource = rest.get(2).map(|s| s.to_string());
    match subresource.as_deref() {
        None => {}
        Some("status") if kind.status => {}
        Some("log") if kind.group.is_empty() && kind.plural == "pods" => {}
        Some(other) => return Err(ApiError::not_found("subresource", other)),
    }
    Ok(Target {
        namespace: if kind.namespaced { namespace } else { None },
        name: rest.get(1).map(|s| s.to_string()),
        subresource,
        kind,
    })
}

/// The RBAC verb of a request.
fn verb(
    method: &Method,
    target: &Target,
    query: &HashMap<String, String>,
) -> ApiResult<&'static str> {
    let named = target.name.is_some();
    Ok(match *method {
        Method::GET if named => "get",
        Method::GET if flag(query, "watch") => "watch",
        Method::GET => "list",
        Method::POST if !named => "create",
        Method::PUT if named => "update",
        Method::PATCH if named => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    })
}

fn flag(query: &HashMap<String, String>, key: &str) -> bool {
    matches!(query.get(key).map(String::as_str), Some("true" | "1"))
}

fn write_mode(subresource: Option<&str>) -> ApiResult<WriteMode> {
    match subresource {
        None => Ok(WriteMode::Main),
        Some("status") => Ok(WriteMode::Status),
        Some(_) => Err(ApiError::method_not_allowed()),
    }
}

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

fn selectors(query: &HashMap<String, String>) -> ApiResult<(LabelSelector, FieldSelector)> {
    let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn resource_version(query: &HashMap<String, String>) -> ApiResult<Option<u64>> {
    match query.get("resourceVersion").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}"))),
    }
}

/// A list, `<Kind>List` at the store's current resourceVersion. An `Exact` list from a
/// resourceVersion older than the retained history is 410 Gone.
fn list(shared: &Shared, target: &Target, query: &HashMap<String, String>) -> ApiResult<Response> {
    let (labels, fields) = selectors(query)?;
    let store = shared.lock();
    if let Some(rv) = resource_version(query)?.filter(|rv| *rv > 0)
        && query.get("resourceVersionMatch").map(String::as_str) == Some("Exact")
    {
        store.check_not_expired(rv)?;
    }
    let items: Vec<Value> = store
        .list(&target.kind, target.namespace.as_deref())
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .collect();
    Ok(json_ok(json!({
        "kind": format!("{}List", target.kind.kind),
        "apiVersion": target.kind.api_version(),
        "metadata": {"resourceVersion": store.resource_version().to_string()},
        "items": items,
    })))
}

fn watch_request(
    target: &Target,
    query: &HashMap<String, String>,
) -> ApiResult<watch::WatchRequest> {
    let (labels, fields) = selectors(query)?;
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    Ok(watch::WatchRequest {
        kind: target.kind.clone(),
        namespace: target.namespace.clone(),
        labels,
        fields,
        resource_version: resource_version(query)?,
        bookmarks: flag(query, "allowWatchBookmarks"),
        send_initial_events: flag(query, "sendInitialEvents"),
        timeout,
    })
}

/// PATCH: merge, strategic (as merge), JSON patch, or server-side apply, which creates
/// the object when it does not exist (201) and merges into it otherwise.
fn patch_object(
    store: &mut Store,
    target: &Target,
    ns: &str,
    name: &str,
    kind: PatchKind,
    mode: WriteMode,
    body: &[u8],
) -> ApiResult<Response> {
    let patch: Value = match kind {
        PatchKind::Apply => serde_norway::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the apply body is not valid YAML: {e}")))?,
        _ => parse_json(body)?,
    };
    if kind != PatchKind::Json && !patch.is_object() {
        return Err(ApiError::bad_request(
            "a merge patch or apply body must be an object",
        ));
    }
    let Some(mut obj) = store.get(&target.kind, ns, name) else {
        if kind == PatchKind::Apply && mode == WriteMode::Main {
            let mut obj = patch;
            match obj.get_mut("metadata") {
                Some(Value::Object(meta)) => {
                    meta.insert("name".into(), json!(name));
                }
                None => obj["metadata"] = json!({"name": name}),
                Some(_) => return Err(ApiError::bad_request("metadata must be an object")),
            }
            let created = store.create(&target.kind, ns, obj, WriteMode::Main)?;
            return Ok((StatusCode::CREATED, axum::Json(created)).into_response());
        }
        return Err(ApiError::not_found(&target.kind.qualified(), name));
    };
    match kind {
        PatchKind::Json => patch::json_patch(&mut obj, &patch).map_err(ApiError::invalid)?,
        _ => patch::merge(&mut obj, &patch),
    }
    let updated = store.replace(&target.kind, ns, name, obj, mode)?;
    Ok(json_ok(updated))
}

/// DELETE on a collection: removes the objects the selectors match, answers with them.
fn delete_collection(
    store: &mut Store,
    target: &Target,
    query: &HashMap<String, String>,
) -> ApiResult<Response> {
    let (labels, fields) = selectors(query)?;
    let mut deleted = Vec::new();
    for obj in store.list(&target.kind, target.namespace.as_deref()) {
        if !(labels.matches(&obj) && fields.matches(&obj)) {
            continue;
        }
        let text = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("");
        let (ns, name) = (text("/metadata/namespace"), text("/metadata/name"));
        deleted.push(store.delete(&target.kind, ns, name)?);
    }
    Ok(json_ok(json!({
        "kind": format!("{}List", target.kind.kind),
        "apiVersion": target.kind.api_version(),
        "metadata": {"resourceVersion": store.resource_version().to_string()},
        "items": deleted,
    })))
}
