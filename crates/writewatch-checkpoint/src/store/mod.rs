//! The store: a directory with a manifest and segment files.
//!
//! `Store` is defined here with its accessors; its operations are spread over the
//! submodules along their seams: [`open`] (create, open, lock, leftovers), [`manifest`]
//! (reading and atomically replacing the manifest), [`save`] (writing and committing
//! segments), [`chain`] (the segments behind an epoch), [`restore`], [`verify`] and
//! [`retention`] (compaction, retention, rollback).

use std::path::{Path, PathBuf};

use crate::format::Manifest;
use crate::progress::ProgressFn;
use crate::writer::WriterOptions;

pub(crate) mod backend;
mod chain;
mod info;
pub(crate) mod location;
pub(crate) mod manifest;
pub(crate) mod open;
pub(crate) mod restore;
mod retention;
pub(crate) mod save;
mod verify;

pub use info::{
    CompactReport, Geometry, Leftover, SegmentInfo, SegmentKind, VerifyProblem, VerifyReport,
};

/// An incremental checkpoint store (a directory).
///
/// A read-write [`Store::open`] takes an exclusive lock on the directory, so
/// one process writes at a time; [`Store::open_read_only`] takes a shared lock.
///
/// ```
/// use writewatch_checkpoint::{SliceSource, Store};
///
/// let dir = tempfile::tempdir()?;
/// let mut region = vec![0u8; 16 * 4096];
/// region[5 * 4096] = 7;
///
/// let mut store = Store::create(dir.path())?;
/// let base = store.write_base(&SliceSource::new(&region, 4096)?)?;
///
/// region[9 * 4096] = 1;
/// region[5 * 4096] = 0; // page 5 became zero again
/// store.write_delta(base.epoch + 1, &SliceSource::new(&region, 4096)?, &[(5, 1), (9, 1)])?;
///
/// let restored = store.restore(base.epoch + 1)?;
/// assert_eq!(restored.as_slice(), &region[..]);
/// assert!(store.verify()?.is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Store {
    dir: PathBuf,
    manifest: Manifest,
    backend: backend::Backend,
    read_only: bool,
    options: WriterOptions,
    progress: Option<ProgressFn>,
    removed_on_open: Vec<Leftover>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("segments", &self.manifest.entries.len())
            .field("read_only", &self.read_only)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Leftover files a read-write open removed (left by a crash or kill during a write).
    pub fn removed_leftovers(&self) -> &[Leftover] {
        &self.removed_on_open
    }

    /// Sets the writer options (compression, buffer sizes, background thread).
    pub fn set_writer_options(&mut self, options: WriterOptions) {
        self.options = options;
    }

    /// The writer options in use.
    pub fn writer_options(&self) -> &WriterOptions {
        &self.options
    }

    /// Sets a progress callback for writes, restores, verify and compaction.
    pub fn set_progress(&mut self, progress: Option<ProgressFn>) {
        self.progress = progress;
    }

    /// The store directory (for a store on object storage: its URL, `scheme://bucket/prefix`).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether the store was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The committed segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.manifest
            .entries
            .iter()
            .map(|e| SegmentInfo::from_entry(e, &self.manifest))
            .collect()
    }

    /// The newest committed segment.
    pub fn head(&self) -> Option<SegmentInfo> {
        self.manifest
            .entries
            .last()
            .map(|e| SegmentInfo::from_entry(e, &self.manifest))
    }

    /// The epoch `write_base` would use: one past the newest, or 0.
    pub fn next_epoch(&self) -> u64 {
        self.manifest.entries.last().map_or(0, |e| e.epoch + 1)
    }

    /// Page size and count shared by all segments (`None` when empty).
    pub fn geometry(&self) -> Option<Geometry> {
        (!self.manifest.entries.is_empty()).then(|| Geometry {
            page_size: self.manifest.page_size as usize,
            page_count: self.manifest.region_len / u64::from(self.manifest.page_size),
        })
    }
}
