//! The HTTP front door: generic events and direct run requests.

use std::collections::{BTreeMap, HashMap};

use assay_bus::{Bus, subjects};
use assay_proto::{RunRequest, TriggerEvent};
use assay_spec::SharedCatalog;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tracing::warn;

#[derive(Clone)]
struct AppState {
    bus: Bus,
    catalog: SharedCatalog,
}

/// Body of `POST /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// Defaults to `http`.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(rename = "type")]
    pub r#type: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
}

/// Parses and checks the body of `POST /v1/events`; the error is the 400 response's message.
/// Pure, so that it can be fuzzed (`assay-fuzzing`).
pub fn parse_event_body(body: &[u8]) -> Result<EventBody, String> {
    let body: EventBody = serde_json::from_slice(body).map_err(|e| {
        format!(
            "invalid event body at line {} column {}: {e}; expected {{\"type\": \"...\", \"source\"?: \"...\", \"labels\"?: {{...}}, \"payload\"?: ...}}",
            e.line(),
            e.column()
        )
    })?;
    if body.r#type.trim().is_empty() {
        return Err("event \"type\" must not be empty".to_string());
    }
    Ok(body)
}

/// Body of `POST /v1/workflows/{name}/run` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RunBody {
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub execution_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_id: Option<String>,
    idempotency_key: String,
}

#[derive(Serialize)]
struct Problem {
    error: String,
}

fn problem(status: StatusCode, error: impl Into<String>) -> Response {
    (
        status,
        Json(Problem {
            error: error.into(),
        }),
    )
        .into_response()
}

/// `Idempotency-Key` header, or a fresh id.
fn idempotency_key(headers: &HeaderMap) -> String {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| ulid::Ulid::new().to_string())
}

/// The HTTP routes, for `run` and for tests.
pub fn router(bus: Bus, catalog: SharedCatalog) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/events", post(post_event))
        .route("/v1/workflows/{name}/run", post(post_run))
        .with_state(AppState { bus, catalog })
}

async fn post_event(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let body = match parse_event_body(&body) {
        Ok(b) => b,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e),
    };
    let key = idempotency_key(&headers);
    let source = body.source.unwrap_or_else(|| "http".to_string());
    let header = assay_bus::header("trigger-watcher", key.clone(), traceparent(&headers));
    let event_id = header.event_id.clone();
    let event = TriggerEvent {
        header: Some(header),
        source: source.clone(),
        r#type: body.r#type,
        labels: body.labels.into_iter().collect::<HashMap<_, _>>(),
        payload: body
            .payload
            .map(|p| p.to_string().into_bytes())
            .unwrap_or_default(),
        trigger: String::new(),
    };
    match app.bus.publish(subjects::event(&source), &event).await {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(Accepted {
                event_id: Some(event_id),
                execution_id: None,
                idempotency_key: key,
            }),
        )
            .into_response(),
        Err(e) => {
            warn!(error = %e, "cannot publish event");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}; retry with the same Idempotency-Key"),
            )
        }
    }
}

async fn post_run(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let body: RunBody = if body.is_empty() {
        RunBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "invalid run body at line {} column {}: {e}; expected {{\"config\"?: {{...}}, \"executionId\"?: \"...\"}}",
                        e.line(),
                        e.column()
                    ),
                );
            }
        }
    };
    // Refuse what cannot run now, with the reason, rather than accepting it silently.
    let catalog = app.catalog.get();
    let workflow = match catalog.workflow(&name) {
        Ok(w) => w,
        Err(e) => return problem(StatusCode::NOT_FOUND, e.to_string()),
    };
    if let Err(e) = workflow.resolve_config(&body.config) {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
    }
    let execution_id = match body.execution_id {
        Some(id) if ulid::Ulid::from_string(&id).is_err() => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("executionId \"{id}\" is not a ULID"),
            );
        }
        Some(id) => id,
        None => ulid::Ulid::new().to_string(),
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| format!("http/{k}"))
        .unwrap_or_else(|| format!("run/{execution_id}"));
    let request = RunRequest {
        header: Some(assay_bus::header(
            "trigger-watcher",
            key.clone(),
            traceparent(&headers),
        )),
        workflow: name,
        config: body.config.into_iter().collect(),
        requested_by: "http".into(),
        execution_id: execution_id.clone(),
        ..Default::default()
    };
    match app
        .bus
        .publish(subjects::RUN_REQUESTED.to_string(), &request)
        .await
    {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(Accepted {
                event_id: None,
                execution_id: Some(execution_id),
                idempotency_key: key,
            }),
        )
            .into_response(),
        Err(e) => {
            warn!(error = %e, "cannot publish run request");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}; retry with the same Idempotency-Key"),
            )
        }
    }
}

fn traceparent(headers: &HeaderMap) -> Option<&str> {
    headers.get("traceparent").and_then(|v| v.to_str().ok())
}
