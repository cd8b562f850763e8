//! The request of issue 17 in Rust: "exactly the same effect as fork, just without creating a
//! new process". The Mach program it came with (`vm_allocate`, write 'a', `vm_remap` with
//! copy, read 'a' on both sides, write 'b' to the copy, the original still reads 'a'), with
//! `Region::fork` in place of `vm_remap`, printing the resident memory at each step; then the
//! same on 1 GiB with timings, and 1% of the pages written on each side.
//!
//! Every step is checked (exit status 1 if a side sees the other's write).
//!
//! ```text
//! cargo run --release --example cow-fork                # 1 page, then 1 GiB
//! cargo run --release --example cow-fork -- --quick     # 1 page, then 64 MiB (make test)
//! ```

use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use clap::Parser;
use writewatch::{Region, Tracker};
use writewatch_testkit::{resident_of, smaps_of_ranges, Rng};

#[derive(Parser, Debug)]
#[command(about = "Region::fork: the Mach vm_remap(copy) program, then 1 GiB with timings")]
struct Args {
    /// Size of the large run in MiB.
    #[arg(long, default_value_t = 1024)]
    mib: usize,
    /// Short run for `make test`: 64 MiB.
    #[arg(long)]
    quick: bool,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.quick {
        args.mib = 64;
    }
    writewatch_testkit::exit_code("cow-fork", run(&args))
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}"))
    }
}

/// Prints the first byte `origin` and `clone` read after `step`, and checks they are `want`.
fn check_reads(step: &str, origin: &Region, clone: &Region, want: (u8, u8)) -> Result<(), String> {
    let got = (byte(origin, 0), byte(clone, 0));
    println!(
        "  {step}: origin reads {}, clone reads {}",
        got.0 as char, got.1 as char
    );
    check(
        got == want,
        &format!("origin '{}', clone '{}'", want.0 as char, want.1 as char),
    )
}

/// The process's resident memory (VmRSS) in KiB.
fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory at a step: the process's VmRSS; Rss, Pss and Private_Dirty of both
/// regions from /proc/self/smaps (their mappings may have merged into one VMA: counted once);
/// and each region's resident pages from its page tables.
fn rss_line(step: &str, origin: &Region, clone: Option<&Region>) {
    let mut ranges = vec![(origin.as_ptr() as usize, origin.len())];
    if let Some(c) = clone {
        ranges.push((c.as_ptr() as usize, c.len()));
    }
    let s = smaps_of_ranges(&ranges);
    let o = resident_of(origin.as_ptr() as usize, origin.len());
    let c = clone.map_or(0, |c| resident_of(c.as_ptr() as usize, c.len()));
    println!(
        "  {step:<26} VmRSS {:>8} KiB | smaps both: Rss {:>8} KiB Pss {:>8} KiB Private_Dirty {:>8} KiB | resident: origin {:>8} KiB, clone {:>8} KiB",
        vm_rss_kib(),
        s.rss / 1024,
        s.pss / 1024,
        s.private_dirty / 1024,
        o / 1024,
        c / 1024,
    );
}

fn byte(r: &Region, at: usize) -> u8 {
    // One word read atomically (other threads may write the region in general).
    (r.as_atomic_u64()[at / 8].load(Relaxed) >> ((at % 8) * 8)) as u8
}

fn put(r: &Region, at: usize, b: u8) {
    let w = &r.as_atomic_u64()[at / 8];
    let shift = (at % 8) * 8;
    let v = w.load(Relaxed) & !(0xFF << shift) | (u64::from(b) << shift);
    w.store(v, Relaxed);
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let tracker = Tracker::builder().build()?;

    println!("cow-fork: the request's program, one page");
    let origin = tracker.map_anonymous(4096)?; // vm_allocate
    rss_line("allocated", &origin, None);
    put(&origin, 0, b'a');
    println!("  origin: {}", byte(&origin, 0) as char);
    rss_line("wrote 'a'", &origin, None);
    let clone = origin.fork()?; // vm_remap(..., copy = TRUE, VM_INHERIT_COPY)
    check_reads("cloned", &origin, &clone, (b'a', b'a'))?;
    rss_line("cloned, both read", &origin, Some(&clone));
    put(&clone, 0, b'b');
    check_reads("wrote 'b' to the clone", &origin, &clone, (b'a', b'b'))?;
    rss_line("clone wrote 'b'", &origin, Some(&clone));
    drop(clone);
    drop(origin);

    let len = args.mib << 20;
    let pages = len / 4096;
    println!("\ncow-fork: {} MiB ({pages} pages)", args.mib);
    let origin = tracker.map_anonymous(len)?;
    let w = origin.as_atomic_u64();
    let t0 = Instant::now();
    for p in 0..pages {
        w[p * 512].store(p as u64 + 1, Relaxed);
    }
    println!("  populated in {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    rss_line("populated", &origin, None);
    let t0 = Instant::now();
    let clone = origin.fork()?;
    let fork_ms = t0.elapsed().as_secs_f64() * 1e3;
    let os_fork_ms = writewatch_testkit::timed_fork_exit().as_secs_f64() * 1e3;
    println!(
        "  Region::fork {fork_ms:.2} ms; this process's fork() at the same resident size {os_fork_ms:.2} ms ({:.2}x)",
        fork_ms / os_fork_ms
    );
    rss_line("forked", &origin, Some(&clone));
    let before = smaps_of_ranges(&[(origin.as_ptr() as usize, len)]);
    let k = pages / 100;
    let order = Rng::shuffled(pages, 0xC0F);
    let v = clone.as_atomic_u64();
    let t0 = Instant::now();
    for &p in &order[..k] {
        w[p * 512 + 1].store(0xA, Relaxed);
    }
    let t_origin = t0.elapsed();
    let t0 = Instant::now();
    for &p in &order[k..2 * k] {
        v[p * 512 + 1].store(0xB, Relaxed);
    }
    let t_clone = t0.elapsed();
    println!(
        "  1% written on each side ({k} pages): first write {:.1} us/page on the origin, {:.1} us/page on the clone",
        t_origin.as_secs_f64() * 1e6 / k as f64,
        t_clone.as_secs_f64() * 1e6 / k as f64
    );
    rss_line("1% written on each side", &origin, Some(&clone));
    let after = smaps_of_ranges(&[
        (origin.as_ptr() as usize, len),
        (clone.as_ptr() as usize, len),
    ]);
    let cost = after.private_dirty.saturating_sub(before.private_dirty);
    println!(
        "  memory added: {} KiB for {} KiB written ({:.3}x)",
        cost / 1024,
        (2 * k * 4096) / 1024,
        cost as f64 / (2 * k * 4096) as f64
    );
    for &p in &order[..2 * k] {
        let (a, b) = (w[p * 512 + 1].load(Relaxed), v[p * 512 + 1].load(Relaxed));
        check(
            (a, b) == (0xA, 0) || (a, b) == (0, 0xB),
            "each side sees only its own writes",
        )?;
        check(
            v[p * 512].load(Relaxed) == p as u64 + 1,
            "the clone keeps the content at the fork",
        )?;
    }
    // Dropping the origin gives the clone every page it still shares (a copy each).
    let t0 = Instant::now();
    drop(origin);
    println!(
        "  dropped the origin in {:.1} ms (the clone got the {} pages it still shared)",
        t0.elapsed().as_secs_f64() * 1e3,
        pages - 2 * k
    );
    rss_line("origin dropped (the clone)", &clone, None);
    for &p in &order[..2 * k] {
        check(
            v[p * 512].load(Relaxed) == p as u64 + 1,
            "the clone keeps its content",
        )?;
    }
    for p in (0..pages).step_by(97) {
        check(
            v[p * 512].load(Relaxed) == p as u64 + 1,
            "the clone keeps its content",
        )?;
    }
    println!("cow-fork: ok");
    Ok(())
}
