//! The exact requests of the kubernetes backend (tower-test mock, see
//! `assay_testkit::kube_mock`): the Pod create and its body, adoption on 409, the 403
//! outcome, the shard's Pod lookup, the Pod watch (field selector, bookmarks, resume), the
//! delete without grace, and the reaper's list and deletes.

use assay_bus::{Bus, NatsOptions, subjects};
use assay_executor_launcher::backend::kubernetes::reaper;
use assay_executor_launcher::{Attempt, Backend, KubeBackend, KubeOptions, Outcome, RunnerNats};
use assay_proto::{ExecutionStatus, ExecutionUpdate, ShardJob, ShardState, Workload};
use assay_testkit::NatsServer;
use assay_testkit::kube_mock::{ANY, Expect, MockKube, list, status};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const NS: &str = "tests";
const PODS: &str = "/api/v1/namespaces/tests/pods";
const EXEC: &str = "01KEXEC0000000000000000000";
/// The Pod of shard 2, attempt 1.
const POD: &str = "assay-01kexec0000000000000000000-2-1";
const SHARD_SELECTOR: &str = "app.kubernetes.io/managed-by=assay-executor-launcher,assay.dev/execution=01KEXEC0000000000000000000,assay.dev/shard=2";

fn backend(client: kube::Client) -> KubeBackend {
    KubeBackend::new(
        client,
        KubeOptions {
            namespace: NS.into(),
            runner_image: "ghcr.io/assay/runner:1".into(),
            runner_path: "/usr/local/bin/assay-runner".into(),
            ..Default::default()
        },
    )
    .expect("valid options")
}

fn job(attempt: u32) -> ShardJob {
    ShardJob {
        header: Some(assay_bus::header(
            "test",
            format!("{EXEC}/2/{attempt}"),
            None,
        )),
        execution_id: EXEC.into(),
        workflow: "pods".into(),
        shard_index: 2,
        shard_count: 3,
        attempt,
        job_attempt: 1,
        timeout_ms: 600_000,
        test_ids: vec!["a".into()],
        workload: Some(Workload {
            image: "python:3.12-slim".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The launcher's own NATS settings, credentials included: none may reach the Pod.
fn launcher_nats() -> RunnerNats {
    RunnerNats {
        env: vec![
            ("ASSAY_NATS_URL".into(), "nats://nats.assay:4222".into()),
            ("ASSAY_NATS_USER".into(), "launcher".into()),
            ("ASSAY_NATS_PASSWORD".into(), "launcher-secret".into()),
            (
                "ASSAY_NATS_CREDS".into(),
                "/etc/assay/launcher.creds".into(),
            ),
        ],
        ..Default::default()
    }
}

fn labels(attempt: u32) -> Value {
    json!({
        "app.kubernetes.io/managed-by": "assay-executor-launcher",
        "assay.dev/execution": EXEC,
        "assay.dev/shard": "2",
        "assay.dev/attempt": attempt.to_string(),
    })
}

/// The Pod the builder makes for `job(1)`: everything but the volumes and the encoded job.
fn pod_body() -> Value {
    let mount = json!([{"name": "assay-runner", "mountPath": "/assay/bin"}]);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": POD,
            "namespace": NS,
            "labels": labels(1),
            "annotations": {"assay.dev/workflow": "pods", "assay.dev/execution": EXEC},
        },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": 631,
            "initContainers": [{
                "name": "install-runner",
                "image": "ghcr.io/assay/runner:1",
                "command": ["cp", "/usr/local/bin/assay-runner", "/assay/bin/assay-runner"],
                "volumeMounts": mount,
            }],
            "containers": [{
                "name": "runner",
                "image": "python:3.12-slim",
                "command": ["/assay/bin/assay-runner"],
                // The URL only: the launcher's user, password and creds file stay out.
                "env": [
                    {"name": "ASSAY_NATS_URL", "value": "nats://nats.assay:4222"},
                    {"name": "ASSAY_SHARD_JOB", "value": ANY},
                ],
                "volumeMounts": mount,
            }],
            "volumes": [{"name": "assay-runner", "emptyDir": {}}],
        },
    })
}

/// A Pod as the API server shows it, at `rv`, with `status`.
fn pod(name: &str, attempt: u32, rv: &str, status: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": format!("uid-{name}"),
            "resourceVersion": rv,
            "labels": labels(attempt),
            "annotations": {"assay.dev/workflow": "pods", "assay.dev/execution": EXEC},
        },
        "spec": {"nodeName": "node-a", "containers": [{"name": "runner", "image": "python:3.12-slim"}]},
        "status": status,
    })
}

fn running() -> Value {
    json!({"phase": "Running", "containerStatuses": [
        {"name": "runner", "ready": true, "restartCount": 0, "image": "python:3.12-slim", "imageID": "", "state": {"running": {"startedAt": "2026-01-02T03:04:05Z"}}}
    ]})
}

fn exited(code: i32) -> Value {
    let phase = if code == 0 { "Succeeded" } else { "Failed" };
    json!({"phase": phase, "containerStatuses": [
        {"name": "runner", "ready": false, "restartCount": 0, "image": "python:3.12-slim", "imageID": "", "state": {"terminated": {"exitCode": code, "reason": "Completed"}}}
    ]})
}

#[tokio::test]
async fn start_posts_one_pod_with_the_builders_body() {
    let (client, mock) = MockKube::start("default");
    mock.expect([Expect::post(PODS)
        .header("content-type", "application/json")
        .json(pod_body())
        .reply(201, pod(POD, 1, "100", json!({"phase": "Pending"})))]);
    let attempt = mock
        .bounded(backend(client).start(&job(1), &launcher_nats()))
        .await
        .expect("started");
    assert_eq!(attempt.to_string(), format!("pod {NS}/{POD}"));
    mock.finish().await;
}

/// A Pod an earlier life of the launcher created is watched, not created again.
#[tokio::test]
async fn a_409_is_adopted_without_a_second_post() {
    let (client, mock) = MockKube::start("default");
    mock.expect([Expect::post(PODS)
        .header("content-type", "application/json")
        .json(pod_body())
        .reply_status(
            409,
            "AlreadyExists",
            &format!("pods \"{POD}\" already exists"),
        )]);
    let attempt = mock
        .bounded(backend(client).start(&job(1), &launcher_nats()))
        .await
        .expect("adopted");
    assert_eq!(attempt.to_string(), format!("pod {NS}/{POD}"));
    mock.finish().await;
}

#[tokio::test]
async fn a_403_ends_the_attempt_naming_the_missing_permission() {
    let (client, mock) = MockKube::start("default");
    let message = "pods is forbidden: User \"system:serviceaccount:assay:assay-executor-launcher\" cannot create resource \"pods\" in API group \"\" in the namespace \"tests\"";
    mock.expect([Expect::post(PODS)
        .header("content-type", "application/json")
        .json(pod_body())
        .reply_status(403, "Forbidden", message)]);
    let mut attempt = mock
        .bounded(backend(client).start(&job(1), &launcher_nats()))
        .await
        .expect("an attempt that already ended");
    mock.served().await;
    // Decided without another request (the mock would answer anything else with a failure).
    let outcome = mock.bounded(attempt.wait()).await;
    assert_eq!(
        outcome,
        Outcome::Infrastructure(format!(
            "forbidden: the launcher may not create pods in namespace \"tests\" ({message}); grant its ServiceAccount create on pods"
        ))
    );
    assert_eq!(
        attempt.retry_elsewhere(),
        None,
        "RBAC is not fixed by a retry"
    );
    mock.finish().await;
}

/// A Pod the API refuses as invalid ends the attempt with the API's message, not retried.
#[tokio::test]
async fn a_422_ends_the_attempt_with_the_apis_message() {
    let (client, mock) = MockKube::start("default");
    let message = format!(
        "Pod \"{POD}\" is invalid: spec.containers[0].resources.limits[memory]: Invalid value: \"lots\": must be a quantity"
    );
    mock.expect([Expect::post(PODS)
        .header("content-type", "application/json")
        .json(pod_body())
        .reply_status(422, "Invalid", &message)]);
    let mut attempt = mock
        .bounded(backend(client).start(&job(1), &launcher_nats()))
        .await
        .expect("an attempt that already ended");
    mock.served().await;
    let outcome = mock.bounded(attempt.wait()).await;
    assert_eq!(
        outcome,
        Outcome::Infrastructure(format!(
            "the API rejected the shard's Pod (422 Invalid): {message}"
        ))
    );
    assert_eq!(attempt.retry_elsewhere(), None);
    mock.finish().await;
}

/// `find` lists the shard's Pods by label and takes the newest attempt of this job message
/// that is not being deleted.
#[tokio::test]
async fn find_lists_by_the_shard_selector() {
    let (client, mock) = MockKube::start("default");
    let mut deleting = pod("assay-01kexec0000000000000000000-2-3", 3, "90", running());
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-02T03:05:00Z");
    mock.expect([Expect::get(PODS)
        .query(&format!("labelSelector={SHARD_SELECTOR}"))
        .reply(
            200,
            list(
                "v1",
                "PodList",
                "120",
                vec![
                    pod(POD, 1, "80", exited(1)),
                    pod("assay-01kexec0000000000000000000-2-2", 2, "85", running()),
                    deleting,
                    pod("assay-01kexec0000000000000000000-2-4", 4, "95", running()),
                ],
            ),
        )]);
    let found = mock
        .bounded(backend(client).find(&job(3)))
        .await
        .expect("listed")
        .expect("found");
    assert_eq!(found.adopted_attempt(), Some(2));
    assert_eq!(
        found.to_string(),
        format!("pod {NS}/assay-01kexec0000000000000000000-2-2")
    );
    mock.finish().await;
}

fn field_selector() -> String {
    format!("fieldSelector=metadata.name%3D{POD}")
}

/// The Pod's watch: a list by field selector, then a watch from the list's resourceVersion
/// with bookmarks, resumed from the last bookmark when a watch response ends.
#[tokio::test]
async fn the_pod_watch_asks_for_bookmarks_and_resumes_from_them() {
    let (client, mock) = MockKube::start("default");
    let fs = field_selector();
    mock.expect([
        Expect::post(PODS)
            .header("content-type", "application/json")
            .json(pod_body())
            .reply(201, pod(POD, 1, "100", json!({"phase": "Pending"}))),
        Expect::get(PODS).query(&format!("{fs}&limit=500")).reply(
            200,
            list("v1", "PodList", "101", vec![pod(POD, 1, "101", running())]),
        ),
        Expect::get(PODS)
            .query(&format!(
                "{fs}&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=101"
            ))
            .reply_events(vec![json!({"type": "BOOKMARK", "object": {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"resourceVersion": "150"}
            }})]),
        Expect::get(PODS)
            .query(&format!(
                "{fs}&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=150"
            ))
            .reply_events(vec![
                json!({"type": "MODIFIED", "object": pod(POD, 1, "151", exited(0))}),
            ]),
    ]);
    let mut attempt = mock
        .bounded(backend(client).start(&job(1), &launcher_nats()))
        .await
        .expect("started");
    let outcome = mock.bounded(attempt.wait()).await;
    assert_eq!(outcome, Outcome::Reported(ShardState::Passed));
    mock.finish().await;
}

/// `kill` deletes without grace, then looks until the Pod is gone; a Pod already gone is
/// not looked for.
#[tokio::test]
async fn kill_deletes_with_no_grace_and_checks_it_is_gone() {
    let (client, mock) = MockKube::start("default");
    let delete_body = json!({"gracePeriodSeconds": 0});
    let mut gone_pod = pod(POD, 1, "160", running());
    gone_pod["metadata"]["deletionTimestamp"] = json!("2026-01-02T03:05:00Z");
    mock.expect([
        Expect::post(PODS)
            .header("content-type", "application/json")
            .json(pod_body())
            .reply(201, pod(POD, 1, "100", json!({"phase": "Pending"}))),
        Expect::delete(&format!("{PODS}/{POD}"))
            .header("content-type", "application/json")
            .json(delete_body.clone())
            .reply(200, gone_pod),
        Expect::get(&format!("{PODS}/{POD}")).reply_status(
            404,
            "NotFound",
            &format!("pods \"{POD}\" not found"),
        ),
        // The second kill: already gone, so no lookup after it.
        Expect::delete(&format!("{PODS}/{POD}"))
            .header("content-type", "application/json")
            .json(delete_body)
            .reply_status(404, "NotFound", &format!("pods \"{POD}\" not found")),
    ]);
    let mut attempt = mock
        .bounded(backend(client).start(&job(1), &launcher_nats()))
        .await
        .expect("started");
    mock.bounded(attempt.kill()).await;
    mock.bounded(attempt.kill()).await;
    mock.finish().await;
}

async fn publish_update(bus: &Bus, execution: &str, status: ExecutionStatus) {
    let update = ExecutionUpdate {
        header: Some(assay_bus::header("test", format!("{execution}/1"), None)),
        execution_id: execution.into(),
        workflow: "pods".into(),
        status: status as i32,
        revision: 1,
        ..Default::default()
    };
    bus.publish(subjects::execution_update("pods", execution), &update)
        .await
        .expect("published");
}

fn annotated(name: &str, execution: Option<&str>) -> Value {
    let mut p = pod(name, 1, "10", running());
    match execution {
        Some(e) => p["metadata"]["annotations"]["assay.dev/execution"] = json!(e),
        None => p["metadata"]["annotations"] = json!({}),
    }
    p
}

/// The reaper lists only the launcher's Pods and deletes, without grace, those of ended
/// executions; one already gone is skipped.
#[tokio::test]
async fn the_reaper_lists_by_label_and_deletes_ended_executions_pods() {
    let server = NatsServer::start();
    let shutdown = CancellationToken::new();
    let nats = NatsOptions {
        url: server.url(),
        ..NatsOptions::default()
    };
    let bus = Bus::connect(&nats, &shutdown).await.expect("nats");
    bus.ensure_topology().await.expect("topology");
    publish_update(&bus, "01KDONE", ExecutionStatus::Failed).await;
    publish_update(&bus, "01KLIVE", ExecutionStatus::Running).await;

    let (client, mock) = MockKube::start("default");
    let no_grace = json!({"gracePeriodSeconds": 0});
    mock.expect([
        Expect::get(PODS)
            .query("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dassay-executor-launcher")
            .reply(
                200,
                list(
                    "v1",
                    "PodList",
                    "200",
                    vec![
                        annotated("assay-01kdone-0-1", Some("01KDONE")),
                        annotated("assay-01kdone-1-1", Some("01KDONE")),
                        annotated("assay-01klive-0-1", Some("01KLIVE")),
                        annotated("assay-unknown-0-1", Some("01KUNKNOWN")),
                        annotated("not-annotated", None),
                    ],
                ),
            ),
        Expect::delete(&format!("{PODS}/assay-01kdone-0-1"))
            .header("content-type", "application/json")
            .json(no_grace.clone())
            .reply(200, annotated("assay-01kdone-0-1", Some("01KDONE"))),
        Expect::delete(&format!("{PODS}/assay-01kdone-1-1"))
            .header("content-type", "application/json")
            .json(no_grace)
            .reply(
                404,
                status(404, "NotFound", "pods \"assay-01kdone-1-1\" not found"),
            ),
    ]);
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, NS);
    let deleted = mock
        .bounded(reaper::sweep(&bus, &pods))
        .await
        .expect("swept");
    assert_eq!(deleted, 1, "one deleted, one already gone");
    mock.finish().await;

    let (client, mock) = MockKube::start("default");
    mock.expect([Expect::get(PODS)
        .query("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dassay-executor-launcher")
        .reply_status(
            403,
            "Forbidden",
            "pods is forbidden: User \"system:serviceaccount:assay:assay-executor-launcher\" cannot list resource \"pods\" in API group \"\" in the namespace \"tests\"",
        )]);
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, NS);
    let err = mock
        .bounded(reaper::sweep(&bus, &pods))
        .await
        .expect_err("forbidden");
    assert_eq!(
        err,
        "forbidden: the launcher may not list pods (pods is forbidden: User \"system:serviceaccount:assay:assay-executor-launcher\" cannot list resource \"pods\" in API group \"\" in the namespace \"tests\"); grant its ServiceAccount list on pods"
    );
    mock.finish().await;
    shutdown.cancel();
}
