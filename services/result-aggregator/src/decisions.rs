//! The scheduler's event records (`assay.v1.decisions.<source>`), as the decisions consumer
//! receives them.

use assay_proto::{EventRecord, Header};
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType};

/// An [`EventRecord`] as a bus message. `assay-bus` lists the message types its consumers
/// decode, and `EventRecord` is not among them yet; this wrapper encodes exactly as the
/// record does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decided(pub EventRecord);

impl prost::Message for Decided {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.0.encode_raw(buf)
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        self.0.merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.encoded_len()
    }

    fn clear(&mut self) {
        self.0.clear()
    }
}

impl assay_bus::BusMessage for Decided {
    const NAME: &'static str = "EventRecord";

    fn header(&self) -> Option<&Header> {
        self.0.header.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assay_proto::{Provenance, TriggerDecision};
    use prost::Message;

    #[test]
    fn encodes_and_decodes_as_the_record_itself() {
        let record = EventRecord {
            header: Some(Header {
                idempotency_key: "k/decision".into(),
                ..Header::default()
            }),
            event: Some(Provenance {
                event_id: "01E".into(),
                source: "github".into(),
                ..Provenance::default()
            }),
            decisions: vec![TriggerDecision {
                trigger: "t".into(),
                reason: "branch does not match".into(),
                ..TriggerDecision::default()
            }],
            handled_at_ms: 7,
            reason: String::new(),
        };
        let bytes = record.encode_to_vec();
        assert_eq!(Decided(record.clone()).encode_to_vec(), bytes);
        assert_eq!(Decided::decode(bytes.as_slice()).unwrap(), Decided(record));
    }
}
