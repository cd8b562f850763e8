//! cargo-fuzz target of the checkpoint segment and manifest parsers. The harness is shared
//! with the bounded proptest run of `make test` (tests/stress/tests/parsers_fuzz.rs).
#![no_main]

#[path = "../../../../tests/stress/src/parsers.rs"]
mod parsers;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    parsers::check_parsers(data);
});
