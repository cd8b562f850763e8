//! Eager re-protection (sync backend): re-arms pages written long enough ago between faults,
//! so a cut has less to re-protect.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bitvec::prelude::{BitVec, Lsb0};

use super::Service;

/// Eager re-protection: protect ioctls per step before faults and commands get a turn again.
const EAGER_CHUNK: usize = 32;

/// Eager re-protection state of one region, owned by the service thread.
///
/// ```text
///   written page (fault serviced: dirty, writable) --age elapsed, idle--> ARMED (dirty,
///        ^                                                                 protected)
///        |                                                                   |
///        +---- written again: one more fault, HOT (writable until the cut) <-+
///   cut: re-protects dirty pages that are not ARMED; every page is protected; all cleared
/// ```
///
/// Invariant: an armed page is write-protected. Every path that un-protects a page (fault
/// service, fault-around) clears its armed bit first; a kernel zap (madvise on anonymous
/// memory) can drop protection behind our back, so a cut never trusts armed bits inside the
/// region's suspect runs (ranges that ever received REMOVE).
pub(super) struct Eager {
    armed: BitVec<u64, Lsb0>,
    hot: BitVec<u64, Lsb0>,
    /// Runs un-protected by fault service in the current epoch, oldest first.
    queue: VecDeque<(Instant, u64, u64)>,
}

impl Eager {
    pub(super) fn new(pages: u64) -> Self {
        Self {
            armed: BitVec::repeat(false, pages as usize),
            hot: BitVec::repeat(false, pages as usize),
            queue: VecDeque::new(),
        }
    }

    /// Pages `first..=last` are about to be un-protected by fault service at `t`. Returns
    /// how many of them were armed (re-faults).
    pub(super) fn unprotecting(&mut self, first: u64, last: u64, t: Instant) -> u64 {
        let mut refaults = 0;
        for p in first as usize..=last as usize {
            if self.armed.replace(p, false) {
                self.hot.set(p, true);
                refaults += 1;
            }
        }
        self.queue.push_back((t, first, last - first + 1));
        refaults
    }

    /// The kernel may have dropped the protection of these pages (REMOVE).
    pub(super) fn forget(&mut self, first: u64, count: u64) {
        self.armed[first as usize..(first + count) as usize].fill(false);
    }

    /// Runs of pages in `first..first+count` that may be armed now: dirty (`is_dirty`),
    /// not armed, not hot.
    pub(super) fn armable(
        &self,
        first: u64,
        count: u64,
        is_dirty: impl Fn(u64) -> bool,
    ) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for p in first..first + count {
            if is_dirty(p) && !self.armed[p as usize] && !self.hot[p as usize] {
                match runs.last_mut() {
                    Some((a, n)) if *a + *n == p => *n += 1,
                    _ => runs.push((p, 1)),
                }
            }
        }
        runs
    }

    pub(super) fn arm(&mut self, first: u64, count: u64) {
        self.armed[first as usize..(first + count) as usize].fill(true);
    }

    /// `words` minus the armed pages, trusting no armed bit inside `suspect` runs. Returns
    /// the masked words and the number of dirty pages skipped.
    pub(super) fn unarmed(&mut self, words: &[u64], suspect: &[(u64, u64)]) -> (Vec<u64>, u64) {
        for &(a, n) in suspect {
            self.forget(a, n);
        }
        let mut skipped = 0;
        let out = words
            .iter()
            .zip(self.armed.as_raw_slice())
            .map(|(&w, &a)| {
                skipped += u64::from((w & a).count_ones());
                w & !a
            })
            .collect();
        (out, skipped)
    }

    /// A cut protected every page: a new epoch starts with nothing armed.
    pub(super) fn reset(&mut self) {
        self.armed.fill(false);
        self.hot.fill(false);
        self.queue.clear();
    }
}

impl Service {
    pub(super) fn eager_of(&mut self, start: usize) -> Option<&mut Eager> {
        self.by_start.get_mut(&start)?.eager.as_mut()
    }

    /// Runs one eager re-protection step if one is due. Returns whether it did any work.
    pub(super) fn eager_if_due(&mut self) -> bool {
        match self.eager_due {
            Some(due) if Instant::now() >= due => {
                self.eager_due = self.eager_step();
                true
            }
            _ => false,
        }
    }

    /// Eager re-protection: re-arms the pages of serviced runs older than the configured age
    /// (dirty, not armed, not hot), at most [`EAGER_CHUNK`] ioctls per step. Returns when the
    /// next step is due (now if this one stopped at the chunk limit), None if nothing is
    /// queued. Faults read meanwhile (`EAGAIN` pumping) stay pending until the step returns;
    /// a page re-protected here that is written again simply faults again.
    pub(super) fn eager_step(&mut self) -> Option<Instant> {
        let age = self.shared.config.eager?;
        let now = Instant::now();
        let mut left = EAGER_CHUNK;
        let mut next: Option<Instant> = None;
        let keys: Vec<usize> = self
            .by_start
            .iter()
            .filter(|(_, e)| e.eager.as_ref().is_some_and(|g| !g.queue.is_empty()))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            while let Some(entry) = self.by_start.get_mut(&key) {
                let inner = Arc::clone(&entry.inner);
                let Some(eg) = entry.eager.as_mut() else {
                    break;
                };
                let Some(&(t, first, count)) = eg.queue.front() else {
                    break;
                };
                if t + age > now {
                    next = Some(next.map_or(t + age, |n: Instant| n.min(t + age)));
                    break;
                }
                if left == 0 {
                    return Some(now);
                }
                eg.queue.pop_front();
                let runs = eg.armable(first, count, |p| inner.dirty.get(p as usize));
                for (a, n) in runs {
                    let addr = inner.start + a as usize * inner.page_size;
                    if self.protect(addr, n as usize * inner.page_size).is_err() {
                        // Not armed: the cut re-protects it (or reports the error).
                        continue;
                    }
                    left = left.saturating_sub(1);
                    self.shared.counters.eager_ioctls.fetch_add(1, Relaxed);
                    self.shared.counters.eager_pages.fetch_add(n, Relaxed);
                    if let Some(eg) = self.eager_of(key) {
                        eg.arm(a, n);
                    }
                }
            }
        }
        next
    }
}
