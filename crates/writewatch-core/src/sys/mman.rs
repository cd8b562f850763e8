//! Mappings and their protection: `mmap`, `munmap`, `madvise`, `mprotect`, memfd, and the
//! tracked `Mapping` type.

use std::ffi::c_void;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use nix::errno::Errno;

use super::base_page_size;

/// The std atomic integer types that may view tracked memory: [`Mapping::atomic_view`]'s
/// bound, and the seal of the public `AtomicView` trait (a `pub` trait in a private module:
/// nothing outside this crate can implement it). `AtomicUsize` / `AtomicIsize` are 8 bytes
/// only on 64-bit targets; `atomic_view` checks the size at compile time.
pub trait Atomic8 {}
impl Atomic8 for AtomicU64 {}
impl Atomic8 for std::sync::atomic::AtomicI64 {}
impl Atomic8 for std::sync::atomic::AtomicUsize {}
impl Atomic8 for std::sync::atomic::AtomicIsize {}

/// Maps `len` bytes of private anonymous, read-write memory.
pub(crate) fn mmap_anonymous(len: usize, extra_flags: libc::c_int) -> Result<NonNull<u8>, Errno> {
    // SAFETY: a new mapping at an address chosen by the kernel cannot alias any existing Rust
    // object; a null hint with no MAP_FIXED never replaces existing mappings.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | extra_flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    NonNull::new(p.cast()).ok_or(Errno::EINVAL)
}

/// Maps `len` bytes of `fd` shared and read-write.
pub(crate) fn mmap_shared(fd: &OwnedFd, len: usize) -> Result<NonNull<u8>, Errno> {
    // SAFETY: as in `mmap_anonymous`; the fd is valid for the duration of the call.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    NonNull::new(p.cast()).ok_or(Errno::EINVAL)
}

/// Unmaps a mapping this crate created.
///
/// # Safety
/// `[ptr, ptr+len)` must be a mapping owned by the caller that no live reference points into.
pub(crate) unsafe fn munmap(ptr: *mut u8, len: usize) -> Result<(), Errno> {
    // SAFETY: guaranteed by the caller.
    Errno::result(unsafe { libc::munmap(ptr.cast(), len) }).map(drop)
}

/// `madvise(2)` with an advice that does not change memory contents (e.g. `MADV_NOHUGEPAGE`,
/// `MADV_POPULATE_READ`).
pub(crate) fn madvise_nondestructive(
    ptr: *mut u8,
    len: usize,
    advice: libc::c_int,
) -> Result<(), Errno> {
    debug_assert!(matches!(
        advice,
        libc::MADV_NOHUGEPAGE
            | libc::MADV_HUGEPAGE
            | libc::MADV_POPULATE_READ
            | libc::MADV_DONTFORK
            | libc::MADV_UNMERGEABLE
    ));
    // SAFETY: these advices never change the contents or validity of the range in this
    // process (MADV_DONTFORK only keeps the range out of future fork children;
    // MADV_UNMERGEABLE gives KSM-merged pages private copies of the same bytes), so no Rust
    // reference can observe a difference; the kernel validates the range itself.
    Errno::result(unsafe { libc::madvise(ptr.cast(), len, advice) }).map(drop)
}

/// Opens a memfd of `len` bytes.
pub(crate) fn memfd(name: &str, len: usize) -> Result<OwnedFd, Errno> {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    nix::unistd::ftruncate(&fd, len as libc::off_t)?;
    Ok(fd)
}

/// The device numbers (`st_dev`) of hugetlbfs on this system: its mounts (from
/// `/proc/self/mountinfo`) and the kernel's internal mounts that back `MFD_HUGETLB` memfds
/// (one per huge page size; probed by creating an empty memfd of each). A mapping listed in
/// `/proc/PID/maps` with one of these devices is hugetlb memory, whatever its name.
pub(crate) fn hugetlbfs_devs() -> Vec<u64> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let mut devs = Vec::new();
    let sizes = [0, libc::MFD_HUGE_2MB, libc::MFD_HUGE_1GB];
    for size in sizes {
        let flags = MFdFlags::MFD_CLOEXEC
            | MFdFlags::MFD_HUGETLB
            | MFdFlags::from_bits_retain(size as libc::c_uint);
        if let Ok(fd) = memfd_create("writewatch-hugetlb-probe", flags) {
            if let Ok(st) = nix::sys::stat::fstat(&fd) {
                devs.push(st.st_dev);
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            if right.split_whitespace().next() != Some("hugetlbfs") {
                continue;
            }
            let Some((ma, mi)) = left
                .split_whitespace()
                .nth(2)
                .and_then(|d| d.split_once(':'))
            else {
                continue;
            };
            if let (Ok(ma), Ok(mi)) = (ma.parse::<u32>(), mi.parse::<u32>()) {
                devs.push(libc::makedev(ma, mi));
            }
        }
    }
    devs.sort_unstable();
    devs.dedup();
    devs
}

/// A tracked mapping: either created here (and unmapped on drop) or the caller's (adopted,
/// never unmapped by us).
///
/// Invariant: `[ptr, ptr+len)` is mapped readable and writable for the life of the value
/// (owned: we unmap only in `drop`; adopted: the `adopted` caller's contract).
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    owned: bool,
    leaked: std::sync::atomic::AtomicBool,
    _memfd: Option<OwnedFd>,
}

// SAFETY: a Mapping is an address range; all access to the memory behind it goes through
// atomics or through unsafe functions whose callers take responsibility for synchronisation.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` hands out only atomics or unsafe accessors.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// A new private anonymous mapping with THP disabled (4 KiB dirty granularity).
    pub(crate) fn anonymous(len: usize) -> Result<Self, Errno> {
        Ok(Self::owned_private(mmap_anonymous(len, 0)?, len))
    }

    /// Takes ownership of a private anonymous mapping just created, with THP disabled (4 KiB
    /// dirty granularity).
    fn owned_private(ptr: NonNull<u8>, len: usize) -> Self {
        // Best effort: fails only on kernels without THP, where it does not matter.
        let _ = madvise_nondestructive(ptr.as_ptr(), len, libc::MADV_NOHUGEPAGE);
        Self {
            ptr,
            len,
            owned: true,
            leaked: false.into(),
            _memfd: None,
        }
    }

    /// A new memfd of `len` bytes mapped shared.
    pub(crate) fn shared(len: usize) -> Result<(Self, &'static str), (Errno, &'static str)> {
        let fd = memfd("writewatch", len).map_err(|e| (e, "memfd_create"))?;
        let ptr = mmap_shared(&fd, len).map_err(|e| (e, "mmap"))?;
        // A fork child would share these pages but not the tracking: its writes would change
        // the parent's memory unreported. Keep the range out of children (a child that writes
        // it gets SIGSEGV instead).
        if let Err(e) = madvise_nondestructive(ptr.as_ptr(), len, libc::MADV_DONTFORK) {
            // SAFETY: we just mapped it; nothing references it yet.
            let _ = unsafe { munmap(ptr.as_ptr(), len) };
            return Err((e, "madvise(MADV_DONTFORK)"));
        }
        Ok((
            Self {
                ptr,
                len,
                owned: true,
                leaked: false.into(),
                _memfd: Some(fd),
            },
            "mmap",
        ))
    }

    /// The caller's mapping.
    ///
    /// # Safety
    /// `[ptr, ptr+len)` must be mapped read-write (ptr non-null) and stay mapped for the life
    /// of the returned value.
    pub(crate) unsafe fn adopted(ptr: *mut u8, len: usize) -> Option<Self> {
        Some(Self {
            ptr: NonNull::new(ptr)?,
            len,
            owned: false,
            leaked: false.into(),
            _memfd: None,
        })
    }

    /// A `'static` array of atomics (a program's static data) as an adopted mapping: it is
    /// mapped for the life of the process, and every access through the region's safe API
    /// is atomic, like the owner's.
    pub(crate) fn adopted_static(words: &'static [AtomicU64]) -> Option<Self> {
        Some(Self {
            ptr: NonNull::new(words.as_ptr() as *mut u8)?,
            len: std::mem::size_of_val(words),
            owned: false,
            leaked: false.into(),
            _memfd: None,
        })
    }

    pub(crate) fn start(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn owned(&self) -> bool {
        self.owned
    }

    /// Never unmap: the application unmapped or moved the range, so something else may live
    /// at these addresses now. Accessors must not be used after this (callers check the
    /// region's status first).
    pub(crate) fn leak(&self) {
        self.leaked
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The memory as 64-bit atomics (always sound: see the type invariant).
    pub(crate) fn atomic_words(&self) -> &[AtomicU64] {
        // SAFETY: mapped read-write for our life (type invariant), page-aligned hence 8-byte
        // aligned; every access through the view is atomic.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }

    /// The memory as bytes.
    ///
    /// # Safety
    /// Nobody may write the memory while the slice is alive.
    pub(crate) unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: mapped for our life (type invariant); the caller excludes writers.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The memory as mutable bytes.
    ///
    /// # Safety
    /// No other access to the memory may happen while the slice is alive.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: mapped for our life (type invariant); the caller guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.owned && !self.leaked.load(std::sync::atomic::Ordering::Acquire) {
            // SAFETY: we created the mapping, and `drop` ends the last borrow of it.
            if let Err(e) = unsafe { munmap(self.ptr.as_ptr(), self.len) } {
                tracing::warn!(len = self.len, %e, "munmap of a tracked region failed");
            }
        }
    }
}

/// `mprotect(2)` on tracked memory (mprotect backend: cuts, registration, release).
///
/// Changing protection never invalidates memory or references: a write to a read-only page
/// raises SIGSEGV, which the handler below (installed before any range is protected)
/// resolves. The kernel validates the range.
///
/// Pages the application made unreadable (`PROT_NONE` guard pages) are left alone: the
/// tracker never makes a page unreadable, so such a page is the application's, and a merged
/// re-protect run (or a release) must not turn it into a readable one. They are found with
/// [`readable_prefix`], one system call per 256 pages.
pub(crate) fn mprotect(addr: usize, len: usize, writable: bool) -> Result<(), Errno> {
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    let ps = base_page_size();
    let end = addr.saturating_add(len);
    let mut a = addr;
    while a < end {
        // [a, b): readable; then one unreadable page (skipped), unless b == end.
        let b = a + readable_prefix(a, end - a, ps);
        if b > a {
            // SAFETY: see above; no Rust-visible memory changes.
            Errno::result(unsafe { libc::mprotect(a as *mut c_void, b - a, prot) })?;
        }
        a = b.saturating_add(ps);
    }
    Ok(())
}

/// How many bytes from `addr` (page-aligned, at most `len`) lie in pages this process may
/// read, asked without touching them: `process_vm_readv` of one byte per page stops at the
/// first page whose mapping is not readable (`PROT_NONE`). When the kernel cannot tell (the
/// call is refused, e.g. by seccomp) every page counts as readable (the behaviour without
/// this check).
pub(crate) fn readable_prefix(addr: usize, len: usize, ps: usize) -> usize {
    const BATCH: usize = 256;
    let pages = len.div_ceil(ps);
    let mut sink = [0u8; BATCH];
    let local = libc::iovec {
        iov_base: sink.as_mut_ptr().cast(),
        iov_len: BATCH,
    };
    let mut done = 0;
    while done < pages {
        let n = (pages - done).min(BATCH);
        let mut remote = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        for (i, r) in remote.iter_mut().take(n).enumerate() {
            r.iov_base = (addr + (done + i) * ps) as *mut c_void;
            r.iov_len = 1;
        }
        // SAFETY: writes at most BATCH bytes into `sink` on our stack; reads one byte of each
        // of our own pages through the kernel, which checks permissions (no Rust reference
        // is involved, nothing is written).
        let got = unsafe {
            libc::process_vm_readv(libc::getpid(), &local, 1, remote.as_ptr(), n as _, 0)
        };
        if got < 0 {
            if Errno::last() == Errno::EFAULT {
                return (done * ps).min(len);
            }
            return len;
        }
        let got = got as usize;
        if got < n {
            return ((done + got) * ps).min(len);
        }
        done += n;
    }
    len
}

impl Mapping {
    /// A new private anonymous mapping of `len` bytes at exactly `addr`
    /// (`MAP_FIXED_NOREPLACE`), THP disabled like [`Mapping::anonymous`]. `EEXIST` if part of
    /// the range is already mapped; `ENOTSUP` if the kernel placed it elsewhere (kernels before
    /// 4.17 treat the flag as a hint; the stray mapping is removed).
    pub(crate) fn anonymous_at(addr: usize, len: usize) -> Result<Self, Errno> {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping (the kernel fails with
        // EEXIST instead), so the new mapping cannot alias any existing Rust object.
        let p = unsafe {
            libc::mmap(
                addr as *mut c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_NORESERVE
                    | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        if p as usize != addr {
            // SAFETY: the mapping was created just above and nothing refers to it.
            let _ = unsafe { munmap(p.cast(), len) };
            return Err(Errno::ENOTSUP);
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(Errno::EINVAL)?;
        Ok(Self::owned_private(ptr, len))
    }

    /// The memory as a slice of `T`, one of the 8-byte std atomic integer types
    /// ([`Atomic8`] is sealed and implemented only for those).
    pub(crate) fn atomic_view<T: Atomic8>(&self) -> &[T] {
        const {
            assert!(std::mem::size_of::<T>() == 8 && std::mem::align_of::<T>() == 8);
        }
        // SAFETY: T is AtomicU64, AtomicI64, AtomicUsize or AtomicIsize (sealed trait), each
        // with the size and alignment of AtomicU64 (checked above), valid for every bit
        // pattern, and accessed only atomically through `&T`: the same argument as
        // `atomic_words`, and every atomic access to the region (ours and the caller's) is
        // 8 bytes wide, so no mixed-size atomic accesses can race.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<T>(), self.len / 8) }
    }
}
