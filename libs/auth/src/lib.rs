//! Who may talk to assay's servers: bearer tokens and TLS.
//!
//! - [`Secret`]: a token or webhook secret read from a file (a mounted Kubernetes Secret is a
//!   directory with one file per key: point at the key's file) or, as a fallback, from an
//!   environment variable. Compared in constant time; never printed.
//! - [`Bearer`]: checks `Authorization: Bearer <token>` for HTTP and gRPC (as a tonic
//!   [`Interceptor`]) with one set of messages; with no token configured every request
//!   passes (local development) and the service says so at start ([`Bearer::warn_if_open`]).
//! - [`SendBearer`]: the client side, for the CLI.
//! - [`TlsFiles`]: a PEM certificate chain and key, as a rustls server config (HTTP) or as
//!   PEM bytes for tonic, and optionally a CA whose client certificates the server accepts
//!   (mutual TLS; [`ClientCert`] tells the HTTP routes whether one was presented).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {what} from {}: {source}; check the path and its permissions", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} file {} is empty; write the secret into it", .path.display())]
    Empty { what: &'static str, path: PathBuf },
    #[error("{0}")]
    Config(String),
    #[error("invalid TLS {what} in {}: {reason}", .path.display())]
    Tls {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether the client of a TLS connection presented a certificate that verified against
/// `--tls-client-ca` (a request extension the HTTP server sets per connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientCert {
    pub verified: bool,
}

/// Secret bytes (a token, a webhook secret). `Debug` does not show them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret from bytes; surrounding whitespace (the newline `echo` and editors add) is
    /// dropped. `None` when nothing is left.
    pub fn new(bytes: impl AsRef<[u8]>) -> Option<Secret> {
        let b = bytes.as_ref().trim_ascii();
        (!b.is_empty()).then(|| Secret(Arc::from(b)))
    }

    /// Reads `file` when given (an error when unreadable or empty), else the environment
    /// variable `env` when set and not empty, else `None`.
    pub fn load(what: &'static str, file: Option<&Path>, env: &str) -> Result<Option<Secret>> {
        if let Some(path) = file {
            let bytes = std::fs::read(path).map_err(|source| Error::Read {
                what,
                path: path.to_path_buf(),
                source,
            })?;
            return Secret::new(bytes).map(Some).ok_or_else(|| Error::Empty {
                what,
                path: path.to_path_buf(),
            });
        }
        Ok(std::env::var_os(env).and_then(|v| Secret::new(v.as_encoded_bytes())))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time equality with what a client presented (only the length may leak).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_ref().ct_eq(presented).into()
    }
}

/// Environment variable holding the bearer token (when no token file is given).
pub const TOKEN_ENV: &str = "ASSAY_TOKEN";
/// Environment variable naming the bearer token file (also `--token-file`).
pub const TOKEN_FILE_ENV: &str = "ASSAY_TOKEN_FILE";

/// Loads the bearer token: `--token-file` / `ASSAY_TOKEN_FILE`, else `ASSAY_TOKEN`.
pub fn load_token(file: Option<&Path>) -> Result<Option<Secret>> {
    Secret::load("token", file, TOKEN_ENV)
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Missing,
    Malformed,
    Wrong,
}

impl Denied {
    /// `missing`, `malformed`, `wrong`: the reason label of the rejection metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Malformed => "malformed",
            Denied::Wrong => "wrong",
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Denied::Missing => {
                "missing bearer token: send `Authorization: Bearer <token>` with the token this service reads from --token-file / ASSAY_TOKEN_FILE or ASSAY_TOKEN (the assay CLI takes the same flag and variables)"
            }
            Denied::Malformed => {
                "malformed Authorization header: expected `Bearer <token>`"
            }
            Denied::Wrong => {
                "invalid bearer token: the client's token differs from the service's; give both the same --token-file / ASSAY_TOKEN_FILE or ASSAY_TOKEN"
            }
        })
    }
}

/// The token in an `Authorization` header value (`Bearer <token>`, scheme case-insensitive).
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Server side: requires the bearer token when one is configured. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Bearer {
    token: Option<Secret>,
}

impl Bearer {
    pub fn new(token: Option<Secret>) -> Bearer {
        Bearer { token }
    }

    /// Whether requests need a token.
    pub fn required(&self) -> bool {
        self.token.is_some()
    }

    /// Logs the warning every open service gives at start.
    pub fn warn_if_open(&self, service: &str, endpoints: &str) {
        if self.token.is_none() {
            warn!(
                service,
                endpoints,
                "no bearer token configured: {endpoints} accept requests from anyone who can reach them; set --token-file or ASSAY_TOKEN_FILE (or ASSAY_TOKEN) outside local development"
            );
        }
    }

    /// Checks an `Authorization` header value (absent: `None`).
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), Denied> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let value = authorization.ok_or(Denied::Missing)?;
        let token = bearer_token(value).ok_or(Denied::Malformed)?;
        if expected.matches(token) {
            Ok(())
        } else {
            Err(Denied::Wrong)
        }
    }
}

/// As a tonic interceptor: `Unauthenticated` with the reason.
impl Interceptor for Bearer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let value = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        match self.check(value) {
            Ok(()) => Ok(request),
            Err(denied) => Err(Status::unauthenticated(denied.to_string())),
        }
    }
}

/// Client side: adds `authorization: Bearer <token>` to every gRPC call when a token is set.
#[derive(Clone, Debug, Default)]
pub struct SendBearer {
    value: Option<MetadataValue<Ascii>>,
}

impl SendBearer {
    pub fn new(token: Option<&Secret>) -> Result<SendBearer> {
        let value = match token {
            None => None,
            Some(t) => {
                let text = std::str::from_utf8(t.expose())
                    .ok()
                    .and_then(|s| format!("Bearer {s}").parse().ok())
                    .ok_or_else(|| {
                        Error::Config(
                            "the bearer token has characters an HTTP header cannot carry; use printable ASCII"
                                .into(),
                        )
                    })?;
                Some(text)
            }
        };
        Ok(SendBearer { value })
    }
}

impl Interceptor for SendBearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.value {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A server certificate chain and its private key, both PEM files, and optionally the CA(s)
/// whose client certificates the server asks for (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM file of the CA certificate(s) that sign client certificates; `None`: clients
    /// are not asked for one.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// A certificate and key, without client certificates.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsFiles {
        TlsFiles {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
        }
    }

    /// From `--tls-cert` / `--tls-key` (both or neither) and `--tls-client-ca` (only with
    /// both).
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert,
                key,
                client_ca,
            })),
            (None, None) if client_ca.is_some() => Err(Error::Config(
                "--tls-client-ca was given without --tls-cert and --tls-key; client certificates need TLS: give all three"
                    .into(),
            )),
            (None, None) => Ok(None),
            (Some(_), None) => Err(Error::Config(
                "--tls-cert was given without --tls-key; give both (PEM files) or neither".into(),
            )),
            (None, Some(_)) => Err(Error::Config(
                "--tls-key was given without --tls-cert; give both (PEM files) or neither".into(),
            )),
        }
    }

    /// The PEM bytes of the certificate chain and the key.
    pub fn read(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| Error::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        Ok((
            read("TLS certificate", &self.cert)?,
            read("TLS key", &self.key)?,
        ))
    }

    /// The PEM bytes of the client CA file, checked to hold at least one certificate;
    /// `None` without `--tls-client-ca`.
    pub fn client_ca_pem(&self) -> Result<Option<Vec<u8>>> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let Some(path) = &self.client_ca else {
            return Ok(None);
        };
        let pem = std::fs::read(path).map_err(|source| Error::Read {
            what: "TLS client CA",
            path: path.clone(),
            source,
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls {
                what: "client CA",
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(Error::Tls {
                what: "client CA",
                path: path.clone(),
                reason: "no PEM certificate found".into(),
            });
        }
        Ok(Some(pem))
    }

    /// The rustls verifier for client certificates signed by `--tls-client-ca`. A client
    /// may present none (the HTTP server then refuses it on the routes that need one, so
    /// that health probes and webhook senders, which have no certificate, still get in); one
    /// that presents a certificate must present a valid one.
    fn client_verifier(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let (Some(path), Some(pem)) = (&self.client_ca, self.client_ca_pem()?) else {
            return Ok(None);
        };
        let bad = |reason: String| Error::Tls {
            what: "client CA",
            path: path.clone(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| bad(e.to_string()))?;
        Ok(Some(verifier))
    }

    /// A rustls server config (ring provider) offering `alpn` protocols, e.g.
    /// `[b"h2", b"http/1.1"]`. With a client CA, clients may present a certificate signed by
    /// it (one signed by anyone else fails the handshake); whether a route needs one is the
    /// server's to check, with [`ClientCert`].
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (cert_pem, key_pem) = self.read()?;
        let tls = |what, path: &Path, reason: String| Error::Tls {
            what,
            path: path.to_path_buf(),
            reason,
        };
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls("certificate", &self.cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(tls(
                "certificate",
                &self.cert,
                "no PEM certificate found".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| tls("key", &self.key, e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = self.client_verifier(provider.clone())?;
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls("configuration", &self.cert, e.to_string()))?;
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| tls("certificate or key", &self.cert, e.to_string()))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_trim_and_hide() {
        let s = Secret::new("s3cret\n").unwrap();
        assert_eq!(s.expose(), b"s3cret");
        assert!(s.matches(b"s3cret"));
        assert!(!s.matches(b"s3cre"));
        assert!(!s.matches(b"s3cret\n"));
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert!(Secret::new(" \n").is_none());
    }

    #[test]
    fn secrets_load_from_files() {
        let dir = std::env::temp_dir().join(format!("assay-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "abc\n").unwrap();
        let s = Secret::load("token", Some(&file), "ASSAY_TEST_UNSET_VAR").unwrap();
        assert_eq!(s.unwrap().expose(), b"abc");
        std::fs::write(&file, "\n").unwrap();
        let e = Secret::load("token", Some(&file), "X").unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        let e = Secret::load("token", Some(&dir.join("nope")), "X").unwrap_err();
        assert!(e.to_string().starts_with("cannot read token from"), "{e}");
        assert!(
            Secret::load("token", None, "ASSAY_TEST_UNSET_VAR")
                .unwrap()
                .is_none()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bearer_checks() {
        let open = Bearer::new(None);
        assert_eq!(open.check(None), Ok(()));
        let b = Bearer::new(Secret::new("tok"));
        assert_eq!(b.check(Some(b"Bearer tok")), Ok(()));
        assert_eq!(b.check(Some(b"bearer  tok ")), Ok(()));
        assert_eq!(b.check(None), Err(Denied::Missing));
        assert_eq!(b.check(Some(b"Basic dG9r")), Err(Denied::Malformed));
        assert_eq!(b.check(Some(b"Bearer ")), Err(Denied::Malformed));
        assert_eq!(b.check(Some(b"Bearer tok2")), Err(Denied::Wrong));
        assert!(Denied::Missing.to_string().contains("--token-file"));
    }

    #[test]
    fn interceptors_round_trip() {
        let token = Secret::new("tok").unwrap();
        let mut send = SendBearer::new(Some(&token)).unwrap();
        let mut check = Bearer::new(Some(token));
        let req = send.call(Request::new(())).unwrap();
        assert!(check.call(req).is_ok());
        let status = check.call(Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().starts_with("missing bearer token"));
    }

    #[test]
    fn tls_files_need_both_and_parse() {
        assert!(TlsFiles::from_flags(Some("c".into()), None, None).is_err());
        assert!(TlsFiles::from_flags(None, None, None).unwrap().is_none());
        let e = TlsFiles::from_flags(None, None, Some("ca".into())).unwrap_err();
        assert!(e.to_string().contains("--tls-client-ca"), "{e}");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("assay-auth-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = TlsFiles::new(dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&files.cert, cert.cert.pem()).unwrap();
        std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
        assert!(files.server_config(&[b"h2"]).is_ok());
        files.client_ca = Some(files.cert.clone());
        assert!(files.server_config(&[b"h2"]).is_ok());
        files.client_ca = Some(files.key.clone());
        let e = files.server_config(&[]).unwrap_err();
        assert!(e.to_string().contains("invalid TLS client CA"), "{e}");
        files.client_ca = None;
        std::fs::write(&files.cert, "not pem").unwrap();
        let e = files.server_config(&[]).unwrap_err();
        assert!(e.to_string().contains("invalid TLS certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
