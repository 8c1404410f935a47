//! The environment of step and test processes, built from scratch: nothing of the runner's
//! own environment (NATS credentials, the shard job, tokens) reaches them but the few
//! variables of [`INHERITED`].
//!
//! A process gets, later entries winning: [`INHERITED`], the workflow's `env`, the
//! `ASSAY_*` variables of the shard ([`crate::job::Identity::env`]),
//! then the step's own `env`.

use std::ffi::OsString;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_allow_list_is_inherited() {
        let env = inherited();
        assert!(env.iter().all(|(k, _)| INHERITED.contains(&k.as_str())));
        assert!(env.iter().any(|(k, _)| k == "PATH"));
    }
}
