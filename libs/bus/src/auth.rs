//! How every assay process (the four services, the CLI and the runner) authenticates to
//! NATS and secures the connection: one set of `ASSAY_NATS_*` environment variables, read
//! at connect time, so a deployment sets them once for everything (the launcher's runners
//! inherit them).
//!
//! | variable | meaning |
//! |---|---|
//! | `ASSAY_NATS_USER`, `ASSAY_NATS_PASSWORD` (or `ASSAY_NATS_PASSWORD_FILE`) | user and password |
//! | `ASSAY_NATS_TOKEN` (or `ASSAY_NATS_TOKEN_FILE`) | token |
//! | `ASSAY_NATS_NKEY_FILE` | file holding an NKey user seed (`SU...`) |
//! | `ASSAY_NATS_CREDS` | credentials file (user JWT and seed, as `nsc` writes them) |
//! | `ASSAY_NATS_CA` | PEM file of the CA(s) that signed the server's certificate |
//! | `ASSAY_NATS_CERT`, `ASSAY_NATS_KEY` | client certificate and key (PEM) for mutual TLS |
//! | `ASSAY_NATS_TLS` | `1`/`true`: refuse to connect without TLS |
//!
//! At most one of user/password, token, NKey and credentials may be set. Secrets read from
//! files have surrounding whitespace trimmed; none is ever logged.

use std::fmt;
use std::path::PathBuf;

use crate::{Error, Result};

/// The variables that carry credentials (not TLS settings): a process handed credentials of
/// its own (a runner with minted ones) must not inherit any of these.
pub const CREDENTIAL_VARS: &[&str] = &[
    "ASSAY_NATS_USER",
    "ASSAY_NATS_PASSWORD",
    "ASSAY_NATS_PASSWORD_FILE",
    "ASSAY_NATS_TOKEN",
    "ASSAY_NATS_TOKEN_FILE",
    "ASSAY_NATS_NKEY_FILE",
    "ASSAY_NATS_CREDS",
];

/// Authentication and TLS settings for a NATS connection. `Debug` never shows secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub nkey_seed_file: Option<PathBuf>,
    pub creds_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_required: bool,
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsAuth")
            .field("method", &self.method())
            .field("user", &self.user)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_required", &self.tls_required)
            .finish_non_exhaustive()
    }
}

fn bad(message: impl Into<String>) -> Error {
    Error::Auth(message.into())
}

fn secret_file(var: &str, path: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("{var}={path}: cannot read the file: {e}")))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(bad(format!("{var}={path}: the file is empty")));
    }
    Ok(text)
}

fn existing(var: &str, path: String) -> Result<PathBuf> {
    let p = PathBuf::from(&path);
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => Ok(p),
        Ok(_) => Err(bad(format!("{var}={path}: not a file"))),
        Err(e) => Err(bad(format!("{var}={path}: {e}"))),
    }
}

impl NatsAuth {
    /// Reads the `ASSAY_NATS_*` variables (see the module docs).
    pub fn from_env() -> Result<NatsAuth> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`NatsAuth::from_env`], from any lookup (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<NatsAuth> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let either = |var: &str, file_var: &str| -> Result<Option<String>> {
            match (get(var), get(file_var)) {
                (Some(_), Some(_)) => Err(bad(format!("set {var} or {file_var}, not both"))),
                (Some(v), None) => Ok(Some(v)),
                (None, Some(path)) => secret_file(file_var, &path).map(Some),
                (None, None) => Ok(None),
            }
        };
        let auth = NatsAuth {
            user: get("ASSAY_NATS_USER"),
            password: either("ASSAY_NATS_PASSWORD", "ASSAY_NATS_PASSWORD_FILE")?,
            token: either("ASSAY_NATS_TOKEN", "ASSAY_NATS_TOKEN_FILE")?,
            nkey_seed_file: get("ASSAY_NATS_NKEY_FILE")
                .map(|p| existing("ASSAY_NATS_NKEY_FILE", p))
                .transpose()?,
            creds_file: get("ASSAY_NATS_CREDS")
                .map(|p| existing("ASSAY_NATS_CREDS", p))
                .transpose()?,
            tls_ca: get("ASSAY_NATS_CA")
                .map(|p| existing("ASSAY_NATS_CA", p))
                .transpose()?,
            tls_cert: get("ASSAY_NATS_CERT")
                .map(|p| existing("ASSAY_NATS_CERT", p))
                .transpose()?,
            tls_key: get("ASSAY_NATS_KEY")
                .map(|p| existing("ASSAY_NATS_KEY", p))
                .transpose()?,
            tls_required: match get("ASSAY_NATS_TLS").as_deref().map(str::trim) {
                None | Some("0" | "false" | "no") => false,
                Some("1" | "true" | "yes") => true,
                Some(other) => {
                    return Err(bad(format!(
                        "ASSAY_NATS_TLS={other}: use 1/true to require TLS or 0/false"
                    )));
                }
            },
        };
        auth.check()?;
        Ok(auth)
    }

    /// Whether nothing is set (no authentication, plain TCP unless the URL says `tls://`).
    pub fn is_empty(&self) -> bool {
        *self == NatsAuth::default()
    }

    /// How the connection authenticates: `none`, `user/password`, `token`, `nkey` or
    /// `credentials`, with ` over TLS` or ` over mutual TLS` when TLS is set up.
    pub fn method(&self) -> &'static str {
        let tls = if self.tls_cert.is_some() {
            2
        } else if self.tls_required || self.tls_ca.is_some() {
            1
        } else {
            0
        };
        let (plain, over_tls, mutual) = if self.user.is_some() {
            (
                "user/password",
                "user/password over TLS",
                "user/password over mutual TLS",
            )
        } else if self.token.is_some() {
            ("token", "token over TLS", "token over mutual TLS")
        } else if self.nkey_seed_file.is_some() {
            ("nkey", "nkey over TLS", "nkey over mutual TLS")
        } else if self.creds_file.is_some() {
            (
                "credentials",
                "credentials over TLS",
                "credentials over mutual TLS",
            )
        } else {
            ("none", "no credentials, over TLS", "mutual TLS")
        };
        [plain, over_tls, mutual][tls]
    }

    /// These settings as the `ASSAY_NATS_*` variables that reproduce them in a child
    /// process (the launcher hands them to its runners).
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let path = |p: &PathBuf| p.display().to_string();
        let mut out: Vec<(&str, String)> = Vec::new();
        if let Some(v) = &self.user {
            out.push(("ASSAY_NATS_USER", v.clone()));
        }
        if let Some(v) = &self.password {
            out.push(("ASSAY_NATS_PASSWORD", v.clone()));
        }
        if let Some(v) = &self.token {
            out.push(("ASSAY_NATS_TOKEN", v.clone()));
        }
        if let Some(v) = &self.nkey_seed_file {
            out.push(("ASSAY_NATS_NKEY_FILE", path(v)));
        }
        if let Some(v) = &self.creds_file {
            out.push(("ASSAY_NATS_CREDS", path(v)));
        }
        if let Some(v) = &self.tls_ca {
            out.push(("ASSAY_NATS_CA", path(v)));
        }
        if let Some(v) = &self.tls_cert {
            out.push(("ASSAY_NATS_CERT", path(v)));
        }
        if let Some(v) = &self.tls_key {
            out.push(("ASSAY_NATS_KEY", path(v)));
        }
        if self.tls_required {
            out.push(("ASSAY_NATS_TLS", "1".to_string()));
        }
        out.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Refuses contradictory settings, saying which.
    pub fn check(&self) -> Result<()> {
        let methods: Vec<&str> = [
            ("ASSAY_NATS_USER", self.user.is_some()),
            ("ASSAY_NATS_TOKEN", self.token.is_some()),
            ("ASSAY_NATS_NKEY_FILE", self.nkey_seed_file.is_some()),
            ("ASSAY_NATS_CREDS", self.creds_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if methods.len() > 1 {
            return Err(bad(format!(
                "{} are all set; NATS takes one way to authenticate: keep one",
                methods.join(" and ")
            )));
        }
        match (&self.user, &self.password) {
            (Some(_), None) => {
                return Err(bad(
                    "ASSAY_NATS_USER is set without ASSAY_NATS_PASSWORD (or ASSAY_NATS_PASSWORD_FILE)",
                ));
            }
            (None, Some(_)) => {
                return Err(bad("ASSAY_NATS_PASSWORD is set without ASSAY_NATS_USER"));
            }
            _ => {}
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(bad(
                "a client certificate needs both ASSAY_NATS_CERT and ASSAY_NATS_KEY",
            ));
        }
        Ok(())
    }

    /// Applies these settings to connect options.
    pub(crate) async fn apply(
        &self,
        mut opts: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions> {
        self.check()?;
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            opts = opts.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            opts = opts.token(token.clone());
        }
        if let Some(path) = &self.nkey_seed_file {
            let seed = secret_file("ASSAY_NATS_NKEY_FILE", &path.display().to_string())?;
            nkeys::KeyPair::from_seed(&seed).map_err(|e| {
                bad(format!(
                    "ASSAY_NATS_NKEY_FILE={}: not an NKey seed ({e})",
                    path.display()
                ))
            })?;
            opts = opts.nkey(seed);
        }
        if let Some(path) = &self.creds_file {
            opts = opts.credentials_file(path).await.map_err(|e| {
                bad(format!(
                    "ASSAY_NATS_CREDS={}: not a NATS credentials file ({e})",
                    path.display()
                ))
            })?;
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls_required || self.tls_ca.is_some() || self.tls_cert.is_some() {
            opts = opts.require_tls(true);
        }
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_each_method_and_refuses_contradictions() {
        let a = NatsAuth::from_lookup(lookup(&[
            ("ASSAY_NATS_USER", "sched"),
            ("ASSAY_NATS_PASSWORD", "pw"),
        ]))
        .unwrap();
        assert_eq!(a.method(), "user/password");
        let back = NatsAuth::from_lookup(|k| {
            a.env_vars()
                .into_iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v)
        })
        .unwrap();
        assert_eq!(back, a, "env_vars round-trips");
        assert!(!format!("{a:?}").contains("pw"), "Debug hides the password");
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "  s3cret\n").unwrap();
        let a = NatsAuth::from_lookup(lookup(&[(
            "ASSAY_NATS_TOKEN_FILE",
            token.to_str().unwrap(),
        )]))
        .unwrap();
        assert_eq!(a.token.as_deref(), Some("s3cret"));
        assert_eq!(NatsAuth::from_lookup(lookup(&[])).unwrap().method(), "none");

        let err =
            |vars: &[(&str, &str)]| NatsAuth::from_lookup(lookup(vars)).unwrap_err().to_string();
        assert!(
            err(&[
                ("ASSAY_NATS_USER", "u"),
                ("ASSAY_NATS_PASSWORD", "p"),
                ("ASSAY_NATS_TOKEN", "t")
            ])
            .contains("ASSAY_NATS_USER and ASSAY_NATS_TOKEN are all set")
        );
        assert!(err(&[("ASSAY_NATS_USER", "u")]).contains("without ASSAY_NATS_PASSWORD"));
        assert!(
            err(&[("ASSAY_NATS_TOKEN", "t"), ("ASSAY_NATS_TOKEN_FILE", "/x")])
                .contains("set ASSAY_NATS_TOKEN or ASSAY_NATS_TOKEN_FILE, not both")
        );
        assert!(
            err(&[("ASSAY_NATS_CA", "/no/such/ca.pem")])
                .starts_with("nats auth: ASSAY_NATS_CA=/no/such/ca.pem: ")
        );
        assert!(
            err(&[("ASSAY_NATS_CERT", token.to_str().unwrap())])
                .contains("needs both ASSAY_NATS_CERT and ASSAY_NATS_KEY")
        );
        assert!(err(&[("ASSAY_NATS_TLS", "maybe")]).contains("ASSAY_NATS_TLS=maybe"));
    }
}
