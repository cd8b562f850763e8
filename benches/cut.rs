//! Cost of closing an epoch (`Region::cut`) on a resident region with scattered dirty pages,
//! beside `fork()` of the same process state and a whole-range re-protect, in one run.
//!
//! Criterion groups `cut_256MiB`, `cut_1GiB`, `cut_4GiB` (quick mode, `WW_BENCH_QUICK=1`:
//! the first two only). In each group:
//! * `fork` - `fork()` in the parent (the child `_exit`s at once; reaping is not timed), with
//!   the tracked region resident: what a fork-based snapshot pays up front;
//! * `ww_cut_0.1pct`, `ww_cut_1pct`, `ww_cut_10pct` - wall time of `region.cut()` (command
//!   round trip included) after writing every 1000th / 100th / 10th page (a regular stride,
//!   as in the reference machine's C cut probe; the writes are tracked faults and are not timed);
//! * `ww_cut_eager_*` - the same cuts on a tracker built with
//!   `.eager_reprotect(1 ms)`: after the writes the bench waits (not timed) until the service
//!   thread has re-armed the written pages in the background, then times the cut, which
//!   re-protects only what is left (here: nothing). The wait (writes + background re-arm) is
//!   reported beside it;
//! * `raw_wp_whole` - one `UFFDIO_WRITEPROTECT` over the whole populated range on a raw uffd
//!   (a separate mapping of the same size, registered on our own uffd), un-protected again
//!   between iterations (not timed).
//!
//! The region is mapped and populated with plain writes, then handed to the tracker with
//! `Tracker::adopt` and cut once (so every page is resident and protected), which keeps the
//! set-up of the 4 GiB case short. Per-cut figures from `Epoch::stats()` (service-thread
//! duration, protect ioctls) go to `<criterion dir>/writewatch-stats/`.

// criterion_group!/criterion_main! generate undocumented public items.
#![allow(missing_docs)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Mmap, RawUffd, Value, PS};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use writewatch::{Epoch, Region, Tracker};

fn sizes() -> Vec<(&'static str, usize)> {
    let mut v = vec![("256MiB", 256usize << 20), ("1GiB", 1 << 30)];
    if !common::quick() {
        v.push(("4GiB", 4 << 30));
    }
    v
}

const FRACTIONS: [(&str, usize); 3] = [("0.1pct", 1000), ("1pct", 100), ("10pct", 10)];

/// Runs `iters` rounds of: write every `stride`-th page of `region` (not timed), then cut.
/// Returns the cuts' total wall time; asserts each cut reports exactly the written pages and
/// hands its epoch to `each` (not timed) before dropping it.
fn timed_cuts(
    region: &Region,
    stride: usize,
    iters: u64,
    mut each: impl FnMut(&Epoch),
) -> Duration {
    let words = region.as_atomic_u64();
    let pages = region.len() / PS;
    let expect = pages.div_ceil(stride);
    let mut total = Duration::ZERO;
    for i in 0..iters {
        for p in (0..pages).step_by(stride) {
            words[p * (PS / 8) + 1].store(i, Ordering::Relaxed);
        }
        let t = Instant::now();
        let e = region.cut().expect("cut");
        total += t.elapsed();
        assert_eq!(e.dirty().len(), expect, "dirty pages reported by the cut");
        each(&e);
        drop(e.into_dirty());
    }
    total
}

fn cut(c: &mut Criterion) {
    common::write_meta(
        "cut",
        &[(
            "sizes",
            Value::S(sizes().iter().map(|s| s.0).collect::<Vec<_>>().join(",")),
        )],
    );
    for (label, len) in sizes() {
        let pages = len / PS;
        let mut g = c.benchmark_group(format!("cut_{label}"));
        g.sampling_mode(SamplingMode::Flat);
        if common::quick() {
            g.sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(3));
        } else {
            g.warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2));
        }

        let tracker = Tracker::builder().build().expect("Tracker::build");
        let mem = Mmap::populated(len);
        // SAFETY: `mem` outlives `region` (dropped after it, below) and is not unmapped or
        // remapped while tracked; we access it only through the region.
        let region = unsafe { tracker.adopt(mem.as_ptr(), len) }.expect("adopt");
        drop(region.cut().expect("first cut").into_dirty()); // all pages resident + protected

        g.bench_function("fork", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| common::fork_exit()).sum())
        });

        for (fname, stride) in FRACTIONS {
            let expect = pages.div_ceil(stride);
            let mut svc = Vec::new();
            let mut ioctls = 0;
            g.bench_function(format!("ww_cut_{fname}"), |b| {
                b.iter_custom(|iters| {
                    timed_cuts(&region, stride, iters, |e| {
                        svc.push(e.stats().duration);
                        ioctls = e.stats().protect_ioctls;
                    })
                })
            });
            svc.sort();
            let med = svc.get(svc.len() / 2).copied().unwrap_or_default();
            eprintln!("  [cut_{label}-ww_cut_{fname}] dirty {expect} protect_ioctls {ioctls} service-thread duration median {med:?} over {} cuts", svc.len());
            let pol = tracker.stats().policy;
            eprintln!(
                "  [cut_{label}-ww_cut_{fname}] policy: re-protection {} ({}); re-arming {} ({})",
                pol.reprotect.chosen, pol.reprotect.why, pol.rearm.chosen, pol.rearm.why
            );
            common::write_side_file(
                &format!("cut_{label}-ww_cut_{fname}"),
                &[
                    ("dirty_pages", Value::U(expect as u64)),
                    ("protect_ioctls", Value::U(ioctls)),
                    (
                        "service_duration_median_ns",
                        Value::U(med.as_nanos() as u64),
                    ),
                    ("cuts", Value::U(svc.len() as u64)),
                ],
            );
        }
        drop(region);
        drop(tracker);

        // The same cuts with the adaptive policy off (`adaptive(false)`: one ioctl per dirty
        // run with merge gap 8, no background re-arming), the defaults before issue 14.
        let tracker = Tracker::builder()
            .adaptive(false)
            .build()
            .expect("Tracker::build");
        // SAFETY: `mem` is a live private mapping owned by this bench, outliving `region`;
        // nothing else references it.
        let region = unsafe { tracker.adopt(mem.as_ptr(), len) }.expect("adopt");
        drop(region.cut().expect("first cut").into_dirty());
        for (fname, stride) in FRACTIONS {
            g.bench_function(format!("ww_cut_fixed_{fname}"), |b| {
                b.iter_custom(|iters| timed_cuts(&region, stride, iters, |_| {}))
            });
        }
        drop(region);
        drop(tracker);

        // The same cuts with eager re-protection: after the writes (not timed) the bench waits
        // until the service thread has re-armed them in the background, as it would during
        // an epoch, then times the cut (which only re-protects what is left).
        let age = Duration::from_millis(1);
        let tracker = Tracker::builder()
            .eager_reprotect(age)
            .build()
            .expect("Tracker::build");
        // SAFETY: as above; the previous region over `mem` was dropped (unregistered).
        let region = unsafe { tracker.adopt(mem.as_ptr(), len) }.expect("adopt");
        drop(region.cut().expect("first cut").into_dirty());
        for (fname, stride) in FRACTIONS {
            let words = region.as_atomic_u64();
            let expect = pages.div_ceil(stride);
            let (mut pre, mut ioctls, mut bg) = (0, 0, Vec::new());
            g.bench_function(format!("ww_cut_eager_{fname}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let before = tracker.stats().eager_pages;
                        let t0 = Instant::now();
                        for p in (0..pages).step_by(stride) {
                            words[p * (PS / 8) + 1].store(i, Ordering::Relaxed);
                        }
                        // Bounded: a page whose writer was delayed past the age after its
                        // fault was served re-faults once re-armed, becomes hot and is left to
                        // the cut (about 1 iteration in 100 here); waiting 20 s for it made
                        // the bench take hours.
                        let deadline = Instant::now() + Duration::from_millis(100);
                        while tracker.stats().eager_pages < before + expect as u64
                            && Instant::now() < deadline
                        {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        bg.push(t0.elapsed());
                        let t = Instant::now();
                        let e = region.cut().expect("cut");
                        total += t.elapsed();
                        assert_eq!(e.dirty().len(), expect, "dirty pages reported by the cut");
                        pre = e.stats().pre_protected;
                        ioctls = e.stats().protect_ioctls;
                        drop(e.into_dirty());
                    }
                    total
                })
            });
            bg.sort();
            let med = bg.get(bg.len() / 2).copied().unwrap_or_default();
            eprintln!("  [cut_{label}-ww_cut_eager_{fname}] dirty {expect} pre_protected {pre} protect_ioctls {ioctls} writes+background re-arm median {med:?}");
            common::write_side_file(
                &format!("cut_{label}-ww_cut_eager_{fname}"),
                &[
                    ("dirty_pages", Value::U(expect as u64)),
                    ("protect_ioctls", Value::U(ioctls)),
                    ("pre_protected", Value::U(pre)),
                    ("background_median_ns", Value::U(med.as_nanos() as u64)),
                ],
            );
        }
        drop(region);
        drop(tracker);
        drop(mem);

        {
            let m = Mmap::populated(len);
            let uffd = RawUffd::new();
            uffd.register_wp(m.as_ptr(), len);
            g.bench_function("raw_wp_whole", |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        uffd.wp(m.as_ptr() as usize, len, false)
                            .expect("un-protect");
                        let t = Instant::now();
                        uffd.wp(m.as_ptr() as usize, len, true).expect("protect");
                        total += t.elapsed();
                    }
                    total
                })
            });
            drop(uffd);
        }
        g.finish();
    }
    common::write_meta("cut-end", &[]);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = cut
}
criterion_main!(benches);
