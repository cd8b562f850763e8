//! In-thread fault handling: a process-wide `SIGBUS` handler for userfaultfds opened with
//! `UFFD_FEATURE_SIGBUS`. The kernel raises `SIGBUS` (`BUS_ADRERR`) in the thread whose write
//! hit a write-protected page; the handler finds the region in a static slot table and calls
//! the region's [`Serve`] hook (`crate::inthread`) on that thread, which preserves the page for
//! live views, sets its dirty bit and un-protects it. The write then re-executes.
//!
//! This is the one call from `sys` up into the crate. It is not an import: the service thread
//! hands each slot its hook as an `Arc<dyn Serve>` at [`register`], so this file names nothing
//! above `sys`.
//!
//! ```text
//!   handler:  INFLIGHT[gen]++ ; slot = lookup(addr)
//!             slot.cutting ? -> INFLIGHT-- ; wait until !cutting ; retry      (held fault)
//!             serve(hook)  -> Done | Wait (budget full / EAGAIN: sleep, retry)
//!             INFLIGHT--
//!   cut:      cutting = 1 ; synchronize()   (every handler that missed the flag is done)
//!             harvest + re-protect + publish the new view ; cutting = 0
//! ```
//!
//! Invariants: a slot's hook, and any list read through [`RcuList::for_each`], stay valid while
//! a handler is in flight (retirement and list replacement wait in [`synchronize`]). Handlers
//! never wait while in flight: a busy page (a saver or another handler copying it), a full
//! copy budget, a held fault or `EAGAIN` all make the handler leave its in-flight section
//! before it waits and retries, so `synchronize` always finishes (even when called by the
//! service thread in the middle of an event batch a saver is waiting for).
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock};

use nix::errno::Errno;

use super::signals::{self as common, Grace, SavedErrno};

const MAX_SLOTS: usize = 1024;

/// What a handler does next.
pub(crate) enum Outcome {
    /// The page is un-protected (or the range is gone): return and let the write re-execute.
    Done,
    /// Not now (copy budget full, or a non-cooperative event pending): leave the in-flight
    /// section, wait briefly, try again.
    Wait,
}

/// The signal handler's one up-call: serving a fault of a registered range on the faulting
/// thread. Implemented above this module (`crate::inthread::Hook`) and handed in at
/// [`register`] as a trait object, so `sys` names nothing of the crate above it.
pub(crate) trait Serve: Send + Sync {
    /// Serves a write-protect fault at `addr` (called inside the handler's in-flight section).
    fn serve(&self, addr: usize, in_flight: &InFlight) -> Outcome;
}

/// A slot's hook: a thin pointer (an `AtomicPtr` cannot hold a fat one) to the trait object.
type HookPtr = Arc<dyn Serve>;

struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    hook: AtomicPtr<HookPtr>,
    cutting: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    hook: AtomicPtr::new(std::ptr::null_mut()),
    cutting: AtomicBool::new(false),
};
static SLOTS: [Slot; MAX_SLOTS] = [EMPTY; MAX_SLOTS];
static NSLOTS: AtomicUsize = AtomicUsize::new(0);
static ALLOC: Mutex<()> = Mutex::new(());
static GRACE: Grace = Grace::new();
static OLD: OnceLock<libc::sigaction> = OnceLock::new();

thread_local! {
    /// The last address this thread's handler could not attribute to a slot (a fault that
    /// raced with retirement is retried once before it is passed on).
    static UNKNOWN: Cell<usize> = const { Cell::new(0) };
}

/// Proof that the current code runs inside a handler's in-flight section.
pub(crate) struct InFlight(());

/// Installs the handler once per process, remembering the previous one. Not
/// `SA_ONSTACK`: this is not a stack overflow, and the handler copies pages (the alternate
/// stacks Rust installs are small). Every other signal is blocked while it runs, so no
/// other handler can write tracked memory (and fault) inside it.
pub(crate) fn install() -> Result<(), Errno> {
    common::install(&OLD, libc::SIGBUS, handler, libc::SA_RESTART, true)
}

/// Publishes a tracked range served by `hook`. The slot keeps a strong reference until
/// [`retire`] returns.
pub(crate) fn register<H: Serve + 'static>(
    start: usize,
    len: usize,
    hook: &Arc<H>,
) -> Option<usize> {
    let _g = ALLOC.lock().unwrap_or_else(|e| e.into_inner());
    let n = NSLOTS.load(Acquire);
    let idx = common::free_slot(n, MAX_SLOTS, |i| SLOTS[i].start.load(Acquire) == 0)?;
    let s = &SLOTS[idx];
    s.cutting.store(false, SeqCst);
    let hook: HookPtr = Arc::clone(hook) as HookPtr;
    s.hook.store(Box::into_raw(Box::new(hook)), Release);
    s.end.store(start + len, Release);
    s.start.store(start, Release);
    if idx == n {
        NSLOTS.store(n + 1, Release);
    }
    Some(idx)
}

/// Retires a slot, waits until no handler can still use it, and drops its hook reference.
pub(crate) fn retire(idx: usize) {
    let _g = ALLOC.lock().unwrap_or_else(|e| e.into_inner());
    let s = &SLOTS[idx];
    s.start.store(0, SeqCst);
    synchronize();
    let h = s.hook.swap(std::ptr::null_mut(), SeqCst);
    s.cutting.store(false, SeqCst);
    if !h.is_null() {
        // SAFETY: `h` came from Box::into_raw in `register`, and no handler can hold it any
        // more (the slot is unpublished and synchronize waited for in-flight handlers).
        drop(unsafe { Box::from_raw(h) });
    }
}

/// Starts or ends a cut of the slot's region. Starting waits until every handler that did
/// not see the flag has finished; later ones wait until it is cleared (held faults).
pub(crate) fn set_cutting(idx: usize, on: bool) {
    SLOTS[idx].cutting.store(on, SeqCst);
    if on {
        synchronize();
    }
}

/// Waits until every handler that was in flight when this call started has left.
pub(crate) fn synchronize() {
    GRACE.synchronize();
}

/// A list read by handlers without locks and replaced (copy, swap, [`synchronize`], free)
/// by writers, which a mutex serialises (read-copy-update).
pub(crate) struct RcuList<T> {
    ptr: AtomicPtr<Vec<Arc<T>>>,
    writer: Mutex<()>,
}

impl<T> RcuList<T> {
    pub(crate) fn new() -> Self {
        Self {
            ptr: AtomicPtr::new(Box::into_raw(Box::new(Vec::new()))),
            writer: Mutex::new(()),
        }
    }

    /// Handler side: calls `f` on each element until it returns false; returns whether
    /// all returned true.
    pub(crate) fn for_each(&self, _in_flight: &InFlight, f: impl FnMut(&Arc<T>) -> bool) -> bool {
        let p = self.ptr.load(Acquire);
        // SAFETY: a list loaded by a handler stays allocated until that handler leaves its
        // in-flight section (`_in_flight` proves it is in one): writers free a replaced
        // list only after `synchronize`.
        let v = unsafe { &*p };
        v.iter().all(f)
    }

    /// Writer side: replaces the list with `f(copy of it)`.
    pub(crate) fn update(&self, f: impl FnOnce(&mut Vec<Arc<T>>)) {
        let _g = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.ptr.load(Acquire);
        // SAFETY: only writers replace or free the list, and they are serialised by the
        // lock we hold, so `old` is live.
        let mut new = unsafe { (*old).clone() };
        f(&mut new);
        self.ptr.store(Box::into_raw(Box::new(new)), SeqCst);
        synchronize();
        // SAFETY: `old` came from Box::into_raw and no handler can still see it.
        drop(unsafe { Box::from_raw(old) });
    }

    /// Writer side: a copy of the current elements.
    pub(crate) fn snapshot(&self) -> Vec<Arc<T>> {
        let _g = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as in `update`.
        unsafe { (*self.ptr.load(Acquire)).clone() }
    }
}

impl<T> Drop for RcuList<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no writer runs; the owner (a hook) is dropped only after its
        // slot was retired, so no handler can see the list.
        drop(unsafe { Box::from_raw(*self.ptr.get_mut()) });
    }
}

fn lookup(addr: usize) -> Option<usize> {
    let n = NSLOTS.load(Acquire);
    (0..n).find(|&i| common::slot_contains(&SLOTS[i].start, &SLOTS[i].end, addr))
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let saved = SavedErrno::save();
    let (addr, code) = common::fault_of(info);
    let mine = code == libc::BUS_ADRERR && serve_fault(addr);
    saved.restore();
    if !mine {
        common::chain(&OLD, sig, info, ctx);
    }
}

/// Serves a fault at `addr` if it lies in a registered range. Returns false if not ours.
fn serve_fault(addr: usize) -> bool {
    let mut seen = false;
    let mut waits = 0u32;
    loop {
        let g = GRACE.enter();
        let step = match lookup(addr) {
            None => None,
            Some(idx) if SLOTS[idx].cutting.load(SeqCst) => Some(Err(idx)),
            Some(idx) => {
                let h = SLOTS[idx].hook.load(Acquire);
                if h.is_null() {
                    None
                } else {
                    // SAFETY: the slot was published when we looked it up after entering
                    // the in-flight section, so its hook stays alive until we leave it
                    // (`retire` synchronises before dropping it).
                    Some(Ok(unsafe { &*h }.serve(addr, &InFlight(()))))
                }
            }
        };
        GRACE.leave(g);
        match step {
            None if seen => return true, // retired meanwhile: the write retries untracked
            None => {
                // A fault that raced with retirement: retry the access once before treating
                // the signal as someone else's.
                let again = UNKNOWN.with(|u| u.replace(addr)) == addr;
                if again {
                    UNKNOWN.with(|u| u.set(0));
                }
                return !again;
            }
            Some(Ok(Outcome::Done)) => {
                UNKNOWN.with(|u| u.set(0));
                return true;
            }
            Some(Ok(Outcome::Wait)) => {
                seen = true;
                waits += 1;
                if waits < 16 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
            }
            Some(Err(idx)) => {
                // Held: a cut of this region is running.
                seen = true;
                let mut spins = 0u32;
                while SLOTS[idx].cutting.load(SeqCst) {
                    spins += 1;
                    if spins < 256 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }
}
