//! The `on.kubernetes` model: what a user writes, and the built-in kinds it knows.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::FieldPath;
use crate::duration;

/// Reacts to changes of Kubernetes objects:
///
/// ```yaml
/// kubernetes: {kind: Deployment, namespace: shop, selector: {app: payments}, event: rollout-complete}
/// ```
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
    /// The object appeared while watched (objects found by a watch's first list, already
    /// there, do not fire it).
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

/// The built-in kinds, sorted, for messages.
pub(crate) fn known_kinds() -> String {
    let mut kinds: Vec<&str> = BUILTIN_KINDS.iter().map(|b| b.kind).collect();
    kinds.sort_unstable();
    kinds.join(", ")
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
