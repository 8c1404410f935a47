//! Colours, only when stdout is a terminal and `NO_COLOR` is unset.

use std::io::IsTerminal;

use assay_proto::{ExecutionStatus, ShardState, TestStatus};
use owo_colors::OwoColorize;

/// A colour (or emphasis) for one piece of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Plain,
    Green,
    Red,
    Yellow,
    Cyan,
    Dim,
    Bold,
    BoldGreen,
    BoldRed,
}

/// Paints text, or leaves it alone when colours are off.
#[derive(Debug, Clone, Copy)]
pub struct Palette {
    pub enabled: bool,
}

impl Palette {
    /// Colours on when stdout is a terminal and `NO_COLOR` is unset or empty.
    pub fn detect() -> Palette {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Palette {
            enabled: !no_color && std::io::stdout().is_terminal(),
        }
    }

    pub fn plain() -> Palette {
        Palette { enabled: false }
    }

    pub fn paint(&self, color: Color, text: &str) -> String {
        if !self.enabled {
            return text.to_string();
        }
        match color {
            Color::Plain => text.to_string(),
            Color::Green => text.green().to_string(),
            Color::Red => text.red().to_string(),
            Color::Yellow => text.yellow().to_string(),
            Color::Cyan => text.cyan().to_string(),
            Color::Dim => text.dimmed().to_string(),
            Color::Bold => text.bold().to_string(),
            Color::BoldGreen => text.green().bold().to_string(),
            Color::BoldRed => text.red().bold().to_string(),
        }
    }
}

/// Whether stdout is a terminal (progress bars are drawn only then).
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

pub fn execution_color(status: ExecutionStatus) -> Color {
    match status {
        ExecutionStatus::Passed => Color::Green,
        ExecutionStatus::Failed | ExecutionStatus::Errored | ExecutionStatus::TimedOut => {
            Color::Red
        }
        ExecutionStatus::Cancelled => Color::Yellow,
        ExecutionStatus::Running => Color::Cyan,
        ExecutionStatus::Queued | ExecutionStatus::Unspecified => Color::Dim,
    }
}

pub fn shard_color(state: ShardState) -> Color {
    match state {
        ShardState::Passed => Color::Green,
        ShardState::Failed | ShardState::Errored | ShardState::TimedOut => Color::Red,
        ShardState::Cancelled => Color::Yellow,
        ShardState::Running => Color::Cyan,
        ShardState::WaitingForCapacity => Color::Yellow,
        ShardState::Queued | ShardState::Unspecified => Color::Dim,
    }
}

pub fn test_color(status: TestStatus) -> Color {
    match status {
        TestStatus::Passed => Color::Green,
        TestStatus::Failed | TestStatus::Errored => Color::Red,
        TestStatus::Skipped => Color::Yellow,
        TestStatus::Unspecified => Color::Dim,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_palette_leaves_text_alone() {
        assert_eq!(Palette::plain().paint(Color::Red, "x"), "x");
        let on = Palette { enabled: true };
        assert_ne!(on.paint(Color::Red, "x"), "x");
        assert!(on.paint(Color::Red, "x").contains('x'));
    }
}
