//! `content.git`: the repository a shard's tests come from, checked out by the runner into
//! the shard's working directory before the first step.
//!
//! The clone ([gix], blocking, on a blocking thread) is bare and lives in a temporary
//! directory outside the working directory, removed when the checkout ends; the working
//! directory receives the tree of one commit (all of it, or only [`GitCheckout::paths`]) as
//! plain files, without a `.git` directory: the steps see the files and
//! [`CONTENT_SHA`], not the repository or its credentials.
//!
//! Transports: https (reqwest with rustls and the system's CA certificates), ssh (the `ssh`
//! program), `file://` and plain paths (`git upload-pack`, which must be on `PATH`).
//! Credentials come from the directory [`CREDENTIALS_DIR`] names ([`credentials`]); without
//! them a server that asks for some gets a clear refusal, never a prompt.

pub mod credentials;

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::AtomicBool;

use assay_proto::GitCheckout;
use gix::bstr::ByteSlice;
use gix::objs::tree::EntryKind;

pub use credentials::{CREDENTIALS_DIR, Credentials};

/// The commit the working directory holds, as a step variable. `ASSAY_GIT_SHA` stays what the
/// triggering event says (its `sha` label): the two are equal when the revision came from
/// the event, and differ when the tests live in a repository of their own.
pub const CONTENT_SHA: &str = "ASSAY_CONTENT_SHA";
/// The revision asked for (empty: the default branch), as a step variable.
pub const CONTENT_REVISION: &str = "ASSAY_CONTENT_REVISION";
/// The repository url without user information, as a step variable.
pub const CONTENT_URL: &str = "ASSAY_CONTENT_URL";

/// What was checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The url, without user information.
    pub url: String,
    /// The revision asked for; empty: the default branch.
    pub revision: String,
    /// The full hex sha of the commit written.
    pub commit: String,
    /// Files (and symbolic links) written.
    pub files: usize,
}

impl Checked {
    /// The `ASSAY_CONTENT_*` variables of the steps.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (CONTENT_SHA.to_string(), self.commit.clone()),
            (CONTENT_REVISION.to_string(), self.revision.clone()),
            (CONTENT_URL.to_string(), self.url.clone()),
        ]
    }

    /// The log line of a checkout.
    pub fn summary(&self, source: &str) -> String {
        let rev = if self.revision.is_empty() {
            "the default branch".to_string()
        } else {
            format!("revision {}", self.revision)
        };
        let from = match source {
            "event" => " (the triggering event's sha)",
            "workflow" => " (content.git.revision)",
            _ => "",
        };
        format!(
            "checked out {} at {rev}{from}: commit {}, {} file(s)",
            self.url, self.commit, self.files
        )
    }
}

/// Checks `git` out into `dest` (an existing, empty directory) with `creds`. Blocking.
///
/// Errors name the url (without user information) and the revision or path at fault.
pub fn checkout(
    git: &GitCheckout,
    dest: &Path,
    creds: Option<&Credentials>,
) -> Result<Checked, String> {
    let url = display_url(&git.url);
    let rev = git.revision.trim();
    let at = if rev.is_empty() {
        "the default branch".to_string()
    } else {
        format!("revision {rev:?}")
    };
    let paths = check_paths(&git.paths).map_err(|e| format!("content.git of {url}: {e}"))?;
    let nonempty = std::fs::read_dir(dest)
        .map(|mut d| d.next().is_some())
        .map_err(|e| format!("cannot read working directory {}: {e}", dest.display()))?;
    if nonempty {
        return Err(format!(
            "cannot check out {url} into {}: the directory is not empty; content.git needs a fresh working directory",
            dest.display()
        ));
    }
    let scratch = tempfile::Builder::new()
        .prefix("assay-git-")
        .tempdir()
        .map_err(|e| format!("cannot create a directory for the clone of {url}: {e}"))?;
    let ssh_key = creds
        .map(|c| c.ssh_key_in(scratch.path()))
        .transpose()
        .map_err(|e| format!("cannot use the ssh key for {url}: {e}"))?
        .flatten();
    let repo = clone(
        git,
        &url,
        scratch.path().join("repo"),
        creds,
        ssh_key.as_deref(),
    )?;
    if is_full_sha(rev) && repo.rev_parse_single(rev).is_err() {
        // A commit no branch or tag reaches (a pull request's head): ask for it by id.
        fetch_commit(&repo, git, rev, creds)
            .map_err(|e| format!("{at} not found in {url}: {e}"))?;
    }
    let commit = resolve(&repo, rev).map_err(|e| format!("{at} not found in {url}: {e}"))?;
    let tree = commit.tree().map_err(|e| {
        format!(
            "cannot read the tree of {} in {url}: {}",
            commit.id,
            chain(&e)
        )
    })?;
    let mut files = 0;
    if paths.is_empty() {
        write_tree(&repo, &tree, dest, &mut files)?;
    }
    for path in &paths {
        let entry = tree
            .lookup_entry_by_path(path)
            .map_err(|e| format!("cannot look up {} in {url}: {}", path.display(), chain(&e)))?
            .ok_or_else(|| {
                format!(
                    "path {:?} of content.git.paths is not in {url} at {at} (commit {})",
                    path.display().to_string(),
                    commit.id
                )
            })?;
        let target = dest.join(path);
        if let Some(parent) = target.parent() {
            create_dir(parent)?;
        }
        write_entry(
            &repo,
            entry.mode().kind(),
            entry.object_id(),
            &target,
            &mut files,
        )?;
    }
    Ok(Checked {
        url,
        revision: rev.to_string(),
        commit: commit.id.to_string(),
        files,
    })
}

/// `content.git.paths` as relative paths inside the repository.
fn check_paths(paths: &[String]) -> Result<Vec<PathBuf>, String> {
    paths
        .iter()
        .map(|p| {
            let path = PathBuf::from(p.trim().trim_end_matches('/'));
            let inside = !p.trim().is_empty()
                && path
                    .components()
                    .all(|c| matches!(c, Component::Normal(n) if n != ".git"));
            if inside {
                Ok(path)
            } else {
                Err(format!(
                    "path {p:?} is not a path inside the repository (relative, without `..`)"
                ))
            }
        })
        .collect()
}

/// A bare clone of the whole repository (branches and tags) into `into`.
fn clone(
    git: &GitCheckout,
    url: &str,
    into: PathBuf,
    creds: Option<&Credentials>,
    ssh_key: Option<&Path>,
) -> Result<gix::Repository, String> {
    let mut overrides = Vec::new();
    if let Some(key) = ssh_key {
        overrides.push(format!(
            "core.sshCommand=ssh -i '{}' -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
            key.display()
        ));
    }
    // https through reqwest takes the process's rustls provider: ring, as everywhere else
    // (already installed is fine).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let open = gix::open::Options::isolated().config_overrides(overrides);
    let fail = |e: gix::Error| format!("cannot fetch {url}: {}", chain(&e));
    let mut prepare = gix::clone::PrepareFetch::new(
        git.url.as_str(),
        &into,
        gix::create::Kind::Bare,
        gix::create::Options::default(),
        open,
    )
    .map_err(fail)?;
    let auth = auth(git, creds);
    prepare = prepare.configure_connection(move |conn| {
        conn.set_credentials(auth.clone());
        Ok(())
    });
    let (repo, _) = prepare
        .fetch_only(gix::progress::Discard, &AtomicBool::new(false))
        .map_err(fail)?;
    Ok(repo)
}

/// The credentials helper for `git`'s url.
fn auth(
    git: &GitCheckout,
    creds: Option<&Credentials>,
) -> impl FnMut(
    gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>>
+ Clone
+ 'static {
    let ssh_host = gix::url::parse(gix::bstr::BStr::new(git.url.as_bytes()))
        .ok()
        .filter(|u| u.scheme == gix::url::Scheme::Ssh)
        .map(|u| u.host().unwrap_or_default().to_string());
    credentials::helper(creds.cloned(), git.secret_name.clone(), ssh_host)
}

/// 40 (sha1) or 64 (sha256) hex digits.
fn is_full_sha(rev: &str) -> bool {
    matches!(rev.len(), 40 | 64) && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Fetches the commit `sha` by id into `repo` (the server must allow it: git's protocol v2
/// and the big forges do for commits any ref reaches, `refs/pull/*` included).
fn fetch_commit(
    repo: &gix::Repository,
    git: &GitCheckout,
    sha: &str,
    creds: Option<&Credentials>,
) -> Result<(), String> {
    let fail = |e: gix::Error| format!("the remote did not give commit {sha}: {}", chain(&e));
    let remote = repo
        .remote_at(git.url.as_str())
        .and_then(|r| {
            r.with_refspecs(
                [format!("+{sha}:refs/assay/checkout").as_str()],
                gix::remote::Direction::Fetch,
            )
        })
        .map_err(fail)?;
    let mut conn = remote
        .connect(gix::remote::Direction::Fetch)
        .map_err(fail)?;
    conn.set_credentials(auth(git, creds));
    conn.prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(fail)?
        .receive(gix::progress::Discard, &AtomicBool::new(false))
        .map_err(fail)?;
    Ok(())
}

/// The commit `rev` names: a branch, a tag (annotated ones peeled), a full or abbreviated
/// sha; empty: the remote's default branch.
fn resolve<'r>(repo: &'r gix::Repository, rev: &str) -> Result<gix::Commit<'r>, String> {
    if rev.is_empty() {
        return repo
            .head_commit()
            .map_err(|e| format!("the remote has no default branch ({})", chain(&e)));
    }
    if rev.starts_with('-') || rev.contains("..") || rev.contains(['^', '~', ':', '@', ' ']) {
        return Err("not a branch, tag or commit sha".to_string());
    }
    let id = repo
        .rev_parse_single(rev)
        .map_err(|e| format!("{}{}", chain(&e), known_refs(repo)))?;
    id.object()
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| format!("{id} is not a commit ({})", chain(&e)))
}

/// How many branch and tag names an unknown revision's error lists, each.
const KNOWN_REFS: usize = 10;

/// `; branches: main, next; tags: v1` (the first [`KNOWN_REFS`] of each, sorted), for the
/// error about a revision that is not there; empty when they cannot be read.
fn known_refs(repo: &gix::Repository) -> String {
    let Ok(refs) = repo.references() else {
        return String::new();
    };
    let names = |iter: Option<gix::reference::iter::Iter<'_, '_>>| -> Vec<String> {
        let mut names: Vec<String> = iter
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|r| r.name().shorten().to_string())
            .collect();
        names.sort();
        names
    };
    let mut out = String::new();
    for (what, list) in [
        ("branches", names(refs.local_branches().ok())),
        ("tags", names(refs.tags().ok())),
    ] {
        if list.is_empty() {
            continue;
        }
        let more = list.len().saturating_sub(KNOWN_REFS);
        let shown: Vec<&str> = list.iter().take(KNOWN_REFS).map(String::as_str).collect();
        out.push_str(&format!("; {what}: {}", shown.join(", ")));
        if more > 0 {
            out.push_str(&format!(" and {more} more"));
        }
    }
    out
}

fn create_dir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path)
        .map_err(|e| format!("cannot create directory {}: {e}", path.display()))
}

/// Writes `tree`'s entries into the existing directory `dir`.
fn write_tree(
    repo: &gix::Repository,
    tree: &gix::Tree<'_>,
    dir: &Path,
    files: &mut usize,
) -> Result<(), String> {
    for entry in tree.iter() {
        let entry = entry.map_err(|e| format!("cannot read tree {}: {}", tree.id, chain(&e)))?;
        let name = entry.inner.filename.to_str().map_err(|_| {
            format!(
                "tree {} has an entry whose name is not UTF-8: {:?}",
                tree.id, entry.inner.filename
            )
        })?;
        if name.is_empty() || name == "." || name == ".." || name == ".git" || name.contains('/') {
            return Err(format!(
                "tree {} has an entry named {name:?}, which cannot be written",
                tree.id
            ));
        }
        write_entry(
            repo,
            entry.inner.mode.kind(),
            entry.inner.oid.to_owned(),
            &dir.join(name),
            files,
        )?;
    }
    Ok(())
}

/// Writes one tree entry at `path`: a directory, a file (executable or not), a symbolic link,
/// or, for a submodule, an empty directory (submodules are not checked out).
fn write_entry(
    repo: &gix::Repository,
    kind: EntryKind,
    id: gix::ObjectId,
    path: &Path,
    files: &mut usize,
) -> Result<(), String> {
    let blob = |id| {
        repo.find_blob(id).map(|b| b.detach().data).map_err(|e| {
            format!(
                "cannot read blob {id} for {}: {}",
                path.display(),
                chain(&e)
            )
        })
    };
    let io = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    match kind {
        EntryKind::Tree => {
            create_dir(path)?;
            let tree = repo
                .find_tree(id)
                .map_err(|e| format!("cannot read tree {id}: {}", chain(&e)))?;
            write_tree(repo, &tree, path, files)
        }
        EntryKind::Blob | EntryKind::BlobExecutable => {
            std::fs::write(path, blob(id)?).map_err(io)?;
            if kind == EntryKind::BlobExecutable {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                    .map_err(io)?;
            }
            *files += 1;
            Ok(())
        }
        EntryKind::Link => {
            let target = blob(id)?;
            let target = target
                .to_path()
                .map_err(|_| format!("symbolic link {} is not a valid path", path.display()))?;
            std::os::unix::fs::symlink(target, path).map_err(io)?;
            *files += 1;
            Ok(())
        }
        EntryKind::Commit => create_dir(path),
    }
}

/// An error and its sources on one line, `: `-separated, each said once.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// `url` without user information (`https://user:token@host/x` → `https://host/x`), for
/// logs, errors and the steps.
pub fn display_url(url: &str) -> String {
    let url = url.trim();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            // scp-like ssh urls (`git@host:path`) keep their user: it is no secret.
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_information_is_left_out_of_urls() {
        for (url, shown) in [
            (
                "https://x-access-token:s3cr3t@github.com/acme/shop.git",
                "https://github.com/acme/shop.git",
            ),
            (
                "https://github.com/acme/shop",
                "https://github.com/acme/shop",
            ),
            ("ssh://git@host:22/acme/shop", "ssh://host:22/acme/shop"),
            (
                "git@github.com:acme/shop.git",
                "git@github.com:acme/shop.git",
            ),
            ("/srv/git/shop.git", "/srv/git/shop.git"),
            ("file:///srv/git/shop.git", "file:///srv/git/shop.git"),
        ] {
            assert_eq!(display_url(url), shown, "{url}");
        }
    }

    #[test]
    fn paths_stay_inside_the_repository() {
        assert_eq!(
            check_paths(&["tests/".into(), "a/b.txt".into()]).unwrap(),
            [PathBuf::from("tests"), PathBuf::from("a/b.txt")]
        );
        for bad in ["", "../x", "/etc", "a/../../b", ".git/config", "./a"] {
            let err = check_paths(&[bad.to_string()]).unwrap_err();
            assert!(
                err.contains("not a path inside the repository"),
                "{bad}: {err}"
            );
        }
    }
}
