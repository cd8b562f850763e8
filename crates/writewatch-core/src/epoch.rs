//! A closed epoch ([`Epoch`]): its dirty set, its cut's [`CutStats`], and the reader of its
//! pages as they were at the cut.

use std::sync::Arc;
use std::time::Duration;

use crate::dirty::DirtySet;
use crate::error::SnapshotError;
use crate::range::RegionInner;
use crate::view::ViewHandle;

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
    pub(crate) view: Option<ViewHandle>,
    pub(crate) backend: crate::backend::Backend,
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
    /// (an over-report). [`Region::cut_and_copy`](crate::Region::cut_and_copy) and the facade's `save_epoch` do it
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
