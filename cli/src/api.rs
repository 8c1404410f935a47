//! The result API (the result-aggregator's gRPC service), with errors that say what to do.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use assay_auth::SendBearer;
use assay_proto::results_client::ResultsClient;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::args::Global;

/// The result API client; every call carries the bearer token when one is configured.
pub type Client = ResultsClient<InterceptedService<Channel, SendBearer>>;

fn unreachable(api: &str, detail: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "cannot reach the result API at {api}: is `assay up` running? (set --api or ASSAY_API) ({detail})"
    )
}

/// Connects to the result API named by `--api` (e.g. `http://127.0.0.1:7070`, or
/// `https://…` for TLS, verified against `--ca-file` or the system's roots), sending the
/// token of `--token-file` / `ASSAY_TOKEN_FILE` / `ASSAY_TOKEN`.
pub async fn connect(global: &Global) -> Result<Client> {
    let api = global.api.as_str();
    let token = assay_auth::load_token(global.token_file.as_deref())?;
    let bearer = SendBearer::new(token.as_ref())?;
    let mut endpoint = Endpoint::from_shared(api.to_string())
        .map_err(|e| {
            anyhow!("invalid result API address {api:?}: {e}; write it as http://HOST:PORT or https://HOST:PORT")
        })?
        .connect_timeout(Duration::from_secs(3));
    if let Some(tls) = tls_config(api, global.ca_file.as_deref())? {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| anyhow!("cannot use TLS for {api}: {e}"))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| unreachable(api, error_chain(&e)))?;
    Ok(ResultsClient::with_interceptor(channel, bearer))
}

/// TLS settings for an `https://` API: the `--ca-file` certificate, else the system's roots.
fn tls_config(api: &str, ca_file: Option<&std::path::Path>) -> Result<Option<ClientTlsConfig>> {
    let https = api.starts_with("https://");
    match (https, ca_file) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(anyhow!(
            "--ca-file is set but the result API address {api} is not https://; write it as https://HOST:PORT"
        )),
        (true, None) => Ok(Some(ClientTlsConfig::new().with_native_roots())),
        (true, Some(path)) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
            Ok(Some(
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            ))
        }
    }
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
        Code::Unauthenticated => anyhow!(
            "{what}: the result API at {api} refused the call: {}",
            status.message()
        ),
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
