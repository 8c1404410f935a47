//! `assay-runner`: executes one shard. Spawned by the executor-launcher with
//! `ASSAY_SHARD_JOB` (standard base64 of a protobuf `assay.v1.ShardJob`) and
//! `ASSAY_NATS_URL`; `--job-file PATH` (raw protobuf) and `--nats URL` for manual use.
//!
//! Exit codes: 0 passed, 1 failed, 4 errored, 5 timed out (the job's timeout or its
//! execution's deadline passed; final status published in all four), 2 no final status
//! could be published (reason on stderr), 3 the launcher went away.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use assay_proto::ShardJob;

const USAGE: &str = "usage: assay-runner [--job-file PATH | --job-stdin] [--nats URL]
  job:  --job-file PATH (raw protobuf assay.v1.ShardJob), ASSAY_SHARD_JOB (base64 of it), or
        --job-stdin: start, get ready, then wait for one base64 line on stdin (a warm runner)
  nats: --nats URL or ASSAY_NATS_URL (default nats://127.0.0.1:4222)";

struct Args {
    job: JobSource,
    nats_url: String,
}

enum JobSource {
    Ready(Box<ShardJob>),
    /// A warm runner: the job arrives later as one base64 line on stdin.
    Stdin,
}

/// Waits for the job of a warm runner. `None`: stdin closed first (the launcher went away
/// or no longer needs this runner).
fn job_from_stdin() -> anyhow::Result<Option<ShardJob>> {
    let mut line = String::new();
    let n = std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the job from stdin")?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(assay_runner::job::decode_base64(line.trim())?))
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut job_file = None;
    let mut stdin = false;
    let mut nats = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--job-file" => job_file = Some(value("--job-file")?),
            "--nats" => nats = Some(value("--nats")?),
            "--job-stdin" => stdin = true,
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let job = match job_file {
        Some(path) => {
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read job file {path}"))?;
            JobSource::Ready(Box::new(assay_runner::job::decode_bytes(&bytes)?))
        }
        None if stdin => JobSource::Stdin,
        None => match std::env::var("ASSAY_SHARD_JOB") {
            Ok(b64) => JobSource::Ready(Box::new(assay_runner::job::decode_base64(&b64)?)),
            Err(_) => {
                bail!("no job: set ASSAY_SHARD_JOB, pass --job-file PATH or --job-stdin\n{USAGE}")
            }
        },
    };
    let nats_url = nats
        .or_else(|| {
            std::env::var("ASSAY_NATS_URL")
                .ok()
                .filter(|u| !u.is_empty())
        })
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_string());
    Ok(Some(Args { job, nats_url }))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("assay-runner: {e:#}");
            return ExitCode::from(2);
        }
    };
    assay_telemetry::init("assay-runner", "warn");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("assay-runner: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let job = match args.job {
        JobSource::Ready(job) => *job,
        JobSource::Stdin => match job_from_stdin() {
            Ok(Some(job)) => job,
            Ok(None) => return ExitCode::from(3),
            Err(e) => {
                eprintln!("assay-runner: {e:#}");
                return ExitCode::from(2);
            }
        },
    };
    match runtime.block_on(assay_runner::run(job, args.nats_url)) {
        Ok(outcome) => {
            if !outcome.reason.is_empty() {
                eprintln!(
                    "assay-runner: shard {:?}: {}",
                    outcome.state, outcome.reason
                );
            }
            ExitCode::from(outcome.exit_code() as u8)
        }
        Err(e @ assay_runner::Error::Orphaned { .. }) => {
            eprintln!("assay-runner: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("assay-runner: {e}");
            ExitCode::from(2)
        }
    }
}
