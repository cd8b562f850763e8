//! Per-first-write cost of each write-tracking mechanism, in ns per page, side by side in one
//! run, for sequential and random page order (criterion groups `first_write_seq` and
//! `first_write_rand`).
//!
//! One criterion *iteration* is one first write to one page: `iter_custom` is asked for
//! `iters` writes and performs them over as many freshly prepared regions as needed (64 MiB =
//! 16384 pages each, 16 MiB with `WW_BENCH_QUICK=1`), timing only the writes. Preparing a
//! region (mapping, populating, protecting, forking, snapshotting, ...) is never timed. So the
//! reported time is directly the cost of one first write.
//!
//! Rows (function ids), same as the reference machine's C baseline probes where they
//! exist:
//! * `untracked` - 8-byte store to an already-populated page (floor);
//! * `memcpy_4k` - copy of one populated 4 KiB page (the copy in copy-before-write);
//! * `minor_fault` - first touch of a fresh private anonymous page (allocate + zero);
//! * `fork_cow` - parent writes while a forked child holds the pages (kernel copy-on-write);
//! * `mprotect_sigsegv` - region `PROT_READ`; a SIGSEGV handler copies the page to a backup
//!   and `mprotect`s it read-write;
//! * `raw_uffd` - a minimal raw uffd-wp loop written here: service thread `poll()` +
//!   `read()` + copy 4 KiB + `UFFDIO_WRITEPROTECT` un-protect (first row of `variants.c`);
//! * `ww_sync_fresh` - writewatch, a fresh `map_anonymous` region (unpopulated, protected
//!   with WP_UNPOPULATED): first write = tracked fault + allocate/zero;
//! * `ww_sync` - writewatch, populated region re-protected by `cut()` (epoch dropped with
//!   `into_dirty`, so no copies): tracking only;
//! * `ww_snapshot` - writewatch copy-before-write: populated region, `snapshot()`, writes;
//! * `*_spin` - the same with `.spin(50 us)`; `*_fa16` (sequential only) with
//!   `.fault_around(16)`;
//! * `*_it` - the same with `.in_thread_faults(true)`: the writer serves its own fault in a
//!   `SIGBUS` handler (copy, dirty bit, un-protect), no service-thread round trip;
//! * `ww_async` - writewatch async backend (`WP_ASYNC`: the kernel resolves the fault), region
//!   re-armed by `cut()` (one `PAGEMAP_SCAN`);
//! * `ww_mprotect` - writewatch mprotect backend (SIGSEGV handler, no copy), re-armed by `cut()`.
//!
//! For each writewatch row the tracker's counters over the measured phase (faults, copies,
//! `service_ns` p50/p99) go to `<criterion dir>/writewatch-stats/` for the report.

// criterion_group!/criterion_main! generate undocumented public items.
#![allow(missing_docs)]

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Mmap, RawUffdLoop, Value, PS};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use writewatch::{Backend, Region, Tracker, TrackerStats};

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn region_pages() -> usize {
    if common::quick() {
        4096
    } else {
        16384
    }
}

/// Value stored by each write: changes every round so no store is a no-op.
static ROUND: AtomicU64 = AtomicU64::new(1);

/// Runs `iters` first writes in rounds of at most `order.len()` pages: `round(pages)` prepares
/// a region, times the writes to `pages` (in that order) and returns the write time only.
fn first_writes(
    g: &mut Group<'_>,
    id: &str,
    order: &[usize],
    mut round: impl FnMut(&[usize], u64) -> Duration,
) {
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut left = iters as usize;
            let mut total = Duration::ZERO;
            while left > 0 {
                let k = left.min(order.len());
                total += round(&order[..k], ROUND.fetch_add(1, Ordering::Relaxed));
                left -= k;
            }
            total
        })
    });
}

#[inline(always)]
fn time_raw_writes(m: &Mmap, pages: &[usize], v: u64) -> Duration {
    let t = Instant::now();
    for &p in pages {
        m.write_page(p, v);
    }
    t.elapsed()
}

#[inline(always)]
fn time_ww_writes(r: &Region, pages: &[usize], v: u64) -> Duration {
    let w = r.as_atomic_u64();
    let wpp = PS / 8;
    let t = Instant::now();
    for &p in pages {
        w[p * wpp + 1].store(v, Ordering::Relaxed);
    }
    t.elapsed()
}

// ------------------------------------------------------------------ mprotect + SIGSEGV

static SEGV_BASE: AtomicUsize = AtomicUsize::new(0);
static SEGV_LEN: AtomicUsize = AtomicUsize::new(0);
static SEGV_BACKUP: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_segv(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (base, len) = (
        SEGV_BASE.load(Ordering::Relaxed),
        SEGV_LEN.load(Ordering::Relaxed),
    );
    if addr < base || addr >= base + len {
        // Not ours: restore the default action; the faulting instruction re-runs and the
        // process dies with a normal SIGSEGV.
        // SAFETY: async-signal-safe.
        unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
        return;
    }
    let page = addr & !(PS - 1);
    let backup = SEGV_BACKUP.load(Ordering::Relaxed) + (page - base);
    // SAFETY: page is readable (PROT_READ) and in the region; backup has the same layout.
    unsafe {
        std::ptr::copy_nonoverlapping(page as *const u8, backup as *mut u8, PS);
        if libc::mprotect(
            page as *mut libc::c_void,
            PS,
            libc::PROT_READ | libc::PROT_WRITE,
        ) != 0
        {
            libc::_exit(3);
        }
    }
}

/// Installs `on_segv` for SIGSEGV; the previous action is restored on drop.
struct SegvGuard(libc::sigaction);

impl SegvGuard {
    fn install() -> SegvGuard {
        // SAFETY: zeroed sigaction structs are valid; we fill handler and flags.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_segv as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(libc::SIGSEGV, &sa, &mut old), 0);
            SegvGuard(old)
        }
    }
}

impl Drop for SegvGuard {
    fn drop(&mut self) {
        SEGV_LEN.store(0, Ordering::SeqCst);
        // SAFETY: restoring the action saved at install.
        unsafe { libc::sigaction(libc::SIGSEGV, &self.0, std::ptr::null_mut()) };
    }
}

// ------------------------------------------------------------------ writewatch stats

/// Tracker counters over the measured phase, written as a side file.
fn save_stats(name: &str, before: &TrackerStats, after: &TrackerStats) {
    if after.faults == before.faults {
        return; // filtered out on the command line: keep the side file of the last real run
    }
    let mut hist = [0u64; 64];
    for (lo, c) in after.service_ns.buckets() {
        hist[bucket_of(lo)] += c;
    }
    for (lo, c) in before.service_ns.buckets() {
        hist[bucket_of(lo)] -= c;
    }
    let total: u64 = hist.iter().sum();
    let pct = |q: f64| -> u64 {
        if total == 0 {
            return 0;
        }
        let target = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in hist.iter().enumerate() {
            seen += c;
            if seen >= target {
                return (2u64 << i) - 1;
            }
        }
        u64::MAX
    };
    let d = |f: fn(&TrackerStats) -> u64| Value::U(f(after) - f(before));
    let fields = [
        ("faults", d(|s| s.faults)),
        ("wp_faults", d(|s| s.wp_faults)),
        ("reads", d(|s| s.reads)),
        ("unprotect_ioctls", d(|s| s.unprotect_ioctls)),
        ("protect_ioctls", d(|s| s.protect_ioctls)),
        ("preserved", d(|s| s.preserved)),
        ("deferred", d(|s| s.deferred)),
        ("cuts", d(|s| s.cuts)),
        ("service_count", Value::U(total)),
        ("service_p50_ns_le", Value::U(pct(0.5))),
        ("service_p99_ns_le", Value::U(pct(0.99))),
    ];
    eprintln!(
        "  [{name}] faults {} preserved {} deferred {} unprotect_ioctls {} service_ns p50 <= {} p99 <= {}",
        after.faults - before.faults,
        after.preserved - before.preserved,
        after.deferred - before.deferred,
        after.unprotect_ioctls - before.unprotect_ioctls,
        pct(0.5),
        pct(0.99)
    );
    common::write_side_file(name, &fields);
}

fn bucket_of(lower: u64) -> usize {
    if lower == 0 {
        0
    } else {
        63 - lower.leading_zeros() as usize
    }
}

fn tracker(backend: Backend, spin: bool, fault_around: u64, in_thread: bool) -> Tracker {
    let mut b = Tracker::builder()
        .backend(backend)
        .copy_budget(256 << 20)
        .in_thread_faults(in_thread);
    if spin {
        b = b.spin(Duration::from_micros(50));
    }
    if fault_around > 0 {
        b = b.fault_around(fault_around);
    }
    b.build()
        .expect("Tracker::build (needs userfaultfd with write-protect)")
}

/// Populates every page of a tracked region (tracked writes) and closes the epoch, so all
/// pages are resident and write-protected.
fn populate(r: &Region) {
    let w = r.as_atomic_u64();
    for p in 0..r.page_count() as usize {
        w[p * (PS / 8)].store(1, Ordering::Relaxed);
    }
    drop(r.cut().expect("cut").into_dirty());
}

#[derive(Clone, Copy, PartialEq)]
enum Ww {
    /// Fresh `map_anonymous` region per round.
    Fresh,
    /// Populated region, re-protected by `cut()` before each round.
    Sync,
    /// Populated region, `snapshot()` before each round.
    Snapshot,
    /// Populated region, re-protected by `cut()`, async backend (kernel-resolved faults).
    Async,
    /// Populated region, re-protected by `cut()`, mprotect backend (SIGSEGV handler).
    Mprotect,
}

/// One writewatch row: bench id, how the region is prepared, and the tracker's options
/// (`.spin(50us)`, `.fault_around(n)`, `.in_thread_faults`).
#[derive(Clone, Copy)]
struct Row {
    id: &'static str,
    mode: Ww,
    spin: bool,
    fa: u64,
    in_thread: bool,
}

const fn row(id: &'static str, mode: Ww) -> Row {
    Row {
        id,
        mode,
        spin: false,
        fa: 0,
        in_thread: false,
    }
}

/// Every writewatch row, in report order (`*_fa16` only for sequential writers).
const WW_ROWS: &[Row] = &[
    row("ww_sync_fresh", Ww::Fresh),
    row("ww_sync", Ww::Sync),
    Row {
        spin: true,
        ..row("ww_sync_spin", Ww::Sync)
    },
    row("ww_snapshot", Ww::Snapshot),
    Row {
        spin: true,
        ..row("ww_snapshot_spin", Ww::Snapshot)
    },
    Row {
        fa: 16,
        ..row("ww_sync_fa16", Ww::Sync)
    },
    Row {
        fa: 16,
        ..row("ww_snapshot_fa16", Ww::Snapshot)
    },
    // In-thread fault handling (UFFD_FEATURE_SIGBUS): the writer serves its own fault.
    Row {
        in_thread: true,
        ..row("ww_sync_it", Ww::Sync)
    },
    Row {
        in_thread: true,
        ..row("ww_snapshot_it", Ww::Snapshot)
    },
    // Async backend (UFFD_FEATURE_WP_ASYNC) and mprotect backend: tracking only (neither
    // copies before write), region re-armed by `cut()` before each round.
    row("ww_async", Ww::Async),
    row("ww_mprotect", Ww::Mprotect),
];

fn bench_ww(g: &mut Group<'_>, label: &str, order: &[usize], row: &Row) {
    let Row {
        id,
        mode,
        spin,
        fa,
        in_thread,
    } = *row;
    let n = region_pages();
    let backend = match mode {
        Ww::Async => Backend::AsyncUffd,
        Ww::Mprotect => Backend::Mprotect,
        _ => Backend::SyncUffd,
    };
    let t = tracker(backend, spin, fa, in_thread);
    let reused = (mode != Ww::Fresh).then(|| {
        let r = t.map_anonymous(n * PS).expect("map_anonymous");
        populate(&r);
        r
    });
    let before = t.stats();
    first_writes(g, id, order, |pages, v| match mode {
        Ww::Fresh => {
            let r = t.map_anonymous(n * PS).expect("map_anonymous");
            let d = time_ww_writes(&r, pages, v);
            drop(r.cut().expect("cut").into_dirty());
            d
        }
        Ww::Sync | Ww::Async | Ww::Mprotect => {
            let r = reused.as_ref().unwrap();
            drop(r.cut().expect("cut").into_dirty());
            time_ww_writes(r, pages, v)
        }
        Ww::Snapshot => {
            let r = reused.as_ref().unwrap();
            let s = r.snapshot().expect("snapshot");
            let d = time_ww_writes(r, pages, v);
            drop(s);
            d
        }
    });
    let after = t.stats();
    save_stats(&format!("{label}-{id}"), &before, &after);
    drop(reused);
}

fn bench_order(c: &mut Criterion, label: &str, order: Vec<usize>) {
    let n = region_pages();
    let len = n * PS;
    let seq = label.ends_with("seq");
    let mut g = c.benchmark_group(format!("first_write_{label}"));

    // Floor: untracked store to a populated page (one region, reused).
    {
        let m = Mmap::populated(len);
        first_writes(&mut g, "untracked", &order, |pages, v| {
            time_raw_writes(&m, pages, v)
        });
    }
    // The copy in copy-before-write.
    {
        let (src, dst) = (Mmap::populated(len), Mmap::populated(len));
        first_writes(&mut g, "memcpy_4k", &order, |pages, _| {
            let t = Instant::now();
            for &p in pages {
                // SAFETY: both mappings have n pages; p < n.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.as_ptr().add(p * PS),
                        dst.as_ptr().add(p * PS),
                        PS,
                    )
                };
            }
            let d = t.elapsed();
            std::hint::black_box(dst.as_ptr());
            d
        });
    }
    first_writes(&mut g, "minor_fault", &order, |pages, v| {
        let m = Mmap::no_thp(len);
        time_raw_writes(&m, pages, v)
    });
    first_writes(&mut g, "fork_cow", &order, |pages, v| {
        let m = Mmap::populated(len);
        let (child, _) = common::BlockedChild::fork();
        let d = time_raw_writes(&m, pages, v);
        drop(child); // releases and reaps the child
        d
    });
    {
        let _guard = SegvGuard::install();
        first_writes(&mut g, "mprotect_sigsegv", &order, |pages, v| {
            let m = Mmap::populated(len);
            let backup = Mmap::populated(len);
            SEGV_BACKUP.store(backup.as_ptr() as usize, Ordering::SeqCst);
            SEGV_BASE.store(m.as_ptr() as usize, Ordering::SeqCst);
            SEGV_LEN.store(len, Ordering::SeqCst);
            // SAFETY: our mapping.
            let r = unsafe { libc::mprotect(m.as_ptr().cast(), len, libc::PROT_READ) };
            assert_eq!(r, 0);
            let d = time_raw_writes(&m, pages, v);
            SEGV_LEN.store(0, Ordering::SeqCst);
            d
        });
    }
    first_writes(&mut g, "raw_uffd", &order, |pages, v| {
        let l = RawUffdLoop::new(len);
        time_raw_writes(&l.region, pages, v)
    });

    // writewatch: every configuration in WW_ROWS.
    for row in WW_ROWS {
        if row.fa == 0 || seq {
            bench_ww(&mut g, label, &order, row);
        }
    }

    g.finish();
}

fn fault_latency(c: &mut Criterion) {
    let n = region_pages();
    common::write_meta(
        "fault_latency",
        &[
            ("region_pages", Value::U(n as u64)),
            ("region_bytes", Value::U((n * PS) as u64)),
        ],
    );
    bench_order(c, "seq", (0..n).collect());
    bench_order(
        c,
        "rand",
        writewatch_testkit::Rng::shuffled(n, 0x5eed_1234_abcd_ef01),
    );
    common::write_meta("fault_latency-end", &[]);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = fault_latency
}
criterion_main!(benches);
