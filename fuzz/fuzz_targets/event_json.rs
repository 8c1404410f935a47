#![no_main]
//! `event_json`: see `assay_fuzzing::TARGETS`. Seeds: `fuzz/corpus/event_json/`; fixed crashes:
//! `fuzz/regressions/event_json/`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assay_fuzzing::events::event_json(data);
});
