//! Writing segments: checks, the streaming [`SegmentWriter`], and the atomic commit.

use std::fs;
use std::io;

use super::manifest::{write_manifest_temp, MANIFEST_NAME};
use super::{Geometry, SegmentInfo, Store};
use crate::error::{CommitError, IoContext, IoError, WriteError};
use crate::files::{fresh_nonce, fsync_dir, TempFile, TEMP_PREFIX};
use crate::format::{
    segment_file_name, Manifest, ManifestEntry, SegmentHeader, FLAG_BASE, NO_PARENT,
};
use crate::remote::upload::ObjectSink;
use crate::source::PageSource;
use crate::writer::{FinishedSegment, SegmentBuilder};

impl Store {
    fn check_new_segment(&self, epoch: u64, geometry: Geometry) -> Result<(), WriteError> {
        if self.read_only {
            return Err(WriteError::ReadOnly);
        }
        geometry.validate()?;
        // Geometry first: a region of another size is the real problem, whatever its epoch.
        if let Some(g) = self.geometry() {
            if g != geometry {
                return Err(WriteError::GeometryMismatch {
                    store_page_size: g.page_size,
                    store_pages: g.page_count,
                    page_size: geometry.page_size,
                    pages: geometry.page_count,
                });
            }
        }
        if let Some(last) = self.manifest.entries.last() {
            if epoch <= last.epoch {
                return Err(WriteError::EpochNotIncreasing {
                    epoch,
                    head: last.epoch,
                });
            }
        }
        if epoch == NO_PARENT {
            return Err(WriteError::InvalidInput(
                "epoch u64::MAX is reserved".into(),
            ));
        }
        Ok(())
    }

    pub(super) fn builder(
        &self,
        epoch: u64,
        geometry: Geometry,
        base: bool,
        total: Option<u64>,
    ) -> Result<SegmentBuilder, WriteError> {
        let header = SegmentHeader {
            page_size: geometry.page_size as u32,
            flags: if base { FLAG_BASE } else { 0 },
            region_len: geometry.region_len(),
            epoch,
            parent_epoch: if base {
                NO_PARENT
            } else {
                self.manifest.entries.last().map_or(NO_PARENT, |e| e.epoch)
            },
        };
        if let Some(backend) = self.backend.object() {
            // Uploaded straight under its final name: invisible until the manifest
            // references it, an orphan (listed by verify, removed by compact) otherwise.
            let nonce = fresh_nonce();
            let name = segment_file_name(epoch, nonce);
            // A segment is at most the region, its index (40 bytes per run, a run per page
            // at worst) and its header and footer.
            let max_len = geometry.region_len() + geometry.page_count * 40 + 1024;
            let sink = ObjectSink::begin(backend.clone(), name, nonce, max_len)?;
            return SegmentBuilder::create_upload(
                sink,
                header,
                &self.options,
                self.progress.clone(),
                total,
            );
        }
        let temp = self.dir.join(format!(
            "{TEMP_PREFIX}seg-{epoch:016x}-{:016x}",
            fresh_nonce()
        ));
        SegmentBuilder::create(temp, header, &self.options, self.progress.clone(), total)
    }

    /// Starts a base segment at `epoch` written page by page with a
    /// [`SegmentWriter`].
    pub fn begin_base(
        &mut self,
        epoch: u64,
        geometry: Geometry,
    ) -> Result<SegmentWriter<'_>, WriteError> {
        self.check_new_segment(epoch, geometry)?;
        let builder = self.builder(epoch, geometry, true, Some(geometry.page_count))?;
        Ok(SegmentWriter {
            store: self,
            builder,
            replace_from: None,
        })
    }

    /// Starts a delta segment at `epoch` (parent: the newest segment).
    pub fn begin_delta(
        &mut self,
        epoch: u64,
        geometry: Geometry,
    ) -> Result<SegmentWriter<'_>, WriteError> {
        self.begin_delta_inner(epoch, geometry, None)
    }

    fn begin_delta_inner(
        &mut self,
        epoch: u64,
        geometry: Geometry,
        total: Option<u64>,
    ) -> Result<SegmentWriter<'_>, WriteError> {
        if self.manifest.entries.is_empty() {
            return Err(WriteError::NoParent);
        }
        self.check_new_segment(epoch, geometry)?;
        let builder = self.builder(epoch, geometry, false, total)?;
        Ok(SegmentWriter {
            store: self,
            builder,
            replace_from: None,
        })
    }

    /// Starts the store's next segment at [`next_epoch`](Self::next_epoch): a base when
    /// the store is empty, a delta otherwise.
    pub fn begin_next(&mut self, geometry: Geometry) -> Result<SegmentWriter<'_>, WriteError> {
        let epoch = self.next_epoch();
        if self.manifest.entries.is_empty() {
            self.begin_base(epoch, geometry)
        } else {
            self.begin_delta(epoch, geometry)
        }
    }

    /// Writes a base checkpoint of all pages of `source` at
    /// [`next_epoch`](Self::next_epoch). All-zero pages are not stored.
    pub fn write_base<S: PageSource + ?Sized>(
        &mut self,
        source: &S,
    ) -> Result<SegmentInfo, WriteError> {
        self.write_base_at(self.next_epoch(), source)
    }

    /// Writes a base checkpoint at a given epoch (greater than the newest).
    pub fn write_base_at<S: PageSource + ?Sized>(
        &mut self,
        epoch: u64,
        source: &S,
    ) -> Result<SegmentInfo, WriteError> {
        let geometry = Geometry {
            page_size: source.page_size(),
            page_count: source.page_count(),
        };
        let mut w = self.begin_base(epoch, geometry)?;
        for page in 0..geometry.page_count {
            w.push_from(page, source)?;
        }
        w.commit()
    }

    /// Writes a delta checkpoint at `epoch` (greater than the newest, which
    /// becomes its parent) holding the pages of `runs` — ascending,
    /// non-overlapping `(first_page, count)` pairs. Pages of `runs` that are
    /// all zero are recorded as zero runs; pages outside `runs` are taken as
    /// unchanged since the parent.
    pub fn write_delta<S: PageSource + ?Sized>(
        &mut self,
        epoch: u64,
        source: &S,
        runs: &[(u64, u64)],
    ) -> Result<SegmentInfo, WriteError> {
        let geometry = Geometry {
            page_size: source.page_size(),
            page_count: source.page_count(),
        };
        validate_runs(runs, geometry.page_count)?;
        let mut w =
            self.begin_delta_inner(epoch, geometry, Some(runs.iter().map(|r| r.1).sum()))?;
        for &(first, count) in runs {
            for page in first..first + count {
                w.push_from(page, source)?;
            }
        }
        w.commit()
    }

    /// Makes a finished segment durable and commits the manifest with
    /// entries `[..replace_from]` followed by the new one.
    ///
    /// The segment is renamed to its final name *before* it is synced: the
    /// name means nothing until the manifest references it (unreferenced
    /// segment files are garbage to a read-write open), and this way one
    /// journal commit covers data and rename. The new manifest's temporary
    /// file is written and synced concurrently. Only then (segment data and
    /// directory entry durable, manifest content durable) is the manifest
    /// renamed into place, followed by a directory fsync.
    pub(super) fn commit_segment(
        &mut self,
        mut fin: FinishedSegment,
        replace_from: usize,
    ) -> Result<SegmentInfo, WriteError> {
        let Some(file) = fin.file.take() else {
            return self.commit_object_segment(fin, replace_from);
        };
        let nonce = fresh_nonce();
        let name = segment_file_name(fin.header.epoch, nonce);
        let final_path = self.dir.join(&name);
        fs::rename(&fin.temp.path, &final_path).ctx("rename", &fin.temp.path)?;
        fin.temp.disarm();
        // Removes the segment unless the manifest ends up referencing it.
        let mut guard = TempFile::new(final_path.clone());
        let (entry, next) = self.next_manifest(&fin, nonce, replace_from);
        let dir = &self.dir;
        let (seg_synced, manifest_temp) = std::thread::scope(|s| {
            let prepared = s.spawn(|| write_manifest_temp(dir, &next));
            let synced = file
                .sync_data()
                .ctx("fdatasync", &final_path)
                .and_then(|()| fsync_dir(dir));
            (synced, prepared.join())
        });
        let manifest_temp = manifest_temp.unwrap_or_else(|_| {
            Err(IoError::new(
                "write manifest",
                dir.join(MANIFEST_NAME),
                io::Error::other("thread panicked"),
            ))
        })?;
        seg_synced?;
        let r = self.install_manifest(manifest_temp, next);
        if self.manifest.entries.last() == Some(&entry) {
            // The manifest was renamed into place: the segment is referenced.
            guard.disarm();
        }
        r?;
        let info = SegmentInfo::from_entry(&entry, &self.manifest);
        tracing::debug!(
            epoch = info.epoch,
            bytes = info.file_len,
            "committed segment {name}"
        );
        Ok(info)
    }
}

impl Store {
    /// The manifest entry of a finished segment and the manifest that commits it.
    fn next_manifest(
        &self,
        fin: &FinishedSegment,
        nonce: u64,
        replace_from: usize,
    ) -> (ManifestEntry, Manifest) {
        let entry = ManifestEntry {
            epoch: fin.header.epoch,
            parent_epoch: fin.header.parent_epoch,
            nonce,
            file_len: fin.file_len,
            flags: fin.header.flags,
            footer_crc: fin.footer_crc,
            data_pages: fin.footer.data_pages,
            zero_pages: fin.footer.zero_pages,
            data_bytes: fin.footer.data_bytes,
        };
        let mut next = self.manifest.clone();
        next.entries.truncate(replace_from);
        next.entries.push(entry);
        next.page_size = fin.header.page_size;
        next.region_len = fin.header.region_len;
        next.generation += 1;
        (entry, next)
    }

    /// Object storage: the segment object is complete (the multipart upload finished);
    /// commits the manifest with a conditional put. A segment whose commit certainly
    /// failed is deleted; one whose fate is unknown (the manifest could not be read back)
    /// is left as an orphan for `verify` to list and `compact` to remove.
    fn commit_object_segment(
        &mut self,
        fin: FinishedSegment,
        replace_from: usize,
    ) -> Result<SegmentInfo, WriteError> {
        let Some((name, nonce)) = fin.object.clone() else {
            return Err(WriteError::InvalidInput(
                "internal: finished segment has neither file nor object".into(),
            ));
        };
        let (entry, next) = self.next_manifest(&fin, nonce, replace_from);
        match self.commit_manifest(next) {
            Ok(()) => {
                let info = SegmentInfo::from_entry(&entry, &self.manifest);
                tracing::debug!(
                    epoch = info.epoch,
                    bytes = info.file_len,
                    "committed object {name}"
                );
                Ok(info)
            }
            Err(e) => {
                let unknown = matches!(&e, CommitError::Io(_))
                    && !matches!(self.backend.ops().read_manifest(), Ok(Some(m)) if !m.entries.contains(&entry));
                if unknown {
                    tracing::warn!("{}: commit failed and its outcome is unknown; leaving segment {name} (verify lists it, compact removes it if unreferenced)", self.dir.display());
                } else {
                    self.backend.ops().remove(std::slice::from_ref(&name));
                }
                Err(e.into())
            }
        }
    }
}

fn validate_runs(runs: &[(u64, u64)], page_count: u64) -> Result<(), WriteError> {
    let mut next = 0u64;
    for (i, &(first, count)) in runs.iter().enumerate() {
        if count == 0 {
            return Err(WriteError::InvalidInput(format!("run {i} is empty")));
        }
        if first < next {
            return Err(WriteError::InvalidInput(format!(
                "run {i} ({first}+{count}) overlaps or is not ascending"
            )));
        }
        next = first
            .checked_add(count)
            .filter(|&e| e <= page_count)
            .ok_or_else(|| {
                WriteError::InvalidInput(format!("run {i} ({first}+{count}) is outside the region"))
            })?;
    }
    Ok(())
}

/// Writes one segment page by page, in ascending page order, then commits it
/// atomically with [`commit`](Self::commit). Dropping it without committing
/// removes the temporary file and leaves the store unchanged.
///
/// ```
/// use writewatch_checkpoint::{Geometry, Store};
///
/// let dir = tempfile::tempdir()?;
/// let mut store = Store::create(dir.path())?;
/// let geometry = Geometry { page_size: 4096, page_count: 8 };
/// let mut w = store.begin_base(0, geometry)?;
/// w.push_page(3, &[1u8; 4096])?;
/// w.push_page(4, &[2u8; 4096])?;
/// let info = w.commit()?;
/// assert_eq!(info.data_pages, 2);
///
/// let mut w = store.begin_delta(1, geometry)?;
/// w.push_zero_pages(3, 1)?; // page 3 became zero
/// w.commit()?;
/// assert!(store.restore(1)?.as_slice()[3 * 4096..4 * 4096].iter().all(|&b| b == 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SegmentWriter<'s> {
    store: &'s mut Store,
    builder: SegmentBuilder,
    replace_from: Option<usize>,
}

impl std::fmt::Debug for SegmentWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("temp", &self.builder.temp_path())
            .finish()
    }
}

impl SegmentWriter<'_> {
    /// Adds page `index` (`page.len()` must be the page size; indexes must be
    /// strictly ascending). An all-zero page is a hole in a base and a zero
    /// run in a delta.
    pub fn push_page(&mut self, index: u64, page: &[u8]) -> Result<(), WriteError> {
        if page.len() != self.builder.page_size() {
            return Err(WriteError::InvalidInput(format!(
                "page {index} has {} bytes, page size is {}",
                page.len(),
                self.builder.page_size()
            )));
        }
        self.builder.push_with(index, |buf| {
            buf.copy_from_slice(page);
            Ok(())
        })
    }

    /// Records that pages `first..first+count` are zero (a zero run in a
    /// delta; nothing to store in a base).
    pub fn push_zero_pages(&mut self, first: u64, count: u64) -> Result<(), WriteError> {
        self.builder.push_zero(first, count)
    }

    fn push_from<S: PageSource + ?Sized>(
        &mut self,
        page: u64,
        source: &S,
    ) -> Result<(), WriteError> {
        self.builder.push_with(page, |buf| {
            source
                .read_page(page, buf)
                .map_err(|source| WriteError::Source { page, source })
        })
    }

    /// Finishes the file (index, footer, `fdatasync`), renames it into place
    /// and atomically commits the new manifest.
    pub fn commit(self) -> Result<SegmentInfo, WriteError> {
        let fin = self.builder.finish()?;
        let from = self
            .replace_from
            .unwrap_or(self.store.manifest.entries.len());
        self.store.commit_segment(fin, from)
    }

    /// Abandons the segment (same as dropping the writer).
    pub fn abort(self) {}
}
