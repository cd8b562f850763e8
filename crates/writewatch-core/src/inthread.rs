//! In-thread fault handling (`TrackerBuilder::in_thread_faults`): the faulting thread serves
//! its own write-protect fault in a `SIGBUS` handler instead of sleeping until the service
//! thread has served it.
//!
//! The userfaultfd is opened with `UFFD_FEATURE_SIGBUS`: a write to a protected page raises
//! `SIGBUS` in the writing thread (see [`crate::sys::sigbus`] for the handler, its slot table
//! and the in-flight accounting). [`serve`] then does on that thread exactly what the service
//! thread does for a fault: preserve the page for every live view that still needs it (the page
//! is still protected, so the copy is its content at the cut), set the dirty bit, and only then
//! un-protect it. No wake-up, no context switch: the cost is a signal delivery, a copy when a
//! view needs one, and one ioctl.
//!
//! The service thread keeps everything else: commands (cuts, snapshots), non-cooperative events
//! (REMOVE / UNMAP / REMAP). A cut raises the slot's `cutting` flag and waits until every
//! handler that missed it has left; handlers arriving later wait until the cut has re-protected
//! the dirty pages and published the new view (held faults, as in docs/design.md section 4).
//!
//! Trade-off (documented on the builder): a system call that writes tracked memory (`read(2)`
//! into a tracked buffer) fails with `EFAULT` instead of being tracked, as with the mprotect
//! backend.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use nix::errno::Errno;

use crate::armed::ArmBits;
use crate::range::RegionInner;
use crate::shared::Shared;
use crate::sys::sigbus::{InFlight, Outcome, RcuList, Serve};
use crate::view::{Preserve, View};

/// What the `SIGBUS` handler needs to serve faults of one region.
pub(crate) struct Hook {
    pub inner: Arc<RegionInner>,
    pub shared: Arc<Shared>,
    pub uffd: crate::sys::UffdRef,
    /// The live views of the region (epochs being read, snapshots). The service thread adds a
    /// view when a cut or snapshot creates it and drops it once only this list holds it.
    pub views: RcuList<View>,
    /// Eager re-protection's armed bits (shared with the service thread), if it is on.
    pub arm: Option<Arc<ArmBits>>,
}

impl Hook {
    pub(crate) fn new(
        inner: Arc<RegionInner>,
        shared: Arc<Shared>,
        uffd: crate::sys::UffdRef,
        arm: Option<Arc<ArmBits>>,
    ) -> Self {
        Self {
            inner,
            shared,
            uffd,
            views: RcuList::new(),
            arm,
        }
    }

    /// Service thread: forgets views nobody else holds any more (dropped epochs and
    /// snapshots), which frees their copies and budget.
    pub(crate) fn prune(&self) {
        let dead = self
            .views
            .snapshot()
            .iter()
            .any(|v| Arc::strong_count(v) <= 2); // the list's own, plus the snapshot's copy
        if dead {
            self.views
                .update(|v| v.retain(|x| Arc::strong_count(x) > 2));
        }
    }
}

impl Serve for Hook {
    fn serve(&self, addr: usize, in_flight: &InFlight) -> Outcome {
        serve(self, addr, in_flight)
    }
}

/// Serves a write-protect fault at `addr` on the faulting thread (called from the `SIGBUS`
/// handler, inside its in-flight section). Async-signal-safety: atomics, system calls, and the
/// tracker's page pool and copy maps, whose mutexes our code never holds while writing tracked
/// memory (so the interrupted thread cannot hold them).
///
/// Never writes tracked memory: the copy reads it.
fn serve(h: &Hook, addr: usize, in_flight: &InFlight) -> Outcome {
    let inner = &h.inner;
    if inner.invalidation().is_some() || addr < inner.start || addr >= inner.end() {
        return Outcome::Done;
    }
    let page = inner.page_of(addr);
    let verify = |p: u64| !inner.is_suspect(p) || h.shared.verify_protected(inner, p);
    // A view only this list still holds was dropped by its reader: nobody can read it, so it
    // needs no copy (the service thread removes it at its next wake-up). Never wait in here:
    // a busy page (a saver or another handler copying it) means leave and retry.
    let mut outcome = Preserve::Done;
    h.views.for_each(in_flight, |v| {
        if Arc::strong_count(v) > 1 {
            outcome = v.try_preserve(page, &verify);
        }
        outcome == Preserve::Done
    });
    match outcome {
        Preserve::Done => {}
        Preserve::Busy => return Outcome::Wait,
        Preserve::NoBudget => {
            // Budget full: readers must drain (or drop) epochs; make sure the service thread
            // notices dropped ones.
            h.shared.counters.deferred.fetch_add(1, Relaxed);
            h.shared.kick();
            return Outcome::Wait;
        }
    }
    // Armed bit cleared BEFORE un-protect, inside the in-flight section (invariant E1, see
    // `crate::armed`): eager re-protection arms a page only after a `synchronize`.
    if let Some(arm) = &h.arm {
        let refaults = arm.unprotecting(page, page);
        if refaults > 0 {
            h.shared.counters.refaults.fetch_add(refaults, Relaxed);
        }
    }
    // Dirty bit BEFORE un-protect: the write may proceed only once it is recorded.
    inner.dirty.set(page as usize);
    let ps = inner.page_size;
    match h.uffd.unprotect(inner.start + page as usize * ps, ps) {
        Ok(()) => {
            let c = &h.shared.counters;
            c.faults.fetch_add(1, Relaxed);
            c.wp_faults.fetch_add(1, Relaxed);
            c.unprotect_ioctls.fetch_add(1, Relaxed);
            inner.counters.faults.fetch_add(1, Relaxed);
            Outcome::Done
        }
        // A non-cooperative event (madvise, munmap, mremap) is being delivered: the kernel
        // refuses protection changes until the service thread has read it.
        Err(Errno::EAGAIN) => Outcome::Wait,
        // The range went away (unregistered or unmapped): the write re-executes untracked, or
        // faults for real.
        Err(_) => Outcome::Done,
    }
}
