//! The only module of `writewatch-core` that contains `unsafe` code.
//!
//! Everything here is a thin, documented wrapper over one system call or one raw-memory
//! operation. The rest of the crate is `#![forbid(unsafe_code)]`-clean by construction:
//! `lib.rs` denies `unsafe_code` in every other module.
//!
//! Kernel ABI values come from `linux-raw-sys` (the `userfaultfd` crate's bindgen bindings are
//! generated from the build machine's headers, which may predate `UFFD_FEATURE_WP_UNPOPULATED`
//! or `PAGEMAP_SCAN`). The few values that `linux-raw-sys` does not export as constants are
//! derived from its structs with `nix`'s ioctl-number macros, never typed in by hand.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use linux_raw_sys::general as k;
use nix::errno::Errno;

/// `PAGEMAP_SCAN` = `_IOWR('f', 16, struct pm_scan_arg)`, derived from linux-raw-sys's struct.
pub(crate) const PAGEMAP_SCAN: libc::c_ulong =
    nix::request_code_readwrite!(b'f', 16, std::mem::size_of::<k::pm_scan_arg>()) as libc::c_ulong;

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
    ));
    // SAFETY: these advices never change the contents or validity of the range in this
    // process (MADV_DONTFORK only keeps the range out of future fork children), so no Rust
    // reference can observe a difference; the kernel validates the range itself.
    Errno::result(unsafe { libc::madvise(ptr.cast(), len, advice) }).map(drop)
}

/// Opens a memfd of `len` bytes.
pub(crate) fn memfd(name: &str, len: usize) -> Result<OwnedFd, Errno> {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    nix::unistd::ftruncate(&fd, len as libc::off_t)?;
    Ok(fd)
}

/// Opens a userfaultfd without the `userfaultfd` crate (used only when the crate's
/// `/dev/userfaultfd`-first strategy fails with a permission error but the syscall may work).
pub(crate) fn userfaultfd_syscall(flags: libc::c_int) -> Result<OwnedFd, Errno> {
    // SAFETY: the syscall takes an int and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags as libc::c_long) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens `/dev/userfaultfd` and asks it for a userfaultfd (`USERFAULTFD_IOC_NEW`).
pub(crate) fn userfaultfd_dev(flags: libc::c_int) -> Result<OwnedFd, Errno> {
    use std::os::unix::fs::OpenOptionsExt;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/userfaultfd")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    // USERFAULTFD_IOC_NEW = _IO(0xAA, 0x00)
    let req = nix::request_code_none!(0xAA, 0x00) as libc::c_ulong;
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new fd.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), req as _, flags as libc::c_long) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `UFFDIO_API` handshake on a raw userfaultfd. Returns `(features, ioctls)` granted.
pub(crate) fn uffdio_api(fd: RawFd, features: u64) -> Result<(u64, u64), Errno> {
    let mut api = k::uffdio_api {
        api: k::UFFD_API as u64,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes exactly one `uffdio_api`, which lives on our stack.
    let r = unsafe {
        libc::ioctl(
            fd,
            linux_raw_sys::ioctl::UFFDIO_API as _,
            &mut api as *mut k::uffdio_api,
        )
    };
    Errno::result(r).map(|_| (api.features, api.ioctls))
}

/// One output entry of `PAGEMAP_SCAN`: `[start, end)` with the categories it matched.
pub(crate) type PageRegion = k::page_region;

/// A zeroed `page_region`, for sizing output buffers.
pub(crate) const EMPTY_PAGE_REGION: PageRegion = k::page_region {
    start: 0,
    end: 0,
    categories: 0,
};

/// The `PAGEMAP_SCAN` category bits used by this crate.
pub(crate) mod pm {
    use linux_raw_sys::general as k;
    pub(crate) const PAGE_IS_WRITTEN: u64 = k::PAGE_IS_WRITTEN as u64;
    pub(crate) const PAGE_IS_PRESENT: u64 = k::PAGE_IS_PRESENT as u64;
    pub(crate) const PAGE_IS_SWAPPED: u64 = k::PAGE_IS_SWAPPED as u64;
    pub(crate) const PM_SCAN_WP_MATCHING: u64 = k::PM_SCAN_WP_MATCHING as u64;
    pub(crate) const PM_SCAN_CHECK_WPASYNC: u64 = k::PM_SCAN_CHECK_WPASYNC as u64;
}

/// Parameters of one `PAGEMAP_SCAN` call (the subset of `pm_scan_arg` this crate sets).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ScanArgs {
    pub flags: u64,
    pub start: usize,
    pub end: usize,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// Runs one `PAGEMAP_SCAN` ioctl on an open `/proc/self/pagemap`.
///
/// Fills `out` and returns `(entries_filled, walk_end)`: the kernel stops early at `walk_end`
/// when `out` is full, so callers loop from `walk_end` until it reaches `args.end`.
pub(crate) fn pagemap_scan(
    pagemap: RawFd,
    args: &ScanArgs,
    out: &mut [PageRegion],
) -> Result<(usize, usize), Errno> {
    let mut arg = k::pm_scan_arg {
        size: std::mem::size_of::<k::pm_scan_arg>() as u64,
        flags: args.flags,
        start: args.start as u64,
        end: args.end as u64,
        walk_end: 0,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        max_pages: 0,
        category_inverted: args.category_inverted,
        category_mask: args.category_mask,
        category_anyof_mask: args.category_anyof_mask,
        return_mask: args.return_mask,
    };
    // SAFETY: PAGEMAP_SCAN reads one `pm_scan_arg` on our stack and writes at most `vec_len`
    // `page_region`s into `out`, which is a live, exclusively borrowed slice of that length.
    // It reads page tables only, except with PM_SCAN_WP_MATCHING, where it changes page
    // protection (never contents).
    let r = unsafe { libc::ioctl(pagemap, PAGEMAP_SCAN as _, &mut arg as *mut k::pm_scan_arg) };
    let n = Errno::result(r)?;
    Ok((n as usize, arg.walk_end as usize))
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
        let ptr = mmap_anonymous(len, 0)?;
        // Best effort: fails only on kernels without THP, where it does not matter.
        let _ = madvise_nondestructive(ptr.as_ptr(), len, libc::MADV_NOHUGEPAGE);
        Ok(Self {
            ptr,
            len,
            owned: true,
            leaked: false.into(),
            _memfd: None,
        })
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

/// Whether the kernel tracks soft-dirty bits: writes one private page and reads its pagemap
/// entry (bit 55 = soft-dirty).
pub(crate) fn soft_dirty_probe() -> bool {
    use std::os::unix::fs::FileExt;
    let ps = base_page_size();
    let Ok(p) = mmap_anonymous(ps, 0) else {
        return false;
    };
    // SAFETY: `p` is a fresh private read-write page that nothing else references.
    unsafe { p.as_ptr().write_volatile(1) };
    let mut e = [0u8; 8];
    let ok = std::fs::File::open("/proc/self/pagemap")
        .and_then(|f| f.read_exact_at(&mut e, (p.as_ptr() as u64 / ps as u64) * 8))
        .is_ok();
    // SAFETY: we own the page and no reference into it exists.
    let _ = unsafe { munmap(p.as_ptr(), ps) };
    ok && u64::from_le_bytes(e) & (1 << 55) != 0
}

/// Wraps a userfaultfd opened and handshaken here into the `userfaultfd` crate's type.
pub(crate) fn uffd_from_fd(fd: OwnedFd) -> userfaultfd::Uffd {
    use std::os::fd::IntoRawFd;
    // SAFETY: `fd` is an open userfaultfd we own; ownership moves into the `Uffd`, which
    // closes it on drop.
    unsafe { userfaultfd::Uffd::from_raw_fd(fd.into_raw_fd()) }
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

/// The process-wide SIGSEGV handler of the mprotect backend.
///
/// Async-signal-safe by construction: the handler touches only atomics in static storage and
/// the dirty bitmaps they point to, and calls only `mprotect(2)` and `sigaction(2)`. It never
/// allocates or takes a lock. Faults on addresses it does not own, or that are not
/// permission faults, go to the previous handler (Rust's stack-overflow guard keeps working).
///
/// Registration protocol: a slot is published by storing its `start` last (Release); the
/// handler reads `start` first (Acquire). A slot is retired by clearing `start` and then
/// waiting for a grace period (`synchronize`): two generation flips, each waiting for the
/// handlers counted under the previous parity to finish. After that no handler can still
/// hold the slot's bitmap pointer.
/// What the two signal-handler backends share: installing a handler once per process while
/// remembering the previous one, passing foreign signals on to it, and a grace period for
/// handlers in flight.
mod handler_common {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::{Mutex, OnceLock};

    use nix::errno::Errno;

    /// The signature of an `SA_SIGINFO` handler.
    pub(crate) type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

    /// Installs `handler` for `sig` once (the first call wins), remembering the previous
    /// action in `old`. `block_all` blocks every other signal while the handler runs.
    pub(crate) fn install(
        old: &OnceLock<libc::sigaction>,
        sig: libc::c_int,
        handler: Handler,
        flags: libc::c_int,
        block_all: bool,
    ) -> Result<(), Errno> {
        let mut err = Ok(());
        old.get_or_init(|| {
            // SAFETY: zeroed sigaction structs are valid; we fill the fields we use.
            let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
            sa.sa_sigaction = handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | flags;
            // SAFETY: sa_mask is a valid sigset_t owned by `sa`.
            unsafe {
                if block_all {
                    libc::sigfillset(&mut sa.sa_mask);
                } else {
                    libc::sigemptyset(&mut sa.sa_mask);
                }
            };
            // SAFETY: as above.
            let mut prev: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: both pointers are to live sigaction structs on our stack.
            if unsafe { libc::sigaction(sig, &sa, &mut prev) } != 0 {
                err = Err(Errno::last());
            }
            prev
        });
        err
    }

    /// Passes a signal that is not ours to the handler that was installed before ours.
    pub(crate) fn chain(
        old: &OnceLock<libc::sigaction>,
        sig: libc::c_int,
        info: *mut libc::siginfo_t,
        ctx: *mut libc::c_void,
    ) {
        let Some(old) = old.get() else { return };
        match old.sa_sigaction {
            libc::SIG_DFL | libc::SIG_IGN => {
                // Restore the default action; returning re-executes the faulting access,
                // which now terminates the process as it would have without us.
                // SAFETY: zeroed sigaction = SIG_DFL with an empty mask.
                let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
                dfl.sa_sigaction = libc::SIG_DFL;
                // SAFETY: valid pointer to a sigaction on our stack.
                unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) };
            }
            f if old.sa_flags & libc::SA_SIGINFO != 0 => {
                // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this
                // signature; we pass through the kernel's arguments unchanged.
                let f: Handler = unsafe { std::mem::transmute(f) };
                f(sig, info, ctx);
            }
            f => {
                // SAFETY: a plain (non-SA_SIGINFO) handler takes only the signal number.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(f) };
                f(sig);
            }
        }
    }

    /// In-flight accounting for signal handlers: two counters selected by a generation
    /// number. A handler counts itself in `inflight[gen & 1]` for its critical section;
    /// [`Grace::synchronize`] flips the generation twice and waits for each old counter to
    /// drain, so every handler that was in flight when it started has left.
    pub(crate) struct Grace {
        gen: AtomicUsize,
        inflight: [AtomicUsize; 2],
        sync: Mutex<()>,
    }

    impl Grace {
        pub(crate) const fn new() -> Self {
            Self {
                gen: AtomicUsize::new(0),
                inflight: [AtomicUsize::new(0), AtomicUsize::new(0)],
                sync: Mutex::new(()),
            }
        }

        /// Handler side: enters the in-flight section; pass the token to [`Grace::leave`].
        pub(crate) fn enter(&self) -> usize {
            let g = self.gen.load(SeqCst);
            self.inflight[g & 1].fetch_add(1, SeqCst);
            g
        }

        pub(crate) fn leave(&self, g: usize) {
            self.inflight[g & 1].fetch_sub(1, SeqCst);
        }

        /// Waits until every handler in flight when this call started has left.
        pub(crate) fn synchronize(&self) {
            // One synchroniser at a time: two interleaved ones could each see only odd (or
            // only even) generations and skip the counter a handler is in.
            let _g = self.sync.lock().unwrap_or_else(|e| e.into_inner());
            for _ in 0..2 {
                let g = self.gen.fetch_add(1, SeqCst);
                let mut spins = 0u32;
                while self.inflight[g & 1].load(SeqCst) != 0 {
                    spins += 1;
                    if spins < 128 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }
}

pub(crate) mod segv {
    use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
    use std::sync::{Mutex, OnceLock};

    use super::handler_common::{self as common, Grace};

    use nix::errno::Errno;

    const MAX_SLOTS: usize = 4096;

    struct Slot {
        start: AtomicUsize,
        end: AtomicUsize,
        shift: AtomicU32,
        words: AtomicPtr<AtomicU64>,
        nbits: AtomicUsize,
        /// An opaque tag of the tracker that registered the slot (0: not tagged yet).
        owner: AtomicUsize,
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: Slot = Slot {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        shift: AtomicU32::new(12),
        words: AtomicPtr::new(std::ptr::null_mut()),
        nbits: AtomicUsize::new(0),
        owner: AtomicUsize::new(0),
    };
    static SLOTS: [Slot; MAX_SLOTS] = [EMPTY; MAX_SLOTS];
    static NSLOTS: AtomicUsize = AtomicUsize::new(0);
    /// Serialises slot allocation: trackers have one service thread each, and two of them
    /// registering at once must not pick the same free slot.
    static ALLOC: Mutex<()> = Mutex::new(());
    static GRACE: Grace = Grace::new();
    static OLD: OnceLock<libc::sigaction> = OnceLock::new();
    /// Faults resolved by the handler (for stats).
    pub(crate) static FAULTS: AtomicU64 = AtomicU64::new(0);

    /// Installs the handler once per process, remembering the previous one.
    pub(crate) fn install() -> Result<(), Errno> {
        common::install(
            &OLD,
            libc::SIGSEGV,
            handler,
            libc::SA_ONSTACK | libc::SA_RESTART,
            false,
        )
    }

    /// Publishes a tracked range. `words` must stay valid until `unregister` returns.
    pub(crate) fn register(
        start: usize,
        len: usize,
        shift: u32,
        words: &[AtomicU64],
        nbits: usize,
    ) -> Option<usize> {
        let _g = ALLOC.lock().unwrap_or_else(|e| e.into_inner());
        let n = NSLOTS.load(Acquire);
        let idx = (0..n)
            .find(|&i| SLOTS[i].start.load(Acquire) == 0)
            .or_else(|| (n < MAX_SLOTS).then_some(n))?;
        let s = &SLOTS[idx];
        s.owner.store(0, Release);
        s.end.store(start + len, Release);
        s.shift.store(shift, Release);
        s.words.store(words.as_ptr() as *mut AtomicU64, Release);
        s.nbits.store(nbits, Release);
        s.start.store(start, Release);
        if idx == n {
            NSLOTS.store(n + 1, Release);
        }
        Some(idx)
    }

    /// The first published slot overlapping `[start, end)`, as `(start, end, owner tag)`.
    pub(crate) fn overlapping(start: usize, end: usize) -> Option<(usize, usize, usize)> {
        let _g = ALLOC.lock().unwrap_or_else(|e| e.into_inner());
        let n = NSLOTS.load(Acquire);
        SLOTS[..n].iter().find_map(|s| {
            let (a, b) = (s.start.load(Acquire), s.end.load(Acquire));
            (a != 0 && a < end && b > start).then(|| (a, b, s.owner.load(Acquire)))
        })
    }

    /// Tags the published slot that starts at `start` with its tracker's `owner` tag.
    pub(crate) fn set_owner(start: usize, owner: usize) {
        let _g = ALLOC.lock().unwrap_or_else(|e| e.into_inner());
        let n = NSLOTS.load(Acquire);
        if let Some(s) = SLOTS[..n].iter().find(|s| s.start.load(Acquire) == start) {
            s.owner.store(owner, Release);
        }
    }

    /// Whether the fault is known to be a read or an instruction fetch (x86_64: the page-fault
    /// error code's W bit, saved in the signal context). `false` when it cannot be told.
    fn known_not_write(ctx: *mut libc::c_void) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            if ctx.is_null() {
                return false;
            }
            // SAFETY: for an SA_SIGINFO handler the kernel passes a valid ucontext_t.
            let err = unsafe {
                (*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_ERR as usize]
            };
            err & 2 == 0
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = ctx;
            false
        }
    }

    /// Whether the fault hit a present page (x86_64: the P bit of the page-fault error code).
    /// Such a page is readable (x86 maps `PROT_NONE` pages not-present), so the readability
    /// probe can be skipped. `false` when it cannot be told.
    fn known_present(ctx: *mut libc::c_void) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            if ctx.is_null() {
                return false;
            }
            // SAFETY: for an SA_SIGINFO handler the kernel passes a valid ucontext_t.
            let err = unsafe {
                (*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_ERR as usize]
            };
            err & 1 != 0
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = ctx;
            false
        }
    }

    /// Whether the byte at `addr` may be read (the mapping has `PROT_READ`), asked without
    /// touching it: `process_vm_readv` on ourselves fails with `EFAULT` on an unreadable page.
    /// Async-signal-safe (one system call). `true` when it cannot be told.
    fn readable(addr: usize) -> bool {
        let mut byte = 0u8;
        let local = libc::iovec {
            iov_base: (&mut byte as *mut u8).cast(),
            iov_len: 1,
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: 1,
        };
        // SAFETY: writes at most one byte into `byte` on our stack; reads (never writes) one
        // byte of our own address space, through the kernel, which checks permissions.
        let r = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        r == 1 || Errno::last() != Errno::EFAULT
    }

    /// Retires a slot and waits until no handler can still use it.
    pub(crate) fn unregister(idx: usize) {
        SLOTS[idx].start.store(0, Release);
        synchronize();
    }

    /// Waits until every handler that started before this call has finished.
    pub(crate) fn synchronize() {
        GRACE.synchronize();
    }

    /// Whether `addr` lies in a published slot (checked before the costlier tests).
    fn in_any_slot(addr: usize) -> bool {
        let n = NSLOTS.load(Acquire);
        SLOTS[..n].iter().any(|s| {
            let start = s.start.load(Acquire);
            start != 0 && addr >= start && addr < s.end.load(Acquire)
        })
    }

    extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: errno is thread-local; saved and restored so the interrupted code never
        // sees our mprotect's errno.
        let errno_ptr = unsafe { libc::__errno_location() };
        // SAFETY: as above.
        let saved = unsafe { *errno_ptr };
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
        let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
        let g = GRACE.enter();
        let mut handled = false;
        // Tracked pages are never made unreadable by the tracker: a read fault, or any fault on
        // an unreadable (PROT_NONE) page, is the application's own protection at work (a guard
        // page) and goes to the previous handler / the default action.
        if code == linux_raw_sys::general::SEGV_ACCERR as libc::c_int
            && !known_not_write(ctx)
            && in_any_slot(addr)
            && (known_present(ctx) || readable(addr))
        {
            let n = NSLOTS.load(Acquire);
            for s in &SLOTS[..n] {
                let start = s.start.load(Acquire);
                if start == 0 || addr < start || addr >= s.end.load(Acquire) {
                    continue;
                }
                let shift = s.shift.load(Acquire);
                let page = (addr - start) >> shift;
                let words = s.words.load(Acquire);
                // SAFETY: the slot is published, so `words` points to at least
                // ceil(nbits/64) live atomics until the slot is retired, and retirement
                // waits for this handler (INFLIGHT). `page < nbits` since addr < end.
                unsafe { (*words.add(page / 64)).fetch_or(1 << (page % 64), SeqCst) };
                let pstart = start + (page << shift);
                // SAFETY: changing protection of a tracked page; see `mprotect` above.
                let r = unsafe {
                    libc::mprotect(
                        pstart as *mut libc::c_void,
                        1 << shift,
                        libc::PROT_READ | libc::PROT_WRITE,
                    )
                };
                if r != 0 {
                    // Too many VMAs (vm.max_map_count): un-protect the whole range and
                    // report all of it (over-report, never a lost write or a fault loop).
                    let nbits = s.nbits.load(Acquire);
                    for w in 0..nbits.div_ceil(64) {
                        // SAFETY: as above, within ceil(nbits/64) words.
                        unsafe { (*words.add(w)).store(u64::MAX, SeqCst) };
                    }
                    // SAFETY: as above.
                    unsafe {
                        libc::mprotect(
                            start as *mut libc::c_void,
                            s.end.load(Acquire) - start,
                            libc::PROT_READ | libc::PROT_WRITE,
                        )
                    };
                }
                FAULTS.fetch_add(1, Relaxed);
                handled = true;
                break;
            }
        }
        GRACE.leave(g);
        // SAFETY: restoring the saved errno.
        unsafe { *errno_ptr = saved };
        if handled {
            return;
        }
        common::chain(&OLD, sig, info, ctx);
    }
}

/// A second handle on the service thread's userfaultfd, for the `SIGBUS` handler's
/// un-protect ioctls (the `userfaultfd` crate's call, so no ioctl constant is copied here).
/// It never closes the fd.
pub(crate) struct UffdRef(std::mem::ManuallyDrop<userfaultfd::Uffd>);

impl UffdRef {
    /// `uffd` must outlive every use of the handle: the service thread retires every slot
    /// (and so every hook holding one) before it drops its `Uffd`.
    pub(crate) fn new(uffd: &userfaultfd::Uffd) -> Self {
        // SAFETY: the fd is open (borrowed from a live Uffd) and ManuallyDrop never closes
        // it; the owner outlives this handle (see above).
        Self(std::mem::ManuallyDrop::new(unsafe {
            userfaultfd::Uffd::from_raw_fd(uffd.as_raw_fd())
        }))
    }

    /// Un-protects `[addr, addr+len)` without waking anyone (in-thread mode: nobody sleeps on
    /// the fault). Async-signal-safe: one system call, no allocation.
    pub(crate) fn unprotect(&self, addr: usize, len: usize) -> Result<(), Errno> {
        self.0
            .remove_write_protection(Addr(addr).ptr(), len, false)
            .map_err(|e| crate::service::errno_of(&e))
    }
}

/// In-thread fault handling: a process-wide `SIGBUS` handler for userfaultfds opened with
/// `UFFD_FEATURE_SIGBUS`. The kernel raises `SIGBUS` (`BUS_ADRERR`) in the thread whose write
/// hit a write-protected page; the handler finds the region in a static slot table and calls
/// [`crate::inthread::serve`] on that thread, which preserves the page for live views, sets
/// its dirty bit and un-protects it. The write then re-executes.
///
/// ```text
///   handler:  INFLIGHT[gen]++ ; slot = lookup(addr)
///             slot.cutting ? -> INFLIGHT-- ; wait until !cutting ; retry      (held fault)
///             serve(hook)  -> Done | Wait (budget full / EAGAIN: sleep, retry)
///             INFLIGHT--
///   cut:      cutting = 1 ; synchronize()   (every handler that missed the flag is done)
///             harvest + re-protect + publish the new view ; cutting = 0
/// ```
///
/// Invariants: a slot's hook, and any list read through [`RcuList::for_each`], stay valid while
/// a handler is in flight (retirement and list replacement wait in [`synchronize`]). Handlers
/// never wait while in flight: a busy page (a saver or another handler copying it), a full
/// copy budget, a held fault or `EAGAIN` all make the handler leave its in-flight section
/// before it waits and retries, so `synchronize` always finishes (even when called by the
/// service thread in the middle of an event batch a saver is waiting for).
pub(crate) mod sigbus {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::*};
    use std::sync::{Arc, Mutex, OnceLock};

    use nix::errno::Errno;

    use super::handler_common::{self as common, Grace};
    use crate::inthread::{Hook, Outcome};

    const MAX_SLOTS: usize = 1024;

    struct Slot {
        start: AtomicUsize,
        end: AtomicUsize,
        hook: AtomicPtr<Hook>,
        cutting: AtomicBool,
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: Slot = Slot {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        hook: AtomicPtr::new(std::ptr::null_mut()),
        cutting: AtomicBool::new(false),
    };
    static SLOTS: [Slot; MAX_SLOTS] = [EMPTY; MAX_SLOTS];
    static NSLOTS: AtomicUsize = AtomicUsize::new(0);
    static ALLOC: Mutex<()> = Mutex::new(());
    static GRACE: Grace = Grace::new();
    static OLD: OnceLock<libc::sigaction> = OnceLock::new();

    thread_local! {
        /// The last address this thread's handler could not attribute to a slot (a fault that
        /// raced with retirement is retried once before it is passed on).
        static UNKNOWN: Cell<usize> = const { Cell::new(0) };
    }

    /// Proof that the current code runs inside a handler's in-flight section.
    pub(crate) struct InFlight(());

    /// Installs the handler once per process, remembering the previous one. Not
    /// `SA_ONSTACK`: this is not a stack overflow, and the handler copies pages (the alternate
    /// stacks Rust installs are small). Every other signal is blocked while it runs, so no
    /// other handler can write tracked memory (and fault) inside it.
    pub(crate) fn install() -> Result<(), Errno> {
        common::install(&OLD, libc::SIGBUS, handler, libc::SA_RESTART, true)
    }

    /// Publishes a tracked range served by `hook`. The slot keeps a strong reference until
    /// [`retire`] returns.
    pub(crate) fn register(start: usize, len: usize, hook: &Arc<Hook>) -> Option<usize> {
        let _g = ALLOC.lock().unwrap_or_else(|e| e.into_inner());
        let n = NSLOTS.load(Acquire);
        let idx = (0..n)
            .find(|&i| SLOTS[i].start.load(Acquire) == 0)
            .or_else(|| (n < MAX_SLOTS).then_some(n))?;
        let s = &SLOTS[idx];
        s.cutting.store(false, SeqCst);
        s.hook
            .store(Arc::into_raw(Arc::clone(hook)) as *mut Hook, Release);
        s.end.store(start + len, Release);
        s.start.store(start, Release);
        if idx == n {
            NSLOTS.store(n + 1, Release);
        }
        Some(idx)
    }

    /// Retires a slot, waits until no handler can still use it, and drops its hook reference.
    pub(crate) fn retire(idx: usize) {
        let _g = ALLOC.lock().unwrap_or_else(|e| e.into_inner());
        let s = &SLOTS[idx];
        s.start.store(0, SeqCst);
        synchronize();
        let h = s.hook.swap(std::ptr::null_mut(), SeqCst);
        s.cutting.store(false, SeqCst);
        if !h.is_null() {
            // SAFETY: `h` came from Arc::into_raw in `register`, and no handler can hold it any
            // more (the slot is unpublished and synchronize waited for in-flight handlers).
            drop(unsafe { Arc::from_raw(h) });
        }
    }

    /// Starts or ends a cut of the slot's region. Starting waits until every handler that did
    /// not see the flag has finished; later ones wait until it is cleared (held faults).
    pub(crate) fn set_cutting(idx: usize, on: bool) {
        SLOTS[idx].cutting.store(on, SeqCst);
        if on {
            synchronize();
        }
    }

    /// Waits until every handler that was in flight when this call started has left.
    pub(crate) fn synchronize() {
        GRACE.synchronize();
    }

    /// A list read by handlers without locks and replaced (copy, swap, [`synchronize`], free)
    /// by writers, which a mutex serialises (read-copy-update).
    pub(crate) struct RcuList<T> {
        ptr: AtomicPtr<Vec<Arc<T>>>,
        writer: Mutex<()>,
    }

    impl<T> RcuList<T> {
        pub(crate) fn new() -> Self {
            Self {
                ptr: AtomicPtr::new(Box::into_raw(Box::new(Vec::new()))),
                writer: Mutex::new(()),
            }
        }

        /// Handler side: calls `f` on each element until it returns false; returns whether
        /// all returned true.
        pub(crate) fn for_each(
            &self,
            _in_flight: &InFlight,
            f: impl FnMut(&Arc<T>) -> bool,
        ) -> bool {
            let p = self.ptr.load(Acquire);
            // SAFETY: a list loaded by a handler stays allocated until that handler leaves its
            // in-flight section (`_in_flight` proves it is in one): writers free a replaced
            // list only after `synchronize`.
            let v = unsafe { &*p };
            v.iter().all(f)
        }

        /// Writer side: replaces the list with `f(copy of it)`.
        pub(crate) fn update(&self, f: impl FnOnce(&mut Vec<Arc<T>>)) {
            let _g = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let old = self.ptr.load(Acquire);
            // SAFETY: only writers replace or free the list, and they are serialised by the
            // lock we hold, so `old` is live.
            let mut new = unsafe { (*old).clone() };
            f(&mut new);
            self.ptr.store(Box::into_raw(Box::new(new)), SeqCst);
            synchronize();
            // SAFETY: `old` came from Box::into_raw and no handler can still see it.
            drop(unsafe { Box::from_raw(old) });
        }

        /// Writer side: a copy of the current elements.
        pub(crate) fn snapshot(&self) -> Vec<Arc<T>> {
            let _g = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: as in `update`.
            unsafe { (*self.ptr.load(Acquire)).clone() }
        }
    }

    impl<T> Drop for RcuList<T> {
        fn drop(&mut self) {
            // SAFETY: `&mut self`: no writer runs; the owner (a hook) is dropped only after its
            // slot was retired, so no handler can see the list.
            drop(unsafe { Box::from_raw(*self.ptr.get_mut()) });
        }
    }

    fn lookup(addr: usize) -> Option<usize> {
        let n = NSLOTS.load(Acquire);
        (0..n).find(|&i| {
            let s = &SLOTS[i];
            let start = s.start.load(Acquire);
            start != 0 && addr >= start && addr < s.end.load(Acquire)
        })
    }

    extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: errno is thread-local; saved and restored so the interrupted code never
        // sees our system calls' errno.
        let errno_ptr = unsafe { libc::__errno_location() };
        // SAFETY: as above.
        let saved = unsafe { *errno_ptr };
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
        let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
        let mine = code == libc::BUS_ADRERR && serve_fault(addr);
        // SAFETY: restoring the saved errno.
        unsafe { *errno_ptr = saved };
        if !mine {
            common::chain(&OLD, sig, info, ctx);
        }
    }

    /// Serves a fault at `addr` if it lies in a registered range. Returns false if not ours.
    fn serve_fault(addr: usize) -> bool {
        let mut seen = false;
        let mut waits = 0u32;
        loop {
            let g = GRACE.enter();
            let step = match lookup(addr) {
                None => None,
                Some(idx) if SLOTS[idx].cutting.load(SeqCst) => Some(Err(idx)),
                Some(idx) => {
                    let h = SLOTS[idx].hook.load(Acquire);
                    if h.is_null() {
                        None
                    } else {
                        // SAFETY: the slot was published when we looked it up after entering
                        // the in-flight section, so its hook stays alive until we leave it
                        // (`retire` synchronises before dropping it).
                        Some(Ok(crate::inthread::serve(
                            unsafe { &*h },
                            addr,
                            &InFlight(()),
                        )))
                    }
                }
            };
            GRACE.leave(g);
            match step {
                None if seen => return true, // retired meanwhile: the write retries untracked
                None => {
                    // A fault that raced with retirement: retry the access once before treating
                    // the signal as someone else's.
                    let again = UNKNOWN.with(|u| u.replace(addr)) == addr;
                    if again {
                        UNKNOWN.with(|u| u.set(0));
                    }
                    return !again;
                }
                Some(Ok(Outcome::Done)) => {
                    UNKNOWN.with(|u| u.set(0));
                    return true;
                }
                Some(Ok(Outcome::Wait)) => {
                    seen = true;
                    waits += 1;
                    if waits < 16 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    }
                }
                Some(Err(idx)) => {
                    // Held: a cut of this region is running.
                    seen = true;
                    let mut spins = 0u32;
                    while SLOTS[idx].cutting.load(SeqCst) {
                        spins += 1;
                        if spins < 256 {
                            std::hint::spin_loop();
                        } else {
                            std::thread::yield_now();
                        }
                    }
                }
            }
        }
    }
}

/// `n` zeroed 64-bit atomics from zeroed memory (see [`zeroed_atomic_u8s`]).
pub(crate) fn zeroed_atomic_u64s(n: usize) -> Box<[AtomicU64]> {
    if n == 0 {
        return Box::new([]);
    }
    let Ok(layout) = std::alloc::Layout::array::<AtomicU64>(n) else {
        std::alloc::handle_alloc_error(std::alloc::Layout::new::<AtomicU64>())
    };
    // SAFETY: `layout` has a non-zero size (n > 0).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<AtomicU64>();
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: allocated by the global allocator with the layout of `[AtomicU64; n]` and fully
    // initialised: `AtomicU64` has the size, alignment and bit validity of `u64`, and zero
    // bytes are `AtomicU64::new(0)`. The box takes sole ownership.
    unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n)) }
}

/// `n` zeroed atomics from zeroed memory: a large allocation comes straight from fresh,
/// lazily zero-filled pages, so this is O(1) until the cells are touched (a snapshot view of a
/// huge sparse region costs nothing for its untouched pages).
pub(crate) fn zeroed_atomic_u8s(n: usize) -> Box<[std::sync::atomic::AtomicU8]> {
    use std::sync::atomic::AtomicU8;
    if n == 0 {
        return Box::new([]);
    }
    let Ok(layout) = std::alloc::Layout::array::<AtomicU8>(n) else {
        std::alloc::handle_alloc_error(std::alloc::Layout::new::<AtomicU8>())
    };
    // SAFETY: `layout` has a non-zero size (n > 0).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<AtomicU8>();
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of `[AtomicU8; n]`
    // and is fully initialised: `AtomicU8` has the size, alignment and bit validity of `u8`,
    // and all-zero bytes are a valid `AtomicU8::new(0)`. The box takes sole ownership.
    unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n)) }
}

// ------------------------------------------------------------------ typed views, placed maps

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
        let _ = madvise_nondestructive(ptr.as_ptr(), len, libc::MADV_NOHUGEPAGE);
        Ok(Self {
            ptr,
            len,
            owned: true,
            leaked: false.into(),
            _memfd: None,
        })
    }

    /// The memory as a slice of `T`, one of the 8-byte std atomic integer types
    /// ([`crate::typed::AtomicView`] is sealed and implemented only for those).
    pub(crate) fn atomic_view<T: crate::typed::AtomicView>(&self) -> &[T] {
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
