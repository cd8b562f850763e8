//! Compaction, retention, rollback and progress reporting.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{coalesce, mutate, Rng};
use writewatch_checkpoint::{Progress, RestoreError, SegmentKind, SliceSource, Store};

const PS: usize = 4096;

#[test]
fn compact_and_retain() {
    let tmp = tempfile::tempdir().unwrap();
    let pages = 2048; // 8 MiB
    let mut rng = Rng(11);
    let mut region = vec![0u8; pages * PS];
    for p in 0..pages / 2 {
        rng.fill(&mut region[p * PS..(p + 1) * PS]);
    }
    let mut store = Store::create(tmp.path()).unwrap();
    let mut states = Vec::new();
    // B0 D1 D2 B3 D4 D5
    for e in 0..6u64 {
        let src_region;
        if e == 0 || e == 3 {
            if e == 3 {
                mutate(&mut rng, &mut region, PS, 100);
            }
            src_region = region.clone();
            store
                .write_base_at(e, &SliceSource::new(&src_region, PS).unwrap())
                .unwrap();
        } else {
            let mut dirty = mutate(&mut rng, &mut region, PS, 200);
            let runs = coalesce(&mut dirty);
            store
                .write_delta(e, &SliceSource::new(&region, PS).unwrap(), &runs)
                .unwrap();
        }
        states.push(region.clone());
    }
    let before: u64 = store.segments().iter().map(|s| s.file_len).sum();

    let report = store.compact().unwrap();
    assert_eq!(report.base.epoch, 5);
    assert_eq!(report.base.kind, SegmentKind::Base);
    assert_eq!(report.removed.len(), 3, "{:?}", report.removed);
    let epochs: Vec<u64> = store.segments().iter().map(|s| s.epoch).collect();
    assert_eq!(epochs, vec![0, 1, 2, 5]);
    for k in [0u64, 1, 2, 5] {
        assert!(
            store.restore(k).unwrap().as_slice() == &states[k as usize][..],
            "epoch {k}"
        );
    }
    assert!(matches!(
        store.restore(4),
        Err(RestoreError::NoSuchEpoch(4))
    ));
    assert!(store.verify().unwrap().is_ok());
    // Compacting a lone base is a no-op.
    assert!(store.compact().unwrap().removed.is_empty());
    // Only referenced files remain.
    let files = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".wws")
        })
        .count();
    assert_eq!(files, 4);

    // Keep the newest base only.
    let removed = store.retain_bases(1).unwrap();
    assert_eq!(removed.len(), 3);
    assert_eq!(store.segments().len(), 1);
    assert!(store.restore(5).unwrap().as_slice() == &states[5][..]);
    let after: u64 = store.segments().iter().map(|s| s.file_len).sum();
    assert!(after < before);

    // Deltas after the new base, then a rollback.
    let mut dirty = mutate(&mut rng, &mut region, PS, 50);
    let runs = coalesce(&mut dirty);
    store
        .write_delta(6, &SliceSource::new(&region, PS).unwrap(), &runs)
        .unwrap();
    assert_eq!(store.discard_after(5).unwrap().len(), 1);
    assert_eq!(store.head().unwrap().epoch, 5);
    drop(store);
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.segments().len(), 1);
    assert!(store.restore_latest().unwrap().as_slice() == &states[5][..]);
}

#[test]
fn progress_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let mut region = vec![1u8; 4096 * PS]; // 16 MiB, all non-zero
    region[..PS].fill(0);
    let mut store = Store::create(tmp.path()).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let last = Arc::new(std::sync::Mutex::new(Progress::default()));
    let (c, l) = (calls.clone(), last.clone());
    store.set_progress(Some(Arc::new(move |p: Progress| {
        c.fetch_add(1, Ordering::Relaxed);
        *l.lock().unwrap() = p;
    })));
    store
        .write_base(&SliceSource::new(&region, PS).unwrap())
        .unwrap();
    assert!(calls.load(Ordering::Relaxed) >= 4);
    let p = *last.lock().unwrap();
    assert_eq!(p.pages_done, 4096);
    assert_eq!(p.pages_total, Some(4096));
    calls.store(0, Ordering::Relaxed);
    store.drop_page_cache().unwrap();
    store.restore(0).unwrap();
    let p = *last.lock().unwrap();
    assert_eq!((p.pages_done, p.pages_total), (4095, Some(4095)));
    assert!(calls.load(Ordering::Relaxed) >= 2);
}
