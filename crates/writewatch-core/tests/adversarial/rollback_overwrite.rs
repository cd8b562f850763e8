//! Rollback with a concurrent epoch reader, and `prepare_overwrite` with views, budgets and
//! every backend.

use super::*;

/// The fuzzing reset with a concurrent saver: the main thread writes, cuts, hands the epoch
/// (and its expected content) to a reader thread, then rolls back to the snapshot. The copy
/// budget is tiny, so rollback's own writes are deferred until the reader frees budget.
#[test]
fn rollback_with_concurrent_epoch_reader_and_tiny_budget() {
    for cfg in ROLLBACK_CFGS {
        watchdog(120, &format!("rollback + saver {cfg:?}"), move || {
            const PAGES: usize = 16;
            let t = builder(cfg).copy_budget(2 * PS).build().unwrap();
            let r = t.map_anonymous(PAGES * PS).unwrap();
            let mut m = zero_model(PAGES);
            let mut rng = Rng(0xFEED ^ cfg as u64);
            for p in 0..PAGES {
                write_word(&r, &mut m, p, 1, 0x1000 + p as u64);
            }
            let snap = r.snapshot().unwrap();
            let base = m.clone();
            drop(r.cut().unwrap());
            let (tx, rx) = std::sync::mpsc::sync_channel::<(Epoch, Model)>(2);
            let reader = std::thread::spawn(move || {
                let mut n = 0;
                for (e, em) in rx {
                    std::thread::sleep(Duration::from_micros(300));
                    check_epoch(&e, &em, "saver");
                    n += 1;
                }
                n
            });
            for round in 0..300u64 {
                for _ in 0..1 + rng.below(6) {
                    let p = rng.below(PAGES as u64) as usize;
                    write_word(&r, &mut m, p, rng.below(WPP as u64) as usize, rng.next());
                }
                let e = r.cut().unwrap();
                tx.send((e, m.clone())).unwrap();
                if round % 2 == 0 {
                    r.rollback(&snap).unwrap();
                    m = base.clone();
                    check_live(&r, &m, &format!("{cfg:?} round {round}"));
                }
            }
            drop(tx);
            assert_eq!(reader.join().unwrap(), 300);
            check_snapshot(&snap, &base, "end");
        });
    }
}

/// prepare_overwrite with live epochs and snapshots: views keep their content, the next cut
/// reports every page, rollback restores the snapshot and protection is re-armed.
#[test]
fn prepare_overwrite_with_views_then_rollback() {
    for cfg in CFGS {
        watchdog(60, &format!("prepare_overwrite {cfg:?}"), move || {
            const PAGES: usize = 32;
            let t = builder(cfg).build().unwrap();
            let r = t.map_anonymous(PAGES * PS).unwrap();
            let mut m = zero_model(PAGES);
            for p in 0..PAGES {
                write_word(&r, &mut m, p, 0, p as u64 + 1);
            }
            let snap = r.snapshot().unwrap();
            let at_snap = m.clone();
            for p in (0..PAGES).step_by(3) {
                write_word(&r, &mut m, p, 2, 0xAA);
            }
            let e = r.cut().unwrap();
            let at_cut = m.clone();
            r.prepare_overwrite().unwrap();
            // SAFETY: nobody else touches the region's memory while the slice lives.
            unsafe { r.as_mut_slice() }.fill(0x5A);
            for pg in m.iter_mut() {
                pg.iter_mut().for_each(|w| *w = 0x5A5A_5A5A_5A5A_5A5A);
            }
            check_live(&r, &m, "after overwrite");
            check_epoch(&e, &at_cut, "epoch across prepare_overwrite");
            check_snapshot(&snap, &at_snap, "snapshot across prepare_overwrite");
            // Rollback before the next cut.
            r.rollback(&snap).unwrap();
            check_live(&r, &at_snap, "rollback after prepare_overwrite");
            let e2 = r.cut().unwrap();
            assert_eq!(e2.dirty().len(), PAGES, "every page changed since the cut");
            drop(e2);
            // Protection re-armed: one write is one dirty page, and it is preserved.
            let mut m = at_snap.clone();
            write_word(&r, &mut m, 7, 9, 77);
            let e3 = r.cut().unwrap();
            assert_eq!(e3.dirty().iter().collect::<Vec<_>>(), vec![7]);
            assert_eq!(
                r.rollback(&snap).unwrap(),
                1,
                "{cfg:?}: only page 7 to rewrite"
            );
            check_live(&r, &at_snap, "second rollback");
            check_snapshot(&snap, &at_snap, "end");
        });
    }
}

/// prepare_overwrite when the copy budget cannot hold the live epoch's pages: CopyBudget, and
/// the region is unchanged (still protected: writes still tracked and preserved).
#[test]
fn prepare_overwrite_copy_budget_exhausted() {
    for cfg in [
        Cfg::Default,
        Cfg::InThread,
        Cfg::Eager0,
        Cfg::InThreadEager0,
    ] {
        watchdog(
            60,
            &format!("prepare_overwrite budget {cfg:?}"),
            move || {
                const PAGES: usize = 16;
                let t = builder(cfg).copy_budget(2 * PS).build().unwrap();
                let r = t.map_anonymous(PAGES * PS).unwrap();
                let mut m = zero_model(PAGES);
                for p in 0..PAGES {
                    write_word(&r, &mut m, p, 0, 100 + p as u64);
                }
                let e = r.cut().unwrap();
                let at_cut = m.clone();
                match r.prepare_overwrite() {
                    Err(CutError::CopyBudget { .. }) => {}
                    other => panic!("{cfg:?}: expected CopyBudget, got {other:?}"),
                }
                check_live(&r, &m, "after refused prepare_overwrite");
                // Read the epoch fully (frees the budget), then the region must still be tracked.
                check_epoch(&e, &at_cut, "epoch after refused prepare_overwrite");
                drop(e);
                write_word(&r, &mut m, 3, 3, 33);
                let e = r.cut().unwrap();
                // Refused: nothing else may be reported as written.
                assert_eq!(
                    e.dirty().iter().collect::<Vec<_>>(),
                    vec![3],
                    "{cfg:?}: a refused prepare_overwrite changed the dirty state"
                );
                drop(e);
                r.prepare_overwrite().unwrap();
                assert_eq!(r.cut().unwrap().dirty().len(), PAGES);
            },
        );
    }
}

/// prepare_overwrite on the backends without views (async, mprotect): every page reported,
/// and tracking re-armed after the next cut.
#[test]
fn prepare_overwrite_other_backends() {
    for backend in [Backend::AsyncUffd, Backend::Mprotect, Backend::SyncUffd] {
        watchdog(60, &format!("prepare_overwrite {backend:?}"), move || {
            let t = match Tracker::builder().backend(backend).build() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("skip {backend:?}: {e}");
                    return;
                }
            };
            const PAGES: usize = 64;
            let r = t.map_anonymous(PAGES * PS).unwrap();
            drop(r.cut().unwrap());
            let e_live = r.cut().unwrap(); // empty, alive
            r.prepare_overwrite().unwrap();
            // SAFETY: single-threaded use of the region.
            let sl = unsafe { r.as_mut_slice() };
            sl[5 * PS..9 * PS].fill(1);
            let e = r.cut().unwrap();
            assert_eq!(e.dirty().len(), PAGES, "{backend:?}");
            drop(e);
            touch(&r, 40, 1);
            let e = r.cut().unwrap();
            assert_eq!(
                e.dirty().iter().collect::<Vec<_>>(),
                vec![40],
                "{backend:?}: tracking not re-armed after prepare_overwrite + cut"
            );
            drop(e_live);
            assert!(r.cut().unwrap().dirty().is_empty(), "{backend:?}");
        });
    }
}
