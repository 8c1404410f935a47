//! The shard job: decoding, the per-attempt identity, template substitution and shell quoting.

use std::path::{Path, PathBuf};

use assay_proto::ShardJob;
use base64::Engine as _;
use prost::Message as _;

use crate::{Error, Result};

/// Largest job accepted (a job carries scripts and maybe thousands of test ids).
pub const MAX_JOB_BYTES: usize = 16 * 1024 * 1024;

/// Decodes `ASSAY_SHARD_JOB`: standard base64 of a protobuf [`ShardJob`].
pub fn decode_base64(text: &str) -> Result<ShardJob> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| Error::InvalidJob(format!("ASSAY_SHARD_JOB is not standard base64: {e}")))?;
    decode_bytes(&bytes)
}

/// Decodes raw protobuf bytes of a [`ShardJob`] (the `--job-file` form).
pub fn decode_bytes(bytes: &[u8]) -> Result<ShardJob> {
    if bytes.len() > MAX_JOB_BYTES {
        return Err(Error::InvalidJob(format!(
            "job is {} bytes, over the limit of {MAX_JOB_BYTES}",
            bytes.len()
        )));
    }
    let job = ShardJob::decode(bytes)
        .map_err(|e| Error::InvalidJob(format!("not a protobuf assay.v1.ShardJob: {e}")))?;
    if job.execution_id.is_empty() {
        return Err(Error::InvalidJob(
            "execution_id is empty; the scheduler must set it".to_string(),
        ));
    }
    Ok(job)
}

/// Who this attempt is: the parts of every subject and idempotency key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub execution: String,
    pub workflow: String,
    pub shard: u32,
    pub shard_count: u32,
    pub attempt: u32,
    /// The attempt the job message was published with (`ShardJob.job_attempt`), repeated in
    /// every status so the launcher can tell stale copies of older job messages.
    pub job_attempt: u32,
    /// This shard's place among the shards of its matrix combination and their number:
    /// what the count, duration and queue splits go by. The whole execution without matrix.
    pub split_index: u32,
    pub split_count: u32,
    /// The matrix combination's label (empty without matrix); reported test ids carry it.
    pub variant: String,
    /// The combination's parameters, exported as `ASSAY_MATRIX_<NAME>`.
    pub matrix: Vec<(String, String)>,
    /// Key of the work queue the shard's group shares (`strategy: queue`): the execution id,
    /// plus `-m<group>` for a matrix combination.
    pub queue: String,
    /// The group's number, which places its queue batches apart from other groups'.
    pub group: u32,
    /// Values of the workflow's sensitive parameters, masked in logs and results.
    pub masker: crate::mask::Masker,
    /// `traceparent` of the job, continued by everything the runner publishes.
    pub parent_trace: Option<String>,
    /// What caused the execution, as `ASSAY_*` variables ([`crate::env::provenance`]).
    pub provenance: Vec<(String, String)>,
}

impl Identity {
    pub fn of(job: &ShardJob) -> Identity {
        Identity {
            execution: job.execution_id.clone(),
            workflow: job.workflow.clone(),
            shard: job.shard_index,
            shard_count: job.shard_count,
            attempt: job.attempt,
            job_attempt: job.job_attempt,
            split_index: if job.group_shard_count == 0 {
                job.shard_index
            } else {
                job.group_shard_index
            },
            split_count: if job.group_shard_count == 0 {
                job.shard_count
            } else {
                job.group_shard_count
            },
            variant: job.variant.clone(),
            matrix: job
                .matrix
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            queue: if job.variant.is_empty() {
                job.execution_id.clone()
            } else {
                format!("{}-m{}", job.execution_id, job.group)
            },
            group: job.group,
            masker: crate::mask::Masker::new(&job.masked),
            parent_trace: job
                .header
                .as_ref()
                .map(|h| h.traceparent.clone())
                .filter(|t| !t.is_empty()),
            provenance: job
                .provenance
                .as_ref()
                .map(crate::env::provenance)
                .unwrap_or_default(),
        }
    }

    /// `<exec>/<shard>/<attempt>/<suffix>`
    pub fn key(&self, suffix: &str) -> String {
        format!(
            "{}/{}/{}/{suffix}",
            self.execution, self.shard, self.attempt
        )
    }

    /// A message header for `suffix`, continuing the job's trace.
    pub fn header(&self, suffix: &str) -> assay_proto::Header {
        assay_bus::header(
            "assay-runner",
            self.key(suffix),
            self.parent_trace.as_deref(),
        )
    }

    /// Variables every process of the shard sees, besides the job's own env.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("ASSAY_EXECUTION_ID".into(), self.execution.clone()),
            ("ASSAY_WORKFLOW".into(), self.workflow.clone()),
            ("ASSAY_SHARD_INDEX".into(), self.shard.to_string()),
            ("ASSAY_SHARD_COUNT".into(), self.shard_count.to_string()),
            ("ASSAY_ATTEMPT".into(), self.attempt.to_string()),
        ];
        if !self.variant.is_empty() {
            env.push(("ASSAY_MATRIX".into(), self.variant.clone()));
            for (k, v) in &self.matrix {
                let name: String = k
                    .chars()
                    .map(|c| {
                        if c == '-' {
                            '_'
                        } else {
                            c.to_ascii_uppercase()
                        }
                    })
                    .collect();
                env.push((format!("ASSAY_MATRIX_{name}"), v.clone()));
            }
        }
        env.extend(self.provenance.iter().cloned());
        env
    }

    /// A listed test id as results carry it: with the matrix combination appended.
    pub fn qualify(&self, test_id: &str) -> String {
        assay_plan::qualify(test_id, &self.variant)
    }

    /// `<workdir>/.assay/reports/<execution>/shard-<index>-attempt-<attempt>.xml`: unique per
    /// execution, so executions sharing a working directory never read each other's reports.
    pub fn report_path(&self, workdir: &Path) -> PathBuf {
        self.report_dir(workdir)
            .join(format!("shard-{}-attempt-{}.xml", self.shard, self.attempt))
    }

    /// `<workdir>/.assay/reports/<execution>`
    pub fn report_dir(&self, workdir: &Path) -> PathBuf {
        workdir
            .join(".assay")
            .join("reports")
            .join(crate::job::path_safe(&self.execution))
    }
}

/// `s` with anything but ASCII letters, digits, `-` and `_` replaced, for a path component.
pub fn path_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Single-quotes `s` for POSIX `sh`: `it's` becomes `'it'\''s'`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Quotes `s` only when `sh` would otherwise split or expand it.
pub fn quote_if_needed(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:=@%".contains(c));
    if safe { s.to_string() } else { quote(s) }
}

/// The `{tests}` value: every id single-quoted, joined by spaces.
pub fn quote_all(ids: &[String]) -> String {
    ids.iter().map(|id| quote(id)).collect::<Vec<_>>().join(" ")
}

/// Expands `{tests}`, `{tests_file}` and `{report}` in a `tests.run` template. `tests` is
/// already quoted; the paths are quoted here if they need to be. Without a `tests_file`,
/// `{tests_file}` is left as it is.
pub fn render_run(template: &str, tests: &str, tests_file: Option<&Path>, report: &Path) -> String {
    let report = quote_if_needed(&report.to_string_lossy());
    let tests_file = tests_file.map(|p| quote_if_needed(&p.to_string_lossy()));
    // One pass, so that a `{report}` inside a test id is left alone.
    let mut out = String::with_capacity(template.len() + tests.len());
    let mut rest = template;
    while let Some(pos) = rest.find('{') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("{tests}") {
            out.push_str(tests);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{report}") {
            out.push_str(&report);
            rest = after;
        } else if let (Some(after), Some(file)) =
            (tail.strip_prefix("{tests_file}"), tests_file.as_deref())
        {
            out.push_str(file);
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Expands `{report}` in a report glob (escaped, so the path matches literally) and makes it
/// absolute against `workdir`.
pub fn render_report_glob(pattern: &str, report: &Path, workdir: &Path) -> String {
    let escaped = glob::Pattern::escape(&report.to_string_lossy());
    let pattern = pattern.replace("{report}", &escaped);
    if Path::new(&pattern).is_absolute() {
        pattern
    } else {
        let base = glob::Pattern::escape(&workdir.to_string_lossy());
        format!("{}/{}", base.trim_end_matches('/'), pattern)
    }
}

/// Non-empty trimmed lines, first occurrence kept; returns the ids and the duplicates seen.
pub fn parse_ids(listing: &str) -> (Vec<String>, Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    let mut ids = Vec::new();
    let mut dups = Vec::new();
    for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if seen.insert(line) {
            ids.push(line.to_string());
        } else if !dups.iter().any(|d| d == line) {
            dups.push(line.to_string());
        }
    }
    (ids, dups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote_if_needed("/tmp/x-1.xml"), "/tmp/x-1.xml");
        assert_eq!(quote_if_needed("/tmp/my dir/x.xml"), "'/tmp/my dir/x.xml'");
        assert_eq!(quote_if_needed("$HOME"), "'$HOME'");
        assert_eq!(
            quote_all(&["t::a".into(), "t::b[1 2]".into()]),
            "'t::a' 't::b[1 2]'"
        );
    }

    #[test]
    fn quoted_ids_survive_the_shell() {
        let ids = vec![
            "it's".to_string(),
            "a b".into(),
            "$(rm -rf /)".into(),
            "\"q\"".into(),
        ];
        let script = format!("printf '%s\\n' {}", quote_all(&ids));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().collect::<Vec<_>>(), ids);
    }

    #[test]
    fn substitution() {
        let report = Path::new("/w/.assay/reports/shard-0-attempt-1.xml");
        assert_eq!(
            render_run(
                "pytest {tests} --junitxml={report}",
                "'a' 'b'",
                None,
                report
            ),
            "pytest 'a' 'b' --junitxml=/w/.assay/reports/shard-0-attempt-1.xml"
        );
        assert_eq!(
            render_run("run {tests}", "'{report}'", None, report),
            "run '{report}'"
        );
        assert_eq!(render_run("echo {x} {", "", None, report), "echo {x} {");
        assert_eq!(
            render_run("go test ./... {tests}", "", None, report),
            "go test ./... "
        );
        let file = Path::new("/w/.assay/scripts/e 1/tests-1.txt");
        assert_eq!(
            render_run(
                "xargs -a {tests_file} t {tests_file}",
                "",
                Some(file),
                report
            ),
            "xargs -a '/w/.assay/scripts/e 1/tests-1.txt' t '/w/.assay/scripts/e 1/tests-1.txt'"
        );
        assert_eq!(
            render_run("t {tests_file} {tests}", "'{tests_file}'", None, report),
            "t {tests_file} '{tests_file}'"
        );
        assert_eq!(
            render_report_glob("{report}", Path::new("/w/[a]/r.xml"), Path::new("/w")),
            "/w/[[]a[]]/r.xml"
        );
        assert_eq!(
            render_report_glob("target/*.xml", report, Path::new("/w/")),
            "/w/target/*.xml"
        );
    }

    #[test]
    fn ids_are_trimmed_and_deduplicated() {
        let (ids, dups) = parse_ids(" a\n\nb\na\n  \nc\nb\na\n");
        assert_eq!(ids, vec!["a", "b", "c"]);
        assert_eq!(dups, vec!["a", "b"]);
    }

    #[test]
    fn jobs_decode_and_reject_garbage() {
        let job = ShardJob {
            execution_id: "e1".into(),
            attempt: 2,
            ..Default::default()
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(job.encode_to_vec());
        assert_eq!(decode_base64(&b64).unwrap().attempt, 2);
        assert!(decode_base64("%%%").is_err());
        assert!(decode_bytes(&[0xff, 0xff]).is_err());
        let err = decode_bytes(&ShardJob::default().encode_to_vec()).unwrap_err();
        assert!(err.to_string().contains("execution_id is empty"));
        let id = Identity::of(&job);
        assert_eq!(id.key("final"), "e1/0/2/final");
    }
}

/// A test id reduced to dotted form, so a listing's `tests/test_cart.py::test_add` and a
/// JUnit report's `tests.test_cart::test_add` compare equal.
pub fn normalize_id(id: &str) -> String {
    id.replace(".py::", "::")
        .replace(['/', '\\'], ".")
        .replace("::", ".")
}

/// Renames each result to the listed id it reports on, so results, history and plans all
/// speak the listing's ids: an exact match of the normalized forms, or else the unique listed
/// id whose normalized form ends the result's at a `.` boundary (JUnit adds a classname the
/// listing may not have). Results that match nothing keep their id. Returns how many were
/// renamed.
pub fn map_to_listed(results: &mut [assay_proto::TestCaseResult], listed: &[String]) -> usize {
    use std::collections::HashMap;
    let mut by_key: HashMap<String, Option<&str>> = HashMap::with_capacity(listed.len());
    for id in listed {
        by_key
            .entry(normalize_id(id))
            .and_modify(|e| *e = None) // ambiguous
            .or_insert(Some(id.as_str()));
    }
    let exact: std::collections::HashSet<&str> = listed.iter().map(String::as_str).collect();
    let mut renamed = 0;
    for r in results.iter_mut() {
        if exact.contains(r.id.as_str()) {
            continue;
        }
        let key = normalize_id(&r.id);
        let mut found = by_key.get(&key).copied().flatten();
        if found.is_none() {
            // Suffixes at '.' boundaries, longest first.
            found = key
                .match_indices('.')
                .map(|(i, _)| &key[i + 1..])
                .find_map(|suffix| by_key.get(suffix).copied().flatten());
        }
        if let Some(id) = found {
            r.id = id.to_string();
            renamed += 1;
        }
    }
    renamed
}

#[cfg(test)]
mod map_tests {
    use super::*;
    use assay_proto::TestCaseResult;

    fn result(id: &str) -> TestCaseResult {
        TestCaseResult {
            id: id.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn maps_pytest_and_bare_ids_to_the_listing() {
        let listed: Vec<String> = [
            "tests/test_cart.py::test_add",
            "tests/test_inventory.py::test_in_stock[apple]",
            "big_900",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut results = vec![
            result("tests.test_cart::test_add"),
            result("tests.test_inventory::test_in_stock[apple]"),
            result("timed::big_900"),
            result("other::unknown"),
            result("big_900"),
        ];
        assert_eq!(map_to_listed(&mut results, &listed), 3);
        let ids: Vec<&str> = results.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "tests/test_cart.py::test_add",
                "tests/test_inventory.py::test_in_stock[apple]",
                "big_900",
                "other::unknown",
                "big_900"
            ]
        );
    }

    #[test]
    fn ambiguous_listings_are_left_alone() {
        let listed = vec!["a/x.py::t".to_string(), "a.x::t".to_string()];
        let mut results = vec![result("a.x::t2"), result("q.a.x.t")];
        assert_eq!(map_to_listed(&mut results, &listed), 0);
    }
}
