//! `supersede: true`: a new revision of an object cancels the executions the same trigger
//! started for older revisions of it.

/// An execution a trigger started for one revision of one object, still queued or running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub execution: String,
    /// The object's `metadata.uid`.
    pub uid: String,
    pub revision: String,
}

/// What a new revision means for the executions already started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SupersedeDecision {
    /// Executions to cancel: same object, another (older) revision.
    pub cancel: Vec<String>,
    /// The new revision is older than one already started (a late event): cancel nothing;
    /// the caller should not start it either.
    pub stale: bool,
}

/// Which of `active` (started by one trigger, queued or running) a new `revision` of the
/// object `uid` supersedes.
///
/// Revisions are compared as numbers when both are (Deployment revisions, generations,
/// resource versions): a lower new one is stale. Others (a StatefulSet's
/// `updateRevision`, a hash) have no order: every other revision of the object counts as
/// older, because the watcher sees an object's revisions in order. Executions of the same
/// revision are kept (the same rollout; dedup keys stop it starting twice), and other
/// objects' are untouched.
pub fn supersede(active: &[Started], uid: &str, revision: &str) -> SupersedeDecision {
    let mine: Vec<&Started> = active.iter().filter(|s| s.uid == uid).collect();
    let newer = |s: &&Started| match (s.revision.parse::<u64>(), revision.parse::<u64>()) {
        (Ok(theirs), Ok(ours)) => theirs > ours,
        _ => false,
    };
    if mine.iter().any(newer) {
        return SupersedeDecision {
            cancel: Vec::new(),
            stale: true,
        };
    }
    SupersedeDecision {
        cancel: mine
            .into_iter()
            .filter(|s| s.revision != revision)
            .map(|s| s.execution.clone())
            .collect(),
        stale: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(execution: &str, uid: &str, revision: &str) -> Started {
        Started {
            execution: execution.into(),
            uid: uid.into(),
            revision: revision.into(),
        }
    }

    #[test]
    fn a_new_revision_cancels_older_ones_of_the_same_object_only() {
        let active = [
            started("e1", "u-1", "3"),
            started("e2", "u-1", "4"),
            started("e3", "u-2", "1"),
            started("e4", "u-1", "5"),
        ];
        let d = supersede(&active, "u-1", "5");
        assert_eq!(d.cancel, ["e1", "e2"]);
        assert!(!d.stale);
        assert_eq!(supersede(&active, "u-3", "9"), SupersedeDecision::default());
    }

    #[test]
    fn a_late_older_revision_is_stale_and_cancels_nothing() {
        let active = [started("e1", "u-1", "7")];
        let d = supersede(&active, "u-1", "6");
        assert!(d.stale && d.cancel.is_empty(), "{d:?}");
        // Numbers compare as numbers, not text: 10 is newer than 9.
        let d = supersede(&[started("e1", "u-1", "9")], "u-1", "10");
        assert_eq!(d.cancel, ["e1"]);
    }

    #[test]
    fn unordered_revisions_supersede_every_other_revision() {
        let active = [
            started("e1", "u-1", "web-7d9f"),
            started("e2", "u-1", "web-81ac"),
        ];
        let d = supersede(&active, "u-1", "web-81ac");
        assert_eq!(d.cancel, ["e1"]);
        assert!(!d.stale);
    }
}
