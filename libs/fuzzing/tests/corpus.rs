//! Replays every seed (`fuzz/corpus/<target>/`) and every saved crash
//! (`fuzz/regressions/<target>/`) through its harness, so that `make test` keeps what the
//! fuzzer found fixed without cargo-fuzz or nightly.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use assay_fuzzing::{TARGETS, Target};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Runs `target` over every file of `fuzz/<kind>/<target>/`; returns how many ran and the
/// failures, each with its file and panic message.
fn replay(target: &Target, kind: &str) -> (usize, Vec<String>) {
    let paths = files(&fuzz_dir().join(kind).join(target.name));
    let mut failures = Vec::new();
    for path in &paths {
        let data = std::fs::read(path).expect("readable input");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (target.run)(&data))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {message}", path.display()));
        }
    }
    (paths.len(), failures)
}

fn check(name: &str) {
    let target = TARGETS
        .iter()
        .find(|t| t.name == name)
        .expect("a known target");
    let (seeds, mut failures) = replay(target, "corpus");
    assert!(
        seeds > 0,
        "no seeds in fuzz/corpus/{name}; the fuzzer needs real examples to start from"
    );
    let (_, regressions) = replay(target, "regressions");
    failures.extend(regressions);
    assert!(
        failures.is_empty(),
        "{} input(s) fail the {name} harness:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn bus_proto_corpus_and_regressions() {
    check("bus_proto");
}

#[test]
fn definitions_yaml_corpus_and_regressions() {
    check("definitions_yaml");
}

#[test]
fn junit_xml_corpus_and_regressions() {
    check("junit_xml");
}

#[test]
fn event_json_corpus_and_regressions() {
    check("event_json");
}

/// Every harness has a cargo-fuzz target and the other way round.
#[test]
fn webhook_payload_corpus_and_regressions() {
    check("webhook_payload");
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut on_disk: Vec<String> = files(&dir)
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    on_disk.sort();
    let mut known: Vec<String> = TARGETS.iter().map(|t| t.name.to_string()).collect();
    known.sort();
    assert_eq!(
        on_disk, known,
        "fuzz/fuzz_targets/ and assay_fuzzing::TARGETS differ"
    );
}
