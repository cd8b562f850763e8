//! Regression tests for the view protocol's edge defects (issue 11: items 1, 2, 4, 5, 6, 12)
//! and the fuzzing-grade rollback and bulk overwrite (issue 12). Each test failed (hung,
//! crashed or returned wrong data) on the code before its fix.
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use writewatch_core::{Backend, Invalidation, Region, SnapshotError, Tracker};

const PS: usize = 4096;

fn word0(buf: &[u8]) -> u64 {
    u64::from_ne_bytes(buf[..8].try_into().unwrap())
}

fn tracker(in_thread: bool) -> Tracker {
    Tracker::builder()
        .in_thread_faults(in_thread)
        .build()
        .unwrap()
}

/// Issue 11.1: a view read into a buffer that is itself tracked (region B, protected) while
/// another thread writes the page being read (region A). The reader held A's page in COPYING
/// while its own copy faulted on B; the service thread spun on COPYING: deadlock (3/3 runs).
#[test]
fn view_read_into_a_tracked_buffer_while_the_page_is_written_does_not_hang() {
    for in_thread in [false, true] {
        watchdog(60, "read_page into tracked memory", move || {
            let t = tracker(in_thread);
            // B first: mappings grow down, so A lies below B and the service thread, which
            // services a batch in address order, takes A's fault before B's.
            let b = t.map_anonymous(4 * PS).unwrap();
            let a = Arc::new(t.map_anonymous(4 * PS).unwrap());
            let (go, done) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
            let (a2, g2, d2) = (Arc::clone(&a), Arc::clone(&go), Arc::clone(&done));
            let rounds = 500u64;
            let writer = std::thread::spawn(move || {
                for i in 1..=rounds {
                    g2.wait();
                    touch(&a2, 0, 1_000_000 + i); // faults: the page is needed by the snapshot
                    d2.wait();
                }
            });
            for i in 1..=rounds {
                touch(&a, 0, i);
                let snap = a.snapshot().unwrap();
                drop(b.cut().unwrap()); // B's pages are write-protected again
                go.wait();
                // SAFETY: no other thread touches region B.
                let dst = unsafe { &mut b.as_mut_slice()[..PS] };
                snap.read_page(0, dst).unwrap();
                assert_eq!(
                    word0(dst),
                    i,
                    "in_thread {in_thread}: the page as at the snapshot"
                );
                done.wait(); // the writer's write has landed before the next round's
            }
            writer.join().unwrap();
        });
    }
}

/// Issue 11.2: `madvise(MADV_DONTNEED)` racing `snapshot()`; the snapshot lands between the
/// REMOVE read and the kernel's zap, so the zap drops the page's protection after the
/// snapshot re-protected it. A later write then went unseen and `rollback` returned Ok with
/// the write still in place (189/20000 runs). Now rollback restores the page (to its content
/// at the snapshot, or the zeros of the madvise) or says `Discarded`.
#[test]
fn rollback_after_madvise_racing_a_snapshot_is_never_silently_wrong() {
    for in_thread in [false, true] {
        let t = tracker(in_thread);
        let region = Arc::new(t.map_anonymous(4 * PS).unwrap());
        let go = Arc::new(Barrier::new(2));
        let done = Arc::new(Barrier::new(2));
        let stop = Arc::new(AtomicBool::new(false));
        let (r2, g2, d2, s2) = (
            Arc::clone(&region),
            Arc::clone(&go),
            Arc::clone(&done),
            Arc::clone(&stop),
        );
        let madviser = std::thread::spawn(move || loop {
            g2.wait();
            if s2.load(SeqCst) {
                return;
            }
            // SAFETY: page 0 of the region; no references into it.
            let rc = unsafe { libc::madvise(r2.as_ptr().cast(), PS, libc::MADV_DONTNEED) };
            assert_eq!(rc, 0);
            d2.wait();
        });
        let (mut restored, mut discarded, mut wrong) = (0u64, 0u64, 0u64);
        for i in 1..=4000u64 {
            touch(&region, 0, i);
            go.wait();
            let snap = region.snapshot().unwrap();
            done.wait();
            touch(&region, 0, u64::MAX); // after the snapshot and the madvise
            match region.rollback(&snap) {
                Ok(_) => {
                    let v = region.as_atomic_u64()[0].load(SeqCst);
                    if v == i || v == 0 {
                        restored += 1;
                    } else {
                        wrong += 1;
                    }
                }
                Err(SnapshotError::Discarded { page: 0 }) => discarded += 1,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        stop.store(true, SeqCst);
        go.wait();
        madviser.join().unwrap();
        println!(
            "in_thread {in_thread}: {restored} restored, {discarded} discarded, {wrong} wrong"
        );
        assert_eq!(
            wrong, 0,
            "rollback returned Ok with a post-snapshot write in place"
        );
    }
}

/// Issue 11.4 and 11.5: an `Epoch` or `Snapshot` outliving its adopted `Region`. After the
/// drop the range is untracked: its PENDING pages read as Ok(later writes) (wrong data), and
/// after the owner unmapped the range, `read_page` crashed with SIGSEGV (UB from a safe call).
#[test]
fn views_outliving_their_adopted_region_never_read_live_memory() {
    let t = tracker(false);
    let len = 4 * PS;
    let mem = anon_mmap(len) as *mut u8;
    // SAFETY: a fresh private mapping that stays mapped until the munmap below, after the
    // region and the epoch are dropped (the snapshot outlives both: that is the test).
    let region = unsafe { t.adopt(mem, len) }.unwrap();
    touch(&region, 0, 1);
    drop(region.cut().unwrap());
    touch(&region, 0, 2);
    touch(&region, 1, 20);
    let epoch = region.cut().unwrap();
    let snap = region.snapshot().unwrap();
    touch(&region, 1, 21); // preserved (copy-before-write) before the drop
    drop(region);
    // SAFETY: page 0 of our own mapping; no references into it.
    unsafe { std::ptr::write_volatile(mem as *mut u64, 3) };
    let mut buf = vec![0u8; PS];
    let dropped = Err(SnapshotError::Invalidated(Invalidation::Dropped));
    assert_eq!(epoch.read_page(0, &mut buf), dropped);
    assert_eq!(snap.read_page(0, &mut buf), dropped);
    // Content preserved before the drop is still there.
    snap.read_page(1, &mut buf).unwrap();
    assert_eq!(word0(&buf), 20);
    drop(epoch);
    // SAFETY: the region and its epoch are dropped; nothing else uses the mapping.
    assert_eq!(unsafe { libc::munmap(mem.cast(), len) }, 0);
    assert_eq!(snap.read_page(0, &mut buf), dropped); // was SIGSEGV
    assert_eq!(snap.read_page(2, &mut buf), dropped);
}

/// Issue 11.6: copy budget of one page, epoch {0, 1}. The writer rewrites page 0 (copied,
/// budget full), then page 1 (deferred). Reading page 1 removes the need for a copy, but
/// nobody woke the service thread: the writer stayed blocked until page 0 was read.
#[test]
fn reading_a_pending_page_releases_a_writer_deferred_on_it() {
    for in_thread in [false, true] {
        watchdog(30, "deferred writer after its page was read", move || {
            let t = Tracker::builder()
                .copy_budget(PS)
                .in_thread_faults(in_thread)
                .build()
                .unwrap();
            let region = Arc::new(t.map_anonymous(4 * PS).unwrap());
            touch(&region, 0, 10);
            touch(&region, 1, 11);
            let epoch = region.cut().unwrap();
            let progress = Arc::new(AtomicU64::new(0));
            let (r2, p2) = (Arc::clone(&region), Arc::clone(&progress));
            let writer = std::thread::spawn(move || {
                touch(&r2, 0, 20);
                p2.store(1, SeqCst);
                touch(&r2, 1, 21);
                p2.store(2, SeqCst);
            });
            while progress.load(SeqCst) < 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(progress.load(SeqCst), 1, "page 1 waits for copy budget");
            let mut buf = vec![0u8; PS];
            epoch.read_page(1, &mut buf).unwrap();
            assert_eq!(word0(&buf), 11);
            writer.join().unwrap(); // was: blocked until page 0 was read
            epoch.read_page(0, &mut buf).unwrap();
            assert_eq!(word0(&buf), 10);
        });
    }
}

/// Same, with `release_page` instead of a read.
#[test]
fn releasing_a_pending_page_releases_a_writer_deferred_on_it() {
    watchdog(30, "deferred writer after its page was released", || {
        let t = Tracker::builder().copy_budget(PS).build().unwrap();
        let region = Arc::new(t.map_anonymous(4 * PS).unwrap());
        touch(&region, 0, 10);
        touch(&region, 1, 11);
        let epoch = region.cut().unwrap();
        touch(&region, 0, 20); // copied: budget full
        let r2 = Arc::clone(&region);
        let writer = std::thread::spawn(move || touch(&r2, 1, 21));
        std::thread::sleep(Duration::from_millis(50));
        epoch.release_page(1);
        writer.join().unwrap();
    });
}

/// Issue 12 (fuzzing-grade rollback): one long-lived snapshot, then scribble 1-8 random
/// pages and roll back, 10,000 times. After every rollback the region is byte-equal to the
/// snapshot (oracle: a plain copy taken at the snapshot), and each rollback rewrites exactly
/// the pages the case touched (it cost the whole written history before).
#[test]
fn rollback_costs_the_pages_touched_since_the_previous_rollback() {
    for in_thread in [false, true] {
        // Exact accounting: adaptive fault-around (granted by the sequential fill below, and
        // bounded, docs/design.md section 2) would add pages next to consecutive writes.
        let t = Tracker::builder()
            .in_thread_faults(in_thread)
            .fault_around(0)
            .build()
            .unwrap();
        let region = t.map_anonymous(256 * PS).unwrap();
        let pages = region.page_count();
        let w = region.as_atomic_u64();
        for (i, word) in w.iter().enumerate() {
            word.store(i as u64 * 7 + 1, SeqCst);
        }
        // SAFETY: no other thread touches the region in this test.
        let reference = unsafe { region.as_slice() }.to_vec();
        let snap = region.snapshot().unwrap();
        let mut rng = Rng(7 + in_thread as u64);
        let wpp = PS / 8;
        for case in 0..10_000u64 {
            let mut touched = BTreeSet::new();
            for _ in 0..1 + rng.below(8) {
                let p = rng.below(pages) as usize;
                let off = rng.below(wpp as u64) as usize;
                touched.insert(p as u64);
                w[p * wpp + off].store(case ^ 0xABCD_0000, SeqCst);
            }
            let n = region.rollback(&snap).unwrap();
            assert_eq!(n, touched.len() as u64, "case {case}: pages rewritten");
            for &p in &touched {
                let p = p as usize;
                // SAFETY: as above.
                let now = unsafe { &region.as_slice()[p * PS..(p + 1) * PS] };
                assert!(
                    now == &reference[p * PS..(p + 1) * PS],
                    "case {case} page {p}"
                );
            }
            if case % 1000 == 999 {
                // SAFETY: as above.
                let all = unsafe { region.as_slice() };
                assert!(all == &reference[..], "case {case}");
            }
        }
        // A rollback with nothing written since rewrites nothing.
        assert_eq!(region.rollback(&snap).unwrap(), 0);
    }
}

/// A page rolled back (CLEAN) that the application then `madvise`s away: its protection may
/// be gone, so the next rollback must rewrite it (from the preserved copy) even though no
/// fault saw a write.
#[test]
fn rollback_rewrites_a_clean_page_that_was_madvised_away() {
    for in_thread in [false, true] {
        let t = tracker(in_thread);
        let region = t.map_anonymous(8 * PS).unwrap();
        touch(&region, 3, 33);
        let snap = region.snapshot().unwrap();
        touch(&region, 3, 44);
        assert_eq!(region.rollback(&snap).unwrap(), 1);
        // SAFETY: page 3 of the region; no references into it.
        let rc =
            unsafe { libc::madvise(region.as_ptr().add(3 * PS).cast(), PS, libc::MADV_DONTNEED) };
        assert_eq!(rc, 0);
        touch(&region, 3, 55);
        assert!(region.rollback(&snap).unwrap() >= 1);
        assert_eq!(region.as_atomic_u64()[3 * PS / 8].load(SeqCst), 33);
    }
}

/// Rollback with eager re-protection on: re-armed and eagerly armed pages agree.
#[test]
fn rollback_with_eager_reprotect() {
    let t = Tracker::builder()
        .eager_reprotect(Duration::from_millis(0))
        .build()
        .unwrap();
    let region = t.map_anonymous(64 * PS).unwrap();
    let snap = region.snapshot().unwrap();
    let mut rng = Rng(3);
    for case in 0..500u64 {
        let p = rng.below(64);
        touch(&region, p, case + 1);
        std::thread::sleep(Duration::from_micros(200));
        assert_eq!(region.rollback(&snap).unwrap(), 1, "case {case}");
        assert_eq!(region.as_atomic_u64()[p as usize * PS / 8].load(SeqCst), 0);
        if case % 50 == 0 {
            drop(region.cut().unwrap());
        }
    }
}

/// `Region::prepare_overwrite`: live epochs and snapshots keep their content, every page is
/// reported in the next cut, and protection is back after it.
#[test]
fn prepare_overwrite_keeps_views_and_reports_every_page() {
    for backend in [Backend::SyncUffd, Backend::AsyncUffd, Backend::Mprotect] {
        let t = Tracker::builder().backend(backend).build().unwrap();
        let region = t.map_anonymous(32 * PS).unwrap();
        for p in 0..32 {
            touch(&region, p, p + 100);
        }
        let views = backend == Backend::SyncUffd;
        let epoch = region.cut().unwrap();
        let snap = views.then(|| region.snapshot().unwrap());
        region.prepare_overwrite().unwrap();
        // SAFETY: no other thread touches the region.
        unsafe { region.as_mut_slice() }.fill(0x5A);
        let mut buf = vec![0u8; PS];
        if views {
            for p in 0..32 {
                epoch.read_page(p, &mut buf).unwrap();
                assert_eq!(word0(&buf), p + 100);
                snap.as_ref().unwrap().read_page(p, &mut buf).unwrap();
                assert_eq!(word0(&buf), p + 100);
            }
        }
        assert_eq!(region.cut().unwrap().dirty().len(), 32, "{backend:?}");
        assert!(region.cut().unwrap().dirty().is_empty(), "{backend:?}");
        touch(&region, 5, 1);
        let d = region.cut().unwrap();
        assert_eq!(
            d.dirty().iter().collect::<Vec<_>>(),
            vec![5],
            "{backend:?}: re-armed"
        );
    }
}

fn _assert_region_send_sync(r: Region) -> impl Send + Sync {
    r
}
