//! Command-line flags (clap derive).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// NATS URL of the local stack (`assay up` listens on 4223 so that it never clashes with a
/// system nats-server on 4222).
pub const DEFAULT_NATS: &str = assay_bus::DEFAULT_NATS_URL;
/// The result-aggregator's gRPC API.
pub const DEFAULT_API: &str = "http://127.0.0.1:7070";

/// assay: decoupled test orchestration.
#[derive(Debug, Parser)]
#[command(name = "assay", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// NATS server URL.
    #[arg(long, global = true, env = "ASSAY_NATS_URL", default_value = DEFAULT_NATS)]
    pub nats: String,
    /// Result API (the result-aggregator's gRPC address).
    #[arg(long, global = true, env = "ASSAY_API", default_value = DEFAULT_API)]
    pub api: String,
    /// Directory of TestWorkflow / TestTrigger definitions.
    #[arg(long, global = true, env = "ASSAY_WORKFLOWS", default_value = ".assay")]
    pub workflows: PathBuf,
    /// File holding the bearer token sent to the result API (else $ASSAY_TOKEN); `assay up`
    /// requires it on its gRPC API and HTTP routes.
    #[arg(long, global = true, env = "ASSAY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the result API's TLS certificate, for an https:// --api
    /// (without it, the system's roots).
    #[arg(long, global = true, env = "ASSAY_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to an https:// --api that asks for one (mutual
    /// TLS), with --key-file.
    #[arg(long, global = true, env = "ASSAY_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, global = true, env = "ASSAY_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Whether `--nats` was given on the command line (then `up` uses that server).
    #[arg(skip)]
    pub nats_given: bool,
}

impl Cli {
    /// Parses the command line, noting which flags were given explicitly.
    pub fn parse_noting_sources() -> Cli {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().get_matches();
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let given = |m: &clap::ArgMatches| {
            m.value_source("nats") == Some(clap::parser::ValueSource::CommandLine)
        };
        cli.global.nats_given =
            given(&matches) || matches.subcommand().is_some_and(|(_, sub)| given(sub));
        cli
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check definitions and list the workflows and triggers found.
    Validate(ValidateArgs),
    /// Run the local stack (nats-server and the four services) in one process.
    Up(Box<UpArgs>),
    /// Run a workflow and follow it to the end.
    Run(RunArgs),
    /// Run the failed tests of a finished execution again (or its whole shard plan).
    Rerun(RerunArgs),
    /// Show workflows, executions or one execution.
    #[command(subcommand)]
    Get(GetCommand),
    /// Print the logs of an execution.
    Logs(LogsArgs),
    /// Publish a trigger event.
    Trigger(TriggerArgs),
    /// Duration and outcome history of a workflow's tests (what the planner splits by).
    History(HistoryArgs),
    /// Cancel a running execution: its runners stop and its shards end cancelled.
    Cancel(CancelArgs),
    /// Print the TestWorkflow and TestTrigger CustomResourceDefinitions (YAML).
    Crds(CrdsArgs),
}

#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Write one file per CRD (`testworkflows.assay.dev.yaml`, `testtriggers.assay.dev.yaml`)
    /// and a `kustomization.yaml` listing them into DIR, instead of printing the CRDs.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Execution id.
    pub id: String,
    /// Why (shown as the shards' reason).
    #[arg(long, default_value = "cancelled by a user (assay cancel)")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Workflow name.
    pub workflow: String,
    /// One test id (e.g. `tests.test_cart::test_add_one`); all tests when absent.
    pub test: Option<String>,
    /// Most tests shown in the table (slowest first; 0 for all).
    #[arg(long, default_value_t = 30)]
    pub limit: usize,
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// File or directory to validate (default: --workflows).
    pub path: Option<PathBuf>,
}

/// `assay up`: every option of every service, with the flag names and environment
/// variables of the service binaries (`assay-result-aggregator --help`, …), so that a
/// setting works the same whether the services run together or apart.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory for the NATS store, the result database and logs.
    #[arg(long, default_value = ".assay/data")]
    pub data: PathBuf,
    /// Port of the nats-server started by `up`.
    #[arg(long, default_value_t = 4223)]
    pub nats_port: u16,
    /// Do not start a nats-server; use the one at --nats (implied when --nats is given).
    #[arg(long)]
    pub external_nats: bool,

    /// TLS certificate chain (PEM) of both APIs: the gRPC result API and the trigger-watcher's
    /// HTTP serve TLS with --tls-key.
    #[arg(long, env = "ASSAY_TLS_CERT", help_heading = "TLS (both APIs)")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, env = "ASSAY_TLS_KEY", help_heading = "TLS (both APIs)")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) of client certificates: every gRPC client, and the HTTP routes
    /// /v1/events, /v1/workflows/{name}/run and /metrics, need one signed by it (mutual TLS).
    #[arg(long, env = "ASSAY_TLS_CLIENT_CA", help_heading = "TLS (both APIs)")]
    pub tls_client_ca: Option<PathBuf>,

    /// Address of the result API (gRPC).
    #[arg(
        long,
        env = "ASSAY_AGGREGATOR__GRPC",
        default_value_t = assay_result_aggregator::Options::default().grpc,
        help_heading = "Result-aggregator"
    )]
    pub grpc: SocketAddr,
    /// SQLite database file (default: DATA/results.db).
    #[arg(
        long,
        visible_alias = "aggregator-database",
        env = "ASSAY_AGGREGATOR__DATABASE",
        help_heading = "Result-aggregator"
    )]
    pub database: Option<PathBuf>,
    /// Extra time past an execution's timeout before the aggregator declares it timed out.
    #[arg(
        long,
        env = "ASSAY_AGGREGATOR__TIMEOUT_GRACE",
        default_value = "10s",
        value_parser = parse_duration,
        help_heading = "Result-aggregator"
    )]
    pub aggregator_timeout_grace: Duration,
    /// How often the aggregator checks for executions past their timeout.
    #[arg(
        long,
        env = "ASSAY_AGGREGATOR__SWEEP_EVERY",
        default_value = "2s",
        value_parser = parse_positive_duration,
        help_heading = "Result-aggregator"
    )]
    pub aggregator_sweep_every: Duration,
    /// How long an ended execution is kept, with its shards and test cases (`30d`, `12h`;
    /// `0s` keeps everything). The duration history of each test is kept regardless.
    #[arg(
        long,
        env = "ASSAY_AGGREGATOR__RETENTION",
        default_value = "30d",
        value_parser = parse_duration,
        help_heading = "Result-aggregator"
    )]
    pub retention: Duration,

    /// Trigger events (and run requests) the scheduler handles at once.
    #[arg(
        long,
        visible_alias = "scheduler-concurrency",
        env = "ASSAY_SCHEDULER_CONCURRENCY",
        default_value_t = assay_scheduler::Options::default().concurrency,
        help_heading = "Scheduler"
    )]
    pub concurrency: usize,
    /// Timeout of an execution whose workflow sets none (`24h`, `90m`; `0s`: no limit), so
    /// that nothing stays queued or running forever.
    #[arg(
        long,
        env = "ASSAY_SCHEDULER__MAX_EXECUTION_TIME",
        default_value = "24h",
        value_parser = parse_duration,
        help_heading = "Scheduler"
    )]
    pub max_execution_time: Duration,

    /// Shards run at once (default: number of CPUs).
    #[arg(
        long,
        env = "ASSAY_LAUNCHER__CAPACITY",
        help_heading = "Executor-launcher"
    )]
    pub capacity: Option<usize>,
    /// The assay-runner binary (default: $ASSAY_RUNNER, else next to this executable).
    #[arg(long, env = "ASSAY_RUNNER", help_heading = "Executor-launcher")]
    pub runner: Option<PathBuf>,
    /// Runners started ahead of time, waiting for a job (0: start each when its job comes).
    #[arg(
        long,
        env = "ASSAY_LAUNCHER__WARM",
        default_value_t = 2,
        help_heading = "Executor-launcher"
    )]
    pub warm: usize,
    /// How long a job held by a launcher that stopped acknowledging it waits before the
    /// server hands it out again (`30s`, `2m`).
    #[arg(
        long,
        env = "ASSAY_LAUNCHER__ACK_WAIT",
        default_value = "30s",
        value_parser = parse_positive_duration,
        help_heading = "Executor-launcher"
    )]
    pub ack_wait: Duration,

    /// Address of the trigger-watcher's HTTP endpoint (events, run requests, webhooks).
    #[arg(
        long,
        env = "ASSAY_TRIGGER_WATCHER__HTTP",
        default_value_t = assay_trigger_watcher::Options::default().http,
        help_heading = "Trigger-watcher"
    )]
    pub http: SocketAddr,
    #[command(flatten, next_help_heading = "Trigger-watcher")]
    pub watcher: assay_trigger_watcher::WatcherArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of the workflow to run.
    pub workflow: String,
    /// Override a workflow parameter (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Place among executions waiting for the same concurrency slot: higher starts first
    /// (-1000 to 1000; default: the workflow's `concurrency.priority`).
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    pub priority: Option<i32>,
    /// Label kept in the execution's provenance (repeatable), e.g. `--label branch=main
    /// --label sha=$GITHUB_SHA` from a CI job: filter with `assay get executions -l`, read
    /// by steps as ASSAY_* variables and `{{ event.labels.<key> }}`.
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Publish the request without checking first that the workflow exists (in
    /// --workflows, else among the result API's executions).
    #[arg(long)]
    pub unchecked: bool,
    #[command(flatten)]
    pub follow: FollowArgs,
}

/// How `run` and `rerun` follow the execution they start.
#[derive(Debug, Clone, Args)]
pub struct FollowArgs {
    /// Stream the shards' log lines while it runs.
    #[arg(long, short)]
    pub watch: bool,
    /// Print the execution id and return at once.
    #[arg(long, short, conflicts_with = "watch")]
    pub detach: bool,
    /// Stop waiting after this long (e.g. 30s, 10m); the execution keeps running.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct RerunArgs {
    /// Id of the finished execution to rerun.
    pub execution: String,
    /// Rerun only the tests that failed or errored (the default unless --same-plan is given).
    #[arg(long)]
    pub failed: bool,
    /// Replay the original shard plan: every shard runs the tests it ran before (with
    /// --failed, only its failed or errored ones).
    #[arg(long)]
    pub same_plan: bool,
    #[command(flatten)]
    pub follow: FollowArgs,
}

impl RerunArgs {
    /// Whether only failed and errored tests are rerun: `--failed`, or no `--same-plan`.
    pub fn failed_only(&self) -> bool {
        self.failed || !self.same_plan
    }
}

#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// Workflows of the local catalog (--workflows).
    Workflows {
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Recent executions.
    Executions {
        /// Only executions of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Most executions shown.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only executions whose cause carries this label (repeatable; all must match),
        /// e.g. `-l branch=main -l repository=acme/shop`.
        #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Only executions caused by this source (`github`, `gitlab`, `cron`, `run`, ...).
        #[arg(long)]
        source: Option<String>,
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Recent trigger events and run requests, newest first, with the executions they
    /// started or why nothing ran.
    Events {
        /// Only events handled within this long (e.g. 90s, 30m, 1h, 2d).
        #[arg(long, value_parser = parse_since, value_name = "DURATION")]
        since: Option<Duration>,
        /// Only events from this source (`github`, `cron`, `run`, ...).
        #[arg(long)]
        source: Option<String>,
        /// Most events shown (0: the server's default, 50).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One execution with its shards and failing tests.
    Execution {
        id: String,
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Execution id.
    pub id: String,
    /// Keep printing new lines until the execution ends.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// Event source (subject assay.v1.events.<source>).
    #[arg(long)]
    pub source: String,
    /// Event type, e.g. push, deploy.
    #[arg(long = "type", default_value = "")]
    pub r#type: String,
    /// Event label (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// JSON payload.
    #[arg(long)]
    pub payload: Option<String>,
}

/// Output format of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
    Name,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    assay_spec::parse_duration(s)
}

/// A duration longer than zero.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match assay_spec::parse_duration(s)? {
        d if d.is_zero() => Err(format!("\"{s}\" is zero; give a duration longer than 0s")),
        d => Ok(d),
    }
}

/// `--since`: a duration with a unit (s, m, h, d), not zero.
pub fn parse_since(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "\"{s}\" is not a duration; write a number with a unit: s, m, h or d (e.g. 90s, 30m, 1h, 2d)"
        )
    };
    match assay_spec::parse_duration(s) {
        Ok(d) if d.is_zero() => Err(format!(
            "\"{s}\" is zero; give how far back to look, e.g. 1h"
        )),
        Ok(d) => Ok(d),
        Err(_) => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags() {
        let cli = Cli::try_parse_from([
            "assay",
            "run",
            "e2e",
            "--set",
            "a=1",
            "--set",
            "b=x=y",
            "--watch",
            "--timeout",
            "1m30s",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(run.workflow, "e2e");
        assert_eq!(run.set, vec!["a=1", "b=x=y"]);
        assert!(run.follow.watch);
        assert_eq!(run.follow.timeout, Some(Duration::from_secs(90)));
    }

    fn rerun(args: &[&str]) -> RerunArgs {
        let cli = Cli::try_parse_from(["assay", "rerun"].iter().chain(args)).unwrap();
        let Command::Rerun(rerun) = cli.command else {
            panic!("expected rerun")
        };
        rerun
    }

    #[test]
    fn rerun_flags() {
        let r = rerun(&["01J", "--failed", "--timeout", "60s", "--watch"]);
        assert_eq!(r.execution, "01J");
        assert!(r.failed_only() && !r.same_plan);
        assert!(r.follow.watch);
        assert_eq!(r.follow.timeout, Some(Duration::from_secs(60)));
        // Failed tests by default; --same-plan alone replays every test of the plan.
        assert!(rerun(&["01J"]).failed_only());
        assert!(!rerun(&["01J", "--same-plan"]).failed_only());
        assert!(rerun(&["01J", "--same-plan", "--failed"]).failed_only());
        assert!(rerun(&["01J", "--detach"]).follow.detach);
        assert!(Cli::try_parse_from(["assay", "rerun", "01J", "--watch", "--detach"]).is_err());
        assert!(Cli::try_parse_from(["assay", "rerun"]).is_err());
    }

    #[test]
    fn since_takes_s_m_h_d() {
        assert_eq!(parse_since("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_since("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_since("2d"), Ok(Duration::from_secs(2 * 86_400)));
        for bad in ["", "1", "h", "1w", "-1h", "soon"] {
            let err = parse_since(bad).unwrap_err();
            assert!(err.contains("s, m, h or d"), "{bad}: {err}");
        }
        assert!(parse_since("0s").unwrap_err().contains("zero"));
        let err = Cli::try_parse_from(["assay", "get", "events", "--since", "1y"]).unwrap_err();
        assert!(err.to_string().contains("1y"), "{err}");
    }

    #[test]
    fn label_filters_repeat() {
        let cli = Cli::try_parse_from([
            "assay",
            "get",
            "executions",
            "-l",
            "branch=main",
            "--label",
            "sha=abc",
            "--source",
            "github",
        ])
        .unwrap();
        let Command::Get(GetCommand::Executions { labels, source, .. }) = cli.command else {
            panic!("expected get executions")
        };
        assert_eq!(labels, ["branch=main", "sha=abc"]);
        assert_eq!(source.as_deref(), Some("github"));
        let cli = Cli::try_parse_from(["assay", "run", "e2e", "--label", "branch=main"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(run.labels, ["branch=main"]);
    }

    #[test]
    fn bad_timeout_is_rejected() {
        assert!(Cli::try_parse_from(["assay", "run", "e2e", "--timeout", "soon"]).is_err());
    }

    #[test]
    fn detach_conflicts_with_watch() {
        assert!(Cli::try_parse_from(["assay", "run", "e2e", "--watch", "--detach"]).is_err());
    }

    #[test]
    fn global_flags_anywhere() {
        let cli = Cli::try_parse_from([
            "assay",
            "get",
            "executions",
            "--api",
            "http://h:1",
            "-o",
            "json",
            "--limit",
            "5",
        ])
        .unwrap();
        assert_eq!(cli.global.api, "http://h:1");
        let Command::Get(GetCommand::Executions { limit, output, .. }) = cli.command else {
            panic!("expected get executions")
        };
        assert_eq!(limit, 5);
        assert_eq!(output, Output::Json);
    }

    #[test]
    fn up_defaults() {
        let cli = Cli::try_parse_from(["assay", "up"]).unwrap();
        let Command::Up(up) = cli.command else {
            panic!("expected up")
        };
        assert_eq!(up.nats_port, 4223);
        assert_eq!(up.grpc.to_string(), "127.0.0.1:7070");
        assert_eq!(up.http.to_string(), "127.0.0.1:7071");
        assert!(!up.external_nats);
        // One default NATS URL: the server `up` starts is the one every other command and
        // service binary connects to by default.
        assert_eq!(
            DEFAULT_NATS,
            format!("nats://127.0.0.1:{}", up.nats_port),
            "assay up's --nats-port and assay_bus::DEFAULT_NATS_URL disagree"
        );
        assert_eq!(DEFAULT_API, format!("http://{}", up.grpc));
        assert_eq!(up.concurrency, 1024);
        assert_eq!((up.warm, up.ack_wait), (2, Duration::from_secs(30)));
        // The services' own defaults.
        assert_eq!(
            up.retention,
            assay_result_aggregator::Options::default().retention
        );
        assert_eq!(
            up.max_execution_time,
            assay_scheduler::Options::default().max_execution_time
        );
        let aggregator = assay_result_aggregator::Options::default();
        assert_eq!(
            (up.aggregator_timeout_grace, up.aggregator_sweep_every),
            (aggregator.timeout_grace, aggregator.sweep_every)
        );
        let launcher = assay_executor_launcher::Options::default();
        assert_eq!((up.warm, up.ack_wait), (launcher.warm, launcher.ack_wait));
        assert_eq!(
            up.watcher.max_body_bytes,
            assay_trigger_watcher::DEFAULT_MAX_BODY_BYTES
        );
    }

    #[test]
    fn up_takes_the_services_flags() {
        let cli = Cli::try_parse_from([
            "assay",
            "up",
            "--github-secret-file",
            "/s",
            "--replay-window",
            "1h",
            "--max-body-bytes",
            "10",
            "--aggregator-database",
            "/db",
            "--scheduler-concurrency",
            "8",
            "--capacity",
            "3",
            "--ack-wait",
            "1m",
            "--tls-cert",
            "/c",
            "--tls-key",
            "/k",
        ])
        .unwrap();
        let Command::Up(up) = cli.command else {
            panic!("expected up")
        };
        assert_eq!(
            up.watcher.github_secret_file.as_deref(),
            Some(std::path::Path::new("/s"))
        );
        assert_eq!(up.watcher.replay_window, Duration::from_secs(3600));
        assert_eq!(up.watcher.max_body_bytes, 10);
        assert_eq!(up.database.as_deref(), Some(std::path::Path::new("/db")));
        assert_eq!((up.concurrency, up.capacity), (8, Some(3)));
        assert_eq!(up.ack_wait, Duration::from_secs(60));
        assert!(up.tls_cert.is_some() && up.tls_key.is_some());
    }
}
