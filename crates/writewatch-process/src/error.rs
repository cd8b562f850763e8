//! Error types, one per operation.

use std::path::PathBuf;

pub use writewatch_core::Errno;

/// Why [`attach`](crate::attach) failed. The target is left running as it was (registers and
/// code restored, detached) unless the error says otherwise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// No process with this pid.
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    /// ptrace refused.
    #[error(
        "not allowed to ptrace pid {pid}: run as the target's user with \
         kernel.yama.ptrace_scope=0, or as root (CAP_SYS_PTRACE)"
    )]
    PermissionDenied {
        /// The target.
        pid: u32,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Another tracer (a debugger, another dump) holds the target.
    #[error("pid {pid} is already traced by pid {tracer}: stop that tracer (debugger, another dump) first")]
    AlreadyTraced {
        /// The target.
        pid: u32,
        /// The tracer's pid.
        tracer: u32,
    },
    /// The target's memory is already tracked by a userfaultfd (another dump, or the program
    /// itself uses userfaultfd write-protection on it).
    #[error(
        "pid {pid}: mapping {start:#x}-{end:#x} is already registered with another userfaultfd \
         (another `writewatch dump` is running, or the program uses userfaultfd itself)"
    )]
    AlreadyTracked {
        /// The target.
        pid: u32,
        /// The mapping.
        start: usize,
        /// Its end.
        end: usize,
    },
    /// The target could not create a userfaultfd.
    #[error(
        "pid {pid}: the injected userfaultfd() failed ({errno}): a seccomp filter may forbid it, \
         or userfaultfd is disabled (vm.unprivileged_userfaultfd, CONFIG_USERFAULTFD)"
    )]
    Userfaultfd {
        /// The target.
        pid: u32,
        /// The errno the call returned in the target.
        errno: Errno,
    },
    /// No `syscall` instruction was found to borrow.
    #[error("pid {0}: no [vdso] with a system-call instruction to borrow (statically linked without vDSO?)")]
    NoSyscallInstruction(u32),
    /// The architecture is not supported.
    #[error(
        "injecting system calls is implemented on x86_64 only (see docs/design.md for aarch64)"
    )]
    Unsupported,
    /// The target exited during the attach.
    #[error("pid {0} exited during the attach")]
    Exited(u32),
    /// A ptrace or system call failed.
    #[error("pid {pid}: {op} failed")]
    Sys {
        /// The target.
        pid: u32,
        /// The operation.
        op: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// The userfaultfd handshake failed (kernel too old).
    #[error("pid {pid}: userfaultfd set-up")]
    Uffd {
        /// The target.
        pid: u32,
        /// The reason.
        #[source]
        source: writewatch_core::remote::RemoteUffdError,
    },
    /// The kernel lacks `PAGEMAP_SCAN` (Linux 6.7).
    #[error("the kernel lacks the PAGEMAP_SCAN ioctl (Linux 6.7 or later is needed)")]
    NoPagemapScan,
    /// `/proc/PID/...` could not be read.
    #[error("pid {pid}: reading {what}")]
    Proc {
        /// The target.
        pid: u32,
        /// The file.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a dump failed. The target is resumed (never left stopped unless
/// `leave_stopped` was asked), untracked, and the image directory's previous commit is intact.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DumpError {
    /// Attaching failed.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// The target exited during the dump.
    #[error("pid {0} exited during the dump; the image directory keeps its previous commit")]
    Exited(u32),
    /// Writing the image failed (ENOSPC, EIO, ...).
    #[error("writing the image in {} (it keeps its previous commit)", dir.display())]
    Image {
        /// The image directory.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: writewatch_checkpoint::image::ImageError,
    },
    /// Writing a range's store failed (ENOSPC, EIO, ...); the target runs on untracked.
    #[error("writing range {start:#x}-{end:#x} to its store (the image directory keeps its previous commit; free space or choose another directory)")]
    Store {
        /// The range.
        start: usize,
        /// Its end.
        end: usize,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A harvest failed.
    #[error("pid {pid}: PAGEMAP_SCAN of {start:#x}-{end:#x}")]
    Scan {
        /// The target.
        pid: u32,
        /// The range.
        start: usize,
        /// Its end.
        end: usize,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Stopping the target for the final round failed.
    #[error("pid {pid}: stopping the target for the final round ({op})")]
    Freeze {
        /// The target.
        pid: u32,
        /// The operation.
        op: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// The target called `execve` during the dump: the tracked address space is gone and the
    /// process runs a new program (untracked: nothing of the dump is left in it).
    #[error("pid {0} called execve during the dump: it now runs a new program, untracked; the image directory keeps its previous commit (dump again to image the new program)")]
    Execed(u32),
    /// The dump was interrupted (SIGINT / the cancel flag).
    #[error("dump interrupted; the image directory keeps its previous commit")]
    Interrupted,
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
}
