//! The scheduler's side of the public contract, against a real nats-server: what a client
//! that publishes trigger events and run requests sees (provenance on executions, one
//! EventRecord per event, refusals in the dead-letter stream with the reason).

use std::time::{Duration, Instant};

use assay_bus::{Bus, DEAD_REASON, NatsOptions, streams, subjects};
use assay_proto::{
    EventRecord, Execution, ExecutionStatus, ExecutionUpdate, Header, RunRequest, ShardJob,
    TriggerEvent,
};
use assay_testkit::NatsServer;
use async_nats::jetstream::consumer::pull;
use futures::StreamExt;
use prost::Message;
use tokio_util::sync::CancellationToken;

const DEFS: &str = r#"
apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: demo}
spec:
  steps: [{name: hello, run: echo hello}]
  parallel: {count: 2}
---
apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: other}
spec:
  steps: [{name: hello, run: echo other}]
---
apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: checkout}
spec:
  env: {BRANCH: "{{ event.labels.branch }}"}
  steps: [{name: checkout, run: "git checkout {{ event.labels.sha }}"}]
---
apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: line}
spec:
  steps: [{name: hello, run: "echo {{ event.labels.sha }}"}]
  concurrency: {policy: queue}
---
apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: on-push}
spec:
  on: {event: {source: ci, type: push}}
  run: {workflow: checkout}
---
apiVersion: assay.dev/v1alpha1
kind: TestTrigger
metadata: {name: on-main}
spec:
  on: {webhook: {branches: ["main*"]}}
  run: {workflow: demo}
"#;

struct Stack {
    bus: Bus,
    shutdown: CancellationToken,
    scheduler: tokio::task::JoinHandle<assay_scheduler::Result<()>>,
    _dir: tempfile::TempDir,
    _server: NatsServer,
}

impl Stack {
    async fn start() -> Stack {
        let server = NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("defs.yaml"), DEFS).unwrap();
        let nats = NatsOptions {
            url: server.url(),
            ..NatsOptions::default()
        };
        let shutdown = CancellationToken::new();
        let bus = Bus::connect(&nats, &shutdown).await.unwrap();
        bus.ensure_topology().await.unwrap();
        let scheduler = tokio::spawn(assay_scheduler::run(
            assay_scheduler::Options {
                nats,
                workflows: dir.path().to_path_buf(),
                concurrency: 4,
                ..Default::default()
            },
            shutdown.clone(),
        ));
        Stack {
            bus,
            shutdown,
            scheduler,
            _dir: dir,
            _server: server,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.scheduler.await;
    }

    /// Publishes without `Nats-Msg-Id`, as a client that sets no header would (and as a
    /// re-publication after the stream's duplicate window looks).
    async fn publish<M: Message>(&self, subject: String, msg: &M) {
        self.bus
            .publish_raw(subject, Default::default(), msg.encode_to_vec().into())
            .await
            .unwrap();
    }

    async fn wait_for<T>(&self, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            assert!(Instant::now() < until, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn plan(&self, id: &str) -> Execution {
        self.wait_for(&format!("the plan record of {id}"), async || {
            self.bus
                .last_message::<Execution>(streams::STATUS, &subjects::execution_plan(id))
                .await
                .unwrap()
        })
        .await
    }

    async fn record(&self, source: &str) -> EventRecord {
        let subject = subjects::decision(source);
        self.wait_for(&format!("an EventRecord on {subject}"), async || {
            let raw = self.last_raw(streams::DECISIONS, &subject).await?;
            Some(EventRecord::decode(raw.payload).unwrap())
        })
        .await
    }

    /// The reason of the last dead letter of the events stream.
    async fn dead_reason(&self) -> String {
        let subject = subjects::dead(streams::EVENTS);
        self.wait_for("a dead letter", async || {
            let raw = self.last_raw(streams::DEAD, &subject).await?;
            Some(raw.headers.get(DEAD_REASON)?.to_string())
        })
        .await
    }

    async fn last_raw(
        &self,
        stream: &str,
        subject: &str,
    ) -> Option<async_nats::jetstream::message::StreamMessage> {
        let stream = self.bus.jetstream().get_stream(stream).await.unwrap();
        stream.get_last_raw_message_by_subject(subject).await.ok()
    }

    /// Messages stored on subjects matching `filter`.
    async fn count(&self, stream: &str, filter: &str) -> usize {
        let stream = self.bus.jetstream().get_stream(stream).await.unwrap();
        let mut subjects = stream.info_with_subjects(filter).await.unwrap();
        let mut n = 0;
        while let Some(entry) = subjects.next().await {
            n += entry.unwrap().1;
        }
        n
    }

    /// Waits until the scheduler's consumer has handled everything published so far.
    async fn idle(&self, durable: &str) {
        self.wait_for(&format!("consumer {durable} to be idle"), async || {
            let stream = self
                .bus
                .jetstream()
                .get_stream(streams::EVENTS)
                .await
                .ok()?;
            let mut consumer = stream.get_consumer::<pull::Config>(durable).await.ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        })
        .await
    }
}

fn header(key: &str) -> Option<Header> {
    Some(assay_bus::header("client", key, None))
}

fn request(key: &str, workflow: &str, execution_id: &str) -> RunRequest {
    RunRequest {
        header: header(key),
        workflow: workflow.into(),
        requested_by: "test".into(),
        execution_id: execution_id.into(),
        labels: [("sha".to_string(), "abc123".to_string())].into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_without_a_usable_header_are_dead_lettered_with_the_reason() {
    let stack = Stack::start().await;
    let mut req = request("", "demo", "");
    req.header = None;
    stack
        .publish(subjects::RUN_REQUESTED.to_string(), &req)
        .await;
    assert_eq!(
        stack.dead_reason().await,
        "RunRequest on assay.v1.runs.requested has no header; set header.idempotency_key (what deduplicates it) and header.event_id (a ULID)"
    );
    // A second one is refused too (nothing is deduplicated on an empty key).
    stack
        .publish(subjects::RUN_REQUESTED.to_string(), &req)
        .await;
    stack.idle("scheduler-runs").await;
    assert_eq!(
        stack
            .count(streams::DEAD, &subjects::dead(streams::EVENTS))
            .await,
        2
    );

    let ev = TriggerEvent {
        header: Some(Header::default()),
        source: "ci".into(),
        r#type: "push".into(),
        ..Default::default()
    };
    stack.publish(subjects::event("ci"), &ev).await;
    stack.idle("scheduler-events").await;
    assert!(stack.dead_reason().await.starts_with(
        "TriggerEvent on assay.v1.events.ci has neither header.event_id nor header.idempotency_key"
    ));
    assert_eq!(stack.count(streams::STATUS, subjects::PLANS_ALL).await, 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_ids_must_be_ulids_and_are_kept_in_upper_case() {
    let stack = Stack::start().await;
    stack
        .publish(
            subjects::RUN_REQUESTED.to_string(),
            &request("bad-id", "demo", "abc"),
        )
        .await;
    assert!(
        stack
            .dead_reason()
            .await
            .starts_with("execution_id \"abc\" is not a ULID (26 characters of Crockford base32)")
    );
    let record = stack.record("run").await;
    assert!(
        record.reason.starts_with("execution_id \"abc\""),
        "{record:?}"
    );
    assert_eq!(record.header.unwrap().idempotency_key, "bad-id/decision");

    let id = ulid::Ulid::new().to_string();
    stack
        .publish(
            subjects::RUN_REQUESTED.to_string(),
            &request("lower", "demo", &id.to_lowercase()),
        )
        .await;
    let plan = stack.plan(&id).await;
    assert_eq!(plan.id, id);
    assert_eq!(plan.workflow, "demo");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_execution_id_is_refused_and_the_execution_left_alone() {
    let stack = Stack::start().await;
    let id = ulid::Ulid::new().to_string();
    let first = request("first", "demo", &id);
    stack
        .publish(subjects::RUN_REQUESTED.to_string(), &first)
        .await;
    let plan = stack.plan(&id).await;
    assert_eq!((plan.workflow.as_str(), plan.shard_count), ("demo", 2));
    // The provenance of a run request.
    let p = plan.provenance.clone().unwrap();
    assert_eq!((p.source.as_str(), p.r#type.as_str()), ("run", "request"));
    assert_eq!(
        (p.requested_by.as_str(), p.idempotency_key.as_str()),
        ("test", "first")
    );
    assert_eq!(p.labels["sha"], "abc123");
    let shard0 = subjects::shard_job(&id, 0);
    let shards = format!("{}.>", shard0.strip_suffix(".0").unwrap());
    assert_eq!(stack.count(streams::SHARDS, &shards).await, 2);
    let job: ShardJob = stack
        .bus
        .last_message(streams::SHARDS, &subjects::shard_job(&id, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.provenance, plan.provenance);

    // The same request again (published anew, past any duplicate window): nothing new.
    stack
        .publish(subjects::RUN_REQUESTED.to_string(), &first)
        .await;
    // Another request naming the same id: refused, naming the execution's workflow.
    stack
        .publish(
            subjects::RUN_REQUESTED.to_string(),
            &request("second", "other", &id),
        )
        .await;
    let reason = stack.dead_reason().await;
    assert!(
        reason.starts_with(&format!(
            "execution_id \"{id}\" is already used by an execution of workflow \"demo\""
        )),
        "{reason}"
    );
    stack.idle("scheduler-runs").await;
    assert_eq!(
        stack
            .count(streams::STATUS, &subjects::execution_plan(&id))
            .await,
        1,
        "one plan record"
    );
    assert_eq!(
        stack.count(streams::SHARDS, &shards).await,
        2,
        "no new jobs"
    );
    assert_eq!(
        stack
            .count(streams::DEAD, &subjects::dead(streams::EVENTS))
            .await,
        1,
        "only the second request was refused"
    );
    assert_eq!(
        stack
            .count(streams::DECISIONS, &subjects::decision("run"))
            .await,
        2,
        "one record per request: the first (once) and the refusal"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_workflow_is_recorded_errored() {
    let stack = Stack::start().await;
    let id = ulid::Ulid::new().to_string();
    stack
        .publish(
            subjects::RUN_REQUESTED.to_string(),
            &request("nameless", "", &id),
        )
        .await;
    let plan = stack.plan(&id).await;
    assert_eq!(plan.status(), ExecutionStatus::Errored);
    assert_eq!(plan.reason, "run request names no workflow");
    assert_eq!(plan.workflow, "");
    assert!(plan.provenance.is_some());
    let record = stack.record("run").await;
    assert_eq!(record.decisions.len(), 1);
    assert_eq!(record.decisions[0].execution_id, id);
    assert_eq!(record.decisions[0].reason, "run request names no workflow");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_gets_one_record_saying_what_it_started_or_why_not() {
    let stack = Stack::start().await;
    // Matches nothing: each trigger says which condition failed.
    let ev = TriggerEvent {
        header: header("ev-1"),
        source: "ci".into(),
        r#type: "deploy".into(),
        ..Default::default()
    };
    stack.publish(subjects::event("ci"), &ev).await;
    let record = stack.record("ci").await;
    let reasons: Vec<(String, bool, String)> = record
        .decisions
        .iter()
        .map(|d| (d.trigger.clone(), d.matched, d.reason.clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                "on-main".to_string(),
                false,
                "not a webhook event (no \"provider\" label; source \"ci\")".to_string()
            ),
            (
                "on-push".to_string(),
                false,
                "type \"deploy\" is not \"push\"".to_string()
            ),
        ]
    );
    assert_eq!(record.header.unwrap().idempotency_key, "ev-1/decision");
    let p = record.event.unwrap();
    assert_eq!(
        (p.source.as_str(), p.idempotency_key.as_str()),
        ("ci", "ev-1")
    );

    // Matches on-push, whose workflow needs a label the event lacks: errored, with where.
    let ev = TriggerEvent {
        header: header("ev-2"),
        source: "ci".into(),
        r#type: "push".into(),
        labels: [
            ("branch".to_string(), "main".to_string()),
            ("repository".to_string(), "acme/shop".to_string()),
        ]
        .into(),
        ..Default::default()
    };
    stack.publish(subjects::event("ci"), &ev).await;
    let record = stack
        .wait_for("the second record", async || {
            let r = stack.record("ci").await;
            (r.header.as_ref()?.idempotency_key == "ev-2/decision").then_some(r)
        })
        .await;
    let d = record
        .decisions
        .iter()
        .find(|d| d.matched)
        .expect("on-push matched");
    assert_eq!(
        (d.trigger.as_str(), d.workflow.as_str()),
        ("on-push", "checkout")
    );
    assert_eq!(
        d.reason,
        "template {{ event.labels.sha }} in steps[0].run: the event has no label \"sha\" (labels: branch, repository)"
    );
    let plan = stack.plan(&d.execution_id).await;
    assert_eq!(plan.status(), ExecutionStatus::Errored);
    assert_eq!(plan.reason, d.reason);
    let p = plan.provenance.unwrap();
    assert_eq!(
        (p.trigger.as_str(), p.source.as_str(), p.r#type.as_str()),
        ("on-push", "ci", "push")
    );
    assert_eq!(p.idempotency_key, "ev-2", "the raw key, not the cause key");
    assert_eq!(plan.cause, "ev-2/on-push/checkout");

    // With the label: planned, the label expanded, the provenance on the job.
    let mut ev = ev;
    ev.header = header("ev-3");
    ev.labels.insert("sha".into(), "abc123".into());
    stack.publish(subjects::event("ci"), &ev).await;
    let record = stack
        .wait_for("the third record", async || {
            let r = stack.record("ci").await;
            (r.header.as_ref()?.idempotency_key == "ev-3/decision").then_some(r)
        })
        .await;
    let d = record.decisions.iter().find(|d| d.matched).unwrap();
    assert_eq!(d.reason, "");
    let job: ShardJob = stack
        .bus
        .last_message(streams::SHARDS, &subjects::shard_job(&d.execution_id, 0))
        .await
        .unwrap()
        .expect("the shard job");
    assert_eq!(job.steps[0].run, "git checkout abc123");
    assert_eq!(job.env["BRANCH"], "main");
    assert_eq!(job.provenance.unwrap().labels["sha"], "abc123");

    // The same event again: acknowledged, no second record, no second execution.
    stack.publish(subjects::event("ci"), &ev).await;
    stack.idle("scheduler-events").await;
    assert_eq!(
        stack
            .count(streams::DECISIONS, &subjects::decision("ci"))
            .await,
        3
    );
    assert_eq!(stack.count(streams::STATUS, subjects::PLANS_ALL).await, 2);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_execution_started_later_keeps_its_provenance() {
    let stack = Stack::start().await;
    let (first, second) = (ulid::Ulid::new().to_string(), ulid::Ulid::new().to_string());
    stack
        .publish(
            subjects::RUN_REQUESTED.to_string(),
            &request("q-1", "line", &first),
        )
        .await;
    stack.plan(&first).await;
    let mut req = request("q-2", "line", &second);
    req.labels.insert("sha".into(), "def456".into());
    stack
        .publish(subjects::RUN_REQUESTED.to_string(), &req)
        .await;
    let queued = stack.plan(&second).await;
    assert_eq!(queued.status(), ExecutionStatus::Queued);
    stack.idle("scheduler-runs").await;
    assert!(
        stack
            .bus
            .last_message::<ShardJob>(streams::SHARDS, &subjects::shard_job(&second, 0))
            .await
            .unwrap()
            .is_none(),
        "waits for the slot"
    );
    // The first ends (as the aggregator would say): the second starts from its stored plan.
    let done = ExecutionUpdate {
        header: header(&format!("{first}/final")),
        execution_id: first.clone(),
        workflow: "line".into(),
        status: ExecutionStatus::Passed as i32,
        ..Default::default()
    };
    stack
        .bus
        .publish(subjects::execution_update("line", &first), &done)
        .await
        .unwrap();
    let job: ShardJob = stack
        .wait_for("the queued execution's shard job", async || {
            stack
                .bus
                .last_message(streams::SHARDS, &subjects::shard_job(&second, 0))
                .await
                .unwrap()
        })
        .await;
    let p = job
        .provenance
        .expect("provenance on a job started from the queue");
    assert_eq!(p.idempotency_key, "q-2");
    assert_eq!(p.labels["sha"], "def456");
    assert_eq!(job.steps[0].run, "echo def456");
    stack.stop().await;
}

/// A scheduler that crashed after claiming a request (and maybe after publishing some of
/// its shard jobs) leaves the claim; the redelivery plans the execution again, dated when
/// the cause was first claimed, not when it was planned again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replanned_execution_keeps_the_time_of_its_first_claim() {
    let stack = Stack::start().await;
    let id = ulid::Ulid::new().to_string();
    let first_claim = assay_bus::now_ms() - 60_000;
    let dedup = stack.bus.kv(streams::KV_DEDUP).await.unwrap();
    dedup
        .create(
            assay_bus::kv_key("crashed/demo"),
            format!("pending:{id}:{first_claim}").into(),
        )
        .await
        .unwrap();
    stack
        .publish(
            subjects::RUN_REQUESTED.to_string(),
            &request("crashed", "demo", &id),
        )
        .await;
    let plan = stack.plan(&id).await;
    assert_eq!(plan.status(), ExecutionStatus::Queued, "{plan:?}");
    assert_eq!(plan.created_at_ms, first_claim);
    // The default maximum execution time counts from then too.
    assert_eq!(plan.timeout_ms, 86_400_000);
    let job: ShardJob = stack
        .bus
        .last_message(streams::SHARDS, &subjects::shard_job(&id, 0))
        .await
        .unwrap()
        .expect("the shard job");
    assert_eq!(job.deadline_ms, first_claim + 86_400_000);
    stack.stop().await;
}
