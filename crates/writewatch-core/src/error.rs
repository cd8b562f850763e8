//! Error types: one enum per operation, each keeping the errno and naming the fix.

/// An error number the kernel returned (`errno`), e.g. `EBUSY`.
///
/// Displays as the C library names and describes it (`EBUSY: Device or resource busy`);
/// [`raw`](Self::raw) gives the number, and it converts into a [`std::io::Error`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(i32);

impl Errno {
    /// The errno with this number.
    pub const fn from_raw(errno: i32) -> Self {
        Self(errno)
    }

    /// The number (`libc::EBUSY`, ...).
    pub const fn raw(self) -> i32 {
        self.0
    }

    fn nix(self) -> nix::errno::Errno {
        nix::errno::Errno::from_raw(self.0)
    }
}

impl std::fmt::Debug for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.nix(), f)
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.nix(), f)
    }
}

impl std::error::Error for Errno {}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> Self {
        std::io::Error::from_raw_os_error(e.0)
    }
}

/// The public [`Errno`] of an errno from `nix` (crate-internal: `nix` stays out of the API).
pub(crate) trait PublicErrno {
    fn public(self) -> Errno;
}

impl PublicErrno for nix::errno::Errno {
    fn public(self) -> Errno {
        Errno(self as i32)
    }
}

/// Formats an optional hint as `": hint"` (nothing when there is none).
struct Hint<'a>(&'a Option<&'static str>);

impl std::fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(h) => write!(f, ": {h}"),
            None => Ok(()),
        }
    }
}

/// Why a tracker can no longer serve requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// `shutdown()` was called or the last `Tracker` handle was dropped.
    ShutDown,
    /// The fault-service thread panicked; the tracker released every range (so no writer hangs)
    /// and refuses all further work. Build a new tracker.
    Poisoned,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::ShutDown => f.write_str("the tracker was shut down"),
            Unavailable::Poisoned => f.write_str(
                "the tracker is poisoned: its fault-service thread panicked and every range was released; build a new tracker",
            ),
        }
    }
}

/// Why a region no longer answers dirty-set calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// The application unmapped (part of) the range (`munmap`).
    Unmapped,
    /// The application moved (part of) the range with `mremap`.
    Remapped,
    /// The [`Region`](crate::Region) was dropped: tracking stopped, so the live memory no
    /// longer holds content as it was at an earlier cut (pages preserved before the drop are
    /// still readable).
    Dropped,
}

impl std::fmt::Display for Invalidation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalidation::Unmapped => {
                f.write_str("the range was unmapped by the application (munmap)")
            }
            Invalidation::Remapped => {
                f.write_str("the range was moved by the application (mremap)")
            }
            Invalidation::Dropped => f.write_str(
                "the region was dropped, so tracking stopped: read epochs and snapshots before dropping their region",
            ),
        }
    }
}

/// Errors of [`TrackerBuilder::build`](crate::TrackerBuilder::build).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The process may not create a userfaultfd.
    #[error(
        "userfaultfd is not permitted for this process ({errno}): run as root, grant CAP_SYS_PTRACE, \
         give the user read/write access to /dev/userfaultfd (kernel >= 6.1), or set \
         `sysctl vm.unprivileged_userfaultfd=1`"
    )]
    PermissionDenied {
        /// The errno returned by the kernel.
        errno: Errno,
    },
    /// The kernel has no userfaultfd at all.
    #[error("this kernel has no userfaultfd ({errno}): it needs CONFIG_USERFAULTFD=y, kernel >= 4.3 (write-protect: >= 5.7)")]
    NoUserfaultfd {
        /// The errno returned by the kernel.
        errno: Errno,
    },
    /// A feature the tracker cannot work without is missing.
    #[error("the kernel lacks userfaultfd feature {feature}: it needs {needs}")]
    MissingFeature {
        /// The feature's uapi name.
        feature: &'static str,
        /// What provides it.
        needs: &'static str,
    },
    /// The `UFFDIO_API` handshake failed.
    #[error("UFFDIO_API handshake failed ({errno})")]
    Handshake {
        /// The errno returned by the kernel.
        errno: Errno,
    },
    /// Setting up the service thread's wake-up eventfd or `/proc/self/pagemap` failed.
    #[error("setting up the fault-service thread failed: {what} ({errno})")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// The errno.
        errno: Errno,
    },
    /// The fault-service thread could not be spawned.
    #[error("spawning the fault-service thread failed")]
    Spawn(#[source] std::io::Error),
    /// Two builder options cannot be combined.
    #[error("{what} cannot be combined with {with}: {fix}")]
    Incompatible {
        /// The option asked for.
        what: &'static str,
        /// The option or backend it conflicts with.
        with: &'static str,
        /// How to resolve it.
        fix: &'static str,
    },
    /// A builder value the tracker cannot use.
    #[error("invalid {what}: {why}; {fix}")]
    InvalidOption {
        /// The builder option.
        what: &'static str,
        /// What is wrong with the value.
        why: &'static str,
        /// How to fix it.
        fix: &'static str,
    },
}

/// Errors of [`Tracker::map_anonymous`](crate::Tracker::map_anonymous),
/// [`Tracker::map_shared`](crate::Tracker::map_shared) and [`Tracker::adopt`](crate::Tracker::adopt).
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// A zero-length range.
    #[error("the length is zero: a region needs at least one page")]
    ZeroLength,
    /// An address or length that is not a multiple of the page size.
    #[error("{what} {value:#x} is not a multiple of the page size ({page_size} bytes)")]
    Unaligned {
        /// `"address"` or `"length"`.
        what: &'static str,
        /// The offending value.
        value: usize,
        /// The page size it must be a multiple of.
        page_size: usize,
    },
    /// `ptr + len` overflows the address space.
    #[error("the range {start:#x} + {len:#x} overflows the address space")]
    Overflow {
        /// Start address.
        start: usize,
        /// Length.
        len: usize,
    },
    /// The range overlaps a range this tracker already tracks.
    #[error("the range {start:#x}..{end:#x} overlaps a region this tracker already tracks ({existing_start:#x}..{existing_end:#x})")]
    Overlap {
        /// Requested start.
        start: usize,
        /// Requested end.
        end: usize,
        /// Existing region's start.
        existing_start: usize,
        /// Existing region's end.
        existing_end: usize,
    },
    /// The range overlaps a range another tracker of this process already tracks.
    #[error(
        "the range {start:#x}..{end:#x} overlaps {existing_start:#x}..{existing_end:#x}, which another \
         tracker ({by}) already tracks: two trackers on one page would each miss the other's writes; \
         drop that tracker's Region first, or adopt a range disjoint from it"
    )]
    TrackedElsewhere {
        /// Requested start.
        start: usize,
        /// Requested end.
        end: usize,
        /// Start of the range already tracked (for a userfaultfd tracker: of its mapping).
        existing_start: usize,
        /// End of the range already tracked.
        existing_end: usize,
        /// Which kind of tracker (`"mprotect backend"` or `"userfaultfd"`).
        by: &'static str,
    },
    /// The range holds memory the tracker itself (or the allocator it uses) writes.
    #[error(
        "the range {start:#x}..{end:#x} contains {what} at {addr:#x}: tracking it would make the \
         tracker fault on its own state (a hang or a lost write); track memory the tracker does not \
         use: allocate it with Tracker::map_anonymous / map_shared, or adopt your own mmap'd range"
    )]
    OwnMemory {
        /// Requested start.
        start: usize,
        /// Requested end.
        end: usize,
        /// What lives there (e.g. `"the process heap ([heap])"`).
        what: &'static str,
        /// An address of it inside the range.
        addr: usize,
    },
    /// The mapping is not readable and writable.
    #[error(
        "the mapping at {addr:#x} is {perms}: a tracked region must be mapped readable and writable \
         (its safe accessors write it); mprotect it PROT_READ|PROT_WRITE before adopting it"
    )]
    NotReadWrite {
        /// Start of the offending mapping.
        addr: usize,
        /// Its permissions as in `/proc/self/maps` (e.g. `r--p`).
        perms: String,
    },
    /// Part of the range is not mapped.
    #[error("address {addr:#x} in the range is not mapped")]
    NotMapped {
        /// First unmapped address found.
        addr: usize,
    },
    /// The range is backed by a kind of memory userfaultfd write-protect cannot track.
    #[error(
        "the mapping at {addr:#x} ({what}) cannot be write-protect tracked: userfaultfd-wp supports private \
         anonymous memory (kernel >= 5.7), shmem/memfd and hugetlbfs (kernel >= 5.19), and mappings of \
         regular files on the async backend (kernel >= 6.7); map it anonymous, or from a memfd, instead"
    )]
    UnsupportedMemory {
        /// Start of the offending mapping.
        addr: usize,
        /// Its description (`/proc/self/maps` path or flags).
        what: String,
    },
    /// A mapping of a regular file, on a backend that cannot track it: only a
    /// `UFFD_FEATURE_WP_ASYNC` userfaultfd may register file-backed memory.
    #[error(
        "the mapping at {addr:#x} is a {kind} mapping ({path}), which the {backend} backend cannot \
         track: only the async backend can (userfaultfd WP_ASYNC, Linux >= 6.7; this kernel is \
         {kernel}): build the tracker with Backend::AsyncUffd, or copy the data into memory from \
         Tracker::map_anonymous / map_shared"
    )]
    FileBackedNeedsAsync {
        /// Start of the file-backed mapping.
        addr: usize,
        /// `"file-backed private"` or `"file-backed shared"`.
        kind: &'static str,
        /// The mapped file, as `/proc/self/maps` prints it.
        path: String,
        /// The tracker's backend (`"sync"` or `"mprotect"`).
        backend: &'static str,
        /// The running kernel's release (`uname -r`).
        kernel: String,
    },
    /// The range mixes page sizes (e.g. hugetlb and normal pages).
    #[error("the range mixes page sizes ({a} and {b} bytes): adopt each part separately")]
    MixedPageSizes {
        /// One page size.
        a: usize,
        /// The other.
        b: usize,
    },
    /// The kernel lacks write-protect support for this kind of memory.
    #[error("write-protect on {kind} memory is not supported by this kernel: it needs {needs}")]
    KindUnsupported {
        /// The memory kind.
        kind: &'static str,
        /// What provides it.
        needs: &'static str,
    },
    /// A system call failed.
    #[error("{op} failed ({errno}){}", Hint(.hint))]
    Sys {
        /// The operation.
        op: &'static str,
        /// The errno.
        errno: Errno,
        /// An explanation of the errno in this context, if there is one.
        hint: Option<&'static str>,
    },
    /// The tracker is shut down or poisoned.
    #[error("{0}")]
    Unavailable(Unavailable),
}

/// Errors of [`Region::cut`](crate::Region::cut).
#[derive(Debug, thiserror::Error)]
pub enum CutError {
    /// The region was invalidated by the application.
    #[error("the region at {start:#x} is no longer tracked: {reason}")]
    Invalidated {
        /// Region start.
        start: usize,
        /// What happened to it.
        reason: Invalidation,
    },
    /// The operation needs copy-before-write, which this backend cannot do.
    #[error("{what} needs copy-before-write, which the {backend} backend cannot do: build the tracker with Backend::SyncUffd (or Backend::Auto with Purpose::Snapshots)")]
    Unsupported {
        /// The operation.
        what: &'static str,
        /// The backend in use.
        backend: &'static str,
    },
    /// Live epochs still need copies of pages that the copy budget cannot hold
    /// ([`Region::prepare_overwrite`](crate::Region::prepare_overwrite)). Nothing was changed.
    #[error("live epochs still need copies of pages that the copy budget ({budget} bytes) cannot hold: read or drop those epochs first, or raise TrackerBuilder::copy_budget")]
    CopyBudget {
        /// The configured copy budget in bytes.
        budget: usize,
    },
    /// Re-protecting the dirty pages failed; the dirty bits were put back, nothing is lost.
    #[error("re-protecting the dirty pages failed ({errno}); the epoch stays open and no dirty page was lost")]
    Protect {
        /// The errno.
        errno: Errno,
    },
    /// The tracker is shut down or poisoned.
    #[error("{0}")]
    Unavailable(Unavailable),
}

/// Errors of the read-only region queries ([`Region::dirty_pages`](crate::Region::dirty_pages)).
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The region was invalidated by the application.
    #[error("the region at {start:#x} is no longer tracked: {reason}")]
    Invalidated {
        /// Region start.
        start: usize,
        /// What happened to it.
        reason: Invalidation,
    },
    /// The tracker is shut down or poisoned.
    #[error("{0}")]
    Unavailable(Unavailable),
}

impl From<Unavailable> for MapError {
    fn from(u: Unavailable) -> Self {
        MapError::Unavailable(u)
    }
}
impl From<Unavailable> for CutError {
    fn from(u: Unavailable) -> Self {
        CutError::Unavailable(u)
    }
}
impl From<Unavailable> for RegionError {
    fn from(u: Unavailable) -> Self {
        RegionError::Unavailable(u)
    }
}

/// Errors of [`Region::cut_and_copy`](crate::Region::cut_and_copy). The cause is the
/// error's [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum CutAndCopyError<E> {
    /// The cut failed.
    #[error("cut failed")]
    Cut(#[source] CutError),
    /// A page could not be read as it was at the cut.
    #[error("reading a page failed")]
    Read(#[source] SnapshotError),
    /// The sink failed.
    #[error("the sink failed")]
    Sink(#[source] E),
}

/// Errors of reading a page of an [`Epoch`](crate::Epoch) or [`Snapshot`](crate::Snapshot), and of rollback.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// The page is not part of this epoch (it was not written in it).
    #[error("page {page} is not in this epoch's dirty set")]
    NotInEpoch {
        /// The page index.
        page: u64,
    },
    /// The page was already read (epoch pages are released as they are consumed).
    #[error("page {page} was already consumed from this epoch")]
    AlreadyConsumed {
        /// The page index.
        page: u64,
    },
    /// The application discarded the page's content (`madvise(MADV_DONTNEED)`) after the cut,
    /// before it was preserved: its content at the cut is gone.
    #[error("page {page} was discarded by the application (madvise) after the cut; its content at the cut is lost")]
    Discarded {
        /// The page index.
        page: u64,
    },
    /// The page of a file-backed region lies past the end of its file: the file was
    /// truncated, so the page has no content (reading it would raise `SIGBUS`).
    #[error("page {page} lies past the end of the file mapped by the region (the file was truncated): extend the file again (ftruncate) to read it, or stop tracking the region")]
    BeyondEndOfFile {
        /// The page index.
        page: u64,
    },
    /// The page index is past the end of the region.
    #[error("page {page} is out of range (the region has {pages} pages)")]
    OutOfRange {
        /// The page index.
        page: u64,
        /// Pages in the region.
        pages: u64,
    },
    /// The buffer is not exactly one page long.
    #[error("the buffer is {len} bytes; a page is {page_size}")]
    BadBuffer {
        /// The buffer's length.
        len: usize,
        /// The page size.
        page_size: usize,
    },
    /// The region was unmapped or moved by the application.
    #[error("the region is no longer tracked: {0}")]
    Invalidated(Invalidation),
    /// The tracker is shut down or poisoned (live pages can no longer be trusted to be
    /// unchanged).
    #[error("{0}")]
    Unavailable(Unavailable),
    /// The backend cannot preserve content while writers run (async, mprotect): read pages
    /// with `Region::cut_and_copy` while the writers are quiesced instead.
    #[error("the {backend} backend cannot read an epoch's pages as they were at the cut (no copy-before-write): use Region::cut_and_copy with the writers quiesced, or Backend::SyncUffd")]
    Unsupported {
        /// The backend in use.
        backend: &'static str,
    },
    /// The snapshot belongs to another region.
    #[error("the snapshot was taken of another region")]
    WrongRegion,
}

impl SnapshotError {
    /// The page the error is about, if it is about one page.
    pub fn page(&self) -> Option<u64> {
        match self {
            SnapshotError::NotInEpoch { page }
            | SnapshotError::AlreadyConsumed { page }
            | SnapshotError::Discarded { page }
            | SnapshotError::BeyondEndOfFile { page }
            | SnapshotError::OutOfRange { page, .. } => Some(*page),
            SnapshotError::BadBuffer { .. }
            | SnapshotError::Invalidated(_)
            | SnapshotError::Unavailable(_)
            | SnapshotError::Unsupported { .. }
            | SnapshotError::WrongRegion => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_prints_as_nix_did() {
        let e = nix::errno::Errno::EBUSY.public();
        assert_eq!(e.raw(), libc::EBUSY);
        assert_eq!(e.to_string(), nix::errno::Errno::EBUSY.to_string());
        assert_eq!(format!("{e:?}"), "EBUSY");
        assert_eq!(std::io::Error::from(e).raw_os_error(), Some(libc::EBUSY));
    }

    #[test]
    fn hints_and_sources_print_once() {
        let with = MapError::Sys {
            op: "mmap",
            errno: Errno::from_raw(libc::ENOMEM),
            hint: Some("not enough memory"),
        };
        assert!(with.to_string().ends_with(": not enough memory"), "{with}");
        let without = MapError::Sys {
            op: "mmap",
            errno: Errno::from_raw(libc::ENOMEM),
            hint: None,
        };
        assert!(without.to_string().ends_with(')'), "{without}");
        let spawn = BuildError::Spawn(std::io::Error::from_raw_os_error(libc::EAGAIN));
        assert_eq!(
            spawn.to_string(),
            "spawning the fault-service thread failed"
        );
        assert!(std::error::Error::source(&spawn).is_some());
    }

    #[test]
    fn snapshot_error_page() {
        assert_eq!(SnapshotError::Discarded { page: 7 }.page(), Some(7));
        assert_eq!(
            SnapshotError::OutOfRange { page: 9, pages: 4 }.page(),
            Some(9)
        );
        assert_eq!(SnapshotError::WrongRegion.page(), None);
    }
}

/// Errors of [`Region::fork`](crate::Region::fork).
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    /// The region was invalidated (dropped, unmapped or moved by the application).
    #[error("cannot fork the region at {start:#x}: it is no longer tracked ({reason})")]
    Invalidated {
        /// Region start.
        start: usize,
        /// What happened to it.
        reason: Invalidation,
    },
    /// The backend cannot see a write before it lands, which a fork needs (to give the clone
    /// its own copy of the page first).
    #[error("fork needs copy-before-write, which the {backend} backend cannot do: build the tracker with Backend::SyncUffd")]
    Unsupported {
        /// The backend in use.
        backend: &'static str,
    },
    /// In-thread fault handling serves writes in the writing thread, where clones cannot be
    /// given their copies.
    #[error("fork is not available with in-thread fault handling: build the tracker with Backend::SyncUffd and without TrackerBuilder::in_thread_faults")]
    InThread,
    /// The region's kind of memory cannot be forked.
    #[error("{kind} regions cannot be forked: fork private anonymous or shmem regions (Tracker::map_anonymous, Tracker::map_shared, or adopted ones)")]
    KindUnsupported {
        /// The kind of the region.
        kind: &'static str,
    },
    /// Mapping or registering the clone failed.
    #[error("mapping the clone failed")]
    Map(#[source] MapError),
    /// Write-protecting the origin's written pages at the fork instant failed; nothing changed.
    #[error("write-protecting the origin's pages at the fork failed")]
    Protect(#[source] CutError),
    /// The tracker is shut down or poisoned.
    #[error("{0}")]
    Unavailable(Unavailable),
}

impl From<Unavailable> for ForkError {
    fn from(u: Unavailable) -> Self {
        ForkError::Unavailable(u)
    }
}
