//! The local backend: each attempt is an `assay-runner --job-stdin` child process in its own
//! process group (so its whole tree can be killed), started ahead of time from a warm pool
//! or cold for one job, with the end of its stderr kept for the reason of an abnormal end
//! and its exit classified into an [`Outcome`].

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assay_proto::{ShardJob, ShardState};
use base64::Engine;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tracing::{debug, warn};

use super::{Attempt, Backend, Outcome, RunnerNats};
use crate::{Error, Result};

/// How long a runner that exited may take to close its stderr before its end is classified
/// with what it wrote so far.
const TAIL_WAIT: Duration = Duration::from_secs(1);

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The `assay-runner` binary; `None`: `$ASSAY_RUNNER`, else next to this executable.
    pub runner: Option<PathBuf>,
    /// Attempts run at once.
    pub capacity: usize,
    /// Runners started ahead of time and waiting for a job on stdin (at most `capacity`).
    pub warm: usize,
    /// How the warm runners reach NATS (a job started with other settings starts cold).
    pub nats: RunnerNats,
}

/// Runs attempts as child processes of this launcher.
pub struct LocalBackend {
    runner: PathBuf,
    capacity: usize,
    warm: Arc<WarmPool>,
}

impl LocalBackend {
    /// Finds the runner binary; no runner is started yet (see [`LocalBackend::fill_warm_pool`]).
    pub fn new(options: LocalOptions) -> Result<LocalBackend> {
        let runner = find_runner(options.runner.as_deref())?;
        let capacity = options.capacity.max(1);
        let warm = WarmPool::new(options.warm.min(capacity), runner.clone(), options.nats);
        Ok(LocalBackend {
            runner,
            capacity,
            warm: Arc::new(warm),
        })
    }

    /// The runner binary.
    pub fn runner(&self) -> &Path {
        &self.runner
    }

    /// Starts warm runners until the pool is full.
    pub fn fill_warm_pool(&self) {
        self.warm.refill();
    }

    /// Stops the idle warm runners.
    pub fn drain(&self) {
        self.warm.drain();
    }

    /// Starts a runner for this job alone. The job goes over stdin, as to a warm runner:
    /// in an environment variable a large job (its planned test ids) would hit the kernel's
    /// limit on arguments plus environment (`Argument list too long`, from ~5,000 tests).
    async fn start_cold(
        &self,
        line: &str,
        nats: &RunnerNats,
        creds: Option<&Path>,
    ) -> Result<Child> {
        let spawn_error = |reason: String| Error::Spawn {
            runner: self.runner.display().to_string(),
            reason,
        };
        let mut child = runner_command(&self.runner, nats, creds)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| spawn_error(e.to_string()))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| spawn_error("the runner's stdin is not a pipe".into()))?;
        if let Err(e) = stdin.write_all(line.as_bytes()).await {
            if let Some(pid) = child.id() {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            return Err(spawn_error(format!("cannot hand the job over stdin: {e}")));
        }
        Ok(child)
    }
}

impl Backend for LocalBackend {
    type Attempt = LocalAttempt;

    async fn start(&self, job: &ShardJob, nats: &RunnerNats) -> Result<LocalAttempt> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(job.encode_to_vec());
        let line = format!("{encoded}\n");
        let creds = match &nats.creds {
            Some(creds) => Some(CredsDir::write(creds).map_err(|reason| Error::Spawn {
                runner: self.runner.display().to_string(),
                reason,
            })?),
            None => None,
        };
        // A warm runner has no credentials of this attempt's: one with minted credentials
        // starts cold.
        let warm = match self.warm.take_for(nats) {
            Some(child) if creds.is_none() => hand_over(child, &line).await,
            _ => None,
        };
        let creds_file = creds.as_ref().map(CredsDir::file);
        let (mut child, warm) = match warm {
            Some(child) => (child, true),
            None => (
                self.start_cold(&line, nats, creds_file.as_deref()).await?,
                false,
            ),
        };
        // Keep the pool full, off this shard's path.
        let pool = self.warm.clone();
        tokio::task::spawn_blocking(move || pool.refill());
        let pid = child.id();
        let tail = capture_stderr(
            &mut child,
            format!("{}/{}", job.execution_id, job.shard_index),
        );
        Ok(LocalAttempt {
            child,
            pgid: pid.map(|p| Pid::from_raw(p as i32)),
            tail,
            warm,
            _creds: creds,
        })
    }

    /// Always `None`: a runner is a child of the launcher and does not outlive it (it sees
    /// its stdin close and stops).
    async fn find(&self, _job: &ShardJob) -> Result<Option<LocalAttempt>> {
        Ok(None)
    }

    fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A runner process and its process group.
pub struct LocalAttempt {
    child: Child,
    pgid: Option<Pid>,
    tail: Tail,
    warm: bool,
    /// The attempt's minted credentials file, removed with the attempt.
    _creds: Option<CredsDir>,
}

/// A private directory (mode 0700) holding one attempt's minted credentials file (mode
/// 0600); removed when dropped.
struct CredsDir(tempfile::TempDir);

impl CredsDir {
    fn write(creds: &super::RunnerCreds) -> std::result::Result<CredsDir, String> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dir = tempfile::Builder::new()
            .prefix("assay-runner-creds-")
            .tempdir()
            .map_err(|e| {
                format!("cannot create a directory for the runner's credentials: {e}; check TMPDIR")
            })?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make {} private: {e}", dir.path().display()))?;
        let path = dir.path().join(super::RUNNER_CREDS_FILE);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        file.write_all(creds.0.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(CredsDir(dir))
    }

    fn file(&self) -> PathBuf {
        self.0.path().join(super::RUNNER_CREDS_FILE)
    }
}

impl LocalAttempt {
    /// Kills the runner's process group: the runner and everything it started.
    fn kill_group(&self) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl fmt::Display for LocalAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pgid {
            Some(pid) => write!(f, "process {pid}")?,
            None => f.write_str("process (exited)")?,
        }
        f.write_str(if self.warm { " (warm)" } else { " (cold)" })
    }
}

impl Attempt for LocalAttempt {
    async fn wait(&mut self) -> Outcome {
        let status = match self.child.wait().await {
            Ok(status) => status,
            Err(e) => return Outcome::Infrastructure(format!("cannot wait for the runner: {e}")),
        };
        // What the runner left behind goes with it, and so closes the stderr it inherited.
        self.kill_group();
        let _ = tokio::time::timeout(TAIL_WAIT, self.tail.done.notified()).await;
        classify(status, &self.tail.text())
    }

    async fn kill(&mut self) {
        self.kill_group();
        let _ = self.child.wait().await;
    }
}

/// Writes the job line to a warm runner; `None` when it would not take it.
async fn hand_over(mut child: Child, line: &str) -> Option<Child> {
    let mut stdin = child.stdin.take()?;
    match stdin.write_all(line.as_bytes()).await {
        Ok(()) => Some(child),
        Err(e) => {
            debug!(error = %e, "warm runner did not take its job; starting one cold");
            None
        }
    }
}

/// Finds the runner binary: the given path, `$ASSAY_RUNNER`, or `assay-runner` next to the
/// current executable or one directory up (test binaries live in `target/*/deps`).
pub fn find_runner(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Ok(p) = std::env::var("ASSAY_RUNNER") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| Error::RunnerNotFound {
        looked: e.to_string(),
    })?;
    let mut looked = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("assay-runner");
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(dir.display().to_string());
    }
    Err(Error::RunnerNotFound {
        looked: looked.join(", "),
    })
}

/// A runner that reads its job from stdin, in its own process group (so its whole tree can
/// be killed), with the runners' environment and never a job in `ASSAY_SHARD_JOB`.
/// With `creds` (a minted credentials file) the runner reads that and no credentials of the
/// launcher's.
fn runner_command(runner: &Path, nats: &RunnerNats, creds: Option<&Path>) -> Command {
    let mut command = Command::new(runner);
    command.arg("--job-stdin").env_remove("ASSAY_SHARD_JOB");
    if let Some(creds) = creds {
        for var in assay_bus::auth::CREDENTIAL_VARS {
            command.env_remove(var);
        }
        command.env("ASSAY_NATS_CREDS", creds);
    }
    command
        .envs(nats.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Runners started ahead of time (`assay-runner --job-stdin`), each in its own process
/// group, blocked reading one job line from stdin. A runner whose launcher goes away sees
/// stdin close and exits.
struct WarmPool {
    idle: Mutex<VecDeque<Child>>,
    target: usize,
    runner: PathBuf,
    /// How every warm runner reaches NATS.
    nats: RunnerNats,
}

impl WarmPool {
    /// A pool that keeps `target` runners idle (none started yet: see [`WarmPool::refill`]).
    fn new(target: usize, runner: PathBuf, nats: RunnerNats) -> Self {
        WarmPool {
            idle: Mutex::new(VecDeque::new()),
            target,
            runner,
            nats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Child>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle runner that is still alive and reaches NATS with `nats`.
    fn take_for(&self, nats: &RunnerNats) -> Option<Child> {
        if *nats != self.nats {
            return None;
        }
        let mut idle = self.lock();
        while let Some(mut child) = idle.pop_front() {
            if matches!(child.try_wait(), Ok(None)) {
                return Some(child);
            }
        }
        None
    }

    /// Starts runners until `target` are idle.
    fn refill(&self) {
        let mut idle = self.lock();
        while idle.len() < self.target {
            let spawned = runner_command(&self.runner, &self.nats, None)
                .kill_on_drop(true)
                .spawn();
            match spawned {
                Ok(child) => idle.push_back(child),
                Err(e) => {
                    warn!(runner = %self.runner.display(), error = %e, "cannot start a warm runner; shards will start cold");
                    return;
                }
            }
        }
    }

    /// Stops the idle runners (their stdin closes and they are killed).
    fn drain(&self) {
        self.lock().clear();
    }
}

/// Classifies a runner's exit. Exit 0 (passed), 1 (failed), 4 (errored) and 5 (timed out)
/// mean it reported its own final status; 3 means it saw its launcher die and stopped
/// without reporting; anything else, and a death by signal, is an infrastructure failure
/// whose reason ends with the last lines of its stderr.
pub fn classify(status: ExitStatus, stderr_tail: &str) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let tail = if stderr_tail.is_empty() {
        String::new()
    } else {
        format!(": {stderr_tail}")
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => Outcome::Reported(ShardState::Passed),
        (Some(1), _) => Outcome::Reported(ShardState::Failed),
        (Some(4), _) => Outcome::Reported(ShardState::Errored),
        (Some(5), _) => Outcome::Reported(ShardState::TimedOut),
        (Some(code), _) => Outcome::Infrastructure(format!(
            "runner exited with code {code} without reporting{tail}"
        )),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| sig.to_string());
            Outcome::Infrastructure(format!(
                "runner was killed by {name} before it reported{tail}"
            ))
        }
        (None, None) => {
            Outcome::Infrastructure(format!("runner ended without an exit status{tail}"))
        }
    }
}

/// The last lines a runner wrote to stderr, for the reason of an abnormal end.
struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
    done: Arc<tokio::sync::Notify>,
}

impl Tail {
    fn text(&self) -> String {
        match self.lines.lock() {
            Ok(l) => l.iter().cloned().collect::<Vec<_>>().join(" | "),
            Err(_) => String::new(),
        }
    }
}

/// Follows the runner's stderr: each line to the debug log, the last three kept.
fn capture_stderr(child: &mut Child, label: String) -> Tail {
    let lines = Arc::new(Mutex::new(VecDeque::new()));
    let done = Arc::new(tokio::sync::Notify::new());
    if let Some(stderr) = child.stderr.take() {
        let (lines, done) = (lines.clone(), done.clone());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                debug!(runner = %label, "{line}");
                if let Ok(mut l) = lines.lock() {
                    if l.len() == 3 {
                        l.pop_front();
                    }
                    l.push_back(line.chars().take(500).collect());
                }
            }
            done.notify_one();
        });
    }
    Tail { lines, done }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn classifies_runner_exits() {
        let infra = |r: &str| Outcome::Infrastructure(r.to_string());
        let table = [
            (0, "", Outcome::Reported(ShardState::Passed)),
            (1 << 8, "", Outcome::Reported(ShardState::Failed)),
            (4 << 8, "", Outcome::Reported(ShardState::Errored)),
            (5 << 8, "", Outcome::Reported(ShardState::TimedOut)),
            (
                2 << 8,
                "cannot reach nats",
                infra("runner exited with code 2 without reporting: cannot reach nats"),
            ),
            (
                3 << 8,
                "",
                infra("runner exited with code 3 without reporting"),
            ),
            (
                9,
                "",
                infra("runner was killed by SIGKILL before it reported"),
            ),
            (
                15,
                "a | b",
                infra("runner was killed by SIGTERM before it reported: a | b"),
            ),
        ];
        for (raw, tail, want) in table {
            assert_eq!(classify(ExitStatus::from_raw(raw), tail), want, "{raw}");
        }
    }

    #[test]
    fn explicit_runner_wins() {
        assert_eq!(
            find_runner(Some(Path::new("/x/r"))).unwrap(),
            PathBuf::from("/x/r")
        );
    }
}
