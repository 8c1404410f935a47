//! NATS authentication and TLS against a real nats-server configured for each: user and
//! password, token, NKey, TLS with a client certificate (mutual TLS). A refused connection
//! fails at once with a [`assay_bus::Error::Refused`] that names the method, instead of
//! being retried as if the server were down.

use std::path::Path;

use assay_bus::{Bus, Error, NatsAuth, NatsOptions};
use assay_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

async fn connect(url: String, auth: NatsAuth) -> Result<Bus, Error> {
    let opts = NatsOptions {
        url,
        connect_attempts: 3,
        auth,
        ..Default::default()
    };
    let bus = Bus::connect(&opts, &CancellationToken::new()).await?;
    bus.ensure_topology().await?;
    Ok(bus)
}

fn refused(r: Result<Bus, Error>, method: &str) -> String {
    match r {
        Err(e @ Error::Refused { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&format!("({method})")), "{text}");
            text
        }
        Err(other) => panic!("expected a refusal, got: {other}"),
        Ok(_) => panic!("expected a refusal, got a connection"),
    }
}

#[tokio::test]
async fn user_and_password() {
    let server = NatsServer::start_with_config(
        "authorization { users = [ { user: scheduler, password: \"pw-1234\" } ] }\n",
    );
    let good = NatsAuth {
        user: Some("scheduler".into()),
        password: Some("pw-1234".into()),
        ..Default::default()
    };
    let bus = connect(server.url(), good.clone()).await.unwrap();
    bus.kv(assay_bus::streams::KV_DEDUP).await.unwrap();
    let wrong = NatsAuth {
        password: Some("nope".into()),
        ..good
    };
    let text = refused(connect(server.url(), wrong).await, "user/password");
    assert!(
        !text.contains("nope"),
        "the password is not in the message: {text}"
    );
    refused(connect(server.url(), NatsAuth::default()).await, "none");
}

#[tokio::test]
async fn token() {
    let server = NatsServer::start_with_config("authorization { token: \"t0ken-abc\" }\n");
    let auth = |t: &str| NatsAuth {
        token: Some(t.into()),
        ..Default::default()
    };
    connect(server.url(), auth("t0ken-abc")).await.unwrap();
    refused(connect(server.url(), auth("t0ken-xyz")).await, "token");
}

#[tokio::test]
async fn nkey() {
    let user = nkeys::KeyPair::new_user();
    let other = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
        user.public_key()
    ));
    let dir = tempfile::tempdir().unwrap();
    let seed = |kp: &nkeys::KeyPair, name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, kp.seed().unwrap()).unwrap();
        NatsAuth {
            nkey_seed_file: Some(p),
            ..Default::default()
        }
    };
    connect(server.url(), seed(&user, "user.nk")).await.unwrap();
    refused(
        connect(server.url(), seed(&other, "other.nk")).await,
        "nkey",
    );
    // A file that is not a seed is a settings error, named, before any connection.
    let junk = dir.path().join("junk.nk");
    std::fs::write(&junk, "not a seed").unwrap();
    let err = connect(
        server.url(),
        NatsAuth {
            nkey_seed_file: Some(junk.clone()),
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("a junk seed is refused");
    assert!(
        err.to_string().contains(&format!(
            "ASSAY_NATS_NKEY_FILE={}: not an NKey seed",
            junk.display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn a_credentials_file_that_is_not_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("bad.creds");
    std::fs::write(&creds, "hello").unwrap();
    let err = connect(
        "nats://127.0.0.1:1".into(),
        NatsAuth {
            creds_file: Some(creds.clone()),
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("refused");
    assert!(
        err.to_string().contains(&format!(
            "ASSAY_NATS_CREDS={}: not a NATS credentials file",
            creds.display()
        )),
        "{err}"
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["assay-scheduler".into()]);
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &ca_cert.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server-key.pem", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client-key.pem", &client_key),
    }
}

#[tokio::test]
async fn mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let server = NatsServer::start_with_config(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    ));
    let full = NatsAuth {
        tls_ca: Some(pki.ca.clone()),
        tls_cert: Some(pki.client_cert.clone()),
        tls_key: Some(pki.client_key.clone()),
        ..Default::default()
    };
    let bus = connect(server.url(), full.clone()).await.unwrap();
    bus.publish(
        assay_bus::subjects::event("tls"),
        &assay_proto::TriggerEvent {
            header: Some(assay_bus::header("test", "tls-1", None)),
            source: "tls".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Without a client certificate the server refuses; without the CA, the client does.
    let no_cert = NatsAuth {
        tls_cert: None,
        tls_key: None,
        ..full.clone()
    };
    assert!(connect(server.url(), no_cert).await.is_err());
    let no_ca = NatsAuth {
        tls_ca: None,
        ..full
    };
    refused(connect(server.url(), no_ca).await, "mutual TLS");
}
