//! Pod logs: text a test appends per container, served on `pods/<name>/log`, with
//! `follow=true` streaming what is appended later.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Shared;
use super::status::{ApiError, ApiResult};

/// One container's log: its text so far and whether it has ended.
#[derive(Debug, Default, Clone)]
pub struct LogBuffer {
    /// Everything written so far.
    pub text: String,
    /// No more text will come: a follower's stream ends.
    pub closed: bool,
}

/// Logs by (namespace, pod, container).
pub type Logs = HashMap<(String, String, String), LogBuffer>;

/// Which container a log request means: the `container` parameter, else the Pod's only
/// (or first) container, else the first container a test wrote a log for.
fn container_of(shared: &Shared, pod: &Value, ns: &str, name: &str, asked: Option<&str>) -> String {
    if let Some(c) = asked {
        return c.to_string();
    }
    if let Some(c) = pod
        .pointer("/spec/containers/0/name")
        .and_then(Value::as_str)
    {
        return c.to_string();
    }
    let logs = shared.logs();
    let mut known: Vec<&String> = logs
        .keys()
        .filter(|(n, p, _)| n == ns && p == name)
        .map(|(_, _, c)| c)
        .collect();
    known.sort();
    known.first().map(|c| c.to_string()).unwrap_or_default()
}

/// How often a follower re-checks whether its Pod still exists.
const POD_CHECK: Duration = Duration::from_millis(200);

/// Serves `GET .../pods/<name>/log`: the text, or with `follow` a stream that ends when
/// the log is closed or the Pod is gone.
pub fn respond(
    shared: Arc<Shared>,
    ns: &str,
    name: &str,
    container: Option<&str>,
    follow: bool,
) -> ApiResult<Response> {
    let pod = {
        let store = shared.lock();
        let kind = store
            .kind("", "pods")
            .ok_or_else(|| ApiError::not_found("pods", name))?;
        store
            .get(&kind, ns, name)
            .ok_or_else(|| ApiError::not_found("pods", name))?
    };
    let container = container_of(&shared, &pod, ns, name, container);
    let key = (ns.to_string(), name.to_string(), container);
    let text_response = |text: String| {
        Response::builder()
            .header("content-type", "text/plain")
            .body(Body::from(text))
            .unwrap_or_default()
    };
    if !follow {
        let text = shared
            .logs()
            .get(&key)
            .map(|b| b.text.clone())
            .unwrap_or_default();
        return Ok(text_response(text));
    }
    let (tx, rx) = mpsc::channel::<Result<String, std::convert::Infallible>>(64);
    let mut changed = shared.log_changes.subscribe();
    tokio::spawn(async move {
        let mut sent = 0usize;
        loop {
            let (chunk, closed) = {
                let logs = shared.logs();
                let buf = logs.get(&key).cloned().unwrap_or_default();
                (buf.text.get(sent..).unwrap_or("").to_string(), buf.closed)
            };
            sent += chunk.len();
            if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            if closed || !shared.pod_exists(&key.0, &key.1) {
                return;
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(POD_CHECK) => {}
                _ = tx.closed() => return,
                _ = shared.stopped() => return,
            }
        }
    });
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .unwrap_or_default())
}

/// Appends text to a container's log and wakes its followers.
pub fn append(shared: &Shared, ns: &str, pod: &str, container: &str, text: &str) {
    shared
        .logs()
        .entry((ns.into(), pod.into(), container.into()))
        .or_default()
        .text
        .push_str(text);
    shared.log_changes.send_modify(|n| *n += 1);
}

/// Marks a container's log as ended and wakes its followers.
pub fn close(shared: &Shared, ns: &str, pod: &str, container: &str) {
    shared
        .logs()
        .entry((ns.into(), pod.into(), container.into()))
        .or_default()
        .closed = true;
    shared.log_changes.send_modify(|n| *n += 1);
}
