//! The snapshot fuzz loop: snapshot a region once, then per case scribble a few random pages
//! and `rollback` to the snapshot, checking the region is back to the snapshot's bytes.
//!
//! Oracle: a plain copy of the region taken before the loop, compared after every rollback on
//! the pages the case touched, and on the whole region every `--full-every` cases. Prints
//! rollbacks/s next to the rate of `memcpy` of the whole region (the naive reset) in the same
//! run. Exits 1 if the oracle fails.
//!
//! ```text
//! cargo run --release --example fuzz-reset                 # 64 MiB, 20000 cases
//! cargo run --release --example fuzz-reset -- --quick      # a few seconds (make test)
//! ```

use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use clap::Parser;
use writewatch::Tracker;
use writewatch_testkit::Rng;

#[derive(Parser, Debug)]
#[command(about = "Snapshot fuzz loop: scribble pages, roll back, check against a copy")]
struct Args {
    /// Region size in MiB.
    #[arg(long, default_value_t = 64, default_value_if("quick", "true", "16"))]
    mib: usize,
    /// Number of fuzz cases.
    #[arg(
        long,
        default_value_t = 20_000,
        default_value_if("quick", "true", "2000")
    )]
    cases: u64,
    /// Compare the whole region with the oracle every N cases (and after the last).
    #[arg(
        long,
        default_value_t = 1_000,
        default_value_if("quick", "true", "250")
    )]
    full_every: u64,
    /// Random seed.
    #[arg(long, default_value_t = 0x5EED)]
    seed: u64,
    /// Short run for `make test`: 16 MiB, 2000 cases, full compare every 250.
    #[arg(long)]
    quick: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    writewatch_testkit::exit_code("fuzz-reset", run(&args))
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let len = args.mib << 20;
    let tracker = Tracker::builder().build()?;
    let region = tracker.map_anonymous(len)?;
    let ps = region.page_size();
    let pages = region.page_count();
    let words = region.as_atomic_u64();
    let wpp = ps / 8;
    let mut rng = Rng(args.seed | 1);

    // Initial content: every page non-zero and distinct.
    for (i, w) in words.iter().enumerate() {
        w.store(if i % 7 == 0 { 0 } else { rng.next() }, Relaxed);
    }
    let mut oracle = vec![0u8; len];
    region.read_at(0, &mut oracle)?;
    let snap = region.snapshot()?;
    println!(
        "fuzz-reset: {} MiB region ({pages} pages), {} cases, backend {}",
        args.mib,
        args.cases,
        tracker.backend().name()
    );

    let mut page_buf = vec![0u8; ps];
    let mut whole = vec![0u8; len];
    let (mut t_rollback, mut t_case) = (Duration::ZERO, Duration::ZERO);
    let mut rewritten = 0u64;
    let mut full_checks = 0u64;
    let loop_start = Instant::now();
    for case in 0..args.cases {
        let t0 = Instant::now();
        let k = 1 + rng.below(8);
        let mut touched = Vec::with_capacity(k as usize);
        for _ in 0..k {
            let p = rng.below(pages) as usize;
            touched.push(p);
            // Scribble: a run of random words somewhere in the page.
            let n = 1 + rng.below(wpp as u64) as usize;
            let at = rng.below((wpp - n + 1) as u64) as usize;
            for w in &words[p * wpp + at..p * wpp + at + n] {
                w.store(rng.next(), Relaxed);
            }
        }
        let t1 = Instant::now();
        rewritten += region.rollback(&snap)?;
        let t2 = Instant::now();
        t_rollback += t2 - t1;
        t_case += t2 - t0;
        for &p in &touched {
            region.read_at(p * ps, &mut page_buf)?;
            if page_buf[..] != oracle[p * ps..(p + 1) * ps] {
                return Err(format!(
                    "case {case}: page {p} differs from the snapshot after rollback"
                )
                .into());
            }
        }
        if (case + 1) % args.full_every == 0 || case + 1 == args.cases {
            region.read_at(0, &mut whole)?;
            if whole != oracle {
                let p = whole
                    .chunks_exact(ps)
                    .zip(oracle.chunks_exact(ps))
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(format!(
                    "case {case}: full compare: page {p} differs from the snapshot"
                )
                .into());
            }
            full_checks += 1;
        }
    }
    let loop_time = loop_start.elapsed();

    // The naive reset in the same run: memcpy of the whole region.
    let copies = 20u32;
    let t = Instant::now();
    for _ in 0..copies {
        whole.copy_from_slice(std::hint::black_box(&oracle));
        std::hint::black_box(&mut whole);
    }
    let t_memcpy = t.elapsed() / copies;

    let per_rb = t_rollback / args.cases.max(1) as u32;
    let per_case = t_case / args.cases.max(1) as u32;
    println!(
        "fuzz-reset: OK: {} cases, {full_checks} full compares, {rewritten} pages rewritten by rollback ({:.1}/rollback)",
        args.cases,
        rewritten as f64 / args.cases.max(1) as f64
    );
    println!(
        "  rollback:            {:>10.0} rollbacks/s ({per_rb:?} each; with scribbling {:.0} cases/s, {per_case:?} each)",
        1.0 / per_rb.as_secs_f64().max(1e-12),
        1.0 / per_case.as_secs_f64().max(1e-12),
    );
    println!(
        "  memcpy {:>3} MiB:      {:>10.0} copies/s    ({t_memcpy:?} each, {:.1} GB/s)",
        args.mib,
        1.0 / t_memcpy.as_secs_f64().max(1e-12),
        len as f64 / t_memcpy.as_secs_f64().max(1e-12) / 1e9
    );
    println!(
        "  rollback vs memcpy:  {:.1}x   (loop total {loop_time:?}, checks included)",
        t_memcpy.as_secs_f64() / per_rb.as_secs_f64().max(1e-12)
    );
    let s = tracker.stats();
    println!(
        "  tracker: wp_faults {} preserved {} service_ns p50 {} p99 {} max {}",
        s.wp_faults,
        s.preserved,
        s.service_ns.p50(),
        s.service_ns.p99(),
        s.service_ns.max()
    );
    Ok(())
}
