//! Helpers specific to the core tests: the dirty-set and consistency oracles every backend
//! must pass. The generic helpers (RNG, watchdog, mappings, fork) come from
//! `writewatch-testkit`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use writewatch_core::Region;

pub const WORDS_PER_PAGE: usize = 4096 / 8;

#[allow(unused_imports)] // each test crate uses a subset
pub use writewatch_testkit::{fork_and_write, watchdog, Rng};

/// A fresh private anonymous read-write mapping of `len` bytes owned by the caller (who
/// unmaps it); panics if the kernel refuses.
pub fn anon_mmap(len: usize) -> *mut libc::c_void {
    writewatch_testkit::Mmap::new(len).into_raw().cast()
}

/// Writes one word of `page` (volatile-equivalent: an atomic store the compiler cannot move).
pub fn touch(region: &Region, page: u64, value: u64) {
    region.as_atomic_u64()[page as usize * (region.page_size() / 8)].store(value, SeqCst);
}

/// Exactness in lock-step: writers write random pages, then the main thread cuts while they
/// wait at a barrier. Every epoch's dirty set must equal exactly the pages written in it.
pub fn lockstep_exact(
    region: Arc<Region>,
    threads: usize,
    cuts: usize,
    writes_per_round: usize,
    exact: bool,
) {
    let pages = region.page_count();
    let barrier = Arc::new(Barrier::new(threads + 1));
    let written: Arc<Vec<std::sync::Mutex<Vec<u64>>>> = Arc::new(
        (0..threads)
            .map(|_| std::sync::Mutex::new(Vec::new()))
            .collect(),
    );
    let mut handles = Vec::new();
    for t in 0..threads {
        let (region, barrier, written) = (
            Arc::clone(&region),
            Arc::clone(&barrier),
            Arc::clone(&written),
        );
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) * 0x1234_5678));
            for _ in 0..cuts {
                let mut mine = Vec::with_capacity(writes_per_round);
                for _ in 0..writes_per_round {
                    let p = rng.below(pages);
                    touch(&region, p, rng.next());
                    mine.push(p);
                }
                *written[t].lock().unwrap() = mine;
                barrier.wait(); // round written
                barrier.wait(); // cut taken
            }
        }));
    }
    // Epoch 0 may contain setup writes: close it first.
    for round in 0..cuts {
        barrier.wait();
        let epoch = region.cut().expect("cut");
        let mut expect = std::collections::BTreeSet::new();
        for w in written.iter() {
            expect.extend(w.lock().unwrap().iter().copied());
        }
        let got: std::collections::BTreeSet<u64> = epoch.dirty().iter().collect();
        let missed: Vec<_> = expect.difference(&got).take(10).collect();
        assert!(
            missed.is_empty(),
            "round {round}: {} written pages not reported, e.g. {missed:?}",
            expect.difference(&got).count()
        );
        if exact {
            let extra: Vec<_> = got.difference(&expect).take(10).collect();
            assert!(
                extra.is_empty(),
                "round {round}: {} unwritten pages reported, e.g. {extra:?}",
                got.difference(&expect).count()
            );
        }
        barrier.wait();
    }
    for h in handles {
        h.join().unwrap();
    }
}

/// The racing oracle: writers write continuously while the main thread cuts `cuts` times.
/// Each write W records (page, cuts completed before W, cuts started after W); W must be in
/// the dirty set of some epoch in that interval (a write racing a cut may land in either
/// adjacent epoch, never in neither). With `exact`, every reported page must be explained by
/// a write in the same window. Returns (writes, misses, over-reports).
pub fn racing_oracle(
    region: Arc<Region>,
    threads: usize,
    cuts: usize,
    exact: bool,
) -> (u64, u64, u64) {
    let pages = region.page_count();
    let started = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Epoch numbers are relative to the first cut of this test.
    let base = region.epoch();
    let mut handles = Vec::new();
    for t in 0..threads {
        let (region, started, done, stop) = (
            Arc::clone(&region),
            Arc::clone(&started),
            Arc::clone(&done),
            Arc::clone(&stop),
        );
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ ((t as u64 + 7) * 0x9E37_79B9));
            let mut log: Vec<(u64, u64, u64)> = Vec::new();
            // At least one write per thread, however late the thread is scheduled (a loaded
            // CI machine once ran all 20 cuts before any writer wrote: `w > 0` failed).
            loop {
                let p = rng.below(pages);
                let d0 = done.load(SeqCst);
                touch(&region, p, rng.next());
                let s1 = started.load(SeqCst);
                log.push((p, d0, s1));
                if log.len() % 64 == 0 {
                    std::thread::yield_now();
                }
                if stop.load(SeqCst) {
                    break;
                }
            }
            log
        }));
    }
    let mut sets = Vec::new();
    let t0 = Instant::now();
    for _ in 0..cuts {
        std::thread::sleep(Duration::from_millis(2));
        started.fetch_add(1, SeqCst);
        let e = region.cut().expect("cut");
        done.fetch_add(1, SeqCst);
        assert_eq!(e.number() - base, sets.len() as u64);
        sets.push(e.into_dirty());
    }
    stop.store(true, SeqCst);
    let logs: Vec<Vec<(u64, u64, u64)>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // A final cut catches writes after the last timed cut.
    started.fetch_add(1, SeqCst);
    sets.push(region.cut().expect("final cut").into_dirty());
    let _ = t0;
    let mut writes = 0;
    let mut misses = 0;
    // written[e] = pages with at least one write whose window includes e.
    let mut explained: Vec<std::collections::HashSet<u64>> = vec![Default::default(); sets.len()];
    for log in &logs {
        for &(p, d0, s1) in log {
            writes += 1;
            let hi = (s1 as usize).min(sets.len() - 1);
            if !(d0 as usize..=hi).any(|e| sets[e].contains(p)) {
                misses += 1;
            }
            if exact {
                for e in explained.iter_mut().take(hi + 1).skip(d0 as usize) {
                    e.insert(p);
                }
            }
        }
    }
    let mut over = 0;
    if exact {
        for (e, set) in sets.iter().enumerate() {
            over += set.iter().filter(|p| !explained[e].contains(p)).count() as u64;
        }
    }
    (writes, misses, over)
}

// ------------------------------------------------------------------ consistency oracle

/// Word slots per page: slot `t` of every page belongs to writer thread `t`.
pub const SLOTS: usize = 4;

/// The stamp writer `t` stores with its `seq`-th write.
pub fn stamp(t: usize, seq: u64) -> u64 {
    ((t as u64 + 1) << 40) | seq
}

/// What [`consistency_oracle`] saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Consistency {
    pub cuts: u64,
    pub writes: u64,
    /// Pages whose content at a cut differs from the replay of every thread's prefix.
    pub violations: u64,
    /// Pages with bytes outside the stamp slots (a torn or foreign copy).
    pub torn: u64,
    /// Unreadable epoch pages, and cuts that lost writes an earlier cut had.
    pub lost: u64,
}

/// The consistency oracle of docs/design.md section 4 (claims 1 and 2), shared by the core
/// tests (a fixed number of cuts, asserted) and the stress suite (a volume target, counted).
///
/// `threads` (<= [`SLOTS`]) writers stamp `(thread, seq)` into their own word of random pages
/// of `region`; after each cut, the epoch is read as it was at the cut (optionally slowly:
/// `slow_reader` between pages) and, for every thread, the largest included `seq` defines the
/// prefix that must have been captured: the image must equal the replay of exactly those
/// writes. Cuts continue until `done(cuts, writes)`.
pub fn consistency_oracle(
    region: Arc<Region>,
    threads: usize,
    slow_reader: Option<Duration>,
    mut done: impl FnMut(u64, u64) -> bool,
) -> Consistency {
    assert!(threads <= SLOTS);
    let pages = region.page_count() as usize;
    region.cut().unwrap();
    // Pace the writers: rewrites of already-writable pages cost nothing, and the log (4
    // bytes per write) must stay small.
    let mut w = StampedWriters::start(
        &region,
        threads,
        256,
        Duration::from_micros(200),
        0xABCD_EF01,
    );
    let mut r = Consistency::default();
    let mut image = vec![[0u64; SLOTS]; pages];
    let mut touched: Vec<usize> = Vec::new();
    loop {
        if done(r.cuts, w.writes()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
        let epoch = match region.cut() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("cut failed: {e}");
                r.violations += 1;
                break;
            }
        };
        r.cuts += 1;
        touched.clear();
        let mut reader = epoch.reader();
        while let Some(x) = reader.next_page() {
            let (p, bytes) = match x {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("cut {}: page unreadable: {e}", r.cuts);
                    r.lost += 1;
                    continue;
                }
            };
            for t in 0..SLOTS {
                image[p as usize][t] =
                    u64::from_ne_bytes(bytes[t * 8..t * 8 + 8].try_into().unwrap());
            }
            if bytes[SLOTS * 8..].iter().any(|b| *b != 0) {
                r.torn += 1;
            }
            touched.push(p as usize);
            if let Some(d) = slow_reader {
                std::thread::sleep(d);
            }
        }
        drop(reader);
        drop(epoch);
        w.replay_to(&image, &mut touched, &mut r);
        // Every page either side changed must agree: the cut is exactly the prefixes.
        w.check(&image, touched.iter().copied(), &mut r, "snapshot");
    }
    r.writes = w.finish();
    r
}

/// `threads` writer threads stamping `(thread, seq)` into their own word (slot) of random
/// pages of a region, logging each page so that a checker can replay any prefix while they
/// run: the writer side of the consistency oracles (cuts, snapshots, forks).
pub struct StampedWriters {
    stop: Arc<AtomicBool>,
    /// `logs[t][seq]`: the page thread t's write `seq` went to (append-only; index 0 unused).
    logs: Arc<Vec<std::sync::Mutex<Vec<u32>>>>,
    /// How far thread t's log is published, stored AFTER the writes it covers.
    published: Arc<Vec<AtomicU64>>,
    hs: Vec<std::thread::JoinHandle<()>>,
    /// The prefix of each thread replayed into `expect` so far.
    replayed: Vec<u64>,
    /// Per page, per slot: the replayed content.
    pub expect: Vec<[u64; SLOTS]>,
}

impl StampedWriters {
    /// Starts the writers; each publishes its log every `batch` writes, then sleeps `pause`.
    pub fn start(
        region: &Arc<Region>,
        threads: usize,
        batch: usize,
        pause: Duration,
        seed: u64,
    ) -> StampedWriters {
        assert!(threads <= SLOTS);
        let pages = region.page_count() as usize;
        let stop = Arc::new(AtomicBool::new(false));
        let logs: Arc<Vec<std::sync::Mutex<Vec<u32>>>> = Arc::new(
            (0..threads)
                .map(|_| std::sync::Mutex::new(vec![u32::MAX]))
                .collect(),
        );
        let published: Arc<Vec<AtomicU64>> =
            Arc::new((0..threads).map(|_| AtomicU64::new(0)).collect());
        let mut hs = Vec::new();
        for t in 0..threads {
            let (region, stop, logs, published) = (
                Arc::clone(region),
                Arc::clone(&stop),
                Arc::clone(&logs),
                Arc::clone(&published),
            );
            hs.push(std::thread::spawn(move || {
                let words = region.as_atomic_u64();
                let mut rng = Rng(seed + t as u64 * 7919);
                let mut seq = 1u64;
                let mut local = Vec::with_capacity(batch);
                while !stop.load(SeqCst) {
                    let p = rng.below(pages as u64) as usize;
                    local.push(p as u32);
                    words[p * WORDS_PER_PAGE + t].store(stamp(t, seq), SeqCst);
                    if local.len() == batch {
                        logs[t].lock().unwrap().append(&mut local);
                        published[t].store(seq, SeqCst);
                        std::thread::sleep(pause);
                    }
                    seq += 1;
                }
                logs[t].lock().unwrap().append(&mut local);
                published[t].store(seq - 1, SeqCst);
            }));
        }
        StampedWriters {
            stop,
            logs,
            published,
            hs,
            replayed: vec![0; threads],
            expect: vec![[0u64; SLOTS]; pages],
        }
    }

    /// Writes published so far (all threads).
    pub fn writes(&self) -> u64 {
        self.published.iter().map(|p| p.load(SeqCst)).sum()
    }

    /// Replays, per thread, the prefix that `image` includes (its largest `seq` in that
    /// thread's slot) into [`expect`](Self::expect), pushing the pages replayed onto
    /// `touched`; a prefix shorter than one replayed before counts as `lost`.
    pub fn replay_to(
        &mut self,
        image: &[[u64; SLOTS]],
        touched: &mut Vec<usize>,
        r: &mut Consistency,
    ) {
        for t in 0..self.replayed.len() {
            let l = image
                .iter()
                .map(|w| w[t] & ((1 << 40) - 1))
                .max()
                .unwrap_or(0);
            if l < self.replayed[t] {
                r.lost += 1; // a later image lost writes an earlier one had
                continue;
            }
            // Wait until the writer has published its log that far (it is past the cut).
            while self.published[t].load(SeqCst) < l && !self.hs[t].is_finished() {
                std::thread::yield_now();
            }
            let log = self.logs[t].lock().unwrap();
            for seq in self.replayed[t] + 1..=l {
                let p = log[seq as usize] as usize;
                self.expect[p][t] = stamp(t, seq);
                touched.push(p);
            }
            self.replayed[t] = l;
        }
    }

    /// Counts every slot of `pages` where `image` differs from the replay as a violation
    /// (the first few are printed, labelled `what`).
    pub fn check(
        &self,
        image: &[[u64; SLOTS]],
        pages: impl IntoIterator<Item = usize>,
        r: &mut Consistency,
        what: &str,
    ) {
        let threads = self.replayed.len();
        for p in pages {
            let slots = image[p].iter().zip(&self.expect[p]).take(threads);
            for (t, (got, want)) in slots.enumerate() {
                if got != want {
                    if r.violations < 5 {
                        eprintln!(
                            "cut {}: page {p} slot {t}: {what} {got:#x} != replay {want:#x}",
                            r.cuts
                        );
                    }
                    r.violations += 1;
                }
            }
        }
    }

    /// Stops and joins the writers; returns the number of writes.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, SeqCst);
        for h in std::mem::take(&mut self.hs) {
            h.join().unwrap();
        }
        self.writes()
    }
}

/// A file of `len` bytes at `dir/writewatch-{name}-{pid}`, pattern-filled (page `p` holds
/// `p + 1` in every word), opened read-write.
#[allow(dead_code)]
pub fn pattern_file(
    dir: &std::path::Path,
    name: &str,
    len: usize,
) -> (std::path::PathBuf, std::fs::File) {
    let path = dir.join(format!("writewatch-{name}-{}", std::process::id()));
    let mut bytes = vec![0u8; len];
    for (i, w) in bytes.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&((i / 512) as u64 + 1).to_le_bytes());
    }
    std::fs::write(&path, &bytes).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    (path, f)
}
