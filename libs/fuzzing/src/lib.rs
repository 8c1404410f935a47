//! Fuzz harnesses, one per cargo-fuzz target in `fuzz/fuzz_targets/`.
//!
//! Each harness takes the fuzzer's bytes and panics when a property fails, not only when the
//! code under test panics: a decoded message must re-encode to the same message, a parse
//! error must point inside the input, a report must never yield impossible results. The
//! harnesses live in this normal workspace crate so that `make test` replays every seed and
//! every saved crash (`tests/corpus.rs`) on stable Rust, while `fuzz/` (cargo-fuzz,
//! libFuzzer) only wraps them in `fuzz_target!`.

pub mod definitions;
pub mod events;
pub mod junit;
pub mod proto;
pub mod webhooks;

/// One fuzz target: its name in `fuzz/fuzz_targets/<name>.rs`, `fuzz/corpus/<name>/` and
/// `fuzz/regressions/<name>/`, and its harness.
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "bus_proto",
        run: proto::bus_proto,
    },
    Target {
        name: "definitions_yaml",
        run: definitions::definitions_yaml,
    },
    Target {
        name: "junit_xml",
        run: junit::junit_xml,
    },
    Target {
        name: "event_json",
        run: events::event_json,
    },
    Target {
        name: "webhook_payload",
        run: webhooks::webhook_payload,
    },
];

/// Line breaks as YAML and most editors count them: `\n`, `\r\n`, a lone `\r`, and the
/// Unicode breaks NEL, LS and PS. Returns each line's text.
pub(crate) fn lines_any_break(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = match c {
            '\r' => {
                if let Some((_, '\n')) = chars.peek() {
                    chars.next();
                    i + 2
                } else {
                    i + 1
                }
            }
            '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => i + c.len_utf8(),
            _ => continue,
        };
        out.push(&text[start..i]);
        start = end;
    }
    out.push(&text[start..]);
    out
}

/// Whether 1-based (`line`, `column`) lies in `text` or just past the end of a line (or
/// on the line after the last one, where "unexpected end of input" is reported), counting
/// lines either by `\n` only or by every YAML line break, and columns in chars.
pub(crate) fn inside(text: &str, line: usize, column: usize) -> bool {
    let by_newline: Vec<&str> = text.split('\n').collect();
    let by_any = lines_any_break(text);
    [by_newline, by_any].iter().any(|lines| {
        if line == 0 || column == 0 {
            return false;
        }
        match lines.get(line - 1) {
            Some(l) => column <= l.chars().count() + 1,
            None => line == lines.len() + 1 && column == 1,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_counts_lines_and_columns_from_one() {
        let text = "ab\ncd";
        assert!(inside(text, 1, 1));
        assert!(inside(text, 1, 3));
        assert!(!inside(text, 1, 4));
        assert!(inside(text, 2, 3));
        assert!(inside(text, 3, 1));
        assert!(!inside(text, 3, 2));
        assert!(!inside(text, 0, 1));
        assert!(!inside(text, 1, 0));
        assert!(inside("a\rbcd", 2, 4));
    }

    #[test]
    fn breaks_are_the_yaml_ones() {
        assert_eq!(
            lines_any_break("a\r\nb\rc\nd\u{2028}e"),
            ["a", "b", "c", "d", "e"]
        );
        assert_eq!(lines_any_break(""), [""]);
    }
}
