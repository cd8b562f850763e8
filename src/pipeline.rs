//! Glue between the engine and the checkpoint store: stream an epoch into a segment.

use std::sync::atomic::Ordering;

use writewatch_checkpoint::{Geometry, SegmentInfo, Store, WriteError};
use writewatch_core::{CutAndCopyError, CutError, Epoch, Region, SnapshotError};

/// Errors of [`save_epoch`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SaveError {
    /// A page of the epoch could not be read as it was at the cut.
    #[error("reading page {page} of epoch {epoch}: {source}")]
    Page {
        /// The epoch (the region's number).
        epoch: u64,
        /// The page.
        page: u64,
        /// Why.
        #[source]
        source: SnapshotError,
    },
    /// The store already holds checkpoints, but the epoch is the first one of a region that
    /// never took the store's content: it describes changes from an all-zero region, not from
    /// the store's newest checkpoint, so saving it would record a wrong image. Nothing was
    /// written.
    #[error("the store already holds epochs up to {head}, but this is the first epoch of a region that was not resumed from it: call writewatch::resume(&mut store, &region, None) before the first cut (or save into a new store)")]
    NotResumed {
        /// The store's newest epoch.
        head: u64,
    },
    /// Writing the segment failed; the store's previous chain is intact.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// [`cut_and_save`] could not cut the region (nothing was written).
    #[error("cutting the region")]
    Cut(#[source] CutError),
}

/// Streams `epoch` into `store` as one segment, in ascending page order, with bounded memory,
/// and returns the segment's description. The **store** numbers its checkpoints:
/// the segment's epoch is [`Store::next_epoch`] (one past the newest, 0 for an empty store);
/// the region's own epoch number ([`Epoch::number`]) is informational. A region tracked
/// from birth into a new store gets the same numbers from both as long as every epoch is
/// saved.
///
/// The store's first segment becomes a base (pages outside the epoch's dirty set are zero,
/// which holds for a region tracked from birth, and for an adopted region, whose first epoch
/// reports every page), later ones deltas. Pages are read as they were at the cut, while the
/// application keeps writing, and released as they are written. On failure the store keeps
/// its previous chain and the epoch's pages are requeued into the region's open epoch
/// ([`Epoch::requeue`]), so the next successful checkpoint still covers them.
///
/// To continue an existing store from a new process, restore it into the new region with
/// [`resume`] first; saving a new region's first epoch into a non-empty store is refused with
/// [`SaveError::NotResumed`] (unless that epoch reports every page, as an adopted region's
/// does).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::atomic::Ordering::SeqCst;
/// use writewatch::{checkpoint::Store, save_epoch, Tracker};
/// let dir = std::env::temp_dir().join(format!("ww-save-doc-{}", std::process::id()));
/// let mut store = Store::create(&dir)?;
/// let tracker = Tracker::builder().build()?;
/// let region = tracker.map_anonymous(16 * 4096)?;
/// region.as_atomic_u64()[0].store(7, SeqCst);
/// save_epoch(&mut store, &region.cut()?)?;                  // base, epoch 0
/// region.as_atomic_u64()[512].store(8, SeqCst);
/// let info = save_epoch(&mut store, &region.cut()?)?;       // delta: page 1 only
/// assert_eq!((info.epoch, info.data_pages), (1, 1));
/// assert_eq!(store.restore(1)?.as_slice()[4096], 8);
/// # std::fs::remove_dir_all(&dir)?; Ok(()) }
/// ```
pub fn save_epoch(store: &mut Store, epoch: &Epoch) -> Result<SegmentInfo, SaveError> {
    if let Some(g) = store.geometry() {
        let dirty = epoch.dirty();
        if g.page_size != dirty.page_size() || g.page_count != dirty.page_count() {
            // Geometry first: a region of another size is the real problem.
            return Err(WriteError::GeometryMismatch {
                store_page_size: g.page_size,
                store_pages: g.page_count,
                page_size: dirty.page_size(),
                pages: dirty.page_count(),
            }
            .into());
        }
    }
    // Nothing to requeue: the epoch is fine, the store is the wrong one for it.
    check_resumed(store.head().map(|h| h.epoch), epoch)?;
    let r = write_epoch(store, epoch);
    if r.is_err() {
        // The store keeps its previous chain; the region reports these pages again at the
        // next cut, so the next successful checkpoint still covers them.
        epoch.requeue();
    }
    r
}

/// Refuses the first epoch of a region that was not resumed from a store whose newest
/// epoch is `head` (unless it reports every page, as an adopted region's does).
fn check_resumed(head: Option<u64>, epoch: &Epoch) -> Result<(), SaveError> {
    let dirty = epoch.dirty();
    match head {
        Some(head) if epoch.number() == 0 && (dirty.len() as u64) < dirty.page_count() => {
            Err(SaveError::NotResumed { head })
        }
        _ => Ok(()),
    }
}

/// Cuts `region` and saves the epoch into `store` in one call: the segment is a base when
/// the store is empty, a delta otherwise ([`Store::begin_next`]). Works on every backend:
/// on the sync backend the pages are read as they were at the cut while the application
/// keeps writing; on the others (no copy before a write) **the caller must quiesce the
/// region's writers** until it returns, as for [`Region::cut_and_copy`]. The checks and the
/// failure handling are [`save_epoch`]'s: on failure the store keeps its previous chain and
/// the epoch's pages are requeued. See [`cut_and_save_epoch`] to keep the epoch (its dirty
/// set and cut statistics).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::atomic::Ordering::SeqCst;
/// use writewatch::{checkpoint::Store, cut_and_save, Tracker};
/// let dir = std::env::temp_dir().join(format!("ww-cut-save-doc-{}", std::process::id()));
/// let mut store = Store::create(&dir)?;
/// let tracker = Tracker::builder().build()?;
/// let region = tracker.map_anonymous(16 * 4096)?;
/// region.as_atomic_u64()[0].store(7, SeqCst);
/// cut_and_save(&mut store, &region)?;                        // base, epoch 0
/// region.as_atomic_u64()[512].store(8, SeqCst);
/// let info = cut_and_save(&mut store, &region)?;             // delta: page 1 only
/// assert_eq!((info.epoch, info.data_pages), (1, 1));
/// # std::fs::remove_dir_all(&dir)?; Ok(()) }
/// ```
pub fn cut_and_save(store: &mut Store, region: &Region) -> Result<SegmentInfo, SaveError> {
    cut_and_save_epoch(store, region).map(|(_, info)| info)
}

/// [`cut_and_save`], handing back the closed epoch too (its dirty set and cut statistics;
/// its pages are consumed).
pub fn cut_and_save_epoch(
    store: &mut Store,
    region: &Region,
) -> Result<(Epoch, SegmentInfo), SaveError> {
    let head = store.head().map(|h| h.epoch);
    let geometry = Geometry {
        page_size: region.page_size(),
        page_count: region.page_count(),
    };
    // Fails (region not cut) on a geometry mismatch or a read-only store.
    let mut w = store.begin_next(geometry)?;
    let epoch = region
        .cut_and_copy(|page, bytes| w.push_page(page, bytes))
        .map_err(|e| match e {
            CutAndCopyError::Cut(e) => SaveError::Cut(e),
            CutAndCopyError::Read(e) => page_error(region.epoch().saturating_sub(1), e),
            CutAndCopyError::Sink(e) => SaveError::Write(e),
        })?;
    // cut_and_copy requeued the pages on its own failures; these are ours.
    let r = check_resumed(head, &epoch).and_then(|()| Ok(w.commit()?));
    match r {
        Ok(info) => Ok((epoch, info)),
        Err(e) => {
            epoch.requeue();
            Err(e)
        }
    }
}

/// A page of epoch `number` that could not be read as it was at the cut.
fn page_error(number: u64, e: SnapshotError) -> SaveError {
    let page = match &e {
        SnapshotError::Discarded { page }
        | SnapshotError::NotInEpoch { page }
        | SnapshotError::AlreadyConsumed { page } => *page,
        _ => 0,
    };
    SaveError::Page {
        epoch: number,
        page,
        source: e,
    }
}

fn geometry(epoch: &Epoch) -> Geometry {
    Geometry {
        page_size: epoch.dirty().page_size(),
        page_count: epoch.dirty().page_count(),
    }
}

fn write_epoch(store: &mut Store, epoch: &Epoch) -> Result<SegmentInfo, SaveError> {
    let mut w = store.begin_next(geometry(epoch))?;
    let mut reader = epoch.reader();
    while let Some(r) = reader.next_page() {
        let (page, bytes) = r.map_err(|e| page_error(epoch.number(), e))?;
        w.push_page(page, bytes)?;
    }
    Ok(w.commit()?)
}

/// Errors of [`restore_region`] and [`resume`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreRegionError {
    /// The checkpoint could not be read (missing epoch, corruption, I/O); the region was not
    /// touched.
    #[error(transparent)]
    Store(#[from] writewatch_checkpoint::RestoreError),
    /// The checkpoint's geometry is not the region's; the region was not touched.
    #[error("the checkpoint holds {store_pages} pages of {store_page_size} bytes; the region has {region_pages} of {region_page_size}: map a region of {store_pages} x {store_page_size} bytes")]
    Geometry {
        /// Pages in the checkpoint.
        store_pages: u64,
        /// Its page size.
        store_page_size: usize,
        /// Pages in the region.
        region_pages: u64,
        /// The region's page size.
        region_page_size: usize,
    },
    /// The region could not be prepared for the overwrite (invalidated, copy budget, tracker
    /// shut down); the region was not touched.
    #[error("preparing the region for the restore: {0}")]
    Region(#[source] CutError),
    /// [`resume`] needs a read-write store (it may commit a segment).
    #[error("resume needs a store opened read-write (Store::open), not Store::open_read_only")]
    ReadOnly,
    /// [`resume`] could not cut the region after the restore (the region holds the restored
    /// content; its open epoch reports every page).
    #[error("cutting the region after the restore: {0}")]
    Cut(#[source] CutError),
    /// [`resume`] from an older epoch could not write the new base (the store's previous
    /// chain is intact; the region holds the restored content).
    #[error("writing the resumed epoch as the store's new head: {0}")]
    Write(#[source] WriteError),
}

fn check_geometry(store: &Store, region: &Region) -> Result<(), RestoreRegionError> {
    let ps = region.page_size();
    match store.geometry() {
        Some(g) if g.page_size != ps || g.page_count != region.page_count() => {
            Err(RestoreRegionError::Geometry {
                store_pages: g.page_count,
                store_page_size: g.page_size,
                region_pages: region.page_count(),
                region_page_size: ps,
            })
        }
        _ => Ok(()),
    }
}

/// Restores `epoch` into the whole region at memory speed.
fn overwrite(store: &Store, epoch: u64, region: &Region) -> Result<(), RestoreRegionError> {
    check_geometry(store, region)?;
    // Fail early (region untouched) on a missing epoch.
    if !store.segments().iter().any(|s| s.epoch == epoch) {
        return Err(if store.head().is_none() {
            writewatch_checkpoint::RestoreError::Empty
        } else {
            writewatch_checkpoint::RestoreError::NoSuchEpoch(epoch)
        }
        .into());
    }
    // Every page is about to change: mark them all dirty and lift write protection until the
    // next cut, so the restore runs at memory speed. If the restore then fails (the store is
    // verified before the region is written) the content is unchanged and the extra dirty
    // pages only make the next checkpoint larger.
    region
        .prepare_overwrite()
        .map_err(RestoreRegionError::Region)?;
    store.restore_into_words(epoch, region.as_atomic_u64())?;
    Ok(())
}

/// Restores checkpoint `epoch` into an existing tracked `region`.
///
/// Every checksum involved is verified *before* the region is touched, so a corrupt store
/// leaves the region's content unchanged. The region is then overwritten at memory speed
/// ([`Region::prepare_overwrite`], then the kernel reads the checkpoint straight into the
/// region): every page of the region is reported in its open epoch, so the next checkpoint
/// records the restored image (zero pages as zero runs, which cost no data). The caller must
/// quiesce the region's writers for the duration (their writes would interleave with the
/// restore). No temporary copy of the region is made.
///
/// To continue checkpointing into the same store from this content (a restart), use
/// [`resume`], which also closes that epoch so the next checkpoint is small.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::atomic::Ordering::SeqCst;
/// use writewatch::{checkpoint::Store, restore_region, save_epoch, Tracker};
/// let dir = std::env::temp_dir().join(format!("ww-restore-doc-{}", std::process::id()));
/// let mut store = Store::create(&dir)?;
/// let tracker = Tracker::builder().build()?;
/// let region = tracker.map_anonymous(8 * 4096)?;
/// region.as_atomic_u64()[0].store(1, SeqCst);
/// save_epoch(&mut store, &region.cut()?)?;
/// region.as_atomic_u64()[0].store(2, SeqCst);
/// region.as_atomic_u64()[512].store(3, SeqCst);
/// restore_region(&store, 0, &region)?;
/// assert_eq!(region.as_atomic_u64()[0].load(SeqCst), 1);
/// assert_eq!(region.as_atomic_u64()[512].load(SeqCst), 0);
/// assert_eq!(region.cut()?.dirty().len(), 8);                // every page reported
/// # std::fs::remove_dir_all(&dir)?; Ok(()) }
/// ```
pub fn restore_region(
    store: &Store,
    epoch: u64,
    region: &Region,
) -> Result<(), RestoreRegionError> {
    overwrite(store, epoch, region)
}

/// What [`resume`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resumed {
    /// The epoch whose content the region now holds.
    pub restored: u64,
    /// The store's newest epoch after the resume: `restored` itself, or, when an older epoch
    /// was resumed, a new base holding its content (the later epochs stay restorable).
    pub head: u64,
    /// Whether a new base was written (an older epoch than the head was resumed).
    pub rebased: bool,
}

/// Restart-and-resume: makes `region` continue `store` from checkpoint `epoch` (default: the
/// newest), so that [`save_epoch`] can keep appending to the same store.
///
/// It restores the epoch into the region (every checksum verified first; see
/// [`restore_region`]), then cuts the region and drops that epoch: the region now holds exactly
/// the store's content and its open epoch is empty, so the next [`save_epoch`] is a small
/// delta. Resuming an epoch older than the newest writes its content as a new base at
/// [`Store::next_epoch`] (nothing is deleted: later epochs stay restorable). Needs a
/// read-write store (the [`Store::open`] after a crash also removes what an interrupted write
/// left). An empty store is resumed trivially. The caller must quiesce the region's writers.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::atomic::Ordering::SeqCst;
/// use writewatch::{checkpoint::Store, resume, save_epoch, Tracker};
/// let dir = std::env::temp_dir().join(format!("ww-resume-doc-{}", std::process::id()));
/// {   // first process
///     let mut store = Store::create(&dir)?;
///     let tracker = Tracker::builder().build()?;
///     let region = tracker.map_anonymous(8 * 4096)?;
///     region.as_atomic_u64()[0].store(1, SeqCst);
///     save_epoch(&mut store, &region.cut()?)?;              // epoch 0
///     region.as_atomic_u64()[512].store(2, SeqCst);
///     save_epoch(&mut store, &region.cut()?)?;              // epoch 1
/// }
/// // after a restart
/// let mut store = Store::open(&dir)?;
/// let tracker = Tracker::builder().build()?;
/// let region = tracker.map_anonymous(8 * 4096)?;
/// let r = resume(&mut store, &region, None)?;
/// assert_eq!((r.restored, r.head), (1, 1));
/// region.as_atomic_u64()[1024].store(3, SeqCst);
/// let info = save_epoch(&mut store, &region.cut()?)?;      // epoch 2: page 2 only
/// assert_eq!((info.epoch, info.data_pages), (2, 1));
/// assert_eq!(store.restore(2)?.as_slice_of::<u64>()?[..1025].iter().sum::<u64>(), 6);
/// # std::fs::remove_dir_all(&dir)?; Ok(()) }
/// ```
pub fn resume(
    store: &mut Store,
    region: &Region,
    epoch: Option<u64>,
) -> Result<Resumed, RestoreRegionError> {
    if store.is_read_only() {
        return Err(RestoreRegionError::ReadOnly);
    }
    let Some(head) = store.head().map(|h| h.epoch) else {
        if let Some(e) = epoch {
            return Err(writewatch_checkpoint::RestoreError::NoSuchEpoch(e).into());
        }
        // Nothing to resume from: the region's epochs are relative to zero, like the store.
        return Ok(Resumed {
            restored: 0,
            head: 0,
            rebased: false,
        });
    };
    let epoch = epoch.unwrap_or(head);
    overwrite(store, epoch, region)?;
    // The region now holds the epoch's content; its open epoch (every page) is accounted for.
    let ep = region.cut().map_err(RestoreRegionError::Cut)?;
    let mut new_head = head;
    if epoch != head {
        // The store's newest checkpoint is not this content: record it as a new base.
        let mut w = store
            .begin_base(store.next_epoch(), geometry(&ep))
            .map_err(RestoreRegionError::Write)?;
        let words = region.as_atomic_u64();
        let wpp = region.page_size() / 8;
        let mut page = vec![0u8; region.page_size()];
        for p in 0..region.page_count() as usize {
            for (b, w) in page.chunks_exact_mut(8).zip(&words[p * wpp..(p + 1) * wpp]) {
                b.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
            }
            w.push_page(p as u64, &page)
                .map_err(RestoreRegionError::Write)?;
        }
        new_head = w.commit().map_err(RestoreRegionError::Write)?.epoch;
    }
    drop(ep);
    tracing::info!(
        restored = epoch,
        head = new_head,
        "resumed the region from the store"
    );
    Ok(Resumed {
        restored: epoch,
        head: new_head,
        rebased: epoch != head,
    })
}
