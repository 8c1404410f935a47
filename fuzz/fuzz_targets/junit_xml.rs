#![no_main]
//! `junit_xml`: see `assay_fuzzing::TARGETS`. Seeds: `fuzz/corpus/junit_xml/`; fixed crashes:
//! `fuzz/regressions/junit_xml/`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assay_fuzzing::junit::junit_xml(data);
});
