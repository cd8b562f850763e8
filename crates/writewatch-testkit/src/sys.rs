//! The only `unsafe` code of the testkit: raw `mmap`/`munmap`/`memfd_create` and
//! `fork`/`waitpid`/`_exit`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// A fresh private anonymous mapping of `len` bytes with protection `prot`; panics if the
/// kernel refuses.
pub(crate) fn map_anonymous(len: usize, prot: libc::c_int) -> *mut u8 {
    map(len, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, None)
}

/// A fresh read-write mapping of `len` bytes of `fd` from offset 0, `MAP_SHARED` or
/// `MAP_PRIVATE` (copy-on-write); panics if the kernel refuses.
pub(crate) fn map_file(fd: BorrowedFd<'_>, len: usize, shared: bool) -> *mut u8 {
    let flags = if shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    map(len, libc::PROT_READ | libc::PROT_WRITE, flags, Some(fd))
}

fn map(len: usize, prot: libc::c_int, flags: libc::c_int, fd: Option<BorrowedFd<'_>>) -> *mut u8 {
    let fd = fd.map_or(-1, |f| f.as_raw_fd());
    // SAFETY: a new mapping at an address chosen by the kernel aliases nothing; the
    // arguments are plain values and `fd` (if any) is open for the duration of the call.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap {len}: {}",
        std::io::Error::last_os_error()
    );
    p.cast()
}

/// A new memfd (close-on-exec) of `len` bytes; panics if the kernel refuses.
pub(crate) fn memfd(name: &std::ffi::CStr, len: usize) -> OwnedFd {
    // SAFETY: memfd_create with a valid C string; the returned fd is new.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel returned a new fd that nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    std::fs::File::from(fd.try_clone().expect("dup the memfd"))
        .set_len(len as u64)
        .expect("size the memfd");
    fd
}

/// `madvise(MADV_NOHUGEPAGE)` on a mapping we own (advice only: errors are ignored).
pub(crate) fn no_huge_pages(ptr: *mut u8, len: usize) {
    // SAFETY: advice on a range mapped by `map_anonymous`; it changes no content.
    unsafe { libc::madvise(ptr.cast(), len, libc::MADV_NOHUGEPAGE) };
}

/// Unmaps a range returned by [`map_anonymous`] or [`map_file`] (called once, by its owner).
pub(crate) fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: the owner (`Mmap`) maps exactly this range, hands out no reference that
    // outlives it, and calls this once, on drop.
    unsafe { libc::munmap(ptr.cast(), len) };
}

/// Forks; the child performs `stores` (index, value) atomic stores into its copy of `words`
/// and exits with `_exit(0)`; returns the child's pid to the parent. Panics if fork fails.
pub(crate) fn fork_storing(words: &[AtomicU64], stores: &[(usize, u64)]) -> libc::pid_t {
    // SAFETY: the child only performs atomic stores into memory it owns a copy of (no
    // allocation, no lock) and `_exit`s, which is what a multithreaded process may do
    // after fork.
    match unsafe { libc::fork() } {
        0 => {
            for &(i, v) in stores {
                words[i].store(v, SeqCst);
            }
            // SAFETY: async-signal-safe exit of the forked child.
            unsafe { libc::_exit(0) }
        }
        pid if pid > 0 => pid,
        _ => panic!("fork failed: {}", std::io::Error::last_os_error()),
    }
}

/// Waits for our child `pid`; returns its wait status.
pub(crate) fn wait_child(pid: libc::pid_t) -> libc::c_int {
    let mut st = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    st
}
