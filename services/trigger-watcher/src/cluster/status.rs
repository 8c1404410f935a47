//! What the cluster watch knows about itself: the error of each trigger that cannot be
//! served, how many lists each watch completed, how many events went out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A cheap handle on the cluster watch's state, shared by its tasks and readable by tests
/// and the service.
#[derive(Clone, Default)]
pub struct ClusterStatus {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// Errors found when planning (unknown kind, unsupported event): trigger → why.
    plan_errors: BTreeMap<String, String>,
    /// Errors of running watches (discovery, forbidden): watch → why.
    watch_errors: BTreeMap<String, String>,
    /// Which triggers each watch serves now.
    served: BTreeMap<String, Vec<String>>,
    /// Completed lists (the first and every relist) per watch.
    lists: BTreeMap<String, u64>,
    fired: u64,
    duplicates: u64,
    superseded: u64,
    tracked: u64,
    recovered: u64,
    recovery_done: bool,
}

impl ClusterStatus {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every trigger that is not served now and why.
    pub fn errors(&self) -> BTreeMap<String, String> {
        let inner = self.lock();
        let mut out = inner.plan_errors.clone();
        for (watch, why) in &inner.watch_errors {
            for t in inner.served.get(watch).into_iter().flatten() {
                out.insert(t.clone(), why.clone());
            }
        }
        out
    }

    /// Where each trigger's watch stands: failing (why), watching (every watch it needs
    /// has listed), or neither yet (left out).
    pub fn watching(&self) -> BTreeMap<String, Result<(), String>> {
        let inner = self.lock();
        let mut out: BTreeMap<String, Result<(), String>> = BTreeMap::new();
        let mut pending = std::collections::BTreeSet::new();
        for (watch, triggers) in &inner.served {
            let state = match inner.watch_errors.get(watch) {
                Some(why) => Some(Err(why.clone())),
                None if inner.lists.get(watch).copied().unwrap_or(0) > 0 => Some(Ok(())),
                None => None,
            };
            for t in triggers {
                match &state {
                    None => {
                        pending.insert(t.clone());
                    }
                    Some(Err(why)) => {
                        out.insert(t.clone(), Err(why.clone()));
                    }
                    Some(Ok(())) => {
                        out.entry(t.clone()).or_insert(Ok(()));
                    }
                }
            }
        }
        for t in pending {
            if out.get(&t).is_some_and(Result::is_ok) {
                out.remove(&t);
            }
        }
        for (t, why) in &inner.plan_errors {
            out.insert(t.clone(), Err(why.clone()));
        }
        out
    }

    /// Lists completed by the watches of `kind` (the first list and every relist, e.g.
    /// after 410 Gone).
    pub fn lists(&self, kind: &str) -> u64 {
        self.lock()
            .lists
            .iter()
            .filter(|(w, _)| w.split(' ').next() == Some(kind))
            .map(|(_, n)| n)
            .sum()
    }

    /// Events published.
    pub fn fired(&self) -> u64 {
        self.lock().fired
    }

    /// Events not published because their key was claimed before (by this watcher, an
    /// earlier run or another replica).
    pub fn duplicates(&self) -> u64 {
        self.lock().duplicates
    }

    /// Executions started by Kubernetes triggers that the watcher learnt of (from plan
    /// records), for `supersede: true`.
    pub fn tracked(&self) -> u64 {
        self.lock().tracked
    }

    pub(crate) fn count_tracked(&self) {
        self.lock().tracked += 1;
    }

    /// Executions cancelled by `supersede: true`.
    pub fn superseded(&self) -> u64 {
        self.lock().superseded
    }

    pub(crate) fn set_plan(
        &self,
        errors: BTreeMap<String, String>,
        served: BTreeMap<String, Vec<String>>,
    ) {
        let mut inner = self.lock();
        inner.plan_errors = errors;
        inner.watch_errors.retain(|w, _| served.contains_key(w));
        inner.served = served;
    }

    /// Clears a watch's error (it delivered a change).
    pub(crate) fn watch_ok(&self, watch: &str) {
        self.lock().watch_errors.remove(watch);
    }

    /// Records a watch's error (until its next completed list or delivered change).
    pub(crate) fn watch_failed(&self, watch: &str, why: &str) {
        self.lock()
            .watch_errors
            .insert(watch.to_string(), why.to_string());
    }

    pub(crate) fn listed(&self, watch: &str) {
        let mut inner = self.lock();
        inner.watch_errors.remove(watch);
        *inner.lists.entry(watch.to_string()).or_default() += 1;
    }

    pub(crate) fn count_fired(&self) {
        self.lock().fired += 1;
    }

    pub(crate) fn count_duplicate(&self) {
        self.lock().duplicates += 1;
    }

    /// Events of claims never marked published that this watcher published at start.
    pub fn recovered(&self) -> u64 {
        self.lock().recovered
    }

    /// Whether the start's look for unpublished claims is over.
    pub fn recovery_finished(&self) -> bool {
        self.lock().recovery_done
    }

    pub(crate) fn count_recovered(&self) {
        self.lock().recovered += 1;
    }

    pub(crate) fn recovery_done(&self) {
        self.lock().recovery_done = true;
    }

    pub(crate) fn count_superseded(&self) {
        self.lock().superseded += 1;
    }
}
