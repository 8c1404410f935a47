//! The local backend on its own (no NATS): real child processes stand in for
//! `assay-runner` (small shell scripts that read the job line and end as told), and each
//! test checks how the backend classifies their end.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use assay_executor_launcher::{Attempt, Backend, LocalBackend, LocalOptions, Outcome, RunnerNats};
use assay_proto::{ShardJob, ShardState};
use base64::Engine;
use prost::Message;

/// Stand-in runners, each `<name>` an executable script in one directory. Written once per
/// test process, before any test starts a child (a script still open for writing while
/// another thread forks cannot be executed: `Text file busy`).
fn scripts() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let scripts = [
            // Reports nothing, but hands back what it was given: the job line and its
            // NATS settings.
            (
                "passes",
                r#"read -r job; printf '%s\n%s\n' "$job" "$ASSAY_NATS_URL" > "$OUT"; exit 0"#,
            ),
            ("fails", "read -r job; exit 1"),
            // Hands back its credentials settings: the file, its mode and text, and which
            // other credentials variables it has.
            (
                "shows_creds",
                r#"read -r job; { echo "$ASSAY_NATS_CREDS"; stat -c %a "$ASSAY_NATS_CREDS"; stat -c %a "$(dirname "$ASSAY_NATS_CREDS")"; cat "$ASSAY_NATS_CREDS"; env | grep -E '^ASSAY_NATS_(USER|PASSWORD|TOKEN)=' ; } > "$OUT.tmp"; mv "$OUT.tmp" "$OUT""#,
            ),
            (
                "crashes",
                "read -r job; echo 'cannot reach nats' >&2; exit 2",
            ),
            ("is_killed", "read -r job; kill -KILL $$"),
            // Runs until killed, with a child of its own (as a runner's test process).
            (
                "hangs",
                r#"read -r job; sleep 300 & echo $! > "$OUT.tmp"; mv "$OUT.tmp" "$OUT"; wait"#,
            ),
        ];
        for (name, body) in scripts {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("make script executable");
        }
        dir
    })
    .path()
}

/// What the runner gets: a NATS URL and where its script writes (`$OUT`).
fn nats(out: &Path) -> RunnerNats {
    RunnerNats {
        env: vec![
            ("ASSAY_NATS_URL".into(), "nats://127.0.0.1:4999".into()),
            ("OUT".into(), out.display().to_string()),
        ],
        ..Default::default()
    }
}

fn backend(script: &str, warm: usize, nats: RunnerNats) -> LocalBackend {
    LocalBackend::new(LocalOptions {
        runner: Some(scripts().join(script)),
        capacity: 2,
        warm,
        nats,
    })
    .expect("a runner given by path")
}

fn job() -> ShardJob {
    ShardJob {
        execution_id: "01LOCALBACKEND".into(),
        workflow: "w".into(),
        shard_index: 1,
        attempt: 2,
        ..Default::default()
    }
}

/// Starts the attempt of [`job`] on a runner that ends on its own and returns its outcome.
async fn run(script: &str) -> Outcome {
    let out = tempfile::tempdir().unwrap();
    let nats = nats(&out.path().join("out"));
    let local = backend(script, 0, nats.clone());
    let mut attempt = local.start(&job(), &nats).await.expect("started");
    let outcome = attempt.wait().await;
    attempt.kill().await;
    outcome
}

/// Waits until `path` exists (written by a script), for at most a minute.
async fn wait_for_file(path: &Path) -> String {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(Instant::now() < until, "{} never appeared", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` still runs (a zombie waiting for its parent has ended).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the command's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_runner_that_exits_0_passed_and_got_its_job_and_nats_settings() {
    let out = tempfile::tempdir().unwrap();
    let out_file = out.path().join("out");
    let nats = nats(&out_file);
    let local = backend("passes", 0, nats.clone());
    let mut attempt = local.start(&job(), &nats).await.expect("started");
    assert!(attempt.to_string().ends_with("(cold)"), "{attempt}");
    assert_eq!(attempt.wait().await, Outcome::Reported(ShardState::Passed));
    attempt.kill().await;

    let given = std::fs::read_to_string(&out_file).expect("the runner wrote what it got");
    let mut lines = given.lines();
    let line = lines.next().expect("the job line");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line)
        .expect("base64");
    assert_eq!(ShardJob::decode(bytes.as_slice()).unwrap(), job());
    assert_eq!(lines.next(), Some("nats://127.0.0.1:4999"));
}

#[tokio::test]
async fn a_runner_that_exits_1_reported_test_failures() {
    assert_eq!(run("fails").await, Outcome::Reported(ShardState::Failed));
}

#[tokio::test]
async fn a_runner_killed_by_a_signal_is_an_infrastructure_failure() {
    assert_eq!(
        run("is_killed").await,
        Outcome::Infrastructure("runner was killed by SIGKILL before it reported".into())
    );
}

#[tokio::test]
async fn a_runner_that_dies_unreported_says_why_from_its_stderr() {
    assert_eq!(
        run("crashes").await,
        Outcome::Infrastructure(
            "runner exited with code 2 without reporting: cannot reach nats".into()
        )
    );
}

#[tokio::test]
async fn killing_an_attempt_stops_the_runner_and_everything_it_started() {
    let out = tempfile::tempdir().unwrap();
    let out_file = out.path().join("out");
    let nats = nats(&out_file);
    let local = backend("hangs", 0, nats.clone());
    let mut attempt = local.start(&job(), &nats).await.expect("started");
    let grandchild: u32 = wait_for_file(&out_file)
        .await
        .trim()
        .parse()
        .expect("a pid");
    assert!(alive(grandchild));

    attempt.kill().await;
    assert_eq!(
        attempt.wait().await,
        Outcome::Infrastructure("runner was killed by SIGKILL before it reported".into())
    );
    // Killed with the group; reaped by whoever inherited it, which may take a moment.
    let until = Instant::now() + Duration::from_secs(60);
    while alive(grandchild) {
        assert!(
            Instant::now() < until,
            "the runner's child {grandchild} outlived it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_warm_runner_takes_the_job_when_it_reaches_nats_the_same_way() {
    let out = tempfile::tempdir().unwrap();
    let out_file = out.path().join("out");
    let nats = nats(&out_file);
    let local = backend("passes", 1, nats.clone());
    local.fill_warm_pool();
    let mut warm = local.start(&job(), &nats).await.expect("started");
    assert!(warm.to_string().ends_with("(warm)"), "{warm}");
    assert_eq!(warm.wait().await, Outcome::Reported(ShardState::Passed));
    warm.kill().await;

    // Other settings than the pool's: a runner of its own.
    let other = RunnerNats {
        env: vec![("OUT".into(), out.path().join("other").display().to_string())],
        ..Default::default()
    };
    let mut cold = local.start(&job(), &other).await.expect("started");
    assert!(cold.to_string().ends_with("(cold)"), "{cold}");
    assert_eq!(cold.wait().await, Outcome::Reported(ShardState::Passed));
    cold.kill().await;
    local.drain();
}

#[tokio::test]
async fn a_runner_that_cannot_start_is_an_error_and_nothing_is_found_after_a_restart() {
    let local = LocalBackend::new(LocalOptions {
        runner: Some(PathBuf::from("/nonexistent/assay-runner")),
        capacity: 3,
        warm: 0,
        nats: RunnerNats::default(),
    })
    .unwrap();
    assert_eq!(local.capacity(), 3);
    let err = local
        .start(&job(), &RunnerNats::default())
        .await
        .err()
        .expect("no runner to start");
    assert!(
        err.to_string()
            .starts_with("cannot start /nonexistent/assay-runner:"),
        "{err}"
    );
    // A child process does not outlive its launcher: nothing to find.
    assert!(local.find(&job()).await.unwrap().is_none());
}

/// Minted credentials reach the runner as a private file in `ASSAY_NATS_CREDS` (and no
/// credentials of the launcher's along with them), removed when the attempt ends.
#[tokio::test]
async fn minted_credentials_reach_the_runner_as_a_private_file_gone_with_the_attempt() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("out");
    let mut nats = nats(&file);
    nats.env.push(("ASSAY_NATS_USER".into(), "launcher".into()));
    nats.env
        .push(("ASSAY_NATS_PASSWORD".into(), "launchers-own".into()));
    let account = nkeys::KeyPair::new_account();
    let signing = nkeys::KeyPair::new_account();
    let signer =
        assay_bus::runner_jwt::Signer::new(&signing.seed().unwrap(), &account.public_key())
            .unwrap();
    let minted = nats.minted(&signer, &job()).expect("minted");
    let local = backend("shows_creds", 0, nats.clone());
    let mut attempt = local.start(&job(), &minted).await.expect("started");
    let text = wait_for_file(&file).await;
    let mut lines = text.lines();
    let path = PathBuf::from(lines.next().unwrap());
    assert_eq!(lines.next(), Some("600"), "{text}");
    assert_eq!(lines.next(), Some("700"), "{text}");
    assert_eq!(
        lines.next(),
        Some("-----BEGIN NATS USER JWT-----"),
        "{text}"
    );
    assert!(
        !text.contains("launchers-own") && !text.contains("ASSAY_NATS_USER"),
        "{text}"
    );
    assert!(path.is_file());
    attempt.wait().await;
    attempt.kill().await;
    drop(attempt);
    assert!(!path.exists(), "the credentials outlived the attempt");
}
