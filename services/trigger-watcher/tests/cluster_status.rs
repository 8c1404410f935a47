//! Cluster triggers read from the cluster (`--catalog kubernetes` with `--watch-cluster`):
//! each `TestTrigger` object says whether its watch works (`Watching` condition, one
//! Warning Event per distinct error); a rollout that completed while no watcher ran fires
//! once after the restart; a claim whose event never went out is published by the next
//! start. Against the fake API server (and the real kubectl) and a real nats-server.

mod cluster_support;

use std::path::PathBuf;

use assay_cluster::{CatalogSource, Kind, KubeSource, Scope};
use assay_trigger_watcher::{ClusterOptions, Options};
use cluster_support::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};

const ROLLOUT: &str =
    "{kind: Deployment, namespace: shop, selector: {app: payments}, event: rollout-complete}";
const WIDGETS: &str = "{kind: Widget, group: example.com, version: v1, event: modified}";

/// The CRDs, and the workflow `smoke` in namespace `ci`.
async fn install(env: &Env) {
    let crds: Api<CustomResourceDefinition> = Api::all(env.fake.client());
    for crd in assay_spec::crd::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(env.fake.client(), "ci", &Kind::Workflow.api_resource());
    let obj = serde_json::from_value(json!({
        "apiVersion": "assay.dev/v1alpha1", "kind": "TestWorkflow",
        "metadata": {"name": "smoke", "namespace": "ci"},
        "spec": {"steps": [{"name": "check", "run": "true"}]},
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
}

/// Creates `TestTrigger` `ci/name` running `smoke` on `kubernetes` (flow YAML).
async fn create_trigger(env: &Env, name: &str, kubernetes: &str) {
    let on: Value = serde_norway::from_str(kubernetes).unwrap();
    let api: Api<DynamicObject> =
        Api::namespaced_with(env.fake.client(), "ci", &Kind::Trigger.api_resource());
    let obj = serde_json::from_value(json!({
        "apiVersion": "assay.dev/v1alpha1", "kind": "TestTrigger",
        "metadata": {"name": name, "namespace": "ci"},
        "spec": {"on": {"kubernetes": on}, "run": {"workflow": "smoke"}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
}

/// A trigger-watcher reading its catalog from namespace `ci` of the fake.
fn watcher_from_cluster(env: &Env, fault_stop_after_claim: bool) -> Watcher {
    let options = Options {
        workflows: PathBuf::from("/nonexistent/assay"),
        catalog: CatalogSource::Kubernetes(KubeSource {
            scope: Some(Scope::Namespace("ci".into())),
            kubeconfig: Some(env.fake.kubeconfig_file().unwrap()),
        }),
        cluster: ClusterOptions {
            fault_stop_after_claim,
            ..Default::default()
        },
        ..Default::default()
    };
    Watcher::start_with(&env.nats.url(), &env.fake, options)
}

/// The `Watching` condition of trigger `ci/name`: (status, reason, message).
fn watching(env: &Env, name: &str) -> Option<(String, String, String)> {
    let obj = env.fake.get("testtriggers.assay.dev", "ci", name)?;
    let c = obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Watching")?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

/// The Warning Events about trigger `ci/name`: (reason, message).
fn events_about(env: &Env, name: &str) -> Vec<(String, String)> {
    env.fake
        .list("events", Some("ci"))
        .into_iter()
        .filter(|e| {
            e["involvedObject"]["kind"] == "TestTrigger" && e["involvedObject"]["name"] == name
        })
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn wait_watching(env: &Env, name: &str, status: &str, reason: &str) -> String {
    let what = format!("{name} to say Watching={status} ({reason})");
    let mut message = String::new();
    wait_until(&what, async || match watching(env, name) {
        Some((s, r, m)) if s == status && r == reason => {
            message = m;
            true
        }
        _ => false,
    })
    .await;
    message
}

async fn kubectl(env: &Env, args: &[&str]) -> String {
    let kubeconfig = env.fake.kubeconfig_file().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--cache-dir={}", cache.path().display()))
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish"))
        .expect("kubectl runs (kubectl 1.32 must be on PATH)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kind_is_a_condition_and_one_event_of_its_trigger_and_the_other_fires() {
    let env = Env::start("").await;
    install(&env).await;
    create_trigger(&env, "widgets", WIDGETS).await;
    create_trigger(&env, "rollouts", ROLLOUT).await;
    let w = watcher_from_cluster(&env, false);

    let message = wait_watching(&env, "widgets", "False", "UnknownKind").await;
    assert!(
        message.contains("unknown kind `Widget`") && message.contains("example.com/v1"),
        "{message}"
    );
    wait_watching(&env, "rollouts", "True", "Watching").await;
    wait_until("the Warning Event about widgets", async || {
        !events_about(&env, "widgets").is_empty()
    })
    .await;

    // The good trigger fires exactly once on a rollout.
    env.create_deployment("shop/app:1");
    env.roll_out("1");
    wait_until("the rollout fired", async || w.status.fired() == 1).await;
    let events = env.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].trigger, "rollouts");

    // What kubectl shows.
    let yaml = kubectl(
        &env,
        &["get", "testtrigger", "widgets", "-n", "ci", "-o", "yaml"],
    )
    .await;
    assert!(
        yaml.contains("type: Watching")
            && yaml.contains("reason: UnknownKind")
            && yaml.contains("status: \"False\"")
            && yaml.contains("unknown kind `Widget`"),
        "{yaml}"
    );

    // Installing the CRD heals it; the discovery retries in between recorded one Event.
    let crds: Api<CustomResourceDefinition> = Api::all(env.fake.client());
    let crd = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    wait_watching(&env, "widgets", "True", "Watching").await;
    assert_eq!(
        events_about(&env, "widgets")
            .iter()
            .map(|(r, _)| r.as_str())
            .collect::<Vec<_>>(),
        ["UnknownKind"]
    );
    assert!(events_about(&env, "rollouts").is_empty());
    // `Valid` is the scheduler's: the trigger-watcher wrote only `Watching`.
    let obj = env
        .fake
        .get("testtriggers.assay.dev", "ci", "widgets")
        .unwrap();
    let types: Vec<&str> = obj["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(types, ["Watching"]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_list_names_the_verb_and_resource_on_the_trigger_until_granted() {
    let env = Env::start("").await;
    install(&env).await;
    create_trigger(&env, "rollouts", ROLLOUT).await;
    env.fake.forbid("list", "apps", "deployments");
    let w = watcher_from_cluster(&env, false);
    let message = wait_watching(&env, "rollouts", "False", "Forbidden").await;
    assert!(
        message.contains("may not list deployments.apps in namespace shop"),
        "{message}"
    );
    wait_until("the Warning Event", async || {
        events_about(&env, "rollouts").len() == 1
    })
    .await;
    env.fake.allow("list", "apps", "deployments");
    wait_watching(&env, "rollouts", "True", "Watching").await;
    assert_eq!(events_about(&env, "rollouts").len(), 1);
    assert_eq!(events_about(&env, "rollouts")[0].0, "Forbidden");
    w.stop().await;
}

fn revisions(events: &[assay_proto::TriggerEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| label(e, "revision").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_completed_while_the_watcher_was_down_fires_once_after_the_restart() {
    let env = Env::start("").await;
    install(&env).await;
    create_trigger(&env, "rollouts", ROLLOUT).await;
    let first = watcher_from_cluster(&env, false);
    wait_until("the deployments are listed", async || {
        first.status.lists("Deployment") >= 1
    })
    .await;
    env.create_deployment("shop/app:1");
    env.roll_out("1");
    wait_until("the rollout fired", async || first.status.fired() == 1).await;
    first.stop().await;

    // Down: revision 2 rolls out.
    env.update("deployments.apps", "shop", "payments", |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("shop/app:2");
    });
    env.roll_out("2");

    let second = watcher_from_cluster(&env, false);
    wait_until("the missed rollout fired", async || {
        second.status.fired() == 1
    })
    .await;
    assert_eq!(revisions(&env.events().await), ["1", "2"]);
    second.stop().await;

    // Another restart: the same completed revision is caught up again, and its key says
    // it fired already.
    let third = watcher_from_cluster(&env, false);
    wait_until("the catch-up was refused by its key", async || {
        third.status.duplicates() == 1
    })
    .await;
    assert_eq!(third.status.fired(), 0);
    assert_eq!(revisions(&env.events().await), ["1", "2"]);
    third.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_complete_before_its_trigger_existed_does_not_fire_at_start() {
    let env = Env::start("").await;
    install(&env).await;
    env.create_deployment("shop/app:1");
    env.roll_out("1");
    // It completed an hour ago.
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    env.update("deployments.apps", "shop", "payments", |d| {
        d["status"]["conditions"][0]["lastUpdateTime"] = json!(hour_ago);
    });
    create_trigger(&env, "rollouts", ROLLOUT).await;
    let w = watcher_from_cluster(&env, false);
    wait_watching(&env, "rollouts", "True", "Watching").await;
    // The next rollout is the sentinel: had the old one fired, it would come first.
    env.update("deployments.apps", "shop", "payments", |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("shop/app:2");
    });
    env.roll_out("2");
    wait_until("the new rollout fired", async || w.status.fired() == 1).await;
    assert_eq!(revisions(&env.events().await), ["2"]);
    assert_eq!(w.status.duplicates(), 0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_event_never_went_out_is_published_by_the_next_start() {
    let env = Env::start(&trigger("rollouts", ROLLOUT)).await;
    let crashing = Watcher::start_with(
        &env.nats.url(),
        &env.fake,
        Options {
            workflows: env.dir.path().to_path_buf(),
            cluster: ClusterOptions {
                fault_stop_after_claim: true,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    wait_until("the deployments are listed", async || {
        crashing.status.lists("Deployment") >= 1
    })
    .await;
    env.create_deployment("shop/app:1");
    env.roll_out("1");
    let fired = env.bus.kv(assay_bus::streams::KV_KUBE_FIRED).await.unwrap();
    wait_until("the key is claimed", async || {
        let keys = fired.keys().await.unwrap();
        futures::StreamExt::count(keys).await == 1
    })
    .await;
    crashing.stop().await;
    assert!(
        env.events().await.is_empty(),
        "the fault stops before the publish"
    );

    let next = env.watcher();
    wait_until("the claimed event was recovered", async || {
        next.status.recovered() == 1
    })
    .await;
    let events = env.events().await;
    assert_eq!(revisions(&events), ["1"]);
    assert_eq!(events[0].trigger, "rollouts");
    // Published again (a replica recovering it at the same time): the stream drops it by
    // its Nats-Msg-Id, and after the window the scheduler by its idempotency key.
    let duplicate = env
        .bus
        .publish("assay.v1.events.kubernetes".into(), &events[0])
        .await
        .unwrap();
    assert!(duplicate, "the stream took a second copy of the event");
    next.stop().await;

    // Marked published: a later start publishes nothing.
    let later = env.watcher();
    wait_until("the later start looked", async || {
        later.status.recovery_finished()
    })
    .await;
    assert_eq!(later.status.recovered(), 0);
    assert_eq!(env.events().await.len(), 1);
    later.stop().await;
}
