//! The stack as real processes: nats-server (JetStream, a store directory in the run
//! directory, a fixed port) and the four service binaries, each under a small supervisor
//! that starts it again when it exits, as systemd or Kubernetes would. The fault injector
//! kills, stops and continues them by PID.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::plan::Target;

/// The binaries the harness runs, found in one directory (`target/<profile>`).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
    pub nats: PathBuf,
}

impl Binaries {
    /// Checks that every binary is there; the error says how to build them.
    pub fn find(dir: &Path) -> anyhow::Result<Binaries> {
        for name in BINARIES {
            if !dir.join(name).is_file() {
                bail!(
                    "{} not found in {}; build the binaries first (`cargo build --bins`, or \
                     `cargo build --release --bins` with --bin-dir target/release)",
                    name,
                    dir.display()
                );
            }
        }
        let nats = assay_testkit::nats_server_binary().map_err(anyhow::Error::msg)?;
        Ok(Binaries {
            dir: dir.to_path_buf(),
            nats,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

pub const BINARIES: [&str; 5] = [
    "assay-trigger-watcher",
    "assay-scheduler",
    "assay-executor-launcher",
    "assay-result-aggregator",
    "assay-runner",
];

/// The directory next to the running executable that holds the service binaries
/// (`target/debug` for `target/debug/deps/<test>` and for `target/debug/assay-chaos`).
pub fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .skip(1)
        .take(2)
        .find(|d| d.join("assay-scheduler").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target/debug"))
}

/// Supervisor state of one process.
#[derive(Debug, Default)]
struct Slot {
    pid: Option<u32>,
    /// Set by the injector before it kills: the exit is expected, restart after `down_until`.
    killed: bool,
    down_until: Option<Instant>,
    /// PIDs currently stopped by SIGSTOP.
    stopped: Option<u32>,
    starts: u64,
    /// When the current process was spawned (unix ms).
    started_ms: i64,
    unexpected_exits: Vec<String>,
}

/// Addresses and paths of one run's stack.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub nats_port: u16,
    pub grpc: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
    pub capacity: usize,
}

impl Layout {
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }
    pub fn workflows(&self) -> PathBuf {
        self.dir.join("assay")
    }
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn database(&self) -> PathBuf {
        self.data().join("results.db")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn nats_store(&self) -> PathBuf {
        self.dir.join("nats")
    }
}

/// The running stack: one supervised process per target.
#[derive(Clone)]
pub struct Stack {
    pub layout: Layout,
    bins: Binaries,
    slots: Arc<BTreeMap<Target, Mutex<Slot>>>,
    stop: CancellationToken,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Stack {
    pub fn new(layout: Layout, bins: Binaries) -> Stack {
        let slots = [
            Target::Nats,
            Target::Aggregator,
            Target::Scheduler,
            Target::Launcher,
            Target::TriggerWatcher,
        ]
        .into_iter()
        .map(|t| (t, Mutex::new(Slot::default())))
        .collect();
        Stack {
            layout,
            bins,
            slots: Arc::new(slots),
            stop: CancellationToken::new(),
            tasks: Arc::default(),
        }
    }

    fn slot(&self, t: Target) -> std::sync::MutexGuard<'_, Slot> {
        self.slots[&t].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn command(&self, t: Target) -> Command {
        let l = &self.layout;
        let mut cmd = match t {
            Target::Nats => {
                let mut c = Command::new(&self.bins.nats);
                c.args(["-js", "-a", "127.0.0.1", "-p"])
                    .arg(l.nats_port.to_string())
                    .arg("-sd")
                    .arg(l.nats_store());
                c
            }
            Target::Aggregator => {
                let mut c = Command::new(self.bins.path("assay-result-aggregator"));
                c.arg("--database")
                    .arg(l.database())
                    .arg("--grpc")
                    .arg(l.grpc.to_string());
                c
            }
            Target::Scheduler => {
                let mut c = Command::new(self.bins.path("assay-scheduler"));
                c.arg("--workflows").arg(l.workflows());
                c
            }
            Target::Launcher => {
                let mut c = Command::new(self.bins.path("assay-executor-launcher"));
                c.arg("--capacity")
                    .arg(l.capacity.to_string())
                    .arg("--runner")
                    .arg(self.bins.path("assay-runner"));
                c
            }
            Target::TriggerWatcher => {
                let mut c = Command::new(self.bins.path("assay-trigger-watcher"));
                c.arg("--workflows")
                    .arg(l.workflows())
                    .arg("--http")
                    .arg(l.http.to_string());
                c
            }
        };
        if t != Target::Nats {
            cmd.arg("--nats").arg(l.nats_url());
            cmd.env(
                "RUST_LOG",
                std::env::var("ASSAY_CHAOS_LOG").unwrap_or_else(|_| "info".into()),
            );
            cmd.env("NO_COLOR", "1");
        }
        cmd.current_dir(&l.dir)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }

    /// Starts the supervisor of `t` and waits until its process runs.
    pub fn start(&self, t: Target) {
        let me = self.clone();
        let task = tokio::spawn(async move { me.supervise(t).await });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    async fn supervise(self, t: Target) {
        let log_path = self.layout.logs().join(format!("{}.log", t.name()));
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let wait = self.slot(t).down_until.take();
            if let Some(until) = wait {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = self.stop.cancelled() => return,
                }
            }
            let mut cmd = self.command(t);
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
            {
                Ok(f) => {
                    use std::io::Write;
                    let mut f2 = f.try_clone().ok();
                    if let Some(f2) = f2.as_mut() {
                        let _ = writeln!(f2, "---- chaos: start {} ----", t.name());
                    }
                    cmd.stdout(f);
                    if let Some(f2) = f2 {
                        cmd.stderr(f2);
                    }
                }
                Err(_) => {
                    cmd.stdout(Stdio::null()).stderr(Stdio::null());
                }
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    self.slot(t)
                        .unexpected_exits
                        .push(format!("cannot start: {e}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            {
                let mut s = self.slot(t);
                s.pid = child.id();
                s.started_ms = assay_bus::now_ms();
                s.killed = false;
                s.stopped = None;
                s.starts += 1;
            }
            if t == Target::Nats {
                wait_port(self.layout.nats_port, Duration::from_secs(15)).await;
            }
            let status = tokio::select! {
                s = child.wait() => s,
                _ = self.stop.cancelled() => {
                    // Graceful stop: SIGCONT in case it is stopped, SIGTERM, then SIGKILL.
                    if let Some(pid) = child.id() {
                        let pid = Pid::from_raw(pid as i32);
                        let _ = kill(pid, Signal::SIGCONT);
                        let _ = kill(pid, Signal::SIGTERM);
                    }
                    if tokio::time::timeout(Duration::from_secs(15), child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                    self.slot(t).pid = None;
                    return;
                }
            };
            let mut s = self.slot(t);
            s.pid = None;
            s.stopped = None;
            if !s.killed {
                let what = match status {
                    Ok(st) => st.to_string(),
                    Err(e) => e.to_string(),
                };
                s.unexpected_exits.push(what);
                s.down_until = Some(Instant::now() + Duration::from_secs(1));
            }
            s.killed = false;
        }
    }

    pub fn pid(&self, t: Target) -> Option<u32> {
        self.slot(t).pid
    }

    /// The running process of `t` and when it was spawned (unix ms).
    pub fn started(&self, t: Target) -> Option<(u32, i64)> {
        let s = self.slot(t);
        s.pid.map(|p| (p, s.started_ms))
    }

    /// SIGKILL now; the supervisor starts it again after `down`. Returns the PID killed.
    pub fn kill9(&self, t: Target, down: Duration) -> Option<u32> {
        let mut s = self.slot(t);
        let pid = s.pid?;
        s.killed = true;
        s.down_until = Some(Instant::now() + down);
        s.stopped = None;
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        Some(pid)
    }

    /// SIGSTOP now; returns the PID stopped (to continue it later).
    pub fn pause(&self, t: Target) -> Option<u32> {
        let mut s = self.slot(t);
        let pid = s.pid?;
        if s.stopped.is_some() {
            return None;
        }
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).ok()?;
        s.stopped = Some(pid);
        Some(pid)
    }

    /// SIGCONT of a PID paused earlier, if that process still runs as `t`.
    pub fn resume(&self, t: Target, pid: u32) {
        let mut s = self.slot(t);
        if s.stopped == Some(pid) && s.pid == Some(pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
        }
        if s.stopped == Some(pid) {
            s.stopped = None;
        }
    }

    /// Continues every stopped process (before the final phase).
    pub fn resume_all(&self) {
        for t in self.slots.keys() {
            let pid = self.slot(*t).stopped;
            if let Some(pid) = pid {
                self.resume(*t, pid);
            }
        }
    }

    /// Starts and exits seen per target: `(target, starts, unexpected exits)`.
    pub fn restarts(&self) -> Vec<(Target, u64, Vec<String>)> {
        self.slots
            .keys()
            .map(|t| {
                let s = self.slot(*t);
                (*t, s.starts, s.unexpected_exits.clone())
            })
            .collect()
    }

    /// Stops the services (SIGTERM, then SIGKILL after 15 s), nats-server last.
    pub async fn shutdown(&self) {
        self.resume_all();
        self.stop.cancel();
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Waits until something listens on the port (or the time is up).
pub async fn wait_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Makes files immutable (`chattr +i`) and mutable again; remembers what it changed so a
/// panic or an early return never leaves an undeletable run directory behind.
#[derive(Default)]
pub struct Immutable {
    paths: Mutex<Vec<PathBuf>>,
}

impl Immutable {
    /// Whether `chattr +i` really stops writes here, tried on a scratch file in `dir`
    /// through a descriptor opened before the flag was set (as SQLite's are).
    pub fn probe(dir: &Path) -> Result<(), String> {
        use std::io::Write;
        let path = dir.join(".chattr-probe");
        let mut f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
        chattr(std::slice::from_ref(&path), true)?;
        let write = f.write_all(b"x").and_then(|()| f.sync_all());
        chattr(std::slice::from_ref(&path), false)?;
        let _ = std::fs::remove_file(&path);
        match write {
            Err(_) => Ok(()),
            Ok(()) => Err("a write through an open descriptor still succeeded".into()),
        }
    }

    pub fn set(&self, paths: Vec<PathBuf>) -> Result<(), String> {
        let paths: Vec<PathBuf> = paths.into_iter().filter(|p| p.exists()).collect();
        chattr(&paths, true)?;
        self.paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(paths);
        Ok(())
    }

    pub fn clear(&self) {
        let paths: Vec<PathBuf> = self
            .paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        if !paths.is_empty() {
            let _ = chattr(&paths, false);
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        self.clear();
    }
}

fn chattr(paths: &[PathBuf], on: bool) -> Result<(), String> {
    if paths.is_empty() {
        return Ok(());
    }
    let out = std::process::Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .args(paths)
        .output()
        .map_err(|e| format!("chattr: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "chattr {}: {}",
            if on { "+i" } else { "-i" },
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Writes a file, creating its directory.
pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("mkdir {}", p.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}
