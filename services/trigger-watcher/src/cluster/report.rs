//! The `Watching` condition of each trigger that came from a `TestTrigger` object
//! (`--catalog kubernetes`), so that `kubectl get testtriggers -o yaml` says why a trigger
//! does nothing: `False` with the error of its watch (reason `UnknownKind`, `Forbidden`,
//! `UnsupportedEvent` or `WatchFailed`) and one Warning Event per distinct error, `True`
//! (reason `Watching`) once every watch it needs has listed. `Valid` stays the scheduler's.

use std::collections::{BTreeMap, HashMap};

use assay_cluster::StatusWriter;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition's type.
pub const CONDITION_WATCHING: &str = "Watching";

/// The reason of a watch error, from the error the watch loop words (its first words are
/// fixed: `forbidden: …`, `unknown kind …`, `event … does not happen to …`).
pub fn reason(why: &str) -> &'static str {
    if why.starts_with("forbidden") {
        "Forbidden"
    } else if why.starts_with("unknown kind") {
        "UnknownKind"
    } else if why.starts_with("event `") && why.contains("does not happen") {
        "UnsupportedEvent"
    } else {
        "WatchFailed"
    }
}

/// The `Watching` condition for a trigger's state: `Ok` watching, `Err` failing and why.
pub fn condition(state: &Result<(), String>, generation: Option<i64>) -> Condition {
    let (status, reason, message) = match state {
        Ok(()) => (
            "True",
            "Watching",
            "the objects this trigger names are listed and watched".to_string(),
        ),
        Err(why) => ("False", reason(why), why.clone()),
    };
    Condition {
        type_: CONDITION_WATCHING.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: generation,
    }
}

/// Records each trigger's state on its object when it changes.
pub(crate) struct Reporter {
    writer: StatusWriter,
    /// What was recorded per trigger.
    said: HashMap<String, Result<(), String>>,
    /// The last error a Warning Event was recorded for, per trigger: a watch that fails,
    /// retries and fails again the same way records one Event.
    evented: HashMap<String, String>,
}

impl Reporter {
    pub fn new(writer: StatusWriter) -> Reporter {
        Reporter {
            writer,
            said: HashMap::new(),
            evented: HashMap::new(),
        }
    }

    /// Records what changed since the last call; `now` is [`super::ClusterStatus::watching`].
    pub fn tick(&mut self, now: &BTreeMap<String, Result<(), String>>) {
        for (trigger, state) in now {
            if self.said.get(trigger) == Some(state) {
                continue;
            }
            // A trigger from another source, or not yet in the writer's view.
            let Some(obj) = self.writer.trigger(trigger) else {
                continue;
            };
            let wanted = condition(state, obj.generation);
            if let Err(why) = state
                && self.evented.get(trigger) != Some(why)
            {
                // An earlier run already said it on the object: no second Event.
                let told = obj.conditions.iter().any(|c| {
                    c.type_ == CONDITION_WATCHING && c.status == "False" && &c.message == why
                });
                if !told {
                    self.writer.event(&obj.key, reason(why), why.clone());
                }
                self.evented.insert(trigger.clone(), why.clone());
            }
            self.writer.condition(&obj.key, wanted);
            self.said.insert(trigger.clone(), state.clone());
        }
        self.said.retain(|t, _| now.contains_key(t));
        self.evented.retain(|t, _| now.contains_key(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_follow_the_errors_the_watch_loop_words() {
        assert_eq!(
            reason(
                "forbidden: the trigger-watcher's service account may not list deployments.apps in namespace shop; …"
            ),
            "Forbidden"
        );
        assert_eq!(
            reason("unknown kind `Widget`: the API server does not serve example.com/v1; …"),
            "UnknownKind"
        );
        assert_eq!(
            reason("unknown kind `Widgets` (known: ConfigMap, …)"),
            "UnknownKind"
        );
        assert_eq!(
            reason("event `rollout-complete` does not happen to a Service"),
            "UnsupportedEvent"
        );
        assert_eq!(reason("cannot resolve X v1: timeout"), "WatchFailed");
        let ok = condition(&Ok(()), Some(3));
        assert_eq!(
            (
                ok.status.as_str(),
                ok.reason.as_str(),
                ok.observed_generation
            ),
            ("True", "Watching", Some(3))
        );
        let bad = condition(&Err("forbidden: x".into()), None);
        assert_eq!(
            (
                bad.status.as_str(),
                bad.reason.as_str(),
                bad.message.as_str()
            ),
            ("False", "Forbidden", "forbidden: x")
        );
    }
}
