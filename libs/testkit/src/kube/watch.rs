//! `?watch=true`: newline-delimited JSON events after a resourceVersion, with bookmarks,
//! 410 Gone as an ERROR event, `timeoutSeconds` and selectors.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::Shared;
use super::resources::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Event, EventType};

/// What one watch request asks for.
pub struct WatchRequest {
    /// The kind watched.
    pub kind: ResourceType,
    /// Only this namespace, or all.
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `resourceVersion`: events after it; `None` (or "0") starts with the current objects
    /// as ADDED events.
    pub resource_version: Option<u64>,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `timeoutSeconds`: the stream ends after this.
    pub timeout: Option<Duration>,
    /// `sendInitialEvents=true` (streaming lists): the current objects as ADDED, then a
    /// BOOKMARK annotated `k8s.io/initial-events-end`, whatever the resourceVersion.
    pub send_initial_events: bool,
}

impl WatchRequest {
    fn wants(&self, object: &Value) -> bool {
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        self.namespace
            .as_deref()
            .is_none_or(|want| ns == Some(want))
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The line this watch sends for an event, if any. A modification is judged on the
    /// object before and after it: leaving the selection is DELETED, entering it ADDED.
    fn render(&self, e: &Event) -> Option<String> {
        if e.resource != self.kind.qualified() {
            return None;
        }
        let now = self.wants(&e.object);
        let kind = match (e.kind, &e.previous) {
            (EventType::Modified, Some(before)) => match (self.wants(before), now) {
                (true, true) => EventType::Modified,
                (false, true) => EventType::Added,
                (true, false) => EventType::Deleted,
                (false, false) => return None,
            },
            (kind, _) if now => kind,
            _ => return None,
        };
        Some(line(kind.as_str(), &e.object))
    }
}

/// Counts a watch as open while it lives.
struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A BOOKMARK's object: the kind, the resourceVersion and optional annotations.
fn bookmark(kind: &ResourceType, rv: u64, annotations: Option<Value>) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(a) = annotations {
        metadata["annotations"] = a;
    }
    json!({"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": metadata})
}

/// A watch event line: `{"type": ..., "object": ...}` and a newline.
fn line(kind: &str, object: &Value) -> String {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    s
}

/// Starts a watch: the response streams until the client goes away or the timeout ends it.
pub fn respond(shared: Arc<Shared>, req: WatchRequest) -> Response {
    let (tx, rx) = mpsc::channel::<Result<String, std::convert::Infallible>>(256);
    let start = {
        let store = shared.lock();
        match req
            .resource_version
            .filter(|rv| *rv > 0 && !req.send_initial_events)
        {
            None => {
                let rv = store.resource_version();
                let mut initial: Vec<String> = store
                    .list(&req.kind, req.namespace.as_deref())
                    .iter()
                    .filter(|o| req.wants(o))
                    .map(|o| line("ADDED", o))
                    .collect();
                if req.send_initial_events {
                    let end = json!({"k8s.io/initial-events-end": "true"});
                    initial.push(line("BOOKMARK", &bookmark(&req.kind, rv, Some(end))));
                }
                store.watch_from(rv).map(|(_, rx)| (initial, rx, rv))
            }
            Some(rv) => store.watch_from(rv).map(|(past, rx)| {
                let lines = past.iter().filter_map(|e| req.render(e)).collect();
                let last = past.last().map_or(rv, |e| e.rv);
                (lines, rx, last)
            }),
        }
    };
    let interval = shared.bookmark_interval;
    shared.open_watches.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let shared_for_stop = shared.clone();
        let _open = OpenWatch(shared);
        let (initial, events, rv) = match start {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Ok(line("ERROR", &e.to_status()))).await;
                return;
            }
        };
        for l in initial {
            if tx.send(Ok(l)).await.is_err() {
                return;
            }
        }
        let deadline = req.timeout.map(|t| tokio::time::Instant::now() + t);
        tokio::select! {
            _ = stream(tx, events, req, rv, interval, deadline) => {}
            _ = shared_for_stop.stopped() => {}
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .unwrap_or_default()
}

/// Forwards matching events until the client leaves, the deadline passes or the watcher
/// falls too far behind (then an ERROR 410, as the real server does).
async fn stream(
    tx: mpsc::Sender<Result<String, std::convert::Infallible>>,
    mut events: broadcast::Receiver<Arc<Event>>,
    req: WatchRequest,
    mut rv: u64,
    interval: Duration,
    deadline: Option<tokio::time::Instant>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let end = tokio::time::sleep_until(deadline.unwrap_or(far));
    tokio::pin!(end);
    loop {
        let out = tokio::select! {
            _ = &mut end => return,
            _ = tx.closed() => return,
            _ = ticker.tick(), if req.bookmarks => {
                Some(line("BOOKMARK", &bookmark(&req.kind, rv, None)))
            }
            got = events.recv() => match got {
                Ok(e) => {
                    if e.rv <= rv {
                        continue;
                    }
                    rv = e.rv;
                    req.render(&e)
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let status = ApiError::expired(rv, rv + 1).to_status();
                    let _ = tx.send(Ok(line("ERROR", &status))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if let Some(l) = out
            && tx.send(Ok(l)).await.is_err()
        {
            return;
        }
    }
}
