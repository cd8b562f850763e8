//! Test support shared by the writewatch test suites, benches, examples and the cargo-fuzz
//! target (not published): deterministic PRNGs ([`rng`]), watchdogs that turn hangs into
//! failures ([`mod@watchdog`]), owned mappings ([`mmap`]), a fork helper ([`fork`]), a
//! `/proc/PID/smaps` reader and memory figures of ranges ([`smaps`]) and,
//! with the `parsers` feature, the checkpoint parser harness and its seed inputs
//! (module `parsers`); with the `checkpoint` feature, small store chains (module `chain`);
//! with the `s3` feature, a local S3 server for object-storage tests (module `s3server`);
//! with the `azurite` feature, a local Azure Blob server (module `azurite`); with the
//! `checkpoint` feature, the two-writers race on object storage (module `race`).
//!
//! All `unsafe` code lives in the private `sys` module; every public item is safe and sound
//! whatever the caller does.

#[cfg(feature = "azurite")]
pub mod azurite;
#[cfg(feature = "checkpoint")]
pub mod chain;
pub mod exit;
pub mod fork;
pub mod mmap;
#[cfg(feature = "parsers")]
pub mod parsers;
#[cfg(feature = "checkpoint")]
pub mod race;
pub mod rng;
#[cfg(feature = "s3")]
pub mod s3server;
pub mod smaps;
#[cfg(any(feature = "s3", feature = "azurite"))]
mod spawn;
mod sys;
pub mod watchdog;

pub use exit::exit_code;
pub use fork::{fork_and_hold, fork_and_write, run_child, timed_fork_exit, HeldChild};
pub use mmap::Mmap;
pub use rng::{Rng, SplitMix64, XorShift64};
pub use smaps::{resident_of, smaps_of, smaps_of_ranges, Smaps};
pub use watchdog::{watch, watchdog, within, Outcome};

/// The page size the tests assume (x86-64 and aarch64 base pages as configured here).
pub const PAGE_SIZE: usize = 4096;
