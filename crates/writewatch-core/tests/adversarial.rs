//! Adversarial tests of the rollback / dropped-region / bounce-buffer / budget-generation /
//! prepare_overwrite changes. Every check is against an independent oracle (our own copies of
//! the expected bytes), never against the code under test. Every test runs under a watchdog.
mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use writewatch_core::{
    Backend, CutError, Epoch, Invalidation, Region, Snapshot, SnapshotError, Tracker,
    TrackerBuilder, Unavailable,
};

const PS: usize = 4096;
const WPP: usize = PS / 8;

fn word0(buf: &[u8]) -> u64 {
    u64::from_ne_bytes(buf[..8].try_into().unwrap())
}

fn words_of(buf: &[u8]) -> Vec<u64> {
    buf.chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

/// Independent model of the region: one Vec<u64> per page.
type Model = Vec<Vec<u64>>;

fn live_page(r: &Region, p: usize) -> Vec<u64> {
    r.as_atomic_u64()[p * WPP..(p + 1) * WPP]
        .iter()
        .map(|w| w.load(SeqCst))
        .collect()
}

fn check_live(r: &Region, m: &Model, what: &str) {
    for (p, exp) in m.iter().enumerate() {
        let got = live_page(r, p);
        if &got != exp {
            let w = got.iter().zip(exp).position(|(a, b)| a != b).unwrap();
            panic!(
                "{what}: live page {p} word {w}: got {:#x}, expected {:#x}",
                got[w], exp[w]
            );
        }
    }
}

fn write_word(r: &Region, m: &mut Model, p: usize, w: usize, v: u64) {
    r.as_atomic_u64()[p * WPP + w].store(v, SeqCst);
    m[p][w] = v;
}

#[derive(Clone, Copy, Debug)]
enum Cfg {
    Default,
    InThread,
    Eager0,
    Eager1ms,
    FaultAround,
    MergeGap0,
}

const CFGS: [Cfg; 6] = [
    Cfg::Default,
    Cfg::InThread,
    Cfg::Eager0,
    Cfg::Eager1ms,
    Cfg::FaultAround,
    Cfg::MergeGap0,
];

fn builder(c: Cfg) -> TrackerBuilder {
    let b = Tracker::builder().backend(Backend::SyncUffd);
    match c {
        Cfg::Default => b,
        Cfg::InThread => b.in_thread_faults(true),
        Cfg::Eager0 => b.eager_reprotect(Duration::ZERO),
        Cfg::Eager1ms => b.eager_reprotect(Duration::from_millis(1)),
        Cfg::FaultAround => b.fault_around(16),
        Cfg::MergeGap0 => b.merge_gap_pages(0),
    }
}

/// Reads every dirty page of `e` and compares with `at_cut`.
fn check_epoch(e: &Epoch, at_cut: &Model, what: &str) {
    let mut buf = vec![0u8; PS];
    for p in e.dirty().iter() {
        e.read_page(p, &mut buf)
            .unwrap_or_else(|err| panic!("{what}: epoch {} page {p}: {err}", e.number()));
        let got = words_of(&buf);
        if got != at_cut[p as usize] {
            let w = got
                .iter()
                .zip(&at_cut[p as usize])
                .position(|(a, b)| a != b)
                .unwrap();
            panic!(
                "{what}: epoch {} page {p} word {w}: got {:#x}, expected at cut {:#x}",
                e.number(),
                got[w],
                at_cut[p as usize][w]
            );
        }
    }
}

fn check_snapshot(s: &Snapshot, m: &Model, what: &str) {
    let mut buf = vec![0u8; PS];
    for (p, exp) in m.iter().enumerate() {
        s.read_page(p as u64, &mut buf)
            .unwrap_or_else(|err| panic!("{what}: snapshot page {p}: {err}"));
        let got = words_of(&buf);
        if &got != exp {
            let w = got.iter().zip(exp).position(|(a, b)| a != b).unwrap();
            panic!(
                "{what}: snapshot page {p} word {w}: got {:#x}, expected {:#x}",
                got[w], exp[w]
            );
        }
    }
}

/// Random single-threaded operation sequences on one region (writes, cuts, snapshots,
/// rollbacks to any live snapshot, epoch reads late, drops, prepare_overwrite), checked
/// against a model after every step: live content, every epoch's content at its cut, every
/// snapshot's content, and dirty sets (every page that changed between cuts is reported).
fn rollback_fuzz(cfg: Cfg, seed: u64, steps: usize) {
    const PAGES: usize = 24;
    let t = builder(cfg).build().unwrap();
    let r = t.map_anonymous(PAGES * PS).unwrap();
    let mut rng = Rng(seed);
    let mut m: Model = vec![vec![0u64; WPP]; PAGES];
    let mut snaps: Vec<(Snapshot, Model)> = Vec::new();
    let mut epochs: Vec<(Epoch, Model)> = Vec::new();
    let mut last_cut: Model = m.clone();
    // epoch 0 includes nothing
    drop(r.cut().unwrap());
    let mut overwrite_mode = false;
    for step in 0..steps {
        let what = format!("{cfg:?} seed {seed:#x} step {step}");
        match rng.below(100) {
            0..=44 => {
                // writes: a few pages, a few words each
                for _ in 0..1 + rng.below(4) {
                    let p = rng.below(PAGES as u64) as usize;
                    for _ in 0..1 + rng.below(3) {
                        let w = rng.below(WPP as u64) as usize;
                        let v = if rng.below(4) == 0 { 0 } else { rng.next() };
                        write_word(&r, &mut m, p, w, v);
                    }
                }
            }
            45..=56 => {
                let e = r.cut().unwrap();
                for p in 0..PAGES {
                    if m[p] != last_cut[p] {
                        assert!(
                            e.dirty().contains(p as u64),
                            "{what}: page {p} changed since the previous cut but epoch {} does not report it (dirty {:?})",
                            e.number(),
                            e.dirty().iter().collect::<Vec<_>>()
                        );
                    }
                }
                last_cut = m.clone();
                overwrite_mode = false;
                if epochs.len() < 3 && rng.below(3) != 0 {
                    epochs.push((e, m.clone()));
                }
            }
            57..=64 => {
                if snaps.len() < 3 {
                    let s = r.snapshot().unwrap();
                    snaps.push((s, m.clone()));
                }
            }
            65..=82 => {
                if !snaps.is_empty() {
                    let i = rng.below(snaps.len() as u64) as usize;
                    let (s, sm) = &snaps[i];
                    r.rollback(s)
                        .unwrap_or_else(|e| panic!("{what}: rollback to snapshot {i}: {e}"));
                    m = sm.clone();
                    check_live(&r, &m, &format!("{what}: after rollback to snapshot {i}"));
                }
            }
            83..=88 => {
                if !epochs.is_empty() {
                    let i = rng.below(epochs.len() as u64) as usize;
                    let (e, em) = epochs.remove(i);
                    if rng.below(2) == 0 {
                        check_epoch(&e, &em, &what);
                    }
                }
            }
            89..=92 => {
                if !snaps.is_empty() {
                    let i = rng.below(snaps.len() as u64) as usize;
                    let (s, sm) = snaps.remove(i);
                    check_snapshot(&s, &sm, &what);
                }
            }
            93..=95 => {
                r.prepare_overwrite()
                    .unwrap_or_else(|e| panic!("{what}: prepare_overwrite: {e}"));
                overwrite_mode = true;
                // scribble over many pages via atomics
                for p in 0..PAGES {
                    if rng.below(2) == 0 {
                        let v = rng.next();
                        write_word(&r, &mut m, p, (v % WPP as u64) as usize, v);
                    }
                }
            }
            _ => {
                // check everything we hold now
                for (i, (s, sm)) in snaps.iter().enumerate() {
                    check_snapshot(s, sm, &format!("{what}: snapshot {i}"));
                }
            }
        }
        check_live(&r, &m, &what);
    }
    let _ = overwrite_mode;
    for (i, (s, sm)) in snaps.iter().enumerate() {
        check_snapshot(s, sm, &format!("{cfg:?} seed {seed:#x} end: snapshot {i}"));
    }
    for (e, em) in epochs.drain(..) {
        check_epoch(&e, &em, &format!("{cfg:?} seed {seed:#x} end"));
    }
}

#[test]
fn fuzz_rollback_snapshots_epochs_model() {
    for cfg in CFGS {
        for seed in 1..=6u64 {
            watchdog(120, &format!("rollback fuzz {cfg:?} {seed}"), move || {
                rollback_fuzz(cfg, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, 1500)
            });
        }
    }
}

/// The fuzzing reset with a concurrent saver: the main thread writes, cuts, hands the epoch
/// (and its expected content) to a reader thread, then rolls back to the snapshot. The copy
/// budget is tiny, so rollback's own writes are deferred until the reader frees budget.
#[test]
fn rollback_with_concurrent_epoch_reader_and_tiny_budget() {
    for cfg in [Cfg::Default, Cfg::InThread, Cfg::Eager0, Cfg::FaultAround] {
        watchdog(120, &format!("rollback + saver {cfg:?}"), move || {
            const PAGES: usize = 16;
            let t = builder(cfg).copy_budget(2 * PS).build().unwrap();
            let r = t.map_anonymous(PAGES * PS).unwrap();
            let mut m: Model = vec![vec![0u64; WPP]; PAGES];
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
            let mut m: Model = vec![vec![0u64; WPP]; PAGES];
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
    for cfg in [Cfg::Default, Cfg::InThread, Cfg::Eager0] {
        watchdog(
            60,
            &format!("prepare_overwrite budget {cfg:?}"),
            move || {
                const PAGES: usize = 16;
                let t = builder(cfg).copy_budget(2 * PS).build().unwrap();
                let r = t.map_anonymous(PAGES * PS).unwrap();
                let mut m: Model = vec![vec![0u64; WPP]; PAGES];
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
            let t = Tracker::builder()
                .in_thread_faults(in_thread)
                .build()
                .unwrap();
            let r = t.map_anonymous(8 * PS).unwrap();
            for p in 0..8 {
                touch(&r, p, 10 + p);
            }
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
    for cfg in [Cfg::Default, Cfg::InThread, Cfg::Eager0, Cfg::FaultAround] {
        watchdog(90, &format!("rollback racing writer {cfg:?}"), move || {
            const PAGES: usize = 32;
            let t = builder(cfg).build().unwrap();
            let r = Arc::new(t.map_anonymous(PAGES * PS).unwrap());
            let mut m: Model = vec![vec![0u64; WPP]; PAGES];
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

/// The mprotect backend: adopting (part of) a range this very tracker already tracks must be
/// reported as `MapError::Overlap` ("this tracker already tracks"), not as tracked by
/// another tracker.
// Was a defect (adversarial review): a region created by `map_anonymous` / `map_shared` on
// an mprotect tracker never got its segv slot's owner tag, so adopting part of it with the
// same tracker said `TrackedElsewhere`. Every mprotect region is now tagged at registration.
#[test]
fn mprotect_adopt_overlapping_own_mapped_region_is_overlap() {
    watchdog(30, "adopt own region", || {
        let t = Tracker::builder()
            .backend(Backend::Mprotect)
            .build()
            .unwrap();
        let r = t.map_anonymous(4 * PS).unwrap();
        // SAFETY: the range stays mapped (owned by `r`) for the duration; adopt must refuse.
        let res = unsafe { t.adopt(r.as_ptr().add(PS), PS) };
        match res {
            Err(writewatch_core::MapError::Overlap { .. }) => {}
            other => panic!("expected MapError::Overlap, got {other:?}"),
        }
    });
}

/// Adopt refusals (item 7): another tracker's range, the calling thread's stack, a read-only
/// mapping.
#[test]
fn adopt_refusals() {
    watchdog(30, "adopt refusals", || {
        use writewatch_core::MapError;
        let t1 = Tracker::builder()
            .backend(Backend::Mprotect)
            .build()
            .unwrap();
        let t2 = Tracker::builder()
            .backend(Backend::Mprotect)
            .build()
            .unwrap();
        let mem = anon_mmap(8 * PS) as *mut u8;
        // SAFETY: our mapping, unmapped at the end after both regions are gone.
        let r1 = unsafe { t1.adopt(mem, 4 * PS) }.unwrap();
        // SAFETY: as above; must be refused.
        match unsafe { t2.adopt(mem.add(2 * PS), 4 * PS) } {
            Err(MapError::TrackedElsewhere { .. }) => {}
            other => panic!("other tracker's range: {other:?}"),
        }
        // Same tracker: overlap.
        // SAFETY: as above; must be refused.
        match unsafe { t1.adopt(mem.add(3 * PS), 2 * PS) } {
            Err(MapError::Overlap { .. }) => {}
            other => panic!("own adopted range: {other:?}"),
        }
        // A uffd tracker on the mprotect tracker's range.
        let u = Tracker::builder()
            .backend(Backend::SyncUffd)
            .build()
            .unwrap();
        // SAFETY: as above; must be refused.
        assert!(unsafe { u.adopt(mem, PS) }.is_err());
        drop(r1);
        // After the drop the range is free again.
        // SAFETY: as above.
        let r2 = unsafe { t2.adopt(mem, 4 * PS) }.unwrap();
        drop(r2);
        // The calling thread's stack.
        let local = [0u8; 3 * PS];
        let a = (local.as_ptr() as usize + PS - 1) & !(PS - 1);
        // SAFETY: must be refused before anything is registered.
        match unsafe { u.adopt(a as *mut u8, PS) } {
            Err(MapError::OwnMemory { .. }) => {}
            other => panic!("own stack: {other:?}"),
        }
        std::hint::black_box(&local);
        // Read-only mapping.
        assert_eq!(
            // SAFETY: our own mapping.
            unsafe { libc::mprotect(mem.add(6 * PS).cast(), PS, libc::PROT_READ) },
            0
        );
        // SAFETY: must be refused.
        match unsafe { u.adopt(mem.add(6 * PS), PS) } {
            Err(MapError::NotReadWrite { .. }) => {}
            other => panic!("read-only: {other:?}"),
        }
        // SAFETY: nothing tracks it any more.
        unsafe { libc::munmap(mem.cast(), 8 * PS) };
    });
}

fn perms_of(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for l in maps.lines() {
        let mut f = l.split_whitespace();
        let range = f.next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            usize::from_str_radix(a, 16).unwrap(),
            usize::from_str_radix(b, 16).unwrap(),
        );
        if a <= addr && addr < b {
            return f.next().unwrap().to_string();
        }
    }
    panic!("{addr:#x} not mapped")
}

/// mprotect backend: an application guard page (PROT_NONE) inside an adopted region stays
/// PROT_NONE across cuts, prepare_overwrite and the region's drop.
#[test]
fn mprotect_guard_page_survives_prepare_overwrite_and_cuts() {
    watchdog(30, "guard page", || {
        let t = Tracker::builder()
            .backend(Backend::Mprotect)
            .build()
            .unwrap();
        let mem = anon_mmap(8 * PS) as *mut u8;
        // SAFETY: our mapping, unmapped at the end after the region is dropped.
        let r = unsafe { t.adopt(mem, 8 * PS) }.unwrap();
        let guard = mem as usize + 4 * PS;
        assert_eq!(
            // SAFETY: our own mapping; nothing references page 4.
            unsafe { libc::mprotect(guard as *mut _, PS, libc::PROT_NONE) },
            0
        );
        touch(&r, 1, 1);
        drop(r.cut().unwrap());
        assert_eq!(perms_of(guard), "---p", "after cut");
        r.prepare_overwrite().unwrap();
        assert_eq!(perms_of(guard), "---p", "after prepare_overwrite");
        touch(&r, 2, 1);
        drop(r.cut().unwrap());
        assert_eq!(perms_of(guard), "---p", "after cut 2");
        drop(r);
        assert_eq!(perms_of(guard), "---p", "after drop");
        // SAFETY: nothing tracks it any more.
        unsafe { libc::munmap(mem.cast(), 8 * PS) };
    });
}

/// Reading views into tracked memory of the SAME region: the destination page is itself a
/// page the view still needs (PENDING). No hang, and both pages read as at the cut.
#[test]
fn read_view_into_own_region_pending_page() {
    for in_thread in [false, true] {
        watchdog(30, "read into own region", move || {
            let t = Tracker::builder()
                .in_thread_faults(in_thread)
                .build()
                .unwrap();
            let r = t.map_anonymous(8 * PS).unwrap();
            for p in 0..8 {
                touch(&r, p, 0x10 + p);
            }
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
            let t = Tracker::builder()
                .in_thread_faults(in_thread)
                .build()
                .unwrap();
            let r = t.map_anonymous(8 * PS).unwrap();
            for p in 0..8 {
                touch(&r, p, 0x30 + p);
            }
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
