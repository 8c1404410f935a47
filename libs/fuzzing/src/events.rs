//! `event_json`: the body of `POST /v1/events` as trigger-watcher parses it.

use assay_trigger_watcher::parse_event_body;

/// Parses the input as an event body. A refusal says where (a line and column inside the
/// body) or that the type is empty; an accepted event has a type, is published on a valid
/// subject, and its payload survives the trip to the bus (serialised, then read back by a
/// consumer, it is the same JSON value).
pub fn event_json(data: &[u8]) {
    match parse_event_body(data) {
        Err(message) => {
            if let Some(rest) = message.strip_prefix("invalid event body at line ") {
                let (line, column) = line_column(rest)
                    .unwrap_or_else(|| panic!("no line and column in {message:?}"));
                // serde_json counts columns in bytes, and says column 0 for an error before
                // the first byte of a line.
                let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
                let fits = line >= 1 && lines.get(line - 1).is_some_and(|l| column <= l.len() + 1);
                assert!(
                    fits,
                    "error at {line}:{column} is outside the body: {message}"
                );
            } else {
                assert_eq!(message, "event \"type\" must not be empty");
                let value: serde_json::Value =
                    serde_json::from_slice(data).expect("refused for its type, so it is JSON");
                // serde reads a struct from an object or from an array in field order.
                let ty = match &value {
                    serde_json::Value::Array(fields) => fields.get(1),
                    other => other.get("type"),
                };
                let ty = ty.and_then(|t| t.as_str()).unwrap_or("not a string");
                assert!(ty.trim().is_empty(), "refused a non-empty type {ty:?}");
            }
        }
        Ok(body) => {
            assert!(!body.r#type.trim().is_empty(), "accepted an empty type");
            let source = body.source.as_deref().unwrap_or("http");
            check_subject(&assay_bus::subjects::event(source));
            if let Some(payload) = &body.payload {
                let sent = payload.to_string();
                let received: serde_json::Value = match serde_json::from_str(&sent) {
                    Ok(v) => v,
                    Err(e) => panic!("payload {sent} does not parse back: {e}"),
                };
                assert_eq!(&received, payload, "payload changed on the way: {sent}");
            }
        }
    }
}

/// `"3 column 7: ..."` → (3, 7).
fn line_column(s: &str) -> Option<(usize, usize)> {
    let (line, rest) = s.split_once(" column ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.parse().ok()?, column.parse().ok()?))
}

/// A subject NATS accepts for publishing: non-empty tokens without wildcards or whitespace,
/// and short: the server drops a connection whose control line (`HPUB <subject> …`) is
/// over 4 KiB.
fn check_subject(subject: &str) {
    assert!(
        subject.len() <= 256,
        "subject of {} bytes: {:?}…",
        subject.len(),
        subject.chars().take(60).collect::<String>()
    );
    assert!(
        subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">"),
        "bad subject {subject:?}"
    );
    assert!(
        !subject
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>'),
        "bad character in subject {subject:?}"
    );
}
