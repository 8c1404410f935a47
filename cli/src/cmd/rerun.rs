//! `assay rerun EXECUTION`: run the failed tests of a finished execution again (or replay its
//! shard plan) as a new execution linked to the original, and follow it like `assay run`.

use std::collections::HashSet;

use anyhow::{Result, anyhow, bail};
use assay_bus::header;
use assay_proto::{
    ExecutionDetail, ExecutionStatus, RunRequest, ShardDetail, ShardState, TestIdList, TestStatus,
};
use tonic::Code;

use crate::args::{Global, RerunArgs};
use crate::style::{Color, Palette};
use crate::{api, format};

pub async fn run(global: &Global, args: RerunArgs, palette: Palette) -> Result<u8> {
    let original = fetch(global, &args.execution).await?;
    let execution = original.execution.clone().unwrap_or_default();
    // The id as the API spells it (the argument may differ in case).
    let id = if execution.execution_id.is_empty() {
        args.execution.clone()
    } else {
        execution.execution_id.clone()
    };
    let workflow = execution.workflow.clone();
    if !format::is_terminal(execution.status()) {
        bail!(
            "execution {id} is still running; wait for it (assay get execution {id}) or cancel it first"
        );
    }
    let rerun = match select(&original, args.failed_only(), args.same_plan) {
        Choice::Run(rerun) => rerun,
        Choice::NothingFailed => {
            crate::outln!("nothing to rerun: execution {id} had no failed or errored tests");
            return Ok(0);
        }
        Choice::NoTests => bail!(
            "nothing to rerun: execution {id} recorded no test results to replay; run the whole workflow with `assay run {workflow}`"
        ),
        Choice::WithoutResults(shards) => bail!(
            "cannot rerun execution {id} test by test: {}; run the whole workflow again with `assay run {workflow}`",
            without_results(&original, &shards)
        ),
    };
    if !rerun.without_results.is_empty() {
        eprintln!(
            "{} {}; they are not rerun (`assay run {workflow}` runs everything)",
            palette.paint(Color::Yellow, "note:"),
            without_results(&original, &rerun.without_results)
        );
    }

    let new_id = ulid::Ulid::new().to_string();
    let request = rerun_request(&new_id, &id, &original, &rerun);
    let banner = rerun.banner(&id);
    if args.follow.detach {
        // stdout stays the bare id for scripts.
        eprintln!("{banner}");
    } else {
        crate::outln!("{banner}");
    }
    crate::cmd::run::start(global, &request, &args.follow, palette).await
}

async fn fetch(global: &Global, id: &str) -> Result<ExecutionDetail> {
    let api_url = global.api.as_str();
    let mut client = api::connect(global).await?;
    match api::execution(&mut client, id).await {
        Ok(detail) => Ok(detail),
        Err(s) if s.code() == Code::NotFound => Err(anyhow!(
            "execution {id} not found (list them with `assay get executions`)"
        )),
        Err(s) => Err(api::call_error(api_url, &format!("get execution {id}"), &s)),
    }
}

/// What to rerun, chosen from the original execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rerun {
    /// The test ids to run, in the original's shard and test order (without `--same-plan`).
    pub test_ids: Vec<String>,
    /// The frozen plan (`--same-plan`): one list per original shard, in index order; lists
    /// may be empty (the scheduler drops those shards).
    pub shards: Option<Vec<Vec<String>>>,
    /// How the selected tests ended in the original.
    pub counts: Counts,
    /// Shards that ended unsuccessfully without any test result (setup or listing failed):
    /// they cannot be narrowed down to tests.
    pub without_results: Vec<u32>,
}

/// Outcomes of the selected tests in the original execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub tests: usize,
    pub failed: usize,
    pub errored: usize,
    pub passed: usize,
    pub skipped: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Run(Rerun),
    /// Every test passed or was skipped (and no shard failed without results).
    NothingFailed,
    /// `--same-plan` without `--failed`, but the original recorded no test at all.
    NoTests,
    /// Nothing to narrow down to: the original failed without test results in these
    /// shards (empty: it has no shard at all).
    WithoutResults(Vec<u32>),
}

fn is_failing(status: TestStatus) -> bool {
    matches!(status, TestStatus::Failed | TestStatus::Errored)
}

/// A shard that ended badly without reporting a single test.
fn failed_without_results(shard: &ShardDetail) -> bool {
    let state = shard
        .summary
        .as_ref()
        .map(|s| s.state())
        .unwrap_or_default();
    shard.tests.is_empty()
        && matches!(
            state,
            ShardState::Failed | ShardState::Errored | ShardState::TimedOut
        )
}

fn index(shard: &ShardDetail) -> u32 {
    shard.summary.as_ref().map(|s| s.index).unwrap_or_default()
}

/// Chooses the tests to rerun: failed and errored ones when `failed_only`, all of them
/// otherwise (only meaningful with `same_plan`), either as one list or per original shard.
pub fn select(d: &ExecutionDetail, failed_only: bool, same_plan: bool) -> Choice {
    let mut shards: Vec<&ShardDetail> = d.shards.iter().collect();
    shards.sort_by_key(|s| index(s));
    let without_results: Vec<u32> = shards
        .iter()
        .filter(|s| failed_without_results(s))
        .map(|s| index(s))
        .collect();

    let mut counts = Counts::default();
    let mut seen = HashSet::new();
    let mut plan: Vec<Vec<String>> = Vec::with_capacity(shards.len());
    for shard in &shards {
        let mut ids = Vec::new();
        for t in &shard.tests {
            let status = t.status();
            if failed_only && !is_failing(status) {
                continue;
            }
            // A test reported twice (in two shards) runs once.
            if !seen.insert(t.id.as_str()) {
                continue;
            }
            counts.tests += 1;
            match status {
                TestStatus::Failed => counts.failed += 1,
                TestStatus::Errored => counts.errored += 1,
                TestStatus::Passed => counts.passed += 1,
                TestStatus::Skipped => counts.skipped += 1,
                TestStatus::Unspecified => {}
            }
            ids.push(t.id.clone());
        }
        plan.push(ids);
    }

    if counts.tests == 0 {
        let status = d.execution.as_ref().map(|e| e.status()).unwrap_or_default();
        let ended_badly = matches!(
            status,
            ExecutionStatus::Failed | ExecutionStatus::Errored | ExecutionStatus::TimedOut
        );
        return if !without_results.is_empty() || (shards.is_empty() && ended_badly) {
            Choice::WithoutResults(without_results)
        } else if failed_only {
            Choice::NothingFailed
        } else {
            Choice::NoTests
        };
    }
    let (test_ids, shards) = if same_plan {
        (Vec::new(), Some(plan))
    } else {
        (plan.into_iter().flatten().collect(), None)
    };
    Choice::Run(Rerun {
        test_ids,
        shards,
        counts,
        without_results,
    })
}

impl Rerun {
    /// `rerun of 01J… (4 tests: 3 failed, 1 errored)`, plus the shards of a replayed plan.
    pub fn banner(&self, original: &str) -> String {
        let c = &self.counts;
        let mut parts = Vec::new();
        for (n, word) in [
            (c.failed, "failed"),
            (c.errored, "errored"),
            (c.passed, "passed"),
            (c.skipped, "skipped"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {word}"));
            }
        }
        let tests = if c.tests == 1 { "test" } else { "tests" };
        let mut line = format!("rerun of {original} ({} {tests}", c.tests);
        if !parts.is_empty() {
            line.push_str(&format!(": {}", parts.join(", ")));
        }
        line.push(')');
        if let Some(shards) = &self.shards {
            let n = shards.iter().filter(|s| !s.is_empty()).count();
            let word = if n == 1 { "shard" } else { "shards" };
            line.push_str(&format!(" on the original plan ({n} {word})"));
        }
        line
    }
}

/// The run request of a rerun: the original's workflow and resolved config, linked to it.
pub fn rerun_request(
    id: &str,
    original_id: &str,
    original: &ExecutionDetail,
    rerun: &Rerun,
) -> RunRequest {
    RunRequest {
        header: Some(header("assay-cli", format!("rerun/{id}"), None)),
        workflow: original
            .execution
            .as_ref()
            .map(|e| e.workflow.clone())
            .unwrap_or_default(),
        // Sensitive values are recorded masked: the rerun takes the workflow's own value
        // (its default) rather than the mask.
        config: original
            .config
            .iter()
            .filter(|(_, v)| v.as_str() != assay_spec::MASKED)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        requested_by: "cli".to_string(),
        execution_id: id.to_string(),
        rerun_of: original_id.to_string(),
        labels: Default::default(),
        test_ids: rerun.test_ids.clone(),
        shards: rerun
            .shards
            .iter()
            .flatten()
            .map(|ids| TestIdList { ids: ids.clone() })
            .collect(),
        priority: None,
        selection_data: String::new(),
    }
}

/// `shards 1, 2 ended errored without test results (setup or listing failed)`.
fn without_results(d: &ExecutionDetail, shards: &[u32]) -> String {
    if shards.is_empty() {
        let e = d.execution.clone().unwrap_or_default();
        let mut text = format!(
            "it ended {} without test results",
            format::execution_status(e.status())
        );
        if !e.reason.is_empty() {
            text.push_str(&format!(" ({})", e.reason));
        }
        return text;
    }
    let states: HashSet<&str> = d
        .shards
        .iter()
        .filter(|s| shards.contains(&index(s)))
        .map(|s| format::shard_state(s.summary.clone().unwrap_or_default().state()))
        .collect();
    let mut states: Vec<&str> = states.into_iter().collect();
    states.sort_unstable();
    let list = shards
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{} {list} ended {} without test results (setup, steps or the listing failed)",
        if shards.len() == 1 { "shard" } else { "shards" },
        states.join("/")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use assay_proto::{ExecutionUpdate, ShardSummary, TestCaseResult};

    fn test(id: &str, status: TestStatus) -> TestCaseResult {
        TestCaseResult {
            id: id.into(),
            name: id.into(),
            status: status as i32,
            ..Default::default()
        }
    }

    fn shard(index: u32, state: ShardState, tests: Vec<TestCaseResult>) -> ShardDetail {
        ShardDetail {
            summary: Some(ShardSummary {
                index,
                state: state as i32,
                attempt: 1,
                ..Default::default()
            }),
            tests,
            exit_code: 0,
        }
    }

    fn detail(status: ExecutionStatus, shards: Vec<ShardDetail>) -> ExecutionDetail {
        ExecutionDetail {
            execution: Some(ExecutionUpdate {
                execution_id: "01ORIG".into(),
                workflow: "shop".into(),
                status: status as i32,
                reason: "setup failed".into(),
                ..Default::default()
            }),
            shards,
            config: [("seed".to_string(), "3".to_string())].into(),
            rerun_of: String::new(),
            next_page_token: String::new(),
        }
    }

    /// Three shards (listed out of order): a failure and an error in shard 0, a failure in
    /// shard 2, shard 1 green.
    fn failing() -> ExecutionDetail {
        use TestStatus::*;
        detail(
            ExecutionStatus::Failed,
            vec![
                shard(
                    2,
                    ShardState::Failed,
                    vec![test("e", Passed), test("f", Failed)],
                ),
                shard(
                    0,
                    ShardState::Failed,
                    vec![test("a", Failed), test("b", Passed), test("c", Errored)],
                ),
                shard(1, ShardState::Passed, vec![test("d", Skipped)]),
            ],
        )
    }

    fn chosen(choice: Choice) -> Rerun {
        match choice {
            Choice::Run(r) => r,
            other => panic!("expected a rerun, got {other:?}"),
        }
    }

    #[test]
    fn failed_only_takes_failed_and_errored_ids_in_shard_order() {
        let r = chosen(select(&failing(), true, false));
        assert_eq!(r.test_ids, ["a", "c", "f"]);
        assert_eq!(r.shards, None);
        assert_eq!(
            r.counts,
            Counts {
                tests: 3,
                failed: 2,
                errored: 1,
                ..Counts::default()
            }
        );
        assert!(r.without_results.is_empty());
        assert_eq!(
            r.banner("01ORIG"),
            "rerun of 01ORIG (3 tests: 2 failed, 1 errored)"
        );
    }

    #[test]
    fn same_plan_replays_every_test_of_every_shard() {
        let r = chosen(select(&failing(), false, true));
        assert!(r.test_ids.is_empty());
        let plan = r.shards.clone().unwrap();
        assert_eq!(plan, vec![vec!["a", "b", "c"], vec!["d"], vec!["e", "f"]]);
        assert_eq!(r.counts.tests, 6);
        assert_eq!(
            r.banner("01ORIG"),
            "rerun of 01ORIG (6 tests: 2 failed, 1 errored, 2 passed, 1 skipped) on the original plan (3 shards)"
        );
    }

    #[test]
    fn same_plan_with_failed_keeps_each_shards_failures_in_place() {
        let r = chosen(select(&failing(), true, true));
        let plan = r.shards.clone().unwrap();
        assert_eq!(
            plan,
            vec![
                vec!["a".to_string(), "c".to_string()],
                vec![],
                vec!["f".to_string()]
            ]
        );
        assert!(r.banner("X").ends_with("on the original plan (2 shards)"));
        let req = rerun_request("01NEW", "01ORIG", &failing(), &r);
        assert_eq!(
            req.shards.len(),
            3,
            "empty shards are left to the scheduler"
        );
        assert!(req.test_ids.is_empty());
    }

    #[test]
    fn nothing_failed_is_nothing_to_rerun() {
        use TestStatus::*;
        let d = detail(
            ExecutionStatus::Passed,
            vec![shard(
                0,
                ShardState::Passed,
                vec![test("a", Passed), test("b", Skipped)],
            )],
        );
        assert_eq!(select(&d, true, false), Choice::NothingFailed);
        assert_eq!(select(&d, true, true), Choice::NothingFailed);
        // Replaying the whole plan still works.
        assert_eq!(chosen(select(&d, false, true)).counts.tests, 2);
        let empty = detail(
            ExecutionStatus::Passed,
            vec![shard(0, ShardState::Passed, vec![])],
        );
        assert_eq!(select(&empty, false, true), Choice::NoTests);
    }

    #[test]
    fn errored_shards_without_tests_cannot_be_narrowed_down() {
        use TestStatus::*;
        let d = detail(
            ExecutionStatus::Errored,
            vec![
                shard(0, ShardState::Passed, vec![test("a", Passed)]),
                shard(1, ShardState::Errored, vec![]),
                shard(2, ShardState::Errored, vec![]),
            ],
        );
        assert_eq!(select(&d, true, false), Choice::WithoutResults(vec![1, 2]));
        assert_eq!(
            without_results(&d, &[1, 2]),
            "shards 1, 2 ended errored without test results (setup, steps or the listing failed)"
        );
        // Failing ids elsewhere are still rerun; the blind shard is reported.
        let mut mixed = d.clone();
        mixed.shards[0].tests[0].status = Failed as i32;
        let r = chosen(select(&mixed, true, false));
        assert_eq!(r.test_ids, ["a"]);
        assert_eq!(r.without_results, [1, 2]);
        // An execution that errored before planning any shard.
        let unplanned = detail(ExecutionStatus::Errored, vec![]);
        assert_eq!(
            select(&unplanned, true, false),
            Choice::WithoutResults(vec![])
        );
        assert_eq!(
            without_results(&unplanned, &[]),
            "it ended errored without test results (setup failed)"
        );
    }

    #[test]
    fn request_links_the_original_and_keeps_its_config() {
        let d = failing();
        let r = chosen(select(&d, true, false));
        let req = rerun_request("01NEW", "01ORIG", &d, &r);
        assert_eq!(req.workflow, "shop");
        assert_eq!(req.execution_id, "01NEW");
        assert_eq!(req.rerun_of, "01ORIG");
        assert_eq!(req.test_ids, ["a", "c", "f"]);
        assert!(req.shards.is_empty());
        assert_eq!(req.config.get("seed").map(String::as_str), Some("3"));
        assert_eq!(req.requested_by, "cli");
        let h = req.header.unwrap();
        assert_eq!(h.idempotency_key, "rerun/01NEW");
        assert_eq!(h.producer, "assay-cli");
    }
}
