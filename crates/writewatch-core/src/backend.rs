//! The vocabulary of backends: which mechanism tracks writes ([`Backend`]), what `Auto`
//! optimises for ([`Purpose`]) and what was negotiated with the kernel ([`Features`]).

use crate::probe::Feature;

/// How writes are tracked. Chosen at build time; the same [`Region`](crate::Region) / `cut()` /
/// [`DirtySet`](crate::DirtySet) API on all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Backend {
    /// userfaultfd write-protect with a fault-service thread: every first write round-trips
    /// through the service thread (~10-15 us), which allows copy-before-write: consistent live
    /// cuts whose content can be read while writers continue, snapshots, rollback.
    SyncUffd,
    /// userfaultfd `WP_ASYNC`: the kernel resolves write faults itself (~1 us); a cut is one
    /// `PAGEMAP_SCAN` walk that harvests and re-arms. No copy-before-write: capturing content
    /// needs the caller's writers quiesced ([`Region::cut_and_copy`](crate::Region::cut_and_copy)). Linux >= 6.7.
    AsyncUffd,
    /// `mprotect(PROT_READ)` + a SIGSEGV handler: works without userfaultfd. Splits VMAs per
    /// written page; system calls that write tracked memory fail with `EFAULT`; `madvise`
    /// zaps are not observed. No copy-before-write.
    Mprotect,
    /// Probe at build time: for [`Purpose::DirtyTracking`], async > sync > mprotect; for
    /// [`Purpose::Snapshots`] (the default), sync > mprotect.
    Auto,
}

impl Backend {
    /// A short name (`sync`, `async`, `mprotect`, `auto`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::SyncUffd => "sync",
            Backend::AsyncUffd => "async",
            Backend::Mprotect => "mprotect",
            Backend::Auto => "auto",
        }
    }

    /// Whether the backend can preserve page content before a write (epochs readable while
    /// writers run, snapshots, rollback).
    pub fn copies_before_write(self) -> bool {
        self == Backend::SyncUffd
    }
}

/// What `Backend::Auto` optimises for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Purpose {
    /// Dirty sets only: the cheapest tracking available.
    DirtyTracking,
    /// Content at a cut while writers run: needs copy-before-write (the sync backend).
    #[default]
    Snapshots,
}

/// Features negotiated with the kernel for one tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Features {
    /// Raw `UFFD_FEATURE_*` bits granted.
    pub bits: u64,
    /// Whether the userfaultfd was opened with `UFFD_USER_MODE_ONLY`: if so, a system call that
    /// writes tracked memory (e.g. `read(2)` into a tracked buffer) fails with `EFAULT`.
    pub user_mode_only: bool,
}

impl Features {
    /// Whether `f` was negotiated.
    pub fn has(&self, f: Feature) -> bool {
        match f {
            Feature::KernelModeFaults => !self.user_mode_only,
            Feature::PagemapScan => false,
            other => other.bit().is_some_and(|b| self.bits & b != 0),
        }
    }
}
