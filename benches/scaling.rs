//! How writewatch's defaults scale (issue 14), with the baselines measured in the same run.
//! Plain `harness = false` program (no criterion): prints markdown tables.
//!
//! (a) **Cut cost against region size at a fixed dirty count**: `Tracker::builder().build()`
//!     (defaults), `map_anonymous` regions of 1, 4 and 16 GiB (sparse: only the dirty pages
//!     are ever written), 2,621 dirty pages per epoch (1 % of 1 GiB) spread evenly. Per size:
//!     the cut with 0 dirty pages (the size-proportional part) and with 2,621, median over the
//!     repetitions, beside `fork()` of this process with that region mapped (min and median).
//!     The writes are tracked faults and are not timed.
//! (b) **Writer threads on a 1 GiB region, a cut every 100 ms** (defaults; each epoch is taken
//!     with `into_dirty`, so no copies): 1, 2, 4, 8 threads, two patterns (`uniform`: every
//!     write to a uniformly random page; `hot1pct`: the demo's `random` pattern, 99.9 % of
//!     writes to 1 % hot pages, 0.1 % uniform). Each thread count runs first on an untracked
//!     populated mapping, then on a tracked populated one (`adopt` + first cut), same duration;
//!     writes/s tracked / untracked, cut duration, and the longest time a writer's batch of 64
//!     writes overlapped a cut (held-writer stall, from the writers' side: a batch is
//!     timestamped, never a single store).
//!
//! `WW_BENCH_QUICK=1`: 1 and 4 GiB in (a), 1 s per run in (b) (else 16 GiB too, 3 s).
//! Needs ~2.2 GiB of RAM (1 GiB untracked + 1 GiB tracked in (b), not at the same time).

#![allow(missing_docs)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Mmap, Value, PS};
use writewatch::{Region, Tracker};
use writewatch_testkit::XorShift64;

const GIB: usize = 1 << 30;
const DIRTY: usize = 2_621;
const BATCH: u64 = 64;
const SLOW_NS: u64 = 10_000;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ------------------------------------------------------------------ (a) cut vs region size

struct SizeRow {
    gib: usize,
    empty_ms: f64,
    cut_ms: f64,
    svc_ms: f64,
    fork_min_ms: f64,
    fork_med_ms: f64,
}

fn cut_vs_size(reps: usize) -> Vec<SizeRow> {
    let mut sizes = vec![1usize, 4];
    if !common::quick() {
        sizes.push(16);
    }
    let mut rows = Vec::new();
    for gib in sizes {
        let len = gib * GIB;
        let pages = len / PS;
        let stride = pages / DIRTY;
        let tracker = Tracker::builder().build().expect("Tracker::build");
        let region = tracker.map_anonymous(len).expect("map_anonymous");
        let words = region.as_atomic_u64();
        let write = |v: u64| {
            for k in 0..DIRTY {
                words[k * stride * (PS / 8) + 1].store(v, Ordering::Relaxed);
            }
        };
        // Warm-up: first touch of the dirty pages, then one empty epoch.
        write(1);
        drop(region.cut().expect("cut").into_dirty());
        let (mut empty, mut cut, mut svc) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..reps {
            let t = Instant::now();
            let e = region.cut().expect("cut");
            empty.push(ms(t.elapsed()));
            assert_eq!(e.dirty().len(), 0);
            drop(e.into_dirty());
            write(i as u64 + 2);
            let t = Instant::now();
            let e = region.cut().expect("cut");
            cut.push(ms(t.elapsed()));
            assert_eq!(e.dirty().len(), DIRTY, "dirty pages reported by the cut");
            svc.push(ms(e.stats().duration));
            drop(e.into_dirty());
        }
        let mut forks: Vec<f64> = (0..reps.min(9)).map(|_| ms(common::fork_exit())).collect();
        forks.sort_by(f64::total_cmp);
        rows.push(SizeRow {
            gib,
            empty_ms: median(&mut empty),
            cut_ms: median(&mut cut),
            svc_ms: median(&mut svc),
            fork_min_ms: forks[0],
            fork_med_ms: median(&mut forks),
        });
        drop(region);
        drop(tracker);
    }
    rows
}

// ------------------------------------------------------------------ (b) writer threads

#[derive(Clone, Copy, Debug)]
enum Pat {
    Uniform,
    Hot1Pct,
}

impl Pat {
    fn name(self) -> &'static str {
        match self {
            Pat::Uniform => "uniform",
            Pat::Hot1Pct => "hot1pct",
        }
    }
}

#[derive(Default)]
struct Log {
    writes: u64,
    active_ns: u64,
    slow: Vec<(u64, u64)>,
}

fn writer(
    words: &[AtomicU64],
    pages: u64,
    pat: Pat,
    t: usize,
    stop: &AtomicBool,
    base: Instant,
) -> Log {
    let wpp = (PS / 8) as u64;
    let hot = (pages / 100).max(1);
    let x = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407);
    let mut rng = XorShift64(x);
    let mut next = move || rng.next();
    let mut log = Log::default();
    log.slow.reserve(1 << 16);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        for _ in 0..BATCH {
            let page = match pat {
                Pat::Uniform => next() % pages,
                Pat::Hot1Pct => {
                    if next() % 1000 != 0 {
                        next() % hot * 97 % pages
                    } else {
                        next() % pages
                    }
                }
            };
            seq += 1;
            words[(page * wpp + next() % wpp) as usize].store(seq, Ordering::Relaxed);
        }
        let d = t0.elapsed().as_nanos() as u64;
        log.writes += BATCH;
        log.active_ns += d;
        if d >= SLOW_NS {
            log.slow
                .push((t0.duration_since(base).as_nanos() as u64, d));
        }
    }
    log
}

fn writes_per_s(logs: &[Log]) -> f64 {
    logs.iter()
        .map(|l| l.writes as f64 / (l.active_ns as f64 / 1e9).max(1e-9))
        .sum()
}

/// Runs `threads` writers on `words` for `dur`; with `region`, cuts every 100 ms on this
/// thread. Returns the writers' logs, the cut windows (ns since base) and cut durations.
fn run_writers(
    words: &[AtomicU64],
    region: Option<&Region>,
    threads: usize,
    pat: Pat,
    dur: Duration,
) -> (Vec<Log>, Vec<(u64, u64)>, Vec<f64>) {
    let pages = (words.len() * 8 / PS) as u64;
    let stop = AtomicBool::new(false);
    let base = Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let stop = &stop;
                s.spawn(move || writer(words, pages, pat, t, stop, base))
            })
            .collect();
        let (mut windows, mut cuts) = (Vec::new(), Vec::new());
        let end = base + dur;
        let mut next_cut = base + Duration::from_millis(100);
        while Instant::now() < end {
            let now = Instant::now();
            if next_cut > now {
                std::thread::sleep((next_cut - now).min(end - now));
                continue;
            }
            next_cut += Duration::from_millis(100);
            if let Some(r) = region {
                let c0 = Instant::now();
                let e = r.cut().expect("cut");
                let c1 = Instant::now();
                windows.push((
                    c0.duration_since(base).as_nanos() as u64,
                    c1.duration_since(base).as_nanos() as u64,
                ));
                cuts.push(ms(c1 - c0));
                drop(e.into_dirty());
            }
        }
        stop.store(true, Ordering::Relaxed);
        let logs = hs.into_iter().map(|h| h.join().unwrap()).collect();
        (logs, windows, cuts)
    })
}

struct ThreadRow {
    pat: Pat,
    threads: usize,
    untracked: f64,
    tracked: f64,
    cuts: usize,
    cut_p50: f64,
    cut_p99: f64,
    stall_p50: f64,
    stall_p99: f64,
    faults_per_s: f64,
    svc_p50_ns: u64,
    svc_p99_ns: u64,
}

fn threads_rows(dur: Duration) -> Vec<ThreadRow> {
    let len = GIB;
    let mut rows = Vec::new();
    for pat in [Pat::Hot1Pct, Pat::Uniform] {
        for threads in [1usize, 2, 4, 8] {
            let untracked = {
                let m = Mmap::populated(len);
                // SAFETY: the mapping is ours, page-aligned and alive for the run; only
                // accessed through these atomics.
                let words =
                    unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<AtomicU64>(), len / 8) };
                let (logs, _, _) = run_writers(words, None, threads, pat, dur);
                writes_per_s(&logs)
            };
            let m = Mmap::populated(len);
            let tracker = Tracker::builder().build().expect("Tracker::build");
            // SAFETY: `m` outlives the region (dropped after it) and is only accessed
            // through the region while tracked.
            let region = unsafe { tracker.adopt(m.as_ptr(), len) }.expect("adopt");
            drop(region.cut().expect("first cut").into_dirty());
            let before = tracker.stats();
            let t = Instant::now();
            let (logs, windows, mut cuts) =
                run_writers(region.as_atomic_u64(), Some(&region), threads, pat, dur);
            let secs = t.elapsed().as_secs_f64();
            let after = tracker.stats();
            let svc = after.service_ns.since(&before.service_ns).ok();
            let mut stalls: Vec<f64> = windows
                .iter()
                .map(|&(s, e)| {
                    logs.iter()
                        .flat_map(|l| l.slow.iter())
                        .filter(|&&(b, d)| b < e && b + d > s)
                        .map(|&(_, d)| d as f64 / 1e6)
                        .fold(0.0, f64::max)
                })
                .collect();
            stalls.sort_by(f64::total_cmp);
            cuts.sort_by(f64::total_cmp);
            rows.push(ThreadRow {
                pat,
                threads,
                untracked,
                tracked: writes_per_s(&logs),
                cuts: cuts.len(),
                cut_p50: pct(&cuts, 0.5),
                cut_p99: pct(&cuts, 0.99),
                stall_p50: pct(&stalls, 0.5),
                stall_p99: pct(&stalls, 0.99),
                faults_per_s: (after.wp_faults - before.wp_faults) as f64 / secs,
                svc_p50_ns: svc.as_ref().map(|h| h.p50()).unwrap_or(0),
                svc_p99_ns: svc.as_ref().map(|h| h.p99()).unwrap_or(0),
            });
            drop(region);
            drop(tracker);
            drop(m);
        }
    }
    rows
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: they only have to
    // start (as criterion's do); the measurement runs under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scaling: built; run with `cargo bench -p writewatch --bench scaling`");
        return;
    }
    // `cargo bench` passes `--bench`; a name filter selects part (a) `size` or (b) `threads`.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |p: &str| filter.is_empty() || filter.iter().any(|f| p.contains(f.as_str()));
    let quick = common::quick();
    let load0 = common::loadavg();
    common::write_meta("scaling", &[]);
    println!(
        "## Scaling of the defaults (benches/scaling.rs{})\n",
        if quick { ", quick mode" } else { "" }
    );
    println!("Load average at start: {load0}. Every ratio is against a baseline measured in the same run.\n");

    if want("size") {
        let reps = if quick { 9 } else { 21 };
        let rows = cut_vs_size(reps);
        println!(
            "### (a) Cut at a fixed dirty count ({DIRTY} pages) against region size, defaults\n"
        );
        println!("Sparse `map_anonymous` regions (only the dirty pages written), median of {reps} cuts; fork() of this process with the region mapped, min / median of {} in the same run.\n", reps.min(9));
        println!("| region | cut, 0 dirty | cut, {DIRTY} dirty | service-thread part | fork() min / median | cut / fork (min) | cut / cut at 1 GiB |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        let c1 = rows.first().map(|r| r.cut_ms).unwrap_or(1.0);
        for r in &rows {
            println!(
                "| {} GiB | {:.3} ms | {:.2} ms | {:.2} ms | {:.2} / {:.2} ms | {:.3}x | {:.2}x |",
                r.gib,
                r.empty_ms,
                r.cut_ms,
                r.svc_ms,
                r.fork_min_ms,
                r.fork_med_ms,
                r.cut_ms / r.fork_min_ms,
                r.cut_ms / c1
            );
            common::write_side_file(
                &format!("scaling-size-{}GiB", r.gib),
                &[
                    ("dirty_pages", Value::U(DIRTY as u64)),
                    ("cut_empty_ms", Value::F(r.empty_ms)),
                    ("cut_ms", Value::F(r.cut_ms)),
                    ("service_ms", Value::F(r.svc_ms)),
                    ("fork_min_ms", Value::F(r.fork_min_ms)),
                    ("fork_median_ms", Value::F(r.fork_med_ms)),
                ],
            );
        }
        println!();
    }

    if want("threads") {
        let dur = Duration::from_secs(if quick { 1 } else { 3 });
        let rows = threads_rows(dur);
        println!("### (b) Writer threads on 1 GiB, a cut every 100 ms, defaults (dirty sets only, no copies)\n");
        println!("{:.0} s per run; untracked = the same writers on a plain populated mapping, run just before. writes/s over the writers' batch time; stall = longest batch of {BATCH} writes of any writer overlapping a cut window.\n", dur.as_secs_f64());
        println!("| pattern | threads | untracked writes/s | tracked writes/s | tracked / untracked | cuts | cut p50 / p99 | held-writer stall p50 / p99 | faults/s | service p50 / p99 |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &rows {
            println!(
                "| {} | {} | {:.2} M | {:.2} M | {:.3}x | {} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.0} | {:.1} / {:.1} us |",
                r.pat.name(),
                r.threads,
                r.untracked / 1e6,
                r.tracked / 1e6,
                r.tracked / r.untracked,
                r.cuts,
                r.cut_p50,
                r.cut_p99,
                r.stall_p50,
                r.stall_p99,
                r.faults_per_s,
                r.svc_p50_ns as f64 / 1e3,
                r.svc_p99_ns as f64 / 1e3
            );
            common::write_side_file(
                &format!("scaling-threads-{}-{}", r.pat.name(), r.threads),
                &[
                    ("untracked_writes_per_s", Value::F(r.untracked)),
                    ("tracked_writes_per_s", Value::F(r.tracked)),
                    ("cut_p50_ms", Value::F(r.cut_p50)),
                    ("cut_p99_ms", Value::F(r.cut_p99)),
                    ("stall_p99_ms", Value::F(r.stall_p99)),
                    ("faults_per_s", Value::F(r.faults_per_s)),
                ],
            );
        }
        println!();
    }
    println!("Load average at end: {}.", common::loadavg());
    common::write_meta("scaling-end", &[]);
}
