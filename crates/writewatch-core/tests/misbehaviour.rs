//! The application misbehaves against a tracked region (issue #7, item 2). Each test is one
//! row of the misbehaviour table in docs/reliability.md; each asserts the defined outcome and
//! that nothing hangs (every blocking step runs under a watchdog or in a subprocess with a
//! timeout).
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use writewatch_core::{Backend, CutError, Invalidation, Region, SnapshotError, Tracker};

const PS: usize = 4096;

fn sync_tracker() -> Tracker {
    Tracker::builder()
        .backend(Backend::SyncUffd)
        .build()
        .unwrap()
}

/// The userfaultfd backends: sync (both fault modes) and async.
fn uffd_trackers() -> Vec<Tracker> {
    let mut v = sync_trackers();
    v.push(
        Tracker::builder()
            .backend(Backend::AsyncUffd)
            .build()
            .unwrap(),
    );
    v
}

/// The sync backend, with faults served by the service thread and in the faulting thread.
fn sync_trackers() -> Vec<Tracker> {
    vec![
        sync_tracker(),
        Tracker::builder()
            .backend(Backend::SyncUffd)
            .in_thread_faults(true)
            .build()
            .unwrap(),
    ]
}

/// A fresh private anonymous mapping of `pages` pages (the test owns it).
fn mmap_anon(pages: usize) -> *mut u8 {
    let p = anon_mmap(pages * PS);
    p.cast()
}

/// Re-executes this test binary to run only `test` with `env` set; returns its status, or
/// panics if it does not finish within `secs`.
fn run_child(test: &str, env: &str, secs: u64) -> std::process::ExitStatus {
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(env, "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {test} did not finish within {secs} s (hang)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

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

// ----------------------------------------------------------------- mprotect by the app

const MPROTECT_CHILD: &str = "WW_MISBEHAVIOUR_MPROTECT_CHILD";

/// Child: a write to a tracked page the application made read-only gets SIGSEGV, as the
/// application asked.
#[test]
fn mprotect_read_only_child() {
    if std::env::var_os(MPROTECT_CHILD).is_none() {
        return;
    }
    let t = sync_tracker();
    let region = t.map_anonymous(8 * PS).unwrap();
    touch(&region, 1, 1);
    region.cut().unwrap();
    // SAFETY: pages 0..4 of the region.
    let r = unsafe { libc::mprotect(region.as_ptr().cast(), 4 * PS, libc::PROT_READ) };
    assert_eq!(r, 0);
    touch(&region, 6, 1); // still writable: tracked, fine
    touch(&region, 2, 1); // SIGSEGV
    std::process::exit(0);
}

#[test]
fn mprotect_read_only_by_the_application_segfaults_writes() {
    use std::os::unix::process::ExitStatusExt;
    let st = run_child("mprotect_read_only_child", MPROTECT_CHILD, 20);
    assert_eq!(st.signal(), Some(libc::SIGSEGV), "{st:?}");
}

#[test]
fn mprotect_read_only_then_back_keeps_tracking() {
    for t in uffd_trackers() {
        let region = t.map_anonymous(32 * PS).unwrap();
        for pg in 0..32 {
            touch(&region, pg, 1);
        }
        region.cut().unwrap();
        // SAFETY: the whole region; no other thread accesses it.
        unsafe {
            assert_eq!(
                libc::mprotect(region.as_ptr().cast(), 32 * PS, libc::PROT_READ),
                0
            );
            assert_eq!(
                libc::mprotect(
                    region.as_ptr().cast(),
                    32 * PS,
                    libc::PROT_READ | libc::PROT_WRITE
                ),
                0
            );
        }
        for round in 0..3u64 {
            let w = [round + 4, 17, 30];
            for pg in w {
                touch(&region, pg, round + 2);
            }
            let e = region.cut().unwrap();
            assert_eq!(
                e.dirty().iter().collect::<BTreeSet<_>>(),
                w.into_iter().collect::<BTreeSet<_>>(),
                "{}: round {round}",
                t.backend().name()
            );
        }
    }
}

/// The mprotect backend: the application makes tracked pages writable again behind the
/// backend's back. The write must not fault into the backend (it completes), and the dirty
/// set must still not under-report (design.md section 2). Found by this suite (the backend
/// learned of writes only through its own SIGSEGV, which the application's mprotect(RW)
/// removed); fixed in 71c7b01 (each cut marks pages of writable mappings dirty).
/// The mprotect backend, a region whose pages the application made writable again with
/// `mprotect(RW)`, then a write to page 3: the tracker and the dirty set of the next cut.
fn mprotect_rw_then_write() -> (Tracker, Region, writewatch_core::DirtySet) {
    let t = Tracker::builder()
        .backend(Backend::Mprotect)
        .build()
        .unwrap();
    let region = t.map_anonymous(8 * PS).unwrap();
    region.cut().unwrap();
    // SAFETY: the whole region; no other thread accesses it.
    unsafe {
        assert_eq!(
            libc::mprotect(
                region.as_ptr().cast(),
                8 * PS,
                libc::PROT_READ | libc::PROT_WRITE
            ),
            0
        );
    }
    touch(&region, 3, 1);
    let d = region.cut().unwrap().into_dirty();
    (t, region, d)
}

#[test]
fn mprotect_backend_application_mprotect_rw_still_reports_writes() {
    let (_t, _region, d) = mprotect_rw_then_write();
    assert!(
        d.contains(3),
        "write to page 3 after mprotect(RW) not reported: {:?}",
        d.iter().collect::<Vec<_>>()
    );
}

/// The mprotect backend after the application's mprotect(RW): the write completes (no
/// SIGSEGV, no hang) and the tracker stays usable.
#[test]
fn mprotect_backend_application_mprotect_rw_does_not_crash_or_hang() {
    let (t, region, d) = mprotect_rw_then_write();
    println!(
        "mprotect backend after the application's mprotect(RW): reported {:?}",
        d.iter().collect::<Vec<_>>()
    );
    assert_eq!(region.as_atomic_u64()[3 * WORDS_PER_PAGE].load(SeqCst), 1);
    let other = t.map_anonymous(2 * PS).unwrap();
    touch(&other, 1, 1);
    assert!(other.cut().unwrap().dirty().contains(1));
}

// --------------------------------------------------------------------------------- fork

#[test]
fn fork_with_snapshot_in_progress_child_free_parent_exact() {
    let t = sync_tracker();
    let pages = 128usize;
    let region = Arc::new(t.map_anonymous(pages * PS).unwrap());
    for pg in 0..pages as u64 {
        touch(&region, pg, 100 + pg);
    }
    // SAFETY: no other thread writes the region yet.
    let reference = unsafe { region.as_slice() }.to_vec();
    let snap = region.snapshot().unwrap();
    let epoch = region.cut().unwrap();
    // A parent writer runs across the fork.
    let stop = Arc::new(AtomicBool::new(false));
    let (r2, s2) = (Arc::clone(&region), Arc::clone(&stop));
    let writer = std::thread::spawn(move || {
        let mut rng = Rng(5);
        while !s2.load(SeqCst) {
            touch(&r2, rng.below(pages as u64), 0xBAD);
        }
    });
    std::thread::sleep(Duration::from_millis(5));
    fork_and_write(region.as_atomic_u64(), pages);
    stop.store(true, SeqCst);
    watchdog(10, "parent writer", move || writer.join().unwrap());
    let mut buf = vec![0u8; PS];
    for pg in 0..pages as u64 {
        snap.read_page(pg, &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            &reference[pg as usize * PS..(pg as usize + 1) * PS],
            "snapshot page {pg}"
        );
        epoch.read_page(pg, &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            &reference[pg as usize * PS..(pg as usize + 1) * PS],
            "epoch page {pg}"
        );
    }
    // The child's writes never reach the parent; tracking continues.
    assert!((0..pages)
        .all(|pg| region.as_atomic_u64()[pg * WORDS_PER_PAGE + 8].load(SeqCst) != 0xC0FFEE));
    touch(&region, 9, 1);
    assert!(region.cut().unwrap().dirty().contains(9));
}

#[test]
fn fork_without_snapshot_child_free_parent_tracking_exact() {
    let t = sync_tracker();
    let pages = 64usize;
    let region = t.map_anonymous(pages * PS).unwrap();
    touch(&region, 1, 1);
    region.cut().unwrap();
    fork_and_write(region.as_atomic_u64(), pages);
    // The parent's pages are COW-shared with the (gone) child: its writes still fault and
    // are tracked exactly.
    for pg in [0u64, 5, 63] {
        touch(&region, pg, 2);
    }
    assert_eq!(
        region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
        vec![0, 5, 63]
    );
}

// ---------------------------------------------------------------------- exec from thread

const EXEC_CHILD: &str = "WW_MISBEHAVIOUR_EXEC_CHILD";

#[test]
fn exec_from_thread_child() {
    if std::env::var_os(EXEC_CHILD).is_none() {
        return;
    }
    // Small budget: some writers sit blocked in the kernel on deferred faults at exec time.
    let t = Tracker::builder()
        .backend(Backend::SyncUffd)
        .copy_budget(4 * PS)
        .build()
        .unwrap();
    let region = Arc::new(t.map_anonymous(256 * PS).unwrap());
    for pg in 0..256 {
        touch(&region, pg, 1);
    }
    let _epoch = region.cut().unwrap(); // unread: copies fill the budget, writers block
    for th in 0..3u64 {
        let r = Arc::clone(&region);
        std::thread::spawn(move || {
            let mut rng = Rng(th + 1);
            loop {
                touch(&r, rng.below(256), th);
            }
        });
    }
    std::thread::sleep(Duration::from_millis(30));
    std::thread::spawn(|| {
        let prog = std::ffi::CString::new("/bin/true").unwrap();
        let argv = [prog.as_ptr(), std::ptr::null()];
        // SAFETY: a valid NUL-terminated argv; on success exec never returns.
        unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
        std::process::exit(3);
    })
    .join()
    .unwrap();
}

#[test]
fn exec_from_a_thread_while_writers_fault_does_not_hang() {
    let st = run_child("exec_from_thread_child", EXEC_CHILD, 20);
    assert_eq!(st.code(), Some(0), "the exec'd /bin/true exits 0: {st:?}");
}

// ---------------------------------------------------------------------- signal handlers

static SIG_TARGET: AtomicPtr<u64> = AtomicPtr::new(std::ptr::null_mut());
static SIG_COUNT: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_usr2(_: libc::c_int) {
    let p = SIG_TARGET.load(SeqCst);
    let n = SIG_COUNT.fetch_add(1, SeqCst) + 1;
    // SAFETY: points into a tracked page that lives for the test; a volatile store from a
    // signal handler is async-signal-safe (it may fault: the service thread resolves it).
    unsafe { p.write_volatile(n) };
}

#[test]
fn sync_write_from_a_signal_handler_is_tracked_and_snapshotted() {
    for t in sync_trackers() {
        let region = t.map_anonymous(16 * PS).unwrap();
        touch(&region, 6, 0x77);
        region.cut().unwrap();
        // SAFETY: page 6 of the region, 8-byte aligned.
        SIG_TARGET.store(unsafe { region.as_ptr().add(6 * PS).cast() }, SeqCst);
        // SAFETY: installing a handler that only performs a volatile store and an atomic add.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_usr2 as *const () as usize;
            libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut());
        }
        for round in 0..20u64 {
            let snap = region.snapshot().unwrap();
            let before = SIG_COUNT.load(SeqCst);
            // From another thread too: the handler runs on whichever thread gets the signal.
            let h = std::thread::spawn(|| {
                // SAFETY: raising a signal whose handler is installed above.
                unsafe { libc::raise(libc::SIGUSR2) };
            });
            watchdog(10, "signal handler write", move || h.join().unwrap());
            // SAFETY: as above.
            unsafe { libc::raise(libc::SIGUSR2) };
            assert_eq!(
                region.as_atomic_u64()[6 * WORDS_PER_PAGE].load(SeqCst),
                before + 2
            );
            let e = region.cut().unwrap();
            assert_eq!(
                e.dirty().iter().collect::<Vec<_>>(),
                vec![6],
                "round {round}"
            );
            let mut buf = vec![0u8; PS];
            snap.read_page(6, &mut buf).unwrap();
            let at_snap = u64::from_ne_bytes(buf[..8].try_into().unwrap());
            assert_eq!(at_snap, if round == 0 { 0x77 } else { before });
        }
    }
}

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
