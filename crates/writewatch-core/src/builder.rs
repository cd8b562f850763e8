//! [`TrackerBuilder`]: options, validation, backend choice, and starting the service thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::backend::{Backend, Features, Purpose};
use crate::command::Control;
use crate::error::{BuildError, PublicErrno};
use crate::pagemap::Pagemap;
use crate::probe::Feature;
use crate::service;
use crate::shared::{Budget, Config, Shared, RUNNING};
use crate::stats::Counters;
use crate::sys;
use crate::tracker::Tracker;
use crate::uffd::open_uffd;

impl Tracker {
    /// A builder with default settings.
    pub fn builder() -> TrackerBuilder {
        TrackerBuilder::default()
    }
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
                lazy: true,
                adaptive: true,
                merge_gap_set: false,
                spin_set: false,
                fault_around_set: false,
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
    /// one ioctl at a cut (0 disables merging). Setting it forces this plan: by default the
    /// [adaptive policy](Self::adaptive) picks, per 2 MiB chunk, one call per run or one over
    /// the chunk's dirty span from measured costs (without it: gap 8).
    pub fn merge_gap_pages(mut self, pages: u64) -> Self {
        self.config.merge_gap_pages = pages;
        self.config.merge_gap_set = true;
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
    /// the threads that write the region. Snapshots ([`Region::snapshot`](crate::Region::snapshot)) are not charged:
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
    /// an over-report of at most `max_pages - 1` pages per fault. Setting it (0 = off) forces
    /// this choice; by default the [adaptive policy](Self::adaptive) grants up to 128 pages to
    /// regions whose faults were sequential in the previous epoch.
    pub fn fault_around(mut self, max_pages: u64) -> Self {
        self.config.fault_around = max_pages.min(1024);
        self.config.fault_around_set = true;
        self
    }

    /// Busy-poll the userfaultfd for this long after serving faults before blocking in
    /// `poll(2)`. Cuts the wake-up latency of the next fault at the cost of a spinning core.
    /// Setting it forces this choice (`Duration::ZERO`: never spin); by default the
    /// [adaptive policy](Self::adaptive) spins up to 50 us while at least half of the recent
    /// faults arrived within 50 us of the previous batch. Values above
    /// [`MAX_DURATION`](Self::MAX_DURATION) (one hour) are clamped to it.
    pub fn spin(mut self, d: std::time::Duration) -> Self {
        self.config.spin_set = true;
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
    /// extra fault per epoch. Default: on, with an age the [adaptive policy](Self::adaptive)
    /// tunes per region and epoch; setting it forces a fixed age. Combines with
    /// [`in_thread_faults`](Self::in_thread_faults) (see docs/design.md, "Eager re-protection
    /// with in-thread faults").
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
    /// instead of delivering a fault signal to a blocked handler). Eager re-protection
    /// composes with it (the handler clears a page's armed bit before un-protecting it);
    /// `fault_around` and `spin` have no effect. Default: off.
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

    /// The adaptive policy of the sync backend (default: on). The service thread measures
    /// the engine's own costs (per-ioctl and per-page re-protection cost, fault rate,
    /// sequentiality) and picks, per region and epoch: background re-arming of written pages
    /// with an age it tunes (never re-arming pages written again after re-arming), one
    /// re-protect call per dirty run or one per 2 MiB chunk at a cut, and fault-around for
    /// sequential writers (over-report at most `min(127, pages the stream wrote)` per
    /// sequential stream and epoch for a stream that writes the pages it walks through, and
    /// at most 127 pages per in-order fault in any case). [`TrackerStats::policy`](crate::TrackerStats::policy)
    /// says what it chose and why. Each of [`eager_reprotect`](Self::eager_reprotect),
    /// [`merge_gap_pages`](Self::merge_gap_pages) and [`fault_around`](Self::fault_around)
    /// forces its own choice; `adaptive(false)` gives the fixed behaviour of earlier versions
    /// (no re-arming, merge gap 8, no fault-around).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tracker = writewatch_core::Tracker::builder().build()?; // adaptive by default
    /// let region = tracker.map_anonymous(1024 * 4096)?;
    /// let w = region.as_atomic_u64();
    /// for p in (0..1024).step_by(3) {
    ///     w[p * 512].store(1, std::sync::atomic::Ordering::Relaxed);
    /// }
    /// assert_eq!(region.cut()?.dirty().len(), 342);
    /// let policy = tracker.stats().policy;
    /// assert!(policy.adaptive);
    /// assert!(policy.whole_chunks + policy.run_chunks > 0);
    /// # Ok(()) }
    /// ```
    pub fn adaptive(mut self, on: bool) -> Self {
        self.config.adaptive = on;
        self
    }

    /// Arm owned anonymous regions lazily (default: on). A region made by
    /// [`Tracker::map_anonymous`] or [`Tracker::map_anonymous_at`] is then registered for
    /// missing-page faults as well as write-protect faults, and write-protected 2 MiB chunk by
    /// chunk when first touched, so creating it, its page tables and a cut cost what was
    /// touched, not what was reserved (a 1 TiB reservation is created at once; eager
    /// protection costs about 2 MiB of page tables and 10-13 ms per reserved GiB). Reading a
    /// never-touched chunk costs one fault (it is mapped to the zero page, protected).
    ///
    /// Applies to the sync backend with faults served by the service thread; with
    /// [`in_thread_faults`](Self::in_thread_faults), on the async and mprotect backends, and
    /// for adopted or shared regions, protection is eager whatever this says.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tracker = writewatch_core::Tracker::builder().build()?;  // lazy by default
    /// let region = tracker.map_anonymous(1 << 40)?;                  // 1 TiB, at once
    /// region.as_atomic_u64()[12345 * 512].store(1, std::sync::atomic::Ordering::SeqCst);
    /// assert_eq!(region.cut()?.dirty().iter().collect::<Vec<_>>(), vec![12345]);
    /// # Ok(()) }
    /// ```
    pub fn lazy_arming(mut self, on: bool) -> Self {
        self.config.lazy = on;
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
        if self.config.in_thread && matches!(self.backend, Backend::AsyncUffd | Backend::Mprotect) {
            return Err(BuildError::Incompatible {
                what: "in_thread_faults",
                with: self.backend.name(),
                fix: "in-thread fault handling is a mode of the sync userfaultfd backend: use Backend::SyncUffd (or Auto)",
            });
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
            requested => match open_uffd(
                requested,
                &self.disabled,
                self.force_user_mode_only,
                self.purpose,
                self.config.in_thread,
            ) {
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
                errno: errno.public(),
            })?;
        }
        if self.config.in_thread {
            sys::sigbus::install().map_err(|errno| BuildError::Setup {
                what: "SIGBUS handler",
                errno: errno.public(),
            })?;
        }
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(
            |errno| BuildError::Setup {
                what: "eventfd",
                errno: errno.public(),
            },
        )?;
        let pagemap = Pagemap::open();
        let mut config = self.config.clone();
        // Lazy arming needs the service thread to see every fault (sync backend, no in-thread
        // handler), PAGEMAP_SCAN (to wait for madvise zaps) and /proc/self/mem (to read pages
        // without faulting).
        let mem = (config.lazy
            && backend == Backend::SyncUffd
            && !config.in_thread
            && pagemap.is_some()
            && Pagemap::scan_available())
        .then(|| std::fs::File::open("/proc/self/mem").ok())
        .flatten()
        .map(Arc::new);
        config.lazy = mem.is_some();
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            wake,
            state: AtomicU8::new(RUNNING),
            counters: Counters::default(),
            threads: Mutex::new(HashMap::new()),
            features,
            backend,
            config,
            next_id: AtomicU64::new(1),
            pagemap,
            mem,
            budget: Budget::new(self.copy_budget),
            read_seq: AtomicU64::new(0),
            policy: Mutex::new(Default::default()),
        });
        let handle =
            service::spawn(uffd, Arc::clone(&shared), cmd_rx).map_err(BuildError::Spawn)?;
        let control = Control {
            shared,
            cmd_tx,
            join: Mutex::new(Some(handle)),
        };
        tracing::debug!(
            backend = backend.name(),
            features = format_args!("{:#x}", features.bits),
            "tracker started"
        );
        Ok(Tracker::start(control))
    }
}
