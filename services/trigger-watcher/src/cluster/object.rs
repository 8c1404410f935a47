//! Facts read from one Kubernetes object (as JSON): identity, revision, container images,
//! replicas, and whether its rollout is complete.

use std::collections::BTreeMap;

use serde_json::Value;

/// Annotation the Deployment controller sets to the revision of its current ReplicaSet.
pub const DEPLOYMENT_REVISION: &str = "deployment.kubernetes.io/revision";

/// Who an object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub kind: String,
    pub api_version: String,
    /// None for cluster-scoped objects.
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

/// A string at `path` (keys only), if it is one.
pub fn str_at<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(obj, path)?.as_str()
}

/// An integer at `path` (keys only), if it is one.
pub fn int_at(obj: &Value, path: &[&str]) -> Option<i64> {
    at(obj, path)?.as_i64()
}

fn at<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |v, k| v.get(k))
}

/// The object's kind, apiVersion, namespace, name and uid (empty strings when missing).
pub fn identity(obj: &Value) -> ObjectRef {
    let s = |path: &[&str]| str_at(obj, path).unwrap_or_default().to_string();
    ObjectRef {
        kind: s(&["kind"]),
        api_version: s(&["apiVersion"]),
        namespace: str_at(obj, &["metadata", "namespace"])
            .filter(|n| !n.is_empty())
            .map(str::to_string),
        name: s(&["metadata", "name"]),
        uid: s(&["metadata", "uid"]),
    }
}

/// The object's own labels.
pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// What is deployed, as a string that changes with each rollout:
/// - Deployment: the `deployment.kubernetes.io/revision` annotation (the revision of the
///   current ReplicaSet, what `kubectl rollout history` shows);
/// - StatefulSet: `status.updateRevision` (the ControllerRevision being rolled out);
/// - everything else, DaemonSet included: `metadata.generation` (bumped by every spec
///   change), or `metadata.resourceVersion` for kinds without a generation (ConfigMap,
///   Secret, Service, older Pods).
///
/// Falls back along the same chain when the preferred field is not there yet (a
/// Deployment the controller has not seen).
pub fn revision(kind: &str, obj: &Value) -> String {
    let preferred = match kind {
        "Deployment" => str_at(obj, &["metadata", "annotations", DEPLOYMENT_REVISION]),
        "StatefulSet" => str_at(obj, &["status", "updateRevision"]),
        _ => None,
    };
    preferred
        .map(str::to_string)
        .or_else(|| generation(obj))
        .unwrap_or_else(|| resource_version(obj))
}

/// `metadata.generation` as text, when the kind has one.
pub fn generation(obj: &Value) -> Option<String> {
    int_at(obj, &["metadata", "generation"]).map(|g| g.to_string())
}

/// `metadata.resourceVersion` (empty when missing).
pub fn resource_version(obj: &Value) -> String {
    str_at(obj, &["metadata", "resourceVersion"])
        .unwrap_or_default()
        .to_string()
}

/// What tells one spec change from the next: the generation, or the resourceVersion for
/// kinds without one.
pub fn spec_version(obj: &Value) -> String {
    generation(obj).unwrap_or_else(|| resource_version(obj))
}

/// `spec.replicas`, for kinds that have it. Kubernetes defaults it to 1 for Deployments
/// and StatefulSets; an object read from the API always carries it.
pub fn replicas(obj: &Value) -> Option<i64> {
    int_at(obj, &["spec", "replicas"])
}

/// One container of an object, or of its pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub container: String,
    /// The reference as written in the spec (`registry/app:1.2`, `app@sha256:…`).
    pub reference: String,
    /// The manifest digest (`sha256:…`): from the reference when it is pinned, else from
    /// the Pod's `status.containerStatuses[].imageID` when it names one (`…@sha256:…`).
    pub digest: Option<String>,
}

/// The pod spec of an object: a Pod's `spec`, a CronJob's job template's pod template, or
/// any other kind's `spec.template.spec` (Deployment, StatefulSet, DaemonSet, Job, and
/// custom resources that follow the convention).
fn pod_spec(obj: &Value) -> Option<&Value> {
    if obj.get("kind").and_then(Value::as_str) == Some("Pod") {
        return obj.get("spec");
    }
    obj.pointer("/spec/template/spec")
        .or_else(|| obj.pointer("/spec/jobTemplate/spec/template/spec"))
}

/// The digest in an image reference or imageID (`repo@sha256:…`, `docker-pullable://repo@sha256:…`).
fn digest_of(text: &str) -> Option<String> {
    let (_, digest) = text.rsplit_once('@')?;
    digest.contains(':').then(|| digest.to_string())
}

/// Every container's image, init containers first, in spec order. Pods add the digests
/// their container statuses report.
pub fn images(obj: &Value) -> Vec<Image> {
    let Some(spec) = pod_spec(obj) else {
        return Vec::new();
    };
    let mut statuses: BTreeMap<&str, &str> = BTreeMap::new();
    for list in ["initContainerStatuses", "containerStatuses"] {
        for s in obj
            .pointer(&format!("/status/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(name), Some(id)) = (
                s.get("name").and_then(Value::as_str),
                s.get("imageID").and_then(Value::as_str),
            ) {
                statuses.insert(name, id);
            }
        }
    }
    let mut out = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let container = c.get("name").and_then(Value::as_str).unwrap_or_default();
            let reference = c.get("image").and_then(Value::as_str).unwrap_or_default();
            let digest = digest_of(reference)
                .or_else(|| statuses.get(container).and_then(|id| digest_of(id)));
            out.push(Image {
                container: container.to_string(),
                reference: reference.to_string(),
                digest,
            });
        }
    }
    out
}

/// Whether the object finished rolling out its current spec, for the kinds that roll out:
/// - Deployment: the controller has seen the latest spec (`status.observedGeneration >=
///   metadata.generation`), and `updatedReplicas`, `readyReplicas` and `availableReplicas`
///   all equal `spec.replicas`, with no old replicas left (`status.replicas ==
///   spec.replicas`);
/// - StatefulSet: generation observed, `updatedReplicas == readyReplicas == status.replicas
///   == spec.replicas`, and `currentRevision == updateRevision`;
/// - DaemonSet: generation observed, `updatedNumberScheduled == numberReady ==
///   numberAvailable == desiredNumberScheduled`.
///
/// Status counters Kubernetes leaves out when zero count as zero. Other kinds: false.
pub fn rollout_complete(kind: &str, obj: &Value) -> bool {
    let status = |k: &str| int_at(obj, &["status", k]).unwrap_or(0);
    let observed = match (
        int_at(obj, &["status", "observedGeneration"]),
        int_at(obj, &["metadata", "generation"]),
    ) {
        (Some(seen), Some(generation)) => seen >= generation,
        _ => false,
    };
    match kind {
        "Deployment" => {
            let want = replicas(obj).unwrap_or(1);
            observed
                && [
                    "updatedReplicas",
                    "readyReplicas",
                    "availableReplicas",
                    "replicas",
                ]
                .iter()
                .all(|k| status(k) == want)
        }
        "StatefulSet" => {
            let want = replicas(obj).unwrap_or(1);
            let current = str_at(obj, &["status", "currentRevision"]);
            let update = str_at(obj, &["status", "updateRevision"]);
            observed
                && ["updatedReplicas", "readyReplicas", "replicas"]
                    .iter()
                    .all(|k| status(k) == want)
                && update.is_some()
                && current == update
        }
        "DaemonSet" => {
            let want = status("desiredNumberScheduled");
            observed
                && ["updatedNumberScheduled", "numberReady", "numberAvailable"]
                    .iter()
                    .all(|k| status(k) == want)
        }
        _ => false,
    }
}

/// When the object's current rollout completed, in milliseconds since the epoch, where
/// the object says so: a Deployment's `Progressing` condition with reason
/// `NewReplicaSetAvailable`, which the Deployment controller sets (`lastUpdateTime`) when
/// the new ReplicaSet becomes available, and never touches again until the next rollout.
/// StatefulSets and DaemonSets record no such time: `None`.
pub fn completed_at_ms(kind: &str, obj: &Value) -> Option<i64> {
    if kind != "Deployment" {
        return None;
    }
    let conditions = obj.pointer("/status/conditions")?.as_array()?;
    let done = conditions.iter().find(|c| {
        str_at(c, &["type"]) == Some("Progressing")
            && str_at(c, &["status"]) == Some("True")
            && str_at(c, &["reason"]) == Some("NewReplicaSetAvailable")
    })?;
    let at = str_at(done, &["lastUpdateTime"]).or_else(|| str_at(done, &["lastTransitionTime"]))?;
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The object as an event payload: without `metadata.managedFields` and the
/// `kubectl.kubernetes.io/last-applied-configuration` annotation (bookkeeping, often larger
/// than the rest). Secrets keep only their metadata: their data never leaves the watcher.
pub fn trimmed(kind: &str, obj: &Value) -> Value {
    let mut out = if kind == "Secret" {
        let mut keep = serde_json::Map::new();
        for k in ["apiVersion", "kind", "metadata", "type"] {
            if let Some(v) = obj.get(k) {
                keep.insert(k.to_string(), v.clone());
            }
        }
        Value::Object(keep)
    } else {
        obj.clone()
    };
    if let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            ann.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_images_take_digests_from_statuses() {
        let pod = json!({
            "kind": "Pod",
            "spec": {
                "initContainers": [{"name": "migrate", "image": "shop/migrate:2"}],
                "containers": [
                    {"name": "app", "image": "shop/app:1.4"},
                    {"name": "pinned", "image": "proxy@sha256:aaa"},
                    {"name": "pending", "image": "shop/side:3"}
                ]
            },
            "status": {
                "initContainerStatuses": [{"name": "migrate", "imageID": "docker.io/shop/migrate@sha256:mmm"}],
                "containerStatuses": [
                    {"name": "app", "imageID": "docker-pullable://docker.io/shop/app@sha256:bbb"},
                    {"name": "pinned", "imageID": "docker.io/proxy@sha256:aaa"},
                    {"name": "pending", "imageID": ""}
                ]
            }
        });
        let got: Vec<(String, String, Option<String>)> = images(&pod)
            .into_iter()
            .map(|i| (i.container, i.reference, i.digest))
            .collect();
        let s = |x: &str| x.to_string();
        assert_eq!(
            got,
            vec![
                (s("migrate"), s("shop/migrate:2"), Some(s("sha256:mmm"))),
                (s("app"), s("shop/app:1.4"), Some(s("sha256:bbb"))),
                (s("pinned"), s("proxy@sha256:aaa"), Some(s("sha256:aaa"))),
                (s("pending"), s("shop/side:3"), None),
            ]
        );
    }

    #[test]
    fn template_images_and_revisions() {
        let d = json!({
            "kind": "Deployment",
            "metadata": {"generation": 7, "resourceVersion": "99", "annotations": {DEPLOYMENT_REVISION: "4"}},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:2"}]}}}
        });
        assert_eq!(images(&d)[0].reference, "app:2");
        assert_eq!(revision("Deployment", &d), "4");
        assert_eq!(revision("DaemonSet", &d), "7");
        let cm = json!({"kind": "ConfigMap", "metadata": {"resourceVersion": "12"}});
        assert_eq!(revision("ConfigMap", &cm), "12");
        assert!(images(&cm).is_empty());
        let sts = json!({"kind": "StatefulSet", "metadata": {"generation": 2}, "status": {"updateRevision": "web-7d9f"}});
        assert_eq!(revision("StatefulSet", &sts), "web-7d9f");
        let cron = json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "job:1"}]}}}}}});
        assert_eq!(images(&cron)[0].reference, "job:1");
    }

    #[test]
    fn payloads_drop_bookkeeping_and_secret_data() {
        let obj = json!({
            "kind": "Secret",
            "metadata": {"name": "s", "managedFields": [{}], "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{}}", "keep": "me"}},
            "data": {"token": "c2VjcmV0"},
            "stringData": {"token": "secret"},
            "type": "Opaque"
        });
        let t = trimmed("Secret", &obj);
        assert_eq!(
            t,
            json!({"kind": "Secret", "metadata": {"name": "s", "annotations": {"keep": "me"}}, "type": "Opaque"})
        );
        let cm =
            json!({"kind": "ConfigMap", "metadata": {"managedFields": []}, "data": {"a": "b"}});
        assert_eq!(
            trimmed("ConfigMap", &cm),
            json!({"kind": "ConfigMap", "metadata": {}, "data": {"a": "b"}})
        );
    }
}
