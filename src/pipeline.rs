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
/// application keeps writing, and released as they are written.
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
