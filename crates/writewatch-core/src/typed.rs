//! Typed access to tracked memory and to preserved pages.
//!
//! - [`Region::as_atomic`]: the region as a slice of 8-byte atomics of the caller's choice.
//! - [`Region::read_at`] / [`Region::write_at`]: copy [`bytemuck::Pod`] values out of / into
//!   the region at any byte offset, through atomic word accesses (safe from any thread).
//! - [`Snapshot::read_page_as`] / [`Epoch::read_page_as`]: a preserved page as `&mut [T]`.
//!
//! Why only 8-byte atomics: every access the tracker makes to tracked memory (snapshot
//! copies, rollback, [`Region::as_atomic_u64`]) is an 8-byte atomic access. Rust's memory model
//! makes racing atomic accesses of *different sizes* undefined behaviour when one of them
//! writes, so a safe `&[AtomicU8]` view next to those would let safe code cause it. Narrower
//! values are read and written with [`Region::read_at`] / [`Region::write_at`], which splice
//! them into 8-byte words with compare-and-swap.

use std::sync::atomic::{AtomicI64, AtomicIsize, AtomicU64, AtomicUsize, Ordering};

use bytemuck::{NoUninit, Pod};

use crate::epoch::Epoch;
use crate::error::Invalidation;
use crate::error::SnapshotError;
use crate::region::Region;
use crate::snapshot::Snapshot;
use crate::sys;

/// The atomic types a region can be viewed as with [`Region::as_atomic`]: the 8-byte std
/// atomic integers (`AtomicU64`, `AtomicI64`, and on 64-bit targets `AtomicUsize`,
/// `AtomicIsize`). Sealed: it cannot be implemented outside this crate.
///
/// Why no `AtomicU8`/`AtomicU16`/`AtomicU32`: every access the tracker itself makes to tracked
/// memory (snapshot copies, rollback, [`Region::as_atomic_u64`]) is an 8-byte atomic access,
/// and Rust's memory model makes racing atomic accesses of *different sizes* undefined
/// behaviour when one of them writes; a safe narrower view would let safe code cause it.
/// Read and write narrower values with [`Region::read_at`] / [`Region::write_at`], which
/// splice them into 8-byte words with compare-and-swap.
pub trait AtomicView: sys::Atomic8 + Sync + Send + 'static {}
impl AtomicView for AtomicU64 {}
impl AtomicView for AtomicI64 {}
#[cfg(target_pointer_width = "64")]
impl AtomicView for AtomicUsize {}
#[cfg(target_pointer_width = "64")]
impl AtomicView for AtomicIsize {}

/// Errors of [`Region::read_at`] and [`Region::write_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The byte range does not lie inside the region.
    #[error(
        "bytes {offset:#x}..{offset:#x}+{len:#x} are outside the region ({region_len:#x} bytes): \
         use an offset + length within Region::len()"
    )]
    OutOfRange {
        /// Requested offset.
        offset: usize,
        /// Requested length in bytes.
        len: usize,
        /// The region's length.
        region_len: usize,
    },
    /// The application unmapped or moved the region.
    #[error("the region is no longer tracked: {0}")]
    Invalidated(Invalidation),
}

/// Errors of [`Snapshot::read_page_as`] and [`Epoch::read_page_as`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TypedReadError {
    /// The buffer does not span exactly one page.
    #[error(
        "the buffer holds {len} elements of {elem_size} bytes ({} bytes); a page is {page_size} \
         bytes: pass a buffer of {} elements",
        len * elem_size,
        page_size / (*elem_size).max(1)
    )]
    WrongLength {
        /// Elements in the buffer.
        len: usize,
        /// Size of one element.
        elem_size: usize,
        /// The page size.
        page_size: usize,
    },
    /// The element type does not tile a page (zero-sized, or its size does not divide the
    /// page size).
    #[error(
        "a {page_size}-byte page is not a whole number of {elem_size}-byte elements: read it as \
         bytes, or as a type whose size divides the page size"
    )]
    ElementDoesNotTile {
        /// Size of one element.
        elem_size: usize,
        /// The page size.
        page_size: usize,
    },
    /// Reading the page failed.
    #[error(transparent)]
    Read(#[from] SnapshotError),
}

fn page_bytes<T: Pod>(buf: &mut [T], page_size: usize) -> Result<&mut [u8], TypedReadError> {
    let elem_size = std::mem::size_of::<T>();
    if elem_size == 0 || page_size % elem_size != 0 {
        return Err(TypedReadError::ElementDoesNotTile {
            elem_size,
            page_size,
        });
    }
    if std::mem::size_of_val(buf) != page_size {
        return Err(TypedReadError::WrongLength {
            len: buf.len(),
            elem_size,
            page_size,
        });
    }
    // Pod -> bytes never fails for a non-zero-sized type (u8 has alignment 1).
    bytemuck::try_cast_slice_mut(buf).map_err(|_| TypedReadError::ElementDoesNotTile {
        elem_size,
        page_size,
    })
}

impl Snapshot {
    /// Reads page `page` as it was at the snapshot into `buf`, a slice of any
    /// [`bytemuck::Pod`] type spanning exactly one page.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::atomic::Ordering::SeqCst;
    /// let tracker = writewatch_core::Tracker::builder().build()?;
    /// let region = tracker.map_anonymous(2 * 4096)?;
    /// region.write_at(4096, &[7u32, 8, 9])?;
    /// let snap = region.snapshot()?;
    /// region.write_at(4096, &[0u32])?;                 // after the snapshot
    /// let mut page = vec![0u32; 1024];
    /// snap.read_page_as(1, &mut page)?;
    /// assert_eq!(&page[..3], &[7, 8, 9]);
    /// assert!(snap.read_page_as(1, &mut [0u32; 3]).is_err()); // not one page
    /// # Ok(()) }
    /// ```
    pub fn read_page_as<T: Pod>(&self, page: u64, buf: &mut [T]) -> Result<(), TypedReadError> {
        let bytes = page_bytes(buf, self.page_size())?;
        Ok(self.read_page(page, bytes)?)
    }
}

impl Epoch {
    /// Reads dirty page `page` as it was at the cut into `buf`, a slice of any
    /// [`bytemuck::Pod`] type spanning exactly one page, and releases it (see
    /// [`read_page`](Self::read_page)).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tracker = writewatch_core::Tracker::builder().build()?;
    /// let region = tracker.map_anonymous(4 * 4096)?;
    /// region.write_at(3 * 4096, &[1.5f64, 2.5])?;
    /// let epoch = region.cut()?;
    /// let mut page = vec![0f64; 512];
    /// epoch.read_page_as(3, &mut page)?;
    /// assert_eq!(&page[..2], &[1.5, 2.5]);
    /// # Ok(()) }
    /// ```
    pub fn read_page_as<T: Pod>(&self, page: u64, buf: &mut [T]) -> Result<(), TypedReadError> {
        let bytes = page_bytes(buf, self.dirty().page_size())?;
        Ok(self.read_page(page, bytes)?)
    }
}

impl Region {
    /// The region as a slice of 8-byte atomics of type `T` ([`AtomicU64`], [`AtomicI64`],
    /// [`AtomicUsize`], [`AtomicIsize`]): a safe way to read and write tracked memory from any
    /// thread. Writes through it are tracked like any other write.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::atomic::{AtomicI64, Ordering::SeqCst};
    /// let tracker = writewatch_core::Tracker::builder().build()?;
    /// let region = tracker.map_anonymous(4 * 4096)?;
    /// let counters = region.as_atomic::<AtomicI64>();
    /// assert_eq!(counters.len(), 4 * 4096 / 8);
    /// counters[512].fetch_sub(5, SeqCst);             // page 1
    /// assert_eq!(counters[512].load(SeqCst), -5);
    /// assert_eq!(region.cut()?.dirty().iter().collect::<Vec<_>>(), vec![1]);
    /// # Ok(()) }
    /// ```
    pub fn as_atomic<T: AtomicView>(&self) -> &[T] {
        self.inner.mapping.atomic_view::<T>()
    }

    fn range_check(&self, offset: usize, len: usize) -> Result<(), AccessError> {
        if let Some(why) = self.invalidation() {
            return Err(AccessError::Invalidated(why));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(AccessError::OutOfRange {
                offset,
                len,
                region_len: self.len(),
            }),
        }
    }

    /// Copies `out.len()` values of type `T` from the region at byte `offset` (any alignment)
    /// into `out`, with atomic 8-byte loads.
    ///
    /// Each 8-byte word is read atomically, a value spanning several words is not: if another
    /// thread writes it meanwhile, the result may mix old and new words (still a valid `T`, as
    /// `T` is [`Pod`]). Synchronise such writers as for any shared data.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tracker = writewatch_core::Tracker::builder().build()?;
    /// let region = tracker.map_anonymous(4096)?;
    /// region.write_at(3, &[0xABCDu16, 0x1234])?;
    /// let mut out = [0u16; 2];
    /// region.read_at(3, &mut out)?;
    /// assert_eq!(out, [0xABCD, 0x1234]);
    /// assert!(region.read_at(4095, &mut out).is_err()); // past the end
    /// # Ok(()) }
    /// ```
    pub fn read_at<T: Pod>(&self, offset: usize, out: &mut [T]) -> Result<(), AccessError> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(out);
        self.range_check(offset, bytes.len())?;
        read_bytes(self.as_atomic_u64(), offset, bytes);
        Ok(())
    }

    /// Copies `data` into the region at byte `offset` (any alignment), with atomic 8-byte
    /// stores, or compare-and-swap for words `data` covers only in part (so concurrent writes
    /// to the other bytes of such a word are not lost). Words whose content would not change
    /// are not written, so they are not reported dirty.
    ///
    /// Writes are tracked like any other write. A value spanning several words is not written
    /// atomically as a whole (see [`read_at`](Self::read_at)).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tracker = writewatch_core::Tracker::builder().build()?;
    /// let region = tracker.map_anonymous(4 * 4096)?;
    /// region.write_at(2 * 4096 - 2, &[0xFFFF_FFFFu32])?;  // straddles pages 1 and 2
    /// assert_eq!(region.cut()?.dirty().iter().collect::<Vec<_>>(), vec![1, 2]);
    /// region.write_at(2 * 4096 - 2, &[0xFFFF_FFFFu32])?;  // same bytes: no write
    /// assert!(region.cut()?.dirty().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn write_at<T: NoUninit>(&self, offset: usize, data: &[T]) -> Result<(), AccessError> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.range_check(offset, bytes.len())?;
        write_bytes(self.as_atomic_u64(), offset, bytes);
        Ok(())
    }
}

/// Reads `out.len()` bytes at byte `offset` of `words` (range already checked).
pub(crate) fn read_bytes(words: &[AtomicU64], offset: usize, out: &mut [u8]) {
    let mut pos = 0;
    while pos < out.len() {
        let at = offset + pos;
        let (w, skip) = (at / 8, at % 8);
        let n = (8 - skip).min(out.len() - pos);
        let v = words
            .get(w)
            .map_or(0, |w| w.load(Ordering::Acquire))
            .to_ne_bytes();
        out[pos..pos + n].copy_from_slice(&v[skip..skip + n]);
        pos += n;
    }
}

/// Writes `data` at byte `offset` of `words` (range already checked), skipping unchanged words.
pub(crate) fn write_bytes(words: &[AtomicU64], offset: usize, data: &[u8]) {
    let mut pos = 0;
    while pos < data.len() {
        let at = offset + pos;
        let (wi, skip) = (at / 8, at % 8);
        let n = (8 - skip).min(data.len() - pos);
        let Some(w) = words.get(wi) else { return };
        if n == 8 {
            let v = u64::from_ne_bytes(data[pos..pos + 8].try_into().unwrap_or([0; 8]));
            if w.load(Ordering::Relaxed) != v {
                w.store(v, Ordering::Release);
            }
        } else {
            let mut cur = w.load(Ordering::Relaxed);
            loop {
                let mut b = cur.to_ne_bytes();
                b[skip..skip + n].copy_from_slice(&data[pos..pos + n]);
                let new = u64::from_ne_bytes(b);
                if new == cur {
                    break;
                }
                match w.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(now) => cur = now,
                }
            }
        }
        pos += n;
    }
}
