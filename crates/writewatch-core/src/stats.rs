//! Statistics: plain structs copied out of atomic counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A histogram of durations in nanoseconds with power-of-two buckets.
///
/// Bucket `i` counts values in `[2^i, 2^(i+1))` ns (bucket 0 also counts 0).
///
/// ```
/// use writewatch_core::Histogram;
/// let mut h = Histogram::default();
/// h.record(1_000);
/// h.record(3_000);
/// assert_eq!(h.count(), 2);
/// assert!(h.percentile(0.5) >= 1_000);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: [u64; 64],
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: [0; 64] }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .field("p50_ns", &self.percentile(0.5))
            .field("p99_ns", &self.percentile(0.99))
            .finish()
    }
}

fn bucket(ns: u64) -> usize {
    (63 - ns.max(1).leading_zeros()) as usize
}

impl Histogram {
    /// Adds one value.
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket(ns)] += 1;
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// An upper bound of the `q` quantile (`0.0..=1.0`): the top of the bucket holding it.
    /// 0 when empty.
    pub fn percentile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let target = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return if i >= 63 { u64::MAX } else { (2u64 << i) - 1 };
            }
        }
        u64::MAX
    }

    /// Non-empty buckets as `(lower_bound_ns, count)`.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (if i == 0 { 0 } else { 1u64 << i }, *c))
    }
}

/// The atomic form of [`Histogram`], written by the service thread.
#[derive(Debug)]
pub(crate) struct AtomicHistogram {
    counts: [AtomicU64; 64],
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl AtomicHistogram {
    pub(crate) fn record(&self, ns: u64) {
        self.counts[bucket(ns)].fetch_add(1, Relaxed);
    }
    pub(crate) fn load(&self) -> Histogram {
        Histogram {
            counts: std::array::from_fn(|i| self.counts[i].load(Relaxed)),
        }
    }
}

/// Tracker-wide counters, written by the service thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub faults: AtomicU64,
    pub wp_faults: AtomicU64,
    pub foreign_faults: AtomicU64,
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
pub struct ThreadFaults {
    /// Kernel thread id (as in `gettid()`).
    pub tid: i32,
    /// Write faults it took on tracked memory.
    pub faults: u64,
}

/// A snapshot of a tracker's counters; see [`Tracker::stats`](crate::Tracker::stats).
#[derive(Debug, Clone)]
pub struct TrackerStats {
    /// Fault events read from the userfaultfd.
    pub faults: u64,
    /// Of those, write-protect faults serviced on tracked regions.
    pub wp_faults: u64,
    /// Faults on addresses of no live region (woken, not tracked).
    pub foreign_faults: u64,
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
}

/// Pages dirtied in one closed epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStat {
    /// Epoch number.
    pub epoch: u64,
    /// Pages in its dirty set.
    pub pages: u64,
}

/// A snapshot of a region's counters; see [`Region::stats`](crate::Region::stats).
#[derive(Debug, Clone)]
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
    pub(crate) fn load(&self, threads: Vec<ThreadFaults>) -> TrackerStats {
        TrackerStats {
            faults: self.faults.load(Relaxed),
            wp_faults: self.wp_faults.load(Relaxed),
            foreign_faults: self.foreign_faults.load(Relaxed),
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut h = Histogram::default();
        for v in [0, 1, 2, 3, 1000, 1023, 1024, 1_000_000] {
            h.record(v);
        }
        assert_eq!(h.count(), 8);
        assert_eq!(h.percentile(0.0), 1); // bucket 0 = [0, 2)
        assert_eq!(h.percentile(1.0), (2 << 19) - 1);
        assert_eq!(h.percentile(0.5), 3); // 4th of 8 values (3) lies in [2, 4)
        assert_eq!(h.percentile(0.75), 1023);
        assert_eq!(Histogram::default().percentile(0.5), 0);
        assert_eq!(h.buckets().map(|b| b.1).sum::<u64>(), 8);
    }
}
