//! Property tests of the decoders: arbitrary and mutated bytes never panic,
//! single-byte changes of a valid segment are always detected, and page
//! indexes round-trip through encode/decode.

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use writewatch_checkpoint::format::{
    decode_index, decode_segment, encode_index, Manifest, RunEntry, RunKind, SegmentFooter,
    SegmentHeader, FLAG_BASE, HEADER_LEN, RUN_ENTRY_LEN,
};
use writewatch_checkpoint::{Compression, SliceSource, Store, WriterOptions};

/// A few valid segments (raw and lz4, base and delta with zero runs) and a
/// manifest, built once.
fn samples() -> &'static (Vec<Vec<u8>>, Vec<u8>) {
    static S: OnceLock<(Vec<Vec<u8>>, Vec<u8>)> = OnceLock::new();
    S.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::create(tmp.path()).unwrap();
        store.set_writer_options(WriterOptions {
            compression: Compression::Lz4,
            ..Default::default()
        });
        let mut region = vec![0u8; 512 * 16];
        for (i, b) in region.iter_mut().enumerate().take(512 * 6) {
            *b = (i / 7) as u8;
        }
        store
            .write_base(&SliceSource::new(&region, 512).unwrap())
            .unwrap();
        region[512 * 3..512 * 4].fill(0);
        region[512 * 9] = 1;
        store
            .write_delta(
                1,
                &SliceSource::new(&region, 512).unwrap(),
                &[(2, 3), (9, 1)],
            )
            .unwrap();
        let segs = store
            .segments()
            .iter()
            .map(|s| std::fs::read(tmp.path().join(&s.file_name)).unwrap())
            .collect();
        let manifest = std::fs::read(tmp.path().join("MANIFEST")).unwrap();
        (segs, manifest)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_segment(Path::new("arb"), &bytes);
        let _ = Manifest::decode(Path::new("arb"), &bytes);
    }

    #[test]
    fn arbitrary_bytes_with_valid_magic_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if bytes.len() >= 8 {
            bytes[..8].copy_from_slice(b"WWCKSEG\0");
        }
        let _ = decode_segment(Path::new("arb"), &bytes);
    }

    #[test]
    fn single_byte_change_is_detected(which in 0usize..2, pos in any::<prop::sample::Index>(), x in 1u8..=255) {
        let seg = &samples().0[which];
        let mut bad = seg.clone();
        let i = pos.index(bad.len());
        bad[i] ^= x;
        prop_assert!(decode_segment(Path::new("mut"), &bad).is_err(), "byte {} ^ {:#x} undetected", i, x);
    }

    #[test]
    fn mutated_segments_never_panic(
        which in 0usize..2,
        muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bad = samples().0[which].clone();
        for (p, v) in &muts {
            let i = p.index(bad.len());
            bad[i] = *v;
        }
        if truncate {
            bad.truncate(cut.index(bad.len()));
        }
        let _ = decode_segment(Path::new("mut"), &bad);
    }

    #[test]
    fn mutated_manifest_never_panics(
        muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bad = samples().1.clone();
        for (p, v) in &muts {
            let i = p.index(bad.len());
            bad[i] = *v;
        }
        let _ = Manifest::decode(Path::new("MANIFEST"), &bad);
    }

    #[test]
    fn index_round_trips(spec in proptest::collection::vec((0u64..5, 1u64..300, 0u8..3, 1u64..100), 0..64)) {
        // Page size 512: max 2048 pages per data run.
        let ps = 512u64;
        let mut runs = Vec::new();
        let mut page = 0u64;
        let mut off = HEADER_LEN as u64;
        for (gap, count, kind, shrink) in spec {
            let first = page + gap;
            let kind = match kind { 0 => RunKind::Raw, 1 => RunKind::Lz4, _ => RunKind::Zero };
            let raw = count * ps;
            let stored = match kind {
                RunKind::Raw => raw,
                RunKind::Lz4 => (raw / (shrink + 1)).max(raw / 200).max(1),
                RunKind::Zero => 0,
            };
            runs.push(RunEntry {
                first_page: first,
                page_count: count,
                data_offset: off,
                stored_len: stored,
                kind,
                crc: if kind == RunKind::Zero { 0 } else { (first as u32).wrapping_mul(2654435761) },
            });
            page = first + count;
            off += stored;
        }
        let page_count = page.max(1) + 3;
        let header = SegmentHeader {
            page_size: ps as u32,
            flags: 0,
            region_len: page_count * ps,
            epoch: 2,
            parent_epoch: 1,
        };
        let index = encode_index(&runs);
        prop_assert_eq!(index.len(), runs.len() * RUN_ENTRY_LEN);
        let footer = SegmentFooter {
            index_offset: off,
            run_count: runs.len() as u64,
            data_pages: runs.iter().filter(|r| r.kind != RunKind::Zero).map(|r| r.page_count).sum(),
            zero_pages: runs.iter().filter(|r| r.kind == RunKind::Zero).map(|r| r.page_count).sum(),
            data_bytes: off - HEADER_LEN as u64,
            header_crc: 0,
            index_crc: crc32c::crc32c(&index),
        };
        let decoded = decode_index(Path::new("idx"), &index, &header, &footer).unwrap();
        prop_assert_eq!(decoded, runs);
        let h = header.encode();
        let (hd, _) = SegmentHeader::decode(Path::new("h"), &h, 4096).unwrap();
        prop_assert_eq!(hd, header);
        let (fb, _) = footer.encode();
        let file_len = off + index.len() as u64 + 64;
        let (fd, _) = SegmentFooter::decode(Path::new("f"), &fb, file_len - 64, file_len).unwrap();
        prop_assert_eq!(fd, footer);
        let _ = FLAG_BASE;
    }
}
