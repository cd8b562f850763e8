//! An owned mapping (private anonymous, or of a file / memfd), unmapped on drop.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

use crate::{sys, PAGE_SIZE};

/// A mapping (private anonymous unless made by [`file`](Self::file) or
/// [`memfd_shared`](Self::memfd_shared)) owned by this value and unmapped when it is dropped.
///
/// Access through the safe API is atomic (shared `&self` writes from many threads are
/// sound); [`as_ptr`](Self::as_ptr) hands the address to code that needs it raw (adopting
/// it into a tracker, `mprotect`...), which is then the caller's `unsafe` business.
/// [`into_raw`](Self::into_raw) gives up ownership (the caller unmaps).
#[derive(Debug)]
pub struct Mmap {
    ptr: *mut u8,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain memory owned by the value; the safe API only accesses it
// with atomics.
unsafe impl Send for Mmap {}
// SAFETY: as above.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// A fresh read-write mapping of `len` bytes; panics if the kernel refuses.
    pub fn new(len: usize) -> Mmap {
        Mmap::with_prot(len, libc::PROT_READ | libc::PROT_WRITE)
    }

    /// A fresh mapping of `len` bytes with protection `prot` (`libc::PROT_*`).
    pub fn with_prot(len: usize, prot: libc::c_int) -> Mmap {
        let ptr = sys::map_anonymous(len, prot);
        let readable = prot & libc::PROT_READ != 0;
        let writable = readable && prot & libc::PROT_WRITE != 0;
        Mmap { ptr, len, writable }
    }

    /// A read-write mapping with transparent huge pages off (`MADV_NOHUGEPAGE`), as the
    /// benches use.
    pub fn no_thp(len: usize) -> Mmap {
        let m = Mmap::new(len);
        sys::no_huge_pages(m.ptr, m.len);
        m
    }

    /// A [`no_thp`](Self::no_thp) mapping with one byte written to every page (all pages
    /// resident).
    pub fn populated(len: usize) -> Mmap {
        let m = Mmap::no_thp(len);
        m.touch_all();
        m
    }

    /// A new memfd of `len` bytes and a read-write `MAP_SHARED` mapping of it (the memfd is
    /// returned so the caller can `fallocate`, map it again, or keep it open).
    pub fn memfd_shared(len: usize) -> (OwnedFd, Mmap) {
        let fd = sys::memfd(c"writewatch-testkit", len);
        let m = Mmap::file(fd.as_fd(), len, true);
        (fd, m)
    }

    /// `len` bytes of `fd` (a file or memfd open read-write, at least `len` long; from offset
    /// 0) mapped read-write: `shared` = `MAP_SHARED` (writes reach the file), otherwise
    /// `MAP_PRIVATE` (the first write to a page copies it). Panics if the kernel refuses.
    pub fn file(fd: impl AsFd, len: usize, shared: bool) -> Mmap {
        let ptr = sys::map_file(fd.as_fd(), len, shared);
        Mmap {
            ptr,
            len,
            writable: true,
        }
    }

    /// The first byte of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: `mmap` refuses 0 bytes).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of whole pages.
    pub fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    /// The mapping as atomic words (panics unless it was mapped read-write).
    pub fn as_atomic_u64(&self) -> &[AtomicU64] {
        assert!(self.writable, "Mmap: not mapped read-write");
        // SAFETY: `len / 8` aligned words of our live mapping, only accessed atomically
        // through this API, for no longer than `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<AtomicU64>(), self.len / 8) }
    }

    /// Writes 1 to the first byte of every page.
    pub fn touch_all(&self) {
        assert!(self.writable, "Mmap: not mapped read-write");
        // SAFETY: as in `as_atomic_u64`, bytewise.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr.cast::<AtomicU8>(), self.len) };
        for p in 0..self.pages() {
            bytes[p * PAGE_SIZE].store(1, Relaxed);
        }
    }

    /// One 8-byte store into page `p` (at offset 8, as the C reference programs do).
    #[inline(always)]
    pub fn write_page(&self, p: usize, v: u64) {
        self.as_atomic_u64()[p * (PAGE_SIZE / 8) + 1].store(v, Relaxed);
    }

    /// Gives up ownership: returns the address; the caller unmaps the `len` bytes.
    pub fn into_raw(self) -> *mut u8 {
        let p = self.ptr;
        std::mem::forget(self);
        p
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        sys::unmap(self.ptr, self.len);
    }
}
