//! JUnit XML reports → [`TestCaseResult`]s.
//!
//! Accepts what pytest, Maven Surefire / JUnit 5, Gradle, jest-junit, go-junit-report and
//! friends write: an optional `<testsuites>` root, `<testsuite>`s (nestable) and
//! `<testcase name classname file time>` with an optional `<failure>`, `<error>` or
//! `<skipped>` child and the case's own `<system-out>`/`<system-err>`.

use assay_proto::{TestCaseResult, TestStatus};
use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// Most output kept per test case (failure text plus captured stdout/stderr).
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Most of a failure message kept.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;

/// Why a document is not a JUnit report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at line {line}, column {column}")]
pub struct ParseError {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

pub type Result<T, E = ParseError> = std::result::Result<T, E>;

/// Truncates to at most `max` bytes on a char boundary.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// 1-based line and column (in chars) of byte offset `pos` in `text`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Where text inside a test case goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Capture {
    Failure,
    Out,
    Err,
}

#[derive(Default)]
struct Case {
    result: TestCaseResult,
    /// Depth (element nesting) of the `<testcase>` element.
    depth: usize,
    failure_text: String,
    out: String,
    err: String,
    /// The element capturing text and its depth.
    capture: Option<(Capture, usize)>,
}

impl Case {
    fn push_text(&mut self, text: &str) {
        let Some((capture, _)) = self.capture else {
            return;
        };
        let buf = match capture {
            Capture::Failure => &mut self.failure_text,
            Capture::Out => &mut self.out,
            Capture::Err => &mut self.err,
        };
        // Keep collecting only while it can still matter.
        if buf.len() < MAX_OUTPUT_BYTES {
            buf.push_str(text);
        }
    }

    fn finish(mut self) -> TestCaseResult {
        let mut r = self.result;
        if r.failure_message.is_empty() {
            r.failure_message = self
                .failure_text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .to_string();
        }
        truncate(&mut r.failure_message, MAX_MESSAGE_BYTES);
        let mut output = String::new();
        for part in [&mut self.failure_text, &mut self.out, &mut self.err] {
            let part = part.trim_matches('\n');
            if part.trim().is_empty() {
                continue;
            }
            if !output.is_empty() {
                output.push('\n');
            }
            output.push_str(part);
            if output.len() >= MAX_OUTPUT_BYTES {
                break;
            }
        }
        truncate(&mut output, MAX_OUTPUT_BYTES);
        r.output = output;
        r.id = if r.classname.is_empty() {
            r.name.clone()
        } else {
            format!("{}::{}", r.classname, r.name)
        };
        r
    }
}

fn attr(e: &BytesStart<'_>, name: &str) -> Option<String> {
    let a = e.try_get_attribute(name).ok()??;
    Some(match a.unescape_value() {
        Ok(v) => v.into_owned(),
        Err(_) => String::from_utf8_lossy(&a.value).into_owned(),
    })
}

fn duration_ms(time: &str) -> u64 {
    let secs: f64 = time.trim().replace(',', "").parse().unwrap_or(0.0);
    if secs.is_finite() && secs > 0.0 {
        (secs * 1000.0).round().min(u64::MAX as f64) as u64
    } else {
        0
    }
}

fn status_rank(s: TestStatus) -> u8 {
    match s {
        TestStatus::Failed | TestStatus::Errored => 2,
        TestStatus::Skipped => 1,
        _ => 0,
    }
}

struct Parser<'a> {
    xml: &'a str,
    reader: Reader<&'a [u8]>,
    /// Element names from the root down.
    stack: Vec<String>,
    /// `file` attribute of each open `<testsuite>` (inherited by its cases).
    suite_files: Vec<Option<String>>,
    case: Option<Case>,
    results: Vec<TestCaseResult>,
    seen_root: bool,
}

impl<'a> Parser<'a> {
    fn error(&self, pos: u64, message: impl Into<String>) -> ParseError {
        let (line, column) = line_col(self.xml, usize::try_from(pos).unwrap_or(usize::MAX));
        ParseError {
            message: message.into(),
            line,
            column,
        }
    }

    fn start(&mut self, e: &BytesStart<'_>, empty: bool, pos: u64) -> Result<()> {
        let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
        let depth = self.stack.len();
        if depth == 0 {
            if self.seen_root {
                return Err(self.error(pos, format!("second root element <{name}>")));
            }
            self.seen_root = true;
            if name != "testsuites" && name != "testsuite" {
                return Err(self.error(
                    pos,
                    format!("root element is <{name}>, expected <testsuites> or <testsuite>"),
                ));
            }
        }
        match name.as_str() {
            "testsuite" if self.case.is_none() => {
                let file = attr(e, "file").or_else(|| self.suite_files.last().cloned().flatten());
                if !empty {
                    self.suite_files.push(file);
                }
            }
            "testcase" if self.case.is_none() => {
                let file = attr(e, "file")
                    .or_else(|| self.suite_files.last().cloned().flatten())
                    .unwrap_or_default();
                let case = Case {
                    result: TestCaseResult {
                        name: attr(e, "name").unwrap_or_default(),
                        classname: attr(e, "classname").unwrap_or_default(),
                        file,
                        status: TestStatus::Passed as i32,
                        duration_ms: attr(e, "time").map_or(0, |t| duration_ms(&t)),
                        ..Default::default()
                    },
                    depth,
                    ..Default::default()
                };
                if empty {
                    self.results.push(case.finish());
                } else {
                    self.case = Some(case);
                }
            }
            _ => {
                if let Some(case) = self.case.as_mut() {
                    // Only direct children of the test case classify it or carry its output.
                    if depth == case.depth + 1 {
                        let status = match name.as_str() {
                            "failure" => Some(TestStatus::Failed),
                            "error" => Some(TestStatus::Errored),
                            "skipped" => Some(TestStatus::Skipped),
                            _ => None,
                        };
                        if let Some(status) = status {
                            if status_rank(status) > status_rank(case.result.status()) {
                                case.result.status = status as i32;
                                case.result.failure_message =
                                    attr(e, "message").unwrap_or_default();
                            }
                            if status != TestStatus::Skipped && !empty {
                                case.capture = Some((Capture::Failure, depth));
                            }
                        } else if !empty {
                            match name.as_str() {
                                "system-out" => case.capture = Some((Capture::Out, depth)),
                                "system-err" => case.capture = Some((Capture::Err, depth)),
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        if !empty {
            self.stack.push(name);
        }
        Ok(())
    }

    fn end(&mut self) {
        let Some(name) = self.stack.pop() else {
            return;
        };
        let depth = self.stack.len();
        if let Some(case) = self.case.as_mut() {
            if case.capture.is_some_and(|(_, d)| d == depth) {
                case.capture = None;
            }
            if case.depth == depth
                && let Some(case) = self.case.take()
            {
                self.results.push(case.finish());
            }
        } else if name == "testsuite" {
            self.suite_files.pop();
        }
    }

    fn text(&mut self, text: &str) {
        if let Some(case) = self.case.as_mut() {
            case.push_text(text);
        }
    }

    fn run(mut self) -> Result<Vec<TestCaseResult>> {
        loop {
            let pos = self.reader.buffer_position();
            let event = match self.reader.read_event() {
                Ok(ev) => ev,
                Err(e) => {
                    let at = self.reader.error_position();
                    return Err(self.error(at, e.to_string()));
                }
            };
            match event {
                Event::Start(e) => self.start(&e, false, pos)?,
                Event::Empty(e) => self.start(&e, true, pos)?,
                Event::End(_) => self.end(),
                Event::Text(t) => {
                    let text = t
                        .xml_content()
                        .map_err(|e| self.error(pos, e.to_string()))?;
                    if self.stack.is_empty() && !text.trim().is_empty() {
                        return Err(self.error(pos, "text outside the root element"));
                    }
                    self.text(&text);
                }
                Event::CData(t) => {
                    let text = t
                        .xml_content()
                        .map_err(|e| self.error(pos, e.to_string()))?;
                    if self.stack.is_empty() {
                        return Err(self.error(pos, "CDATA outside the root element"));
                    }
                    self.text(&text);
                }
                Event::GeneralRef(r) => {
                    if self.stack.is_empty() {
                        return Err(self.error(pos, "entity reference outside the root element"));
                    }
                    let resolved = match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        Ok(None) => {
                            let name = r.decode().map_err(|e| self.error(pos, e.to_string()))?;
                            match quick_xml::escape::resolve_predefined_entity(&name) {
                                Some(s) => s.to_string(),
                                None => {
                                    return Err(self.error(pos, format!("unknown entity &{name};")));
                                }
                            }
                        }
                        Err(e) => return Err(self.error(pos, e.to_string())),
                    };
                    self.text(&resolved);
                }
                Event::Eof => {
                    let end = self.xml.len() as u64;
                    if let Some(open) = self.stack.last() {
                        return Err(self.error(
                            end,
                            format!("unexpected end of file: <{open}> is not closed"),
                        ));
                    }
                    if !self.seen_root {
                        return Err(self.error(end, "no <testsuites> or <testsuite> element"));
                    }
                    return Ok(self.results);
                }
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
    }
}

/// Parses a JUnit XML document. Pure: no I/O.
pub fn parse(xml: &str) -> Result<Vec<TestCaseResult>> {
    // A BOM is not a column anyone counts.
    let xml_body = xml.strip_prefix('\u{feff}').unwrap_or(xml);
    let mut reader = Reader::from_str(xml_body);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.check_comments = false;
    config.trim_text(false);
    let parser = Parser {
        xml: xml_body,
        reader,
        stack: Vec::new(),
        suite_files: Vec::new(),
        case: None,
        results: Vec::new(),
        seen_root: false,
    };
    parser.run()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn by_id<'a>(rs: &'a [TestCaseResult], id: &str) -> &'a TestCaseResult {
        rs.iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no {id} in {rs:?}"))
    }

    #[test]
    fn pytest_report() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4" time="0.05">
<testcase classname="tests.test_api" name="test_ok" file="tests/test_api.py" line="3" time="0.001"/>
<testcase classname="tests.test_api" name="test_bad[1-2]" time="0.012"><failure message="assert 1 == 2">def test_bad():
&gt;       assert 1 == 2
E       assert 1 == 2</failure><system-out>hello &amp; bye</system-out></testcase>
<testcase classname="tests.test_api" name="test_skip" time="0.000"><skipped type="pytest.skip" message="not today">tests/test_api.py:9: not today</skipped></testcase>
<testcase classname="tests.test_api" name="test_err" time="0.5"><error message="failed on setup with &quot;fixture&quot;">E fixture 'db' not found</error></testcase>
</testsuite></testsuites>"#;
        let rs = parse(xml).unwrap();
        assert_eq!(rs.len(), 4);
        let ok = by_id(&rs, "tests.test_api::test_ok");
        assert_eq!(ok.status(), TestStatus::Passed);
        assert_eq!(ok.duration_ms, 1);
        assert_eq!(ok.file, "tests/test_api.py");
        let bad = by_id(&rs, "tests.test_api::test_bad[1-2]");
        assert_eq!(bad.status(), TestStatus::Failed);
        assert_eq!(bad.failure_message, "assert 1 == 2");
        assert_eq!(bad.duration_ms, 12);
        assert!(
            bad.output.contains(">       assert 1 == 2"),
            "{}",
            bad.output
        );
        assert!(bad.output.ends_with("hello & bye"), "{}", bad.output);
        let skip = by_id(&rs, "tests.test_api::test_skip");
        assert_eq!(skip.status(), TestStatus::Skipped);
        assert_eq!(skip.failure_message, "not today");
        let err = by_id(&rs, "tests.test_api::test_err");
        assert_eq!(err.status(), TestStatus::Errored);
        assert_eq!(err.failure_message, "failed on setup with \"fixture\"");
        assert_eq!(err.duration_ms, 500);
    }

    #[test]
    fn surefire_junit5_report() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuite xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" name="com.acme.CartTest" time="1.234" tests="3" errors="0" skipped="1" failures="1">
  <properties><property name="java.version" value="21"/></properties>
  <testcase name="addsItem" classname="com.acme.CartTest" time="0.021"/>
  <testcase name="rejectsNegative()" classname="com.acme.CartTest" time="1,002.5">
    <failure message="expected: &lt;1&gt; but was: &lt;2&gt;" type="org.opentest4j.AssertionFailedError"><![CDATA[org.opentest4j.AssertionFailedError: expected: <1> but was: <2>
	at com.acme.CartTest.rejectsNegative(CartTest.java:42)]]></failure>
    <system-out><![CDATA[log line <raw>]]></system-out>
    <system-err>warn&#10;second&#x21;</system-err>
  </testcase>
  <testcase name="disabled" classname="com.acme.CartTest" time="0"><skipped/></testcase>
  <system-out>suite-level output is not a case's</system-out>
</testsuite>"#;
        let rs = parse(xml).unwrap();
        assert_eq!(rs.len(), 3);
        let f = by_id(&rs, "com.acme.CartTest::rejectsNegative()");
        assert_eq!(f.status(), TestStatus::Failed);
        assert_eq!(f.failure_message, "expected: <1> but was: <2>");
        assert_eq!(f.duration_ms, 1_002_500);
        assert!(f.output.contains("CartTest.java:42"));
        assert!(f.output.contains("log line <raw>"));
        assert!(f.output.contains("warn\nsecond!"));
        assert!(!f.output.contains("suite-level"));
        assert_eq!(
            by_id(&rs, "com.acme.CartTest::disabled").status(),
            TestStatus::Skipped
        );
        assert_eq!(
            by_id(&rs, "com.acme.CartTest::addsItem").status(),
            TestStatus::Passed
        );
    }

    #[test]
    fn jest_junit_report_and_nested_suites() {
        let xml = r#"<testsuites name="jest tests" tests="2" failures="1">
  <testsuite name="cart" file="src/cart.test.js" tests="2">
    <testsuite name="nested">
      <testcase classname="cart adds" name="cart adds" time="0.003"></testcase>
    </testsuite>
    <testcase classname="" name="removes" time="0.004">
      <failure>Error: expect(received).toBe(expected)

Expected: 1</failure>
    </testcase>
  </testsuite>
  <testsuite name="empty" tests="0"></testsuite>
  <testsuite name="empty2"/>
</testsuites>"#;
        let rs = parse(xml).unwrap();
        assert_eq!(rs.len(), 2);
        let adds = by_id(&rs, "cart adds::cart adds");
        assert_eq!(adds.file, "src/cart.test.js");
        let rm = by_id(&rs, "removes");
        assert_eq!(rm.status(), TestStatus::Failed);
        assert_eq!(rm.failure_message, "Error: expect(received).toBe(expected)");
        assert_eq!(rm.file, "src/cart.test.js");
    }

    #[test]
    fn empty_suites_have_no_cases() {
        assert!(
            parse("<testsuite name=\"x\" tests=\"0\"/>")
                .unwrap()
                .is_empty()
        );
        assert!(parse("<testsuites></testsuites>").unwrap().is_empty());
        assert!(
            parse("\u{feff}<?xml version=\"1.0\"?>\n<testsuites/>\n")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn malformed_documents_are_errors_with_positions() {
        let e = parse("<testsuite>\n  <testcase name=\"a\">\n</testsuite>").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        let e = parse("<testsuite><testcase name=\"a\">").unwrap_err();
        assert!(e.message.contains("not closed"), "{e}");
        let e = parse("<html><body/></html>").unwrap_err();
        assert!(e.message.contains("root element is <html>"), "{e}");
        assert_eq!((e.line, e.column), (1, 1));
        let e = parse("").unwrap_err();
        assert!(e.message.contains("no <testsuites>"), "{e}");
        let e = parse("not xml at all").unwrap_err();
        assert!(e.message.contains("outside the root"), "{e}");
        let e = parse("<testsuite/><testsuite/>").unwrap_err();
        assert!(e.message.contains("second root"), "{e}");
        let e =
            parse("<testsuite><testcase name=\"a\">&bogus;</testcase></testsuite>").unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");
        let e = parse("<testsuite>\n<testcase name=\"a\"/><!-- x").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn output_is_truncated_on_a_char_boundary() {
        let big = "é".repeat(MAX_OUTPUT_BYTES);
        let xml = format!(
            "<testsuite><testcase name=\"a\"><failure message=\"m\">{big}</failure><system-out>{big}</system-out></testcase></testsuite>"
        );
        let rs = parse(&xml).unwrap();
        assert!(rs[0].output.len() <= MAX_OUTPUT_BYTES);
        assert!(rs[0].output.len() >= MAX_OUTPUT_BYTES - 1);
        let mut s = "aé".to_string();
        truncate(&mut s, 2);
        assert_eq!(s, "a");
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 0), (1, 1));
        assert_eq!(line_col("é\né", 99), (2, 2));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in ".{0,400}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_xmlish_soup(parts in proptest::collection::vec(prop_oneof![
            Just("<testsuites>"), Just("</testsuites>"), Just("<testsuite file=\"f\">"),
            Just("</testsuite>"), Just("<testcase name=\"n\" classname=\"c\" time=\"x\">"),
            Just("<testcase name=\"e\"/>"), Just("</testcase>"), Just("<failure message=\"m\">"),
            Just("</failure>"), Just("<error/>"), Just("<skipped/>"), Just("<system-out>"),
            Just("</system-out>"), Just("<![CDATA[x]]>"), Just("&amp;"), Just("&#0;"),
            Just("&#x1F600;"), Just("text"), Just("<"), Just(">"), Just("é"), Just("<!-- c -->"),
        ], 0..40)) {
            let _ = parse(&parts.concat());
        }
    }
}
