#![no_main]
//! `webhook_payload`: see `assay_fuzzing::TARGETS`. Seeds: `fuzz/corpus/webhook_payload/`; fixed crashes:
//! `fuzz/regressions/webhook_payload/`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assay_fuzzing::webhooks::webhook_payload(data);
});
