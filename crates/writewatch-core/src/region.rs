//! Tracked regions, epochs, and the `/proc/self/smaps` classifier used by `adopt`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::bitmap::AtomicBitmap;
use crate::dirty::DirtySet;
use crate::error::{CutAndCopyError, CutError, Invalidation, RegionError};
use crate::snapshot::{Snapshot, SnapshotError};
use crate::stats::{RegionCounters, RegionStats};
use crate::sys;
use crate::tracker::{Command, Shared};

/// The kind of memory behind a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum RegionKind {
    /// Private anonymous memory (write-protect needs kernel >= 5.7).
    Anonymous,
    /// Shared memory: memfd, `MAP_SHARED|MAP_ANONYMOUS`, SysV shm, tmpfs (kernel >= 5.19).
    Shmem,
    /// hugetlbfs memory; dirty granularity is the huge page size (kernel >= 5.19).
    Hugetlb,
}

impl RegionKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            RegionKind::Anonymous => "private anonymous",
            RegionKind::Shmem => "shmem",
            RegionKind::Hugetlb => "hugetlbfs",
        }
    }
}

const LIVE: u8 = 0;
const UNMAPPED: u8 = 1;
const REMAPPED: u8 = 2;
const DROPPED: u8 = 3;

/// State shared by a [`Region`], the service thread and any [`Epoch`] that still reads it.
#[derive(Debug)]
pub(crate) struct RegionInner {
    pub id: u64,
    pub start: usize,
    pub len: usize,
    pub page_size: usize,
    pub page_count: u64,
    pub kind: RegionKind,
    /// Dirty bits of the current (open) epoch. Invariant (sync backend): a page whose bit is
    /// clear is write-protected, so its next write faults before it completes.
    pub dirty: AtomicBitmap,
    /// Number of the current (open) epoch.
    pub epoch: AtomicU64,
    status: AtomicU8,
    /// Readers copying live memory (PENDING pages of views) hold it shared; dropping the
    /// [`Region`] takes it exclusively to mark the region DROPPED before unregistering it.
    /// So a live copy never runs after the drop, when the owner may unmap adopted memory.
    gate: RwLock<()>,
    /// Page runs the application `madvise`d away. On anonymous memory the kernel zaps them
    /// (dropping write protection) *after* the REMOVE event is read, possibly after a later
    /// cut re-protected them; cuts and snapshot copies therefore re-check these runs with
    /// `PAGEMAP_SCAN`. Written by the service thread, read by cuts and snapshot readers.
    suspect: Mutex<Vec<(u64, u64)>>,
    has_suspect: AtomicBool,
    pub counters: RegionCounters,
    /// The memory (unmapped when the last reference goes, if owned). By then the service
    /// thread has unregistered the range (Region::drop waits for it), so the munmap raises no
    /// UNMAP event and never waits on the service thread.
    pub mapping: sys::Mapping,
}

impl RegionInner {
    pub(crate) fn new(id: u64, mapping: sys::Mapping, page_size: usize, kind: RegionKind) -> Self {
        let (start, len) = (mapping.start(), mapping.len());
        let page_count = (len / page_size) as u64;
        Self {
            id,
            start,
            len,
            page_size,
            page_count,
            kind,
            dirty: AtomicBitmap::new(page_count as usize),
            epoch: AtomicU64::new(0),
            status: AtomicU8::new(LIVE),
            gate: RwLock::new(()),
            suspect: Mutex::new(Vec::new()),
            has_suspect: AtomicBool::new(false),
            counters: RegionCounters::default(),
            mapping,
        }
    }

    pub(crate) fn end(&self) -> usize {
        self.start + self.len
    }

    pub(crate) fn invalidation(&self) -> Option<Invalidation> {
        match self.status.load(Ordering::Acquire) {
            LIVE => None,
            UNMAPPED => Some(Invalidation::Unmapped),
            REMAPPED => Some(Invalidation::Remapped),
            _ => Some(Invalidation::Dropped),
        }
    }

    /// Held while copying live memory (see `gate`).
    pub(crate) fn read_gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the region dropped, after every live copy in progress has finished.
    pub(crate) fn close(&self) {
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .status
            .compare_exchange(LIVE, DROPPED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Marks the region dead because the application unmapped or moved it.
    pub(crate) fn invalidate(&self, why: Invalidation) {
        self.mapping.leak();
        let v = match why {
            Invalidation::Unmapped => UNMAPPED,
            Invalidation::Remapped => REMAPPED,
            Invalidation::Dropped => DROPPED,
        };
        let _ = self
            .status
            .compare_exchange(LIVE, v, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn page_of(&self, addr: usize) -> u64 {
        ((addr - self.start) / self.page_size) as u64
    }

    pub(crate) fn add_suspect(&self, first: u64, count: u64) {
        let mut s = self.suspect.lock().unwrap_or_else(|e| e.into_inner());
        crate::dirty::add_run(&mut s, first, count);
        self.has_suspect.store(true, Ordering::Release);
    }

    pub(crate) fn suspect_runs(&self) -> Vec<(u64, u64)> {
        if !self.has_suspect.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.suspect
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the page lies in a range that ever received a REMOVE event.
    pub(crate) fn is_suspect(&self, page: u64) -> bool {
        if !self.has_suspect.load(Ordering::Acquire) {
            return false;
        }
        let s = self.suspect.lock().unwrap_or_else(|e| e.into_inner());
        let i = s.partition_point(|&(a, _)| a <= page);
        i > 0 && page < s[i - 1].0 + s[i - 1].1
    }

    /// Copies page `page` into `buf` with atomic 8-byte loads (sound even if the page were
    /// written concurrently; callers copy only pages the protocol keeps write-protected).
    pub(crate) fn copy_page(&self, page: u64, buf: &mut [u8]) {
        let wpp = self.page_size / 8;
        let words = &self.mapping.atomic_words()[page as usize * wpp..(page as usize + 1) * wpp];
        for (w, out) in words.iter().zip(buf.chunks_exact_mut(8)) {
            out.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
    }

    /// Writes `data` over page `page` with atomic 8-byte stores (rollback). The stores are
    /// ordinary tracked writes: they fault if the page is protected.
    pub(crate) fn write_page(&self, page: u64, data: &[u8]) {
        let wpp = self.page_size / 8;
        let words = &self.mapping.atomic_words()[page as usize * wpp..(page as usize + 1) * wpp];
        for (w, v) in words.iter().zip(data.chunks_exact(8)) {
            let v = u64::from_ne_bytes(v.try_into().unwrap_or([0; 8]));
            if w.load(Ordering::Relaxed) != v {
                w.store(v, Ordering::Relaxed);
            }
        }
    }
}

/// A tracked memory range.
///
/// Created by [`Tracker::map_anonymous`](crate::Tracker::map_anonymous),
/// [`Tracker::map_shared`](crate::Tracker::map_shared) or [`Tracker::adopt`](crate::Tracker::adopt).
/// Dropping it stops tracking (unregisters the range) and, for an owned region, unmaps the
/// memory once no [`Epoch`] reads it any more.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::atomic::Ordering;
/// let tracker = writewatch_core::Tracker::builder().build()?;
/// let region = tracker.map_anonymous(16 * 4096)?;
/// let words = region.as_atomic_u64();
/// words[512 * 3].store(7, Ordering::Relaxed); // page 3
/// let epoch = region.cut()?;
/// assert_eq!(epoch.dirty().iter().collect::<Vec<_>>(), vec![3]);
/// # Ok(()) }
/// ```
pub struct Region {
    pub(crate) inner: Arc<RegionInner>,
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("start", &format_args!("{:#x}", self.inner.start))
            .field("len", &self.inner.len)
            .field("page_size", &self.inner.page_size)
            .field("kind", &self.inner.kind)
            .field("epoch", &self.inner.epoch.load(Ordering::Relaxed))
            .finish()
    }
}

impl Region {
    /// Start address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner.start as *mut u8
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// Always false: regions are at least one page long.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Page size of the region: the dirty-tracking granularity (4 KiB, or the huge page size
    /// of a hugetlbfs region).
    pub fn page_size(&self) -> usize {
        self.inner.page_size
    }

    /// Number of pages.
    pub fn page_count(&self) -> u64 {
        self.inner.page_count
    }

    /// The kind of memory.
    pub fn kind(&self) -> RegionKind {
        self.inner.kind
    }

    /// Whether the tracker mapped this memory (and will unmap it).
    pub fn is_owned(&self) -> bool {
        self.inner.mapping.owned()
    }

    /// Number of the current (open) epoch: the number the next [`cut`](Self::cut) returns.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// Why the region is no longer tracked, if it is not.
    pub fn invalidation(&self) -> Option<Invalidation> {
        self.inner.invalidation()
    }

    /// The region as 64-bit atomics: a safe way to read and write tracked memory from any
    /// thread (writes through it are tracked like any other write).
    pub fn as_atomic_u64(&self) -> &[std::sync::atomic::AtomicU64] {
        self.inner.mapping.atomic_words()
    }

    /// The region's bytes.
    ///
    /// # Safety
    /// No thread may write the region while the slice is alive (writes from other threads
    /// through raw pointers or [`as_atomic_u64`](Self::as_atomic_u64) would be data races).
    #[allow(unsafe_code)] // a public unsafe contract, forwarded to `sys::Mapping::bytes`
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the caller's contract is `Mapping::bytes`'s.
        unsafe { self.inner.mapping.bytes() }
    }

    /// The region's bytes, mutably. Writes through the slice are tracked.
    ///
    /// # Safety
    /// No other reference to the region's memory (another slice, atomics, raw pointers used by
    /// other threads) may be used while the slice is alive.
    #[allow(clippy::mut_from_ref)]
    #[allow(unsafe_code)] // a public unsafe contract, forwarded to `sys::Mapping::bytes_mut`
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: the caller's contract is `Mapping::bytes_mut`'s.
        unsafe { self.inner.mapping.bytes_mut() }
    }

    fn check(&self) -> Result<(), RegionError> {
        if let Some(reason) = self.inner.invalidation() {
            return Err(RegionError::Invalidated {
                start: self.inner.start,
                reason,
            });
        }
        self.shared.available()?;
        Ok(())
    }

    /// The pages written so far in the current epoch (a peek: the epoch stays open).
    ///
    /// A write whose fault has been serviced is included; a write still waiting for the
    /// service thread is not yet.
    pub fn dirty_pages(&self) -> Result<DirtySet, RegionError> {
        self.check()?;
        let mut words = self.inner.dirty.snapshot();
        if self.shared.backend == crate::Backend::AsyncUffd {
            // The kernel resolved the writes: read (without re-arming) which pages are written.
            let inner = &self.inner;
            let mut out = vec![sys::EMPTY_PAGE_REGION; 1024];
            let fd = self
                .shared
                .pagemap
                .as_ref()
                .map(std::os::fd::AsRawFd::as_raw_fd);
            let scanned = fd.map(|fd| {
                crate::scan::unprotected(fd, inner.start, inner.end(), &mut out, |a, b| {
                    for p in inner.page_of(a)..=inner.page_of(b.max(a + 1) - 1) {
                        words[p as usize / 64] |= 1 << (p % 64);
                    }
                })
            });
            if !matches!(scanned, Some(Ok(_))) {
                // Cannot tell: report everything (over-report, never under-report).
                words.iter_mut().for_each(|w| *w = u64::MAX);
            }
        }
        Ok(DirtySet::from_words(
            self.inner.page_size,
            self.inner.page_count,
            words,
        ))
    }

    /// Number of pages written so far in the current epoch.
    pub fn dirty_count(&self) -> Result<usize, RegionError> {
        if self.shared.backend == crate::Backend::AsyncUffd {
            return self.dirty_pages().map(|d| d.len());
        }
        self.check()?;
        Ok(self.inner.dirty.count_ones())
    }

    /// Closes the current epoch: returns its dirty set and re-arms tracking for the next.
    ///
    /// Runs on the fault-service thread, which reads no fault while it re-protects, so a write
    /// that faults during the cut is held until the cut is complete and lands in the next
    /// epoch. The cost is one `UFFDIO_WRITEPROTECT` per coalesced dirty run (runs separated by
    /// a small gap are merged), not per region page. A write racing with the cut is reported
    /// in this epoch or the next, never in neither.
    pub fn cut(&self) -> Result<Epoch, CutError> {
        if let Some(reason) = self.inner.invalidation() {
            return Err(CutError::Invalidated {
                start: self.inner.start,
                reason,
            });
        }
        let id = self.inner.id;
        self.shared.call(|reply| Command::Cut { id, reply })?
    }

    /// Cuts, then hands every dirty page of the closed epoch to `sink` in ascending order, as
    /// it was at the cut. If the sink (or a read) fails, the epoch's pages are requeued into
    /// the open epoch ([`Epoch::requeue`]) before the error is returned: none is lost.
    ///
    /// On the sync backend the pages are read through copy-before-write, so writers may keep
    /// running. On the async and mprotect backends nothing preserves a page before it is
    /// written again: **the caller must quiesce the region's writers** from before the cut
    /// until this returns, and then each page is copied straight from the region (one copy
    /// per page).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::atomic::Ordering::SeqCst;
    /// use writewatch_core::{Backend, Tracker};
    /// let t = Tracker::builder().backend(Backend::Mprotect).build()?;
    /// let r = t.map_anonymous(4 * 4096)?;
    /// r.as_atomic_u64()[512].store(9, SeqCst);
    /// let mut seen = Vec::new();
    /// let epoch = r.cut_and_copy(|page, bytes| { seen.push((page, bytes[0])); Ok::<(), std::io::Error>(()) })?;
    /// assert_eq!(seen, vec![(1, 9)]);
    /// assert_eq!(epoch.dirty().len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn cut_and_copy<E>(
        &self,
        mut sink: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<Epoch, CutAndCopyError<E>> {
        let epoch = self.cut().map_err(CutAndCopyError::Cut)?;
        let mut buf = vec![0u8; self.inner.page_size];
        for page in epoch.dirty().iter() {
            let r = if epoch.view.is_some() {
                epoch
                    .read_page(page, &mut buf)
                    .map_err(CutAndCopyError::Read)
            } else {
                self.inner.copy_page(page, &mut buf);
                Ok(())
            };
            if let Err(e) = r.and_then(|()| sink(page, &buf).map_err(CutAndCopyError::Sink)) {
                // Nothing is lost: the next cut reports the epoch's pages again.
                epoch.requeue();
                return Err(e);
            }
        }
        Ok(epoch)
    }

    /// Takes a whole-region point-in-time snapshot without pausing writers and without
    /// closing the current epoch. From now on, the first write to any page copies the page
    /// first; see [`Snapshot`].
    pub fn snapshot(&self) -> Result<Snapshot, CutError> {
        if let Some(reason) = self.inner.invalidation() {
            return Err(CutError::Invalidated {
                start: self.inner.start,
                reason,
            });
        }
        let id = self.inner.id;
        self.shared.call(|reply| Command::Snapshot { id, reply })?
    }

    /// Restores the region to `snapshot`'s content by rewriting only the pages written since
    /// the previous rollback (or since the snapshot, the first time); returns how many.
    ///
    /// The rewritten pages are write-protected again afterwards, so each rollback costs the
    /// pages the application touched since the last one, however long the snapshot lives
    /// (the fuzzing reset: one snapshot, then scribble / rollback in a loop). The caller must
    /// quiesce the region's writers for the duration (concurrent writes would be overwritten
    /// or interleave). The snapshot stays valid: roll back as often as needed.
    ///
    /// Errors: [`SnapshotError::Discarded`] if the application `madvise`d away a page's
    /// content at the snapshot before it was preserved. Nothing is rewritten then, and the
    /// snapshot can never be rolled back completely again (every later call fails the same
    /// way): take a new snapshot. (Even a page that was never touched counts: its zeros are
    /// not kept, and a zap cannot be told from a page that never had content.)
    ///
    /// The rewrites are tracked writes: while epochs of this tracker are alive and unread and
    /// the copy budget is full, they wait for readers like any writer (so do not roll back
    /// on the thread that should drain those epochs).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::atomic::Ordering::SeqCst;
    /// let tracker = writewatch_core::Tracker::builder().build()?;
    /// let region = tracker.map_anonymous(64 * 4096)?;
    /// let w = region.as_atomic_u64();
    /// let snap = region.snapshot()?;
    /// for case in 1..=3u64 {
    ///     w[(case as usize) * 512].store(case, SeqCst);   // one page per case
    ///     assert_eq!(region.rollback(&snap)?, 1);          // costs that page only
    ///     assert_eq!(w[(case as usize) * 512].load(SeqCst), 0);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn rollback(&self, snapshot: &Snapshot) -> Result<u64, SnapshotError> {
        if !Arc::ptr_eq(&snapshot.view.region, &self.inner) {
            return Err(SnapshotError::WrongRegion);
        }
        if let Some(why) = self.inner.invalidation() {
            return Err(SnapshotError::Invalidated(why));
        }
        self.shared
            .available()
            .map_err(SnapshotError::Unavailable)?;
        let pages = snapshot.view.write_back()?;
        let n = pages.len() as u64;
        if n == 0 {
            return Ok(0);
        }
        // Re-arm what was rewritten, so the next rollback only sees later writes. If that
        // fails, the pages stay queued (rewritten again next time: more work, never less).
        let id = self.inner.id;
        let view = Arc::clone(&snapshot.view.0);
        match self.shared.call(|reply| Command::Rearm {
            id,
            view,
            pages,
            reply,
        }) {
            Ok(Ok(())) => Ok(n),
            Ok(Err(e)) => {
                tracing::debug!(%e, "re-arming rolled-back pages failed; they stay queued");
                Ok(n)
            }
            Err(u) => Err(SnapshotError::Unavailable(u)),
        }
    }

    /// Prepares the whole region to be overwritten at memory speed (a bulk restore): every
    /// page is marked dirty in the open epoch (its content is about to change), content that
    /// live epochs and snapshots still need is preserved first, and write protection is
    /// lifted from the whole range until the next cut, which re-arms it.
    ///
    /// Until that cut, writes do not fault (and are not individually recorded: every page is
    /// already dirty). Cost: one protection change for the whole range, plus one copy per
    /// page that a live epoch or snapshot still needs.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tracker = writewatch_core::Tracker::builder().build()?;
    /// let region = tracker.map_anonymous(16 * 4096)?;
    /// region.prepare_overwrite()?;
    /// // SAFETY (of the example): no other reference to the region's memory is in use.
    /// unsafe { region.as_mut_slice() }.fill(7);          // memcpy speed, no faults
    /// assert_eq!(region.cut()?.dirty().len(), 16);       // every page reported, re-armed
    /// assert!(region.cut()?.dirty().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn prepare_overwrite(&self) -> Result<(), CutError> {
        if let Some(reason) = self.inner.invalidation() {
            return Err(CutError::Invalidated {
                start: self.inner.start,
                reason,
            });
        }
        let id = self.inner.id;
        self.shared
            .call(|reply| Command::PrepareOverwrite { id, reply })?
    }

    /// Counters of this region.
    pub fn stats(&self) -> RegionStats {
        let c = &self.inner.counters;
        RegionStats {
            faults: c.faults.load(Ordering::Relaxed),
            remove_events: c.remove_events.load(Ordering::Relaxed),
            last_tid: c.last_tid.load(Ordering::Relaxed) as i32,
            epoch: self.epoch(),
            history: c
                .history
                .lock()
                .map(|h| h.iter().copied().collect())
                .unwrap_or_default(),
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let id = self.inner.id;
        // Wait for the service thread to unregister the range before the memory can be
        // unmapped (see RegionInner::drop). A shut-down tracker already unregistered it.
        if let Ok(Err(e)) = self.shared.call(|reply| Command::Unregister { id, reply }) {
            tracing::warn!(start = self.inner.start, %e, "unregistering a region failed");
        }
    }
}

/// Cost figures of one cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CutStats {
    /// `UFFDIO_WRITEPROTECT` calls made to re-arm the dirty pages.
    pub protect_ioctls: u64,
    /// `PAGEMAP_SCAN` calls made (only for ranges the application `madvise`d away).
    pub scan_ioctls: u64,
    /// Time the service thread spent on the cut (faults arriving meanwhile were held).
    pub duration: Duration,
    /// Dirty pages of the epoch that eager re-protection had already re-armed before the cut
    /// (the cut skipped them).
    pub pre_protected: u64,
}

/// A closed epoch: its number, the pages written during it, and their content as it was at
/// the cut.
///
/// While the epoch is alive, the tracker preserves the content its dirty pages had at the cut:
/// the first write to such a page after the cut copies it first (copy-before-write). Read the
/// pages with [`read_page`](Self::read_page) or the streaming [`reader`](Self::reader); each
/// page is released as it is read, and dropping the epoch releases everything. If you only
/// need the dirty set, take it with [`into_dirty`](Self::into_dirty) (or drop the epoch) so no
/// copies are made.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::atomic::Ordering::SeqCst;
/// let tracker = writewatch_core::Tracker::builder().build()?;
/// let region = tracker.map_anonymous(8 * 4096)?;
/// let w = region.as_atomic_u64();
/// w[0].store(1, SeqCst);
/// let epoch = region.cut()?;
/// w[0].store(2, SeqCst); // after the cut: page 0 is copied first
/// let mut reader = epoch.reader();
/// let (page, bytes) = reader.next_page().unwrap()?;
/// assert_eq!((page, bytes[0]), (0, 1));
/// assert!(reader.next_page().is_none());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Epoch {
    pub(crate) number: u64,
    pub(crate) dirty: DirtySet,
    pub(crate) stats: CutStats,
    pub(crate) view: Option<crate::snapshot::ViewHandle>,
    pub(crate) backend: crate::Backend,
    pub(crate) region: Arc<RegionInner>,
}

impl Epoch {
    /// The epoch's number (0 for the epoch that began at registration).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Pages written during the epoch.
    pub fn dirty(&self) -> &DirtySet {
        &self.dirty
    }

    /// Takes the dirty set and releases the epoch's content (no more copies are made for it).
    pub fn into_dirty(self) -> DirtySet {
        self.dirty
    }

    /// What the cut cost.
    pub fn stats(&self) -> CutStats {
        self.stats
    }

    /// Puts this epoch's dirty pages back into the region's *open* epoch, so the next cut
    /// reports them again. Call it when saving the epoch failed (a full disk, a failing sink):
    /// the pages are then not lost from the incremental chain, only reported one epoch later
    /// (an over-report). [`Region::cut_and_copy`] and the facade's `save_epoch` do it
    /// themselves on failure.
    pub fn requeue(&self) {
        if self.region.invalidation().is_none() {
            self.region.dirty.restore(self.dirty.words());
        }
    }

    /// Reads dirty page `page` as it was at the cut into `buf` (one page long) and releases
    /// it: a page can be read once.
    pub fn read_page(&self, page: u64, buf: &mut [u8]) -> Result<(), SnapshotError> {
        match &self.view {
            Some(v) => v.read(page, buf),
            None if !self.backend.copies_before_write() => Err(SnapshotError::Unsupported {
                backend: self.backend.name(),
            }),
            None if page >= self.dirty.page_count() => Err(SnapshotError::OutOfRange {
                page,
                pages: self.dirty.page_count(),
            }),
            None => Err(SnapshotError::NotInEpoch { page }),
        }
    }

    /// Releases a dirty page without reading it.
    pub fn release_page(&self, page: u64) {
        if let Some(v) = &self.view {
            v.release(page);
        }
    }

    /// A streaming reader over the dirty pages, ascending, each as it was at the cut.
    pub fn reader(&self) -> EpochReader<'_> {
        EpochReader {
            epoch: self,
            next: 0,
            buf: vec![0; self.dirty.page_size()],
        }
    }
}

/// Streams an epoch's dirty pages in ascending order; see [`Epoch::reader`].
#[derive(Debug)]
pub struct EpochReader<'a> {
    epoch: &'a Epoch,
    next: u64,
    buf: Vec<u8>,
}

impl EpochReader<'_> {
    /// The next page index and its content at the cut (valid until the next call), or `None`
    /// at the end. An error for one page does not end the stream.
    #[allow(clippy::should_implement_trait)]
    pub fn next_page(&mut self) -> Option<Result<(u64, &[u8]), SnapshotError>> {
        let dirty = &self.epoch.dirty;
        let p = dirty.iter_from(self.next)?;
        self.next = p + 1;
        Some(
            self.epoch
                .read_page(p, &mut self.buf)
                .map(|()| (p, &self.buf[..])),
        )
    }
}

/// One mapping line of `/proc/self/smaps`, with the fields `adopt` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vma {
    pub start: usize,
    pub end: usize,
    pub shared: bool,
    pub readable: bool,
    pub writable: bool,
    /// The permission field as printed (`rw-p`), for error messages.
    pub perms: String,
    /// Registered for userfaultfd write-protect (`uw` in `VmFlags`) by some userfaultfd.
    pub uffd_wp: bool,
    pub path: String,
    pub kernel_page_size: usize,
    pub hugetlb: bool,
}

/// Parses `/proc/self/smaps` text.
pub(crate) fn parse_smaps(text: &str) -> Vec<Vma> {
    let mut out: Vec<Vma> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                let perms = fields.next().unwrap_or("");
                let _offset = fields.next();
                let _dev = fields.next();
                let _inode = fields.next();
                let path = fields.collect::<Vec<_>>().join(" ");
                out.push(Vma {
                    start,
                    end,
                    readable: perms.as_bytes().first() == Some(&b'r'),
                    writable: perms.as_bytes().get(1) == Some(&b'w'),
                    shared: perms.as_bytes().get(3) == Some(&b's'),
                    perms: perms.to_string(),
                    uffd_wp: false,
                    path,
                    kernel_page_size: 0,
                    hugetlb: false,
                });
                continue;
            }
        }
        let Some(v) = out.last_mut() else { continue };
        match first {
            "KernelPageSize:" => {
                v.kernel_page_size = fields
                    .next()
                    .and_then(|s| s.parse::<usize>().ok())
                    .unwrap_or(0)
                    * 1024;
            }
            "VmFlags:" => {
                for f in fields {
                    match f {
                        "ht" => v.hugetlb = true,
                        "uw" => v.uffd_wp = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Why a VMA cannot be adopted, or its kind.
pub(crate) fn classify(v: &Vma) -> Result<RegionKind, String> {
    if v.hugetlb {
        return Ok(RegionKind::Hugetlb);
    }
    let p = v.path.as_str();
    if p.is_empty() || p.starts_with("[anon:") {
        return Ok(if v.shared {
            RegionKind::Shmem
        } else {
            RegionKind::Anonymous
        });
    }
    if p.starts_with("[anon_shmem:")
        || p.starts_with("/memfd:")
        || p.starts_with("/dev/zero")
        || p.starts_with("/SYSV")
        || p.starts_with("/dev/shm/")
    {
        return Ok(RegionKind::Shmem);
    }
    if p.starts_with('[') {
        return Err(format!("special mapping {p}"));
    }
    Err(format!("file-backed mapping of {p}"))
}

/// Checks that `[start, end)` is fully mapped by adoptable VMAs of one kind and page size:
/// readable and writable, and not the process heap or the main stack (the allocator and the
/// tracker's own threads write there).
pub(crate) fn check_adoptable(
    vmas: &[Vma],
    start: usize,
    end: usize,
) -> Result<(RegionKind, usize), crate::MapError> {
    use crate::MapError;
    let mut cursor = start;
    let mut found: Option<(RegionKind, usize)> = None;
    for v in vmas.iter().filter(|v| v.end > start && v.start < end) {
        if v.start > cursor {
            return Err(MapError::NotMapped { addr: cursor });
        }
        let p = v.path.as_str();
        if p == "[heap]" || p.starts_with("[stack") {
            return Err(MapError::OwnMemory {
                start,
                end,
                what: if p == "[heap]" {
                    "the process heap ([heap]), where the allocator the tracker uses keeps its state"
                } else {
                    "the main thread's stack ([stack])"
                },
                addr: v.start.max(start),
            });
        }
        let kind = classify(v).map_err(|what| MapError::UnsupportedMemory {
            addr: v.start,
            what,
        })?;
        if !(v.readable && v.writable) {
            return Err(MapError::NotReadWrite {
                addr: v.start,
                perms: v.perms.clone(),
            });
        }
        let ps = if v.kernel_page_size == 0 {
            sys::base_page_size()
        } else {
            v.kernel_page_size
        };
        match found {
            None => found = Some((kind, ps)),
            Some((_, ps0)) if ps0 != ps => return Err(MapError::MixedPageSizes { a: ps0, b: ps }),
            Some((k0, _)) if k0 != kind => {
                return Err(MapError::UnsupportedMemory {
                    addr: v.start,
                    what: format!(
                        "mixes {} and {} memory; adopt each part separately",
                        k0.name(),
                        kind.name()
                    ),
                })
            }
            _ => {}
        }
        cursor = v.end;
        if cursor >= end {
            break;
        }
    }
    if cursor < end {
        return Err(MapError::NotMapped { addr: cursor });
    }
    found.ok_or(MapError::NotMapped { addr: start })
}

/// The first VMA of `[start, end)` registered with a userfaultfd for write-protect (`uw`),
/// as `(vma start, vma end)`.
pub(crate) fn uffd_wp_overlap(vmas: &[Vma], start: usize, end: usize) -> Option<(usize, usize)> {
    vmas.iter()
        .find(|v| v.end > start && v.start < end && v.uffd_wp)
        .map(|v| (v.start, v.end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0000004000 rw-p 00000000 00:00 0 
Size:                 16 kB
KernelPageSize:        4 kB
VmFlags: rd wr mr mw me ac sd 
7f0000004000-7f0000008000 rw-s 00000000 00:01 1234                       /memfd:writewatch (deleted)
KernelPageSize:        4 kB
VmFlags: rd wr sh mr mw me ms sd 
7f0000008000-7f0000408000 rw-s 00000000 00:0f 5678                       /anon_hugepage (deleted)
KernelPageSize:     2048 kB
VmFlags: rd wr sh mr mw me ms de ht sd 
7f0000600000-7f0000601000 r--p 00000000 08:01 42                         /usr/lib/libc.so.6
KernelPageSize:        4 kB
VmFlags: rd mr mw me sd 
";

    #[test]
    fn parses_and_classifies() {
        let v = parse_smaps(SMAPS);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].start, 0x7f00_0000_0000);
        assert_eq!(classify(&v[0]), Ok(RegionKind::Anonymous));
        assert_eq!(classify(&v[1]), Ok(RegionKind::Shmem));
        assert_eq!(v[2].kernel_page_size, 2 << 20);
        assert_eq!(classify(&v[2]), Ok(RegionKind::Hugetlb));
        assert!(classify(&v[3]).is_err());
    }

    #[test]
    fn refuses_heap_stack_and_non_read_write() {
        let text = "\
5600000000-5600004000 rw-p 00000000 00:00 0                              [heap]
7ff000000000-7ff000004000 rw-p 00000000 00:00 0                          [stack]
7f1000000000-7f1000004000 r--p 00000000 00:00 0 
7f2000000000-7f2000004000 rw-p 00000000 00:00 0 
VmFlags: rd wr mr mw me ac sd uw 
";
        let v = parse_smaps(text);
        assert!(!v[2].writable && v[2].readable && v[2].perms == "r--p");
        assert!(v[3].uffd_wp && !v[0].uffd_wp);
        assert!(matches!(
            check_adoptable(&v, 0x56_0000_0000, 0x56_0000_1000),
            Err(crate::MapError::OwnMemory { .. })
        ));
        assert!(matches!(
            check_adoptable(&v, 0x7ff0_0000_1000, 0x7ff0_0000_2000),
            Err(crate::MapError::OwnMemory { .. })
        ));
        assert!(matches!(
            check_adoptable(&v, 0x7f10_0000_0000, 0x7f10_0000_1000),
            Err(crate::MapError::NotReadWrite { .. })
        ));
        assert_eq!(
            uffd_wp_overlap(&v, 0x7f20_0000_1000, 0x7f20_0000_2000),
            Some((0x7f20_0000_0000, 0x7f20_0000_4000))
        );
    }

    #[test]
    fn adoptable_ranges() {
        let v = parse_smaps(SMAPS);
        assert_eq!(
            check_adoptable(&v, 0x7f00_0000_0000, 0x7f00_0000_4000).unwrap(),
            (RegionKind::Anonymous, 4096)
        );
        assert!(matches!(
            check_adoptable(&v, 0x7f00_0000_0000, 0x7f00_0000_8000),
            Err(crate::MapError::UnsupportedMemory { .. })
        ));
        assert!(matches!(
            check_adoptable(&v, 0x7f00_0040_8000, 0x7f00_0040_9000),
            Err(crate::MapError::NotMapped {
                addr: 0x7f00_0040_8000
            })
        ));
        assert!(matches!(
            check_adoptable(&v, 0x7f00_0000_2000, 0x7f00_0000_5000),
            Err(crate::MapError::UnsupportedMemory { .. })
        ));
        assert!(matches!(
            check_adoptable(&v, 0x7f00_0060_0000, 0x7f00_0060_1000),
            Err(crate::MapError::UnsupportedMemory { .. })
        ));
        assert_eq!(
            check_adoptable(&v, 0x7f00_0000_8000, 0x7f00_0040_8000).unwrap(),
            (RegionKind::Hugetlb, 2 << 20)
        );
    }
}
