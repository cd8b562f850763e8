//! The final round's stop: every thread of the target seized and interrupted.
//!
//! ptrace rather than `SIGSTOP`: if the dumper dies while the target is frozen, the kernel
//! detaches every thread and the target runs on; a `SIGSTOP` would leave it stopped.

use std::collections::BTreeSet;

use crate::error::{DumpError, Errno};
use crate::sys::ptrace;

/// Every thread of a process, seized and stopped. Dropping it resumes them.
#[derive(Debug)]
pub(crate) struct Frozen {
    pid: u32,
    tids: BTreeSet<u32>,
    pending: Vec<i32>,
    leave_stopped: bool,
}

fn tasks(pid: u32) -> Result<BTreeSet<u32>, std::io::Error> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/task"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect())
}

impl Frozen {
    /// Seizes and interrupts every thread, repeating until no new thread appears.
    pub(crate) fn freeze(pid: u32) -> Result<Self, DumpError> {
        let mut f = Frozen {
            pid,
            tids: BTreeSet::new(),
            pending: Vec::new(),
            leave_stopped: false,
        };
        let err = |op, e: nix::errno::Errno| DumpError::Freeze {
            pid,
            op,
            source: Errno::from_raw(e as i32),
        };
        loop {
            let now = tasks(pid).map_err(|_| DumpError::Exited(pid))?;
            let new: Vec<u32> = now.difference(&f.tids).copied().collect();
            if new.is_empty() {
                break;
            }
            // Seize and interrupt every new thread first, then wait for their stops: the
            // threads stop in parallel instead of one scheduling delay after another.
            let mut asked = Vec::with_capacity(new.len());
            for tid in new {
                match ptrace::seize(tid, true) {
                    Ok(()) => {}
                    Err(nix::errno::Errno::ESRCH) => continue, // exited meanwhile
                    // Cloned by a thread seized here: already ours (PTRACE_O_TRACECLONE),
                    // and it starts in an event stop.
                    Err(nix::errno::Errno::EPERM)
                        if crate::attach::tracer_of(tid) == std::process::id() => {}
                    Err(e) => return Err(err("PTRACE_SEIZE", e)),
                }
                f.tids.insert(tid);
                match ptrace::interrupt(tid) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                    Err(e) => return Err(err("PTRACE_INTERRUPT", e)),
                }
                asked.push(tid);
            }
            for tid in asked {
                match ptrace::wait_interrupted(tid, &mut f.pending) {
                    Ok(()) => {}
                    Err(ptrace::InjectFail::Died) => {
                        f.tids.remove(&tid);
                    }
                    Err(ptrace::InjectFail::Ptrace(op, e)) => return Err(err(op, e)),
                    Err(ptrace::InjectFail::Unsupported) => {
                        return Err(err("ptrace", nix::errno::Errno::ENOSYS))
                    }
                }
            }
        }
        if f.tids.is_empty() {
            return Err(DumpError::Exited(pid));
        }
        Ok(f)
    }

    /// Number of stopped threads.
    pub(crate) fn threads(&self) -> usize {
        self.tids.len()
    }

    /// On drop, leave the process in a group stop (`SIGSTOP`) instead of resuming it.
    pub(crate) fn leave_stopped(&mut self) {
        self.leave_stopped = true;
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if self.leave_stopped {
            // Queued while the threads are held; taken as a group stop once detached.
            ptrace::kill(self.pid, libc::SIGSTOP);
        }
        for &tid in &self.tids {
            if let Err(e) = ptrace::detach(tid, None) {
                tracing::debug!(tid, "detach: {e}");
            }
        }
        for &s in &self.pending {
            ptrace::kill(self.pid, s);
        }
    }
}
