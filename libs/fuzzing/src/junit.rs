//! `junit_xml`: the runner's JUnit report parser.

use assay_proto::TestStatus;
use assay_runner::junit::{self, MAX_MESSAGE_BYTES, MAX_OUTPUT_BYTES};

/// Parses the input as the runner reads a report (lossy UTF-8). An error points inside the
/// report; a success yields at most one result per `testcase` element, each with a definite
/// status, an id made of its class name and name, and output within the limits. Parsing is
/// deterministic and a leading BOM changes nothing.
pub fn junit_xml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let body = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let parsed = junit::parse(&text);
    assert_eq!(parsed, junit::parse(&text), "parsing is not deterministic");
    assert_eq!(
        parsed,
        junit::parse(&format!("\u{feff}{body}")),
        "a BOM changed the result"
    );
    match parsed {
        Err(e) => {
            assert!(!e.message.is_empty(), "error without a message: {e:?}");
            assert!(
                crate::inside(body, e.line, e.column),
                "error at {}:{} is outside the report ({} lines): {e}",
                e.line,
                e.column,
                body.split('\n').count()
            );
        }
        Ok(results) => {
            let elements = body.matches("testcase").count();
            assert!(
                results.len() <= elements,
                "{} results from {elements} `testcase` tags",
                results.len()
            );
            for r in &results {
                let status = TestStatus::try_from(r.status);
                assert!(
                    matches!(
                        status,
                        Ok(TestStatus::Passed
                            | TestStatus::Failed
                            | TestStatus::Errored
                            | TestStatus::Skipped)
                    ),
                    "result without a definite status: {r:?}"
                );
                let id = if r.classname.is_empty() {
                    r.name.clone()
                } else {
                    format!("{}::{}", r.classname, r.name)
                };
                assert_eq!(r.id, id, "id is not classname::name");
                assert!(
                    r.failure_message.len() <= MAX_MESSAGE_BYTES,
                    "message too long"
                );
                assert!(r.output.len() <= MAX_OUTPUT_BYTES, "output too long");
                assert_eq!(r.attempts, 0, "the parser does not count attempts");
                assert!(!r.flaky, "the parser does not judge flakiness");
            }
        }
    }
}
