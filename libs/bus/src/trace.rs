//! W3C trace context (`traceparent`) without a tracing backend: ids are generated here and
//! carried in message headers so one execution is one trace.

use rand::Rng;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new root `traceparent`: `00-<trace id>-<span id>-01`.
pub fn new_traceparent() -> String {
    let mut rng = rand::rng();
    let trace: [u8; 16] = rng.random();
    let span: [u8; 8] = rng.random();
    format!("00-{}-{}-01", hex(&trace), hex(&span))
}

/// The trace id of a well-formed `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let ok = version.len() == 2
        && trace.len() == 32
        && span.len() == 16
        && flags.len() == 2
        && trace.bytes().all(|b| b.is_ascii_hexdigit())
        && trace != "00000000000000000000000000000000";
    ok.then_some(trace)
}

/// Continues the trace of `parent` with a new span id, or starts a new trace.
pub fn child_or_new(parent: Option<&str>) -> String {
    match parent.and_then(trace_id) {
        Some(trace) => {
            let span: [u8; 8] = rand::rng().random();
            format!("00-{trace}-{}-01", hex(&span))
        }
        None => new_traceparent(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_keeps_trace_id() {
        let root = new_traceparent();
        let child = child_or_new(Some(&root));
        assert_eq!(trace_id(&root), trace_id(&child));
        assert_ne!(root, child);
        assert!(trace_id(&child_or_new(Some("garbage"))).is_some());
    }
}
