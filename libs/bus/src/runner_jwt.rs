//! Per-shard NATS credentials of runners in operator (JWT) mode.
//!
//! A runner runs next to the user's test code, so it gets a NATS user of its own that can do
//! only what one attempt of one shard needs ([`runner_permissions`]) and that expires with
//! its execution ([`runner_expiry_ms`]). The launcher mints it per attempt with an account
//! signing key ([`Signer`]): a fresh user nkey, a user JWT (NATS JWT v2, `ed25519-nkey`)
//! signed by the signing key on behalf of the account, written as a credentials file
//! ([`Creds::file_text`], what `ASSAY_NATS_CREDS` and `nsc` use).
//!
//! What a runner does on NATS, and so what it may do:
//!
//! | what | subjects |
//! |---|---|
//! | its logs, results and statuses | `assay.v1.{logs,results,status}.<execution>.<shard>` |
//! | replies (JetStream acks and API answers) | subscribe `_INBOX.assay-runner.<execution>.<shard>.>` only ([`crate::subjects::runner_inbox`]) |
//! | fill its work queue (`strategy: queue`, duration tail) | `assay.v1.queue.<queue>`, `$KV.assay_queues.<queue key>` |
//! | drain it | `STREAM.INFO.ASSAY_QUEUE`, `CONSUMER.{INFO,CREATE,MSG.NEXT}` of its queue's consumer, `$JS.ACK.ASSAY_QUEUE.<consumer>.>` |
//! | claim batches | `$KV.assay_batch_claims.<execution hex>.>` |
//! | read the duration history of its workflow | direct gets of `$KV.assay_history.<workflow hex>[.>]` |
//! | read its plan stored apart | direct get of its object's metadata in `assay_plans`, an ordered consumer of its chunks |
//!
//! Key-value reads are direct gets (`$JS.API.DIRECT.GET.<stream>.<subject>`), which name the
//! key, so they too are limited to the execution's keys. Two grants reach past one
//! execution: reading the chunks of an object in `assay_plans` needs an unnamed consumer on
//! that stream (`CONSUMER.CREATE.OBJ_assay_plans`, whose filter is in the request body), and
//! bucket and stream info calls show configurations, not data. Plans are test ids, not
//! secrets.

use std::fmt;
use std::path::Path;

use assay_proto::ShardJob;
use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::json;

use crate::{Error, Result, kv_key, streams, subjects};

/// How long past its execution's deadline a runner's credentials still work: the runner ends
/// its shard at the deadline and then publishes what it has and its `timed_out` status.
pub const EXPIRY_GRACE_MS: i64 = 60_000;
/// Lifetime of a runner's credentials when its job has neither a deadline nor a timeout
/// (the scheduler's default maximum execution time).
pub const DEFAULT_LIFETIME_MS: i64 = 24 * 3600 * 1000;

/// Subjects a NATS user may publish and subscribe to (`allow` lists; nothing else is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// The key of the work queue `job`'s shard shares: its execution, plus `-m<group>` for a
/// matrix combination (what the runner fills and drains).
pub fn queue_key(job: &ShardJob) -> String {
    if job.variant.is_empty() {
        job.execution_id.clone()
    } else {
        format!("{}-m{}", job.execution_id, job.group)
    }
}

/// The key prefix of an execution's batch claims in [`streams::KV_BATCH_CLAIMS`]: claim keys
/// are `<prefix>.<group>.<seq>`.
pub fn batch_claims_prefix(execution: &str) -> String {
    kv_key(execution)
}

/// The narrowest permissions one attempt of `job`'s shard needs (see the module docs).
pub fn runner_permissions(job: &ShardJob) -> Permissions {
    let (exec, shard) = (job.execution_id.as_str(), job.shard_index);
    let api = |s: String| format!("$JS.API.{s}");
    let direct = |stream: &str, subject: &str| api(format!("DIRECT.GET.{stream}.{subject}"));
    let kv_stream = |bucket: &str| format!("KV_{bucket}");
    let info = |stream: &str| api(format!("STREAM.INFO.{stream}"));

    let mut publish = vec![
        subjects::logs(exec, shard),
        subjects::results(exec, shard),
        subjects::shard_status(exec, shard),
    ];

    // The work queue (strategy: queue, the duration tail) and its state.
    let queue = queue_key(job);
    let consumer = streams::queue_consumer(&queue);
    let queue_subject = subjects::queue(&queue);
    publish.extend([
        queue_subject.clone(),
        info(streams::QUEUE),
        api(format!("CONSUMER.INFO.{}.{consumer}", streams::QUEUE)),
        api(format!(
            "CONSUMER.CREATE.{}.{consumer}.{queue_subject}",
            streams::QUEUE
        )),
        api(format!("CONSUMER.MSG.NEXT.{}.{consumer}", streams::QUEUE)),
        format!("$JS.ACK.{}.{consumer}.>", streams::QUEUE),
    ]);
    let state = format!("$KV.{}.{}", streams::KV_QUEUES, kv_key(&queue));
    publish.extend([
        info(&kv_stream(streams::KV_QUEUES)),
        direct(&kv_stream(streams::KV_QUEUES), &state),
        state,
    ]);
    let claims = format!(
        "$KV.{}.{}.>",
        streams::KV_BATCH_CLAIMS,
        batch_claims_prefix(exec)
    );
    publish.extend([
        info(&kv_stream(streams::KV_BATCH_CLAIMS)),
        direct(&kv_stream(streams::KV_BATCH_CLAIMS), &claims),
        claims,
    ]);

    // The workflow's duration history (read only): its manifest and pieces.
    let history = format!("$KV.{}.{}", streams::KV_HISTORY, kv_key(&job.workflow));
    publish.extend([
        info(&kv_stream(streams::KV_HISTORY)),
        direct(&kv_stream(streams::KV_HISTORY), &history),
        direct(&kv_stream(streams::KV_HISTORY), &format!("{history}.>")),
    ]);

    // Its plan, when it travelled apart from the job.
    if !job.plan_data.is_empty() {
        let obj = format!("OBJ_{}", streams::OBJ_PLANS);
        let meta = format!(
            "$O.{}.M.{}",
            streams::OBJ_PLANS,
            URL_SAFE.encode(&job.plan_data)
        );
        publish.extend([
            info(&obj),
            direct(&obj, &meta),
            api(format!("CONSUMER.CREATE.{obj}")),
            format!("$JS.FC.{obj}.>"),
        ]);
    }

    Permissions {
        publish,
        subscribe: vec![format!("{}.>", subjects::runner_inbox(exec, shard))],
    }
}

/// When a runner's credentials for `job` expire (ms since the epoch): its execution's
/// deadline plus [`EXPIRY_GRACE_MS`]; without a deadline, its timeout from `now_ms` plus the
/// grace; without either, [`DEFAULT_LIFETIME_MS`] from `now_ms`.
pub fn runner_expiry_ms(job: &ShardJob, now_ms: i64) -> i64 {
    if job.deadline_ms > 0 {
        job.deadline_ms + EXPIRY_GRACE_MS
    } else if job.timeout_ms > 0 {
        now_ms + i64::try_from(job.timeout_ms).unwrap_or(DEFAULT_LIFETIME_MS) + EXPIRY_GRACE_MS
    } else {
        now_ms + DEFAULT_LIFETIME_MS
    }
}

/// A user's credentials: its JWT and nkey seed. `Debug` never shows the seed.
#[derive(Clone, PartialEq, Eq)]
pub struct Creds {
    pub jwt: String,
    seed: String,
}

impl fmt::Debug for Creds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Creds")
            .field("jwt", &self.jwt)
            .finish_non_exhaustive()
    }
}

impl Creds {
    /// The user's public key (`U...`).
    pub fn user(&self) -> Result<String> {
        nkeys::KeyPair::from_seed(&self.seed)
            .map(|k| k.public_key())
            .map_err(|e| Error::Auth(format!("minted user seed unreadable: {e}")))
    }

    /// The credentials file (`ASSAY_NATS_CREDS`), in the layout `nsc` writes and NATS clients
    /// read.
    pub fn file_text(&self) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            self.jwt, self.seed
        )
    }
}

/// Encodes `claims` as a NATS JWT signed by `key` (header `{"typ":"JWT","alg":"ed25519-nkey"}`,
/// base64url without padding, the signature over `header.payload`). Fills in `iss` (the
/// key's public key), `iat` (now) and `jti` when missing.
pub fn encode_jwt(mut claims: serde_json::Value, key: &nkeys::KeyPair) -> Result<String> {
    let object = claims
        .as_object_mut()
        .ok_or_else(|| Error::Auth("jwt claims must be a JSON object".into()))?;
    object
        .entry("iss")
        .or_insert_with(|| json!(key.public_key()));
    object
        .entry("iat")
        .or_insert_with(|| json!(crate::now_ms() / 1000));
    object
        .entry("jti")
        .or_insert_with(|| json!(ulid::Ulid::new().to_string()));
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let signature = key
        .sign(signed.as_bytes())
        .map_err(|e| Error::Auth(format!("cannot sign a jwt: {e}")))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// Mints users of one account with one of its signing keys.
pub struct Signer {
    key: nkeys::KeyPair,
    account: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("signing_key", &self.key.public_key())
            .field("account", &self.account)
            .finish()
    }
}

impl Signer {
    /// A signer from an account signing key seed (`SA...`) and the account's public key
    /// (`A...`). Errors say which value is wrong and how.
    pub fn new(seed: &str, account: &str) -> Result<Signer> {
        let seed = seed.trim();
        if !seed.starts_with("SA") {
            return Err(Error::Auth(format!(
                "not an account signing key seed: it starts with {:?}, an account seed starts with \"SA\" (create one with `nsc edit account --sk generate`)",
                seed.get(..2).unwrap_or(seed)
            )));
        }
        let key = nkeys::KeyPair::from_seed(seed)
            .map_err(|e| Error::Auth(format!("not a valid nkey seed ({e})")))?;
        let account = account.trim();
        if !nkeys::KeyPair::from_public_key(account).is_ok_and(|_| account.starts_with('A')) {
            return Err(Error::Auth(format!(
                "{account:?} is not an account public key (A..., as `nsc describe account` shows it)"
            )));
        }
        Ok(Signer {
            key,
            account: account.to_string(),
        })
    }

    /// [`Signer::new`] with the seed read from `path`; errors name the file.
    pub fn from_file(path: &Path, account: &str) -> Result<Signer> {
        let seed = std::fs::read_to_string(path).map_err(|e| {
            Error::Auth(format!(
                "runner signing key {}: cannot read the file: {e}",
                path.display()
            ))
        })?;
        Signer::new(&seed, account)
            .map_err(|e| Error::Auth(format!("runner signing key {}: {e}", path.display())))
    }

    /// The account the minted users belong to.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// Mints a user named `name` with a fresh nkey, allowed `permissions` (`None`: anything
    /// the account allows), expiring at `exp_ms` (ms since the epoch; `None`: never).
    pub fn mint(
        &self,
        name: &str,
        permissions: Option<&Permissions>,
        exp_ms: Option<i64>,
    ) -> Result<Creds> {
        let user = nkeys::KeyPair::new_user();
        let seed = user
            .seed()
            .map_err(|e| Error::Auth(format!("cannot create a user nkey: {e}")))?;
        let mut nats = json!({
            "issuer_account": self.account,
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        });
        if let Some(p) = permissions {
            nats["pub"] = json!({ "allow": p.publish });
            nats["sub"] = json!({ "allow": p.subscribe });
        }
        let mut claims = json!({
            "sub": user.public_key(),
            "name": name,
            "nats": nats,
        });
        if let Some(exp) = exp_ms {
            // Seconds, rounded up: never earlier than asked.
            claims["exp"] = json!((exp + 999).div_euclid(1000));
        }
        Ok(Creds {
            jwt: encode_jwt(claims, &self.key)?,
            seed,
        })
    }

    /// Mints the credentials of one attempt of `job`'s shard: named
    /// `runner-<execution>-<shard>-<attempt>`, allowed [`runner_permissions`], expiring at
    /// [`runner_expiry_ms`].
    pub fn mint_runner(&self, job: &ShardJob, now_ms: i64) -> Result<Creds> {
        let name = format!(
            "runner-{}-{}-{}",
            job.execution_id, job.shard_index, job.attempt
        );
        self.mint(
            &name,
            Some(&runner_permissions(job)),
            Some(runner_expiry_ms(job, now_ms)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> ShardJob {
        ShardJob {
            execution_id: "01EXEC".into(),
            shard_index: 2,
            attempt: 3,
            workflow: "unit".into(),
            deadline_ms: 1_700_000_000_000,
            timeout_ms: 60_000,
            ..Default::default()
        }
    }

    fn decode(part: &str) -> serde_json::Value {
        let bytes = URL_SAFE_NO_PAD.decode(part).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn a_runner_publishes_only_its_own_shards_subjects() {
        let p = runner_permissions(&job());
        for own in [
            "assay.v1.logs.01EXEC.2",
            "assay.v1.results.01EXEC.2",
            "assay.v1.status.01EXEC.2",
            "assay.v1.queue.01EXEC",
            "$JS.API.CONSUMER.MSG.NEXT.ASSAY_QUEUE.queue-01EXEC",
            "$JS.ACK.ASSAY_QUEUE.queue-01EXEC.>",
            "$JS.API.CONSUMER.CREATE.ASSAY_QUEUE.queue-01EXEC.assay.v1.queue.01EXEC",
        ] {
            assert!(p.publish.iter().any(|s| s == own), "{own} in {p:?}");
        }
        let hex = kv_key("01EXEC");
        assert!(
            p.publish
                .contains(&format!("$KV.assay_batch_claims.{hex}.>"))
        );
        assert!(p.publish.contains(&format!("$KV.assay_queues.{hex}")));
        // Nothing of another shard, another execution or another stream.
        for s in &p.publish {
            assert!(!s.contains("01EXEC.3") && !s.contains(".1."), "{s}");
            assert!(
                !s.starts_with("$JS.API.>")
                    && !s.starts_with("assay.v1.>")
                    && !s.contains(".*.")
                    && !s.ends_with(".*"),
                "too wide: {s}"
            );
            assert!(!s.starts_with("$KV.assay_history"), "history is read only");
        }
        assert_eq!(p.subscribe, vec!["_INBOX.assay-runner.01EXEC.2.>"]);
        // No plan stored apart: no object store grant.
        assert!(!p.publish.iter().any(|s| s.contains("OBJ_")));
    }

    #[test]
    fn a_matrix_shard_drains_its_combinations_queue_and_reads_its_stored_plan() {
        let mut j = job();
        j.variant = "os=linux".into();
        j.group = 1;
        j.plan_data = "01EXEC.1.2".into();
        let p = runner_permissions(&j);
        assert!(p.publish.contains(&"assay.v1.queue.01EXEC-m1".to_string()));
        assert!(
            p.publish
                .contains(&"$JS.API.CONSUMER.MSG.NEXT.ASSAY_QUEUE.queue-01EXEC-m1".to_string())
        );
        let meta = format!(
            "$JS.API.DIRECT.GET.OBJ_assay_plans.$O.assay_plans.M.{}",
            URL_SAFE.encode("01EXEC.1.2")
        );
        assert!(p.publish.contains(&meta), "{p:?}");
    }

    #[test]
    fn credentials_expire_after_the_deadline_or_the_timeout() {
        let now = 1_000_000;
        assert_eq!(
            runner_expiry_ms(&job(), now),
            1_700_000_000_000 + EXPIRY_GRACE_MS
        );
        let mut j = job();
        j.deadline_ms = 0;
        assert_eq!(runner_expiry_ms(&j, now), now + 60_000 + EXPIRY_GRACE_MS);
        j.timeout_ms = 0;
        assert_eq!(runner_expiry_ms(&j, now), now + DEFAULT_LIFETIME_MS);
    }

    #[test]
    fn a_minted_jwt_is_signed_by_the_signing_key_for_the_account() {
        let account = nkeys::KeyPair::new_account();
        let signing = nkeys::KeyPair::new_account();
        let signer = Signer::new(&signing.seed().unwrap(), &account.public_key()).unwrap();
        let creds = signer.mint_runner(&job(), 0).unwrap();
        let parts: Vec<&str> = creds.jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            decode(parts[0]),
            json!({"typ": "JWT", "alg": "ed25519-nkey"})
        );
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], json!(signing.public_key()));
        assert_eq!(claims["sub"], json!(creds.user().unwrap()));
        assert_eq!(claims["name"], json!("runner-01EXEC-2-3"));
        assert_eq!(
            claims["exp"],
            json!((1_700_000_000_000 + EXPIRY_GRACE_MS) / 1000)
        );
        assert_eq!(
            claims["nats"]["issuer_account"],
            json!(account.public_key())
        );
        assert_eq!(claims["nats"]["type"], json!("user"));
        assert_eq!(claims["nats"]["version"], json!(2));
        assert_eq!(
            claims["nats"]["sub"]["allow"],
            json!(["_INBOX.assay-runner.01EXEC.2.>"])
        );
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let verifier = nkeys::KeyPair::from_public_key(&signing.public_key()).unwrap();
        verifier
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .unwrap();
        // A fresh user per mint.
        assert_ne!(
            signer.mint_runner(&job(), 0).unwrap().user().unwrap(),
            creds.user().unwrap()
        );
        let text = creds.file_text();
        assert!(text.starts_with("-----BEGIN NATS USER JWT-----\n"));
        assert!(text.contains(&format!("\n{}\n------END NATS USER JWT------", creds.jwt)));
        assert!(text.contains("-----BEGIN USER NKEY SEED-----\nSU"));
        let seed = text.lines().find(|l| l.starts_with("SU")).unwrap();
        assert!(!format!("{creds:?}").contains(seed), "Debug hides the seed");
    }

    #[test]
    fn bad_signing_keys_are_refused_saying_why() {
        let account = nkeys::KeyPair::new_account().public_key();
        let user_seed = nkeys::KeyPair::new_user().seed().unwrap();
        let err = Signer::new(&user_seed, &account).unwrap_err().to_string();
        assert!(err.contains("starts with \"SU\""), "{err}");
        let err = Signer::new("SAnonsense", &account).unwrap_err().to_string();
        assert!(err.contains("not a valid nkey seed"), "{err}");
        let seed = nkeys::KeyPair::new_account().seed().unwrap();
        let err = Signer::new(&seed, "UABC").unwrap_err().to_string();
        assert!(err.contains("not an account public key"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sk.nk");
        std::fs::write(&path, "garbage").unwrap();
        let err = Signer::from_file(&path, &account).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        let err = Signer::from_file(&dir.path().join("missing"), &account)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read the file"), "{err}");
        assert!(Signer::from_file(&path, &account).is_err());
        std::fs::write(&path, format!("{seed}\n")).unwrap();
        assert!(Signer::from_file(&path, &account).is_ok());
    }
}
