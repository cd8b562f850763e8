//! Writers blocked or exiting when the tracker shuts down.

use super::*;

// ------------------------------------------------------------------ threads exit mid-fault

#[test]
fn writer_with_pending_fault_when_tracker_shuts_down_is_released() {
    // Budget for 2 copies: writers rewriting the epoch's pages are deferred (blocked in the
    // kernel on their fault) because nobody reads the epoch.
    for in_thread in [false, true] {
        let t = Tracker::builder()
            .backend(Backend::SyncUffd)
            .copy_budget(2 * PS)
            .in_thread_faults(in_thread)
            .build()
            .unwrap();
        let region = Arc::new(t.map_anonymous(64 * PS).unwrap());
        for pg in 0..64 {
            touch(&region, pg, 1);
        }
        let epoch = region.cut().unwrap();
        let progress = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..3u64)
            .map(|th| {
                let (r, pr) = (Arc::clone(&region), Arc::clone(&progress));
                std::thread::spawn(move || {
                    for pg in (th * 20)..(th * 20 + 20) {
                        touch(&r, pg, 0xAA);
                        pr.fetch_add(1, SeqCst);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            progress.load(SeqCst) < 60,
            "writers are held by back-pressure"
        );
        assert!(t.stats().deferred > 0);
        let t2 = t.clone();
        watchdog(20, "shutdown with deferred faults", move || t2.shutdown());
        watchdog(20, "deferred writers after shutdown", move || {
            writers.into_iter().for_each(|h| h.join().unwrap())
        });
        assert_eq!(progress.load(SeqCst), 60, "every held write completed");
        for pg in 0..60 {
            assert_eq!(
                region.as_atomic_u64()[pg * WORDS_PER_PAGE].load(SeqCst),
                0xAA
            );
        }
        // The unread epoch refuses live pages rather than returning post-shutdown content.
        let mut buf = vec![0u8; PS];
        for pg in 0..64 {
            if let Ok(()) = epoch.read_page(pg, &mut buf) {
                assert_eq!(
                    u64::from_ne_bytes(buf[..8].try_into().unwrap()),
                    1,
                    "page {pg}"
                );
            }
        }
        assert!(region.cut().is_err());
    }
}

#[test]
fn threads_that_exit_right_after_faulting() {
    for t in sync_trackers() {
        let region = Arc::new(t.map_anonymous(512 * PS).unwrap());
        region.cut().unwrap();
        let mut expect = BTreeSet::new();
        for round in 0..5u64 {
            let hs: Vec<_> = (0..40u64)
                .map(|i| {
                    let r = Arc::clone(&region);
                    let pg = (round * 97 + i * 11) % 512;
                    expect.insert(pg);
                    std::thread::spawn(move || touch(&r, pg, i + 1))
                })
                .collect();
            watchdog(20, "short-lived faulting threads", move || {
                hs.into_iter().for_each(|h| h.join().unwrap())
            });
            let d: BTreeSet<u64> = region.cut().unwrap().dirty().iter().collect();
            assert_eq!(d, expect, "round {round}");
            expect.clear();
        }
        // A thread that exits while its fault is still held by a cut in progress: its write
        // completes after the cut and belongs to the next epoch (or this one), never neither.
        for k in 0..50u64 {
            let r = Arc::clone(&region);
            let h = std::thread::spawn(move || touch(&r, k % 512, 9));
            let e1 = region.cut().unwrap().into_dirty();
            h.join().unwrap();
            let e2 = region.cut().unwrap().into_dirty();
            assert!(
                e1.contains(k % 512) || e2.contains(k % 512),
                "write {k} lost"
            );
        }
        let s = t.stats();
        assert!(s.wp_faults >= 200);
    }
}
