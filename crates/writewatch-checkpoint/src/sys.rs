//! The only module with `unsafe` code: thin wrappers over `mmap`, `munmap`,
//! `preadv`, `flock`, `posix_fadvise`, `sync_file_range` (this file, which imports nothing
//! of the crate), and the raw-pointer restore entry point of the public API.

// `Store::restore_into_raw` is an `unsafe fn`, allowed in this module only: its file stands
// in `store/` beside the API it belongs to, and is declared here, so that this file imports
// nothing of the crate.
#[path = "store/raw.rs"]
mod raw_api;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// An owned private anonymous read-write mapping, unmapped on drop.
pub(crate) struct AnonMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is exclusively owned memory (like a `Box<[u8]>`); no
// thread-local state is involved, shared access only hands out `&[u8]`.
unsafe impl Send for AnonMap {}
// SAFETY: `&AnonMap` only gives `&[u8]` access, which is safe to share.
unsafe impl Sync for AnonMap {}

impl AnonMap {
    /// Maps `len` (> 0) zeroed bytes anywhere.
    pub(crate) fn new(len: usize) -> io::Result<AnonMap> {
        Self::map(std::ptr::null_mut(), len, 0)
    }

    /// Maps `len` zeroed bytes exactly at `addr`, failing with `EEXIST` if
    /// anything is already mapped there (`MAP_FIXED_NOREPLACE`).
    pub(crate) fn new_fixed(addr: usize, len: usize) -> io::Result<AnonMap> {
        let m = Self::map(addr as *mut libc::c_void, len, libc::MAP_FIXED_NOREPLACE)?;
        if m.ptr.as_ptr() as usize != addr {
            // Kernels before 4.17 treat the flag as a hint; `m` is dropped
            // (unmapped) here.
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        Ok(m)
    }

    fn map(addr: *mut libc::c_void, len: usize, extra: libc::c_int) -> io::Result<AnonMap> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: an anonymous private mapping with no fd; the kernel checks
        // all arguments. With MAP_FIXED_NOREPLACE (never MAP_FIXED) no
        // existing mapping can be replaced, so no live memory is affected.
        let p = unsafe {
            libc::mmap(
                addr,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | extra,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(AnonMap { ptr, len })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes owned by
        // `self`; the borrow ties the slice's lifetime to `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Gives up ownership; the caller becomes responsible for `munmap`.
    pub(crate) fn into_raw(self) -> (*mut u8, usize) {
        let me = std::mem::ManuallyDrop::new(self);
        (me.ptr.as_ptr(), me.len)
    }
}

impl Drop for AnonMap {
    fn drop(&mut self) {
        // SAFETY: we own this mapping (created by `map`, not given away by
        // `into_raw`), and no borrow of it outlives `self`.
        let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        if rc != 0 {
            tracing::warn!("munmap failed: {}", io::Error::last_os_error());
        }
    }
}

/// How long [`flock`] waits for a lock someone else holds before it reports the store as
/// locked. The holder is not always a real owner. Between `fork` and `exec`, a child of the
/// process that owns the store holds a copy of its descriptor, and so its `flock`, and the
/// lock stays taken after the owner closes it. Under load that window lasts milliseconds or
/// more. A clean-clone CI run got "store is locked" from `writewatch inspect` right after the
/// test's writer had closed the store, while another test thread was spawning a process.
pub(crate) const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// `flock` on an open file, without blocking for longer than [`LOCK_GRACE`]. Returns
/// `Ok(false)` if the lock is still held by another open file description after that.
pub(crate) fn flock(file: &File, exclusive: bool) -> io::Result<bool> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        // SAFETY: plain syscall on a valid fd owned by `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Access pattern hint for [`fadvise`].
#[derive(Clone, Copy)]
pub(crate) enum Advice {
    /// Data will be read sequentially.
    Sequential,
    /// Cached pages of this range are not needed any more.
    DontNeed,
}

/// `posix_fadvise` on a range (0 length = to the end). Hints only.
pub(crate) fn fadvise(file: &File, offset: u64, len: u64, advice: Advice) -> io::Result<()> {
    let adv = match advice {
        Advice::Sequential => libc::POSIX_FADV_SEQUENTIAL,
        Advice::DontNeed => libc::POSIX_FADV_DONTNEED,
    };
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: plain syscall on a valid fd; it only affects caching.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), off, len, adv) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Starts asynchronous writeback of a range (`SYNC_FILE_RANGE_WRITE`), so the
/// final `fdatasync` has less to do. Durability still comes from `fdatasync`.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: plain syscall on a valid fd; no memory is passed.
    let rc =
        unsafe { libc::sync_file_range(file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads exactly the total length of `bufs` from `file` at `offset` into the
/// buffers in order (`preadv`, retried on short reads and `EINTR`).
/// A premature end of file is `UnexpectedEof`.
pub(crate) fn preadv_exact(file: &File, mut offset: u64, bufs: &mut [&mut [u8]]) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    let mut idx = 0usize; // first buffer not fully read
    let mut skip = 0usize; // bytes already read into bufs[idx]
    while idx < bufs.len() {
        if bufs[idx].len() == skip {
            idx += 1;
            skip = 0;
            continue;
        }
        let end = (idx + IOV_MAX).min(bufs.len());
        let iov: Vec<libc::iovec> = bufs[idx..end]
            .iter_mut()
            .enumerate()
            .map(|(i, b)| {
                let s = if i == 0 { skip } else { 0 };
                libc::iovec {
                    iov_base: b[s..].as_mut_ptr().cast(),
                    iov_len: b.len() - s,
                }
            })
            .collect();
        let off = file_offset(offset)?;
        // SAFETY: every iovec points into a distinct `&mut [u8]` borrowed
        // from `bufs` for the duration of the call, with its exact length;
        // the count fits in c_int (<= IOV_MAX).
        let n = unsafe {
            libc::preadv(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                off,
            )
        };
        let Some(mut n) = read_step(n)? else {
            continue;
        };
        offset += n as u64;
        while n > 0 {
            let left = bufs[idx].len() - skip;
            if n >= left {
                n -= left;
                idx += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Reads exactly `dst.len() * 8` bytes from `file` at `offset` straight into the words of
/// `dst` (the kernel writes them; `pread`, retried on short reads and `EINTR`). A premature
/// end of file is `UnexpectedEof`.
pub(crate) fn pread_exact_words(
    file: &File,
    mut offset: u64,
    dst: &[std::sync::atomic::AtomicU64],
) -> io::Result<()> {
    // `AtomicU64` is an `UnsafeCell<u64>`: memory reached through a shared reference may be
    // written. Only the kernel writes it here (no Rust reference to it is created).
    let base: *mut u8 = dst.as_ptr().cast_mut().cast();
    let len = std::mem::size_of_val(dst);
    let mut done = 0usize;
    while done < len {
        let off = file_offset(offset)?;
        // SAFETY: `base + done .. base + len` lies inside `dst`, borrowed for the call; its
        // words are interior-mutable, so the kernel may store into them.
        let n = unsafe { libc::pread(file.as_raw_fd(), base.add(done).cast(), len - done, off) };
        let Some(n) = read_step(n)? else {
            continue;
        };
        done += n;
        offset += n as u64;
    }
    Ok(())
}

/// A file offset as `off_t` (`EINVAL` if it does not fit).
fn file_offset(offset: u64) -> io::Result<i64> {
    i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Interprets the return value of one `pread`/`preadv` call of a read-exactly loop:
/// `Ok(None)` to retry (`EINTR`), `Ok(Some(n))` for `n > 0` bytes read, and an error
/// otherwise (`UnexpectedEof` at the end of the file).
fn read_step(n: isize) -> io::Result<Option<usize>> {
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(None);
        }
        return Err(e);
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file ended early",
        ));
    }
    Ok(Some(n as usize))
}
