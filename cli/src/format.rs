//! Text formatting: durations, ages, status names, timestamps and aligned tables.

use assay_proto::{ExecutionStatus, LogStream, ShardState, TestStatus};

use crate::style::{Color, Palette};

/// A run time for people: `850ms`, `12.3s`, `2m05s`, `1h02m`.
pub fn elapsed(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        // One decimal, rounded down so 59.99s never shows as 60.0s.
        return format!("{}.{}s", ms / 1_000, (ms % 1_000) / 100);
    }
    let secs = ms / 1_000;
    if secs < 3_600 {
        return format!("{}m{:02}s", secs / 60, secs % 60);
    }
    let mins = secs / 60;
    format!("{}h{:02}m", mins / 60, mins % 60)
}

/// How long ago something happened, coarse: `45s`, `12m`, `5h`, `3d`.
pub fn age(ms: i64) -> String {
    let secs = ms.max(0) / 1_000;
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3_600 {
        format!("{}m", secs / 60)
    } else if secs < 48 * 3_600 {
        format!("{}h", secs / 3_600)
    } else {
        format!("{}d", secs / 86_400)
    }
}

/// Unix milliseconds as RFC 3339 (UTC, seconds precision); empty for 0.
pub fn timestamp(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Wall-clock run time of an execution: finished (or now, while running) minus created.
pub fn execution_ms(created_at_ms: i64, finished_at_ms: i64, now_ms: i64) -> Option<u64> {
    if created_at_ms <= 0 {
        return None;
    }
    let end = if finished_at_ms > 0 {
        finished_at_ms
    } else {
        now_ms
    };
    u64::try_from(end - created_at_ms).ok()
}

pub fn execution_status(s: ExecutionStatus) -> &'static str {
    match s {
        ExecutionStatus::Unspecified => "unknown",
        ExecutionStatus::Queued => "queued",
        ExecutionStatus::Running => "running",
        ExecutionStatus::Passed => "passed",
        ExecutionStatus::Failed => "failed",
        ExecutionStatus::Errored => "errored",
        ExecutionStatus::Cancelled => "cancelled",
        ExecutionStatus::TimedOut => "timed-out",
    }
}

pub fn shard_state(s: ShardState) -> &'static str {
    match s {
        ShardState::Unspecified => "pending",
        ShardState::Queued => "queued",
        ShardState::WaitingForCapacity => "waiting for capacity",
        ShardState::Running => "running",
        ShardState::Passed => "passed",
        ShardState::Failed => "failed",
        ShardState::Errored => "errored",
        ShardState::Cancelled => "cancelled",
        ShardState::TimedOut => "timed-out",
    }
}

pub fn test_status(s: TestStatus) -> &'static str {
    match s {
        TestStatus::Unspecified => "unknown",
        TestStatus::Passed => "passed",
        TestStatus::Failed => "failed",
        TestStatus::Errored => "errored",
        TestStatus::Skipped => "skipped",
    }
}

pub fn log_stream(s: LogStream) -> &'static str {
    match s {
        LogStream::Unspecified | LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
        LogStream::System => "system",
    }
}

pub fn is_terminal(s: ExecutionStatus) -> bool {
    matches!(
        s,
        ExecutionStatus::Passed
            | ExecutionStatus::Failed
            | ExecutionStatus::Errored
            | ExecutionStatus::Cancelled
            | ExecutionStatus::TimedOut
    )
}

pub fn shard_is_terminal(s: ShardState) -> bool {
    matches!(
        s,
        ShardState::Passed
            | ShardState::Failed
            | ShardState::Errored
            | ShardState::Cancelled
            | ShardState::TimedOut
    )
}

/// `classname::name`, or just the name when there is no class.
pub fn test_name(classname: &str, name: &str, id: &str) -> String {
    match (classname.is_empty(), name.is_empty()) {
        (false, false) => format!("{classname}::{name}"),
        (true, false) => name.to_string(),
        _ => id.to_string(),
    }
}

/// The first `n` lines of `text`, and how many were left out.
pub fn head_lines(text: &str, n: usize) -> (Vec<&str>, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let shown = lines.len().min(n);
    (lines[..shown].to_vec(), lines.len() - shown)
}

/// One table cell: text and how to paint it.
pub type Cell = (String, Color);

pub fn cell(text: impl Into<String>) -> Cell {
    (text.into(), Color::Plain)
}

/// A left-aligned table with a bold header; widths are measured on the unpainted text so
/// colours never shift the columns.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(headers: I) -> Table {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self, palette: &Palette) -> String {
        let cols = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, (text, _)) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(text.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: Vec<(&str, Color)>| {
            let last = cells.len().saturating_sub(1);
            for (i, (text, color)) in cells.into_iter().enumerate() {
                let pad = if i == last {
                    0
                } else {
                    widths[i].saturating_sub(text.chars().count()) + 2
                };
                out.push_str(&palette.paint(color, text));
                out.push_str(&" ".repeat(pad));
            }
            out.push('\n');
        };
        line(
            &mut out,
            self.headers
                .iter()
                .map(|h| (h.as_str(), Color::Bold))
                .collect(),
        );
        for row in &self.rows {
            line(
                &mut out,
                row.iter()
                    .take(cols)
                    .map(|(t, c)| (t.as_str(), *c))
                    .collect(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_picks_a_unit() {
        assert_eq!(elapsed(0), "0ms");
        assert_eq!(elapsed(850), "850ms");
        assert_eq!(elapsed(1_000), "1.0s");
        assert_eq!(elapsed(12_345), "12.3s");
        assert_eq!(elapsed(59_999), "59.9s");
        assert_eq!(elapsed(60_000), "1m00s");
        assert_eq!(elapsed(125_000), "2m05s");
        assert_eq!(elapsed(3_600_000), "1h00m");
        assert_eq!(elapsed(3_720_000 + 59_000), "1h02m");
    }

    #[test]
    fn age_is_coarse() {
        assert_eq!(age(-5), "0s");
        assert_eq!(age(45_000), "45s");
        assert_eq!(age(12 * 60_000 + 5_000), "12m");
        assert_eq!(age(5 * 3_600_000), "5h");
        assert_eq!(age(47 * 3_600_000), "47h");
        assert_eq!(age(3 * 86_400_000), "3d");
    }

    #[test]
    fn execution_time() {
        assert_eq!(execution_ms(0, 10, 20), None);
        assert_eq!(execution_ms(1_000, 3_500, 9_000), Some(2_500));
        assert_eq!(execution_ms(1_000, 0, 9_000), Some(8_000));
        assert_eq!(execution_ms(9_000, 0, 1_000), None);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(0), "");
        assert_eq!(timestamp(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn status_names_are_lowercase() {
        assert_eq!(execution_status(ExecutionStatus::TimedOut), "timed-out");
        assert_eq!(shard_state(ShardState::Passed), "passed");
        assert_eq!(test_status(TestStatus::Skipped), "skipped");
        assert!(is_terminal(ExecutionStatus::Cancelled));
        assert!(!is_terminal(ExecutionStatus::Running));
    }

    #[test]
    fn names_and_heads() {
        assert_eq!(test_name("pkg.T", "t1", "x"), "pkg.T::t1");
        assert_eq!(test_name("", "t1", "x"), "t1");
        assert_eq!(test_name("", "", "x"), "x");
        let (head, rest) = head_lines("a\nb\nc", 2);
        assert_eq!((head, rest), (vec!["a", "b"], 1));
    }

    #[test]
    fn table_aligns_on_plain_text() {
        let mut t = Table::new(["A", "LONGER"]);
        t.row(vec![cell("xyz"), (String::from("p"), Color::Green)]);
        let text = t.render(&Palette::plain());
        assert_eq!(text, "A    LONGER\nxyz  p\n");
        // Colours do not change the layout.
        let coloured = t.render(&Palette { enabled: true });
        assert!(coloured.contains("xyz  "));
    }
}
