//! Lazy arming of owned anonymous regions: a reservation costs what is touched.
//!
//! Protecting every page of a region up front (`UFFDIO_WRITEPROTECT` with `WP_UNPOPULATED`)
//! installs a marker in every page-table entry: 2 MiB of page tables and 10-13 ms per
//! reserved GiB, 2 GiB and ~24 s for 1 TiB. A lazily armed region is registered for
//! *missing* faults as well as write-protect faults and protects nothing at first:
//!
//! ```text
//!   empty page (never touched, or zapped) --read: MISSING--> a zeroed page is installed
//!                                                            write-protected (one ioctl)
//!                                         --write: MISSING--> served as a write-protect fault
//!                                                            (copy for views, dirty bit), whose
//!                                                            un-protect step installs the page
//!                                                            WRITABLE and wakes (one ioctl)
//!   protected page --write: WP fault--> the usual path
//! ```
//!
//! Invariants (sync backend, faults served by the service thread):
//! - **No access escapes both fault kinds**: an empty entry (or a `uffd-wp` marker, in a
//!   missing-mode range) raises MISSING; a page gets content only through `UFFDIO_COPY` with
//!   `MODE_WP`, which installs page and protection in one step, through a writable
//!   `UFFDIO_COPY` at the un-protect step of a served write fault (`install_for_write`:
//!   dirty bit and views' copies first, exactly as before an un-protect; the page was empty
//!   until then, so every access to it faulted), or through `prepare_overwrite`, which sets
//!   every dirty bit first. So a present page without the `uffd-wp` bit exists only after a
//!   served write (dirty bit set first).
//! - **`populated` over-approximates the pages with content**: set right after a page gets
//!   content through us, with no event read in between (a REMOVE read while an install
//!   waits on `EAGAIN` forgets its range, and must not forget a page that gets content after
//!   it; the first version set the bit before the install and lost exactly that, caught by
//!   `snapshot.rs::madvise_racing_copy_before_write_is_never_silently_wrong`), and cleared
//!   only for a range whose `madvise` zap has finished.
//! - **Live pages are read through `/proc/self/mem`** (`RegionInner::copy_page`), which returns
//!   `EIO` for an empty page instead of faulting (a fault on the service thread would wait
//!   on itself); an empty page reads as zeros, its content.
//! - **A zap is complete before any later view is made**: on `MADV_DONTNEED` the kernel zaps
//!   the pages *after* the REMOVE event is read; `on_remove_lazy` marks the populated pages of
//!   the range dirty (and LOST for the views), then waits (bounded) until the range has no
//!   present or swapped entry, serving no fault meanwhile, so no page of the range gets
//!   content again until then. So an empty page of a later snapshot or epoch is empty at its
//!   cut, and zeros are its content there. (Without the wait, a view could take a page that a
//!   late zap then empties and a later write fills: that write would be copied as the page's
//!   content at the cut.)
//! - **`MADV_FREE` sends the same REMOVE, and no zap follows**: the pages stay present until
//!   the kernel discards them, at any later time, without an event. The wait stops once the
//!   first page with content has not moved for `ZAP_STILL` (a zap clears pages in address
//!   order as soon as its thread runs), or after `ZAP_WAIT`; then the whole range stays
//!   populated and becomes **suspect**, as zapped pages of an eagerly protected region: every
//!   cut and snapshot re-checks it with `PAGEMAP_SCAN` (a populated page found emptied, or
//!   writable, is dirty and LOST for the views that still need it: `cut.rs`
//!   `mark_unprotected`), a view verifies a suspect page before copying it (an emptied page
//!   is LOST: `Discarded`, never zeros), and a missing fault on a populated page that
//!   `PAGEMAP_SCAN` finds empty sets its dirty bit and marks it LOST before anything is
//!   installed there (`lost_if_emptied`, clones included). A slow `MADV_DONTNEED` zap taken
//!   for a `MADV_FREE` costs over-reports and `Discarded` pages, never wrong data. Before (2026-11-30), `MADV_FREE` stalled every fault
//!   for the 2 s bound and the range was then taken as empty: a discard in a later epoch was
//!   not reported, and a snapshot read the discarded pages as zeros
//!   (`misbehaviour::madvise_free_in_a_lazy_region_is_not_a_stall_and_a_later_discard_is_reported`,
//!   `misbehaviour::snapshot_after_madvise_free_then_discard_is_never_silently_wrong`).

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::{Fault, Service};
use crate::sys::{self, Addr};

/// How long `on_remove_lazy` waits for a zap to finish before it gives up (and logs).
const ZAP_WAIT: Duration = Duration::from_secs(2);
/// How long the first page with content may stay where it is before `on_remove_lazy` takes
/// the range for a `MADV_FREE` (no zap coming) instead of a zap that has not started yet. A
/// zap clears pages in address order from the start of the range, within microseconds once
/// its thread runs; before, a `MADV_FREE` stalled every fault for `ZAP_WAIT`.
const ZAP_STILL: Duration = Duration::from_millis(2);
/// Pages per entry of [`Populated`].
const SPAN: u64 = 512;
/// A read of an empty page installs up to this many zeroed, protected pages from it on
/// (readers of fresh memory take one fault per 64 KiB, not per page).
const READ_AHEAD: u64 = 16;
/// A read fault on the page right after the previous read-ahead (or after pages with content
/// that follow it, which the reader read without faulting) doubles it, up to this many pages
/// (1 MiB): a reader going through fresh memory in order takes one fault per MiB. What it
/// costs: a reader in order that stops gets at most `READ_AHEAD_MAX - 1` pages allocated and
/// never read; any other reader gets `READ_AHEAD` per fault, as before (zeros: no content
/// changes, nothing is reported dirty).
const READ_AHEAD_MAX: u64 = 256;

/// The runs a read fault on the empty page `p` installs (zeroed, protected): `p` itself, and
/// of the `n - 1` pages after it, those `populated` does not hold (empty for certain: it
/// over-approximates, and only the service thread fills a page). A page that may have content
/// is skipped, not the whole read-ahead: before 2026-11-30 one populated page in the window
/// cut it to the faulting page alone, so reading a region whose every few pages had been
/// written took a service round trip per page (1 GiB, 10 % written at random: 10.7 s).
fn read_ahead_runs(pop: Option<&Populated>, p: u64, n: u64) -> Vec<(u64, u64)> {
    /// At most this many `UFFDIO_COPY` calls per read fault (a window alternating between
    /// pages with and without content would otherwise take one call per page).
    const MAX_RUNS: usize = 16;
    let mut runs: Vec<(u64, u64)> = vec![(p, 1)];
    // A populated `p` (emptied since, or filled meanwhile) stays a run of its own.
    let mut open = !pop.is_some_and(|pop| pop.contains(p));
    for q in p + 1..p + n {
        if pop.is_some_and(|pop| pop.contains(q)) {
            continue;
        }
        let n_runs = runs.len();
        match runs.last_mut() {
            Some((a, k)) if open && *a + *k == q => *k += 1,
            _ if n_runs == MAX_RUNS => break,
            _ => runs.push((q, 1)),
        }
        open = true;
    }
    runs
}

/// The pages of a lazily armed region that may have content, sparse: one 512-bit entry per
/// 2 MiB that was ever touched.
#[derive(Default)]
pub(super) struct Populated(BTreeMap<u64, [u64; 8]>);

impl Populated {
    pub(super) fn set(&mut self, p: u64) {
        let w = self.0.entry(p / SPAN).or_default();
        let i = (p % SPAN) as usize;
        w[i / 64] |= 1 << (i % 64);
    }

    /// Whether page `p` may have content.
    pub(super) fn contains(&self, p: u64) -> bool {
        self.0
            .get(&(p / SPAN))
            .is_some_and(|w| w[((p % SPAN) / 64) as usize] & (1 << (p % 64)) != 0)
    }

    /// Every page of `0..pages`.
    pub(super) fn set_all(&mut self, pages: u64) {
        for s in 0..pages.div_ceil(SPAN) {
            self.0.insert(s, [u64::MAX; 8]);
        }
    }

    /// The runs of populated pages in `first..=last`, as `(first, count)`.
    fn runs(&self, first: u64, last: u64) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        for (&s, w) in self.0.range(first / SPAN..=last / SPAN) {
            for i in 0..SPAN {
                let p = s * SPAN + i;
                if p < first || p > last || w[(i / 64) as usize] & (1 << (i % 64)) == 0 {
                    continue;
                }
                crate::dirty::add_run(&mut runs, p, 1);
            }
        }
        runs
    }

    /// Forgets the pages of `first..=last` (their zap is done).
    fn clear(&mut self, first: u64, last: u64) {
        for (&s, w) in self.0.range_mut(first / SPAN..=last / SPAN) {
            for i in 0..SPAN {
                let p = s * SPAN + i;
                if p >= first && p <= last {
                    w[(i / 64) as usize] &= !(1 << (i % 64));
                }
            }
        }
    }
}

impl Service {
    /// Serves the missing faults among `faults` (lazily armed regions): installs a zeroed,
    /// write-protected page; a read is woken, a write is returned to be served as a
    /// write-protect fault (which copies the page for views, sets the dirty bit, un-protects
    /// and wakes). Returns the other faults plus those writes.
    pub(super) fn serve_missing(&mut self, faults: Vec<Fault>) -> Vec<Fault> {
        let mut rest = Vec::with_capacity(faults.len());
        let ps = sys::base_page_size();
        for f in faults {
            if !f.missing {
                rest.push(f);
                continue;
            }
            let page_addr = f.addr & !(ps - 1);
            let Some(key) = self.region_key(f.addr) else {
                let _ = self.u().wake(Addr(page_addr).ptr(), ps);
                continue;
            };
            self.lost_if_emptied(key, page_addr);
            if f.write {
                // Installed writable at the un-protect step of `service_pending`, after the
                // dirty bit and the views' copies: the page stays empty (every access to it
                // faults) until then.
                self.shared
                    .counters
                    .missing_faults
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                rest.push(Fault {
                    missing: false,
                    install: true,
                    ..f
                });
                continue;
            }
            let entry = self.by_start.get_mut(&key).expect("a live key");
            if entry.inner.lineage.is_some() {
                // A fork clone: its page's content is inherited (see service/fork.rs).
                let r = self.serve_missing_clone(key, page_addr, true);
                if r.is_ok() {
                    self.shared
                        .counters
                        .missing_faults
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                match r {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(addr = format_args!("{page_addr:#x}"), %e, "installing a clone page failed");
                        let _ = self.u().wake(Addr(page_addr).ptr(), ps);
                    }
                }
                continue;
            }
            let p = entry.inner.page_of(f.addr);
            // The reader follows on if it read every page between the previous read-ahead and
            // this fault without faulting: they all have content (a strided reader does not).
            let follows = p >= entry.read_next
                && p - entry.read_next < READ_AHEAD
                && entry
                    .populated
                    .as_ref()
                    .is_some_and(|pop| (entry.read_next..p).all(|q| pop.contains(q)));
            entry.read_ahead = if follows {
                (entry.read_ahead * 2).clamp(READ_AHEAD, READ_AHEAD_MAX)
            } else {
                READ_AHEAD
            };
            let n = entry.read_ahead.min(entry.inner.page_count - p);
            let runs = read_ahead_runs(entry.populated.as_ref(), p, n);
            // (Runs may stop short of `p + n`: at most `MAX_RUNS` per fault.)
            entry.read_next = runs.last().map_or(p + 1, |&(a, k)| a + k);
            let start = entry.inner.start;
            // The faulting page's run first, waking its reader; the rest without a wake-up.
            let mut r = Ok(());
            for (i, &(a, k)) in runs.iter().enumerate() {
                let addr = start + a as usize * ps;
                let one = self.install_zero(addr, k as usize * ps, i == 0);
                // Recorded after the install, with no event read in between: a REMOVE read
                // while the install waited (`EAGAIN`) forgets the range's pages, and must not
                // forget these, which got content after it.
                if let Some(pop) = self
                    .by_start
                    .get_mut(&key)
                    .and_then(|e| e.populated.as_mut())
                {
                    for q in a..a + k {
                        pop.set(q);
                    }
                }
                let failed = one.is_err();
                if i == 0 {
                    r = one;
                }
                if failed {
                    break; // later runs are read-ahead only: their pages fault later
                }
            }
            if let Err(e) = r {
                tracing::warn!(addr = format_args!("{page_addr:#x}"), %e, "installing a page failed");
                let _ = self.u().wake(Addr(page_addr).ptr(), ps);
                continue;
            }
            self.shared
                .counters
                .missing_faults
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = self.u().wake(Addr(page_addr).ptr(), ps);
        }
        rest
    }

    /// A missing fault on a page that `populated` says got content from us: if the page is
    /// empty now, the kernel emptied it without a zap we waited for (`MADV_FREE` and then
    /// reclaim, or a zap that outlasted `wait_for_zap`; its range is suspect). Its content
    /// changed to zeros: its dirty bit is set, and it is LOST for the views that still needed
    /// its earlier content, before anything is installed there. (Checked with
    /// `PAGEMAP_SCAN`: `populated` over-approximates, and the page may have been filled by
    /// this thread since the fault was raised, e.g. by another fault's read-ahead; nothing
    /// else can fill it before this thread does.)
    fn lost_if_emptied(&mut self, key: usize, page_addr: usize) {
        let Some(entry) = self.by_start.get_mut(&key) else {
            return;
        };
        let p = entry.inner.page_of(page_addr);
        if !entry.populated.as_ref().is_some_and(|pop| pop.contains(p)) {
            return;
        }
        let ps = entry.inner.page_size;
        let empty = match self.shared.pagemap.as_ref() {
            Some(pm) => pm
                .first_content(page_addr, page_addr + ps)
                .map_or(true, |c| c.is_none()),
            None => true,
        };
        if empty {
            entry.inner.dirty.set_range(p as usize, 1);
            for v in entry.live_views() {
                v.mark_lost(p);
            }
        }
    }

    /// Fault-around in a plain lazily armed region (`service_pending`, after the run's dirty
    /// bits and views' copies, before its un-protect): every empty page of `first..=last` gets
    /// a zeroed page, writable, without waking anyone (the un-protect wakes). Pages with
    /// content are skipped (the un-protect handles them); a page left empty (an install
    /// refused) faults later. `populated` records exactly the pages installed: a populated
    /// page found empty later is taken for lost content (`lost_if_emptied`).
    pub(super) fn install_zeros_writable(
        &mut self,
        inner: &crate::range::RegionInner,
        first: u64,
        last: u64,
    ) {
        let ps = inner.page_size;
        let len = (last - first + 1) as usize * ps;
        if self.zeros.len() < len {
            self.zeros = vec![0u8; len];
        }
        // Only pages `populated` does not hold: those are empty for certain (it
        // over-approximates), so a run of populated pages costs no ioctl here.
        let Some(empty) = self
            .by_start
            .get(&inner.start)
            .and_then(|e| e.populated.as_ref())
            .map(|pop| {
                let mut runs: Vec<(u64, u64)> = Vec::new();
                for q in (first..=last).filter(|&q| !pop.contains(q)) {
                    crate::dirty::add_run(&mut runs, q, 1);
                }
                runs
            })
        else {
            return;
        };
        let fd = self.u().as_raw_fd();
        for (a, n) in empty {
            let addr = inner.start + a as usize * ps;
            let (done, r) = sys::copy_zero_pages_counted(
                fd,
                addr,
                &self.zeros[..n as usize * ps],
                false,
                false,
            );
            let pages = (done / ps) as u64;
            if let Some(pop) = self
                .by_start
                .get_mut(&inner.start)
                .and_then(|e| e.populated.as_mut())
            {
                for q in a..a + pages {
                    pop.set(q);
                }
            }
            if r.is_err() && pages < n {
                // An event is pending (or the range went away): the rest stays empty and
                // faults later.
                break;
            }
        }
    }

    /// The un-protect step of a missing write fault (`service_pending`, after the dirty bit
    /// and the views' copies): installs the page's content (zeros, or a clone's inherited
    /// page) **writable**, waking its writers if `wake`, and records it populated (and owned,
    /// for a clone). True if it installed the page. False if the page already has content
    /// (`EEXIST`: a read fault or a clone privatisation installed it, protected, meanwhile) or
    /// the install failed: the caller then un-protects and wakes, and a writer whose page is
    /// still empty faults again (its dirty bit stays set: an over-report at most).
    pub(super) fn install_for_write(
        &mut self,
        inner: &crate::range::RegionInner,
        addr: usize,
        wake: bool,
    ) -> bool {
        let ps = inner.page_size;
        let page_addr = addr & !(ps - 1);
        let p = inner.page_of(page_addr);
        let mut buf = std::mem::take(&mut self.page_buf);
        buf.resize(ps, 0);
        if inner.lineage.is_some() {
            inner.copy_page(p, &mut buf);
        } else {
            buf.fill(0);
        }
        let fd = self.u().as_raw_fd();
        let r = sys::install_page(fd, page_addr, &buf, false, wake);
        self.page_buf = buf;
        match r {
            Ok(()) => {
                if let Some(pop) = self
                    .by_start
                    .get_mut(&inner.start)
                    .and_then(|e| e.populated.as_mut())
                {
                    pop.set(p);
                }
                if let Some(l) = &inner.lineage {
                    l.own(p);
                }
                true
            }
            Err(Errno::EEXIST) => false,
            Err(e) => {
                // EAGAIN (an event is pending) or the range went away: the caller's
                // un-protect reads the event and wakes; the writer retries.
                tracing::debug!(addr = format_args!("{page_addr:#x}"), %e, "writable install failed; waking");
                false
            }
        }
    }

    /// `UFFDIO_COPY` of zeroed, write-protected pages to every empty page of
    /// `[addr, addr+len)`; pages that have content are skipped (`EEXIST`). On success every
    /// page of the range has content. Reads (and holds) events on `EAGAIN`, then starts over
    /// from `addr`: a REMOVE read meanwhile may have emptied pages this call had installed and
    /// not yet recorded in `populated` (so it did not mark them), which are filled again.
    /// The caller records the whole range in `populated`, also on error (over-approximation).
    fn install_zero(&mut self, addr: usize, len: usize, wake: bool) -> Result<(), Errno> {
        let fd = self.u().as_raw_fd();
        if self.zeros.len() < len {
            self.zeros = vec![0u8; len];
        }
        // A page found with content (`EEXIST`) is skipped, not the rest of the range.
        let ps = sys::base_page_size();
        let mut done = 0;
        for attempt in 0..100_000 {
            if done >= len {
                return Ok(());
            }
            let (n, r) = sys::copy_zero_pages_counted(
                fd,
                addr + done,
                &self.zeros[..len - done],
                true,
                wake,
            );
            done += n;
            match r {
                Ok(()) => {}
                Err(Errno::EEXIST) => done += ps,
                Err(Errno::EAGAIN) if attempt < 99_999 => {
                    self.pump();
                    done = 0;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EAGAIN)
    }

    /// Maps the zero page into every empty entry of `[addr, addr+len)`, skipping pages that
    /// have content (`prepare_overwrite`, after every dirty bit was set and every page was
    /// recorded in `populated`: a write that lands on such a zero page before the next cut is
    /// reported by those bits). Reads (and holds) events on `EAGAIN`; a REMOVE handled then
    /// forgets the pages of its range, so the pages still to be filled, `[cur, end)`, are
    /// recorded again before the fill goes on (review of 2026-11-30: they were not, so such a
    /// page, written and madvised later, went unreported and a snapshot read zeros). Pages
    /// the REMOVE emptied before `cur` stay empty and unrecorded: their content is zero.
    pub(super) fn zero_fill(&mut self, addr: usize, len: usize) -> Result<(), Errno> {
        let ps = sys::base_page_size();
        let (mut cur, end) = (addr, addr + len);
        let mut again = 0u32;
        while cur < end {
            match sys::zeropage(self.u(), cur, end - cur) {
                Ok(n) if n > 0 => cur += n,
                Ok(_) | Err(Errno::EEXIST) => cur += ps, // a page with content: keep it
                Err(Errno::EAGAIN) if again < 100_000 => {
                    again += 1;
                    self.pump();
                    self.mark_range_populated(cur, end);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Records the pages of `[from, to)` (within one lazily armed region) in `populated`.
    fn mark_range_populated(&mut self, from: usize, to: usize) {
        let Some(key) = self.region_key(from) else {
            return;
        };
        let Some(e) = self.by_start.get_mut(&key) else {
            return;
        };
        let (first, end) = (e.inner.page_of(from), e.inner.page_of(to - 1) + 1);
        if let Some(pop) = e.populated.as_mut() {
            for q in first..end {
                pop.set(q);
            }
        }
    }

    /// A REMOVE event (`madvise(MADV_DONTNEED)`) on a lazily armed region: the populated
    /// pages of the range become zero (dirty; content at earlier cuts not yet preserved is
    /// LOST for the views; a CLEAN page must be rewritten by the next rollback). Then waits
    /// until the kernel's zap is done and forgets them: they are empty again, and take a
    /// missing fault at their next access.
    pub(super) fn on_remove_lazy(&mut self, key: usize, start: usize, end: usize) {
        let Some(entry) = self.by_start.get_mut(&key) else {
            return;
        };
        let inner = std::sync::Arc::clone(&entry.inner);
        let views = entry.live_views();
        let (s, e) = (start.max(inner.start), end.min(inner.end()));
        let (first, last) = (inner.page_of(s), inner.page_of(e - 1));
        let runs = entry
            .populated
            .as_ref()
            .map(|p| p.runs(first, last))
            .unwrap_or_default();
        inner
            .counters
            .remove_events
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for &(a, n) in &runs {
            inner.dirty.set_range(a as usize, n as usize);
            if let Some(eg) = entry.eager.as_mut() {
                eg.forget(a, n);
            }
            for v in &views {
                for p in a..a + n {
                    v.mark_lost(p);
                }
            }
        }
        // If pages stay present (MADV_FREE, or a zap that did not finish in time) they may
        // lose their content later without any event: the range stays populated and becomes
        // suspect like the zapped pages of an eagerly protected region, so every cut and
        // snapshot re-checks it (an emptied page is reported dirty and is LOST for the views
        // that need its earlier content), never taken as known-zero.
        if self.wait_for_zap(s, e).is_some() {
            // The whole range, not only from the first page still present: a zap that
            // started late may still empty pages before it (review of 2026-11-30).
            inner.add_suspect(first, last - first + 1);
        } else if let Some(pop) = self
            .by_start
            .get_mut(&key)
            .and_then(|e| e.populated.as_mut())
        {
            pop.clear(first, last);
        }
    }

    /// Waits until the kernel's zap of `[start, end)` is done (no present or swapped entry
    /// left): `None`. No fault is served meanwhile, so nothing in the range gets content
    /// again. `Some(address of the first page still with content)` if that page stayed for
    /// `ZAP_STILL` (`MADV_FREE`: no zap is coming) or the wait took `ZAP_WAIT`.
    fn wait_for_zap(&self, start: usize, end: usize) -> Option<usize> {
        let Some(pm) = self.shared.pagemap.as_ref() else {
            return Some(start);
        };
        let t0 = Instant::now();
        let (mut seen, mut since) = (None, t0);
        let mut spins = 0u32;
        loop {
            let at = match pm.first_content(start, end) {
                Ok(Some(at)) => at,
                Ok(None) => return None,
                Err(_) => return Some(start), // unknown: the whole range is suspect
            };
            let now = Instant::now();
            if seen != Some(at) {
                (seen, since) = (Some(at), now);
            } else if now.duration_since(since) > ZAP_STILL {
                // MADV_FREE (its REMOVE looks like DONTNEED's): nothing is zapped now; the
                // kernel may discard the pages at any later time, without an event.
                tracing::debug!(
                    start = format_args!("{start:#x}"),
                    end = format_args!("{end:#x}"),
                    "pages stay present after a REMOVE (MADV_FREE?): treated as suspect"
                );
                return Some(at);
            }
            if now.duration_since(t0) > ZAP_WAIT {
                tracing::warn!(
                    start = format_args!("{start:#x}"),
                    end = format_args!("{end:#x}"),
                    "a madvise zap did not finish in time; the rest of the range is suspect"
                );
                return Some(at);
            }
            spins += 1;
            if spins < 16 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
}
