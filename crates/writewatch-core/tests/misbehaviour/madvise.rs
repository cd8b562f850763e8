//! `madvise(MADV_DONTNEED)` and `madvise(MADV_FREE)` on tracked pages.

use super::*;

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
            dontneed(&region, first, n);
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

/// MADV_FREE on a lazily armed region (the default for `map_anonymous`): its REMOVE event
/// looks like MADV_DONTNEED's, but no zap follows. Regressions:
/// - the service thread waited for the zap up to its 2 s bound, so the next write's fault
///   stalled 2 s (liveness bound checked here: 1 s, with ~5 ms expected);
/// - the pages, still present, were then taken as known-empty: when the kernel discarded them
///   in a *later* epoch (memory pressure, forced here with MADV_PAGEOUT) their content became
///   zero without any fault or event, and that epoch did not report them (under-report).
///   Oracle: the content itself, before and after.
#[test]
fn madvise_free_in_a_lazy_region_is_not_a_stall_and_a_later_discard_is_reported() {
    let t = sync_tracker();
    let region = stamped_then_freed(&t);
    let t0 = std::time::Instant::now();
    touch(&region, 3, 1);
    let stalled = t0.elapsed();
    assert!(
        stalled < std::time::Duration::from_secs(1),
        "the write after MADV_FREE waited {stalled:?} for a zap that never comes"
    );
    // The epoch of the MADV_FREE: its pages count as written (over-report allowed).
    let e = region.cut().unwrap();
    assert!(e.dirty().contains(3));
    drop(e);
    discard_is_reported(&region, "lazy region");
    // Writes are still tracked exactly afterwards.
    touch(&region, 7, 9);
    touch(&region, 40, 9);
    let d: Vec<u64> = region.cut().unwrap().dirty().iter().collect();
    assert!(d.contains(&7) && d.contains(&40), "{d:?}");
}

/// A snapshot taken after MADV_FREE on a lazily armed region, and the kernel discarding the
/// lazily freed pages after it (MADV_PAGEOUT here, memory pressure in life): each page of the
/// snapshot reads as its content at the snapshot or says `Discarded`, never the zeros the
/// discard left. Before the fix 61 of 64 pages read zeros, silently (the range had been taken
/// as zapped, so its present pages were not re-checked).
#[test]
fn snapshot_after_madvise_free_then_discard_is_never_silently_wrong() {
    // With and without a cut between the discard and the reads: the cut finds the emptied
    // pages and re-protects them (a marker), after which they look protected (review
    // finding: they read as zeros then).
    for cut_between in [false, true] {
        let t = sync_tracker();
        let region = stamped_then_freed(&t);
        touch(&region, 3, 1);
        let snap = region.snapshot().unwrap();
        // SAFETY: as above.
        let r = unsafe { libc::madvise(region.as_ptr().cast(), 64 * PS, libc::MADV_PAGEOUT) };
        assert_eq!(r, 0);
        if cut_between {
            drop(region.cut().unwrap());
        }
        let mut buf = vec![0u8; PS];
        let (mut exact, mut discarded) = (0, 0);
        for p in 0..64u64 {
            match snap.read_page(p, &mut buf) {
                Ok(()) => {
                    let v = u64::from_ne_bytes(buf[..8].try_into().unwrap());
                    let want = if p == 3 { 1 } else { 0xA0 + p };
                    assert_eq!(
                        v, want,
                        "snapshot page {p} (cut between: {cut_between}): silently wrong"
                    );
                    exact += 1;
                }
                Err(_) => discarded += 1,
            }
        }
        println!("snapshot after MADV_FREE + discard (cut between: {cut_between}): {exact} exact, {discarded} discarded");
    }
}

/// Two threads reading fresh pages of a lazily armed region near each other while a snapshot
/// is alive: a fault whose page another fault's read-ahead filled in the same batch is not
/// "content lost" (review finding on the MADV_FREE fix: that gave a spurious `Discarded`).
/// Every page reads as zeros from the snapshot, and nothing is reported dirty.
#[test]
fn concurrent_first_reads_near_each_other_are_not_lost_content() {
    let t = sync_tracker();
    let pages = 4096u64;
    let region = Arc::new(t.map_anonymous(pages as usize * PS).unwrap());
    drop(region.cut().unwrap());
    let snap = region.snapshot().unwrap();
    let threads: Vec<_> = (0..2u64)
        .map(|k| {
            let region = Arc::clone(&region);
            std::thread::spawn(move || {
                let w = region.as_atomic_u64();
                let mut rng = Rng(100 + k);
                for _ in 0..2000 {
                    let p = rng.below(pages) as usize;
                    assert_eq!(w[p * WORDS_PER_PAGE].load(SeqCst), 0);
                }
            })
        })
        .collect();
    for h in threads {
        h.join().unwrap();
    }
    let mut buf = vec![0u8; PS];
    for p in 0..pages {
        snap.read_page(p, &mut buf)
            .unwrap_or_else(|e| panic!("page {p}: {e} (only read, never written or madvised)"));
        assert!(buf.iter().all(|&b| b == 0));
    }
    assert!(
        region.cut().unwrap().dirty().is_empty(),
        "reads are not writes"
    );
}

/// The same later discard on a fork clone's own pages (review finding: a clone's missing
/// fault skipped the lost-content check, so the discard was not reported).
#[test]
fn madvise_free_on_a_fork_clone_then_a_later_discard_is_reported() {
    let t = sync_tracker();
    let origin = t.map_anonymous(64 * PS).unwrap();
    for pg in 0..64 {
        touch(&origin, pg, 0x10 + pg);
    }
    let clone = origin.fork().unwrap();
    for pg in 0..64 {
        touch(&clone, pg, 0xC0 + pg); // the clone owns every page now
    }
    drop(clone.cut().unwrap());
    // SAFETY: the clone's whole range; no references into it are held.
    let r = unsafe { libc::madvise(clone.as_ptr().cast(), 64 * PS, libc::MADV_FREE) };
    assert_eq!(r, 0);
    drop(clone.cut().unwrap());
    discard_is_reported(&clone, "fork clone");
    // The origin is untouched.
    for pg in 0..64u64 {
        assert_eq!(
            origin.as_atomic_u64()[pg as usize * WORDS_PER_PAGE].load(SeqCst),
            0x10 + pg
        );
    }
}

/// Discards the lazily freed pages of `region` (64 pages, no other writer) with MADV_PAGEOUT,
/// as memory pressure would, in a new epoch, and checks that the next cut reports every page
/// whose content changed (oracle: the content before and after).
fn discard_is_reported(region: &writewatch_core::Region, what: &str) {
    // SAFETY: no other thread writes the region in these tests.
    let before = unsafe { region.as_slice() }.to_vec();
    // SAFETY: the whole region; no references into it are held.
    let r = unsafe { libc::madvise(region.as_ptr().cast(), 64 * PS, libc::MADV_PAGEOUT) };
    assert_eq!(r, 0);
    // SAFETY: as above (the reads fault the emptied pages back in).
    let after = unsafe { region.as_slice() }.to_vec();
    let changed: Vec<u64> = (0..64u64)
        .filter(|&p| {
            let r = p as usize * PS..(p as usize + 1) * PS;
            before[r.clone()] != after[r]
        })
        .collect();
    let d: BTreeSet<u64> = region.cut().unwrap().dirty().iter().collect();
    println!(
        "{what}: {} pages changed by a later discard, {} reported",
        changed.len(),
        d.len()
    );
    let missed: Vec<&u64> = changed.iter().filter(|p| !d.contains(p)).collect();
    assert!(
        missed.is_empty(),
        "{what}: discarded in a later epoch, not reported: {missed:?}"
    );
}

/// A lazily armed region of 64 pages, page `p` stamped `0xA0 + p`, cut, then `MADV_FREE`d
/// whole (the pages stay present until the kernel discards them).
fn stamped_then_freed(t: &writewatch_core::Tracker) -> writewatch_core::Region {
    let region = t.map_anonymous(64 * PS).unwrap();
    for pg in 0..64 {
        touch(&region, pg, 0xA0 + pg);
    }
    drop(region.cut().unwrap());
    // SAFETY: the whole region; no references into it are held.
    let r = unsafe { libc::madvise(region.as_ptr().cast(), 64 * PS, libc::MADV_FREE) };
    assert_eq!(r, 0);
    region
}

/// `prepare_overwrite` on a lazily armed region while another thread `madvise`s part of it
/// away: the zero fill stops (`EAGAIN`) while the REMOVE is pending, the service thread handles
/// the REMOVE (which forgets the range's pages) and the fill goes on, mapping pages of that
/// range again. Those pages have content from then on and must be known to have it: before
/// the fix (found by review, 2026-11-30) they were not, so a later `MADV_DONTNEED` of them was
/// not reported and a snapshot taken before it read zeros instead of the data written.
/// Oracles: the values written, and a dirty set and snapshot checked against them. (One
/// `madvise` per round, started at a varying moment, so that no later zap empties the pages
/// again before the check.)
#[test]
fn prepare_overwrite_racing_madvise_keeps_every_page_known() {
    watchdog(
        300,
        "prepare_overwrite racing madvise",
        prepare_overwrite_racing_madvise,
    );
}

fn prepare_overwrite_racing_madvise() {
    const PAGES: usize = 4096;
    let mut rng = Rng(29);
    for round in 0..200u64 {
        let t = writewatch_core::Tracker::builder().build().unwrap();
        let region = Arc::new(t.map_anonymous(PAGES * PS).unwrap());
        let go = Arc::new(std::sync::Barrier::new(2));
        let delay = std::time::Duration::from_nanos(rng.below(60_000));
        let zap = {
            let (go, r) = (Arc::clone(&go), Arc::clone(&region));
            std::thread::spawn(move || {
                go.wait();
                let t0 = std::time::Instant::now();
                while t0.elapsed() < delay {
                    std::hint::spin_loop();
                }
                dontneed(&r, PAGES / 2, PAGES / 2);
            })
        };
        go.wait();
        let r = region.prepare_overwrite();
        zap.join().unwrap();
        r.unwrap();
        for p in 0..PAGES {
            touch(&region, p as u64, round * 10_000 + p as u64 + 1);
        }
        drop(region.cut().unwrap());
        let snap = region.snapshot().unwrap();
        dontneed(&region, PAGES / 2, PAGES / 2);
        let d = region.cut().unwrap();
        let mut buf = vec![0u8; PS];
        for p in PAGES / 2..PAGES {
            assert!(
                d.dirty().contains(p as u64),
                "round {round}: page {p} was emptied by madvise but is not reported"
            );
            if snap.read_page(p as u64, &mut buf).is_ok() {
                assert_eq!(
                    u64::from_ne_bytes(buf[..8].try_into().unwrap()),
                    round * 10_000 + p as u64 + 1,
                    "round {round}: snapshot page {p}"
                );
            }
        }
    }
}

/// Readers going through a default (lazily armed) region in order, so that read-ahead
/// installs zeros ahead of them, while the main thread writes random pages and another thread
/// `madvise(MADV_DONTNEED)`s random ranges. Oracle, per round, on the content itself: every
/// page whose bytes changed between two quiet moments is in the next cut's dirty set, and a
/// snapshot taken at the first moment reads each page as it was then, or says `Discarded`;
/// never other bytes.
#[test]
fn read_ahead_racing_writes_and_madvise_is_never_silently_wrong() {
    watchdog(300, "read-ahead racing madvise", || {
        const PAGES: usize = 1024;
        let t = writewatch_core::Tracker::builder().build().unwrap();
        let region = Arc::new(t.map_anonymous(PAGES * PS).unwrap());
        let mut rng = Rng(41);
        drop(region.cut().unwrap());
        for round in 0..30u64 {
            // SAFETY: quiet: no other thread touches the region now.
            let before = unsafe { region.as_slice() }.to_vec();
            let snap = region.snapshot().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let reader = {
                let (r, stop) = (Arc::clone(&region), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let w = r.as_atomic_u64();
                    let mut sum = 0u64;
                    while !stop.load(SeqCst) {
                        for p in 0..PAGES {
                            sum = sum.wrapping_add(w[p * (PS / 8) + 5].load(SeqCst));
                        }
                    }
                    sum
                })
            };
            let zapper = {
                let (r, stop) = (Arc::clone(&region), Arc::clone(&stop));
                let seed = rng.below(u64::MAX);
                std::thread::spawn(move || {
                    let mut rng = Rng(seed);
                    while !stop.load(SeqCst) {
                        let first = rng.below(PAGES as u64 - 16) as usize;
                        let n = 1 + rng.below(16) as usize;
                        dontneed(&r, first, n);
                        std::thread::sleep(Duration::from_micros(300));
                    }
                })
            };
            for _ in 0..200 {
                touch(
                    &region,
                    rng.below(PAGES as u64),
                    round * 1000 + 1 + rng.below(999),
                );
            }
            std::thread::sleep(Duration::from_millis(5));
            stop.store(true, SeqCst);
            reader.join().unwrap();
            zapper.join().unwrap();
            // SAFETY: quiet again.
            let after = unsafe { region.as_slice() }.to_vec();
            let d = region.cut().unwrap();
            let mut buf = vec![0u8; PS];
            for p in 0..PAGES {
                let (b, a) = (&before[p * PS..][..PS], &after[p * PS..][..PS]);
                if b != a {
                    assert!(
                        d.dirty().contains(p as u64),
                        "round {round}: page {p} changed but is not reported"
                    );
                }
                match snap.read_page(p as u64, &mut buf) {
                    Ok(_) => assert_eq!(&buf[..], b, "round {round}: snapshot page {p}"),
                    Err(SnapshotError::Discarded { .. }) => {}
                    Err(e) => panic!("round {round}: snapshot page {p}: {e}"),
                }
            }
        }
    });
}

/// `madvise(MADV_DONTNEED)` of `n` pages of `region` from page `first` (asserted to succeed).
fn dontneed(region: &writewatch_core::Region, first: usize, n: usize) {
    assert!(first + n <= region.page_count() as usize);
    // SAFETY: a page range inside the region, which `region` keeps mapped; the tests hold no
    // references into its memory (they access it through atomics and copies only).
    let rc = unsafe {
        libc::madvise(
            region.as_ptr().add(first * PS).cast(),
            n * PS,
            libc::MADV_DONTNEED,
        )
    };
    assert_eq!(rc, 0);
}
