#![no_main]
//! `bus_proto`: see `assay_fuzzing::TARGETS`. Seeds: `fuzz/corpus/bus_proto/`; fixed crashes:
//! `fuzz/regressions/bus_proto/`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assay_fuzzing::proto::bus_proto(data);
});
