//! Shrinking a store: compaction into a new base, retention of the newest bases, rollback.

use super::{CompactReport, Geometry, SegmentInfo, Store};
use crate::error::{CompactError, RestoreError, RetainError, WriteError};
use crate::format::{ManifestEntry, FLAG_BASE};
use crate::restore::Plan;

impl Store {
    /// Merges the newest chain (its base and the deltas after it) into a new
    /// base at the newest epoch: writes the base, swaps the manifest, then
    /// deletes the merged segments. A crash at any point leaves either the old
    /// or the new chain committed. Older bases (and their deltas) are kept;
    /// see [`retain_bases`](Self::retain_bases).
    pub fn compact(&mut self) -> Result<CompactReport, CompactError> {
        if self.read_only {
            return Err(WriteError::ReadOnly.into());
        }
        let orphans = self.object_orphans()?;
        let entries = self.manifest.entries.clone();
        let head_idx = entries.len().checked_sub(1).ok_or(RestoreError::Empty)?;
        let base_idx = (0..=head_idx)
            .rev()
            .find(|&i| entries[i].flags & FLAG_BASE != 0)
            .unwrap_or(0);
        if base_idx == head_idx {
            let mut removed = Vec::new();
            if !orphans.is_empty() {
                // Commit (a new generation) first, so that no writer holding the old
                // manifest version can commit a segment removed here.
                let mut next = self.manifest.clone();
                next.generation += 1;
                self.commit_manifest(next).map_err(WriteError::from)?;
                removed = self.backend.ops().remove(&orphans);
            }
            return Ok(CompactReport {
                base: SegmentInfo::from_entry(&entries[head_idx], &self.manifest),
                removed,
            });
        }
        let head = entries[head_idx];
        let plan = Plan::build(self.open_chain(head_idx)?);
        let geometry = Geometry {
            page_size: plan.page_size,
            page_count: plan.page_count,
        };
        let mut builder = self.builder(head.epoch, geometry, true, Some(plan.data_pages()))?;
        plan.for_each_page_in_order(|page, bytes| -> Result<(), CompactError> {
            builder.push_with(page, |buf| {
                buf.copy_from_slice(bytes);
                Ok(())
            })?;
            Ok(())
        })?;
        let fin = builder.finish()?;
        let info = self.commit_segment(fin, base_idx)?;
        let mut removed = self.remove_segment_files(&entries[base_idx..]);
        removed.extend(self.backend.ops().remove(&orphans));
        Ok(CompactReport {
            base: info,
            removed,
        })
    }

    /// Keeps the newest `n` (>= 1) bases and the deltas after them; drops
    /// every older segment (manifest swapped first, files deleted after).
    /// Returns the names of the files removed.
    pub fn retain_bases(&mut self, n: usize) -> Result<Vec<String>, RetainError> {
        if self.read_only {
            return Err(RetainError::ReadOnly);
        }
        if n == 0 {
            return Err(RetainError::InvalidArgument(
                "must keep at least one base".into(),
            ));
        }
        let bases: Vec<usize> = (0..self.manifest.entries.len())
            .filter(|&i| self.manifest.entries[i].flags & FLAG_BASE != 0)
            .collect();
        if bases.len() <= n {
            return Ok(Vec::new());
        }
        let cut = bases[bases.len() - n];
        self.drop_entries(|i, _| i < cut)
    }

    /// Drops every segment newer than `epoch` (a rollback). Returns the names
    /// of the files removed.
    pub fn discard_after(&mut self, epoch: u64) -> Result<Vec<String>, RetainError> {
        if self.read_only {
            return Err(RetainError::ReadOnly);
        }
        self.drop_entries(|_, e| e.epoch > epoch)
    }

    fn drop_entries(
        &mut self,
        drop_it: impl Fn(usize, &ManifestEntry) -> bool,
    ) -> Result<Vec<String>, RetainError> {
        let (gone, kept): (Vec<_>, Vec<_>) = self
            .manifest
            .entries
            .iter()
            .enumerate()
            .partition(|(i, e)| drop_it(*i, e));
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let gone: Vec<ManifestEntry> = gone.into_iter().map(|(_, e)| *e).collect();
        let mut next = self.manifest.clone();
        next.entries = kept.into_iter().map(|(_, e)| *e).collect();
        next.generation += 1;
        if next.entries.is_empty() {
            next.page_size = 0;
            next.region_len = 0;
        }
        self.commit_manifest(next)?;
        Ok(self.remove_segment_files(&gone))
    }

    fn remove_segment_files(&self, entries: &[ManifestEntry]) -> Vec<String> {
        let names: Vec<String> = entries.iter().map(|e| e.file_name()).collect();
        self.backend.ops().remove(&names)
    }

    /// Object storage: the orphans (segments of interrupted or losing writers) listed
    /// *before* this handle's next manifest commit. Removing them after that commit is
    /// safe: a writer that uploaded one of them read an older manifest, so its own commit
    /// fails with a conflict.
    fn object_orphans(&self) -> Result<Vec<String>, CompactError> {
        if self.backend.object().is_none() {
            return Ok(Vec::new());
        }
        let list = self.backend.ops().list_leftovers(&self.manifest)?;
        Ok(list.into_iter().map(|l| l.file_name).collect())
    }
}
