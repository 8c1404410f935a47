//! Queue batches run only under their holder's claim (`assay_batch_claims`), and their
//! results and the final statuses say how many batches the queue holds: the runner binary
//! against a real nats-server.

use std::collections::HashMap;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, Result};
use assay_bus::{Bus, NatsOptions, streams, subjects};
use assay_proto::{
    LogChunk, LogStream, ShardJob, ShardState, ShardStatus, TestCaseBatch, TestsSpec,
};
use assay_testkit::NatsServer;
use base64::Engine as _;
use prost::Message;
use tokio_util::sync::CancellationToken;

/// Writes a JUnit report of passing cases to $1 for the ids in the other arguments.
const JUNIT_SH: &str = r#"report=$1; shift
{ echo '<testsuite>'; for id in "$@"; do echo "<testcase name=\"$id\" time=\"0.001\"/>"; done; echo '</testsuite>'; } > "$report"
"#;

async fn bus(url: &str) -> Result<Bus> {
    let opts = NatsOptions {
        url: url.to_string(),
        ..NatsOptions::default()
    };
    let bus = Bus::connect(&opts, &CancellationToken::new()).await?;
    bus.ensure_topology().await?;
    Ok(bus)
}

fn queue_job(execution: &str, shard: u32, shards: u32, dir: &std::path::Path) -> ShardJob {
    ShardJob {
        header: Some(assay_bus::header(
            "test",
            format!("{execution}/{shard}/1"),
            None,
        )),
        execution_id: execution.to_string(),
        workflow: "wf".to_string(),
        shard_index: shard,
        shard_count: shards,
        attempt: 1,
        strategy: "queue".to_string(),
        lease_ms: 2000,
        batch_overhead_ms: 1,
        working_dir: dir.display().to_string(),
        env: HashMap::new(),
        ..ShardJob::default()
    }
}

async fn run_runner(job: &ShardJob, url: &str) -> Result<Output> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(job.encode_to_vec());
    tokio::process::Command::new(env!("CARGO_BIN_EXE_assay-runner"))
        .env("ASSAY_SHARD_JOB", b64)
        .env("ASSAY_NATS_URL", url)
        .kill_on_drop(true)
        .output()
        .await
        .context("spawn assay-runner")
}

/// The system log text of `execution`'s shard `shard`.
async fn system_log(bus: &Bus, execution: &str, shard: u32) -> Result<String> {
    let subject = subjects::logs(execution, shard);
    let mut s = bus.jetstream().get_stream(streams::LOGS).await?;
    let state = s.info().await?.state.clone();
    let mut out = String::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(msg) = s.get_raw_message(seq).await else {
            continue;
        };
        if msg.subject.as_str() != subject {
            continue;
        }
        let chunk = LogChunk::decode(msg.payload)?;
        if chunk.stream() == LogStream::System {
            out.push_str(&String::from_utf8_lossy(&chunk.data));
        }
    }
    Ok(out)
}

/// The claim key of batch `seq` of group 0 (the runner's `<execution>.<group>.<seq>`).
fn claim_key(execution: &str, seq: u32) -> String {
    format!("{}.0.{seq}", assay_bus::kv_key(execution))
}

/// `<ms> <id>` lines the test command appended to `ran.txt`.
fn ran(dir: &std::path::Path) -> Result<Vec<(i64, String)>> {
    let text = std::fs::read_to_string(dir.join("ran.txt")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let (ms, id) = l.split_once(' ').context("a line of ran.txt")?;
            Ok((ms.parse()?, id.to_string()))
        })
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every batch is claimed by a live holder when the worker gets it: the worker leaves
/// each to its holder until the claim's expiry, then takes it over, runs every test
/// once, and marks each batch done.
#[tokio::test]
async fn a_batch_claimed_by_a_live_holder_runs_only_after_its_claim_expires() -> Result<()> {
    let server = NatsServer::start();
    let bus = bus(&server.url()).await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("junit.sh"), JUNIT_SH)?;
    let execution = "exec-held";
    // Three tests, no history, one worker: one test per batch, batches 0, 1, 2.
    let kv = bus
        .kv_with_age(streams::KV_BATCH_CLAIMS, Duration::from_secs(24 * 3600))
        .await?;
    let expiry = assay_bus::now_ms() + 2500;
    for seq in 0..3 {
        kv.put(claim_key(execution, seq), format!("{expiry} other").into())
            .await?;
    }
    let mut job = queue_job(execution, 0, 1, dir.path());
    job.tests = Some(TestsSpec {
        list: r"printf 'q1\nq2\nq3\n'".to_string(),
        run: r#"for id in {tests}; do echo "$(date +%s%3N) $id" >> ran.txt; done; sh ./junit.sh {report} {tests}"#
            .to_string(),
        reports: vec!["{report}".to_string()],
    });
    let out = run_runner(&job, &server.url()).await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));

    let ran = ran(dir.path())?;
    let mut ids: Vec<&str> = ran.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["q1", "q2", "q3"], "every test once: {ran:?}");
    for (at, id) in &ran {
        assert!(
            *at >= expiry,
            "{id} ran at {at}, before the holder's expiry {expiry}"
        );
    }
    let log = system_log(&bus, execution, 0).await?;
    assert!(log.contains("is held by other, whose claim runs"), "{log}");
    assert!(
        log.contains("taken over after a lease expired (claim of other"),
        "{log}"
    );
    for seq in 0..3 {
        let value = kv
            .get(claim_key(execution, seq))
            .await?
            .context("a claim")?;
        assert_eq!(&value[..], b"done", "batch {seq}");
    }
    Ok(())
}

/// Two workers drain a queue; nats-server is killed (-9) and restarted on the same store
/// while one of them runs a batch longer than the lease (1 s). The restarted consumer may
/// hand that batch to the other worker before its holder's progress acks reach it (here
/// about one run in two; without claims the long test then ran twice in 2 of 5 runs), but
/// the holder is alive and renews its claim, so no test runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_while_a_batch_runs_runs_no_test_twice() -> Result<()> {
    let mut server = NatsServer::start();
    let url = server.url();
    let before = bus(&url).await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("junit.sh"), JUNIT_SH)?;
    let execution = "exec-restart";
    let mut listed = vec!["a_long".to_string()];
    listed.extend((0..24).map(|i| format!("s{i:02}_short")));
    std::fs::write(dir.path().join("ids.txt"), listed.join("\n") + "\n")?;
    let run = concat!(
        r#"for id in {tests}; do echo "$(date +%s%3N) $id" >> ran.txt; "#,
        r#"case $id in a_long) sleep 6;; *) sleep 0.25;; esac; done; "#,
        "sh ./junit.sh {report} {tests}"
    );
    let mut runners = Vec::new();
    for shard in 0..2 {
        let mut job = queue_job(execution, shard, 2, dir.path());
        job.lease_ms = 1000;
        job.tests = Some(TestsSpec {
            list: "cat ids.txt".to_string(),
            run: run.to_string(),
            reports: vec!["{report}".to_string()],
        });
        let url = url.clone();
        runners.push(tokio::spawn(async move { run_runner(&job, &url).await }));
    }
    // Restart once the long batch has run for longer than the lease (1 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let started = loop {
        if let Some((at, _)) = ran(dir.path())?.into_iter().find(|(_, id)| id == "a_long") {
            break at;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the long test never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    while assay_bus::now_ms() < started + 1500 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(before);
    server.restart();
    let mut stderrs = Vec::new();
    for r in runners {
        let out = tokio::time::timeout(Duration::from_secs(90), r)
            .await
            .context("a runner did not end")???;
        assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
        stderrs.push(stderr(&out));
    }
    let ran = ran(dir.path())?;
    let mut ids: Vec<&str> = ran.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = listed.iter().map(String::as_str).collect();
    want.sort_unstable();
    let bus = bus(&url).await?;
    let logs = format!(
        "{}\n---\n{}",
        system_log(&bus, execution, 0).await?,
        system_log(&bus, execution, 1).await?
    );
    assert_eq!(
        ids,
        want,
        "every test exactly once: {ran:?}\n{logs}\n---\n{}",
        stderrs.join("\n---\n")
    );
    Ok(())
}

/// A runner whose NATS user may not write claims (a deployment whose permissions predate
/// them) still drains the queue, every test once, saying once that it runs unclaimed.
#[tokio::test]
async fn a_runner_that_cannot_write_claims_runs_its_batches_unclaimed() -> Result<()> {
    let server = NatsServer::start_with_config(concat!(
        "authorization { users: [\n",
        "  {user: admin, password: admin}\n",
        "  {user: runner, password: runner, permissions: {publish: {deny: [\"$KV.assay_batch_claims.>\"]}}}\n",
        "] }\n"
    ));
    let opts = NatsOptions {
        url: server.url(),
        auth: assay_bus::NatsAuth {
            user: Some("admin".into()),
            password: Some("admin".into()),
            ..Default::default()
        },
        ..NatsOptions::default()
    };
    let bus = Bus::connect(&opts, &CancellationToken::new()).await?;
    bus.ensure_topology().await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("junit.sh"), JUNIT_SH)?;
    let execution = "exec-unclaimed";
    let mut job = queue_job(execution, 0, 1, dir.path());
    job.tests = Some(TestsSpec {
        list: r"printf 'u1\nu2\nu3\n'".to_string(),
        run: r#"for id in {tests}; do echo "$(date +%s%3N) $id" >> ran.txt; done; sh ./junit.sh {report} {tests}"#
            .to_string(),
        reports: vec!["{report}".to_string()],
    });
    let b64 = base64::engine::general_purpose::STANDARD.encode(job.encode_to_vec());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_assay-runner"))
        .env("ASSAY_SHARD_JOB", b64)
        .env("ASSAY_NATS_URL", server.url())
        .env("ASSAY_NATS_USER", "runner")
        .env("ASSAY_NATS_PASSWORD", "runner")
        .kill_on_drop(true)
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let mut ids: Vec<String> = ran(dir.path())?.into_iter().map(|(_, id)| id).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["u1", "u2", "u3"]);
    let log = system_log(&bus, execution, 0).await?;
    assert_eq!(
        log.matches("this shard runs its batches unclaimed").count(),
        1,
        "{log}"
    );
    assert!(log.contains("$KV.assay_batch_claims.>"), "{log}");
    Ok(())
}

/// Every message of `stream` on `subject`, decoded.
async fn read<M: Message + Default>(bus: &Bus, stream: &str, subject: &str) -> Result<Vec<M>> {
    let mut s = bus.jetstream().get_stream(stream).await?;
    let state = s.info().await?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(msg) = s.get_raw_message(seq).await else {
            continue;
        };
        if msg.subject.as_str() == subject {
            out.push(M::decode(msg.payload)?);
        }
    }
    Ok(out)
}

/// The filler drains the whole queue; a second worker arrives after it, finds the queue
/// sealed and drained. Every results batch names its queue batch and the queue's sealed
/// batch count, and both final statuses say that count too (the second worker's is all the
/// store has when the first one's results are still in flight).
#[tokio::test]
async fn queue_results_and_final_statuses_carry_the_sealed_batch_count() -> Result<()> {
    let server = NatsServer::start();
    let bus = bus(&server.url()).await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("junit.sh"), JUNIT_SH)?;
    let execution = "exec-total";
    let tests = TestsSpec {
        list: r"printf 'q1\nq2\nq3\nq4\nq5\n'".to_string(),
        run: "sh ./junit.sh {report} {tests}".to_string(),
        reports: vec!["{report}".to_string()],
    };
    for shard in 0..2 {
        let mut job = queue_job(execution, shard, 2, dir.path());
        job.tests = Some(tests.clone());
        let out = run_runner(&job, &server.url()).await?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "shard {shard}: {}",
            stderr(&out)
        );
    }
    let kv = bus.kv(streams::KV_QUEUES).await?;
    let state = kv
        .get(assay_bus::kv_key(execution))
        .await?
        .context("the queue state")?;
    let sealed: u32 = String::from_utf8_lossy(&state)
        .strip_prefix("sealed:")
        .context("a sealed queue")?
        .parse()?;
    assert!(sealed > 1, "several batches: {sealed}");

    let batches: Vec<TestCaseBatch> =
        read(&bus, streams::RESULTS, &subjects::results(execution, 0)).await?;
    assert!(
        read::<TestCaseBatch>(&bus, streams::RESULTS, &subjects::results(execution, 1))
            .await?
            .is_empty(),
        "the second worker found the queue drained"
    );
    let mut reported: Vec<u32> = batches.iter().map(|b| b.queue_batch).collect();
    reported.dedup();
    assert_eq!(reported, (1..=sealed).collect::<Vec<_>>(), "{batches:?}");
    assert!(
        batches.iter().all(|b| b.queue_batches == sealed),
        "{batches:?}"
    );
    assert_eq!(batches.iter().map(|b| b.results.len()).sum::<usize>(), 5);

    for shard in 0..2 {
        let statuses: Vec<ShardStatus> = read(
            &bus,
            streams::STATUS,
            &subjects::shard_status(execution, shard),
        )
        .await?;
        let last = statuses.last().context("a final status")?;
        assert_eq!(last.state(), ShardState::Passed, "shard {shard}: {last:?}");
        assert_eq!(
            (last.queue_batches, last.queue_group),
            (sealed, 0),
            "shard {shard}: {last:?}"
        );
    }
    Ok(())
}

/// A batch whose run reports no test case (its tests vanished since the listing, say) is
/// still reported, as an empty results batch: the store counts reported batches against the
/// queue's total before it ends the execution.
#[tokio::test]
async fn a_queue_batch_without_results_is_reported_empty() -> Result<()> {
    let server = NatsServer::start();
    let bus = bus(&server.url()).await?;
    let dir = tempfile::tempdir()?;
    let execution = "exec-empty";
    let mut job = queue_job(execution, 0, 2, dir.path());
    job.tests = Some(TestsSpec {
        list: r"printf 'q1\nq2\nq3\n'".to_string(),
        run: "echo '<testsuite></testsuite>' > {report}".to_string(),
        reports: vec!["{report}".to_string()],
    });
    let out = run_runner(&job, &server.url()).await?;
    let statuses: Vec<ShardStatus> =
        read(&bus, streams::STATUS, &subjects::shard_status(execution, 0)).await?;
    let last = statuses.last().context("a final status")?;
    let batches: Vec<TestCaseBatch> =
        read(&bus, streams::RESULTS, &subjects::results(execution, 0)).await?;
    assert!(last.queue_batches > 1, "{last:?}; stderr: {}", stderr(&out));
    let reported: Vec<u32> = batches.iter().map(|b| b.queue_batch).collect();
    assert_eq!(
        reported,
        (1..=last.queue_batches).collect::<Vec<_>>(),
        "{batches:?}"
    );
    assert!(batches.iter().all(|b| b.results.is_empty()), "{batches:?}");
    assert_eq!(last.result_batches, last.queue_batches, "{last:?}");
    Ok(())
}
