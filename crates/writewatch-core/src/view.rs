//! Point-in-time content: copy-before-write views, the epoch reader, snapshots, rollback.
//!
//! A *view* is created by a cut (the epoch's dirty pages) or by [`Region::snapshot`] (every
//! page). It records, per page, where the content "as at the cut" lives:
//!
//! ```text
//!                 saver reads live page                 saver done (consume mode)
//!     PENDING ---------------------------> COPYING ---------------------------> RELEASED
//!       |   ^                                 |      (retain mode: back to PENDING)
//!       |   +---------------------------------+
//!       | first write after the cut: the service thread copies the page
//!       | (the writer is blocked on its fault) ...
//!       v
//!   PRESERVING ----------------------> PRESERVED ----- saver takes the copy -----> RELEASED
//!                                                     (retain mode: stays)
//!   any of PENDING / COPYING / PRESERVING  --- madvise(DONTNEED) on the page ---> LOST
//! ```
//!
//! Invariants:
//! - While a page is PENDING or COPYING, the live page still holds its content at the cut:
//!   it is write-protected, and the service thread un-protects it only after moving it out of
//!   PENDING (to PRESERVED) — never while it is COPYING (the service thread waits; the saver
//!   only reads and never blocks on the service thread while COPYING).
//! - A preserved copy lives in memory the tracker allocated (never tracked memory).
//! - The kernel itself may remove content without a fault (`madvise(MADV_DONTNEED)` on
//!   anonymous memory zaps pages *after* delivering the REMOVE event). Such pages are marked
//!   LOST when the event is read, and every copy of a live page in a range that ever received
//!   REMOVE is verified afterwards with `PAGEMAP_SCAN` (the page must still be write-protected),
//!   so a zap racing with a copy is an error, never silently wrong data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::dirty::DirtySet;
use crate::error::SnapshotError;
use crate::range::RegionInner;
use crate::shared::Shared;

pub(crate) const NOT_NEEDED: u8 = 0;
pub(crate) const PENDING: u8 = 1;
pub(crate) const COPYING: u8 = 2;
pub(crate) const PRESERVING: u8 = 3;
pub(crate) const PRESERVED: u8 = 4;
pub(crate) const RELEASED: u8 = 5;
pub(crate) const LOST: u8 = 6;
/// Retain mode only: preserved, and since the last rollback the live page equals the copy
/// again and is write-protected (its next write faults and moves it back to PRESERVED).
pub(crate) const CLEAN: u8 = 7;

/// Outcome of one [`View::try_preserve`] attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preserve {
    /// Preserved, or not needed: the page may be un-protected (as far as this view goes).
    Done,
    /// The copy budget is full: keep the page protected until readers free some.
    NoBudget,
    /// Someone else is copying the page (a saver, another fault handler), or an event batch
    /// overlapped the copy: try again shortly.
    Busy,
}

/// Whether reading a page releases it (epochs) or keeps it (snapshots, for rollback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Consume,
    Retain,
}

/// The per-page states of a view, stored XOR `base` so a view that needs every page
/// (`base` = PENDING: a snapshot) starts from zeroed memory: O(1) to create however large
/// the region, and its untouched pages never cost memory.
///
/// A view of few pages of a large region (an epoch whose dirty set is under 1/16 of the
/// region) keeps only those pages' cells, sorted ([`Cells::Sparse`]): a dense array would be
/// mapped and page-faulted in at every cut wherever the dirty pages are spread (2,621 pages
/// over 16 GiB touched every page of a 4 MiB array, ~1 ms per cut, the part of a cut that
/// grew with the region's size).
struct States {
    cells: Cells,
    base: u8,
}

enum Cells {
    /// One cell per page of the region.
    Dense(crate::sys::ZeroedSlice<AtomicU8>),
    /// The needed pages (sorted) and their cells; every other page below `count` is
    /// NOT_NEEDED, a state no transition leaves, so it has no cell.
    Sparse {
        pages: Box<[u64]>,
        cells: Box<[AtomicU8]>,
        count: usize,
    },
}

/// One page's state cell (the `AtomicU8` API, translated through the base). `None`: a page a
/// sparse view does not need (NOT_NEEDED for ever).
#[derive(Clone, Copy)]
struct Cell<'a>(Option<&'a AtomicU8>, u8);

impl Cell<'_> {
    fn load(self, o: Ordering) -> u8 {
        self.0.map_or(NOT_NEEDED, |c| c.load(o) ^ self.1)
    }
    fn store(self, v: u8, o: Ordering) {
        // (Every store follows a load of a state other than NOT_NEEDED.)
        debug_assert!(self.0.is_some(), "a NOT_NEEDED page never changes state");
        if let Some(c) = self.0 {
            c.store(v ^ self.1, o)
        }
    }
    fn compare_exchange(self, cur: u8, new: u8, ok: Ordering, err: Ordering) -> Result<u8, u8> {
        match self.0 {
            Some(c) => c
                .compare_exchange(cur ^ self.1, new ^ self.1, ok, err)
                .map(|v| v ^ self.1)
                .map_err(|v| v ^ self.1),
            None => Err(NOT_NEEDED),
        }
    }
}

impl States {
    fn get(&self, page: u64) -> Option<Cell<'_>> {
        match &self.cells {
            Cells::Dense(cells) => Some(Cell(Some(cells.get(page as usize)?), self.base)),
            Cells::Sparse {
                pages,
                cells,
                count,
            } => {
                if page as usize >= *count {
                    return None;
                }
                let cell = pages.binary_search(&page).ok().map(|i| &cells[i]);
                Some(Cell(cell, self.base))
            }
        }
    }
    fn at(&self, page: u64) -> Cell<'_> {
        self.get(page)
            .unwrap_or_else(|| panic!("page {page} beyond the view's {} pages", self.len()))
    }
    fn len(&self) -> usize {
        match &self.cells {
            Cells::Dense(cells) => cells.len(),
            Cells::Sparse { count, .. } => *count,
        }
    }
    fn position(&self, state: u8) -> Option<usize> {
        let is = |c: &AtomicU8| c.load(Ordering::Acquire) ^ self.base == state;
        match &self.cells {
            Cells::Dense(cells) => cells.iter().position(is),
            Cells::Sparse { pages, cells, .. } => {
                debug_assert_ne!(state, NOT_NEEDED);
                cells.iter().position(is).map(|i| pages[i] as usize)
            }
        }
    }
}

/// A copy-before-write view of a region at one cut.
pub(crate) struct View {
    pub region: Arc<RegionInner>,
    pub shared: Arc<Shared>,
    state: States,
    copies: Mutex<HashMap<u64, Box<[u8]>>>,
    pub mode: Mode,
    /// Retain mode: pages that became PRESERVED since the last rollback (written after the
    /// snapshot or after their last rollback), in no order, possibly repeated. Invariant: a
    /// PRESERVED page of a retain view is in this list (rollback rewrites exactly these).
    rewritten: Mutex<Vec<u64>>,
    /// Set when any page becomes LOST (so rollback need not scan every state).
    any_lost: AtomicBool,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("mode", &self.mode)
            .field("pages", &self.state.len())
            .finish()
    }
}

impl View {
    pub(crate) fn new(
        region: Arc<RegionInner>,
        shared: Arc<Shared>,
        needed: Option<&DirtySet>,
        mode: Mode,
    ) -> Self {
        // A view of every page (`needed` None: a snapshot) needs no per-page initialisation.
        let count = region.page_count as usize;
        let state = match needed {
            Some(d) if d.len().saturating_mul(16) < count => {
                let pages: Box<[u64]> = d.iter().collect();
                let cells = pages
                    .iter()
                    .map(|_| AtomicU8::new(PENDING ^ NOT_NEEDED))
                    .collect();
                States {
                    cells: Cells::Sparse {
                        pages,
                        cells,
                        count,
                    },
                    base: NOT_NEEDED,
                }
            }
            _ => {
                let state = States {
                    cells: Cells::Dense(crate::sys::zeroed_atomics(count)),
                    base: if needed.is_none() {
                        PENDING
                    } else {
                        NOT_NEEDED
                    },
                };
                for p in needed.iter().flat_map(|d| d.iter()) {
                    state.at(p).store(PENDING, Ordering::Relaxed);
                }
                state
            }
        };
        Self {
            region,
            shared,
            state,
            copies: Mutex::new(HashMap::new()),
            mode,
            rewritten: Mutex::new(Vec::new()),
            any_lost: AtomicBool::new(false),
        }
    }

    fn copies(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Box<[u8]>>> {
        self.copies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Service thread: the page is about to be un-protected. Preserve its content if this
    /// view still needs it. Returns false when the budget is exhausted (the caller must keep
    /// the page protected and retry later). Waits (briefly) while a saver copies the page.
    ///
    /// Runs on the service thread only: the copy reads tracked memory, never writes it.
    pub(crate) fn preserve(&self, page: u64, verify: impl Fn(u64) -> bool) -> bool {
        let mut spins = 0u32;
        loop {
            match self.try_preserve(page, &verify) {
                Preserve::Done => return true,
                Preserve::NoBudget => return false,
                Preserve::Busy => {
                    spins += 1;
                    if spins < 64 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }

    /// One attempt at [`preserve`](Self::preserve), never waiting: the form the in-thread
    /// fault handler uses (it must not wait inside its in-flight section; on `Busy` it leaves
    /// it and retries).
    pub(crate) fn try_preserve(&self, page: u64, verify: &impl Fn(u64) -> bool) -> Preserve {
        let st = self.state.at(page);
        let ps = self.region.page_size;
        match st.load(Ordering::Acquire) {
            PENDING => {
                // Only epochs (consumed by a reader) are charged to the budget: a snapshot
                // keeps its copies until dropped, so back-pressure could never resolve for
                // it; its copies are bounded by the region's size instead (like fork COW).
                let charged = self.mode == Mode::Consume;
                if charged && !self.shared.budget.try_take(ps) {
                    return Preserve::NoBudget;
                }
                if st
                    .compare_exchange(PENDING, PRESERVING, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    if charged {
                        self.shared.budget.give(ps, &self.shared);
                    }
                    return Preserve::Busy;
                }
                let s1 = self.shared.read_seq.load(Ordering::SeqCst);
                let mut buf = self.shared.budget.alloc(ps);
                // Fails only for a page past the end of a truncated file: its content is gone.
                let copied = self.region.copy_live(page, &mut buf).is_ok();
                let s2 = self.shared.read_seq.load(Ordering::SeqCst);
                if s1 % 2 == 1 || s2 != s1 {
                    // The service thread read (or was processing) non-cooperative events
                    // during the copy: a madvise zap may have raced with it, and its REMOVE
                    // processing skips PRESERVING pages. Undo; the retry comes after the batch
                    // (the range is then suspect, so the copy gets verified). Only in-thread
                    // handlers see this: the service thread reads no events while it copies.
                    if charged {
                        self.shared.budget.give(ps, &self.shared);
                    }
                    self.shared.budget.recycle(buf);
                    st.store(PENDING, Ordering::Release);
                    return Preserve::Busy;
                }
                if !copied || !verify(page) {
                    if charged {
                        self.shared.budget.give(ps, &self.shared);
                    }
                    self.shared.budget.recycle(buf);
                    st.store(LOST, Ordering::Release);
                    self.any_lost.store(true, Ordering::Release);
                    return Preserve::Done;
                }
                self.copies().insert(page, buf);
                if self.mode == Mode::Retain {
                    self.rewritten().push(page);
                }
                st.store(PRESERVED, Ordering::Release);
                self.shared
                    .counters
                    .preserved
                    .fetch_add(1, Ordering::Relaxed);
                Preserve::Done
            }
            // Rolled back and re-protected: written again, so the next rollback rewrites it.
            CLEAN => {
                if st
                    .compare_exchange(CLEAN, PRESERVED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.rewritten().push(page);
                    Preserve::Done
                } else {
                    Preserve::Busy
                }
            }
            // The saver is reading the live page, or (in-thread mode) another faulting thread
            // is preserving it: un-protecting now would let this write land in the middle of
            // their copy. Both only read, for ~1 us.
            COPYING | PRESERVING => Preserve::Busy,
            _ => Preserve::Done,
        }
    }

    /// Service thread: the application discarded this page's content (REMOVE event).
    /// Content at the cut that was not preserved is gone (LOST); a CLEAN page (retain mode) is
    /// no longer equal to its copy, so the next rollback must rewrite it.
    pub(crate) fn mark_lost(&self, page: u64) {
        let st = self.state.at(page);
        loop {
            let s = st.load(Ordering::Acquire);
            let next = match s {
                PENDING | COPYING => LOST,
                CLEAN => PRESERVED,
                _ => return,
            };
            if st
                .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if next == LOST {
                    self.any_lost.store(true, Ordering::Release);
                    // The page needs no copy any more: a fault deferred for it may proceed.
                    self.shared.budget.freed(&self.shared);
                } else {
                    self.rewritten().push(page);
                }
                return;
            }
        }
    }

    fn rewritten(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.rewritten.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads page `page` as it was at the cut into `buf`.
    ///
    /// `buf` may be tracked memory (of this tracker or another): it is only written after
    /// every page state this call moved has been settled, so a fault on `buf` never waits
    /// for a page this call holds in COPYING.
    pub(crate) fn read(&self, page: u64, buf: &mut [u8]) -> Result<(), SnapshotError> {
        let pages = self.region.page_count;
        if page >= pages {
            return Err(SnapshotError::OutOfRange { page, pages });
        }
        if buf.len() != self.region.page_size {
            return Err(SnapshotError::BadBuffer {
                len: buf.len(),
                page_size: self.region.page_size,
            });
        }
        let st = self.state.at(page);
        loop {
            match st.load(Ordering::Acquire) {
                NOT_NEEDED => return Err(SnapshotError::NotInEpoch { page }),
                RELEASED => return Err(SnapshotError::AlreadyConsumed { page }),
                LOST => return Err(SnapshotError::Discarded { page }),
                PENDING => {
                    let mut bounce = self.shared.budget.alloc(self.region.page_size);
                    let r = self.read_live(page, &mut bounce);
                    if let Ok(true) = r {
                        buf.copy_from_slice(&bounce);
                    }
                    self.shared.budget.recycle(bounce);
                    match r {
                        Ok(true) => return Ok(()),
                        Ok(false) => continue,
                        Err(e) => return Err(e),
                    }
                }
                PRESERVED | CLEAN => {
                    if self.mode == Mode::Retain {
                        // Copied out under the lock, into `buf` after it: `buf` may be tracked
                        // memory, and no lock a fault handler may take is held while writing it.
                        let copy = self.copies().get(&page).map(|c| c.to_vec());
                        match copy {
                            Some(c) => {
                                buf.copy_from_slice(&c);
                                return Ok(());
                            }
                            None => continue,
                        }
                    }
                    let copy = self.copies().remove(&page);
                    match copy {
                        Some(c) => {
                            st.store(RELEASED, Ordering::Release);
                            buf.copy_from_slice(&c);
                            self.shared.budget.recycle(c);
                            self.shared.budget.give(self.region.page_size, &self.shared);
                            return Ok(());
                        }
                        None => continue,
                    }
                }
                // PRESERVING / COPYING by someone else: brief.
                _ => std::thread::yield_now(),
            }
        }
    }

    /// The PENDING case of [`read`](Self::read): copies the live (still write-protected) page
    /// into `out`, which is untracked memory. Ok(false): the state moved meanwhile, retry.
    fn read_live(&self, page: u64, out: &mut [u8]) -> Result<bool, SnapshotError> {
        let st = self.state.at(page);
        // Holding the gate, the region cannot be dropped (unregistered, then perhaps unmapped
        // by its owner) while we copy: `Region::drop` closes it first.
        let gate = self.region.read_gate();
        // Live pages are only unchanged while the tracker holds their faults.
        if let Some(why) = self.region.invalidation() {
            return Err(SnapshotError::Invalidated(why));
        }
        self.shared
            .available()
            .map_err(SnapshotError::Unavailable)?;
        if st
            .compare_exchange(PENDING, COPYING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Ok(false);
        }
        let s1 = self.shared.read_seq.load(Ordering::SeqCst);
        let copied = self.region.copy_live(page, out);
        drop(gate);
        if let Err(e) = copied {
            // Past the end of a truncated file: the content at the cut is gone for good.
            st.store(LOST, Ordering::Release);
            self.any_lost.store(true, Ordering::Release);
            return Err(e);
        }
        // If the service thread read events during the copy, a REMOVE (madvise) may have been
        // delivered and its zap may have raced with the copy: wait until that batch is
        // processed (it marks such pages LOST and suspect).
        let mut s2 = self.shared.read_seq.load(Ordering::SeqCst);
        if s2 != s1 || s1 % 2 == 1 {
            while s2 % 2 == 1 {
                std::thread::yield_now();
                s2 = self.shared.read_seq.load(Ordering::SeqCst);
            }
        }
        // A shutdown or poisoning during the copy unregisters the range (writers then proceed
        // unblocked), so the copy may hold later writes. The state is set before any range is
        // released: if the tracker still runs after the copy, the page stayed protected
        // throughout.
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Err(u) = self.shared.available() {
            st.store(PENDING, Ordering::Release);
            return Err(SnapshotError::Unavailable(u));
        }
        // A zap of a page in a range that ever got REMOVE can also come late: verify that the
        // page is still write-protected after the copy.
        let ok = !self.region.is_suspect(page) || self.shared.verify_protected(&self.region, page);
        let next = match (ok, self.mode) {
            (false, _) => LOST,
            (true, Mode::Consume) => RELEASED,
            (true, Mode::Retain) => PENDING,
        };
        if st
            .compare_exchange(COPYING, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
            || !ok
        {
            // Marked LOST by a REMOVE event while we copied.
            st.store(LOST, Ordering::Release);
            self.any_lost.store(true, Ordering::Release);
            return Err(SnapshotError::Discarded { page });
        }
        if next == RELEASED {
            // A fault deferred (copy budget full) on this page needs no copy any more.
            self.shared.budget.freed(&self.shared);
        }
        Ok(true)
    }

    /// Releases a page without reading it (consume mode).
    pub(crate) fn release(&self, page: u64) {
        let Some(st) = self.state.get(page) else {
            return;
        };
        loop {
            match st.load(Ordering::Acquire) {
                PENDING => {
                    if st
                        .compare_exchange(PENDING, RELEASED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        // A fault deferred on this page needs no copy any more.
                        self.shared.budget.freed(&self.shared);
                        return;
                    }
                }
                PRESERVED => {
                    let copy = self.copies().remove(&page);
                    if let Some(c) = copy {
                        self.shared.budget.recycle(c);
                        st.store(RELEASED, Ordering::Release);
                        self.shared.budget.give(self.region.page_size, &self.shared);
                    }
                    return;
                }
                COPYING | PRESERVING => std::thread::yield_now(),
                _ => return,
            }
        }
    }

    /// Pages whose content was preserved (written since the cut), ascending.
    pub(crate) fn preserved_pages(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.copies().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Rollback, step 1 (caller's thread, writers quiesced): finds the pages to rewrite and
    /// writes their preserved content back into the live region. Returns the pages rewritten
    /// (ascending), or the first page whose content at the snapshot is lost.
    ///
    /// The pages to rewrite are those written since the previous rollback (the `rewritten`
    /// list, fed by faults and REMOVE events), plus CLEAN pages that a late madvise zap
    /// un-protected (found with `PAGEMAP_SCAN` in the suspect runs). A PENDING page that is
    /// not write-protected any more was changed without a fault: its content is lost.
    pub(crate) fn write_back(&self) -> Result<Vec<u64>, SnapshotError> {
        // A madvise that returned before this call had its REMOVE event read, but the batch
        // holding it may not be processed yet (the page not yet LOST or suspect): wait until
        // the batch in progress, if any, is done.
        let s = self.shared.read_seq.load(Ordering::SeqCst);
        if s % 2 == 1 {
            while self.shared.read_seq.load(Ordering::SeqCst) == s {
                std::thread::yield_now();
            }
        }
        if self.any_lost.load(Ordering::Acquire) {
            if let Some(p) = self.state.position(LOST) {
                return Err(SnapshotError::Discarded { page: p as u64 });
            }
        }
        let mut pages = std::mem::take(&mut *self.rewritten());
        for p in self.unprotected_suspect_pages() {
            let st = self.state.at(p);
            match st.load(Ordering::Acquire) {
                PENDING => {
                    st.store(LOST, Ordering::Release);
                    self.any_lost.store(true, Ordering::Release);
                    self.rewritten().extend_from_slice(&pages);
                    return Err(SnapshotError::Discarded { page: p });
                }
                CLEAN
                    if st
                        .compare_exchange(CLEAN, PRESERVED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok() =>
                {
                    pages.push(p)
                }
                _ => {}
            }
        }
        pages.sort_unstable();
        pages.dedup();
        // The writes are tracked (they fault if protected): never made while holding the copy
        // map's lock, which a fault handler may take (in-thread mode).
        for &p in &pages {
            let copy = self.copies().get(&p).map(|c| c.to_vec());
            if let Some(c) = copy {
                self.region.write_page(p, &c);
            }
        }
        Ok(pages)
    }

    /// Pages of the region's suspect runs (ranges that got REMOVE) that are not
    /// write-protected now. All of them when that cannot be determined.
    fn unprotected_suspect_pages(&self) -> Vec<u64> {
        let runs = self.region.suspect_runs();
        if runs.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let r = &self.region;

        let mut scan_out = vec![crate::sys::EMPTY_PAGE_REGION; 256];
        for (first, count) in runs {
            let start = r.start + first as usize * r.page_size;
            let end = start + count as usize * r.page_size;
            let scanned = self.shared.pagemap.as_ref().map(|pm| {
                pm.unprotected((r.start, r.page_size), start, end, &mut scan_out, |pages| {
                    out.extend(pages)
                })
            });
            if !matches!(scanned, Some(Ok(_))) {
                out.extend(first..first + count);
            }
        }
        out
    }

    /// Queues `pages` for the next rollback again (re-arming them failed).
    pub(crate) fn requeue(&self, pages: &[u64]) {
        self.rewritten().extend_from_slice(pages);
    }

    /// Rollback, step 2 (service thread, faults held, `pages` just re-protected): pages whose
    /// live content equals their copy become CLEAN, so the next rollback skips them unless
    /// they are written again. A page that differs (a writer that was not quiesced) stays
    /// PRESERVED and is queued for the next rollback: never silently skipped.
    pub(crate) fn mark_clean(&self, pages: &[u64]) {
        let mut live = vec![0u8; self.region.page_size];
        for &p in pages {
            let st = self.state.at(p);
            if st.load(Ordering::Acquire) != PRESERVED {
                continue;
            }
            self.region.copy_page(p, &mut live);
            let equal = self.copies().get(&p).is_some_and(|c| **c == *live);
            if !equal
                || st
                    .compare_exchange(PRESERVED, CLEAN, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                self.rewritten().push(p);
            }
        }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        let copies = std::mem::take(&mut *self.copies());
        let n = copies.len();
        for (_, c) in copies {
            self.shared.budget.recycle(c);
        }
        let charged = if self.mode == Mode::Consume {
            n * self.region.page_size
        } else {
            0
        };
        // Also wakes deferred writers whose only reason to wait was this view's need.
        self.shared.budget.give(charged, &self.shared);
    }
}

/// The reference an [`Epoch`](crate::Epoch) or [`Snapshot`] holds on its view. In in-thread
/// mode the `SIGBUS` handler's list also holds the view; dropping the handle asks the service
/// thread to let go of it too (so its copies and budget are freed now, not at the next cut).
#[derive(Debug)]
pub(crate) struct ViewHandle(pub Arc<View>);

impl std::ops::Deref for ViewHandle {
    type Target = View;
    fn deref(&self) -> &View {
        &self.0
    }
}

impl Drop for ViewHandle {
    fn drop(&mut self) {
        if self.0.shared.config.in_thread {
            self.0.shared.kick();
        }
    }
}
