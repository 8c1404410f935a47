//! Finds the line and column of a key path in a YAML document's text.
//!
//! `serde_norway::Value` carries no spans, so semantic errors find their key by scanning the
//! text: indentation-aware for block style, substring search for simple flow style. Good
//! enough to point at the right line; callers fall back to the document start.

/// One step of a key path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// Builds a path: `kp!["spec", "steps", 2usize, "timeout"]`.
macro_rules! kp {
    ($($seg:expr),* $(,)?) => {
        <Vec<$crate::locate::Seg>>::from([$($crate::locate::Seg::from($seg)),*])
    };
}
pub(crate) use kp;

/// Parses a serde_norway error path such as `spec.steps[2].name` (`.` is the root).
pub(crate) fn parse_path(s: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    if s == "." || s.is_empty() {
        return out;
    }
    for part in s.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            let key = &rest[..open];
            if !key.is_empty() {
                out.push(Seg::Key(key.to_string()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(i) = stripped[..close].parse() {
                    out.push(Seg::Index(i));
                }
                rest = &stripped[close + 1..];
            }
        } else if !rest.is_empty() && rest != "?" {
            out.push(Seg::Key(rest.trim_end_matches('?').to_string()));
        }
    }
    out
}

/// A piece of a line: 1-based line number, 0-based column where `text` starts.
#[derive(Debug, Clone, Copy)]
struct Piece<'a> {
    line: usize,
    col: usize,
    text: &'a str,
}

/// The 1-based (line, column) of the deepest segment of `path` found in `doc`, and how many
/// segments were found. `doc` is the whole document text with absolute line numbering.
pub(crate) fn locate(doc: &str, path: &[Seg]) -> Option<((usize, usize), usize)> {
    let mut region: Vec<Piece> = doc
        .lines()
        .enumerate()
        .filter_map(|(i, l)| content(i + 1, 0, l))
        .filter(|p| !p.text.starts_with("---") && !p.text.starts_with('%'))
        .collect();
    let mut found = None;
    for (depth, seg) in path.iter().enumerate() {
        let next = match seg {
            Seg::Key(k) => find_key(&region, k),
            Seg::Index(i) => find_index(&region, *i),
        };
        match next {
            Some((at, sub)) => {
                found = Some((at, depth + 1));
                region = sub;
            }
            None => break,
        }
    }
    found.map(|((line, col), depth)| ((line, char_column(doc, line, col)), depth))
}

/// Turns a 1-based column in bytes (what the search works in) into one in chars, as YAML
/// errors and editors count.
fn char_column(doc: &str, line: usize, col: usize) -> usize {
    doc.lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.get(..col.saturating_sub(1)))
        .map_or(col, |before| before.chars().count() + 1)
}

/// The non-blank, non-comment content of a line, with its column.
fn content(line: usize, col: usize, text: &str) -> Option<Piece<'_>> {
    let trimmed = text.trim_start_matches([' ', '\t']);
    let col = col + (text.len() - trimmed.len());
    let trimmed = trimmed.trim_end();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        None
    } else {
        Some(Piece {
            line,
            col,
            text: trimmed,
        })
    }
}

/// Strips a leading `- ` (sequence item marker) and returns the piece after it.
fn after_dash(p: Piece<'_>) -> Option<Piece<'_>> {
    if p.text == "-" {
        return None;
    }
    let rest = p.text.strip_prefix("- ")?;
    content(p.line, p.col + 2, rest)
}

fn key_matches(text: &str, key: &str) -> Option<usize> {
    for quoted in [key.to_string(), format!("\"{key}\""), format!("'{key}'")] {
        if let Some(rest) = text.strip_prefix(quoted.as_str())
            && rest.trim_start().starts_with(':')
        {
            let colon = text.len() - rest.trim_start().len();
            return Some(colon + 1);
        }
    }
    None
}

/// Finds `key` among the pieces at the region's smallest indentation.
fn find_key<'a>(region: &[Piece<'a>], key: &str) -> Option<((usize, usize), Vec<Piece<'a>>)> {
    if let [single] = region
        && single.text.starts_with('{')
    {
        return find_flow_key(*single, key);
    }
    let base = region.iter().map(|p| p.col).min()?;
    for (i, p) in region.iter().enumerate() {
        if p.col != base {
            continue;
        }
        let Some(after) = key_matches(p.text, key) else {
            continue;
        };
        let at = (p.line, p.col + 1);
        let rest = &p.text[after..];
        if let Some(inline) = content(p.line, p.col + after, rest)
            && !inline.text.starts_with('|')
            && !inline.text.starts_with('>')
            && !inline.text.starts_with('&')
        {
            return Some((at, vec![inline]));
        }
        let sub = region[i + 1..]
            .iter()
            .take_while(|q| q.col > base || (q.col == base && q.text.starts_with("- ")))
            .copied()
            .collect();
        return Some((at, sub));
    }
    None
}

/// Finds `key` inside a flow mapping on one line (`{name: x, labels: {a: b}}`).
fn find_flow_key<'a>(p: Piece<'a>, key: &str) -> Option<((usize, usize), Vec<Piece<'a>>)> {
    let bytes = p.text.as_bytes();
    let mut start = 0;
    while let Some(off) = p.text[start..].find(key) {
        let pos = start + off;
        let before_ok = pos == 0 || matches!(bytes[pos - 1], b'{' | b',' | b' ' | b'"' | b'\'');
        let rest = p.text[pos + key.len()..].trim_start_matches(['"', '\'']);
        if before_ok && rest.trim_start().starts_with(':') {
            let value_start = p.text.len() - rest.trim_start().len() + 1;
            let at = (p.line, p.col + pos + 1);
            let sub = content(p.line, p.col + value_start, &p.text[value_start..])
                .map(|v| vec![v])
                .unwrap_or_default();
            return Some((at, sub));
        }
        start = pos + key.len();
    }
    None
}

/// Finds the `index`th `- ` item at the region's smallest indentation.
fn find_index<'a>(region: &[Piece<'a>], index: usize) -> Option<((usize, usize), Vec<Piece<'a>>)> {
    if let [single] = region
        && single.text.starts_with('[')
    {
        return Some(((single.line, single.col + 1), vec![*single]));
    }
    let base = region.iter().map(|p| p.col).min()?;
    let items: Vec<usize> = region
        .iter()
        .enumerate()
        .filter(|(_, p)| p.col == base && (p.text.starts_with("- ") || p.text == "-"))
        .map(|(i, _)| i)
        .collect();
    let &start = items.get(index)?;
    let end = items.get(index + 1).copied().unwrap_or(region.len());
    let head = region[start];
    let mut sub: Vec<Piece> = after_dash(head).into_iter().collect();
    sub.extend(region[start + 1..end].iter().copied());
    Some(((head.line, head.col + 1), sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: api, labels: {team: pay}}
spec:
  # comment
  parallel:
    count: 0
  steps:
    - name: one
      run: echo 1
    - name: two
      timeout: 5x
  tests: {run: x, list: y}
";

    fn at(path: &[Seg]) -> Option<(usize, usize)> {
        locate(DOC, path).map(|(at, _)| at)
    }

    #[test]
    fn block_keys() {
        assert_eq!(at(&kp!["spec", "parallel", "count"]), Some((7, 5)));
        assert_eq!(at(&kp!["kind"]), Some((2, 1)));
    }

    #[test]
    fn sequence_items() {
        assert_eq!(at(&kp!["spec", "steps", 1usize]), Some((11, 5)));
        assert_eq!(at(&kp!["spec", "steps", 1usize, "timeout"]), Some((12, 7)));
        assert_eq!(at(&kp!["spec", "steps", 0usize, "run"]), Some((10, 7)));
    }

    #[test]
    fn flow_keys() {
        assert_eq!(at(&kp!["metadata", "labels", "team"]), Some((3, 32)));
        assert_eq!(at(&kp!["spec", "tests", "list"]), Some((13, 19)));
    }

    #[test]
    fn columns_count_chars_not_bytes() {
        let doc = "metadata: {name: \"héé\", labels: {team: x}}\n";
        assert_eq!(
            locate(doc, &kp!["metadata", "labels"]).map(|(at, _)| at),
            Some((1, 25))
        );
    }

    #[test]
    fn partial_match_reports_depth() {
        assert_eq!(
            locate(DOC, &kp!["spec", "parallel", "nope"]),
            Some(((6, 3), 2))
        );
    }

    #[test]
    fn parses_serde_paths() {
        assert_eq!(
            parse_path("spec.steps[2].name"),
            kp!["spec", "steps", 2usize, "name"]
        );
        assert!(parse_path(".").is_empty());
    }
}
