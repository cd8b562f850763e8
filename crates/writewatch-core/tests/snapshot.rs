//! Acceptance tests of live snapshots (issue: consistent live snapshots).
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use writewatch_core::{Region, SnapshotError, Tracker, TrackerStats};

const MIB: usize = 1 << 20;
/// The consistency oracle (tests/common) over `cuts` cuts of a fresh region: asserts 0
/// violations, 0 torn and 0 lost pages; returns the number of writes.
fn oracle_every_cut(
    tracker: &Tracker,
    len: usize,
    threads: usize,
    cuts: u64,
    slow_reader: bool,
) -> u64 {
    let region = Arc::new(tracker.map_anonymous(len).unwrap());
    let slow = slow_reader.then_some(Duration::from_micros(50));
    let r = consistency_oracle(region, threads, slow, |c, _| c >= cuts);
    println!(
        "oracle: {threads} threads, {r:?}, stats {:?}",
        tracker.stats()
    );
    assert_eq!(
        (r.violations, r.torn, r.lost),
        (0, 0, 0),
        "consistency violations"
    );
    r.writes
}

/// [`oracle_every_cut`] over 50 cuts of a 16 MiB region with 4 writers, on a tracker that
/// re-protects eagerly at age 0 (faults served in the writers' threads if `in_thread`);
/// asserts the writers made progress and returns the tracker's stats.
fn oracle_with_eager_reprotect(in_thread: bool) -> TrackerStats {
    let t = Tracker::builder()
        .in_thread_faults(in_thread)
        .eager_reprotect(Duration::ZERO)
        .build()
        .unwrap();
    let writes = oracle_every_cut(&t, 16 * MIB, 4, 50, false);
    assert!(writes > 5_000, "writers made progress: {writes}");
    t.stats()
}

#[test]
fn consistency_oracle_4_threads_100_cuts() {
    let t = Tracker::builder().build().unwrap();
    let writes = oracle_every_cut(&t, 64 * MIB, 4, 100, false);
    assert!(writes > 10_000, "writers made progress: {writes}");
}

#[test]
fn consistency_oracle_with_eager_reprotect() {
    // Age 0: pages are re-armed whenever the service thread is idle, so most cuts find a mix
    // of armed, re-faulted and fresh pages. The cut must stay a consistent cut.
    let s = oracle_with_eager_reprotect(false);
    assert!(
        s.eager_pages > 0 && s.refaults > 0,
        "eager re-protection ran: {s:?}"
    );
}

#[test]
fn consistency_oracle_in_thread_faults() {
    // Faults served by the writers themselves (SIGBUS mode): cuts must still hold the writers
    // that fault while they run, and copies must still be the content at the cut.
    let t = Tracker::builder().in_thread_faults(true).build().unwrap();
    let writes = oracle_every_cut(&t, 64 * MIB, 4, 100, false);
    assert!(writes > 10_000, "writers made progress: {writes}");
}

#[test]
fn consistency_oracle_in_thread_faults_with_eager_reprotect() {
    // Issue 14: in-thread handlers and background re-arming compose. Age 0: the service thread
    // arms pages (armed bit, synchronize, protect) while handlers un-protect others.
    let s = oracle_with_eager_reprotect(true);
    assert!(
        s.eager_pages > 0,
        "eager re-protection ran beside the handlers: {s:?}"
    );
}

#[test]
fn in_thread_faults_with_tiny_budget_and_racing_saver() {
    // Back-pressure inside the handler: writers wait (outside the in-flight section) until the
    // saver drains; the result is still exact.
    let t = Tracker::builder()
        .in_thread_faults(true)
        .copy_budget(16 * 4096)
        .build()
        .unwrap();
    let writes = oracle_every_cut(&t, 4 * MIB, 4, 30, true);
    assert!(writes > 0);
    assert!(t.stats().preserved > 0);
}

#[test]
fn saver_and_service_race_with_tiny_budget() {
    // 16 pages of copy budget, 4 writers, a reader that sleeps between pages: the service
    // thread must defer writers (back-pressure) and the result must still be exact.
    let t = Tracker::builder().copy_budget(16 * 4096).build().unwrap();
    let writes = oracle_every_cut(&t, 4 * MIB, 4, 30, true);
    assert!(writes > 0);
    let s = t.stats();
    assert!(s.preserved > 0, "copy-before-write happened: {s:?}");
}

#[test]
fn budget_back_pressure_blocks_writers_until_reader_drains() {
    for in_thread in [false, true] {
        let t = Tracker::builder()
            .copy_budget(8 * 4096)
            .in_thread_faults(in_thread)
            .build()
            .unwrap();
        let region = Arc::new(t.map_anonymous(MIB).unwrap());
        for p in 0..256u64 {
            touch(&region, p, p + 1000);
        }
        let epoch = region.cut().unwrap();
        assert_eq!(epoch.dirty().len(), 256);
        // A writer now rewrites every page: each first write needs a copy, 8 fit in the budget.
        let progress = Arc::new(AtomicU64::new(0));
        let (r2, pr) = (Arc::clone(&region), Arc::clone(&progress));
        let writer = std::thread::spawn(move || {
            for p in 0..256u64 {
                touch(&r2, p, 7);
                pr.store(p + 1, SeqCst);
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let stalled_at = progress.load(SeqCst);
        assert!(
            stalled_at < 256,
            "the writer must be held by back-pressure, got to {stalled_at}"
        );
        assert!(t.stats().deferred > 0);
        // Drain: every page reads as it was at the cut.
        let mut buf = vec![0u8; 4096];
        for p in 0..256u64 {
            epoch.read_page(p, &mut buf).unwrap();
            assert_eq!(
                u64::from_ne_bytes(buf[..8].try_into().unwrap()),
                p + 1000,
                "page {p}"
            );
        }
        watchdog(20, "writer after drain", move || writer.join().unwrap());
        assert_eq!(progress.load(SeqCst), 256);
        assert_eq!(
            epoch.read_page(3, &mut buf),
            Err(SnapshotError::AlreadyConsumed { page: 3 })
        );
    }
}

#[test]
fn snapshot_under_a_writer_rewriting_every_page() {
    for in_thread in [false, true] {
        let t = Tracker::builder()
            .in_thread_faults(in_thread)
            .build()
            .unwrap();
        let region = Arc::new(t.map_anonymous(16 * MIB).unwrap());
        let pages = region.page_count();
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (r2, s2, rd) = (Arc::clone(&region), Arc::clone(&stop), Arc::clone(&rounds));
        let writer = std::thread::spawn(move || {
            let w = r2.as_atomic_u64();
            let mut round = 1u64;
            while !s2.load(SeqCst) {
                for p in 0..pages as usize {
                    // The whole first cache line carries the round: a torn copy would mix values.
                    for k in 0..8 {
                        w[p * WORDS_PER_PAGE + k].store(round, SeqCst);
                    }
                }
                rd.store(round, SeqCst);
                round += 1;
            }
        });
        while rounds.load(SeqCst) < 2 {
            std::thread::yield_now();
        }
        let snap = region.snapshot().unwrap();
        let at = rounds.load(SeqCst);
        while rounds.load(SeqCst) < at + 3 {
            std::thread::yield_now();
        }
        stop.store(true, SeqCst);
        writer.join().unwrap();
        // At the snapshot instant the writer was in round r: pages [0, i) hold r, [i, n) hold r-1
        // (the page being written at T may hold a prefix of its words: a consistent cut of one
        // thread's program order).
        let mut buf = vec![0u8; 4096];
        let mut vals = Vec::new();
        for p in 0..pages {
            snap.read_page(p, &mut buf).unwrap();
            let words: Vec<u64> = (0..8)
                .map(|k| u64::from_ne_bytes(buf[k * 8..k * 8 + 8].try_into().unwrap()))
                .collect();
            vals.push(words);
        }
        let flat: Vec<u64> = vals.iter().flatten().copied().collect();
        let descents = flat.windows(2).filter(|w| w[1] != w[0]).count();
        assert!(
            descents <= 1,
            "snapshot is not a single point in the writer's order: {descents} changes"
        );
        assert!(
            flat.windows(2).all(|w| w[1] == w[0] || w[1] + 1 == w[0]),
            "values form r..r, r-1..r-1"
        );
        assert!(flat[0] >= at - 1 && flat[0] <= at + 1);
        assert!(
            snap.written_pages().len() as u64 == pages,
            "every page was rewritten after the snapshot and preserved"
        );
    }
}

#[test]
fn rollback_restores_exactly_and_touches_only_written_pages() {
    for in_thread in [false, true] {
        let t = Tracker::builder()
            .in_thread_faults(in_thread)
            .build()
            .unwrap();
        let region = t.map_anonymous(8 * MIB).unwrap();
        let pages = region.page_count();
        let w = region.as_atomic_u64();
        for (i, word) in w.iter().enumerate() {
            word.store(i as u64 * 31, SeqCst);
        }
        // SAFETY: no other thread touches the region in this test.
        let reference = unsafe { region.as_slice() }.to_vec();
        let snap = region.snapshot().unwrap();
        let mut rng = Rng(42);
        for round in 0..3 {
            let mut written = std::collections::BTreeSet::new();
            for _ in 0..300 {
                let p = rng.below(pages);
                written.insert(p);
                touch(&region, p, 0xDEAD_0000 + round);
            }
            let restored = region.rollback(&snap).unwrap();
            // Each rollback rewrites the pages written since the previous one (issue 12).
            assert_eq!(restored as usize, written.len());
            assert!(written.iter().all(|p| snap.written_pages().contains(p)));
            // SAFETY: as above.
            let now = unsafe { region.as_slice() };
            assert!(now == &reference[..], "round {round}: byte-exact rollback");
        }
        let other = t.map_anonymous(4096).unwrap();
        assert_eq!(other.rollback(&snap), Err(SnapshotError::WrongRegion));
    }
}

#[test]
fn epoch_read_errors_are_typed() {
    let t = Tracker::builder().build().unwrap();
    let region = t.map_anonymous(8 * 4096).unwrap();
    touch(&region, 2, 1);
    let e = region.cut().unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(
        e.read_page(3, &mut buf),
        Err(SnapshotError::NotInEpoch { page: 3 })
    );
    assert_eq!(
        e.read_page(99, &mut buf),
        Err(SnapshotError::OutOfRange { page: 99, pages: 8 })
    );
    assert!(matches!(
        e.read_page(2, &mut [0u8; 10]),
        Err(SnapshotError::BadBuffer { .. })
    ));
    e.read_page(2, &mut buf).unwrap();
    assert_eq!(
        e.read_page(2, &mut buf),
        Err(SnapshotError::AlreadyConsumed { page: 2 })
    );
}

#[test]
fn madvise_after_cut_is_an_error_not_zeros() {
    let t = Tracker::builder().build().unwrap();
    let region = t.map_anonymous(16 * 4096).unwrap();
    for p in 0..16 {
        touch(&region, p, 5);
    }
    let e = region.cut().unwrap();
    // SAFETY: pages 4..8 of the region; no references into them are held.
    let r = unsafe {
        libc::madvise(
            region.as_ptr().add(4 * 4096).cast(),
            4 * 4096,
            libc::MADV_DONTNEED,
        )
    };
    assert_eq!(r, 0);
    let mut buf = vec![0u8; 4096];
    for p in 0..16u64 {
        let r = e.read_page(p, &mut buf);
        if (4..8).contains(&p) {
            assert_eq!(r, Err(SnapshotError::Discarded { page: p }));
        } else {
            r.unwrap();
            assert_eq!(buf[0], 5);
        }
    }
    // Dirty tracking still covers the removed pages.
    assert!((4..8).all(|p| region.dirty_pages().unwrap().contains(p)));
}

#[test]
fn snapshot_of_shared_region_and_sequential_fault_around() {
    let t = Tracker::builder().fault_around(16).build().unwrap();
    let region = t.map_shared(4 * MIB).unwrap();
    let pages = region.page_count();
    for p in 0..pages {
        touch(&region, p, p);
    }
    let snap = region.snapshot().unwrap();
    let faults_before = t.stats().wp_faults;
    for p in 0..pages {
        touch(&region, p, 1_000_000 + p);
    }
    let faults = t.stats().wp_faults - faults_before;
    assert!(
        faults < pages / 4,
        "fault-around cut faults for a sequential writer: {faults} for {pages} pages"
    );
    let mut buf = vec![0u8; 4096];
    for p in 0..pages {
        snap.read_page(p, &mut buf).unwrap();
        assert_eq!(
            u64::from_ne_bytes(buf[..8].try_into().unwrap()),
            p,
            "page {p} as at the snapshot"
        );
    }
    let _: &Region = &region;
}

#[test]
fn snapshot_holder_rewriting_more_than_the_budget_does_not_hang() {
    for in_thread in [false, true] {
        // A snapshot keeps its copies until dropped, so it must not be subject to back-pressure:
        // the thread holding it may rewrite the whole region itself.
        let t = Tracker::builder()
            .copy_budget(MIB)
            .in_thread_faults(in_thread)
            .build()
            .unwrap();
        let region = Arc::new(t.map_anonymous(16 * MIB).unwrap());
        for p in 0..region.page_count() {
            touch(&region, p, p + 1);
        }
        let snap = region.snapshot().unwrap();
        let r2 = Arc::clone(&region);
        watchdog(
            60,
            "rewriting a snapshotted region larger than the copy budget",
            move || {
                for p in 0..r2.page_count() {
                    touch(&r2, p, 0);
                }
            },
        );
        assert_eq!(snap.written_pages().len() as u64, region.page_count());
        assert_eq!(region.rollback(&snap).unwrap(), region.page_count());
        assert_eq!(region.as_atomic_u64()[5 * WORDS_PER_PAGE].load(SeqCst), 6);
    }
}

#[test]
fn madvise_racing_copy_before_write_is_never_silently_wrong() {
    // Writers fault on an epoch's pages (copy-before-write, on the service thread or in their
    // own SIGBUS handler) while the application madvises ranges of the same pages away.
    // Every page of the epoch must read as its content at the cut, or fail with `Discarded`:
    // never the zeros of a zap that raced with a copy.
    for in_thread in [false, true] {
        let t = Tracker::builder()
            .in_thread_faults(in_thread)
            .build()
            .unwrap();
        let region = Arc::new(t.map_anonymous(256 * 4096).unwrap());
        let (mut ok, mut discarded) = (0u64, 0u64);
        for round in 1..=20u64 {
            for p in 0..256 {
                touch(&region, p, round);
            }
            let e = region.cut().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let writers: Vec<_> = (0..2u64)
                .map(|k| {
                    let (r, stop) = (Arc::clone(&region), Arc::clone(&stop));
                    std::thread::spawn(move || {
                        let mut rng = Rng(round * 31 + k);
                        while !stop.load(SeqCst) {
                            touch(&r, rng.below(256), 1000 + round);
                        }
                    })
                })
                .collect();
            let mut rng = Rng(round);
            for _ in 0..20 {
                let first = rng.below(252) as usize;
                // SAFETY: pages first..first+4 of the region; no references into them.
                let rc = unsafe {
                    libc::madvise(
                        region.as_ptr().add(first * 4096).cast(),
                        4 * 4096,
                        libc::MADV_DONTNEED,
                    )
                };
                assert_eq!(rc, 0);
                std::thread::yield_now();
            }
            stop.store(true, SeqCst);
            for w in writers {
                w.join().unwrap();
            }
            let mut buf = vec![0u8; 4096];
            for p in 0..256u64 {
                match e.read_page(p, &mut buf) {
                    Ok(()) => {
                        let v = u64::from_ne_bytes(buf[..8].try_into().unwrap());
                        assert_eq!(v, round, "in_thread {in_thread}: page {p} round {round}");
                        ok += 1;
                    }
                    Err(SnapshotError::Discarded { .. }) => discarded += 1,
                    Err(other) => panic!("page {p}: {other}"),
                }
            }
        }
        println!("in_thread {in_thread}: {ok} pages as at the cut, {discarded} discarded");
        assert!(discarded > 0, "the madvise calls hit epoch pages");
    }
}
