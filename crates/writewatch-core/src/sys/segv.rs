//! The process-wide SIGSEGV handler of the mprotect backend.
//!
//! Async-signal-safe by construction: the handler touches only atomics in static storage and
//! the dirty bitmaps they point to, and calls only `mprotect(2)` and `sigaction(2)`. It never
//! allocates or takes a lock. Faults on addresses it does not own, or that are not
//! permission faults, go to the previous handler (Rust's stack-overflow guard keeps working).
//!
//! Registration protocol: a slot is published by storing its `start` last (Release); the
//! handler reads `start` first (Acquire). A slot is retired by clearing `start` and then
//! waiting for a grace period (`synchronize`): two generation flips, each waiting for the
//! handlers counted under the previous parity to finish. After that no handler can still
//! hold the slot's bitmap pointer.
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Mutex, OnceLock};

use super::signals::{self as common, Grace, SavedErrno};

use nix::errno::Errno;

const MAX_SLOTS: usize = 4096;

struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    shift: AtomicU32,
    words: AtomicPtr<AtomicU64>,
    nbits: AtomicUsize,
    /// An opaque tag of the tracker that registered the slot (0: not tagged yet).
    owner: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    shift: AtomicU32::new(12),
    words: AtomicPtr::new(std::ptr::null_mut()),
    nbits: AtomicUsize::new(0),
    owner: AtomicUsize::new(0),
};
static SLOTS: [Slot; MAX_SLOTS] = [EMPTY; MAX_SLOTS];
static NSLOTS: AtomicUsize = AtomicUsize::new(0);
/// Serialises slot allocation: trackers have one service thread each, and two of them
/// registering at once must not pick the same free slot.
static ALLOC: Mutex<()> = Mutex::new(());
static GRACE: Grace = Grace::new();
static OLD: OnceLock<libc::sigaction> = OnceLock::new();
/// Faults resolved by the handler (for stats).
pub(crate) static FAULTS: AtomicU64 = AtomicU64::new(0);

/// Installs the handler once per process, remembering the previous one.
pub(crate) fn install() -> Result<(), Errno> {
    common::install(
        &OLD,
        libc::SIGSEGV,
        handler,
        libc::SA_ONSTACK | libc::SA_RESTART,
        false,
    )
}

/// Publishes a tracked range. `words` must stay valid until `unregister` returns.
pub(crate) fn register(
    start: usize,
    len: usize,
    shift: u32,
    words: &[AtomicU64],
    nbits: usize,
) -> Option<usize> {
    let _g = ALLOC.lock().unwrap_or_else(|e| e.into_inner());
    let n = NSLOTS.load(Acquire);
    let idx = common::free_slot(n, MAX_SLOTS, |i| SLOTS[i].start.load(Acquire) == 0)?;
    let s = &SLOTS[idx];
    s.owner.store(0, Release);
    s.end.store(start + len, Release);
    s.shift.store(shift, Release);
    s.words.store(words.as_ptr() as *mut AtomicU64, Release);
    s.nbits.store(nbits, Release);
    s.start.store(start, Release);
    if idx == n {
        NSLOTS.store(n + 1, Release);
    }
    Some(idx)
}

/// The first published slot overlapping `[start, end)`, as `(start, end, owner tag)`.
pub(crate) fn overlapping(start: usize, end: usize) -> Option<(usize, usize, usize)> {
    let _g = ALLOC.lock().unwrap_or_else(|e| e.into_inner());
    let n = NSLOTS.load(Acquire);
    SLOTS[..n].iter().find_map(|s| {
        let (a, b) = (s.start.load(Acquire), s.end.load(Acquire));
        (a != 0 && a < end && b > start).then(|| (a, b, s.owner.load(Acquire)))
    })
}

/// Tags the published slot that starts at `start` with its tracker's `owner` tag.
pub(crate) fn set_owner(start: usize, owner: usize) {
    let _g = ALLOC.lock().unwrap_or_else(|e| e.into_inner());
    let n = NSLOTS.load(Acquire);
    if let Some(s) = SLOTS[..n].iter().find(|s| s.start.load(Acquire) == start) {
        s.owner.store(owner, Release);
    }
}

/// The page-fault error code saved in the signal context (x86_64); `None` when it cannot be
/// told.
fn fault_error_code(ctx: *mut libc::c_void) -> Option<i64> {
    #[cfg(target_arch = "x86_64")]
    {
        if ctx.is_null() {
            return None;
        }
        // SAFETY: for an SA_SIGINFO handler the kernel passes a valid ucontext_t.
        Some(unsafe {
            (*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_ERR as usize]
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ctx;
        None
    }
}

/// Whether the fault is known to be a read or an instruction fetch (x86_64: the page-fault
/// error code's W bit, saved in the signal context). `false` when it cannot be told.
fn known_not_write(ctx: *mut libc::c_void) -> bool {
    fault_error_code(ctx).is_some_and(|err| err & 2 == 0)
}

/// Whether the fault hit a present page (x86_64: the P bit of the page-fault error code).
/// Such a page is readable (x86 maps `PROT_NONE` pages not-present), so the readability
/// probe can be skipped. `false` when it cannot be told.
fn known_present(ctx: *mut libc::c_void) -> bool {
    fault_error_code(ctx).is_some_and(|err| err & 1 != 0)
}

/// Whether the byte at `addr` may be read (the mapping has `PROT_READ`), asked without
/// touching it: `process_vm_readv` on ourselves fails with `EFAULT` on an unreadable page.
/// Async-signal-safe (one system call). `true` when it cannot be told.
fn readable(addr: usize) -> bool {
    let mut byte = 0u8;
    let local = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: writes at most one byte into `byte` on our stack; reads (never writes) one
    // byte of our own address space, through the kernel, which checks permissions.
    let r = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    r == 1 || Errno::last() != Errno::EFAULT
}

/// Retires a slot and waits until no handler can still use it.
pub(crate) fn unregister(idx: usize) {
    SLOTS[idx].start.store(0, Release);
    synchronize();
}

/// Waits until every handler that started before this call has finished.
pub(crate) fn synchronize() {
    GRACE.synchronize();
}

/// Whether `addr` lies in a published slot (checked before the costlier tests).
fn in_any_slot(addr: usize) -> bool {
    let n = NSLOTS.load(Acquire);
    SLOTS[..n]
        .iter()
        .any(|s| common::slot_contains(&s.start, &s.end, addr))
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let saved = SavedErrno::save();
    let (addr, code) = common::fault_of(info);
    let g = GRACE.enter();
    let mut handled = false;
    // Tracked pages are never made unreadable by the tracker: a read fault, or any fault on
    // an unreadable (PROT_NONE) page, is the application's own protection at work (a guard
    // page) and goes to the previous handler / the default action.
    if code == linux_raw_sys::general::SEGV_ACCERR as libc::c_int
        && !known_not_write(ctx)
        && in_any_slot(addr)
        && (known_present(ctx) || readable(addr))
    {
        let n = NSLOTS.load(Acquire);
        for s in &SLOTS[..n] {
            let start = s.start.load(Acquire);
            if start == 0 || addr < start || addr >= s.end.load(Acquire) {
                continue;
            }
            let shift = s.shift.load(Acquire);
            let page = (addr - start) >> shift;
            let words = s.words.load(Acquire);
            // SAFETY: the slot is published, so `words` points to at least
            // ceil(nbits/64) live atomics until the slot is retired, and retirement
            // waits for this handler (INFLIGHT). `page < nbits` since addr < end.
            unsafe { (*words.add(page / 64)).fetch_or(1 << (page % 64), SeqCst) };
            let pstart = start + (page << shift);
            // SAFETY: changing protection of a tracked page; see `mprotect` above.
            let r = unsafe {
                libc::mprotect(
                    pstart as *mut libc::c_void,
                    1 << shift,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            if r != 0 {
                // Too many VMAs (vm.max_map_count): un-protect the whole range and
                // report all of it (over-report, never a lost write or a fault loop).
                let nbits = s.nbits.load(Acquire);
                for w in 0..nbits.div_ceil(64) {
                    // SAFETY: as above, within ceil(nbits/64) words.
                    unsafe { (*words.add(w)).store(u64::MAX, SeqCst) };
                }
                // SAFETY: as above.
                unsafe {
                    libc::mprotect(
                        start as *mut libc::c_void,
                        s.end.load(Acquire) - start,
                        libc::PROT_READ | libc::PROT_WRITE,
                    )
                };
            }
            FAULTS.fetch_add(1, Relaxed);
            handled = true;
            break;
        }
    }
    GRACE.leave(g);
    saved.restore();
    if handled {
        return;
    }
    common::chain(&OLD, sig, info, ctx);
}
