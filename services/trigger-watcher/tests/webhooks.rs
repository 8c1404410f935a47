//! Signed webhooks, bearer tokens and client certificates, over real HTTP(S), against a real
//! nats-server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use assay_auth::{Secret, TlsFiles};
use assay_bus::{Bus, NatsOptions, streams, subjects};
use assay_proto::{Execution, TriggerEvent};
use assay_testkit::{NatsServer, Pki, free_port};
use assay_trigger_watcher::webhook::sign;
use assay_trigger_watcher::{Options, WebhookOptions};
use prost::Message;
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const GITLAB_TOKEN: &str = "gl-hook-token";
const GENERIC_SECRET: &str = "generic-s3cret";
const TOKEN: &str = "api-t0ken";

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Watcher {
    nats: NatsServer,
    base: String,
    bus: Bus,
    http: reqwest::Client,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn nats_options(url: &str) -> NatsOptions {
    NatsOptions {
        url: url.to_string(),
        name: "test".into(),
        ..Default::default()
    }
}

/// Starts a trigger-watcher with every webhook on and the bearer token set; `tweak` may
/// change the options. `defs` are written into its definitions directory.
async fn start(defs: &str, tweak: impl FnOnce(&mut Options)) -> Watcher {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("defs.yaml"), defs).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut options = Options {
        nats: nats_options(&nats.url()),
        workflows: dir.path().to_path_buf(),
        http: addr,
        token: Secret::new(TOKEN),
        tls: None,
        webhooks: WebhookOptions {
            github_secret: Secret::new(GITHUB_SECRET),
            gitlab_token: Secret::new(GITLAB_TOKEN),
            generic_secret: Secret::new(GENERIC_SECRET),
            replay_window: Duration::from_secs(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    tweak(&mut options);
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = assay_trigger_watcher::run(options, token).await {
            panic!("trigger-watcher failed: {e}");
        }
    });
    let bus = Bus::connect(&nats_options(&nats.url()), &shutdown)
        .await
        .unwrap();
    bus.ensure_topology().await.unwrap();
    // Ready when the listener accepts and the delivery bucket exists.
    for attempt in 0.. {
        let listening = tokio::net::TcpStream::connect(addr).await.is_ok();
        let bucket = bus
            .jetstream()
            .get_key_value(streams::KV_WEBHOOK_DELIVERIES)
            .await
            .is_ok();
        if listening && bucket {
            break;
        }
        assert!(attempt < 1500, "trigger-watcher did not start within 15s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Watcher {
        nats,
        base: format!("{scheme}://{addr}"),
        bus,
        http: reqwest::Client::new(),
        shutdown,
        dir,
    }
}

impl Watcher {
    async fn events(&self) -> u64 {
        let mut stream = self
            .bus
            .jetstream()
            .get_stream(streams::EVENTS)
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    }

    async fn last_event(&self, source: &str) -> TriggerEvent {
        let stream = self
            .bus
            .jetstream()
            .get_stream(streams::EVENTS)
            .await
            .unwrap();
        let msg = stream
            .get_last_raw_message_by_subject(&subjects::event(source))
            .await
            .unwrap();
        TriggerEvent::decode(msg.payload.as_ref()).unwrap()
    }

    async fn metrics(&self) -> String {
        let res = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.text().await.unwrap()
    }

    async fn github(&self, event: &str, delivery: &str, body: &[u8], sig: Option<&str>) -> Res {
        let mut req = self
            .http
            .post(format!("{}/v1/webhooks/github", self.base))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("Content-Type", "application/json")
            .body(body.to_vec());
        if let Some(sig) = sig {
            req = req.header("X-Hub-Signature-256", sig);
        }
        Res::of(req.send().await.unwrap()).await
    }

    async fn gitlab(&self, event: &str, uuid: &str, body: &[u8], token: Option<&str>) -> Res {
        let mut req = self
            .http
            .post(format!("{}/v1/webhooks/gitlab", self.base))
            .header("X-Gitlab-Event", event)
            .header("X-Gitlab-Event-UUID", uuid)
            .body(body.to_vec());
        if let Some(token) = token {
            req = req.header("X-Gitlab-Token", token);
        }
        Res::of(req.send().await.unwrap()).await
    }
}

struct Res {
    status: StatusCode,
    body: serde_json::Value,
    text: String,
}

impl Res {
    async fn of(res: reqwest::Response) -> Res {
        let status = res.status();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Res { status, body, text }
    }
}

fn label<'a>(ev: &'a TriggerEvent, k: &str) -> &'a str {
    ev.labels.get(k).map(String::as_str).unwrap_or("")
}

const NO_DEFS: &str = "";

#[tokio::test]
async fn github_push_signed_is_published_with_its_fields() {
    let w = start(NO_DEFS, |_| {}).await;
    let body = fixture("github-push.json");
    let sig = sign(GITHUB_SECRET.as_bytes(), &body);
    let delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    let res = w.github("push", delivery, &body, Some(&sig)).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    assert_eq!(res.body["published"], true);
    assert_eq!(res.body["idempotencyKey"], format!("github/{delivery}"));
    assert_eq!(w.events().await, 1);

    let ev = w.last_event("github").await;
    let header = ev.header.clone().unwrap();
    assert_eq!(header.idempotency_key, format!("github/{delivery}"));
    assert_eq!(header.producer, "trigger-watcher");
    assert_eq!(ev.source, "github");
    assert_eq!(ev.r#type, "push");
    assert_eq!(label(&ev, "provider"), "github");
    assert_eq!(label(&ev, "event"), "push");
    assert_eq!(label(&ev, "delivery"), delivery);
    assert_eq!(label(&ev, "repository"), "acme/shop");
    assert_eq!(label(&ev, "branch"), "main");
    assert_eq!(label(&ev, "ref"), "refs/heads/main");
    assert_eq!(
        label(&ev, "sha"),
        "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
    );
    assert_eq!(label(&ev, "sender"), "octocat");
    assert!(!ev.labels.contains_key("tag"));
    assert!(ev.changed_paths_known);
    assert_eq!(
        ev.changed_paths,
        [
            "docs/cart.md",
            "docs/checkout-old.md",
            "src/cart/cart.py",
            "src/cart/session.py"
        ]
    );
}

#[tokio::test]
async fn github_pull_request_and_tag_push() {
    let w = start(NO_DEFS, |_| {}).await;
    let body = fixture("github-pull-request.json");
    let sig = sign(GITHUB_SECRET.as_bytes(), &body);
    let res = w.github("pull_request", "pr-1", &body, Some(&sig)).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    let ev = w.last_event("github").await;
    assert_eq!(ev.r#type, "pull_request");
    assert_eq!(
        label(&ev, "branch"),
        "main",
        "a pull request's branch is its base"
    );
    assert_eq!(label(&ev, "head_branch"), "cart-session");
    assert_eq!(label(&ev, "pull_request"), "42");
    assert_eq!(label(&ev, "action"), "synchronize");
    assert_eq!(
        label(&ev, "sha"),
        "6dcb09b5b57875f334f61aebed695e2e4193db5e"
    );
    assert!(
        !ev.changed_paths_known,
        "GitHub sends no file list with a PR"
    );

    let tag = String::from_utf8(fixture("github-push.json"))
        .unwrap()
        .replace("refs/heads/main", "refs/tags/v2.4.0")
        .into_bytes();
    let sig = sign(GITHUB_SECRET.as_bytes(), &tag);
    let res = w.github("push", "tag-1", &tag, Some(&sig)).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    let ev = w.last_event("github").await;
    assert_eq!(ev.r#type, "tag");
    assert_eq!(label(&ev, "tag"), "v2.4.0");
    assert!(!ev.labels.contains_key("branch"));
    assert_eq!(w.events().await, 2);
}

#[tokio::test]
async fn wrong_or_missing_signatures_are_refused_counted_and_never_published() {
    let w = start(NO_DEFS, |_| {}).await;
    let body = fixture("github-push.json");

    let wrong = sign(b"not the secret", &body);
    let res = w.github("push", "d-wrong", &body, Some(&wrong)).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.body["error"],
        "github webhook refused: X-Hub-Signature-256 does not match the body: check that sender and assay share the same secret"
    );

    let res = w.github("push", "d-missing", &body, None).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(
        res.body["error"]
            .as_str()
            .unwrap()
            .contains("missing X-Hub-Signature-256 header"),
        "{}",
        res.text
    );

    // Signed, then the body changed on the way.
    let sig = sign(GITHUB_SECRET.as_bytes(), &body);
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let res = w.github("push", "d-tampered", &tampered, Some(&sig)).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);

    let res = w
        .gitlab(
            "Push Hook",
            "u-1",
            &fixture("gitlab-push.json"),
            Some("nope"),
        )
        .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(
        res.text.contains("X-Gitlab-Token does not match"),
        "{}",
        res.text
    );

    let generic = br#"{"type":"push","repository":"acme/shop","branch":"main"}"#;
    let res = Res::of(
        w.http
            .post(format!("{}/v1/webhooks/generic", w.base))
            .header("X-Delivery-Id", "g-1")
            .header("X-Signature-256", sign(b"wrong", generic))
            .body(generic.to_vec())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);

    assert_eq!(w.events().await, 0, "nothing may reach the bus");
    let metrics = w.metrics().await;
    for line in [
        "assay_trigger_watcher_webhook_rejections_total{provider=\"github\",reason=\"mismatch\"} 2",
        "assay_trigger_watcher_webhook_rejections_total{provider=\"github\",reason=\"missing\"} 1",
        "assay_trigger_watcher_webhook_rejections_total{provider=\"gitlab\",reason=\"mismatch\"} 1",
        "assay_trigger_watcher_webhook_rejections_total{provider=\"generic\",reason=\"mismatch\"} 1",
        "assay_trigger_watcher_webhook_deliveries_total{provider=\"github\",outcome=\"rejected\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    // A rejected delivery id was not claimed: the real delivery still goes through.
    let res = w.github("push", "d-wrong", &body, Some(&sig)).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    assert_eq!(w.events().await, 1);
}

#[tokio::test]
async fn a_replayed_delivery_is_published_once() {
    let w = start(NO_DEFS, |_| {}).await;
    let body = fixture("github-push.json");
    let sig = sign(GITHUB_SECRET.as_bytes(), &body);
    let first = w.github("push", "same-id", &body, Some(&sig)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let again = w.github("push", "same-id", &body, Some(&sig)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["published"], false);
    assert!(
        again.body["reason"]
            .as_str()
            .unwrap()
            .contains("delivery same-id was already received within the replay window (1h)"),
        "{}",
        again.text
    );
    assert_eq!(w.events().await, 1);

    // A second replica shares the bucket, so it refuses the replay too.
    let other = w.nats.url();
    let second = start_second_replica(&w, &other).await;
    let res = Res::of(
        w.http
            .post(format!("{second}/v1/webhooks/github"))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", "same-id")
            .header("X-Hub-Signature-256", &sig)
            .body(body.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(res.body["published"], false, "{}", res.text);

    let fresh = w.github("push", "other-id", &body, Some(&sig)).await;
    assert_eq!(fresh.status, StatusCode::ACCEPTED);
    assert_eq!(w.events().await, 2);
    assert!(w.metrics().await.contains(
        "assay_trigger_watcher_webhook_deliveries_total{provider=\"github\",outcome=\"replayed\"} 1"
    ));
}

/// Another watcher on the same NATS server; returns its base URL.
async fn start_second_replica(w: &Watcher, nats: &str) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let options = Options {
        nats: nats_options(nats),
        workflows: w.dir.path().to_path_buf(),
        http: addr,
        webhooks: WebhookOptions {
            github_secret: Secret::new(GITHUB_SECRET),
            replay_window: Duration::from_secs(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = w.shutdown.child_token();
    tokio::spawn(async move { assay_trigger_watcher::run(options, token).await });
    for attempt in 0.. {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(attempt < 1500, "second watcher did not start within 15s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    format!("http://{addr}")
}

#[tokio::test]
async fn gitlab_push_tag_and_merge_request() {
    let w = start(NO_DEFS, |_| {}).await;
    let res = w
        .gitlab(
            "Push Hook",
            "0f3b1c2e-1111-4a7b-9c1d-2f3e4a5b6c7d",
            &fixture("gitlab-push.json"),
            Some(GITLAB_TOKEN),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    let ev = w.last_event("gitlab").await;
    assert_eq!(
        ev.header.as_ref().unwrap().idempotency_key,
        "gitlab/0f3b1c2e-1111-4a7b-9c1d-2f3e4a5b6c7d"
    );
    assert_eq!(ev.r#type, "push");
    assert_eq!(label(&ev, "repository"), "acme/web/shop");
    assert_eq!(label(&ev, "branch"), "release/2.4");
    assert_eq!(
        label(&ev, "sha"),
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    );
    assert_eq!(label(&ev, "sender"), "jsmith");
    assert!(ev.changed_paths_known);
    assert_eq!(
        ev.changed_paths,
        ["README.md", "docs/old.md", "locale/ca.po", "src/i18n.py"]
    );

    let res = w
        .gitlab(
            "Tag Push Hook",
            "u-tag",
            &fixture("gitlab-tag-push.json"),
            Some(GITLAB_TOKEN),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    let ev = w.last_event("gitlab").await;
    assert_eq!((ev.r#type.as_str(), label(&ev, "tag")), ("tag", "v2.4.0"));

    let res = w
        .gitlab(
            "Merge Request Hook",
            "u-mr",
            &fixture("gitlab-merge-request.json"),
            Some(GITLAB_TOKEN),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    let ev = w.last_event("gitlab").await;
    assert_eq!(ev.r#type, "pull_request");
    assert_eq!(label(&ev, "branch"), "main");
    assert_eq!(label(&ev, "head_branch"), "ms-viewport");
    assert_eq!(label(&ev, "pull_request"), "7");
    assert_eq!(w.events().await, 3);
}

#[tokio::test]
async fn generic_webhook_takes_prefixed_or_bare_hex() {
    let w = start(NO_DEFS, |_| {}).await;
    let body = br#"{"type":"push","repository":"acme/shop","branch":"main","sha":"abc123","paths":["src/a.py","docs/x.md"],"labels":{"pipeline":"nightly"}}"#;
    let signed = sign(GENERIC_SECRET.as_bytes(), body);
    for (delivery, sig) in [("g-1", signed.clone()), ("g-2", signed[7..].to_string())] {
        let res = Res::of(
            w.http
                .post(format!("{}/v1/webhooks/generic", w.base))
                .header("X-Delivery-Id", delivery)
                .header("X-Signature-256", sig)
                .body(body.to_vec())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    }
    let ev = w.last_event("webhook").await;
    assert_eq!(ev.header.as_ref().unwrap().idempotency_key, "generic/g-2");
    assert_eq!(label(&ev, "provider"), "generic");
    assert_eq!(label(&ev, "pipeline"), "nightly");
    assert_eq!(ev.changed_paths, ["docs/x.md", "src/a.py"]);
    assert_eq!(w.events().await, 2);
}

#[tokio::test]
async fn pings_and_other_events_publish_nothing_and_say_so() {
    let w = start(NO_DEFS, |_| {}).await;
    let body = fixture("github-ping.json");
    let sig = sign(GITHUB_SECRET.as_bytes(), &body);
    let res = w.github("ping", "ping-1", &body, Some(&sig)).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["published"], false);
    assert!(
        res.body["reason"]
            .as_str()
            .unwrap()
            .contains("GitHub `ping` events start no tests"),
        "{}",
        res.text
    );
    let labeled = String::from_utf8(fixture("github-pull-request.json"))
        .unwrap()
        .replace("\"synchronize\"", "\"labeled\"")
        .into_bytes();
    let sig = sign(GITHUB_SECRET.as_bytes(), &labeled);
    let res = w.github("pull_request", "pr-l", &labeled, Some(&sig)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.text.contains("brings no new code"), "{}", res.text);
    assert_eq!(w.events().await, 0);
}

#[tokio::test]
async fn a_provider_without_a_secret_is_off() {
    let w = start(NO_DEFS, |o| o.webhooks.gitlab_token = None).await;
    let res = w
        .gitlab(
            "Push Hook",
            "u",
            &fixture("gitlab-push.json"),
            Some(GITLAB_TOKEN),
        )
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert!(res.text.contains("gitlab webhooks are off"), "{}", res.text);
    assert!(res.text.contains("--gitlab-token-file"), "{}", res.text);
    assert_eq!(w.events().await, 0);
}

#[tokio::test]
async fn bearer_token_guards_every_route_but_health_and_webhooks() {
    let w = start(NO_DEFS, |_| {}).await;
    let post = |token: Option<&str>| {
        let mut req = w
            .http
            .post(format!("{}/v1/events", w.base))
            .body(r#"{"type": "push", "source": "ci"}"#);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let res = post(None).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers().get("www-authenticate").unwrap(), "Bearer");
    assert!(res.text().await.unwrap().contains("missing bearer token"));
    let res = post(Some("wrong")).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.text().await.unwrap().contains("invalid bearer token"));
    let res = w
        .http
        .post(format!("{}/v1/workflows/x/run", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = w
        .http
        .get(format!("{}/metrics", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(w.events().await, 0);

    let res = post(Some(TOKEN)).await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(w.events().await, 1);
    let health = w
        .http
        .get(format!("{}/healthz", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    let metrics = w.metrics().await;
    for line in [
        "assay_trigger_watcher_http_unauthorized_total{reason=\"missing\"} 3",
        "assay_trigger_watcher_http_unauthorized_total{reason=\"wrong\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

#[tokio::test]
async fn without_a_token_the_routes_stay_open() {
    let w = start(NO_DEFS, |o| o.token = None).await;
    let res = w
        .http
        .post(format!("{}/v1/events", w.base))
        .body(r#"{"type": "push"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(w.events().await, 1);
}

const DEFS: &str = r#"
apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: api}
spec:
  steps: [{name: ok, run: "true"}]
---
apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: api-on-main}
spec:
  on:
    webhook:
      events: [push]
      branches: [main, "release/*"]
      paths: ["src/**", "!docs/**"]
  run: {workflow: api}
"#;

/// Executions the scheduler planned so far.
async fn planned(bus: &Bus) -> Vec<Execution> {
    let js = bus.jetstream();
    let mut stream = js.get_stream(streams::STATUS).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(msg) = stream.get_raw_message(seq).await
            && msg.subject.starts_with("assay.v1.plans.")
        {
            out.push(Execution::decode(msg.payload.as_ref()).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn branch_and_path_filters_decide_what_runs_end_to_end() {
    let w = start(DEFS, |_| {}).await;
    let scheduler = assay_scheduler::Options {
        nats: nats_options(&w.nats.url()),
        workflows: w.dir.path().to_path_buf(),
        concurrency: 1,
        ..Default::default()
    };
    let token = w.shutdown.child_token();
    tokio::spawn(async move { assay_scheduler::run(scheduler, token).await });

    let push = |branch: &str, files: &[&str]| {
        let files = serde_json::to_string(files).unwrap();
        format!(
            r#"{{"ref":"refs/heads/{branch}","before":"a","after":"b","repository":{{"full_name":"acme/shop"}},
               "commits":[{{"added":[],"removed":[],"modified":{files}}}]}}"#
        )
        .into_bytes()
    };
    let send = |delivery: &'static str, body: Vec<u8>| {
        let sig = sign(GITHUB_SECRET.as_bytes(), &body);
        let w = &w;
        async move {
            let res = w.github("push", delivery, &body, Some(&sig)).await;
            assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
        }
    };
    // Published, but no trigger wants them: docs only; a feature branch.
    send("docs-only", push("main", &["docs/a.md", "docs/b.md"])).await;
    send("feature", push("feature/x", &["src/app.py"])).await;
    // Wanted: main with a source change, a release branch.
    send("src-main", push("main", &["docs/a.md", "src/app.py"])).await;
    send("release", push("release/2.4", &["src/cart.py"])).await;
    assert_eq!(w.events().await, 4);

    for attempt in 0.. {
        let plans = planned(&w.bus).await;
        if plans.len() >= 2 {
            break;
        }
        assert!(attempt < 3000, "scheduler planned {plans:?} within 30s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The scheduler handles one event at a time and in order, so once the consumer has
    // nothing pending the first two have been decided.
    let consumer_done = || async {
        let stream = w.bus.jetstream().get_stream(streams::EVENTS).await.unwrap();
        let info = stream
            .consumer_info("scheduler-events")
            .await
            .unwrap()
            .clone();
        info.num_pending == 0 && info.num_ack_pending == 0
    };
    for attempt in 0.. {
        if consumer_done().await {
            break;
        }
        assert!(
            attempt < 3000,
            "scheduler did not ack every event within 30s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let plans = planned(&w.bus).await;
    let mut causes: Vec<String> = plans.iter().map(|e| e.cause.clone()).collect();
    causes.sort();
    assert_eq!(
        causes,
        [
            "github/release/api-on-main/api",
            "github/src-main/api-on-main/api"
        ]
    );
    assert!(
        plans
            .iter()
            .all(|e| e.trigger == "api-on-main" && e.workflow == "api")
    );
}

#[tokio::test]
async fn https_round_trip_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let files = TlsFiles::new(dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&files.cert, cert.cert.pem()).unwrap();
    std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
    let w = start(NO_DEFS, |o| o.tls = Some(files)).await;
    let addr: SocketAddr = w.base.trim_start_matches("https://").parse().unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let body = fixture("github-push.json");
    let sig = sign(GITHUB_SECRET.as_bytes(), &body);
    let request = |path: &str, extra: &str, body: &[u8]| {
        let mut r = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let roundtrip = |raw: Vec<u8>| {
        let connector = connector.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            tls.write_all(&raw).await.unwrap();
            let mut out = String::new();
            tls.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let answer = roundtrip(request(
        "/v1/webhooks/github",
        &format!(
            "X-GitHub-Event: push\r\nX-GitHub-Delivery: tls-1\r\nX-Hub-Signature-256: {sig}\r\n"
        ),
        &body,
    ))
    .await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(w.events().await, 1);
    let answer = roundtrip(request(
        "/v1/events",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
        br#"{"type":"push"}"#,
    ))
    .await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(w.events().await, 2);

    // Plain HTTP to the TLS port gets nowhere.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// One HTTP/1.1 request over a fresh TLS connection (with `identity`, a client certificate
/// and key as PEM files); the raw response, or the error that ended the exchange.
async fn https_exchange(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    request: String,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tls.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[tokio::test]
async fn mutual_tls_guards_the_api_routes_not_healthz_or_the_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), "ci-bot");
    let files = TlsFiles {
        client_ca: Some(pki.ca.clone()),
        ..TlsFiles::new(&pki.server_cert, &pki.server_key)
    };
    let w = start(NO_DEFS, |o| o.tls = Some(files)).await;
    let addr: SocketAddr = w.base.trim_start_matches("https://").parse().unwrap();
    let event = || {
        let body = r#"{"type":"push"}"#;
        format!(
            "POST /v1/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let client = Some((pki.client_cert.as_path(), pki.client_key.as_path()));
    let stranger = Some((pki.stranger_cert.as_path(), pki.stranger_key.as_path()));

    // The token and a certificate from the CA: accepted.
    let answer = https_exchange(addr, &pki.ca, client, event())
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(w.events().await, 1);
    // The token without a certificate: refused, saying what is missing.
    let answer = https_exchange(addr, &pki.ca, None, event()).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("needs a client certificate"), "{answer}");
    // A certificate from another CA: the handshake fails.
    let refused = https_exchange(addr, &pki.ca, stranger, event()).await;
    assert!(
        refused.as_ref().is_err() || !refused.as_ref().unwrap().starts_with("HTTP/1.1 2"),
        "{refused:?}"
    );
    assert_eq!(w.events().await, 1, "only the first event went through");

    // Health probes and webhook senders have no certificate and still get in.
    let health = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let answer = https_exchange(addr, &pki.ca, None, health.into())
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = fixture("github-push.json");
    let sig = sign(GITHUB_SECRET.as_bytes(), &body);
    let hook = format!(
        "POST /v1/webhooks/github HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         X-GitHub-Event: push\r\nX-GitHub-Delivery: mtls-1\r\nX-Hub-Signature-256: {sig}\r\n\
         Content-Length: {}\r\n\r\n{}",
        body.len(),
        String::from_utf8(body).unwrap()
    );
    let answer = https_exchange(addr, &pki.ca, None, hook).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(w.events().await, 2);
}

#[tokio::test]
async fn an_oversized_body_is_answered_413_in_json_named_and_counted() {
    let w = start(NO_DEFS, |o| {
        o.max_body_bytes = 1024;
        o.max_webhook_bytes = 4096;
    })
    .await;
    // /v1/events over --max-body-bytes.
    let big = format!(r#"{{"type":"push","payload":"{}"}}"#, "x".repeat(2000));
    let len = big.len();
    let res = Res::of(
        w.http
            .post(format!("{}/v1/events", w.base))
            .bearer_auth(TOKEN)
            .header("Content-Type", "application/json")
            .body(big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", res.text);
    assert_eq!(
        res.body["error"],
        format!(
            "body is {len} bytes, over the limit of 1024 bytes (--max-body-bytes); send a smaller body or raise --max-body-bytes"
        ),
        "{}",
        res.text
    );
    // A run request too.
    let res = Res::of(
        w.http
            .post(format!("{}/v1/workflows/any/run", w.base))
            .bearer_auth(TOKEN)
            .body(vec![b' '; 1025])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", res.text);
    assert!(res.body["error"].as_str().is_some(), "{}", res.text);
    // A chunked body (no Content-Length) is refused the same way, without a size.
    let addr = w.base.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let chunk = "x".repeat(800);
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{n:x}\r\n{chunk}\r\n{n:x}\r\n{chunk}\r\n0\r\n\r\n",
        n = chunk.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The server may answer and close before it read everything: a failed write is fine.
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("body is larger, over the limit of 1024 bytes (--max-body-bytes)"),
        "{answer}"
    );
    assert!(answer.contains("application/json"), "{answer}");
    // A webhook over --max-webhook-bytes, signed or not.
    let body = vec![b'{'; 5000];
    let sig = sign(GITHUB_SECRET.as_bytes(), &body);
    let res = w.github("push", "d-big", &body, Some(&sig)).await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", res.text);
    assert_eq!(
        res.body["error"],
        "body is 5000 bytes, over the limit of 4096 bytes (--max-webhook-bytes); send a smaller body or raise --max-webhook-bytes"
    );
    // A body of exactly the limit still goes through.
    let res = Res::of(
        w.http
            .post(format!("{}/v1/events", w.base))
            .bearer_auth(TOKEN)
            .body(format!(
                r#"{{"type":"push","payload":"{}"}}"#,
                "x".repeat(996)
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);

    assert_eq!(w.events().await, 1, "only the small event was published");
    let metrics = w.metrics().await;
    for line in [
        "assay_trigger_watcher_http_body_too_large_total{route=\"/v1/events\"} 2",
        "assay_trigger_watcher_http_body_too_large_total{route=\"/v1/workflows/{name}/run\"} 1",
        "assay_trigger_watcher_http_body_too_large_total{route=\"/v1/webhooks/github\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

#[tokio::test]
async fn a_run_request_over_http_carries_its_labels() {
    let w = start(DEFS, |_| {}).await;
    let res = Res::of(
        w.http
            .post(format!("{}/v1/workflows/api/run", w.base))
            .bearer_auth(TOKEN)
            .body(r#"{"labels": {"branch": "main", "sha": "0d1a26e"}}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    let stream = w.bus.jetstream().get_stream(streams::EVENTS).await.unwrap();
    let msg = stream
        .get_last_raw_message_by_subject(subjects::RUN_REQUESTED)
        .await
        .unwrap();
    let request = assay_proto::RunRequest::decode(msg.payload.as_ref()).unwrap();
    assert_eq!(request.workflow, "api");
    assert_eq!(request.requested_by, "http");
    assert_eq!(
        request.labels.get("branch").map(String::as_str),
        Some("main")
    );
    assert_eq!(
        request.labels.get("sha").map(String::as_str),
        Some("0d1a26e")
    );
    assert_eq!(
        res.body["executionId"].as_str(),
        Some(request.execution_id.as_str())
    );
    // Labels are strings: anything else is refused with the expected shape.
    let res = Res::of(
        w.http
            .post(format!("{}/v1/workflows/api/run", w.base))
            .bearer_auth(TOKEN)
            .body(r#"{"labels": {"pr": 12}}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.text);
    assert!(res.text.contains("\\\"labels\\\"?"), "{}", res.text);
}

/// Every request is bounded: with NATS gone a publish cannot finish, so the request is
/// answered 503 within the request timeout, and a second one while the first holds the
/// only slot is answered 503 at once; both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_bounded_in_number_and_time() {
    let mut w = start(NO_DEFS, |o| {
        o.max_in_flight = 1;
        o.request_timeout = Duration::from_secs(1);
    })
    .await;
    w.nats.stop();
    // Rounds of three requests sent at once: one holds the only slot (its publish cannot
    // finish) until the timeout, and the others, arriving while it does, are refused. On a
    // loaded machine the three may arrive a second apart; then another round is sent.
    let mut answered: Vec<Res> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let busy = loop {
        let round: Vec<_> = (0..3)
            .map(|_| {
                let res = w
                    .http
                    .post(format!("{}/v1/events", w.base))
                    .bearer_auth(TOKEN)
                    .header("Content-Type", "application/json")
                    .body(r#"{"type":"push"}"#)
                    .send();
                tokio::spawn(async move { Res::of(res.await.unwrap()).await })
            })
            .collect();
        for res in round {
            answered.push(res.await.unwrap());
        }
        if let Some(i) = answered.iter().position(|r| r.text.contains("in flight")) {
            break answered.remove(i);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no request was refused for the slot within 30s; last: {}",
            answered.last().map_or("", |r| r.text.as_str())
        );
    };
    assert_eq!(
        busy.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        busy.text
    );
    assert_eq!(
        busy.body["error"], "too many requests in flight (--max-in-flight); retry shortly",
        "{}",
        busy.text
    );
    let timed_out = answered;
    // Every request not refused for the slot held it and was answered by the timeout.
    let held: Vec<&Res> = timed_out
        .iter()
        .filter(|r| !r.text.contains("in flight"))
        .collect();
    assert!(!held.is_empty(), "no request held the slot");
    for slow in held {
        assert_eq!(
            slow.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            slow.text
        );
        assert!(
            slow.body["error"]
                .as_str()
                .is_some_and(|e| e.contains("not handled within 1s")),
            "{}",
            slow.text
        );
    }
    let metrics = Res::of(
        w.http
            .get(format!("{}/metrics", w.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await
    .text;
    for line in [
        "assay_trigger_watcher_http_overloaded_total{reason=\"in_flight\"}",
        "assay_trigger_watcher_http_overloaded_total{reason=\"timeout\"}",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}
