//! A test suite and a git repository for tests that need real ones without a framework:
//! [`JUNIT_SUITE_SH`] writes a JUnit report for the ids it is given, [`git`] runs the real
//! git with no user or system configuration.

use std::path::Path;
use std::process::Command;

/// `sh suite.sh REPORT ID...`: writes a JUnit report of the ids to REPORT and prints
/// `ran N tests`. Ids containing `fail` fail (exit 1), those containing `skip` are skipped,
/// the others pass. Waits while `$GATE` names a file that does not exist yet (a test can
/// hold the runner mid-run); sleeps `$HOLD` seconds before exiting (a test can watch it
/// running).
pub const JUNIT_SUITE_SH: &str = r#"#!/bin/sh
report=$1; shift
if [ -n "$GATE" ]; then while [ ! -e "$GATE" ]; do sleep 0.05; done; fi
{
echo '<?xml version="1.0" encoding="UTF-8"?>'
echo "<testsuite name=\"suite\" tests=\"$#\">"
for id in "$@"; do
  case $id in
    *fail*) echo "<testcase classname=\"suite\" name=\"$id\"><failure message=\"boom\">x</failure></testcase>";;
    *skip*) echo "<testcase classname=\"suite\" name=\"$id\"><skipped/></testcase>";;
    *) echo "<testcase classname=\"suite\" name=\"$id\" time=\"0.010\"/>";;
  esac
done
echo "</testsuite>"
} > "$report"
echo "ran $# tests"
if [ -n "$HOLD" ]; then sleep "$HOLD"; fi
case "$*" in *fail*) exit 1;; esac
exit 0
"#;

/// Runs the real git in `dir` with `args`, without the machine's or user's configuration
/// (author `t <t@example.com>`, default branch `main`); its trimmed stdout. Panics with
/// git's stderr when it fails (a test helper).
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .output()
        .expect("run git (is it installed?)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suite_reports_each_id_and_fails_when_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("suite.sh"), JUNIT_SUITE_SH).unwrap();
        let run = |ids: &[&str]| {
            let out = Command::new("sh")
                .current_dir(dir.path())
                .arg("suite.sh")
                .arg("r.xml")
                .args(ids)
                .output()
                .unwrap();
            let report = std::fs::read_to_string(dir.path().join("r.xml")).unwrap();
            (out.status.code(), report)
        };
        let (code, report) = run(&["a", "b-skip"]);
        assert_eq!(code, Some(0));
        assert!(report.contains(r#"name="a" time="0.010"/>"#), "{report}");
        assert!(report.contains(r#"name="b-skip"><skipped/>"#), "{report}");
        let (code, report) = run(&["a", "c-fail"]);
        assert_eq!(code, Some(1));
        assert!(report.contains(r#"name="c-fail"><failure"#), "{report}");
    }

    #[test]
    fn git_runs_without_the_users_configuration() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q"]);
        std::fs::write(dir.path().join("f"), "x").unwrap();
        git(dir.path(), &["add", "f"]);
        git(dir.path(), &["commit", "-qm", "one"]);
        assert_eq!(
            git(dir.path(), &["log", "--format=%an %ae"]),
            "t t@example.com"
        );
        assert_eq!(git(dir.path(), &["branch", "--show-current"]), "main");
    }
}
