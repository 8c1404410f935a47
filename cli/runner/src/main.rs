//! `assay-runner`: executes one shard. Spawned by the executor-launcher with `--job-stdin`
//! (a warm runner: the job arrives later as one base64 line on stdin) or with
//! `ASSAY_SHARD_JOB` (standard base64 of a protobuf `assay.v1.ShardJob`), and `ASSAY_NATS_URL`;
//! `--job-file PATH` (raw protobuf) and `--nats URL` for manual use. A job with `content.git`
//! reads its credentials from the directory `ASSAY_GIT_CREDENTIALS_DIR` names, if set
//! (`assay_runner::checkout::credentials`).
//!
//! Exit codes: 0 passed, 1 failed, 4 errored, 5 timed out (the job's timeout or its
//! execution's deadline passed; final status published in all four), 2 no final status
//! could be published or the arguments are wrong (reason on stderr), 3 the launcher went
//! away.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use assay_proto::ShardJob;
use clap::Parser;

/// Where the job comes from when neither `--job-file` nor `--job-stdin` is given.
const JOB_ENV: &str = "ASSAY_SHARD_JOB";

#[derive(Parser)]
#[command(
    version,
    about = "assay runner: executes one shard of an execution and reports it to NATS",
    after_help = "The job: --job-file PATH (raw protobuf assay.v1.ShardJob), --job-stdin, or else \
ASSAY_SHARD_JOB (standard base64 of it).\n\
content.git credentials: the directory ASSAY_GIT_CREDENTIALS_DIR names (files username and \
password, or ssh-privatekey); never passed to the steps.\n\
Exit codes: 0 passed, 1 failed, 4 errored, 5 timed out (final status published), \
2 no final status could be published or bad arguments, 3 the launcher went away."
)]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "ASSAY_NATS_URL", default_value = assay_bus::DEFAULT_NATS_URL, hide_env_values = true)]
    nats: String,
    /// Read the job from this file (raw protobuf assay.v1.ShardJob).
    #[arg(long, value_name = "PATH", conflicts_with = "job_stdin")]
    job_file: Option<PathBuf>,
    /// Start, get ready, then wait for the job as one base64 line on stdin (a warm runner).
    #[arg(long)]
    job_stdin: bool,
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

fn job_source(args: &Args) -> anyhow::Result<JobSource> {
    if let Some(path) = &args.job_file {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read job file {}", path.display()))?;
        return Ok(JobSource::Ready(Box::new(assay_runner::job::decode_bytes(
            &bytes,
        )?)));
    }
    if args.job_stdin {
        return Ok(JobSource::Stdin);
    }
    match std::env::var(JOB_ENV) {
        Ok(b64) => Ok(JobSource::Ready(Box::new(
            assay_runner::job::decode_base64(&b64)?,
        ))),
        Err(_) => bail!(
            "no job: set {JOB_ENV}, pass --job-file PATH or --job-stdin (see assay-runner --help)"
        ),
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // --help and --version print to stdout and exit 0; mistakes go to stderr, exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let nats_url = if args.nats.trim().is_empty() {
        assay_bus::DEFAULT_NATS_URL.to_string()
    } else {
        args.nats.clone()
    };
    let source = match job_source(&args) {
        Ok(source) => source,
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
    let job = match source {
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
    // First line of the shard's own output (what `kubectl logs` of a shard Pod shows first).
    eprintln!(
        "assay-runner: execution {} shard {}/{} attempt {} of workflow {}",
        job.execution_id,
        job.shard_index + 1,
        job.shard_count,
        job.attempt,
        job.workflow
    );
    match runtime.block_on(assay_runner::run(job, nats_url)) {
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
