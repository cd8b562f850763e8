//! The checkpoint parser harness shared by the cargo-fuzz target
//! (`crates/writewatch-checkpoint/fuzz/fuzz_targets/parsers.rs`, which includes this file by
//! path) and the bounded proptest run in `make test` (`tests/parsers_fuzz.rs`).

use std::path::Path;

use writewatch_checkpoint::format::{decode_segment, Manifest};

/// Feeds `data` to the segment and manifest decoders. They must never panic, and whatever
/// they accept must be self-consistent: a segment's runs are non-empty, ascending,
/// non-overlapping and inside the region; a manifest re-encodes to bytes that decode to the
/// same manifest.
pub fn check_parsers(data: &[u8]) {
    if let Ok(seg) = decode_segment(Path::new("fuzz.wws"), data) {
        let pages = seg.header.page_count();
        let mut end = 0u64;
        for r in &seg.runs {
            assert!(r.page_count > 0, "empty run accepted: {r:?}");
            assert!(r.first_page >= end, "overlapping or unsorted runs accepted");
            end = r
                .first_page
                .checked_add(r.page_count)
                .expect("run end overflows");
            assert!(
                end <= pages,
                "run past the region accepted: {r:?} > {pages}"
            );
        }
    }
    if let Ok(m) = Manifest::decode(Path::new("MANIFEST"), data) {
        let again = Manifest::decode(Path::new("MANIFEST"), &m.encode())
            .expect("a re-encoded manifest decodes");
        assert_eq!(again, m, "manifest round trip");
    }
}
