//! [`Snapshot`]: a whole-region, point-in-time view (see `view.rs` for how its pages are kept).

use crate::error::SnapshotError;
use crate::view::ViewHandle;

/// A whole-region, point-in-time snapshot taken by [`Region::snapshot`](crate::Region::snapshot).
///
/// Every page reads as it was at the snapshot instant, however the application writes the
/// region afterwards: the first write to each page after the snapshot copies the page first.
/// Copies are kept until the snapshot is dropped, so [`Region::rollback`](crate::Region::rollback)
/// can be applied any number of times (the fuzzing / transaction reset).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::atomic::Ordering::SeqCst;
/// let tracker = writewatch_core::Tracker::builder().build()?;
/// let region = tracker.map_anonymous(4 * 4096)?;
/// let w = region.as_atomic_u64();
/// w[0].store(1, SeqCst);
/// let snap = region.snapshot()?;
/// w[0].store(2, SeqCst);                     // copied before it lands
/// let mut page = vec![0u8; 4096];
/// snap.read_page(0, &mut page)?;
/// assert_eq!(page[0], 1);
/// assert_eq!(region.rollback(&snap)?, 1);    // one page was written since
/// assert_eq!(w[0].load(SeqCst), 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) view: ViewHandle,
}

impl Snapshot {
    /// Reads page `page` as it was at the snapshot into `buf` (one page long).
    pub fn read_page(&self, page: u64, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.view.read(page, buf)
    }

    /// Pages written since the snapshot (those with a preserved copy), ascending.
    pub fn written_pages(&self) -> Vec<u64> {
        self.view.preserved_pages()
    }

    /// Number of pages in the region.
    pub fn page_count(&self) -> u64 {
        self.view.region.page_count
    }

    /// Page size.
    pub fn page_size(&self) -> usize {
        self.view.region.page_size
    }
}
