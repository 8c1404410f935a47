//! The launcher's command line: `--backend` (or `ASSAY_BACKEND`) takes only the backends
//! this build has, and refuses anything else before connecting to anything.

use std::process::Command;

fn launcher() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_assay-executor-launcher"));
    // Nothing listens here: a launcher that got past its flags would fail differently.
    command.args(["--nats", "nats://127.0.0.1:1"]);
    command.env_remove("ASSAY_BACKEND");
    command
}

#[test]
fn an_unknown_backend_is_refused_with_the_accepted_ones() {
    let by_flag = launcher()
        .args(["--backend", "pods"])
        .output()
        .expect("run the launcher");
    let by_env = launcher()
        .env("ASSAY_BACKEND", "pods")
        .output()
        .expect("run the launcher");
    for output in [by_flag, by_env] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("invalid value 'pods' for '--backend <BACKEND>'")
                && stderr.contains("unknown backend \"pods\" (accepted: local, kubernetes)"),
            "{stderr}"
        );
    }
}

#[test]
fn the_kubernetes_backend_needs_a_runner_image() {
    let output = launcher()
        .args(["--backend", "kubernetes"])
        .env_remove("ASSAY_RUNNER_IMAGE")
        .output()
        .expect("run the launcher");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("the kubernetes backend needs --runner-image"),
        "{stderr}"
    );
}
