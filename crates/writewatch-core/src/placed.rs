//! Tracked memory at a fixed address: [`Tracker::map_anonymous_at`], so data structures that
//! hold pointers (or an [`Arena`](crate::Arena)'s handles) can be restored where they were.

use nix::errno::Errno;

use crate::error::{MapError, PublicErrno};
use crate::range::RegionKind;
use crate::region::Region;
use crate::sys;
use crate::tracker::Tracker;

/// Errors of [`Tracker::map_anonymous_at`].
#[derive(Debug, thiserror::Error)]
pub enum MapAtError {
    /// Part of the requested range is already mapped (by this process, a library, the heap...).
    #[error(
        "the range {addr:#x}..{end:#x} is (partly) mapped already: unmap what is there (e.g. drop \
         the region that used it and every Epoch/Snapshot of it), or restore at another address",
        end = addr + len
    )]
    AddressTaken {
        /// Requested start.
        addr: usize,
        /// Requested length.
        len: usize,
    },
    /// The kernel does not honour `MAP_FIXED_NOREPLACE` (Linux < 4.17) and placed the mapping
    /// elsewhere.
    #[error("this kernel cannot map at a fixed address without replacing (MAP_FIXED_NOREPLACE needs Linux >= 4.17)")]
    NotHonoured,
    /// Address zero was asked for.
    #[error("address 0 cannot be mapped: pass the address the region had when it was saved")]
    NullAddress,
    /// Any other mapping or registration failure (bad length or alignment, out of memory, a
    /// shut-down tracker, ...).
    #[error(transparent)]
    Map(#[from] MapError),
}

impl Tracker {
    /// Maps `len` bytes of private anonymous memory at exactly `addr`, tracked from birth like
    /// [`map_anonymous`](Self::map_anonymous). Never replaces an existing mapping
    /// (`MAP_FIXED_NOREPLACE`): if part of the range is in use the call fails with
    /// [`MapAtError::AddressTaken`]. `addr` and `len` must be multiples of the page size.
    ///
    /// This is how content saved from a region (its pages, e.g. an [`Arena`](crate::Arena)
    /// holding offsets or pointers) is restored at the address it had.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use writewatch_core::{MapAtError, Tracker};
    /// let tracker = Tracker::builder().build()?;
    /// let first = tracker.map_anonymous(4 * 4096)?;
    /// let addr = first.as_ptr() as usize;
    /// // Taken: the first region is still there.
    /// assert!(matches!(tracker.map_anonymous_at(addr, 4096), Err(MapAtError::AddressTaken { .. })));
    /// first.write_at(0, &[42u64])?;
    /// let saved = first.snapshot()?;
    /// let mut page0 = vec![0u64; 512];
    /// saved.read_page_as(0, &mut page0)?;
    /// drop((saved, first));                     // unmapped: the address is free again
    /// let again = tracker.map_anonymous_at(addr, 4 * 4096)?;
    /// assert_eq!(again.as_ptr() as usize, addr);
    /// again.write_at(0, &page0)?;
    /// let mut v = [0u64];
    /// again.read_at(0, &mut v)?;
    /// assert_eq!(v, [42]);
    /// # Ok(()) }
    /// ```
    pub fn map_anonymous_at(&self, addr: usize, len: usize) -> Result<Region, MapAtError> {
        let ps = sys::base_page_size();
        if len == 0 {
            return Err(MapError::ZeroLength.into());
        }
        if addr == 0 {
            return Err(MapAtError::NullAddress);
        }
        for (what, value) in [("address", addr), ("length", len)] {
            if value % ps != 0 {
                return Err(MapError::Unaligned {
                    what,
                    value,
                    page_size: ps,
                }
                .into());
            }
        }
        if addr.checked_add(len).is_none() {
            return Err(MapError::Overflow { start: addr, len }.into());
        }
        if let Some(u) = self.unavailable() {
            return Err(MapError::Unavailable(u).into());
        }
        let map = sys::Mapping::anonymous_at(addr, len).map_err(|errno| match errno {
            Errno::EEXIST => MapAtError::AddressTaken { addr, len },
            Errno::ENOTSUP => MapAtError::NotHonoured,
            errno => MapAtError::Map(MapError::Sys {
                op: "mmap(MAP_FIXED_NOREPLACE)",
                errno: errno.public(),
                hint: (errno == Errno::ENOMEM).then_some(
                    "not enough address space or memory, or the range is past the process's address space limit",
                ),
            }),
        })?;
        let inner = self.new_inner(map, ps, RegionKind::Anonymous);
        let region = self.register(inner, false)?;
        tracing::debug!(
            addr = format_args!("{addr:#x}"),
            len,
            "mapped at a fixed address"
        );
        Ok(region)
    }
}
