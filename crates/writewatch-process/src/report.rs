//! The figures a dump reports (`--json`).

use std::path::PathBuf;

use serde::Serialize;

use crate::verify::VerifyOutcome;

/// One round's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    /// Round number (0: the first full copy).
    pub round: u32,
    /// Whether this is the final (stopped) round.
    pub is_final: bool,
    /// Pages copied.
    pub pages: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Pages that could not be read (recorded as zero).
    pub unreadable_pages: u64,
    /// Ranges that appeared (copied whole) / disappeared this round.
    pub new_ranges: usize,
    /// Ranges dropped (unmapped, moved, replaced).
    pub dropped_ranges: usize,
    /// Time to re-read maps, register and harvest.
    pub harvest_ms: f64,
    /// Time to copy the pages into memory and queue them for the image writer thread
    /// (which writes them while the next round runs), waits for the writer included.
    pub copy_ms: f64,
    /// Of `copy_ms`, the time spent waiting for the writer (memory bound reached).
    pub wait_ms: f64,
    /// Of `copy_ms`, the time spent reading the target's memory (`process_vm_readv`).
    pub read_ms: f64,
    /// Of `read_ms`, the CPU time the reading thread used (the rest it waited for a CPU:
    /// the pre-copy rounds run at a low priority by default). `bytes / read_cpu_ms` is the
    /// copy rate from memory.
    pub read_cpu_ms: f64,
    /// Before the round (not in `ms`): the time waited for the image writer to write the
    /// previous rounds (pacing; the interval runs meanwhile).
    pub drain_ms: f64,
    /// Pages left out of this round's harvest as hot (written again in every round: neither
    /// re-protected nor copied until the last pre-copy round, which walks every page).
    pub hot_pages: u64,
    /// The whole round.
    pub ms: f64,
}

/// A mapping the dump does not track, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// First address.
    pub start: usize,
    /// End.
    pub end: usize,
    /// Path or pseudo-path.
    pub path: String,
    /// Why.
    pub reason: &'static str,
}

/// What a dump did.
#[derive(Debug, Clone, Serialize)]
pub struct DumpReport {
    /// The target.
    pub pid: u32,
    /// The image directory.
    pub dir: PathBuf,
    /// The image generation committed.
    pub generation: u64,
    /// Ranges in the image.
    pub ranges: usize,
    /// Bytes of address space in the image.
    pub range_bytes: u64,
    /// Every round, the final one last.
    pub rounds: Vec<RoundReport>,
    /// Time the target was stopped for the final round until its pages were copied: what it
    /// is stopped for without `verify` / `leave_stopped`.
    pub freeze_ms: f64,
    /// Where the final round's time went.
    pub freeze_times: FreezeTimes,
    /// What the image writer thread did over the whole dump.
    pub writer: WriterReport,
    /// Time the target was actually held stopped by the dump (includes the write when the
    /// final round exceeded the buffer, and the verification).
    pub stopped_ms: f64,
    /// Threads stopped.
    pub threads: usize,
    /// The whole dump.
    pub total_ms: f64,
    /// The verification's result, when asked.
    pub verified: Option<VerifyOutcome>,
    /// Whether the userfaultfd is `UFFD_USER_MODE_ONLY`.
    pub user_mode_only: bool,
    /// Ranges registration refused (copied whole every round instead).
    pub untracked_ranges: usize,
    /// Writable-looking mappings not dumped, and why.
    pub skipped: Vec<Skipped>,
}

/// Where the final round's time went, in milliseconds. `freeze_ms` is `stop_ms + maps_ms +
/// harvest_ms + copy_ms + stopped_write_ms` (plus a few microseconds of bookkeeping).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FreezeTimes {
    /// Seizing and interrupting every thread (`PTRACE_SEIZE` + `PTRACE_INTERRUPT` + the wait
    /// for each thread's stop).
    pub stop_ms: f64,
    /// Re-reading `/proc/PID/maps` and registering new ranges.
    pub maps_ms: f64,
    /// The harvest (`PAGEMAP_SCAN` walks, and the COW set of private file ranges).
    pub harvest_ms: f64,
    /// Copying the final round's pages into memory (`process_vm_readv` included).
    pub copy_ms: f64,
    /// Of `copy_ms`, the time in `process_vm_readv`.
    pub read_ms: f64,
    /// Whether the final round's pages fit `final_buffer_bytes` (copied into memory, then
    /// written after the resume); otherwise they were written while the target was stopped.
    pub buffered: bool,
    /// Writes while the target was stopped (unbuffered final round only).
    pub stopped_write_ms: f64,
    /// Resuming the threads (`PTRACE_DETACH` each).
    pub resume_ms: f64,
    /// After the freeze: until the writer thread had written everything queued (the final
    /// round's pages and any backlog of earlier rounds).
    pub write_ms: f64,
    /// The atomic `IMAGE` commit.
    pub commit_ms: f64,
    /// The `--verify` comparison (target still stopped).
    pub verify_ms: f64,
}

/// What the image writer thread did over a whole dump.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriterReport {
    /// Bytes of pages written into the range stores.
    pub bytes: u64,
    /// Segments committed (one per changed range per round).
    pub segments: u64,
    /// Time pushing pages into segments (checksums and writes), ms.
    pub push_ms: f64,
    /// Time committing segments (the stores' `fdatasync`s), ms.
    pub commit_ms: f64,
}
