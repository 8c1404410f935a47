//! The result API (the result-aggregator's gRPC service), with errors that say what to do.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use assay_auth::SendBearer;
use assay_proto::results_client::ResultsClient;
use assay_proto::{
    ExecutionDetail, GetExecutionRequest, GetHistoryRequest, ShardDetail, TestHistory,
};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::args::Global;

/// The result API client; every call carries the bearer token when one is configured.
pub type Client = ResultsClient<InterceptedService<Channel, SendBearer>>;

fn unreachable(api: &str, detail: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "cannot reach the result API at {api}: is `assay up` running? (set --api or ASSAY_API) ({detail})"
    )
}

/// Connects to the result API named by `--api` (e.g. `http://127.0.0.1:7070`, or
/// `https://…` for TLS, verified against `--ca-file` or the system's roots, presenting the
/// client certificate of `--cert-file` / `--key-file` if given), sending the token of
/// `--token-file` / `ASSAY_TOKEN_FILE` / `ASSAY_TOKEN`.
pub async fn connect(global: &Global) -> Result<Client> {
    let api = global.api.as_str();
    let token = assay_auth::load_token(global.token_file.as_deref())?;
    let bearer = SendBearer::new(token.as_ref())?;
    let mut endpoint = Endpoint::from_shared(api.to_string())
        .map_err(|e| {
            anyhow!("invalid result API address {api:?}: {e}; write it as http://HOST:PORT or https://HOST:PORT")
        })?
        .connect_timeout(Duration::from_secs(3));
    if let Some(tls) = tls_config(api, global)? {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| anyhow!("cannot use TLS for {api}: {e}"))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| unreachable(api, error_chain(&e)))?;
    Ok(ResultsClient::with_interceptor(channel, bearer)
        // Pages stay under 4 MiB; room for one oversized test case on a page of its own.
        .max_decoding_message_size(MAX_ANSWER_BYTES))
}

/// TLS settings for an `https://` API: the `--ca-file` certificate, else the system's roots,
/// and the client certificate of `--cert-file` / `--key-file` when given.
fn tls_config(api: &str, global: &Global) -> Result<Option<ClientTlsConfig>> {
    let https = api.starts_with("https://");
    let flag = match (&global.ca_file, &global.cert_file, &global.key_file) {
        (Some(_), _, _) => Some("--ca-file"),
        (_, Some(_), _) => Some("--cert-file"),
        (_, _, Some(_)) => Some("--key-file"),
        _ => None,
    };
    if !https {
        return match flag {
            None => Ok(None),
            Some(flag) => Err(anyhow!(
                "{flag} is set but the result API address {api} is not https://; write it as https://HOST:PORT"
            )),
        };
    }
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
    };
    let mut config = match &global.ca_file {
        None => ClientTlsConfig::new().with_native_roots(),
        Some(path) => ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("CA certificate", path)?)),
    };
    match (&global.cert_file, &global.key_file) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ));
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(anyhow!(
                "--cert-file was given without --key-file; give both (PEM files) or neither"
            ));
        }
        (None, Some(_)) => {
            return Err(anyhow!(
                "--key-file was given without --cert-file; give both (PEM files) or neither"
            ));
        }
    }
    Ok(Some(config))
}

/// Test cases or history rows asked for per page (the server's maximum; each page also stays
/// under the server's byte budget, so it fits one gRPC message).
pub const PAGE_SIZE: u32 = 10_000;

/// The largest answer the CLI accepts.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Execution `id` with every test case: its pages read one after another and merged (see
/// [`merge_page`]). A server from before paging answers everything in one page.
pub async fn execution(client: &mut Client, id: &str) -> Result<ExecutionDetail, tonic::Status> {
    let first = client
        .get_execution(GetExecutionRequest {
            id: id.to_string(),
            page_size: PAGE_SIZE,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    let mut token = first.next_page_token.clone();
    let mut detail = first;
    let mut pages = 1u32;
    while !token.is_empty() {
        let page = client
            .get_execution(GetExecutionRequest {
                id: id.to_string(),
                page_size: PAGE_SIZE,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        if page.next_page_token == token {
            return Err(tonic::Status::internal(format!(
                "the result API handed out the same page token twice for execution {id}; report it"
            )));
        }
        token = page.next_page_token.clone();
        merge_page(&mut detail, page);
        pages += 1;
    }
    detail.next_page_token.clear();
    tracing::debug!(execution = %id, pages, "execution read");
    Ok(detail)
}

/// Adds a later page's test cases to their shards in `into` (matched by shard index; the
/// head — status, counters, summaries — stays that of the first page).
pub fn merge_page(into: &mut ExecutionDetail, page: ExecutionDetail) {
    let index = |s: &ShardDetail| s.summary.as_ref().map(|s| s.index);
    for shard in page.shards {
        if shard.tests.is_empty() {
            continue;
        }
        match into.shards.iter_mut().find(|s| index(s) == index(&shard)) {
            Some(existing) => existing.tests.extend(shard.tests),
            None => into.shards.push(shard),
        }
    }
}

/// Every history row of `workflow` (one test when `test` is not empty), all pages, slowest
/// first.
pub async fn history(
    client: &mut Client,
    workflow: &str,
    test: &str,
) -> Result<Vec<TestHistory>, tonic::Status> {
    let mut tests = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .get_history(GetHistoryRequest {
                workflow: workflow.to_string(),
                test_id: test.to_string(),
                page_size: PAGE_SIZE,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        tests.extend(page.tests);
        if page.next_page_token.is_empty() {
            break;
        }
        if page.next_page_token == token {
            return Err(tonic::Status::internal(format!(
                "the result API handed out the same page token twice for the history of {workflow}; report it"
            )));
        }
        token = page.next_page_token;
    }
    tests.sort_by(|a, b| {
        b.mean_ms
            .total_cmp(&a.mean_ms)
            .then_with(|| a.test_id.cmp(&b.test_id))
    });
    Ok(tests)
}

/// Turns a failed call into a message that says what to do.
pub fn call_error(api: &str, what: &str, status: &tonic::Status) -> anyhow::Error {
    // A TLS alert from the server arrives as a transport error; its cause is in the chain.
    let mut chain = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        chain = format!("{chain}: {}", error_chain(source));
    }
    if chain.contains("CertificateRequired") {
        return anyhow!(
            "{what}: the result API at {api} wants a client certificate: give --cert-file and --key-file (or ASSAY_CERT_FILE and ASSAY_KEY_FILE) ({chain})"
        );
    }
    if chain.contains("BadCertificate") || chain.contains("UnknownCA") {
        return anyhow!(
            "{what}: the result API at {api} refused the client certificate: use one signed by the CA of its --tls-client-ca ({chain})"
        );
    }
    // TLS 1.3 refuses a client certificate after the client's half of the handshake, so the
    // refusal may surface as any broken connection (closed, broken pipe, another alert),
    // answered Unknown or Cancelled; Unavailable (nothing listening) keeps its own advice.
    if api.starts_with("https://")
        && status.code() != Code::Unavailable
        && chain.contains("transport error")
    {
        return anyhow!(
            "{what}: the connection to the result API at {api} broke ({chain}); if it asks for client certificates (mutual TLS), give --cert-file and --key-file signed by the CA it trusts"
        );
    }
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
        code => anyhow!("{what}: the result API at {api} answered {code:?}: {chain}"),
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
    fn later_pages_add_their_cases_to_their_shards() {
        use assay_proto::{ShardSummary, TestCaseResult};
        let shard = |index: u32, tests: &[&str]| ShardDetail {
            summary: Some(ShardSummary {
                index,
                ..Default::default()
            }),
            tests: tests
                .iter()
                .map(|id| TestCaseResult {
                    id: id.to_string(),
                    ..Default::default()
                })
                .collect(),
            exit_code: 0,
        };
        let mut detail = ExecutionDetail {
            shards: vec![shard(0, &["a", "b"]), shard(1, &[])],
            next_page_token: "t1".into(),
            ..Default::default()
        };
        merge_page(
            &mut detail,
            ExecutionDetail {
                shards: vec![shard(0, &["c"]), shard(1, &["d", "e"])],
                ..Default::default()
            },
        );
        let ids: Vec<Vec<&str>> = detail
            .shards
            .iter()
            .map(|s| s.tests.iter().map(|t| t.id.as_str()).collect())
            .collect();
        assert_eq!(ids, [vec!["a", "b", "c"], vec!["d", "e"]]);
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
