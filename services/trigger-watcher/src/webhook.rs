//! Signed webhooks: signature checks and payload parsing, as pure functions (no I/O), so
//! that tests and fuzz targets call them directly.
//!
//! - GitHub: `X-Hub-Signature-256: sha256=<hex>` (HMAC-SHA256 of the raw body), events
//!   `push` (branches and tags) and `pull_request`, delivery id `X-GitHub-Delivery`;
//! - GitLab: `X-Gitlab-Token` (the secret itself), events `Push Hook`, `Tag Push Hook` and
//!   `Merge Request Hook`, delivery id `X-Gitlab-Event-UUID`;
//! - generic: an HMAC-SHA256 header (name configurable, `sha256=<hex>` or bare hex) over a
//!   small JSON body ([`GenericBody`]), delivery id in a configurable header.
//!
//! Each accepted delivery becomes one [`WebhookEvent`], published as a `TriggerEvent` whose
//! idempotency key is `<provider>/<delivery id>`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use assay_auth::Secret;
use assay_proto::TriggerEvent;
use assay_spec::webhook_labels;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// Most changed paths an event carries; a longer list is dropped and counted as unknown
/// (path filters then let the event through), which keeps messages far below the bus limit.
pub const MAX_CHANGED_PATHS: usize = 4096;

/// GitHub lists at most this many commits in a push; a push this long may have more.
const GITHUB_MAX_COMMITS: usize = 2048;

const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// Where a webhook came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    GitHub,
    GitLab,
    Generic,
}

impl Provider {
    /// `github`, `gitlab`, `generic`: the `provider` label and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Generic => "generic",
        }
    }
}

/// What a change was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Push,
    Tag,
    PullRequest,
}

impl Kind {
    /// The event type: `push`, `tag`, `pull_request` (GitLab merge requests too).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Push => "push",
            Kind::Tag => "tag",
            Kind::PullRequest => "pull_request",
        }
    }
}

/// A webhook delivery that starts tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub provider: Provider,
    /// The provider's delivery id (the idempotency key and the replay-window key).
    pub delivery: String,
    /// Event source on the bus: `github`, `gitlab`, or the generic body's `source`.
    pub source: String,
    /// Event type: `push`, `tag`, `pull_request`, or the generic body's `type`.
    pub r#type: String,
    /// The provider's own event name (`push`, `Merge Request Hook`, …).
    pub event: String,
    pub repository: String,
    /// The branch pushed to, or the branch a pull request merges into.
    pub branch: Option<String>,
    pub tag: Option<String>,
    /// The commit to test (a push's new head, a pull request's head).
    pub sha: String,
    /// The full ref (`refs/heads/main`, `refs/tags/v1.0`), when there is one.
    pub git_ref: Option<String>,
    /// Changed paths, sorted, each once; `None` when the provider did not send the whole list.
    pub changed_paths: Option<Vec<String>>,
    /// More labels: `action`, `pull_request` (number), `head_branch`, `sender`.
    pub extra: BTreeMap<String, String>,
}

impl WebhookEvent {
    /// An event of `provider`'s with what every kind has; the parsers fill in the rest.
    fn new(
        provider: Provider,
        delivery: &str,
        event: &str,
        kind: Kind,
        repository: String,
        sha: String,
    ) -> WebhookEvent {
        WebhookEvent {
            provider,
            delivery: delivery.to_string(),
            source: provider.as_str().into(),
            r#type: kind.as_str().into(),
            event: event.to_string(),
            repository,
            branch: None,
            tag: None,
            sha,
            git_ref: None,
            changed_paths: None,
            extra: BTreeMap::new(),
        }
    }

    /// `<provider>/<delivery id>`: the idempotency key, so a delivery starts at most one
    /// execution per trigger and workflow even past the replay window.
    pub fn key(&self) -> String {
        format!("{}/{}", self.provider.as_str(), self.delivery)
    }

    /// The labels triggers match on (see README, "Webhooks").
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.extra.clone();
        let mut put = |k: &str, v: &str| {
            if !v.is_empty() {
                labels.insert(k.to_string(), v.to_string());
            }
        };
        put(webhook_labels::PROVIDER, self.provider.as_str());
        put("event", &self.event);
        put("delivery", &self.delivery);
        put(webhook_labels::REPOSITORY, &self.repository);
        put("sha", &self.sha);
        if let Some(b) = &self.branch {
            put(webhook_labels::BRANCH, b);
        }
        if let Some(t) = &self.tag {
            put(webhook_labels::TAG, t);
        }
        if let Some(r) = &self.git_ref {
            put("ref", r);
        }
        labels
    }

    /// The bus message, with `traceparent` continued when the request carried one.
    pub fn to_trigger_event(&self, traceparent: Option<&str>) -> TriggerEvent {
        let (changed_paths, known) = match &self.changed_paths {
            Some(p) => (p.clone(), true),
            None => (Vec::new(), false),
        };
        TriggerEvent {
            header: Some(assay_bus::header(
                "trigger-watcher",
                self.key(),
                traceparent,
            )),
            source: self.source.clone(),
            r#type: self.r#type.clone(),
            labels: self.labels().into_iter().collect::<HashMap<_, _>>(),
            payload: Vec::new(),
            trigger: String::new(),
            changed_paths,
            changed_paths_known: known,
        }
    }
}

/// What a verified delivery amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Publish it.
    Event(Box<WebhookEvent>),
    /// Valid, but it starts nothing (a ping, a label change, a branch deletion); says why.
    Ignored { event: String, reason: String },
}

/// A delivery that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("missing {0} header")]
    MissingHeader(String),
    #[error("invalid {what} payload: {reason}")]
    Body { what: String, reason: String },
    #[error("invalid {header} header: send at most {max} visible ASCII characters, such as a UUID")]
    BadDeliveryId { header: String, max: usize },
}

impl ParseError {
    /// 400: the sender must fix the request; retrying it as is cannot help.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

/// Why a signature was refused (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {0} header: sign the body with the shared secret")]
    Missing(String),
    #[error("malformed {0} header: expected `sha256=<hex digest>`")]
    Malformed(String),
    #[error("{0} does not match the body: check that sender and assay share the same secret")]
    Mismatch(String),
}

impl SignatureError {
    /// 401: the request is not from who shares the secret.
    pub fn status(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    /// `missing`, `malformed`, `mismatch`: the metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Missing(_) => "missing",
            SignatureError::Malformed(_) => "malformed",
            SignatureError::Mismatch(_) => "mismatch",
        }
    }
}

pub const GITHUB_SIGNATURE: &str = "X-Hub-Signature-256";
pub const GITHUB_EVENT: &str = "X-GitHub-Event";
pub const GITHUB_DELIVERY: &str = "X-GitHub-Delivery";
pub const GITLAB_TOKEN: &str = "X-Gitlab-Token";
pub const GITLAB_EVENT: &str = "X-Gitlab-Event";
pub const GITLAB_DELIVERY: &str = "X-Gitlab-Event-UUID";

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get(name).map(|v| v.as_bytes())
}

fn header_str(headers: &HeaderMap, name: &str) -> Result<String, ParseError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ParseError::MissingHeader(name.to_string()))
}

/// Longest delivery id accepted (providers send UUIDs; the id becomes a KV key).
pub const MAX_DELIVERY_ID: usize = 128;

/// The delivery id header: present, at most [`MAX_DELIVERY_ID`] visible ASCII characters.
fn delivery_id(headers: &HeaderMap, name: &str) -> Result<String, ParseError> {
    let id = header_str(headers, name)?;
    if id.len() > MAX_DELIVERY_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ParseError::BadDeliveryId {
            header: name.to_string(),
            max: MAX_DELIVERY_ID,
        });
    }
    Ok(id)
}

/// Checks an HMAC-SHA256 signature header (`sha256=<hex>`, or bare hex when `bare_ok`) of
/// `body` in constant time.
pub fn verify_hmac(
    secret: &Secret,
    header_name: &str,
    value: Option<&[u8]>,
    body: &[u8],
    bare_ok: bool,
) -> Result<(), SignatureError> {
    let value = value
        .map(<[u8]>::trim_ascii)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| SignatureError::Missing(header_name.into()))?;
    let hex_digest = match value.strip_prefix(b"sha256=") {
        Some(h) => h,
        None if bare_ok => value,
        None => return Err(SignatureError::Malformed(header_name.into())),
    };
    let digest =
        hex::decode(hex_digest).map_err(|_| SignatureError::Malformed(header_name.into()))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose())
        .map_err(|_| SignatureError::Mismatch(header_name.into()))?;
    mac.update(body);
    mac.verify_slice(&digest)
        .map_err(|_| SignatureError::Mismatch(header_name.into()))
}

/// `sha256=<hex>` of `body` under `secret`, as GitHub sends it (for tests and senders).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// GitHub: `X-Hub-Signature-256`.
pub fn verify_github(
    secret: &Secret,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), SignatureError> {
    verify_hmac(
        secret,
        GITHUB_SIGNATURE,
        header(headers, GITHUB_SIGNATURE),
        body,
        false,
    )
}

/// GitLab: `X-Gitlab-Token` equals the secret (constant time).
pub fn verify_gitlab(secret: &Secret, headers: &HeaderMap) -> Result<(), SignatureError> {
    let value = header(headers, GITLAB_TOKEN)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| SignatureError::Missing(GITLAB_TOKEN.into()))?;
    if secret.matches(value) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch(GITLAB_TOKEN.into()))
    }
}

fn body_error(what: &str, e: serde_json::Error) -> ParseError {
    ParseError::Body {
        what: what.to_string(),
        reason: format!("{e} (line {} column {})", e.line(), e.column()),
    }
}

fn ignored(event: &str, reason: impl Into<String>) -> Parsed {
    Parsed::Ignored {
        event: event.to_string(),
        reason: reason.into(),
    }
}

/// Union of the paths touched by `commits`, or `None` past [`MAX_CHANGED_PATHS`].
fn union_paths<'a>(commits: impl IntoIterator<Item = &'a Commit>) -> Option<Vec<String>> {
    let mut all = BTreeSet::new();
    for c in commits {
        for p in c.added.iter().chain(&c.modified).chain(&c.removed) {
            all.insert(p.clone());
            if all.len() > MAX_CHANGED_PATHS {
                return None;
            }
        }
    }
    Some(all.into_iter().collect())
}

#[derive(Debug, Default, Deserialize)]
struct Commit {
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    modified: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
}

/// Splits `refs/heads/x` / `refs/tags/x`.
fn split_ref(r: &str) -> (Option<String>, Option<String>) {
    if let Some(b) = r.strip_prefix("refs/heads/") {
        (Some(b.to_string()), None)
    } else if let Some(t) = r.strip_prefix("refs/tags/") {
        (None, Some(t.to_string()))
    } else {
        (None, None)
    }
}

#[derive(Deserialize)]
struct GhRepository {
    full_name: String,
}

#[derive(Deserialize, Default)]
struct GhUser {
    #[serde(default)]
    login: String,
}

#[derive(Deserialize)]
struct GhPush {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: GhRepository,
    #[serde(default)]
    commits: Vec<Commit>,
    #[serde(default)]
    sender: GhUser,
}

#[derive(Deserialize)]
struct GhBranchRef {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
}

#[derive(Deserialize)]
struct GhPull {
    base: GhBranchRef,
    head: GhBranchRef,
}

#[derive(Deserialize)]
struct GhPullRequestEvent {
    action: String,
    number: u64,
    pull_request: GhPull,
    repository: GhRepository,
    #[serde(default)]
    sender: GhUser,
}

/// Pull request actions that bring new code (GitHub Actions' defaults).
const GITHUB_PR_ACTIONS: &[&str] = &["opened", "synchronize", "reopened"];

/// The JSON of a GitHub delivery: the body, or its `payload` field when the webhook's
/// content type is `application/x-www-form-urlencoded` (GitHub's default).
fn github_json<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<Cow<'a, [u8]>, ParseError> {
    let form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !form {
        return Ok(Cow::Borrowed(body));
    }
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| Cow::Owned(v.into_owned().into_bytes()))
        .ok_or_else(|| ParseError::Body {
            what: "GitHub form".into(),
            reason: "no `payload` field; set the webhook's content type to application/json".into(),
        })
}

/// Parses a GitHub delivery (the signature is checked apart, by [`verify_github`]), sent as
/// `application/json` or `application/x-www-form-urlencoded`.
pub fn parse_github(headers: &HeaderMap, body: &[u8]) -> Result<Parsed, ParseError> {
    let event = header_str(headers, GITHUB_EVENT)?;
    let delivery = delivery_id(headers, GITHUB_DELIVERY)?;
    let json = github_json(headers, body)?;
    let body: &[u8] = &json;
    let base = |kind: Kind, repository: String, sha: String| {
        WebhookEvent::new(Provider::GitHub, &delivery, &event, kind, repository, sha)
    };
    match event.as_str() {
        "push" => {
            let p: GhPush =
                serde_json::from_slice(body).map_err(|e| body_error("GitHub push", e))?;
            if p.deleted || p.after == ZERO_SHA {
                return Ok(ignored(&event, format!("{} was deleted", p.git_ref)));
            }
            let (branch, tag) = split_ref(&p.git_ref);
            let kind = if tag.is_some() { Kind::Tag } else { Kind::Push };
            if branch.is_none() && tag.is_none() {
                return Ok(ignored(
                    &event,
                    format!("{} is neither a branch nor a tag", p.git_ref),
                ));
            }
            let known =
                kind == Kind::Push && !p.commits.is_empty() && p.commits.len() < GITHUB_MAX_COMMITS;
            let mut ev = base(kind, p.repository.full_name, p.after);
            ev.branch = branch;
            ev.tag = tag;
            ev.git_ref = Some(p.git_ref);
            ev.changed_paths = if known { union_paths(&p.commits) } else { None };
            if !p.sender.login.is_empty() {
                ev.extra.insert("sender".into(), p.sender.login);
            }
            Ok(Parsed::Event(Box::new(ev)))
        }
        "pull_request" => {
            let p: GhPullRequestEvent =
                serde_json::from_slice(body).map_err(|e| body_error("GitHub pull_request", e))?;
            if !GITHUB_PR_ACTIONS.contains(&p.action.as_str()) {
                return Ok(ignored(
                    &event,
                    format!(
                        "pull_request action `{}` brings no new code (only {} start tests)",
                        p.action,
                        GITHUB_PR_ACTIONS.join(", ")
                    ),
                ));
            }
            let pr = p.pull_request;
            let mut ev = base(Kind::PullRequest, p.repository.full_name, pr.head.sha);
            ev.branch = Some(pr.base.git_ref);
            ev.git_ref = Some(format!("refs/pull/{}/head", p.number));
            ev.extra.insert("action".into(), p.action);
            ev.extra.insert("pull_request".into(), p.number.to_string());
            ev.extra.insert("head_branch".into(), pr.head.git_ref);
            if !p.sender.login.is_empty() {
                ev.extra.insert("sender".into(), p.sender.login);
            }
            Ok(Parsed::Event(Box::new(ev)))
        }
        other => Ok(ignored(
            other,
            format!("GitHub `{other}` events start no tests (push and pull_request do)"),
        )),
    }
}

#[derive(Deserialize)]
struct GlProject {
    path_with_namespace: String,
}

#[derive(Deserialize)]
struct GlPush {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    checkout_sha: Option<String>,
    project: GlProject,
    #[serde(default)]
    commits: Vec<Commit>,
    #[serde(default)]
    total_commits_count: Option<usize>,
    #[serde(default)]
    user_username: Option<String>,
}

#[derive(Deserialize)]
struct GlLastCommit {
    id: String,
}

#[derive(Deserialize)]
struct GlMergeRequestAttributes {
    iid: u64,
    #[serde(default)]
    action: Option<String>,
    target_branch: String,
    source_branch: String,
    last_commit: GlLastCommit,
    /// Set on `update` when the merge request got new commits.
    #[serde(default)]
    oldrev: Option<String>,
}

#[derive(Deserialize, Default)]
struct GlUser {
    #[serde(default)]
    username: String,
}

#[derive(Deserialize)]
struct GlMergeRequest {
    project: GlProject,
    object_attributes: GlMergeRequestAttributes,
    #[serde(default)]
    user: GlUser,
}

/// Parses a GitLab delivery (the token is checked apart, by [`verify_gitlab`]).
pub fn parse_gitlab(headers: &HeaderMap, body: &[u8]) -> Result<Parsed, ParseError> {
    let event = header_str(headers, GITLAB_EVENT)?;
    let delivery = delivery_id(headers, GITLAB_DELIVERY)?;
    let base = |kind: Kind, repository: String, sha: String| {
        WebhookEvent::new(Provider::GitLab, &delivery, &event, kind, repository, sha)
    };
    match event.as_str() {
        "Push Hook" | "Tag Push Hook" => {
            let p: GlPush = serde_json::from_slice(body).map_err(|e| body_error(&event, e))?;
            if p.after == ZERO_SHA {
                return Ok(ignored(&event, format!("{} was deleted", p.git_ref)));
            }
            let (branch, tag) = split_ref(&p.git_ref);
            let kind = if tag.is_some() { Kind::Tag } else { Kind::Push };
            if branch.is_none() && tag.is_none() {
                return Ok(ignored(
                    &event,
                    format!("{} is neither a branch nor a tag", p.git_ref),
                ));
            }
            // GitLab lists at most 20 commits; the total says whether that is all of them.
            let known = kind == Kind::Push
                && !p.commits.is_empty()
                && p.total_commits_count.unwrap_or(usize::MAX) <= p.commits.len();
            let sha = p.checkout_sha.filter(|s| !s.is_empty()).unwrap_or(p.after);
            let mut ev = base(kind, p.project.path_with_namespace, sha);
            ev.branch = branch;
            ev.tag = tag;
            ev.git_ref = Some(p.git_ref);
            ev.changed_paths = if known { union_paths(&p.commits) } else { None };
            if let Some(user) = p.user_username.filter(|u| !u.is_empty()) {
                ev.extra.insert("sender".into(), user);
            }
            Ok(Parsed::Event(Box::new(ev)))
        }
        "Merge Request Hook" => {
            let m: GlMergeRequest =
                serde_json::from_slice(body).map_err(|e| body_error(&event, e))?;
            let a = m.object_attributes;
            let action = a.action.unwrap_or_default();
            let new_code = match action.as_str() {
                "open" | "reopen" => true,
                "update" => a.oldrev.as_deref().is_some_and(|r| !r.is_empty()),
                _ => false,
            };
            if !new_code {
                return Ok(ignored(
                    &event,
                    format!(
                        "merge request action `{action}` brings no new code (only open, reopen and update with new commits start tests)"
                    ),
                ));
            }
            let mut ev = base(
                Kind::PullRequest,
                m.project.path_with_namespace,
                a.last_commit.id,
            );
            ev.branch = Some(a.target_branch);
            ev.git_ref = Some(format!("refs/merge-requests/{}/head", a.iid));
            ev.extra.insert("action".into(), action);
            ev.extra.insert("pull_request".into(), a.iid.to_string());
            ev.extra.insert("head_branch".into(), a.source_branch);
            if !m.user.username.is_empty() {
                ev.extra.insert("sender".into(), m.user.username);
            }
            Ok(Parsed::Event(Box::new(ev)))
        }
        other => Ok(ignored(
            other,
            format!(
                "GitLab `{other}` events start no tests (Push Hook, Tag Push Hook and Merge Request Hook do)"
            ),
        )),
    }
}

/// Body of the generic webhook: what changed, said plainly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericBody {
    /// `push`, `tag`, `pull_request`, or any type an `on.event` trigger matches.
    #[serde(rename = "type")]
    pub r#type: String,
    /// Defaults to `webhook`.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub sha: Option<String>,
    /// The changed files; when given, taken as the whole list.
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Parses a generic delivery (its signature is checked apart, by [`verify_hmac`]); the
/// delivery id is read from `delivery_header`.
pub fn parse_generic(
    headers: &HeaderMap,
    body: &[u8],
    delivery_header: &str,
) -> Result<Parsed, ParseError> {
    let delivery = delivery_id(headers, delivery_header)?;
    let b: GenericBody = serde_json::from_slice(body).map_err(|e| {
        let mut err = body_error("generic webhook", e);
        if let ParseError::Body { reason, .. } = &mut err {
            reason.push_str("; expected {\"type\": \"push\", \"repository\"?, \"branch\"?, \"tag\"?, \"sha\"?, \"paths\"?: [...], \"labels\"?: {...}, \"source\"?}");
        }
        err
    })?;
    if b.r#type.trim().is_empty() {
        return Err(ParseError::Body {
            what: "generic webhook".into(),
            reason: "\"type\" must not be empty".into(),
        });
    }
    let changed_paths = b.paths.and_then(|p| {
        let all: BTreeSet<String> = p.into_iter().collect();
        (all.len() <= MAX_CHANGED_PATHS).then(|| all.into_iter().collect())
    });
    let git_ref = match (&b.branch, &b.tag) {
        (_, Some(t)) => Some(format!("refs/tags/{t}")),
        (Some(br), None) => Some(format!("refs/heads/{br}")),
        (None, None) => None,
    };
    Ok(Parsed::Event(Box::new(WebhookEvent {
        provider: Provider::Generic,
        delivery,
        source: b
            .source
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "webhook".into()),
        r#type: b.r#type,
        event: "generic".into(),
        repository: b.repository.unwrap_or_default(),
        branch: b.branch,
        tag: b.tag,
        sha: b.sha.unwrap_or_default(),
        git_ref,
        changed_paths,
        extra: b.labels,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives, parsing answers (an event, ignored, or an error), never panics.
        #[test]
        fn parsers_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            event in prop_oneof![
                Just("push"), Just("pull_request"), Just("ping"),
                Just("Push Hook"), Just("Tag Push Hook"), Just("Merge Request Hook"),
            ],
        ) {
            let h = headers(&[
                (GITHUB_EVENT, event), (GITHUB_DELIVERY, "d"),
                (GITLAB_EVENT, event), (GITLAB_DELIVERY, "d"), ("X-Delivery-Id", "d"),
            ]);
            let _ = parse_github(&h, &body);
            let _ = parse_gitlab(&h, &body);
            let _ = parse_generic(&h, &body, "X-Delivery-Id");
            let secret = Secret::new("k").unwrap();
            prop_assert!(verify_hmac(&secret, "X-Sig", Some(&body), &body, true).is_err());
        }

        /// A JSON-shaped push with any refs and paths parses, and its paths come out sorted
        /// and unique.
        #[test]
        fn push_paths_are_a_sorted_union(
            branch in "[a-z]{1,8}(/[a-z0-9.]{1,8})?",
            paths in proptest::collection::vec("[a-z]{1,5}(/[a-z]{1,5}){0,3}", 1..20),
        ) {
            let h = headers(&[(GITHUB_EVENT, "push"), (GITHUB_DELIVERY, "d")]);
            let body = serde_json::json!({
                "ref": format!("refs/heads/{branch}"), "after": "abc",
                "repository": {"full_name": "a/b"},
                "commits": [{"added": paths, "modified": paths, "removed": []}],
            });
            let parsed = parse_github(&h, body.to_string().as_bytes()).unwrap();
            let Parsed::Event(ev) = parsed else { panic!("expected an event") };
            prop_assert_eq!(ev.branch.as_deref(), Some(branch.as_str()));
            let got = ev.changed_paths.unwrap();
            let mut want = paths.clone();
            want.sort();
            want.dedup();
            prop_assert_eq!(got, want);
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hmac_accepts_only_the_right_digest() {
        let secret = Secret::new("It's a Secret to Everybody").unwrap();
        // The example from GitHub's documentation on validating deliveries.
        let body = b"Hello, World!";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(secret.expose(), body), sig);
        let h = |v: &str| headers(&[(GITHUB_SIGNATURE, v)]);
        assert_eq!(verify_github(&secret, &h(sig), body), Ok(()));
        assert_eq!(
            verify_github(&secret, &h(sig), b"Hello, World?"),
            Err(SignatureError::Mismatch(GITHUB_SIGNATURE.into()))
        );
        assert_eq!(
            verify_github(&secret, &HeaderMap::new(), body),
            Err(SignatureError::Missing(GITHUB_SIGNATURE.into()))
        );
        assert_eq!(
            verify_github(&secret, &h(&sig[7..]), body),
            Err(SignatureError::Malformed(GITHUB_SIGNATURE.into())),
            "GitHub always sends the sha256= prefix"
        );
        assert_eq!(
            verify_hmac(&secret, "X-Sig", Some(&sig.as_bytes()[7..]), body, true),
            Ok(())
        );
        assert_eq!(
            verify_github(&secret, &h("sha256=zz"), body),
            Err(SignatureError::Malformed(GITHUB_SIGNATURE.into()))
        );
    }

    #[test]
    fn gitlab_token() {
        let secret = Secret::new("glt").unwrap();
        assert_eq!(
            verify_gitlab(&secret, &headers(&[(GITLAB_TOKEN, "glt")])),
            Ok(())
        );
        assert_eq!(
            verify_gitlab(&secret, &headers(&[(GITLAB_TOKEN, "glx")])),
            Err(SignatureError::Mismatch(GITLAB_TOKEN.into()))
        );
        assert_eq!(
            verify_gitlab(&secret, &HeaderMap::new()),
            Err(SignatureError::Missing(GITLAB_TOKEN.into()))
        );
    }

    #[test]
    fn github_push_of_a_branch() {
        let h = headers(&[(GITHUB_EVENT, "push"), (GITHUB_DELIVERY, "d-1")]);
        let body = br#"{"ref":"refs/heads/main","before":"a","after":"b1","deleted":false,
            "repository":{"full_name":"acme/shop"},"sender":{"login":"octo"},
            "commits":[{"added":["src/new.rs"],"modified":["README.md"],"removed":[]},
                       {"added":[],"modified":["src/new.rs"],"removed":["docs/old.md"]}]}"#;
        let Parsed::Event(ev) = parse_github(&h, body).unwrap() else {
            panic!("expected an event")
        };
        assert_eq!(ev.r#type, "push");
        assert_eq!(ev.branch.as_deref(), Some("main"));
        assert_eq!(ev.sha, "b1");
        assert_eq!(
            ev.changed_paths.as_deref(),
            Some(
                &[
                    "README.md".to_string(),
                    "docs/old.md".into(),
                    "src/new.rs".into()
                ][..]
            )
        );
        assert_eq!(ev.key(), "github/d-1");
        let labels = ev.labels();
        assert_eq!(labels["repository"], "acme/shop");
        assert_eq!(labels["sender"], "octo");
        assert_eq!(labels["ref"], "refs/heads/main");
    }

    #[test]
    fn github_form_encoded_payload() {
        let json = r#"{"ref":"refs/heads/main","after":"b1","repository":{"full_name":"acme/shop"},"commits":[]}"#;
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", json)
            .finish();
        let h = headers(&[
            (GITHUB_EVENT, "push"),
            (GITHUB_DELIVERY, "d"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ]);
        let Parsed::Event(ev) = parse_github(&h, body.as_bytes()).unwrap() else {
            panic!("expected an event")
        };
        assert_eq!(ev.repository, "acme/shop");
        let e = parse_github(&h, b"other=1").unwrap_err();
        assert!(e.to_string().contains("application/json"), "{e}");
    }

    #[test]
    fn github_tags_deletions_and_other_events() {
        let h = headers(&[(GITHUB_EVENT, "push"), (GITHUB_DELIVERY, "d")]);
        let tag = br#"{"ref":"refs/tags/v1.2.0","after":"c","repository":{"full_name":"a/b"},"commits":[]}"#;
        let Parsed::Event(ev) = parse_github(&h, tag).unwrap() else {
            panic!()
        };
        assert_eq!(
            (ev.r#type.as_str(), ev.tag.as_deref()),
            ("tag", Some("v1.2.0"))
        );
        assert_eq!(ev.changed_paths, None);
        let deleted = br#"{"ref":"refs/heads/x","after":"0000000000000000000000000000000000000000","deleted":true,"repository":{"full_name":"a/b"}}"#;
        assert!(matches!(
            parse_github(&h, deleted),
            Ok(Parsed::Ignored { .. })
        ));
        let ping = headers(&[(GITHUB_EVENT, "ping"), (GITHUB_DELIVERY, "d")]);
        assert!(matches!(
            parse_github(&ping, b"{}"),
            Ok(Parsed::Ignored { .. })
        ));
        assert_eq!(
            parse_github(&headers(&[(GITHUB_EVENT, "push")]), b"{}"),
            Err(ParseError::MissingHeader(GITHUB_DELIVERY.into()))
        );
        assert!(matches!(
            parse_github(&h, b"{\"ref\":1}"),
            Err(ParseError::Body { .. })
        ));
    }

    #[test]
    fn gitlab_push_counts_paths_only_when_complete() {
        let h = headers(&[(GITLAB_EVENT, "Push Hook"), (GITLAB_DELIVERY, "u-1")]);
        let body = br#"{"ref":"refs/heads/main","after":"f","checkout_sha":"f","total_commits_count":30,
            "project":{"path_with_namespace":"g/s/p"},"commits":[{"added":["a"],"modified":[],"removed":[]}]}"#;
        let Parsed::Event(ev) = parse_gitlab(&h, body).unwrap() else {
            panic!()
        };
        assert_eq!(ev.changed_paths, None, "20 of 30 commits listed");
        assert_eq!(ev.repository, "g/s/p");
    }

    #[test]
    fn generic_body() {
        let h = headers(&[("X-Delivery-Id", "g-1")]);
        let body = br#"{"type":"push","repository":"acme/shop","branch":"main","sha":"abc","paths":["b","a","b"]}"#;
        let Parsed::Event(ev) = parse_generic(&h, body, "X-Delivery-Id").unwrap() else {
            panic!()
        };
        assert_eq!(ev.source, "webhook");
        assert_eq!(ev.changed_paths, Some(vec!["a".into(), "b".into()]));
        assert_eq!(ev.key(), "generic/g-1");
        let long = headers(&[("X-Delivery-Id", &"x".repeat(MAX_DELIVERY_ID + 1))]);
        assert!(matches!(
            parse_generic(&long, body, "X-Delivery-Id"),
            Err(ParseError::BadDeliveryId { .. })
        ));
        let e = parse_generic(&h, b"{\"typo\":1}", "X-Delivery-Id").unwrap_err();
        assert!(e.to_string().contains("expected {\"type\""), "{e}");
    }
}
