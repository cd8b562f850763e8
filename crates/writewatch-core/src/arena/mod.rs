//! A bump allocator whose memory is a tracked region: data structures built in it are
//! checkpointed with the region, snapshotted, rolled back, and restored at the same address
//! ([`Tracker::map_anonymous_at`](crate::Tracker::map_anonymous_at)).
//!
//! Layout (all in the region, so a checkpoint carries it):
//!
//! ```text
//! offset 0   magic "wwarena1" (u64)
//!        8   capacity: the region's length when the arena was created
//!       16   bump: offset of the first free byte
//!       24   root: offset of the application's root value (0 = none)
//!       32.. reserved; data starts at offset 64
//! ```
//!
//! Values are addressed by offset ([`Handle`], [`SliceHandle`]), never by reference: they are
//! copied in and out with atomic word accesses ([`Region::read_at`] / [`Region::write_at`]),
//! so the arena is safe to share between threads, and a handle stays meaningful in a restored
//! copy of the region (wherever it is mapped).

use std::sync::atomic::{AtomicU64, Ordering};

use bytemuck::Pod;

use crate::error::Invalidation;
use crate::region::Region;
use crate::typed::{read_bytes, write_bytes};

mod handle;

pub use handle::{Handle, SliceHandle};

const MAGIC: u64 = u64::from_le_bytes(*b"wwarena1");
const W_MAGIC: usize = 0;
const W_CAPACITY: usize = 1;
const W_BUMP: usize = 2;
const W_ROOT: usize = 3;
/// Offset of the first allocation.
const DATA_START: u64 = 64;

/// Errors of [`Arena`] operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArenaError {
    /// The arena has no room for the allocation.
    #[error(
        "the arena is full: {requested} bytes (alignment {align}) requested, {available} of \
         {capacity} free; map a larger region for it"
    )]
    Full {
        /// Bytes requested.
        requested: u64,
        /// Their alignment.
        align: u64,
        /// Bytes left.
        available: u64,
        /// The arena's capacity.
        capacity: u64,
    },
    /// The size of a slice allocation overflows.
    #[error("a slice of {len} elements of {elem_size} bytes does not fit in the address space")]
    TooLarge {
        /// Elements requested.
        len: u64,
        /// Size of one element.
        elem_size: usize,
    },
    /// A handle (or index) does not denote allocated memory of this arena.
    #[error(
        "a handle to {len} bytes at offset {offset:#x} is outside the arena's allocated memory \
         ({DATA_START:#x}..{allocated:#x}): use handles this arena returned, and indices below \
         the slice's length"
    )]
    BadHandle {
        /// The handle's offset.
        offset: u64,
        /// Bytes it spans.
        len: u64,
        /// End of the allocated memory.
        allocated: u64,
    },
    /// The region is too small to hold an arena's header.
    #[error("a {len}-byte region cannot hold an arena (it needs at least one page)")]
    RegionTooSmall {
        /// The region's length.
        len: usize,
    },
    /// [`Arena::open`]: the region does not hold an arena.
    #[error(
        "the region does not hold an arena (magic {found:#018x}): create one with Arena::new, or \
         restore the arena's pages into the region first"
    )]
    NotAnArena {
        /// The first word found.
        found: u64,
    },
    /// [`Arena::open`]: the header is inconsistent (overwritten?).
    #[error(
        "the arena header is corrupt: capacity {capacity:#x}, bump {bump:#x}, region length \
         {region_len:#x}; was the region restored at a different length, or its first page \
         overwritten?"
    )]
    Corrupt {
        /// Capacity recorded in the header.
        capacity: u64,
        /// Bump offset recorded in the header.
        bump: u64,
        /// The region's length.
        region_len: usize,
    },
    /// The region was unmapped or moved by the application.
    #[error("the arena's region is no longer tracked: {0}")]
    Invalidated(Invalidation),
}

/// A bump allocator in a tracked [`Region`]: data structures built in it are checkpointed
/// with the region, snapshotted, rolled back, and restored at the same address
/// ([`Tracker::map_anonymous_at`](crate::Tracker::map_anonymous_at)).
///
/// Its header lives in the region's first page, so a checkpoint carries it:
///
/// ```text
/// offset 0   magic "wwarena1" (u64)
///        8   capacity: the region's length when the arena was created
///       16   bump: offset of the first free byte
///       24   root: offset of the application's root value (0 = none)
///       32.. reserved; data starts at offset 64
/// ```
///
/// Values are addressed by offset ([`Handle`], [`SliceHandle`]), never by reference: they are
/// copied in and out with atomic word accesses ([`Region::read_at`] / [`Region::write_at`]),
/// so the arena is safe to share between threads, and a handle stays meaningful in a restored
/// copy of the region.
///
/// Allocation is lock-free (a compare-and-swap on the bump offset) and nothing is ever freed
/// individually: [`reset`](Self::reset) empties the arena, and a snapshot rollback restores it
/// (header included) to the snapshot's state.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use writewatch_core::{Arena, Tracker};
/// let tracker = Tracker::builder().build()?;
/// let arena = Arena::new(tracker.map_anonymous(16 * 4096)?)?;
/// let counter = arena.alloc(0u64)?;
/// let table = arena.alloc_slice(&[0u32; 100])?;
/// let snap = arena.region().snapshot()?;
/// arena.set(counter, 7)?;
/// arena.set_at(table, 99, 1)?;
/// let extra = arena.alloc([1u8; 16])?;
/// arena.region().rollback(&snap)?;           // data *and* bump offset as at the snapshot
/// assert_eq!(arena.get(counter)?, 0);
/// assert_eq!(arena.get_at(table, 99)?, 0);
/// assert!(arena.get(extra).is_err());        // allocated after the snapshot: gone
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Arena {
    region: Region,
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    Some(v.checked_add(a - 1)? & !(a - 1))
}

impl Arena {
    /// Creates an empty arena in `region`, overwriting its header (the first 64 bytes).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tracker = writewatch_core::Tracker::builder().build()?;
    /// let arena = writewatch_core::Arena::new(tracker.map_anonymous(8192)?)?;
    /// assert_eq!(arena.capacity(), 8192);
    /// assert_eq!(arena.used(), 64); // the header
    /// # Ok(()) }
    /// ```
    pub fn new(region: Region) -> Result<Arena, ArenaError> {
        if region.len() < 4096 || (region.len() as u64) < DATA_START {
            return Err(ArenaError::RegionTooSmall { len: region.len() });
        }
        if let Some(why) = region.invalidation() {
            return Err(ArenaError::Invalidated(why));
        }
        let w = region.as_atomic_u64();
        w[W_CAPACITY].store(region.len() as u64, Ordering::SeqCst);
        w[W_BUMP].store(DATA_START, Ordering::SeqCst);
        w[W_ROOT].store(0, Ordering::SeqCst);
        w[W_MAGIC].store(MAGIC, Ordering::SeqCst);
        Ok(Arena { region })
    }

    /// Opens the arena a region already holds (restored from a checkpoint or snapshot),
    /// checking its header.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use writewatch_core::{Arena, ArenaError, Tracker};
    /// let tracker = Tracker::builder().build()?;
    /// let arena = Arena::new(tracker.map_anonymous(8192)?)?;
    /// let h = arena.alloc(99u64)?;
    /// let arena = Arena::open(arena.into_region())?;
    /// assert_eq!(arena.get(h)?, 99);
    /// let blank = tracker.map_anonymous(8192)?;
    /// assert!(matches!(Arena::open(blank), Err(ArenaError::NotAnArena { found: 0 })));
    /// # Ok(()) }
    /// ```
    pub fn open(region: Region) -> Result<Arena, ArenaError> {
        if region.len() < 4096 {
            return Err(ArenaError::RegionTooSmall { len: region.len() });
        }
        if let Some(why) = region.invalidation() {
            return Err(ArenaError::Invalidated(why));
        }
        let w = region.as_atomic_u64();
        let found = w[W_MAGIC].load(Ordering::SeqCst);
        if found != MAGIC {
            return Err(ArenaError::NotAnArena { found });
        }
        let capacity = w[W_CAPACITY].load(Ordering::SeqCst);
        let bump = w[W_BUMP].load(Ordering::SeqCst);
        if capacity != region.len() as u64 || bump < DATA_START || bump > capacity {
            return Err(ArenaError::Corrupt {
                capacity,
                bump,
                region_len: region.len(),
            });
        }
        Ok(Arena { region })
    }

    /// The region holding the arena (for cuts, snapshots, rollback, checkpoints).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tracker = writewatch_core::Tracker::builder().build()?;
    /// let arena = writewatch_core::Arena::new(tracker.map_anonymous(8192)?)?;
    /// assert_eq!(arena.region().len(), 8192);
    /// # Ok(()) }
    /// ```
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Gives the region back.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tracker = writewatch_core::Tracker::builder().build()?;
    /// let arena = writewatch_core::Arena::new(tracker.map_anonymous(8192)?)?;
    /// let region = arena.into_region();
    /// assert_eq!(region.len(), 8192);
    /// # Ok(()) }
    /// ```
    pub fn into_region(self) -> Region {
        self.region
    }

    fn words(&self) -> &[AtomicU64] {
        self.region.as_atomic_u64()
    }

    /// Capacity in bytes (the region's length; the header takes the first 64).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tracker = writewatch_core::Tracker::builder().build()?;
    /// let arena = writewatch_core::Arena::new(tracker.map_anonymous(4096)?)?;
    /// assert_eq!(arena.capacity(), 4096);
    /// # Ok(()) }
    /// ```
    pub fn capacity(&self) -> u64 {
        self.region.len() as u64
    }

    /// Bytes in use, header included. The bump offset lives in tracked memory; if something
    /// overwrote it with a value past the capacity, this reports the capacity.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tracker = writewatch_core::Tracker::builder().build()?;
    /// let arena = writewatch_core::Arena::new(tracker.map_anonymous(4096)?)?;
    /// arena.alloc(1u64)?;
    /// assert_eq!(arena.used(), 72);
    /// # Ok(()) }
    /// ```
    pub fn used(&self) -> u64 {
        self.bump().min(self.capacity())
    }

    fn bump(&self) -> u64 {
        self.words()[W_BUMP].load(Ordering::Acquire)
    }

    /// Empties the arena: every handle becomes invalid (their memory keeps its bytes until
    /// reallocated and overwritten).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tracker = writewatch_core::Tracker::builder().build()?;
    /// let arena = writewatch_core::Arena::new(tracker.map_anonymous(4096)?)?;
    /// let h = arena.alloc(1u64)?;
    /// arena.reset();
    /// assert!(arena.get(h).is_err());
    /// # Ok(()) }
    /// ```
    pub fn reset(&self) {
        self.words()[W_ROOT].store(0, Ordering::Release);
        self.words()[W_BUMP].store(DATA_START, Ordering::Release);
    }

    /// Reserves `size` bytes aligned to `align` (a power of two); returns their offset.
    fn reserve(&self, size: u64, align: u64) -> Result<u64, ArenaError> {
        let align = align.max(8);
        let capacity = self.capacity();
        let bump = &self.words()[W_BUMP];
        let mut cur = bump.load(Ordering::Acquire);
        loop {
            let full = |cur: u64| ArenaError::Full {
                requested: size,
                align,
                available: capacity.saturating_sub(cur),
                capacity,
            };
            let start = align_up(cur.max(DATA_START), align).ok_or_else(|| full(cur))?;
            // Each allocation owns whole words: nothing else shares a word with it.
            let end = start
                .checked_add(size)
                .and_then(|e| align_up(e, 8))
                .filter(|&e| e <= capacity)
                .ok_or_else(|| full(cur))?;
            match bump.compare_exchange_weak(cur, end, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(start),
                Err(now) => cur = now,
            }
        }
    }

    /// Checks that `[offset, offset+len)` lies in allocated memory.
    fn check(&self, offset: u64, len: u64) -> Result<usize, ArenaError> {
        if let Some(why) = self.region.invalidation() {
            return Err(ArenaError::Invalidated(why));
        }
        let allocated = self.used();
        match offset.checked_add(len) {
            Some(end) if offset >= DATA_START && end <= allocated => Ok(offset as usize),
            _ => Err(ArenaError::BadHandle {
                offset,
                len,
                allocated,
            }),
        }
    }

    /// Allocates a `T` initialised to `value`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use writewatch_core::{Arena, ArenaError, Tracker};
    /// let arena = Arena::new(Tracker::builder().build()?.map_anonymous(4096)?)?;
    /// let h = arena.alloc([1u64, 2, 3])?;
    /// assert_eq!(arena.get(h)?, [1, 2, 3]);
    /// assert!(matches!(arena.alloc([0u8; 8192]), Err(ArenaError::Full { .. })));
    /// # Ok(()) }
    /// ```
    pub fn alloc<T: Pod>(&self, value: T) -> Result<Handle<T>, ArenaError> {
        let off = self.reserve(
            std::mem::size_of::<T>() as u64,
            std::mem::align_of::<T>() as u64,
        )?;
        write_bytes(self.words(), off as usize, bytemuck::bytes_of(&value));
        Ok(Handle::from_offset(off))
    }

    /// Allocates a `[T]` initialised from `values`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let arena = writewatch_core::Arena::new(
    ///     writewatch_core::Tracker::builder().build()?.map_anonymous(4096)?)?;
    /// let s = arena.alloc_slice(&[10i32, -20, 30])?;
    /// let mut out = [0i32; 3];
    /// arena.read_slice(s, &mut out)?;
    /// assert_eq!(out, [10, -20, 30]);
    /// # Ok(()) }
    /// ```
    pub fn alloc_slice<T: Pod>(&self, values: &[T]) -> Result<SliceHandle<T>, ArenaError> {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let off = self.reserve(bytes.len() as u64, std::mem::align_of::<T>() as u64)?;
        write_bytes(self.words(), off as usize, bytes);
        Ok(SliceHandle::from_raw(off, values.len() as u64))
    }

    /// Allocates `len` elements of `T`, all bytes zero. Words already zero are not written
    /// (a large fresh table dirties no page until used).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let arena = writewatch_core::Arena::new(
    ///     writewatch_core::Tracker::builder().build()?.map_anonymous(64 * 4096)?)?;
    /// let table = arena.alloc_zeroed_slice::<[u64; 2]>(10_000)?;
    /// assert_eq!(arena.get_at(table, 9_999)?, [0, 0]);
    /// # Ok(()) }
    /// ```
    pub fn alloc_zeroed_slice<T: Pod>(&self, len: u64) -> Result<SliceHandle<T>, ArenaError> {
        let elem_size = std::mem::size_of::<T>();
        let size = len
            .checked_mul(elem_size as u64)
            .ok_or(ArenaError::TooLarge { len, elem_size })?;
        let off = self.reserve(size, std::mem::align_of::<T>() as u64)?;
        let words = self.words();
        let first = off as usize / 8;
        let count = (size as usize).div_ceil(8);
        for w in words.get(first..first + count).unwrap_or(&[]) {
            if w.load(Ordering::Relaxed) != 0 {
                w.store(0, Ordering::Release);
            }
        }
        Ok(SliceHandle::from_raw(off, len))
    }

    /// Reads the value behind `h`.
    ///
    /// Each 8-byte word is read atomically; a larger value written concurrently by another
    /// thread may be read half old, half new (see [`Region::read_at`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let arena = writewatch_core::Arena::new(
    ///     writewatch_core::Tracker::builder().build()?.map_anonymous(4096)?)?;
    /// let h = arena.alloc(3.5f32)?;
    /// assert_eq!(arena.get(h)?, 3.5);
    /// # Ok(()) }
    /// ```
    pub fn get<T: Pod>(&self, h: Handle<T>) -> Result<T, ArenaError> {
        let off = self.check(h.offset, std::mem::size_of::<T>() as u64)?;
        let mut v = T::zeroed();
        read_bytes(self.words(), off, bytemuck::bytes_of_mut(&mut v));
        Ok(v)
    }

    /// Overwrites the value behind `h` (only the words that change are written).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let arena = writewatch_core::Arena::new(
    ///     writewatch_core::Tracker::builder().build()?.map_anonymous(4096)?)?;
    /// let h = arena.alloc(1u8)?;
    /// arena.set(h, 2)?;
    /// assert_eq!(arena.get(h)?, 2);
    /// # Ok(()) }
    /// ```
    pub fn set<T: Pod>(&self, h: Handle<T>, value: T) -> Result<(), ArenaError> {
        let off = self.check(h.offset, std::mem::size_of::<T>() as u64)?;
        write_bytes(self.words(), off, bytemuck::bytes_of(&value));
        Ok(())
    }

    fn elem(&self, offset: u64, len: u64, i: u64, size: usize) -> Result<usize, ArenaError> {
        let size = size as u64;
        if i >= len {
            return Err(ArenaError::BadHandle {
                offset: offset.saturating_add(i.saturating_mul(size)),
                len: size,
                allocated: self.used(),
            });
        }
        let total = len.checked_mul(size).ok_or(ArenaError::TooLarge {
            len,
            elem_size: size as usize,
        })?;
        self.check(offset, total)?;
        Ok((offset + i * size) as usize)
    }

    /// Reads element `i` of the slice behind `h`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let arena = writewatch_core::Arena::new(
    ///     writewatch_core::Tracker::builder().build()?.map_anonymous(4096)?)?;
    /// let s = arena.alloc_slice(&[5u8, 6, 7])?;
    /// assert_eq!(arena.get_at(s, 1)?, 6);
    /// assert!(arena.get_at(s, 3).is_err());
    /// # Ok(()) }
    /// ```
    pub fn get_at<T: Pod>(&self, h: SliceHandle<T>, i: u64) -> Result<T, ArenaError> {
        let off = self.elem(h.offset, h.len, i, std::mem::size_of::<T>())?;
        let mut v = T::zeroed();
        read_bytes(self.words(), off, bytemuck::bytes_of_mut(&mut v));
        Ok(v)
    }

    /// Overwrites element `i` of the slice behind `h`. Elements smaller than 8 bytes share
    /// words with their neighbours; those words are updated with compare-and-swap, so
    /// concurrent writes to neighbouring elements are not lost.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let arena = writewatch_core::Arena::new(
    ///     writewatch_core::Tracker::builder().build()?.map_anonymous(4096)?)?;
    /// let s = arena.alloc_slice(&[0u16; 4])?;
    /// arena.set_at(s, 2, 0xBEEF)?;
    /// let mut out = [0u16; 4];
    /// arena.read_slice(s, &mut out)?;
    /// assert_eq!(out, [0, 0, 0xBEEF, 0]);
    /// # Ok(()) }
    /// ```
    pub fn set_at<T: Pod>(&self, h: SliceHandle<T>, i: u64, value: T) -> Result<(), ArenaError> {
        let off = self.elem(h.offset, h.len, i, std::mem::size_of::<T>())?;
        write_bytes(self.words(), off, bytemuck::bytes_of(&value));
        Ok(())
    }

    /// Copies the whole slice behind `h` into `out` (`out.len()` must equal `h.len()`).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let arena = writewatch_core::Arena::new(
    ///     writewatch_core::Tracker::builder().build()?.map_anonymous(4096)?)?;
    /// let s = arena.alloc_slice(&[1u64, 2])?;
    /// let mut out = [0u64; 2];
    /// arena.read_slice(s, &mut out)?;
    /// assert_eq!(out, [1, 2]);
    /// assert!(arena.read_slice(s, &mut [0u64; 3]).is_err());
    /// # Ok(()) }
    /// ```
    pub fn read_slice<T: Pod>(&self, h: SliceHandle<T>, out: &mut [T]) -> Result<(), ArenaError> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(out);
        let total =
            h.len
                .checked_mul(std::mem::size_of::<T>() as u64)
                .ok_or(ArenaError::TooLarge {
                    len: h.len,
                    elem_size: std::mem::size_of::<T>(),
                })?;
        if total != bytes.len() as u64 {
            return Err(ArenaError::BadHandle {
                offset: h.offset,
                len: bytes.len() as u64,
                allocated: self.used(),
            });
        }
        let off = self.check(h.offset, total)?;
        read_bytes(self.words(), off, bytes);
        Ok(())
    }

    /// Records `h` as the arena's root: the value a program looks up first after restoring
    /// the arena ([`root`](Self::root)).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let arena = writewatch_core::Arena::new(
    ///     writewatch_core::Tracker::builder().build()?.map_anonymous(4096)?)?;
    /// assert_eq!(arena.root::<u64>(), None);
    /// let h = arena.alloc(1u64)?;
    /// arena.set_root(h);
    /// assert_eq!(arena.root::<u64>(), Some(h));
    /// # Ok(()) }
    /// ```
    pub fn set_root<T>(&self, h: Handle<T>) {
        self.words()[W_ROOT].store(h.offset, Ordering::Release);
    }

    /// The root recorded by [`set_root`](Self::set_root), as a handle to `T` (the caller
    /// names the type; accesses are checked against the arena's bounds).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let arena = writewatch_core::Arena::new(
    ///     writewatch_core::Tracker::builder().build()?.map_anonymous(4096)?)?;
    /// arena.set_root(arena.alloc(9u32)?);
    /// assert_eq!(arena.get(arena.root::<u32>().unwrap())?, 9);
    /// # Ok(()) }
    /// ```
    pub fn root<T>(&self) -> Option<Handle<T>> {
        match self.words()[W_ROOT].load(Ordering::Acquire) {
            0 => None,
            off => Some(Handle::from_offset(off)),
        }
    }
}
