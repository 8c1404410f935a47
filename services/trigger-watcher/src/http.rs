//! The HTTP front door: generic events, direct run requests, signed webhooks, metrics.
//!
//! `/healthz` (alive) and `/readyz` (NATS connected, streams and buckets set up; 503 with the
//! reason otherwise) come from [`assay_telemetry::health`].
//!
//! Every route but `/healthz`, `/readyz` and the webhooks (which carry their own signatures) needs the
//! bearer token when one is configured, and a client certificate when `--tls-client-ca` is
//! set (probes and webhook senders have none, so the TLS handshake itself does not ask).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use assay_auth::{Bearer, ClientCert, Secret};
use assay_bus::{Bus, kv_key, subjects};
use assay_proto::{RunRequest, TriggerEvent};
use assay_spec::SharedCatalog;
use async_nats::jetstream::kv;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::WebhookOptions;
use crate::metrics::Metrics;
use crate::webhook::{self, Parsed, Provider, SignatureError, WebhookEvent};

/// What the HTTP handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub bus: Bus,
    pub catalog: SharedCatalog,
    pub bearer: Bearer,
    /// The protected routes need a verified client certificate ([`ClientCert`]).
    pub client_cert_required: bool,
    pub metrics: Metrics,
    pub webhooks: Arc<WebhookOptions>,
    /// The replay-window bucket ([`assay_bus::streams::KV_WEBHOOK_DELIVERIES`]).
    pub deliveries: kv::Store,
    pub limits: BodyLimits,
    /// Requests handled at once (`Options::max_in_flight`); more are answered 503 at once.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// A request not answered within this (NATS unreachable, say) is answered 503.
    pub request_timeout: std::time::Duration,
}

/// Largest request bodies accepted, in bytes; a larger one is answered 413 in JSON.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `POST /v1/events` and `POST /v1/workflows/{name}/run` (`--max-body-bytes`).
    pub api: usize,
    /// `POST /v1/webhooks/*` (`--max-webhook-bytes`).
    pub webhook: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            api: crate::DEFAULT_MAX_BODY_BYTES,
            webhook: crate::DEFAULT_MAX_WEBHOOK_BYTES,
        }
    }
}

/// The body of a request to `route`, or the answer when it could not be read: 413 in JSON
/// (counted) when it is over the route's limit, naming the limit and the flag that sets
/// it, 400 otherwise.
fn read_body(
    app: &AppState,
    route: &'static str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Box<Response>> {
    let rejection = match body {
        Ok(b) => return Ok(b),
        Err(r) => r,
    };
    if rejection.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {}", rejection.body_text()),
        )));
    }
    let (limit, flag) = if route.starts_with("/v1/webhooks/") {
        (app.limits.webhook, "--max-webhook-bytes")
    } else {
        (app.limits.api, "--max-body-bytes")
    };
    app.metrics.body_too_large(route);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let size = match declared {
        Some(n) => format!("body is {n} bytes"),
        None => "body is larger".to_string(),
    };
    warn!(
        route,
        limit, declared, "request body over the limit refused"
    );
    Err(Box::new(problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "{size}, over the limit of {limit} bytes ({flag}); send a smaller body or raise {flag}"
        ),
    )))
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
    /// Kept in the execution's provenance (e.g. `branch`, `sha`, `repository` from a CI
    /// job), as `assay run --label` sets them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
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
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/events", post(post_event))
        .route("/v1/workflows/{name}/run", post(post_run))
        .route("/metrics", get(get_metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_bearer,
        ))
        .layer(DefaultBodyLimit::max(state.limits.api));
    let webhooks = Router::new()
        .route("/v1/webhooks/github", post(post_github))
        .route("/v1/webhooks/gitlab", post(post_gitlab))
        .route("/v1/webhooks/generic", post(post_generic))
        .layer(DefaultBodyLimit::max(state.limits.webhook));
    Router::new()
        .merge(assay_telemetry::health::router(state.bus.health().clone()))
        .merge(protected)
        .merge(webhooks)
        .layer(middleware::from_fn_with_state(state.clone(), bounded))
        .with_state(state)
}

/// Every request is bounded: at most `in_flight` at once (more get 503 at once rather than
/// queueing without end), and each answered within `request_timeout` (503 when not: a
/// publish that waits for an unreachable NATS must not hold the client or a slot forever).
/// Both are counted in `assay_trigger_watcher_http_overloaded_total{reason}`.
async fn bounded(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(_slot) = app.in_flight.clone().try_acquire_owned() else {
        app.metrics.overloaded("in_flight");
        warn!(path = %request.uri().path(), "request refused: too many in flight");
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight (--max-in-flight); retry shortly".to_string(),
        );
    };
    let path = request.uri().path().to_string();
    match tokio::time::timeout(app.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            app.metrics.overloaded("timeout");
            warn!(%path, timeout = ?app.request_timeout, "request not answered in time");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the request was not handled within {}s (is NATS reachable?); retry it with the same Idempotency-Key",
                    app.request_timeout.as_secs_f64()
                ),
            )
        }
    }
}

/// 401 unless the request carries the configured bearer token and, with `--tls-client-ca`,
/// came over a connection that presented a client certificate signed by that CA.
async fn require_bearer(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let cert = request
        .extensions()
        .get::<ClientCert>()
        .copied()
        .unwrap_or_default();
    if app.client_cert_required && !cert.verified {
        app.metrics.unauthorized("client_certificate");
        warn!(path = %request.uri().path(), "request refused: no client certificate");
        return problem(
            StatusCode::UNAUTHORIZED,
            "this route needs a client certificate signed by the server's --tls-client-ca; \
             present one (assay: --cert-file and --key-file)",
        );
    }
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match app.bearer.check(value) {
        Ok(()) => next.run(request).await,
        Err(denied) => {
            app.metrics.unauthorized(denied.reason());
            warn!(path = %request.uri().path(), reason = denied.reason(), "request refused: bearer token");
            let mut response = problem(StatusCode::UNAUTHORIZED, denied.to_string());
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

async fn get_metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// Answer to a webhook that was verified.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookAnswer {
    published: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    r#type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

fn not_published(status: StatusCode, reason: String) -> Response {
    (
        status,
        Json(WebhookAnswer {
            published: false,
            event_id: None,
            idempotency_key: None,
            r#type: None,
            reason: Some(reason),
        }),
    )
        .into_response()
}

async fn post_github(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match read_body(&app, "/v1/webhooks/github", &headers, body) {
        Ok(b) => b,
        Err(answer) => return *answer,
    };
    let secret = app.webhooks.github_secret.clone();
    receive(
        &app,
        Provider::GitHub,
        secret.as_ref(),
        &headers,
        |s| webhook::verify_github(s, &headers, &body),
        || webhook::parse_github(&headers, &body),
    )
    .await
}

async fn post_gitlab(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match read_body(&app, "/v1/webhooks/gitlab", &headers, body) {
        Ok(b) => b,
        Err(answer) => return *answer,
    };
    let secret = app.webhooks.gitlab_token.clone();
    receive(
        &app,
        Provider::GitLab,
        secret.as_ref(),
        &headers,
        |s| webhook::verify_gitlab(s, &headers),
        || webhook::parse_gitlab(&headers, &body),
    )
    .await
}

async fn post_generic(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match read_body(&app, "/v1/webhooks/generic", &headers, body) {
        Ok(b) => b,
        Err(answer) => return *answer,
    };
    let hooks = app.webhooks.clone();
    let secret = hooks.generic_secret.clone();
    let signature = headers
        .get(hooks.generic_signature_header.as_str())
        .map(HeaderValue::as_bytes);
    receive(
        &app,
        Provider::Generic,
        secret.as_ref(),
        &headers,
        |s| webhook::verify_hmac(s, &hooks.generic_signature_header, signature, &body, true),
        || webhook::parse_generic(&headers, &body, &hooks.generic_delivery_header),
    )
    .await
}

/// Verify, parse, claim the delivery id, publish: the one path of every provider.
async fn receive(
    app: &AppState,
    provider: Provider,
    secret: Option<&Secret>,
    headers: &HeaderMap,
    verify: impl FnOnce(&Secret) -> Result<(), SignatureError>,
    parse: impl FnOnce() -> Result<Parsed, webhook::ParseError>,
) -> Response {
    let name = provider.as_str();
    let Some(secret) = secret else {
        app.metrics.delivery(name, "disabled");
        return problem(
            StatusCode::NOT_FOUND,
            format!(
                "{name} webhooks are off: no secret is configured; {}",
                WebhookOptions::how_to_enable(provider)
            ),
        );
    };
    if let Err(e) = verify(secret) {
        app.metrics.rejection(name, e.reason());
        app.metrics.delivery(name, "rejected");
        warn!(provider = name, reason = e.reason(), "webhook refused: {e}");
        return problem(e.status(), format!("{name} webhook refused: {e}"));
    }
    let event = match parse() {
        Ok(Parsed::Event(ev)) => ev,
        Ok(Parsed::Ignored { event, reason }) => {
            app.metrics.delivery(name, "ignored");
            info!(provider = name, event, "webhook ignored: {reason}");
            return not_published(StatusCode::OK, format!("nothing published: {reason}"));
        }
        Err(e) => {
            app.metrics.delivery(name, "invalid");
            return problem(e.status(), format!("{name} webhook: {e}"));
        }
    };
    publish_once(app, &event, traceparent(headers)).await
}

/// Claims the delivery id in the replay-window bucket, then publishes; a delivery already
/// claimed within the window is acknowledged and not published again.
async fn publish_once(app: &AppState, ev: &WebhookEvent, parent: Option<&str>) -> Response {
    let name = ev.provider.as_str();
    let key = ev.key();
    let claim = kv_key(&key);
    match app
        .deliveries
        .create(&claim, assay_bus::now_ms().to_string().into())
        .await
    {
        Ok(_) => {}
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            app.metrics.delivery(name, "replayed");
            info!(provider = name, delivery = %ev.delivery, "webhook delivery seen before; not published again");
            return not_published(
                StatusCode::OK,
                format!(
                    "delivery {} was already received within the replay window ({}); not published again",
                    ev.delivery,
                    assay_spec::format_duration(app.webhooks.replay_window)
                ),
            );
        }
        Err(e) => {
            app.metrics.delivery(name, "failed");
            warn!(error = %e, "cannot record webhook delivery");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot record the delivery id: {e}; deliver it again later"),
            );
        }
    }
    let event = ev.to_trigger_event(parent);
    let event_id = event
        .header
        .as_ref()
        .map(|h| h.event_id.clone())
        .unwrap_or_default();
    match app.bus.publish(subjects::event(&ev.source), &event).await {
        Ok(_) => {
            app.metrics.delivery(name, "published");
            info!(
                provider = name,
                delivery = %ev.delivery,
                repository = %ev.repository,
                r#type = %ev.r#type,
                sha = %ev.sha,
                "webhook published"
            );
            (
                StatusCode::ACCEPTED,
                Json(WebhookAnswer {
                    published: true,
                    event_id: Some(event_id),
                    idempotency_key: Some(key),
                    r#type: Some(ev.r#type.clone()),
                    reason: None,
                }),
            )
                .into_response()
        }
        Err(e) => {
            // Release the claim so the provider's retry is not taken for a replay.
            if let Err(d) = app.deliveries.delete(&claim).await {
                warn!(error = %d, "cannot release webhook delivery claim");
            }
            app.metrics.delivery(name, "failed");
            warn!(error = %e, "cannot publish webhook event");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}; deliver it again"),
            )
        }
    }
}

async fn post_event(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match read_body(&app, "/v1/events", &headers, body) {
        Ok(b) => b,
        Err(answer) => return *answer,
    };
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
        ..Default::default()
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
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match read_body(&app, "/v1/workflows/{name}/run", &headers, body) {
        Ok(b) => b,
        Err(answer) => return *answer,
    };
    let body: RunBody = if body.is_empty() {
        RunBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "invalid run body at line {} column {}: {e}; expected {{\"config\"?: {{...}}, \"executionId\"?: \"...\", \"labels\"?: {{...}}}}",
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
        labels: body.labels.into_iter().collect(),
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
