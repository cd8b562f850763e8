//! `madvise(MADV_DONTNEED)` and `madvise(MADV_FREE)` on tracked pages.

use super::*;

// ------------------------------------------------------------------------------ madvise

#[test]
fn madvise_dontneed_while_writers_run_never_under_reports() {
    for t in uffd_trackers() {
        let region = Arc::new(t.map_anonymous(256 * PS).unwrap());
        region.cut().unwrap();
        let mut rng = Rng(17);
        for round in 0..40u64 {
            // Quiesced content check: every page whose content changed between two cuts is
            // in the dirty set of the second (the madvise zeroes count as changes).
            for _ in 0..50 {
                touch(&region, rng.below(256), round * 1000 + 1 + rng.below(999));
            }
            // SAFETY: no other thread writes the region in this test.
            let before = unsafe { region.as_slice() }.to_vec();
            let e = region.cut().unwrap();
            drop(e);
            let first = rng.below(250) as usize;
            let n = 1 + rng.below(6) as usize;
            // SAFETY: a page range of the region; no references into it are held.
            let r = unsafe {
                libc::madvise(
                    region.as_ptr().add(first * PS).cast(),
                    n * PS,
                    libc::MADV_DONTNEED,
                )
            };
            assert_eq!(r, 0);
            for _ in 0..10 {
                touch(&region, rng.below(256), round + 5);
            }
            // SAFETY: as above.
            let after = unsafe { region.as_slice() }.to_vec();
            let e = region.cut().unwrap();
            for pg in 0..256 {
                if before[pg * PS..(pg + 1) * PS] != after[pg * PS..(pg + 1) * PS] {
                    assert!(
                        e.dirty().contains(pg as u64),
                        "{}: round {round}: page {pg} changed but not reported",
                        t.backend().name()
                    );
                }
            }
        }
    }
}

/// MADV_FREE, not reclaimed: the kernel emits a userfaultfd REMOVE event for MADV_FREE as for
/// MADV_DONTNEED, so the engine treats the range like a DONTNEED (pages reported dirty in the
/// next epoch: an over-report while the content is in fact unchanged); writes after it fault
/// and are tracked.
#[test]
fn madvise_free_then_write_is_tracked() {
    for t in sync_trackers() {
        let region = t.map_anonymous(64 * PS).unwrap();
        for pg in 0..64 {
            touch(&region, pg, 0xF0 + pg);
        }
        region.cut().unwrap();
        // SAFETY: the whole region; no references into it are held.
        let r = unsafe { libc::madvise(region.as_ptr().cast(), 64 * PS, libc::MADV_FREE) };
        assert_eq!(r, 0);
        // Not reclaimed: content is unchanged, nothing was written, nothing is reported.
        assert_eq!(
            region.as_atomic_u64()[5 * WORDS_PER_PAGE].load(SeqCst),
            0xF5
        );
        for pg in [3u64, 9, 10] {
            touch(&region, pg, 1);
        }
        let e = region.cut().unwrap();
        let d: BTreeSet<u64> = e.dirty().iter().collect();
        println!("MADV_FREE (not reclaimed): {} pages reported", d.len());
        assert!(
            [3u64, 9, 10].iter().all(|p| d.contains(p)),
            "writes after MADV_FREE are tracked: {d:?}"
        );
        assert!(t.stats().remove_events >= 1, "MADV_FREE emits REMOVE");
        // Tracking is exact again afterwards.
        touch(&region, 7, 3);
        assert_eq!(
            region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
            vec![7]
        );
    }
}

/// MADV_FREE pages that the kernel actually discards (forced with MADV_PAGEOUT, as memory
/// pressure would): their content silently becomes zero; the REMOVE event of the MADV_FREE
/// already marked them dirty and suspect, so the next cut reports them (no under-report),
/// and writes after the discard are still tracked.
#[test]
fn madvise_free_discard_is_reported_dirty() {
    let (zeroed, missed) = madvise_free_discard_check();
    assert!(zeroed > 0, "MADV_PAGEOUT discarded the lazily-freed pages");
    assert_eq!(missed, 0);
}

fn madvise_free_discard_check() -> (usize, usize) {
    let t = sync_tracker();
    let region = t.map_anonymous(64 * PS).unwrap();
    for pg in 0..64 {
        touch(&region, pg, 0xF0 + pg);
    }
    region.cut().unwrap();
    // SAFETY: the whole region; no references into it are held.
    unsafe {
        assert_eq!(
            libc::madvise(region.as_ptr().cast(), 64 * PS, libc::MADV_FREE),
            0
        );
        // Force the reclaim that memory pressure would do: lazily-freed clean anonymous
        // pages are discarded.
        assert_eq!(
            libc::madvise(region.as_ptr().cast(), 64 * PS, libc::MADV_PAGEOUT),
            0
        );
    }
    let zeroed: Vec<u64> = (0..64u64)
        .filter(|pg| region.as_atomic_u64()[*pg as usize * WORDS_PER_PAGE].load(SeqCst) == 0)
        .collect();
    let e = region.cut().unwrap();
    let missed = zeroed.iter().filter(|p| !e.dirty().contains(**p)).count();
    println!(
        "MADV_FREE + PAGEOUT: {} pages discarded, {} reported, {missed} missed",
        zeroed.len(),
        e.dirty().len()
    );
    // Writes to discarded pages are still tracked (the protection survives the discard).
    for pg in 0..64 {
        touch(&region, pg, 2);
    }
    assert_eq!(region.cut().unwrap().dirty().len(), 64);
    assert_eq!(missed, 0, "discarded pages not reported: {missed}");
    (zeroed.len(), missed)
}
