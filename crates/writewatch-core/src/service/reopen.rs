//! Re-opening hot pages after a cut (sync backend, faults served by this thread; on with the
//! adaptive policy, forced by `TrackerBuilder::reopen_hot`).
//!
//! A cut re-protects every page written in the epoch it closes, so the writers' next write to
//! each of them faults. For the pages that were written *again after background re-arming*
//! (hot bits of [`crate::armed::ArmBits`] on pages armed by re-arming, not by a snapshot or a
//! registration) that next write is nearly certain and comes at once, when the region has a
//! stable hot set (at least [`MIN_HOT`] pages hot in both of its last two epochs; only those
//! are re-opened): right after a cut the writers used to queue on the hot set, one fault (two
//! wake-ups) per page, while the service thread drained it page by page.
//!
//! ```text
//!   cut (faults held): harvest, re-protect, new view  --reply-->  caller
//!        |  hot pages of the closed epoch (not suspect, populated) -> `pending`
//!        v
//!   service_pending: each one served exactly as a write fault on it would be:
//!        copy for every live view that needs it -> dirty bit -> un-protect
//! ```
//!
//! **Why it is safe.** A re-opened page goes through the same steps, in the same order, as a
//! write fault served right after the cut: the consistency argument of a fault (claims 1 and
//! 2 of docs/design.md section 4, copy-before-write of section 5, fork privatisation) holds
//! for it unchanged, and nothing else is skipped. The only difference is that no write may
//! follow: the page is then reported written in the new epoch although it was not, an
//! over-report, which the dirty-set contract allows. **Bound**: at most the pages found hot in
//! the previous epoch, at most [`MAX_REOPEN`] per cut, reported in `PolicyReport::reopened_pages`.
//!
//! Not re-opened: pages in suspect runs (a zap may have emptied them: reading an empty page of
//! a lazily armed region from this thread would wait on itself), never-populated pages of
//! lazily armed regions, and anything when the copy budget is full (the synthetic fault is
//! dropped, the page stays protected).

use std::time::Instant;

use super::{Fault, Service};
use crate::backend::Backend;
use crate::range::RegionInner;

/// Re-opened pages served per turn of the service loop (then the userfaultfd is polled
/// again, so a writer's fault waits behind at most this many).
pub(super) const REOPEN_STEP: usize = 32;

/// Most pages re-opened per cut (bounds the service thread's work right after a cut).
pub(super) const MAX_REOPEN: usize = 1 << 16;
/// Fewest pages hot in both of a region's last two epochs for any to be re-opened: pages a
/// random writer happened to write twice cost a few faults, and re-opening them would only
/// over-report; a stable hot set (a loop's working set) pays off.
pub(super) const MIN_HOT: usize = 64;

impl Service {
    /// Whether hot pages of regions of this tracker are re-opened after a cut.
    pub(super) fn reopen_on(&self) -> bool {
        let c = &self.shared.config;
        self.backend == Backend::SyncUffd && !c.in_thread && c.reopen_hot.unwrap_or(c.adaptive)
    }

    /// Called by a cut with faults held, before the armed/hot bits are reset: the region's
    /// hot pages that may be re-opened once the cut's view exists.
    pub(super) fn hot_to_reopen(
        &mut self,
        start: usize,
        inner: &RegionInner,
        suspect: &[(u64, u64)],
    ) -> Vec<u64> {
        if !self.reopen_on() {
            return Vec::new();
        }
        let Some(entry) = self.by_start.get_mut(&start) else {
            return Vec::new();
        };
        let Some(eg) = entry.eager.as_mut() else {
            return Vec::new();
        };
        // Hot in this epoch AND the previous one: a stable hot set, not pages a random
        // writer happened to write twice (both lists are sorted).
        let hot = eg.bits.hot_pages(MAX_REOPEN);
        let prev = std::mem::replace(&mut eg.prev_hot, hot);
        let mut pages = Vec::new();
        let mut it = prev.iter().peekable();
        for &p in &eg.prev_hot {
            while it.next_if(|&&q| q < p).is_some() {}
            if it.peek() == Some(&&p) {
                pages.push(p);
            }
        }
        if pages.len() < MIN_HOT {
            return Vec::new();
        }
        let entry = &self.by_start[&start];
        pages.retain(|&p| {
            !suspect.iter().any(|&(a, n)| p >= a && p < a + n)
                && !inner.is_suspect(p)
                && entry.populated.as_ref().is_none_or(|pop| pop.contains(p))
        });
        pages
    }

    /// Serves the next [`REOPEN_STEP`] queued re-opened pages (after the real faults).
    pub(super) fn reopen_step(&mut self) {
        let n = self.reopen_q.len().min(REOPEN_STEP);
        self.pending.extend(self.reopen_q.drain(..n));
        self.service_pending();
    }

    /// Called by a cut once its view is attached (still before its reply): queues the pages
    /// as synthetic write faults, served after the faults the cut held, [`REOPEN_STEP`] at a
    /// time. A page still queued when something else un-protected it (a write fault, the next
    /// cut's re-open) is served again harmlessly: every un-protect copies for the live views
    /// first, so a view already holds the copy of a writable page, and un-protecting a
    /// writable page changes nothing.
    pub(super) fn reopen(&mut self, inner: &RegionInner, pages: &[u64]) {
        let t = Instant::now();
        self.reopen_q.extend(pages.iter().map(|&p| Fault {
            addr: inner.start + p as usize * inner.page_size,
            tid: 0,
            t,
            missing: false,
            write: true,
            synthetic: true,
        }));
        let on = self.reopen_on();
        let r = &mut self.policy.report;
        r.reopened_pages = pages.len() as u64;
        if r.reopen.chosen != "forced" {
            r.reopen.chosen = if on {
                "re-open hot pages after a cut".into()
            } else {
                "off".into()
            };
            r.reopen.why = if on {
                format!(
                    "{} pages written again after re-arming in the closed epoch re-opened (each over-reported in the new epoch if it is not written)",
                    pages.len()
                )
            } else {
                "adaptive(false), or faults served in the writers' handlers".into()
            };
        }
        if let Ok(mut shared) = self.shared.policy.lock() {
            shared.reopened_pages = r.reopened_pages;
            shared.reopen.clone_from(&r.reopen);
        }
    }
}
