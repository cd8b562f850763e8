//! Statistics: plain structs copied out of atomic counters.

use crate::policy::PolicyReport;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A histogram of durations in nanoseconds with real percentiles: an
/// [HdrHistogram](https://hdrhistogram.github.io/HdrHistogram/) with 3 significant digits, so
/// every figure it reports ([`percentile`](Self::percentile), [`p50`](Self::p50),
/// [`max`](Self::max), ...) is within 0.1% of the true value.
///
/// Serialized (feature `serde`) as its [`HistogramSummary`].
///
/// ```
/// use writewatch_core::Histogram;
/// let mut h = Histogram::default();
/// for ns in 1..=10_000 {
///     h.record(ns);
/// }
/// assert_eq!(h.count(), 10_000);
/// assert!((h.p50() as f64 - 5_000.0).abs() <= 5.0);   // within 0.1%
/// assert!((h.p99() as f64 - 9_900.0).abs() <= 9.9);
/// assert!((h.max() as f64 - 10_000.0).abs() <= 10.0);
/// ```
#[derive(Clone)]
pub struct Histogram {
    h: hdrhistogram::Histogram<u64>,
}

/// Significant decimal digits kept by [`Histogram`].
const SIGFIG: u8 = 3;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            // An auto-resizing histogram with 3 significant digits: `new` fails only for
            // more than 5 significant digits.
            h: hdrhistogram::Histogram::new(SIGFIG).expect("3 significant digits is valid"),
        }
    }
}

impl PartialEq for Histogram {
    fn eq(&self, other: &Self) -> bool {
        self.h == other.h
    }
}

impl Eq for Histogram {}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.summary();
        f.debug_struct("Histogram")
            .field("count", &s.count)
            .field("p50_ns", &s.p50)
            .field("p99_ns", &s.p99)
            .field("max_ns", &s.max)
            .finish()
    }
}

/// The figures of a [`Histogram`], all in nanoseconds (0 when it is empty); what a
/// [`Histogram`] serializes as.
///
/// ```
/// let mut h = writewatch_core::Histogram::default();
/// h.record(2_000);
/// let s = h.summary();
/// assert_eq!((s.count, s.min, s.p50), (1, 2_000, 2_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HistogramSummary {
    /// Number of values.
    pub count: u64,
    /// Smallest value.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
}

#[cfg(feature = "serde")]
impl serde::Serialize for Histogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.summary().serialize(s)
    }
}

/// [`Histogram::since`] was given a histogram that is not an earlier state of this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the histogram passed to `since` is not an earlier state of this one (it holds values this \
     one does not): pass the older of two stats snapshots of the same tracker"
)]
pub struct NotEarlier;

impl Histogram {
    /// Adds one value. Values beyond 2^62 ns are recorded as the largest trackable value.
    ///
    /// ```
    /// let mut h = writewatch_core::Histogram::default();
    /// h.record(42);
    /// assert_eq!(h.max(), 42);
    /// ```
    pub fn record(&mut self, ns: u64) {
        self.record_n(ns, 1);
    }

    fn record_n(&mut self, ns: u64, n: u64) {
        if self.h.record_n(ns, n).is_err() {
            self.h.saturating_record_n(ns, n);
        }
    }

    /// Number of values recorded.
    ///
    /// ```
    /// let mut h = writewatch_core::Histogram::default();
    /// h.record(1);
    /// h.record(1);
    /// assert_eq!(h.count(), 2);
    /// ```
    pub fn count(&self) -> u64 {
        self.h.len()
    }

    /// Whether no value was recorded.
    ///
    /// ```
    /// assert!(writewatch_core::Histogram::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.h.is_empty()
    }

    /// The `q` quantile (`q` in `0.0..=1.0`, clamped; NaN counts as 0), within 0.1% (the
    /// largest value equivalent to it at 3 significant digits). 0 when empty.
    ///
    /// ```
    /// let mut h = writewatch_core::Histogram::default();
    /// for v in [10, 20, 30, 40] {
    ///     h.record(v);
    /// }
    /// assert_eq!(h.percentile(0.5), 20);
    /// assert_eq!(h.percentile(1.0), 40);
    /// ```
    pub fn percentile(&self, q: f64) -> u64 {
        if self.h.is_empty() {
            return 0;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        self.h.value_at_quantile(q)
    }

    /// The median (within 0.1%); 0 when empty.
    ///
    /// ```
    /// let mut h = writewatch_core::Histogram::default();
    /// h.record(100);
    /// assert_eq!(h.p50(), 100);
    /// ```
    pub fn p50(&self) -> u64 {
        self.percentile(0.5)
    }

    /// The 90th percentile (within 0.1%); 0 when empty.
    ///
    /// ```
    /// let mut h = writewatch_core::Histogram::default();
    /// (1..=100).for_each(|v| h.record(v));
    /// assert_eq!(h.p90(), 90);
    /// ```
    pub fn p90(&self) -> u64 {
        self.percentile(0.9)
    }

    /// The 99th percentile (within 0.1%); 0 when empty.
    ///
    /// ```
    /// let mut h = writewatch_core::Histogram::default();
    /// (1..=100).for_each(|v| h.record(v));
    /// assert_eq!(h.p99(), 99);
    /// ```
    pub fn p99(&self) -> u64 {
        self.percentile(0.99)
    }

    /// The 99.9th percentile (within 0.1%); 0 when empty.
    ///
    /// ```
    /// let mut h = writewatch_core::Histogram::default();
    /// (1..=1000).for_each(|v| h.record(v));
    /// assert_eq!(h.p999(), 999);
    /// ```
    pub fn p999(&self) -> u64 {
        self.percentile(0.999)
    }

    /// The smallest value (within 0.1%); 0 when empty.
    ///
    /// ```
    /// let mut h = writewatch_core::Histogram::default();
    /// h.record(7);
    /// h.record(9);
    /// assert_eq!(h.min(), 7);
    /// ```
    pub fn min(&self) -> u64 {
        if self.h.is_empty() {
            0
        } else {
            self.h.min()
        }
    }

    /// The largest value (within 0.1%); 0 when empty.
    ///
    /// ```
    /// let mut h = writewatch_core::Histogram::default();
    /// h.record(1_234_567);
    /// assert!(h.max().abs_diff(1_234_567) <= 1_235);
    /// ```
    pub fn max(&self) -> u64 {
        if self.h.is_empty() {
            0
        } else {
            self.h.max()
        }
    }

    /// The mean (within 0.1%); 0 when empty.
    ///
    /// ```
    /// let mut h = writewatch_core::Histogram::default();
    /// h.record(10);
    /// h.record(30);
    /// assert_eq!(h.mean(), 20.0);
    /// ```
    pub fn mean(&self) -> f64 {
        if self.h.is_empty() {
            0.0
        } else {
            self.h.mean()
        }
    }

    /// All the figures at once.
    ///
    /// ```
    /// let mut h = writewatch_core::Histogram::default();
    /// (1..=1000).for_each(|v| h.record(v));
    /// let s = h.summary();
    /// assert_eq!((s.count, s.min, s.p50, s.p99, s.max), (1000, 1, 500, 990, 1000));
    /// ```
    pub fn summary(&self) -> HistogramSummary {
        HistogramSummary {
            count: self.count(),
            min: self.min(),
            mean: self.mean(),
            p50: self.p50(),
            p90: self.p90(),
            p99: self.p99(),
            p999: self.p999(),
            max: self.max(),
        }
    }

    /// The values recorded after `earlier` was taken: `self - earlier`, for two stats
    /// snapshots of the same tracker (e.g. around a benchmark's measured phase).
    ///
    /// ```
    /// let mut h = writewatch_core::Histogram::default();
    /// h.record(1_000);
    /// let before = h.clone();
    /// h.record(5_000);
    /// let d = h.since(&before)?;
    /// assert_eq!((d.count(), d.min()), (1, 5_000));
    /// assert!(before.since(&h).is_err());
    /// # Ok::<(), writewatch_core::NotEarlier>(())
    /// ```
    pub fn since(&self, earlier: &Histogram) -> Result<Histogram, NotEarlier> {
        let mut d = self.clone();
        d.h.subtract(&earlier.h).map_err(|_| NotEarlier)?;
        Ok(d)
    }

    /// Power-of-two buckets as `(lower_bound_ns, count)`, non-empty ones only, ascending:
    /// bucket `[2^i, 2^(i+1))` (the first also holds 0). Kept for callers that plot the
    /// distribution on a log scale; use [`percentile`](Self::percentile) for figures.
    ///
    /// ```
    /// let mut h = writewatch_core::Histogram::default();
    /// for v in [1, 5, 6, 1000] {
    ///     h.record(v);
    /// }
    /// assert_eq!(h.buckets().collect::<Vec<_>>(), vec![(0, 1), (4, 2), (512, 1)]);
    /// ```
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut counts = [0u64; 64];
        for v in self.h.iter_recorded() {
            // The bucket's lowest value: at 3 significant digits an HdrHistogram bucket never
            // straddles a power of two.
            let lo = self.h.lowest_equivalent(v.value_iterated_to());
            counts[pow2_bucket(lo)] += v.count_at_value();
        }
        (0..64)
            .filter(move |&i| counts[i] > 0)
            .map(move |i| (if i == 0 { 0 } else { 1u64 << i }, counts[i]))
    }
}

fn pow2_bucket(ns: u64) -> usize {
    (63 - ns.max(1).leading_zeros()) as usize
}

// The lock-free recording side. Its slots are exactly HdrHistogram's buckets at 3 significant
// digits (2048 sub-buckets): values below 2048 have a slot each; above, each power of two
// [2^e, 2^(e+1)) is split into 1024 slots of width 2^(e-10). Loading records each slot's lowest
// value into a real HdrHistogram, which maps it to the same bucket: no precision is lost.
const LINEAR: usize = 2048;
const HALF: usize = 1024;
/// The highest power of two with slots of its own; larger values share the last slot.
const TOP_EXP: u32 = 42;
const SLOTS: usize = LINEAR + (TOP_EXP as usize - 10) * HALF;

fn slot(ns: u64) -> usize {
    if ns < LINEAR as u64 {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros(); // >= 11
    if e > TOP_EXP {
        return SLOTS - 1;
    }
    let sub = (ns >> (e - 10)) as usize; // in [1024, 2048)
    LINEAR + (e as usize - 11) * HALF + (sub - HALF)
}

fn slot_low(i: usize) -> u64 {
    if i < LINEAR {
        return i as u64;
    }
    let octave = (i - LINEAR) / HALF; // e - 11
    let sub = ((i - LINEAR) % HALF + HALF) as u64;
    sub << (octave + 1)
}

/// The atomic form of [`Histogram`], written by the service thread: one relaxed `fetch_add`
/// per value, no lock. Values of 2^43 ns (2.4 hours) and more share the last slot.
pub(crate) struct AtomicHistogram {
    counts: Box<[AtomicU64]>,
}

impl std::fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.load().fmt(f)
    }
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            counts: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl AtomicHistogram {
    pub(crate) fn record(&self, ns: u64) {
        self.counts[slot(ns)].fetch_add(1, Relaxed);
    }
    pub(crate) fn load(&self) -> Histogram {
        let mut h = Histogram::default();
        for (i, c) in self.counts.iter().enumerate() {
            let c = c.load(Relaxed);
            if c > 0 {
                h.record_n(slot_low(i), c);
            }
        }
        h
    }
}

/// Serializes a value as its `Debug` text (for fields whose types carry an errno, which has no
/// `Serialize`).
#[cfg(feature = "serde")]
pub(crate) fn serialize_debug<T: std::fmt::Debug, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:?}"))
}

/// Tracker-wide counters, written by the service thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub faults: AtomicU64,
    pub wp_faults: AtomicU64,
    pub foreign_faults: AtomicU64,
    /// Missing faults served (lazily armed regions).
    pub missing_faults: AtomicU64,
    pub reads: AtomicU64,
    pub remove_events: AtomicU64,
    pub unmap_events: AtomicU64,
    pub remap_events: AtomicU64,
    pub other_events: AtomicU64,
    pub unprotect_ioctls: AtomicU64,
    pub protect_ioctls: AtomicU64,
    pub scan_ioctls: AtomicU64,
    pub cuts: AtomicU64,
    pub preserved: AtomicU64,
    pub deferred: AtomicU64,
    pub eager_pages: AtomicU64,
    pub eager_ioctls: AtomicU64,
    pub refaults: AtomicU64,
    pub service_ns: AtomicHistogram,
}

/// Per-region counters.
#[derive(Debug, Default)]
pub(crate) struct RegionCounters {
    pub faults: AtomicU64,
    pub remove_events: AtomicU64,
    pub last_tid: AtomicU64,
    pub history: std::sync::Mutex<std::collections::VecDeque<EpochStat>>,
}

/// How many epochs of per-region history are kept.
pub(crate) const HISTORY: usize = 1024;

/// Faults serviced for one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ThreadFaults {
    /// Kernel thread id (as in `gettid()`).
    pub tid: i32,
    /// Write faults it took on tracked memory.
    pub faults: u64,
}

/// A snapshot of a tracker's counters; see [`Tracker::stats`](crate::Tracker::stats).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TrackerStats {
    /// Fault events read from the userfaultfd.
    pub faults: u64,
    /// Of those, write-protect faults serviced on tracked regions.
    pub wp_faults: u64,
    /// Faults on addresses of no live region (woken, not tracked).
    pub foreign_faults: u64,
    /// Missing-page faults served: first accesses to empty pages of lazily armed regions
    /// (see [`TrackerBuilder::lazy_arming`](crate::TrackerBuilder::lazy_arming)).
    pub missing_faults: u64,
    /// `read(2)` calls that returned events (each returns a batch).
    pub reads: u64,
    /// `UFFD_EVENT_REMOVE` events (madvise DONTNEED/REMOVE by the application).
    pub remove_events: u64,
    /// `UFFD_EVENT_UNMAP` events (munmap by the application).
    pub unmap_events: u64,
    /// `UFFD_EVENT_REMAP` events (mremap by the application).
    pub remap_events: u64,
    /// Other events.
    pub other_events: u64,
    /// `UFFDIO_WRITEPROTECT` calls that removed protection (fault service).
    pub unprotect_ioctls: u64,
    /// `UFFDIO_WRITEPROTECT` calls that set protection (registration and cuts).
    pub protect_ioctls: u64,
    /// `PAGEMAP_SCAN` calls.
    pub scan_ioctls: u64,
    /// Cuts completed.
    pub cuts: u64,
    /// Pages copied before a write (copy-before-write for epochs and snapshots).
    pub preserved: u64,
    /// Times a fault had to wait because the copy budget was full (back-pressure).
    pub deferred: u64,
    /// Pages re-protected ahead of a cut by eager re-protection
    /// ([`TrackerBuilder::eager_reprotect`](crate::TrackerBuilder::eager_reprotect)).
    pub eager_pages: u64,
    /// `UFFDIO_WRITEPROTECT` calls made by eager re-protection (also counted in
    /// `protect_ioctls`).
    pub eager_ioctls: u64,
    /// Faults on pages that eager re-protection had re-armed in the same epoch (the extra
    /// faults it costs).
    pub refaults: u64,
    /// Time from reading a fault to having un-protected its page, in ns.
    pub service_ns: Histogram,
    /// Faults per faulting thread (up to 256 threads; the rest are counted in `faults` only).
    pub threads: Vec<ThreadFaults>,
    /// What the adaptive policy chose at the last cut, and why
    /// ([`TrackerBuilder::adaptive`](crate::TrackerBuilder::adaptive)).
    pub policy: PolicyReport,
}

/// Pages dirtied in one closed epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct EpochStat {
    /// Epoch number.
    pub epoch: u64,
    /// Pages in its dirty set.
    pub pages: u64,
}

/// A snapshot of a region's counters; see [`Region::stats`](crate::Region::stats).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RegionStats {
    /// Write-protect faults serviced on this region.
    pub faults: u64,
    /// `madvise` removals seen on this region.
    pub remove_events: u64,
    /// Thread id of the last faulting thread (0 if none or unknown).
    pub last_tid: i32,
    /// The current (open) epoch number.
    pub epoch: u64,
    /// Pages dirtied per closed epoch, oldest first (the last 1024 epochs).
    pub history: Vec<EpochStat>,
}

impl Counters {
    pub(crate) fn load(&self, threads: Vec<ThreadFaults>, policy: PolicyReport) -> TrackerStats {
        TrackerStats {
            faults: self.faults.load(Relaxed),
            wp_faults: self.wp_faults.load(Relaxed),
            foreign_faults: self.foreign_faults.load(Relaxed),
            missing_faults: self.missing_faults.load(Relaxed),
            reads: self.reads.load(Relaxed),
            remove_events: self.remove_events.load(Relaxed),
            unmap_events: self.unmap_events.load(Relaxed),
            remap_events: self.remap_events.load(Relaxed),
            other_events: self.other_events.load(Relaxed),
            unprotect_ioctls: self.unprotect_ioctls.load(Relaxed),
            protect_ioctls: self.protect_ioctls.load(Relaxed),
            scan_ioctls: self.scan_ioctls.load(Relaxed),
            cuts: self.cuts.load(Relaxed),
            preserved: self.preserved.load(Relaxed),
            deferred: self.deferred.load(Relaxed),
            eager_pages: self.eager_pages.load(Relaxed),
            eager_ioctls: self.eager_ioctls.load(Relaxed),
            refaults: self.refaults.load(Relaxed),
            service_ns: self.service_ns.load(),
            threads,
            policy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact `q` quantile of sorted values, as HdrHistogram defines it (the value at rank
    /// ceil(q * n), at least the first).
    fn exact(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    fn check_close(what: &str, got: u64, want: u64) {
        let tol = (want as f64 * 0.001).ceil() as u64;
        assert!(
            got.abs_diff(want) <= tol,
            "{what}: got {got}, true value {want} (tolerance {tol})"
        );
    }

    #[test]
    fn slots_match_hdr_buckets() {
        let hdr = hdrhistogram::Histogram::<u64>::new(SIGFIG).unwrap();
        let mut prev = 0;
        for i in 0..SLOTS {
            let lo = slot_low(i);
            assert_eq!(slot(lo), i, "slot {i} low {lo}");
            assert!(i == 0 || lo > prev);
            if lo > 0 {
                assert_eq!(slot(lo - 1), i - 1);
            }
            assert_eq!(
                hdr.lowest_equivalent(lo),
                lo,
                "slot {i} is an hdr bucket start"
            );
            prev = lo;
        }
        assert_eq!(slot(u64::MAX), SLOTS - 1);
    }

    /// The oracle: sorted raw values. The atomic recorder and the histogram must report every
    /// quantile within 0.1% of the true value.
    #[test]
    fn percentiles_within_a_tenth_of_a_percent() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut vals = Vec::new();
        for _ in 0..200_000 {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            // Log-uniform over 1 ns .. 1 s, plus some exact small values.
            let v = if r % 10 == 0 {
                r % 3000
            } else {
                (1u64 << (r % 30)) | ((r >> 40) % (1 << (r % 30)))
            };
            vals.push(v);
        }
        let a = AtomicHistogram::default();
        let mut h = Histogram::default();
        for &v in &vals {
            a.record(v);
            h.record(v);
        }
        let loaded = a.load();
        assert_eq!(loaded, h);
        vals.sort_unstable();
        for q in [
            0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 1.0,
        ] {
            check_close(&format!("q {q}"), loaded.percentile(q), exact(&vals, q));
        }
        check_close("p50", loaded.p50(), exact(&vals, 0.5));
        check_close("p99", loaded.p99(), exact(&vals, 0.99));
        check_close("max", loaded.max(), *vals.last().unwrap());
        check_close("min", loaded.min(), vals[0]);
        let mean = vals.iter().sum::<u64>() as f64 / vals.len() as f64;
        assert!((loaded.mean() - mean).abs() <= mean * 0.001);
        assert_eq!(loaded.count(), vals.len() as u64);
        assert_eq!(
            loaded.buckets().map(|b| b.1).sum::<u64>(),
            vals.len() as u64
        );
    }

    #[test]
    fn empty_and_edges() {
        let h = Histogram::default();
        assert_eq!((h.count(), h.p50(), h.max(), h.min()), (0, 0, 0, 0));
        assert_eq!(h.percentile(f64::NAN), 0);
        let mut h = Histogram::default();
        h.record(u64::MAX);
        h.record(0);
        assert_eq!(h.count(), 2);
        assert_eq!(h.percentile(-1.0), 0);
        let a = AtomicHistogram::default();
        a.record(u64::MAX);
        assert_eq!(a.load().count(), 1);
    }

    #[test]
    fn since_subtracts() {
        let a = AtomicHistogram::default();
        (0..100).for_each(|v| a.record(v));
        let before = a.load();
        (1000..1100).for_each(|v| a.record(v));
        let d = a.load().since(&before).unwrap();
        assert_eq!((d.count(), d.min(), d.max()), (100, 1000, 1099));
        assert_eq!(before.since(&a.load()), Err(NotEarlier));
    }

    /// Cost of one `record` (the fault path's share): printed, and bounded loosely.
    #[test]
    fn record_is_cheap() {
        let a = AtomicHistogram::default();
        let n = 2_000_000u64;
        let t = std::time::Instant::now();
        for i in 0..n {
            a.record(std::hint::black_box(1_000 + (i & 4095)));
        }
        let per = t.elapsed().as_nanos() as f64 / n as f64;
        eprintln!("AtomicHistogram::record: {per:.1} ns");
        assert!(per < 200.0, "record costs {per} ns");
        let t = std::time::Instant::now();
        let h = a.load();
        eprintln!("AtomicHistogram::load: {:?}", t.elapsed());
        assert_eq!(h.count(), n);
    }
}
