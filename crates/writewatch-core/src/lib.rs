//! # writewatch-core
//!
//! The engine of writewatch: memory ranges registered with Linux userfaultfd in write-protect
//! mode, a fault-service thread that sees every first write to a page, and a dirty-set API that
//! says which pages were written since the last epoch cut.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::atomic::Ordering;
//! use writewatch_core::Tracker;
//!
//! let tracker = Tracker::builder().build()?;
//! let region = tracker.map_anonymous(64 * 4096)?;      // tracked from birth
//! let words = region.as_atomic_u64();
//! words[0].store(1, Ordering::Relaxed);                   // page 0
//! words[10 * 512].store(1, Ordering::Relaxed);            // page 10
//! let epoch = region.cut()?;                              // close epoch 0, re-arm
//! assert_eq!(epoch.dirty().iter().collect::<Vec<_>>(), vec![0, 10]);
//! assert!(region.cut()?.dirty().is_empty());              // nothing written since
//! # Ok(()) }
//! ```
//!
//! See `docs/design.md` in the repository for the page state machine, the event loop and the
//! invariants; [`probe()`] for what the running kernel offers.
#![deny(unsafe_code)]

mod arena;
mod armed;
mod backend;
mod bitmap;
mod builder;
mod command;
mod dirty;
mod epoch;
mod error;
mod fork;
pub mod inspect;
mod inthread;
mod lineage;
mod maps;
mod pagemap;
mod pins;
mod placed;
mod policy;
mod probe;
mod range;
mod region;
pub mod remote;
mod service;
mod shared;
mod snapshot;
mod statics;
mod stats;
mod sys;
mod tracker;
mod typed;
mod uffd;
mod view;

pub use arena::{Arena, ArenaError, Handle, SliceHandle};
pub use backend::{Backend, Features, Purpose};
pub use builder::TrackerBuilder;
pub use dirty::{DirtySet, Runs};
pub use epoch::{CutStats, Epoch, EpochReader};
pub use error::{
    BuildError, CutAndCopyError, CutError, Errno, ForkError, Invalidation, MapError, RegionError,
    SnapshotError, Unavailable,
};
pub use placed::MapAtError;
pub use policy::{PolicyChoice, PolicyReport};
pub use probe::{probe, Access, Feature, Probe};
pub use range::RegionKind;
pub use region::Region;
pub use snapshot::Snapshot;
pub use statics::StaticPages;
pub use stats::{
    EpochStat, Histogram, HistogramSummary, NotEarlier, RegionStats, ThreadFaults, TrackerStats,
};
pub use tracker::Tracker;
pub use typed::{AccessError, AtomicView, TypedReadError};
