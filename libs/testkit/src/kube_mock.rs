//! Exact-request tests of Kubernetes API calls: a `kube::Client` over a `tower-test` mock
//! service that serves a list of expected requests, for the calls whose exact shape
//! matters (RBAC-sensitive verbs, patch bodies, watch parameters). [`crate::kube::FakeKube`]
//! checks behaviour; this checks the wire.
//!
//! Each [`Expect`] names a method and a path and says what the query (as decoded pairs, in
//! any order), some headers and the JSON body must be, and what to answer. An incoming
//! request takes the first unserved expectation with its method and path: requests to one
//! path are checked in order, requests to different paths may interleave (a catalog lists
//! two kinds at once). A request nobody expected, or one that differs, is a failure with a
//! diff; [`MockKube::served`] waits (bounded) until every expectation was served and panics
//! with the failures, the requests seen and what never came.
//!
//! In expected JSON, the string `"{{any}}"` matches any value and `"{{time}}"` any RFC 3339
//! timestamp (for fields the code fills with the clock).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tower_test::mock;

/// How long [`MockKube::served`] waits for the expected requests.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(15);

/// Matches any value in expected JSON.
pub const ANY: &str = "{{any}}";
/// Matches any RFC 3339 timestamp in expected JSON.
pub const TIME: &str = "{{time}}";

/// What the body of a request must be.
#[derive(Debug, Clone)]
enum BodyCheck {
    /// No body.
    Empty,
    /// This JSON, exactly (with placeholders).
    Json(Value),
    /// At least these fields (objects may have more; arrays are compared whole).
    Subset(Value),
}

/// What the mock answers.
#[derive(Debug, Clone)]
enum Reply {
    /// A status code and a JSON body.
    Json(u16, Value),
    /// A watch response: these events, one JSON document a line, then the end of the
    /// response (the watcher resumes with a new request).
    Events(Vec<Value>),
    /// No answer until the mock is dropped (a watch that stays open).
    Hold,
}

/// One expected request and its answer.
#[derive(Debug, Clone)]
pub struct Expect {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: BodyCheck,
    reply: Reply,
    optional: bool,
}

fn pairs(query: &str) -> Vec<(String, String)> {
    let query = query.strip_prefix('?').unwrap_or(query);
    let mut p: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    p.sort();
    p
}

impl Expect {
    /// `method` on `path` (no query), with no query, no body, answered `200 {}`.
    pub fn new(method: &str, path: &str) -> Expect {
        Expect {
            method: method.to_string(),
            path: path.to_string(),
            query: Vec::new(),
            headers: Vec::new(),
            body: BodyCheck::Empty,
            reply: Reply::Json(200, json!({})),
            optional: false,
        }
    }

    pub fn get(path: &str) -> Expect {
        Expect::new("GET", path)
    }

    pub fn post(path: &str) -> Expect {
        Expect::new("POST", path)
    }

    pub fn patch(path: &str) -> Expect {
        Expect::new("PATCH", path)
    }

    pub fn delete(path: &str) -> Expect {
        Expect::new("DELETE", path)
    }

    /// The query, as it would be written (`a=1&b=x%3Dy`); compared as decoded pairs in any
    /// order, all of them.
    pub fn query(mut self, query: &str) -> Expect {
        self.query = pairs(query);
        self
    }

    /// A header the request must carry with exactly this value.
    pub fn header(mut self, name: &str, value: &str) -> Expect {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// The JSON body, exactly (with [`ANY`] and [`TIME`] placeholders).
    pub fn json(mut self, body: Value) -> Expect {
        self.body = BodyCheck::Json(body);
        self
    }

    /// A JSON body with at least these fields.
    pub fn json_subset(mut self, body: Value) -> Expect {
        self.body = BodyCheck::Subset(body);
        self
    }

    /// Answers `code` with `body`.
    pub fn reply(mut self, code: u16, body: Value) -> Expect {
        self.reply = Reply::Json(code, body);
        self
    }

    /// Answers with a `meta/v1` Status of `code`, `reason` and `message`.
    pub fn reply_status(self, code: u16, reason: &str, message: &str) -> Expect {
        self.reply(code, status(code, reason, message))
    }

    /// Answers a watch with these events (`{"type": ..., "object": ...}`), then ends it.
    pub fn reply_events(mut self, events: Vec<Value>) -> Expect {
        self.reply = Reply::Events(events);
        self
    }

    /// Never answers (a watch left open until the test ends).
    pub fn hold(mut self) -> Expect {
        self.reply = Reply::Hold;
        self
    }

    /// Checked when it comes, but [`MockKube::served`] does not wait for it (a request that
    /// races with an error ending the caller).
    pub fn optional(mut self) -> Expect {
        self.optional = true;
        self
    }

    fn label(&self) -> String {
        let q: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{} {}?{}", self.method, self.path, q.join("&"))
    }
}

/// A `meta/v1` Status as the API server sends it with an error.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// A list of `kind` (`PodList`) at `resource_version`.
pub fn list(api_version: &str, kind: &str, resource_version: &str, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"resourceVersion": resource_version},
        "items": items,
    })
}

#[derive(Default)]
struct State {
    /// Expectations not served yet, in the order given.
    pending: Vec<Expect>,
    failures: Vec<String>,
    /// Every request seen, as `METHOD path?query body`.
    seen: Vec<String>,
    held: Vec<mock::SendResponse<Response<Body>>>,
}

/// The mock API server behind a `kube::Client`.
pub struct MockKube {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for MockKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MockKube {
    /// A client whose default namespace is `namespace`, and the mock serving it. Call
    /// inside a tokio runtime.
    pub fn start(namespace: &str) -> (kube::Client, MockKube) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let state: Arc<Mutex<State>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let task = tokio::spawn(serve(handle, state.clone(), changed.clone()));
        let client = kube::Client::new(service, namespace);
        (
            client,
            MockKube {
                state,
                changed,
                task,
            },
        )
    }

    /// Adds expectations after those given before.
    pub fn expect(&self, expectations: impl IntoIterator<Item = Expect>) {
        lock(&self.state).pending.extend(expectations);
    }

    /// Waits until every expectation (but the optional ones) was served; panics at the first failure, or after
    /// [`SERVE_TIMEOUT`] naming what never came.
    pub async fn served(&self) {
        let deadline = tokio::time::Instant::now() + SERVE_TIMEOUT;
        loop {
            let notified = self.changed.notified();
            {
                let state = lock(&self.state);
                if !state.failures.is_empty() {
                    panic!(
                        "{}",
                        report(&state, "requests differ from the expected ones")
                    );
                }
                if state.pending.iter().all(|e| e.optional) {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let state = lock(&self.state);
                panic!(
                    "{}",
                    report(
                        &state,
                        &format!("expected requests never came within {SERVE_TIMEOUT:?}")
                    )
                );
            }
        }
    }

    /// Awaits `call` (code under test), bounded by [`SERVE_TIMEOUT`]: a call that never
    /// returns panics with the requests seen, so a test never hangs.
    pub async fn bounded<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        match tokio::time::timeout(SERVE_TIMEOUT, call).await {
            Ok(v) => v,
            Err(_) => {
                let state = lock(&self.state);
                panic!(
                    "{}",
                    report(
                        &state,
                        &format!("the call under test did not return within {SERVE_TIMEOUT:?}")
                    )
                );
            }
        }
    }

    /// The requests seen so far (`METHOD path?query body`).
    pub fn seen(&self) -> Vec<String> {
        lock(&self.state).seen.clone()
    }

    /// Checks that every expectation was served and nothing else came, and stops the mock
    /// (held watches end).
    pub async fn finish(self) {
        self.served().await;
        let state = lock(&self.state);
        if !state.failures.is_empty() {
            panic!(
                "{}",
                report(&state, "requests differ from the expected ones")
            );
        }
    }
}

fn report(state: &State, headline: &str) -> String {
    let mut out = format!("mock kube: {headline}\n");
    for f in &state.failures {
        out.push_str(&format!("--- {f}\n"));
    }
    out.push_str("requests seen:\n");
    for s in &state.seen {
        out.push_str(&format!("  {s}\n"));
    }
    out.push_str("not served:\n");
    for e in &state.pending {
        out.push_str(&format!("  {}\n", e.label()));
    }
    out
}

async fn serve(
    handle: mock::Handle<Request<Body>, Response<Body>>,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
) {
    let mut handle = std::pin::pin!(handle);
    while let Some((request, send)) = handle.next_request().await {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let method = parts.method.to_string();
        let path = parts.uri.path().to_string();
        let raw_query = parts.uri.query().unwrap_or("").to_string();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let line = format!(
            "{method} {path}?{raw_query} {}",
            text.chars().take(3000).collect::<String>()
        );
        let reply = {
            let mut st = lock(&state);
            st.seen.push(line.clone());
            let at = st
                .pending
                .iter()
                .position(|e| e.method == method && e.path == path);
            match at {
                None => {
                    st.failures.push(format!("unexpected request: {line}"));
                    Reply::Json(
                        500,
                        status(500, "InternalError", "mock: unexpected request"),
                    )
                }
                Some(i) => {
                    let e = st.pending.remove(i);
                    let mut problems = Vec::new();
                    let query = pairs(&raw_query);
                    if query != e.query {
                        problems.push(format!(
                            "query: expected {:?}\n           got {:?}",
                            e.query, query
                        ));
                    }
                    for (name, value) in &e.headers {
                        let got = parts.headers.get(name).and_then(|v| v.to_str().ok());
                        if got != Some(value.as_str()) {
                            problems
                                .push(format!("header {name}: expected {value:?}, got {got:?}"));
                        }
                    }
                    match &e.body {
                        BodyCheck::Empty => {
                            if !bytes.is_empty() {
                                problems.push(format!("body: expected none, got {text}"));
                            }
                        }
                        BodyCheck::Json(want) | BodyCheck::Subset(want) => {
                            let subset = matches!(e.body, BodyCheck::Subset(_));
                            match serde_json::from_slice::<Value>(&bytes) {
                                Err(err) => {
                                    problems.push(format!("body is not JSON ({err}): {text}"))
                                }
                                Ok(got) => {
                                    let mut d = Vec::new();
                                    diff(want, &got, "", subset, &mut d);
                                    if !d.is_empty() {
                                        problems.push(format!(
                                            "body differs:\n    {}\n  expected: {}\n  got:      {}",
                                            d.join("\n    "),
                                            want,
                                            got
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    if !problems.is_empty() {
                        st.failures.push(format!(
                            "{} differs:\n  {}",
                            e.label(),
                            problems.join("\n  ")
                        ));
                    }
                    e.reply
                }
            }
        };
        match reply {
            Reply::Json(code, body) => send.send_response(response(code, &body.to_string())),
            Reply::Events(events) => {
                let lines: String = events.iter().map(|e| format!("{e}\n")).collect();
                send.send_response(response(200, &lines));
            }
            Reply::Hold => lock(&state).held.push(send),
        }
        changed.notify_waiters();
    }
}

fn response(code: u16, body: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(body.as_bytes().to_vec()));
    *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Where `got` differs from `want`, as JSON pointers; `subset`: extra object fields in
/// `got` are fine.
pub fn diff(want: &Value, got: &Value, at: &str, subset: bool, out: &mut Vec<String>) {
    match (want, got) {
        (Value::String(s), _) if s == ANY => {}
        (Value::String(s), Value::String(g)) if s == TIME => {
            if g.parse::<k8s_openapi::jiff::Timestamp>().is_err() {
                out.push(format!("{at}: expected a timestamp, got {got}"));
            }
        }
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let here = format!("{at}/{k}");
                match g.get(k) {
                    Some(gv) => diff(wv, gv, &here, subset, out),
                    None => out.push(format!("{here}: missing (expected {wv})")),
                }
            }
            if !subset {
                for (k, gv) in g {
                    if !w.contains_key(k) {
                        out.push(format!("{at}/{k}: not expected (got {gv})"));
                    }
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                out.push(format!(
                    "{at}: expected {} items, got {}: {got}",
                    w.len(),
                    g.len()
                ));
            } else {
                for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                    diff(wv, gv, &format!("{at}/{i}"), subset, out);
                }
            }
        }
        _ if want == got => {}
        _ => out.push(format!("{at}: expected {want}, got {got}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(want: Value, got: Value, subset: bool) -> Vec<String> {
        let mut out = Vec::new();
        diff(&want, &got, "", subset, &mut out);
        out
    }

    #[test]
    fn diff_names_each_difference_by_pointer() {
        assert_eq!(
            d(
                json!({"a": 1, "b": [1, 2]}),
                json!({"a": 2, "b": [1], "c": 0}),
                false
            ),
            [
                "/a: expected 1, got 2",
                "/b: expected 2 items, got 1: [1]",
                "/c: not expected (got 0)"
            ]
        );
        assert!(
            d(
                json!({"a": {"b": 1}}),
                json!({"a": {"b": 1, "x": 2}, "y": 3}),
                true
            )
            .is_empty()
        );
        assert_eq!(
            d(json!({"a": 1}), json!({}), true),
            ["/a: missing (expected 1)"]
        );
    }

    #[test]
    fn placeholders_match_any_value_and_timestamps() {
        assert!(
            d(
                json!({"n": ANY, "t": TIME}),
                json!({"n": [1], "t": "2026-01-02T03:04:05Z"}),
                false
            )
            .is_empty()
        );
        assert_eq!(
            d(json!({"t": TIME}), json!({"t": "yesterday"}), false),
            ["/t: expected a timestamp, got \"yesterday\""]
        );
        assert_eq!(
            d(json!({"n": ANY}), json!({}), false),
            ["/n: missing (expected \"{{any}}\")"]
        );
    }

    #[test]
    fn queries_compare_as_decoded_pairs_in_any_order() {
        assert_eq!(pairs("?&b=x%3Dy&a=1"), pairs("a=1&b=x=y"),);
        assert_ne!(pairs("a=1"), pairs("a=1&watch=true"));
    }
}
