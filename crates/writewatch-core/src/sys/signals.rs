//! What the two signal-handler backends share: installing a handler once per process while
//! remembering the previous one, passing foreign signals on to it, and a grace period for
//! handlers in flight.
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Acquire, SeqCst};
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;

/// The signature of an `SA_SIGINFO` handler.
pub(crate) type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Installs `handler` for `sig` once (the first call wins), remembering the previous
/// action in `old`. `block_all` blocks every other signal while the handler runs.
pub(crate) fn install(
    old: &OnceLock<libc::sigaction>,
    sig: libc::c_int,
    handler: Handler,
    flags: libc::c_int,
    block_all: bool,
) -> Result<(), Errno> {
    let mut err = Ok(());
    old.get_or_init(|| {
        // SAFETY: zeroed sigaction structs are valid; we fill the fields we use.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | flags;
        // SAFETY: sa_mask is a valid sigset_t owned by `sa`.
        unsafe {
            if block_all {
                libc::sigfillset(&mut sa.sa_mask);
            } else {
                libc::sigemptyset(&mut sa.sa_mask);
            }
        };
        // SAFETY: as above.
        let mut prev: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live sigaction structs on our stack.
        if unsafe { libc::sigaction(sig, &sa, &mut prev) } != 0 {
            err = Err(Errno::last());
        }
        prev
    });
    err
}

/// Passes a signal that is not ours to the handler that was installed before ours.
pub(crate) fn chain(
    old: &OnceLock<libc::sigaction>,
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    let Some(old) = old.get() else { return };
    match old.sa_sigaction {
        libc::SIG_DFL | libc::SIG_IGN => {
            // Restore the default action; returning re-executes the faulting access,
            // which now terminates the process as it would have without us.
            // SAFETY: zeroed sigaction = SIG_DFL with an empty mask.
            let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
            dfl.sa_sigaction = libc::SIG_DFL;
            // SAFETY: valid pointer to a sigaction on our stack.
            unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) };
        }
        f if old.sa_flags & libc::SA_SIGINFO != 0 => {
            // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this
            // signature; we pass through the kernel's arguments unchanged.
            let f: Handler = unsafe { std::mem::transmute(f) };
            f(sig, info, ctx);
        }
        f => {
            // SAFETY: a plain (non-SA_SIGINFO) handler takes only the signal number.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(f) };
            f(sig);
        }
    }
}

/// In-flight accounting for signal handlers: two counters selected by a generation
/// number. A handler counts itself in `inflight[gen & 1]` for its critical section;
/// [`Grace::synchronize`] flips the generation twice and waits for each old counter to
/// drain, so every handler that was in flight when it started has left.
pub(crate) struct Grace {
    gen: AtomicUsize,
    inflight: [AtomicUsize; 2],
    sync: Mutex<()>,
}

impl Grace {
    pub(crate) const fn new() -> Self {
        Self {
            gen: AtomicUsize::new(0),
            inflight: [AtomicUsize::new(0), AtomicUsize::new(0)],
            sync: Mutex::new(()),
        }
    }

    /// Handler side: enters the in-flight section; pass the token to [`Grace::leave`].
    pub(crate) fn enter(&self) -> usize {
        let g = self.gen.load(SeqCst);
        self.inflight[g & 1].fetch_add(1, SeqCst);
        g
    }

    pub(crate) fn leave(&self, g: usize) {
        self.inflight[g & 1].fetch_sub(1, SeqCst);
    }

    /// Waits until every handler in flight when this call started has left.
    pub(crate) fn synchronize(&self) {
        // One synchroniser at a time: two interleaved ones could each see only odd (or
        // only even) generations and skip the counter a handler is in.
        let _g = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..2 {
            let g = self.gen.fetch_add(1, SeqCst);
            let mut spins = 0u32;
            while self.inflight[g & 1].load(SeqCst) != 0 {
                spins += 1;
                if spins < 128 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// The thread's `errno`, saved on entry to a handler and put back by [`SavedErrno::restore`]
/// before the handler returns or chains, so the interrupted code never sees our system calls'
/// errno.
pub(crate) struct SavedErrno {
    ptr: *mut libc::c_int,
    value: libc::c_int,
}

impl SavedErrno {
    pub(crate) fn save() -> Self {
        // SAFETY: errno is thread-local; `__errno_location` returns this thread's, valid for
        // the thread's life.
        let ptr = unsafe { libc::__errno_location() };
        // SAFETY: as above.
        let value = unsafe { *ptr };
        Self { ptr, value }
    }

    pub(crate) fn restore(self) {
        // SAFETY: restoring the saved errno through this thread's errno pointer.
        unsafe { *self.ptr = self.value };
    }
}

/// The faulting address and `si_code` of a signal delivered to an `SA_SIGINFO` handler.
pub(crate) fn fault_of(info: *mut libc::siginfo_t) -> (usize, libc::c_int) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    unsafe { ((*info).si_addr() as usize, (*info).si_code) }
}

/// Whether `addr` lies in a published slot range `[start, end)` (`start == 0`: unpublished).
pub(crate) fn slot_contains(start: &AtomicUsize, end: &AtomicUsize, addr: usize) -> bool {
    let start = start.load(Acquire);
    start != 0 && addr >= start && addr < end.load(Acquire)
}

/// The index of a free slot among the `n` in use (`is_free`), or `n` when there is room for
/// one more; `None` when all `max` are taken. Callers hold their slot table's lock.
pub(crate) fn free_slot(n: usize, max: usize, is_free: impl Fn(usize) -> bool) -> Option<usize> {
    (0..n)
        .find(|&i| is_free(i))
        .or_else(|| (n < max).then_some(n))
}
