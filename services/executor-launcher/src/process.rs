//! Runner processes: starting `assay-runner --job-stdin` (warm ahead of time, or cold for
//! one job), capturing the end of its stderr, and classifying how it exited.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use assay_bus::Failure;
use assay_proto::ShardState;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tracing::{debug, warn};

use crate::{Error, Launcher};

/// A runner that reads its job from stdin, in its own process group (so its whole tree can
/// be killed), with the runners' environment and never a job in `ASSAY_SHARD_JOB`.
fn runner_command(runner: &Path, env: &[(String, String)]) -> Command {
    let mut command = Command::new(runner);
    command
        .arg("--job-stdin")
        .env_remove("ASSAY_SHARD_JOB")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Runners started ahead of time (`assay-runner --job-stdin`), each in its own process
/// group, blocked reading one job line from stdin. A runner whose launcher goes away sees
/// stdin close and exits.
pub(crate) struct WarmPool {
    idle: Mutex<VecDeque<Child>>,
    target: usize,
    runner: Arc<PathBuf>,
    /// `ASSAY_NATS_URL` and the NATS credentials every runner gets.
    runner_env: Arc<Vec<(String, String)>>,
}

impl WarmPool {
    /// A pool that keeps `target` runners idle (none started yet: see [`WarmPool::refill`]).
    pub(crate) fn new(
        target: usize,
        runner: Arc<PathBuf>,
        runner_env: Arc<Vec<(String, String)>>,
    ) -> Self {
        WarmPool {
            idle: Mutex::new(VecDeque::new()),
            target,
            runner,
            runner_env,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Child>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle runner that is still alive.
    pub(crate) fn take(&self) -> Option<Child> {
        let mut idle = self.lock();
        while let Some(mut child) = idle.pop_front() {
            if matches!(child.try_wait(), Ok(None)) {
                return Some(child);
            }
        }
        None
    }

    /// Starts runners until `target` are idle.
    pub(crate) fn refill(&self) {
        let mut idle = self.lock();
        while idle.len() < self.target {
            let spawned = runner_command(&self.runner, &self.runner_env)
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
    pub(crate) fn drain(&self) {
        self.lock().clear();
    }
}

/// How a runner ended, from the launcher's point of view.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The runner published its final status, which ended in this state.
    Reported(ShardState),
    /// It died or gave up without reporting: the shard is errored for this reason.
    Died(String),
}

/// Classifies a runner's exit. Exit 0 (passed), 1 (failed), 4 (errored) and 5 (timed out)
/// mean it reported its own final status; 3 means it saw its launcher die and stopped
/// without reporting; anything else is an error.
pub fn classify(status: ExitStatus, stderr_tail: &str) -> Ended {
    use std::os::unix::process::ExitStatusExt;
    let tail = if stderr_tail.is_empty() {
        String::new()
    } else {
        format!(": {stderr_tail}")
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => Ended::Reported(ShardState::Passed),
        (Some(1), _) => Ended::Reported(ShardState::Failed),
        (Some(4), _) => Ended::Reported(ShardState::Errored),
        (Some(5), _) => Ended::Reported(ShardState::TimedOut),
        (Some(code), _) => Ended::Died(format!(
            "runner exited with code {code} without reporting{tail}"
        )),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| sig.to_string());
            Ended::Died(format!(
                "runner was killed by {name} before it reported{tail}"
            ))
        }
        (None, None) => Ended::Died(format!("runner ended without an exit status{tail}")),
    }
}

impl Launcher {
    /// Hands the job to a warm runner; `None` when none is idle or it would not take it.
    pub(crate) async fn start_warm(&self, encoded: &str) -> Option<Child> {
        use tokio::io::AsyncWriteExt;
        let mut child = self.warm.take()?;
        let mut stdin = child.stdin.take()?;
        let line = format!("{encoded}\n");
        match stdin.write_all(line.as_bytes()).await {
            Ok(()) => Some(child),
            Err(e) => {
                debug!(error = %e, "warm runner did not take its job; starting one cold");
                None
            }
        }
    }

    /// Starts a runner for this job alone. The job goes over stdin, as to a warm runner:
    /// in an environment variable a large job (its planned test ids) would hit the kernel's
    /// limit on arguments plus environment (`Argument list too long`, from ~5,000 tests).
    pub(crate) async fn start_cold(&self, encoded: &str) -> std::result::Result<Child, Failure> {
        use tokio::io::AsyncWriteExt;
        let spawn_error = |reason: String| {
            Failure::Retry(
                Error::Spawn {
                    runner: self.runner.display().to_string(),
                    reason,
                }
                .to_string(),
            )
        };
        let mut child = runner_command(&self.runner, &self.runner_env)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| spawn_error(e.to_string()))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| spawn_error("the runner's stdin is not a pipe".into()))?;
        if let Err(e) = stdin.write_all(format!("{encoded}\n").as_bytes()).await {
            if let Some(pid) = child.id() {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            return Err(spawn_error(format!("cannot hand the job over stdin: {e}")));
        }
        Ok(child)
    }
}

/// The last lines a runner wrote to stderr, for the reason of an abnormal end.
pub(crate) struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
    pub(crate) done: Arc<tokio::sync::Notify>,
}

impl Tail {
    pub(crate) fn text(&self) -> String {
        match self.lines.lock() {
            Ok(l) => l.iter().cloned().collect::<Vec<_>>().join(" | "),
            Err(_) => String::new(),
        }
    }
}

pub(crate) fn capture_stderr(child: &mut Child, label: String) -> Tail {
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
