//! The `Sandbox`: a real nats-server and the four services in-process, each startable and
//! stoppable on its own, with `wait_for_*` helpers that time out with a useful message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use assay_bus::{Bus, NatsOptions, header, subjects};
use assay_proto::results_client::ResultsClient;
use assay_proto::{
    ExecutionDetail, ExecutionStatus, GetExecutionRequest, ListExecutionsRequest, RunRequest,
};
use assay_testkit::{NatsServer, free_port};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use assay_testkit;

/// The services of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    TriggerWatcher,
    Scheduler,
    Launcher,
    Aggregator,
}

pub const ALL: [Service; 4] = [
    Service::Aggregator,
    Service::Scheduler,
    Service::Launcher,
    Service::TriggerWatcher,
];

struct Running {
    token: CancellationToken,
    handle: JoinHandle<Result<(), String>>,
}

/// A whole assay stack for one test.
pub struct Sandbox {
    pub nats: NatsServer,
    pub dir: tempfile::TempDir,
    pub bus: Bus,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub capacity: usize,
    running: Vec<(Service, Running)>,
    /// NATS credentials per user (`scheduler`, `executor-launcher`, `result-aggregator`,
    /// `trigger-watcher`, `cli`); empty: the server has no authorization.
    auth: std::collections::HashMap<String, assay_bus::NatsAuth>,
    /// Operator mode: the launcher mints each runner's own credentials with this.
    pub runner_signer: Option<std::sync::Arc<assay_bus::runner_jwt::Signer>>,
}

impl Service {
    /// The NATS user the service runs as in `deploy/nats/permissions.conf`.
    pub fn user(self) -> &'static str {
        match self {
            Service::TriggerWatcher => "trigger-watcher",
            Service::Scheduler => "scheduler",
            Service::Launcher => "executor-launcher",
            Service::Aggregator => "result-aggregator",
        }
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

impl Sandbox {
    /// Starts nats-server and all four services with the given definition files
    /// (`(file name, YAML)`) in a fresh `.assay` directory.
    pub async fn start(files: &[(&str, &str)]) -> Sandbox {
        let mut sb = Sandbox::empty(files).await;
        for s in ALL {
            sb.start_service(s);
        }
        sb
    }

    /// nats-server and the definitions, but no service running yet.
    pub async fn empty(files: &[(&str, &str)]) -> Sandbox {
        Sandbox::with_nats(NatsServer::start(), Default::default(), files).await
    }

    /// nats-server listening on `host` (`0.0.0.0` for Pods of a real cluster) and the
    /// definitions, but no service running yet.
    pub async fn empty_listening(host: &str, files: &[(&str, &str)]) -> Sandbox {
        Sandbox::with_nats(NatsServer::start_listening(host), Default::default(), files).await
    }

    /// A sandbox whose nats-server was started with `config` (authorization), each service
    /// and the CLI connecting with its own credentials from `auth` (keyed by
    /// [`Service::user`] and `cli`; the CLI's user is the sandbox's own client too).
    pub async fn secured(
        nats: NatsServer,
        auth: std::collections::HashMap<String, assay_bus::NatsAuth>,
        files: &[(&str, &str)],
    ) -> Sandbox {
        Sandbox::with_nats(nats, auth, files).await
    }

    async fn with_nats(
        nats: NatsServer,
        auth: std::collections::HashMap<String, assay_bus::NatsAuth>,
        files: &[(&str, &str)],
    ) -> Sandbox {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let defs = dir.path().join(".assay");
        std::fs::create_dir_all(&defs).expect("create .assay");
        for (name, yaml) in files {
            std::fs::write(defs.join(name), yaml).expect("write definition");
        }
        let mut own = Sandbox::nats_options(&nats.url());
        own.auth = auth.get("cli").cloned().unwrap_or_default();
        let bus = Bus::connect(&own, &CancellationToken::new())
            .await
            .expect("connect to the test nats-server");
        bus.ensure_topology().await.expect("topology");
        Sandbox {
            nats,
            dir,
            bus,
            grpc: SocketAddr::from(([127, 0, 0, 1], free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            capacity: 8,
            running: Vec::new(),
            auth,
            runner_signer: None,
        }
    }

    fn nats_options(url: &str) -> NatsOptions {
        NatsOptions {
            url: url.to_string(),
            connect_attempts: 0,
            ..Default::default()
        }
    }

    pub fn workflows_dir(&self) -> PathBuf {
        self.dir.path().join(".assay")
    }

    pub fn database(&self) -> PathBuf {
        self.dir.path().join("data/results.db")
    }

    /// A directory for test fixtures (scripts, reports).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write fixture");
        p
    }

    /// Starts one service (in this process, on its own cancellation token).
    pub fn start_service(&mut self, service: Service) {
        let token = CancellationToken::new();
        let mut nats = Sandbox::nats_options(&self.nats.url());
        nats.auth = self.auth.get(service.user()).cloned().unwrap_or_default();
        let workflows = self.workflows_dir();
        let t = token.clone();
        let handle = match service {
            Service::Scheduler => {
                let o = assay_scheduler::Options {
                    nats,
                    workflows,
                    ..Default::default()
                };
                tokio::spawn(
                    async move { assay_scheduler::run(o, t).await.map_err(|e| e.to_string()) },
                )
            }
            Service::TriggerWatcher => {
                let o = assay_trigger_watcher::Options {
                    nats,
                    workflows,
                    http: self.http,
                    ..Default::default()
                };
                tokio::spawn(async move {
                    assay_trigger_watcher::run(o, t)
                        .await
                        .map_err(|e| e.to_string())
                })
            }
            Service::Launcher => {
                let o = assay_executor_launcher::Options {
                    nats,
                    capacity: self.capacity,
                    ack_wait: Duration::from_secs(6),
                    runner_signer: self.runner_signer.clone(),
                    ..Default::default()
                };
                tokio::spawn(async move {
                    assay_executor_launcher::run(o, t)
                        .await
                        .map_err(|e| e.to_string())
                })
            }
            Service::Aggregator => {
                let o = assay_result_aggregator::Options {
                    nats,
                    database: self.database(),
                    grpc: self.grpc,
                    timeout_grace: Duration::from_secs(5),
                    sweep_every: Duration::from_millis(500),
                    ..Default::default()
                };
                tokio::spawn(async move {
                    assay_result_aggregator::run(o, t)
                        .await
                        .map_err(|e| e.to_string())
                })
            }
        };
        self.running.push((service, Running { token, handle }));
    }

    /// Stops one service gracefully and waits for it (at most 20 s).
    pub async fn stop_service(&mut self, service: Service) {
        let Some(pos) = self.running.iter().position(|(s, _)| *s == service) else {
            return;
        };
        let (_, r) = self.running.remove(pos);
        r.token.cancel();
        match tokio::time::timeout(Duration::from_secs(20), r.handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("{service:?} failed while stopping: {e}"),
            Ok(Err(e)) => panic!("{service:?} panicked: {e}"),
            Err(_) => panic!("{service:?} did not stop within 20s"),
        }
    }

    /// Aborts a service's task without a graceful stop (the closest in-process thing to a
    /// crash: nothing after the current await point runs).
    pub fn crash_service(&mut self, service: Service) {
        if let Some(pos) = self.running.iter().position(|(s, _)| *s == service) {
            let (_, r) = self.running.remove(pos);
            r.handle.abort();
        }
    }

    /// Result of a service task that ended by itself (e.g. a start-up error).
    pub async fn service_exit(
        &mut self,
        service: Service,
        within: Duration,
    ) -> Option<Result<(), String>> {
        let pos = self.running.iter().position(|(s, _)| *s == service)?;
        let (_, r) = self.running.remove(pos);
        match tokio::time::timeout(within, r.handle).await {
            Ok(Ok(res)) => Some(res),
            Ok(Err(e)) => Some(Err(format!("panicked: {e}"))),
            Err(_) => None,
        }
    }

    /// Publishes a run request and returns the execution id.
    pub async fn run(&self, workflow: &str, config: &[(&str, &str)]) -> String {
        let id = ulid::Ulid::new().to_string();
        self.run_with_key(workflow, config, &id, &format!("run/{id}"))
            .await;
        id
    }

    pub async fn run_with_key(&self, workflow: &str, config: &[(&str, &str)], id: &str, key: &str) {
        let req = RunRequest {
            header: Some(header("test", key, None)),
            workflow: workflow.to_string(),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            requested_by: "test".into(),
            execution_id: id.to_string(),
            ..Default::default()
        };
        self.publish_request(&req).await;
    }

    /// Publishes any run request (reruns, selections).
    pub async fn publish_request(&self, req: &RunRequest) {
        self.bus
            .publish(subjects::RUN_REQUESTED.to_string(), req)
            .await
            .expect("publish run request");
    }

    pub async fn client(&self) -> ResultsClient<tonic::transport::Channel> {
        let url = format!("http://{}", self.grpc);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match ResultsClient::connect(url.clone()).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => {
                    panic!("result API at {url} unreachable: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The execution as the API has it now, if it has it: every page of its test cases,
    /// each added to its shard (the head is the first page's).
    pub async fn detail(&self, id: &str) -> Option<ExecutionDetail> {
        let mut c = self.client().await;
        let mut detail: Option<ExecutionDetail> = None;
        let mut token = String::new();
        loop {
            let page = c
                .get_execution(GetExecutionRequest {
                    id: id.to_string(),
                    page_size: 10_000,
                    page_token: token,
                })
                .await
                .ok()?
                .into_inner();
            token = page.next_page_token.clone();
            match detail.as_mut() {
                None => detail = Some(page),
                Some(d) => {
                    for shard in page.shards {
                        let index = shard.summary.as_ref().map(|s| s.index);
                        match d
                            .shards
                            .iter_mut()
                            .find(|s| s.summary.as_ref().map(|s| s.index) == index)
                        {
                            Some(existing) => existing.tests.extend(shard.tests),
                            None => d.shards.push(shard),
                        }
                    }
                }
            }
            if token.is_empty() {
                return detail.map(|mut d| {
                    d.next_page_token.clear();
                    d
                });
            }
        }
    }

    pub async fn execution_count(&self, workflow: &str) -> usize {
        let mut c = self.client().await;
        c.list_executions(ListExecutionsRequest {
            workflow: workflow.to_string(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().executions.len())
        .unwrap_or(0)
    }

    /// The newest `limit` executions of `workflow`, newest first, as the API lists them.
    pub async fn executions(
        &self,
        workflow: &str,
        limit: u32,
    ) -> Vec<assay_proto::ExecutionUpdate> {
        self.client()
            .await
            .list_executions(ListExecutionsRequest {
                workflow: workflow.to_string(),
                limit,
                ..Default::default()
            })
            .await
            .expect("list executions")
            .into_inner()
            .executions
    }

    /// Every log chunk of an execution through the API, as text (`follow`: until the
    /// execution ends, at most `within`).
    pub async fn logs_text(&self, id: &str, follow: bool, within: Duration) -> String {
        use futures::StreamExt;
        let mut logs = self
            .client()
            .await
            .stream_logs(assay_proto::StreamLogsRequest {
                execution_id: id.to_string(),
                follow,
            })
            .await
            .expect("stream logs")
            .into_inner();
        let mut text = String::new();
        while let Some(chunk) = tokio::time::timeout(within, logs.next())
            .await
            .expect("logs end in time")
        {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("a log chunk").data));
        }
        text
    }

    /// Waits until every durable consumer of each of `streams` has handled everything in
    /// it (nothing pending, nothing awaiting an ack): then no message published before the
    /// call can still change anything. Use it instead of sleeping before asserting that
    /// nothing else happened.
    pub async fn wait_until_consumed(&self, streams: &[&str]) {
        use futures::TryStreamExt;
        let deadline = Instant::now() + Duration::from_secs(60);
        for name in streams {
            loop {
                let stream = self
                    .bus
                    .jetstream()
                    .get_stream(*name)
                    .await
                    .unwrap_or_else(|e| panic!("stream {name}: {e}"));
                let infos: Vec<_> = stream
                    .consumers()
                    .try_collect()
                    .await
                    .unwrap_or_else(|e| panic!("consumers of {name}: {e}"));
                let busy: Vec<String> = infos
                    .iter()
                    .filter(|c| c.config.durable_name.is_some())
                    .filter(|c| c.num_pending > 0 || c.num_ack_pending > 0)
                    .map(|c| {
                        format!(
                            "{} ({} pending, {} unacked)",
                            c.name, c.num_pending, c.num_ack_pending
                        )
                    })
                    .collect();
                if busy.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "consumers of {name} still busy after 60s: {}",
                    busy.join(", ")
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Waits until the execution is terminal; panics after `within` with the last state
    /// seen.
    pub async fn wait_for_terminal(&self, id: &str, within: Duration) -> ExecutionDetail {
        self.wait_for(id, within, "a terminal status", |d| {
            let s = d.execution.as_ref().map(|e| e.status).unwrap_or(0);
            !matches!(
                ExecutionStatus::try_from(s).unwrap_or(ExecutionStatus::Unspecified),
                ExecutionStatus::Unspecified | ExecutionStatus::Queued | ExecutionStatus::Running
            )
        })
        .await
    }

    /// Waits until `done(detail)` holds; panics after `within` naming `what` and the last
    /// state seen.
    pub async fn wait_for(
        &self,
        id: &str,
        within: Duration,
        what: &str,
        done: impl Fn(&ExecutionDetail) -> bool,
    ) -> ExecutionDetail {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            if let Some(d) = self.detail(id).await {
                if done(&d) {
                    return d;
                }
                last = Some(d);
            }
            if Instant::now() > deadline {
                let seen = last
                    .map(|d| describe(&d))
                    .unwrap_or_else(|| "nothing (the API never had it)".to_string());
                panic!("execution {id} did not reach {what} within {within:?}; last seen: {seen}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The `assay` binary next to the running test (built by `cargo build --bins`, which
/// `make test` runs first).
pub fn assay_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("assay"))
        .find(|p| p.is_file())
        .expect("target/*/assay: run `cargo build --bins` first")
}

impl Sandbox {
    /// Runs the `assay` CLI against this sandbox (its NATS and result API), without colours.
    pub async fn assay(&self, args: &[&str]) -> std::process::Output {
        let auth = self
            .auth
            .get("cli")
            .map(assay_bus::NatsAuth::env_vars)
            .unwrap_or_default();
        tokio::process::Command::new(assay_bin())
            .args(args)
            .envs(auth)
            // The CLI checks workflow names against the sandbox's definitions.
            .env("ASSAY_WORKFLOWS", self.workflows_dir())
            .env("ASSAY_NATS_URL", self.nats.url())
            .env("ASSAY_API", format!("http://{}", self.grpc))
            .env("NO_COLOR", "1")
            .output()
            .await
            .expect("run the assay binary")
    }
}

/// stdout and stderr of a finished command, for assertions and failure messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The status of an execution detail.
/// NATS settings of a service started in the test process: `url`, client name `name`.
pub fn nats_as(url: &str, name: &str) -> NatsOptions {
    NatsOptions {
        url: url.to_string(),
        name: name.to_string(),
        ..Default::default()
    }
}

/// A service's `run` future started in the test process; its error as text.
pub type ServiceTask = JoinHandle<Result<(), String>>;

/// Spawns a service's `run` future (`assay_scheduler::run(options, token)`, ...).
pub fn spawn_service<E: std::fmt::Display>(
    run: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) -> ServiceTask {
    tokio::spawn(async move { run.await.map_err(|e| e.to_string()) })
}

pub fn status_of(d: &ExecutionDetail) -> ExecutionStatus {
    ExecutionStatus::try_from(d.execution.as_ref().map(|e| e.status).unwrap_or(0))
        .unwrap_or_default()
}

/// One line about an execution, for failure messages.
pub fn describe(d: &ExecutionDetail) -> String {
    let e = d.execution.clone().unwrap_or_default();
    let shards: Vec<String> = d
        .shards
        .iter()
        .map(|s| {
            let sum = s.summary.clone().unwrap_or_default();
            format!(
                "#{} {:?} attempt {} ({} tests) {}",
                sum.index,
                assay_proto::ShardState::try_from(sum.state).unwrap_or_default(),
                sum.attempt,
                s.tests.len(),
                sum.reason
            )
        })
        .collect();
    format!(
        "{:?} \"{}\" passed={} failed={} skipped={} shards=[{}]",
        ExecutionStatus::try_from(e.status).unwrap_or_default(),
        e.reason,
        e.passed,
        e.failed,
        e.skipped,
        shards.join("; ")
    )
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for (_, r) in &self.running {
            r.token.cancel();
            r.handle.abort();
        }
    }
}

/// Test ids of every shard's latest attempt, in shard order.
pub fn test_ids(d: &ExecutionDetail) -> Vec<String> {
    d.shards
        .iter()
        .flat_map(|s| s.tests.iter().map(|t| t.id.clone()))
        .collect()
}

/// The services as separate release processes, for the end-to-end benchmarks.
pub mod release {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    use crate::proc_stat::rss_kib;

    /// A release binary next to the running benchmark (`target/release/<name>`).
    pub fn bin(name: &str) -> PathBuf {
        let exe = std::env::current_exe().expect("bench path");
        exe.ancestors()
            .skip(1)
            .take(2)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{name}: run `cargo build --release --bins` first"))
    }

    /// Service processes on one nats-server and one definitions directory, killed on drop.
    pub struct Services {
        nats_url: String,
        defs: PathBuf,
        /// Where each service's stderr goes (`<name>.log`); none: discarded.
        logs: Option<PathBuf>,
        children: Vec<(&'static str, Child)>,
    }

    impl Services {
        pub fn new(nats_url: String, defs: &Path, logs: Option<&Path>) -> Services {
            Services {
                nats_url,
                defs: defs.to_path_buf(),
                logs: logs.map(Path::to_path_buf),
                children: Vec::new(),
            }
        }

        /// Starts the release binary `name` with `args` (RUST_LOG=warn).
        pub fn spawn(&mut self, name: &'static str, args: &[String]) {
            let stderr = match &self.logs {
                Some(dir) => Stdio::from(
                    std::fs::File::create(dir.join(format!("{name}.log"))).expect("service log"),
                ),
                None => Stdio::null(),
            };
            let child = Command::new(bin(name))
                .args(args)
                .env("ASSAY_NATS_URL", &self.nats_url)
                .env("ASSAY_WORKFLOWS", &self.defs)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
            self.children.push((name, child));
        }

        pub fn pid(&self, name: &str) -> Option<u32> {
            self.children
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, c)| c.id())
        }

        /// Kills one service and waits for it.
        pub fn stop(&mut self, name: &str) {
            if let Some(pos) = self.children.iter().position(|(n, _)| *n == name) {
                let (_, mut c) = self.children.remove(pos);
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        /// Each service's resident set size, in KiB.
        pub fn rss(&self) -> BTreeMap<&'static str, u64> {
            self.children
                .iter()
                .map(|(n, c)| (*n, rss_kib(c.id())))
                .collect()
        }
    }

    impl Drop for Services {
        fn drop(&mut self) {
            for (_, c) in &mut self.children {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// What `/proc` says of a process, for benchmarks (Linux).
pub mod proc_stat {
    /// Resident set size in KiB (`VmRSS`), 0 when the process is gone.
    pub fn rss_kib(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// CPU time (user + system) a process has used so far, in milliseconds.
    pub fn cpu_ms(pid: u32) -> u64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return 0;
        };
        // Fields after the command name (which may hold spaces) start at ") ".
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            return 0;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        // USER_HZ is 100 on every Linux this runs on.
        ticks * 10
    }

    /// CPU time of each live thread of a process, in nanoseconds (`/proc/<pid>/task/<tid>/
    /// schedstat`, the scheduler's own clock, not 10 ms ticks).
    fn thread_cpu_ns(pid: u32) -> std::collections::BTreeMap<u32, u64> {
        let mut out = std::collections::BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return out;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let ns = std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()));
            if let Some(ns) = ns {
                out.insert(tid, ns);
            }
        }
        out
    }

    /// Measures the CPU a process uses from now on, to the microsecond: the sum over its
    /// threads of what each ran since the start (threads started since count from zero).
    /// `/proc/<pid>/stat`'s 10 ms ticks make a figure of tens of milliseconds (a 1,000-test
    /// run) off by half; this is exact unless a thread that was there at the start ends
    /// before [`CpuMeter::ms`] reads it, and then the tick count is returned instead.
    pub struct CpuMeter {
        pid: u32,
        ticks_ms: u64,
        threads: std::collections::BTreeMap<u32, u64>,
    }

    impl CpuMeter {
        pub fn start(pid: u32) -> CpuMeter {
            CpuMeter {
                pid,
                ticks_ms: cpu_ms(pid),
                threads: thread_cpu_ns(pid),
            }
        }

        /// Milliseconds of CPU since [`CpuMeter::start`].
        pub fn ms(&self) -> f64 {
            let now = thread_cpu_ns(self.pid);
            let ticks = cpu_ms(self.pid).saturating_sub(self.ticks_ms) as f64;
            if self.threads.keys().any(|tid| !now.contains_key(tid)) {
                return ticks;
            }
            let ns: u64 = now
                .iter()
                .map(|(tid, ns)| ns.saturating_sub(*self.threads.get(tid).unwrap_or(&0)))
                .sum();
            ns as f64 / 1e6
        }
    }
}
