//! [`InspectError`]: why a process's pages could not be inspected.

use crate::error::Errno;

/// Errors of the page-state inspector ([`Inspector`](super::Inspector)).
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// No process has this pid (or it exited while being inspected).
    #[error("no process with pid {pid} (it does not exist or has exited): pick a live pid, e.g. from `ps`")]
    NoSuchProcess {
        /// The pid asked for.
        pid: u32,
    },
    /// The caller may not read the process's memory map (ptrace-read access is needed).
    #[error(
        "no access to {path} ({errno}): reading another process's page state needs ptrace-read \
         access: run as the same user as pid {pid} (and kernel.yama.ptrace_scope <= 1, the process \
         not marked non-dumpable), or as root / with CAP_SYS_PTRACE"
    )]
    PermissionDenied {
        /// The process.
        pid: u32,
        /// The file that could not be opened or read.
        path: String,
        /// The errno (`EACCES` or `EPERM`).
        errno: Errno,
    },
    /// A range bound that is not page-aligned.
    #[error("the range {what} {value:#x} is not a multiple of the page size ({page_size} bytes): round it to a page boundary")]
    Unaligned {
        /// `"start"` or `"end"`.
        what: &'static str,
        /// The offending address.
        value: usize,
        /// The page size.
        page_size: usize,
    },
    /// An empty or inverted range.
    #[error("the range {start:#x}-{end:#x} is empty: the end must be above the start")]
    EmptyRange {
        /// Start.
        start: usize,
        /// End.
        end: usize,
    },
    /// The range overlaps no mapping of the process.
    #[error("no mapping of process {pid} overlaps {start:#x}-{end:#x}: see /proc/{pid}/maps for its mappings")]
    NotMapped {
        /// The process (this process's own pid when inspecting itself).
        pid: u32,
        /// Start.
        start: usize,
        /// End.
        end: usize,
    },
    /// No mapping of the process maps this path.
    #[error("process {pid} has no mapping of {path}: see /proc/{pid}/maps for its mappings (give the path as printed there)")]
    NoSuchMapping {
        /// The process.
        pid: u32,
        /// The path asked for.
        path: String,
    },
    /// The process has no user address space: a kernel thread, or a zombie (it exited and
    /// its parent has not reaped it yet).
    #[error("process {pid} has no user address space ({why}): only a live user process has pages to inspect")]
    NoAddressSpace {
        /// The process.
        pid: u32,
        /// `"kernel thread"` or `"zombie: exited, not yet reaped by its parent"`.
        why: &'static str,
    },
    /// The address space the inspector opened is gone while the process still exists: it ran
    /// `execve` (or exited) during the inspection. Nothing partial is returned.
    #[error("process {pid} ran execve or exited while it was inspected (the address space that was opened is gone): inspect it again")]
    AddressSpaceGone {
        /// The process.
        pid: u32,
    },
    /// Reading a `/proc` file failed.
    #[error("reading {path} failed")]
    Read {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `PAGEMAP_SCAN` failed on a mapping.
    #[error("PAGEMAP_SCAN of {start:#x}-{end:#x} failed ({errno})")]
    Scan {
        /// Start of the scanned range.
        start: usize,
        /// End.
        end: usize,
        /// The errno.
        errno: Errno,
    },
}

impl InspectError {
    /// The error for a failed open or read of `path` of process `pid`.
    pub(crate) fn io(pid: u32, path: &str, e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => InspectError::NoSuchProcess { pid },
            Some(n @ (libc::EACCES | libc::EPERM)) => InspectError::PermissionDenied {
                pid,
                path: path.to_string(),
                errno: Errno::from_raw(n),
            },
            _ => InspectError::Read {
                path: path.to_string(),
                source: e,
            },
        }
    }
}
