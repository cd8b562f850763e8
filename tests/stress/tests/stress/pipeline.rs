//! Suite `pipeline`: snapshot + checkpoint + restore of adjacent regions with writers running.

use super::*;

// --------------------------------------------------------------------------------- pipeline

/// Snapshot + checkpoint + restore: several regions adopted from adjacent slices of one
/// mapping, sizes at run/buffer boundaries, writers running across all of them (writes
/// straddle region borders); each epoch is cut with writers quiesced (reference = the memory
/// then), saved with `save_epoch` while writers run again, restored from disk and compared.
pub(super) fn pipeline(mode: Mode) -> Summary {
    let mut s = Summary::new("pipeline", "sync");
    let writers = 2usize;
    s.threads = writers as u64;
    let iterations = mode.pick(3, 30);
    let epochs_per = mode.pick(8, 30);
    let tracker = tracker(Backend::SyncUffd);
    let sizes_all = boundary_page_counts();
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5EED_0001);
    for it in 0..iterations {
        let nreg = 2 + rng.below(4) as usize;
        let sizes: Vec<u64> = (0..nreg)
            .map(|i| {
                if i == 0 {
                    sizes_all[(it * 3) % sizes_all.len()]
                } else {
                    rng.pick(&sizes_all)
                }
            })
            .collect();
        let total: u64 = sizes.iter().sum();
        let len = total as usize * PS;
        // Owned by this suite, unmapped below after every region over it is dropped and every
        // writer joined.
        let base = common::anon_mmap(len);
        let base = base as usize;
        {
            // SAFETY: the mapping is ours and nothing else references it yet.
            let init = unsafe { std::slice::from_raw_parts_mut(base as *mut u64, len / 8) };
            for (i, w) in init.iter_mut().enumerate() {
                if (i / WPP) % 3 != 1 {
                    *w = (it as u64) << 48 | i as u64;
                }
            }
        }
        let mut regions = Vec::new();
        let mut stores = Vec::new();
        let mut off = 0usize;
        for (i, &n) in sizes.iter().enumerate() {
            // SAFETY: adjacent, non-overlapping slices of our mapping, which outlives the
            // regions (dropped before munmap).
            let r = unsafe { tracker.adopt((base + off) as *mut u8, n as usize * PS) }
                .expect("adopt adjacent slice");
            off += n as usize * PS;
            regions.push(r);
            let dir = tmp.path().join(format!("it{it}-r{i}"));
            stores.push(Store::create(&dir).unwrap());
        }
        // hashes[r][epoch] = per-page hashes of the reference.
        let mut hashes: Vec<Vec<Vec<u64>>> = vec![Vec::new(); nreg];
        let mut prev: Vec<Option<Vec<u8>>> = vec![None; nreg];
        let gate = Arc::new(Gate::new());
        let ops = Arc::new(AtomicU64::new(0));
        let hs: Vec<_> = (0..writers)
            .map(|w| {
                let (gate, ops) = (Arc::clone(&gate), Arc::clone(&ops));
                let seed = rng.next();
                std::thread::spawn(move || {
                    // SAFETY: the mapping outlives this thread (joined before munmap); all
                    // accesses are atomic.
                    let words =
                        unsafe { std::slice::from_raw_parts(base as *const AtomicU64, len / 8) };
                    let pages = (len / PS) as u64;
                    let mut rng = Rng(seed);
                    let mut n = 0u64;
                    while gate.pass() {
                        match rng.below(8) {
                            // A run of pages near the 256-page run/buffer boundary.
                            0 => {
                                let run = rng.pick(&[1u64, 255, 256, 257, 64, 65]);
                                let p0 = rng.below(pages);
                                for p in p0..(p0 + run).min(pages) {
                                    words[p as usize * WPP + w].store(rng.next(), SeqCst);
                                    n += 1;
                                }
                            }
                            // A whole page back to zero (a hole / zero run in the segment).
                            1 => {
                                let p = rng.below(pages) as usize;
                                for k in 0..WPP {
                                    words[p * WPP + k].store(0, SeqCst);
                                }
                                n += WPP as u64;
                            }
                            _ => {
                                let i = rng.below((len / 8) as u64) as usize;
                                words[i].store(rng.next(), SeqCst);
                                n += 1;
                            }
                        }
                        if n % 64 < 2 {
                            std::thread::sleep(Duration::from_micros(100));
                        }
                    }
                    ops.fetch_add(n, SeqCst);
                })
            })
            .collect();
        for _ in 0..epochs_per {
            std::thread::sleep(Duration::from_millis(rng.below(4)));
            if !gate.pause(writers, Duration::from_secs(20)) {
                s.hangs += 1;
                break;
            }
            let mut refs = Vec::new();
            let mut eps = Vec::new();
            for r in &regions {
                // SAFETY: every writer is parked at the gate: nothing writes the region.
                refs.push(unsafe { r.as_slice() }.to_vec());
                eps.push(r.cut().expect("cut"));
                s.cuts += 1;
            }
            gate.resume();
            for (i, (ep, reference)) in eps.into_iter().zip(refs).enumerate() {
                // No under-report: every page whose content changed since the previous cut
                // is in the dirty set.
                if let Some(p) = &prev[i] {
                    for (pg, (a, b)) in p.chunks(PS).zip(reference.chunks(PS)).enumerate() {
                        if a != b && !ep.dirty().contains(pg as u64) {
                            s.lost += 1;
                        }
                    }
                } else if ep.dirty().len() as u64 != sizes[i] {
                    s.lost += 1; // an adopted region's first epoch reports every page
                }
                let number = ep.number();
                match save_epoch(&mut stores[i], &ep) {
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("save_epoch region {i} epoch {number}: {e}");
                        s.lost += 1;
                        continue;
                    }
                }
                drop(ep);
                let got = stores[i].restore(number).expect("restore");
                let got = got.as_slice();
                for (a, b) in got.chunks(PS).zip(reference.chunks(PS)) {
                    if a != b {
                        s.torn += 1;
                    }
                }
                assert_eq!(hashes[i].len() as u64, number);
                hashes[i].push(reference.chunks(PS).map(page_hash).collect());
                prev[i] = Some(reference);
            }
        }
        gate.stop();
        for h in hs {
            h.join().unwrap();
        }
        s.ops += ops.load(SeqCst);
        drop(regions);
        // SAFETY: every region over the mapping is dropped and every writer joined.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
        // Reopen every store from disk: every epoch restores to its reference; verify is
        // clean; compaction keeps the head.
        for (i, st) in stores.into_iter().enumerate() {
            let dir = st.path().to_path_buf();
            drop(st);
            let mut st = Store::open(&dir).expect("reopen");
            let report = st.verify().expect("verify");
            if !report.is_ok() {
                eprintln!("verify {dir:?}: {report:?}");
                s.violations += 1;
            }
            for (e, h) in hashes[i].iter().enumerate() {
                let m = st.restore(e as u64).expect("restore after reopen");
                for (a, b) in m.as_slice().chunks(PS).zip(h) {
                    if page_hash(a) != *b {
                        s.torn += 1;
                    }
                }
            }
            st.compact().expect("compact");
            if let Some(h) = hashes[i].last() {
                let m = st.restore_latest().expect("restore latest after compact");
                for (a, b) in m.as_slice().chunks(PS).zip(h) {
                    if page_hash(a) != *b {
                        s.torn += 1;
                    }
                }
            }
        }
    }
    s
}
