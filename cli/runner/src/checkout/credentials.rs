//! Credentials for `content.git`, read from a directory: the contract between the runner
//! and whoever mounts them (the Kubernetes backend mounts the workflow's
//! `content.git.credentials.secretName` Secret there).
//!
//! [`CREDENTIALS_DIR`] names the directory. It holds either the files `username` and
//! `password` (https basic authentication; a token goes in `password`) or the file
//! `ssh-privatekey` (an ssh url; the key is copied to a private file for `ssh -i`). One
//! trailing newline of each file is ignored. Neither the variable nor the files' contents
//! reach the steps: their environment is built from scratch ([`crate::env`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use gix::credentials::helper::Action;
use gix::credentials::protocol::Outcome;

/// The runner's environment variable naming the credentials directory.
pub const CREDENTIALS_DIR: &str = "ASSAY_GIT_CREDENTIALS_DIR";

/// Credentials for the clone.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// https basic authentication.
    Basic { username: String, password: String },
    /// An ssh private key (PEM/OpenSSH text).
    SshKey(Vec<u8>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => {
                write!(f, "Basic {{ username: {username:?}, password: *** }}")
            }
            Credentials::SshKey(_) => f.write_str("SshKey(***)"),
        }
    }
}

impl Credentials {
    /// Reads the directory named by [`CREDENTIALS_DIR`] in the runner's environment; `None`
    /// when it is unset or empty.
    pub fn from_env() -> Result<Option<Credentials>, String> {
        match std::env::var_os(CREDENTIALS_DIR) {
            Some(dir) if !dir.is_empty() => Credentials::read(Path::new(&dir)).map(Some),
            _ => Ok(None),
        }
    }

    /// Reads `dir` (see the module documentation); errors name the directory and the file.
    pub fn read(dir: &Path) -> Result<Credentials, String> {
        let at = || {
            format!(
                "git credentials directory {} ({CREDENTIALS_DIR})",
                dir.display()
            )
        };
        if !dir.is_dir() {
            return Err(format!("{} does not exist", at()));
        }
        let file = |name: &str| -> Result<Option<Vec<u8>>, String> {
            match std::fs::read(dir.join(name)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("cannot read {name} in {}: {e}", at())),
            }
        };
        let text = |name: &str, bytes: Vec<u8>| -> Result<String, String> {
            let s =
                String::from_utf8(bytes).map_err(|_| format!("{name} in {} is not UTF-8", at()))?;
            let s = s.strip_suffix('\n').unwrap_or(&s);
            Ok(s.strip_suffix('\r').unwrap_or(s).to_string())
        };
        match (
            file("username")?,
            file("password")?,
            file("ssh-privatekey")?,
        ) {
            (Some(u), Some(p), _) => Ok(Credentials::Basic {
                username: text("username", u)?,
                password: text("password", p)?,
            }),
            (Some(_), None, _) | (None, Some(_), _) => Err(format!(
                "{} has only one of username and password; it needs both",
                at()
            )),
            (None, None, Some(key)) => Ok(Credentials::SshKey(key)),
            (None, None, None) => Err(format!(
                "{} holds neither username and password nor ssh-privatekey",
                at()
            )),
        }
    }

    /// For an ssh key: writes it to a file only the runner's user can read in `dir` (ssh
    /// refuses a key others can read, as a mounted Secret usually is) and returns its path.
    pub(crate) fn ssh_key_in(&self, dir: &Path) -> std::io::Result<Option<PathBuf>> {
        let Credentials::SshKey(key) = self else {
            return Ok(None);
        };
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = dir.join("ssh-key");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(key)?;
        if !key.ends_with(b"\n") {
            f.write_all(b"\n")?;
        }
        Ok(Some(path))
    }
}

/// The answer to a server asking for credentials: the basic ones when there are some, else
/// an error saying how to provide them (`secret` names the workflow's Secret, if any). Never
/// a prompt. With an ssh url (`ssh_host`), gix asks when ssh itself failed: the error names
/// the host and whether a key was given.
pub(crate) fn helper(
    creds: Option<Credentials>,
    secret: String,
    ssh_host: Option<String>,
) -> impl FnMut(Action) -> gix::Result<Option<Outcome>> + Clone + 'static {
    move |action| {
        let Action::Get(ctx) = action else {
            // Store and erase: nothing is kept.
            return Ok(None);
        };
        if let Some(host) = &ssh_host {
            // gix asks here when ssh itself failed (refused, unreachable, unknown host).
            let key = match &creds {
                Some(Credentials::SshKey(_)) => "with the key ssh-privatekey".to_string(),
                _ => format!(
                    "without a key: the runner uses ssh-privatekey from the directory {CREDENTIALS_DIR} names{}",
                    if secret.is_empty() {
                        String::new()
                    } else {
                        format!(" (the workflow's Secret {secret:?})")
                    }
                ),
            };
            return Err(gix::Error::from_error(gix::error::message!(
                "ssh to {host:?} failed or was refused ({key})"
            )));
        }
        match &creds {
            Some(Credentials::Basic { username, password }) => Ok(Some(Outcome {
                credentials: gix::sec::identity::Credentials::UsernamePassword {
                    username: username.clone(),
                    password: password.clone(),
                    oauth_refresh_token: None,
                },
                next: ctx.into(),
            })),
            _ => {
                let given = if secret.is_empty() {
                    "the workflow names none: set content.git.credentials.secretName".to_string()
                } else {
                    format!(
                        "the workflow's Secret {secret:?} was not mounted with username and password"
                    )
                };
                Err(gix::Error::from_error(gix::error::message!(
                    "the server asks for a username and password and there are none ({given}; the runner reads them from the directory {CREDENTIALS_DIR} names)"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn reads_basic_or_ssh_credentials_and_says_what_is_missing() {
        let d = dir(&[("username", "bot\n"), ("password", "t0ken\r\n")]);
        let c = Credentials::read(d.path()).unwrap();
        assert_eq!(
            c,
            Credentials::Basic {
                username: "bot".into(),
                password: "t0ken".into()
            }
        );
        assert_eq!(
            format!("{c:?}"),
            r#"Basic { username: "bot", password: *** }"#
        );

        let d = dir(&[("ssh-privatekey", "-----BEGIN KEY-----")]);
        let c = Credentials::read(d.path()).unwrap();
        let key = c.ssh_key_in(d.path()).unwrap().unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&key).unwrap(), b"-----BEGIN KEY-----\n");

        let d = dir(&[("username", "bot")]);
        let err = Credentials::read(d.path()).unwrap_err();
        assert!(
            err.ends_with("has only one of username and password; it needs both"),
            "{err}"
        );
        let d = dir(&[]);
        let err = Credentials::read(d.path()).unwrap_err();
        assert!(
            err.contains("holds neither username and password nor ssh-privatekey"),
            "{err}"
        );
        assert!(err.contains(CREDENTIALS_DIR), "{err}");
        let err = Credentials::read(&d.path().join("nope")).unwrap_err();
        assert!(err.ends_with("does not exist"), "{err}");
    }

    #[test]
    fn the_helper_answers_with_the_credentials_or_refuses_without_a_prompt() {
        let get = || Action::get_for_url("https://git.example/acme/shop.git");
        let mut with = helper(
            Some(Credentials::Basic {
                username: "bot".into(),
                password: "t0ken".into(),
            }),
            "shop-git".into(),
            None,
        );
        let out = with(get()).unwrap().unwrap();
        assert_eq!(
            out.credentials,
            gix::sec::identity::Credentials::UsernamePassword {
                username: "bot".into(),
                password: "t0ken".into(),
                oauth_refresh_token: None,
            }
        );
        assert!(with(Action::Erase("x".into())).unwrap().is_none());

        let mut without = helper(None, "shop-git".into(), None);
        let err = format!("{:#}", without(get()).unwrap_err());
        assert!(err.contains("Secret \"shop-git\" was not mounted"), "{err}");
        let err = format!(
            "{:#}",
            helper(None, String::new(), None)(get()).unwrap_err()
        );
        assert!(
            err.contains("set content.git.credentials.secretName"),
            "{err}"
        );
    }
}
