//! `uffd-demo`: the whole writewatch pipeline on one region, measured beside fork().
//!
//! Writer threads keep writing a tracked region (skewed: a few hot pages, many cold ones).
//! Every epoch the demo takes a live cut (the library needs no pause) and streams the epoch,
//! read as it was at the cut while the writers continue, into an incremental checkpoint store.
//! At the end it restores every epoch from disk and compares it with a reference taken at each
//! cut. To take that reference (a CRC of every page) the demo briefly quiesces its *own*
//! writers around the cut: the library does not need it, the comparison does.
//!
//! ```text
//! cargo run --release --example uffd-demo -- [--size 1G] [--threads 2] [--epochs 5]
//!     [--epoch-ms 2000] [--pattern random|seq|zipf] [--backend sync|async|mprotect|auto]
//!     [--in-thread] [--eager-ms MS] [--fixed] [--dir DIR] [--keep] [--json] [--no-baseline]
//!     [--live-cuts]
//! ```
//!
//! Defaults are the library's defaults: the adaptive policy (`TrackerBuilder::adaptive`) is on
//! and the summary prints what it chose (`Tracker::stats().policy`); `--fixed` turns it off
//! (the fixed behaviour before issue 14), for comparison in the same conditions.
//!
//! Issue 14 figures: the same writers run for the same total duration on an untracked
//! mapping of the same size, half before and half after the tracked run (skip with
//! `--no-baseline`); the summary reports
//! `writes/s tracked (with checkpointing) / untracked` and the held-writer stall per cut (the
//! longest timestamped batch of 64 writes of any writer overlapping the cut), p50/p99/max and
//! over fork(). The demo quiesces its writers around each cut for its reference (so no writer
//! can be held by a cut) unless `--live-cuts` is given.
//! Logging: `RUST_LOG` (e.g. `RUST_LOG=writewatch_core=debug`), as for the `writewatch` CLI.
//!
//! `--dir DIR`: a new path or an empty directory gets a new store; an existing store is
//! continued (resumed from its newest epoch; `--size` must match it). Any other non-empty
//! directory is refused (exit 2): the demo never deletes or overwrites what it did not create.
//! `--dir` also takes a store URL (`file:///dir`, `s3://bucket/prefix` configured by
//! `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ALLOW_HTTP`).

mod instruments;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use instruments::*;
use serde::Serialize;
use writewatch::checkpoint::{Store, MANIFEST_NAME};
use writewatch::{cut_and_save_epoch, resume, save_epoch, Backend, Region, Tracker};
use writewatch_testkit::XorShift64;

/// The `--json` output.
#[derive(Serialize)]
struct DemoJson<'a> {
    verified: bool,
    epochs: usize,
    /// Store epoch numbers written by this run (a continued store starts past its head).
    store_epochs: &'a [u64],
    /// Per epoch of `store_epochs`: CRC-32C of the little-endian CRC-32Cs of its pages in
    /// the reference taken at its cut (empty with `--live-cuts`), to check a restore made
    /// elsewhere (for example by `writewatch restore`) against the demo's own reference.
    reference_digests: Vec<u32>,
    resumed_from: Option<u64>,
    region_bytes: usize,
    backend: &'a str,
    threads: usize,
    pattern: String,
    faults: u64,
    preserved_pages: u64,
    dirty_pages: &'a [u64],
    cut_ms: &'a [f64],
    fork_ms: f64,
    checkpoint_bytes: &'a [u64],
    checkpoint_mb_s: f64,
    restore_mb_s: f64,
    fault_ns_p50: u64,
    fault_ns_p99: u64,
    writes: u64,
    seconds: f64,
    /// Issue 14 instruments (see `Instruments`): writer throughput and held-writer stalls.
    #[serde(flatten)]
    perf: PerfJson,
    /// What the adaptive policy chose at the last cut (`Tracker::stats().policy`), one line
    /// per decision.
    policy: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Pattern {
    /// 99.9% of writes to 1% hot pages, 0.1% uniformly random.
    Random,
    /// Each thread sweeps its part of the region sequentially.
    Seq,
    /// Power-law skew over the whole region.
    Zipf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Sync,
    Async,
    Mprotect,
    Auto,
}

#[derive(Parser, Debug)]
#[command(
    about = "writewatch end-to-end demo: live cuts -> incremental checkpoints -> verified restores, beside fork()"
)]
struct Args {
    /// Region size (K/M/G suffixes). Default: 1G, or a quarter of RAM if smaller.
    #[arg(long)]
    size: Option<String>,
    /// Writer threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Epochs (cuts) to take.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Length of an epoch in milliseconds.
    #[arg(long, default_value_t = 2000)]
    epoch_ms: u64,
    /// Write pattern.
    #[arg(long, value_enum, default_value_t = Pattern::Random)]
    pattern: Pattern,
    /// Tracking backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Sync backend: writers serve their own faults in a SIGBUS handler (in-thread mode).
    #[arg(long)]
    in_thread: bool,
    /// Sync backend: re-arm pages written this many milliseconds ago in the background, so
    /// cuts only re-protect recent writes (eager re-protection). 0 = off.
    #[arg(long, default_value_t = 0)]
    eager_ms: u64,
    /// Turn the adaptive policy off (`adaptive(false)`: no background re-arming, merge gap 8,
    /// no fault-around), the defaults before issue 14.
    #[arg(long)]
    fixed: bool,
    /// Checkpoint store directory: new, empty, or an existing store to continue (default: a
    /// temporary directory, removed unless --keep). Other non-empty directories are refused.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the store.
    #[arg(long)]
    keep: bool,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Skip the untracked writer baseline (by default the same writers run for the same total
    /// duration on a plain, untracked mapping of the same size, half before and half after the
    /// tracked run, for the throughput ratio).
    #[arg(long)]
    no_baseline: bool,
    /// Cut while the writers run (no quiesce around the cut): shows the held-writer stall of a
    /// live cut. The reference CRCs cannot be taken then, so the per-page comparison is skipped
    /// (the store is still verified and every epoch restored). Copy-before-write backends only.
    #[arg(long)]
    live_cuts: bool,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mul) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1usize << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?}: use e.g. 256M or 1G"))?;
    let bytes = (n * mul as f64) as usize;
    Ok(bytes / 4096 * 4096)
}

fn default_size() -> usize {
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(usize::MAX);
    (1usize << 30).min(ram / 4) / 4096 * 4096
}

/// Writers: pause on request (to let the demo take its reference), otherwise write forever.
struct Control {
    stop: AtomicBool,
    pause: AtomicBool,
    paused: AtomicUsize,
    writes: AtomicU64,
    /// Paused writers sleep on this (not in a polling loop: a writer waking every 100 us
    /// made its vCPU a TLB-flush target of every protect call of the cut, which then cost
    /// ~25 us each instead of ~1.5 us; see docs/benchmarks.md, "What a TLB flush costs").
    gate: (std::sync::Mutex<()>, std::sync::Condvar),
}

/// Writes in batches of `BATCH` stores; each batch is timestamped (two `Instant::now()` per
/// batch, ~1 % of a batch's time), never each store.
const BATCH: u64 = 64;
/// A batch that took at least this long had a stall (a write fault, held or serviced, or the
/// thread was preempted): a batch of 64 stores normally takes a few microseconds.
const SLOW_BATCH_NS: u64 = 10_000;

fn writer<M: Target>(
    mem: Arc<M>,
    ctl: Arc<Control>,
    t: usize,
    threads: usize,
    pattern: Pattern,
    base: Instant,
) -> WriterLog {
    let words = mem.words();
    let pages = mem.pages();
    let wpp = (mem.page_size() / 8) as u64;
    let hot = (pages / 100).max(1);
    let mut rng =
        XorShift64(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let share = pages / threads as u64;
    let mut cursor = share * t as u64;
    let mut seq = 0u64;
    let mut log = WriterLog::default();
    log.slow.reserve(1 << 16);
    while !ctl.stop.load(SeqCst) {
        if ctl.pause.load(SeqCst) {
            ctl.paused.fetch_add(1, SeqCst);
            let mut g = ctl.gate.0.lock().unwrap();
            while ctl.pause.load(SeqCst) && !ctl.stop.load(SeqCst) {
                g = ctl.gate.1.wait(g).unwrap();
            }
            drop(g);
            ctl.paused.fetch_sub(1, SeqCst);
            continue;
        }
        let t0 = Instant::now();
        for _ in 0..BATCH {
            let page = match pattern {
                Pattern::Random => {
                    if rng.next() % 1000 != 0 {
                        rng.next() % hot * 97 % pages
                    } else {
                        rng.next() % pages
                    }
                }
                Pattern::Seq => {
                    cursor += 1;
                    if cursor >= share * (t as u64 + 1) {
                        cursor = share * t as u64;
                    }
                    cursor
                }
                Pattern::Zipf => ((rng.unit().powi(4)) * pages as f64) as u64 % pages,
            };
            seq += 1;
            let word = page * wpp + rng.next() % wpp;
            words[word as usize].store(((t as u64) << 56) | seq, SeqCst);
        }
        log.record(base, t0, t0.elapsed());
        if log.writes % 4096 == 0 {
            ctl.writes.fetch_add(4096, SeqCst);
        }
    }
    log
}

/// CRC-32C of a list of page CRCs, as little-endian bytes (the JSON `reference_digests`).
fn page_crc_digest(crcs: &[u32]) -> u32 {
    let bytes: Vec<u8> = crcs.iter().flat_map(|c| c.to_le_bytes()).collect();
    crc32c::crc32c(&bytes)
}

fn page_crcs(region: &Region) -> Vec<u32> {
    // SAFETY: the demo's writers are paused (quiesced) while the reference is taken.
    let bytes = unsafe { region.as_slice() };
    bytes
        .chunks_exact(region.page_size())
        .map(crc32c::crc32c)
        .collect()
}

fn fork_ms() -> f64 {
    let t = Instant::now();
    // SAFETY: the child exits immediately with _exit (async-signal-safe).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the forked child.
        unsafe { libc::_exit(0) };
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if pid > 0 {
        let mut st = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
    }
    ms
}

fn human(bytes: f64) -> String {
    if bytes >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
    } else if bytes >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", bytes / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", bytes / 1024.0)
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("uffd-demo: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let size = match &args.size {
        Some(s) => parse_size(s)?,
        None => default_size(),
    };
    if size < 4096 * args.threads.max(1) * 4 {
        return Err(format!("--size {size} is too small for {} threads", args.threads).into());
    }
    let backend = match args.backend {
        BackendArg::Sync => Backend::SyncUffd,
        BackendArg::Async => Backend::AsyncUffd,
        BackendArg::Mprotect => Backend::Mprotect,
        BackendArg::Auto => Backend::Auto,
    };
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!(
                "uffd-demo-{}-{}",
                std::process::id(),
                Instant::now().elapsed().as_nanos()
            ));
            tmp
        }
    };
    // Never delete anything: a new or empty directory gets a new store, an existing store is
    // continued, anything else is refused (Store::create refuses non-empty directories).
    let url = dir.to_str().filter(|d| d.contains("://"));
    let mut store = if let Some(url) = url {
        // s3://bucket/prefix (configured by AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
        Store::open_or_create_url(url).map_err(|e| format!("--dir: {e}"))?
    } else if dir.join(MANIFEST_NAME).is_file() {
        Store::open(&dir)?
    } else {
        Store::create(&dir).map_err(|e| format!("--dir: {e}"))?
    };

    // Issue 14: the same writers on an untracked mapping, for the throughput ratio: half of
    // the baseline before the tracked run and half after it, so that a machine whose load
    // drifts during the run biases neither side (the baseline is the mean of both halves).
    let half = Duration::from_millis(args.epoch_ms * args.epochs as u64 / 2);
    let untracked_before = if args.no_baseline {
        None
    } else {
        if !args.json {
            eprintln!(
                "uffd-demo: untracked baseline: {} writers on a plain {} mapping, {:.1} s before and {:.1} s after the tracked run",
                args.threads,
                human(size as f64),
                half.as_secs_f64(),
                half.as_secs_f64()
            );
        }
        Some(untracked_baseline(size, args.threads, args.pattern, half)?)
    };

    let mut builder = Tracker::builder()
        .backend(backend)
        .copy_budget(256 << 20)
        .in_thread_faults(args.in_thread)
        .adaptive(!args.fixed);
    if args.eager_ms > 0 {
        builder = builder.eager_reprotect(Duration::from_millis(args.eager_ms));
    }
    let tracker = builder.build()?;
    let live = tracker.backend().copies_before_write();
    let backend = format!(
        "{}{}{}{}",
        tracker.backend().name(),
        if args.in_thread { "+in-thread" } else { "" },
        if args.eager_ms > 0 { "+eager" } else { "" },
        if args.fixed { "+fixed" } else { "" }
    );
    let region = Arc::new(tracker.map_anonymous(size)?);
    // A continued store: the region starts from its newest epoch (a no-op for a new store).
    let resumed_from = store.head().map(|h| h.epoch);
    resume(&mut store, &region, None)
        .map_err(|e| format!("continuing the store in {}: {e}", dir.display()))?;
    let ctl = Arc::new(Control::new());
    let base = Instant::now();
    let handles: Vec<_> = (0..args.threads)
        .map(|t| {
            let (r, c) = (Arc::clone(&region), Arc::clone(&ctl));
            let (threads, pattern) = (args.threads, args.pattern);
            std::thread::Builder::new()
                .name(format!("demo-writer-{t}"))
                .spawn(move || writer(r, c, t, threads, pattern, base))
                .unwrap()
        })
        .collect();

    let pb = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        let pb = indicatif::ProgressBar::new(args.epochs as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{spinner} epoch {pos}/{len} {wide_msg}")
                .unwrap(),
        );
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    };
    if !args.json {
        eprintln!(
            "uffd-demo: {} region, {} writer threads ({:?}), {} epochs of {} ms, backend {backend}, store {}",
            human(size as f64),
            args.threads,
            args.pattern,
            args.epochs,
            args.epoch_ms,
            dir.display()
        );
        eprintln!("note: the demo quiesces its own writers for a moment at each cut to take a reference CRC of every page; the cut itself needs no pause.");
        if !live {
            eprintln!("note: the {backend} backend cannot copy pages before writes, so the writers also stay quiesced while each epoch is written to the store (cut_and_copy).");
        }
    }

    let mut refs: Vec<Vec<u32>> = Vec::new();
    let mut store_epochs: Vec<u64> = Vec::new();
    let mut cut_ms = Vec::new();
    let mut ckpt_bytes = Vec::new();
    let mut dirty_pages = Vec::new();
    let mut ckpt_secs = 0.0f64;
    let mut cut_windows: Vec<(Instant, Instant)> = Vec::new();
    // --live-cuts: no quiesce around the cut (copy-before-write backends only).
    let quiesce = !(live && args.live_cuts);
    let t_run = Instant::now();
    for k in 0..args.epochs {
        let t_epoch = Instant::now();
        let f0 = tracker.stats().wp_faults;
        while t_epoch.elapsed() < Duration::from_millis(args.epoch_ms) {
            std::thread::sleep(Duration::from_millis(200));
            let s = tracker.stats();
            let secs = t_epoch.elapsed().as_secs_f64();
            pb.set_message(format!(
                "faults/s {:>8.0}  dirty {:>7}  last cut {:>6.2} ms  ckpt {:>7.1} MB/s  preserved {:>7}",
                (s.wp_faults - f0) as f64 / secs,
                region.dirty_count().unwrap_or(0),
                cut_ms.last().copied().unwrap_or(0.0),
                ckpt_bytes.iter().sum::<u64>() as f64 / 1e6 / ckpt_secs.max(1e-9),
                s.preserved
            ));
        }
        // Quiesce the demo's writers (for the reference only), cut, take the reference.
        if quiesce {
            ctl.pause.store(true, SeqCst);
            while ctl.paused.load(SeqCst) < args.threads {
                std::thread::yield_now();
            }
        }
        let (epoch, info) = if live {
            let c0 = Instant::now();
            let epoch = region.cut()?;
            cut_windows.push((c0, Instant::now()));
            if quiesce {
                refs.push(page_crcs(&region));
            }
            ctl.resume();
            // Stream the epoch while the writers run again: pages are read as at the cut.
            let t_ck = Instant::now();
            let info = save_epoch(&mut store, &epoch)?;
            ckpt_secs += t_ck.elapsed().as_secs_f64();
            (epoch, info)
        } else {
            // No copy-before-write: copy the dirty pages while the writers stay quiesced.
            refs.push(page_crcs(&region));
            let t_ck = Instant::now();
            let (epoch, info) = cut_and_save_epoch(&mut store, &region)?;
            ckpt_secs += t_ck.elapsed().as_secs_f64();
            ctl.resume();
            (epoch, info)
        };
        store_epochs.push(info.epoch);
        cut_ms.push(epoch.stats().duration.as_secs_f64() * 1e3);
        ckpt_bytes.push(info.file_len);
        dirty_pages.push(epoch.dirty().len() as u64);
        drop(epoch);
        pb.inc(1);
        let _ = k;
    }
    ctl.finish();
    let logs: Vec<WriterLog> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    pb.finish_and_clear();
    let untracked = match untracked_before {
        Some(before) => {
            let after = untracked_baseline(size, args.threads, args.pattern, half)?;
            if !args.json {
                eprintln!(
                    "uffd-demo: untracked baseline {:.2} M writes/s before, {:.2} M after the tracked run",
                    before / 1e6,
                    after / 1e6
                );
            }
            Some((before + after) / 2.0)
        }
        None => None,
    };
    let stats = tracker.stats();
    let fork = (0..3).map(|_| fork_ms()).fold(f64::MAX, f64::min);

    // Restore every epoch from disk and compare with the reference.
    let mut verified = true;
    let mut mismatches = Vec::new();
    let t_restore = Instant::now();
    let mut restored_bytes = 0u64;
    for (i, k) in store_epochs.iter().enumerate() {
        let k = *k;
        let m = store.restore(k)?;
        restored_bytes += m.len() as u64;
        // --live-cuts: no reference was taken; the restore and the store verify still run.
        let Some(reference) = refs.get(i) else {
            continue;
        };
        let bad = m
            .as_slice()
            .chunks_exact(region.page_size())
            .zip(reference)
            .filter(|(p, c)| crc32c::crc32c(p) != **c)
            .count();
        if bad > 0 {
            verified = false;
            mismatches.push((k, bad));
        }
    }
    let restore_secs = t_restore.elapsed().as_secs_f64();
    let verify = store.verify()?;
    verified &= verify.is_ok();
    let checkpoint_mb_s = ckpt_bytes.iter().sum::<u64>() as f64 / 1e6 / ckpt_secs.max(1e-9);
    let restore_mb_s = restored_bytes as f64 / 1e6 / restore_secs.max(1e-9);
    let p50 = stats.service_ns.percentile(0.5);
    let p99 = stats.service_ns.percentile(0.99);
    let perf = perf_summary(PerfInput {
        untracked,
        logs: &logs,
        base,
        cut_windows: &cut_windows,
        cut_ms: &cut_ms,
        fork_ms: fork,
        quiesced: quiesce,
    });

    if args.json {
        let out = DemoJson {
            verified,
            epochs: args.epochs,
            store_epochs: &store_epochs,
            reference_digests: refs.iter().map(|r| page_crc_digest(r)).collect(),
            resumed_from,
            region_bytes: size,
            backend: &backend,
            threads: args.threads,
            pattern: format!("{:?}", args.pattern),
            faults: stats.wp_faults,
            preserved_pages: stats.preserved,
            dirty_pages: &dirty_pages,
            cut_ms: &cut_ms,
            fork_ms: fork,
            checkpoint_bytes: &ckpt_bytes,
            checkpoint_mb_s,
            restore_mb_s,
            fault_ns_p50: p50,
            fault_ns_p99: p99,
            writes: logs.iter().map(|l| l.writes).sum(),
            seconds: t_run.elapsed().as_secs_f64(),
            perf,
            policy: policy_lines(&stats.policy),
        };
        println!("{}", serde_json::to_string(&out)?);
    } else {
        let mut o = std::io::stdout().lock();
        writeln!(o, "\nepoch  dirty pages   cut ms   cut/fork   checkpoint")?;
        for k in 0..args.epochs {
            writeln!(
                o,
                "{k:>5}  {:>11}  {:>7.2}  {:>8.3}x   {}",
                dirty_pages[k],
                cut_ms[k],
                cut_ms[k] / fork,
                human(ckpt_bytes[k] as f64)
            )?;
        }
        writeln!(
            o,
            "\nfork() of this process now ({} resident): {fork:.2} ms",
            human(size as f64)
        )?;
        writeln!(o, "faults serviced: {} ({} pages copied before write), service time p50 {p50} ns, p99 {p99} ns", stats.wp_faults, stats.preserved)?;
        writeln!(
            o,
            "writes: {} in {:.1} s",
            ctl.writes.load(SeqCst),
            t_run.elapsed().as_secs_f64()
        )?;
        writeln!(
            o,
            "checkpoint write {checkpoint_mb_s:.0} MB/s, restore {restore_mb_s:.0} MB/s"
        )?;
        print_perf(&mut o, &perf, args.threads)?;
        for line in policy_lines(&stats.policy) {
            writeln!(o, "policy: {line}")?;
        }
        if verified {
            if quiesce {
                writeln!(o, "verified: every epoch restored from disk equals the reference taken at its cut ({} epochs)", args.epochs)?;
            } else {
                writeln!(o, "verified: the store verifies and every epoch restores ({} epochs; --live-cuts: no per-page reference to compare with)", args.epochs)?;
            }
        } else {
            writeln!(
                o,
                "NOT VERIFIED: mismatching pages per epoch {mismatches:?}; store verify: {:?}",
                verify.problems
            )?;
        }
    }
    drop(store);
    if !args.keep && args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !verified {
        std::process::exit(1);
    }
    Ok(())
}

/// `Tracker::stats().policy` as one line per decision.
fn policy_lines(p: &writewatch::PolicyReport) -> Vec<String> {
    let c = |name: &str, c: &writewatch::PolicyChoice| format!("{name}: {} ({})", c.chosen, c.why);
    vec![
        format!(
            "{}; re-arming age {} us",
            c("re-arming", &p.rearm),
            p.rearm_age_us
        ),
        c("re-protection", &p.reprotect),
        c("fault-around", &p.fault_around),
        c("fault service", &p.in_thread),
        c("waiting for faults", &p.spin),
    ]
}
