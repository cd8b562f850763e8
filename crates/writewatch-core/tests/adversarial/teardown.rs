//! Dropping regions, shutting the tracker down with views alive, rollback racing a writer.

use super::*;

/// A reader thread hammers an epoch and a snapshot of an adopted region while the main
/// thread drops the region and unmaps the memory. Every successful read must be the content
/// at the cut / snapshot; failures must be Invalidated(Dropped); no crash.
#[test]
fn drop_adopted_region_while_reader_reads_then_unmap() {
    for in_thread in [false, true] {
        for iter in 0..30u64 {
            watchdog(60, "drop while reading", move || {
                const PAGES: usize = 64;
                let t = Tracker::builder()
                    .in_thread_faults(in_thread)
                    .build()
                    .unwrap();
                let len = PAGES * PS;
                let mem = anon_mmap(len) as *mut u8;
                // SAFETY: our fresh mapping; unmapped only after the region is dropped.
                let r = unsafe { t.adopt(mem, len) }.unwrap();
                for p in 0..PAGES {
                    touch(&r, p as u64, 0x100 + p as u64);
                }
                let e = r.cut().unwrap();
                let snap = r.snapshot().unwrap();
                for p in (0..PAGES).step_by(4) {
                    touch(&r, p as u64, 0x200 + p as u64); // preserved for both
                }
                let go = Arc::new(Barrier::new(2));
                let g2 = Arc::clone(&go);
                let reader = std::thread::spawn(move || {
                    let mut buf = vec![0u8; PS];
                    g2.wait();
                    let mut ok = 0;
                    for p in 0..PAGES as u64 {
                        for res in [e.read_page(p, &mut buf), snap.read_page(p, &mut buf)] {
                            match res {
                                Ok(()) => {
                                    assert_eq!(word0(&buf), 0x100 + p, "page {p}");
                                    ok += 1;
                                }
                                Err(SnapshotError::Invalidated(Invalidation::Dropped)) => {}
                                Err(x) => panic!("page {p}: unexpected {x:?}"),
                            }
                        }
                    }
                    (ok, e, snap)
                });
                go.wait();
                std::thread::sleep(Duration::from_micros(iter * 20));
                drop(r);
                // SAFETY: the region is dropped; the views must not read the memory any more.
                assert_eq!(unsafe { libc::munmap(mem.cast(), len) }, 0);
                let (_ok, e, snap) = reader.join().unwrap();
                // Preserved pages are still readable after the unmap.
                let mut buf = vec![0u8; PS];
                snap.read_page(4, &mut buf).unwrap();
                assert_eq!(word0(&buf), 0x104);
                assert_eq!(
                    snap.read_page(5, &mut buf),
                    Err(SnapshotError::Invalidated(Invalidation::Dropped))
                );
                drop(e);
            });
        }
    }
}

/// Shutting the tracker down with views alive: preserved pages stay readable (with the
/// right content), pending ones report Unavailable, rollback reports Unavailable; no hang.
#[test]
fn shutdown_with_views_alive() {
    for in_thread in [false, true] {
        watchdog(60, "shutdown with views", move || {
            let (t, r) = filled(in_thread, 10);
            let e = r.cut().unwrap();
            let snap = r.snapshot().unwrap();
            touch(&r, 2, 99);
            t.shutdown();
            touch(&r, 3, 98); // untracked now, must not hang
            let mut buf = vec![0u8; PS];
            e.read_page(2, &mut buf).unwrap();
            assert_eq!(word0(&buf), 12);
            snap.read_page(2, &mut buf).unwrap();
            assert_eq!(word0(&buf), 12);
            match e.read_page(3, &mut buf) {
                Err(SnapshotError::Unavailable(Unavailable::ShutDown)) => {}
                Ok(()) => panic!(
                    "epoch page 3 read after shutdown: {:#x} (expected Unavailable; 12 at cut)",
                    word0(&buf)
                ),
                Err(x) => panic!("unexpected {x:?}"),
            }
            match snap.read_page(3, &mut buf) {
                Err(SnapshotError::Unavailable(Unavailable::ShutDown)) => {}
                Ok(()) => panic!("snapshot page 3 read after shutdown: {:#x}", word0(&buf)),
                Err(x) => panic!("unexpected {x:?}"),
            }
            assert!(matches!(
                r.rollback(&snap),
                Err(SnapshotError::Unavailable(_))
            ));
            drop(r);
            snap.read_page(2, &mut buf).unwrap();
            assert_eq!(word0(&buf), 12);
            drop(t);
            drop(e);
        });
    }
}

/// Contract violation (writers not quiesced during rollback): must not crash or hang, and a
/// later rollback with writers stopped must restore the snapshot exactly.
#[test]
fn rollback_racing_a_writer_never_hangs_and_recovers() {
    for cfg in ROLLBACK_CFGS {
        watchdog(90, &format!("rollback racing writer {cfg:?}"), move || {
            const PAGES: usize = 32;
            let t = builder(cfg).build().unwrap();
            let r = Arc::new(t.map_anonymous(PAGES * PS).unwrap());
            let mut m = zero_model(PAGES);
            for p in 0..PAGES {
                write_word(&r, &mut m, p, 0, 7 + p as u64);
            }
            let snap = r.snapshot().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let (r2, s2) = (Arc::clone(&r), Arc::clone(&stop));
            let w = std::thread::spawn(move || {
                let mut rng = Rng(42);
                let mut n = 0u64;
                while !s2.load(SeqCst) {
                    touch(&r2, rng.below(PAGES as u64), rng.next());
                    n += 1;
                }
                n
            });
            for _ in 0..2000 {
                let _ = r.rollback(&snap).unwrap();
            }
            stop.store(true, SeqCst);
            w.join().unwrap();
            r.rollback(&snap).unwrap();
            check_live(
                &r,
                &m,
                &format!("{cfg:?}: rollback after the racing writer stopped"),
            );
            check_snapshot(&snap, &m, "end");
        });
    }
}
