//! Kubernetes triggers (`on.kubernetes`): which objects and which of their changes fire a
//! `TestTrigger`, the checks on what a user wrote, and matching of the events the cluster
//! watcher publishes.
//!
//! ```yaml
//! on:
//!   kubernetes:
//!     kind: Deployment            # or any custom resource with group and version
//!     namespace: shop             # or namespaces: [a, b]; every namespace when absent
//!     name: "payments-*"          # exact name or glob
//!     selector: {app: payments}   # label equality
//!     matchExpressions: [{key: tier, operator: In, values: [web, api]}]
//!     event: rollout-complete     # created | modified | deleted | rollout-complete | image-changed | scaled
//!     conditions: [{path: .spec.replicas, changedTo: "3"}]
//!     settle: 10s
//!     supersede: true
//! ```
//!
//! The watcher describes each object change with the labels of [`kube_labels`] on a
//! `TriggerEvent` with source [`KUBERNETES_SOURCE`] and the event name as its type, and
//! [`KubernetesMatch::explain`] reads only those labels, so the watcher and the scheduler
//! decide the same way.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::did_you_mean;
use crate::duration;
use crate::filter::GlobList;
use crate::locate::{Seg, kp};
use crate::trigger::EventView;
use crate::validate::{Problem, is_dns_label};

/// `source` of every event the cluster watcher publishes.
pub const KUBERNETES_SOURCE: &str = "kubernetes";

/// Labels the cluster watcher sets on its events (a public contract, like
/// [`crate::webhook_labels`]).
pub mod kube_labels {
    /// The object's kind (`Deployment`).
    pub const KIND: &str = "kind";
    /// The object's `apiVersion` (`apps/v1`, `v1`, `example.com/v1alpha1`).
    pub const API_VERSION: &str = "apiVersion";
    /// The object's namespace; absent for cluster-scoped objects.
    pub const NAMESPACE: &str = "namespace";
    /// The object's name.
    pub const NAME: &str = "name";
    /// The object's `metadata.uid`.
    pub const UID: &str = "uid";
    /// What was deployed: see the watcher's `revision` (Deployment: the
    /// `deployment.kubernetes.io/revision` annotation; StatefulSet: `status.updateRevision`;
    /// otherwise `metadata.generation`, or `metadata.resourceVersion` for kinds without one).
    pub const REVISION: &str = "revision";
    /// The event name again (`rollout-complete`), for templates.
    pub const EVENT: &str = "event";
    /// Every container's image, `container=reference` joined by `,` in container order.
    pub const IMAGES: &str = "images";
    /// `image.<container>`: that container's image reference.
    pub const IMAGE_PREFIX: &str = "image.";
    /// `digest.<container>`: the digest the node pulled (`sha256:…`), when the object
    /// reports one (Pods, from `status.containerStatuses[].imageID`).
    pub const DIGEST_PREFIX: &str = "digest.";
    /// `label.<key>`: each of the object's own labels.
    pub const LABEL_PREFIX: &str = "label.";
    /// `field:<path>`: the value at a condition's path in the new object (absent when the
    /// path is missing); paths are written as [`super::FieldPath`] displays them.
    pub const FIELD_PREFIX: &str = "field:";
    /// `previous:<path>`: the value at a condition's path in the object before the change.
    pub const PREVIOUS_PREFIX: &str = "previous:";
}

/// Reacts to changes of Kubernetes objects. See the module documentation for an example.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesMatch {
    /// The object kind: one of [`BUILTIN_KINDS`], or a custom resource's kind with `group`
    /// and `version`.
    pub kind: String,
    /// API group; defaulted for the built-in kinds, required for custom resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// API version; defaulted for the built-in kinds, required for custom resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Only objects in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Only objects in one of these namespaces. With neither field, every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// The object's name, exact or a glob (`payments-*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels the object must carry with these values.
    #[serde(
        default,
        deserialize_with = "scalar_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub selector: BTreeMap<String, String>,
    /// Set-based label requirements, as in a Kubernetes label selector; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelRequirement>,
    /// Which change fires the trigger.
    pub event: KubeEvent,
    /// Field conditions on the object before and after the change; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<FieldCondition>,
    /// A burst of changes of one object yields one event, once the object has been quiet
    /// this long (`10s`). None or `0s`: every change at once.
    #[serde(
        default,
        with = "duration::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub settle: Option<Duration>,
    /// A new revision of an object cancels the queued or running executions this trigger
    /// started for older revisions of the same object.
    #[serde(default)]
    pub supersede: bool,
}

/// The changes a Kubernetes trigger can react to.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Deserialize,
    Serialize,
    JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum KubeEvent {
    /// The object appeared (also when first seen by a fresh watch: see the watcher).
    Created,
    /// Any change of the object.
    #[default]
    Modified,
    /// The object was deleted.
    Deleted,
    /// A Deployment, StatefulSet or DaemonSet finished rolling out a new revision: every
    /// replica updated, ready and available. Fires once per object and revision.
    RolloutComplete,
    /// A container image of the object (or of its pod template) changed.
    ImageChanged,
    /// `spec.replicas` changed.
    Scaled,
}

impl KubeEvent {
    /// Every event, in declaration order.
    pub const ALL: [KubeEvent; 6] = [
        KubeEvent::Created,
        KubeEvent::Modified,
        KubeEvent::Deleted,
        KubeEvent::RolloutComplete,
        KubeEvent::ImageChanged,
        KubeEvent::Scaled,
    ];

    /// The name as written in YAML and carried as the event's type.
    pub fn as_str(self) -> &'static str {
        match self {
            KubeEvent::Created => "created",
            KubeEvent::Modified => "modified",
            KubeEvent::Deleted => "deleted",
            KubeEvent::RolloutComplete => "rollout-complete",
            KubeEvent::ImageChanged => "image-changed",
            KubeEvent::Scaled => "scaled",
        }
    }
}

impl fmt::Display for KubeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set-based label requirement (`{key: tier, operator: In, values: [web]}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    /// One or more for `In` and `NotIn`, none for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operators of Kubernetes label selectors, spelt as Kubernetes spells them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum SelectorOperator {
    /// The label is present with one of the values.
    #[default]
    In,
    /// The label is absent, or present with none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl LabelRequirement {
    /// Whether an object with `value` for this requirement's key (None: no such label)
    /// satisfies it.
    pub fn holds(&self, value: Option<&str>) -> bool {
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.iter().any(|w| w == v)),
            SelectorOperator::NotIn => !value.is_some_and(|v| self.values.iter().any(|w| w == v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// A condition on the value at a JSON path of the object, before and after the change.
///
/// Values are compared as text: strings as they are, numbers and booleans as JSON writes
/// them (`3`, `true`), objects and lists as compact JSON; a missing path and `null` are
/// both "no value". A created object has no value before, a deleted one none after.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FieldCondition {
    /// `.spec.replicas`, `.spec.template.spec.containers[0].image`,
    /// `.metadata.labels["app.kubernetes.io/version"]`.
    pub path: String,
    /// The value after the change is this.
    #[serde(
        default,
        deserialize_with = "opt_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub equals: Option<String>,
    /// `true`: the value differs before and after; `false`: it is the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// The value was not this before and is after.
    #[serde(
        default,
        deserialize_with = "opt_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub changed_to: Option<String>,
    /// The value was this before and is not after.
    #[serde(
        default,
        deserialize_with = "opt_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub changed_from: Option<String>,
}

impl FieldCondition {
    /// Whether the condition holds for the values at its path before (`old`) and after
    /// (`new`) the change, and if not, why. A condition naming no operator (refused by
    /// validation) holds; one naming several (also refused) needs all of them.
    pub fn check(&self, old: Option<&str>, new: Option<&str>) -> Result<(), String> {
        let show =
            |v: Option<&str>| v.map_or_else(|| "missing".to_string(), |v| format!("\"{v}\""));
        let p = &self.path;
        if let Some(want) = self.equals.as_deref()
            && new != Some(want)
        {
            return Err(format!("{p}: {} is not \"{want}\"", show(new)));
        }
        match self.changed {
            Some(true) if old == new => {
                return Err(format!("{p}: unchanged ({})", show(new)));
            }
            Some(false) if old != new => {
                return Err(format!("{p}: changed from {} to {}", show(old), show(new)));
            }
            _ => {}
        }
        if let Some(want) = self.changed_to.as_deref()
            && (old == Some(want) || new != Some(want))
        {
            return Err(format!(
                "{p}: did not change to \"{want}\" (from {} to {})",
                show(old),
                show(new)
            ));
        }
        if let Some(want) = self.changed_from.as_deref()
            && (old != Some(want) || new == Some(want))
        {
            return Err(format!(
                "{p}: did not change from \"{want}\" (from {} to {})",
                show(old),
                show(new)
            ));
        }
        Ok(())
    }

    fn operators(&self) -> Vec<&'static str> {
        [
            ("equals", self.equals.is_some()),
            ("changed", self.changed.is_some()),
            ("changedTo", self.changed_to.is_some()),
            ("changedFrom", self.changed_from.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect()
    }
}

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// A parsed JSON path: `.a.b`, `.a[0]`, `.a["key.with/dots"]` (or single quotes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath(pub Vec<PathSeg>);

impl FieldPath {
    /// Parses a path; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let bad = |why: &str| format!("invalid path `{text}`: {why}");
        let mut segs = Vec::new();
        let mut rest = text.trim();
        if !rest.starts_with('.') {
            return Err(bad("a path starts with `.`, e.g. `.spec.replicas`"));
        }
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let key = &after[..end];
                if key.is_empty() {
                    return Err(bad("empty key after `.`"));
                }
                if key.contains([']', '"', '\'', ' ']) {
                    return Err(bad(&format!(
                        "key `{key}` needs brackets and quotes: `[\"{key}\"]`"
                    )));
                }
                segs.push(PathSeg::Key(key.to_string()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let close = after.find(']').ok_or_else(|| bad("`[` without `]`"))?;
                let inner = &after[..close];
                let quoted = ['"', '\''].into_iter().find_map(|q| {
                    inner
                        .strip_prefix(q)
                        .and_then(|s| s.strip_suffix(q))
                        .map(str::to_string)
                });
                match quoted {
                    Some(key) if !key.is_empty() => segs.push(PathSeg::Key(key)),
                    Some(_) => return Err(bad("empty key in brackets")),
                    None => {
                        let i = inner.parse::<usize>().map_err(|_| {
                            bad(&format!("`[{inner}]` is neither an index nor a quoted key"))
                        })?;
                        segs.push(PathSeg::Index(i));
                    }
                }
                rest = &after[close + 1..];
            } else {
                return Err(bad(&format!("unexpected `{rest}`")));
            }
        }
        if segs.is_empty() {
            return Err(bad("name a field, e.g. `.spec.replicas`"));
        }
        Ok(FieldPath(segs))
    }
}

impl fmt::Display for FieldPath {
    /// The canonical spelling: `.a.b[0]["x.y"]` (brackets only where a key needs them).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for seg in &self.0 {
            match seg {
                PathSeg::Index(i) => write!(f, "[{i}]")?,
                PathSeg::Key(k) if k.contains(['.', '[', ']', '"', '\'', ' ']) => {
                    write!(f, "[\"{k}\"]")?
                }
                PathSeg::Key(k) => write!(f, ".{k}")?,
            }
        }
        Ok(())
    }
}

/// A built-in kind the watcher knows without being told its group and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinKind {
    pub kind: &'static str,
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// Has `spec.replicas` (`scaled` applies).
    pub replicas: bool,
    /// Rolls out revisions (`rollout-complete` applies).
    pub rollout: bool,
    /// Runs containers (`image-changed` applies).
    pub containers: bool,
    /// Watched as metadata only: its data never reaches the watcher or an event.
    pub metadata_only: bool,
}

const fn builtin(kind: &'static str, group: &'static str, flags: [bool; 4]) -> BuiltinKind {
    BuiltinKind {
        kind,
        group,
        version: "v1",
        replicas: flags[0],
        rollout: flags[1],
        containers: flags[2],
        metadata_only: flags[3],
    }
}

/// The kinds a trigger can name without `group` and `version`.
pub const BUILTIN_KINDS: &[BuiltinKind] = &[
    builtin("Deployment", "apps", [true, true, true, false]),
    builtin("StatefulSet", "apps", [true, true, true, false]),
    builtin("DaemonSet", "apps", [false, true, true, false]),
    builtin("Pod", "", [false, false, true, false]),
    builtin("Job", "batch", [false, false, true, false]),
    builtin("Service", "", [false, false, false, false]),
    builtin("ConfigMap", "", [false, false, false, false]),
    builtin("Secret", "", [false, false, false, true]),
];

/// The resource a trigger watches, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    /// Set for the built-in kinds (named without group/version, or with their own).
    pub builtin: Option<BuiltinKind>,
}

impl ResourceType {
    /// `apps/v1`, or `v1` for the core group: what objects carry as `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether `event` can happen to objects of this type. Custom resources may have
    /// replicas and pod templates: only `rollout-complete` is refused for them.
    pub fn supports(&self, event: KubeEvent) -> bool {
        match (self.builtin, event) {
            (Some(b), KubeEvent::RolloutComplete) => b.rollout,
            (Some(b), KubeEvent::Scaled) => b.replicas,
            (Some(b), KubeEvent::ImageChanged) => b.containers,
            (None, KubeEvent::RolloutComplete) => false,
            _ => true,
        }
    }
}

fn known_kinds() -> String {
    let mut kinds: Vec<&str> = BUILTIN_KINDS.iter().map(|b| b.kind).collect();
    kinds.sort_unstable();
    kinds.join(", ")
}

fn kinds_where(f: impl Fn(&BuiltinKind) -> bool) -> String {
    let kinds: Vec<&str> = BUILTIN_KINDS
        .iter()
        .filter(|b| f(b))
        .map(|b| b.kind)
        .collect();
    match kinds.as_slice() {
        [.., last] if kinds.len() > 1 => {
            format!("{} and {last}", kinds[..kinds.len() - 1].join(", "))
        }
        _ => kinds.join(""),
    }
}

impl KubernetesMatch {
    /// The resource type to watch: a built-in kind (group and version defaulted, or given
    /// as its own), or a custom resource (group and version required).
    pub fn resource(&self) -> Result<ResourceType, String> {
        let builtin = BUILTIN_KINDS.iter().find(|b| b.kind == self.kind).copied();
        match (builtin, self.group.as_deref(), self.version.as_deref()) {
            (Some(b), None, None) => Ok(ResourceType {
                group: b.group.into(),
                version: b.version.into(),
                kind: b.kind.into(),
                builtin: Some(b),
            }),
            (_, Some(g), Some(v)) => Ok(ResourceType {
                group: g.into(),
                version: v.into(),
                kind: self.kind.clone(),
                builtin: builtin.filter(|b| b.group == g && b.version == v),
            }),
            (_, Some(_), None) | (_, None, Some(_)) => Err(format!(
                "kind `{}` names {} without {}",
                self.kind,
                if self.group.is_some() {
                    "a group"
                } else {
                    "a version"
                },
                if self.group.is_some() {
                    "a version"
                } else {
                    "a group"
                },
            )),
            (None, None, None) => Err(format!(
                "unknown kind `{}` (known: {}); a custom resource needs `group` and `version`",
                self.kind,
                known_kinds()
            )),
        }
    }

    /// The settle window; zero when absent.
    pub fn settle(&self) -> Duration {
        self.settle.unwrap_or_default()
    }

    /// Whether a namespace is watched by this trigger.
    pub fn watches_namespace(&self, namespace: Option<&str>) -> bool {
        match (&self.namespace, self.namespaces.as_slice()) {
            (Some(want), _) => namespace == Some(want.as_str()),
            (None, []) => true,
            (None, list) => namespace.is_some_and(|ns| list.iter().any(|w| w == ns)),
        }
    }

    /// The parsed condition paths, in order (invalid ones, refused by validation, left out).
    pub fn condition_paths(&self) -> Vec<FieldPath> {
        self.conditions
            .iter()
            .filter_map(|c| FieldPath::parse(&c.path).ok())
            .collect()
    }

    /// Whether an event of the cluster watcher fires this trigger, and if not, the first
    /// thing that differs: source, type, kind and apiVersion, namespace, name, selector,
    /// match expressions, then conditions, reading only [`kube_labels`].
    pub fn explain(&self, ev: &EventView<'_>) -> Result<(), String> {
        use kube_labels::*;
        let label = |k: &str| ev.labels.get(k).map(String::as_str);
        if ev.source != KUBERNETES_SOURCE {
            return Err(format!("not a kubernetes event (source \"{}\")", ev.source));
        }
        if ev.r#type != self.event.as_str() {
            return Err(format!("type \"{}\" is not \"{}\"", ev.r#type, self.event));
        }
        let resource = self.resource()?;
        let kind = label(KIND).unwrap_or("");
        let api = label(API_VERSION).unwrap_or("");
        if kind != resource.kind || api != resource.api_version() {
            return Err(format!(
                "object {api} {kind} is not {} {}",
                resource.api_version(),
                resource.kind
            ));
        }
        let ns = label(NAMESPACE);
        if !self.watches_namespace(ns) {
            let want = match &self.namespace {
                Some(n) => format!("\"{n}\""),
                None => format!("one of [{}]", self.namespaces.join(", ")),
            };
            return Err(format!(
                "namespace {} is not {want}",
                ns.map_or_else(|| "(none)".to_string(), |n| format!("\"{n}\""))
            ));
        }
        if let Some(pattern) = &self.name {
            let name = label(NAME).unwrap_or("");
            let glob = GlobList::new(std::slice::from_ref(pattern)).map_err(|(_, e)| e)?;
            if !glob.matches(name) {
                return Err(format!("name \"{name}\" does not match \"{pattern}\""));
            }
        }
        let object_label = |k: &str| label(&format!("{LABEL_PREFIX}{k}"));
        for (k, want) in &self.selector {
            match object_label(k) {
                Some(got) if got == want => {}
                Some(got) => return Err(format!("selector {k}: \"{got}\" is not \"{want}\"")),
                None => return Err(format!("selector {k}: the object has no such label")),
            }
        }
        for r in &self.match_expressions {
            if !r.holds(object_label(&r.key)) {
                return Err(format!(
                    "matchExpressions {} {:?} [{}]: the object's label is {}",
                    r.key,
                    r.operator,
                    r.values.join(", "),
                    object_label(&r.key).map_or_else(|| "absent".into(), |v| format!("\"{v}\""))
                ));
            }
        }
        for c in &self.conditions {
            let path = FieldPath::parse(&c.path)?.to_string();
            let new = label(&format!("{FIELD_PREFIX}{path}"));
            let old = label(&format!("{PREVIOUS_PREFIX}{path}"));
            c.check(old, new)?;
        }
        Ok(())
    }
}

/// Why a trigger with `on.kubernetes` is refused at load, for now: nothing would act on it.
pub(crate) const REFUSAL: &str = "on.kubernetes: kubernetes triggers need the cluster watcher of the trigger-watcher, which is not available yet";

/// Everything wrong with an `on.kubernetes` block, then the refusal (see [`REFUSAL`]).
pub(crate) fn problems(k: &KubernetesMatch) -> Vec<Problem> {
    let mut out = Vec::new();
    let at = |rest: Vec<Seg>| {
        let mut p = kp!["spec", "on", "kubernetes"];
        p.extend(rest);
        p
    };
    let push = |out: &mut Vec<Problem>, path: Vec<Seg>, msg: String, hint: String| {
        out.push(Problem {
            path,
            message: msg,
            hint: Some(hint),
        })
    };
    match k.resource() {
        Ok(r) => {
            if !r.supports(k.event) {
                let who = match k.event {
                    KubeEvent::RolloutComplete => kinds_where(|b| b.rollout),
                    KubeEvent::Scaled => kinds_where(|b| b.replicas),
                    _ => kinds_where(|b| b.containers),
                };
                push(
                    &mut out,
                    at(kp!["event"]),
                    format!("event `{}` does not happen to a {}", k.event, r.kind),
                    format!(
                        "`{}` is for {who}{}; use `modified` with a condition for other kinds",
                        k.event,
                        if k.event == KubeEvent::RolloutComplete {
                            ""
                        } else {
                            " and custom resources"
                        }
                    ),
                );
            }
            if r.builtin.is_some_and(|b| b.metadata_only) {
                for (i, c) in k.conditions.iter().enumerate() {
                    let data = ["data", "stringData", "binaryData"].iter().any(|f| {
                        FieldPath::parse(&c.path)
                            .is_ok_and(|p| p.0.first() == Some(&PathSeg::Key(f.to_string())))
                    });
                    if data {
                        push(
                            &mut out,
                            at(kp!["conditions", i, "path"]),
                            format!(
                                "{} objects are watched as metadata only: `{}` is never seen",
                                r.kind, c.path
                            ),
                            "put conditions on `.metadata` (labels, annotations) instead".into(),
                        );
                    }
                }
            }
        }
        Err(e) => {
            let mut hint =
                "name a built-in kind, or give a custom resource's `group` and `version`"
                    .to_string();
            if let Some(best) = did_you_mean(&k.kind, BUILTIN_KINDS.iter().map(|b| b.kind))
                && best != k.kind
            {
                hint = format!("did you mean `{best}`? or {hint}");
            }
            push(&mut out, at(kp!["kind"]), e, hint);
        }
    }
    if !is_kind(&k.kind) {
        push(
            &mut out,
            at(kp!["kind"]),
            format!("invalid kind `{}`", k.kind),
            "kinds are CamelCase letters and digits, e.g. `Deployment`".into(),
        );
    }
    if let Some(g) = &k.group
        && !g.is_empty()
        && !g.split('.').all(is_dns_label)
    {
        push(
            &mut out,
            at(kp!["group"]),
            format!("invalid API group `{g}`"),
            "write the group as in the CRD, e.g. `example.com` (empty for the core group)".into(),
        );
    }
    if let Some(v) = &k.version
        && !is_version(v)
    {
        push(
            &mut out,
            at(kp!["version"]),
            format!("invalid API version `{v}`"),
            "write a version such as `v1`, `v1beta1` or `v2alpha3`".into(),
        );
    }
    if k.namespace.is_some() && !k.namespaces.is_empty() {
        push(
            &mut out,
            at(kp!["namespaces"]),
            "`namespace` and `namespaces` are both set".into(),
            "keep one: `namespace: NAME` or `namespaces: [a, b]`".into(),
        );
    }
    let named = k.namespace.iter().map(|n| (at(kp!["namespace"]), n));
    let listed = (k.namespaces.iter().enumerate()).map(|(i, n)| (at(kp!["namespaces", i]), n));
    for (path, ns) in named.chain(listed) {
        if !is_dns_label(ns) {
            push(
                &mut out,
                path,
                format!("invalid namespace `{ns}`"),
                "namespaces are lowercase letters, digits and '-'; leave it out for every namespace".into(),
            );
        }
    }
    if let Some(name) = &k.name
        && let Err((_, e)) = GlobList::new(std::slice::from_ref(name))
    {
        push(
            &mut out,
            at(kp!["name"]),
            format!("name: {e}"),
            "give an object name or a glob such as `payments-*`".into(),
        );
    }
    for (key, value) in &k.selector {
        if let Err(e) = label_key(key).and_then(|()| label_value(value)) {
            push(
                &mut out,
                at(kp!["selector", key.as_str()]),
                format!("invalid selector {key}: {e}"),
                "label selectors are `key: value` with Kubernetes label keys and values".into(),
            );
        }
    }
    for (i, r) in k.match_expressions.iter().enumerate() {
        let here = |rest: &str| at(kp!["matchExpressions", i, rest]);
        if let Err(e) = label_key(&r.key) {
            push(
                &mut out,
                here("key"),
                format!("invalid label key `{}`: {e}", r.key),
                "write a label key such as `app` or `app.kubernetes.io/name`".into(),
            );
        }
        let wants_values = matches!(r.operator, SelectorOperator::In | SelectorOperator::NotIn);
        if wants_values && r.values.is_empty() {
            push(
                &mut out,
                here("operator"),
                format!("operator {:?} needs at least one value", r.operator),
                "add `values: [a, b]`".into(),
            );
        }
        if !wants_values && !r.values.is_empty() {
            push(
                &mut out,
                here("values"),
                format!("operator {:?} takes no values", r.operator),
                "remove `values`, or use `In` / `NotIn`".into(),
            );
        }
        for (j, v) in r.values.iter().enumerate() {
            if let Err(e) = label_value(v) {
                push(
                    &mut out,
                    at(kp!["matchExpressions", i, "values", j]),
                    format!("invalid label value `{v}`: {e}"),
                    "label values are at most 63 letters, digits, '-', '_' and '.'".into(),
                );
            }
        }
    }
    for (i, c) in k.conditions.iter().enumerate() {
        if let Err(e) = FieldPath::parse(&c.path) {
            push(
                &mut out,
                at(kp!["conditions", i, "path"]),
                e,
                "write a JSON path such as `.spec.replicas` or `.metadata.labels[\"app.kubernetes.io/version\"]`".into(),
            );
        }
        let ops = c.operators();
        if ops.len() != 1 {
            push(
                &mut out,
                at(kp!["conditions", i]),
                if ops.is_empty() {
                    format!("condition on `{}` names no operator", c.path)
                } else {
                    format!("condition on `{}` names {}", c.path, ops.join(" and "))
                },
                "give exactly one of `equals`, `changed`, `changedTo`, `changedFrom`; add a condition per operator".into(),
            );
        }
    }
    out.push(Problem {
        path: kp!["spec", "on", "kubernetes"],
        message: REFUSAL.to_string(),
        hint: Some(
            "the trigger is checked already; until the watcher lands, have the deploy job publish an event and use `on.event`"
                .to_string(),
        ),
    });
    out
}

/// A kind: an ASCII letter first, then letters and digits.
fn is_kind(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// `v1`, `v1beta1`, `v2alpha3`.
fn is_version(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (major, tail) = rest.split_at(digits);
    let tail_ok = tail.is_empty()
        || ["alpha", "beta"].iter().any(|stage| {
            tail.strip_prefix(stage)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
    !major.is_empty() && !major.starts_with('0') && tail_ok
}

/// A label value: at most 63 characters, alphanumerics with `-`, `_`, `.` inside; may be empty.
fn label_value(v: &str) -> Result<(), String> {
    let inner_ok = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok = v.is_empty()
        || (v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric()));
    if v.len() > 63 {
        Err(format!("value is {} characters long, at most 63", v.len()))
    } else if !inner_ok || !ends_ok {
        Err(format!(
            "value `{v}` must be letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ))
    } else {
        Ok(())
    }
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name like a label value
/// but not empty.
fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.len() > 253 || !p.split('.').all(is_dns_label))
    {
        return Err(format!("prefix `{p}` is not a DNS subdomain"));
    }
    if name.is_empty() {
        return Err("the name part is empty".to_string());
    }
    label_value(name).map_err(|e| e.replace("value", "name"))
}

/// A YAML scalar (string, number, boolean) read as a string.
fn opt_scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<Scalar>::deserialize(d).map(|s| s.map(|s| s.0))
}

fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw: Option<BTreeMap<String, Scalar>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
#[path = "kube_trigger_tests.rs"]
mod tests;
