//! The only module of `writewatch-core` that contains `unsafe` code: the single module to edit
//! if writewatch is ever ported (another OS, another architecture).
//!
//! Everything here is a thin, documented wrapper over one system call or one raw-memory
//! operation. The rest of the crate is `#![forbid(unsafe_code)]`-clean by construction:
//! `lib.rs` denies `unsafe_code` in every other module.
//!
//! | file | what |
//! |---|---|
//! | `mman.rs` | mappings (`Mapping`), `mmap` / `munmap` / `madvise` / `mprotect`, memfd |
//! | `uffd.rs` | opening and handshaking a userfaultfd; `UffdRef` for the `SIGBUS` handler |
//! | `pagemap.rs` | the `PAGEMAP_SCAN` ioctl and `/proc/self/pagemap` probes |
//! | `signals.rs` | what both signal handlers share: install, chain, grace period |
//! | `segv.rs` | the mprotect backend's `SIGSEGV` handler and slot table |
//! | `sigbus.rs` | the in-thread (`UFFD_FEATURE_SIGBUS`) handler, its slot table and RCU list |
//!
//! Kernel ABI values come from `linux-raw-sys` (the `userfaultfd` crate's bindgen bindings are
//! generated from the build machine's headers, which may predate `UFFD_FEATURE_WP_UNPOPULATED`
//! or `PAGEMAP_SCAN`). The few values that `linux-raw-sys` does not export as constants are
//! derived from its structs with `nix`'s ioctl-number macros, never typed in by hand.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr::NonNull;

use linux_raw_sys::general as k;
use nix::errno::Errno;

mod mman;
mod pagemap;
mod signals;
mod uffd;

pub(crate) mod segv;
pub(crate) mod sigbus;

pub(crate) use mman::{hugetlbfs_devs, madvise_nondestructive, mprotect, Atomic8, Mapping};
pub(crate) use pagemap::{
    pagemap_scan, pm, soft_dirty_probe, PageRegion, ScanArgs, EMPTY_PAGE_REGION,
};
pub(crate) use uffd::{
    copy_zero_pages_counted, install_page, uffd_from_fd, uffdio_api, userfaultfd_dev,
    userfaultfd_syscall, zeropage, UffdRef,
};

// Compile-time checks: the ABI this crate relies on, cross-checked between linux-raw-sys and the
// values the `userfaultfd` crate was built with (which come from the build machine's headers).
const _: () = {
    assert!(k::UFFD_FEATURE_WP_ASYNC == 1 << 15);
    assert!(k::UFFD_FEATURE_WP_UNPOPULATED == 1 << 13);
    assert!(
        k::UFFD_FEATURE_PAGEFAULT_FLAG_WP as u64
            == userfaultfd::FeatureFlags::PAGEFAULT_FLAG_WP.bits()
    );
    assert!(k::UFFD_FEATURE_THREAD_ID as u64 == userfaultfd::FeatureFlags::THREAD_ID.bits());
    assert!(k::UFFD_FEATURE_EVENT_REMOVE as u64 == userfaultfd::FeatureFlags::EVENT_REMOVE.bits());
    assert!(k::UFFD_FEATURE_EVENT_UNMAP as u64 == userfaultfd::FeatureFlags::EVENT_UNMAP.bits());
    assert!(k::UFFD_FEATURE_EVENT_REMAP as u64 == userfaultfd::FeatureFlags::EVENT_REMAP.bits());
    assert!(k::UFFD_FEATURE_SIGBUS as u64 == userfaultfd::FeatureFlags::SIGBUS.bits());
    assert!(std::mem::size_of::<k::pm_scan_arg>() == 96);
    assert!(std::mem::size_of::<k::page_region>() == 24);
};

/// The errno inside a `userfaultfd` crate error (the crate uses an older `nix`).
pub(crate) fn errno_of(e: &userfaultfd::Error) -> Errno {
    match e {
        userfaultfd::Error::SystemError(e)
        | userfaultfd::Error::ZeropageFailed(e)
        | userfaultfd::Error::CopyFailed(e) => Errno::from_raw(*e as i32),
        _ => Errno::EIO,
    }
}
/// The system's base page size.
pub(crate) fn base_page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v <= 0 {
        4096
    } else {
        v as usize
    }
}

/// The stack `[low, high)` of the calling thread.
pub(crate) fn current_thread_stack() -> Option<(usize, usize)> {
    // SAFETY: pthread_self has no preconditions.
    thread_stack(unsafe { libc::pthread_self() })
}

/// The stack `[low, high)` of a live thread (`pthread_getattr_np`). `None` if the C library
/// cannot say.
pub(crate) fn thread_stack(t: libc::pthread_t) -> Option<(usize, usize)> {
    // SAFETY: a zeroed pthread_attr_t is a valid out-parameter for pthread_getattr_np, which
    // initialises it; we destroy it only after a successful init. `t` is a live thread (the
    // caller holds its JoinHandle or is the thread): pthread_getattr_np only reads its
    // descriptor.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(t, &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let r = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (r == 0 && !addr.is_null()).then(|| (addr as usize, addr as usize + size))
    }
}

/// Reads one byte of every `step` bytes of `[ptr, ptr+len)`, mapping each page (the zero page
/// for untouched anonymous memory). Reads never raise write-protect faults, so the service
/// thread may call this on tracked memory.
pub(crate) fn touch_read(ptr: *const u8, len: usize, step: usize) {
    let mut off = 0;
    while off < len {
        // SAFETY: the caller passes a range of a mapped, readable region; a volatile read of
        // one byte has no other effect than mapping the page.
        unsafe { std::ptr::read_volatile(ptr.add(off)) };
        off += step;
    }
}

/// A raw pointer that may be sent to the service thread. It is only ever used as an address
/// (for ioctls and `/proc` lookups), never dereferenced by the service thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Addr(pub usize);

impl Addr {
    pub(crate) fn ptr(self) -> *mut c_void {
        self.0 as *mut c_void
    }
}

/// At or above this many bytes, [`zeroed_atomics`] maps its own memory.
const OWN_MAPPING_BYTES: usize = 256 << 10;

/// `n` zeroed atomics (`AtomicU8`, `AtomicU64`...) that cost nothing until touched: a large
/// array is a private anonymous mapping of its own, whose untouched pages are the kernel's
/// zero page (a snapshot view of a huge sparse region costs nothing for its untouched
/// pages). The allocator cannot promise that: glibc raises its mmap threshold after a large
/// block is freed, and its next `calloc` of that size comes from the heap and is cleared with
/// `memset`, which makes every page resident. Small arrays come from the allocator.
pub(crate) fn zeroed_atomics<T: bytemuck::Zeroable>(n: usize) -> ZeroedSlice<T> {
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    if bytes >= OWN_MAPPING_BYTES {
        if let Ok(ptr) = mman::mmap_anonymous(bytes, 0) {
            return ZeroedSlice {
                ptr: ptr.cast(),
                len: n,
                mapped: true,
            };
        }
    }
    let b: Box<[T]> = bytemuck::allocation::try_zeroed_slice_box(n).unwrap_or_else(|()| {
        std::alloc::handle_alloc_error(
            std::alloc::Layout::array::<T>(n).unwrap_or(std::alloc::Layout::new::<T>()),
        )
    });
    let len = b.len();
    // `Box::into_raw` of a boxed slice is never null.
    let ptr = NonNull::new(Box::into_raw(b).cast::<T>()).unwrap_or(NonNull::dangling());
    ZeroedSlice {
        ptr,
        len,
        mapped: false,
    }
}

/// An owned slice of zero-initialised `T` (see [`zeroed_atomics`]).
///
/// Invariants: `ptr` points to `len` initialised `T` (zero is a valid `T`: `Zeroable`),
/// owned by this value alone; `mapped` says whether they live in a mapping of exactly
/// `len * size_of::<T>()` bytes (unmapped on drop) or in a `Box<[T]>` (freed as one).
pub(crate) struct ZeroedSlice<T> {
    ptr: NonNull<T>,
    len: usize,
    mapped: bool,
}

// SAFETY: the slice is owned (like a `Box<[T]>`): sending it is sound when `T` is Send.
unsafe impl<T: Send> Send for ZeroedSlice<T> {}
// SAFETY: shared access only hands out `&[T]`: sound when `T` is Sync, as for `Box<[T]>`.
unsafe impl<T: Sync> Sync for ZeroedSlice<T> {}

impl<T> std::ops::Deref for ZeroedSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: by the invariants, `ptr` points to `len` initialised `T` owned by `self`,
        // alive for as long as the borrow of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> std::fmt::Debug for ZeroedSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZeroedSlice")
            .field("len", &self.len)
            .field("mapped", &self.mapped)
            .finish()
    }
}

impl<T> Drop for ZeroedSlice<T> {
    fn drop(&mut self) {
        if self.mapped {
            let bytes = self.len * std::mem::size_of::<T>();
            // SAFETY: by the invariants the mapping is exactly `bytes` long at `ptr` and
            // owned by `self`; no borrow of it outlives `self` (`T` here never needs drop:
            // `Zeroable` atomics).
            let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast(), bytes) };
            if rc != 0 {
                tracing::warn!("munmap failed: {}", std::io::Error::last_os_error());
            }
        } else {
            // SAFETY: by the invariants `ptr`/`len` came from `Box::into_raw` of a boxed slice
            // of `len` elements, owned by `self` and not freed before.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.ptr.as_ptr(),
                    self.len,
                ))
            });
        }
    }
}
