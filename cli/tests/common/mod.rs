//! Running the built `assay` binary in tests: a clean environment (none of the caller's
//! `ASSAY_*` settings leak in), no colours, and the output as one text.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `assay args` in `dir` (the current one when `None`) with only `env` set of the
/// variables assay reads.
pub fn assay(dir: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_assay"));
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.args(args).env("NO_COLOR", "1");
    for var in [
        "ASSAY_NATS_URL",
        "ASSAY_API",
        "ASSAY_WORKFLOWS",
        "ASSAY_NATS_SERVER",
        "ASSAY_TOKEN",
        "ASSAY_TOKEN_FILE",
        "ASSAY_CA_FILE",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the assay binary runs")
}

/// stdout then stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
