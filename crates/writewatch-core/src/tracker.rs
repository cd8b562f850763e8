//! [`Tracker`]: the handle of one userfaultfd (or mprotect) tracker, mapping and adopting
//! regions; see `builder.rs` for how it is built.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;

use crate::backend::{Backend, Features};
use crate::command::{Command, Control};
use crate::error::{MapError, PublicErrno, Unavailable};
use crate::maps::{self, Vma};
use crate::probe::Feature;
use crate::range::{RegionInner, RegionKind};
use crate::region::Region;
use crate::shared::Shared;
use crate::stats::{ThreadFaults, TrackerStats};
use crate::sys;

/// Serialises the process-wide overlap check and the registration of adopted ranges, so two
/// trackers adopting overlapping ranges at once cannot both pass the check.
static ADOPT_LOCK: Mutex<()> = Mutex::new(());

/// The owner of the service thread: dropping the last one shuts the tracker down.
struct TrackerHandle {
    shared: Arc<Control>,
}

impl Drop for TrackerHandle {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

/// A userfaultfd write-protect tracker: one userfaultfd, one fault-service thread, any number
/// of regions.
///
/// Cloning gives another handle to the same tracker. The tracker shuts down when
/// [`shutdown`](Self::shutdown) is called or the last handle is dropped: every range is
/// unregistered (threads blocked on a fault are released and their writes complete
/// untracked), the thread is joined and the userfaultfd closed. Regions outlive that: their
/// memory stays valid, and their dirty-set calls return [`Unavailable::ShutDown`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use writewatch_core::Tracker;
/// let tracker = Tracker::builder().merge_gap_pages(8).build()?;
/// let region = tracker.map_anonymous(1 << 20)?;
/// assert_eq!(region.page_count(), 256);
/// tracker.shutdown();
/// assert!(region.cut().is_err());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tracker {
    handle: Arc<TrackerHandle>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("features", &self.handle.shared.features)
            .finish()
    }
}

impl Tracker {
    /// The handle of a tracker whose service thread `control` commands.
    pub(crate) fn start(control: Control) -> Self {
        Tracker {
            handle: Arc::new(TrackerHandle {
                shared: Arc::new(control),
            }),
        }
    }

    fn shared(&self) -> &Arc<Control> {
        &self.handle.shared
    }

    /// The tracker-wide state: its address tags the tracker (mprotect slot owners) and marks
    /// the tracker's own memory (`adopt` refuses it).
    fn state(&self) -> &Arc<Shared> {
        &self.handle.shared.shared
    }

    /// The features negotiated with the kernel.
    pub fn features(&self) -> Features {
        self.shared().features
    }

    /// The backend in use (never `Auto`: resolved at build time).
    pub fn backend(&self) -> Backend {
        self.shared().backend
    }

    /// Whether the tracker still serves requests.
    pub fn is_running(&self) -> bool {
        self.shared().available().is_ok()
    }

    /// Why the tracker no longer serves requests, if it does not.
    pub fn unavailable(&self) -> Option<Unavailable> {
        self.shared().available().err()
    }

    /// Maps `len` bytes of private anonymous memory, tracked from birth: a page is reported
    /// dirty if and only if it was written. `len` must be a non-zero multiple of the page size.
    /// Transparent huge pages are disabled on the range (`MADV_NOHUGEPAGE`) so the dirty
    /// granularity stays 4 KiB.
    pub fn map_anonymous(&self, len: usize) -> Result<Region, MapError> {
        let ps = sys::base_page_size();
        check_len(len, ps)?;
        self.shared().available()?;
        let map = sys::Mapping::anonymous(len).map_err(|errno| MapError::Sys {
            op: "mmap",
            errno: errno.public(),
            hint: mmap_hint(errno),
        })?;
        let inner = self.new_inner(map, ps, RegionKind::Anonymous);
        self.register(inner, false)
    }

    /// Maps `len` bytes of a new memfd, shared (`MAP_SHARED`), tracked from birth.
    /// Write-protect on shmem needs kernel >= 5.19.
    ///
    /// The range is `MADV_DONTFORK`: a `fork()` child does not inherit it (a child that
    /// touches it gets `SIGSEGV`), because the child's writes would change this process's
    /// memory without being reported. Limits (docs/design.md section 6): writes through a
    /// second mapping of the same pages that the application makes itself (e.g.
    /// `mremap(ptr, 0, len, MREMAP_MAYMOVE)`, or mapping `/proc/self/fd/N` of the memfd) are
    /// not seen and nothing is invalidated; nor are writes by the kernel or a device through
    /// pinned pages (`O_DIRECT`, RDMA; io_uring fixed buffers are reported dirty at every
    /// cut), see [`adopt`](Self::adopt).
    pub fn map_shared(&self, len: usize) -> Result<Region, MapError> {
        let ps = sys::base_page_size();
        check_len(len, ps)?;
        self.shared().available()?;
        if self.backend() != Backend::Mprotect && !self.features().has(Feature::WpHugetlbfsShmem) {
            return Err(MapError::KindUnsupported {
                kind: "shmem",
                needs: "Linux >= 5.19 (UFFD_FEATURE_WP_HUGETLBFS_SHMEM)",
            });
        }
        let (map, _) = sys::Mapping::shared(len).map_err(|(errno, op)| MapError::Sys {
            op,
            errno: errno.public(),
            hint: mmap_hint(errno),
        })?;
        let inner = self.new_inner(map, ps, RegionKind::Shmem);
        self.register(inner, false)
    }

    /// Starts tracking a mapping the caller already has (private anonymous, shmem/memfd, or
    /// hugetlbfs; on the async backend also private and shared mappings of regular files, see
    /// [`RegionKind::FilePrivate`]; elsewhere those get [`MapError::FileBackedNeedsAsync`]).
    /// The first cut reports every page dirty: its content is new to the tracker.
    /// Dropping the region stops tracking; the memory is never unmapped by the tracker.
    ///
    /// Refused with a typed [`MapError`]: mappings that are not readable and writable
    /// ([`MapError::NotReadWrite`]); the process heap (`[heap]`), the main stack, the calling
    /// thread's and the service thread's stacks, and ranges holding the tracker's own state or
    /// the calling thread's allocator arena ([`MapError::OwnMemory`]: the tracker would fault
    /// on its own writes); ranges another tracker of this process tracks
    /// ([`MapError::TrackedElsewhere`]; with two userfaultfd trackers the kernel refuses:
    /// [`MapError::Sys`] with `EBUSY`). Not detected: other threads' allocator arenas (glibc
    /// gives each thread its own anonymous mapping): adopt only memory you mapped yourself.
    ///
    /// # Limits: writes the tracker cannot see
    /// Only writes through *this* mapping, by this process's CPU accesses (and, on the sync
    /// backend without `UFFD_USER_MODE_ONLY`, by system calls such as `read(2)`), are tracked.
    /// Not seen, and not reported (docs/design.md section 6):
    /// - shared memory (memfd, shmem, `MAP_SHARED`) written through another mapping: by a
    ///   `fork()` child (which inherits a shared mapping unless it is `MADV_DONTFORK`: call
    ///   `madvise(ptr, len, MADV_DONTFORK)` yourself before forking), by another process, or
    ///   through an alias in this process (`mremap(ptr, 0, len, MREMAP_MAYMOVE)`, a second
    ///   `mmap` of the file);
    /// - content changed through the file: `fallocate(FALLOC_FL_PUNCH_HOLE)` or `ftruncate`
    ///   of an adopted memfd zeroes pages (or makes them raise `SIGBUS`) without a report;
    /// - writes by the kernel or a device through pinned pages: io_uring fixed buffers
    ///   (`IORING_OP_READ_FIXED`), `O_DIRECT` reads, RDMA, vmsplice. They bypass page-table
    ///   protection entirely. io_uring's registered buffers are detected: every cut reports
    ///   their pages dirty; their content in epochs and snapshots is not guaranteed. The
    ///   others are not detected.
    ///
    /// On the mprotect backend, a write to a tracked page the application itself made
    /// read-only (`mprotect(PROT_READ)`) is taken for a tracked first write: the page becomes
    /// writable again and is reported. Reads, and any access to pages the application made
    /// `PROT_NONE` (guard pages), keep the application's protection (`SIGSEGV`).
    ///
    /// # Safety
    /// `[ptr, ptr+len)` must stay mapped until the returned [`Region`] (and every
    /// [`Epoch`](crate::Epoch) taken from it) is dropped, and the caller must not unmap or remap it while
    /// tracked except as documented (such a change invalidates the region). The caller's other
    /// accesses to the memory must follow the rules of [`Region::as_mut_slice`].
    #[allow(unsafe_code)] // a public unsafe contract, forwarded to `sys::Mapping::adopted`
    pub unsafe fn adopt(&self, ptr: *mut u8, len: usize) -> Result<Region, MapError> {
        // SAFETY: the caller's contract (see `# Safety`) is exactly `Mapping::adopted`'s.
        self.adopt_with(ptr, len, || unsafe { sys::Mapping::adopted(ptr, len) })
    }

    /// `adopt`'s checks and registration; `make` gives the range's `Mapping` once the range
    /// passed every check (mapped read-write, adoptable kind, not the tracker's own memory).
    pub(crate) fn adopt_with(
        &self,
        ptr: *mut u8,
        len: usize,
        make: impl FnOnce() -> Option<sys::Mapping>,
    ) -> Result<Region, MapError> {
        let start = ptr as usize;
        let ps0 = sys::base_page_size();
        if len == 0 {
            return Err(MapError::ZeroLength);
        }
        if start % ps0 != 0 {
            return Err(MapError::Unaligned {
                what: "address",
                value: start,
                page_size: ps0,
            });
        }
        let end = start
            .checked_add(len)
            .ok_or(MapError::Overflow { start, len })?;
        if len % ps0 != 0 {
            return Err(MapError::Unaligned {
                what: "length",
                value: len,
                page_size: ps0,
            });
        }
        self.shared().available()?;
        // Two trackers on one page would each miss the other's writes: refuse, process-wide
        // (checked first: an mprotect tracker's range is read-only, which `check_adoptable`
        // would report instead). The lock is held until the range is registered.
        let _g = ADOPT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let me = Arc::as_ptr(self.state()) as usize;
        if let Some((a, b, owner)) = sys::segv::overlapping(start, end) {
            return Err(if owner == me {
                MapError::Overlap {
                    start,
                    end,
                    existing_start: a,
                    existing_end: b,
                }
            } else {
                MapError::TrackedElsewhere {
                    start,
                    end,
                    existing_start: a,
                    existing_end: b,
                    by: "mprotect backend",
                }
            });
        }
        let smaps = std::fs::read_to_string("/proc/self/smaps").map_err(|e| MapError::Sys {
            op: "read /proc/self/smaps",
            errno: crate::error::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            hint: None,
        })?;
        let vmas = maps::parse_smaps(&smaps);
        let (kind, ps) = maps::check_adoptable(&vmas, start, end)?;
        if start % ps != 0 {
            return Err(MapError::Unaligned {
                what: "address",
                value: start,
                page_size: ps,
            });
        }
        if len % ps != 0 {
            return Err(MapError::Unaligned {
                what: "length",
                value: len,
                page_size: ps,
            });
        }
        if kind.is_file() && self.backend() != Backend::AsyncUffd {
            return Err(file_needs_async(&vmas, start, end, kind, self.backend()));
        }
        if kind != RegionKind::Anonymous
            && !kind.is_file()
            && self.backend() != Backend::Mprotect
            && !self.features().has(Feature::WpHugetlbfsShmem)
        {
            return Err(MapError::KindUnsupported {
                kind: kind.name(),
                needs: "Linux >= 5.19 (UFFD_FEATURE_WP_HUGETLBFS_SHMEM)",
            });
        }
        self.check_not_own_memory(&vmas, start, end)?;
        let map = make().ok_or(MapError::NotMapped { addr: 0 })?;
        let private_shmem = vmas
            .iter()
            .any(|v| v.end > start && v.start < end && !v.shared);
        let inner = self.new_inner_cow(map, ps, kind, private_shmem);
        // The region's own state, allocated just now, must not live in the range either.
        let words_addr = inner.dirty.words_addr();
        let own = [
            (
                Arc::as_ptr(&inner) as usize,
                "the region's own state (allocated on the heap of the calling thread)",
            ),
            (
                words_addr,
                "the region's dirty bitmap (allocated on the heap of the calling thread)",
            ),
        ];
        if let Some(&(addr, what)) = own.iter().find(|(a, _)| (start..end).contains(a)) {
            return Err(MapError::OwnMemory {
                start,
                end,
                what,
                addr,
            });
        }
        if self.backend() == Backend::Mprotect {
            // A userfaultfd tracker's range (uffd tracker ranges reject each other in the
            // kernel: `UFFDIO_REGISTER` fails with EBUSY).
            if let Some((a, b)) = maps::uffd_wp_overlap(&vmas, start, end) {
                return Err(MapError::TrackedElsewhere {
                    start,
                    end,
                    existing_start: a,
                    existing_end: b,
                    by: "userfaultfd",
                });
            }
        }
        self.register(inner, true)
    }

    /// Refuses ranges that hold memory the tracker or its allocator writes: the calling
    /// thread's and the service thread's stacks, and the mappings that hold the tracker's
    /// shared state and the calling thread's allocator arena (found with a fresh small
    /// allocation). `[heap]` and `[stack]` are refused by `check_adoptable`.
    fn check_not_own_memory(&self, vmas: &[Vma], start: usize, end: usize) -> Result<(), MapError> {
        let overlaps = |(a, b): (usize, usize)| a < end && b > start;
        let svc_stack = {
            use std::os::unix::thread::JoinHandleExt;
            let j = self.shared().join.lock().unwrap_or_else(|e| e.into_inner());
            j.as_ref().and_then(|h| sys::thread_stack(h.as_pthread_t()))
        };
        let stacks = [
            (sys::current_thread_stack(), "the calling thread's stack"),
            (svc_stack, "the fault-service thread's stack"),
        ];
        for (range, what) in stacks {
            if let Some(r) = range.filter(|&r| overlaps(r)) {
                return Err(MapError::OwnMemory {
                    start,
                    end,
                    what,
                    addr: r.0.max(start),
                });
            }
        }
        let probe = Box::new(0u64);
        let heap = [
            (
                Arc::as_ptr(self.state()) as usize,
                "the tracker's shared state (on the heap)",
            ),
            (
                &*probe as *const u64 as usize,
                "the calling thread's allocator arena (a fresh allocation landed there)",
            ),
        ];
        for (addr, what) in heap {
            // The whole mapping the allocation lives in: the allocator uses all of it.
            let (a, b) = vmas
                .iter()
                .find(|v| v.start <= addr && addr < v.end)
                .map_or((addr, addr + 1), |v| (v.start, v.end));
            if overlaps((a, b)) {
                return Err(MapError::OwnMemory {
                    start,
                    end,
                    what,
                    addr,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn new_inner(
        &self,
        map: sys::Mapping,
        ps: usize,
        kind: RegionKind,
    ) -> Arc<RegionInner> {
        self.new_inner_cow(map, ps, kind, false)
    }

    /// [`new_inner`](Self::new_inner) of memory that may hold COW copies of a shmem file's
    /// pages (`private_shmem`: a `MAP_PRIVATE` mapping of a memfd or a `/dev/shm` file).
    pub(crate) fn new_inner_cow(
        &self,
        map: sys::Mapping,
        ps: usize,
        kind: RegionKind,
        private_shmem: bool,
    ) -> Arc<RegionInner> {
        let id = self.shared().next_id.fetch_add(1, Ordering::Relaxed);
        let mut inner = RegionInner::new(id, map, ps, kind);
        inner.cow_file |= private_shmem && kind == RegionKind::Shmem;
        // Adopted file or shmem memory can be truncated under the region by its owner.
        if !inner.mapping.owned() && kind != RegionKind::Anonymous {
            match std::fs::File::open("/proc/self/mem") {
                Ok(f) => inner.file_mem = Some(Arc::new(f)),
                Err(e) => {
                    tracing::warn!(%e, "no /proc/self/mem: pages of this region are read directly")
                }
            }
        }
        // Owned private anonymous memory starts empty: it can be armed lazily.
        if let Some(mem) = &self.shared().mem {
            if kind == RegionKind::Anonymous && inner.mapping.owned() {
                inner.make_lazy(Arc::clone(mem));
            }
        }
        Arc::new(inner)
    }

    pub(crate) fn register(
        &self,
        inner: Arc<RegionInner>,
        all_dirty: bool,
    ) -> Result<Region, MapError> {
        let span = tracing::debug_span!(
            "register",
            start = format_args!("{:#x}", inner.start),
            len = inner.len
        );
        let _g = span.enter();
        let region = Arc::clone(&inner);
        match self.shared().call(|reply| Command::Register {
            region,
            all_dirty,
            reply,
        }) {
            Ok(Ok(())) => {
                if self.backend() == Backend::Mprotect {
                    // Every mprotect region (mapped or adopted) is tagged with its tracker,
                    // so a later overlapping `adopt` tells `Overlap` from `TrackedElsewhere`.
                    sys::segv::set_owner(inner.start, Arc::as_ptr(self.state()) as usize);
                }
                Ok(Region {
                    inner,
                    shared: Arc::clone(self.shared()),
                })
            }
            Ok(Err(e)) => Err(e),
            Err(u) => Err(u.into()),
        }
    }

    /// Shuts the tracker down now (see the type's documentation). Idempotent.
    pub fn shutdown(&self) {
        self.shared().shutdown();
    }

    /// A snapshot of the tracker's counters. (Mprotect backend: fault counts are
    /// process-wide, summed over every mprotect tracker.)
    pub fn stats(&self) -> TrackerStats {
        let s = self.shared();
        let mut threads: Vec<ThreadFaults> = s
            .threads
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(&tid, &faults)| ThreadFaults { tid, faults })
                    .collect()
            })
            .unwrap_or_default();
        threads.sort_by_key(|t| t.tid);
        let policy = s.policy.lock().map(|p| p.clone()).unwrap_or_default();
        let mut stats = s.counters.load(threads, policy);
        if s.backend == Backend::Mprotect {
            // Faults are resolved by the signal handler, which counts them process-wide.
            stats.wp_faults = sys::segv::FAULTS.load(Ordering::Relaxed);
            stats.faults = stats.wp_faults;
        }
        stats
    }

    /// Test hook: makes the fault-service thread panic, to exercise poisoning.
    #[doc(hidden)]
    pub fn debug_inject_panic(&self) {
        let _ = self.shared().cmd_tx.send(Command::InjectPanic);
        self.shared().kick();
        let handle = self
            .shared()
            .join
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// The typed refusal of a file-backed range on a backend other than async.
fn file_needs_async(
    vmas: &[Vma],
    start: usize,
    end: usize,
    kind: RegionKind,
    backend: Backend,
) -> MapError {
    let v = vmas
        .iter()
        .find(|v| v.end > start && v.start < end && !v.path.is_empty() && !v.path.starts_with('['));
    MapError::FileBackedNeedsAsync {
        addr: v.map_or(start, |v| v.start),
        kind: kind.name(),
        path: v.map_or_else(String::new, |v| v.path.clone()),
        backend: backend.name(),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into()),
    }
}

fn check_len(len: usize, ps: usize) -> Result<(), MapError> {
    if len == 0 {
        return Err(MapError::ZeroLength);
    }
    if len % ps != 0 {
        return Err(MapError::Unaligned {
            what: "length",
            value: len,
            page_size: ps,
        });
    }
    if len > isize::MAX as usize {
        return Err(MapError::Overflow { start: 0, len });
    }
    Ok(())
}

fn mmap_hint(errno: Errno) -> Option<&'static str> {
    match errno {
        Errno::ENOMEM => Some("not enough address space or memory (check vm.overcommit_memory, vm.max_map_count, ulimit -v)"),
        Errno::EMFILE | Errno::ENFILE => Some("too many open files (raise ulimit -n)"),
        _ => None,
    }
}
