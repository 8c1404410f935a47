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
//!
//! `model`: the types; `path`: condition paths; `check`: validation; `matching`: events.

mod check;
mod matching;
mod model;
mod path;

pub(crate) use check::problems;
pub use model::{
    BUILTIN_KINDS, BuiltinKind, FieldCondition, KubeEvent, KubernetesMatch, LabelRequirement,
    ResourceType, SelectorOperator,
};
pub use path::{FieldPath, PathSeg};

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

#[cfg(test)]
mod tests;
