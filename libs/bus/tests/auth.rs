//! NATS authentication and TLS against a real nats-server configured for each: user and
//! password, token, NKey, a credentials file in operator (JWT) mode, TLS with a client
//! certificate (mutual TLS). A refused connection
//! fails at once with a [`assay_bus::Error::Refused`] that names the method, instead of
//! being retried as if the server were down.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use assay_bus::{Bus, Error, NatsAuth, NatsOptions};
use assay_testkit::{NatsServer, Pki};
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

#[tokio::test]
async fn mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), "assay-scheduler");
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

/// RFC 4648 base32 without padding, the encoding of a JWT's `jti`.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// A NATS v2 JWT for `subject`, signed by `issuer`, as nats-io/jwt encodes one: header
/// `{"typ":"JWT","alg":"ed25519-nkey"}`; claims with `jti` = base32 of the SHA-512/256 of
/// the standard claims without it (the server does not check it, but `nsc` and the server's
/// logs show it); the `nats` section typed `operator`, `account` or `user`, version 2; the
/// Ed25519 signature covers `header.claims`; every part base64url without padding.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    use sha2::Digest;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The same fields in the same order as Go marshals them before hashing.
    let mut claims = serde_json::json!({
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
    });
    let id = sha2::Sha512_256::digest(serde_json::to_vec(&claims).unwrap());
    claims["jti"] = base32(&id).into();
    claims["nats"] = nats;
    let signed = format!(
        "{}.{}",
        b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        b64(&serde_json::to_vec(&claims).unwrap())
    );
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&signature))
}

fn account_jwt(
    operator: &nkeys::KeyPair,
    account: &nkeys::KeyPair,
    name: &str,
    js: bool,
) -> String {
    let mut limits = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1,
        "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
    });
    if js {
        for k in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[k] = (-1).into();
        }
    }
    let nats = serde_json::json!({
        "limits": limits,
        "default_permissions": { "pub": {}, "sub": {} },
        "type": "account",
        "version": 2,
    });
    jwt(operator, &account.public_key(), name, nats)
}

/// A credentials file as `nsc generate creds` writes it: the user JWT, then the seed.
fn creds_file(dir: &Path, name: &str, user_jwt: &str, user: &nkeys::KeyPair) -> PathBuf {
    let text = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n",
        user.seed().unwrap()
    );
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn user_jwt(account: &nkeys::KeyPair, user: &nkeys::KeyPair, name: &str) -> String {
    let nats = serde_json::json!({
        "pub": {}, "sub": {},
        "subs": -1, "data": -1, "payload": -1,
        "type": "user",
        "version": 2,
    });
    jwt(account, &user.public_key(), name, nats)
}

/// The auth settings every service reads, from `ASSAY_NATS_CREDS` alone.
fn creds_from_env(path: &Path) -> NatsAuth {
    let value = path.display().to_string();
    NatsAuth::from_lookup(|k| (k == "ASSAY_NATS_CREDS").then(|| value.clone())).unwrap()
}

/// Operator mode, as `nsc` sets up a production server: the operator signs the accounts
/// (one with JetStream, plus the system account), the account signs its users, the server
/// trusts only the operator and knows the accounts from a memory resolver, and a service
/// connects with nothing but `ASSAY_NATS_CREDS`.
#[tokio::test]
async fn credentials_file_in_operator_mode() {
    let operator = nkeys::KeyPair::new_operator();
    let system = nkeys::KeyPair::new_account();
    let account = nkeys::KeyPair::new_account();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "assay-operator",
        serde_json::json!({
            "system_account": system.public_key(),
            "type": "operator",
            "version": 2,
        }),
    );
    let server = NatsServer::start_with_config(&format!(
        "operator: \"{operator_jwt}\"\n\
         system_account: {system}\n\
         resolver: MEMORY\n\
         resolver_preload: {{\n  {account}: \"{account_jwt}\"\n  {system}: \"{system_jwt}\"\n}}\n",
        system = system.public_key(),
        account = account.public_key(),
        account_jwt = account_jwt(&operator, &account, "ASSAY", true),
        system_jwt = account_jwt(&operator, &system, "SYS", false),
    ));
    let dir = tempfile::tempdir().unwrap();

    let user = nkeys::KeyPair::new_user();
    let good = creds_file(
        dir.path(),
        "scheduler.creds",
        &user_jwt(&account, &user, "scheduler"),
        &user,
    );
    let auth = creds_from_env(&good);
    assert_eq!(auth.method(), "credentials");
    // `connect` also creates every stream and KV bucket: JetStream works for the account.
    let bus = connect(server.url(), auth).await.unwrap();
    let kv = bus.kv(assay_bus::streams::KV_DEDUP).await.unwrap();
    kv.put("operator-mode", "yes".into()).await.unwrap();
    assert_eq!(
        kv.get("operator-mode").await.unwrap().as_deref(),
        Some(&b"yes"[..])
    );
    let duplicate = bus
        .publish(
            assay_bus::subjects::event("jwt"),
            &assay_proto::TriggerEvent {
                header: Some(assay_bus::header("test", "jwt-1", None)),
                source: "jwt".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!duplicate, "the events stream stored the event");

    // A user signed by an account the operator never signed: refused at once, naming the
    // method, not retried as if the server were down.
    let stranger = nkeys::KeyPair::new_account();
    let outsider = nkeys::KeyPair::new_user();
    let unknown = creds_file(
        dir.path(),
        "outsider.creds",
        &user_jwt(&stranger, &outsider, "outsider"),
        &outsider,
    );
    let text = refused(
        connect(server.url(), creds_from_env(&unknown)).await,
        "credentials",
    );
    assert!(text.contains("retrying will not help"), "{text}");
    // A valid JWT with someone else's seed cannot answer the server's nonce.
    let mismatched = creds_file(
        dir.path(),
        "mismatched.creds",
        &user_jwt(&account, &user, "scheduler"),
        &outsider,
    );
    refused(
        connect(server.url(), creds_from_env(&mismatched)).await,
        "credentials",
    );

    // A file cut short after the JWT (a bad copy and paste) is named before any connection.
    let full = std::fs::read_to_string(&good).unwrap();
    let cut = dir.path().join("cut.creds");
    std::fs::write(&cut, &full[..full.find("****").unwrap()]).unwrap();
    let err = connect(server.url(), creds_from_env(&cut))
        .await
        .err()
        .expect("a creds file without a seed is refused");
    assert!(
        err.to_string().contains(&format!(
            "ASSAY_NATS_CREDS={}: not a NATS credentials file",
            cut.display()
        )),
        "{err}"
    );
}
