//! Round trips: base + deltas, restore of every epoch, every restore target.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{coalesce, first_diff_page, mutate, Rng};
use writewatch_checkpoint::{
    Compression, Geometry, RestoreError, SegmentKind, SliceSource, Store, WriteError, WriterOptions,
};

const PS: usize = 4096;

/// 64 MiB region, 20 epochs of random writes (some pages zeroed again), a
/// base at epoch 0 and deltas of exactly the pages written; every epoch k
/// restores to the content at cut k.
#[test]
fn round_trip_64mib_20_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let pages = (64 << 20) / PS;
    let mut rng = Rng(42);
    let mut region = vec![0u8; pages * PS];
    // Initial content: ~30% of the pages non-zero.
    for p in 0..pages {
        if rng.below(10) < 3 {
            rng.fill(&mut region[p * PS..(p + 1) * PS]);
        }
    }
    let mut store = Store::create(dir.path()).unwrap();
    let base = store
        .write_base(&SliceSource::new(&region, PS).unwrap())
        .unwrap();
    assert_eq!(base.epoch, 0);
    assert_eq!(base.kind, SegmentKind::Base);
    let mut copies = vec![region.clone()];
    for epoch in 1..20u64 {
        let mut dirty = mutate(&mut rng, &mut region, PS, 300);
        let runs = coalesce(&mut dirty);
        let info = store
            .write_delta(epoch, &SliceSource::new(&region, PS).unwrap(), &runs)
            .unwrap();
        assert_eq!(info.parent, Some(epoch - 1));
        assert_eq!(
            info.data_pages + info.zero_pages,
            runs.iter().map(|r| r.1).sum::<u64>()
        );
        copies.push(region.clone());
    }
    drop(store);

    let store = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(store.segments().len(), 20);
    for (k, want) in copies.iter().enumerate() {
        let got = store.restore(k as u64).unwrap();
        assert!(
            got.as_slice() == &want[..],
            "epoch {k}: first differing page {:?}",
            first_diff_page(got.as_slice(), want, PS)
        );
    }
    // Caller memory full of garbage: holes and zero runs must be zero-filled.
    let mut buf = vec![0xEEu8; pages * PS];
    for k in [0u64, 7, 19] {
        store.restore_into(k, &mut buf).unwrap();
        assert!(buf == copies[k as usize], "restore_into epoch {k}");
        buf.fill(0xEE);
    }
    // Sparse image file.
    let img = dir.path().join("image.bin");
    store.restore_to_file(13, &img).unwrap();
    let data = std::fs::read(&img).unwrap();
    assert!(data == copies[13]);
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert!(
        meta.blocks() * 512 < meta.len(),
        "image file should be sparse"
    );
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(matches!(
        store.restore(20),
        Err(RestoreError::NoSuchEpoch(20))
    ));
}

/// Compression, foreground writes, small buffers, `restore_at`, the
/// page-by-page `SegmentWriter`, explicit zero runs and input validation.
#[test]
fn compressed_fixed_address_and_segment_writer() {
    let dir = tempfile::tempdir().unwrap();
    let pages = 1024usize; // 4 MiB, spans several 1 MiB runs
    let mut rng = Rng(7);
    let mut region = vec![0u8; pages * PS];
    for p in 0..pages {
        match p % 5 {
            0 => rng.fill(&mut region[p * PS..(p + 1) * PS]), // incompressible
            1 | 2 => region[p * PS..(p + 1) * PS].fill(p as u8 | 1), // compressible
            _ => {}
        }
    }
    let mut store = Store::create(dir.path()).unwrap();
    store.set_writer_options(WriterOptions {
        compression: Compression::Lz4,
        buffer_size: 1 << 20,
        background: false,
        early_writeback: false,
    });
    let base = store
        .write_base(&SliceSource::new(&region, PS).unwrap())
        .unwrap();
    assert!(base.compressed);
    assert!(
        base.data_bytes < base.data_pages * PS as u64,
        "lz4 should shrink"
    );
    let v0 = region.clone();

    // Page-by-page writer: a few pages changed, two zeroed.
    let geometry = Geometry {
        page_size: PS,
        page_count: pages as u64,
    };
    let mut w = store.begin_delta(5, geometry).unwrap();
    for p in [1u64, 2, 3, 700] {
        let page = &mut region[p as usize * PS..(p as usize + 1) * PS];
        page.fill(0x5A);
        w.push_page(p, page).unwrap();
    }
    // Out-of-order and wrong-size pages are rejected without panicking.
    assert!(matches!(
        w.push_page(3, &region[..PS]),
        Err(WriteError::InvalidInput(_))
    ));
    assert!(matches!(
        w.push_page(800, &region[..10]),
        Err(WriteError::InvalidInput(_))
    ));
    w.push_zero_pages(900, 2).unwrap();
    region[900 * PS..902 * PS].fill(0);
    let d = w.commit().unwrap();
    assert_eq!((d.data_pages, d.zero_pages, d.parent), (4, 2, Some(0)));

    // An aborted writer leaves nothing behind.
    let w = store.begin_delta(6, geometry).unwrap();
    drop(w);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());

    // Bad runs and epochs.
    let src = SliceSource::new(&region, PS).unwrap();
    assert!(matches!(
        store.write_delta(9, &src, &[(5, 2), (6, 1)]),
        Err(WriteError::InvalidInput(_))
    ));
    assert!(matches!(
        store.write_delta(9, &src, &[(1023, 2)]),
        Err(WriteError::InvalidInput(_))
    ));
    assert!(matches!(
        store.write_delta(5, &src, &[(0, 1)]),
        Err(WriteError::EpochNotIncreasing { .. })
    ));
    let small = vec![0u8; 8 * PS];
    assert!(matches!(
        store.write_base(&SliceSource::new(&small, PS).unwrap()),
        Err(WriteError::GeometryMismatch { .. })
    ));

    // restore_at: find a free address by mapping once, then unmapping.
    let probe = store.restore(5).unwrap();
    let addr = probe.as_ptr() as usize;
    drop(probe);
    let at = store.restore_at(5, addr).unwrap();
    assert_eq!(at.as_ptr() as usize, addr);
    assert!(at.as_slice() == &region[..]);
    // The range is now taken: NOREPLACE refuses.
    match store.restore_at(5, addr) {
        Err(RestoreError::Map { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc_eexist()))
        }
        other => panic!("expected EEXIST, got {other:?}"),
    }
    drop(at);
    assert!(store.restore(0).unwrap().as_slice() == &v0[..]);
    assert!(store.verify().unwrap().is_ok());
}

fn libc_eexist() -> i32 {
    17
}
