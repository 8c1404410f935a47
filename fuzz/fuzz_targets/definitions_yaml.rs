#![no_main]
//! `definitions_yaml`: see `assay_fuzzing::TARGETS`. Seeds: `fuzz/corpus/definitions_yaml/`; fixed crashes:
//! `fuzz/regressions/definitions_yaml/`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assay_fuzzing::definitions::definitions_yaml(data);
});
