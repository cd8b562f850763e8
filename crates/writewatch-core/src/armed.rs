//! The armed / hot bits of eager re-protection, shared between the service thread (which arms
//! pages) and whoever un-protects a page on a write fault: the service thread itself, or the
//! faulting thread's `SIGBUS` handler in in-thread mode (`crate::inthread`).
//!
//! ```text
//!   written page (dirty, writable) --service: armed.set, [synchronize], protect--> ARMED
//!        ^                                                         (dirty, protected)
//!        |                                                                |
//!        +---- write fault: armed.take (=> hot.set), THEN un-protect <-----+
//!   cut (faults held): re-protect dirty pages whose armed bit is clear; clear both maps
//! ```
//!
//! **Invariant E1 (armed => write-protected, outside an arming step)**. Proof for the
//! in-thread case, where the service thread and handlers run concurrently (docs/design.md,
//! "Eager re-protection with in-thread faults"): the service thread sets the armed bits of a
//! batch (A), then waits for every in-flight handler (`sys::sigbus::synchronize`, S), then
//! protects (P). A handler clears the bit (T, an atomic `fetch_and`) inside its in-flight
//! section, before its un-protect (U). Suppose a page is armed and writable after P: some U
//! ran after P. If its T came after A in the bit's modification order, T cleared the bit and
//! nothing sets it again before the next A. If T came before A, the handler was in flight
//! from before A (it increments its in-flight counter before T) until after P (U > P), so it
//! was in flight when S started and S waited for it to leave, i.e. U < S < P: contradiction.
//! When the service thread serves every fault (no handler), A, P and U all run on one thread
//! and the order "take, then un-protect" alone gives E1.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::bitmap::AtomicBitmap;

/// Armed and hot bits of one region (one bit per page each).
#[derive(Debug)]
pub(crate) struct ArmBits {
    /// Dirty pages re-protected ahead of the cut in the open epoch.
    armed: AtomicBitmap,
    /// Pages never armed in the open epoch (left writable until the cut once written): those
    /// written again after being armed in it, and those carried over from the previous epoch
    /// (see [`reset`](Self::reset)).
    hot: AtomicBitmap,
    /// Pages written again after being armed in the open epoch (the evidence carried over).
    refaulted: AtomicBitmap,
    pages: u64,
    /// Armed pages written again since the last [`take_refaults`](Self::take_refaults).
    refaults: AtomicU64,
}

impl ArmBits {
    pub(crate) fn new(pages: u64) -> Self {
        Self {
            armed: AtomicBitmap::new(pages as usize),
            hot: AtomicBitmap::new(pages as usize),
            refaulted: AtomicBitmap::new(pages as usize),
            pages,
            refaults: AtomicU64::new(0),
        }
    }

    /// Pages `first..=last` are about to be un-protected on a write fault: clears their armed
    /// bits (marking them hot) BEFORE the caller's un-protect. Returns how many were armed.
    pub(crate) fn unprotecting(&self, first: u64, last: u64) -> u64 {
        let mut refaults = 0;
        for p in first..=last.min(self.pages.saturating_sub(1)) {
            if self.armed.take(p as usize) {
                self.hot.set(p as usize);
                self.refaulted.set(p as usize);
                refaults += 1;
            }
        }
        if refaults > 0 {
            self.refaults.fetch_add(refaults, Relaxed);
        }
        refaults
    }

    /// Re-faults since the last call (for tuning the age).
    pub(crate) fn take_refaults(&self) -> u64 {
        self.refaults.swap(0, Relaxed)
    }

    /// Word `w` with a bit per page that is armed or hot (not armable), a peek.
    pub(crate) fn unarmable_word(&self, w: usize) -> u64 {
        self.armed.word(w) | self.hot.word(w)
    }

    /// The kernel may have dropped the protection of these pages (REMOVE), or the caller is
    /// about to lift it: they are not armed.
    pub(crate) fn forget(&self, first: u64, count: u64) {
        self.armed.clear_range(first as usize, count as usize);
    }

    /// Marks pages armed. Service thread only; in in-thread mode, BEFORE the `synchronize`
    /// that precedes their protect ioctl (see the module proof), or while faults are held.
    pub(crate) fn arm(&self, first: u64, count: u64) {
        self.armed.set_range(first as usize, count as usize);
    }

    /// Whether page `p` may be armed now (not armed, not hot).
    pub(crate) fn armable(&self, p: u64) -> bool {
        !self.armed.get(p as usize) && !self.hot.get(p as usize)
    }

    /// The runs of dirty pages in `words` that are not armed, trusting no armed bit inside
    /// `suspect` runs, in order and coalesced. Returns the runs and the number of dirty pages
    /// skipped. Called with faults held. Only the non-zero words are looked at and nothing
    /// of the region's size is allocated: a cut of a large, sparsely written region costs
    /// its dirty words (a full-size masked copy of the words was the part of a 16 GiB cut
    /// that grew with the region).
    pub(crate) fn unarmed_runs(
        &self,
        words: &[u64],
        suspect: &[(u64, u64)],
    ) -> (Vec<(u64, u64)>, u64) {
        for &(a, n) in suspect {
            self.forget(a, n);
        }
        let mut skipped = 0;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (i, &w) in words.iter().enumerate() {
            if w == 0 {
                continue;
            }
            let a = self.armed.word(i);
            skipped += u64::from((w & a).count_ones());
            let mut m = w & !a;
            while m != 0 {
                let b = m.trailing_zeros();
                let ones = (m >> b).trailing_ones();
                let first = i as u64 * 64 + u64::from(b);
                match runs.last_mut() {
                    Some((s, n)) if *s + *n == first => *n += u64::from(ones),
                    _ => runs.push((first, u64::from(ones))),
                }
                m = if b + ones >= 64 {
                    0
                } else {
                    m & !(((1u64 << ones) - 1) << b)
                };
            }
        }
        (runs, skipped)
    }

    /// A cut protected every page and harvested `dirty` (the closed epoch's dirty words): a
    /// new epoch starts with nothing armed, and hot = the pages that re-faulted in the closed
    /// epoch, plus the pages that were hot in it and written again (dirty): a page written in
    /// every epoch is re-armed (and re-faults) once, not once per epoch. A hot page that is
    /// not written in an epoch becomes armable again in the next one. Hot pages only ever
    /// decide what is *not* armed early; the cut protects them anyway, so this changes costs,
    /// never what a cut reports. Only non-zero words are visited.
    pub(crate) fn reset(&self, dirty: &[u64]) {
        let refaulted = self.refaulted.set_words();
        let kept: Vec<(usize, u64)> = self
            .hot
            .set_words()
            .into_iter()
            .map(|(w, h)| (w, h & dirty.get(w).copied().unwrap_or(0)))
            .filter(|&(_, k)| k != 0)
            .collect();
        self.armed.clear_all();
        self.hot.clear_all();
        self.refaulted.clear_all();
        for (w, bits) in refaulted.into_iter().chain(kept) {
            self.hot.or_word(w, bits);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refault_makes_hot_and_unarmable() {
        let b = ArmBits::new(130);
        b.arm(10, 5);
        assert!(!b.armable(12));
        assert_eq!(b.unprotecting(11, 12), 2);
        assert!(!b.armable(12), "hot pages are never re-armed in the epoch");
        assert!(!b.armable(10) && b.armable(20));
        let (runs, skipped) = b.unarmed_runs(&[u64::MAX, 0, 1 << 63, 1, 0], &[(13, 1)]);
        // armed: 10, 14 (11, 12 refaulted; 13 inside a suspect run is not trusted)
        assert_eq!(skipped, 2);
        assert_eq!(runs, vec![(0, 10), (11, 3), (15, 49), (191, 2)]);
        // 11, 12 re-faulted: hot in the next epoch too; 10 and 14 were armed, not hot.
        b.reset(&[1 << 11]);
        assert!(!b.armable(11) && !b.armable(12) && b.armable(10) && b.armable(14));
        // 11 written in that epoch (dirty), 12 not: only 11 stays hot.
        b.reset(&[(1 << 11) | (1 << 20)]);
        assert!(!b.armable(11) && b.armable(12) && b.armable(20));
        b.reset(&[0]);
        assert!(b.armable(11) && b.armable(12) && b.armable(10));
    }
}
