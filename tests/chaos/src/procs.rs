//! The process table, read from /proc: which `assay-runner` processes of this run are alive,
//! which shard attempt each one runs, and which test processes they left behind. Other
//! engineers' runners on the same machine are told apart by their `ASSAY_NATS_URL`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use base64::Engine;
use prost::Message;

/// (execution, shard, attempt)
pub type Attempt = (String, u32, u32);

#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub state: char,
    pub comm: String,
    /// Start time in clock ticks since boot: with the PID, a process identity that survives
    /// PID reuse.
    pub start: u64,
}

impl Proc {
    pub fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

fn read_stat(pid: i32) -> Option<Proc> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let rest: Vec<&str> = s[close + 1..].split_whitespace().collect();
    // rest[0] = state (field 3), rest[1] = ppid (4), rest[19] = starttime (22)
    Some(Proc {
        pid,
        ppid: rest.get(1)?.parse().ok()?,
        state: rest.first()?.chars().next()?,
        comm,
        start: rest.get(19)?.parse().ok()?,
    })
}

pub fn table() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_stat)
        .collect()
}

pub fn environ(pid: i32) -> HashMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn cwd(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// The shard attempt a process works for, from the variables the runner gives every step
/// (`ASSAY_EXECUTION_ID`, `ASSAY_SHARD_INDEX`, `ASSAY_ATTEMPT`) or a cold runner's own
/// `ASSAY_SHARD_JOB`.
fn attempt_of(env: &HashMap<String, String>) -> Option<Attempt> {
    if let Some(job) = env.get("ASSAY_SHARD_JOB") {
        let raw = base64::engine::general_purpose::STANDARD.decode(job).ok()?;
        let job = assay_proto::ShardJob::decode(raw.as_slice()).ok()?;
        return Some((job.execution_id, job.shard_index, job.attempt));
    }
    Some((
        env.get("ASSAY_EXECUTION_ID")?.clone(),
        env.get("ASSAY_SHARD_INDEX")?.parse().ok()?,
        env.get("ASSAY_ATTEMPT")?.parse().ok()?,
    ))
}

/// One look at the process table.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Live runners of this run: pid → (start, attempt if known, parent pid, has children).
    pub runners: BTreeMap<i32, RunnerView>,
    /// Live test processes (a runner's steps and their children), by attempt.
    pub tests: BTreeMap<i32, Attempt>,
}

#[derive(Debug, Clone)]
pub struct RunnerView {
    pub start: u64,
    pub attempt: Option<Attempt>,
    pub ppid: i32,
    pub busy: bool,
}

/// Reads the process table once. `known` maps runners identified earlier (pid, start) to
/// their attempt, since a runner between two steps has no child to read it from.
pub fn snapshot(
    nats_url: &str,
    workdir: &Path,
    known: &mut HashMap<(i32, u64), Attempt>,
) -> Snapshot {
    let procs = table();
    let by_pid: HashMap<i32, &Proc> = procs.iter().map(|p| (p.pid, p)).collect();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut snap = Snapshot::default();
    let mut ours: HashSet<i32> = HashSet::new();
    for p in procs
        .iter()
        .filter(|p| p.alive() && p.comm == "assay-runner")
    {
        // A runner's fork on its way to exec a step still carries the runner's name: a
        // runner is never the child of another.
        if by_pid
            .get(&p.ppid)
            .is_some_and(|pp| pp.comm == "assay-runner")
        {
            continue;
        }
        let env = environ(p.pid);
        // The process may have exec'd something else since the table was read.
        if read_stat(p.pid).is_none_or(|now| now.comm != "assay-runner" || now.start != p.start) {
            continue;
        }
        if env.get("ASSAY_NATS_URL").map(String::as_str) != Some(nats_url) {
            continue;
        }
        ours.insert(p.pid);
        let mut attempt = attempt_of(&env).or_else(|| known.get(&(p.pid, p.start)).cloned());
        // A warm runner learns its job on stdin: read it from a step's environment.
        let mut stack = children.get(&p.pid).cloned().unwrap_or_default();
        let mut busy = false;
        while let Some(c) = stack.pop() {
            let Some(cp) = by_pid.get(&c) else { continue };
            if !cp.alive() {
                continue;
            }
            busy = true;
            if attempt.is_none() {
                attempt = attempt_of(&environ(c));
            }
            if let Some(more) = children.get(&c) {
                stack.extend(more);
            }
        }
        if let Some(a) = &attempt {
            known.insert((p.pid, p.start), a.clone());
        }
        snap.runners.insert(
            p.pid,
            RunnerView {
                start: p.start,
                attempt,
                ppid: p.ppid,
                busy,
            },
        );
    }
    // Test processes: anything working in this run's test directory with a shard's
    // variables, whether its runner still lives or not.
    for p in procs.iter().filter(|p| p.alive() && !ours.contains(&p.pid)) {
        if p.comm == "assay-runner" {
            continue;
        }
        let Some(dir) = cwd(p.pid) else { continue };
        if !dir.starts_with(workdir) {
            continue;
        }
        if let Some(a) = attempt_of(&environ(p.pid)) {
            snap.tests.insert(p.pid, a);
        }
    }
    snap
}

/// Kills every process of this run that is still around (runners by their NATS URL, test
/// processes by their working directory): the harness leaves nothing behind.
pub fn kill_leftovers(nats_url: &str, workdir: &Path) -> usize {
    let snap = snapshot(nats_url, workdir, &mut HashMap::new());
    let pids: Vec<i32> = snap
        .runners
        .keys()
        .chain(snap.tests.keys())
        .copied()
        .collect();
    for pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    pids.len()
}
