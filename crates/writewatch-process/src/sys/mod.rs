//! The only module of `writewatch-process` with `unsafe` code or raw system calls: pidfds,
//! `process_vm_readv`, and ptrace (`ptrace.rs`: seize, interrupt, registers, the injected
//! system call).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

pub(crate) mod ptrace;

/// `pidfd_open(pid, 0)`: a handle on the process that survives pid reuse.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: the syscall takes a pid and flags by value and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0 as libc::c_long) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_getfd(pidfd, target_fd, 0)`: a duplicate of the target's fd `target_fd` in this
/// process (needs ptrace-attach access to the target).
pub(crate) fn pidfd_getfd(pidfd: &OwnedFd, target_fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: the syscall takes two fds and flags by value and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd() as libc::c_long,
            target_fd as libc::c_long,
            0 as libc::c_long,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just installed in our table; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Reads `bufs[i].len()` bytes at remote address `addrs[i]` of process `pid` for each i, in
/// one `process_vm_readv` call (at most 1024 pieces). Returns the bytes read: fewer than
/// asked when a remote page could not be read (unmapped, beyond the end of a file), counted
/// from the start.
pub(crate) fn read_remote(pid: u32, addrs: &[usize], bufs: &mut [&mut [u8]]) -> io::Result<usize> {
    let remote: Vec<RemoteIoVec> = addrs
        .iter()
        .zip(bufs.iter())
        .map(|(&base, b)| RemoteIoVec { base, len: b.len() })
        .collect();
    let mut local: Vec<io::IoSliceMut<'_>> =
        bufs.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
    process_vm_readv(Pid::from_raw(pid as i32), &mut local, &remote).map_err(io::Error::from)
}

/// The calling thread's nice value (Linux nice values are per thread).
fn thread_nice() -> (libc::id_t, i32) {
    // SAFETY: gettid and getpriority take and return integers.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        (tid, libc::getpriority(libc::PRIO_PROCESS, tid))
    }
}

/// Sets the calling thread's nice value; whether it worked.
fn set_thread_nice(tid: libc::id_t, nice: i32) -> bool {
    // SAFETY: setpriority with integer arguments, on the calling thread.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice.clamp(-20, 19)) };
    if r != 0 {
        tracing::debug!("setpriority({nice}): {}", io::Error::last_os_error());
    }
    r == 0
}

/// Lowers the calling thread's scheduling priority by `inc` nice levels. Best effort.
pub(crate) fn nice_this_thread(inc: i32) {
    let (tid, cur) = thread_nice();
    set_thread_nice(tid, cur + inc);
}

/// CPU time the calling thread has used, nanoseconds (`CLOCK_THREAD_CPUTIME_ID`; 0 if the
/// clock is unavailable).
pub(crate) fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the kernel writes during the call only.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The calling thread's id.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid takes nothing and returns an integer.
    unsafe { libc::gettid() }
}

/// Puts the calling thread in `SCHED_IDLE` (it runs only when nothing else of its
/// scheduling group wants the CPU). Whether it worked. An unprivileged thread cannot leave
/// `SCHED_IDLE` again: call it on a thread of the dump's own.
pub(crate) fn sched_idle_this_thread() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for SCHED_IDLE
    // (priority 0), read by the kernel during the call only.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r != 0 {
        tracing::debug!(
            "sched_setscheduler(SCHED_IDLE): {}",
            io::Error::last_os_error()
        );
    }
    r == 0
}

/// Sets the calling thread's nice value to `nice` (only ever lowering it: a higher value
/// than the current one). Best effort.
pub(crate) fn nice_this_thread_to(nice: i32) {
    let (tid, cur) = thread_nice();
    if nice > cur {
        set_thread_nice(tid, nice);
    }
}

/// Best effort: makes thread `tid` of this process an ordinary `SCHED_OTHER` thread at nice
/// `nice` again (needs `CAP_SYS_NICE` when that raises its priority; otherwise nothing
/// changes). Whether it worked.
pub(crate) fn restore_thread(tid: i32, nice: i32) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `tid` is a thread id (a wrong one fails with ESRCH); `param` is read by the
    // kernel during the call only.
    let policy = unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) };
    policy == 0 && set_thread_nice(tid as libc::id_t, nice)
}

/// The calling thread's nice value.
pub(crate) fn this_thread_nice() -> i32 {
    thread_nice().1
}

/// Raises the calling thread's priority by `inc` nice levels while it lives (needs
/// `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows it; otherwise nothing changes); dropping
/// it restores the previous value (always allowed).
pub(crate) struct Boost {
    tid: libc::id_t,
    old: i32,
    raised: bool,
}

impl Boost {
    pub(crate) fn raise(inc: i32) -> Boost {
        let (tid, old) = thread_nice();
        let raised = set_thread_nice(tid, old - inc);
        Boost { tid, old, raised }
    }
}

impl Drop for Boost {
    fn drop(&mut self) {
        if self.raised {
            set_thread_nice(self.tid, self.old);
        }
    }
}

/// Whether a process with this pid exists (`kill(pid, 0)`; `EPERM` means it exists).
pub(crate) fn process_exists(pid: u32) -> bool {
    match nix::sys::signal::kill(Pid::from_raw(pid as i32), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

/// The system's page size.
pub(crate) fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |v| v as usize)
}

/// Makes `cmd`'s child call `PTRACE_TRACEME` before `execve`: the kernel stops it with
/// `SIGTRAP` after the exec, before the new program's first instruction.
pub(crate) fn traceme_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe system call (ptrace(PTRACE_TRACEME)); it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Set by the `SIGINT`/`SIGTERM` handler [`catch_sigint`] installs.
pub(crate) static SIGINT_SEEN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    SIGINT_SEEN.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Installs a `SIGINT` and `SIGTERM` handler that only sets [`SIGINT_SEEN`].
pub(crate) fn catch_sigint() -> Result<(), nix::errno::Errno> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_sigint),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler is async-signal-safe (one relaxed atomic store) and replaces
        // the default action only; no other handler's state is involved.
        unsafe { sigaction(s, &act) }?;
    }
    Ok(())
}
