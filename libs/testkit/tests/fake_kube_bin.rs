//! `assay-fake-kube` prints a kubeconfig on stdout that a kube client can use.

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn the_program_prints_a_working_kubeconfig() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_assay-fake-kube"))
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut kubeconfig = String::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            kubeconfig.push_str(&line);
            kubeconfig.push('\n');
            if line.starts_with("preferences:") {
                return;
            }
        }
        panic!("assay-fake-kube ended before printing a kubeconfig:\n{kubeconfig}");
    })
    .await
    .expect("a kubeconfig on stdout");
    let parsed = kube::config::Kubeconfig::from_yaml(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(parsed, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let namespaces: Api<Namespace> = Api::all(client);
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_string()), "{names:?}");
    child.kill().await.unwrap();
}
