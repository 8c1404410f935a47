//! The environment of step and test processes, built from scratch: nothing of the runner's
//! own environment (NATS credentials, the shard job, tokens) reaches them but the few
//! variables of [`INHERITED`].
//!
//! A process gets, later entries winning: [`INHERITED`], the workflow's `env`, the
//! `ASSAY_*` variables of the shard ([`crate::job::Identity::env`], with [`provenance`]),
//! then the step's own `env`.

use std::collections::HashMap;
use std::ffi::OsString;

use assay_proto::Provenance;

/// Variables of the runner's own environment that steps and tests inherit, when set: where
/// to find programs (`PATH`), who and where the user is (`HOME`, `USER`, `LOGNAME`), locale
/// and time zone (`LANG`, `LC_ALL`, `TZ`), the terminal type (`TERM`) and where temporary
/// files go (`TMPDIR`). Every other variable of the runner (`ASSAY_NATS_*`, `ASSAY_SHARD_JOB`,
/// tokens, cloud credentials) is withheld; a workflow that needs one names it in its `env`.
pub const INHERITED: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TERM", "TMPDIR",
];

/// `PATH` when the runner has none (what `sh` would use anyway).
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The [`INHERITED`] variables the runner has, in that order (`PATH` always).
pub fn inherited() -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> = INHERITED
        .iter()
        .filter_map(|name| std::env::var_os(name).map(|v| (name.to_string(), v)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".to_string(), DEFAULT_PATH.into()));
    }
    env
}

/// Labels of the triggering event exported under a name of their own, besides
/// `ASSAY_EVENT_LABEL_<KEY>`.
pub const LABEL_VARS: &[(&str, &str)] = &[
    ("sha", "ASSAY_GIT_SHA"),
    ("branch", "ASSAY_GIT_BRANCH"),
    ("tag", "ASSAY_GIT_TAG"),
    ("ref", "ASSAY_GIT_REF"),
    ("repository", "ASSAY_GIT_REPOSITORY"),
    ("pull_request", "ASSAY_PULL_REQUEST"),
    ("sender", "ASSAY_SENDER"),
    ("provider", "ASSAY_GIT_PROVIDER"),
];

/// What caused the execution, as variables: `ASSAY_TRIGGER`, `ASSAY_EVENT_ID`,
/// `ASSAY_EVENT_SOURCE`, `ASSAY_EVENT_TYPE`, `ASSAY_REQUESTED_BY`, the well-known labels of
/// [`LABEL_VARS`], and every label as `ASSAY_EVENT_LABEL_<KEY>` (key upper-cased, anything
/// but ASCII letters and digits turned into `_`). Empty values (and values a process
/// environment cannot hold: with a NUL byte) are left out. Sorted by label key, so the
/// result does not depend on map order.
pub fn provenance(p: &Provenance) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("ASSAY_TRIGGER", &p.trigger),
        ("ASSAY_EVENT_ID", &p.event_id),
        ("ASSAY_EVENT_SOURCE", &p.source),
        ("ASSAY_EVENT_TYPE", &p.r#type),
        ("ASSAY_REQUESTED_BY", &p.requested_by),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.clone()))
    .collect();
    let labels = sorted(&p.labels);
    for (key, var) in LABEL_VARS {
        if let Some((_, v)) = labels.iter().find(|(k, _)| k == key) {
            env.push((var.to_string(), v.to_string()));
        }
    }
    for (k, v) in &labels {
        env.push((label_var(k), v.to_string()));
    }
    env.retain(|(_, v)| !v.is_empty() && !v.contains('\0'));
    env
}

/// `ASSAY_EVENT_LABEL_<KEY>`: `pull-request.number` becomes
/// `ASSAY_EVENT_LABEL_PULL_REQUEST_NUMBER`.
pub fn label_var(key: &str) -> String {
    let name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("ASSAY_EVENT_LABEL_{name}")
}

fn sorted(map: &HashMap<String, String>) -> Vec<(&str, &str)> {
    let mut v: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_becomes_assay_variables() {
        let p = Provenance {
            trigger: "on-push".into(),
            event_id: "01JEVENT".into(),
            source: "github".into(),
            r#type: "push".into(),
            idempotency_key: "delivery-1".into(),
            labels: HashMap::from(
                [
                    ("sha", "abc123"),
                    ("branch", "main"),
                    ("tag", ""),
                    ("ref", "refs/heads/main"),
                    ("repository", "acme/shop"),
                    ("pull_request", "42"),
                    ("sender", "octocat"),
                    ("provider", "github"),
                    ("build.no-1", "7"),
                    ("nul", "a\0b"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
            ),
            requested_by: String::new(),
            occurred_at_ms: 1,
        };
        let env = provenance(&p);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        for (k, v) in [
            ("ASSAY_TRIGGER", "on-push"),
            ("ASSAY_EVENT_ID", "01JEVENT"),
            ("ASSAY_EVENT_SOURCE", "github"),
            ("ASSAY_EVENT_TYPE", "push"),
            ("ASSAY_GIT_SHA", "abc123"),
            ("ASSAY_GIT_BRANCH", "main"),
            ("ASSAY_GIT_REF", "refs/heads/main"),
            ("ASSAY_GIT_REPOSITORY", "acme/shop"),
            ("ASSAY_PULL_REQUEST", "42"),
            ("ASSAY_SENDER", "octocat"),
            ("ASSAY_GIT_PROVIDER", "github"),
            ("ASSAY_EVENT_LABEL_SHA", "abc123"),
            ("ASSAY_EVENT_LABEL_PULL_REQUEST", "42"),
            ("ASSAY_EVENT_LABEL_BUILD_NO_1", "7"),
        ] {
            assert_eq!(get(k), Some(v), "{k} in {env:?}");
        }
        // Empty values and values no environment can hold are left out.
        for k in [
            "ASSAY_REQUESTED_BY",
            "ASSAY_GIT_TAG",
            "ASSAY_EVENT_LABEL_TAG",
            "ASSAY_EVENT_LABEL_NUL",
        ] {
            assert_eq!(get(k), None, "{k}");
        }
        // The idempotency key and time are not variables.
        assert!(env.iter().all(|(_, v)| v != "delivery-1"));
        // Map order does not matter.
        assert_eq!(provenance(&p.clone()), env);
        assert!(provenance(&Provenance::default()).is_empty());
    }

    #[test]
    fn label_keys_become_variable_names() {
        assert_eq!(label_var("sha"), "ASSAY_EVENT_LABEL_SHA");
        assert_eq!(
            label_var("pull-request.number"),
            "ASSAY_EVENT_LABEL_PULL_REQUEST_NUMBER"
        );
        assert_eq!(label_var("ü/x"), "ASSAY_EVENT_LABEL___X");
    }

    #[test]
    fn only_the_allow_list_is_inherited() {
        let env = inherited();
        assert!(env.iter().all(|(k, _)| INHERITED.contains(&k.as_str())));
        assert!(env.iter().any(|(k, _)| k == "PATH"));
    }
}
