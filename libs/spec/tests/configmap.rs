//! Definitions mounted from a Kubernetes ConfigMap: kubelet writes the files into a
//! timestamped directory, points `..data` at it and links each file from the top level.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use assay_spec::{Catalog, SharedCatalog};
use tokio_util::sync::CancellationToken;

fn workflow(name: &str) -> String {
    format!(
        "apiVersion: assay.dev/v1alpha1\nkind: TestWorkflow\nmetadata: {{name: {name}}}\nspec:\n  steps:\n    - {{name: hello, run: echo hi}}\n"
    )
}

const TRIGGER: &str = "apiVersion: assay.dev/v1alpha1\nkind: TestTrigger\nmetadata: {name: nightly}\nspec:\n  on: {cron: {schedule: \"0 3 * * *\"}}\n  run: {workflow: smoke}\n";

/// Writes `files` into `dir/<stamp>/` the way kubelet's atomic writer does: the data
/// directory first, then `..data` swapped to it by renaming a fresh symlink over it, then the
/// top-level symlinks `name -> ..data/name` for names not linked yet.
fn write_mount(dir: &Path, stamp: &str, files: &[(&str, String)]) {
    let data = dir.join(stamp);
    std::fs::create_dir(&data).expect("timestamped dir");
    for (name, text) in files {
        std::fs::write(data.join(name), text).expect("file");
    }
    let tmp = dir.join("..data_tmp");
    symlink(stamp, &tmp).expect("..data_tmp symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link).expect("file symlink");
        }
    }
}

#[test]
fn a_configmap_mount_reads_each_file_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_mount(
        dir.path(),
        "..2026_12_04_13_00_00.123456789",
        &[
            ("smoke.yaml", workflow("smoke")),
            ("nightly.yaml", TRIGGER.to_string()),
        ],
    );
    let catalog = Catalog::load(dir.path()).expect("a mounted ConfigMap loads");
    let workflows: Vec<&str> = catalog.workflows().map(|w| w.name.as_str()).collect();
    let triggers: Vec<&str> = catalog.triggers().map(|t| t.name.as_str()).collect();
    assert_eq!(workflows, ["smoke"]);
    assert_eq!(triggers, ["nightly"]);
    let source = &catalog.workflow("smoke").expect("smoke").source.file;
    assert_eq!(
        source,
        &dir.path().join("smoke.yaml"),
        "read through the top-level symlink"
    );
}

#[tokio::test]
async fn the_watcher_reloads_when_data_is_swapped_to_a_new_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The same files and sizes in both versions: only the workflow's name changes, so the
    // reload must come from following the swapped symlink, not from a new path or size.
    write_mount(
        dir.path(),
        "..2026_12_04_13_00_00.123456789",
        &[("w.yaml", workflow("aaaa"))],
    );
    let shared = SharedCatalog::load(dir.path()).expect("first version loads");
    assert!(shared.get().workflow("aaaa").is_ok());

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn(shared.clone().watch(
        Duration::from_millis(10),
        shutdown.clone(),
        move |c: &Catalog| {
            let names: Vec<String> = c.workflows().map(|w| w.name.clone()).collect();
            let _ = tx.send(names);
        },
    ));
    // kubelet's update: a new timestamped directory, `..data` swapped to it, the old one
    // removed. The top-level `w.yaml` symlink itself does not change.
    write_mount(
        dir.path(),
        "..2026_12_04_13_05_00.000000001",
        &[("w.yaml", workflow("bbbb"))],
    );
    let old = dir.path().join("..2026_12_04_13_00_00.123456789");
    std::fs::remove_dir_all(&old).expect("kubelet removes the old version");
    let names = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the watcher reloads within 30s")
        .expect("the watcher is running");
    assert_eq!(names, ["bbbb"]);
    assert!(shared.get().workflow("bbbb").is_ok());
    assert!(shared.get().workflow("aaaa").is_err());
    shutdown.cancel();
    watcher.await.expect("watcher stops");
}
