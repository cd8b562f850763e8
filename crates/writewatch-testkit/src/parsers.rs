//! The checkpoint parser harness shared by the cargo-fuzz target
//! (`crates/writewatch-checkpoint/fuzz/fuzz_targets/parsers.rs`) and the bounded proptest
//! run in `make test` (`tests/stress/tests/parsers_fuzz.rs`), with the valid seed inputs the
//! proptest run mutates.

use std::path::Path;
use std::sync::OnceLock;

use writewatch_checkpoint::format::{decode_segment, Manifest};
use writewatch_checkpoint::{Compression, SliceSource, Store, WriterOptions};

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

/// Valid inputs to mutate: base + delta segments (raw and lz4) and the manifest.
pub fn seeds() -> &'static Vec<Vec<u8>> {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| {
        let mut out = Vec::new();
        for compression in [Compression::None, Compression::Lz4] {
            let tmp = tempfile::tempdir().unwrap();
            let mut store = Store::create(tmp.path()).unwrap();
            store.set_writer_options(WriterOptions {
                compression,
                ..Default::default()
            });
            let mut region = vec![0u8; 512 * 33];
            for (i, b) in region.iter_mut().enumerate().take(512 * 9) {
                *b = (i % 13) as u8;
            }
            store
                .write_base(&SliceSource::new(&region, 512).unwrap())
                .unwrap();
            region[512 * 30] = 7;
            region[512 * 2..512 * 3].fill(0);
            store
                .write_delta(
                    1,
                    &SliceSource::new(&region, 512).unwrap(),
                    &[(2, 1), (30, 3)],
                )
                .unwrap();
            for s in store.segments() {
                out.push(std::fs::read(tmp.path().join(&s.file_name)).unwrap());
            }
            out.push(std::fs::read(tmp.path().join("MANIFEST")).unwrap());
        }
        out
    })
}
