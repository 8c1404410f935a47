//! The `assay` binary against a result API that wants a bearer token over TLS, and one that
//! also wants a client certificate (mutual TLS).

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use assay_testkit::{NatsServer, Pki, free_port};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "cli-t0ken";

mod common;
use common::text;

fn assay(args: &[&str], env: &[(&str, &str)]) -> Output {
    common::assay(None, args, env)
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_sends_the_token_and_verifies_tls_with_the_ca_file() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let tls = assay_auth::TlsFiles::new(dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&tls.cert, cert.cert.pem()).unwrap();
    std::fs::write(&tls.key, cert.signing_key.serialize_pem()).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();

    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let options = assay_result_aggregator::Options {
        nats: assay_bus::NatsOptions {
            url: nats.url(),
            name: "test".into(),
            ..Default::default()
        },
        database: dir.path().join("results.db"),
        grpc: addr,
        token: assay_auth::Secret::new(TOKEN),
        tls: Some(tls.clone()),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let t = shutdown.clone();
    tokio::spawn(async move { assay_result_aggregator::run(options, t).await });
    for attempt in 0.. {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(attempt < 1500, "aggregator did not listen within 15s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let api = format!("https://localhost:{}", addr.port());
    let ca = tls.cert.to_str().unwrap().to_string();
    let tf = token_file.to_str().unwrap().to_string();
    let run = move |args: Vec<String>, env: Vec<(String, String)>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assay(&args, &env)
        })
    };
    let base = |extra: &[&str]| {
        let mut a: Vec<String> = ["get", "executions", "-o", "json", "--api", &api]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    // Token from a file, CA from a flag.
    let out = run(base(&["--ca-file", &ca, "--token-file", &tf]), vec![])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Token and CA from the environment.
    let out = run(
        base(&[]),
        vec![
            ("ASSAY_TOKEN".into(), TOKEN.into()),
            ("ASSAY_CA_FILE".into(), ca.clone()),
        ],
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // No token: refused, and the message says what to do.
    let out = run(base(&["--ca-file", &ca]), vec![]).await.unwrap();
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains("refused the call: missing bearer token"),
        "{msg}"
    );
    assert!(msg.contains("--token-file"), "{msg}");
    // A wrong token.
    let out = run(
        base(&["--ca-file", &ca]),
        vec![("ASSAY_TOKEN".into(), "wrong".into())],
    )
    .await
    .unwrap();
    assert!(
        text(&out).contains("invalid bearer token"),
        "{}",
        text(&out)
    );
    // Without the CA the self-signed certificate is not trusted.
    let out = run(base(&["--token-file", &tf]), vec![]).await.unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_presents_its_client_certificate_to_a_mutual_tls_api() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), "assay-cli");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let options = assay_result_aggregator::Options {
        nats: assay_bus::NatsOptions {
            url: nats.url(),
            name: "test".into(),
            ..Default::default()
        },
        database: dir.path().join("results.db"),
        grpc: addr,
        tls: Some(assay_auth::TlsFiles {
            client_ca: Some(pki.ca.clone()),
            ..assay_auth::TlsFiles::new(&pki.server_cert, &pki.server_key)
        }),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let t = shutdown.clone();
    tokio::spawn(async move { assay_result_aggregator::run(options, t).await });
    for attempt in 0.. {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(attempt < 1500, "aggregator did not listen within 15s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let api = format!("https://localhost:{}", addr.port());
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (ca, cert, key) = (path(&pki.ca), path(&pki.client_cert), path(&pki.client_key));
    let run = |args: Vec<String>, env: Vec<(String, String)>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assay(&args, &env)
        })
    };
    let base = |extra: &[&str]| -> Vec<String> {
        [
            "get",
            "executions",
            "-o",
            "json",
            "--api",
            &api,
            "--ca-file",
            &ca,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };

    // Certificate and key from flags, then from the environment.
    let out = run(base(&["--cert-file", &cert, "--key-file", &key]), vec![])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = run(
        base(&[]),
        vec![
            ("ASSAY_CERT_FILE".into(), cert.clone()),
            ("ASSAY_KEY_FILE".into(), key.clone()),
        ],
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Without a certificate, or with one from a CA the server does not trust, the server
    // ends the connection, and the CLI says what to give. (Whether the server's TLS alert
    // or the closed connection reaches the CLI first varies; both messages name the flags.)
    let (other_cert, other_key) = (path(&pki.stranger_cert), path(&pki.stranger_key));
    for extra in [
        vec![],
        vec!["--cert-file", &other_cert, "--key-file", &other_key],
    ] {
        let out = run(base(&extra), vec![]).await.unwrap();
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("--cert-file and --key-file"),
            "{}",
            text(&out)
        );
    }
    // Half a pair is a usage error that says so.
    let out = run(base(&["--cert-file", &cert]), vec![]).await.unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--cert-file was given without --key-file"),
        "{}",
        text(&out)
    );
    shutdown.cancel();
}
