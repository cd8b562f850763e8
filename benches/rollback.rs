//! Fuzzing-grade rollback (issue 12): the snapshot fuzz loop, scribble 1-8 random pages then
//! `Region::rollback`, against `memcpy` of the whole region (the reset a fuzzer without
//! dirty tracking does), both measured in the same run, at 4 MiB, 64 MiB and 1 GiB.
//!
//! Prints one markdown table row per size: cases/s with writewatch (one long-lived snapshot;
//! the writes' faults and the rollback are both timed: a fuzz case's whole reset cost),
//! cases/s with memcpy (the same writes, then a copy of the whole region from a pristine
//! image), and their ratio. `WW_BENCH_QUICK=1`: 4 MiB and 64 MiB only, fewer cases.
//! Run with `cargo bench -p writewatch --bench rollback`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use writewatch::Tracker;
use writewatch_testkit::XorShift64;

const PS: usize = 4096;

fn run(len: usize, budget: Duration, in_thread: bool) -> (f64, f64) {
    let t = Tracker::builder()
        .in_thread_faults(in_thread)
        .build()
        .expect("tracker");
    let region = t.map_anonymous(len).expect("region");
    let w = region.as_atomic_u64();
    for (i, x) in w.iter().enumerate() {
        x.store(i as u64, Relaxed);
    }
    let pages = (len / PS) as u64;
    let snap = region.snapshot().expect("snapshot");
    let mut rng = XorShift64(0x2545_f491);
    let wpp = (PS / 8) as u64;
    // writewatch: scribble + rollback.
    let (mut cases, t0) = (0u64, Instant::now());
    while t0.elapsed() < budget {
        for _ in 0..1 + rng.below(8) {
            w[(rng.below(pages) * wpp + rng.below(wpp)) as usize].store(cases, Relaxed);
        }
        region.rollback(&snap).expect("rollback");
        cases += 1;
    }
    let ww = cases as f64 / t0.elapsed().as_secs_f64();
    // memcpy baseline: the same scribbles on plain memory, then a whole-region copy.
    let pristine = vec![1u8; len];
    let mut mem = vec![0u8; len];
    mem.copy_from_slice(&pristine);
    let (mut cases, t0) = (0u64, Instant::now());
    while t0.elapsed() < budget {
        for _ in 0..1 + rng.below(8) {
            let i = (rng.below(pages) * PS as u64 + rng.below(PS as u64)) as usize;
            mem[i] = cases as u8;
        }
        mem.copy_from_slice(std::hint::black_box(&pristine));
        std::hint::black_box(&mem);
        cases += 1;
    }
    let mc = cases as f64 / t0.elapsed().as_secs_f64();
    (ww, mc)
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: a short smoke run
    // (it must work; the figures are for `cargo bench`).
    let smoke = !std::env::args().any(|a| a == "--bench");
    if smoke {
        let (ww, mc) = run(1 << 20, Duration::from_millis(50), false);
        println!("rollback smoke run: {ww:.0} cases/s vs memcpy {mc:.0}/s");
        return;
    }
    let quick = std::env::var("WW_BENCH_QUICK").is_ok_and(|v| v == "1");
    let budget = Duration::from_millis(if quick { 700 } else { 2000 });
    let mut sizes = vec![("4 MiB", 4usize << 20), ("64 MiB", 64 << 20)];
    if !quick {
        sizes.push(("1 GiB", 1 << 30));
    }
    println!("| region | fault mode | writewatch rollback cases/s | memcpy cases/s | ratio |");
    println!("|---|---|---:|---:|---:|");
    for (name, len) in sizes {
        for in_thread in [false, true] {
            let (ww, mc) = run(len, budget, in_thread);
            let mode = if in_thread {
                "in-thread"
            } else {
                "service thread"
            };
            println!("| {name} | {mode} | {ww:.0} | {mc:.0} | {:.1}x |", ww / mc);
        }
    }
}
