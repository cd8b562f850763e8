//! `Region::fork` (issue 17) against the kernel's own `fork()`, all in one run:
//!
//! * **fork time**: the first `Region::fork()` of a freshly populated region (every page
//!   written since it was protected, the worst case: the fork re-protects them all), and
//!   repeated forks of one region with 1% of its pages written between two forks, beside
//!   `fork()` of this process with that region mapped (time in the parent; the child
//!   `_exit`s at once), min / median; and the first fork with `.eager_reprotect(1ms)` after
//!   an idle pause (pages re-armed in the background);
//! * **first write after the fork**: one word per page on N random pages, on the origin
//!   (write-protect fault, the clone's copy, un-protect) and on the clone (missing fault that
//!   installs the inherited page, then the write-protect fault), beside the parent's writes
//!   after a `fork()` whose child still holds the pages (kernel copy-on-write fault);
//! * **memory**: `/proc/self/smaps` Private_Dirty of both ranges after 1% of the pages are
//!   written on each side, minus the origin's before, over the bytes written.
//!
//! `WW_BENCH_QUICK=1`: 64 MiB only. Without `--bench` (as `cargo test --all-targets` runs
//! it): a 4 MiB smoke run. Run with `cargo bench -p writewatch --bench fork`.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use writewatch::{Region, Tracker};
use writewatch_testkit::{smaps_of_ranges, Rng};

const PS: usize = 4096;
const WPP: usize = PS / 8;

fn populated(t: &Tracker, len: usize) -> Region {
    let r = t.map_anonymous(len).expect("region");
    let w = r.as_atomic_u64();
    for p in 0..len / PS {
        w[p * WPP].store(p as u64 + 1, Relaxed);
    }
    r
}

fn min_median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Time of `n` first writes (one word per page, pages from `order`) into `w`, per page.
fn first_writes(w: &[std::sync::atomic::AtomicU64], order: &[usize]) -> Duration {
    let t0 = Instant::now();
    for &p in order {
        w[p * WPP + 1].store(7, Relaxed);
    }
    t0.elapsed() / order.len() as u32
}

struct Row {
    size: &'static str,
    first_fork: (Duration, Duration),
    eager_fork: (Duration, Duration),
    ww_fork: (Duration, Duration),
    os_fork: (Duration, Duration),
    origin_write: Duration,
    clone_write: Duration,
    cow_write: Duration,
    mem_ratio: f64,
}

fn run(size: &'static str, len: usize, reps: usize, writes: usize) -> Row {
    let t = Tracker::builder().build().expect("tracker");
    let pages = len / PS;
    // First fork of a freshly written region: every page was written since the region was
    // last protected, so the fork re-protects them all (the worst case).
    let mut first = Vec::new();
    for _ in 0..reps.min(3) {
        let fresh = populated(&t, len);
        let t0 = Instant::now();
        let clone = fresh.fork().expect("fork");
        first.push(t0.elapsed());
        drop(clone);
    }
    // The same first fork with `.eager_reprotect(1ms)`: the written pages were re-armed in
    // the service thread's idle time (here a 200 ms pause) before the fork.
    let mut eager = Vec::new();
    {
        let te = Tracker::builder()
            .eager_reprotect(Duration::from_millis(1))
            .build()
            .expect("tracker");
        for _ in 0..reps.min(3) {
            let fresh = populated(&te, len);
            std::thread::sleep(Duration::from_millis(200));
            let t0 = Instant::now();
            let clone = fresh.fork().expect("fork");
            eager.push(t0.elapsed());
            drop(clone);
        }
    }
    // Repeated forks of one region, 1% of its pages written between two forks: only those
    // are re-protected. Beside the process's fork() with the same region mapped.
    let origin = populated(&t, len);
    drop(origin.fork().expect("fork"));
    let mut ww = Vec::new();
    let mut os = Vec::new();
    let mut rng = Rng(0x1F0);
    for round in 0..reps {
        for _ in 0..pages / 100 {
            origin.as_atomic_u64()[rng.below(pages as u64) as usize * WPP]
                .store(round as u64, Relaxed);
        }
        let t0 = Instant::now();
        let clone = origin.fork().expect("fork");
        ww.push(t0.elapsed());
        drop(clone);
        os.push(common::fork_exit());
    }
    // First writes after a fork, on both sides, then memory.
    let order = Rng::shuffled(pages, 0xF0);
    let n = writes.min(pages / 2);
    let before = smaps_of_ranges(&[(origin.as_ptr() as usize, len)]);
    let clone = origin.fork().expect("fork");
    let origin_write = first_writes(origin.as_atomic_u64(), &order[..n]);
    let clone_write = first_writes(clone.as_atomic_u64(), &order[n..2 * n]);
    // Memory at 1% written on each side (the pages written above count towards it).
    let k = (pages / 100).max(n);
    first_writes(origin.as_atomic_u64(), &order[..k]);
    first_writes(clone.as_atomic_u64(), &order[k..2 * k]);
    // (The two regions' VMAs may have merged: each counted once.)
    let after = smaps_of_ranges(&[
        (origin.as_ptr() as usize, len),
        (clone.as_ptr() as usize, len),
    ]);
    let cost = after.private_dirty.saturating_sub(before.private_dirty) as f64;
    let mem_ratio = cost / (2 * k * PS) as f64;
    drop(clone);
    drop(origin);
    // Kernel fork-COW: the parent writes pages a blocked child still maps.
    let plain = writewatch_testkit::Mmap::populated(len);
    let words = plain.as_atomic_u64();
    let (child, _) = common::BlockedChild::fork();
    let cow_write = first_writes(words, &order[..n]);
    drop(child);
    Row {
        size,
        first_fork: min_median(first),
        eager_fork: min_median(eager),
        ww_fork: min_median(ww),
        os_fork: min_median(os),
        origin_write,
        clone_write,
        cow_write,
        mem_ratio,
    }
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let sizes: Vec<(&str, usize)> = if smoke {
        vec![("4 MiB", 4 << 20)]
    } else if common::quick() {
        vec![("64 MiB", 64 << 20)]
    } else {
        vec![("64 MiB", 64 << 20), ("1 GiB", 1 << 30)]
    };
    let reps = if smoke { 2 } else { 7 };
    println!("| region | first Region::fork (all pages written) min / median | same, `.eager_reprotect(1ms)` after a pause | Region::fork, 1% written since the last, min / median | process fork() min / median | fork ratio first, eager, repeated (median) | first write: origin / clone / kernel fork-COW (us) | write ratio origin, clone | memory at 1%+1% written / written |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, len) in sizes {
        let r = run(name, len, reps, 2000);
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "| {} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2}x, {:.3}x, {:.3}x | {:.1} / {:.1} / {:.2} | {:.1}x, {:.1}x | {:.3}x |",
            r.size,
            ms(r.first_fork.0),
            ms(r.first_fork.1),
            ms(r.eager_fork.0),
            ms(r.eager_fork.1),
            ms(r.ww_fork.0),
            ms(r.ww_fork.1),
            ms(r.os_fork.0),
            ms(r.os_fork.1),
            ms(r.first_fork.1) / ms(r.os_fork.1),
            ms(r.eager_fork.1) / ms(r.os_fork.1),
            ms(r.ww_fork.1) / ms(r.os_fork.1),
            us(r.origin_write),
            us(r.clone_write),
            us(r.cow_write),
            us(r.origin_write) / us(r.cow_write),
            us(r.clone_write) / us(r.cow_write),
            r.mem_ratio,
        );
    }
}
