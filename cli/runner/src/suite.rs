//! The test phase of a shard: the plan it runs (filled in when it travelled apart), which
//! tests that is (`tests.list`, logged as a count and a sample), how they run (one batch, a
//! split `{tests}` line, or a work queue and the shared tail) and where their JUnit reports
//! are read. `crate::run` decides the shard's lifecycle around it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use assay_proto::{ShardJob, ShardState, TestCaseResult};

use crate::job::{Identity, quote_all, render_report_glob, render_run};
use crate::outcome::Verdict;
use crate::publish::wait_bus;
use crate::steps::{StepDef, StepRunner};
use crate::{BusSlot, Published, Result, command, job, junit, publish, queue, retries, steps};

pub(crate) const TESTS: &str = "tests";

/// The job with its plan filled in, when the plan was too large to travel in it and was
/// stored apart (`ShardJob.plan_data`).
pub(crate) async fn with_plan<'a>(
    job: &'a ShardJob,
    bus_rx: &BusSlot,
) -> std::result::Result<std::borrow::Cow<'a, ShardJob>, String> {
    if job.plan_data.is_empty() {
        return Ok(std::borrow::Cow::Borrowed(job));
    }
    let mut bus_rx = bus_rx.clone();
    let bus = wait_bus(&mut bus_rx).await.map_err(|e| e.to_string())?;
    let mut full = job.clone();
    bus.load_plan(&mut full)
        .await
        .map_err(|e| format!("cannot read this shard's plan ({}): {e}", job.plan_data))?;
    Ok(std::borrow::Cow::Owned(full))
}

/// Lists (or takes) this shard's test ids, runs them and reads their reports. Queue mode
/// publishes each batch's results itself (before acking the batch) and returns how many
/// result batches it published, so the caller numbers the rest after them.
pub(crate) async fn run_tests(
    job: &ShardJob,
    tests: &assay_proto::TestsSpec,
    id: &Identity,
    runner: &StepRunner,
    bus_rx: &BusSlot,
) -> (Verdict, Vec<TestCaseResult>, Published) {
    let logs = runner.logs();
    let errored = |reason: String| (Verdict::errored(reason), Vec::new(), Published::default());

    let report = id.report_path(runner.workdir());
    if let Some(parent) = report.parent()
        && let Err(e) = std::fs::create_dir_all(parent)
    {
        return errored(format!(
            "cannot create the report directory {}: {e}; is the working directory writable?",
            parent.display()
        ));
    }
    // A report left by an earlier run in the same directory must not count as ours.
    let _ = std::fs::remove_file(&report);

    let by_duration = job.strategy == "duration" && !tests.list.is_empty();
    let by_queue = job.strategy == "queue" && !tests.list.is_empty() && job.test_ids.is_empty();
    if !job.test_ids.is_empty() && !by_duration {
        logs.system(
            TESTS,
            format!(
                "this shard runs {} test ids given by the scheduler",
                job.test_ids.len()
            ),
        )
        .await;
        let (v, r) =
            retries::run_with_retries(job, tests, id, runner, &job.test_ids, &report).await;
        return (v, r, Published::default());
    }
    if tests.list.is_empty() {
        if job.retries > 0 {
            logs.system(
                TESTS,
                "no tests.list, so failing tests cannot be run again by id: no per-test retries",
            )
            .await;
        }
        let (v, r) = run_subset(tests, id, runner, None, &report).await;
        return (v, r, Published::default());
    }
    let all = match list_tests(tests, runner).await {
        Ok(all) => all,
        Err(v) => return (v, Vec::new(), Published::default()),
    };
    if by_queue {
        let mut bus_rx = bus_rx.clone();
        let bus = match wait_bus(&mut bus_rx).await {
            Ok(bus) => bus,
            Err(e) => return errored(e.to_string()),
        };
        return queue::run(job, tests, id, runner, &bus, &all).await;
    }
    let (share, how) = if by_duration {
        // The planned tests of this shard, plus tests no shard was planned for (new ones)
        // whose stable hash falls here: every listed test runs on exactly one shard.
        let planned: std::collections::HashSet<u64> = job.planned_hashes.iter().copied().collect();
        let share = assay_plan::share_from_hashes(
            &all,
            &job.test_ids,
            &planned,
            id.split_index as usize,
            id.split_count.max(1) as usize,
        );
        let new = share
            .iter()
            .filter(|t| !planned.contains(&assay_plan::stable_hash(t)))
            .count();
        (share, format!("by duration history; {new} of them new"))
    } else {
        let share = assay_spec::shard::shard_of_count(
            &all,
            id.split_index as usize,
            id.split_count.max(1) as usize,
        );
        (share, "by count".to_string())
    };
    logs.system(
        TESTS,
        format!(
            "listed {} tests, this shard runs {} ({how})",
            all.len(),
            share.len()
        ),
    )
    .await;
    if by_duration && !job.tail.is_empty() {
        return run_with_tail(job, tests, id, runner, bus_rx, &all, &share, &report).await;
    }
    let (v, r) = retries::run_with_retries(job, tests, id, runner, &share, &report).await;
    (v, r, Published::default())
}

/// `strategy: duration` with a shared tail: the first shard to get here puts the tail in the
/// group's work queue; then this shard runs its own tests (`share`), publishes their results,
/// and drains the tail with the other shards. A shard whose own tests errored leaves the tail
/// to the others.
#[allow(clippy::too_many_arguments)]
async fn run_with_tail(
    job: &ShardJob,
    tests: &assay_proto::TestsSpec,
    id: &Identity,
    runner: &StepRunner,
    bus_rx: &BusSlot,
    all: &[String],
    share: &[String],
    report: &Path,
) -> (Verdict, Vec<TestCaseResult>, Published) {
    let errored = |reason: String| (Verdict::errored(reason), Vec::new(), Published::default());
    let mut bus_rx = bus_rx.clone();
    let bus = match wait_bus(&mut bus_rx).await {
        Ok(bus) => bus,
        Err(e) => return errored(e.to_string()),
    };
    if let Err(reason) =
        queue::fill_or_wait(job, id, &bus, runner, queue::Source::Tail(all), false).await
    {
        return errored(reason);
    }
    let (head, results) = retries::run_with_retries(job, tests, id, runner, share, report).await;
    if head.state == ShardState::Errored {
        return (head, results, Published::default());
    }
    let cases = results.len() as u32;
    let published = match publish::publish_results(
        &bus,
        id,
        results,
        0,
        publish::QueueBatchOf::default(),
    )
    .await
    {
        Ok(batches) => Published {
            batches,
            cases,
            ..Published::default()
        },
        Err(e) => return errored(e.to_string()),
    };
    let (tail, published) = queue::drain_tail(job, tests, id, runner, &bus, all, published).await;
    let verdict = match (head.state, tail.state) {
        (_, ShardState::Errored) | (ShardState::Passed, _) => tail,
        _ => head,
    };
    (verdict, Vec::new(), published)
}

/// What the log says of a listing: its size and a sample, not every id (a listing of
/// 100,000 ids would otherwise be megabytes of log per shard).
fn listing_summary(ids: &[String]) -> String {
    const SAMPLE: usize = 3;
    let first: Vec<&str> = ids.iter().take(SAMPLE).map(String::as_str).collect();
    match ids.len() {
        n if n <= SAMPLE + 1 => format!("tests.list printed {n} id(s): {}", ids.join(", ")),
        n => format!(
            "tests.list printed {n} ids: {}, … {}",
            first.join(", "),
            ids[n - 1]
        ),
    }
}

/// Runs `tests.list` and returns the ids it printed, once each (duplicates are reported).
async fn list_tests(
    tests: &assay_proto::TestsSpec,
    runner: &StepRunner,
) -> std::result::Result<Vec<String>, Verdict> {
    let logs = runner.logs();
    let list = StepDef::internal("list", tests.list.clone());
    let run = runner.run(&list, true).await;
    if !run.exit.success() {
        let mut v = Verdict::errored(format!("tests.list failed: {}", run.exit.describe()));
        v.exit_code = run.exit.code();
        return Err(v);
    }
    let (all, dups) = job::parse_ids(&String::from_utf8_lossy(&run.stdout));
    if all.is_empty() {
        return Err(Verdict::errored(
            "tests.list printed no test ids".to_string(),
        ));
    }
    logs.system(TESTS, listing_summary(&all)).await;
    if !dups.is_empty() {
        let shown: Vec<&str> = dups.iter().take(20).map(String::as_str).collect();
        let more = dups.len().saturating_sub(shown.len());
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        logs.system(
            TESTS,
            format!(
                "tests.list printed {} duplicate id(s), kept the first of each: {}{tail}",
                dups.len(),
                shown.join(", ")
            ),
        )
        .await;
    }
    Ok(all)
}

/// Runs `tests.run` for `ids` (all tests when `None`) with `report` as `{report}`, and reads
/// the JUnit reports it wrote.
pub(crate) async fn run_subset(
    tests: &assay_proto::TestsSpec,
    id: &Identity,
    runner: &StepRunner,
    ids: Option<&[String]>,
    report: &Path,
) -> (Verdict, Vec<TestCaseResult>) {
    let logs = runner.logs();
    let _ = std::fs::remove_file(report);
    if ids.is_some_and(<[String]>::is_empty) {
        logs.system(
            TESTS,
            format!(
                "shard {} of {} has no tests to run; skipping tests.run",
                id.shard, id.shard_count
            ),
        )
        .await;
        return (Verdict::passed(), Vec::new());
    }

    let batch = ids.unwrap_or_default();
    let split = command::split(&tests.run, batch, command::MAX_COMMAND_BYTES);
    if split.parts.len() > 1 {
        logs.system(
            TESTS,
            format!(
                "batch of {} tests split into {} invocations (command would be {} bytes, limit {})",
                batch.len(),
                split.parts.len(),
                split.bytes,
                command::MAX_COMMAND_BYTES
            ),
        )
        .await;
    }
    let started = SystemTime::now();
    let mut exit = steps::Exit::Code(0);
    let mut reports = Vec::with_capacity(split.parts.len());
    for (k, part) in split.parts.iter().enumerate() {
        let part_report = command::part_report(report, k + 1);
        if k > 0 {
            let _ = std::fs::remove_file(&part_report);
        }
        let part = &batch[part.clone()];
        let tests_file = if tests.run.contains("{tests_file}") {
            match runner.scratch_file("tests", "txt", command::tests_file(part).as_bytes()) {
                Ok(path) => Some(path),
                Err(e) => return (Verdict::errored(e.to_string()), Vec::new()),
            }
        } else {
            None
        };
        let run = render_run(
            &tests.run,
            &quote_all(part),
            tests_file.as_deref(),
            &part_report,
        );
        let ran = runner.run(&StepDef::internal(TESTS, run), false).await;
        // The first invocation that fails speaks for the batch.
        if exit.success() {
            exit = ran.exit;
        }
        reports.push(part_report);
    }

    if tests.reports.is_empty() {
        return (Verdict::of_tests(&[], &exit), Vec::new());
    }
    match collect_reports(&tests.reports, &reports, runner.workdir(), started) {
        Ok((files, mut results, stale)) => {
            if let Some(listed) = ids {
                let mapped = job::map_to_listed(&mut results, listed);
                if mapped > 0 {
                    logs.system(
                        TESTS,
                        format!("{mapped} report ids mapped to the listed test ids"),
                    )
                    .await;
                }
            }
            for path in &stale {
                logs.system(
                    TESTS,
                    format!("ignored report {}: it predates this run", path.display()),
                )
                .await;
            }
            logs.system(
                TESTS,
                format!("read {} test cases from {} report(s)", results.len(), files),
            )
            .await;
            (Verdict::of_tests(&results, &exit), results)
        }
        Err(mut reason) => {
            if !exit.success() {
                reason.push_str(&format!(
                    " (the test command ended with {})",
                    exit.describe()
                ));
            }
            let mut v = Verdict::errored(reason);
            v.exit_code = exit.code();
            (v, Vec::new())
        }
    }
}

/// Finds and parses the reports: a pattern with `{report}` once per invocation's report,
/// others once. Returns (files read, results, stale files ignored).
fn collect_reports(
    patterns: &[String],
    reports: &[PathBuf],
    workdir: &Path,
    started: SystemTime,
) -> Result<(usize, Vec<TestCaseResult>, Vec<PathBuf>), String> {
    // Coarse file-system clocks: allow two seconds of slack.
    let not_before = started
        .checked_sub(Duration::from_secs(2))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stale = Vec::new();
    let globs = patterns.iter().flat_map(|pattern| {
        let each: &[PathBuf] = if pattern.contains("{report}") {
            reports
        } else {
            &reports[..reports.len().min(1)]
        };
        each.iter()
            .map(move |report| (pattern, render_report_glob(pattern, report, workdir)))
    });
    for (pattern, glob_pattern) in globs {
        let paths = glob::glob(&glob_pattern)
            .map_err(|e| format!("report glob {pattern:?} is invalid: {e}"))?;
        for path in paths.filter_map(std::result::Result::ok) {
            if !path.is_file() || files.contains(&path) || stale.contains(&path) {
                continue;
            }
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            if modified.is_some_and(|m| m < not_before) {
                stale.push(path);
            } else {
                files.push(path);
            }
        }
    }
    if files.is_empty() {
        let mut reason = format!(
            "no JUnit report matched {patterns:?} in {}",
            workdir.display()
        );
        if !stale.is_empty() {
            reason.push_str(&format!(
                " ({} older file(s) ignored because they predate this run)",
                stale.len()
            ));
        }
        return Err(reason);
    }
    let mut results = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read report {}: {e}", path.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        let parsed = junit::parse(&text)
            .map_err(|e| format!("report {} is not valid JUnit XML: {e}", path.display()))?;
        results.extend(parsed);
    }
    Ok((files.len(), results, stale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_is_logged_as_its_size_and_a_sample() {
        let ids = |n: usize| (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>();
        assert_eq!(
            listing_summary(&ids(2)),
            "tests.list printed 2 id(s): t0, t1"
        );
        assert_eq!(
            listing_summary(&ids(100_000)),
            "tests.list printed 100000 ids: t0, t1, t2, … t99999"
        );
    }

    #[test]
    fn reports_are_found_parsed_and_explained() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join(".assay/reports/shard-0-attempt-1.xml");
        std::fs::create_dir_all(report.parent().unwrap()).unwrap();
        let started = SystemTime::now();
        let patterns = vec!["{report}".to_string(), "out/*.xml".to_string()];

        let err = collect_reports(
            &patterns,
            std::slice::from_ref(&report),
            dir.path(),
            started,
        )
        .unwrap_err();
        assert!(
            err.starts_with("no JUnit report matched [\"{report}\", \"out/*.xml\"] in "),
            "{err}"
        );

        std::fs::write(&report, "<testsuite><testcase name=\"a\"/></testsuite>").unwrap();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        std::fs::write(
            dir.path().join("out/b.xml"),
            "<testsuite><testcase name=\"b\"><failure/></testcase></testsuite>",
        )
        .unwrap();
        let (files, results, stale) = collect_reports(
            &patterns,
            std::slice::from_ref(&report),
            dir.path(),
            started,
        )
        .unwrap();
        assert_eq!((files, results.len(), stale.len()), (2, 2, 0));

        std::fs::write(
            dir.path().join("out/c.xml"),
            "<testsuite>\n  <x></testsuite>",
        )
        .unwrap();
        let err = collect_reports(
            &patterns,
            std::slice::from_ref(&report),
            dir.path(),
            started,
        )
        .unwrap_err();
        assert!(err.contains("out/c.xml is not valid JUnit XML"), "{err}");
        assert!(err.contains("line 2, column"), "{err}");

        // Files from long before the run started are someone else's.
        let later = SystemTime::now() + Duration::from_secs(60);
        let err = collect_reports(&patterns, std::slice::from_ref(&report), dir.path(), later)
            .unwrap_err();
        assert!(err.contains("3 older file(s) ignored"), "{err}");
    }
}
