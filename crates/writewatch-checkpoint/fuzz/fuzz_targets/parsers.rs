//! cargo-fuzz target of the checkpoint segment and manifest parsers. The harness
//! (`writewatch_testkit::parsers`) is shared with the bounded proptest run of `make test`
//! (tests/stress/tests/parsers_fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    writewatch_testkit::parsers::check_parsers(data);
});
