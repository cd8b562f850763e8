//! Private file mappings on the async backend: content changes no write-protect fault and no
//! `REMOVE` event reports.
//!
//! A page of a `MAP_PRIVATE` file mapping holds either the file's page or, after the first
//! write, the process's own anonymous copy (COW). The kernel can drop a copy without any
//! write by this process and without a `REMOVE` event: `ftruncate` of the file zaps the
//! private copies beyond the new size too (`unmap_mapping_range(..., even_cows)`). After
//! that the page reads as the file's content (zeros after a shrink-then-extend), so its
//! content changed since the last cut:
//!
//! ```text
//!   copy protected at cut k ──zap──> uffd-wp marker (not WRITTEN)  → caught here
//!   copy written in epoch k+1 ─zap─> empty entry, no marker        → the harvest reports it
//! ```
//!
//! The second case is the harvest's (see `Pagemap::harvest`). For the first, at every cut of
//! such a region, after the harvest, `Pagemap::copied` gives the set of copied pages now:
//! every page copied at the previous cut (or at registration) and not copied now is
//! reported.
//!
//! Over-report at worst (a copy swapped out between two cuts leaves the set for a while),
//! never under-report: a page can only re-enter the copied set by a write, which the harvest
//! reports.
//!
//! **Limit (systems with active swap):** a copy that is swapped out at one cut and dropped by
//! `ftruncate` before the next is not reported. A swapped copy is a swap entry, and the
//! `ftruncate` leaves a uffd-wp marker in its place. Without `CAP_SYS_ADMIN` (which the raw
//! pagemap needs to show swap offsets), the two look the same. Counting swap entries as
//! copies would not help, because the marker that replaces the copy is a swap entry too. It
//! would also report every read of a protected page. (Review finding 7; the test
//! `review15::held::private_file_swapped_copy_dropped_by_ftruncate_is_reported` needs a
//! swapfile.)

use std::sync::atomic::Ordering::Relaxed;

use nix::errno::Errno;

use super::Service;
use crate::range::RegionInner;

impl Service {
    /// The copied set of a newly registered region whose pages may be COW copies of a file
    /// (`RegionInner::cow_file`; `None` for others or without `PAGEMAP_SCAN`).
    pub(super) fn initial_copied(&mut self, inner: &RegionInner) -> Option<Vec<u64>> {
        if !inner.cow_file {
            return None;
        }
        let pm = self.shared.pagemap.as_ref()?;
        let mut words = vec![0u64; (inner.page_count as usize).div_ceil(64)];
        let range = (inner.start, inner.end(), inner.page_size);
        match pm.copied(range, &mut words, &mut self.scan_out) {
            Ok(n) => {
                self.shared.counters.scan_ioctls.fetch_add(n, Relaxed);
                Some(words)
            }
            Err(e) => {
                // Without the set every copied page counts as possibly dropped: the first
                // cut reports the whole region (over-report).
                tracing::debug!(%e, "PAGEMAP_SCAN for copied pages failed");
                Some(vec![u64::MAX; words.len()])
            }
        }
    }

    /// The check above for the region at `start`: sets the bits of the pages whose copy was
    /// dropped in `words` (the epoch's harvest). Returns the number of ioctls.
    pub(super) fn private_file_changes(
        &mut self,
        start: usize,
        inner: &RegionInner,
        words: &mut [u64],
    ) -> Result<u64, Errno> {
        let Some(mut before) = self.by_start.get_mut(&start).and_then(|e| e.copied.take()) else {
            return Ok(0);
        };
        let pm = self.shared.pagemap.as_ref().ok_or(Errno::ENOTTY)?;
        let range = (inner.start, inner.end(), inner.page_size);
        let mut now = vec![0u64; before.len()];
        let r = pm.copied(range, &mut now, &mut self.scan_out);
        if let Ok(n) = r {
            self.shared.counters.scan_ioctls.fetch_add(n, Relaxed);
        }
        match r {
            Ok(_) => {
                for ((w, b), c) in words.iter_mut().zip(&before).zip(&now) {
                    *w |= b & !c;
                }
                before = now;
            }
            Err(e) => tracing::debug!(%e, "copied-page scan failed; kept the previous set"),
        }
        if let Some(entry) = self.by_start.get_mut(&start) {
            entry.copied = Some(before);
        }
        r
    }
}
