//! Reading views into tracked memory, `madvise` between rollbacks, tiny copy budgets, builder
//! extremes and sparse snapshots.

use super::*;

/// Reading views into tracked memory of the SAME region: the destination page is itself a
/// page the view still needs (PENDING). No hang, and both pages read as at the cut.
#[test]
fn read_view_into_own_region_pending_page() {
    for in_thread in [false, true] {
        watchdog(30, "read into own region", move || {
            let (_t, r) = filled(in_thread, 0x10);
            let e = r.cut().unwrap();
            let snap = r.snapshot().unwrap();
            // SAFETY: single-threaded; the slice is the only access while it lives.
            let sl = unsafe { r.as_mut_slice() };
            e.read_page(0, &mut sl[PS..2 * PS]).unwrap(); // page 1 := page 0 at cut
            snap.read_page(2, &mut sl[3 * PS..4 * PS]).unwrap(); // page 3 := page 2 at snap
            snap.read_page(5, &mut sl[5 * PS..6 * PS]).unwrap(); // page 5 := itself
            assert_eq!(live_page(&r, 1)[0], 0x10);
            assert_eq!(live_page(&r, 3)[0], 0x12);
            assert_eq!(live_page(&r, 5)[0], 0x15);
            let mut buf = vec![0u8; PS];
            e.read_page(1, &mut buf).unwrap();
            assert_eq!(word0(&buf), 0x11, "epoch page 1 at the cut");
            snap.read_page(3, &mut buf).unwrap();
            assert_eq!(word0(&buf), 0x13, "snapshot page 3");
            // Pages 1 and 3 changed; page 5 was written (with its own content): 3 rewrites.
            assert_eq!(r.rollback(&snap).unwrap(), 3);
            for p in 0..8 {
                assert_eq!(live_page(&r, p)[0], 0x10 + p as u64);
            }
        });
    }
}

/// madvise(DONTNEED) between rollbacks: a CLEAN page zapped is rewritten by the next rollback.
#[test]
fn madvise_clean_page_between_rollbacks() {
    for in_thread in [false, true] {
        watchdog(30, "madvise clean", move || {
            let (_t, r) = filled(in_thread, 0x30);
            let snap = r.snapshot().unwrap();
            for round in 0..50 {
                touch(&r, 2, 1000 + round);
                touch(&r, 3, 2000 + round);
                r.rollback(&snap).unwrap();
                // SAFETY: page 2 of the region; no reference into it is alive.
                let rc = unsafe {
                    libc::madvise(r.as_ptr().add(2 * PS).cast(), PS, libc::MADV_DONTNEED)
                };
                assert_eq!(rc, 0);
                r.rollback(&snap).unwrap();
                for p in 0..8 {
                    assert_eq!(
                        live_page(&r, p)[0],
                        0x30 + p as u64,
                        "round {round} page {p}"
                    );
                }
            }
        });
    }
}

/// A page the snapshot still needs (never touched: all zeros) that the application
/// `madvise`s away. With eager protection its content at the snapshot cannot be told from a
/// zap of real content, so rollback says `Discarded` from then on (documented on
/// `Region::rollback`: take a new snapshot) and leaves the region as it is. A lazily armed
/// region (the default) knows the page never had content: nothing is lost, rollback works.
/// (Found by the adversarial review, where the rollback doc still promised a later successful
/// call; the doc was wrong, not the data.)
#[test]
fn madvise_of_a_needed_page_makes_the_snapshot_unrollbackable_as_documented() {
    for lazy in [false, true] {
        watchdog(30, "madvise pending zero page", move || {
            let t = Tracker::builder().lazy_arming(lazy).build().unwrap();
            let r = t.map_anonymous(8 * PS).unwrap();
            touch(&r, 0, 5);
            let snap = r.snapshot().unwrap();
            touch(&r, 0, 6);
            // SAFETY: page 6 of the region; never touched, no references into it.
            let rc =
                unsafe { libc::madvise(r.as_ptr().add(6 * PS).cast(), PS, libc::MADV_DONTNEED) };
            assert_eq!(rc, 0);
            if lazy {
                assert_eq!(r.rollback(&snap), Ok(1));
                assert_eq!(live_page(&r, 0)[0], 5);
                return;
            }
            for _ in 0..2 {
                assert_eq!(r.rollback(&snap), Err(SnapshotError::Discarded { page: 6 }));
            }
            assert_eq!(live_page(&r, 0)[0], 6, "nothing rewritten on error");
            // A new snapshot rolls back normally.
            let snap2 = r.snapshot().unwrap();
            touch(&r, 0, 7);
            assert_eq!(r.rollback(&snap2), Ok(1));
            assert_eq!(live_page(&r, 0)[0], 6);
        });
    }
}

/// A deferred rollback write: rollback's writes are tracked, and with a full copy budget
/// they wait for the epoch reader. The reader is another thread: it must finish.
/// Also exercises the generation-based wake-up with several epochs and in-thread mode.
#[test]
fn budget_tiny_many_epochs_writers_deferred_readers_drop() {
    for in_thread in [false, true] {
        watchdog(60, "tiny budget", move || {
            const PAGES: u64 = 32;
            let t = Tracker::builder()
                .in_thread_faults(in_thread)
                .copy_budget(1)
                .build()
                .unwrap();
            let r = Arc::new(t.map_anonymous(PAGES as usize * PS).unwrap());
            let mut buf = vec![0u8; PS];
            for round in 0..40u64 {
                // Only ever written by other threads while views are alive (the reader must
                // not be a writer: documented back-pressure).
                for p in 0..PAGES {
                    touch(&r, p, round * 1000 + p);
                }
                let e1 = r.cut().unwrap();
                let snap = r.snapshot().unwrap();
                let spawn_writer = |v: u64, step: usize| {
                    let r2 = Arc::clone(&r);
                    std::thread::spawn(move || {
                        for p in (0..PAGES).step_by(step) {
                            touch(&r2, p, v + p);
                        }
                    })
                };
                let w = spawn_writer(round * 1000 + 500, 2);
                for p in 0..PAGES / 2 {
                    e1.read_page(p, &mut buf).unwrap();
                    assert_eq!(word0(&buf), round * 1000 + p, "round {round} e1 page {p}");
                }
                std::thread::sleep(Duration::from_micros(200));
                for p in PAGES / 2..PAGES {
                    if round % 2 == 0 {
                        e1.release_page(p);
                    } else {
                        e1.read_page(p, &mut buf).unwrap();
                        assert_eq!(word0(&buf), round * 1000 + p);
                    }
                }
                w.join().unwrap();
                drop(e1);
                let e2 = r.cut().unwrap();
                let w = spawn_writer(7_000_000, 1);
                std::thread::sleep(Duration::from_micros(300));
                drop(e2); // unread: frees the deferred writer
                w.join().unwrap();
                for p in 0..PAGES {
                    snap.read_page(p, &mut buf).unwrap();
                    assert_eq!(word0(&buf), round * 1000 + p, "round {round} snap page {p}");
                }
                // Rollback with no live epoch (its writes need no budget).
                r.rollback(&snap).unwrap();
                for p in 0..PAGES {
                    assert_eq!(live_page(&r, p as usize)[0], round * 1000 + p);
                }
            }
        });
    }
}

/// Builder clamps: Duration::MAX ages must not overflow Instant arithmetic in the service
/// thread; a NUL in the thread name is a typed error.
#[test]
fn builder_extremes() {
    watchdog(30, "builder extremes", || {
        let t = Tracker::builder()
            .eager_reprotect(Duration::MAX)
            .build()
            .unwrap();
        let r = t.map_anonymous(4 * PS).unwrap();
        touch(&r, 1, 1);
        assert_eq!(r.cut().unwrap().dirty().iter().collect::<Vec<_>>(), vec![1]);
        touch(&r, 2, 1);
        assert_eq!(r.cut().unwrap().dirty().iter().collect::<Vec<_>>(), vec![2]);
        assert!(t.is_running());
        assert!(Tracker::builder().thread_name("a\0b").build().is_err());
    });
}

/// A big sparse snapshot (1 GiB, almost never touched): reading untouched pages gives zeros,
/// rollback restores the few written ones and costs only those.
#[test]
fn sparse_big_snapshot_rollback() {
    watchdog(60, "sparse snapshot", || {
        let t = Tracker::builder().build().unwrap();
        let pages = (1u64 << 30) / PS as u64;
        let r = t.map_anonymous(pages as usize * PS).unwrap();
        touch(&r, 12345, 9);
        let snap = r.snapshot().unwrap();
        for round in 1..=20u64 {
            touch(&r, 12345, 100 + round);
            touch(&r, pages - 1, round);
            touch(&r, round * 1000, round);
            assert_eq!(r.rollback(&snap).unwrap(), 3, "round {round}");
            assert_eq!(live_page(&r, 12345)[0], 9);
            assert_eq!(live_page(&r, (pages - 1) as usize)[0], 0);
            assert_eq!(live_page(&r, (round * 1000) as usize)[0], 0);
        }
        let mut buf = vec![1u8; PS];
        snap.read_page(pages - 1, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
    });
}
