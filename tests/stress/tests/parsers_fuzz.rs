//! The cargo-fuzz harness of the checkpoint parsers (`writewatch_testkit::parsers`), driven
//! by proptest for a bounded number of cases so it runs in `make test` on stable (cargo-fuzz
//! needs nightly + cargo-fuzz; see `make fuzz`). Inputs: arbitrary bytes, and valid
//! segments / manifests with random byte flips, truncations and splices.

use proptest::prelude::*;
use writewatch_testkit::parsers::{check_parsers, seeds};

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
