//! The tracker: builder, feature negotiation, the handle, and the command channel to the
//! fault-service thread.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use linux_raw_sys::general as k;
use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::error::{BuildError, CutError, MapError, Unavailable};
use crate::probe::{self, Access, Feature};
use crate::region::{self, Epoch, Region, RegionInner, RegionKind};
use crate::stats::{Counters, ThreadFaults, TrackerStats};
use crate::{service, sys};

/// Serialises the process-wide overlap check and the registration of adopted ranges, so two
/// trackers adopting overlapping ranges at once cannot both pass the check.
static ADOPT_LOCK: Mutex<()> = Mutex::new(());

/// How writes are tracked. Chosen at build time; the same [`Region`] / `cut()` /
/// [`DirtySet`](crate::DirtySet) API on all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Backend {
    /// userfaultfd write-protect with a fault-service thread: every first write round-trips
    /// through the service thread (~10-15 us), which allows copy-before-write: consistent live
    /// cuts whose content can be read while writers continue, snapshots, rollback.
    SyncUffd,
    /// userfaultfd `WP_ASYNC`: the kernel resolves write faults itself (~1 us); a cut is one
    /// `PAGEMAP_SCAN` walk that harvests and re-arms. No copy-before-write: capturing content
    /// needs the caller's writers quiesced ([`Region::cut_and_copy`]). Linux >= 6.7.
    AsyncUffd,
    /// `mprotect(PROT_READ)` + a SIGSEGV handler: works without userfaultfd. Splits VMAs per
    /// written page; system calls that write tracked memory fail with `EFAULT`; `madvise`
    /// zaps are not observed. No copy-before-write.
    Mprotect,
    /// Probe at build time: for [`Purpose::DirtyTracking`], async > sync > mprotect; for
    /// [`Purpose::Snapshots`] (the default), sync > mprotect.
    Auto,
}

impl Backend {
    /// A short name (`sync`, `async`, `mprotect`, `auto`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::SyncUffd => "sync",
            Backend::AsyncUffd => "async",
            Backend::Mprotect => "mprotect",
            Backend::Auto => "auto",
        }
    }

    /// Whether the backend can preserve page content before a write (epochs readable while
    /// writers run, snapshots, rollback).
    pub fn copies_before_write(self) -> bool {
        self == Backend::SyncUffd
    }
}

/// What `Backend::Auto` optimises for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Purpose {
    /// Dirty sets only: the cheapest tracking available.
    DirtyTracking,
    /// Content at a cut while writers run: needs copy-before-write (the sync backend).
    #[default]
    Snapshots,
}

/// Features negotiated with the kernel for one tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Features {
    /// Raw `UFFD_FEATURE_*` bits granted.
    pub bits: u64,
    /// Whether the userfaultfd was opened with `UFFD_USER_MODE_ONLY`: if so, a system call that
    /// writes tracked memory (e.g. `read(2)` into a tracked buffer) fails with `EFAULT`.
    pub user_mode_only: bool,
}

impl Features {
    /// Whether `f` was negotiated.
    pub fn has(&self, f: Feature) -> bool {
        match f {
            Feature::KernelModeFaults => !self.user_mode_only,
            Feature::PagemapScan => false,
            other => other.bit().is_some_and(|b| self.bits & b != 0),
        }
    }
}

/// Tunables fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub merge_gap_pages: u64,
    pub event_batch: usize,
    pub thread_name: String,
    pub trace_faults: bool,
    pub fault_around: u64,
    pub spin: std::time::Duration,
    /// Eager re-protection: re-arm pages written at least this long ago (sync backend).
    pub eager: Option<std::time::Duration>,
    /// In-thread fault handling (`UFFD_FEATURE_SIGBUS`, sync backend).
    pub in_thread: bool,
}

/// Builds a [`Tracker`]; see [`Tracker::builder`].
#[derive(Debug, Clone)]
pub struct TrackerBuilder {
    config: Config,
    disabled: Vec<Feature>,
    force_user_mode_only: bool,
    copy_budget: usize,
    backend: Backend,
    purpose: Purpose,
}

impl Default for TrackerBuilder {
    fn default() -> Self {
        Self {
            config: Config {
                merge_gap_pages: 8,
                event_batch: 64,
                thread_name: "writewatch-svc".into(),
                trace_faults: false,
                fault_around: 0,
                spin: std::time::Duration::ZERO,
                eager: None,
                in_thread: false,
            },
            disabled: Vec::new(),
            force_user_mode_only: false,
            copy_budget: 64 << 20,
            backend: Backend::Auto,
            purpose: Purpose::Snapshots,
        }
    }
}

impl TrackerBuilder {
    /// The largest [`spin`](Self::spin) and [`eager_reprotect`](Self::eager_reprotect)
    /// durations: larger values are clamped to one hour (the service thread adds them to
    /// `Instant`s, which a value such as `Duration::MAX` would overflow).
    pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(3600);

    /// Runs of dirty pages separated by at most this many clean pages are re-protected with
    /// one ioctl at a cut (default 8; 0 disables merging).
    pub fn merge_gap_pages(mut self, pages: u64) -> Self {
        self.config.merge_gap_pages = pages;
        self
    }

    /// Maximum number of events read from the userfaultfd per `read(2)` (default 64, min 1).
    pub fn event_batch(mut self, events: usize) -> Self {
        self.config.event_batch = events.clamp(1, 4096);
        self
    }

    /// Name of the fault-service thread (default `writewatch-svc`). A name containing a NUL
    /// byte makes [`build`](Self::build) fail with [`BuildError::InvalidOption`].
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.config.thread_name = name.into();
        self
    }

    /// Emit a `tracing` TRACE event per serviced fault (default off; costs a few ns per fault
    /// even when filtered out by the subscriber).
    pub fn trace_faults(mut self, on: bool) -> Self {
        self.config.trace_faults = on;
        self
    }

    /// The tracking backend (default [`Backend::Auto`]).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// What [`Backend::Auto`] optimises for (default [`Purpose::Snapshots`]).
    pub fn purpose(mut self, purpose: Purpose) -> Self {
        self.purpose = purpose;
        self
    }

    /// Memory for pages preserved by copy-before-write for epochs being read, default
    /// 64 MiB. When it is full, a writer whose page must be preserved waits until a reader
    /// consumes (or drops) preserved pages: nothing is dropped. Readers must therefore not be
    /// the threads that write the region. Snapshots ([`Region::snapshot`]) are not charged:
    /// they keep their copies until dropped (at most one per page of the region), so waiting
    /// for them could never end.
    pub fn copy_budget(mut self, bytes: usize) -> Self {
        self.copy_budget = bytes.max(1);
        self
    }

    /// Adaptive locality batching for sequential writers: after consecutive faults on
    /// consecutive pages, the service thread also un-protects a growing run of up to
    /// `max_pages` following pages (doubling per consecutive fault, like readahead), copying
    /// them first if a snapshot needs them. Those pages count as written in the current epoch:
    /// an over-report of at most `max_pages - 1` pages per fault. Default 0 (off).
    pub fn fault_around(mut self, max_pages: u64) -> Self {
        self.config.fault_around = max_pages.min(1024);
        self
    }

    /// Busy-poll the userfaultfd for this long before blocking in `poll(2)` (default 0).
    /// Cuts the wake-up latency of the next fault at the cost of a spinning core. Values above
    /// [`MAX_DURATION`](Self::MAX_DURATION) (one hour) are clamped to it.
    pub fn spin(mut self, d: std::time::Duration) -> Self {
        self.config.spin = d.min(Self::MAX_DURATION);
        self
    }

    /// Eager re-protection (sync backend; no effect on the others, whose cuts are already one
    /// walk or never hold writers): once a written page has stayed writable for `age`, the
    /// service thread write-protects it again in the background, in its idle time, in chunks
    /// of at most 32 ioctls (a fault arriving meanwhile waits for the chunk: tens of
    /// microseconds). Its dirty bit stays set. A cut then only re-protects the pages written
    /// in the last `age`, so the time it holds faults, and the caller's wait, shrink from one
    /// ioctl per dirty run to nearly nothing when writers spread their writes over the epoch
    /// (the live-migration "pre-copy" idea applied to the cut).
    ///
    /// Cost: the same re-protect ioctls, moved out of the cut; and one extra fault for each
    /// page written again after it was re-armed. A page is re-armed at most once per epoch:
    /// after that extra fault it stays writable until the cut, so hot pages cost at most one
    /// extra fault per epoch. Default: off.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let tracker = writewatch_core::Tracker::builder()
    ///     .eager_reprotect(Duration::from_millis(2))
    ///     .build()?;
    /// let region = tracker.map_anonymous(64 * 4096)?;
    /// region.as_atomic_u64()[0].store(1, std::sync::atomic::Ordering::Relaxed);
    /// std::thread::sleep(Duration::from_millis(50)); // the page is re-armed meanwhile
    /// let epoch = region.cut()?;
    /// assert_eq!(epoch.dirty().iter().collect::<Vec<_>>(), vec![0]);
    /// # Ok(()) }
    /// ```
    ///
    /// Ages above [`MAX_DURATION`](Self::MAX_DURATION) (one hour) are clamped to it.
    pub fn eager_reprotect(mut self, age: std::time::Duration) -> Self {
        self.config.eager = Some(age.min(Self::MAX_DURATION));
        self
    }

    /// In-thread fault handling (sync backend): the thread whose write hits a protected page
    /// serves its own fault in a `SIGBUS` handler (`UFFD_FEATURE_SIGBUS`) instead of sleeping
    /// until the service thread has served it. The handler does what the service thread would:
    /// copies the page for every epoch or snapshot that still needs it, sets the dirty bit,
    /// un-protects the page; cuts still hold faults that arrive while they run, so snapshots
    /// stay consistent cuts. No wake-up and no context switch per fault: about 3x cheaper per
    /// first write on this project's reference machine (see docs/benchmarks.md).
    ///
    /// Trade-offs: a system call that writes tracked memory (`read(2)` into a tracked buffer)
    /// fails with `EFAULT` instead of being tracked (as with the mprotect backend); the
    /// process-wide `SIGBUS` handler is installed once and passes every other `SIGBUS` to the
    /// handler that was there before; the handler allocates copy buffers from the tracker's
    /// pool, so the application's global allocator must not live in tracked memory; a thread
    /// that writes tracked memory must not block `SIGBUS` (the kernel then kills the process
    /// instead of delivering a fault signal to a blocked handler). Not
    /// combinable with [`eager_reprotect`](Self::eager_reprotect); `fault_around` and `spin`
    /// have no effect. Default: off.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::atomic::Ordering::SeqCst;
    /// let tracker = writewatch_core::Tracker::builder().in_thread_faults(true).build()?;
    /// let region = tracker.map_anonymous(4 * 4096)?;
    /// let w = region.as_atomic_u64();
    /// let snap = region.snapshot()?;
    /// w[0].store(5, SeqCst);                 // served on this thread, copied first
    /// let mut page = vec![0u8; 4096];
    /// snap.read_page(0, &mut page)?;
    /// assert_eq!(page[0], 0);
    /// assert_eq!(region.cut()?.dirty().iter().collect::<Vec<_>>(), vec![0]);
    /// # Ok(()) }
    /// ```
    pub fn in_thread_faults(mut self, on: bool) -> Self {
        self.config.in_thread = on;
        self
    }

    /// Do not request `feature` even if the kernel offers it (for testing fallbacks, e.g. the
    /// populate-before-protect path used without `WP_UNPOPULATED`).
    pub fn without(mut self, feature: Feature) -> Self {
        self.disabled.push(feature);
        self
    }

    /// Open the userfaultfd with `UFFD_USER_MODE_ONLY` even when the process could do without
    /// (then system calls writing tracked memory fail with `EFAULT`).
    pub fn user_mode_only(mut self, on: bool) -> Self {
        self.force_user_mode_only = on;
        self
    }

    /// Opens the userfaultfd, negotiates features and starts the fault-service thread.
    pub fn build(self) -> Result<Tracker, BuildError> {
        if self.config.thread_name.contains('\0') {
            return Err(BuildError::InvalidOption {
                what: "thread_name",
                why: "it contains a NUL byte, which a thread name cannot hold",
                fix: "remove the NUL byte (or keep the default name)",
            });
        }
        if self.config.in_thread {
            if matches!(self.backend, Backend::AsyncUffd | Backend::Mprotect) {
                return Err(BuildError::Incompatible {
                    what: "in_thread_faults",
                    with: self.backend.name(),
                    fix: "in-thread fault handling is a mode of the sync userfaultfd backend: use Backend::SyncUffd (or Auto)",
                });
            }
            if self.config.eager.is_some() {
                return Err(BuildError::Incompatible {
                    what: "in_thread_faults",
                    with: "eager_reprotect",
                    fix: "choose one: eager re-protection needs every fault served on the service thread",
                });
            }
        }
        let (backend, uffd, features) = match self.backend {
            Backend::Mprotect => (
                Backend::Mprotect,
                None,
                Features {
                    bits: 0,
                    user_mode_only: false,
                },
            ),
            requested => match self.open_uffd(requested) {
                Ok((b, u, f)) => (b, Some(u), f),
                // In-thread fault handling exists only on the sync backend: no fallback.
                Err(e) if requested == Backend::Auto && !self.config.in_thread => {
                    tracing::warn!(%e, "userfaultfd unavailable; falling back to the mprotect backend");
                    (
                        Backend::Mprotect,
                        None,
                        Features {
                            bits: 0,
                            user_mode_only: false,
                        },
                    )
                }
                Err(e) => return Err(e),
            },
        };
        if backend == Backend::Mprotect {
            sys::segv::install().map_err(|errno| BuildError::Setup {
                what: "SIGSEGV handler",
                errno,
            })?;
        }
        if self.config.in_thread {
            sys::sigbus::install().map_err(|errno| BuildError::Setup {
                what: "SIGBUS handler",
                errno,
            })?;
        }
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(
            |errno| BuildError::Setup {
                what: "eventfd",
                errno,
            },
        )?;
        let pagemap = std::fs::File::open("/proc/self/pagemap").ok();
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            cmd_tx,
            wake,
            state: AtomicU8::new(RUNNING),
            counters: Counters::default(),
            threads: Mutex::new(HashMap::new()),
            features,
            backend,
            config: self.config.clone(),
            next_id: AtomicU64::new(1),
            join: Mutex::new(None),
            pagemap,
            budget: crate::snapshot::Budget::new(self.copy_budget),
            read_seq: AtomicU64::new(0),
        });
        let handle =
            service::spawn(uffd, Arc::clone(&shared), cmd_rx).map_err(BuildError::Spawn)?;
        *shared.join.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        tracing::debug!(
            backend = backend.name(),
            features = format_args!("{:#x}", features.bits),
            "tracker started"
        );
        Ok(Tracker {
            handle: Arc::new(TrackerHandle { shared }),
        })
    }

    /// Opens and negotiates the userfaultfd for a uffd backend (or `Auto`).
    fn open_uffd(
        &self,
        requested: Backend,
    ) -> Result<(Backend, userfaultfd::Uffd, Features), BuildError> {
        let base = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // 1. Which kind of fd may we open, and what does the kernel offer on it?
        let (access, probe_fd) = if self.force_user_mode_only {
            match sys::userfaultfd_syscall(base | k::UFFD_USER_MODE_ONLY as libc::c_int) {
                Ok(fd) => (Access::UserModeOnly, Some(fd)),
                Err(e) => (Access::Denied(e), None),
            }
        } else {
            probe::open_best(base)
        };
        let probe_fd = match (access, probe_fd) {
            (_, Some(fd)) => fd,
            (Access::Denied(errno), None) => return Err(BuildError::PermissionDenied { errno }),
            (Access::Absent(errno), None) => return Err(BuildError::NoUserfaultfd { errno }),
            (_, None) => {
                return Err(BuildError::NoUserfaultfd {
                    errno: Errno::ENOSYS,
                })
            }
        };
        let (offered, _) = sys::uffdio_api(probe_fd.as_raw_fd(), 0)
            .map_err(|errno| BuildError::Handshake { errno })?;
        drop(probe_fd);
        if offered & k::UFFD_FEATURE_PAGEFAULT_FLAG_WP as u64 == 0
            || self.disabled.contains(&Feature::PagefaultFlagWp)
        {
            return Err(BuildError::MissingFeature {
                feature: "UFFD_FEATURE_PAGEFAULT_FLAG_WP",
                needs: "Linux >= 5.7 with CONFIG_HAVE_ARCH_USERFAULTFD_WP (x86_64, arm64 >= 6.10)",
            });
        }
        let async_ok = offered & k::UFFD_FEATURE_WP_ASYNC as u64 != 0
            && offered & k::UFFD_FEATURE_WP_UNPOPULATED as u64 != 0
            && !self.disabled.contains(&Feature::WpAsync)
            && !self.disabled.contains(&Feature::WpUnpopulated)
            && probe::pagemap_scan_available();
        let backend = match requested {
            Backend::AsyncUffd if !async_ok => {
                return Err(BuildError::MissingFeature {
                    feature: "UFFD_FEATURE_WP_ASYNC + WP_UNPOPULATED + PAGEMAP_SCAN",
                    needs: "Linux >= 6.7 (or use Backend::SyncUffd)",
                })
            }
            Backend::Auto if async_ok && self.purpose == Purpose::DirtyTracking => {
                Backend::AsyncUffd
            }
            Backend::Auto => Backend::SyncUffd,
            b => b,
        };
        let mut wanted = [
            Feature::PagefaultFlagWp,
            Feature::WpUnpopulated,
            Feature::ThreadId,
            Feature::EventRemove,
            Feature::EventUnmap,
            Feature::EventRemap,
            Feature::WpHugetlbfsShmem,
        ]
        .iter()
        .filter(|f| !self.disabled.contains(f))
        .filter_map(|f| f.bit())
        .fold(0u64, |a, b| a | b)
            & offered;
        if backend == Backend::AsyncUffd {
            wanted |= k::UFFD_FEATURE_WP_ASYNC as u64;
        }
        if self.config.in_thread {
            if offered & k::UFFD_FEATURE_SIGBUS as u64 == 0
                || self.disabled.contains(&Feature::Sigbus)
            {
                return Err(BuildError::MissingFeature {
                    feature: "UFFD_FEATURE_SIGBUS",
                    needs: "Linux >= 4.14 (or leave in_thread_faults off)",
                });
            }
            wanted |= k::UFFD_FEATURE_SIGBUS as u64;
        }
        let user_mode_only = access == Access::UserModeOnly;

        // 2. The real fd, opened with the userfaultfd crate.
        let uffd = userfaultfd::UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .user_mode_only(user_mode_only)
            .require_features(userfaultfd::FeatureFlags::from_bits_retain(wanted))
            .create();
        let uffd = match uffd {
            Ok(u) => u,
            // The crate insists on /dev/userfaultfd when it exists; the syscall may still be
            // allowed (vm.unprivileged_userfaultfd=1 with a root-only device node).
            Err(userfaultfd::Error::OpenDevUserfaultfd(_)) => {
                let flags = base
                    | if user_mode_only {
                        k::UFFD_USER_MODE_ONLY as libc::c_int
                    } else {
                        0
                    };
                let fd = sys::userfaultfd_syscall(flags)
                    .map_err(|errno| BuildError::PermissionDenied { errno })?;
                sys::uffdio_api(fd.as_raw_fd(), wanted)
                    .map_err(|errno| BuildError::Handshake { errno })?;
                sys::uffd_from_fd(fd)
            }
            Err(e) => {
                return Err(match crate::sys::errno_of(&e) {
                    errno @ (Errno::EPERM | Errno::EACCES) => {
                        BuildError::PermissionDenied { errno }
                    }
                    errno => BuildError::Handshake { errno },
                })
            }
        };
        Ok((
            backend,
            uffd,
            Features {
                bits: wanted,
                user_mode_only,
            },
        ))
    }
}

pub(crate) const RUNNING: u8 = 0;
pub(crate) const SHUT_DOWN: u8 = 1;
pub(crate) const POISONED: u8 = 2;

/// A control command for the service thread. Each carries a reply channel.
pub(crate) enum Command {
    Register {
        region: Arc<RegionInner>,
        /// Report every page dirty in the first epoch (adopted content is new to the tracker).
        all_dirty: bool,
        reply: Sender<Result<(), MapError>>,
    },
    Unregister {
        id: u64,
        reply: Sender<Result<(), Errno>>,
    },
    Cut {
        id: u64,
        reply: Sender<Result<Epoch, CutError>>,
    },
    Snapshot {
        id: u64,
        reply: Sender<Result<crate::Snapshot, CutError>>,
    },
    /// Rollback: re-protect `pages` (just rewritten from `view`'s copies) and mark them clean.
    Rearm {
        id: u64,
        view: Arc<crate::snapshot::View>,
        pages: Vec<u64>,
        reply: Sender<Result<(), CutError>>,
    },
    /// `Region::prepare_overwrite`.
    PrepareOverwrite {
        id: u64,
        reply: Sender<Result<(), CutError>>,
    },
    Shutdown {
        reply: Sender<()>,
    },
    /// Test hook: make the service thread panic (see `Tracker::debug_inject_panic`).
    InjectPanic,
}

/// State shared between tracker handles, regions and the service thread.
pub(crate) struct Shared {
    pub cmd_tx: Sender<Command>,
    /// Written by command senders, polled by the service thread together with the uffd.
    pub wake: EventFd,
    pub state: AtomicU8,
    pub counters: Counters,
    pub threads: Mutex<HashMap<i32, u64>>,
    pub features: Features,
    pub backend: Backend,
    pub config: Config,
    pub next_id: AtomicU64,
    pub join: Mutex<Option<JoinHandle<()>>>,
    /// `/proc/self/pagemap`, for `PAGEMAP_SCAN` (None if it cannot be opened).
    pub pagemap: Option<std::fs::File>,
    /// Memory for preserved (copy-before-write) pages.
    pub budget: crate::snapshot::Budget,
    /// Incremented before and after each userfaultfd read's events are processed (odd while
    /// in progress); see `snapshot::View::read`.
    pub read_seq: AtomicU64,
}

impl Shared {
    pub(crate) fn available(&self) -> Result<(), Unavailable> {
        match self.state.load(Ordering::Acquire) {
            RUNNING => Ok(()),
            POISONED => Err(Unavailable::Poisoned),
            _ => Err(Unavailable::ShutDown),
        }
    }

    fn unavailable(&self) -> Unavailable {
        match self.state.load(Ordering::Acquire) {
            POISONED => Unavailable::Poisoned,
            _ => Unavailable::ShutDown,
        }
    }

    /// Sends a command and waits for its reply. If the service thread is gone (or goes away
    /// before answering), the reply channel is disconnected and the caller gets `Unavailable`:
    /// this never blocks forever.
    pub(crate) fn call<T>(
        &self,
        make: impl FnOnce(Sender<T>) -> Command,
    ) -> Result<T, Unavailable> {
        self.available()?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.cmd_tx.send(make(tx)).map_err(|_| self.unavailable())?;
        self.kick();
        rx.recv().map_err(|_| self.unavailable())
    }

    /// Whether page `page` of `region` is still write-protected (present with the uffd-wp bit,
    /// or a protection marker). False when it cannot be determined.
    pub(crate) fn verify_protected(&self, region: &RegionInner, page: u64) -> bool {
        let Some(pm) = &self.pagemap else {
            return false;
        };
        let start = region.start + page as usize * region.page_size;
        let mut out = [crate::sys::EMPTY_PAGE_REGION; 4];
        let mut unprotected = false;
        match crate::scan::unprotected(
            pm.as_raw_fd(),
            start,
            start + region.page_size,
            &mut out,
            |_, _| unprotected = true,
        ) {
            Ok(_) => !unprotected,
            Err(_) => false,
        }
    }

    pub(crate) fn kick(&self) {
        // EAGAIN only when the counter is saturated, which still wakes the poller.
        let _ = self.wake.write(1);
    }

    fn shutdown(&self) {
        if self
            .state
            .compare_exchange(RUNNING, SHUT_DOWN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if self.cmd_tx.send(Command::Shutdown { reply: tx }).is_ok() {
                self.kick();
                let _ = rx.recv();
            }
        }
        let handle = self.join.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

/// The owner of the service thread: dropping the last one shuts the tracker down.
struct TrackerHandle {
    shared: Arc<Shared>,
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
    /// A builder with default settings.
    pub fn builder() -> TrackerBuilder {
        TrackerBuilder::default()
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
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
            errno,
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
    /// pinned pages (io_uring fixed buffers, `O_DIRECT`, RDMA), see [`adopt`](Self::adopt).
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
            errno,
            hint: mmap_hint(errno),
        })?;
        let inner = self.new_inner(map, ps, RegionKind::Shmem);
        self.register(inner, false)
    }

    /// Starts tracking a mapping the caller already has (private anonymous, shmem/memfd, or
    /// hugetlbfs). The first cut reports every page dirty: its content is new to the tracker.
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
    ///   protection entirely.
    ///
    /// On the mprotect backend, a write to a tracked page the application itself made
    /// read-only (`mprotect(PROT_READ)`) is taken for a tracked first write: the page becomes
    /// writable again and is reported. Reads, and any access to pages the application made
    /// `PROT_NONE` (guard pages), keep the application's protection (`SIGSEGV`).
    ///
    /// # Safety
    /// `[ptr, ptr+len)` must stay mapped until the returned [`Region`] (and every
    /// [`Epoch`] taken from it) is dropped, and the caller must not unmap or remap it while
    /// tracked except as documented (such a change invalidates the region). The caller's other
    /// accesses to the memory must follow the rules of [`Region::as_mut_slice`].
    #[allow(unsafe_code)] // a public unsafe contract, forwarded to `sys::Mapping::adopted`
    pub unsafe fn adopt(&self, ptr: *mut u8, len: usize) -> Result<Region, MapError> {
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
        let me = Arc::as_ptr(self.shared()) as usize;
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
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            hint: "",
        })?;
        let vmas = region::parse_smaps(&smaps);
        let (kind, ps) = region::check_adoptable(&vmas, start, end)?;
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
        if kind != RegionKind::Anonymous
            && self.backend() != Backend::Mprotect
            && !self.features().has(Feature::WpHugetlbfsShmem)
        {
            return Err(MapError::KindUnsupported {
                kind: kind.name(),
                needs: "Linux >= 5.19 (UFFD_FEATURE_WP_HUGETLBFS_SHMEM)",
            });
        }
        self.check_not_own_memory(&vmas, start, end)?;
        // SAFETY: the caller's contract (see `# Safety`) is exactly `Mapping::adopted`'s.
        let map =
            unsafe { sys::Mapping::adopted(ptr, len) }.ok_or(MapError::NotMapped { addr: 0 })?;
        let inner = self.new_inner(map, ps, kind);
        // The region's own state, allocated just now, must not live in the range either.
        let words = inner.dirty.words();
        let own = [
            (
                Arc::as_ptr(&inner) as usize,
                "the region's own state (allocated on the heap of the calling thread)",
            ),
            (
                words.as_ptr() as usize,
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
            if let Some((a, b)) = region::uffd_wp_overlap(&vmas, start, end) {
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
    fn check_not_own_memory(
        &self,
        vmas: &[region::Vma],
        start: usize,
        end: usize,
    ) -> Result<(), MapError> {
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
                Arc::as_ptr(self.shared()) as usize,
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
        let id = self.shared().next_id.fetch_add(1, Ordering::Relaxed);
        Arc::new(RegionInner::new(id, map, ps, kind))
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
                    sys::segv::set_owner(inner.start, Arc::as_ptr(self.shared()) as usize);
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
        let mut stats = s.counters.load(threads);
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

fn mmap_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::ENOMEM => ": not enough address space or memory (check vm.overcommit_memory, vm.max_map_count, ulimit -v)",
        Errno::EMFILE | Errno::ENFILE => ": too many open files (raise ulimit -n)",
        _ => "",
    }
}

/// Receiver type used by the service thread.
pub(crate) type CommandRx = Receiver<Command>;
