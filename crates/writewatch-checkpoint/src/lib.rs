//! On-disk incremental checkpoint store for writewatch.
//!
//! A [`Store`] is a directory holding one segment file per checkpoint and a
//! `MANIFEST` listing the committed chain. The first segment is a *base* (all
//! non-zero pages of the region), later ones are *deltas* (the pages written
//! since the parent, including pages that became zero). See `docs/format.md`
//! for the byte layout.
//!
//! * Writing streams pages in ascending order through two fixed-size buffers
//!   (a few MiB, independent of the region size) with large sequential
//!   writes, optionally on a background thread ([`WriterOptions`]).
//! * Every commit is atomic: the segment is written under a temporary name,
//!   renamed, `fdatasync`ed and its directory `fsync`ed; then the manifest is
//!   replaced (temporary file, `fdatasync`, rename, directory `fsync`). The
//!   manifest rename is the commit point: a crash at any instant leaves the
//!   previous chain intact; leftovers are removed on the next read-write
//!   [`Store::open`].
//! * Restoring reads each page once, from the newest segment of the chain
//!   that holds it, and verifies every checksum before returning success.
//!
//! The crate is independent of `writewatch-core`: inputs are described by the
//! [`PageSource`] trait and by run lists `&[(first_page, count)]`.
//!
//! ```
//! use writewatch_checkpoint::{SliceSource, Store};
//!
//! let dir = tempfile::tempdir()?;
//! let mut store = Store::create(dir.path().join("ckpt"))?;
//! let mut region = vec![0u8; 64 * 4096];
//! region[..4096].fill(0xAB);
//! let base = store.write_base(&SliceSource::new(&region, 4096)?)?;
//! region[10 * 4096] = 1;
//! let delta = store.write_delta(1, &SliceSource::new(&region, 4096)?, &[(10, 1)])?;
//! assert_eq!(delta.parent, Some(base.epoch));
//! assert_eq!(store.restore(1)?.as_slice(), &region[..]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
pub mod format;
mod restore;
mod segment;
mod store;
mod sys;
mod writer;

pub use error::{
    CompactError, CorruptError, Corruption, IoError, OpenError, ReadError, RestoreError,
    RetainError, VerifyError, WriteError,
};
pub use store::{
    CastError, CompactReport, Geometry, Leftover, RestoredMapping, SegmentInfo, SegmentKind,
    SegmentWriter, Store, VerifyProblem, VerifyReport, LOCK_NAME, MANIFEST_NAME, TEMP_PREFIX,
};
pub use writer::{Compression, Progress, ProgressFn, WriterOptions};

/// Read access to a region's pages at the checkpoint instant.
pub trait PageSource {
    /// Page size in bytes.
    fn page_size(&self) -> usize;
    /// Number of pages in the region.
    fn page_count(&self) -> u64;
    /// Copy page `index` into `buf` (len == page_size). May fail (e.g. the
    /// region went away).
    fn read_page(&self, index: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl<T: PageSource + ?Sized> PageSource for &T {
    fn page_size(&self) -> usize {
        (**self).page_size()
    }
    fn page_count(&self) -> u64 {
        (**self).page_count()
    }
    fn read_page(&self, index: u64, buf: &mut [u8]) -> std::io::Result<()> {
        (**self).read_page(index, buf)
    }
}

/// A [`PageSource`] over a byte slice (its length must be a multiple of the
/// page size).
///
/// ```
/// use writewatch_checkpoint::{PageSource, SliceSource};
/// let data = vec![1u8; 3 * 4096];
/// let src = SliceSource::new(&data, 4096)?;
/// assert_eq!(src.page_count(), 3);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SliceSource<'a> {
    data: &'a [u8],
    page_size: usize,
}

impl<'a> SliceSource<'a> {
    /// Wraps `data`; fails if the page size is zero or does not divide the
    /// length.
    pub fn new(data: &'a [u8], page_size: usize) -> std::io::Result<Self> {
        if page_size == 0 || data.len() % page_size != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "slice length is not a multiple of the page size",
            ));
        }
        Ok(SliceSource { data, page_size })
    }
}

impl PageSource for SliceSource<'_> {
    fn page_size(&self) -> usize {
        self.page_size
    }
    fn page_count(&self) -> u64 {
        (self.data.len() / self.page_size) as u64
    }
    fn read_page(&self, index: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(self.page_size))
            .filter(|&s| s < self.data.len() && buf.len() == self.page_size)
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "page index out of range")
            })?;
        buf.copy_from_slice(&self.data[start..start + self.page_size]);
        Ok(())
    }
}
