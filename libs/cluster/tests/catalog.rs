//! The cluster catalog against the fake API server, through the real kube client: objects
//! reach and leave the catalog as they are created, edited and deleted; an invalid one is
//! left out with a `Valid=False` condition and a Warning Event; names that clash across
//! namespaces refuse the later object; forbidden calls name the verb and resource.

mod common;

use assay_cluster::{ClusterCatalog, Error, ExecutionReport, Kind, Scope, StatusWriter};
use assay_spec::SharedCatalog;
use assay_spec::crd::Counts;
use assay_testkit::kube::FakeKube;
use common::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Running {
    catalog: SharedCatalog,
    status: StatusWriter,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

async fn start(fake: &FakeKube, scope: Scope) -> Running {
    let shutdown = CancellationToken::new();
    let status = StatusWriter::new(fake.client(), "assay-test");
    let (catalog, keeper) =
        ClusterCatalog::start(fake.client(), scope, Some(status.clone()), shutdown.clone())
            .await
            .expect("the catalog starts");
    Running {
        catalog: catalog.shared(),
        status,
        shutdown,
        task: tokio::spawn(keeper),
    }
}

fn workflows(c: &SharedCatalog) -> Vec<String> {
    c.get().workflows().map(|w| w.name.clone()).collect()
}

fn triggers(c: &SharedCatalog) -> Vec<String> {
    c.get().triggers().map(|t| t.name.clone()).collect()
}

async fn wait_catalog(c: &SharedCatalog, what: &str, want_w: &[&str], want_t: &[&str]) {
    wait_for(what, || async {
        (workflows(c) == want_w && triggers(c) == want_t).then_some(())
    })
    .await;
}

/// Waits for the `Valid` condition of an object to have `status`; returns it.
async fn wait_valid(
    fake: &FakeKube,
    kind: Kind,
    ns: &str,
    name: &str,
    status: &str,
) -> serde_json::Value {
    wait_for(&format!("{name} Valid={status}"), || async {
        condition(fake, kind, ns, name, "Valid").filter(|c| c["status"] == status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_reach_and_leave_the_catalog_and_invalid_ones_get_a_condition_and_an_event() {
    let fake = fake_with_crds().await;
    create(&fake, Kind::Workflow, "shop", "e2e", workflow("pytest")).await;
    create(&fake, Kind::Trigger, "shop", "nightly", trigger("e2e")).await;
    // A template naming an undeclared parameter: fails the validation files get.
    create(
        &fake,
        Kind::Workflow,
        "shop",
        "broken",
        workflow("echo {{ config.missing }}"),
    )
    .await;
    // A field the schema does not have (the fake, unlike a real server, does not prune it).
    create(&fake, Kind::Workflow, "shop", "typo", json!({"stepz": []})).await;
    // Another namespace: not read.
    create(
        &fake,
        Kind::Workflow,
        "other",
        "elsewhere",
        workflow("true"),
    )
    .await;

    let running = start(&fake, Scope::Namespace("shop".into())).await;
    let c = &running.catalog;
    // Complete from the first read on.
    assert_eq!(workflows(c), ["e2e"]);
    assert_eq!(triggers(c), ["nightly"]);

    let broken = wait_valid(&fake, Kind::Workflow, "shop", "broken", "False").await;
    assert_eq!(broken["reason"], "Invalid");
    let message = broken["message"].as_str().unwrap();
    assert!(
        message.contains("TestWorkflow shop/broken spec.steps[0].run: template refers to undeclared parameter `config.missing`"),
        "{message}"
    );
    let typo = wait_valid(&fake, Kind::Workflow, "shop", "typo", "False").await;
    assert!(
        typo["message"].as_str().unwrap().contains("stepz"),
        "{typo}"
    );
    assert_eq!(
        wait_valid(&fake, Kind::Workflow, "shop", "e2e", "True").await["reason"],
        "Validated"
    );
    wait_valid(&fake, Kind::Trigger, "shop", "nightly", "True").await;
    let events = wait_for("an event about broken", || async {
        let e = events_about(&fake, "shop", "broken").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "Invalid");
    assert_eq!(event["message"], broken["message"]);
    assert_eq!(event["involvedObject"]["kind"], "TestWorkflow");
    assert_eq!(event["involvedObject"]["namespace"], "shop");
    assert!(
        event["involvedObject"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
    assert!(
        fake.get("testworkflows.assay.dev", "other", "elsewhere")
            .unwrap()
            .get("status")
            .is_none()
    );

    // Fixed: it joins the catalog and its condition turns True.
    set_spec(
        &fake,
        Kind::Workflow,
        "shop",
        "broken",
        workflow("make test"),
    )
    .await;
    wait_catalog(c, "broken to be accepted", &["broken", "e2e"], &["nightly"]).await;
    wait_valid(&fake, Kind::Workflow, "shop", "broken", "True").await;
    // Edited: the catalog carries the new spec.
    set_spec(&fake, Kind::Workflow, "shop", "e2e", workflow("pytest -x")).await;
    wait_for("the edited command", || async {
        let cat = c.get();
        (cat.workflow("e2e").ok()?.spec.steps[0].run == "pytest -x").then_some(())
    })
    .await;
    // Broken again: it leaves, and the trigger that runs it too (its reference dangles).
    set_spec(
        &fake,
        Kind::Workflow,
        "shop",
        "e2e",
        workflow("echo {{ config.gone }}"),
    )
    .await;
    wait_catalog(c, "e2e and nightly to leave", &["broken"], &[]).await;
    wait_valid(&fake, Kind::Workflow, "shop", "e2e", "False").await;
    let dangling = wait_valid(&fake, Kind::Trigger, "shop", "nightly", "False").await;
    assert_eq!(dangling["reason"], "UnresolvedReference");
    assert!(
        dangling["message"]
            .as_str()
            .unwrap()
            .contains("runs workflow \"e2e\", which is not defined"),
        "{dangling}"
    );
    // Fixed again, then deleted.
    set_spec(&fake, Kind::Workflow, "shop", "e2e", workflow("pytest")).await;
    wait_catalog(c, "e2e and nightly back", &["broken", "e2e"], &["nightly"]).await;
    wait_valid(&fake, Kind::Trigger, "shop", "nightly", "True").await;
    delete(&fake, Kind::Trigger, "shop", "nightly").await;
    delete(&fake, Kind::Workflow, "shop", "broken").await;
    wait_catalog(c, "deletions", &["e2e"], &[]).await;
    // One event per problem, however many rebuilds saw it.
    assert_eq!(events_about(&fake, "shop", "typo").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_in_another_namespace_refuses_the_later_object() {
    let fake = fake_with_crds().await;
    create(&fake, Kind::Workflow, "team-a", "e2e", workflow("first")).await;
    create(&fake, Kind::Workflow, "team-b", "e2e", workflow("second")).await;
    let running = start(&fake, Scope::All).await;
    let c = &running.catalog;
    assert_eq!(workflows(c), ["e2e"]);
    assert_eq!(c.get().workflow("e2e").unwrap().spec.steps[0].run, "first");
    let clash = wait_valid(&fake, Kind::Workflow, "team-b", "e2e", "False").await;
    assert_eq!(clash["reason"], "DuplicateName");
    let message = clash["message"].as_str().unwrap();
    assert!(
        message.contains("TestWorkflow team-a/e2e") && message.contains("TestWorkflow team-b/e2e"),
        "{message}"
    );
    wait_valid(&fake, Kind::Workflow, "team-a", "e2e", "True").await;
    // The first one goes: the other takes the name.
    delete(&fake, Kind::Workflow, "team-a", "e2e").await;
    wait_for("team-b's e2e", || async {
        (c.get().workflow("e2e").ok()?.spec.steps[0].run == "second").then_some(())
    })
    .await;
    wait_valid(&fake, Kind::Workflow, "team-b", "e2e", "True").await;
    let err = c.get().workflow("x").unwrap_err().to_string();
    assert!(err.contains("not found in all namespaces"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_list_names_the_verb_and_resource() {
    let fake = fake_with_crds().await;
    fake.forbid("list", "assay.dev", "testtriggers");
    let status = StatusWriter::new(fake.client(), "assay-test");
    let err = ClusterCatalog::start(
        fake.client(),
        Scope::Namespace("shop".into()),
        Some(status),
        CancellationToken::new(),
    )
    .await
    .err()
    .expect("a forbidden list fails the start");
    assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("forbidden: list testtriggers.assay.dev in namespace shop: the service account needs get/list/watch on it"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_crds_the_start_says_to_install_them() {
    let fake = FakeKube::start().await.unwrap();
    let err = ClusterCatalog::start(fake.client(), Scope::All, None, CancellationToken::new())
        .await
        .err()
        .expect("no CRDs fails the start");
    let text = err.to_string();
    assert!(
        text.contains("kubectl apply --server-side -k deploy/k8s/crds/"),
        "{text}"
    );
}

fn report(id: &str, status: &str, created: i64, revision: u64, passed: u64) -> ExecutionReport {
    ExecutionReport {
        workflow: "e2e".into(),
        execution_id: id.into(),
        status: status.into(),
        reason: String::new(),
        counts: Counts {
            passed,
            failed: 1,
            skipped: 0,
            errored: 0,
            total: passed + 1,
        },
        created_at_ms: created,
        revision,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_status_is_written_kept_in_order_and_retried_after_a_refusal() {
    let fake = fake_with_crds().await;
    create(&fake, Kind::Workflow, "shop", "e2e", workflow("pytest")).await;
    let running = start(&fake, Scope::Namespace("shop".into())).await;
    wait_valid(&fake, Kind::Workflow, "shop", "e2e", "True").await;

    fake.forbid("patch", "assay.dev", "testworkflows/status");
    running
        .status
        .execution(report("exec-2", "running", 2_000, 1, 0));
    // Refused: nothing written (the writer keeps it and retries).
    wait_for("a refused write", || async {
        (running.status.failed_writes() > 0).then_some(())
    })
    .await;
    let obj = fake.get("testworkflows.assay.dev", "shop", "e2e").unwrap();
    assert!(obj["status"].get("lastExecutionId").is_none(), "{obj}");
    fake.allow("patch", "assay.dev", "testworkflows/status");
    // An older execution's update does not replace the newer one; the newer one's end does.
    running
        .status
        .execution(report("exec-1", "passed", 1_000, 9, 5));
    running
        .status
        .execution(report("exec-2", "failed", 2_000, 3, 7));
    let status = wait_for("exec-2's end in the status", || async {
        let obj = fake.get("testworkflows.assay.dev", "shop", "e2e")?;
        (obj["status"]["lastExecutionStatus"] == "failed").then(|| obj["status"].clone())
    })
    .await;
    assert_eq!(status["lastExecutionId"], "exec-2");
    assert_eq!(
        status["counts"],
        json!({"passed": 7, "failed": 1, "skipped": 0, "errored": 0, "total": 8})
    );
    let conditions = status["conditions"].as_array().unwrap();
    let types: Vec<&str> = conditions
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["Valid", "Passed"],
        "the Valid condition is kept: {status}"
    );
    let passed = &conditions[1];
    assert_eq!(
        (passed["status"].as_str(), passed["reason"].as_str()),
        (Some("False"), Some("Failed"))
    );
    // A late, older revision of the same execution changes nothing.
    running
        .status
        .execution(report("exec-2", "running", 2_000, 2, 3));
    running
        .status
        .execution(report("exec-3", "passed", 3_000, 1, 8));
    wait_for("exec-3", || async {
        let obj = fake.get("testworkflows.assay.dev", "shop", "e2e")?;
        (obj["status"]["lastExecutionId"] == "exec-3").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_are_written_once_not_on_every_rebuild() {
    let fake = fake_with_crds().await;
    create(&fake, Kind::Workflow, "shop", "good", workflow("true")).await;
    create(
        &fake,
        Kind::Workflow,
        "shop",
        "bad",
        workflow("echo {{ config.x }}"),
    )
    .await;
    let _running = start(&fake, Scope::Namespace("shop".into())).await;
    wait_valid(&fake, Kind::Workflow, "shop", "good", "True").await;
    wait_valid(&fake, Kind::Workflow, "shop", "bad", "False").await;
    wait_for("the event about bad", || async {
        (!events_about(&fake, "shop", "bad").await.is_empty()).then_some(())
    })
    .await;
    let rv = |name: &str| {
        fake.get("testworkflows.assay.dev", "shop", name).unwrap()["metadata"]["resourceVersion"]
            .clone()
    };
    let (good, bad) = (rv("good"), rv("bad"));
    // Another object: a rebuild that sees the first two again (and their own status writes
    // came back through the watch before it, being older).
    create(&fake, Kind::Workflow, "shop", "third", workflow("true")).await;
    wait_valid(&fake, Kind::Workflow, "shop", "third", "True").await;
    assert_eq!(rv("good"), good, "an unchanged object is not written again");
    assert_eq!(rv("bad"), bad, "an unchanged object is not written again");
    assert_eq!(events_about(&fake, "shop", "bad").await.len(), 1);
}
