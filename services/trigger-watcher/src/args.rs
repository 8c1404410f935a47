//! The trigger-watcher's own flags (webhooks and body limits), shared by the
//! `assay-trigger-watcher` binary and `assay up` (flattened there, same names and
//! environment variables), so that one setting works the same in both.

use std::path::PathBuf;
use std::time::Duration;

use assay_auth::Secret;

use crate::{Result, WebhookOptions};

/// Default of `--max-body-bytes`: bodies of `POST /v1/events` and
/// `POST /v1/workflows/{name}/run`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default of `--max-webhook-bytes` (GitHub caps its payloads at 25 MB).
pub const DEFAULT_MAX_WEBHOOK_BYTES: usize = 25 * 1024 * 1024;

/// Webhook secrets and settings, and the largest bodies accepted.
#[derive(Debug, Clone, clap::Args)]
pub struct WatcherArgs {
    /// File holding GitHub's webhook secret (else $ASSAY_TRIGGER_WATCHER__GITHUB_SECRET);
    /// none: /v1/webhooks/github is off.
    #[arg(long, env = "ASSAY_TRIGGER_WATCHER__GITHUB_SECRET_FILE")]
    pub github_secret_file: Option<PathBuf>,
    /// File holding GitLab's secret token (else $ASSAY_TRIGGER_WATCHER__GITLAB_TOKEN);
    /// none: /v1/webhooks/gitlab is off.
    #[arg(long, env = "ASSAY_TRIGGER_WATCHER__GITLAB_TOKEN_FILE")]
    pub gitlab_token_file: Option<PathBuf>,
    /// File holding the generic webhook's HMAC-SHA256 secret (else
    /// $ASSAY_TRIGGER_WATCHER__WEBHOOK_SECRET); none: /v1/webhooks/generic is off.
    #[arg(long, env = "ASSAY_TRIGGER_WATCHER__WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Header of the generic webhook's signature (`sha256=<hex>` or bare hex).
    #[arg(
        long,
        env = "ASSAY_TRIGGER_WATCHER__WEBHOOK_SIGNATURE_HEADER",
        default_value = "X-Signature-256"
    )]
    pub webhook_signature_header: String,
    /// Header of the generic webhook's delivery id.
    #[arg(
        long,
        env = "ASSAY_TRIGGER_WATCHER__WEBHOOK_DELIVERY_HEADER",
        default_value = "X-Delivery-Id"
    )]
    pub webhook_delivery_header: String,
    /// A webhook delivery id seen within this window is not published again.
    #[arg(long, env = "ASSAY_TRIGGER_WATCHER__REPLAY_WINDOW", default_value = "24h", value_parser = assay_spec::parse_duration)]
    pub replay_window: Duration,
    /// Largest body of POST /v1/events and /v1/workflows/{name}/run, in bytes (larger: 413).
    #[arg(long, env = "ASSAY_TRIGGER_WATCHER__MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES, value_parser = parse_limit)]
    pub max_body_bytes: usize,
    /// Largest webhook body, in bytes (larger: 413).
    #[arg(long, env = "ASSAY_TRIGGER_WATCHER__MAX_WEBHOOK_BYTES", default_value_t = DEFAULT_MAX_WEBHOOK_BYTES, value_parser = parse_limit)]
    pub max_webhook_bytes: usize,
    /// HTTP requests handled at once; more are answered 503 at once.
    #[arg(long, env = "ASSAY_TRIGGER_WATCHER__MAX_IN_FLIGHT", default_value_t = crate::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// An HTTP request not answered within this (NATS unreachable, say) gets 503.
    #[arg(long, env = "ASSAY_TRIGGER_WATCHER__REQUEST_TIMEOUT", default_value = "30s", value_parser = assay_spec::parse_duration)]
    pub request_timeout: std::time::Duration,
    /// Watch the Kubernetes cluster (KUBECONFIG, else the in-cluster service account) for
    /// the TestTriggers with on.kubernetes; without it they never fire (and a warning says so).
    #[arg(long, env = "ASSAY_TRIGGER_WATCHER__WATCH_CLUSTER")]
    pub watch_cluster: bool,
    /// How long the key of a fired Kubernetes event is kept: within it the same rollout,
    /// change or deletion never fires again, across relists, restarts and replicas.
    #[arg(long, env = "ASSAY_TRIGGER_WATCHER__KUBE_FIRED_TTL", default_value = "7d", value_parser = assay_spec::parse_duration)]
    pub kube_fired_ttl: Duration,
}

fn parse_limit(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("the limit must be at least 1 byte".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "\"{text}\" is not a number of bytes; write e.g. 1048576"
        )),
    }
}

impl WatcherArgs {
    /// The cluster watch settings (`--watch-cluster`, `--kube-fired-ttl`).
    pub fn cluster_options(&self) -> crate::ClusterOptions {
        crate::ClusterOptions {
            enabled: self.watch_cluster,
            fired_ttl: self.kube_fired_ttl,
            ..Default::default()
        }
    }

    /// The webhook settings, with the secrets read from their files or variables.
    pub fn webhook_options(&self) -> Result<WebhookOptions> {
        let secret = |what, file: &Option<PathBuf>, env| Secret::load(what, file.as_deref(), env);
        Ok(WebhookOptions {
            github_secret: secret(
                "GitHub webhook secret",
                &self.github_secret_file,
                "ASSAY_TRIGGER_WATCHER__GITHUB_SECRET",
            )?,
            gitlab_token: secret(
                "GitLab webhook token",
                &self.gitlab_token_file,
                "ASSAY_TRIGGER_WATCHER__GITLAB_TOKEN",
            )?,
            generic_secret: secret(
                "webhook secret",
                &self.webhook_secret_file,
                "ASSAY_TRIGGER_WATCHER__WEBHOOK_SECRET",
            )?,
            generic_signature_header: self.webhook_signature_header.clone(),
            generic_delivery_header: self.webhook_delivery_header.clone(),
            replay_window: self.replay_window,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: WatcherArgs,
    }

    #[test]
    fn defaults_and_limits() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.args.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(cli.args.max_webhook_bytes, DEFAULT_MAX_WEBHOOK_BYTES);
        assert_eq!(cli.args.replay_window, Duration::from_secs(24 * 3600));
        let cli = Cli::try_parse_from(["x", "--max-body-bytes", "10"]).unwrap();
        assert_eq!(cli.args.max_body_bytes, 10);
        assert!(Cli::try_parse_from(["x", "--max-body-bytes", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--max-body-bytes", "1MB"]).is_err());
        assert!(!cli.args.cluster_options().enabled);
        let cli = Cli::try_parse_from(["x", "--watch-cluster", "--kube-fired-ttl", "2h"]).unwrap();
        let c = cli.args.cluster_options();
        assert!(c.enabled);
        assert_eq!(c.fired_ttl, Duration::from_secs(7200));
    }
}
