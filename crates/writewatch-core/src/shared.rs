//! The vocabulary every layer above `sys` shares: the tracker-wide state ([`Shared`]), its
//! run states, the build-time [`Config`] and the preserved-copy [`Budget`].
//!
//! Nothing here names a region handle, a view or a command: those live above (`command.rs`
//! holds the channel to the service thread), so views can hold the shared state without
//! a loop of imports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

use nix::sys::eventfd::EventFd;

use crate::backend::{Backend, Features};
use crate::error::Unavailable;
use crate::pagemap::Pagemap;
use crate::range::RegionInner;
use crate::stats::Counters;

pub(crate) const RUNNING: u8 = 0;
pub(crate) const SHUT_DOWN: u8 = 1;
pub(crate) const POISONED: u8 = 2;

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
    /// The adaptive policy (sync backend; `service::policy`).
    pub adaptive: bool,
    /// Options the user set explicitly (they force the policy's choice).
    pub merge_gap_set: bool,
    /// `spin(d)` was called (else the adaptive policy decides).
    pub spin_set: bool,
    pub fault_around_set: bool,
    /// Lazy arming of owned anonymous regions (see `service::lazy`); the builder turns it off
    /// where it does not apply (async and mprotect backends, in-thread faults).
    pub lazy: bool,
}

/// State shared between tracker handles, regions, views and the service thread.
pub(crate) struct Shared {
    /// Written by command senders, polled by the service thread together with the uffd.
    pub wake: EventFd,
    pub state: AtomicU8,
    pub counters: Counters,
    pub threads: Mutex<HashMap<i32, u64>>,
    pub features: Features,
    pub backend: Backend,
    pub config: Config,
    pub next_id: AtomicU64,
    /// `/proc/self/pagemap`, for `PAGEMAP_SCAN` (None if it cannot be opened).
    pub pagemap: Option<Pagemap>,
    /// `/proc/self/mem` of the process that built the tracker, when regions are armed lazily.
    pub mem: Option<std::sync::Arc<std::fs::File>>,
    /// Memory for preserved (copy-before-write) pages.
    pub budget: Budget,
    /// Incremented before and after each userfaultfd read's events are processed (odd while
    /// in progress); see `view::View::read`.
    pub read_seq: AtomicU64,
    /// What the adaptive policy decided at the last cut (written by the service thread).
    pub policy: Mutex<crate::policy::PolicyReport>,
}

impl Shared {
    pub(crate) fn available(&self) -> Result<(), Unavailable> {
        match self.state.load(Ordering::Acquire) {
            RUNNING => Ok(()),
            POISONED => Err(Unavailable::Poisoned),
            _ => Err(Unavailable::ShutDown),
        }
    }

    pub(crate) fn unavailable(&self) -> Unavailable {
        match self.state.load(Ordering::Acquire) {
            POISONED => Unavailable::Poisoned,
            _ => Unavailable::ShutDown,
        }
    }

    /// Whether page `page` of `region` is still write-protected ([`Pagemap::is_protected`]).
    /// False when it cannot be determined.
    pub(crate) fn verify_protected(&self, region: &RegionInner, page: u64) -> bool {
        self.pagemap.as_ref().is_some_and(|pm| {
            pm.is_protected(
                region.start + page as usize * region.page_size,
                region.page_size,
            )
        })
    }

    pub(crate) fn kick(&self) {
        // EAGAIN only when the counter is saturated, which still wakes the poller.
        let _ = self.wake.write(1);
    }
}

/// The preserved-copy budget shared by every view of a tracker.
#[derive(Debug)]
pub(crate) struct Budget {
    pub used: AtomicUsize,
    pub limit: usize,
    /// Set by the service thread while a fault waits for budget; the freeing side then wakes it.
    pub waiting: AtomicBool,
    /// Bumped (SeqCst) by everything that can let a deferred fault proceed: budget returned, a
    /// page that needed a copy no longer needs one (read, released, lost). The service thread
    /// loads it before trying to preserve and retries deferred faults when it moved, so a
    /// release between a failed `try_take` and raising `waiting` is never lost.
    pub gen: AtomicU64,
    /// Recycled page buffers: a fresh heap page costs a page fault (~2 us) on first touch;
    /// a recycled one is already resident.
    pool: Mutex<Vec<Box<[u8]>>>,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
            waiting: AtomicBool::new(false),
            gen: AtomicU64::new(0),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// A page buffer: recycled if possible (already faulted in), else freshly allocated.
    /// Contents are unspecified; callers overwrite the whole buffer.
    pub(crate) fn alloc(&self, size: usize) -> Box<[u8]> {
        let recycled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match recycled {
            Some(b) if b.len() == size => b,
            _ => vec![0u8; size].into_boxed_slice(),
        }
    }

    /// Returns a page buffer to the pool (base pages only, up to the budget's size).
    pub(crate) fn recycle(&self, buf: Box<[u8]>) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if buf.len() <= 4096 && pool.len() * 4096 < self.limit.min(256 << 20) {
            pool.push(buf);
        }
    }

    pub(crate) fn try_take(&self, bytes: usize) -> bool {
        let prev = self.used.fetch_add(bytes, Ordering::AcqRel);
        if prev + bytes > self.limit && prev != 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub(crate) fn give(&self, bytes: usize, shared: &Shared) {
        self.used.fetch_sub(bytes, Ordering::SeqCst);
        self.freed(shared);
    }

    /// A deferred fault may be able to proceed now (budget returned, or a page no longer
    /// needs a copy): bump the generation, then wake the service thread if it waits.
    pub(crate) fn freed(&self, shared: &Shared) {
        self.gen.fetch_add(1, Ordering::SeqCst);
        if self.waiting.swap(false, Ordering::SeqCst) {
            shared.kick();
        }
    }
}
