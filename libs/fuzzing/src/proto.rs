//! `bus_proto`: the input decoded as every protobuf message that travels on the bus or sits
//! in a KV bucket.

use std::fmt::Debug;

use assay_bus::BusMessage;
use assay_proto::{
    Execution, ExecutionUpdate, HistorySnapshot, LogChunk, PendingPlan, QueueBatch, RunRequest,
    ShardJob, ShardStatus, TestCaseBatch, TriggerEvent,
};
use prost::Message;

/// How two decodings of one message are compared.
#[derive(Clone, Copy)]
enum Same {
    /// `==` on the decoded values; for messages with maps, whose encoding follows the
    /// `HashMap`'s order and so differs between two equal values.
    Value,
    /// Identical re-encodings; for messages with `double` fields, where a NaN is never `==`
    /// itself. (None of them has a map, so their encoding is deterministic.)
    Bytes,
}

/// Decodes `data` as each bus message ([`assay_bus::decode`], the consumers' path), each KV
/// value (`PendingPlan` in `assay_waiting`, `HistorySnapshot` in `assay_history`) and a
/// runner's `--job-file`. For every decoding that succeeds: re-encoding gives
/// `encoded_len()` bytes, decodes again, and the result equals the first decoding.
pub fn bus_proto(data: &[u8]) {
    bus::<TriggerEvent>(data, Same::Value);
    bus::<RunRequest>(data, Same::Value);
    bus::<Execution>(data, Same::Value);
    bus::<ShardJob>(data, Same::Value);
    bus::<ShardStatus>(data, Same::Value);
    bus::<TestCaseBatch>(data, Same::Value);
    bus::<LogChunk>(data, Same::Value);
    bus::<ExecutionUpdate>(data, Same::Value);
    bus::<QueueBatch>(data, Same::Bytes);
    roundtrip::<PendingPlan>(data, Same::Value);
    roundtrip::<HistorySnapshot>(data, Same::Bytes);
    job_file(data);
}

/// The consumers' decode: the size limit is checked before decoding, and within the limit
/// it agrees with a plain decode.
fn bus<M: BusMessage + PartialEq + Debug>(data: &[u8], same: Same) {
    let plain = roundtrip::<M>(data, same);
    let checked = assay_bus::decode::<M>("fuzz", data, data.len());
    match (&plain, &checked) {
        (Some(a), Ok(b)) => assert!(
            equal(a, b, same),
            "{}: assay_bus::decode differs from prost",
            M::NAME
        ),
        (None, Err(assay_bus::Error::Decode { .. })) => {}
        _ => panic!(
            "{}: assay_bus::decode gave {checked:?}, prost gave {plain:?}",
            M::NAME
        ),
    }
    if let Some(limit) = data.len().checked_sub(1) {
        let over = assay_bus::decode::<M>("fuzz", data, limit);
        assert!(
            matches!(over, Err(assay_bus::Error::TooLarge { .. })),
            "{}: a payload over the limit must be refused before decoding, got {over:?}",
            M::NAME
        );
    }
}

/// Decodes, re-encodes and decodes again; returns the first decoding.
fn roundtrip<M: Message + Default + PartialEq + Debug>(data: &[u8], same: Same) -> Option<M> {
    let first = M::decode(data).ok()?;
    let name = std::any::type_name::<M>();
    let encoded = first.encode_to_vec();
    assert_eq!(
        encoded.len(),
        first.encoded_len(),
        "{name}: encoded_len() disagrees with encode_to_vec()"
    );
    let second = match M::decode(encoded.as_slice()) {
        Ok(m) => m,
        Err(e) => panic!("{name}: re-encoded message does not decode: {e}; first: {first:?}"),
    };
    assert!(
        equal(&first, &second, same),
        "{name}: decode(encode(m)) != m\n first: {first:?}\nsecond: {second:?}"
    );
    Some(first)
}

fn equal<M: Message + PartialEq>(a: &M, b: &M, same: Same) -> bool {
    match same {
        Same::Value => a == b,
        Same::Bytes => a.encode_to_vec() == b.encode_to_vec(),
    }
}

/// `assay-runner --job-file`: accepted exactly when the bytes are a `ShardJob` with an
/// execution id, and then the same job prost decodes.
fn job_file(data: &[u8]) {
    let plain = ShardJob::decode(data).ok();
    match (assay_runner::job::decode_bytes(data), plain) {
        (Ok(job), Some(plain)) => {
            assert!(!job.execution_id.is_empty(), "job without execution id");
            assert_eq!(job, plain, "decode_bytes changed the job");
        }
        (Err(_), Some(plain)) => assert!(
            plain.execution_id.is_empty(),
            "decode_bytes refused a job with execution id {:?}",
            plain.execution_id
        ),
        (Err(_), None) => {}
        (Ok(job), None) => panic!("decode_bytes accepted what prost refuses: {job:?}"),
    }
}
