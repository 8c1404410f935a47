//! Kubernetes triggers with the scheduler: each fired event becomes exactly one execution,
//! and `supersede: true` cancels the execution of the older revision.

mod cluster_support;

use assay_bus::{kv_key, streams};
use assay_proto::Execution;
use cluster_support::*;
use prost::Message;

async fn planned(env: &Env) -> Vec<Execution> {
    let stream = env
        .bus
        .jetstream()
        .get_stream(streams::STATUS)
        .await
        .unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await
            && m.subject.starts_with("assay.v1.plans.")
        {
            out.push(Execution::decode(m.payload.as_ref()).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn a_new_revision_supersedes_the_execution_of_the_older_one() {
    let env = Env::start(&trigger(
        "e2e-after-rollout",
        "{kind: Deployment, namespace: shop, selector: {app: payments}, event: rollout-complete, supersede: true}",
    ))
    .await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let scheduler = assay_scheduler::Options {
        nats: nats_options(&env.nats.url()),
        workflows: env.dir.path().to_path_buf(),
        ..Default::default()
    };
    let token = shutdown.clone();
    let scheduled = tokio::spawn(async move { assay_scheduler::run(scheduler, token).await });
    let w = env.watcher();
    wait_until("the deployments are listed", async || {
        w.status.lists("Deployment") >= 1
    })
    .await;
    env.create_deployment("shop/app:1");
    env.roll_out("1");
    // Planned by the scheduler, and known to the watcher from the plan record.
    wait_until("the first execution is known to the watcher", async || {
        w.status.tracked() == 1
    })
    .await;
    env.update("deployments.apps", "shop", "payments", |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = serde_json::json!("shop/app:2");
    });
    env.roll_out("2");
    wait_until("the second execution is planned", async || {
        planned(&env).await.len() == 2
    })
    .await;
    assert_eq!(w.status.fired(), 2);
    assert_eq!(w.status.superseded(), 1);
    let plans = planned(&env).await;
    let revision = |e: &Execution| e.provenance.as_ref().unwrap().labels["revision"].clone();
    assert_eq!(
        plans.iter().map(revision).collect::<Vec<_>>(),
        ["1", "2"],
        "one execution per fired event"
    );
    assert!(plans.iter().all(|e| e.trigger == "e2e-after-rollout"));
    let cancelled = env.bus.kv(streams::KV_CANCELLED).await.unwrap();
    let reason = cancelled
        .get(kv_key(&plans[0].id))
        .await
        .unwrap()
        .expect("the older execution is cancelled");
    let reason = String::from_utf8_lossy(&reason).to_string();
    assert!(
        reason.starts_with(
            "superseded by revision 2 of Deployment shop/payments (trigger e2e-after-rollout"
        ),
        "{reason}"
    );
    assert!(
        cancelled.get(kv_key(&plans[1].id)).await.unwrap().is_none(),
        "the new one runs"
    );
    w.stop().await;
    shutdown.cancel();
    scheduled.await.unwrap().unwrap();
}
