//! The runner binary against a real nats-server: what it publishes and how it exits.

use std::collections::HashMap;
use std::process::Output;

use anyhow::{Context as _, Result};
use assay_bus::{Bus, NatsOptions, streams, subjects};
use assay_proto::{
    LogChunk, LogStream, ShardJob, ShardState, ShardStatus, Step, TestCaseBatch, TestStatus,
    TestsSpec,
};
use assay_testkit::NatsServer;
use base64::Engine as _;
use prost::Message;
use tokio_util::sync::CancellationToken;

async fn bus(server: &NatsServer) -> Result<Bus> {
    let opts = NatsOptions {
        url: server.url(),
        ..NatsOptions::default()
    };
    let bus = Bus::connect(&opts, &CancellationToken::new()).await?;
    bus.ensure_topology().await?;
    Ok(bus)
}

fn job(execution: &str) -> ShardJob {
    ShardJob {
        header: Some(assay_bus::header("test", format!("{execution}/0/1"), None)),
        execution_id: execution.to_string(),
        workflow: "wf".to_string(),
        shard_index: 0,
        shard_count: 2,
        attempt: 1,
        env: HashMap::from([("MY_VAR".to_string(), "hello".to_string())]),
        ..ShardJob::default()
    }
}

fn step(name: &str, run: &str) -> Step {
    Step {
        name: name.to_string(),
        run: run.to_string(),
        ..Step::default()
    }
}

async fn run_runner(job: &ShardJob, url: &str) -> Result<Output> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(job.encode_to_vec());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_assay-runner"))
        .env("ASSAY_SHARD_JOB", b64)
        .env("ASSAY_NATS_URL", url)
        .output()
        .await
        .context("spawn assay-runner")?;
    Ok(out)
}

/// Every message of `stream` on `subject`, in order, with its Nats-Msg-Id.
async fn read<M: Message + Default>(
    bus: &Bus,
    stream: &str,
    subject: &str,
) -> Result<Vec<(String, M)>> {
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
        if msg.subject.as_str() != subject {
            continue;
        }
        let id = msg
            .headers
            .get(assay_bus::MSG_ID)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        out.push((id, M::decode(msg.payload)?));
    }
    Ok(out)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn lists_runs_parses_and_reports_a_failing_shard() -> Result<()> {
    let server = NatsServer::start();
    let bus = bus(&server).await?;
    let mut job = job("exec1");
    job.setup = vec![step(
        "check-env",
        r#"test "$MY_VAR" = hello && test "$ASSAY_SHARD_INDEX" = 0 && test "$ASSAY_SHARD_COUNT" = 2"#,
    )];
    job.steps = vec![step("build", "echo building; echo warn >&2")];
    job.after = vec![step("cleanup", "echo bye")];
    job.tests = Some(TestsSpec {
        // Five ids, one printed twice.
        list: r"printf 'a\nb\nc\nb\nd\ne\n'".to_string(),
        run: concat!(
            "set -- {tests}; test $# -eq 3 || exit 9; ",
            r#"printf '<testsuite name="s"><testcase classname="c" name="%s" time="0.5"/>"#,
            r#"<testcase classname="c" name="%s"><failure message="boom">trace</failure></testcase>"#,
            r#"<testcase classname="c" name="%s"><skipped/></testcase></testsuite>' "$1" "$2" "$3" > {report}; "#,
            "exit 1"
        )
        .to_string(),
        reports: vec!["{report}".to_string()],
    });

    let out = run_runner(&job, &server.url()).await?;
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));

    let statuses: Vec<(String, ShardStatus)> =
        read(&bus, streams::STATUS, &subjects::shard_status("exec1", 0)).await?;
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    let (key, running) = &statuses[0];
    assert_eq!(key, "exec1/0/1/running");
    assert_eq!(running.state(), ShardState::Running);
    assert_eq!(running.reporter, "runner");
    assert_eq!(running.workflow, "wf");
    let (key, last) = &statuses[1];
    assert_eq!(key, "exec1/0/1/final");
    assert_eq!(last.state(), ShardState::Failed);
    assert_eq!(last.reason, "1 failed of 3 tests");
    assert_eq!(last.exit_code, 1);
    assert_eq!((last.test_cases, last.result_batches), (3, 1));
    assert!(last.finished_at_ms >= last.started_at_ms && last.started_at_ms > 0);
    let trace = job
        .header
        .as_ref()
        .map(|h| h.traceparent.clone())
        .unwrap_or_default();
    let trace_id = &trace[3..35];
    assert!(
        last.header
            .as_ref()
            .is_some_and(|h| h.traceparent.contains(trace_id))
    );

    let batches: Vec<(String, TestCaseBatch)> =
        read(&bus, streams::RESULTS, &subjects::results("exec1", 0)).await?;
    assert_eq!(batches.len(), 1);
    let (key, batch) = &batches[0];
    assert_eq!(key, "exec1/0/1/results/0");
    assert_eq!(batch.workflow, "wf");
    let got: Vec<(&str, TestStatus)> = batch
        .results
        .iter()
        .map(|r| (r.id.as_str(), r.status()))
        .collect();
    // Report ids (`c::a`) are mapped back to the ids the listing printed (`a`).
    assert_eq!(
        got,
        vec![
            ("a", TestStatus::Passed),
            ("b", TestStatus::Failed),
            ("c", TestStatus::Skipped)
        ]
    );
    assert_eq!(batch.results[0].duration_ms, 500);
    assert_eq!(batch.results[1].failure_message, "boom");

    let logs: Vec<(String, LogChunk)> =
        read(&bus, streams::LOGS, &subjects::logs("exec1", 0)).await?;
    assert!(!logs.is_empty());
    for (i, (key, chunk)) in logs.iter().enumerate() {
        assert_eq!(chunk.seq, i as u64);
        assert_eq!(key, &format!("exec1/0/1/log/{i}"));
    }
    let text = |stream: LogStream, step: &str| -> String {
        logs.iter()
            .filter(|(_, c)| c.stream() == stream && c.step == step)
            .map(|(_, c)| String::from_utf8_lossy(&c.data).into_owned())
            .collect()
    };
    assert_eq!(text(LogStream::Stdout, "build"), "building\n");
    assert_eq!(text(LogStream::Stderr, "build"), "warn\n");
    assert_eq!(text(LogStream::Stdout, "cleanup"), "bye\n");
    let tests = text(LogStream::System, "tests");
    assert!(
        tests.contains("listed 5 tests, this shard runs 3"),
        "{tests}"
    );
    assert!(
        tests.contains("1 duplicate id(s), kept the first of each: b"),
        "{tests}"
    );
    assert!(text(LogStream::System, "check-env").contains("step check-env passed"));
    Ok(())
}

#[tokio::test]
async fn missing_commands_and_directories_are_reported() -> Result<()> {
    let server = NatsServer::start();
    let bus = bus(&server).await?;

    let mut job1 = job("exec2");
    job1.steps = vec![
        step("compile", "definitely-not-a-command-assay"),
        step("never", "echo should not run"),
    ];
    job1.after = vec![step("cleanup", "true")];
    job1.tests = Some(TestsSpec {
        run: "echo never".to_string(),
        ..TestsSpec::default()
    });
    let out = run_runner(&job1, &server.url()).await?;
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let statuses: Vec<(String, ShardStatus)> =
        read(&bus, streams::STATUS, &subjects::shard_status("exec2", 0)).await?;
    let last = &statuses.last().context("no status")?.1;
    assert_eq!(last.state(), ShardState::Failed);
    assert!(last.reason.contains("command not found"), "{}", last.reason);
    assert_eq!(last.exit_code, 127);
    let logs: Vec<(String, LogChunk)> =
        read(&bus, streams::LOGS, &subjects::logs("exec2", 0)).await?;
    // `never` is skipped (one system line says so), the tests never start.
    assert!(logs.iter().all(|(_, c)| c.step != "tests"));
    let never: Vec<String> = logs
        .iter()
        .filter(|(_, c)| c.step == "never")
        .map(|(_, c)| format!("{:?}: {}", c.stream(), String::from_utf8_lossy(&c.data)))
        .collect();
    assert_eq!(
        never,
        ["System: step never skipped (condition success, an earlier step failed)\n"]
    );
    assert!(logs.iter().any(|(_, c)| c.step == "cleanup"));

    let mut job2 = job("exec3");
    job2.working_dir = "/definitely/not/here".to_string();
    let out = run_runner(&job2, &server.url()).await?;
    // 4: errored, and the final status was published.
    assert_eq!(out.status.code(), Some(4), "stderr: {}", stderr(&out));
    let statuses: Vec<(String, ShardStatus)> =
        read(&bus, streams::STATUS, &subjects::shard_status("exec3", 0)).await?;
    let last = &statuses.last().context("no status")?.1;
    assert_eq!(last.state(), ShardState::Errored);
    assert!(
        last.reason.contains("/definitely/not/here does not exist"),
        "{}",
        last.reason
    );

    // A shard with nothing to do passes.
    let mut job3 = job("exec4");
    job3.shard_index = 1;
    job3.tests = Some(TestsSpec {
        list: "echo only-one".to_string(),
        run: "exit 7".to_string(),
        reports: vec!["{report}".to_string()],
    });
    let out = run_runner(&job3, &server.url()).await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    Ok(())
}

#[tokio::test]
async fn exits_2_with_a_reason_for_a_job_it_cannot_decode() -> Result<()> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_assay-runner"))
        .env("ASSAY_SHARD_JOB", "not base64!")
        .env("ASSAY_NATS_URL", "nats://127.0.0.1:1")
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid shard job"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

async fn wait_for_file(path: &std::path::Path) -> Result<String> {
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return Ok(text.trim().to_string());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("{} did not appear", path.display())
}

#[tokio::test]
async fn an_orphaned_runner_kills_its_steps_and_reports_nothing() -> Result<()> {
    let server = NatsServer::start();
    let bus = bus(&server).await?;
    let dir = tempfile::tempdir()?;
    let mut job = job("exec5");
    job.working_dir = dir.path().display().to_string();
    job.steps = vec![step(
        "hang",
        "(exec sleep 60) & echo $! > bg.pid; echo $$ > step.pid; sleep 60",
    )];
    let b64 = base64::engine::general_purpose::STANDARD.encode(job.encode_to_vec());
    // The launcher stand-in starts the runner and dies once the step runs.
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(r#""$RUNNER" & echo $! > runner.pid; while [ ! -s step.pid ]; do sleep 0.02; done"#)
        .current_dir(dir.path())
        .env("RUNNER", env!("CARGO_BIN_EXE_assay-runner"))
        .env("ASSAY_SHARD_JOB", b64)
        .env("ASSAY_NATS_URL", server.url())
        .status()
        .await?;
    assert!(status.success());
    let runner = wait_for_file(&dir.path().join("runner.pid")).await?;
    let step_pid = wait_for_file(&dir.path().join("step.pid")).await?;
    let bg = wait_for_file(&dir.path().join("bg.pid")).await?;
    let mut gone = false;
    for _ in 0..100 {
        if !alive(&runner) && !alive(&step_pid) && !alive(&bg) {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        gone,
        "runner {runner}, step {step_pid} or background {bg} still alive"
    );
    let statuses: Vec<(String, ShardStatus)> =
        read(&bus, streams::STATUS, &subjects::shard_status("exec5", 0)).await?;
    assert!(
        statuses.iter().all(|(key, _)| !key.ends_with("/final")),
        "{statuses:?}"
    );
    Ok(())
}

/// The runner ends an attempt that outlives its execution's deadline by itself (the launcher
/// that would kill it may be stalled or gone): its steps and their background processes
/// are killed, the final status says `timed_out`, and it exits 5.
#[tokio::test]
async fn a_runner_past_its_execution_deadline_kills_its_steps_and_reports_timed_out() -> Result<()>
{
    let server = NatsServer::start();
    let bus = bus(&server).await?;
    let dir = tempfile::tempdir()?;
    let mut job = job("exec7");
    job.working_dir = dir.path().display().to_string();
    // The shard's own timeout is far away; the execution's deadline is 1.5 s from now.
    job.timeout_ms = 600_000;
    job.deadline_ms = assay_bus::now_ms() + 1_500;
    job.steps = vec![step(
        "hang",
        "(exec sleep 60) & echo $! > bg.pid; echo $$ > step.pid; sleep 60",
    )];
    let out = run_runner(&job, &server.url()).await?;
    assert_eq!(out.status.code(), Some(5), "stderr: {}", stderr(&out));
    for pid in [
        wait_for_file(&dir.path().join("step.pid")).await?,
        wait_for_file(&dir.path().join("bg.pid")).await?,
    ] {
        let mut gone = false;
        for _ in 0..100 {
            if !alive(&pid) {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(gone, "process {pid} of the timed-out shard still alive");
    }
    let statuses: Vec<(String, ShardStatus)> =
        read(&bus, streams::STATUS, &subjects::shard_status("exec7", 0)).await?;
    let (key, last) = statuses.last().context("no status")?;
    assert!(key.ends_with("/final"), "{key}");
    assert_eq!(last.state(), ShardState::TimedOut, "{last:?}");
    assert_eq!(last.reporter, "runner");
    assert!(!last.will_retry);
    assert!(
        last.reason.contains("exceeded its timeout"),
        "{}",
        last.reason
    );
    Ok(())
}

/// The runner authenticates with the same `ASSAY_NATS_*` variables as the services (the
/// launcher's environment reaches it): with the token it reports; with a wrong one it says
/// the server refused it.
#[tokio::test]
async fn authenticates_with_the_environment_settings() -> Result<()> {
    let server = NatsServer::start_with_config("authorization { token: \"runner-t0ken\" }\n");
    let opts = NatsOptions {
        url: server.url(),
        auth: assay_bus::NatsAuth {
            token: Some("runner-t0ken".into()),
            ..Default::default()
        },
        ..NatsOptions::default()
    };
    let bus = Bus::connect(&opts, &CancellationToken::new()).await?;
    bus.ensure_topology().await?;
    let mut job = job("exec-auth");
    job.steps = vec![step("hello", "echo hi")];
    let b64 = base64::engine::general_purpose::STANDARD.encode(job.encode_to_vec());
    let run = |token: &'static str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_assay-runner"))
            .env("ASSAY_SHARD_JOB", &b64)
            .env("ASSAY_NATS_URL", server.url())
            .env("ASSAY_NATS_TOKEN", token)
            .output()
    };
    let out = run("runner-t0ken").await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let statuses: Vec<(String, ShardStatus)> = read(
        &bus,
        streams::STATUS,
        &subjects::shard_status("exec-auth", 0),
    )
    .await?;
    assert_eq!(
        statuses.last().map(|s| s.1.state()),
        Some(ShardState::Passed)
    );

    let out = run("wrong-token").await?;
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("(token)") && err.contains("check the ASSAY_NATS_* settings"),
        "{err}"
    );
    Ok(())
}

fn step_if(name: &str, condition: &str, run: &str) -> Step {
    Step {
        condition: condition.to_string(),
        ..step(name, run)
    }
}

/// Setup, steps and after steps run by their `condition` like GitHub Actions' `if:`; the
/// first failure decides the shard's verdict; a step's `env` reaches its process only.
#[tokio::test]
async fn conditions_decide_which_steps_run_and_step_env_stays_in_its_step() -> Result<()> {
    let server = NatsServer::start();
    let bus = bus(&server).await?;
    let dir = tempfile::tempdir()?;
    let mut job1 = job("exec-cond");
    job1.working_dir = dir.path().display().to_string();
    job1.setup = vec![
        Step {
            env: HashMap::from([("ONLY_HERE".to_string(), "setup-env".to_string())]),
            ..step("prepare", r#"echo "$MY_VAR $ONLY_HERE" > setup.txt"#)
        },
        step_if("setup-on-failure", "failure", "touch setup-failure-ran"),
    ];
    job1.steps = vec![
        step("boom", r#"echo "[$ONLY_HERE]" > boom.txt; exit 7"#),
        step("skipped", "touch skipped-ran"),
        step_if("explicit-success", "success", "touch success-ran"),
        step_if("on-failure", "failure", "touch failure-ran; exit 3"),
        step_if("always", "always", "touch always-ran"),
    ];
    job1.after = vec![
        step("after-default", "touch after-default-ran"),
        step_if("after-success", "success", "touch after-success-ran"),
        step_if("after-failure", "failure", "touch after-failure-ran"),
        step_if("after-always", "always", "touch after-always-ran"),
    ];
    job1.tests = Some(TestsSpec {
        run: "touch tests-ran".to_string(),
        ..TestsSpec::default()
    });
    let out = run_runner(&job1, &server.url()).await?;
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let ran = |f: &str| dir.path().join(f).exists();
    let file = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    assert_eq!(file("setup.txt"), "hello setup-env\n");
    assert_eq!(
        file("boom.txt"),
        "[]\n",
        "a step's env leaked into another step"
    );
    assert!(
        !ran("setup-failure-ran"),
        "failure setup step ran with nothing failed"
    );
    for (name, expected) in [
        ("skipped-ran", false),
        ("success-ran", false),
        ("failure-ran", true),
        ("always-ran", true),
        ("tests-ran", false),
        ("after-default-ran", true),
        ("after-success-ran", false),
        ("after-failure-ran", true),
        ("after-always-ran", true),
    ] {
        assert_eq!(ran(name), expected, "{name}");
    }
    let statuses: Vec<(String, ShardStatus)> =
        read_msgs(&bus, &subjects::shard_status("exec-cond", 0)).await?;
    let last = &statuses.last().context("no status")?.1;
    assert_eq!(last.state(), ShardState::Failed);
    // The first failure decides, not the failing `failure` step after it.
    assert_eq!(last.reason, "step boom failed: exit code 7");
    let logs: Vec<(String, LogChunk)> =
        read(&bus, streams::LOGS, &subjects::logs("exec-cond", 0)).await?;
    let system: String = logs
        .iter()
        .filter(|(_, c)| c.stream() == LogStream::System)
        .map(|(_, c)| String::from_utf8_lossy(&c.data).into_owned())
        .collect();
    for line in [
        "setup step setup-on-failure skipped (condition failure, nothing failed)",
        "step skipped skipped (condition success, an earlier step failed)",
        "after step after-success skipped (condition success, the shard did not pass)",
    ] {
        assert!(system.contains(line), "{line:?} not in:\n{system}");
    }

    // A passing shard: `success` after steps run, `failure` ones do not.
    let dir2 = tempfile::tempdir()?;
    let mut job2 = job("exec-cond2");
    job2.working_dir = dir2.path().display().to_string();
    job2.steps = vec![step_if("on-failure", "failure", "touch failure-ran")];
    job2.after = vec![
        step_if("after-success", "success", "touch after-success-ran"),
        step_if("after-failure", "failure", "touch after-failure-ran"),
    ];
    let out = run_runner(&job2, &server.url()).await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let ran = |f: &str| dir2.path().join(f).exists();
    assert!(!ran("failure-ran"));
    assert!(ran("after-success-ran"));
    assert!(!ran("after-failure-ran"));
    Ok(())
}

/// A condition the runner does not know errors the shard before anything runs, naming the
/// step and the value.
#[tokio::test]
async fn an_unknown_condition_errors_the_shard_naming_step_and_value() -> Result<()> {
    let server = NatsServer::start();
    let bus = bus(&server).await?;
    let dir = tempfile::tempdir()?;
    let mut job = job("exec-badcond");
    job.working_dir = dir.path().display().to_string();
    job.steps = vec![step("first", "touch first-ran")];
    job.after = vec![step_if("cleanup", "allways", "true")];
    let out = run_runner(&job, &server.url()).await?;
    assert_eq!(out.status.code(), Some(4), "stderr: {}", stderr(&out));
    assert!(!dir.path().join("first-ran").exists());
    let statuses: Vec<(String, ShardStatus)> =
        read_msgs(&bus, &subjects::shard_status("exec-badcond", 0)).await?;
    let last = &statuses.last().context("no status")?.1;
    assert_eq!(last.state(), ShardState::Errored);
    assert_eq!(
        last.reason,
        "after step \"cleanup\" has an unknown condition \"allways\"; use success, failure or always"
    );
    Ok(())
}

async fn read_msgs(bus: &Bus, subject: &str) -> Result<Vec<(String, ShardStatus)>> {
    read(bus, streams::STATUS, subject).await
}

/// Steps and tests get a clean environment: the allow-list of the runner's own variables,
/// the workflow's env, the step's env and the `ASSAY_*` variables of the shard and of what
/// caused it, never the runner's NATS settings, its job or anything else it was given.
#[tokio::test]
async fn steps_and_tests_see_a_clean_environment_with_provenance() -> Result<()> {
    let server = NatsServer::start_with_config("authorization { token: \"runner-t0ken\" }\n");
    let opts = NatsOptions {
        url: server.url(),
        auth: assay_bus::NatsAuth {
            token: Some("runner-t0ken".into()),
            ..Default::default()
        },
        ..NatsOptions::default()
    };
    Bus::connect(&opts, &CancellationToken::new())
        .await?
        .ensure_topology()
        .await?;
    let dir = tempfile::tempdir()?;
    let mut job = job("exec-env");
    job.working_dir = dir.path().display().to_string();
    job.provenance = Some(assay_proto::Provenance {
        trigger: "on-push".into(),
        event_id: "01JEVENTID".into(),
        source: "github".into(),
        r#type: "push".into(),
        labels: HashMap::from(
            [
                ("sha", "0123abcd"),
                ("branch", "main"),
                ("repository", "acme/shop"),
                ("provider", "github"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        ),
        ..Default::default()
    });
    job.steps = vec![Step {
        env: HashMap::from([("STEP_VAR".to_string(), "step-value".to_string())]),
        ..step("show", "env > step-env.txt")
    }];
    job.tests = Some(TestsSpec {
        run: "env > tests-env.txt".to_string(),
        ..TestsSpec::default()
    });
    let b64 = base64::engine::general_purpose::STANDARD.encode(job.encode_to_vec());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_assay-runner"))
        .env("ASSAY_SHARD_JOB", b64)
        .env("ASSAY_NATS_URL", server.url())
        .env("ASSAY_NATS_TOKEN", "runner-t0ken")
        .env("SECRET_X", "planted-secret")
        .env("HOME", "/home/tester")
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));

    let vars = |file: &str| -> Result<HashMap<String, String>> {
        let text = std::fs::read_to_string(dir.path().join(file))?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    };
    let step_env = vars("step-env.txt")?;
    let tests_env = vars("tests-env.txt")?;
    for (name, env) in [("step", &step_env), ("tests", &tests_env)] {
        for (k, v) in [
            ("MY_VAR", "hello"),
            ("HOME", "/home/tester"),
            ("ASSAY_EXECUTION_ID", "exec-env"),
            ("ASSAY_WORKFLOW", "wf"),
            ("ASSAY_SHARD_INDEX", "0"),
            ("ASSAY_SHARD_COUNT", "2"),
            ("ASSAY_ATTEMPT", "1"),
            ("ASSAY_TRIGGER", "on-push"),
            ("ASSAY_EVENT_ID", "01JEVENTID"),
            ("ASSAY_EVENT_SOURCE", "github"),
            ("ASSAY_EVENT_TYPE", "push"),
            ("ASSAY_GIT_SHA", "0123abcd"),
            ("ASSAY_GIT_BRANCH", "main"),
            ("ASSAY_GIT_REPOSITORY", "acme/shop"),
            ("ASSAY_GIT_PROVIDER", "github"),
            ("ASSAY_EVENT_LABEL_SHA", "0123abcd"),
        ] {
            assert_eq!(env.get(k).map(String::as_str), Some(v), "{name}: {k}");
        }
        assert!(env.contains_key("PATH"), "{name}: no PATH");
        for k in [
            "SECRET_X",
            "ASSAY_NATS_URL",
            "ASSAY_NATS_TOKEN",
            "ASSAY_SHARD_JOB",
            "ASSAY_GIT_TAG",
        ] {
            assert!(!env.contains_key(k), "{name}: {k} leaked");
        }
        // Nothing but the allow-list, the job's variables and what the shell sets itself.
        for k in env.keys() {
            let known = assay_runner::env::INHERITED.contains(&k.as_str())
                || (k.starts_with("ASSAY_") && !k.starts_with("ASSAY_NATS"))
                || ["MY_VAR", "STEP_VAR", "PWD", "OLDPWD", "SHLVL", "_"].contains(&k.as_str());
            assert!(known, "{name}: unexpected variable {k}");
        }
    }
    assert_eq!(
        step_env.get("STEP_VAR").map(String::as_str),
        Some("step-value")
    );
    assert!(
        !tests_env.contains_key("STEP_VAR"),
        "a step's env reached the tests"
    );
    Ok(())
}

/// Writes a JUnit report of passing cases to $1 for the ids in the other arguments.
const JUNIT_SH: &str = r#"report=$1; shift
{ echo '<testsuite>'; for id in "$@"; do echo "<testcase name=\"$id\" time=\"0.001\"/>"; done; echo '</testsuite>'; } > "$report"
"#;

/// Every test-case result of `execution`'s shard 0.
async fn results_of(bus: &Bus, execution: &str) -> Result<Vec<assay_proto::TestCaseResult>> {
    let batches: Vec<(String, TestCaseBatch)> =
        read(bus, streams::RESULTS, &subjects::results(execution, 0)).await?;
    Ok(batches.into_iter().flat_map(|(_, b)| b.results).collect())
}

fn system_text(logs: &[(String, LogChunk)]) -> String {
    logs.iter()
        .filter(|(_, c)| c.stream() == LogStream::System)
        .map(|(_, c)| String::from_utf8_lossy(&c.data).into_owned())
        .collect()
}

/// `{tests_file}` is a file of the batch's ids, one per line, in the runner's own scratch
/// directory (gone when the runner ends).
#[tokio::test]
async fn tests_file_holds_the_batch_one_id_per_line() -> Result<()> {
    let server = NatsServer::start();
    let bus = bus(&server).await?;
    let dir = tempfile::tempdir()?;
    let mut job = job("exec-file");
    job.working_dir = dir.path().display().to_string();
    job.shard_count = 1;
    job.tests = Some(TestsSpec {
        list: r"printf 't::a\nt::b c\nt::it'\''s\n'".to_string(),
        run: concat!(
            "cp {tests_file} batch.txt; echo {tests_file} > path.txt; ",
            r#"{ echo '<testsuite>'; while IFS= read -r id; do echo "<testcase name=\"$id\"/>"; done < {tests_file}; echo '</testsuite>'; } > {report}"#
        )
        .to_string(),
        reports: vec!["{report}".to_string()],
    });
    let out = run_runner(&job, &server.url()).await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("batch.txt"))?,
        "t::a\nt::b c\nt::it's\n"
    );
    let path = std::fs::read_to_string(dir.path().join("path.txt"))?;
    assert!(
        path.contains("/.assay/scripts/exec-file-0-1-"),
        "tests file at {path}"
    );
    assert!(
        !std::path::Path::new(path.trim()).exists(),
        "{path} left behind"
    );
    let ids: Vec<String> = results_of(&bus, "exec-file")
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["t::a", "t::b c", "t::it's"]);
    Ok(())
}

/// A batch whose `{tests}` expansion would pass the kernel's argument limit (30,000 ids of
/// ~85 bytes: ~3 MB, E2BIG in one exec) runs as several invocations, each with its own
/// report, and every id's result counts exactly once.
#[tokio::test]
async fn a_batch_over_the_argument_limit_is_split_and_every_result_counts_once() -> Result<()> {
    const N: usize = 30_000;
    let server = NatsServer::start();
    let bus = bus(&server).await?;
    let dir = tempfile::tempdir()?;
    let ids: Vec<String> = (0..N)
        .map(|i| {
            format!(
                "tests/suite_{:02}/sub/test_module_{:05}.py::TestSomething::test_case_{i:05}[alpha-{}/beta]",
                i % 37,
                i / 10,
                i % 7
            )
        })
        .collect();
    std::fs::write(dir.path().join("ids.txt"), ids.join("\n") + "\n")?;
    std::fs::write(dir.path().join("junit.sh"), JUNIT_SH)?;
    let mut job = job("exec-big");
    job.working_dir = dir.path().display().to_string();
    job.shard_count = 1;
    job.tests = Some(TestsSpec {
        list: "cat ids.txt".to_string(),
        run: "sh ./junit.sh {report} {tests}".to_string(),
        reports: vec!["{report}".to_string()],
    });
    let out = run_runner(&job, &server.url()).await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));

    let statuses: Vec<(String, ShardStatus)> = read(
        &bus,
        streams::STATUS,
        &subjects::shard_status("exec-big", 0),
    )
    .await?;
    let last = &statuses.last().context("no status")?.1;
    assert_eq!(last.state(), ShardState::Passed, "{}", last.reason);
    assert_eq!(last.test_cases, N as u32);
    let results = results_of(&bus, "exec-big").await?;
    assert_eq!(results.len(), N);
    let mut got: Vec<&str> = results.iter().map(|r| r.id.as_str()).collect();
    got.sort_unstable();
    got.dedup();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(got, want, "every id once");
    assert!(results.iter().all(|r| r.status() == TestStatus::Passed));

    let logs: Vec<(String, LogChunk)> =
        read(&bus, streams::LOGS, &subjects::logs("exec-big", 0)).await?;
    let system = system_text(&logs);
    assert!(
        system.contains("batch of 30000 tests split into 3 invocations (command would be ")
            && system.contains(" bytes, limit 1048576)"),
        "{system}"
    );
    assert!(
        system.contains("read 30000 test cases from 3 report(s)"),
        "{system}"
    );
    Ok(())
}

/// `--help` is clap's, on stdout; a wrong argument exits 2 with the reason on stderr; a job
/// file and `--nats` run a shard without any environment.
#[tokio::test]
async fn arguments_are_parsed_by_clap_with_the_shared_defaults() -> Result<()> {
    let runner = || tokio::process::Command::new(env!("CARGO_BIN_EXE_assay-runner"));
    let out = runner()
        .arg("--help")
        .env_remove("ASSAY_NATS_URL")
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--nats",
        "--job-file",
        "--job-stdin",
        "ASSAY_NATS_URL",
        assay_bus::DEFAULT_NATS_URL,
        "ASSAY_SHARD_JOB",
        "ASSAY_GIT_CREDENTIALS_DIR",
        "Exit codes",
    ] {
        assert!(help.contains(needle), "{needle} not in:\n{help}");
    }
    let out = runner().arg("--bogus").output().await?;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--bogus"), "{}", stderr(&out));
    let out = runner()
        .args(["--job-file", "x", "--job-stdin"])
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = runner().env_remove("ASSAY_SHARD_JOB").output().await?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no job: set ASSAY_SHARD_JOB"),
        "{}",
        stderr(&out)
    );

    let server = NatsServer::start();
    let bus = bus(&server).await?;
    let dir = tempfile::tempdir()?;
    let mut job = job("exec-file-arg");
    job.steps = vec![step("hello", "echo hi")];
    let path = dir.path().join("job.pb");
    std::fs::write(&path, job.encode_to_vec())?;
    let out = runner()
        .arg("--job-file")
        .arg(&path)
        .arg(format!("--nats={}", server.url()))
        .env_remove("ASSAY_NATS_URL")
        .env_remove("ASSAY_SHARD_JOB")
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let statuses: Vec<(String, ShardStatus)> = read(
        &bus,
        streams::STATUS,
        &subjects::shard_status("exec-file-arg", 0),
    )
    .await?;
    assert_eq!(
        statuses.last().map(|s| s.1.state()),
        Some(ShardState::Passed)
    );
    Ok(())
}
