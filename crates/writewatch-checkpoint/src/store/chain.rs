//! The chain behind an epoch: finding it, opening its segments and checking each against
//! the manifest, and planning its restore.

use std::path::Path;

use super::backend::Backend;
use super::manifest::MANIFEST_NAME;
use super::Store;
use crate::error::{CorruptError, Corruption, ReadError, RestoreError};
use crate::format::{Manifest, ManifestEntry, FLAG_BASE};
use crate::remote::frame::FrameFetch;
use crate::restore::Plan;
use crate::segment::SegmentFile;

impl Store {
    pub(super) fn find(&self, epoch: u64) -> Result<usize, RestoreError> {
        if self.manifest.entries.is_empty() {
            return Err(RestoreError::Empty);
        }
        self.manifest
            .entries
            .iter()
            .position(|e| e.epoch == epoch)
            .ok_or(RestoreError::NoSuchEpoch(epoch))
    }

    /// Opens and cross-checks the segments of the chain ending at entry `idx`.
    pub(super) fn open_chain(&self, idx: usize) -> Result<Vec<SegmentFile>, RestoreError> {
        let entries = &self.manifest.entries;
        let base = (0..=idx)
            .rev()
            .find(|&i| entries[i].flags & FLAG_BASE != 0)
            .ok_or_else(|| {
                CorruptError::new(
                    &self.dir.join(MANIFEST_NAME),
                    0,
                    Corruption::Chain {
                        reason: "no base before the requested epoch".into(),
                    },
                )
            })?;
        open_segments(
            &self.backend,
            &self.dir,
            &self.manifest,
            &entries[base..=idx],
        )
        .into_iter()
        .map(|r| r.map_err(RestoreError::from))
        .collect()
    }

    pub(super) fn plan(&self, epoch: u64) -> Result<Plan, RestoreError> {
        let idx = self.find(epoch)?;
        Ok(Plan::build(self.open_chain(idx)?))
    }
}

/// Opens the segments of `entries` (a chain: a base and the deltas after it) and
/// cross-checks each against its manifest entry; one result per entry, in order. On object
/// storage, every segment's header, index and footer are fetched first, all at once (one
/// round trip for the chain, [`ObjectBackend::prefetch_frames`]); the decoding and every
/// check are the same as for a segment opened alone.
///
/// [`ObjectBackend::prefetch_frames`]: crate::remote::ObjectBackend::prefetch_frames
pub(super) fn open_segments(
    backend: &Backend,
    dir: &Path,
    manifest: &Manifest,
    entries: &[ManifestEntry],
) -> Vec<Result<SegmentFile, ReadError>> {
    let fetched: Vec<Option<FrameFetch>> = match backend.object() {
        Some(b) => b.prefetch_frames(entries).into_iter().map(Some).collect(),
        None => entries.iter().map(|_| None).collect(),
    };
    entries
        .iter()
        .zip(fetched)
        .map(|(e, pre)| open_segment_with(backend, dir, manifest, e, pre))
        .collect()
}

/// The chains of `entries` (each a base and the deltas up to the next base), as index
/// ranges, oldest first. Entries before the first base form a chain of their own (the
/// cross-checks report it).
pub(super) fn chains(entries: &[ManifestEntry]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < entries.len() {
        let end = (start + 1..entries.len())
            .find(|&i| entries[i].flags & FLAG_BASE != 0)
            .unwrap_or(entries.len());
        out.push(start..end);
        start = end;
    }
    out
}

/// Opens a segment and cross-checks it against its manifest entry, with what
/// [`ObjectBackend::prefetch_frames`] fetched for it, if anything.
///
/// [`ObjectBackend::prefetch_frames`]: crate::remote::ObjectBackend::prefetch_frames
fn open_segment_with(
    backend: &Backend,
    dir: &Path,
    manifest: &Manifest,
    e: &ManifestEntry,
    fetched: Option<FrameFetch>,
) -> Result<SegmentFile, ReadError> {
    let name = e.file_name();
    let path = dir.join(&name);
    let seg = match (backend.object(), fetched) {
        (Some(b), Some(FrameFetch::Got(pre))) => {
            SegmentFile::open_object_prefetched(b, &name, &path, &pre)?
        }
        (Some(_), Some(FrameFetch::Missing)) => {
            return Err(CorruptError::new(&path, 0, Corruption::Missing).into())
        }
        _ => backend.ops().open_segment(&name, &path)?,
    };
    let h = &seg.header;
    let mismatch = |field: &'static str, manifest: u64, segment: u64| -> ReadError {
        CorruptError::new(
            &path,
            0,
            Corruption::ManifestMismatch {
                field,
                manifest,
                segment,
            },
        )
        .into()
    };
    // (field, manifest, segment), in the order they are checked.
    let pairs = [
        ("file_len", e.file_len, seg.file_len),
        ("checksum", e.footer_crc.into(), seg.footer_crc.into()),
        ("epoch", e.epoch, h.epoch),
        ("parent_epoch", e.parent_epoch, h.parent_epoch),
        ("flags", e.flags.into(), h.flags.into()),
        ("page_size", manifest.page_size.into(), h.page_size.into()),
        ("region_len", manifest.region_len, h.region_len),
    ];
    if let Some(&(field, m, s)) = pairs.iter().find(|(_, m, s)| m != s) {
        return Err(mismatch(field, m, s));
    }
    Ok(seg)
}
