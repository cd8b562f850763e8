//! The cargo-fuzz harness of the checkpoint parsers (`writewatch_stress::parsers`), driven
//! by proptest for a bounded number of cases so it runs in `make test` on stable (cargo-fuzz
//! needs nightly + cargo-fuzz; see `make fuzz`). Inputs: arbitrary bytes, and valid
//! segments / manifests with random byte flips, truncations and splices.

use std::sync::OnceLock;

use proptest::prelude::*;
use writewatch_checkpoint::{Compression, SliceSource, Store, WriterOptions};
use writewatch_stress::parsers::check_parsers;

/// Valid inputs to mutate: base + delta segments (raw and lz4) and the manifest.
fn seeds() -> &'static Vec<Vec<u8>> {
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

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        check_parsers(&bytes);
    }

    #[test]
    fn mutated_valid_inputs(
        which in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        splice in proptest::collection::vec(any::<u8>(), 0..64),
        splice_at in any::<prop::sample::Index>(),
    ) {
        let seeds = seeds();
        let mut b = seeds[which.index(seeds.len())].clone();
        check_parsers(&b);
        for (i, x) in flips {
            let i = i.index(b.len());
            b[i] ^= x;
        }
        if truncate {
            b.truncate(cut.index(b.len() + 1));
        }
        if !splice.is_empty() {
            let at = splice_at.index(b.len() + 1);
            b.splice(at..at, splice);
        }
        check_parsers(&b);
    }
}
