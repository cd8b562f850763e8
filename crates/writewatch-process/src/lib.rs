//! # writewatch-process
//!
//! Track another, unmodified process's writes from outside and dump its memory in
//! incremental pre-copy rounds (checkpoint / live migration without soft-dirty bits).
//!
//! - [`attach`]: ptrace-inject a `userfaultfd` into a running process, take it with
//!   `pidfd_getfd`, close the target's copy, restore its registers, detach. The target runs
//!   on; if the tracker dies it runs on untracked.
//! - [`dump`]: register every writable mapping in `WP_ASYNC` mode, copy it once, then in
//!   rounds harvest the written pages with `PAGEMAP_SCAN` (`PM_SCAN_WP_MATCHING`) and copy
//!   them with batched `process_vm_readv` into a process image
//!   ([`writewatch_checkpoint::image`]); a final round with every thread stopped makes the
//!   image the memory at that instant, exactly.
//! - [`spawn_tracked`]: start a program and attach before its first instruction.
//!
//! x86_64 only for now (see `docs/design.md`, "Tracking another process", for aarch64).
//!
//! ```no_run
//! use writewatch_process::{dump, DumpOptions};
//! let report = dump(1234, "/tmp/img".as_ref(), DumpOptions::default(), None)?;
//! println!("froze for {:.1} ms, {} ranges", report.freeze_ms, report.ranges);
//! # Ok::<(), writewatch_process::DumpError>(())
//! ```
#![deny(unsafe_code)]

mod attach;
mod bgwrite;
mod copy;
mod dump;
mod dumper;
mod error;
mod freeze;
mod hot;
mod maps;
mod options;
mod pieces;
mod report;
mod spawn;
mod sys;
mod verify;

pub use attach::{attach, Attached};
pub use dump::{
    dump, dump_attached_process, DumpReport, FreezeTimes, RoundReport, Skipped, WriterReport,
};
pub use error::{AttachError, DumpError, Errno};
pub use maps::{parse_maps, read_maps, Mapping};
pub use options::{catch_sigint, DumpOptions, Priority};
pub use spawn::{spawn_tracked, SpawnError, Spawned};
pub use verify::VerifyOutcome;
