//! The gRPC Results API behind a bearer token, in plain text, over TLS and over mutual TLS,
//! against a real nats-server.

use std::net::SocketAddr;
use std::time::Duration;

use assay_auth::{Secret, SendBearer, TlsFiles};
use assay_proto::ListExecutionsRequest;
use assay_proto::results_client::ResultsClient;
use assay_testkit::{NatsServer, Pki, free_port};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const TOKEN: &str = "grpc-t0ken";

struct Aggregator {
    _nats: NatsServer,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(token: Option<&str>, tls: Option<TlsFiles>) -> Aggregator {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let options = assay_result_aggregator::Options {
        nats: assay_bus::NatsOptions {
            url: nats.url(),
            name: "test".into(),
            ..Default::default()
        },
        database: dir.path().join("results.db"),
        grpc: addr,
        token: token.and_then(Secret::new),
        tls,
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let t = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = assay_result_aggregator::run(options, t).await {
            panic!("aggregator failed: {e}");
        }
    });
    for attempt in 0.. {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(attempt < 1500, "aggregator did not listen within 15s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Aggregator {
        _nats: nats,
        _dir: dir,
        addr,
        shutdown,
    }
}

async fn client(
    url: String,
    tls: Option<ClientTlsConfig>,
    token: Option<&str>,
) -> ResultsClient<tonic::service::interceptor::InterceptedService<Channel, SendBearer>> {
    let mut endpoint = Endpoint::from_shared(url).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let channel = endpoint.connect().await.unwrap();
    let secret = token.and_then(Secret::new);
    ResultsClient::with_interceptor(channel, SendBearer::new(secret.as_ref()).unwrap())
}

async fn list(
    c: &mut ResultsClient<tonic::service::interceptor::InterceptedService<Channel, SendBearer>>,
) -> Result<usize, tonic::Status> {
    c.list_executions(ListExecutionsRequest {
        workflow: String::new(),
        limit: 5,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().executions.len())
}

#[tokio::test]
async fn grpc_requires_accepts_and_rejects_the_bearer_token() {
    let agg = start(Some(TOKEN), None).await;
    let url = format!("http://{}", agg.addr);

    let mut none = client(url.clone(), None, None).await;
    let status = list(&mut none).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().starts_with("missing bearer token"),
        "{}",
        status.message()
    );

    let mut wrong = client(url.clone(), None, Some("nope")).await;
    let status = list(&mut wrong).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().starts_with("invalid bearer token"));

    let mut right = client(url, None, Some(TOKEN)).await;
    assert_eq!(list(&mut right).await.unwrap(), 0);
}

#[tokio::test]
async fn grpc_without_a_token_stays_open() {
    let agg = start(None, None).await;
    let mut c = client(format!("http://{}", agg.addr), None, None).await;
    assert_eq!(list(&mut c).await.unwrap(), 0);
}

#[tokio::test]
async fn grpc_over_tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let files = TlsFiles::new(dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&files.cert, cert.cert.pem()).unwrap();
    std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
    let agg = start(Some(TOKEN), Some(files)).await;
    let url = format!("https://localhost:{}", agg.addr.port());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cert.cert.pem()))
        .domain_name("localhost");

    let mut c = client(url.clone(), Some(tls.clone()), Some(TOKEN)).await;
    assert_eq!(list(&mut c).await.unwrap(), 0);
    let mut anonymous = client(url, Some(tls), None).await;
    assert_eq!(
        list(&mut anonymous).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // A plaintext client gets nowhere.
    let plain = Endpoint::from_shared(format!("http://{}", agg.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut c = ResultsClient::new(channel);
        assert!(
            c.list_executions(ListExecutionsRequest::default())
                .await
                .is_err()
        );
    }
}

#[tokio::test]
async fn grpc_over_mutual_tls_wants_a_client_certificate_from_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), "assay-cli");
    let files = TlsFiles {
        client_ca: Some(pki.ca.clone()),
        ..TlsFiles::new(&pki.server_cert, &pki.server_key)
    };
    let agg = start(Some(TOKEN), Some(files)).await;
    let url = format!("https://localhost:{}", agg.addr.port());
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&pki.ca)))
        .domain_name("localhost");
    // Connecting may succeed even when the server refuses the client's certificate (TLS 1.3
    // sends the refusal after the client's half of the handshake), so the call decides.
    let attempt = |tls: ClientTlsConfig| {
        let url = url.clone();
        async move {
            let channel = Endpoint::from_shared(url)
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let bearer = SendBearer::new(Secret::new(TOKEN).as_ref()).unwrap();
            let mut c = ResultsClient::with_interceptor(channel, bearer);
            list(&mut c).await.map_err(|s| s.to_string())
        }
    };

    let with_cert = tls.clone().identity(Identity::from_pem(
        read(&pki.client_cert),
        read(&pki.client_key),
    ));
    assert_eq!(attempt(with_cert).await, Ok(0));
    assert!(
        attempt(tls.clone()).await.is_err(),
        "no client certificate: refused"
    );
    let stranger = tls.identity(Identity::from_pem(
        read(&pki.stranger_cert),
        read(&pki.stranger_key),
    ));
    assert!(
        attempt(stranger).await.is_err(),
        "a certificate from another CA: refused"
    );
}
