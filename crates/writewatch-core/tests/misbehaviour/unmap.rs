//! `munmap` of part of a tracked region and `mremap(MREMAP_MAYMOVE)` of one.

use super::*;

// ------------------------------------------------------------------------------- munmap

#[test]
fn munmap_part_of_region_with_epoch_outstanding_and_writers_running() {
    for t in sync_trackers() {
        let pages = 64;
        let p = mmap_anon(pages);
        // SAFETY: the mapping stays valid (except the part the test unmaps) until the end.
        let region = Arc::new(unsafe { t.adopt(p, pages * PS) }.unwrap());
        region.cut().unwrap();
        for pg in 0..pages as u64 {
            touch(&region, pg, pg + 1);
        }
        let epoch = region.cut().unwrap();
        // A writer on pages 40..64 (never unmapped) keeps running across the munmap.
        let stop = Arc::new(AtomicBool::new(false));
        let (r2, s2) = (Arc::clone(&region), Arc::clone(&stop));
        let writer = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s2.load(SeqCst) {
                touch(&r2, 40 + n % 24, n);
                n += 1;
            }
            n
        });
        std::thread::sleep(Duration::from_millis(20));
        let addr = p as usize + 16 * PS;
        watchdog(10, "munmap of part of a tracked range", move || {
            // SAFETY: pages 16..32 of the test's mapping; nothing references them any more.
            let r = unsafe { libc::munmap(addr as *mut libc::c_void, 16 * PS) };
            assert_eq!(r, 0);
        });
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, SeqCst);
        let n = watchdog(10, "writer after munmap", move || writer.join().unwrap());
        assert!(n > 0);
        assert!(matches!(
            region.cut(),
            Err(CutError::Invalidated {
                reason: Invalidation::Unmapped,
                ..
            })
        ));
        assert!(region.snapshot().is_err());
        assert!(region.dirty_pages().is_err());
        assert_eq!(region.invalidation(), Some(Invalidation::Unmapped));
        // The outstanding epoch never passes live (possibly rewritten) memory off as the cut's:
        // a page either reads as at the cut or is refused with a typed error.
        let mut buf = vec![0u8; PS];
        for pg in (0..16).chain(32..64) {
            match epoch.read_page(pg, &mut buf) {
                Ok(()) => assert_eq!(
                    u64::from_ne_bytes(buf[..8].try_into().unwrap()),
                    pg + 1,
                    "page {pg}"
                ),
                Err(e) => assert_eq!(e, SnapshotError::Invalidated(Invalidation::Unmapped)),
            }
        }
        // The tracker serves other regions.
        let other = t.map_anonymous(4 * PS).unwrap();
        touch(&other, 3, 1);
        assert_eq!(
            other.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
            vec![3]
        );
        drop(region);
        // SAFETY: the rest of the test's mapping, no longer tracked or referenced.
        unsafe {
            libc::munmap(p.cast(), 16 * PS);
            libc::munmap(p.add(32 * PS).cast(), 32 * PS);
        }
    }
}

// ------------------------------------------------------------------------------- mremap

#[test]
fn mremap_maymove_invalidates_remapped_without_hang() {
    for t in sync_trackers() {
        let pages = 32;
        let p = mmap_anon(pages);
        // SAFETY: the mapping is moved by the test below; the region is not used to access
        // memory afterwards.
        let region = Arc::new(unsafe { t.adopt(p, pages * PS) }.unwrap());
        region.cut().unwrap();
        touch(&region, 2, 7);
        // A destination that certainly differs: a second mapping, replaced by MREMAP_FIXED.
        let dst = mmap_anon(pages * 2);
        let (src, d) = (p as usize, dst as usize);
        let moved = watchdog(10, "mremap of a tracked range", move || {
            // SAFETY: moves the test's own mapping onto the test's own reserved destination.
            unsafe {
                libc::mremap(
                    src as *mut libc::c_void,
                    pages * PS,
                    pages * 2 * PS,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    d as *mut libc::c_void,
                ) as usize
            }
        });
        assert_eq!(moved, d, "mremap: {}", std::io::Error::last_os_error());
        let err = region.cut().unwrap_err();
        assert!(
            matches!(
                err,
                CutError::Invalidated {
                    reason: Invalidation::Remapped,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(region.invalidation(), Some(Invalidation::Remapped));
        assert!(region.dirty_pages().is_err());
        assert!(region.snapshot().is_err());
        // The moved memory is untracked: writes (the whole new size) complete without faulting
        // into the tracker, and keep the content that moved.
        watchdog(10, "writes to the moved range", move || {
            // SAFETY: the moved mapping, owned by the test.
            let w =
                unsafe { std::slice::from_raw_parts(d as *const AtomicU64, pages * 2 * PS / 8) };
            assert_eq!(w[2 * WORDS_PER_PAGE].load(SeqCst), 7);
            for pg in 0..pages * 2 {
                w[pg * WORDS_PER_PAGE + 1].store(1, SeqCst);
            }
        });
        let other = t.map_anonymous(4 * PS).unwrap();
        touch(&other, 1, 1);
        assert_eq!(
            other.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
            vec![1]
        );
        drop(region);
        // SAFETY: the moved mapping, no longer referenced.
        unsafe { libc::munmap(dst.cast(), pages * 2 * PS) };
    }
}
