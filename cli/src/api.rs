//! The result API (the result-aggregator's gRPC service), with errors that say what to do.

use std::time::Duration;

use anyhow::{Result, anyhow};
use assay_proto::results_client::ResultsClient;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

pub type Client = ResultsClient<Channel>;

fn unreachable(api: &str, detail: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "cannot reach the result API at {api}: is `assay up` running? (set --api or ASSAY_API) ({detail})"
    )
}

/// Connects to `api` (e.g. `http://127.0.0.1:7070`).
pub async fn connect(api: &str) -> Result<Client> {
    let endpoint = Endpoint::from_shared(api.to_string())
        .map_err(|e| {
            anyhow!("invalid result API address {api:?}: {e}; write it as http://HOST:PORT")
        })?
        .connect_timeout(Duration::from_secs(3));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| unreachable(api, error_chain(&e)))?;
    Ok(ResultsClient::new(channel))
}

/// Turns a failed call into a message that says what to do.
pub fn call_error(api: &str, what: &str, status: &tonic::Status) -> anyhow::Error {
    match status.code() {
        Code::Unavailable => unreachable(api, status.message()),
        Code::NotFound if status.message().contains("assay get") => {
            anyhow!("{what}: {}", status.message())
        }
        Code::NotFound => anyhow!(
            "{what}: {}; list recent executions with `assay get executions`",
            status.message()
        ),
        Code::InvalidArgument => anyhow!("{what}: {}", status.message()),
        code => anyhow!(
            "{what}: the result API at {api} answered {code:?}: {}",
            status.message()
        ),
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_says_what_to_do() {
        let e = call_error(
            "http://127.0.0.1:7070",
            "get execution X",
            &tonic::Status::unavailable("connection refused"),
        );
        let text = e.to_string();
        assert!(text.contains("cannot reach the result API at http://127.0.0.1:7070"));
        assert!(text.contains("assay up"));
        assert!(text.contains("ASSAY_API"));
    }

    #[test]
    fn not_found_points_at_listing() {
        let e = call_error(
            "x",
            "get execution X",
            &tonic::Status::not_found("no such execution"),
        );
        assert!(e.to_string().contains("assay get executions"));
    }
}
