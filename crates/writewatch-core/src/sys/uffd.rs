//! Opening a userfaultfd and its `UFFDIO_API` handshake, without the `userfaultfd` crate where
//! it cannot help; `UffdRef`, the `SIGBUS` handler's handle on the service thread's fd.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use linux_raw_sys::general as k;
use nix::errno::Errno;

use super::Addr;

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
    // SAFETY: UFFDIO_API reads and writes exactly one `uffdio_api`, which lives on our stack;
    // it changes no memory.
    unsafe { uffd_ioctl(fd, linux_raw_sys::ioctl::UFFDIO_API, &mut api) }?;
    Ok((api.features, api.ioctls))
}

/// Runs the userfaultfd ioctl `req` on `fd` with its argument struct `arg`.
///
/// # Safety
/// `req` must be a userfaultfd ioctl whose argument is exactly one `T`, read and written in
/// place, and what the ioctl does to memory must be sound for the caller to allow.
unsafe fn uffd_ioctl<T>(fd: RawFd, req: u32, arg: &mut T) -> Result<(), Errno> {
    // SAFETY: the caller's contract: `arg` is a live, exclusive `T` of the ioctl's layout.
    let r = unsafe { libc::ioctl(fd, req as _, arg as *mut T) };
    Errno::result(r).map(|_| ())
}

/// Wraps a userfaultfd opened and handshaken here into the `userfaultfd` crate's type.
pub(crate) fn uffd_from_fd(fd: OwnedFd) -> userfaultfd::Uffd {
    use std::os::fd::IntoRawFd;
    // SAFETY: `fd` is an open userfaultfd we own; ownership moves into the `Uffd`, which
    // closes it on drop.
    unsafe { userfaultfd::Uffd::from_raw_fd(fd.into_raw_fd()) }
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
            .map_err(|e| crate::sys::errno_of(&e))
    }
}

/// `UFFDIO_ZEROPAGE` over `[addr, addr + len)` of a range registered (in missing mode) with
/// `uffd`, without waking the faulting threads. Returns the bytes mapped from the start: all
/// of `len`, or fewer when a page that already has content (or a page table entry) stops it;
/// `EEXIST` when the first page does.
pub(crate) fn zeropage(uffd: &userfaultfd::Uffd, addr: usize, len: usize) -> Result<usize, Errno> {
    // SAFETY: UFFDIO_ZEROPAGE only fills empty page-table entries (or uffd-wp markers) of a
    // registered range with the shared zero page, and stops with EEXIST at any page that has
    // content: no byte that any Rust object can observe changes (an empty anonymous page reads
    // as zeros already).
    unsafe { uffd.zeropage(Addr(addr).ptr(), len, false) }.map_err(|e| super::errno_of(&e))
}

/// `UFFDIO_COPY` of `zeros` (whole pages of zeros, [`install_page`]) that also says how many
/// bytes it installed before it stopped (a partial copy ends at the first page with content,
/// `EEXIST` on the next call, or at a pending non-cooperative event): the count is exact,
/// whatever the result. With `wp`, each page is installed with its protection atomically.
pub(crate) fn copy_zero_pages_counted(
    fd: RawFd,
    addr: usize,
    zeros: &[u8],
    wp: bool,
    wake: bool,
) -> (usize, Result<(), Errno>) {
    debug_assert!(zeros.iter().all(|&b| b == 0));
    // (An empty anonymous page already reads as zeros: `install_page`'s contract.)
    copy_counted(fd, addr, zeros, wp, wake)
}

/// `UFFDIO_COPY` of `src` (whole pages) into the empty pages at `addr` of a range registered
/// in missing mode with the userfaultfd `fd` (a lazily armed region, or a fork clone),
/// write-protected in the same step if `wp`, waking the faulting threads if `wake`. `EEXIST`
/// if the first page has content already (nothing changes); `EAGAIN` if a later one stopped
/// the copy (or a non-cooperative event is pending).
///
/// Sound for any `src`: an empty page of a missing-mode range cannot be accessed at all (every
/// access, by any thread or by the kernel on its behalf, raises a missing fault and waits for
/// the service thread), so nobody can observe the page before it holds `src`; the page
/// appears with its content and protection in one step. Which content the page *should* hold
/// (zeros, or a fork clone's inherited page) is the caller's business.
pub(crate) fn install_page(
    fd: RawFd,
    addr: usize,
    src: &[u8],
    wp: bool,
    wake: bool,
) -> Result<(), Errno> {
    copy_counted(fd, addr, src, wp, wake).1
}

/// [`install_page`], also returning the bytes installed (`uffdio_copy.copy`; 0 when negative).
fn copy_counted(
    fd: RawFd,
    addr: usize,
    src: &[u8],
    wp: bool,
    wake: bool,
) -> (usize, Result<(), Errno>) {
    let mut mode = 0u64;
    if wp {
        mode |= u64::from(k::UFFDIO_COPY_MODE_WP);
    }
    if !wake {
        mode |= u64::from(k::UFFDIO_COPY_MODE_DONTWAKE);
    }
    let mut arg = k::uffdio_copy {
        dst: addr as u64,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode,
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY reads `arg` on our stack and `src.len()` bytes from `src` (a live
    // slice), and fills only empty page-table entries (or uffd-wp markers) of the registered
    // range at `addr` with new pages holding those bytes (EEXIST otherwise). No access can have
    // observed those entries empty (see `install_page`), so no Rust object sees a byte change.
    let r = unsafe { uffd_ioctl(fd, linux_raw_sys::ioctl::UFFDIO_COPY, &mut arg) };
    (usize::try_from(arg.copy).unwrap_or(0), r)
}
