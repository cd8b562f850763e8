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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::{self, Relaxed};
use std::sync::{Arc, Weak};
use std::time::Instant;

use bitvec::prelude::{BitVec, Lsb0};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use userfaultfd::{Event, EventBuffer, RegisterMode, Uffd};

use crate::backend::Backend;
use crate::command::{Command, CommandRx};
use crate::dirty::{plan_ranges, DirtySet};
use crate::epoch::{CutStats, Epoch};
use crate::error::{CutError, Invalidation, MapError};
use crate::inthread::Hook;
use crate::range::RegionInner;
use crate::shared::{Shared, POISONED};
use crate::stats::{EpochStat, HISTORY};
use crate::sys::{self, Addr};
use crate::view::{Mode, View};

/// Maximum number of distinct threads tracked in the per-thread fault map.
const MAX_THREADS: usize = 256;
/// Reads per loop iteration before commands get a turn again.
const MAX_READS_PER_ROUND: usize = 16;
/// Eager re-protection: protect ioctls per step before faults and commands get a turn again.
const EAGER_CHUNK: usize = 32;

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
}

/// Holds a region's in-thread faults while a cut or snapshot runs (see `sys::sigbus`): raised
/// on creation, lowered on drop, so every return path releases the held writers.
struct Holding(Option<usize>);

impl Holding {
    fn new(slot: Option<usize>) -> Self {
        if let Some(i) = slot {
            sys::sigbus::set_cutting(i, true);
        }
        Self(slot)
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            sys::sigbus::set_cutting(i, false);
        }
    }
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
        }
    }

    fn live_views(&mut self) -> Vec<Arc<View>> {
        self.views.retain(|w| w.strong_count() > 0);
        self.views.iter().filter_map(Weak::upgrade).collect()
    }
}

/// Eager re-protection state of one region, owned by the service thread.
///
/// ```text
///   written page (fault serviced: dirty, writable) --age elapsed, idle--> ARMED (dirty,
///        ^                                                                 protected)
///        |                                                                   |
///        +---- written again: one more fault, HOT (writable until the cut) <-+
///   cut: re-protects dirty pages that are not ARMED; every page is protected; all cleared
/// ```
///
/// Invariant: an armed page is write-protected. Every path that un-protects a page (fault
/// service, fault-around) clears its armed bit first; a kernel zap (madvise on anonymous
/// memory) can drop protection behind our back, so a cut never trusts armed bits inside the
/// region's suspect runs (ranges that ever received REMOVE).
struct Eager {
    armed: BitVec<u64, Lsb0>,
    hot: BitVec<u64, Lsb0>,
    /// Runs un-protected by fault service in the current epoch, oldest first.
    queue: VecDeque<(Instant, u64, u64)>,
}

impl Eager {
    fn new(pages: u64) -> Self {
        Self {
            armed: BitVec::repeat(false, pages as usize),
            hot: BitVec::repeat(false, pages as usize),
            queue: VecDeque::new(),
        }
    }

    /// Pages `first..=last` are about to be un-protected by fault service at `t`. Returns
    /// how many of them were armed (re-faults).
    fn unprotecting(&mut self, first: u64, last: u64, t: Instant) -> u64 {
        let mut refaults = 0;
        for p in first as usize..=last as usize {
            if self.armed.replace(p, false) {
                self.hot.set(p, true);
                refaults += 1;
            }
        }
        self.queue.push_back((t, first, last - first + 1));
        refaults
    }

    /// The kernel may have dropped the protection of these pages (REMOVE).
    fn forget(&mut self, first: u64, count: u64) {
        self.armed[first as usize..(first + count) as usize].fill(false);
    }

    /// Runs of pages in `first..first+count` that may be armed now: dirty (`is_dirty`),
    /// not armed, not hot.
    fn armable(&self, first: u64, count: u64, is_dirty: impl Fn(u64) -> bool) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for p in first..first + count {
            if is_dirty(p) && !self.armed[p as usize] && !self.hot[p as usize] {
                match runs.last_mut() {
                    Some((a, n)) if *a + *n == p => *n += 1,
                    _ => runs.push((p, 1)),
                }
            }
        }
        runs
    }

    fn arm(&mut self, first: u64, count: u64) {
        self.armed[first as usize..(first + count) as usize].fill(true);
    }

    /// `words` minus the armed pages, trusting no armed bit inside `suspect` runs. Returns
    /// the masked words and the number of dirty pages skipped.
    fn unarmed(&mut self, words: &[u64], suspect: &[(u64, u64)]) -> (Vec<u64>, u64) {
        for &(a, n) in suspect {
            self.forget(a, n);
        }
        let mut skipped = 0;
        let out = words
            .iter()
            .zip(self.armed.as_raw_slice())
            .map(|(&w, &a)| {
                skipped += u64::from((w & a).count_ones());
                w & !a
            })
            .collect();
        (out, skipped)
    }

    /// A cut protected every page: a new epoch starts with nothing armed.
    fn reset(&mut self) {
        self.armed.fill(false);
        self.hot.fill(false);
        self.queue.clear();
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
}

impl Service {
    fn new(uffd: Option<Uffd>, shared: Arc<Shared>, rx: CommandRx) -> Self {
        let batch = shared.config.event_batch;
        Self {
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
        }
    }

    /// The userfaultfd. Only called on paths of the uffd backends (faults and events never
    /// arrive without one).
    fn u(&self) -> &Uffd {
        self.uffd.as_ref().expect("a userfaultfd backend")
    }

    fn run(&mut self) {
        loop {
            let (uffd_ready, wake_ready) = self.wait();
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
                self.service_pending();
            }
            if !self.deferred.is_empty() {
                self.retry_deferred(false);
            }
            if self.pending.is_empty() {
                self.eager_if_due();
            }
            if self.uffd.is_some() && !self.shared.config.spin.is_zero() && self.deferred.is_empty()
            {
                if let Flow::Exit = self.spin_phase() {
                    return;
                }
            }
        }
    }

    /// Busy-polls for `spin` after the last event: non-blocking `read(2)` on the userfaultfd
    /// (no `poll`) and `try_recv` on the command channel (no syscall), so a fault arriving
    /// meanwhile is serviced without the cost of waking this thread. Back to `poll` when idle.
    fn spin_phase(&mut self) -> Flow {
        let spin = self.shared.config.spin;
        let mut until = Instant::now() + spin;
        loop {
            while let Ok(cmd) = self.rx.try_recv() {
                if let Flow::Exit = self.command(cmd) {
                    return Flow::Exit;
                }
            }
            if self.read_batch() > 0 || !self.pending.is_empty() {
                self.service_pending();
                until = Instant::now() + spin;
            } else if Instant::now() >= until {
                return Flow::Continue;
            } else if !self.eager_if_due() {
                std::hint::spin_loop();
            }
            if !self.deferred.is_empty() {
                return Flow::Continue;
            }
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
            PollTimeout::ZERO
        } else if let Some(due) = self.eager_due {
            // Round up to whole milliseconds (poll's unit): never wake before it is due.
            let left = due.saturating_duration_since(Instant::now());
            let ms = left.as_micros().div_ceil(1000);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        } else {
            PollTimeout::NONE
        };
        loop {
            let wake = PollFd::new(self.shared.wake.as_fd(), PollFlags::POLLIN);
            let mut fds = match &self.uffd {
                Some(u) => vec![wake, PollFd::new(u.as_fd(), PollFlags::POLLIN)],
                None => vec![wake],
            };
            match nix::poll::poll(&mut fds, timeout) {
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

    // ---------------------------------------------------------------- events

    /// Reads one batch of events. Faults are queued in `pending`; non-cooperative events are
    /// handled at once (the application thread that caused them waits until we read them).
    /// Returns the number of events read.
    fn read_batch(&mut self) -> usize {
        let t = Instant::now();
        let mut evs = std::mem::take(&mut self.evs);
        evs.clear();
        // Odd while a read's non-cooperative events are not yet processed: snapshot readers
        // whose copy overlapped this window re-validate (a madvise zap may start the moment
        // the REMOVE event is read). See snapshot.rs.
        self.shared.read_seq.fetch_add(1, Ordering::SeqCst);
        let uffd = self.uffd.as_ref().expect("a userfaultfd backend");
        match uffd.read_events(&mut self.buf) {
            Ok(it) => {
                for e in it {
                    evs.push(match e {
                        // Only write-protect faults can occur: ranges are registered in WP mode only.
                        Ok(Event::Pagefault {
                            addr, thread_id, ..
                        }) => Ev::Fault(Fault {
                            addr: addr as usize,
                            tid: thread_id.as_raw(),
                            t,
                        }),
                        Ok(Event::Remove { start, end }) => {
                            Ev::Remove(start as usize, end as usize)
                        }
                        Ok(Event::Unmap { start, end }) => Ev::Unmap(start as usize, end as usize),
                        Ok(Event::Remap { from, to, len }) => {
                            Ev::Remap(from as usize, to as usize, len)
                        }
                        Ok(Event::Fork { .. }) | Err(_) => Ev::Other,
                    });
                }
            }
            Err(e) => tracing::warn!(%e, "reading the userfaultfd failed"),
        }
        let n = evs.len();
        if n > 0 {
            self.shared.counters.reads.fetch_add(1, Relaxed);
        }
        for ev in evs.drain(..) {
            match ev {
                Ev::Fault(f) => {
                    if self.shared.config.trace_faults {
                        tracing::trace!(
                            addr = format_args!("{:#x}", f.addr),
                            tid = f.tid,
                            "write-protect fault"
                        );
                    }
                    self.pending.push(f)
                }
                Ev::Remove(s, e) => self.on_remove(s, e),
                Ev::Unmap(s, e) => self.on_unmap(s, e, Invalidation::Unmapped, None),
                Ev::Remap(from, to, len) => self.on_unmap(
                    from,
                    from.saturating_add(len),
                    Invalidation::Remapped,
                    Some(to),
                ),
                Ev::Other => {
                    self.shared.counters.other_events.fetch_add(1, Relaxed);
                }
            }
        }
        self.evs = evs;
        self.shared.read_seq.fetch_add(1, Ordering::SeqCst);
        n
    }

    /// Regions overlapping `[start, end)`, by start address.
    fn overlapping(&self, start: usize, end: usize) -> Vec<usize> {
        let first = self
            .by_start
            .range(..=start)
            .next_back()
            .map(|(k, _)| *k)
            .unwrap_or(start);
        self.by_start
            .range(first..end)
            .filter(|(_, e)| e.inner.end() > start)
            .map(|(k, _)| *k)
            .collect()
    }

    fn on_remove(&mut self, start: usize, end: usize) {
        self.shared.counters.remove_events.fetch_add(1, Relaxed);
        tracing::debug!(
            start = format_args!("{start:#x}"),
            end = format_args!("{end:#x}"),
            "REMOVE event"
        );
        for key in self.overlapping(start, end) {
            let Some(entry) = self.by_start.get_mut(&key) else {
                continue;
            };
            let views = entry.live_views();
            let inner = &entry.inner;
            let s = start.max(inner.start);
            let e = end.min(inner.end());
            let first = inner.page_of(s);
            let last = inner.page_of(e - 1);
            // The content of these pages becomes zero: a write, as far as the dirty set goes.
            inner
                .dirty
                .set_range(first as usize, (last - first + 1) as usize);
            inner.counters.remove_events.fetch_add(1, Relaxed);
            inner.add_suspect(first, last - first + 1);
            if let Some(eg) = entry.eager.as_mut() {
                eg.forget(first, last - first + 1);
            }
            // Content at earlier cuts that was not preserved yet is gone (the zap may already
            // be running): readers get `Discarded`, never zeros.
            for v in &views {
                for p in first..=last {
                    v.mark_lost(p);
                }
            }
        }
    }

    fn on_unmap(&mut self, start: usize, end: usize, why: Invalidation, moved_to: Option<usize>) {
        let c = &self.shared.counters;
        match why {
            Invalidation::Unmapped => c.unmap_events.fetch_add(1, Relaxed),
            Invalidation::Remapped => c.remap_events.fetch_add(1, Relaxed),
            Invalidation::Dropped => 0,
        };
        tracing::debug!(
            start = format_args!("{start:#x}"),
            end = format_args!("{end:#x}"),
            ?why,
            "region invalidated"
        );
        for key in self.overlapping(start, end) {
            let Some(entry) = self.by_start.remove(&key) else {
                continue;
            };
            let inner = entry.inner;
            self.by_id.remove(&inner.id);
            inner.invalidate(why);
            // Stop tracking what is left of the range (and the moved part, for mremap), so the
            // application's later writes there never wait for us.
            let _ = self.u().unregister(Addr(inner.start).ptr(), inner.len);
            if let Some(to) = moved_to {
                let _ = self.u().unregister(Addr(to).ptr(), end - start);
            }
            if let Some((_, slot)) = entry.hook {
                sys::sigbus::retire(slot);
            }
        }
    }

    /// Services every pending fault: per region, sorted and coalesced into runs of adjacent
    /// pages; each run's dirty bits are set, then the run is un-protected (waking its writers).
    fn service_pending(&mut self) {
        let mut faults = std::mem::take(&mut self.pending);
        faults.sort_unstable_by_key(|f| f.addr);
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        counters.faults.fetch_add(faults.len() as u64, Relaxed);
        self.tids.clear();
        let mut i = 0;
        while i < faults.len() {
            let f = faults[i];
            let Some(key) = self.region_key(f.addr) else {
                // A fault on no live region: a stale event for a range that was just
                // unregistered or invalidated. Wake the writer; it retries untracked.
                let ps = sys::base_page_size();
                let page = f.addr & !(ps - 1);
                let _ = self.u().remove_write_protection(Addr(page).ptr(), ps, true);
                let _ = self.u().wake(Addr(page).ptr(), ps);
                counters.foreign_faults.fetch_add(1, Relaxed);
                i += 1;
                continue;
            };
            let entry = self
                .by_start
                .get_mut(&key)
                .expect("region_key returned a live key");
            let inner = Arc::clone(&entry.inner);
            let first = inner.page_of(f.addr);
            let mut last = first;
            let mut j = i;
            while j < faults.len() && faults[j].addr < inner.end() {
                let p = inner.page_of(faults[j].addr);
                if p > last + 1 {
                    break;
                }
                last = p;
                j += 1;
            }
            // Fault-around (opt-in): a writer walking pages in order gets a growing run
            // un-protected ahead of it (preserved first for every view that needs them).
            let around = shared.config.fault_around;
            if around > 0 {
                entry.ahead = if first == entry.next_expected {
                    (entry.ahead * 2).clamp(1, around)
                } else {
                    0
                };
                let mut ext = 0;
                // (A set dirty bit does not mean writable: a snapshot re-protects dirty pages
                // without clearing their bits. Un-protecting a writable page is a no-op.)
                while ext + 1 < entry.ahead && last + 1 < inner.page_count {
                    last += 1;
                    ext += 1;
                }
                entry.next_expected = last + 1;
            }
            // Copy-before-write for every view that still needs these pages. The pages are
            // still protected (their writers blocked), so the copies are their content at the cut.
            let views = entry.live_views();
            if !views.is_empty() {
                let gen = shared.budget.gen.load(Ordering::SeqCst);
                let verify = |p: u64| !inner.is_suspect(p) || shared.verify_protected(&inner, p);
                let mut ok = true;
                'pages: for p in first..=last {
                    for v in &views {
                        if !v.preserve(p, verify) {
                            ok = false;
                            break 'pages;
                        }
                    }
                }
                if !ok {
                    // Budget full: keep the writers blocked; retried when readers free budget.
                    shared.counters.deferred.fetch_add(1, Relaxed);
                    shared.budget.waiting.store(true, Ordering::SeqCst);
                    self.deferred_gen = gen;
                    self.deferred.extend_from_slice(&faults[i..j]);
                    i = j;
                    continue;
                }
            }
            let count = last - first + 1;
            // Armed bits cleared BEFORE un-protect (invariant: armed => protected).
            if let Some(eg) = entry.eager.as_mut() {
                let refaults = eg.unprotecting(first, last, f.t);
                counters.refaults.fetch_add(refaults, Relaxed);
                if self.eager_due.is_none() {
                    self.eager_due = shared.config.eager.map(|age| f.t + age);
                }
            }
            // Dirty bit BEFORE un-protect: the write may proceed only once it is recorded.
            inner.dirty.set_range(first as usize, count as usize);
            inner.counters.faults.fetch_add((j - i) as u64, Relaxed);
            inner
                .counters
                .last_tid
                .store(faults[j - 1].tid as u64, Relaxed);
            counters.wp_faults.fetch_add((j - i) as u64, Relaxed);
            let addr = inner.start + first as usize * inner.page_size;
            self.unprotect(addr, count as usize * inner.page_size);
            let done = Instant::now();
            for f in &faults[i..j] {
                counters
                    .service_ns
                    .record(done.duration_since(f.t).as_nanos() as u64);
                match self.tids.iter_mut().find(|(t, _)| *t == f.tid) {
                    Some((_, n)) => *n += 1,
                    None => self.tids.push((f.tid, 1)),
                }
            }
            i = j;
        }
        if !self.tids.is_empty() {
            if let Ok(mut m) = self.shared.threads.lock() {
                for &(tid, n) in &self.tids {
                    if m.len() < MAX_THREADS || m.contains_key(&tid) {
                        *m.entry(tid).or_insert(0) += n;
                    }
                }
            }
        }
        faults.clear();
        // Keep the larger allocation; anything queued meanwhile is appended.
        faults.append(&mut self.pending);
        self.pending = faults;
    }

    fn region_key(&self, addr: usize) -> Option<usize> {
        let (k, e) = self.by_start.range(..=addr).next_back()?;
        (addr < e.inner.end() && e.inner.invalidation().is_none()).then_some(*k)
    }

    /// Un-protects and wakes. On `EAGAIN` (a non-cooperative event is pending: the kernel
    /// refuses protection changes until we read it) reads events and retries.
    fn unprotect(&mut self, addr: usize, len: usize) {
        for attempt in 0.. {
            match self
                .u()
                .remove_write_protection(Addr(addr).ptr(), len, true)
                .map_err(|e| sys::errno_of(&e))
            {
                Ok(()) => {
                    self.shared.counters.unprotect_ioctls.fetch_add(1, Relaxed);
                    return;
                }
                Err(Errno::EAGAIN) if attempt < 100_000 => self.pump(),
                Err(e) => {
                    // The range went away (munmap raced with the fault): wake the writer; the
                    // kernel re-evaluates its access on retry.
                    tracing::debug!(addr = format_args!("{addr:#x}"), %e, "un-protect failed; waking");
                    let _ = self.u().wake(Addr(addr).ptr(), len);
                    return;
                }
            }
        }
    }

    /// Protects `[addr, addr+len)`, reading (and holding) events on `EAGAIN`.
    fn protect(&mut self, addr: usize, len: usize) -> Result<(), Errno> {
        if self.backend == Backend::Mprotect {
            sys::mprotect(addr, len, false)?;
            self.shared.counters.protect_ioctls.fetch_add(1, Relaxed);
            return Ok(());
        }
        for attempt in 0.. {
            match self
                .u()
                .write_protect(Addr(addr).ptr(), len)
                .map_err(|e| sys::errno_of(&e))
            {
                Ok(()) => {
                    self.shared.counters.protect_ioctls.fetch_add(1, Relaxed);
                    return Ok(());
                }
                Err(Errno::EAGAIN) if attempt < 100_000 => self.pump(),
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EAGAIN)
    }

    /// Reads pending events without servicing faults (they stay in `pending`).
    fn pump(&mut self) {
        if self.read_batch() == 0 {
            std::thread::yield_now();
        }
    }

    // ---------------------------------------------------------------- commands

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
            Command::Shutdown { reply } => {
                self.release_all();
                let _ = reply.send(());
                return Flow::Exit;
            }
            Command::InjectPanic => panic!("writewatch: injected service-thread panic (test hook)"),
        }
        Flow::Continue
    }

    fn register(&mut self, inner: Arc<RegionInner>, all_dirty: bool) -> Result<(), MapError> {
        let (start, end) = (inner.start, inner.end());
        if let Some((_, e)) = self.by_start.range(..end).next_back() {
            if e.inner.end() > start {
                return Err(MapError::Overlap {
                    start,
                    end,
                    existing_start: e.inner.start,
                    existing_end: e.inner.end(),
                });
            }
        }
        if self.backend == Backend::Mprotect {
            return self.register_mprotect(inner, all_dirty);
        }
        // In-thread mode: the handler must know the range before any of its pages can fault.
        let hook = if self.shared.config.in_thread {
            let h = Arc::new(Hook::new(
                Arc::clone(&inner),
                Arc::clone(&self.shared),
                sys::UffdRef::new(self.u()),
            ));
            let slot = sys::sigbus::register(start, inner.len, &h).ok_or(MapError::Sys {
                op: "register",
                errno: Errno::ENOSPC,
                hint: ": in-thread fault handling serves at most 1024 regions per process",
            })?;
            Some((h, slot))
        } else {
            None
        };
        let r = self.register_uffd(&inner, all_dirty);
        if r.is_err() {
            if let Some((_, slot)) = hook {
                sys::sigbus::retire(slot);
            }
            return r;
        }
        if let Some(entry) = self.by_start.get_mut(&start) {
            entry.hook = hook;
        }
        Ok(())
    }

    fn register_uffd(&mut self, inner: &Arc<RegionInner>, all_dirty: bool) -> Result<(), MapError> {
        let start = inner.start;
        let inner = Arc::clone(inner);
        let ioctls = self.u().register_with_mode(Addr(start).ptr(), inner.len, RegisterMode::WRITE_PROTECT).map_err(
            |e| {
                let errno = sys::errno_of(&e);
                match errno {
                    Errno::ENOMEM => MapError::NotMapped { addr: start },
                    Errno::EBUSY => MapError::Sys {
                        op: "UFFDIO_REGISTER",
                        errno,
                        hint: ": the range is already registered with another userfaultfd (another tracker or library)",
                    },
                    Errno::EINVAL => MapError::Sys {
                        op: "UFFDIO_REGISTER",
                        errno,
                        hint: ": the kernel cannot write-protect this memory (anonymous needs >= 5.7, shmem/hugetlbfs >= 5.19)",
                    },
                    _ => MapError::Sys { op: "UFFDIO_REGISTER", errno, hint: "" },
                }
            },
        )?;
        if !ioctls.contains(userfaultfd::IoctlFlags::WRITE_PROTECT) {
            let _ = self.u().unregister(Addr(start).ptr(), inner.len);
            return Err(MapError::KindUnsupported {
                kind: inner.kind.name(),
                needs: "Linux >= 5.19 for shmem/hugetlbfs write-protect",
            });
        }
        if all_dirty {
            inner.dirty.set_range(0, inner.page_count as usize);
        }
        let r = self
            .populate_if_needed(start, inner.len)
            .and_then(|()| self.protect(start, inner.len));
        if let Err(errno) = r {
            let _ = self.u().unregister(Addr(start).ptr(), inner.len);
            return Err(MapError::Sys {
                op: "UFFDIO_WRITEPROTECT",
                errno,
                hint: "",
            });
        }
        self.by_id.insert(inner.id, start);
        let mut entry = Entry::new(inner);
        if self.backend == Backend::SyncUffd && self.shared.config.eager.is_some() {
            // Every page is protected now: all armed (the first cut skips them all).
            let mut eg = Eager::new(entry.inner.page_count);
            eg.arm(0, entry.inner.page_count);
            entry.eager = Some(eg);
        }
        self.by_start.insert(start, entry);
        Ok(())
    }

    fn register_mprotect(
        &mut self,
        inner: Arc<RegionInner>,
        all_dirty: bool,
    ) -> Result<(), MapError> {
        let start = inner.start;
        let shift = inner.page_size.trailing_zeros();
        let slot = sys::segv::register(
            start,
            inner.len,
            shift,
            inner.dirty.words(),
            inner.page_count as usize,
        )
        .ok_or(MapError::Sys {
            op: "register",
            errno: Errno::ENOSPC,
            hint: ": the mprotect backend tracks at most 4096 regions per process",
        })?;
        if all_dirty {
            inner.dirty.set_range(0, inner.page_count as usize);
        }
        if let Err(errno) = sys::mprotect(start, inner.len, false) {
            sys::segv::unregister(slot);
            return Err(MapError::Sys {
                op: "mprotect",
                errno,
                hint: "",
            });
        }
        self.shared.counters.protect_ioctls.fetch_add(1, Relaxed);
        self.by_id.insert(inner.id, start);
        let mut e = Entry::new(inner);
        e.slot = Some(slot);
        self.by_start.insert(start, e);
        Ok(())
    }

    /// Stops tracking one range: uffd unregister, or (mprotect) make it writable first, then
    /// retire the handler slot (in that order, so no write can fault with nobody to serve it).
    fn release(&self, start: usize, entry: &Entry) -> Result<(), Errno> {
        match entry.slot {
            Some(slot) => {
                let r = sys::mprotect(start, entry.inner.len, true);
                sys::segv::unregister(slot);
                r
            }
            None => {
                let r = self
                    .u()
                    .unregister(Addr(start).ptr(), entry.inner.len)
                    .map_err(|e| sys::errno_of(&e));
                // After the unregister no write faults any more; retiring waits for handlers
                // still serving earlier ones.
                if let Some((_, slot)) = entry.hook {
                    sys::sigbus::retire(slot);
                }
                r
            }
        }
    }

    /// Without `WP_UNPOPULATED`, protecting a never-touched page is silently skipped by the
    /// kernel, so its first write would go unseen: map every page (read-only zero page) first.
    fn populate_if_needed(&self, addr: usize, len: usize) -> Result<(), Errno> {
        if self.backend == Backend::Mprotect
            || self.shared.features.has(crate::Feature::WpUnpopulated)
        {
            return Ok(());
        }
        match sys::madvise_nondestructive(addr as *mut u8, len, libc::MADV_POPULATE_READ) {
            Ok(()) => Ok(()),
            // Kernels before 5.14: touch each page (a read never raises a WP fault).
            Err(Errno::EINVAL) => {
                sys::touch_read(addr as *const u8, len, sys::base_page_size());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn unregister(&mut self, id: u64) -> Result<(), Errno> {
        let Some(start) = self.by_id.remove(&id) else {
            return Ok(());
        };
        let Some(entry) = self.by_start.remove(&start) else {
            return Ok(());
        };
        // Views that outlive the region must not read its live memory any more: after the
        // release nothing holds its pages' content, and an adopted range may be unmapped.
        entry.inner.close();
        match self.release(start, &entry) {
            Ok(()) => Ok(()),
            Err(e) if entry.inner.invalidation().is_none() => Err(e),
            Err(_) => Ok(()),
        }
    }

    fn release_all(&mut self) {
        for (start, entry) in std::mem::take(&mut self.by_start) {
            // Unregistering wakes every thread waiting on a fault in the range; their writes
            // then complete untracked.
            let _ = self.release(start, &entry);
        }
        self.by_id.clear();
    }

    /// The live region registered under `id`.
    fn region_by_id(&self, id: u64) -> Result<(usize, Arc<RegionInner>), CutError> {
        let gone = |start| CutError::Invalidated {
            start,
            reason: Invalidation::Unmapped,
        };
        let &start = self.by_id.get(&id).ok_or(gone(0))?;
        let entry = self.by_start.get(&start).ok_or(gone(start))?;
        Ok((start, Arc::clone(&entry.inner)))
    }

    /// Re-protects the coalesced runs of `set` (gaps up to `merge_gap_pages` merged); returns
    /// the number of protect calls. Faults read meanwhile stay pending until the caller's
    /// command returns.
    fn reprotect_runs(&mut self, inner: &RegionInner, set: &DirtySet) -> Result<u64, CutError> {
        let mut calls = 0;
        for (first, count) in plan_ranges(set.runs(), self.shared.config.merge_gap_pages) {
            let addr = inner.start + first as usize * inner.page_size;
            let len = count as usize * inner.page_size;
            if let Err(errno) = self
                .populate_if_needed(addr, len)
                .and_then(|()| self.protect(addr, len))
            {
                return Err(match inner.invalidation() {
                    Some(reason) => CutError::Invalidated {
                        start: inner.start,
                        reason,
                    },
                    None => CutError::Protect { errno },
                });
            }
            calls += 1;
        }
        Ok(calls)
    }

    fn cut(&mut self, id: u64) -> Result<Epoch, CutError> {
        let t0 = Instant::now();
        let (start, inner) = self.region_by_id(id)?;
        let suspect = inner.suspect_runs();
        let span = tracing::debug_span!(
            "cut",
            start = format_args!("{start:#x}"),
            epoch = inner.epoch.load(Relaxed)
        );
        let _g = span.enter();
        // In-thread mode: from here on, faults on this region wait until the cut is done.
        let _held = Holding::new(self.hook_slot(start));

        // 1. Pages the kernel may have un-protected behind our back (madvise zaps).
        let mut scan_ioctls = 0;
        for &(first, count) in &suspect {
            scan_ioctls += self.mark_unprotected(&inner, first, count);
        }
        // 2. Harvest: the epoch's dirty set; the bitmap starts the next epoch empty.
        if self.backend == Backend::Mprotect {
            // The application may have made tracked pages writable itself (mprotect): the
            // handler would never see their writes. Any writable mapping inside the region
            // whose pages are not dirty is such a case: report it (over-report at worst) and
            // let this cut re-protect it.
            mark_writable_mappings(&inner);
        }
        let mut words = inner.dirty.harvest();
        if self.backend == Backend::Mprotect {
            // Signal handlers that set a bit we just harvested must finish their un-protect
            // before we re-protect, or a page could end up writable with its bit clear.
            sys::segv::synchronize();
        }
        if self.backend == Backend::AsyncUffd {
            // The kernel resolved the writes itself: one PAGEMAP_SCAN walk reports and
            // re-protects (atomically per page) every written page.
            match self.async_harvest(&inner, &mut words) {
                Ok(n) => scan_ioctls += n,
                Err(errno) => {
                    inner.dirty.restore(&words);
                    return Err(CutError::Protect { errno });
                }
            }
        }
        let set = DirtySet::from_words(inner.page_size, inner.page_count, words);
        // 3. Re-protect the dirty runs (faults read meanwhile stay pending until we return),
        // except pages eager re-protection already re-armed.
        let (protect_ioctls, pre_protected) = if self.backend == Backend::AsyncUffd {
            (0, 0)
        } else {
            match self.reprotect_dirty(start, &inner, &set, &suspect) {
                Ok(r) => r,
                Err(e) => {
                    // Never lose dirty bits: put the whole harvest back (pages already
                    // re-protected are over-reported next time, which is allowed).
                    inner.dirty.restore(set.words());
                    return Err(e);
                }
            }
        };
        // Every page of the region is protected now.
        if let Some(eg) = self.eager_of(start) {
            eg.reset();
        }
        let number = inner.epoch.fetch_add(1, Ordering::AcqRel);
        // The epoch's pages can be read as they were at this instant until consumed.
        let view = if set.is_empty() || self.backend != Backend::SyncUffd {
            None
        } else {
            Some(self.attach_view(start, &inner, Some(&set), Mode::Consume))
        };
        if let Ok(mut h) = inner.counters.history.lock() {
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(EpochStat {
                epoch: number,
                pages: set.len() as u64,
            });
        }
        self.shared.counters.cuts.fetch_add(1, Relaxed);
        let duration = t0.elapsed();
        tracing::debug!(
            pages = set.len(),
            protect_ioctls,
            scan_ioctls,
            ?duration,
            "cut"
        );
        Ok(Epoch {
            number,
            dirty: set,
            stats: CutStats {
                protect_ioctls,
                scan_ioctls,
                duration,
                pre_protected,
            },
            view,
            backend: self.backend,
            region: Arc::clone(&inner),
        })
    }

    /// A whole-region snapshot: re-protects the pages written in the current epoch without
    /// closing it (their dirty bits stay), then every page is needed by a retain-mode view.
    fn snapshot(&mut self, id: u64) -> Result<crate::Snapshot, CutError> {
        if self.backend != Backend::SyncUffd {
            return Err(CutError::Unsupported {
                what: "snapshot",
                backend: self.backend.name(),
            });
        }
        let (start, inner) = self.region_by_id(id)?;
        let _g = tracing::debug_span!("snapshot", start = format_args!("{start:#x}")).entered();
        let _held = Holding::new(self.hook_slot(start));
        // Pages the kernel un-protected behind our back (a madvise zap that ran after its
        // REMOVE event was read) are dirty: re-protect them too, as a cut does.
        let suspect = inner.suspect_runs();
        for &(first, count) in &suspect {
            self.mark_unprotected(&inner, first, count);
        }
        let dirty = DirtySet::from_words(inner.page_size, inner.page_count, inner.dirty.snapshot());
        self.reprotect_dirty(start, &inner, &dirty, &suspect)?;
        // Every dirty page is protected now (armed => protected holds).
        if let Some(eg) = self.eager_of(start) {
            for (first, count) in dirty.runs() {
                eg.arm(first, count);
            }
        }
        Ok(crate::Snapshot {
            view: self.attach_view(start, &inner, None, Mode::Retain),
        })
    }

    /// Rollback's second step: re-protects the pages just rewritten from `view`'s copies
    /// (faults held meanwhile), then lets the view mark those still equal to their copy CLEAN.
    /// Dirty bits stay set (the pages were written in this epoch).
    fn rearm(&mut self, id: u64, view: &View, pages: &[u64]) -> Result<(), CutError> {
        let requeue = |e| {
            view.requeue(pages);
            e
        };
        let (start, inner) = self.region_by_id(id).map_err(requeue)?;
        let _held = Holding::new(self.hook_slot(start));
        let mut set = DirtySet::empty(inner.page_size, inner.page_count);
        for &p in pages {
            set.insert(p);
        }
        self.reprotect_runs(&inner, &set).map_err(requeue)?;
        view.mark_clean(pages);
        Ok(())
    }

    /// `Region::prepare_overwrite`: preserve every page live views still need, mark every
    /// page dirty, then lift the protection of the whole range (dirty bit before un-protect).
    fn prepare_overwrite(&mut self, id: u64) -> Result<(), CutError> {
        let (start, inner) = self.region_by_id(id)?;
        let _held = Holding::new(self.hook_slot(start));
        let views = self
            .by_start
            .get_mut(&start)
            .map(Entry::live_views)
            .unwrap_or_default();
        let shared = Arc::clone(&self.shared);
        let verify = |p: u64| !inner.is_suspect(p) || shared.verify_protected(&inner, p);
        for p in 0..inner.page_count {
            for v in &views {
                if !v.preserve(p, verify) {
                    return Err(CutError::CopyBudget {
                        budget: shared.budget.limit,
                    });
                }
            }
        }
        let n = inner.page_count;
        inner.dirty.set_range(0, n as usize);
        if let Some(eg) = self.eager_of(start) {
            eg.forget(0, n);
        }
        if self.backend == Backend::Mprotect {
            sys::mprotect(start, inner.len, true).map_err(|errno| CutError::Protect { errno })?;
        } else {
            self.unprotect(start, inner.len);
        }
        Ok(())
    }

    /// Re-protects the pages of `set` that eager re-protection has not re-armed (all of them
    /// without it; armed bits inside `suspect` runs are not trusted). Returns the protect
    /// calls made and the pages skipped as already armed.
    fn reprotect_dirty(
        &mut self,
        start: usize,
        inner: &RegionInner,
        set: &DirtySet,
        suspect: &[(u64, u64)],
    ) -> Result<(u64, u64), CutError> {
        match self.eager_of(start) {
            Some(eg) => {
                let (w, skipped) = eg.unarmed(set.words(), suspect);
                let unarmed = DirtySet::from_words(inner.page_size, inner.page_count, w);
                Ok((self.reprotect_runs(inner, &unarmed)?, skipped))
            }
            None => Ok((self.reprotect_runs(inner, set)?, 0)),
        }
    }

    /// Creates the copy-before-write view of `needed` pages and registers it with the region
    /// (and, in in-thread mode, with the `SIGBUS` handler's list).
    fn attach_view(
        &mut self,
        start: usize,
        inner: &Arc<RegionInner>,
        needed: Option<&DirtySet>,
        mode: Mode,
    ) -> crate::view::ViewHandle {
        let v = Arc::new(View::new(
            Arc::clone(inner),
            Arc::clone(&self.shared),
            needed,
            mode,
        ));
        if let Some(e) = self.by_start.get_mut(&start) {
            e.views.push(Arc::downgrade(&v));
            if let Some((h, _)) = &e.hook {
                h.prune();
                h.views.update(|l| l.push(Arc::clone(&v)));
            }
        }
        crate::view::ViewHandle(v)
    }

    fn hook_slot(&self, start: usize) -> Option<usize> {
        self.by_start
            .get(&start)?
            .hook
            .as_ref()
            .map(|(_, slot)| *slot)
    }

    /// In-thread mode: lets go of views that only the handler's list still holds.
    fn prune_hooks(&self) {
        for e in self.by_start.values() {
            if let Some((h, _)) = &e.hook {
                h.prune();
            }
        }
    }

    fn eager_of(&mut self, start: usize) -> Option<&mut Eager> {
        self.by_start.get_mut(&start)?.eager.as_mut()
    }

    /// Runs one eager re-protection step if one is due. Returns whether it did any work.
    fn eager_if_due(&mut self) -> bool {
        match self.eager_due {
            Some(due) if Instant::now() >= due => {
                self.eager_due = self.eager_step();
                true
            }
            _ => false,
        }
    }

    /// Eager re-protection: re-arms the pages of serviced runs older than the configured age
    /// (dirty, not armed, not hot), at most [`EAGER_CHUNK`] ioctls per step. Returns when the
    /// next step is due (now if this one stopped at the chunk limit), None if nothing is
    /// queued. Faults read meanwhile (`EAGAIN` pumping) stay pending until the step returns;
    /// a page re-protected here that is written again simply faults again.
    fn eager_step(&mut self) -> Option<Instant> {
        let age = self.shared.config.eager?;
        let now = Instant::now();
        let mut left = EAGER_CHUNK;
        let mut next: Option<Instant> = None;
        let keys: Vec<usize> = self
            .by_start
            .iter()
            .filter(|(_, e)| e.eager.as_ref().is_some_and(|g| !g.queue.is_empty()))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            while let Some(entry) = self.by_start.get_mut(&key) {
                let inner = Arc::clone(&entry.inner);
                let Some(eg) = entry.eager.as_mut() else {
                    break;
                };
                let Some(&(t, first, count)) = eg.queue.front() else {
                    break;
                };
                if t + age > now {
                    next = Some(next.map_or(t + age, |n: Instant| n.min(t + age)));
                    break;
                }
                if left == 0 {
                    return Some(now);
                }
                eg.queue.pop_front();
                let runs = eg.armable(first, count, |p| inner.dirty.get(p as usize));
                for (a, n) in runs {
                    let addr = inner.start + a as usize * inner.page_size;
                    if self.protect(addr, n as usize * inner.page_size).is_err() {
                        // Not armed: the cut re-protects it (or reports the error).
                        continue;
                    }
                    left = left.saturating_sub(1);
                    self.shared.counters.eager_ioctls.fetch_add(1, Relaxed);
                    self.shared.counters.eager_pages.fetch_add(n, Relaxed);
                    if let Some(eg) = self.eager_of(key) {
                        eg.arm(a, n);
                    }
                }
            }
        }
        next
    }

    /// The async backend's harvest over the whole region ([`crate::pagemap::Pagemap::harvest`]): every written
    /// page is reported in `words` and write-protected again in the same walk.
    fn async_harvest(&mut self, inner: &RegionInner, words: &mut [u64]) -> Result<u64, Errno> {
        let pm = self.shared.pagemap.as_ref().ok_or(Errno::ENOTTY)?;
        pm.harvest(
            (inner.start, inner.end(), inner.page_size),
            words,
            &mut self.async_out,
            &self.shared.counters.scan_ioctls,
        )
    }

    /// Sets the dirty bit of every page in the run that is not write-protected (see
    /// [`crate::pagemap::Pagemap::unprotected`]). Returns the number of `PAGEMAP_SCAN` ioctls made. Without
    /// `PAGEMAP_SCAN`, marks the whole run (over-report).
    fn mark_unprotected(&mut self, inner: &RegionInner, first: u64, count: u64) -> u64 {
        let start = inner.start + first as usize * inner.page_size;
        let end = start + count as usize * inner.page_size;
        let Some(pm) = self.shared.pagemap.as_ref() else {
            inner.dirty.set_range(first as usize, count as usize);
            return 0;
        };
        let base = (inner.start, inner.page_size);
        let r = pm.unprotected(base, start, end, &mut self.scan_out, |pages| {
            let (pa, pb) = pages.into_inner();
            inner.dirty.set_range(pa as usize, (pb - pa + 1) as usize);
        });
        match r {
            Ok(n) => {
                self.shared.counters.scan_ioctls.fetch_add(n, Relaxed);
                n
            }
            Err(e) => {
                tracing::debug!(%e, "PAGEMAP_SCAN failed; marking the suspect run dirty");
                inner.dirty.set_range(first as usize, count as usize);
                1
            }
        }
    }

    // ---------------------------------------------------------------- teardown

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

/// Mprotect backend: sets the dirty bits of every page of `inner` that lies in a writable
/// mapping (per `/proc/self/maps`). If the maps cannot be read, marks the whole region
/// (over-report, never under-report).
fn mark_writable_mappings(inner: &RegionInner) {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        inner.dirty.set_range(0, inner.page_count as usize);
        return;
    };
    for v in crate::maps::parse_smaps(&maps) {
        if !v.writable || v.end <= inner.start || v.start >= inner.end() {
            continue;
        }
        let a = inner.page_of(v.start.max(inner.start));
        let b = inner.page_of(v.end.min(inner.end()) - 1);
        inner.dirty.set_range(a as usize, (b - a + 1) as usize);
    }
}
