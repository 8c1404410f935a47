//! Per-test retries: the tests of a `tests.run` invocation that ended failed or errored run
//! again, alone, up to `retries.count` more times; their results merge per test id into one
//! result each, with how often the test ran and whether it passed only on a retry (flaky).
//! The merge is pure; [`run_with_retries`] drives it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use assay_proto::{ShardJob, TestCaseResult, TestStatus};

use crate::job::Identity;
use crate::outcome::Verdict;
use crate::steps::StepRunner;
use crate::suite::{TESTS, run_subset};

/// Which test outcomes are retried (`retries.on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// Failed and errored tests.
    Failed,
    /// Errored tests only.
    Errored,
}

impl RetryOn {
    /// `retry_on` of a shard job: "failed", or anything else (the default "errored").
    pub fn of(job: &ShardJob) -> RetryOn {
        if job.retry_on == "failed" {
            RetryOn::Failed
        } else {
            RetryOn::Errored
        }
    }

    fn matches(self, status: TestStatus) -> bool {
        match self {
            RetryOn::Failed => matches!(status, TestStatus::Failed | TestStatus::Errored),
            RetryOn::Errored => status == TestStatus::Errored,
        }
    }

    fn word(self) -> &'static str {
        match self {
            RetryOn::Failed => "failed",
            RetryOn::Errored => "errored",
        }
    }
}

/// Longest first-failure message kept in a flaky test's output note.
const NOTE_CHARS: usize = 200;

/// The results of one test command and its retries, merged per test id.
#[derive(Debug, Default)]
pub struct Merge {
    results: Vec<TestCaseResult>,
    /// Index into `results` of the first result of each id.
    index: HashMap<String, usize>,
    /// Per id: attempt number, outcome and message of its first failure.
    first_failure: HashMap<String, (u32, &'static str, String)>,
}

impl Merge {
    /// Starts from the first run's results; each of them ran once.
    pub fn new(mut results: Vec<TestCaseResult>) -> Merge {
        let mut merge = Merge::default();
        for (i, r) in results.iter_mut().enumerate() {
            r.attempts = 1;
            r.flaky = false;
            merge.index.entry(r.id.clone()).or_insert(i);
        }
        merge.results = results;
        for i in 0..merge.results.len() {
            merge.note_failure(i);
        }
        merge
    }

    /// Ids to run again: those whose latest result `on` retries and that the test command
    /// accepts (`known`, the ids it was given), once each, in result order.
    pub fn to_retry(&self, on: RetryOn, known: &HashSet<&str>) -> Vec<String> {
        let mut seen = HashSet::new();
        self.results
            .iter()
            .filter(|r| on.matches(r.status()) && known.contains(r.id.as_str()))
            .filter(|r| seen.insert(r.id.as_str()))
            .map(|r| r.id.clone())
            .collect()
    }

    /// Folds in the results of a retry of `ids`. Results for other ids (a report that is not
    /// only this run's) are ignored; an id the retry did not report keeps its earlier result.
    pub fn add_retry(&mut self, ids: &[String], retry: Vec<TestCaseResult>) {
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut done = HashSet::new();
        for mut r in retry {
            if !wanted.contains(r.id.as_str()) || !done.insert(r.id.clone()) {
                continue;
            }
            let Some(&i) = self.index.get(&r.id) else {
                continue;
            };
            r.attempts = self.results[i].attempts + 1;
            r.flaky = false;
            self.results[i] = r;
            self.note_failure(i);
        }
    }

    fn note_failure(&mut self, i: usize) {
        let r = &self.results[i];
        if matches!(r.status(), TestStatus::Failed | TestStatus::Errored)
            && !self.first_failure.contains_key(&r.id)
        {
            let message = if r.failure_message.trim().is_empty() {
                r.output
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
            } else {
                r.failure_message.as_str()
            };
            let word = if r.status() == TestStatus::Failed {
                "failed"
            } else {
                "errored"
            };
            self.first_failure
                .insert(r.id.clone(), (r.attempts, word, short(message)));
        }
    }

    /// The merged results: the latest result of each test, with `attempts` and `flaky` set;
    /// a flaky test's output starts with a note of its first failure.
    pub fn finish(mut self) -> Vec<TestCaseResult> {
        for r in &mut self.results {
            if r.status() != TestStatus::Passed {
                continue;
            }
            let Some((attempt, word, message)) = self.first_failure.get(&r.id) else {
                continue;
            };
            r.flaky = true;
            let mut note = format!(
                "flaky: passed on attempt {}; attempt {attempt} {word}",
                r.attempts
            );
            if !message.is_empty() {
                note.push_str(": ");
                note.push_str(message);
            }
            r.output = if r.output.is_empty() {
                note
            } else {
                format!("{note}\n\n{}", r.output)
            };
        }
        self.results
    }
}

fn short(message: &str) -> String {
    let line = message.lines().next().unwrap_or("").trim();
    if line.chars().count() > NOTE_CHARS {
        let cut: String = line.chars().take(NOTE_CHARS).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

/// `<dir>/<stem>-retry-<k>.<ext>` next to the first run's report.
pub fn retry_report(report: &Path, k: u32) -> PathBuf {
    let stem = report
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".to_string());
    let name = match report.extension() {
        Some(ext) => format!("{stem}-retry-{k}.{}", ext.to_string_lossy()),
        None => format!("{stem}-retry-{k}"),
    };
    report.with_file_name(name)
}

/// `a, b, c` for at most 20 ids, then `and N more`.
fn list(ids: &[&str]) -> String {
    let shown = ids.iter().take(20).copied().collect::<Vec<_>>().join(", ");
    match ids.len().saturating_sub(20) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

fn tests_word(n: usize) -> &'static str {
    if n == 1 { "test" } else { "tests" }
}

/// Runs `tests.run` for `ids` like [`run_subset`], then retries the tests the workflow's
/// `retries` asks for, up to `retries.count` more times while any remain, and merges the
/// results. The verdict follows the merged results: a test that passed on a retry counts as
/// passed.
pub(crate) async fn run_with_retries(
    job: &ShardJob,
    tests: &assay_proto::TestsSpec,
    id: &Identity,
    runner: &StepRunner,
    ids: &[String],
    report: &Path,
) -> (Verdict, Vec<TestCaseResult>) {
    let (verdict, results) = run_subset(tests, id, runner, Some(ids), report).await;
    if job.retries == 0 || tests.reports.is_empty() || results.is_empty() {
        return (verdict, Merge::new(results).finish());
    }
    let logs = runner.logs();
    let on = RetryOn::of(job);
    let known: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut merge = Merge::new(results);
    let mut last = verdict;
    let mut retried = false;
    for k in 1..=job.retries {
        let again = merge.to_retry(on, &known);
        if again.is_empty() {
            break;
        }
        logs.system(
            TESTS,
            format!(
                "retrying {} {} {} (retry {k} of {})",
                again.len(),
                on.word(),
                tests_word(again.len()),
                job.retries
            ),
        )
        .await;
        let (v, results) =
            run_subset(tests, id, runner, Some(&again), &retry_report(report, k)).await;
        if results.is_empty() {
            logs.system(
                TESTS,
                format!(
                    "retry {k} reported no results ({}); keeping the earlier results",
                    v.reason
                ),
            )
            .await;
            break;
        }
        merge.add_retry(&again, results);
        last = v;
        retried = true;
    }
    let merged = merge.finish();
    let flaky: Vec<&str> = merged
        .iter()
        .filter(|r| r.flaky)
        .map(|r| r.id.as_str())
        .collect();
    if !flaky.is_empty() {
        logs.system(
            TESTS,
            format!(
                "{} flaky {} passed on retry: {}",
                flaky.len(),
                tests_word(flaky.len()),
                list(&flaky)
            ),
        )
        .await;
    }
    if !retried {
        return (last, merged);
    }
    // The last command's exit speaks for the tests it ran; the merged results for all.
    let exit = crate::steps::Exit::Code(last.exit_code);
    (Verdict::of_tests(&merged, &exit), merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(id: &str, status: TestStatus, message: &str) -> TestCaseResult {
        TestCaseResult {
            id: id.to_string(),
            status: status as i32,
            failure_message: message.to_string(),
            output: format!("output of {id}"),
            duration_ms: 10,
            ..Default::default()
        }
    }

    fn known(ids: &[&'static str]) -> HashSet<&'static str> {
        ids.iter().copied().collect()
    }

    fn by_id<'a>(rs: &'a [TestCaseResult], id: &str) -> &'a TestCaseResult {
        rs.iter().find(|r| r.id == id).unwrap()
    }

    #[test]
    fn a_pass_after_a_failure_is_flaky() {
        let ids = known(&["a", "b", "c"]);
        let mut m = Merge::new(vec![
            case("a", TestStatus::Passed, ""),
            case("b", TestStatus::Failed, "assert 1 == 2\n  at line 3"),
            case("c", TestStatus::Skipped, ""),
        ]);
        let again = m.to_retry(RetryOn::Failed, &ids);
        assert_eq!(again, ["b"]);
        let mut pass = case("b", TestStatus::Passed, "");
        pass.duration_ms = 42;
        m.add_retry(&again, vec![pass]);
        assert!(m.to_retry(RetryOn::Failed, &ids).is_empty());
        let rs = m.finish();
        assert_eq!(rs.len(), 3);
        let b = by_id(&rs, "b");
        assert_eq!(
            (b.status(), b.attempts, b.flaky),
            (TestStatus::Passed, 2, true)
        );
        assert_eq!(b.duration_ms, 42, "the last run's duration");
        assert_eq!(
            b.output,
            "flaky: passed on attempt 2; attempt 1 failed: assert 1 == 2\n\noutput of b"
        );
        let a = by_id(&rs, "a");
        assert_eq!((a.attempts, a.flaky), (1, false));
        assert_eq!(a.output, "output of a");
        assert_eq!(by_id(&rs, "c").attempts, 1);
        let v = Verdict::of_tests(&rs, &crate::steps::Exit::Code(0));
        assert_eq!(v, Verdict::passed());
    }

    #[test]
    fn a_test_failing_every_retry_stays_failed() {
        let ids = known(&["a", "b"]);
        let mut m = Merge::new(vec![
            case("a", TestStatus::Failed, "first"),
            case("b", TestStatus::Errored, "setup broke"),
        ]);
        let retries = 2;
        for k in 1..=retries {
            let again = m.to_retry(RetryOn::Failed, &ids);
            assert_eq!(again, ["a", "b"], "retry {k}");
            m.add_retry(
                &again,
                vec![
                    case("a", TestStatus::Failed, &format!("run {}", k + 1)),
                    case("b", TestStatus::Errored, "setup broke"),
                    // Not retried: ignored.
                    case("z", TestStatus::Passed, ""),
                ],
            );
        }
        let rs = m.finish();
        assert_eq!(rs.len(), 2);
        let a = by_id(&rs, "a");
        assert_eq!(
            (a.status(), a.attempts, a.flaky),
            (TestStatus::Failed, retries + 1, false)
        );
        assert_eq!(a.failure_message, "run 3", "the last run's failure");
        assert_eq!(
            a.output, "output of a",
            "no note on a test that never passed"
        );
        assert_eq!(by_id(&rs, "b").attempts, 3);
        let v = Verdict::of_tests(&rs, &crate::steps::Exit::Code(1));
        assert_eq!(v.reason, "1 failed, 1 errored of 2 tests");
    }

    #[test]
    fn on_errored_ignores_failures() {
        let ids = known(&["a", "b", "c"]);
        let mut m = Merge::new(vec![
            case("a", TestStatus::Failed, "nope"),
            case("b", TestStatus::Errored, "fixture"),
            case("c", TestStatus::Passed, ""),
        ]);
        let again = m.to_retry(RetryOn::Errored, &ids);
        assert_eq!(again, ["b"]);
        m.add_retry(&again, vec![case("b", TestStatus::Passed, "")]);
        let rs = m.finish();
        let a = by_id(&rs, "a");
        assert_eq!(
            (a.status(), a.attempts, a.flaky),
            (TestStatus::Failed, 1, false)
        );
        let b = by_id(&rs, "b");
        assert_eq!((b.attempts, b.flaky), (2, true));
    }

    #[test]
    fn only_known_ids_are_retried_and_missing_results_keep_the_earlier_one() {
        let ids = known(&["a"]);
        let mut m = Merge::new(vec![
            case("a", TestStatus::Failed, ""),
            case("unmapped::x", TestStatus::Failed, ""),
            case("a", TestStatus::Failed, ""),
        ]);
        let again = m.to_retry(RetryOn::Failed, &ids);
        assert_eq!(again, ["a"], "once each, only ids the command was given");
        m.add_retry(&again, Vec::new());
        let rs = m.finish();
        assert_eq!(rs[0].attempts, 1);
        assert_eq!(rs[0].status(), TestStatus::Failed);
    }

    #[test]
    fn notes_fall_back_to_the_output_and_stay_short() {
        let ids = known(&["a"]);
        let mut first = case("a", TestStatus::Errored, "");
        first.output = "\nTraceback: boom\nmore".to_string();
        let mut m = Merge::new(vec![first]);
        let again = m.to_retry(RetryOn::Errored, &ids);
        let mut pass = case("a", TestStatus::Passed, "");
        pass.output = String::new();
        m.add_retry(&again, vec![pass]);
        let rs = m.finish();
        assert_eq!(
            rs[0].output,
            "flaky: passed on attempt 2; attempt 1 errored: Traceback: boom"
        );
        assert_eq!(short(&"x".repeat(300)).chars().count(), NOTE_CHARS + 1);
    }

    #[test]
    fn retry_reports_sit_next_to_the_first() {
        assert_eq!(
            retry_report(Path::new("/w/.assay/reports/shard-0-attempt-1.xml"), 2),
            Path::new("/w/.assay/reports/shard-0-attempt-1-retry-2.xml")
        );
        assert_eq!(
            retry_report(Path::new("/w/r"), 1),
            Path::new("/w/r-retry-1")
        );
    }
}
