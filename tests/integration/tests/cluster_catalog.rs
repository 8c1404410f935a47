//! A workflow that exists only as a `TestWorkflow` object in the fake API server runs end to
//! end (scheduler with `--catalog kubernetes`, the real launcher, aggregator and
//! assay-runner processes), and the object's status ends with the aggregator's exact counts.
//! Build the runner first: `cargo build --bins` (`make test` does).

use assay_testkit::suite::JUNIT_SUITE_SH;
use std::time::{Duration, Instant};

use assay_cluster::{CatalogSource, Kind, KubeSource, Scope};
use assay_integration::{Sandbox, Service, describe, status_of};
use assay_proto::ExecutionStatus;
use assay_testkit::kube::FakeKube;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_of_a_workflow_object_ends_with_its_counts_in_the_objects_status() {
    let fake = FakeKube::start().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(fake.client());
    for crd in assay_spec::crd::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("suite.sh"), JUNIT_SUITE_SH).unwrap();
    std::fs::write(
        work.path().join("ids.txt"),
        "a\nb\nc-fail\nd-skip\ne\nf-fail\n",
    )
    .unwrap();
    let api: Api<DynamicObject> =
        Api::namespaced_with(fake.client(), "ci", &Kind::Workflow.api_resource());
    let obj = serde_json::from_value(json!({
        "apiVersion": "assay.dev/v1alpha1", "kind": "TestWorkflow",
        "metadata": {"name": "suite", "namespace": "ci"},
        "spec": {
            "workingDir": work.path().display().to_string(),
            "tests": {"list": "cat ids.txt", "run": "sh suite.sh {report} {tests}", "reports": ["{report}"]},
            "parallel": {"count": 2},
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();

    // No definition files: the launcher and aggregator from the sandbox, the scheduler
    // reading the cluster.
    let mut sb = Sandbox::empty(&[]).await;
    sb.start_service(Service::Launcher);
    sb.start_service(Service::Aggregator);
    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(assay_scheduler::run(
        assay_scheduler::Options {
            nats: assay_bus::NatsOptions {
                url: sb.nats.url(),
                ..Default::default()
            },
            catalog: CatalogSource::Kubernetes(KubeSource {
                scope: Some(Scope::Namespace("ci".into())),
                kubeconfig: Some(fake.kubeconfig_file().unwrap()),
            }),
            ..Default::default()
        },
        shutdown.clone(),
    ));

    let id = sb.run("suite", &[]).await;
    let detail = sb.wait_for_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(
        status_of(&detail),
        ExecutionStatus::Failed,
        "{}",
        describe(&detail)
    );
    let exec = detail.execution.clone().unwrap();
    assert_eq!(
        (exec.passed, exec.failed, exec.skipped, exec.errored),
        (3, 2, 1, 0),
        "{}",
        describe(&detail)
    );
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = fake
            .get("testworkflows.assay.dev", "ci", "suite")
            .map(|o| o["status"].clone())
            .unwrap_or_default();
        if status["lastExecutionStatus"] == "failed" {
            break status;
        }
        assert!(
            Instant::now() < until,
            "the status never showed the end: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["lastExecutionId"], id.as_str());
    assert_eq!(
        status["counts"],
        json!({"passed": 3, "failed": 2, "skipped": 1, "errored": 0, "total": 6})
    );
    shutdown.cancel();
    scheduler.await.unwrap().unwrap();
}
