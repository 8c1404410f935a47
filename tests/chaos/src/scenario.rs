//! The targeted scenarios ([`Scenario`]): each round starts one execution of its own
//! workflow with a run request on the bus, waits for the moment its fault aims at (batches
//! held, shards running, the first shard job out), injects it and records what the checks
//! of [`crate::check::targeted`] need. They run on the quiet stack after the random fault
//! phase, one round at a time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assay_bus::{Bus, subjects};
use assay_proto::{Execution, LogChunk, LogStream, RunRequest, ShardJob, ShardState, ShardStatus};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::check::targeted::{HeldRound, OrphanRound, ReplanRound};
use crate::load::{Acked, Ledger, Via};
use crate::plan::{Round, Scenario, Target};
use crate::stack::Stack;

/// The workflow each scenario runs (defined next to the load's in the run directory).
pub fn workflow(s: Scenario) -> &'static str {
    match s {
        Scenario::HeldBatches => "chaos-claims",
        Scenario::LauncherReplaced => "chaos-orphans",
        Scenario::SchedulerBeforePlan => "chaos-replan",
    }
}

/// Tests of `chaos-claims`, each logged by the script that runs it.
pub const CLAIMS_SUITE: usize = 16;

/// The lease of `chaos-claims`' batches, which is also the queue consumer's ack wait: about
/// as long as the scenario's nats-server outages (down 0-1.5 s plus its start), so the
/// restarted server hands held batches out again before their holders reconnect (with a
/// 4 s lease it never did: the holders' renewals came first). A holder that cannot renew for
/// longer than its lease is indistinguishable from a dead one, by design.
pub const CLAIMS_LEASE: Duration = Duration::from_secs(2);

/// The test script of `chaos-claims`: every test it runs goes to `runs.log`, and every batch
/// takes 4 s, twice its lease, so the holder must renew its claim.
pub const CLAIMS_SH: &str = r#"#!/bin/sh
# usage: claims.sh REPORT ID... — logs "execution shard attempt id batch" per test to
# runs.log (batch: this invocation's pid), sleeps 4 s, then passes them all.
report=$1; shift
for id in "$@"; do
  echo "$ASSAY_EXECUTION_ID $ASSAY_SHARD_INDEX $ASSAY_ATTEMPT $id $$" >> runs.log
done
sleep 4
{
  echo '<?xml version="1.0" encoding="UTF-8"?>'
  echo "<testsuite name=\"claims\" tests=\"$#\">"
  for id in "$@"; do
    echo "<testcase classname=\"claims\" name=\"$id\" time=\"0.001\"/>"
  done
  echo '</testsuite>'
} > "$report.part" && mv "$report.part" "$report"
"#;

/// What the rounds recorded, for the checks.
#[derive(Debug, Default)]
pub struct Recorded {
    pub rounds: BTreeMap<Scenario, u64>,
    pub held: Vec<HeldRound>,
    pub orphans: Vec<OrphanRound>,
    pub replans: Vec<ReplanRound>,
}

/// Shard jobs, statuses and plan records seen on the bus (core subscriptions, so a shard job
/// published twice is seen twice), with the time each arrived (unix ms).
#[derive(Debug, Default)]
struct Seen {
    jobs: Vec<(i64, String, u32, i64)>,
    statuses: Vec<(i64, String, u32, u32, ShardState)>,
    plans: Vec<(i64, String, i64)>,
    /// Stop the scheduler as soon as a shard job of this execution is seen.
    trap: Option<String>,
    /// (when, pid) the trap stopped the scheduler.
    sprung: Option<(i64, u32)>,
}

#[derive(Clone)]
struct Observer {
    seen: Arc<Mutex<Seen>>,
}

impl Observer {
    async fn start(bus: &Bus, stack: Stack, stop: CancellationToken) -> anyhow::Result<Observer> {
        let me = Observer {
            seen: Arc::default(),
        };
        let client = bus.client();
        let mut jobs = client.subscribe(subjects::SHARDS_ALL).await?;
        let mut statuses = client.subscribe(subjects::STATUS_ALL).await?;
        let mut plans = client.subscribe(subjects::PLANS_ALL).await?;
        let seen = me.seen.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(m) = jobs.next() => {
                        let Ok(job) = prost::Message::decode(m.payload.as_ref()) else { continue };
                        let job: ShardJob = job;
                        let now = assay_bus::now_ms();
                        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                        if s.trap.as_deref() == Some(job.execution_id.as_str()) {
                            s.trap = None;
                            if let Some(pid) = stack.pause(Target::Scheduler) {
                                s.sprung = Some((now, pid));
                            }
                        }
                        s.jobs.push((now, job.execution_id, job.shard_index, job.deadline_ms));
                    }
                    Some(m) = statuses.next() => {
                        let Ok(st) = prost::Message::decode(m.payload.as_ref()) else { continue };
                        let st: ShardStatus = st;
                        let state = st.state();
                        seen.lock().unwrap_or_else(|p| p.into_inner()).statuses.push((
                            assay_bus::now_ms(), st.execution_id, st.shard_index, st.attempt, state,
                        ));
                    }
                    Some(m) = plans.next() => {
                        let Ok(e) = prost::Message::decode(m.payload.as_ref()) else { continue };
                        let e: Execution = e;
                        seen.lock().unwrap_or_else(|p| p.into_inner()).plans.push((
                            assay_bus::now_ms(), e.id, e.created_at_ms,
                        ));
                    }
                    _ = stop.cancelled() => return,
                    else => return,
                }
            }
        });
        Ok(me)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Seen) -> T) -> T {
        f(&mut self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The latest status of each shard of `exec`: shard → (attempt, state).
    fn shards(&self, exec: &str) -> BTreeMap<u32, (u32, ShardState)> {
        self.with(|s| {
            let mut out = BTreeMap::new();
            for (_, e, shard, attempt, state) in &s.statuses {
                if e == exec {
                    let cur = out.entry(*shard).or_insert((*attempt, *state));
                    if *attempt >= cur.0 {
                        *cur = (*attempt, *state);
                    }
                }
            }
            out
        })
    }
}

/// Polls `f` every 50 ms until it returns `Some` or `within` passes.
async fn until<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a round needs of the run.
pub struct Env<'a> {
    pub stack: &'a Stack,
    pub bus: &'a Bus,
    pub seed: u64,
    /// How long an execution may take before the round stops waiting for it.
    pub timeout: Duration,
}

/// Runs the rounds in order; records what they saw and puts their run requests in the
/// ledger (invariant 3 holds them too).
pub async fn run(env: &Env<'_>, rounds: &[Round], ledger: &mut Ledger) -> Recorded {
    let mut out = Recorded::default();
    if rounds.is_empty() {
        return out;
    }
    let stop = CancellationToken::new();
    let obs = match Observer::start(env.bus, env.stack.clone(), stop.clone()).await {
        Ok(o) => o,
        Err(e) => {
            crate::say(format!("targeted scenarios not run: cannot subscribe: {e}"));
            return out;
        }
    };
    for (n, round) in rounds.iter().enumerate() {
        crate::say(format!(
            "scenario {} / {}: {} (after {:?}, down {:?})",
            n + 1,
            rounds.len(),
            round.scenario,
            round.after,
            round.hold
        ));
        let key = format!("chaos-{}-scenario-{n}", env.seed);
        // A round counts in the fault table when its fault was injected.
        let injected = match round.scenario {
            Scenario::HeldBatches => match held_batches(env, round, &key, ledger).await {
                Some(r) => {
                    let restarted = r.restarted;
                    out.held.push(r);
                    restarted
                }
                None => false,
            },
            Scenario::LauncherReplaced => {
                match launcher_replaced(env, &obs, round, &key, ledger).await {
                    Some(r) => {
                        out.orphans.push(r);
                        true
                    }
                    None => false,
                }
            }
            Scenario::SchedulerBeforePlan => {
                let r = scheduler_before_plan(env, &obs, round, &key, ledger).await;
                let hit = r.hit;
                out.replans.push(r);
                hit
            }
        };
        if injected {
            *out.rounds.entry(round.scenario).or_default() += 1;
        }
    }
    stop.cancel();
    out
}

/// Publishes a run request naming `execution` until the stream acknowledges it; returns the
/// execution id and when it was first published.
async fn request(
    env: &Env<'_>,
    workflow: &str,
    key: &str,
    execution: String,
    ledger: &mut Ledger,
) -> Option<(String, i64)> {
    let req = RunRequest {
        header: Some(assay_bus::header("chaos", key, None)),
        workflow: workflow.to_string(),
        requested_by: "chaos".into(),
        execution_id: execution.clone(),
        ..Default::default()
    };
    let sent = assay_bus::now_ms();
    for _ in 0..30 {
        let publish = env.bus.publish(subjects::RUN_REQUESTED.to_string(), &req);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), publish).await {
            ledger.acked.push(Acked {
                via: Via::BusRun,
                workflow: workflow.to_string(),
                cause: format!("{key}/{workflow}"),
                execution: Some(execution.clone()),
                acks: 1,
                at_ms: assay_bus::now_ms(),
            });
            return Some((execution, sent));
        }
        ledger.retries += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ledger.unacked += 1;
    crate::say(format!(
        "run request {key} for {workflow} never acknowledged"
    ));
    None
}

fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

/// Waits until the execution is terminal in the store (or the timeout and a minute pass).
async fn ended(env: &Env<'_>, exec: &str) -> bool {
    let db = env.stack.layout.database();
    let within = env.timeout + Duration::from_secs(60);
    let done = until(within, || {
        crate::check::read_db(&db)
            .ok()?
            .executions
            .iter()
            .any(|e| e.id == exec && e.terminal())
            .then_some(())
    })
    .await;
    if done.is_none() {
        crate::say(format!("execution {exec} did not end within {within:?}"));
    }
    done.is_some()
}

fn runs_of(work: &Path, exec: &str) -> usize {
    std::fs::read_to_string(work.join("runs.log"))
        .map(|t| t.lines().filter(|l| l.starts_with(exec)).count())
        .unwrap_or(0)
}

/// nats-server kill -9 and restart while the runners of a queue execution hold batches.
async fn held_batches(
    env: &Env<'_>,
    round: &Round,
    key: &str,
    ledger: &mut Ledger,
) -> Option<HeldRound> {
    let (exec, _) = request(env, workflow(round.scenario), key, new_id(), ledger).await?;
    let work = env.stack.layout.dir.join("work");
    let started = until(Duration::from_secs(60), || {
        (runs_of(&work, &exec) > 0).then_some(())
    })
    .await;
    let mut r = HeldRound {
        execution: exec.clone(),
        ..Default::default()
    };
    if started.is_none() {
        crate::say(format!("execution {exec} ran no batch within 60 s"));
        ended(env, &exec).await;
        return Some(r);
    }
    tokio::time::sleep(round.after).await;
    let url = env.stack.layout.nats_url();
    let snap = crate::procs::snapshot(&url, &work, &mut Default::default());
    r.held_at_kill = snap
        .runners
        .values()
        .filter(|v| v.busy && v.attempt.as_ref().is_some_and(|a| a.0 == exec))
        .count();
    let killed = assay_bus::now_ms();
    let old = env.stack.pid(Target::Nats);
    r.restarted = env.stack.kill9(Target::Nats, round.hold).is_some();
    // The outage: from the kill until the new nats-server listens.
    let back = until(round.hold + Duration::from_secs(30), || {
        env.stack
            .started(Target::Nats)
            .filter(|(pid, _)| Some(*pid) != old)
    })
    .await;
    if back.is_some()
        && crate::stack::wait_port(env.stack.layout.nats_port, Duration::from_secs(15)).await
    {
        r.outage_ms = Some(assay_bus::now_ms() - killed);
    }
    ended(env, &exec).await;
    match system_log(env.bus, &exec).await {
        Ok(log) => {
            let count = |what: &str| log.iter().filter(|l| l.contains(what)).count();
            r.left_to_holder = count(" is held by ");
            r.takeovers = count("taken over after a lease expired");
            r.dropped_done = count("already ran and reported: dropping a redelivered copy");
            r.unclaimed = count("runs its batches unclaimed");
        }
        Err(e) => crate::say(format!("execution {exec}: system log unreadable: {e}")),
    }
    Some(r)
}

/// The runners' system log lines of an execution (`ASSAY_LOGS`), where a runner says what
/// it did with a redelivered batch.
async fn system_log(bus: &Bus, exec: &str) -> anyhow::Result<Vec<String>> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    let stream = bus
        .jetstream()
        .get_stream(assay_bus::streams::LOGS)
        .await
        .map_err(|e| anyhow::anyhow!("logs stream: {e}"))?;
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            filter_subject: subjects::logs_of(exec),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("logs consumer: {e}"))?;
    let mut out = Vec::new();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("fetch logs: {e}"))?;
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("logs message: {e}"))?;
            got += 1;
            let chunk: LogChunk = prost::Message::decode(m.payload.as_ref())?;
            if chunk.stream() == LogStream::System {
                out.extend(
                    String::from_utf8_lossy(&chunk.data)
                        .lines()
                        .map(str::to_string),
                );
            }
        }
        if got == 0 {
            return Ok(out);
        }
    }
}

/// kill -9 of the launcher while every shard of an execution runs; measures when the
/// orphaned shards run again.
async fn launcher_replaced(
    env: &Env<'_>,
    obs: &Observer,
    round: &Round,
    key: &str,
    ledger: &mut Ledger,
) -> Option<OrphanRound> {
    let (exec, _) = request(env, workflow(round.scenario), key, new_id(), ledger).await?;
    let running = until(Duration::from_secs(60), || {
        let shards = obs.shards(&exec);
        (shards.len() == ORPHAN_SHARDS as usize
            && shards.values().all(|(_, s)| *s == ShardState::Running))
        .then_some(())
    })
    .await;
    if running.is_none() {
        crate::say(format!(
            "execution {exec}: its shards were not all running within 60 s"
        ));
        ended(env, &exec).await;
        return None;
    }
    tokio::time::sleep(round.after).await;
    let orphaned: Vec<(u32, u32)> = obs
        .shards(&exec)
        .into_iter()
        .filter(|(_, (_, s))| *s == ShardState::Running)
        .map(|(shard, (attempt, _))| (shard, attempt))
        .collect();
    let old = env.stack.pid(Target::Launcher);
    let killed_ms = assay_bus::now_ms();
    env.stack.kill9(Target::Launcher, round.hold)?;
    let replacement_ms = until(round.hold + Duration::from_secs(30), || {
        env.stack
            .started(Target::Launcher)
            .filter(|(pid, _)| Some(*pid) != old)
            .map(|(_, at)| at)
    })
    .await;
    let again = |shard: u32, attempt: u32| {
        obs.with(|s| {
            s.statuses
                .iter()
                .find(|(at, e, sh, a, st)| {
                    *e == exec
                        && *sh == shard
                        && *a > attempt
                        && *st == ShardState::Running
                        && *at >= killed_ms
                })
                .map(|x| x.0)
        })
    };
    // Wait for each orphan to run again (up to the ack wait and a margin: past it the
    // measurement is moot).
    let _ = until(round.hold + Duration::from_secs(45), || {
        orphaned
            .iter()
            .all(|(s, a)| again(*s, *a).is_some())
            .then_some(())
    })
    .await;
    let orphans = orphaned
        .iter()
        .map(|(s, a)| (*s, *a, again(*s, *a)))
        .collect();
    ended(env, &exec).await;
    Some(OrphanRound {
        execution: exec,
        killed_ms,
        replacement_ms,
        orphans,
    })
}

/// Shards of `chaos-orphans`.
pub const ORPHAN_SHARDS: u32 = 4;

/// Tries of one scheduler-before-plan round: a try misses when the plan record was out
/// before the scheduler stopped.
const REPLAN_TRIES: usize = 4;

/// The scheduler stopped as its first shard job of an execution goes out and killed before
/// the plan record; reads the plan record the restarted scheduler publishes.
async fn scheduler_before_plan(
    env: &Env<'_>,
    obs: &Observer,
    round: &Round,
    key: &str,
    ledger: &mut Ledger,
) -> ReplanRound {
    let mut r = ReplanRound::default();
    for attempt in 0..REPLAN_TRIES {
        let key = format!("{key}-{attempt}");
        obs.with(|s| {
            s.sprung = None;
        });
        // The trap is armed for the execution id the request names, before it goes out.
        let workflow = workflow(round.scenario);
        let execution = new_id();
        obs.with(|s| s.trap = Some(execution.clone()));
        let Some((exec, sent)) = request(env, workflow, &key, execution.clone(), ledger).await
        else {
            obs.with(|s| s.trap = None);
            continue;
        };
        let sprung = until(Duration::from_secs(30), || obs.with(|s| s.sprung)).await;
        obs.with(|s| s.trap = None);
        let Some((first_job_ms, pid)) = sprung else {
            crate::say(format!("execution {exec}: no shard job within 30 s"));
            ended(env, &exec).await;
            continue;
        };
        // Whatever the scheduler sent before the SIGSTOP arrives within a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let planned = |obs: &Observer| {
            obs.with(|s| {
                s.plans
                    .iter()
                    .find(|(_, e, _)| *e == exec)
                    .map(|(seen, _, at)| (*seen, *at))
            })
        };
        if planned(obs).is_some() {
            r.missed += 1;
            env.stack.resume(Target::Scheduler, pid);
            ended(env, &exec).await;
            continue;
        }
        r.execution = exec.clone();
        r.submitted_ms = sent;
        r.first_job_ms = first_job_ms;
        r.hit = true;
        r.jobs_before_kill = obs.with(|s| s.jobs.iter().filter(|j| j.1 == exec).count());
        env.stack.kill9(Target::Scheduler, round.hold);
        r.restarted_ms = until(round.hold + Duration::from_secs(30), || {
            env.stack
                .started(Target::Scheduler)
                .filter(|(p, _)| *p != pid)
                .map(|(_, at)| at)
        })
        .await;
        // The request comes back after the scheduler's ack wait (30 s).
        let replanned = until(Duration::from_secs(90), || planned(obs)).await;
        r.planned_seen_ms = replanned.map(|p| p.0);
        r.planned_created_ms = replanned.map(|p| p.1);
        ended(env, &exec).await;
        obs.with(|s| {
            let jobs: Vec<&(i64, String, u32, i64)> =
                s.jobs.iter().filter(|j| j.1 == exec).collect();
            r.jobs_seen = jobs.len();
            r.deadlines = jobs.iter().map(|j| j.3).collect();
        });
        return r;
    }
    r
}
