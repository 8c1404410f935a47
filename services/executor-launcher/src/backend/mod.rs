//! Where shard attempts run. The launcher decides *whether* an attempt runs (see
//! [`crate::admission`]) and hands *how* to a [`Backend`]: start an attempt, find one that
//! already runs, wait for its end, kill it. What differs between a local child process and
//! a Kubernetes Pod lives behind this seam; the job's bookkeeping (acks, statuses,
//! retries, cancellations, timeouts) stays in the launcher.

pub mod kubernetes;
pub mod local;

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use assay_bus::NatsOptions;
use assay_proto::{ShardJob, ShardState};

use crate::Result;

/// Runs shard attempts somewhere: child processes of this launcher, Pods of a cluster.
pub trait Backend: Send + Sync + 'static {
    /// A running attempt.
    type Attempt: Attempt;

    /// Starts the attempt `job` is numbered as (its `attempt`), with `job`'s working
    /// directory and environment, and a runner that reaches NATS with `nats`. An error
    /// means nothing was started (the job is retried later).
    fn start(
        &self,
        job: &ShardJob,
        nats: &RunnerNats,
    ) -> impl Future<Output = Result<Self::Attempt>> + Send;

    /// The attempt an earlier life of a launcher started for this same job message (a
    /// redelivery is numbered as the next attempt, so this looks for any attempt from the
    /// job's published `job_attempt` up to its `attempt`) and that still exists; `None`
    /// when there is none or the backend cannot tell (a child process does not outlive
    /// its launcher).
    fn find(&self, job: &ShardJob) -> impl Future<Output = Result<Option<Self::Attempt>>> + Send;

    /// Attempts this backend runs at once.
    fn capacity(&self) -> usize;

    /// How many times one shard is retried after infrastructure failures its attempts
    /// flag as worth retrying elsewhere ([`Attempt::retry_elsewhere`]); 0 for the local
    /// backend (a runner that dies there is not the machine's fault).
    fn infra_retries(&self) -> u32 {
        0
    }

    /// Whether an attempt goes on without its launcher (a Pod), so a launcher that stops
    /// leaves it running for the next one to find instead of killing it.
    fn outlives_launcher(&self) -> bool {
        false
    }
}

/// An infrastructure failure that another try, elsewhere, may get past.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryElsewhere {
    /// The node the attempt failed on, kept out of the next attempt's placement.
    pub avoid_node: Option<String>,
}

/// One running attempt of a shard. Shown as where it runs (`process 4242 (warm)`).
pub trait Attempt: Send + fmt::Display + 'static {
    /// Waits for the attempt to end on its own and says how. Cancel-safe: when the wait is
    /// given up (timeout, cancellation), the attempt goes on until [`Attempt::kill`].
    fn wait(&mut self) -> impl Future<Output = Outcome> + Send;

    /// Stops whatever is left of the attempt (the runner and everything it started) and
    /// returns once it is gone. Called at every attempt's end, so nothing of a shard
    /// outlives it; harmless when the attempt already ended.
    fn kill(&mut self) -> impl Future<Output = ()> + Send;

    /// After [`Attempt::wait`] ended in [`Outcome::Infrastructure`]: whether the failure is
    /// one a retry on another node may get past (OOMKilled, evicted, node lost, ...).
    fn retry_elsewhere(&self) -> Option<RetryElsewhere> {
        None
    }

    /// For an attempt found running ([`Backend::find`]): the attempt number its runner was
    /// started with, when the backend knows it.
    fn adopted_attempt(&self) -> Option<u32> {
        None
    }
}

/// How an attempt ended on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The runner published the attempt's final status itself and exited: passed, failed
    /// (test failures), errored (a step or the runner's own error) or timed out.
    Reported(ShardState),
    /// The attempt ended without its runner's report, for this reason: an infrastructure
    /// failure (the runner was killed by a signal, exited unexpectedly, lost its process or
    /// Pod). Kept apart from test failures: the launcher ends the shard errored (or
    /// cancelled, when its execution was cancelled meanwhile) with the reason.
    Infrastructure(String),
}

/// The identity of one attempt of one shard. Deterministic, so a launcher that starts again
/// after a crash can find an attempt its earlier life started.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttemptId {
    pub execution: String,
    pub shard: u32,
    pub attempt: u32,
}

impl AttemptId {
    /// The attempt `job` is numbered as.
    pub fn of(job: &ShardJob) -> AttemptId {
        AttemptId {
            execution: job.execution_id.clone(),
            shard: job.shard_index,
            attempt: job.attempt,
        }
    }
}

impl fmt::Display for AttemptId {
    /// `<execution>/<shard>/<attempt>`, the attempt's business key on the bus.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.execution, self.shard, self.attempt)
    }
}

/// How a runner reaches NATS: the environment variables it reads (`ASSAY_NATS_URL` and,
/// when the launcher was given credentials in code, those; from the environment they are
/// inherited anyway).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunnerNats {
    pub env: Vec<(String, String)>,
    /// Credentials minted for this attempt alone (operator mode, see
    /// [`assay_bus::runner_jwt`]): the backend hands them to the runner as a file in
    /// `ASSAY_NATS_CREDS`, in place of any other credentials.
    pub creds: Option<RunnerCreds>,
}

/// The text of a minted credentials file. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct RunnerCreds(pub std::sync::Arc<str>);

impl fmt::Debug for RunnerCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunnerCreds(..)")
    }
}

/// The name of the credentials file a runner reads its minted credentials from.
pub const RUNNER_CREDS_FILE: &str = "runner.creds";

impl RunnerNats {
    /// The settings that reach NATS as a launcher connected with `nats` does.
    pub fn like(nats: &NatsOptions) -> RunnerNats {
        let mut env = vec![("ASSAY_NATS_URL".to_string(), nats.url.clone())];
        env.extend(nats.auth.env_vars());
        RunnerNats { env, creds: None }
    }

    /// These settings for one attempt of `job`, with credentials minted by `signer`: no
    /// other credentials of the launcher's go along (TLS settings do).
    pub fn minted(
        &self,
        signer: &assay_bus::runner_jwt::Signer,
        job: &ShardJob,
    ) -> assay_bus::Result<RunnerNats> {
        let creds = signer.mint_runner(job, assay_bus::now_ms())?;
        Ok(RunnerNats {
            env: self
                .env
                .iter()
                .filter(|(k, _)| !assay_bus::auth::CREDENTIAL_VARS.contains(&k.as_str()))
                .cloned()
                .collect(),
            creds: Some(RunnerCreds(creds.file_text().into())),
        })
    }
}

/// Which backend runs the shards (`--backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// `assay-runner` child processes of the launcher, each in its own process group.
    #[default]
    Local,
    /// One Pod per shard attempt, through the Kubernetes API.
    Kubernetes,
}

impl BackendKind {
    /// Every accepted kind.
    pub const ALL: &[BackendKind] = &[BackendKind::Local, BackendKind::Kubernetes];

    /// The name the `--backend` flag takes.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Kubernetes => "kubernetes",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = String;

    /// Parses a `--backend` value; an unknown one is refused with the accepted names.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        BackendKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let accepted: Vec<&str> = BackendKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown backend \"{s}\" (accepted: {})",
                    accepted.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip_and_unknown_ones_name_the_accepted() {
        for kind in BackendKind::ALL {
            assert_eq!(kind.name().parse::<BackendKind>(), Ok(*kind));
        }
        assert_eq!(
            "pods".parse::<BackendKind>(),
            Err("unknown backend \"pods\" (accepted: local, kubernetes)".to_string())
        );
        assert!("Local".parse::<BackendKind>().is_err());
    }

    #[test]
    fn an_attempt_is_named_by_its_business_key() {
        let job = ShardJob {
            execution_id: "01EXEC".into(),
            shard_index: 3,
            attempt: 2,
            ..Default::default()
        };
        assert_eq!(AttemptId::of(&job).to_string(), "01EXEC/3/2");
    }
}
