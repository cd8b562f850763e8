//! Suites for the view protocol's racy edges (issue 11 items 2 and 6, issue 12's rollback):
//! rollback against a `madvise` racing the snapshot, copy-budget back-pressure wake-ups, and
//! the fuzz loop (scribble, rollback) against a plain copy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use super::common::Rng;
use writewatch::{SnapshotError, Tracker};
use writewatch_stress::{Mode, Summary};

const PS: usize = 4096;

fn word(r: &writewatch::Region, page: usize) -> &AtomicU64 {
    &r.as_atomic_u64()[page * PS / 8]
}

/// Issue 11.2 at volume: a madvise of page 0 races each snapshot; the page is then written
/// and rolled back. Ok must leave the content at the snapshot (or the madvise's zeros),
/// never the later write.
pub fn rollback_madvise(mode: Mode, in_thread: bool) -> Summary {
    let name = if in_thread {
        "rollback-madvise-in-thread"
    } else {
        "rollback-madvise"
    };
    let mut s = Summary::new(name, if in_thread { "sync-in-thread" } else { "sync" });
    s.threads = 2;
    let t = Tracker::builder()
        .in_thread_faults(in_thread)
        .build()
        .unwrap();
    let region = Arc::new(t.map_anonymous(4 * PS).unwrap());
    let (go, done) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let stop = Arc::new(AtomicBool::new(false));
    let (r2, g2, d2, s2) = (region.clone(), go.clone(), done.clone(), stop.clone());
    let madviser = std::thread::spawn(move || loop {
        g2.wait();
        if s2.load(SeqCst) {
            return;
        }
        // SAFETY: page 0 of the region; no references into it.
        unsafe { libc::madvise(r2.as_ptr().cast(), PS, libc::MADV_DONTNEED) };
        d2.wait();
    });
    let rounds = mode.pick(3_000u64, 40_000);
    let mut discarded = 0;
    for i in 1..=rounds {
        word(&region, 0).store(i, SeqCst);
        go.wait();
        let snap = region.snapshot().unwrap();
        done.wait();
        word(&region, 0).store(u64::MAX, SeqCst);
        s.ops += 2;
        s.cuts += 1;
        s.injected_faults += 1;
        match region.rollback(&snap) {
            Ok(_) => {
                let v = word(&region, 0).load(SeqCst);
                if v != i && v != 0 {
                    s.violations += 1;
                }
            }
            Err(SnapshotError::Discarded { .. }) => discarded += 1,
            Err(_) => s.violations += 1,
        }
    }
    stop.store(true, SeqCst);
    go.wait();
    madviser.join().unwrap();
    eprintln!("  {name}: {discarded} of {rounds} rollbacks said Discarded");
    s
}

/// Issue 11.6 at volume: a one-page copy budget, an epoch of `n` pages, a writer rewriting
/// them in random order (each first write needs a copy; all but one wait for budget), and a
/// reader that reads or releases the epoch's pages in another random order. Every writer must
/// finish (a deferred fault is released when its page is read, released, or budget frees).
pub fn budget_wakeups(mode: Mode, in_thread: bool) -> Summary {
    let name = if in_thread {
        "budget-wakeups-in-thread"
    } else {
        "budget-wakeups"
    };
    let mut s = Summary::new(name, if in_thread { "sync-in-thread" } else { "sync" });
    s.threads = 2;
    let t = Tracker::builder()
        .copy_budget(PS)
        .in_thread_faults(in_thread)
        .build()
        .unwrap();
    let n = 8usize;
    let region = Arc::new(t.map_anonymous(n * PS).unwrap());
    let mut rng = Rng(0x5eed + in_thread as u64);
    let rounds = mode.pick(300u64, 5_000);
    let mut buf = vec![0u8; PS];
    for round in 1..=rounds {
        for p in 0..n {
            word(&region, p).store(round, SeqCst);
        }
        let epoch = region.cut().unwrap();
        s.cuts += 1;
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let (r2, tx) = (region.clone(), mpsc::channel::<()>());
        let (done_tx, done_rx) = tx;
        let w_order = order.clone();
        let writer = std::thread::spawn(move || {
            for p in w_order {
                word(&r2, p).store(u64::MAX, SeqCst);
            }
            let _ = done_tx.send(());
        });
        for i in (1..n).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for &p in &order {
            if rng.below(2) == 0 {
                match epoch.read_page(p as u64, &mut buf) {
                    Ok(()) if u64::from_ne_bytes(buf[..8].try_into().unwrap()) == round => {}
                    _ => s.violations += 1,
                }
            } else {
                epoch.release_page(p as u64);
            }
            s.ops += 1;
        }
        if done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            s.hangs += 1;
            eprintln!("  {name}: writer still blocked 10 s after every page was read or released");
            return s; // the writer thread stays blocked; the suite fails
        }
        writer.join().unwrap();
        drop(epoch);
    }
    s
}

/// Issue 12's fuzz loop at volume: one snapshot, then scribble 1-8 random pages per case and
/// roll back; each rollback must rewrite exactly the touched pages and leave them equal to a
/// plain copy taken at the snapshot; the whole region is compared every 500 cases.
pub fn rollback_fuzz(mode: Mode, in_thread: bool) -> Summary {
    let name = if in_thread {
        "rollback-fuzz-in-thread"
    } else {
        "rollback-fuzz"
    };
    let mut s = Summary::new(name, if in_thread { "sync-in-thread" } else { "sync" });
    s.threads = 1;
    let t = Tracker::builder()
        .in_thread_faults(in_thread)
        .build()
        .unwrap();
    let region = t.map_anonymous(1024 * PS).unwrap();
    let w = region.as_atomic_u64();
    for (i, x) in w.iter().enumerate() {
        x.store(i as u64 ^ 0x9e37_79b9, SeqCst);
    }
    let reference: Vec<u64> = w.iter().map(|x| x.load(SeqCst)).collect();
    let snap = region.snapshot().unwrap();
    let mut rng = Rng(99 + in_thread as u64);
    let cases = mode.pick(20_000u64, 200_000);
    let wpp = PS / 8;
    for case in 0..cases {
        let mut touched = std::collections::BTreeSet::new();
        for _ in 0..1 + rng.below(8) {
            let p = rng.below(1024) as usize;
            touched.insert(p);
            w[p * wpp + rng.below(wpp as u64) as usize].store(!case, SeqCst);
            s.ops += 1;
        }
        match region.rollback(&snap) {
            Ok(n) if n == touched.len() as u64 => {}
            Ok(_) => s.violations += 1,
            Err(_) => s.violations += 1,
        }
        s.cuts += 1;
        for &p in &touched {
            if (p * wpp..(p + 1) * wpp).any(|i| w[i].load(SeqCst) != reference[i]) {
                s.lost += 1;
            }
        }
        if case % 500 == 499 && w.iter().zip(&reference).any(|(x, r)| x.load(SeqCst) != *r) {
            s.lost += 1;
        }
    }
    s
}
