//! `assay up`, the real binary with its own nats-server, takes the services' settings: a
//! GitHub secret from ASSAY_TRIGGER_WATCHER__GITHUB_SECRET turns the webhook on, a signed
//! push starts an execution, and that execution says what caused it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::text;

const SECRET: &str = "up-webhook-s3cret";
const SHA: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";

const DEFS: &str = r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: shop}
spec:
  steps:
    - name: ok
      run: "true"
---
apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: shop-on-push}
spec:
  on:
    webhook:
      provider: github
      events: [push]
      branches: [main]
  run: {workflow: shop}
"#;

/// `assay up` as a child process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Up {
    child: Child,
    dir: PathBuf,
}

impl Up {
    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("up.out")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("up.err")).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "--- assay up stdout:\n{}\n--- stderr:\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// SIGTERM and the exit code, within 20 s.
    fn stop(&mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).ok()?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn runner_next_to_assay() -> Option<PathBuf> {
    let assay = Path::new(env!("CARGO_BIN_EXE_assay"));
    let runner = assay.parent()?.join("assay-runner");
    runner.is_file().then_some(runner)
}

/// One HTTP/1.1 request over a plain TCP connection: status and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).ok()?;
    tcp.write_all(body).ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn wait_for<T>(what: &str, up: &Up, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {}s\n{}",
            timeout.as_secs(),
            up.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ports and directory of one `assay up`.
struct Stack {
    root: PathBuf,
    nats_port: u16,
    grpc: SocketAddr,
    http: SocketAddr,
}

impl Stack {
    fn new(root: &Path) -> Stack {
        std::fs::create_dir_all(root.join(".assay")).unwrap();
        std::fs::write(root.join(".assay/defs.yaml"), DEFS).unwrap();
        Stack {
            root: root.to_path_buf(),
            nats_port: assay_testkit::free_port(),
            grpc: SocketAddr::from(([127, 0, 0, 1], assay_testkit::free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], assay_testkit::free_port())),
        }
    }

    /// Starts `assay up` with `env` set (and none of the caller's ASSAY_* settings), stdout
    /// into `stdout` (default: up.out), stderr into up.err.
    fn start(&self, env: &[(&str, &str)], stdout: Option<Stdio>) -> Up {
        let nats_server = match assay_testkit::nats_server_binary() {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let root = &self.root;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_assay"));
        cmd.current_dir(root)
            .args(["up", "--data", "data"])
            .args(["--nats-port", &self.nats_port.to_string()])
            .args(["--grpc", &self.grpc.to_string()])
            .args(["--http", &self.http.to_string()])
            .args(["--capacity", "2"])
            .env("NO_COLOR", "1")
            .env("ASSAY_NATS_SERVER", &nats_server)
            .stdin(Stdio::null())
            .stdout(
                stdout
                    .unwrap_or_else(|| std::fs::File::create(root.join("up.out")).unwrap().into()),
            )
            .stderr(std::fs::File::create(root.join("up.err")).unwrap());
        for var in [
            "ASSAY_NATS_URL",
            "ASSAY_API",
            "ASSAY_WORKFLOWS",
            "ASSAY_TOKEN",
            "ASSAY_TOKEN_FILE",
            "ASSAY_TLS_CERT",
            "ASSAY_TLS_KEY",
            "ASSAY_TLS_CLIENT_CA",
            "ASSAY_TRIGGER_WATCHER__GITHUB_SECRET",
            "ASSAY_TRIGGER_WATCHER__GITHUB_SECRET_FILE",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(runner) = runner_next_to_assay() {
            cmd.env("ASSAY_RUNNER", runner);
        }
        Up {
            child: cmd.spawn().expect("assay up starts"),
            dir: root.clone(),
        }
    }
}

#[test]
fn up_takes_the_github_secret_from_the_environment_and_a_signed_push_runs_with_its_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Stack::new(tmp.path());
    let root = stack.root.clone();
    let (grpc, http_addr) = (stack.grpc, stack.http);
    let mut up = stack.start(&[("ASSAY_TRIGGER_WATCHER__GITHUB_SECRET", SECRET)], None);

    // The webhook is on: a wrong signature is refused (401), not "off" (404).
    wait_for(
        "the trigger-watcher to answer /healthz",
        &up,
        Duration::from_secs(60),
        || http(http_addr, "GET", "/healthz", &[], b"").filter(|(s, _)| *s == 200),
    );
    let body = format!(
        r#"{{"ref":"refs/heads/main","before":"9049f1265b7d61be4a8904a9a27120d2064dab3b","after":"{SHA}",
            "repository":{{"full_name":"acme/shop"}},"sender":{{"login":"octocat"}},
            "commits":[{{"added":["src/app.py"],"removed":[],"modified":[]}}]}}"#
    );
    let github = |delivery: &str, signature: &str| {
        http(
            http_addr,
            "POST",
            "/v1/webhooks/github",
            &[
                ("Content-Type", "application/json"),
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", delivery),
                ("X-Hub-Signature-256", signature),
            ],
            body.as_bytes(),
        )
    };
    let wrong = assay_trigger_watcher::webhook::sign(b"not the secret", body.as_bytes());
    let (status, answer) = github("d-wrong", &wrong).expect("an answer");
    assert_eq!(status, 401, "{answer}\n{}", up.logs());

    let signature = assay_trigger_watcher::webhook::sign(SECRET.as_bytes(), body.as_bytes());
    let (status, answer) = github("d-1", &signature).expect("an answer");
    assert!(
        status == 202 || status == 200,
        "{status} {answer}\n{}",
        up.logs()
    );
    assert!(answer.contains("\"published\":true"), "{answer}");

    // An execution of the workflow appears, caused by the push.
    let api = format!("http://{grpc}");
    let assay = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--api", &api]);
        common::assay(Some(&root), &all, &[])
    };
    let id = wait_for("an execution of shop", &up, Duration::from_secs(60), || {
        let out = assay(&["get", "executions", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        list.as_array()?
            .iter()
            .find(|e| e["workflow"] == "shop")
            .and_then(|e| e["id"].as_str().map(str::to_string))
    });
    let shown = wait_for(
        "the execution's cause",
        &up,
        Duration::from_secs(30),
        || {
            let out = assay(&["get", "execution", &id]);
            let shown = text(&out);
            (out.status.success() && shown.contains("Cause")).then_some(shown)
        },
    );
    for want in [
        "shop-on-push",
        "github/push",
        "acme/shop",
        "main",
        SHA,
        "octocat",
        "github/d-1",
    ] {
        assert!(shown.contains(want), "{want:?} missing from:\n{shown}");
    }
    let repository = shown.find("repository").expect("repository label");
    let sender = shown.find("sender").expect("sender label");
    assert!(repository < sender, "key labels in order:\n{shown}");

    // The SOURCE column and the label filters.
    let out = assay(&[
        "get",
        "executions",
        "-l",
        "branch=main",
        "--source",
        "github",
    ]);
    let table = text(&out);
    assert!(table.contains(&id), "{table}");
    assert!(table.contains("github main@0d1a26e"), "{table}");
    let out = assay(&["get", "executions", "-l", "branch=nope", "-o", "json"]);
    let none: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(none, serde_json::json!([]), "{}", text(&out));

    // The event, and what it started.
    let events = wait_for(
        "the event in get events",
        &up,
        Duration::from_secs(30),
        || {
            let out = assay(&["get", "events", "--since", "1h"]);
            let t = text(&out);
            t.contains(&format!("→ execution {id} (shop)")).then_some(t)
        },
    );
    assert!(
        events.contains("repository=acme/shop branch=main sha=0d1a26e"),
        "{events}"
    );

    // A push to another branch is published and starts nothing: get events says why.
    let dev = body.replace("refs/heads/main", "refs/heads/dev");
    let signature = assay_trigger_watcher::webhook::sign(SECRET.as_bytes(), dev.as_bytes());
    let (status, answer) = http(
        http_addr,
        "POST",
        "/v1/webhooks/github",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "d-dev"),
            ("X-Hub-Signature-256", &signature),
        ],
        dev.as_bytes(),
    )
    .expect("an answer");
    assert!(status == 202 || status == 200, "{status} {answer}");
    let explained = wait_for(
        "the branch push that started nothing in get events",
        &up,
        Duration::from_secs(30),
        || {
            let out = assay(&["get", "events", "--since", "1h", "--source", "github"]);
            let t = text(&out);
            t.contains("branch=dev").then_some(t)
        },
    );
    let why = explained
        .lines()
        .skip_while(|l| !l.contains("branch=dev"))
        .take(3)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        why.contains("✗ shop-on-push") && why.contains("branch") && why.contains("\"dev\""),
        "{explained}"
    );

    let banner = up.stdout();
    assert!(
        banner.contains("capacity 2 (--capacity): 2 shards at once, more wait for capacity"),
        "{banner}"
    );
    assert!(
        up.stderr()
            .contains("launcher capacity 2 (--capacity): 2 shards at once, more wait for capacity"),
        "{}",
        up.logs()
    );
    assert!(banner.contains("/v1/webhooks/github"), "{banner}");
    assert_eq!(up.stop(), Some(0), "{}", up.logs());
}

#[test]
fn up_keeps_running_when_its_stdout_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Stack::new(tmp.path());
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut up = stack.start(&[], Some(writer.into()));
    // The banner went nowhere; the stack serves anyway, with webhooks off (404).
    wait_for(
        "the trigger-watcher to answer /healthz",
        &up,
        Duration::from_secs(60),
        || http(stack.http, "GET", "/healthz", &[], b"").filter(|(s, _)| *s == 200),
    );
    let (status, answer) =
        http(stack.http, "POST", "/v1/webhooks/github", &[], b"{}").expect("an answer");
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer.contains("ASSAY_TRIGGER_WATCHER__GITHUB_SECRET"),
        "{answer}"
    );
    assert_eq!(up.stop(), Some(0), "{}", up.logs());
    // Its nats-server stopped with it.
    let nats = SocketAddr::from(([127, 0, 0, 1], stack.nats_port));
    wait_for(
        "the nats-server to stop",
        &up,
        Duration::from_secs(10),
        || {
            TcpStream::connect_timeout(&nats, Duration::from_millis(200))
                .is_err()
                .then_some(())
        },
    );
    assert!(!up.stderr().contains("panicked"), "{}", up.logs());
}

#[test]
fn up_serves_both_apis_over_mutual_tls_with_the_token_from_the_services_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Stack::new(tmp.path());
    let pki = assay_testkit::Pki::generate(tmp.path(), "cli");
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let (cert, key, ca) = (path(&pki.server_cert), path(&pki.server_key), path(&pki.ca));
    // The same variables the service binaries read.
    let mut up = stack.start(
        &[
            ("ASSAY_TLS_CERT", &cert),
            ("ASSAY_TLS_KEY", &key),
            ("ASSAY_TLS_CLIENT_CA", &ca),
            ("ASSAY_TOKEN", "up-t0ken"),
        ],
        None,
    );
    let api = format!("https://localhost:{}", stack.grpc.port());
    let (client_cert, client_key) = (path(&pki.client_cert), path(&pki.client_key));
    let get = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "get",
            "executions",
            "-o",
            "json",
            "--api",
            &api,
            "--ca-file",
            &ca,
        ];
        args.extend(extra);
        common::assay(Some(&stack.root), &args, env)
    };
    let with_cert = [
        "--cert-file",
        client_cert.as_str(),
        "--key-file",
        client_key.as_str(),
    ];
    wait_for(
        "the result API over TLS",
        &up,
        Duration::from_secs(60),
        || {
            let out = get(&with_cert, &[("ASSAY_TOKEN", "up-t0ken")]);
            out.status.success().then_some(())
        },
    );
    // No client certificate, or no token: refused, saying why.
    let out = get(&[], &[("ASSAY_TOKEN", "up-t0ken")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("client certificate"), "{}", text(&out));
    let out = get(&with_cert, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("refused the call"), "{}", text(&out));
    // The HTTP API speaks TLS too: plain HTTP gets no answer.
    let plain = http(stack.http, "GET", "/healthz", &[], b"");
    assert!(plain.as_ref().is_none_or(|(s, _)| *s != 200), "{plain:?}");
    let banner = up.stdout();
    assert!(
        banner.contains(&format!("https://{}", stack.http)),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("https://{} (gRPC)", stack.grpc)),
        "{banner}"
    );
    assert_eq!(up.stop(), Some(0), "{}", up.logs());
}
