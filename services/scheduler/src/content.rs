//! Where a shard's tests come from: the workflow's `content.git` becomes the job's
//! [`GitCheckout`], with the revision resolved once per execution (see [`git_checkout`]).

use assay_proto::{GitCheckout, Provenance};
use assay_spec::GitContent;

/// The event label naming the commit that caused the execution (webhooks set it; `assay run
/// --label sha=...` and RunRequests may).
const SHA_LABEL: &str = "sha";
/// The event label naming the repository the event came from (`acme/shop`).
const REPOSITORY_LABEL: &str = "repository";

/// The checkout of `git` for an execution caused by `cause`; `None` without `content.git`.
///
/// The revision is the event's `sha` label when it has one, unless the event names a
/// `repository` the url does not end with (a commit of another repository would not resolve
/// here); else the workflow's `revision`; else empty (the remote's default branch). Every
/// shard and attempt of the execution gets the same one.
pub(crate) fn git_checkout(git: Option<&GitContent>, cause: &Provenance) -> Option<GitCheckout> {
    let git = git?;
    let event_sha = cause
        .labels
        .get(SHA_LABEL)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .filter(|_| {
            cause
                .labels
                .get(REPOSITORY_LABEL)
                .is_none_or(|repo| same_repository(&git.url, repo))
        });
    let spec = git
        .revision
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let (revision, source) = match (event_sha, spec) {
        (Some(sha), _) => (sha.to_string(), "event"),
        (None, Some(rev)) => (rev.to_string(), "workflow"),
        (None, None) => (String::new(), "default"),
    };
    Some(GitCheckout {
        url: git.url.clone(),
        revision,
        paths: git.paths.clone(),
        secret_name: git
            .credentials
            .as_ref()
            .map(|c| c.secret_name.clone())
            .unwrap_or_default(),
        revision_source: source.to_string(),
    })
}

/// Whether `url` names the repository `repo` (`owner/name`, as webhooks label it): the url's
/// path ends with it, `.git` and trailing slashes aside, compared case-insensitively. An
/// empty label names no repository in particular and matches.
fn same_repository(url: &str, repo: &str) -> bool {
    let norm = |s: &str| {
        let s = s.trim().trim_end_matches('/');
        s.strip_suffix(".git").unwrap_or(s).to_ascii_lowercase()
    };
    let (url, repo) = (norm(url), norm(repo));
    if repo.is_empty() {
        return true;
    }
    url == repo
        || url
            .strip_suffix(&repo)
            .is_some_and(|head| head.ends_with('/') || head.ends_with(':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use assay_spec::GitCredentials;

    fn content(revision: Option<&str>) -> GitContent {
        GitContent {
            url: "https://git.example/acme/shop.git".into(),
            revision: revision.map(str::to_string),
            paths: vec!["tests".into()],
            credentials: Some(GitCredentials {
                secret_name: "shop-git".into(),
            }),
        }
    }

    fn event(labels: &[(&str, &str)]) -> Provenance {
        Provenance {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Provenance::default()
        }
    }

    fn resolved(git: &GitContent, cause: &Provenance) -> (String, String) {
        let c = git_checkout(Some(git), cause).expect("a checkout");
        (c.revision, c.revision_source)
    }

    #[test]
    fn the_event_sha_wins_then_the_workflow_revision_then_the_default_branch() {
        let pinned = content(Some("v1.2"));
        let sha = event(&[("sha", "0123abc"), ("branch", "main")]);
        assert_eq!(resolved(&pinned, &sha), ("0123abc".into(), "event".into()));
        assert_eq!(
            resolved(&pinned, &event(&[("branch", "main")])),
            ("v1.2".into(), "workflow".into())
        );
        assert_eq!(
            resolved(&content(None), &event(&[])),
            (String::new(), "default".into())
        );
        // Blank values count as absent.
        assert_eq!(
            resolved(&content(Some(" ")), &event(&[("sha", "")])),
            (String::new(), "default".into())
        );
        let c = git_checkout(Some(&pinned), &sha).unwrap();
        assert_eq!(c.url, "https://git.example/acme/shop.git");
        assert_eq!(c.paths, ["tests"]);
        assert_eq!(c.secret_name, "shop-git");
        assert_eq!(git_checkout(None, &sha), None);
    }

    #[test]
    fn a_sha_of_another_repository_is_not_used() {
        let pinned = content(Some("main"));
        for repo in ["acme/shop", "ACME/Shop", "acme/shop.git", "shop", ""] {
            let cause = event(&[("sha", "abc1234"), ("repository", repo)]);
            assert_eq!(resolved(&pinned, &cause).1, "event", "{repo}");
        }
        for repo in ["acme/other", "other/shop", "cme/shop"] {
            let cause = event(&[("sha", "abc1234"), ("repository", repo)]);
            assert_eq!(
                resolved(&pinned, &cause),
                ("main".into(), "workflow".into()),
                "{repo}"
            );
        }
        assert!(same_repository("git@github.com:acme/shop.git", "acme/shop"));
        assert!(same_repository("/srv/git/acme/shop/", "acme/shop"));
        assert!(!same_repository("/srv/git/acme/shop", "acme/shopping"));
    }
}
