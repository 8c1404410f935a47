//! The events one change of an object yields, before any trigger's filters.

use assay_spec::KubeEvent;
use serde_json::Value;

use super::object;

/// One event a change yields, and what tells this occurrence from the next of the same
/// object (the last part of its dedup key):
/// - `created`, `deleted`: nothing (an object is created and deleted once per uid);
/// - `modified`: the new `resourceVersion` (every change is its own);
/// - `rollout-complete`: the [`object::revision`] that finished rolling out, so a
///   revision completes once whatever happens to the object later (scaling, resyncs);
/// - `image-changed`, `scaled`: the new generation (each spec change is its own; the
///   Deployment revision annotation lags the spec until the controller acts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub event: KubeEvent,
    pub occurrence: String,
}

impl Change {
    fn new(event: KubeEvent, occurrence: impl Into<String>) -> Change {
        Change {
            event,
            occurrence: occurrence.into(),
        }
    }
}

/// The events of one change of an object of `kind`: `old` is None when the object was
/// created, `new` None when it was deleted. An update that changes nothing (a resync, a
/// relist returning the same object) yields none.
///
/// `rollout-complete` fires on the transition into complete: the new object is complete
/// and the old one was not complete for the same revision. An object first seen already
/// complete (`old` None) does not fire it: the watch loop seeds its cache from the first
/// list without firing (a rollout completed unseen is [`caught_up`] instead), and a
/// created object has not rolled out anything yet.
pub fn changes(kind: &str, old: Option<&Value>, new: Option<&Value>) -> Vec<Change> {
    let (old, new) = match (old, new) {
        (None, None) => return Vec::new(),
        (None, Some(_)) => return vec![Change::new(KubeEvent::Created, "")],
        (Some(_), None) => return vec![Change::new(KubeEvent::Deleted, "")],
        (Some(old), Some(new)) => (old, new),
    };
    if old == new {
        return Vec::new();
    }
    let same_version = {
        let (a, b) = (object::resource_version(old), object::resource_version(new));
        !a.is_empty() && a == b
    };
    if same_version {
        return Vec::new();
    }
    let mut out = vec![Change::new(
        KubeEvent::Modified,
        object::resource_version(new),
    )];
    let revision = object::revision(kind, new);
    if object::rollout_complete(kind, new)
        && !(object::rollout_complete(kind, old) && object::revision(kind, old) == revision)
    {
        out.push(Change::new(KubeEvent::RolloutComplete, revision));
    }
    let refs = |o: &Value| -> Vec<(String, String)> {
        object::images(o)
            .into_iter()
            .map(|i| (i.container, i.reference))
            .collect()
    };
    if refs(old) != refs(new) {
        out.push(Change::new(
            KubeEvent::ImageChanged,
            object::spec_version(new),
        ));
    }
    if object::replicas(old) != object::replicas(new) {
        out.push(Change::new(KubeEvent::Scaled, object::spec_version(new)));
    }
    out
}

/// A `rollout-complete` for an object seen at a watch's first list (after a start or a
/// restart of the watcher), which no change would ever fire: its revision completed while
/// no watcher ran, or before this one started, or was fired already (the dedup key is the
/// same as the live event's, so the fired-keys bucket refuses a second one).
///
/// Caught up only when the object says when it completed ([`object::completed_at_ms`]),
/// and that is no earlier than the trigger's creation (`trigger_created_ms`, its
/// `TestTrigger`'s `creationTimestamp`) and within `window` before `now_ms` (the fired-keys
/// TTL: an older completion's key may have expired, and it would fire again). So a
/// trigger's first-ever start does not fire for every Deployment that completed long
/// before the trigger existed, and a watcher that was down longer than the TTL does not
/// fire what its keys no longer remember. Edge-triggered events (`created`, `modified`,
/// `image-changed`, `scaled`, `deleted`) are never caught up: the first list shows a
/// state, not a change, so a restart must not fire them.
pub fn caught_up(
    kind: &str,
    obj: &Value,
    trigger_created_ms: Option<i64>,
    now_ms: i64,
    window: std::time::Duration,
) -> Option<Change> {
    let created = trigger_created_ms?;
    if !object::rollout_complete(kind, obj) {
        return None;
    }
    let done = object::completed_at_ms(kind, obj)?;
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let floor = now_ms.saturating_sub(window_ms);
    (done >= created && done > floor)
        .then(|| Change::new(KubeEvent::RolloutComplete, object::revision(kind, obj)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::time::Duration;

    /// A Deployment as the API returns it mid-rollout: `generation`/`observed`,
    /// `spec.replicas`, then status (updated, ready, available, replicas), revision
    /// annotation, image.
    fn deployment(
        rv: u32,
        generation: i64,
        observed: i64,
        want: i64,
        status: [i64; 4],
        revision: &str,
        image: &str,
    ) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "payments", "namespace": "shop", "uid": "u-1",
                "resourceVersion": rv.to_string(), "generation": generation,
                "labels": {"app": "payments"},
                "annotations": {"deployment.kubernetes.io/revision": revision}
            },
            "spec": {
                "replicas": want,
                "template": {"spec": {"containers": [{"name": "app", "image": image}]}}
            },
            "status": {
                "observedGeneration": observed,
                "updatedReplicas": status[0], "readyReplicas": status[1],
                "availableReplicas": status[2], "replicas": status[3]
            }
        })
    }

    fn events(kind: &str, old: Option<&Value>, new: Option<&Value>) -> Vec<(KubeEvent, String)> {
        changes(kind, old, new)
            .into_iter()
            .map(|c| (c.event, c.occurrence))
            .collect()
    }

    fn rollouts(kind: &str, steps: &[Value]) -> Vec<(usize, String)> {
        steps
            .windows(2)
            .enumerate()
            .flat_map(|(i, w)| {
                changes(kind, Some(&w[0]), Some(&w[1]))
                    .into_iter()
                    .filter(|c| c.event == KubeEvent::RolloutComplete)
                    .map(move |c| (i + 1, c.occurrence))
            })
            .collect()
    }

    #[test]
    fn a_deployment_rollout_completes_once() {
        use KubeEvent::*;
        let steps = [
            // 0: revision 3 rolled out, 3 replicas.
            deployment(100, 5, 5, 3, [3, 3, 3, 3], "3", "app:1"),
            // 1: new image: generation 6 not yet observed.
            deployment(101, 6, 5, 3, [3, 3, 3, 3], "3", "app:2"),
            // 2: controller saw it, revision 4, surge pod created.
            deployment(102, 6, 6, 3, [1, 3, 3, 4], "4", "app:2"),
            // 3: two updated, one old still there.
            deployment(103, 6, 6, 3, [2, 3, 3, 4], "4", "app:2"),
            // 4: all updated, but one not ready yet.
            deployment(104, 6, 6, 3, [3, 2, 2, 3], "4", "app:2"),
            // 5: ready but not yet available (minReadySeconds).
            deployment(105, 6, 6, 3, [3, 3, 2, 3], "4", "app:2"),
            // 6: complete.
            deployment(106, 6, 6, 3, [3, 3, 3, 3], "4", "app:2"),
            // 7: a status heartbeat: nothing new.
            deployment(107, 6, 6, 3, [3, 3, 3, 3], "4", "app:2"),
        ];
        assert_eq!(rollouts("Deployment", &steps), vec![(6, "4".to_string())]);
        // The image change itself, keyed by the new generation.
        assert_eq!(
            events("Deployment", Some(&steps[0]), Some(&steps[1])),
            vec![(Modified, "101".into()), (ImageChanged, "6".into())]
        );
        // A resync delivers the same object again: no event at all.
        assert!(events("Deployment", Some(&steps[6]), Some(&steps[6].clone())).is_empty());
        // A relist with the same resourceVersion but a reordered or refreshed body: none.
        let mut relisted = steps[6].clone();
        relisted["status"]["conditions"] = json!([]);
        assert!(events("Deployment", Some(&steps[6]), Some(&relisted)).is_empty());
        // No old replicas may be left: updated = ready = available, but 4 pods.
        let leftover = deployment(108, 6, 6, 3, [3, 3, 3, 4], "4", "app:2");
        assert!(!object::rollout_complete("Deployment", &leftover));
    }

    #[test]
    fn scaling_a_complete_deployment_is_scaled_and_its_revision_completes_again_with_the_same_key()
    {
        use KubeEvent::*;
        let done = deployment(200, 6, 6, 3, [3, 3, 3, 3], "4", "app:2");
        let scaling = deployment(201, 7, 6, 5, [3, 3, 3, 3], "4", "app:2");
        let scaled = deployment(202, 7, 7, 5, [5, 5, 5, 5], "4", "app:2");
        assert_eq!(
            events("Deployment", Some(&done), Some(&scaling)),
            vec![(Modified, "201".into()), (Scaled, "7".into())]
        );
        // Complete again for revision 4: same occurrence, so the same dedup key as the
        // first completion; the key store makes it a no-op.
        assert_eq!(
            rollouts("Deployment", &[done, scaling, scaled]),
            vec![(2, "4".to_string())]
        );
    }

    fn statefulset(rv: u32, observed: i64, status: [i64; 3], current: &str, update: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "shop", "uid": "u-2", "resourceVersion": rv.to_string(), "generation": 3},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "db", "image": "pg:16"}]}}},
            "status": {
                "observedGeneration": observed, "updatedReplicas": status[0],
                "readyReplicas": status[1], "replicas": status[2],
                "currentRevision": current, "updateRevision": update
            }
        })
    }

    #[test]
    fn a_statefulset_completes_when_current_catches_up_with_update_revision() {
        let steps = [
            statefulset(1, 2, [3, 3, 3], "db-a", "db-a"),
            statefulset(2, 3, [0, 3, 3], "db-a", "db-b"),
            statefulset(3, 3, [2, 2, 3], "db-a", "db-b"),
            statefulset(4, 3, [3, 3, 3], "db-a", "db-b"),
            statefulset(5, 3, [3, 3, 3], "db-b", "db-b"),
            statefulset(6, 3, [3, 3, 3], "db-b", "db-b"),
        ];
        assert_eq!(
            rollouts("StatefulSet", &steps),
            vec![(4, "db-b".to_string())]
        );
    }

    fn daemonset(rv: u32, generation: i64, observed: i64, status: [i64; 4]) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "ops", "uid": "u-3", "resourceVersion": rv.to_string(), "generation": generation},
            "spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "agent:1"}]}}},
            "status": {
                "observedGeneration": observed, "desiredNumberScheduled": status[0],
                "updatedNumberScheduled": status[1], "numberReady": status[2], "numberAvailable": status[3]
            }
        })
    }

    #[test]
    fn a_daemonset_completes_when_every_node_runs_the_update() {
        let steps = [
            daemonset(1, 1, 1, [4, 4, 4, 4]),
            daemonset(2, 2, 1, [4, 4, 4, 4]),
            daemonset(3, 2, 2, [4, 1, 3, 3]),
            daemonset(4, 2, 2, [4, 4, 3, 3]),
            daemonset(5, 2, 2, [4, 4, 4, 3]),
            daemonset(6, 2, 2, [4, 4, 4, 4]),
            daemonset(7, 2, 2, [4, 4, 4, 4]),
        ];
        assert_eq!(rollouts("DaemonSet", &steps), vec![(5, "2".to_string())]);
    }

    #[test]
    fn a_rollout_is_caught_up_only_when_it_completed_after_the_trigger_and_within_the_window() {
        let mut done = deployment(9, 2, 2, 1, [1, 1, 1, 1], "2", "app:2");
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis()
        };
        let day = Duration::from_secs(24 * 3600);
        let now = at("2026-12-04T12:00:00Z");
        // No completion time recorded: nothing.
        assert_eq!(caught_up("Deployment", &done, Some(0), now, day), None);
        done["status"]["conditions"] = json!([
            {"type": "Available", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "lastUpdateTime": "2026-12-04T11:00:00Z", "lastTransitionTime": "2026-11-01T00:00:00Z"}
        ]);
        let trigger_at = at("2026-12-04T10:00:00Z");
        assert_eq!(
            caught_up("Deployment", &done, Some(trigger_at), now, day),
            Some(Change::new(KubeEvent::RolloutComplete, "2"))
        );
        // The trigger is younger than the rollout: a first start fires nothing.
        assert_eq!(
            caught_up(
                "Deployment",
                &done,
                Some(at("2026-12-04T11:30:00Z")),
                now,
                day
            ),
            None
        );
        // Older than the fired-keys TTL: its key may be gone, so not again.
        assert_eq!(
            caught_up(
                "Deployment",
                &done,
                Some(trigger_at),
                now,
                Duration::from_secs(60)
            ),
            None
        );
        // No trigger creation time (a trigger from files): nothing.
        assert_eq!(caught_up("Deployment", &done, None, now, day), None);
        // Not complete (a new revision rolling out): nothing.
        let mut rolling = done.clone();
        rolling["status"]["readyReplicas"] = json!(0);
        assert_eq!(
            caught_up("Deployment", &rolling, Some(trigger_at), now, day),
            None
        );
    }

    #[test]
    fn create_delete_and_first_sight() {
        use KubeEvent::*;
        let done = deployment(1, 1, 1, 1, [1, 1, 1, 1], "1", "app:1");
        assert_eq!(
            events("Deployment", None, Some(&done)),
            vec![(Created, String::new())]
        );
        assert_eq!(
            events("Deployment", Some(&done), None),
            vec![(Deleted, String::new())]
        );
        assert!(events("Deployment", None, None).is_empty());
    }

    #[test]
    fn pods_and_configmaps() {
        use KubeEvent::*;
        let pod = |rv: &str, image: &str| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "p", "uid": "u-4", "resourceVersion": rv},
                   "spec": {"containers": [{"name": "c", "image": image}]}})
        };
        // A Pod has no generation here: occurrences fall back to the resourceVersion.
        assert_eq!(
            events("Pod", Some(&pod("1", "a:1")), Some(&pod("2", "a:2"))),
            vec![(Modified, "2".into()), (ImageChanged, "2".into())]
        );
        // A digest appearing in the status is not an image change.
        let mut pulled = pod("3", "a:2");
        pulled["status"] = json!({"containerStatuses": [{"name": "c", "imageID": "a@sha256:x"}]});
        assert_eq!(
            events("Pod", Some(&pod("2", "a:2")), Some(&pulled)),
            vec![(Modified, "3".into())]
        );
        let cm = |rv: &str, v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": rv}, "data": {"k": v}});
        assert_eq!(
            events("ConfigMap", Some(&cm("5", "a")), Some(&cm("6", "b"))),
            vec![(Modified, "6".into())]
        );
    }

    proptest! {
        /// Along any sequence of Deployment states (each delivered, then resynced): a
        /// rollout-complete fires only into a complete state, names that state's revision,
        /// never on a resync, and the dedup keys it yields (one per revision) are exactly
        /// the revisions that reached completion after being seen incomplete or new.
        #[test]
        fn rollout_complete_fires_only_on_transitions(
            states in proptest::collection::vec((1i64..4, 0i64..2, 0i64..4, 1u8..4), 1..30),
        ) {
            let mut seq = Vec::new();
            for (i, (want, lag, ready, rev)) in states.into_iter().enumerate() {
                let generation = 10 + i as i64;
                let status = [ready, ready, ready, ready];
                seq.push(deployment(i as u32 + 1, generation, generation - lag, want, status, &rev.to_string(), "app:1"));
            }
            let mut prev: Option<&Value> = None;
            for obj in &seq {
                let fired: Vec<Change> = changes("Deployment", prev, Some(obj))
                    .into_iter()
                    .filter(|c| c.event == KubeEvent::RolloutComplete)
                    .collect();
                for c in &fired {
                    prop_assert!(object::rollout_complete("Deployment", obj));
                    prop_assert_eq!(&c.occurrence, &object::revision("Deployment", obj));
                    let p = prev.expect("a created object never completes a rollout");
                    prop_assert!(
                        !object::rollout_complete("Deployment", p)
                            || object::revision("Deployment", p) != c.occurrence
                    );
                }
                prop_assert!(changes("Deployment", Some(obj), Some(obj)).is_empty(), "a resync fired");
                prev = Some(obj);
            }
        }
    }
}
