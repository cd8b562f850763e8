//! ptrace: seizing threads, stopping them, and running one system call in a stopped thread.
//!
//! The injected call borrows a stopped thread: its registers are saved, the instruction
//! pointer is set to an existing `syscall` instruction of the target (found in its vDSO, so
//! **no code is written** into the target and other threads, which keep running, can never
//! execute a half-patched instruction), the call number and arguments are loaded, and the
//! thread is resumed with `PTRACE_SYSCALL` up to the system-call exit stop; the result is
//! read and the saved registers are put back. `orig_rax = -1` keeps the kernel's
//! system-call restart logic (the thread may have been stopped inside an interrupted call)
//! away from the borrowed registers; restoring the saved registers restores it for the
//! original call.
//!
//! x86_64 only. On aarch64: the instruction is `svc #0` (`d4000001`), the number goes in
//! `x8`, arguments in `x0..x5`, the result comes back in `x0` (which is also the first
//! argument, so it must be saved), registers are read with `PTRACE_GETREGSET(NT_PRSTATUS)`,
//! and "no restart" is set with `PTRACE_SETREGSET(NT_ARM_SYSTEM_CALL, -1)`.

use nix::errno::Errno;
use nix::sys::ptrace::{self, Options};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How an injected call can fail.
#[derive(Debug)]
pub(crate) enum InjectFail {
    /// A ptrace or wait call failed.
    Ptrace(&'static str, Errno),
    /// The thread (or its process) exited while borrowed.
    Died,
    /// This architecture is not supported yet.
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    Unsupported,
}

fn pid(tid: u32) -> Pid {
    Pid::from_raw(tid as i32)
}

/// `PTRACE_SEIZE` with `TRACESYSGOOD` (and `TRACECLONE` when freezing, so new threads are
/// seized too).
pub(crate) fn seize(tid: u32, trace_clone: bool) -> Result<(), Errno> {
    let mut o = Options::PTRACE_O_TRACESYSGOOD;
    if trace_clone {
        o |= Options::PTRACE_O_TRACECLONE;
    }
    ptrace::seize(pid(tid), o)
}

/// `PTRACE_SETOPTIONS(TRACESYSGOOD)` on a thread traced with `PTRACE_TRACEME`, so system-call
/// stops are told apart from `SIGTRAP`s.
pub(crate) fn set_sysgood(tid: u32) -> Result<(), Errno> {
    ptrace::setoptions(pid(tid), Options::PTRACE_O_TRACESYSGOOD)
}

/// `PTRACE_INTERRUPT`.
pub(crate) fn interrupt(tid: u32) -> Result<(), Errno> {
    ptrace::interrupt(pid(tid))
}

/// `PTRACE_DETACH`, delivering `sig` (e.g. `SIGSTOP` to leave the process stopped).
pub(crate) fn detach(tid: u32, sig: Option<i32>) -> Result<(), Errno> {
    let sig = sig.and_then(|s| Signal::try_from(s).ok());
    ptrace::detach(pid(tid), sig)
}

/// Sends `sig` to the process (re-sending a signal suppressed while a thread was borrowed).
pub(crate) fn kill(pid_: u32, sig: i32) {
    if let Ok(s) = Signal::try_from(sig) {
        let _ = nix::sys::signal::kill(pid(pid_), s);
    }
}

/// What a wait on a seized thread returned.
#[derive(Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)]
pub(crate) enum Stop {
    /// An interrupt / group-stop (`PTRACE_EVENT_STOP`).
    EventStop,
    /// A system-call entry or exit stop.
    Syscall,
    /// A signal-delivery stop with this signal (suppressed by the next resume).
    Signal(i32),
    /// A new thread was cloned (`PTRACE_EVENT_CLONE`), or another event.
    OtherEvent(i32),
    /// The thread is gone.
    Gone,
}

/// Waits for the next stop of `tid`.
pub(crate) fn wait(tid: u32) -> Result<Stop, Errno> {
    match waitpid(pid(tid), Some(WaitPidFlag::__WALL)) {
        Ok(WaitStatus::PtraceEvent(_, _, ev)) if ev == libc::PTRACE_EVENT_STOP => {
            Ok(Stop::EventStop)
        }
        Ok(WaitStatus::PtraceEvent(_, _, ev)) => Ok(Stop::OtherEvent(ev)),
        Ok(WaitStatus::PtraceSyscall(_)) => Ok(Stop::Syscall),
        Ok(WaitStatus::Stopped(_, sig)) => Ok(Stop::Signal(sig as i32)),
        Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => Ok(Stop::Gone),
        Ok(_) => Ok(Stop::OtherEvent(0)),
        Err(Errno::ECHILD | Errno::ESRCH) => Ok(Stop::Gone),
        Err(e) => Err(e),
    }
}

/// Resumes a thread in a signal-delivery or event stop, suppressing the signal.
pub(crate) fn resume(tid: u32) -> Result<(), Errno> {
    ptrace::cont(pid(tid), None)
}

/// Waits until `tid` is in an interrupt stop (after [`interrupt`]): signal-delivery stops on
/// the way are suppressed and their signals pushed to `pending` (to be re-sent after the
/// detach).
pub(crate) fn wait_interrupted(tid: u32, pending: &mut Vec<i32>) -> Result<(), InjectFail> {
    loop {
        match wait(tid).map_err(|e| InjectFail::Ptrace("waitpid", e))? {
            Stop::EventStop => return Ok(()),
            Stop::Gone => return Err(InjectFail::Died),
            Stop::Signal(s) => {
                pending.push(s);
                resume(tid).map_err(|e| InjectFail::Ptrace("PTRACE_CONT", e))?;
            }
            Stop::Syscall | Stop::OtherEvent(_) => {
                resume(tid).map_err(|e| InjectFail::Ptrace("PTRACE_CONT", e))?;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod arch {
    use super::*;

    /// The saved general registers of a stopped thread.
    #[derive(Clone, Copy)]
    pub(crate) struct Regs(pub(super) libc::user_regs_struct);

    impl std::fmt::Debug for Regs {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "Regs {{ rip: {:#x}, rsp: {:#x} }}",
                self.0.rip, self.0.rsp
            )
        }
    }

    /// The `syscall` instruction.
    pub(crate) const SYSCALL_INSN: &[u8] = &[0x0f, 0x05];

    pub(crate) fn getregs(tid: u32) -> Result<Regs, Errno> {
        ptrace::getregs(pid(tid)).map(Regs)
    }

    pub(crate) fn setregs(tid: u32, r: &Regs) -> Result<(), Errno> {
        ptrace::setregs(pid(tid), r.0)
    }

    /// Runs system call `nr(args)` in the stopped thread `tid` at the `syscall` instruction
    /// `insn`, starting from the registers `base`; returns the raw result (`-errno` on
    /// failure). The thread's registers are left as the call left them: the caller restores.
    pub(crate) fn remote_syscall(
        tid: u32,
        insn: usize,
        base: &Regs,
        nr: i64,
        args: [u64; 6],
        pending: &mut Vec<i32>,
    ) -> Result<i64, InjectFail> {
        let mut r = base.0;
        r.rip = insn as u64;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        ptrace::setregs(pid(tid), r).map_err(|e| InjectFail::Ptrace("PTRACE_SETREGS", e))?;
        // Entry stop, then exit stop.
        for _ in 0..2 {
            ptrace::syscall(pid(tid), None).map_err(|e| InjectFail::Ptrace("PTRACE_SYSCALL", e))?;
            loop {
                match wait(tid).map_err(|e| InjectFail::Ptrace("waitpid", e))? {
                    Stop::Syscall => break,
                    Stop::Gone => return Err(InjectFail::Died),
                    Stop::Signal(s) => {
                        pending.push(s);
                        ptrace::syscall(pid(tid), None)
                            .map_err(|e| InjectFail::Ptrace("PTRACE_SYSCALL", e))?;
                    }
                    Stop::EventStop | Stop::OtherEvent(_) => {
                        ptrace::syscall(pid(tid), None)
                            .map_err(|e| InjectFail::Ptrace("PTRACE_SYSCALL", e))?;
                    }
                }
            }
        }
        let out = ptrace::getregs(pid(tid)).map_err(|e| InjectFail::Ptrace("PTRACE_GETREGS", e))?;
        Ok(out.rax as i64)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod arch {
    use super::*;

    /// The saved general registers of a stopped thread (unsupported architecture).
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Regs(());

    /// No instruction is searched for on unsupported architectures.
    pub(crate) const SYSCALL_INSN: &[u8] = &[];

    pub(crate) fn getregs(_tid: u32) -> Result<Regs, Errno> {
        Err(Errno::ENOSYS)
    }

    pub(crate) fn setregs(_tid: u32, _r: &Regs) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }

    pub(crate) fn remote_syscall(
        _tid: u32,
        _insn: usize,
        _base: &Regs,
        _nr: i64,
        _args: [u64; 6],
        _pending: &mut Vec<i32>,
    ) -> Result<i64, InjectFail> {
        Err(InjectFail::Unsupported)
    }
}

pub(crate) use arch::{getregs, remote_syscall, setregs, Regs, SYSCALL_INSN};
