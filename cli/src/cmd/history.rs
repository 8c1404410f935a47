//! `assay history WORKFLOW [TEST]`: what each test's runs took and how they ended.

use anyhow::Result;
use assay_proto::TestHistory;
use serde::Serialize;

use crate::api;
use crate::args::{Global, HistoryArgs, Output};
use crate::cmd::get::print_structured;
use crate::format::{self, Table, cell};
use crate::style::{Color, Palette};

/// One test's history, for `-o json|yaml`.
#[derive(Debug, Serialize)]
pub struct HistoryView {
    pub test: String,
    pub runs: u32,
    pub passed: u32,
    pub failed: u32,
    pub errored: u32,
    pub skipped: u32,
    pub pass_rate: f64,
    pub mean_ms: f64,
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub last_ms: u64,
    pub samples: u32,
}

impl HistoryView {
    pub fn from_proto(t: &TestHistory) -> HistoryView {
        HistoryView {
            test: t.test_id.clone(),
            runs: t.runs,
            passed: t.passed,
            failed: t.failed,
            errored: t.errored,
            skipped: t.skipped,
            pass_rate: pass_rate(t),
            mean_ms: (t.mean_ms * 10.0).round() / 10.0,
            p50_ms: t.p50_ms,
            p90_ms: t.p90_ms,
            last_ms: t.last_ms,
            samples: t.samples,
        }
    }
}

/// Passed runs over runs that were not skipped (1.0 when none ran).
pub fn pass_rate(t: &TestHistory) -> f64 {
    let ran = t.passed + t.failed + t.errored;
    if ran == 0 {
        1.0
    } else {
        f64::from(t.passed) / f64::from(ran)
    }
}

/// A bar of `width` cells for `value` out of `max`, for a quick look at who is slow.
pub fn bar(value: f64, max: f64, width: usize) -> String {
    if max <= 0.0 || value <= 0.0 {
        return String::new();
    }
    let cells = ((value / max) * width as f64)
        .round()
        .clamp(1.0, width as f64) as usize;
    "█".repeat(cells)
}

pub async fn run(global: &Global, args: HistoryArgs, palette: &Palette) -> Result<u8> {
    let mut client = api::connect(global).await?;
    let test = args.test.clone().unwrap_or_default();
    let tests = api::history(&mut client, &args.workflow, &test)
        .await
        .map_err(|s| api::call_error(&global.api, "history", &s))?;
    match args.output {
        Output::Json | Output::Yaml => {
            let views: Vec<HistoryView> = tests.iter().map(HistoryView::from_proto).collect();
            print_structured(&views, args.output)?;
        }
        Output::Name => {
            for t in &tests {
                crate::outln!("{}", t.test_id);
            }
        }
        Output::Table => {
            if tests.is_empty() {
                eprintln!(
                    "no history for {} yet; it fills as results land (`assay run {}`)",
                    args.workflow, args.workflow
                );
                return Ok(0);
            }
            let total: f64 = tests.iter().map(|t| t.mean_ms).sum();
            let max = tests.first().map(|t| t.mean_ms).unwrap_or(0.0);
            let shown = if args.limit == 0 {
                tests.len()
            } else {
                args.limit.min(tests.len())
            };
            let mut table = Table::new(["TEST", "RUNS", "PASS", "MEAN", "P50", "P90", "LAST", ""]);
            for t in tests.iter().take(shown) {
                let rate = pass_rate(t);
                let rate_color = if rate >= 1.0 {
                    Color::Green
                } else if rate >= 0.5 {
                    Color::Yellow
                } else {
                    Color::Red
                };
                table.row(vec![
                    cell(t.test_id.clone()),
                    cell(t.runs.to_string()),
                    (format!("{:.0}%", rate * 100.0), rate_color),
                    cell(format::elapsed(t.mean_ms.round() as u64)),
                    cell(format::elapsed(t.p50_ms)),
                    cell(format::elapsed(t.p90_ms)),
                    cell(format::elapsed(t.last_ms)),
                    (bar(t.mean_ms, max, 20), Color::Cyan),
                ]);
            }
            crate::out!("{}", table.render(palette));
            if shown < tests.len() {
                crate::outln!("… {} more (--limit 0 shows all)", tests.len() - shown);
            }
            crate::outln!(
                "{} tests, {} of test time per run (sum of means)",
                tests.len(),
                format::elapsed(total.round() as u64)
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_rate_ignores_skips() {
        let t = TestHistory {
            passed: 3,
            failed: 1,
            skipped: 5,
            ..Default::default()
        };
        assert_eq!(pass_rate(&t), 0.75);
        assert_eq!(pass_rate(&TestHistory::default()), 1.0);
    }

    #[test]
    fn bars_scale_to_the_slowest() {
        assert_eq!(bar(10.0, 10.0, 4), "████");
        assert_eq!(bar(5.0, 10.0, 4), "██");
        assert_eq!(bar(0.1, 10.0, 4), "█");
        assert_eq!(bar(0.0, 10.0, 4), "");
    }
}
