//! How a dump runs ([`DumpOptions`]) and how much CPU its background work may take
//! ([`Priority`]).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::sys;

/// The CPU priority of a dump's work while the target runs: the pre-copy rounds (their
/// harvests and `process_vm_readv` copies, on the thread `ww-dump-rounds`) and the image
/// writer thread (`ww-dump-writer`: checksums and writes). The final round runs on the
/// caller's thread at the caller's priority (raised while the target is stopped when
/// allowed), whatever this says.
///
/// Lowering is always allowed; raising a thread back needs `CAP_SYS_NICE`. So the
/// pre-copy rounds run on a thread of their own, never on the caller's thread.
///
/// Priorities act inside a scheduling group: with autogroups
/// (`/proc/sys/kernel/sched_autogroup_enabled`) a dumper started from another terminal
/// session competes with the target as a group whatever its threads' priority; a dumper in
/// the target's session or cgroup (the bench, a supervisor) yields to it.
///
/// ```
/// use writewatch_process::{DumpOptions, Priority};
/// let opts = DumpOptions { priority: Priority::Idle, ..Default::default() };
/// assert_eq!(DumpOptions::default().priority, Priority::Idle);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Pre-copy rounds at the caller's priority (on the caller's thread), the image writer
    /// 10 nice levels below: the behaviour before priorities were added.
    Normal,
    /// nice 19 for the pre-copy rounds and the image writer: on a busy machine they take
    /// about 1.5 % of a CPU from each runnable nice-0 thread of their group, and whatever
    /// is idle.
    Low,
    /// `SCHED_IDLE` for the pre-copy rounds and the image writer (the default): they run
    /// when a CPU would otherwise idle, and a waking thread of the target preempts them at
    /// once (Redis under SET load kept 0.92 of its untracked throughput with it, 0.87 with
    /// `Low`, in one interleaved run on the reference machine: docs/benchmarks.md). On a saturated machine the rounds (and the dump) may take much
    /// longer; `Low` or `Normal` bound that. Falls back to nice 19 where `SCHED_IDLE` is
    /// refused.
    #[default]
    Idle,
}

/// Nice levels the image writer thread runs below the dump with [`Priority::Normal`].
const WRITER_NICE: i32 = 10;

impl Priority {
    /// Applies the priority to the calling thread, one of the dump's own (`writer`: the
    /// image writer thread). Best effort: a refusal leaves the thread as it was.
    pub(crate) fn apply_here(self, writer: bool) {
        match self {
            Priority::Normal if writer => sys::nice_this_thread(WRITER_NICE),
            Priority::Normal => {}
            Priority::Low => sys::nice_this_thread_to(19),
            Priority::Idle => {
                if !sys::sched_idle_this_thread() {
                    sys::nice_this_thread_to(19);
                }
            }
        }
    }
}

/// How a dump runs.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Pre-copy rounds while the target runs (after the first full copy), before the final
    /// round. 0: the first full copy, then the final round.
    pub rounds: u32,
    /// Stop the pre-copy rounds early once a round harvests at most this many pages.
    pub until_pages: Option<u64>,
    /// Pause between rounds, at least: a round also waits until the image writer has
    /// written the previous rounds (pacing: the rounds never re-read the target faster than
    /// the image is written).
    pub interval: Duration,
    /// Leave the target stopped (`SIGSTOP`) after the final round.
    pub leave_stopped: bool,
    /// Compare the committed image with the target's memory before resuming it.
    pub verify: bool,
    /// Final-round pages are copied into memory up to this many bytes, so the target can
    /// resume before they are written to disk; beyond it they are written while it is stopped.
    /// Also the bound of the pages pre-copy rounds queue for the image writer thread.
    pub final_buffer_bytes: usize,
    /// Set to stop the dump at the next check (SIGINT handlers).
    pub cancel: Option<Arc<AtomicBool>>,
    /// CPU priority of the pre-copy rounds and the image writer thread ([`Priority::Idle`]
    /// by default).
    pub priority: Priority,
}

impl Default for DumpOptions {
    fn default() -> Self {
        Self {
            rounds: 3,
            until_pages: None,
            interval: Duration::from_millis(100),
            leave_stopped: false,
            verify: false,
            final_buffer_bytes: 256 << 20,
            cancel: None,
            priority: Priority::default(),
        }
    }
}

/// Makes `SIGINT` and `SIGTERM` stop a running [`dump`](crate::dump) at its next check (between rounds
/// and between ranges) with [`DumpError::Interrupted`](crate::DumpError::Interrupted) instead of killing the process: the
/// target is resumed and untracked, and the image keeps its previous commit. Without it a
/// `SIGINT` kills the dumper, which the target also survives (the kernel detaches it and
/// closes the userfaultfd), silently.
pub fn catch_sigint() -> Result<(), crate::error::Errno> {
    sys::catch_sigint().map_err(|e| crate::error::Errno::from_raw(e as i32))
}
