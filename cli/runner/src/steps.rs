//! Running steps: `sh -c <run>` in the shard's working directory, stdout and stderr streamed
//! as log chunks, per-step timeouts that kill the whole process tree, retries.
//!
//! Step processes inherit the runner's process group, so the launcher's `killpg` on a shard
//! timeout reaches them too, but not its environment: see [`crate::env`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assay_proto::LogStream;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::publish::{CHUNK_BYTES, LogSink};

/// Output is flushed at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// After a step's shell exits, how long its pipes may stay open (a background process
/// holding them) before the step is considered done; the reader keeps draining them in the
/// background until the shard ends.
pub const PIPE_GRACE: Duration = Duration::from_millis(200);
/// Most captured stdout kept for `tests.list`.
pub const MAX_CAPTURE_BYTES: usize = 64 * 1024 * 1024;
/// Scripts longer than this go through a file: one `sh -c` argument is limited to 128 KiB.
pub const MAX_INLINE_SCRIPT: usize = 96 * 1024;

/// One step to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDef {
    pub name: String,
    pub run: String,
    pub timeout: Option<Duration>,
    pub retries: u32,
    /// Variables for this step's process only, on top of the shard's.
    pub env: Vec<(String, String)>,
}

impl StepDef {
    /// A step the runner makes up itself (`tests.list`, `tests.run`): no retries, no
    /// timeout, no extra environment.
    pub fn internal(name: &str, run: String) -> StepDef {
        StepDef {
            name: name.to_string(),
            run,
            timeout: None,
            retries: 0,
            env: Vec::new(),
        }
    }
}

impl From<&assay_proto::Step> for StepDef {
    fn from(s: &assay_proto::Step) -> StepDef {
        let mut env: Vec<(String, String)> =
            s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.sort();
        StepDef {
            name: s.name.clone(),
            run: s.run.clone(),
            timeout: (s.timeout_ms > 0).then(|| Duration::from_millis(s.timeout_ms)),
            retries: s.retries,
            env,
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut(Duration),
    /// `sh` could not be started at all.
    SpawnFailed(String),
}

impl Exit {
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }

    /// The number reported as `exit_code`: the code, 128 + signal like a shell, 124 for a
    /// timeout like `timeout(1)`, -1 when nothing ran.
    pub fn code(&self) -> i32 {
        match self {
            Exit::Code(c) => *c,
            Exit::Signal(s) => 128 + s,
            Exit::TimedOut(_) => 124,
            Exit::SpawnFailed(_) => -1,
        }
    }

    /// `exit code 127 (command not found)`, `timed out after 5s`, …
    pub fn describe(&self) -> String {
        match self {
            Exit::Code(127) => "exit code 127 (command not found)".to_string(),
            Exit::Code(126) => "exit code 126 (not executable)".to_string(),
            Exit::Code(c) => format!("exit code {c}"),
            Exit::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => format!("killed by signal {s} ({sig})"),
                Err(_) => format!("killed by signal {s}"),
            },
            Exit::TimedOut(d) => format!("timed out after {}", human(*d)),
            Exit::SpawnFailed(e) => format!("could not start sh: {e}; is /bin/sh installed?"),
        }
    }
}

/// `5s`, `250ms`, `1.5s`, `2m`, `1m30s`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if !ms.is_multiple_of(1000) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        let s = d.as_secs();
        match (s / 60, s % 60) {
            (0, s) => format!("{s}s"),
            (m, 0) => format!("{m}m"),
            (m, s) => format!("{m}m{s}s"),
        }
    }
}

/// Result of a step, after its retries.
#[derive(Debug, Clone)]
pub struct StepRun {
    pub exit: Exit,
    pub attempts: u32,
    /// Captured stdout of the last attempt, when asked for.
    pub stdout: Vec<u8>,
}

/// Runs steps of one shard, all in the same directory and environment.
pub struct StepRunner {
    workdir: PathBuf,
    /// The allowed part of the runner's own environment ([`crate::env::inherited`]).
    inherited: Vec<(String, std::ffi::OsString)>,
    env: Vec<(String, String)>,
    logs: LogSink,
    /// Stops readers still draining pipes held open by background processes.
    shutdown: CancellationToken,
    lingering: Mutex<Vec<JoinHandle<()>>>,
    scratch: Mutex<Scratch>,
    kill_leftovers: bool,
}

/// Where a runner writes files of its own (long scripts, `{tests_file}` lists):
/// `<workdir>/.assay/scripts/<name>-<random>/`, created on first use with a name no other
/// runner can have (the random part is chosen with create-new semantics), so shards of any
/// execution sharing a working directory never overwrite each other's files; removed when
/// the runner finishes (or is dropped).
#[derive(Default)]
struct Scratch {
    name: String,
    dir: Option<tempfile::TempDir>,
    files: u32,
}

impl Scratch {
    fn file(
        &mut self,
        workdir: &Path,
        stem: &str,
        ext: &str,
        contents: &[u8],
    ) -> std::io::Result<PathBuf> {
        use std::io::Write as _;
        let dir = match &self.dir {
            Some(dir) => dir.path().to_path_buf(),
            None => {
                let parent = workdir.join(".assay").join("scripts");
                std::fs::create_dir_all(&parent)?;
                let dir = tempfile::Builder::new()
                    .prefix(&format!("{}-", self.name))
                    .tempdir_in(&parent)?;
                let path = dir.path().to_path_buf();
                self.dir = Some(dir);
                path
            }
        };
        self.files += 1;
        let safe: String = stem
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = dir.join(format!("{safe}-{}.{ext}", self.files));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(contents)?;
        Ok(path)
    }
}

impl StepRunner {
    /// Steps run in `workdir` with a clean environment: the allowed part of the runner's own
    /// ([`crate::env::INHERITED`]), then `env` (the workflow's and the shard's `ASSAY_*`),
    /// then the step's own.
    pub fn new(workdir: PathBuf, env: Vec<(String, String)>, logs: LogSink) -> StepRunner {
        StepRunner {
            workdir,
            inherited: crate::env::inherited(),
            env,
            logs,
            shutdown: CancellationToken::new(),
            lingering: Mutex::new(Vec::new()),
            scratch: Mutex::new(Scratch {
                name: "runner".to_string(),
                ..Scratch::default()
            }),
            kill_leftovers: false,
        }
    }

    /// Names this runner's scratch directory (`<execution>-<shard>-<attempt>` for a shard;
    /// a random suffix keeps it unique anyway).
    pub fn scratch_name(self, name: &str) -> StepRunner {
        self.scratch.lock().unwrap_or_else(|p| p.into_inner()).name = crate::job::path_safe(name);
        self
    }

    /// Writes `contents` to a new file `<stem>-<n>.<ext>` in this runner's scratch directory
    /// and returns its path; the file is removed when the runner finishes.
    pub fn scratch_file(&self, stem: &str, ext: &str, contents: &[u8]) -> std::io::Result<PathBuf> {
        self.scratch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .file(&self.workdir, stem, ext, contents)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot write a file under {}: {e}; is the working directory writable?",
                        self.workdir.join(".assay/scripts").display()
                    ),
                )
            })
    }

    /// Makes [`StepRunner::finish`] kill every descendant of this process that is still
    /// running (the runner binary; not in-process tests, which share their process).
    pub fn kill_leftovers(mut self, yes: bool) -> StepRunner {
        self.kill_leftovers = yes;
        self
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    pub fn logs(&self) -> &LogSink {
        &self.logs
    }

    /// Runs a step, retrying it up to `retries` more times on failure, logging each attempt.
    pub async fn run(&self, step: &StepDef, capture: bool) -> StepRun {
        let total = step.retries.saturating_add(1);
        let mut attempt = 1;
        loop {
            let label = if total > 1 {
                format!("step {} started (attempt {attempt} of {total})", step.name)
            } else {
                format!("step {} started", step.name)
            };
            self.logs.system(&step.name, label).await;
            let started = Instant::now();
            let (exit, stdout) = self.run_once(step, capture).await;
            let took = human(Duration::from_millis(started.elapsed().as_millis() as u64));
            if exit.success() {
                self.logs
                    .system(&step.name, format!("step {} passed in {took}", step.name))
                    .await;
                return StepRun {
                    exit,
                    attempts: attempt,
                    stdout,
                };
            }
            let mut line = format!(
                "step {} failed: {} (after {took})",
                step.name,
                exit.describe()
            );
            if attempt < total {
                line.push_str(&format!("; retrying (attempt {} of {total})", attempt + 1));
            }
            self.logs.system(&step.name, line).await;
            if attempt >= total {
                return StepRun {
                    exit,
                    attempts: attempt,
                    stdout,
                };
            }
            attempt += 1;
        }
    }

    fn command(&self, step: &StepDef) -> std::io::Result<Command> {
        // Absolute: no PATH search on the way to the first test process.
        let mut cmd = Command::new("/bin/sh");
        if step.run.len() > MAX_INLINE_SCRIPT {
            let path = self.scratch_file(&step.name, "sh", step.run.as_bytes())?;
            cmd.arg(path);
        } else {
            cmd.arg("-c").arg(&step.run);
        }
        cmd.current_dir(&self.workdir)
            .env_clear()
            .envs(self.inherited.iter().map(|(k, v)| (k, v)))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(step.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(cmd)
    }

    async fn run_once(&self, step: &StepDef, capture: bool) -> (Exit, Vec<u8>) {
        let mut child = match self.command(step).and_then(|mut c| c.spawn()) {
            Ok(child) => child,
            Err(e) => return (Exit::SpawnFailed(e.to_string()), Vec::new()),
        };
        let pid = child.id();
        debug!(step = %step.name, pid, "step process started");
        let name: Arc<str> = Arc::from(step.name.as_str());
        let captured = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(pump(
                out,
                name.clone(),
                LogStream::Stdout,
                self.logs.clone(),
                capture.then(|| captured.clone()),
                self.shutdown.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(pump(
                err,
                name,
                LogStream::Stderr,
                self.logs.clone(),
                None,
                self.shutdown.clone(),
            )));
        }
        let waited = match step.timeout {
            Some(limit) => match tokio::time::timeout(limit, child.wait()).await {
                Ok(status) => Some(status),
                Err(_) => {
                    if let Some(pid) = pid {
                        kill_tree(pid as i32, true);
                    }
                    let _ = child.wait().await;
                    None
                }
            },
            None => Some(child.wait().await),
        };
        let exit = match waited {
            None => Exit::TimedOut(step.timeout.unwrap_or_default()),
            Some(Ok(status)) => exit_of(status),
            Some(Err(e)) => Exit::SpawnFailed(format!("waiting for the step failed: {e}")),
        };
        // Readers end at EOF, which a background process may postpone indefinitely.
        let deadline = tokio::time::Instant::now() + PIPE_GRACE;
        for mut reader in readers {
            match tokio::time::timeout_at(deadline, &mut reader).await {
                Ok(_) => {}
                Err(_) => self
                    .lingering
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(reader),
            }
        }
        let stdout = std::mem::take(&mut *captured.lock().unwrap_or_else(|p| p.into_inner()));
        (exit, stdout)
    }

    /// Ends the shard's processes: kills what steps left running in the background and
    /// waits for their output to be queued.
    pub async fn finish(self) {
        let killed = if self.kill_leftovers {
            kill_descendants()
        } else {
            0
        };
        if killed > 0 {
            self.logs
                .system(
                    "runner",
                    format!("killed {killed} background process(es) left by the steps"),
                )
                .await;
        }
        // Give readers a moment to see EOF after the kills, then stop them.
        let lingering =
            std::mem::take(&mut *self.lingering.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = tokio::time::Instant::now() + PIPE_GRACE;
        let mut rest = Vec::new();
        for mut reader in lingering {
            if tokio::time::timeout_at(deadline, &mut reader)
                .await
                .is_err()
            {
                rest.push(reader);
            }
        }
        self.shutdown.cancel();
        for reader in rest {
            let _ = reader.await;
        }
        // Scripts and id lists go with the processes that used them.
        let scratch = self
            .scratch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dir
            .take();
        if let Some(dir) = scratch {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                debug!(dir = %path.display(), error = %e, "cannot remove the scratch directory");
            }
        }
    }
}

#[cfg(unix)]
fn exit_of(status: std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        (None, None) => Exit::Code(-1),
    }
}

/// Streams one pipe as log chunks: flushes at [`CHUNK_BYTES`], every [`FLUSH_EVERY`] and
/// at EOF (or when the shard shuts down).
async fn pump<R: AsyncRead + Unpin>(
    mut pipe: R,
    step: Arc<str>,
    stream: LogStream,
    logs: LogSink,
    capture: Option<Arc<Mutex<Vec<u8>>>>,
    shutdown: CancellationToken,
) {
    let mut buf = Vec::with_capacity(CHUNK_BYTES);
    let mut read = vec![0u8; 8192];
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + FLUSH_EVERY, FLUSH_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            n = pipe.read(&mut read) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // Captured output (a listing of test ids, possibly megabytes) is the
                    // step's result, not its log: the caller logs a count and a sample.
                    if let Some(c) = &capture {
                        let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
                        let room = MAX_CAPTURE_BYTES.saturating_sub(c.len()).min(n);
                        c.extend_from_slice(&read[..room]);
                        continue;
                    }
                    buf.extend_from_slice(&read[..n]);
                    if buf.len() >= CHUNK_BYTES {
                        send_safe(&logs, &step, stream, &mut buf).await;
                    }
                }
            },
            _ = tick.tick() => {
                if !buf.is_empty() {
                    send_safe(&logs, &step, stream, &mut buf).await;
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
    logs.send(step, stream, buf).await;
}

/// Sends `buf` masked, but for a tail that may be the start of a masked value (kept in
/// `buf` until the next read tells), so a value split across two reads is still masked.
async fn send_safe(logs: &LogSink, step: &Arc<str>, stream: LogStream, buf: &mut Vec<u8>) {
    if logs.masker().is_empty() {
        logs.send(step.clone(), stream, std::mem::take(buf)).await;
        return;
    }
    let (out, used) = logs.masker().mask_prefix(buf);
    buf.drain(..used);
    logs.send_masked(step.clone(), stream, out).await;
}

/// `(pid, ppid)` from the text of `/proc/<pid>/stat`; the command name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<(i32, i32)> {
    let pid = stat.split_whitespace().next()?.parse().ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((pid, ppid))
}

/// Every `(pid, ppid)` in `/proc`.
fn process_table() -> Vec<(i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| parse_stat(&s))
        .collect()
}

/// Descendants of `root` (not `root` itself) in a `(pid, ppid)` table, parents first.
pub fn descendants_in(table: &[(i32, i32)], root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for &(pid, ppid) in table {
        if pid != ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::from([root]);
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(p) = queue.pop_front() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(c) {
                out.push(c);
                queue.push_back(c);
            }
        }
    }
    out
}

/// Kills `root`'s process tree with SIGKILL (and `root` when `include_root`). Processes are
/// stopped first, until no new descendant appears, so none can fork away or be re-parented
/// out of reach while the tree is walked. Returns how many processes were signalled.
pub fn kill_tree(root: i32, include_root: bool) -> usize {
    let mut stopped: Vec<i32> = Vec::new();
    let mut seen = HashSet::new();
    if include_root {
        let _ = kill(Pid::from_raw(root), Signal::SIGSTOP);
    }
    for _ in 0..16 {
        let fresh: Vec<i32> = descendants_in(&process_table(), root)
            .into_iter()
            .filter(|p| seen.insert(*p))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for &p in &fresh {
            let _ = kill(Pid::from_raw(p), Signal::SIGSTOP);
        }
        stopped.extend(fresh);
    }
    for &p in &stopped {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    if include_root {
        let _ = kill(Pid::from_raw(root), Signal::SIGKILL);
    }
    stopped.len() + usize::from(include_root)
}

/// Kills every descendant of the runner. Zombies (exited, not yet reaped) are not counted.
pub fn kill_descendants() -> usize {
    let me = std::process::id() as i32;
    let live = descendants_in(&process_table(), me)
        .into_iter()
        .filter(|p| !is_zombie(*p))
        .count();
    if live == 0 {
        return 0;
    }
    kill_tree(me, false);
    live
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|st| st == "Z")
        })
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::LogLine;

    #[test]
    fn exits_describe_themselves() {
        assert_eq!(
            Exit::Code(127).describe(),
            "exit code 127 (command not found)"
        );
        assert_eq!(Exit::Code(126).describe(), "exit code 126 (not executable)");
        assert_eq!(Exit::Code(3).describe(), "exit code 3");
        assert_eq!(
            Exit::TimedOut(Duration::from_secs(5)).describe(),
            "timed out after 5s"
        );
        assert_eq!(Exit::Signal(9).describe(), "killed by signal 9 (SIGKILL)");
        assert_eq!(Exit::Signal(9).code(), 137);
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_secs(90)), "1m30s");
        assert_eq!(human(Duration::from_secs(120)), "2m");
        assert_eq!(human(Duration::from_millis(20)), "20ms");
    }

    #[test]
    fn stat_lines_with_odd_names() {
        assert_eq!(parse_stat("42 (sh) S 7 42 42 0"), Some((42, 7)));
        assert_eq!(parse_stat("43 (a) b (c)) R 9 1 1"), Some((43, 9)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn descendants_of_a_tree() {
        let table = [
            (1, 0),
            (10, 1),
            (11, 10),
            (12, 10),
            (13, 11),
            (20, 1),
            (30, 30),
        ];
        let mut d = descendants_in(&table, 10);
        d.sort_unstable();
        assert_eq!(d, vec![11, 12, 13]);
        assert!(descendants_in(&table, 13).is_empty());
    }

    async fn collect(mut rx: tokio::sync::mpsc::Receiver<LogLine>) -> Vec<LogLine> {
        let mut out = Vec::new();
        while let Some(l) = rx.recv().await {
            out.push(l);
        }
        out
    }

    fn text(lines: &[LogLine], stream: LogStream) -> String {
        lines
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| String::from_utf8_lossy(&l.data).into_owned())
            .collect()
    }

    fn step(name: &str, run: &str) -> StepDef {
        StepDef {
            name: name.into(),
            run: run.into(),
            timeout: None,
            retries: 0,
            env: Vec::new(),
        }
    }

    #[tokio::test]
    async fn streams_output_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, rx) = LogSink::channel(1024);
        let runner = StepRunner::new(
            dir.path().to_path_buf(),
            vec![("GREETING".into(), "hi there".into())],
            sink,
        );
        let run = runner
            .run(
                &step("hello", "echo \"$GREETING\"; echo oops >&2; pwd"),
                true,
            )
            .await;
        assert!(run.exit.success());
        let out = String::from_utf8(run.stdout).unwrap();
        assert!(out.starts_with("hi there\n"), "{out}");
        runner.finish().await;
        let lines = collect(rx).await;
        // Captured stdout is the step's result, not its log; stderr still streams.
        assert!(!text(&lines, LogStream::Stdout).contains("hi there"));
        assert_eq!(text(&lines, LogStream::Stderr), "oops\n");
        assert!(text(&lines, LogStream::System).contains("step hello started"));
        assert!(lines.iter().all(|l| &*l.step == "hello"));
    }

    #[tokio::test]
    async fn command_not_found_and_retries() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, rx) = LogSink::channel(1024);
        let runner = StepRunner::new(dir.path().to_path_buf(), vec![], sink);
        let mut def = step("install", "definitely-not-a-command-xyz");
        def.retries = 2;
        let run = runner.run(&def, false).await;
        assert_eq!(run.exit, Exit::Code(127));
        assert_eq!(run.attempts, 3);
        let run = runner
            .run(
                &step("ok-after-2", "test -f marker || { touch marker; exit 1; }"),
                false,
            )
            .await;
        assert_eq!(run.exit, Exit::Code(1));
        runner.finish().await;
        let system = text(&collect(rx).await, LogStream::System);
        assert!(
            system.contains("step install failed: exit code 127 (command not found)"),
            "{system}"
        );
        assert!(system.contains("retrying (attempt 3 of 3)"), "{system}");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_tree() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, rx) = LogSink::channel(1024);
        let runner = StepRunner::new(dir.path().to_path_buf(), vec![], sink);
        let mut def = step(
            "slow",
            "sleep 30 & echo $! > grandchild.pid; sh -c 'sleep 31' & wait",
        );
        def.timeout = Some(Duration::from_millis(500));
        let started = Instant::now();
        let run = runner.run(&def, false).await;
        assert_eq!(run.exit, Exit::TimedOut(Duration::from_millis(500)));
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(dir.path().join("grandchild.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed, so at most a zombie awaiting its (killed) parent's reaper.
        std::thread::sleep(Duration::from_millis(100));
        assert!(is_zombie(pid), "sleep {pid} survived the timeout");
        runner.finish().await;
        let system = text(&collect(rx).await, LogStream::System);
        assert!(
            system.contains("step slow failed: timed out after 500ms"),
            "{system}"
        );
    }

    #[tokio::test]
    async fn background_processes_do_not_hold_up_a_step() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, rx) = LogSink::channel(1024);
        let runner = StepRunner::new(dir.path().to_path_buf(), vec![], sink);
        let started = Instant::now();
        let run = runner
            .run(
                &step(
                    "server",
                    "(sleep 0.3; echo late; exec sleep 30) & echo $! > bg.pid; echo early",
                ),
                false,
            )
            .await;
        assert!(run.exit.success());
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(600)).await;
        let pid: i32 = std::fs::read_to_string(dir.path().join("bg.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        kill_tree(pid, true);
        runner.finish().await;
        let out = text(&collect(rx).await, LogStream::Stdout);
        assert_eq!(out, "early\nlate\n");
    }

    #[tokio::test]
    async fn long_scripts_run_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, _rx) = LogSink::channel(4096);
        let runner = StepRunner::new(dir.path().to_path_buf(), vec![], sink);
        let script = format!("x='{}'; test ${{#x}} -eq 200000", "a".repeat(200_000));
        let run = runner.run(&step("big", &script), false).await;
        assert_eq!(run.exit, Exit::Code(0));
        runner.finish().await;
    }

    /// Shards sharing a working directory (every execution of a workflow with `workingDir`)
    /// write their long scripts at the same time: each runs its own, and nothing is left.
    #[tokio::test]
    async fn concurrent_runners_in_one_workdir_run_their_own_long_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let runners: Vec<(StepRunner, _)> = (0..6)
            .map(|i| {
                let (sink, rx) = LogSink::channel(4096);
                // Same name on purpose: two attempts of one shard may overlap too.
                let runner = StepRunner::new(dir.path().to_path_buf(), vec![], sink)
                    .scratch_name(if i % 2 == 0 { "exec-0-1" } else { "exec-1-1" });
                (runner, rx)
            })
            .collect();
        let runs = runners
            .iter()
            .enumerate()
            .map(|(i, (runner, _))| async move {
                let mut outs = Vec::new();
                for round in 0..3 {
                    let me = format!("runner-{i}-round-{round}");
                    // Long enough to go through a file; its content names its runner.
                    let script = format!(
                        "x='{}'; test ${{#x}} -eq 200000 && echo {me}",
                        "a".repeat(200_000)
                    );
                    let run = runner.run(&step("tests", &script), true).await;
                    assert_eq!(run.exit, Exit::Code(0), "{me}");
                    outs.push((me, String::from_utf8_lossy(&run.stdout).trim().to_string()));
                }
                outs
            });
        for outs in futures::future::join_all(runs).await {
            for (me, out) in outs {
                assert_eq!(out, me, "a runner ran another's script");
            }
        }
        for (runner, _rx) in runners {
            runner.finish().await;
        }
        let left: Vec<_> = std::fs::read_dir(dir.path().join(".assay/scripts"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "scratch directories left behind: {left:?}");
    }

    #[tokio::test]
    async fn scratch_files_are_new_files_in_a_directory_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, _rx) = LogSink::channel(16);
        let a = StepRunner::new(dir.path().to_path_buf(), vec![], sink.clone()).scratch_name("e/1");
        let b = StepRunner::new(dir.path().to_path_buf(), vec![], sink).scratch_name("e/1");
        let pa = a.scratch_file("tests", "txt", b"a\n").unwrap();
        let pb = b.scratch_file("tests", "txt", b"b\n").unwrap();
        assert_ne!(pa.parent(), pb.parent());
        assert!(
            pa.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("e_1-")
        );
        assert_eq!(pa.file_name().unwrap(), "tests-1.txt");
        assert_eq!(std::fs::read_to_string(&pa).unwrap(), "a\n");
        assert_eq!(std::fs::read_to_string(&pb).unwrap(), "b\n");
        assert_eq!(
            a.scratch_file("tests", "txt", b"")
                .unwrap()
                .file_name()
                .unwrap(),
            "tests-2.txt"
        );
        a.finish().await;
        assert!(!pa.exists() && pb.exists());
        b.finish().await;
        assert!(!pb.exists());
    }
}
