//! [`KubeletSim`] runs Pods of the fake as local processes: phases, container statuses,
//! logs, env, and injected OOMKilled, Evicted, ErrImagePull and node loss.

use std::time::Duration;

use assay_testkit::kube::{FakeKube, Fault, KubeletSim};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(30);

fn pod(name: &str, script: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "busybox",
            "command": ["sh", "-c"], "args": [script],
            "env": [{"name": "GREETING", "value": "hi from env"}],
        }]},
    }))
    .unwrap()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Waits until the Pod satisfies `cond`, returns it.
async fn wait_for(pods: &Api<Pod>, name: &str, cond: impl Fn(&Pod) -> bool) -> Pod {
    let found = await_condition(pods.clone(), name, move |p: Option<&Pod>| {
        p.is_some_and(&cond)
    });
    tokio::time::timeout(PATIENCE, found)
        .await
        .unwrap_or_else(|_| panic!("pod {name} did not reach the condition"))
        .unwrap()
        .unwrap()
}

fn terminated(p: &Pod) -> (i32, String) {
    let state = p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .clone()
        .unwrap();
    let t = state.terminated.expect("terminated");
    (t.exit_code, t.reason.unwrap_or_default())
}

#[tokio::test]
async fn runs_containers_as_processes_with_logs_env_and_exit_codes() {
    let fake = FakeKube::start().await.unwrap();
    let _kubelet = KubeletSim::start(&fake, "node-a");
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    pods.create(
        &PostParams::default(),
        &pod("ok", "echo out; echo err >&2; echo $GREETING"),
    )
    .await
    .unwrap();
    pods.create(&PostParams::default(), &pod("bad", "echo failing; exit 3"))
        .await
        .unwrap();

    let ok = wait_for(&pods, "ok", |p| phase(p) == "Succeeded").await;
    assert_eq!(
        ok.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node-a")
    );
    assert_eq!(terminated(&ok), (0, "Completed".to_string()));
    let logs = pods.logs("ok", &LogParams::default()).await.unwrap();
    for line in ["out\n", "err\n", "hi from env\n"] {
        assert!(logs.contains(line), "{logs:?}");
    }

    let bad = wait_for(&pods, "bad", |p| phase(p) == "Failed").await;
    assert_eq!(terminated(&bad), (3, "Error".to_string()));
    assert_eq!(
        pods.logs("bad", &LogParams::default()).await.unwrap(),
        "failing\n"
    );
}

#[tokio::test]
async fn injected_faults() {
    let fake = FakeKube::start().await.unwrap();
    let kubelet = KubeletSim::start(&fake, "node-a");
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");

    kubelet.inject("default", "no-image", Fault::ErrImagePull);
    pods.create(&PostParams::default(), &pod("no-image", "exit 0"))
        .await
        .unwrap();
    let waiting = wait_for(&pods, "no-image", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c[0].state.as_ref()?.waiting.as_ref()?.reason.clone())
            .as_deref()
            == Some("ErrImagePull")
    })
    .await;
    assert_eq!(phase(&waiting), "Pending");

    for (name, fault) in [
        ("oom", Fault::OomKilled),
        ("evicted", Fault::Evicted),
        ("lost", Fault::NodeLost),
    ] {
        pods.create(
            &PostParams::default(),
            &pod(name, "echo started; exec sleep 600"),
        )
        .await
        .unwrap();
        wait_for(&pods, name, |p| phase(p) == "Running").await;
        kubelet.inject("default", name, fault);
        let done = wait_for(&pods, name, |p| !matches!(phase(p), "Running" | "Pending")).await;
        let status = done.status.as_ref().unwrap();
        match fault {
            Fault::OomKilled => {
                assert_eq!(phase(&done), "Failed");
                assert_eq!(terminated(&done), (137, "OOMKilled".to_string()));
            }
            Fault::Evicted => {
                assert_eq!(phase(&done), "Failed");
                assert_eq!(status.reason.as_deref(), Some("Evicted"));
            }
            _ => {
                assert_eq!(phase(&done), "Unknown");
                assert_eq!(status.reason.as_deref(), Some("NodeLost"));
            }
        }
    }
}

#[tokio::test]
async fn init_containers_run_first_and_a_failing_one_fails_the_pod() {
    let fake = FakeKube::start().await.unwrap();
    let _kubelet = KubeletSim::start(&fake, "node-a");
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("copied");
    let with_init = |name: &str, init_script: &str| -> Pod {
        let mut p = pod(name, &format!("test -f {}", marker.display()));
        let init =
            json!({"name": "setup", "image": "busybox", "command": ["sh", "-c", init_script]});
        p.spec.as_mut().unwrap().init_containers =
            Some(vec![serde_json::from_value(init).unwrap()]);
        p
    };
    let copy = format!("echo copying; touch {}", marker.display());
    pods.create(&PostParams::default(), &with_init("ok", &copy))
        .await
        .unwrap();
    let ok = wait_for(&pods, "ok", |p| phase(p) == "Succeeded").await;
    let init = &ok
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        0
    );
    let logs = LogParams {
        container: Some("setup".into()),
        ..Default::default()
    };
    assert_eq!(pods.logs("ok", &logs).await.unwrap(), "copying\n");

    pods.create(&PostParams::default(), &with_init("broken", "exit 7"))
        .await
        .unwrap();
    let broken = wait_for(&pods, "broken", |p| phase(p) == "Failed").await;
    let status = broken.status.unwrap();
    let init = &status.init_container_statuses.as_ref().unwrap()[0];
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        7
    );
    assert!(status.container_statuses.is_none());
}

fn with_secret_volume(name: &str, script: &str, source: serde_json::Value) -> Pod {
    let mut p = pod(name, script);
    let spec = p.spec.as_mut().unwrap();
    spec.volumes = Some(vec![
        serde_json::from_value(json!({"name": "creds", "secret": source})).unwrap(),
    ]);
    spec.containers[0].volume_mounts = Some(vec![
        serde_json::from_value(json!({"name": "creds", "mountPath": "/creds", "readOnly": true}))
            .unwrap(),
    ]);
    spec.containers[0].env = Some(vec![
        serde_json::from_value(json!({"name": "CREDS", "value": "/creds"})).unwrap(),
    ]);
    p
}

fn waiting_reason(statuses: Option<&Vec<k8s_openapi::api::core::v1::ContainerStatus>>) -> String {
    statuses
        .and_then(|s| s[0].state.as_ref()?.waiting.as_ref()?.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn secret_volumes_hold_the_secrets_keys_and_a_missing_one_fails_the_mount() {
    let fake = FakeKube::start().await.unwrap();
    let _kubelet = KubeletSim::start(&fake, "node-a");
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    // "czNjcmV0" is base64 of "s3cret".
    fake.put(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "git", "namespace": "default"},
            "data": {"username": "Ym90", "password": "czNjcmV0"}}),
    )
    .unwrap();

    // Every key, with defaultMode.
    let all = "cat $CREDS/username; echo; cat $CREDS/password; echo; stat -c %a $CREDS/password";
    pods.create(
        &PostParams::default(),
        &with_secret_volume(
            "all",
            all,
            json!({"secretName": "git", "defaultMode": 0o400}),
        ),
    )
    .await
    .unwrap();
    wait_for(&pods, "all", |p| phase(p) == "Succeeded").await;
    assert_eq!(
        pods.logs("all", &LogParams::default()).await.unwrap(),
        "bot\ns3cret\n400\n"
    );

    // items: only the named key, at its path.
    let items = "cat $CREDS/nested/pw; test ! -e $CREDS/username";
    pods.create(
        &PostParams::default(),
        &with_secret_volume(
            "items",
            items,
            json!({"secretName": "git", "items": [{"key": "password", "path": "nested/pw"}]}),
        ),
    )
    .await
    .unwrap();
    wait_for(&pods, "items", |p| phase(p) == "Succeeded").await;
    assert_eq!(
        pods.logs("items", &LogParams::default()).await.unwrap(),
        "s3cret\n",
        "the log is line by line"
    );

    // A missing Secret: Pending for good, nothing run, a FailedMount event; the same for a
    // missing item key.
    for (name, source, why) in [
        (
            "absent",
            json!({"secretName": "nope"}),
            "secret \"nope\" not found",
        ),
        (
            "no-key",
            json!({"secretName": "git", "items": [{"key": "token", "path": "t"}]}),
            "references non-existent secret key: token",
        ),
    ] {
        pods.create(
            &PostParams::default(),
            &with_secret_volume(name, "echo ran", source),
        )
        .await
        .unwrap();
        let stuck = wait_for(&pods, name, |p| {
            waiting_reason(
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref()),
            ) == "ContainerCreating"
        })
        .await;
        assert_eq!(phase(&stuck), "Pending");
        let events = fake.list("events", Some("default"));
        let event = events
            .iter()
            .find(|e| e["involvedObject"]["name"] == json!(name))
            .unwrap_or_else(|| panic!("no event for {name}: {events:?}"));
        assert_eq!(event["reason"], json!("FailedMount"));
        assert_eq!(event["type"], json!("Warning"));
        assert_eq!(
            event["message"],
            json!(format!(
                "MountVolume.SetUp failed for volume \"creds\" : {why}"
            ))
        );
        assert_eq!(pods.logs(name, &LogParams::default()).await.unwrap(), "");
    }
}

#[tokio::test]
async fn a_missing_secret_key_ref_leaves_the_container_waiting_with_a_config_error() {
    let fake = FakeKube::start().await.unwrap();
    let _kubelet = KubeletSim::start(&fake, "node-a");
    let pods: Api<Pod> = Api::namespaced(fake.client(), "default");
    let mut p = pod("env", "echo ran");
    p.spec.as_mut().unwrap().containers[0].env = Some(vec![
        serde_json::from_value(json!({"name": "PW", "valueFrom": {"secretKeyRef":
            {"name": "nats", "key": "password", "optional": false}}}))
        .unwrap(),
    ]);
    pods.create(&PostParams::default(), &p).await.unwrap();
    let stuck = wait_for(&pods, "env", |p| {
        waiting_reason(
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref()),
        ) == "CreateContainerConfigError"
    })
    .await;
    assert_eq!(phase(&stuck), "Pending");
    let waiting = stuck.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(
        waiting.message.as_deref(),
        Some("secret \"nats\" not found")
    );
}
