//! [`Region`]: the handle of a tracked range, and the operations it asks of the service thread
//! (cut, snapshot, rollback, prepare_overwrite).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backend::Backend;
use crate::command::{Command, Control};
use crate::dirty::DirtySet;
use crate::epoch::Epoch;
use crate::error::{
    CutAndCopyError, CutError, ForkError, Invalidation, RegionError, SnapshotError,
};
use crate::pagemap::set_dirty_bits;
use crate::range::{RegionInner, RegionKind};
use crate::snapshot::Snapshot;
use crate::stats::RegionStats;
use crate::sys;

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
    pub(crate) shared: Arc<Control>,
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

    /// [`CutError::Invalidated`] if the application unmapped or moved the range.
    fn check_live(&self) -> Result<(), CutError> {
        match self.inner.invalidation() {
            Some(reason) => Err(CutError::Invalidated {
                start: self.inner.start,
                reason,
            }),
            None => Ok(()),
        }
    }

    /// The pages written so far in the current epoch (a peek: the epoch stays open).
    ///
    /// A write whose fault has been serviced is included; a write still waiting for the
    /// service thread is not yet.
    pub fn dirty_pages(&self) -> Result<DirtySet, RegionError> {
        self.check()?;
        let mut words = self.inner.dirty.snapshot();
        if self.shared.backend == Backend::AsyncUffd {
            // The kernel resolved the writes: read (without re-arming) which pages are written.
            let inner = &self.inner;
            let mut out = vec![sys::EMPTY_PAGE_REGION; 1024];
            let scanned = self.shared.pagemap.as_ref().map(|pm| {
                pm.unprotected(
                    (inner.start, inner.page_size),
                    inner.start,
                    inner.end(),
                    &mut out,
                    |pages| set_dirty_bits(&mut words, pages),
                )
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
        if self.shared.backend == Backend::AsyncUffd {
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
        self.check_live()?;
        // Pages the kernel writes through io_uring fixed buffers never fault: report them at
        // every cut. Scanned here, on the caller's thread, so the service thread does not hold
        // faults meanwhile (a buffer registered after this scan was registered by a tracked
        // write, so the epoch still reports it).
        self.inner.mark_pinned();
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
                // Through /proc/self/mem for adopted file and shmem memory: a page past the end
                // of a truncated file is an error, not a SIGBUS.
                self.inner
                    .copy_live(page, &mut buf)
                    .map_err(CutAndCopyError::Read)
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
        self.check_live()?;
        let id = self.inner.id;
        self.shared.call(|reply| Command::Snapshot { id, reply })?
    }

    /// Forks the region inside this process: returns a new, writable region of the same length
    /// at a new address whose content is this region's at the instant of the call (a
    /// consistent cut, taken like [`snapshot`](Self::snapshot) without stopping writers).
    /// From then on writes to either side are never visible in the other, as after `fork(2)`,
    /// and both can be forked again, cut, snapshotted and dropped in any order.
    ///
    /// Memory is shared until written: the clone starts with no memory of its own. The first
    /// write to a page on either side, or the clone's first access to it, gives the clone its
    /// own copy of that page (the parent's write waits for that copy, like any
    /// copy-before-write). A page that is all zeros is never copied.
    ///
    /// The clone is private anonymous memory (whatever the origin's kind) and its first epoch
    /// reports every page dirty (its content is new to the tracker, as for
    /// [`Tracker::adopt`](crate::Tracker::adopt)).
    ///
    /// Errors: [`ForkError::Unsupported`] on a backend other than `Backend::SyncUffd`,
    /// [`ForkError::InThread`] with in-thread fault handling, [`ForkError::KindUnsupported`]
    /// for hugetlbfs and file-backed regions, [`ForkError::Invalidated`] for a region no
    /// longer tracked.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::atomic::Ordering::SeqCst;
    /// let tracker = writewatch_core::Tracker::builder().build()?;
    /// let origin = tracker.map_anonymous(4096)?;
    /// origin.as_atomic_u64()[0].store(u64::from(b'a'), SeqCst);
    /// let clone = origin.fork()?;
    /// assert_eq!(clone.as_atomic_u64()[0].load(SeqCst), u64::from(b'a'));
    /// clone.as_atomic_u64()[0].store(u64::from(b'b'), SeqCst);
    /// assert_eq!(origin.as_atomic_u64()[0].load(SeqCst), u64::from(b'a'));
    /// # Ok(()) }
    /// ```
    pub fn fork(&self) -> Result<Region, ForkError> {
        let inner = crate::fork::clone::fork(&self.inner, &self.shared)?;
        Ok(Region {
            inner,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Restores the region to `snapshot`'s content by rewriting only the pages written since
    /// the previous rollback (or since the snapshot, the first time); returns how many.
    ///
    /// The rewritten pages are write-protected again afterwards, so each rollback costs the
    /// pages the application touched since the last one, however long the snapshot lives
    /// (the fuzzing reset: one snapshot, then scribble / rollback in a loop). The caller must
    /// quiesce the region's writers for the duration (concurrent writes would be overwritten
    /// or interleave). The snapshot stays valid: roll back as often as needed. "The pages
    /// touched" may include a few untouched ones: with adaptive fault-around (granted to a
    /// region written in order), up to 127 pages after a sequential stream per epoch, the
    /// over-report bound of dirty sets (`TrackerBuilder::adaptive`).
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
        self.check_live()?;
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
