//! Glue between the engine and the checkpoint store: stream an epoch into a segment.

use writewatch_checkpoint::{Geometry, SegmentInfo, Store, WriteError};
use writewatch_core::{Epoch, SnapshotError};

/// Errors of [`save_epoch`].
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// A page of the epoch could not be read as it was at the cut.
    #[error("reading page {page} of epoch {epoch}: {source}")]
    Page {
        /// The epoch.
        epoch: u64,
        /// The page.
        page: u64,
        /// Why.
        #[source]
        source: SnapshotError,
    },
    /// Writing the segment failed; the store's previous chain is intact.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Streams `epoch` into `store` as one segment, in ascending page order, with bounded memory:
/// the store's first segment becomes a base (pages outside the epoch's dirty set are zero,
/// which holds for a region tracked from birth, and for an adopted region, whose first epoch
/// reports every page), later ones deltas. Pages are read as they were at the cut, while the
/// application keeps writing, and released as they are written. On failure the store keeps
/// its previous chain and the epoch's pages are requeued into the region's open epoch
/// ([`Epoch::requeue`]), so the next successful checkpoint still covers them.
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
/// save_epoch(&mut store, &region.cut()?)?;                  // base
/// region.as_atomic_u64()[512].store(8, SeqCst);
/// let info = save_epoch(&mut store, &region.cut()?)?;       // delta: page 1 only
/// assert_eq!(info.data_pages, 1);
/// assert_eq!(store.restore(1)?.as_slice()[4096], 8);
/// # std::fs::remove_dir_all(&dir)?; Ok(()) }
/// ```
pub fn save_epoch(store: &mut Store, epoch: &Epoch) -> Result<SegmentInfo, SaveError> {
    let r = write_epoch(store, epoch);
    if r.is_err() {
        // The store keeps its previous chain; the region reports these pages again at the
        // next cut, so the next successful checkpoint still covers them.
        epoch.requeue();
    }
    r
}

fn write_epoch(store: &mut Store, epoch: &Epoch) -> Result<SegmentInfo, SaveError> {
    let dirty = epoch.dirty();
    let geometry = Geometry {
        page_size: dirty.page_size(),
        page_count: dirty.page_count(),
    };
    let number = epoch.number();
    let mut w = if store.head().is_none() {
        store.begin_base(number, geometry)?
    } else {
        store.begin_delta(number, geometry)?
    };
    let mut reader = epoch.reader();
    while let Some(r) = reader.next_page() {
        let (page, bytes) = r.map_err(|e| {
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
        })?;
        w.push_page(page, bytes)?;
    }
    Ok(w.commit()?)
}

/// Errors of [`restore_region`].
#[derive(Debug, thiserror::Error)]
pub enum RestoreRegionError {
    /// The checkpoint could not be read (missing epoch, corruption, I/O); the region was not
    /// touched.
    #[error(transparent)]
    Store(#[from] writewatch_checkpoint::RestoreError),
    /// The checkpoint's geometry is not the region's.
    #[error("the checkpoint holds {store_pages} pages of {store_page_size} bytes; the region has {region_pages} of {region_page_size}")]
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
}

/// Restores checkpoint `epoch` into an existing tracked `region`, rewriting only the pages
/// whose content differs, and returns how many it rewrote.
///
/// The checkpoint is read and every checksum verified *before* the region is touched, so a
/// corrupt store leaves the region unchanged. The rewrite goes through tracked stores: the
/// restored pages show up in the region's current dirty set, as they should (their content
/// changed). The caller must quiesce the region's writers for the duration. Memory: the
/// epoch is first restored into a temporary mapping of the region's size.
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
/// assert_eq!(restore_region(&store, 0, &region)?, 2);
/// assert_eq!(region.as_atomic_u64()[0].load(SeqCst), 1);
/// assert_eq!(region.as_atomic_u64()[512].load(SeqCst), 0);
/// # std::fs::remove_dir_all(&dir)?; Ok(()) }
/// ```
pub fn restore_region(
    store: &Store,
    epoch: u64,
    region: &writewatch_core::Region,
) -> Result<u64, RestoreRegionError> {
    let restored = store.restore(epoch)?;
    let ps = region.page_size();
    if restored.len() != region.len() || store.geometry().is_some_and(|g| g.page_size != ps) {
        let g = store.geometry();
        return Err(RestoreRegionError::Geometry {
            store_pages: g.map(|g| g.page_count).unwrap_or(0),
            store_page_size: g.map(|g| g.page_size).unwrap_or(0),
            region_pages: region.page_count(),
            region_page_size: ps,
        });
    }
    let words = region.as_atomic_u64();
    let wpp = ps / 8;
    let mut rewritten = 0;
    for (page, src) in restored.as_slice().chunks_exact(ps).enumerate() {
        let dst = &words[page * wpp..(page + 1) * wpp];
        let differs = dst.iter().zip(src.chunks_exact(8)).any(|(w, s)| {
            w.load(std::sync::atomic::Ordering::Relaxed)
                != u64::from_ne_bytes(s.try_into().unwrap_or([0; 8]))
        });
        if differs {
            for (w, s) in dst.iter().zip(src.chunks_exact(8)) {
                w.store(
                    u64::from_ne_bytes(s.try_into().unwrap_or([0; 8])),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            rewritten += 1;
        }
    }
    Ok(rewritten)
}
