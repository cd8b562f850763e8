//! Program data: [`StaticPages`], page-aligned static memory a program declares for itself,
//! and [`Tracker::adopt_static`], which tracks it without `unsafe`.

use std::sync::atomic::AtomicU64;

use crate::error::MapError;
use crate::region::Region;
use crate::tracker::Tracker;

/// 64-bit words per 4 KiB page.
const WORDS: usize = 512;

/// `N` pages (4 KiB each) of a program's own static data, page-aligned so they can be
/// tracked: declare it as a `static` and pass it to [`Tracker::adopt_static`].
///
/// Initialised with a non-zero value it lives in the program's `.data` (a private mapping of
/// the executable file: tracked by the async backend only, see
/// [`RegionKind::FilePrivate`](crate::RegionKind::FilePrivate)); zero-initialised it usually
/// lives in `.bss` (anonymous memory, every backend), though its first page may share the
/// last file-backed page of `.data`.
///
/// The memory is 64-bit atomics: every access, the program's and the region's, is a
/// well-defined shared access.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::atomic::Ordering::Relaxed;
/// use writewatch_core::{Backend, RegionKind, StaticPages, Tracker};
///
/// static TABLE: StaticPages<4> = StaticPages::new(0x5eed); // initialised: in `.data`
///
/// let tracker = Tracker::builder().backend(Backend::AsyncUffd).build()?;
/// let region = tracker.adopt_static(&TABLE)?;
/// assert_eq!(region.kind(), RegionKind::FilePrivate);
/// region.cut()?;                                   // epoch 0: every page (new to the tracker)
/// TABLE.page(2)[7].store(42, Relaxed);             // the program writes its static
/// assert_eq!(region.cut()?.dirty().iter().collect::<Vec<_>>(), vec![2]);
/// # Ok(()) }
/// ```
#[repr(C, align(4096))]
#[derive(Debug)]
pub struct StaticPages<const N: usize> {
    pages: [[AtomicU64; WORDS]; N],
}

impl<const N: usize> StaticPages<N> {
    /// `N` pages with every 64-bit word set to `fill` (0: `.bss`; anything else: `.data`).
    pub const fn new(fill: u64) -> Self {
        let mut pages = [const { [const { AtomicU64::new(0) }; WORDS] }; N];
        let mut p = 0;
        while p < N {
            let mut w = 0;
            while w < WORDS {
                pages[p][w] = AtomicU64::new(fill);
                w += 1;
            }
            p += 1;
        }
        Self { pages }
    }

    /// The 512 words of page `index` (panics if `index >= N`, like slice indexing).
    pub fn page(&self, index: usize) -> &[AtomicU64; WORDS] {
        &self.pages[index]
    }

    /// All the words, page after page.
    pub fn words(&self) -> &[AtomicU64] {
        self.pages.as_flattened()
    }
}

impl Tracker {
    /// Tracks a program's own static data (see [`StaticPages`] for an example): safe, because
    /// a `'static` lives as long as the process and is only ever accessed atomically.
    ///
    /// The same checks and errors as [`adopt`](Self::adopt): statics in `.data` are a
    /// file-backed private mapping ([`MapError::FileBackedNeedsAsync`] on the sync and
    /// mprotect backends); on systems whose page size is not 4 KiB the static may not be
    /// page-aligned ([`MapError::Unaligned`]). The first cut reports every page.
    pub fn adopt_static<const N: usize>(
        &self,
        pages: &'static StaticPages<N>,
    ) -> Result<Region, MapError> {
        let words: &'static [AtomicU64] = pages.words();
        self.adopt_with(
            words.as_ptr() as *mut u8,
            std::mem::size_of_val(words),
            || crate::sys::Mapping::adopted_static(words),
        )
    }
}
