//! `madvise`, `munmap` and shutdown of tracked ranges.

use super::*;

#[test]
fn madvise_dontneed_marks_dirty_and_tracking_continues() {
    for t in all_backends() {
        if t.backend() == Backend::Mprotect {
            // Documented limitation: without userfaultfd events a zap is not observed.
            println!("skipped for the mprotect backend: madvise(DONTNEED) is not observable without userfaultfd (documented)");
            continue;
        }
        let region = t.map_anonymous(64 * 4096).unwrap();
        for p in 0..32 {
            touch(&region, p, 0xAB);
        }
        region.cut().unwrap();
        // SAFETY: pages 8..16 of the region; nobody holds references into them.
        let r = unsafe {
            libc::madvise(
                region.as_ptr().add(8 * 4096).cast(),
                8 * 4096,
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(r, 0);
        let e = region.cut().unwrap();
        assert_eq!(
            e.dirty().iter().collect::<Vec<_>>(),
            (8..16).collect::<Vec<_>>(),
            "removed pages are dirty"
        );
        assert_eq!(
            region.as_atomic_u64()[10 * WORDS_PER_PAGE].load(std::sync::atomic::Ordering::SeqCst),
            0
        );
        assert!(t.stats().remove_events >= 1);
        // The kernel dropped the protection of the zapped pages; the cut re-armed them.
        for epoch in 0..5u64 {
            let p = 8 + epoch;
            touch(&region, p, epoch + 1);
            touch(&region, 40, epoch + 1);
            let e = region.cut().unwrap();
            assert_eq!(
                e.dirty().iter().collect::<Vec<_>>(),
                vec![p, 40],
                "epoch {epoch} after DONTNEED ({})",
                t.backend().name()
            );
        }
    }
}

#[test]
fn munmap_of_adopted_range_invalidates_without_hang() {
    let t = tracker();
    let p = anon_mmap(32 * 4096);
    // SAFETY: the mapping stays until the munmap below, which the test means to exercise.
    let region = unsafe { t.adopt(p.cast(), 32 * 4096) }.unwrap();
    let first = region.cut().unwrap();
    assert_eq!(
        first.dirty().len(),
        32,
        "an adopted range is all dirty in its first epoch"
    );
    touch(&region, 1, 1);
    let pr = p as usize;
    watchdog(10, "munmap of a tracked range", move || {
        // SAFETY: the test's own mapping; the region is not used to access memory afterwards.
        let r = unsafe { libc::munmap(pr as *mut libc::c_void, 32 * 4096) };
        assert_eq!(r, 0);
    });
    let err = region.cut().unwrap_err();
    assert!(
        matches!(
            err,
            writewatch_core::CutError::Invalidated {
                reason: writewatch_core::Invalidation::Unmapped,
                ..
            }
        ),
        "{err}"
    );
    assert!(region.dirty_pages().is_err());
    assert!(t.stats().unmap_events >= 1);
    // The tracker keeps working for other regions.
    let other = t.map_anonymous(4 * 4096).unwrap();
    touch(&other, 2, 1);
    assert_eq!(
        other.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
        vec![2]
    );
    drop(region);
}

#[test]
fn shutdown_while_threads_write_adopted_range() {
    for explicit in [true, false] {
        let t = tracker();
        let len = 16 * MIB;
        let p = anon_mmap(len);
        // SAFETY: the mapping outlives the region (unmapped after every thread joined).
        let region = unsafe { t.adopt(p.cast(), len) }.unwrap();
        let words = p as usize;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut hs = Vec::new();
        for th in 0..4u64 {
            let stop = Arc::clone(&stop);
            hs.push(std::thread::spawn(move || {
                // SAFETY: the mapping lives until after this thread is joined; all accesses are atomic.
                let w = unsafe {
                    std::slice::from_raw_parts(
                        words as *const std::sync::atomic::AtomicU64,
                        len / 8,
                    )
                };
                let mut rng = Rng(th + 11);
                // Word indices with low bits == th: no two threads write the same word.
                let mut n = 1u64;
                let mut last = std::collections::HashMap::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let i = (rng.below((len / 8) as u64) as usize) & !3 | th as usize;
                    w[i].store(n, std::sync::atomic::Ordering::SeqCst);
                    last.insert(i, n);
                    n += 1;
                }
                (n, last)
            }));
        }
        std::thread::sleep(std::time::Duration::from_millis(150));
        watchdog(20, "tracker shutdown with writers", move || {
            if explicit {
                t.shutdown();
                drop(t);
            } else {
                drop(t);
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(150));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let results = watchdog(20, "writers after shutdown", move || {
            hs.into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        // SAFETY: every writer joined; reading the mapping is race-free now.
        let w = unsafe { std::slice::from_raw_parts(words as *const u64, len / 8) };
        for (n, last) in results {
            assert!(n > 100, "each writer made progress across the shutdown");
            // Every write completed: each word holds its thread's last value.
            for (i, v) in last {
                assert_eq!(w[i], v, "word {i}");
            }
        }
        assert!(region.cut().is_err(), "a shut-down tracker refuses cuts");
        drop(region);
        // SAFETY: the test's own mapping; no thread uses it any more.
        assert_eq!(unsafe { libc::munmap(p, len) }, 0);
    }
}
