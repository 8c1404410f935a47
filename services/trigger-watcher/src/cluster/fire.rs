//! For one trigger and one change of an object: the `TriggerEvent`s it fires, each with
//! its dedup key.
//!
//! The watcher describes the change with the labels of [`assay_spec::kube_labels`] and
//! asks the trigger's own [`KubernetesMatch::explain`], so it decides exactly as the spec
//! says; the event then names the trigger, so the scheduler fires that trigger only.

use std::collections::BTreeMap;

use assay_proto::TriggerEvent;
use assay_spec::{KUBERNETES_SOURCE, KubeEvent, KubernetesMatch, kube_labels};
use serde_json::Value;

use super::changes::{Change, changes};
use super::{object, path};

/// `producer` of the events.
const PRODUCER: &str = "trigger-watcher";

/// A payload larger than this is cut to the object's metadata (NATS refuses messages over
/// its max payload, 1 MiB by default, and the event has labels and a header too).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// An event a trigger fires.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// [`dedup_key`]: also the event's idempotency key (`Nats-Msg-Id`).
    pub key: String,
    pub event: TriggerEvent,
}

/// A change of the trigger's event kind the trigger did not fire on, and why (for logs and
/// `explain`-style status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub event: KubeEvent,
    pub reason: String,
}

/// The dedup key of a firing: `kubernetes/<trigger>/<object uid>/<event>/<occurrence>`
/// (see [`Change`] for the occurrence; `created` and `deleted` have none and end at the
/// event). The same rollout of the same object fires one trigger once, across watch
/// restarts, relists and watcher replicas, as long as the key store remembers it.
pub fn dedup_key(trigger: &str, uid: &str, event: KubeEvent, occurrence: &str) -> String {
    if occurrence.is_empty() {
        format!("{KUBERNETES_SOURCE}/{trigger}/{uid}/{event}")
    } else {
        format!("{KUBERNETES_SOURCE}/{trigger}/{uid}/{event}/{occurrence}")
    }
}

/// The events trigger `name` (matching `m`) fires for one change of an object of `kind`
/// (`old` None: created; `new` None: deleted), and the changes of its event kind it does
/// not fire on, with the reason. The settle window and supersede are the caller's
/// ([`super::settle`], [`super::supersede`]).
pub fn decide(
    name: &str,
    m: &KubernetesMatch,
    kind: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) -> (Vec<Firing>, Vec<Skipped>) {
    decide_changes(name, m, kind, old, new, changes(kind, old, new))
}

/// [`decide`] for changes the caller found: a rollout caught up at the first list
/// ([`super::changes::caught_up`]) has no old object to compare with.
pub fn decide_changes(
    name: &str,
    m: &KubernetesMatch,
    kind: &str,
    old: Option<&Value>,
    new: Option<&Value>,
    found: Vec<Change>,
) -> (Vec<Firing>, Vec<Skipped>) {
    let (mut fired, mut skipped) = (Vec::new(), Vec::new());
    let Some(current) = new.or(old) else {
        return (fired, skipped);
    };
    for change in found {
        if change.event != m.event {
            continue;
        }
        let labels = event_labels(m, kind, &change, current, old, new);
        let view = assay_spec::EventView {
            source: KUBERNETES_SOURCE,
            r#type: change.event.as_str(),
            labels: &labels,
            changed_paths: None,
        };
        if let Err(reason) = m.explain(&view) {
            skipped.push(Skipped {
                event: change.event,
                reason,
            });
            continue;
        }
        let uid = object::identity(current).uid;
        let key = dedup_key(name, &uid, change.event, &change.occurrence);
        let event = TriggerEvent {
            header: Some(assay_bus::header(PRODUCER, key.clone(), None)),
            source: KUBERNETES_SOURCE.to_string(),
            r#type: change.event.as_str().to_string(),
            labels: labels.into_iter().collect(),
            payload: payload(kind, current),
            trigger: name.to_string(),
            ..Default::default()
        };
        fired.push(Firing { key, event });
    }
    (fired, skipped)
}

/// The labels of [`kube_labels`] for a change: identity, revision, images and digests,
/// the object's labels, and the trigger's condition paths before and after.
fn event_labels(
    m: &KubernetesMatch,
    kind: &str,
    change: &Change,
    current: &Value,
    old: Option<&Value>,
    new: Option<&Value>,
) -> BTreeMap<String, String> {
    use kube_labels::*;
    let id = object::identity(current);
    let mut l = BTreeMap::from([
        (KIND.to_string(), id.kind),
        (API_VERSION.to_string(), id.api_version),
        (NAME.to_string(), id.name),
        (UID.to_string(), id.uid),
        (REVISION.to_string(), object::revision(kind, current)),
        (EVENT.to_string(), change.event.as_str().to_string()),
    ]);
    if let Some(ns) = id.namespace {
        l.insert(NAMESPACE.to_string(), ns);
    }
    let images = object::images(current);
    if !images.is_empty() {
        let joined: Vec<String> = images
            .iter()
            .map(|i| format!("{}={}", i.container, i.reference))
            .collect();
        l.insert(IMAGES.to_string(), joined.join(","));
    }
    for i in images {
        if let Some(d) = i.digest {
            l.insert(format!("{DIGEST_PREFIX}{}", i.container), d);
        }
        l.insert(format!("{IMAGE_PREFIX}{}", i.container), i.reference);
    }
    for (k, v) in object::labels(current) {
        l.insert(format!("{LABEL_PREFIX}{k}"), v);
    }
    for p in m.condition_paths() {
        let shown = p.to_string();
        if let Some(v) = path::text_at(new, &p) {
            l.insert(format!("{FIELD_PREFIX}{shown}"), v);
        }
        if let Some(v) = path::text_at(old, &p) {
            l.insert(format!("{PREVIOUS_PREFIX}{shown}"), v);
        }
    }
    l
}

/// The object as JSON, trimmed ([`object::trimmed`]); only its metadata when larger than
/// [`MAX_PAYLOAD_BYTES`].
fn payload(kind: &str, obj: &Value) -> Vec<u8> {
    let trimmed = object::trimmed(kind, obj);
    let bytes = serde_json::to_vec(&trimmed).unwrap_or_default();
    if bytes.len() <= MAX_PAYLOAD_BYTES {
        return bytes;
    }
    let meta = serde_json::json!({
        "apiVersion": trimmed.get("apiVersion"),
        "kind": trimmed.get("kind"),
        "metadata": trimmed.get("metadata"),
    });
    serde_json::to_vec(&meta).unwrap_or_default()
}

#[cfg(test)]
#[path = "fire_tests.rs"]
mod tests;
