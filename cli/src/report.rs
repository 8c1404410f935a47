//! Human-readable execution reports: header block, shard table, slowest tests, failures and
//! the final PASSED/FAILED line. Shared by `assay run` and `assay get execution`.

use assay_proto::{
    ExecutionDetail, ExecutionStatus, ExecutionUpdate, ShardDetail, TestCaseResult, TestStatus,
};

use crate::format::{self, Table, cell};
use crate::style::{Color, Palette, execution_color, shard_color};

/// Lines of a failing test's output shown under it.
pub const OUTPUT_LINES: usize = 10;

/// A detail built from an update alone (when the result API cannot be reached).
pub fn detail_from_update(u: &ExecutionUpdate) -> ExecutionDetail {
    ExecutionDetail {
        execution: Some(u.clone()),
        shards: u
            .shards
            .iter()
            .map(|s| ShardDetail {
                summary: Some(s.clone()),
                tests: Vec::new(),
                exit_code: 0,
            })
            .collect(),
        ..Default::default()
    }
}

/// `42 passed (2 flaky), 1 failed, 3 skipped` (zero counts other than passed are left out;
/// flaky tests passed on a retry and are among the passed).
pub fn counts(passed: u32, flaky: u32, failed: u32, errored: u32, skipped: u32) -> String {
    let mut parts = vec![if flaky > 0 {
        format!("{passed} passed ({flaky} flaky)")
    } else {
        format!("{passed} passed")
    }];
    for (n, word) in [
        (failed, "failed"),
        (errored, "errored"),
        (skipped, "skipped"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    parts.join(", ")
}

/// The counts of an update: `42 passed (2 flaky), 3 skipped`.
pub fn update_counts(u: &ExecutionUpdate) -> String {
    counts(u.passed, u.flaky, u.failed, u.errored, u.skipped)
}

/// `PASSED 42 passed, 3 skipped in 12.3s`, bold green or bold red.
pub fn final_line(u: &ExecutionUpdate, now_ms: i64, palette: &Palette) -> String {
    let status = u.status();
    let label = format::execution_status(status).to_uppercase();
    let color = if status == ExecutionStatus::Passed {
        Color::BoldGreen
    } else {
        Color::BoldRed
    };
    let mut text = update_counts(u);
    if let Some(ms) = format::execution_ms(u.created_at_ms, u.finished_at_ms, now_ms) {
        text.push_str(&format!(" in {}", format::elapsed(ms)));
    }
    format!("{} {text}", palette.paint(color, &label))
}

/// The key/value block at the top of `get execution`; `rerun_of` is the execution it
/// reruns (empty if none).
pub fn header_block(u: &ExecutionUpdate, rerun_of: &str, now_ms: i64, palette: &Palette) -> String {
    let status = u.status();
    let mut rows: Vec<(&str, String)> = vec![
        ("Execution", u.execution_id.clone()),
        ("Workflow", u.workflow.clone()),
    ];
    if !rerun_of.is_empty() {
        rows.push(("Rerun of", rerun_of.to_string()));
    }
    rows.push((
        "Status",
        palette.paint(execution_color(status), format::execution_status(status)),
    ));
    if !u.reason.is_empty() {
        rows.push(("Reason", u.reason.clone()));
    }
    if u.created_at_ms > 0 {
        rows.push((
            "Created",
            format!(
                "{} ({} ago)",
                format::timestamp(u.created_at_ms),
                format::age(now_ms - u.created_at_ms)
            ),
        ));
    }
    if u.finished_at_ms > 0 {
        rows.push(("Finished", format::timestamp(u.finished_at_ms)));
    }
    if let Some(ms) = format::execution_ms(u.created_at_ms, u.finished_at_ms, now_ms) {
        rows.push(("Duration", format::elapsed(ms)));
    }
    rows.push(("Shards", u.shards.len().to_string()));
    rows.push(("Tests", update_counts(u)));
    rows.iter()
        .map(|(k, v)| format!("{}  {v}\n", palette.paint(Color::Bold, &format!("{k:<9}"))))
        .collect()
}

/// The matrix combination a shard ran, read off its test ids (`id [os=linux,py=3.12]`):
/// the suffix every one of them carries. `None` without tests or matrix.
pub fn shard_variant(shard: &ShardDetail) -> Option<&str> {
    let first = &shard.tests.first()?.id;
    let open = first.rfind(" [")?;
    let suffix = &first[open..];
    if !suffix.ends_with(']') || suffix.len() < 4 {
        return None;
    }
    shard
        .tests
        .iter()
        .all(|t| t.id.ends_with(suffix))
        .then(|| &suffix[2..suffix.len() - 1])
}

/// One row per shard; a MATRIX column when the shards ran matrix combinations, a NOTE
/// column when some shard has a reason or a non-zero exit code.
pub fn shard_table(shards: &[ShardDetail], palette: &Palette) -> String {
    if shards.is_empty() {
        return String::new();
    }
    let with_note = shards.iter().any(|s| !note(s).is_empty());
    let with_matrix = shards.iter().any(|s| shard_variant(s).is_some());
    let mut headers = vec!["SHARD"];
    if with_matrix {
        headers.push("MATRIX");
    }
    headers.extend([
        "STATE", "PASSED", "FAILED", "ERRORED", "SKIPPED", "DURATION",
    ]);
    if with_note {
        headers.push("NOTE");
    }
    let mut table = Table::new(headers);
    for shard in shards {
        let s = shard.summary.clone().unwrap_or_default();
        let state = s.state();
        let mut row = vec![cell(s.index.to_string())];
        if with_matrix {
            row.push(cell(shard_variant(shard).unwrap_or("").to_string()));
        }
        row.extend([
            (format::shard_state(state).to_string(), shard_color(state)),
            cell(s.passed.to_string()),
            count_cell(s.failed),
            count_cell(s.errored),
            cell(s.skipped.to_string()),
            cell(format::elapsed(s.duration_ms)),
        ]);
        if with_note {
            row.push((note(shard), Color::Dim));
        }
        table.row(row);
    }
    table.render(palette)
}

fn count_cell(n: u32) -> (String, Color) {
    let color = if n > 0 { Color::Red } else { Color::Plain };
    (n.to_string(), color)
}

fn note(shard: &ShardDetail) -> String {
    let s = shard.summary.clone().unwrap_or_default();
    let mut parts = Vec::new();
    if s.attempt > 1 {
        parts.push(format!("attempt {}", s.attempt));
    }
    if shard.exit_code != 0 {
        parts.push(format!("exit code {}", shard.exit_code));
    }
    if !s.reason.is_empty() {
        parts.push(s.reason.clone());
    }
    parts.join("; ")
}

fn all_tests(shards: &[ShardDetail]) -> Vec<(u32, &TestCaseResult)> {
    shards
        .iter()
        .flat_map(|s| {
            let index = s.summary.as_ref().map_or(0, |s| s.index);
            s.tests.iter().map(move |t| (index, t))
        })
        .collect()
}

/// The `n` slowest tests, slowest first; empty when no test took any time.
pub fn slowest(shards: &[ShardDetail], n: usize, palette: &Palette) -> String {
    let mut tests: Vec<_> = all_tests(shards)
        .into_iter()
        .filter(|(_, t)| t.duration_ms > 0)
        .collect();
    if tests.is_empty() {
        return String::new();
    }
    tests.sort_by_key(|t| std::cmp::Reverse(t.1.duration_ms));
    let mut out = format!("{}\n", palette.paint(Color::Bold, "Slowest tests"));
    for (shard, t) in tests.into_iter().take(n) {
        out.push_str(&format!(
            "  {:>8}  {}  {}\n",
            format::elapsed(t.duration_ms),
            format::test_name(&t.classname, &t.name, &t.id),
            palette.paint(Color::Dim, &format!("[shard {shard}]"))
        ));
    }
    out
}

/// Every test that passed only on a retry, with how many times it ran.
pub fn flaky(shards: &[ShardDetail], palette: &Palette) -> String {
    let flaky: Vec<_> = all_tests(shards)
        .into_iter()
        .filter(|(_, t)| t.flaky)
        .collect();
    if flaky.is_empty() {
        return String::new();
    }
    let mut out = format!("{}\n", palette.paint(Color::Bold, "Flaky"));
    for (shard, t) in flaky {
        out.push_str(&format!(
            "{} {} {}\n",
            palette.paint(Color::Yellow, "~"),
            format::test_name(&t.classname, &t.name, &t.id),
            palette.paint(
                Color::Dim,
                &format!("[{} attempts, shard {shard}]", t.attempts.max(1))
            ),
        ));
    }
    out
}

/// Every failed or errored test with its message and the head of its output.
pub fn failures(shards: &[ShardDetail], palette: &Palette) -> String {
    let failing: Vec<_> = all_tests(shards)
        .into_iter()
        .filter(|(_, t)| matches!(t.status(), TestStatus::Failed | TestStatus::Errored))
        .collect();
    if failing.is_empty() {
        return String::new();
    }
    let mut out = format!("{}\n", palette.paint(Color::Bold, "Failures"));
    for (shard, t) in failing {
        out.push_str(&format!(
            "{} {} {}\n",
            palette.paint(Color::Red, "✗"),
            palette.paint(
                Color::Bold,
                &format::test_name(&t.classname, &t.name, &t.id)
            ),
            palette.paint(
                Color::Dim,
                &format!(
                    "[{}, shard {shard}, {}{}]",
                    format::test_status(t.status()),
                    format::elapsed(t.duration_ms),
                    if t.attempts > 1 {
                        format!(", {} attempts", t.attempts)
                    } else {
                        String::new()
                    }
                )
            ),
        ));
        if !t.failure_message.is_empty() {
            for line in t.failure_message.lines() {
                out.push_str(&format!("    {}\n", palette.paint(Color::Red, line)));
            }
        }
        let (head, rest) = format::head_lines(&t.output, OUTPUT_LINES);
        for line in head {
            out.push_str(&format!("    {}\n", palette.paint(Color::Dim, line)));
        }
        if rest > 0 {
            out.push_str(&format!(
                "    {}\n",
                palette.paint(Color::Dim, &format!("… {rest} more lines"))
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use assay_proto::{ShardState, ShardSummary};

    fn t(name: &str, status: TestStatus, ms: u64, output: &str) -> TestCaseResult {
        TestCaseResult {
            id: format!("c::{name}"),
            name: name.into(),
            classname: "c".into(),
            status: status as i32,
            duration_ms: ms,
            failure_message: if status == TestStatus::Failed {
                "assert 1 == 2".into()
            } else {
                String::new()
            },
            output: output.into(),
            ..Default::default()
        }
    }

    #[test]
    fn header_block_links_a_rerun_to_its_original() {
        let u = ExecutionUpdate {
            execution_id: "01NEW".into(),
            workflow: "shop".into(),
            status: ExecutionStatus::Passed as i32,
            ..Default::default()
        };
        let palette = Palette::plain();
        let text = header_block(&u, "01ORIG", 0, &palette);
        assert!(text.contains("Rerun of   01ORIG\n"), "{text}");
        assert!(!header_block(&u, "", 0, &palette).contains("Rerun of"));
    }

    fn shards() -> Vec<ShardDetail> {
        vec![
            ShardDetail {
                summary: Some(ShardSummary {
                    index: 0,
                    state: ShardState::Passed as i32,
                    passed: 2,
                    duration_ms: 1_200,
                    ..Default::default()
                }),
                tests: vec![
                    t("fast", TestStatus::Passed, 10, ""),
                    t("slow", TestStatus::Passed, 900, ""),
                ],
                exit_code: 0,
            },
            ShardDetail {
                summary: Some(ShardSummary {
                    index: 1,
                    state: ShardState::Failed as i32,
                    failed: 1,
                    duration_ms: 800,
                    ..Default::default()
                }),
                tests: vec![t(
                    "broken",
                    TestStatus::Failed,
                    500,
                    &(1..=15).map(|i| format!("line {i}\n")).collect::<String>(),
                )],
                exit_code: 1,
            },
        ]
    }

    #[test]
    fn final_line_counts() {
        let u = ExecutionUpdate {
            status: ExecutionStatus::Passed as i32,
            passed: 42,
            skipped: 3,
            created_at_ms: 1_000,
            finished_at_ms: 13_300,
            ..Default::default()
        };
        assert_eq!(
            final_line(&u, 0, &Palette::plain()),
            "PASSED 42 passed, 3 skipped in 12.3s"
        );
        let u = ExecutionUpdate {
            status: ExecutionStatus::Failed as i32,
            passed: 1,
            failed: 2,
            ..Default::default()
        };
        assert_eq!(
            final_line(&u, 0, &Palette::plain()),
            "FAILED 1 passed, 2 failed"
        );
    }

    #[test]
    fn flaky_tests_are_counted_and_listed_with_their_attempts() {
        let u = ExecutionUpdate {
            status: ExecutionStatus::Passed as i32,
            passed: 40,
            flaky: 2,
            skipped: 3,
            created_at_ms: 1_000,
            finished_at_ms: 13_000,
            ..Default::default()
        };
        let palette = Palette::plain();
        assert_eq!(
            final_line(&u, 0, &palette),
            "PASSED 40 passed (2 flaky), 3 skipped in 12.0s"
        );
        assert!(header_block(&u, "", 0, &palette).contains("40 passed (2 flaky), 3 skipped"));

        let mut shards = shards();
        assert_eq!(flaky(&shards, &palette), "", "no flaky tests: no section");
        shards[0].tests[0].flaky = true;
        shards[0].tests[0].attempts = 2;
        shards[1].tests[0].attempts = 3;
        assert_eq!(
            flaky(&shards, &palette),
            "Flaky\n~ c::fast [2 attempts, shard 0]\n"
        );
        let text = failures(&shards, &palette);
        assert!(
            text.contains("✗ c::broken [failed, shard 1, 500ms, 3 attempts]"),
            "{text}"
        );
    }

    #[test]
    fn slowest_first() {
        let text = slowest(&shards(), 2, &Palette::plain());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].contains("c::slow"));
        assert!(lines[2].contains("c::broken"));
    }

    #[test]
    fn failures_show_message_and_head_of_output() {
        let text = failures(&shards(), &Palette::plain());
        assert!(text.contains("✗ c::broken [failed, shard 1, 500ms]"));
        assert!(text.contains("assert 1 == 2"));
        assert!(text.contains("line 10\n"));
        assert!(!text.contains("line 11\n"));
        assert!(text.contains("… 5 more lines"));
    }

    #[test]
    fn shard_table_names_matrix_combinations() {
        let mut s = shards();
        assert!(!shard_table(&s, &Palette::plain()).contains("MATRIX"));
        for t in &mut s[0].tests {
            t.id = format!("{} [os=mac]", t.id);
        }
        s[1].tests[0].id = "broken[1-2] [os=linux]".into();
        assert_eq!(shard_variant(&s[1]), Some("os=linux"));
        let text = shard_table(&s, &Palette::plain());
        assert!(text.starts_with("SHARD  MATRIX"), "{text}");
        assert!(text.contains("os=mac"), "{text}");
        s[0].tests[1].id = "slow".into();
        assert_eq!(shard_variant(&s[0]), None, "not every test carries it");
    }

    #[test]
    fn shard_table_shows_shards_waiting_for_capacity_and_why() {
        let mut s = shards();
        s.push(ShardDetail {
            summary: Some(ShardSummary {
                index: 2,
                state: ShardState::WaitingForCapacity as i32,
                attempt: 1,
                reason: "1 of 1 runner busy".into(),
                ..Default::default()
            }),
            tests: Vec::new(),
            exit_code: 0,
        });
        let text = shard_table(&s, &Palette::plain());
        let row = text
            .lines()
            .find(|l| l.starts_with('2'))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(row.contains("waiting for capacity"), "{text}");
        assert!(row.contains("1 of 1 runner busy"), "{text}");
    }

    #[test]
    fn shard_table_has_note_for_exit_codes() {
        let text = shard_table(&shards(), &Palette::plain());
        assert!(text.starts_with("SHARD"));
        assert!(text.contains("NOTE"));
        assert!(text.contains("exit code 1"));
    }

    #[test]
    fn fallback_detail_keeps_shards() {
        let u = ExecutionUpdate {
            shards: vec![ShardSummary::default(), ShardSummary::default()],
            ..Default::default()
        };
        assert_eq!(detail_from_update(&u).shards.len(), 2);
    }
}
