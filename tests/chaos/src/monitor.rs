//! Samples the process table every few hundred milliseconds for invariants 2 and 5: two
//! live runners of one shard attempt at the same moment, and when each attempt's processes
//! were last seen alive (compared with its execution's end once the run is over).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::plan::Target;
use crate::procs::{self, Attempt};
use crate::stack::Stack;

/// What the monitor saw over the run.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub samples: u64,
    pub runners_seen: usize,
    pub tests_seen: usize,
    pub max_live: usize,
    /// Invariant 2 violations (first occurrences).
    pub twins: Vec<String>,
    /// Attempt → last time (unix ms) a runner or a test process of it was alive.
    pub attempt_last_seen: BTreeMap<Attempt, i64>,
    /// Attempt → first time it was seen alive.
    pub attempt_first_seen: BTreeMap<Attempt, i64>,
    /// Runners whose launcher was gone for more than 60 s and whose attempt is unknown.
    pub orphans: Vec<String>,
    /// Runners or test processes still alive after the stack was stopped.
    pub leftovers: Vec<String>,
}

#[derive(Default)]
struct State {
    observed: Observed,
    known: HashMap<(i32, u64), Attempt>,
    runners: std::collections::HashSet<(i32, u64)>,
    tests: std::collections::HashSet<i32>,
    /// Unidentified runner → first time seen without its launcher.
    parentless_since: HashMap<(i32, u64), i64>,
    twins_seen: std::collections::HashSet<Attempt>,
}

#[derive(Clone)]
pub struct Monitor {
    state: Arc<Mutex<State>>,
    nats_url: String,
    workdir: PathBuf,
}

impl Monitor {
    pub fn new(nats_url: String, workdir: PathBuf) -> Monitor {
        Monitor {
            state: Arc::default(),
            nats_url,
            workdir,
        }
    }

    /// Samples until `stop`.
    pub fn spawn(
        &self,
        stack: Stack,
        every: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let launcher = stack.pid(Target::Launcher).map(|p| p as i32);
                let m = me.clone();
                let _ = tokio::task::spawn_blocking(move || m.sample(launcher)).await;
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => {}
                }
            }
        })
    }

    /// One sample; returns how many runners and test processes of this run are alive.
    pub fn sample(&self, launcher: Option<i32>) -> usize {
        let now = assay_bus::now_ms();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let snap = procs::snapshot(&self.nats_url, &self.workdir, &mut st.known);
        st.observed.samples += 1;
        st.observed.max_live = st.observed.max_live.max(snap.runners.len());
        let mut live: HashMap<Attempt, Vec<i32>> = HashMap::new();
        for (pid, r) in &snap.runners {
            st.runners.insert((*pid, r.start));
            match &r.attempt {
                Some(a) => {
                    live.entry(a.clone()).or_default().push(*pid);
                    st.observed.attempt_last_seen.insert(a.clone(), now);
                    st.observed
                        .attempt_first_seen
                        .entry(a.clone())
                        .or_insert(now);
                }
                None if Some(r.ppid) != launcher => {
                    // Not a warm runner of the live launcher, and no job known.
                    let since = *st.parentless_since.entry((*pid, r.start)).or_insert(now);
                    if now - since > crate::check::GRACE_MS {
                        let msg = format!(
                            "runner pid {pid} (no shard known, parent {}) alive {:.0}s without its launcher",
                            r.ppid,
                            (now - since) as f64 / 1000.0
                        );
                        if !st
                            .observed
                            .orphans
                            .iter()
                            .any(|o| o.starts_with(&format!("runner pid {pid} ")))
                        {
                            st.observed.orphans.push(msg);
                        }
                    }
                }
                None => {}
            }
        }
        for (pid, a) in &snap.tests {
            st.tests.insert(*pid);
            st.observed.attempt_last_seen.insert(a.clone(), now);
            st.observed
                .attempt_first_seen
                .entry(a.clone())
                .or_insert(now);
        }
        for (a, pids) in live {
            if pids.len() > 1 && st.twins_seen.insert(a.clone()) {
                st.observed.twins.push(format!(
                    "{} live runners for {}/{}/{} at {now}: pids {:?}",
                    pids.len(),
                    a.0,
                    a.1,
                    a.2,
                    pids
                ));
            }
        }
        st.observed.runners_seen = st.runners.len();
        st.observed.tests_seen = st.tests.len();
        snap.runners.len() + snap.tests.len()
    }

    /// Records what is still alive after the stack stopped (then the harness kills it).
    pub fn leftovers(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let snap = procs::snapshot(&self.nats_url, &self.workdir, &mut st.known);
        for (pid, r) in &snap.runners {
            st.observed.leftovers.push(format!(
                "runner pid {pid} ({}) still alive after the stack stopped",
                r.attempt
                    .as_ref()
                    .map(|a| format!("{}/{}/{}", a.0, a.1, a.2))
                    .unwrap_or_else(|| "no shard known".into())
            ));
        }
        for (pid, a) in &snap.tests {
            st.observed.leftovers.push(format!(
                "test process pid {pid} of {}/{}/{} still alive after the stack stopped",
                a.0, a.1, a.2
            ));
        }
    }

    pub fn observed(&self) -> Observed {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observed
            .clone()
    }
}
