//! [`Handle`] and [`SliceHandle`]: the offsets by which arena values are addressed (plain data,
//! meaningful in a restored copy of the region wherever it is mapped).

use std::marker::PhantomData;

/// The offset of one `T` in an [`Arena`](super::Arena). Plain data: store [`offset`](Self::offset) inside
/// other arena values to link them, and rebuild the handle with
/// [`from_offset`](Self::from_offset) (every access checks it against the arena's bounds).
pub struct Handle<T> {
    pub(super) offset: u64,
    pub(super) _t: PhantomData<fn() -> T>,
}

/// The offset and length of a `[T]` in an [`Arena`](super::Arena); see [`Handle`].
pub struct SliceHandle<T> {
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) _t: PhantomData<fn() -> T>,
}

macro_rules! plain {
    ($t:ident) => {
        impl<T> Clone for $t<T> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<T> Copy for $t<T> {}
        impl<T> PartialEq for $t<T> {
            fn eq(&self, o: &Self) -> bool {
                self.raw() == o.raw()
            }
        }
        impl<T> Eq for $t<T> {}
        impl<T> std::hash::Hash for $t<T> {
            fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
                self.raw().hash(h)
            }
        }
        impl<T> std::fmt::Debug for $t<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "{}<{}>{:?}",
                    stringify!($t),
                    std::any::type_name::<T>(),
                    self.raw()
                )
            }
        }
    };
}
plain!(Handle);
plain!(SliceHandle);

impl<T> Handle<T> {
    pub(super) fn raw(&self) -> (u64, u64) {
        (self.offset, 1)
    }

    /// The byte offset in the arena's region.
    ///
    /// ```
    /// use writewatch_core::Handle;
    /// assert_eq!(Handle::<u64>::from_offset(128).offset(), 128);
    /// ```
    pub fn offset(self) -> u64 {
        self.offset
    }

    /// A handle from an offset (e.g. one stored in the arena). Accesses through it are
    /// checked: an offset outside the allocated memory is an [`ArenaError::BadHandle`](crate::ArenaError::BadHandle).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use writewatch_core::{Arena, Handle, Tracker};
    /// let arena = Arena::new(Tracker::builder().build()?.map_anonymous(4096)?)?;
    /// let h = arena.alloc(5u32)?;
    /// assert_eq!(arena.get(Handle::<u32>::from_offset(h.offset()))?, 5);
    /// assert!(arena.get(Handle::<u32>::from_offset(1 << 20)).is_err());
    /// # Ok(()) }
    /// ```
    pub fn from_offset(offset: u64) -> Self {
        Self {
            offset,
            _t: PhantomData,
        }
    }
}

impl<T> SliceHandle<T> {
    pub(super) fn raw(&self) -> (u64, u64) {
        (self.offset, self.len)
    }

    /// The byte offset of element 0 in the arena's region.
    ///
    /// ```
    /// use writewatch_core::SliceHandle;
    /// assert_eq!(SliceHandle::<u8>::from_raw(64, 3).offset(), 64);
    /// ```
    pub fn offset(self) -> u64 {
        self.offset
    }

    /// Number of elements.
    ///
    /// ```
    /// use writewatch_core::SliceHandle;
    /// assert_eq!(SliceHandle::<u8>::from_raw(64, 3).len(), 3);
    /// ```
    pub fn len(self) -> u64 {
        self.len
    }

    /// Whether the slice has no elements.
    ///
    /// ```
    /// use writewatch_core::SliceHandle;
    /// assert!(SliceHandle::<u8>::from_raw(64, 0).is_empty());
    /// ```
    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// A slice handle from its offset and length (e.g. stored in the arena); checked on use.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use writewatch_core::{Arena, SliceHandle, Tracker};
    /// let arena = Arena::new(Tracker::builder().build()?.map_anonymous(4096)?)?;
    /// let s = arena.alloc_slice(&[1u16, 2, 3])?;
    /// let again = SliceHandle::<u16>::from_raw(s.offset(), s.len());
    /// assert_eq!(arena.get_at(again, 2)?, 3);
    /// # Ok(()) }
    /// ```
    pub fn from_raw(offset: u64, len: u64) -> Self {
        Self {
            offset,
            len,
            _t: PhantomData,
        }
    }
}
