//! Descriptions handed out by the store: geometry, segments, reports.

use crate::error::{CorruptError, IoError, WriteError};
use crate::format::{
    check_geometry, GeometryFault, Manifest, ManifestEntry, FLAG_BASE, FLAG_COMPRESSED, NO_PARENT,
};

/// Page size and page count of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Page size in bytes (power of two, 512 B ..= 1 GiB).
    pub page_size: usize,
    /// Number of pages (> 0).
    pub page_count: u64,
}

impl Geometry {
    /// Region length in bytes.
    pub fn region_len(&self) -> u64 {
        self.page_size as u64 * self.page_count
    }

    pub(super) fn validate(&self) -> Result<(), WriteError> {
        let ps = self.page_size as u64;
        // An overflowing length is over the limit too.
        let len = self.page_count.saturating_mul(ps);
        match check_geometry(ps, len) {
            Err(GeometryFault::PageSize) => Err(WriteError::InvalidInput(format!(
                "page size {ps} is not a power of two in 512..=1GiB"
            ))),
            Err(GeometryFault::RegionLen) => Err(WriteError::InvalidInput(format!(
                "page count {} must be > 0 with a region of at most 128 TiB",
                self.page_count
            ))),
            Ok(()) => Ok(()),
        }
    }
}

/// Whether a segment is a base or a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// All non-zero pages of the region; pages not stored are zero.
    Base,
    /// Pages changed since the parent epoch (with explicit zero runs).
    Delta,
}

/// Description of one committed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Epoch of the checkpoint.
    pub epoch: u64,
    /// Parent epoch (`None` for a base).
    pub parent: Option<u64>,
    /// Base or delta.
    pub kind: SegmentKind,
    /// File name inside the store directory.
    pub file_name: String,
    /// File length in bytes.
    pub file_len: u64,
    /// Pages stored with data.
    pub data_pages: u64,
    /// Pages recorded as having become zero (deltas only).
    pub zero_pages: u64,
    /// Stored data bytes (after compression).
    pub data_bytes: u64,
    /// Segment checksum (crc32c of the footer, which covers header, index
    /// and, through the index, every run's checksum).
    pub checksum: u32,
    /// Whether runs may be lz4-compressed.
    pub compressed: bool,
    /// Page size of the region.
    pub page_size: usize,
    /// Number of pages in the region.
    pub page_count: u64,
}

impl SegmentInfo {
    pub(crate) fn from_entry(e: &ManifestEntry, m: &Manifest) -> SegmentInfo {
        let page_count = m.region_len / u64::from(m.page_size.max(1));
        SegmentInfo {
            epoch: e.epoch,
            parent: (e.parent_epoch != NO_PARENT).then_some(e.parent_epoch),
            kind: if e.flags & FLAG_BASE != 0 {
                SegmentKind::Base
            } else {
                SegmentKind::Delta
            },
            file_name: e.file_name(),
            file_len: e.file_len,
            data_pages: e.data_pages,
            zero_pages: e.zero_pages,
            data_bytes: e.data_bytes,
            checksum: e.footer_crc,
            compressed: e.flags & FLAG_COMPRESSED != 0,
            page_size: m.page_size as usize,
            page_count,
        }
    }

    /// Fraction of the region's pages recorded in this segment (data and zero
    /// runs).
    pub fn dirty_ratio(&self) -> f64 {
        if self.page_count == 0 {
            0.0
        } else {
            (self.data_pages + self.zero_pages) as f64 / self.page_count as f64
        }
    }
}

/// A problem found by [`Store::verify`](crate::Store::verify).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyProblem {
    /// A file is corrupt or the chain is broken.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
    /// A file could not be read.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Result of [`Store::verify`](crate::Store::verify).
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Segments of the manifest, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// Problems found (empty if the store is sound).
    pub problems: Vec<VerifyProblem>,
    /// Bytes of run data read and checked.
    pub bytes_checked: u64,
    /// Files left in the store directory by an interrupted write (temporary files and segment
    /// files the manifest does not reference). They do not affect the committed chain; a
    /// read-write [`Store::open`](crate::Store::open) (for example [`Store::compact`](crate::Store::compact)'s caller) removes them.
    pub leftovers: Vec<Leftover>,
}

impl VerifyReport {
    /// Whether no problem was found in the committed chain (leftover files are not problems:
    /// see [`is_clean`](Self::is_clean)).
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Whether no problem was found *and* the directory holds no leftover file.
    pub fn is_clean(&self) -> bool {
        self.is_ok() && self.leftovers.is_empty()
    }
}

/// A file in a store directory that no committed segment uses: a temporary file or an
/// unreferenced segment file, left by a crash or a kill during a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// File name inside the store directory.
    pub file_name: String,
    /// Its length in bytes.
    pub len: u64,
}

/// Result of [`Store::compact`](crate::Store::compact).
#[derive(Debug, Clone)]
pub struct CompactReport {
    /// The new base (or the existing one if there was nothing to merge).
    pub base: SegmentInfo,
    /// Segment files merged and removed.
    pub removed: Vec<String>,
}
