//! Splitting a file into documents, typed parsing and turning serde errors into diagnostics.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::locate::{self, Seg, kp, parse_path};
use crate::model::{Metadata, TriggerSpec, WorkflowSpec};
use crate::validate::{self, Problem};
use crate::{
    API_VERSION, Definition, Diagnostic, Error, KIND_TRIGGER, KIND_WORKFLOW, Location, Result,
    Trigger, Workflow, did_you_mean,
};

const KINDS: [&str; 2] = [KIND_WORKFLOW, KIND_TRIGGER];

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document<S> {
    // Checked on the untyped value first; optional here so they are not reported twice.
    #[serde(default)]
    #[allow(dead_code)]
    api_version: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    kind: Option<String>,
    metadata: Metadata,
    spec: S,
}

/// One YAML document of a file, padded with empty lines so that line numbers stay absolute.
pub(crate) struct Doc {
    pub text: String,
    /// 1-based line of the document's first content.
    pub start_line: usize,
}

/// Parses and validates every document of one file.
///
/// Returns [`Error::Invalid`] with every problem found when any document is invalid.
pub fn parse_str(file: &Path, text: &str) -> Result<Vec<Definition>> {
    let text = normalize_breaks(text);
    let mut defs = Vec::new();
    let mut diags = Vec::new();
    for doc in split_documents(&text) {
        let mut ctx = Ctx {
            file,
            doc: &doc,
            diags: Vec::new(),
        };
        if let Some(def) = ctx.parse() {
            defs.push(def);
        }
        diags.append(&mut ctx.diags);
    }
    if diags.is_empty() {
        Ok(defs)
    } else {
        Err(Error::Invalid(diags))
    }
}

/// Turns `\r\n`, a lone `\r` and NEL into `\n`. YAML counts each as one line break (and
/// reads each as `\n` inside scalars), while document splitting and key lookup split on
/// `\n`; without this a file with old Mac line ends had its later documents' errors
/// reported lines away from where they are.
fn normalize_breaks(text: &str) -> Cow<'_, str> {
    if !text.contains(['\r', '\u{85}']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' | '\u{85}' => out.push('\n'),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

pub(crate) fn split_documents(text: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut current: Vec<(usize, String)> = Vec::new();
    let flush = |current: &mut Vec<(usize, String)>, docs: &mut Vec<Doc>| {
        let lines = std::mem::take(current);
        let Some(start) = lines.iter().find(|(_, l)| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        }) else {
            return;
        };
        let start_line = start.0 + 1;
        let first = lines.first().map_or(0, |(i, _)| *i);
        let mut text = "\n".repeat(first);
        for (_, l) in &lines {
            text.push_str(l);
            text.push('\n');
        }
        docs.push(Doc { text, start_line });
    };
    for (i, line) in text.lines().enumerate() {
        let is_marker = |m: &str| {
            line == m
                || line
                    .strip_prefix(m)
                    .is_some_and(|r| r.starts_with([' ', '\t']))
        };
        if is_marker("---") {
            flush(&mut current, &mut docs);
            current.push((i, format!("   {}", &line[3..])));
        } else if is_marker("...") {
            flush(&mut current, &mut docs);
        } else if line.starts_with('%') && !has_content(&current) {
            // A directive (`%YAML 1.2`) before a document; nothing here needs it. Kept as an
            // empty line so that the lines after it keep their numbers. Inside a document a
            // `%` line is not a directive, and YAML itself says what is wrong with it.
            current.push((i, String::new()));
        } else {
            current.push((i, line.to_string()));
        }
    }
    flush(&mut current, &mut docs);
    docs
}

/// Whether `lines` hold anything but blank lines and comments.
fn has_content(lines: &[(usize, String)]) -> bool {
    lines.iter().any(|(_, l)| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    })
}

struct Ctx<'a> {
    file: &'a Path,
    doc: &'a Doc,
    diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn start(&self) -> Location {
        self.at(self.doc.start_line, 1)
    }

    fn at(&self, line: usize, column: usize) -> Location {
        Location {
            file: self.file.to_path_buf(),
            line,
            column,
        }
    }

    /// The location of `path`, or of the deepest part of it that exists, or the document start.
    fn locate(&self, path: &[Seg]) -> Location {
        match locate::locate(&self.doc.text, path) {
            Some(((line, col), _)) => self.at(line, col),
            None => self.start(),
        }
    }

    fn push(&mut self, p: Problem) {
        let mut d = Diagnostic::new(self.locate(&p.path), p.message);
        d.hint = p.hint;
        self.diags.push(d);
    }

    fn parse(&mut self) -> Option<Definition> {
        let value: serde_norway::Value = match serde_norway::from_str(&self.doc.text) {
            Ok(v) => v,
            Err(e) => {
                let d = self.syntax(&e);
                self.diags.push(d);
                return None;
            }
        };
        let map = match value {
            serde_norway::Value::Null => return None,
            serde_norway::Value::Mapping(m) => m,
            _ => {
                self.diags.push(
                    Diagnostic::new(self.start(), "expected a mapping with apiVersion, kind, metadata and spec")
                        .hint(format!("start the document with `apiVersion: {API_VERSION}` and `kind: {KIND_WORKFLOW}`")),
                );
                return None;
            }
        };
        let api = map.get("apiVersion").and_then(|v| v.as_str());
        match api {
            None => self.diags.push(
                Diagnostic::new(self.start(), "missing field `apiVersion`")
                    .hint(format!("add `apiVersion: {API_VERSION}` to the document")),
            ),
            Some(api) if api != API_VERSION => {
                let loc = self.locate(&kp!["apiVersion"]);
                self.diags.push(
                    Diagnostic::new(loc, format!("unsupported apiVersion `{api}`"))
                        .hint(format!("use `apiVersion: {API_VERSION}`")),
                );
            }
            Some(_) => {}
        }
        let Some(kind) = map.get("kind").and_then(|v| v.as_str()) else {
            self.diags.push(
                Diagnostic::new(self.start(), "missing field `kind`").hint(format!(
                    "add `kind: {KIND_WORKFLOW}` or `kind: {KIND_TRIGGER}`"
                )),
            );
            return None;
        };
        match kind {
            KIND_WORKFLOW => self.workflow(),
            KIND_TRIGGER => self.trigger(),
            other => {
                let loc = self.locate(&kp!["kind"]);
                let mut hint = format!("expected one of: {}", KINDS.join(", "));
                if let Some(best) = did_you_mean(other, KINDS) {
                    hint = format!("did you mean `{best}`? ({hint})");
                }
                self.diags
                    .push(Diagnostic::new(loc, format!("unknown kind `{other}`")).hint(hint));
                None
            }
        }
    }

    fn typed<S: serde::de::DeserializeOwned>(&mut self) -> Option<Document<S>> {
        match serde_norway::from_str::<Document<S>>(&self.doc.text) {
            Ok(d) => Some(d),
            Err(e) => {
                let d = self.serde(&e);
                self.diags.push(d);
                None
            }
        }
    }

    fn metadata(&mut self, m: &Metadata) {
        for p in validate::metadata(m) {
            self.push(p);
        }
    }

    fn workflow(&mut self) -> Option<Definition> {
        let mut doc = self.typed::<WorkflowSpec>()?;
        self.metadata(&doc.metadata);
        let problems = validate::workflow(&doc.spec);
        let ok = problems.is_empty();
        for p in problems {
            self.push(p);
        }
        if let Some(wd) = doc.spec.working_dir.take() {
            doc.spec.working_dir = Some(resolve_dir(self.file, &wd));
        }
        ok.then(|| {
            Definition::Workflow(Workflow {
                name: doc.metadata.name,
                labels: doc.metadata.labels,
                spec: doc.spec,
                source: self.start(),
            })
        })
    }

    fn trigger(&mut self) -> Option<Definition> {
        let doc = self.typed::<TriggerSpec>()?;
        self.metadata(&doc.metadata);
        let problems = validate::trigger(&doc.spec);
        let ok = problems.is_empty();
        for p in problems {
            self.push(p);
        }
        ok.then(|| {
            Definition::Trigger(Trigger {
                name: doc.metadata.name,
                labels: doc.metadata.labels,
                spec: doc.spec,
                source: self.start(),
            })
        })
    }

    fn syntax(&self, e: &serde_norway::Error) -> Diagnostic {
        let loc = e
            .location()
            .map_or_else(|| self.start(), |l| self.at(l.line(), l.column()));
        let msg = strip_marks(&e.to_string());
        Diagnostic::new(loc, format!("invalid YAML: {msg}"))
            .hint("check indentation, quoting and that every `key:` is followed by a space")
    }

    fn serde(&self, e: &serde_norway::Error) -> Diagnostic {
        let serde_loc = e
            .location()
            .map_or_else(|| self.start(), |l| self.at(l.line(), l.column()));
        let raw = strip_marks(&e.to_string());
        let (path_str, msg) = split_path(&raw);
        let segs = parse_path(path_str);
        let (place, in_place) = if segs.is_empty() {
            ("the document".to_string(), String::new())
        } else {
            (format!("`{path_str}`"), format!(" in `{path_str}`"))
        };

        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let (field, expected) = backticked_head(rest);
            let list = expected_list(expected);
            let mut d = Diagnostic::new(
                serde_loc,
                format!(
                    "unknown field `{field}`{}",
                    if segs.is_empty() {
                        " at the top level"
                    } else {
                        &in_place
                    }
                ),
            );
            d.hint = Some(suggest(field, &list, "remove it or use one of"));
            return d;
        }
        if let Some(rest) = msg.strip_prefix("unknown variant `") {
            let (value, expected) = backticked_head(rest);
            let list = expected_list(expected);
            let mut d = Diagnostic::new(serde_loc, format!("unknown value `{value}` for {place}"));
            d.hint = Some(suggest(value, &list, "use one of"));
            return d;
        }
        if let Some(rest) = msg.strip_prefix("missing field `") {
            let (field, _) = backticked_head(rest);
            // Point at the mapping that lacks the field; serde's mark is where it ended.
            let loc = if segs.is_empty() {
                self.start()
            } else {
                match locate::locate(&self.doc.text, &segs) {
                    Some(((line, col), n)) if n == segs.len() => self.at(line, col),
                    _ => serde_loc,
                }
            };
            return Diagnostic::new(loc, format!("missing field `{field}`{in_place}"))
                .hint(format!("add `{field}:` to {place}"));
        }
        if let Some(rest) = msg.strip_prefix("invalid type: ") {
            return Diagnostic::new(serde_loc, format!("invalid type for {place}: {rest}"))
                .hint("change the value to the expected type");
        }
        if let Some(rest) = msg.strip_prefix("invalid value: ") {
            return Diagnostic::new(serde_loc, format!("invalid value for {place}: {rest}"))
                .hint("change the value to the expected kind");
        }
        if segs.is_empty() {
            Diagnostic::new(serde_loc, msg.to_string())
        } else {
            Diagnostic::new(serde_loc, format!("{msg} (in {place})"))
        }
    }
}

fn resolve_dir(file: &Path, wd: &Path) -> PathBuf {
    let base = file.parent().unwrap_or(Path::new(""));
    let joined = base.join(wd);
    std::path::absolute(&joined).unwrap_or(joined)
}

/// Removes ` at line N column M` / ` at position N` from a serde_norway message.
fn strip_marks(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(" at ") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 4..];
        let skip = mark_len(after);
        if skip == 0 {
            out.push_str(" at ");
        }
        rest = &after[skip..];
    }
    out.push_str(rest);
    out
}

/// Length of a leading `line N column M` or `position N`, 0 when there is none.
fn mark_len(s: &str) -> usize {
    let digits = |t: &str| t.bytes().take_while(u8::is_ascii_digit).count();
    if let Some(t) = s.strip_prefix("line ") {
        let a = digits(t);
        if a > 0
            && let Some(u) = t[a..].strip_prefix(" column ")
        {
            let b = digits(u);
            if b > 0 {
                return "line ".len() + a + " column ".len() + b;
            }
        }
    } else if let Some(t) = s.strip_prefix("position ") {
        let a = digits(t);
        if a > 0 {
            return "position ".len() + a;
        }
    }
    0
}

/// Splits `spec.tests: missing field ...` into the path and the message.
fn split_path(s: &str) -> (&str, &str) {
    if let Some((head, tail)) = s.split_once(": ")
        && !head.is_empty()
        && !head.contains([' ', '`', '"'])
    {
        return (head, tail);
    }
    (".", s)
}

/// For "name`, expected ..." returns ("name", ", expected ...").
fn backticked_head(s: &str) -> (&str, &str) {
    match s.split_once('`') {
        Some((head, tail)) => (head, tail),
        None => (s, ""),
    }
}

/// The backticked names in ", expected one of `a`, `b`".
fn expected_list(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, p)| p.to_string())
        .collect()
}

fn suggest(input: &str, list: &[String], otherwise: &str) -> String {
    let joined = list.join(", ");
    match did_you_mean(input, list.iter().map(String::as_str)) {
        Some(best) => format!("did you mean `{best}`? (expected one of: {joined})"),
        None if list.is_empty() => "remove it".to_string(),
        None => format!("{otherwise}: {joined}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_marks() {
        assert_eq!(
            strip_marks(
                "did not find expected key at line 3 column 5, while parsing a block mapping at line 1 column 1"
            ),
            "did not find expected key, while parsing a block mapping"
        );
        assert_eq!(strip_marks("look at me"), "look at me");
    }

    #[test]
    fn old_mac_and_windows_line_ends_keep_line_numbers() {
        let doc = "apiVersion: assay.dev/v1alpha1\nkind: TestTrigger\nmetadata: {name: t}\nspec: {on: {}, run: {workflow: w}}\n";
        let broken = "apiVersion: assay.dev/v1alpha1\nkind: TestTrigger\nmetadata: {name: t2\n";
        for eol in ["\n", "\r\n", "\r", "\u{85}"] {
            let text = format!("{doc}---\n{broken}").replace('\n', eol);
            let Err(Error::Invalid(diags)) = parse_str(Path::new("f.yaml"), &text) else {
                panic!("accepted a broken document");
            };
            let last = diags.last().expect("a diagnostic");
            assert_eq!(last.location.line, 9, "line ends {eol:?}: {last}");
        }
    }

    #[test]
    fn a_percent_line_inside_a_document_is_not_dropped() {
        let text = "%YAML 1.1\n---\napiVersion: assay.dev/v1alpha1\nkind: TestTrigger\nmetadata:\n% x\n  name: t\n";
        let Err(Error::Invalid(diags)) = parse_str(Path::new("f.yaml"), text) else {
            panic!("accepted a `%` line inside a document");
        };
        assert_eq!(
            (diags[0].location.line, diags[0].location.column),
            (6, 2),
            "{}",
            crate::join_lines(&diags)
        );
        let ok = "%YAML 1.1\n---\n# c\napiVersion: assay.dev/v1alpha1\nkind: TestTrigger\nmetadata: {name: t}\nspec: {on: {}, run: {workflow: w}, settle: 5 minutes}\n";
        let Err(Error::Invalid(diags)) = parse_str(Path::new("f.yaml"), ok) else {
            panic!("accepted a bad duration");
        };
        assert_eq!(diags[0].location.line, 7, "{}", diags[0]);
    }

    #[test]
    fn splits_documents_with_absolute_lines() {
        let docs = split_documents("# c\na: 1\n---\n\nb: 2\n--- {c: 3}\n---\n# only comment\n");
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].start_line, 2);
        assert_eq!(docs[1].start_line, 5);
        assert_eq!(docs[1].text.lines().nth(4), Some("b: 2"));
        assert_eq!(docs[2].start_line, 6);
    }
}
