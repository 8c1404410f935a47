//! How a batch of test ids becomes `tests.run` invocations. Pure.
//!
//! `{tests}` expands to the ids, shell-quoted; `{tests_file}` to a file with one id per line;
//! `{report}` to the invocation's report path. One `exec` takes at most the kernel's
//! `ARG_MAX` for all its arguments and environment together (2 MiB on Linux with the
//! default stack), so a batch whose `{tests}` expansion would pass [`MAX_COMMAND_BYTES`] is
//! split into several invocations, each with its own `{report}` (and `{tests_file}`).

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::job::quote;

/// Most bytes one `tests.run` invocation may take: the expanded command plus
/// [`ARG_POINTER_BYTES`] per test id it passes. Half of Linux's 2 MiB `ARG_MAX`, leaving the
/// rest for the environment and whatever arguments the command adds itself.
pub const MAX_COMMAND_BYTES: usize = 1024 * 1024;

/// What one more argument costs `execve` besides its bytes: the pointer to it.
pub const ARG_POINTER_BYTES: usize = std::mem::size_of::<usize>();

/// Room kept for the `{tests_file}` and `{report}` paths, which are not known in advance
/// (a split adds `-part-<k>` to the report).
const PATH_ROOM: usize = 512;

/// A batch cut into invocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Consecutive ranges of the batch, one per invocation; at least one (maybe empty).
    pub parts: Vec<Range<usize>>,
    /// The estimated size of the whole batch in one invocation, in the units of
    /// [`MAX_COMMAND_BYTES`].
    pub bytes: usize,
}

/// Cuts `ids` into as few consecutive parts as keep each invocation of `template` within
/// `limit` bytes. Without `{tests}` in the template, the ids do not reach the command line
/// and the batch stays whole. An id too long for any invocation gets one of its own (and
/// the command says what it thinks of it).
pub fn split(template: &str, ids: &[String], limit: usize) -> Split {
    let uses = template.matches("{tests}").count();
    let fixed = template.len()
        + PATH_ROOM
            * (template.matches("{report}").count() + template.matches("{tests_file}").count());
    if uses == 0 || ids.is_empty() {
        return Split {
            parts: std::iter::once(0..ids.len()).collect(),
            bytes: fixed,
        };
    }
    let cost = |id: &String| uses * (quote(id).len() + 1 + ARG_POINTER_BYTES);
    let mut parts = Vec::new();
    let (mut start, mut size, mut bytes) = (0, fixed, fixed);
    for (i, id) in ids.iter().enumerate() {
        let c = cost(id);
        bytes += c;
        if i > start && size + c > limit {
            parts.push(start..i);
            (start, size) = (i, fixed);
        }
        size += c;
    }
    parts.push(start..ids.len());
    Split { parts, bytes }
}

/// The `{report}` of invocation `k` (1-based) of a split batch: the batch's own for the
/// first, `<stem>-part-<k>.<ext>` beside it for the others.
pub fn part_report(report: &Path, k: usize) -> PathBuf {
    if k <= 1 {
        return report.to_path_buf();
    }
    let stem = report
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".to_string());
    let name = match report.extension() {
        Some(ext) => format!("{stem}-part-{k}.{}", ext.to_string_lossy()),
        None => format!("{stem}-part-{k}"),
    };
    report.with_file_name(name)
}

/// The `{tests_file}` content: one id per line.
pub fn tests_file(ids: &[String]) -> String {
    let mut out = String::with_capacity(ids.iter().map(|i| i.len() + 1).sum());
    for id in ids {
        out.push_str(id);
        out.push('\n');
    }
    out
}

#[cfg(test)]
// Lists of one range are what `parts` holds, not a mistaken `vec![range]`.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: usize, len: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("tests/m/test_{i:06}.py::T::t[{}]", "x".repeat(len)))
            .collect()
    }

    #[test]
    fn small_batches_and_templates_without_tests_stay_whole() {
        let batch = ids(100, 50);
        let s = split(
            "pytest {tests} --junitxml={report}",
            &batch,
            MAX_COMMAND_BYTES,
        );
        assert_eq!(s.parts, [0..100]);
        let s = split(
            "pytest @{tests_file} --junitxml={report}",
            &ids(50_000, 80),
            1000,
        );
        assert_eq!(s.parts, [0..50_000]);
        assert_eq!(split("run {tests}", &[], 10).parts, [0..0]);
    }

    #[test]
    fn big_batches_are_cut_under_the_limit() {
        let batch = ids(30_000, 60); // ~90-byte ids
        let s = split(
            "pytest {tests} --junitxml={report}",
            &batch,
            MAX_COMMAND_BYTES,
        );
        // 101 bytes each (quotes, a space, a pointer): 3.03 MB in three parts.
        assert_eq!(s.bytes, 30_000 * 101 + 34 + PATH_ROOM);
        assert_eq!(s.parts.len(), 3, "{} bytes", s.bytes);
        // Two uses of {tests} cost twice.
        let twice = split("a {tests}; b {tests}", &batch, MAX_COMMAND_BYTES);
        assert!(twice.parts.len() >= 2 * s.parts.len() - 1);
        // An id longer than the limit gets an invocation of its own.
        let mut odd = ids(3, 10);
        odd.insert(1, "y".repeat(2000));
        let s = split("t {tests}", &odd, 1000);
        assert_eq!(s.parts, [0..1, 1..2, 2..4]);
    }

    #[test]
    fn part_reports_sit_beside_the_batch_report() {
        let r = Path::new("/w/.assay/reports/e/shard-0-attempt-1.xml");
        assert_eq!(part_report(r, 1), r);
        assert_eq!(
            part_report(r, 3),
            Path::new("/w/.assay/reports/e/shard-0-attempt-1-part-3.xml")
        );
        assert_eq!(tests_file(&["a b".into(), "c".into()]), "a b\nc\n");
    }

    proptest! {
        /// Every id lands in exactly one part, in order, and every part of more than one id
        /// fits the limit.
        #[test]
        fn parts_cover_the_batch_once_within_the_limit(
            lens in proptest::collection::vec(1usize..300, 0..400),
            limit in 600usize..20_000,
        ) {
            let batch: Vec<String> = lens.iter().enumerate().map(|(i, n)| format!("{i}{}", "z".repeat(*n))).collect();
            let template = "run {tests} > {report}";
            let s = split(template, &batch, limit);
            let mut next = 0;
            for part in &s.parts {
                prop_assert_eq!(part.start, next);
                next = part.end;
                if part.len() > 1 {
                    let size = template.len() + PATH_ROOM
                        + batch[part.clone()].iter().map(|id| quote(id).len() + 1 + ARG_POINTER_BYTES).sum::<usize>();
                    prop_assert!(size <= limit, "{} > {}", size, limit);
                }
            }
            prop_assert_eq!(next, batch.len());
        }
    }
}
