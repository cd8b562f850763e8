//! Issue 14 instruments.
//!
//! Writer throughput against an untracked baseline, and held-writer stalls per cut, measured
//! from the writers' side without touching the engine: each writer timestamps every batch of
//! `BATCH` stores; a batch that took >= `SLOW_BATCH_NS` is logged (start, duration). The main
//! thread records each cut's [start, end]; a cut's stall is the longest logged batch of any
//! writer that overlaps its window (an upper bound of the time that writer was held: it also
//! holds the rest of its batch, a few microseconds, and any preemption meanwhile).

use super::*;
use writewatch_testkit::{Mmap, PAGE_SIZE};

/// Memory the writers write: the tracked region, or a plain mapping for the baseline.
pub(super) trait Target: Send + Sync + 'static {
    fn words(&self) -> &[AtomicU64];
    fn pages(&self) -> u64;
    fn page_size(&self) -> usize;
}

impl Target for Region {
    fn words(&self) -> &[AtomicU64] {
        self.as_atomic_u64()
    }
    fn pages(&self) -> u64 {
        self.page_count()
    }
    fn page_size(&self) -> usize {
        Region::page_size(self)
    }
}

/// The baseline's memory: a private anonymous mapping with THP off (like a tracked region),
/// untracked.
impl Target for Mmap {
    fn words(&self) -> &[AtomicU64] {
        self.as_atomic_u64()
    }
    fn pages(&self) -> u64 {
        Mmap::pages(self) as u64
    }
    fn page_size(&self) -> usize {
        PAGE_SIZE
    }
}

impl Control {
    pub(super) fn new() -> Control {
        Control {
            stop: AtomicBool::new(false),
            pause: AtomicBool::new(false),
            paused: AtomicUsize::new(0),
            writes: AtomicU64::new(0),
            gate: Default::default(),
        }
    }

    /// Lets paused writers go on.
    pub(super) fn resume(&self) {
        let _g = self.gate.0.lock().unwrap();
        self.pause.store(false, SeqCst);
        self.gate.1.notify_all();
    }

    /// Stops the writers (paused ones included).
    pub(super) fn finish(&self) {
        let _g = self.gate.0.lock().unwrap();
        self.stop.store(true, SeqCst);
        self.gate.1.notify_all();
    }
}

/// One writer's record.
#[derive(Default)]
pub(super) struct WriterLog {
    pub(super) writes: u64,
    /// Sum of batch durations: the time the writer was writing (not quiesced by the demo).
    pub(super) active_ns: u64,
    /// Slow batches: (start in ns since the run's base instant, duration in ns).
    pub(super) slow: Vec<(u64, u64)>,
}

impl WriterLog {
    #[inline]
    pub(super) fn record(&mut self, base: Instant, t0: Instant, d: Duration) {
        let ns = d.as_nanos() as u64;
        self.writes += BATCH;
        self.active_ns += ns;
        if ns >= SLOW_BATCH_NS {
            self.slow
                .push((t0.saturating_duration_since(base).as_nanos() as u64, ns));
        }
    }
}

/// Writes per second over the writers' active (unquiesced) time, summed over writers.
pub(super) fn writes_per_s(logs: &[WriterLog]) -> f64 {
    logs.iter()
        .map(|l| l.writes as f64 / (l.active_ns as f64 / 1e9).max(1e-9))
        .sum()
}

/// The untracked baseline: the same writers (threads, pattern) on a plain mapping of the
/// same size, for the same duration. Returns writes/s as `writes_per_s` computes it.
pub(super) fn untracked_baseline(
    size: usize,
    threads: usize,
    pattern: Pattern,
    dur: Duration,
) -> std::io::Result<f64> {
    let mem = Arc::new(Mmap::no_thp(size));
    let ctl = Arc::new(Control::new());
    let base = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (m, c) = (Arc::clone(&mem), Arc::clone(&ctl));
            std::thread::Builder::new()
                .name(format!("demo-plain-writer-{t}"))
                .spawn(move || writer(m, c, t, threads, pattern, base))
                .unwrap()
        })
        .collect();
    std::thread::sleep(dur);
    ctl.finish();
    let logs: Vec<WriterLog> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    Ok(writes_per_s(&logs))
}

/// Nearest-rank percentile of a sorted slice (0 for an empty one).
pub(super) fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The instruments' part of the `--json` output (flattened into it).
#[derive(Serialize)]
pub(super) struct PerfJson {
    /// Writes per second of the untracked baseline (null with --no-baseline).
    pub(super) untracked_writes_per_s: Option<f64>,
    /// Writes per second of the tracked run, with checkpointing, over the writers' active
    /// time (the demo's own quiesce for the reference CRCs excluded).
    pub(super) tracked_writes_per_s: f64,
    /// tracked / untracked.
    pub(super) writes_ratio: Option<f64>,
    /// Stores per timestamped batch, and the duration from which a batch counts as stalled.
    pub(super) writer_batch: u64,
    pub(super) slow_batch_ns: u64,
    /// Whether the demo quiesced its writers around each cut (then no writer can be held).
    pub(super) quiesced_cuts: bool,
    /// Wall time of each `cut()` call on the main thread.
    pub(super) cut_wall_ms: Vec<f64>,
    /// Largest cut (service-thread duration) / fork().
    pub(super) cut_over_fork_max: f64,
    /// Per cut: the longest batch of any writer overlapping the cut window (0: none >= slow_batch_ns).
    pub(super) cut_stall_ms: Vec<f64>,
    pub(super) cut_stall_ms_p50: f64,
    pub(super) cut_stall_ms_p99: f64,
    pub(super) cut_stall_ms_max: f64,
    pub(super) cut_stall_p99_over_fork: f64,
    /// All slow batches of the tracked run (faults, held or not, and preemption).
    pub(super) slow_batches: u64,
    pub(super) slow_batch_us_p50: f64,
    pub(super) slow_batch_us_p99: f64,
    pub(super) slow_batch_us_max: f64,
}

pub(super) struct PerfInput<'a> {
    pub(super) untracked: Option<f64>,
    pub(super) logs: &'a [WriterLog],
    pub(super) base: Instant,
    pub(super) cut_windows: &'a [(Instant, Instant)],
    pub(super) cut_ms: &'a [f64],
    pub(super) fork_ms: f64,
    pub(super) quiesced: bool,
}

pub(super) fn perf_summary(p: PerfInput<'_>) -> PerfJson {
    let tracked = writes_per_s(p.logs);
    let ns = |i: Instant| i.saturating_duration_since(p.base).as_nanos() as u64;
    let mut cut_stall_ms = Vec::new();
    for &(c0, c1) in p.cut_windows {
        let (s, e) = (ns(c0), ns(c1));
        let longest = p
            .logs
            .iter()
            .flat_map(|l| l.slow.iter())
            .filter(|&&(b, d)| b < e && b + d > s)
            .map(|&(_, d)| d)
            .max()
            .unwrap_or(0);
        cut_stall_ms.push(longest as f64 / 1e6);
    }
    let mut sorted = cut_stall_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let mut slow: Vec<f64> = p
        .logs
        .iter()
        .flat_map(|l| l.slow.iter().map(|&(_, d)| d as f64 / 1e3))
        .collect();
    slow.sort_by(f64::total_cmp);
    PerfJson {
        untracked_writes_per_s: p.untracked,
        tracked_writes_per_s: tracked,
        writes_ratio: p.untracked.map(|u| tracked / u.max(1e-9)),
        writer_batch: BATCH,
        slow_batch_ns: SLOW_BATCH_NS,
        quiesced_cuts: p.quiesced,
        cut_wall_ms: p
            .cut_windows
            .iter()
            .map(|(a, b)| (*b - *a).as_secs_f64() * 1e3)
            .collect(),
        cut_over_fork_max: p.cut_ms.iter().copied().fold(0.0, f64::max) / p.fork_ms,
        cut_stall_ms_p50: pct(&sorted, 0.5),
        cut_stall_ms_p99: pct(&sorted, 0.99),
        cut_stall_ms_max: sorted.last().copied().unwrap_or(0.0),
        cut_stall_p99_over_fork: pct(&sorted, 0.99) / p.fork_ms,
        cut_stall_ms,
        slow_batches: slow.len() as u64,
        slow_batch_us_p50: pct(&slow, 0.5),
        slow_batch_us_p99: pct(&slow, 0.99),
        slow_batch_us_max: slow.last().copied().unwrap_or(0.0),
    }
}

/// The instruments' lines of the human summary.
pub(super) fn print_perf(
    o: &mut impl std::io::Write,
    p: &PerfJson,
    threads: usize,
) -> std::io::Result<()> {
    let m = |x: f64| x / 1e6;
    match (p.untracked_writes_per_s, p.writes_ratio) {
        (Some(u), Some(r)) => writeln!(
            o,
            "writer throughput: tracked (with checkpointing) {:.2} M writes/s / untracked {:.2} M writes/s = {r:.3}x ({threads} writers, same pattern and duration; writes/s over the writers' unquiesced time)",
            m(p.tracked_writes_per_s),
            m(u)
        )?,
        _ => writeln!(
            o,
            "writer throughput: tracked (with checkpointing) {:.2} M writes/s (untracked baseline skipped: --no-baseline)",
            m(p.tracked_writes_per_s)
        )?,
    }
    if p.quiesced_cuts {
        writeln!(o, "held-writer stall per cut: none possible: the demo quiesces its writers around each cut for the reference (run with --live-cuts to measure it)")?;
    } else {
        writeln!(
            o,
            "held-writer stall per cut (longest batch of {} writes overlapping the cut): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; p99 = {:.3}x fork",
            p.writer_batch, p.cut_stall_ms_p50, p.cut_stall_ms_p99, p.cut_stall_ms_max, p.cut_stall_p99_over_fork
        )?;
    }
    writeln!(
        o,
        "largest cut / fork: {:.3}x; writer batches slowed >= {} us (faults or preemption): {}, p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        p.cut_over_fork_max,
        p.slow_batch_ns / 1000,
        p.slow_batches,
        p.slow_batch_us_p50,
        p.slow_batch_us_p99,
        p.slow_batch_us_max
    )
}
