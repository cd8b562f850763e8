//! On-disk incremental checkpoint store for writewatch.
//!
//! A [`Store`] is a directory holding one segment file per checkpoint and a
//! `MANIFEST` listing the committed chain. The first segment is a *base* (all
//! non-zero pages of the region), later ones are *deltas* (the pages written
//! since the parent, including pages that became zero). See `docs/format.md`
//! for the byte layout.
//!
//! * Writing streams pages in ascending order through two fixed-size buffers
//!   (a few MiB, independent of the region size) with large sequential
//!   writes, optionally on a background thread ([`WriterOptions`]).
//! * Every commit is atomic: the segment is written under a temporary name,
//!   renamed, `fdatasync`ed and its directory `fsync`ed; then the manifest is
//!   replaced (temporary file, `fdatasync`, rename, directory `fsync`). The
//!   manifest rename is the commit point: a crash at any instant leaves the
//!   previous chain intact; leftovers are removed on the next read-write
//!   [`Store::open`].
//! * Restoring reads each page once, from the newest segment of the chain
//!   that holds it, and verifies every checksum before returning success.
//!
//! The crate is independent of `writewatch-core`: inputs are described by the
//! [`PageSource`] trait and by run lists `&[(first_page, count)]`.
//!
//! ```
//! use writewatch_checkpoint::{SliceSource, Store};
//!
//! let dir = tempfile::tempdir()?;
//! let mut store = Store::create(dir.path().join("ckpt"))?;
//! let mut region = vec![0u8; 64 * 4096];
//! region[..4096].fill(0xAB);
//! let base = store.write_base(&SliceSource::new(&region, 4096)?)?;
//! region[10 * 4096] = 1;
//! let delta = store.write_delta(1, &SliceSource::new(&region, 4096)?, &[(10, 1)])?;
//! assert_eq!(delta.parent, Some(base.epoch));
//! assert_eq!(store.restore(1)?.as_slice(), &region[..]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]

mod error;
mod fetch;
mod files;
#[doc(hidden)]
pub mod format;
pub mod image;
mod progress;
mod remote;
mod restore;
mod segment;
mod source;
mod store;
#[allow(unsafe_code)]
mod sys;
mod writer;

pub use error::{
    CheckpointError, CompactError, ConflictError, CorruptError, Corruption, IoError, OpenError,
    ReadError, RemoteError, RemoteErrorKind, RestoreError, RetainError, VerifyError, WriteError,
};
pub use files::TEMP_PREFIX;
pub use progress::{Progress, ProgressFn};
pub use remote::RemoteOptions;
pub use source::{PageSource, SliceSource};
pub use store::location::StoreLocation;
pub use store::manifest::MANIFEST_NAME;
pub use store::open::LOCK_NAME;
pub use store::restore::{CastError, RestoredMapping};
pub use store::save::SegmentWriter;
pub use store::{
    CompactReport, Geometry, Leftover, SegmentInfo, SegmentKind, Store, VerifyProblem, VerifyReport,
};
pub use writer::{Compression, WriterOptions};
