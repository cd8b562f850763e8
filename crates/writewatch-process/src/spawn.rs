//! `writewatch run`: start a program tracked from its first instruction.

use std::ffi::OsString;
use std::process::{Child, Command};

use crate::attach::{attach_stopped, Attached};
use crate::error::AttachError;
use crate::sys::{self, ptrace};

/// A program started under tracking.
#[derive(Debug)]
pub struct Spawned {
    /// The child process (wait for it with [`Child::wait`]).
    pub child: Child,
    /// The tracker's handle on its userfaultfd.
    pub attached: Attached,
}

/// Why [`spawn_tracked`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The program could not be started.
    #[error("starting {program:?}")]
    Start {
        /// The program.
        program: OsString,
        /// The error (not found, not executable, ...).
        #[source]
        source: std::io::Error,
    },
    /// The program did not stop at its first instruction.
    #[error("{program:?} exited before its first instruction (exec failed?)")]
    NoExecStop {
        /// The program.
        program: OsString,
    },
    /// Attaching failed; the child was killed.
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// Starts `program args...` with `PTRACE_TRACEME`: the kernel stops it with `SIGTRAP` right
/// after `execve`, before its first instruction (the dynamic loader's entry). The userfaultfd
/// is injected there and the child is detached (the `SIGTRAP` suppressed). Mappings created
/// later (libraries, heap) are registered by the dump's rounds.
pub fn spawn_tracked(program: &OsString, args: &[OsString]) -> Result<Spawned, SpawnError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    sys::traceme_on_exec(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| SpawnError::Start {
        program: program.clone(),
        source,
    })?;
    let pid = child.id();
    match ptrace::wait(pid) {
        Ok(ptrace::Stop::Signal(s)) if s == libc::SIGTRAP => {}
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SpawnError::NoExecStop {
                program: program.clone(),
            });
        }
    }
    match attach_stopped(pid) {
        Ok(attached) => Ok(Spawned { child, attached }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e.into())
        }
    }
}
