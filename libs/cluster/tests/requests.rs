//! The exact requests of the cluster catalog and its status writer (tower-test mock, see
//! `assay_testkit::kube_mock`): the lists and watches, the `status` merge patches (path,
//! content type, body), the Warning Event, and what a 403 or a 404 does.

use assay_cluster::{ClusterCatalog, Error, ExecutionReport, Kind, ObjKey, Scope, StatusWriter};
use assay_spec::crd::Counts;
use assay_testkit::kube_mock::{ANY, Expect, MockKube, TIME, list};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const NS: &str = "shop";
const WORKFLOWS: &str = "/apis/assay.dev/v1alpha1/namespaces/shop/testworkflows";
const TRIGGERS: &str = "/apis/assay.dev/v1alpha1/namespaces/shop/testtriggers";
const MERGE_PATCH: &str = "application/merge-patch+json";
const FORBIDDEN_LIST: &str = "testworkflows.assay.dev is forbidden: User \"system:serviceaccount:assay:assay-scheduler\" cannot list resource \"testworkflows\" in API group \"assay.dev\" in the namespace \"shop\"";

fn workflow(name: &str, uid: &str, rv: &str, generation: i64, spec: Value) -> Value {
    json!({
        "apiVersion": "assay.dev/v1alpha1",
        "kind": "TestWorkflow",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid,
            "resourceVersion": rv,
            "generation": generation,
            "creationTimestamp": "2026-01-02T03:04:05Z",
        },
        "spec": spec,
    })
}

/// `obj` as the API server returns it after the status patch `patch`.
fn patched(mut obj: Value, rv: &str, patch: &Value) -> Value {
    obj["metadata"]["resourceVersion"] = json!(rv);
    obj["status"] = patch["status"].clone();
    obj
}

fn with_time(mut c: Value, t: &str) -> Value {
    c["lastTransitionTime"] = json!(t);
    c
}

/// The list of a watcher's first page, and the watch that follows it from the list's
/// resourceVersion (held open).
fn list_then_watch(path: &str, rv: &str, items: Vec<Value>, kind: &str) -> [Expect; 2] {
    [
        Expect::get(path)
            .query("limit=500")
            .reply(200, list("assay.dev/v1alpha1", kind, rv, items)),
        Expect::get(path)
            .query(&format!(
                "watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={rv}"
            ))
            .hold(),
    ]
}

#[tokio::test]
async fn catalog_writes_valid_conditions_an_event_and_the_last_execution() {
    let (client, mock) = MockKube::start("default");
    let good = workflow(
        "e2e",
        "uid-e2e",
        "11",
        1,
        json!({"steps": [{"name": "test", "run": "true"}]}),
    );
    let bad = workflow("broken", "uid-broken", "12", 3, json!({"stepz": []}));
    let valid_true = json!({
        "type": "Valid", "status": "True", "reason": "Validated", "message": "",
        "lastTransitionTime": TIME, "observedGeneration": 1,
    });
    let invalid_message = "TestWorkflow shop/broken: spec does not match the TestWorkflow schema: unknown field `stepz`, expected one of `config`, `container`, `content`, `env`, `workingDir`, `setup`, `steps`, `after`, `tests`, `parallel`, `concurrency`, `timeout`, `retries`, `artifacts`, `pod`";
    let valid_false = json!({
        "type": "Valid", "status": "False", "reason": "Invalid", "message": invalid_message,
        "lastTransitionTime": TIME, "observedGeneration": 3,
    });
    // What the API server answers: the object with the status as patched (a real time).
    let t0 = "2026-01-02T03:05:00Z";
    let good_after = patched(
        good.clone(),
        "21",
        &json!({"status": {"conditions": [with_time(valid_true.clone(), t0)]}}),
    );
    let bad_after = patched(
        bad.clone(),
        "22",
        &json!({"status": {"conditions": [with_time(valid_false.clone(), t0)]}}),
    );
    mock.expect(list_then_watch(
        WORKFLOWS,
        "20",
        vec![good.clone(), bad.clone()],
        "TestWorkflowList",
    ));
    mock.expect(list_then_watch(TRIGGERS, "20", vec![], "TestTriggerList"));
    mock.expect([
        Expect::patch(&format!("{WORKFLOWS}/broken/status"))
            .header("content-type", MERGE_PATCH)
            .json(json!({"status": {"conditions": [valid_false]}}))
            .reply(200, bad_after),
        Expect::patch(&format!("{WORKFLOWS}/e2e/status"))
            .header("content-type", MERGE_PATCH)
            .json(json!({"status": {"conditions": [valid_true]}}))
            .reply(200, good_after.clone()),
        Expect::post("/api/v1/namespaces/shop/events")
            .header("content-type", "application/json")
            .json(json!({
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": ANY, "namespace": NS},
                "involvedObject": {
                    "apiVersion": "assay.dev/v1alpha1",
                    "kind": "TestWorkflow",
                    "name": "broken",
                    "namespace": NS,
                    "uid": "uid-broken",
                    // As the status patch before it left the object.
                    "resourceVersion": "22",
                },
                "type": "Warning",
                "reason": "Invalid",
                "message": invalid_message,
                "source": {"component": "assay-scheduler"},
                "reportingComponent": "assay-scheduler",
                "firstTimestamp": TIME,
                "lastTimestamp": TIME,
                "count": 1,
            }))
            .reply(201, json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "broken.1", "namespace": NS}})),
    ]);

    let shutdown = CancellationToken::new();
    let writer = StatusWriter::new(client.clone(), "assay-scheduler");
    let (catalog, keeper) = mock
        .bounded(ClusterCatalog::start(
            client,
            Scope::Namespace(NS.into()),
            Some(writer.clone()),
            shutdown.clone(),
        ))
        .await
        .expect("the catalog starts");
    let names: Vec<String> = catalog
        .shared()
        .get()
        .workflows()
        .map(|w| w.name.clone())
        .collect();
    assert_eq!(names, ["e2e"]);
    let keeper = tokio::spawn(keeper);
    mock.served().await;

    // The last execution: its fields, and a Passed condition next to the Valid one the
    // object now has (a merge patch replaces the list whole, so both are sent).
    mock.expect([Expect::patch(&format!("{WORKFLOWS}/e2e/status"))
        .header("content-type", MERGE_PATCH)
        .json(json!({"status": {
            "conditions": [
                with_time(json!({
                    "type": "Valid", "status": "True", "reason": "Validated", "message": "",
                    "observedGeneration": 1,
                }), t0),
                {
                    "type": "Passed", "status": "False", "reason": "Failed",
                    "message": "execution 01KEXEC: 3 passed, 1 failed, 0 errored, 2 skipped of 6; 1 test failed",
                    "lastTransitionTime": TIME,
                },
            ],
            "lastExecutionId": "01KEXEC",
            "lastExecutionStatus": "failed",
            "counts": {"passed": 3, "failed": 1, "skipped": 2, "errored": 0, "total": 6},
            "lastRunTime": "2026-01-02T04:00:00Z",
        }}))
        .reply(200, good_after)]);
    writer.execution(ExecutionReport {
        workflow: "e2e".into(),
        execution_id: "01KEXEC".into(),
        status: "failed".into(),
        reason: "1 test failed".into(),
        counts: Counts {
            passed: 3,
            failed: 1,
            skipped: 2,
            errored: 0,
            total: 6,
        },
        created_at_ms: 1_767_326_400_000,
        revision: 1,
    });
    mock.served().await;
    assert_eq!(writer.failed_writes(), 0);

    shutdown.cancel();
    mock.bounded(keeper).await.expect("the keeper stops");
    mock.finish().await;
}

#[tokio::test]
async fn a_forbidden_list_names_the_verb_the_resource_and_the_permission() {
    let (client, mock) = MockKube::start("default");
    mock.expect([
        Expect::get(WORKFLOWS)
            .query("limit=500")
            .reply_status(403, "Forbidden", FORBIDDEN_LIST),
        // Listed at the same time; the start fails before it matters.
        Expect::get(TRIGGERS).query("limit=500").hold().optional(),
    ]);
    let err = match mock
        .bounded(ClusterCatalog::start(
            client,
            Scope::Namespace(NS.into()),
            None,
            CancellationToken::new(),
        ))
        .await
    {
        Ok(_) => panic!("the start should fail"),
        Err(e) => e,
    };
    assert!(
        matches!(err, Error::Forbidden { .. }) && err.is_permanent(),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "forbidden: list testworkflows.assay.dev in namespace shop: the service account needs get/list/watch on it ({FORBIDDEN_LIST})"
        )
    );
    mock.finish().await;
}

#[tokio::test]
async fn a_list_not_found_says_to_install_the_crds() {
    let (client, mock) = MockKube::start("default");
    mock.expect([
        Expect::get("/apis/assay.dev/v1alpha1/testworkflows")
            .query("limit=500")
            .reply_status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        Expect::get("/apis/assay.dev/v1alpha1/testtriggers")
            .query("limit=500")
            .hold()
            .optional(),
    ]);
    let err = match mock
        .bounded(ClusterCatalog::start(
            client,
            Scope::All,
            None,
            CancellationToken::new(),
        ))
        .await
    {
        Ok(_) => panic!("the start should fail"),
        Err(e) => e,
    };
    assert_eq!(
        err.to_string(),
        "testworkflows.assay.dev is not served by the API server (the server could not find the requested resource); install the CRDs: kubectl apply --server-side -k deploy/k8s/crds/"
    );
    mock.finish().await;
}

fn key(name: &str) -> ObjKey {
    ObjKey {
        kind: Kind::Workflow,
        namespace: NS.into(),
        name: name.into(),
    }
}

fn condition(reason: &str) -> Condition {
    Condition {
        type_: "Valid".into(),
        status: "False".into(),
        reason: reason.into(),
        message: format!("{reason} message"),
        last_transition_time: Time(
            k8s_openapi::jiff::Timestamp::from_second(1_767_326_400).expect("a time"),
        ),
        observed_generation: Some(2),
    }
}

fn condition_patch(reason: &str) -> Value {
    json!({"status": {"conditions": [{
        "type": "Valid", "status": "False", "reason": reason,
        "message": format!("{reason} message"),
        "lastTransitionTime": "2026-01-02T04:00:00Z", "observedGeneration": 2,
    }]}})
}

/// A 404 (the object is gone) is not retried; a 403 is (a fixed role heals it), with the
/// same body; a forbidden Event is dropped, not retried.
#[tokio::test]
async fn writes_after_404_and_403() {
    let (client, mock) = MockKube::start("default");
    let writer = StatusWriter::new(client, "assay-scheduler");
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(writer.clone().run(shutdown.clone()));

    mock.expect([Expect::patch(&format!("{WORKFLOWS}/gone/status"))
        .header("content-type", MERGE_PATCH)
        .json(condition_patch("Invalid"))
        .reply_status(
            404,
            "NotFound",
            "testworkflows.assay.dev \"gone\" not found",
        )]);
    writer.condition(&key("gone"), condition("Invalid"));
    mock.served().await;
    assert_eq!(writer.failed_writes(), 0, "a gone object is not a failure");

    // Had `gone` stayed dirty, its patch would come again before or with these.
    let forbidden = "testworkflows.assay.dev \"other\" is forbidden: User \"system:serviceaccount:assay:assay-scheduler\" cannot patch resource \"testworkflows/status\" in API group \"assay.dev\" in the namespace \"shop\"";
    mock.expect([
        Expect::patch(&format!("{WORKFLOWS}/other/status"))
            .header("content-type", MERGE_PATCH)
            .json(condition_patch("DuplicateName"))
            .reply_status(403, "Forbidden", forbidden),
        Expect::patch(&format!("{WORKFLOWS}/other/status"))
            .header("content-type", MERGE_PATCH)
            .json(condition_patch("DuplicateName"))
            .reply(
                200,
                patched(
                    workflow("other", "uid-other", "30", 2, json!({})),
                    "31",
                    &condition_patch("DuplicateName"),
                ),
            ),
    ]);
    writer.condition(&key("other"), condition("DuplicateName"));
    mock.served().await;
    assert_eq!(writer.failed_writes(), 1);

    mock.expect([Expect::post("/api/v1/namespaces/shop/events")
        .header("content-type", "application/json")
        .json_subset(json!({"reason": "Invalid", "type": "Warning", "involvedObject": {"name": "third"}}))
        .reply_status(
            403,
            "Forbidden",
            "events is forbidden: User \"system:serviceaccount:assay:assay-scheduler\" cannot create resource \"events\" in API group \"\" in the namespace \"shop\"",
        )]);
    writer.event(&key("third"), "Invalid", "third is invalid".into());
    mock.served().await;
    // The next round writes only what is new: a re-queued Event would come with it.
    mock.expect([Expect::patch(&format!("{WORKFLOWS}/third/status"))
        .header("content-type", MERGE_PATCH)
        .json(condition_patch("Invalid"))
        .reply(
            200,
            patched(
                workflow("third", "uid-third", "40", 2, json!({})),
                "41",
                &condition_patch("Invalid"),
            ),
        )]);
    writer.condition(&key("third"), condition("Invalid"));
    mock.served().await;
    assert_eq!(writer.failed_writes(), 2);

    shutdown.cancel();
    mock.bounded(run).await.expect("the writer stops");
    mock.finish().await;
}
