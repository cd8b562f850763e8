//! The fault-service thread.
//!
//! One thread per tracker. It waits in `poll(2)` on two fds: the userfaultfd (faults and
//! non-cooperative events) and an eventfd that command senders write after queueing a
//! [`Command`] on the crossbeam channel. Every change of page protection happens on this
//! thread, so the protection state of a page is only ever changed by one thread (plus the
//! kernel itself for `madvise(MADV_DONTNEED)` on anonymous memory, handled below).
//!
//! ```text
//!            +-----------------------------------------------------------+
//!            |  poll(uffd, eventfd)                                      |
//!            |    eventfd -> drain commands: Register / Cut / Unregister |
//!            |               / Shutdown  (a Cut reads no fault until done)|
//!            |    uffd    -> read(2) a batch of up to N uffd_msg         |
//!            |               PAGEFAULT(WP) -> pending                    |
//!            |               REMOVE -> mark dirty + suspect range        |
//!            |               UNMAP / REMAP -> invalidate region          |
//!            |    pending -> sort, coalesce per region:                  |
//!            |               set dirty bits, THEN un-protect + wake      |
//!            +-----------------------------------------------------------+
//! ```
//!
//! # What each backend does (the contract of this folder)
//!
//! | backend | register (`register.rs`) | first write to a page | cut (`cut.rs`) | release (`register.rs`) |
//! |---|---|---|---|---|
//! | sync uffd | `UFFDIO_REGISTER` (WP), populate if no `WP_UNPOPULATED`, protect the range | `PAGEFAULT(WP)` read here (`events.rs`): preserve for live views, dirty bit, THEN un-protect + wake | hold faults, harvest the bitmap, re-protect the dirty runs (skipping eager-armed pages, `eager.rs`), publish a copy-before-write view | `UFFDIO_UNREGISTER`: writes complete untracked |
//! | sync uffd, in-thread | as above, but first a `sys::sigbus` slot holding the region's hook | the `SIGBUS` handler does the same on the writing thread (`crate::inthread`) | the slot's `cutting` flag holds the handlers (`Holding`) | unregister, then retire the slot |
//! | async uffd | as sync, with `WP_ASYNC` | resolved by the kernel; no message | `Pagemap::harvest`: one `PAGEMAP_SCAN` walk reports and re-protects; no view | `UFFDIO_UNREGISTER` |
//! | mprotect | a `sys::segv` slot (the bitmap), then `mprotect(PROT_READ)` | the `SIGSEGV` handler sets the bit and makes the page writable; never this thread | mark pages the application made writable, harvest, `segv::synchronize`, `mprotect` the dirty runs; no view | `mprotect` read-write, then retire the slot |
//!
//! For every backend, runs the application `madvise`d away (REMOVE) are re-checked with
//! `PAGEMAP_SCAN` at each cut (`mark_unprotected`), and UNMAP / REMAP invalidate the region.
//!
//! # Invariants relied on here
//! - **The service thread never writes into tracked memory** (it would fault on itself and
//!   deadlock). It only reads it (populate-read without `WP_UNPOPULATED`), issues ioctls on
//!   its addresses, and writes its own heap. Reads never raise write-protect faults.
//! - **The service thread never blocks on a lock that a faulting thread may hold**: the only
//!   locks it takes are the per-thread fault map and the per-region history, which no code
//!   holds while touching tracked memory.
//! - **Dirty bit before un-protect**: a page's dirty bit is set before the ioctl that lets its
//!   write proceed, so a page that is writable always has its bit set (sync backend
//!   invariant: bit clear => write-protected).
//! - **Cuts are atomic with respect to faults**: a cut runs inside a command handler; faults
//!   read while it runs (to unblock an `EAGAIN`) are queued and serviced only after it.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use userfaultfd::{EventBuffer, Uffd};

use crate::backend::Backend;
use crate::command::{Command, CommandRx};
use crate::inthread::Hook;
use crate::range::RegionInner;
use crate::shared::{Shared, POISONED};
use crate::sys;
use crate::view::View;

mod cow;
mod cut;
mod eager;
mod events;
mod fork;
mod lazy;
mod policy;
mod register;

use eager::Eager;

/// Reads per loop iteration before commands get a turn again.
const MAX_READS_PER_ROUND: usize = 16;
/// Eager re-protection runs only after this long without any event: a writer that faults
/// back to back never waits behind re-arming (it did, one ioctl per fault, which doubled the
/// random first-write cost); the cut re-protects what could not be re-armed.
const EAGER_IDLE: std::time::Duration = std::time::Duration::from_micros(50);

pub(crate) fn spawn(
    uffd: Option<Uffd>,
    shared: Arc<Shared>,
    rx: CommandRx,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let name = shared.config.thread_name.clone();
    std::thread::Builder::new().name(name).spawn(move || {
        let mut svc = Service::new(uffd, shared, rx);
        let r = catch_unwind(AssertUnwindSafe(|| svc.run()));
        if r.is_err() {
            svc.poison();
        } else {
            svc.drain_commands();
        }
        // Dropping `svc` closes the userfaultfd: the kernel releases any thread still waiting.
    })
}

#[derive(Clone, Copy, Debug)]
struct Fault {
    addr: usize,
    tid: i32,
    t: Instant,
    /// A missing-page fault (lazily armed regions), not a write-protect fault.
    missing: bool,
    /// The faulting access was a write.
    write: bool,
    /// A missing write fault turned into a write-protect fault by `serve_missing`: its page is
    /// still empty, and the un-protect step installs its content *writable* (one
    /// `UFFDIO_COPY` instead of a protected install plus an un-protect; lazy.rs).
    install: bool,
}

enum Ev {
    Fault(Fault),
    Remove(usize, usize),
    Unmap(usize, usize),
    Remap(usize, usize, usize),
    Other,
}

struct Entry {
    inner: Arc<RegionInner>,
    /// Copy-before-write views of this region still alive (epochs being read, snapshots).
    views: Vec<Weak<View>>,
    /// Fault-around state: the page after the last serviced run, and the current run-ahead.
    next_expected: u64,
    ahead: u64,
    /// The mprotect backend's signal-handler slot.
    slot: Option<usize>,
    /// Eager re-protection state (sync backend with `eager_reprotect` only).
    eager: Option<Eager>,
    /// In-thread fault handling: the `SIGBUS` handler's hook and its slot.
    hook: Option<(Arc<Hook>, usize)>,
    /// Lazily armed regions: the pages that may have content.
    populated: Option<lazy::Populated>,
    /// Lazily armed regions, read faults: the page after the last read-ahead, and its size
    /// (doubles while reads follow on, up to `lazy::READ_AHEAD_MAX`).
    read_next: u64,
    read_ahead: u64,
    /// Adaptive policy: sequentiality of this epoch's faults and the fault-around granted.
    seq: policy::Sequential,
    /// Adaptive policy: when the open epoch started, and the region's fault count then.
    epoch_t0: Instant,
    faults_at_cut: u64,
    /// Private file regions on the async backend: the pages copied on write at the last cut
    /// (one bit per page; see `cow.rs`).
    copied: Option<Vec<u64>>,
}

impl Entry {
    fn new(inner: Arc<RegionInner>) -> Self {
        Self {
            inner,
            views: Vec::new(),
            next_expected: u64::MAX,
            ahead: 0,
            slot: None,
            eager: None,
            hook: None,
            populated: None,
            read_next: u64::MAX,
            read_ahead: 0,
            seq: policy::Sequential::default(),
            epoch_t0: Instant::now(),
            faults_at_cut: 0,
            copied: None,
        }
    }

    fn live_views(&mut self) -> Vec<Arc<View>> {
        self.views.retain(|w| w.strong_count() > 0);
        self.views.iter().filter_map(Weak::upgrade).collect()
    }
}

enum Flow {
    Continue,
    Exit,
}

struct Service {
    /// The userfaultfd (None for the mprotect backend).
    uffd: Option<Uffd>,
    backend: Backend,
    shared: Arc<Shared>,
    rx: CommandRx,
    by_start: BTreeMap<usize, Entry>,
    by_id: HashMap<u64, usize>,
    buf: EventBuffer,
    evs: Vec<Ev>,
    /// Faults read but not yet serviced (held while a cut runs).
    pending: Vec<Fault>,
    /// Faults whose page must be preserved but the copy budget is full: their writers stay
    /// blocked until readers free budget (back-pressure).
    deferred: Vec<Fault>,
    /// The budget's generation loaded before the attempt that deferred faults: they are
    /// retried as soon as it moves (see `Budget::gen`).
    deferred_gen: u64,
    scan_out: Vec<sys::PageRegion>,
    /// Output buffer of the async backend's harvest (grown when a pass fills it).
    async_out: Vec<sys::PageRegion>,
    tids: Vec<(i32, u64)>,
    /// When eager re-protection next has work due (None: nothing queued).
    eager_due: Option<Instant>,
    /// A page of zeros, the source of pages installed for missing faults (lazy regions).
    zeros: Vec<u8>,
    /// Fork clones of each region (service/fork.rs), and a page buffer for their copies.
    family: fork::Family,
    page_buf: Vec<u8>,
    /// When the last event was read (eager re-protection waits for [`EAGER_IDLE`] after it).
    last_event: Instant,
    /// The adaptive policy's measurements and report.
    policy: policy::Policy,
}

impl Service {
    fn new(uffd: Option<Uffd>, shared: Arc<Shared>, rx: CommandRx) -> Self {
        let batch = shared.config.event_batch;
        let policy = policy::Policy::of(&shared.config, shared.backend);
        if let Ok(mut p) = shared.policy.lock() {
            p.clone_from(&policy.report);
        }
        Self {
            policy,
            uffd,
            backend: shared.backend,
            async_out: vec![sys::EMPTY_PAGE_REGION; 8192],
            shared,
            rx,
            by_start: BTreeMap::new(),
            by_id: HashMap::new(),
            buf: EventBuffer::new(batch),
            evs: Vec::with_capacity(batch),
            pending: Vec::with_capacity(batch * 4),
            deferred: Vec::new(),
            deferred_gen: 0,
            scan_out: vec![sys::EMPTY_PAGE_REGION; 512],
            tids: Vec::with_capacity(16),
            eager_due: None,
            zeros: Vec::new(),
            family: fork::Family::default(),
            page_buf: Vec::new(),
            last_event: Instant::now(),
        }
    }

    /// The userfaultfd. Only called on paths of the uffd backends (faults and events never
    /// arrive without one).
    fn u(&self) -> &Uffd {
        self.uffd.as_ref().expect("a userfaultfd backend")
    }

    fn run(&mut self) {
        loop {
            if !self.deferred.is_empty() {
                // The last look at the budget before blocking: a reader that freed budget
                // after the deferring attempt read the generation, but before that attempt
                // raised `waiting`, kicked nobody (the no-lost-wake-up argument of
                // `retry_deferred` needs this check on every path to `wait`, the spin
                // phase's deferral return included).
                self.retry_deferred(false);
            }
            let (uffd_ready, wake_ready) = self.wait();
            if uffd_ready {
                self.policy.spin.arrived(Instant::now());
            }
            if wake_ready {
                let _ = self.shared.wake.read();
                self.prune_hooks();
                if !self.deferred.is_empty() {
                    self.retry_deferred(true);
                }
            }
            while let Ok(cmd) = self.rx.try_recv() {
                if let Flow::Exit = self.command(cmd) {
                    return;
                }
            }
            if uffd_ready {
                for _ in 0..MAX_READS_PER_ROUND {
                    if self.read_batch() < self.shared.config.event_batch {
                        break;
                    }
                }
            }
            if !self.pending.is_empty() {
                // Re-arming before the batch is served: its writers are blocked in their
                // faults, so the protect call's TLB flush finds their CPUs idle (no
                // inter-processor interrupt to wait for, as after the wake-up).
                if self.deferred.is_empty() {
                    self.eager_between_faults();
                }
                self.service_pending();
                self.policy.spin.served(Instant::now());
            }
            if !self.deferred.is_empty() {
                self.retry_deferred(false);
            }
            if self.pending.is_empty() && !uffd_ready && !wake_ready {
                // Idle for EAGER_IDLE at least (the poll timed out).
                self.eager_if_due();
            }
            let spin = self.spin_window();
            if self.uffd.is_some() && !spin.is_zero() && self.deferred.is_empty() {
                if let Flow::Exit = self.spin_phase(spin) {
                    return;
                }
            }
        }
    }

    /// Busy-polls for `spin` after the last event: non-blocking `read(2)` on the userfaultfd
    /// (no `poll`) and `try_recv` on the command channel (no syscall), so a fault arriving
    /// meanwhile is serviced without the cost of waking this thread. Back to `poll` when idle.
    fn spin_phase(&mut self, spin: Duration) -> Flow {
        let mut until = Instant::now() + spin;
        loop {
            while let Ok(cmd) = self.rx.try_recv() {
                if let Flow::Exit = self.command(cmd) {
                    return Flow::Exit;
                }
            }
            if self.read_batch() > 0 || !self.pending.is_empty() {
                let now = Instant::now();
                self.policy.spin.arrived(now);
                if self.deferred.is_empty() {
                    self.eager_between_faults();
                }
                self.service_pending();
                self.policy.spin.served(Instant::now());
                until = Instant::now() + spin;
                if !self.shared.config.spin_set && !self.policy.spin.spin() {
                    return Flow::Continue; // the adaptive gate closed
                }
            } else if Instant::now() >= until {
                self.policy.spin.missed();
                return Flow::Continue;
            } else if Instant::now() < self.last_event + EAGER_IDLE || !self.eager_if_due() {
                // (Full re-arming steps only after EAGER_IDLE without events, as when
                // blocked. A yield, not a pause: a writer runnable on this CPU gets it.)
                std::thread::yield_now();
            }
            if !self.deferred.is_empty() {
                return Flow::Continue;
            }
        }
    }

    /// How long to spin now: `spin(d)` if set, else the adaptive gate's window (sync backend,
    /// faults served here, adaptive policy on), else zero.
    fn spin_window(&self) -> Duration {
        let c = &self.shared.config;
        if c.spin_set {
            c.spin
        } else if c.adaptive
            && !c.in_thread
            && self.backend == Backend::SyncUffd
            && self.policy.spin.spin()
        {
            policy::SPIN_WINDOW
        } else {
            Duration::ZERO
        }
    }

    /// Moves deferred faults back to `pending` if anything that could let them proceed
    /// happened since the attempt that deferred them (or a view was dropped: `woken`).
    ///
    /// No lost wake-up: the generation was loaded (SeqCst) *before* that attempt, and every
    /// freeing side bumps it (SeqCst) before it looks at `waiting`. A free before our load of
    /// the generation was seen by the attempt itself; a free after it moves the generation,
    /// which this check (made before the thread blocks) sees; and a free after `waiting` was
    /// raised also kicks the eventfd.
    fn retry_deferred(&mut self, woken: bool) {
        let gen = self.shared.budget.gen.load(Ordering::SeqCst);
        if woken || gen != self.deferred_gen {
            self.pending.append(&mut self.deferred);
        }
    }

    /// Blocks until the uffd or the eventfd is readable (not at all if faults are pending),
    /// or until eager re-protection has work due.
    fn wait(&self) -> (bool, bool) {
        let timeout = if !self.pending.is_empty() {
            Some(TimeSpec::from_duration(Duration::ZERO))
        } else if let Some(due) = self.eager_due {
            // Not before it is due, and not before EAGER_IDLE without events.
            let at = due.max(self.last_event + EAGER_IDLE);
            Some(TimeSpec::from_duration(
                at.saturating_duration_since(Instant::now()),
            ))
        } else {
            None
        };
        loop {
            let wake = PollFd::new(self.shared.wake.as_fd(), PollFlags::POLLIN);
            let mut fds = match &self.uffd {
                Some(u) => vec![wake, PollFd::new(u.as_fd(), PollFlags::POLLIN)],
                None => vec![wake],
            };
            match nix::poll::ppoll(&mut fds, timeout, None) {
                Ok(_) => {
                    let r = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                    return (fds.get(1).is_some_and(r), r(&fds[0]));
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(%e, "poll on the userfaultfd failed");
                    return (true, true);
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Register {
                region,
                all_dirty,
                reply,
            } => {
                let r = self.register(region, all_dirty);
                let _ = reply.send(r);
            }
            Command::Unregister { id, reply } => {
                let r = self.unregister(id);
                let _ = reply.send(r);
            }
            Command::Cut { id, reply } => {
                let r = self.cut(id);
                let _ = reply.send(r);
            }
            Command::Snapshot { id, reply } => {
                let r = self.snapshot(id);
                let _ = reply.send(r);
            }
            Command::Rearm {
                id,
                view,
                pages,
                reply,
            } => {
                let r = self.rearm(id, &view, &pages);
                let _ = reply.send(r);
            }
            Command::PrepareOverwrite { id, reply } => {
                let r = self.prepare_overwrite(id);
                let _ = reply.send(r);
            }
            Command::Fork { id, child, reply } => {
                let r = self.fork(id, child);
                let _ = reply.send(r);
            }
            Command::Shutdown { reply } => {
                // Untracked clones could not inherit pages any more: give them all now
                // (an orderly shutdown only; a poisoned tracker releases at once).
                self.materialise_all();
                self.release_all();
                let _ = reply.send(());
                return Flow::Exit;
            }
            Command::InjectPanic => panic!("writewatch: injected service-thread panic (test hook)"),
        }
        Flow::Continue
    }

    fn drain_commands(&mut self) {
        // Dropping queued commands drops their reply senders: callers get `Unavailable`.
        while self.rx.try_recv().is_ok() {}
    }

    fn poison(&mut self) {
        self.shared.state.store(POISONED, Ordering::SeqCst);
        tracing::error!("writewatch fault-service thread panicked; releasing every range and poisoning the tracker");
        self.release_all();
        self.drain_commands();
    }
}
