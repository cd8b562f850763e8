//! Tracking memory writewatch does not own: a userfaultfd created by (or injected into)
//! another process, and that process's `/proc/PID/pagemap`.
//!
//! A userfaultfd acts on the address space of the process that *created* it, whoever holds
//! the fd. A tracker that holds another process's userfaultfd (taken with `pidfd_getfd`) can
//! register and write-protect that process's ranges with [`RemoteUffd`], and harvest + re-arm
//! its written pages with [`RemotePagemap`] (`PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING`).
//! This module adds no second `PAGEMAP_SCAN` wrapper: it drives `sys::pagemap_scan`.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use writewatch_core::remote::{RemotePagemap, RemoteUffd};
//! // Our own process stands in for "another" one here: the calls are the same for any pid
//! // whose userfaultfd we hold.
//! let Ok(uffd) = RemoteUffd::open_own() else { return Ok(()) }; // no userfaultfd access
//! let page = 4096;
//! let mut mem = vec![1u8; 9 * page];
//! let start = (mem.as_ptr() as usize + page - 1) & !(page - 1);
//! uffd.register_wp(start, 8 * page)?;
//! let pm = RemotePagemap::open(std::process::id())?;
//! let off = start - mem.as_ptr() as usize;
//! unsafe { std::ptr::write_volatile(&mut mem[off + 3 * page], 2) }; // write page 3
//! let mut runs = Vec::new();
//! pm.harvest(start, start + 8 * page, |a, b| runs.push(((a - start) / page, (b - start) / page)))?;
//! assert_eq!(runs, vec![(3, 4)]);
//! drop(uffd); // closing the userfaultfd unregisters the range
//! # Ok(()) }
//! ```

use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::{Errno, PublicErrno};
use crate::sys::{self, pm, PageRegion, ScanArgs};

/// The features a [`RemoteUffd`] negotiates: asynchronous write-protect (the kernel resolves
/// write faults itself; nobody has to read the fd) and write-protection of empty entries.
pub const REMOTE_FEATURES: u64 = (linux_raw_sys::general::UFFD_FEATURE_WP_ASYNC
    | linux_raw_sys::general::UFFD_FEATURE_WP_UNPOPULATED
    | linux_raw_sys::general::UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    as u64;

/// A userfaultfd in `WP_ASYNC | WP_UNPOPULATED` mode, whose ranges belong to the process that
/// created it (possibly another process).
///
/// Dropping it closes the fd; when it was the last reference the kernel unregisters every
/// range and the owner runs on untracked.
#[derive(Debug)]
pub struct RemoteUffd {
    uffd: userfaultfd::Uffd,
    features: u64,
}

/// Why a [`RemoteUffd`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RemoteUffdError {
    /// `UFFDIO_API` failed (a userfaultfd already handshaken, or not a userfaultfd).
    #[error("UFFDIO_API handshake failed (the fd must be a fresh userfaultfd)")]
    Api(#[source] Errno),
    /// The kernel lacks a needed feature.
    #[error(
        "the kernel lacks userfaultfd features {missing:#x} (WP_ASYNC needs Linux 6.7, \
         WP_UNPOPULATED 6.4)"
    )]
    Missing {
        /// The missing feature bits.
        missing: u64,
    },
    /// Opening a userfaultfd in this process failed.
    #[error("userfaultfd() failed (needs vm.unprivileged_userfaultfd=1, CAP_SYS_PTRACE or root)")]
    Open(#[source] Errno),
}

impl RemoteUffd {
    /// Handshakes `fd` (a fresh userfaultfd, e.g. one taken from another process with
    /// `pidfd_getfd`), asking for [`REMOTE_FEATURES`].
    pub fn from_fd(fd: OwnedFd) -> Result<Self, RemoteUffdError> {
        let (features, _ioctls) = sys::uffdio_api(fd.as_raw_fd(), REMOTE_FEATURES)
            .map_err(|e| RemoteUffdError::Api(e.public()))?;
        let missing = REMOTE_FEATURES & !features;
        if missing != 0 {
            return Err(RemoteUffdError::Missing { missing });
        }
        Ok(Self {
            uffd: sys::uffd_from_fd(fd),
            features,
        })
    }

    /// A userfaultfd of the calling process (for tests and self-tracking).
    pub fn open_own() -> Result<Self, RemoteUffdError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        let fd = sys::userfaultfd_syscall(flags)
            .or_else(|_| sys::userfaultfd_syscall(flags | 1 /* UFFD_USER_MODE_ONLY */))
            .map_err(|e| RemoteUffdError::Open(e.public()))?;
        Self::from_fd(fd)
    }

    /// The feature bits the kernel granted.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Registers `[start, start + len)` of the owner's address space in write-protect mode
    /// and write-protects it (every page, populated or not). `EBUSY`: another userfaultfd
    /// already registered part of it; `EINVAL`: not a page-aligned range of mappings that
    /// userfaultfd accepts (e.g. `VM_PFNMAP`/`VM_IO`); `ENOMEM`: a hole in the range.
    pub fn register_wp(&self, start: usize, len: usize) -> Result<(), Errno> {
        let addr = sys::Addr(start).ptr();
        self.uffd
            .register_with_mode(addr, len, userfaultfd::RegisterMode::WRITE_PROTECT)
            .map_err(|e| sys::errno_of(&e).public())?;
        self.uffd
            .write_protect(addr, len)
            .map_err(|e| sys::errno_of(&e).public())
    }

    /// Unregisters `[start, start + len)` (write-protection is dropped with it).
    pub fn unregister(&self, start: usize, len: usize) -> Result<(), Errno> {
        self.uffd
            .unregister(sys::Addr(start).ptr(), len)
            .map_err(|e| sys::errno_of(&e).public())
    }
}

/// An open `/proc/PID/pagemap` (any process the caller may read with ptrace access).
#[derive(Debug)]
pub struct RemotePagemap {
    file: std::fs::File,
    out: std::cell::RefCell<Vec<PageRegion>>,
}

impl RemotePagemap {
    /// Opens `/proc/PID/pagemap`.
    pub fn open(pid: u32) -> std::io::Result<Self> {
        Ok(Self {
            file: std::fs::File::open(format!("/proc/{pid}/pagemap"))?,
            out: std::cell::RefCell::new(vec![sys::EMPTY_PAGE_REGION; 1024]),
        })
    }

    /// Whether the kernel has `PAGEMAP_SCAN` (an empty scan answers instead of `ENOTTY`).
    pub fn scan_available(&self) -> bool {
        let mut out = [sys::EMPTY_PAGE_REGION; 1];
        let args = ScanArgs {
            start: 0x10000,
            end: 0x10000,
            ..Default::default()
        };
        sys::pagemap_scan(self.file.as_raw_fd(), &args, &mut out).is_ok()
    }

    /// The harvest of one range tracked by a [`RemoteUffd`]: calls `f(start, end)` for every
    /// run of pages in `[start, end)` whose content may have changed since the last harvest,
    /// and write-protects them again in the same walk (`PM_SCAN_WP_MATCHING`):
    ///
    /// - written pages (`PAGE_IS_WRITTEN`: present or swapped without the uffd-wp bit);
    /// - empty entries without a protection marker (zapped by `madvise(MADV_DONTNEED)` on
    ///   anonymous memory, whose content became zero, or page tables freed).
    ///
    /// Two walks, because one walk matches a conjunction of categories. Runs may repeat or
    /// overlap between the walks; a page written during the walk is reported now or next
    /// time, never lost. Returns the number of ioctls.
    pub fn harvest(
        &self,
        start: usize,
        end: usize,
        mut f: impl FnMut(usize, usize),
    ) -> Result<u64, Errno> {
        let flags = pm::PM_SCAN_WP_MATCHING | pm::PM_SCAN_CHECK_WPASYNC;
        let queries = [
            ScanArgs {
                flags,
                category_mask: pm::PAGE_IS_WRITTEN,
                return_mask: pm::PAGE_IS_WRITTEN,
                ..Default::default()
            },
            ScanArgs {
                flags,
                category_inverted: pm::PAGE_IS_PRESENT | pm::PAGE_IS_SWAPPED,
                category_mask: pm::PAGE_IS_PRESENT | pm::PAGE_IS_SWAPPED,
                return_mask: pm::PAGE_IS_PRESENT,
                ..Default::default()
            },
        ];
        self.walk(start, end, &queries, &mut f)
    }

    /// Calls `f(start, end)` for every run in `[start, end)` that is written (not
    /// write-protected) without changing any protection: a read-only look.
    pub fn written(
        &self,
        start: usize,
        end: usize,
        mut f: impl FnMut(usize, usize),
    ) -> Result<u64, Errno> {
        let q = ScanArgs {
            category_mask: pm::PAGE_IS_WRITTEN,
            return_mask: pm::PAGE_IS_WRITTEN,
            ..Default::default()
        };
        self.walk(start, end, &[q], &mut f)
    }

    /// Calls `f(start, end)` for every run in `[start, end)` of present pages that are not
    /// file pages: inside a private file mapping, exactly the pages the kernel copied on write
    /// (COW). Read-only. A page that leaves this set without being written was dropped by
    /// `madvise(MADV_DONTNEED)` and reads as the file's content again, which the uffd-wp
    /// marker the kernel keeps on file-backed zaps does not report.
    pub fn anon_present(
        &self,
        start: usize,
        end: usize,
        mut f: impl FnMut(usize, usize),
    ) -> Result<u64, Errno> {
        let file = pm::PAGE_IS_FILE;
        let q = ScanArgs {
            category_inverted: file,
            category_mask: file | pm::PAGE_IS_PRESENT,
            return_mask: pm::PAGE_IS_PRESENT,
            ..Default::default()
        };
        self.walk(start, end, &[q], &mut f)
    }

    fn walk(
        &self,
        start: usize,
        end: usize,
        queries: &[ScanArgs],
        f: &mut dyn FnMut(usize, usize),
    ) -> Result<u64, Errno> {
        let fd = self.file.as_raw_fd();
        let mut out = self.out.borrow_mut();
        let mut ioctls = 0;
        for q in queries {
            let mut cursor = start;
            while cursor < end {
                let args = ScanArgs {
                    start: cursor,
                    end,
                    ..*q
                };
                ioctls += 1;
                let (n, walk_end) =
                    sys::pagemap_scan(fd, &args, &mut out).map_err(PublicErrno::public)?;
                for r in &out[..n] {
                    f(r.start as usize, r.end as usize);
                }
                if n < out.len() || walk_end >= end || walk_end <= cursor {
                    break;
                }
                cursor = walk_end;
            }
        }
        Ok(ioctls)
    }
}
