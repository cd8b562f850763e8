//! Eager re-protection (sync backend): re-arms pages written long enough ago between faults,
//! so a cut has less to re-protect.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::policy::{AGE_MAX, AGE_MIN};
use super::Service;
use crate::armed::ArmBits;
use crate::sys;

/// Eager re-protection: protect ioctls per step before faults and commands get a turn again.
/// Small: a fault that arrives during a step waits for it (4 ioctls, ~5 us; with 32 a writer
/// faulting back to back waited ~40 us per fault behind re-arming of its earlier pages, which
/// doubled the random first-write cost of the defaults under load).
const EAGER_CHUNK: usize = 4;
/// Protect calls per re-arming step made between two batches of faults.
const BETWEEN_FAULTS: usize = 1;
/// In-thread mode: runs armed per scan (faults do not wait for the service thread there).
const SCAN_CHUNK: usize = 32;
/// In-thread mode: the shortest interval between two scans for pages to arm (an age of 0
/// would otherwise keep the service thread scanning without a pause).
const MIN_SCAN: Duration = Duration::from_micros(200);

/// Eager re-protection state of one region, owned by the service thread; its armed and hot
/// bits ([`ArmBits`]) are shared with the region's `SIGBUS` hook in in-thread mode.
///
/// ```text
///   written page (fault served: dirty, writable) --age elapsed-------> ARMED (dirty,
///        ^                                                                 protected)
///        |                                                                   |
///        +---- written again: one more fault, HOT (never re-armed while written) <-+
///   cut: re-protects dirty pages that are not ARMED; every page is protected; armed bits
///        cleared; HOT kept for pages that re-faulted or were HOT and written (ArmBits::reset)
/// ```
///
/// Invariant E1: an armed page is write-protected (see `crate::armed` for the proof with
/// in-thread handlers). Every path that un-protects a page (fault service, fault-around, the
/// `SIGBUS` handler) clears its armed bit first; a kernel zap (madvise on anonymous memory)
/// can drop protection behind our back, so a cut never trusts armed bits inside the region's
/// suspect runs (ranges that ever received REMOVE).
pub(super) struct Eager {
    pub(super) bits: Arc<ArmBits>,
    /// Runs un-protected by fault service in the current epoch, oldest first (faults served
    /// on the service thread).
    queue: VecDeque<(Instant, u64, u64)>,
    /// In-thread mode (the service thread sees no fault): dirty pages neither armed nor hot
    /// at the last scan; those still so at the next scan, `age` later, are armed.
    seen: std::collections::HashMap<usize, u64>,
    next_scan: Instant,
    in_thread: bool,
    /// Re-arming age: fixed (`eager_reprotect(age)`) or tuned per epoch (`tuned`).
    pub(super) age: Duration,
    tuned: bool,
    /// Pages armed in the open epoch (for tuning).
    armed_epoch: u64,
}

impl Eager {
    pub(super) fn new(bits: Arc<ArmBits>, age: Duration, tuned: bool, in_thread: bool) -> Self {
        Self {
            bits,
            queue: VecDeque::new(),
            seen: std::collections::HashMap::new(),
            next_scan: Instant::now() + age,
            in_thread,
            age,
            tuned,
            armed_epoch: 0,
        }
    }

    /// Pages `first..=last` are about to be un-protected by fault service at `t`. Returns
    /// how many of them were armed (re-faults).
    pub(super) fn unprotecting(&mut self, first: u64, last: u64, t: Instant) -> u64 {
        let refaults = self.bits.unprotecting(first, last);
        self.queue.push_back((t, first, last - first + 1));
        refaults
    }

    /// The kernel may have dropped the protection of these pages (REMOVE).
    pub(super) fn forget(&mut self, first: u64, count: u64) {
        self.bits.forget(first, count);
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
            if is_dirty(p) && self.bits.armable(p) {
                match runs.last_mut() {
                    Some((a, n)) if *a + *n == p => *n += 1,
                    _ => runs.push((p, 1)),
                }
            }
        }
        runs
    }

    pub(super) fn arm(&mut self, first: u64, count: u64) {
        self.bits.arm(first, count);
        self.armed_epoch += count;
    }

    /// The unarmed dirty runs of `words` ([`ArmBits::unarmed_runs`]).
    pub(super) fn unarmed_runs(
        &mut self,
        words: &[u64],
        suspect: &[(u64, u64)],
    ) -> (Vec<(u64, u64)>, u64) {
        self.bits.unarmed_runs(words, suspect)
    }

    /// Closes the epoch's tuning (called by a cut, faults held): adjusts the age from the
    /// share of re-armed pages written again. Returns the age used and why it changed.
    pub(super) fn tune(&mut self) -> (Duration, String) {
        let used = self.age;
        let refaults = self.bits.take_refaults();
        let armed = std::mem::take(&mut self.armed_epoch);
        if !self.tuned {
            return (used, format!("eager_reprotect({used:?}) forces the age"));
        }
        if armed < 16 {
            return (
                used,
                format!("{armed} pages re-armed last epoch: too few to tune; age {used:?} kept"),
            );
        }
        let share = refaults as f64 / armed as f64;
        let why = if share > 0.25 {
            self.age = (self.age * 2).min(AGE_MAX);
            "age doubled"
        } else if share < 0.05 {
            self.age = (self.age / 2).max(AGE_MIN);
            "age halved"
        } else {
            "age kept"
        };
        let pct = share * 100.0;
        (
            used,
            format!("{refaults} of {armed} re-armed pages ({pct:.1}%) were written again: {why} (now {:?})", self.age),
        )
    }

    /// A cut protected every page: a new epoch starts with nothing armed.
    pub(super) fn reset(&mut self, dirty: &[u64]) {
        self.bits.reset(dirty);
        self.queue.clear();
        self.seen.clear();
    }
}

impl Service {
    /// Eager re-protection applies to this tracker's regions: sync backend, forced by
    /// `eager_reprotect` or chosen by the adaptive policy.
    pub(super) fn eager_on(&self) -> bool {
        let c = &self.shared.config;
        self.backend == crate::backend::Backend::SyncUffd && (c.eager.is_some() || c.adaptive)
    }

    pub(super) fn eager_of(&mut self, start: usize) -> Option<&mut Eager> {
        self.by_start.get_mut(&start)?.eager.as_mut()
    }

    /// Runs one eager re-protection step if one is due. Returns whether it did any work.
    pub(super) fn eager_if_due(&mut self) -> bool {
        match self.eager_due {
            Some(due) if Instant::now() >= due => {
                self.eager_due = self.eager_step(EAGER_CHUNK);
                true
            }
            _ => false,
        }
    }

    /// Between two batches of faults (the service thread is not idle): at most
    /// [`BETWEEN_FAULTS`] protect call if re-arming is due, so a writer faulting back to back
    /// waits behind one ioctl at most, and re-arming keeps pace with the faults instead of
    /// waiting for an idle moment that a tight write loop never leaves.
    pub(super) fn eager_between_faults(&mut self) {
        if let Some(due) = self.eager_due {
            if Instant::now() >= due {
                self.eager_due = self.eager_step(BETWEEN_FAULTS);
            }
        }
    }

    /// Eager re-protection: one step over every region with work due, at most
    /// [`EAGER_CHUNK`] ioctls. Returns when the next step is due (now if this one stopped at
    /// the chunk limit), None if nothing is queued. Faults read meanwhile (`EAGAIN` pumping)
    /// stay pending until the step returns; a page re-protected here that is written again
    /// simply faults again.
    pub(super) fn eager_step(&mut self, ioctls: usize) -> Option<Instant> {
        let now = Instant::now();
        let mut left = ioctls;
        let mut scan_left = SCAN_CHUNK;
        let mut next: Option<Instant> = None;
        let keys: Vec<(usize, bool)> = self
            .by_start
            .iter()
            .filter_map(|(k, e)| e.eager.as_ref().map(|g| (*k, g.in_thread)))
            .collect();
        for (key, in_thread) in keys {
            let n = if in_thread {
                self.eager_scan(key, now, &mut scan_left)
            } else {
                self.eager_queue(key, now, &mut left)
            };
            if let Some(n) = n {
                next = Some(next.map_or(n, |m: Instant| m.min(n)));
            }
            if left == 0 || scan_left == 0 {
                return Some(now);
            }
        }
        next
    }

    /// Faults served here: re-arms the pages of serviced runs older than the age (dirty, not
    /// armed, not hot).
    fn eager_queue(&mut self, key: usize, now: Instant, left: &mut usize) -> Option<Instant> {
        loop {
            let entry = self.by_start.get_mut(&key)?;
            let inner = Arc::clone(&entry.inner);
            let eg = entry.eager.as_mut()?;
            let &(t, first, count) = eg.queue.front()?;
            if t + eg.age > now {
                return Some(t + eg.age);
            }
            if *left == 0 {
                return Some(now);
            }
            eg.queue.pop_front();
            let runs = eg.armable(first, count, |p| inner.dirty.get(p as usize));
            for (a, n) in runs {
                if *left == 0 {
                    // The step's budget is spent: the rest of this entry waits for the next
                    // step (its armable runs are recomputed then).
                    if let Some(eg) = self.eager_of(key) {
                        eg.queue.push_front((t, a, first + count - a));
                    }
                    return Some(now);
                }
                let addr = inner.start + a as usize * inner.page_size;
                if self.protect(addr, n as usize * inner.page_size).is_err() {
                    // Not armed: the cut re-protects it (or reports the error).
                    continue;
                }
                *left = left.saturating_sub(1);
                self.shared.counters.eager_ioctls.fetch_add(1, Relaxed);
                self.shared.counters.eager_pages.fetch_add(n, Relaxed);
                if let Some(eg) = self.eager_of(key) {
                    eg.arm(a, n);
                }
            }
        }
    }

    /// In-thread mode (faults served by the writers' `SIGBUS` handlers, unseen here): every
    /// `age`, arms the dirty pages that were already dirty, unarmed and not hot at the
    /// previous scan. Armed bits are set BEFORE a `synchronize` and the protect ioctls (the
    /// order `crate::armed` proves E1 with).
    fn eager_scan(&mut self, key: usize, now: Instant, left: &mut usize) -> Option<Instant> {
        let entry = self.by_start.get_mut(&key)?;
        let inner = Arc::clone(&entry.inner);
        let eg = entry.eager.as_mut()?;
        if now < eg.next_scan {
            return Some(eg.next_scan);
        }
        // Only the dirty words are visited, and `seen` holds only non-zero words: a scan of a
        // huge, sparsely written region touches no memory in proportion to its size (whole
        // copies of the bitmaps grew a 64 GiB region's resident memory by 10-12 MiB).
        let dirty = inner.dirty.set_words();
        let mut last_seen = std::mem::take(&mut eg.seen);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut any = false;
        let mut more = false;
        for &(w, d) in &dirty {
            let cand = d & !eg.bits.unarmable_word(w);
            any |= cand != 0;
            let mut old = cand & last_seen.remove(&w).unwrap_or(0);
            if cand != 0 {
                eg.seen.insert(w, cand);
            }
            while old != 0 {
                let b = old.trailing_zeros() as u64;
                old &= old - 1;
                let p = w as u64 * 64 + b;
                let full = runs.len() == *left;
                match runs.last_mut() {
                    Some((a, n)) if *a + *n == p => *n += 1,
                    _ if full => {
                        more = true;
                        break;
                    }
                    _ => runs.push((p, 1)),
                }
            }
            if more {
                // Words not visited keep what they had at the last scan.
                eg.seen
                    .extend(last_seen.into_iter().filter(|&(k, _)| k > w));
                break;
            }
        }
        for &(a, n) in &runs {
            eg.arm(a, n);
        }
        eg.next_scan = if more {
            now
        } else if any {
            now + eg.age.max(MIN_SCAN)
        } else {
            now + (eg.age * 8).clamp(MIN_SCAN, Duration::from_millis(100))
        };
        let next = eg.next_scan;
        if runs.is_empty() {
            return Some(next);
        }
        // Every handler that could still un-protect one of these pages without having seen
        // its armed bit has left after this.
        sys::sigbus::synchronize();
        for (a, n) in runs {
            let addr = inner.start + a as usize * inner.page_size;
            if self.protect(addr, n as usize * inner.page_size).is_err() {
                if let Some(eg) = self.eager_of(key) {
                    eg.forget(a, n); // not protected: not armed
                }
                continue;
            }
            *left = left.saturating_sub(1);
            self.shared.counters.eager_ioctls.fetch_add(1, Relaxed);
            self.shared.counters.eager_pages.fetch_add(n, Relaxed);
        }
        Some(next)
    }
}
