//! Attaching: a userfaultfd injected into a running, unmodified process.

use std::os::fd::OwnedFd;

use writewatch_core::remote::{RemotePagemap, RemoteUffd};

use crate::error::{AttachError, Errno};
use crate::maps::read_maps;
use crate::sys::{self, ptrace};

/// `UFFD_USER_MODE_ONLY`: the userfaultfd handles user-mode faults only (what an
/// unprivileged process may create when `vm.unprivileged_userfaultfd=0`).
const UFFD_USER_MODE_ONLY: u64 = 1;

/// A process whose userfaultfd this tracker holds. Dropping it closes the userfaultfd: the
/// kernel unregisters every range and the process runs on untracked.
#[derive(Debug)]
pub struct Attached {
    pid: u32,
    pidfd: OwnedFd,
    uffd: RemoteUffd,
    pagemap: RemotePagemap,
    /// `/proc/PID/pagemap` opened while the thread was held: bound to the address space the
    /// userfaultfd acts on. Once that address space is gone (the target called `execve`, or
    /// exited) reading it fails or returns nothing.
    mm_probe: std::fs::File,
    user_mode_only: bool,
}

impl Attached {
    /// The target's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The target's userfaultfd (held here; the target's own copy was closed).
    pub fn uffd(&self) -> &RemoteUffd {
        &self.uffd
    }

    /// Whether the address space tracked since the attach is still the target's (no
    /// `execve` since; `false` too once the target has exited).
    pub fn same_address_space(&self) -> bool {
        use std::os::unix::fs::FileExt;
        let mut entry = [0u8; 8];
        // Any address's entry exists while the mm lives (zeros for unmapped addresses).
        matches!(self.mm_probe.read_at(&mut entry, 0), Ok(8))
    }

    /// The target's `/proc/PID/pagemap`.
    pub fn pagemap(&self) -> &RemotePagemap {
        &self.pagemap
    }

    /// Whether the userfaultfd had to be created with `UFFD_USER_MODE_ONLY` (the target
    /// lacked the privilege for a full one). Writes are tracked the same way.
    pub fn user_mode_only(&self) -> bool {
        self.user_mode_only
    }

    /// Whether the target still runs (its pidfd is not readable yet).
    pub fn alive(&self) -> bool {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            self.pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        !matches!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
            Ok(1)
        )
    }
}

/// The tracer pid of a process (`TracerPid:` in `/proc/PID/status`), 0 when untraced.
pub(crate) fn tracer_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

/// Finds a `syscall` instruction in the target's `[vdso]` (read with `process_vm_readv`).
fn find_syscall_insn(pid: u32) -> Result<usize, AttachError> {
    let maps = read_maps(pid).map_err(|source| AttachError::Proc {
        pid,
        what: "maps",
        source,
    })?;
    let vdso = maps
        .iter()
        .find(|m| m.path == "[vdso]")
        .ok_or(AttachError::NoSyscallInstruction(pid))?;
    let mut buf = vec![0u8; vdso.end - vdso.start];
    let n = sys::read_remote(pid, &[vdso.start], &mut [&mut buf[..]]).unwrap_or_else(|e| {
        tracing::warn!(pid, "reading the target's [vdso]: {e}");
        0
    });
    let insn = ptrace::SYSCALL_INSN;
    if insn.is_empty() {
        return Err(AttachError::Unsupported);
    }
    buf[..n]
        .windows(insn.len())
        .position(|w| w == insn)
        .map(|off| vdso.start + off)
        .ok_or(AttachError::NoSyscallInstruction(pid))
}

/// Seizes `tid` and stops it, mapping failures to typed errors.
fn seize_stopped(pid: u32, pending: &mut Vec<i32>) -> Result<(), AttachError> {
    if let Err(e) = ptrace::seize(pid, false) {
        return Err(match e {
            nix::errno::Errno::ESRCH => AttachError::NoSuchProcess(pid),
            nix::errno::Errno::EPERM => match tracer_of(pid) {
                0 => AttachError::PermissionDenied {
                    pid,
                    source: Errno::from_raw(e as i32),
                },
                tracer => AttachError::AlreadyTraced { pid, tracer },
            },
            e => AttachError::Sys {
                pid,
                op: "PTRACE_SEIZE",
                source: Errno::from_raw(e as i32),
            },
        });
    }
    let stopped = ptrace::interrupt(pid)
        .map_err(|e| inject_err(pid, ptrace::InjectFail::Ptrace("PTRACE_INTERRUPT", e)))
        .and_then(|()| ptrace::wait_interrupted(pid, pending).map_err(|e| inject_err(pid, e)));
    if let Err(e) = stopped {
        let _ = ptrace::detach(pid, None);
        return Err(e);
    }
    Ok(())
}

fn inject_err(pid: u32, e: ptrace::InjectFail) -> AttachError {
    match e {
        ptrace::InjectFail::Ptrace(op, e) => AttachError::Sys {
            pid,
            op,
            source: Errno::from_raw(e as i32),
        },
        ptrace::InjectFail::Died => AttachError::Exited(pid),
        ptrace::InjectFail::Unsupported => AttachError::Unsupported,
    }
}

/// Puts the saved registers back, detaches, and re-sends signals that arrived meanwhile.
struct Borrowed {
    pid: u32,
    saved: Option<ptrace::Regs>,
    pending: Vec<i32>,
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            if let Err(e) = ptrace::setregs(self.pid, saved) {
                tracing::warn!(pid = self.pid, "restoring registers: {e}");
            }
        }
        let _ = ptrace::detach(self.pid, None);
        for &s in &self.pending {
            ptrace::kill(self.pid, s);
        }
    }
}

/// Gets a userfaultfd into the running process `pid` and returns this tracker's handle on it.
///
/// 1. `PTRACE_SEIZE` + `PTRACE_INTERRUPT` the main thread (other threads keep running); save
///    its registers.
/// 2. Run `userfaultfd(O_CLOEXEC | O_NONBLOCK)` in it at a `syscall` instruction of its vDSO
///    (no code is written); on `EPERM` again with `UFFD_USER_MODE_ONLY`.
/// 3. `pidfd_getfd` the new fd; run `close(fd)` in the target the same way.
/// 4. Restore the registers exactly, detach, re-send any signal that arrived meanwhile.
/// 5. Handshake `WP_ASYNC | WP_UNPOPULATED` and open `/proc/PID/pagemap`.
///
/// If this process dies during steps 1-4 the kernel detaches the thread; after step 4 the
/// target holds no trace of the attach but the userfaultfd this handle owns.
pub fn attach(pid: u32) -> Result<Attached, AttachError> {
    if pid == 0 || !sys::process_exists(pid) {
        return Err(AttachError::NoSuchProcess(pid));
    }
    let pidfd = sys::pidfd_open(pid).map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH) => AttachError::NoSuchProcess(pid),
        _ => AttachError::Sys {
            pid,
            op: "pidfd_open",
            source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        },
    })?;
    // Seize first, then read the maps, the pagemap and the vDSO: a thread stops only on its
    // way back to user mode, so a target caught inside `execve` (a parent's `spawn` returns
    // once the new mm is installed, before the kernel maps the vDSO) is seen after the exec
    // completed, never half-built (a clean-clone CI run hit that window under load).
    let mut pending = Vec::new();
    seize_stopped(pid, &mut pending)?;
    let prepared = open_pagemap(pid).and_then(|pagemap| {
        if !pagemap.scan_available() {
            return Err(AttachError::NoPagemapScan);
        }
        Ok((pagemap, find_syscall_insn(pid)?))
    });
    match prepared {
        Ok((pagemap, insn)) => inject(pid, pidfd, pagemap, insn, pending),
        Err(e) => {
            drop(Borrowed {
                pid,
                saved: None,
                pending,
            });
            Err(e)
        }
    }
}

fn open_pagemap(pid: u32) -> Result<RemotePagemap, AttachError> {
    RemotePagemap::open(pid).map_err(|source| AttachError::Proc {
        pid,
        what: "pagemap",
        source,
    })
}

/// Steps 2-5 of [`attach`] on a thread this process already holds in a ptrace stop.
pub(crate) fn attach_stopped(pid: u32) -> Result<Attached, AttachError> {
    if let Err(e) = ptrace::set_sysgood(pid) {
        let _ = ptrace::detach(pid, None);
        return Err(AttachError::Sys {
            pid,
            op: "PTRACE_SETOPTIONS",
            source: Errno::from_raw(e as i32),
        });
    }
    let pidfd = sys::pidfd_open(pid).map_err(|e| AttachError::Sys {
        pid,
        op: "pidfd_open",
        source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    let prepared = open_pagemap(pid).and_then(|p| Ok((p, find_syscall_insn(pid)?)));
    let (pagemap, insn) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = ptrace::detach(pid, None);
            return Err(e);
        }
    };
    inject(pid, pidfd, pagemap, insn, Vec::new())
}

fn inject(
    pid: u32,
    pidfd: OwnedFd,
    pagemap: RemotePagemap,
    insn: usize,
    pending: Vec<i32>,
) -> Result<Attached, AttachError> {
    let mut b = Borrowed {
        pid,
        saved: None,
        pending,
    };
    let saved = ptrace::getregs(pid).map_err(|e| AttachError::Sys {
        pid,
        op: "PTRACE_GETREGS",
        source: Errno::from_raw(e as i32),
    })?;
    b.saved = Some(saved);
    // Opened while the thread is held, like the userfaultfd below: the same address space.
    let mm_probe = std::fs::File::open(format!("/proc/{pid}/pagemap")).map_err(|source| {
        AttachError::Proc {
            pid,
            what: "pagemap",
            source,
        }
    })?;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let mut user_mode_only = false;
    let mut fd = ptrace::remote_syscall(
        pid,
        insn,
        &saved,
        libc::SYS_userfaultfd,
        [flags, 0, 0, 0, 0, 0],
        &mut b.pending,
    )
    .map_err(|e| inject_err(pid, e))?;
    if fd == -i64::from(libc::EPERM) {
        user_mode_only = true;
        fd = ptrace::remote_syscall(
            pid,
            insn,
            &saved,
            libc::SYS_userfaultfd,
            [flags | UFFD_USER_MODE_ONLY, 0, 0, 0, 0, 0],
            &mut b.pending,
        )
        .map_err(|e| inject_err(pid, e))?;
    }
    if fd < 0 {
        return Err(AttachError::Userfaultfd {
            pid,
            errno: Errno::from_raw(-fd as i32),
        });
    }
    let ours = sys::pidfd_getfd(&pidfd, fd as i32);
    let closed = ptrace::remote_syscall(
        pid,
        insn,
        &saved,
        libc::SYS_close,
        [fd as u64, 0, 0, 0, 0, 0],
        &mut b.pending,
    );
    drop(b); // registers restored, detached
    if let Ok(r) = closed {
        if r != 0 {
            tracing::warn!(
                pid,
                fd,
                "closing the injected fd in the target returned {r}"
            );
        }
    }
    let ours = ours.map_err(|e| AttachError::Sys {
        pid,
        op: "pidfd_getfd",
        source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    closed.map_err(|e| inject_err(pid, e))?;
    let uffd = RemoteUffd::from_fd(ours).map_err(|source| AttachError::Uffd { pid, source })?;
    tracing::debug!(pid, user_mode_only, "attached");
    Ok(Attached {
        pid,
        pidfd,
        uffd,
        pagemap,
        mm_probe,
        user_mode_only,
    })
}
