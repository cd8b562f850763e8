//! The writewatch stress suite (issue #7). One binary, suites run one after another, each
//! under a watchdog, each printing one summary line:
//!
//! `suite=<name> backend=<b> ops=<n> cuts=<n> threads=<n> injected_faults=<n> violations=<n> lost=<n> torn=<n> hangs=<n>`
//!
//! Short mode (default, `make test`) keeps the whole binary well under 90 s; long mode
//! (`WW_STRESS=long`, `make stress`) runs the acceptance volumes. An optional argument
//! selects the suites whose name contains it. See docs/reliability.md.

#[path = "../../../crates/writewatch-core/tests/common/mod.rs"]
mod common;
#[path = "stress/views.rs"]
mod views;
use common::Rng;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use writewatch::checkpoint::Store;
use writewatch::{
    save_epoch, Backend, CutAndCopyError, CutError, MapError, Region, RegionError, SnapshotError,
    Tracker, Unavailable,
};
use writewatch_stress::{boundary_page_counts, page_hash, run_suite, within, Gate, Mode, Summary};

const PS: usize = 4096;
const WPP: usize = PS / 8;
const KILL_CHILD_ENV: &str = "WW_STRESS_KILL_CHILD";

fn main() {
    if let Ok(dir) = std::env::var(KILL_CHILD_ENV) {
        kill_child(&dir);
    }
    // The poison suite makes the service thread panic on purpose: keep its report quiet.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if !msg.contains("injected service-thread panic") {
            default_hook(info);
        }
    }));
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mode = Mode::from_env();
    let t0 = Instant::now();
    eprintln!("writewatch stress suite, mode {}", mode.name());
    let want = |name: &str| filter.as_deref().map_or(true, |f| name.contains(f));
    let mut all = Vec::new();
    // Watchdog budgets: generous against the expected run time, far below "forever".
    let wd = |short: u64, long: u64| mode.pick(short, long);
    if want("consistency") {
        all.push(run_suite("consistency", "sync", wd(60, 400), move || {
            consistency(mode, false)
        }));
        all.push(run_suite(
            "consistency-tiny-budget",
            "sync",
            wd(60, 300),
            move || consistency(mode, true),
        ));
        all.push(run_suite(
            "consistency-in-thread",
            "sync-in-thread",
            wd(60, 400),
            move || consistency_with(mode, false, true),
        ));
        all.push(run_suite(
            "consistency-in-thread-tiny-budget",
            "sync-in-thread",
            wd(60, 300),
            move || consistency_with(mode, true, true),
        ));
    }
    for b in [Backend::SyncUffd, Backend::AsyncUffd, Backend::Mprotect] {
        let name = format!("dirty-{}", b.name());
        if want(&name) {
            all.push(run_suite(&name, b.name(), wd(60, 300), move || {
                dirty(mode, b)
            }));
        }
    }
    if want("pipeline") {
        all.push(run_suite("pipeline", "sync", wd(60, 400), move || {
            pipeline(mode)
        }));
    }
    if want("kill") {
        all.push(run_suite("kill", "sync", wd(60, 400), move || kill(mode)));
    }
    for b in [Backend::SyncUffd, Backend::AsyncUffd, Backend::Mprotect] {
        let name = format!("eio-{}", b.name());
        if want(&name) {
            all.push(run_suite(&name, b.name(), wd(60, 200), move || {
                eio(mode, b)
            }));
        }
    }
    for in_thread in [false, true] {
        let sfx = if in_thread { "-in-thread" } else { "" };
        let be = if in_thread { "sync-in-thread" } else { "sync" };
        if want(&format!("rollback-madvise{sfx}")) {
            all.push(run_suite(
                &format!("rollback-madvise{sfx}"),
                be,
                wd(60, 300),
                move || views::rollback_madvise(mode, in_thread),
            ));
        }
        if want(&format!("budget-wakeups{sfx}")) {
            all.push(run_suite(
                &format!("budget-wakeups{sfx}"),
                be,
                wd(60, 300),
                move || views::budget_wakeups(mode, in_thread),
            ));
        }
        if want(&format!("rollback-fuzz{sfx}")) {
            all.push(run_suite(
                &format!("rollback-fuzz{sfx}"),
                be,
                wd(60, 300),
                move || views::rollback_fuzz(mode, in_thread),
            ));
        }
    }
    if want("poison") {
        all.push(run_suite("poison", "sync", wd(60, 300), move || {
            poison(mode)
        }));
    }
    let failed: Vec<_> = all.iter().filter(|s| !s.ok()).map(|s| &s.suite).collect();
    eprintln!(
        "stress ({}): {} suites in {:.1} s, failed: {:?}",
        mode.name(),
        all.len(),
        t0.elapsed().as_secs_f64(),
        failed
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

fn tracker(b: Backend) -> Tracker {
    Tracker::builder()
        .backend(b)
        .build()
        .unwrap_or_else(|e| panic!("backend {}: {e}", b.name()))
}

// ------------------------------------------------------------------------------ consistency

/// The consistency oracle of snapshot.rs (`oracle_every_cut`), run to a volume target and
/// counting instead of asserting: 4 writers stamp (thread, seq) into their own word of random
/// pages; every cut's image must equal, for each thread, the replay of a prefix of its
/// writes (claim 1) that never shrinks (claim 2 across cuts); bytes outside the stamp slots
/// must stay zero (a torn or foreign copy would show).
fn consistency(mode: Mode, tiny_budget: bool) -> Summary {
    consistency_with(mode, tiny_budget, false)
}

/// [`consistency`], with faults served in the writers' `SIGBUS` handler if `in_thread`.
fn consistency_with(mode: Mode, tiny_budget: bool, in_thread: bool) -> Summary {
    let threads = 4;
    let (min_cuts, min_writes, cap) = match (mode, tiny_budget) {
        (Mode::Short, false) => (60u64, 200_000u64, Duration::from_secs(15)),
        (Mode::Long, false) => (400, 6_000_000, Duration::from_secs(300)),
        (Mode::Short, true) => (15, 0, Duration::from_secs(8)),
        (Mode::Long, true) => (120, 200_000, Duration::from_secs(120)),
    };
    let mut s = Summary::new(
        match (tiny_budget, in_thread) {
            (true, false) => "consistency-tiny-budget",
            (false, false) => "consistency",
            (true, true) => "consistency-in-thread-tiny-budget",
            (false, true) => "consistency-in-thread",
        },
        if in_thread { "sync-in-thread" } else { "sync" },
    );
    s.threads = threads as u64;
    let mut b = Tracker::builder()
        .backend(Backend::SyncUffd)
        .in_thread_faults(in_thread);
    if tiny_budget {
        b = b.copy_budget(16 * PS);
    }
    let tracker = b.build().expect("sync tracker");
    let len = if tiny_budget { 4 << 20 } else { 32 << 20 };
    let region = Arc::new(tracker.map_anonymous(len).unwrap());
    let t0 = Instant::now();
    let slow = tiny_budget.then_some(Duration::from_micros(30));
    let r = common::consistency_oracle(region, threads, slow, |cuts, writes| {
        (cuts >= min_cuts && writes >= min_writes) || t0.elapsed() > cap
    });
    s.cuts = r.cuts;
    s.violations = r.violations;
    s.torn = r.torn;
    s.lost = r.lost;
    s.ops = r.writes;
    let st = tracker.stats();
    eprintln!(
        "  consistency: faults {} preserved {} deferred {}",
        st.wp_faults, st.preserved, st.deferred
    );
    if s.cuts < min_cuts || s.ops < min_writes {
        eprintln!(
            "  consistency: volume target missed: {} cuts (want {min_cuts}), {} writes (want {min_writes})",
            s.cuts, s.ops
        );
        s.violations += 1;
    }
    s
}

// ------------------------------------------------------------------------------------ dirty

/// The racing dirty-set oracle of the core tests (`common::racing_oracle`) on one backend, in
/// rounds of fresh regions (its write log grows with time).
fn dirty(mode: Mode, b: Backend) -> Summary {
    let mut s = Summary::new(&format!("dirty-{}", b.name()), b.name());
    let t = tracker(b);
    let rounds = mode.pick(3, 48);
    let mut max_threads = 0;
    for round in 0..rounds {
        let threads = [4usize, 1, 2][round % 3];
        max_threads = max_threads.max(threads);
        let len = [16usize << 20, 1 << 20, 64 << 20][round % 3];
        let region = Arc::new(t.map_anonymous(len).unwrap());
        region.cut().unwrap();
        let cuts = 40;
        let (writes, misses, over) =
            common::racing_oracle(Arc::clone(&region), threads, cuts, true);
        s.ops += writes;
        s.cuts += cuts as u64 + 1;
        s.lost += misses;
        // An owned anonymous region is exact on every backend (design.md section 2).
        s.violations += over;
        if writes == 0 {
            s.violations += 1;
        }
    }
    s.threads = max_threads as u64;
    s
}

// --------------------------------------------------------------------------------- pipeline

/// Snapshot + checkpoint + restore: several regions adopted from adjacent slices of one
/// mapping, sizes at run/buffer boundaries, writers running across all of them (writes
/// straddle region borders); each epoch is cut with writers quiesced (reference = the memory
/// then), saved with `save_epoch` while writers run again, restored from disk and compared.
fn pipeline(mode: Mode) -> Summary {
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

// ------------------------------------------------------------------------------------- kill

const KILL_PAGES: usize = 67;

/// The deterministic batch of epoch `e`: (page, Some(seed) = fill with words from the seed,
/// None = zero the page).
fn kill_batch(e: u64) -> Vec<(usize, Option<u64>)> {
    let mut rng = Rng(0xC0FFEE ^ (e + 1).wrapping_mul(0x1000_0001));
    let n = if e == 0 { 40 } else { 1 + rng.below(10) };
    (0..n)
        .map(|_| {
            let p = rng.below(KILL_PAGES as u64) as usize;
            let v = if rng.below(5) == 0 {
                None
            } else {
                Some(rng.next())
            };
            (p, v)
        })
        .collect()
}

fn apply_batch(state: &mut [u64], e: u64) {
    for (p, v) in kill_batch(e) {
        let page = &mut state[p * WPP..(p + 1) * WPP];
        match v {
            None => page.fill(0),
            Some(seed) => {
                let mut r = Rng(seed | 1);
                page.iter_mut().for_each(|w| *w = r.next());
            }
        }
    }
}

/// The child of the kill suite: tracker + writer thread + `save_epoch` in a loop until
/// SIGKILLed. It resumes from the store's head: restores it into a fresh region, burns cuts
/// until the region's epoch number is past the head, then saves epochs head+1, head+2, ...
/// The writer writes epoch e+1's batch while epoch e is being saved (copy-before-write).
fn kill_child(dir: &str) -> ! {
    let mut store = Store::open_or_create(dir).expect("child open");
    let tracker = tracker(Backend::SyncUffd);
    let region = Arc::new(tracker.map_anonymous(KILL_PAGES * PS).unwrap());
    let head = store.head().map(|h| h.epoch);
    if let Some(h) = head {
        let m = store.restore(h).expect("child restore head");
        let words = region.as_atomic_u64();
        for (i, c) in m.as_slice().chunks_exact(8).enumerate() {
            words[i].store(u64::from_ne_bytes(c.try_into().unwrap()), SeqCst);
        }
        while region.epoch() <= h {
            region.cut().expect("burn cut");
        }
    }
    let mut e = head.map_or(0, |h| h + 1);
    let (go_tx, go_rx) = mpsc::channel::<u64>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let r2 = Arc::clone(&region);
    std::thread::spawn(move || {
        let words = r2.as_atomic_u64();
        for e in go_rx {
            for (p, v) in kill_batch(e) {
                let mut r = Rng(v.unwrap_or(0) | 1);
                for k in 0..WPP {
                    let x = if v.is_some() { r.next() } else { 0 };
                    words[p * WPP + k].store(x, SeqCst);
                }
            }
            if done_tx.send(()).is_err() {
                return;
            }
        }
    });
    go_tx.send(e).unwrap();
    done_rx.recv().unwrap();
    loop {
        let epoch = region.cut().expect("child cut");
        assert_eq!(epoch.number(), e);
        go_tx.send(e + 1).unwrap();
        save_epoch(&mut store, &epoch).expect("child save_epoch");
        drop(epoch);
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "COMMITTED {e}").unwrap();
            out.flush().unwrap();
        }
        if e % 16 == 15 {
            store.compact().expect("child compact");
        }
        done_rx.recv().unwrap();
        e += 1;
    }
}

/// SIGKILL the tracker + save_epoch child at random instants; after each kill the store
/// opens and its head (at least the last epoch the child reported committed) restores
/// bit-exact against the deterministic model.
fn kill(mode: Mode) -> Summary {
    let mut s = Summary::new("kill", "sync");
    s.threads = 2;
    let kills = mode.pick(15, 200);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(4242);
    let mut last_reported: Option<u64> = None;
    let mut model_epoch: Option<u64> = None;
    let mut state = vec![0u64; KILL_PAGES * WPP];
    let mut with_progress = 0;
    for i in 0..kills {
        let mut child = Command::new(&exe)
            .env(KILL_CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(e) = line.strip_prefix("COMMITTED ") {
                    let _ = tx.send(e.trim().parse::<u64>().unwrap());
                }
            }
        });
        let errs = std::thread::spawn(move || {
            let mut v = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut v);
            v
        });
        // A random instant: start-up, restore, burn, or the write/save/compact loop.
        let wait = if i % 4 == 0 {
            rng.below(15_000)
        } else {
            5_000 + rng.below(70_000)
        };
        std::thread::sleep(Duration::from_micros(wait));
        let early_exit = child.try_wait().unwrap();
        if early_exit.is_none() {
            child.kill().unwrap(); // SIGKILL
            s.injected_faults += 1;
        }
        let status = child.wait().unwrap();
        if within(Duration::from_secs(10), move || reader.join()).is_none() {
            s.hangs += 1;
        }
        let child_err = errs.join().unwrap_or_default();
        if early_exit.is_some() {
            eprintln!("kill: child exited by itself ({status:?}): {child_err}");
            s.violations += 1;
        }
        let before = last_reported;
        for e in rx.try_iter() {
            if last_reported.is_some_and(|l| e <= l) {
                s.violations += 1;
            }
            last_reported = Some(e);
            s.cuts += 1;
        }
        if last_reported != before {
            with_progress += 1;
        }
        let store = match Store::open(&dir) {
            Ok(st) => st,
            Err(e) if last_reported.is_none() => {
                // Killed before the store existed or before its first commit.
                let _ = e;
                continue;
            }
            Err(e) => {
                eprintln!("kill {i}: store does not open: {e}");
                s.lost += 1;
                continue;
            }
        };
        let Some(head) = store.head() else {
            if last_reported.is_some() {
                s.lost += 1;
            }
            continue;
        };
        if last_reported.is_some_and(|l| head.epoch < l) {
            eprintln!(
                "kill {i}: head {} older than the last committed epoch {last_reported:?}",
                head.epoch
            );
            s.lost += 1;
        }
        while model_epoch.map_or(true, |m| m < head.epoch) {
            let e = model_epoch.map_or(0, |m| m + 1);
            apply_batch(&mut state, e);
            model_epoch = Some(e);
        }
        if model_epoch != Some(head.epoch) {
            s.violations += 1; // the head went backwards
            continue;
        }
        match store.restore(head.epoch) {
            Ok(m) => {
                for (p, page) in m.as_slice().chunks(PS).enumerate() {
                    let want = &state[p * WPP..(p + 1) * WPP];
                    let got: Vec<u64> = page
                        .chunks_exact(8)
                        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
                        .collect();
                    if got != want {
                        s.torn += 1;
                    }
                }
                s.ops += 1;
            }
            Err(e) => {
                eprintln!("kill {i}: head {} does not restore: {e}", head.epoch);
                s.lost += 1;
            }
        }
        if i % 10 == 9 {
            match store.verify() {
                Ok(r) if r.is_ok() => {}
                other => {
                    eprintln!("kill {i}: verify: {other:?}");
                    s.violations += 1;
                }
            }
        }
    }
    eprintln!(
        "  kill: {} kills, {with_progress} with progress, last committed epoch {last_reported:?}",
        s.injected_faults
    );
    if with_progress * 2 < kills {
        eprintln!("  kill: too few kills landed after a commit");
        s.violations += 1;
    }
    s
}

// -------------------------------------------------------------------------------------- eio

#[derive(Debug)]
struct Eio;

/// A sink that fails with EIO at its `k`-th page (0-based), like a checkpoint device that
/// returns EIO mid-segment.
fn failing_sink(
    k: usize,
    sunk: &mut Vec<(u64, Vec<u8>)>,
) -> impl FnMut(u64, &[u8]) -> Result<(), std::io::Error> + '_ {
    move |page, bytes| {
        if sunk.len() == k {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        sunk.push((page, bytes.to_vec()));
        Ok(())
    }
}

/// EIO while saving: (a) `cut_and_copy` into a sink that fails at the k-th page: the error
/// comes back typed, pages handed over before it are exact, and the region and tracker keep
/// working (later writes are tracked and copied exactly); (b) the retry pattern an
/// application uses to lose nothing: cut, copy each page, and on a failure keep the epoch's
/// unsaved dirty pages for the next save. Nothing may be lost across the failure.
fn eio(mode: Mode, b: Backend) -> Summary {
    let _ = Eio;
    let mut s = Summary::new(&format!("eio-{}", b.name()), b.name());
    s.threads = 1;
    let t = tracker(b);
    let region = t.map_anonymous(300 * PS).unwrap();
    region.cut().unwrap();
    let mut rng = Rng(0xE10 + b as u64);
    let rounds = mode.pick(40, 2000);
    let write_some = |rng: &mut Rng, region: &Region, ops: &mut u64| -> BTreeSet<u64> {
        let mut w = BTreeSet::new();
        for _ in 0..1 + rng.below(40) {
            let p = rng.below(region.page_count());
            region.as_atomic_u64()[p as usize * WPP + rng.below(WPP as u64) as usize]
                .store(rng.next() | 1, SeqCst);
            w.insert(p);
            *ops += 1;
        }
        w
    };
    // Pages the application still has to save (the retry pattern's carry-over).
    let mut carry: BTreeSet<u64> = BTreeSet::new();
    for _ in 0..rounds {
        // (a) cut_and_copy with a failing sink.
        let w1 = write_some(&mut rng, &region, &mut s.ops);
        // SAFETY: this suite's only writer is this thread, which is not writing now.
        let reference = unsafe { region.as_slice() }.to_vec();
        let k = rng.below(w1.len() as u64 + 1) as usize;
        let mut sunk = Vec::new();
        let r = region.cut_and_copy(failing_sink(k, &mut sunk));
        s.cuts += 1;
        match r {
            Err(CutAndCopyError::Sink(e)) if e.raw_os_error() == Some(libc::EIO) => {
                s.injected_faults += 1;
                if sunk.len() != k {
                    s.violations += 1;
                }
            }
            Ok(e) if k >= w1.len() => {
                if e.dirty().len() != w1.len() {
                    s.violations += 1;
                }
            }
            other => {
                eprintln!("eio: unexpected result {other:?}");
                s.violations += 1;
            }
        }
        for (p, bytes) in &sunk {
            if bytes[..] != reference[*p as usize * PS..(*p as usize + 1) * PS] {
                s.torn += 1;
            }
        }
        // The pages of the failed epoch that the sink did not take must be reported again
        // by the next cut (cut_and_copy requeues them); the application also keeps them
        // itself (the retry pattern below), so a regression shows as `lost`, not as a gap.
        let unsaved: Vec<u64> = w1
            .iter()
            .copied()
            .filter(|p| !sunk.iter().any(|(q, _)| q == p))
            .collect();
        carry.extend(unsaved.iter().copied());
        // (b) the retry pattern, with a failure in one save out of three.
        let w2 = write_some(&mut rng, &region, &mut s.ops);
        // SAFETY: as above.
        let reference = unsafe { region.as_slice() }.to_vec();
        let epoch = region.cut().expect("cut after a failed sink");
        s.cuts += 1;
        for p in &w2 {
            if !epoch.dirty().contains(*p) {
                s.lost += 1; // the tracker stopped tracking after the failure
            }
        }
        for p in &unsaved {
            if !epoch.dirty().contains(*p) {
                s.lost += 1; // a failed cut_and_copy dropped pages it had not saved
            }
        }
        let mut todo: BTreeSet<u64> = epoch.dirty().iter().collect();
        todo.extend(carry.iter().copied());
        let fail_at = if rng.below(3) == 0 {
            rng.below(todo.len() as u64 + 1) as usize
        } else {
            usize::MAX
        };
        let mut saved = BTreeSet::new();
        let mut buf = vec![0u8; PS];
        for (i, &p) in todo.iter().enumerate() {
            if i == fail_at {
                s.injected_faults += 1;
                break;
            }
            // Pages of this epoch are read as at the cut; carried pages were not written
            // since (single writer, quiesced), so the live copy is their content.
            let ok = if epoch.dirty().contains(p) && b == Backend::SyncUffd {
                epoch.read_page(p, &mut buf).is_ok()
            } else {
                buf.copy_from_slice(&reference[p as usize * PS..(p as usize + 1) * PS]);
                true
            };
            if !ok || buf[..] != reference[p as usize * PS..(p as usize + 1) * PS] {
                s.torn += 1;
            }
            saved.insert(p);
        }
        carry = todo.difference(&saved).copied().collect();
        drop(epoch);
    }
    // Finally everything still carried is saved; the tracker works as on day one.
    let w = write_some(&mut rng, &region, &mut s.ops);
    let e = region.cut().unwrap();
    s.cuts += 1;
    s.lost += w.iter().filter(|p| !e.dirty().contains(**p)).count() as u64;
    if t.unavailable().is_some() {
        s.violations += 1;
    }
    s
}

// ----------------------------------------------------------------------------------- poison

/// The service thread panics (`debug_inject_panic`) while 4 writers run and an epoch is
/// outstanding: writers must finish (no hang), every later call returns `Poisoned`, and the
/// outstanding epoch never returns content other than the content at its cut.
fn poison(mode: Mode) -> Summary {
    let mut s = Summary::new("poison", "sync");
    let threads = 4usize;
    s.threads = threads as u64;
    let iterations = mode.pick(5, 100);
    let mut rng = Rng(0xB0B);
    for _ in 0..iterations {
        let t = tracker(Backend::SyncUffd);
        let region = Arc::new(t.map_anonymous(4 << 20).unwrap());
        region.cut().unwrap();
        let gate = Arc::new(Gate::new());
        let ops = Arc::new(AtomicU64::new(0));
        let hs: Vec<_> = (0..threads)
            .map(|th| {
                let (region, gate, ops) =
                    (Arc::clone(&region), Arc::clone(&gate), Arc::clone(&ops));
                std::thread::spawn(move || {
                    let mut r = Rng(th as u64 * 31 + 7);
                    let words = region.as_atomic_u64();
                    let mut n = 0;
                    while gate.pass() {
                        let i = r.below(words.len() as u64) as usize;
                        words[i].store(r.next(), SeqCst);
                        n += 1;
                        if n % 256 == 0 {
                            std::thread::yield_now();
                        }
                    }
                    ops.fetch_add(n, SeqCst);
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(5 + rng.below(20)));
        if !gate.pause(threads, Duration::from_secs(20)) {
            s.hangs += 1;
            gate.stop();
            continue;
        }
        // SAFETY: all writers are parked.
        let reference = unsafe { region.as_slice() }.to_vec();
        let epoch = region.cut().unwrap();
        let snap = region.snapshot().unwrap();
        s.cuts += 2;
        gate.resume();
        // Read part of the epoch while writers run, then poison mid-stream.
        let dirty: Vec<u64> = epoch.dirty().iter().collect();
        let mut buf = vec![0u8; PS];
        let half = dirty.len() / 2;
        for &p in &dirty[..half] {
            match epoch.read_page(p, &mut buf) {
                Ok(()) if buf[..] == reference[p as usize * PS..(p as usize + 1) * PS] => {}
                Ok(()) => s.torn += 1,
                Err(e) => {
                    eprintln!("poison: read before the panic: {e}");
                    s.lost += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(rng.below(10)));
        let t2 = t.clone();
        if within(Duration::from_secs(20), move || t2.debug_inject_panic()).is_none() {
            s.hangs += 1;
        }
        s.injected_faults += 1;
        std::thread::sleep(Duration::from_millis(5));
        gate.stop();
        if within(Duration::from_secs(20), move || {
            hs.into_iter().for_each(|h| h.join().unwrap())
        })
        .is_none()
        {
            s.hangs += 1;
            continue;
        }
        s.ops += ops.load(SeqCst);
        // After the panic: either the content at the cut (preserved before the panic) or a
        // typed Poisoned error; never the live content.
        let poisoned = SnapshotError::Unavailable(Unavailable::Poisoned);
        for &p in &dirty[half..] {
            match epoch.read_page(p, &mut buf) {
                Ok(()) if buf[..] == reference[p as usize * PS..(p as usize + 1) * PS] => {}
                Ok(()) => s.torn += 1,
                Err(e) if e == poisoned => {}
                Err(e) => {
                    eprintln!("poison: unexpected read error {e}");
                    s.violations += 1;
                }
            }
        }
        for p in 0..region.page_count() {
            match snap.read_page(p, &mut buf) {
                Ok(()) if buf[..] == reference[p as usize * PS..(p as usize + 1) * PS] => {}
                Ok(()) => s.torn += 1,
                Err(e) if e == poisoned => {}
                Err(e) => {
                    eprintln!("poison: unexpected snapshot read error {e}");
                    s.violations += 1;
                }
            }
        }
        let checks = [
            t.unavailable() == Some(Unavailable::Poisoned),
            matches!(
                region.cut(),
                Err(CutError::Unavailable(Unavailable::Poisoned))
            ),
            matches!(
                region.snapshot(),
                Err(CutError::Unavailable(Unavailable::Poisoned))
            ),
            matches!(
                region.dirty_pages(),
                Err(RegionError::Unavailable(Unavailable::Poisoned))
            ),
            matches!(
                region.rollback(&snap),
                Err(SnapshotError::Unavailable(Unavailable::Poisoned))
            ),
            matches!(
                t.map_anonymous(PS),
                Err(MapError::Unavailable(Unavailable::Poisoned))
            ),
            matches!(
                region.cut_and_copy(|_, _| Ok::<(), ()>(())),
                Err(CutAndCopyError::Cut(CutError::Unavailable(
                    Unavailable::Poisoned
                )))
            ),
        ];
        for (i, ok) in checks.iter().enumerate() {
            if !ok {
                eprintln!("poison: check {i} did not return Poisoned");
                s.violations += 1;
            }
        }
        drop(epoch);
        drop(snap);
        // Dropping the region and the tracker must not hang either.
        let t3 = t.clone();
        if within(Duration::from_secs(20), move || {
            drop(region);
            t3.shutdown();
            drop(t);
        })
        .is_none()
        {
            s.hangs += 1;
        }
    }
    s
}
