//! # writewatch
//!
//! Track writes to memory with Linux userfaultfd write-protect mode: which pages were written
//! since time T (dirty sets), what they contained at T (fork-less snapshots), and incremental
//! checkpoints on disk built from both.
//!
//! This crate is a facade: the engine is [`writewatch_core`] (re-exported at the top level),
//! the on-disk store is [`checkpoint`] (the `writewatch-checkpoint` crate, documented
//! inline); the glue is [`save_epoch`] (an epoch into a store), [`restore_region`] (a
//! checkpoint into a live region) and [`resume`] (a restart: continue a store from a new
//! process).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::atomic::Ordering;
//! use writewatch::Tracker;
//!
//! let tracker = Tracker::builder().build()?;
//! let region = tracker.map_anonymous(256 * 4096)?;
//! region.as_atomic_u64()[3 * 512].store(42, Ordering::Relaxed); // write page 3
//! let epoch = region.cut()?;
//! assert_eq!(epoch.dirty().iter().collect::<Vec<_>>(), vec![3]);
//! # Ok(()) }
//! ```

mod pipeline;

pub use pipeline::{
    cut_and_save, cut_and_save_epoch, restore_region, resume, save_epoch, RestoreRegionError,
    Resumed, SaveError,
};
/// The on-disk incremental checkpoint store (the `writewatch-checkpoint` crate), documented
/// inline so that links to it work on this crate's page alone.
#[doc(inline)]
pub use writewatch_checkpoint as checkpoint;
pub use writewatch_core::*;
/// Tracking and dumping another, unmodified process (`writewatch dump`): attach, rounds,
/// final freeze. See `writewatch_process`.
pub use writewatch_process as process;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
