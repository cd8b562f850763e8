//! Checking a store: every checksum, every segment against the manifest, the chain, and
//! the files an interrupted write left.

use std::fs::File;

use super::chain::{chains, open_segments};
use super::manifest::MANIFEST_NAME;
use super::{SegmentInfo, Store, VerifyProblem, VerifyReport};
use crate::error::{CorruptError, Corruption, IoContext, IoError, ReadError, VerifyError};
use crate::fetch::fetch_runs;
use crate::format::RunKind;
use crate::progress::ProgressTracker;
use crate::sys;

impl Store {
    /// Asks the kernel to drop the cached pages of the store's files
    /// (`POSIX_FADV_DONTNEED`; clean pages only, a hint). Useful after a
    /// restore, whose segment data is not needed in the page cache any more,
    /// and to measure cold reads.
    pub fn drop_page_cache(&self) -> Result<(), IoError> {
        if self.backend.object().is_some() {
            return Ok(());
        }
        let names = self
            .manifest
            .entries
            .iter()
            .map(|e| e.file_name())
            .chain(std::iter::once(MANIFEST_NAME.to_string()));
        for name in names {
            let path = self.dir.join(name);
            let f = File::open(&path).ctx("open", &path)?;
            sys::fadvise(&f, 0, 0, sys::Advice::DontNeed).ctx("posix_fadvise", &path)?;
        }
        Ok(())
    }

    /// Checks every checksum of every segment (header, index, footer, all run
    /// data, decompression), each segment against its manifest entry, and
    /// chain continuity (each delta's parent is the previous segment, same
    /// page size and region length). The manifest is re-read from disk.
    pub fn verify(&self) -> Result<VerifyReport, VerifyError> {
        let manifest = self.backend.ops().read_manifest()?.ok_or_else(|| {
            VerifyError::Corrupt(CorruptError::new(
                &self.dir.join(MANIFEST_NAME),
                0,
                Corruption::Missing,
            ))
        })?;
        let mut report = VerifyReport {
            segments: manifest
                .entries
                .iter()
                .map(|e| SegmentInfo::from_entry(e, &manifest))
                .collect(),
            leftovers: self.backend.ops().list_leftovers(&manifest)?,
            ..Default::default()
        };
        for l in &report.leftovers {
            tracing::warn!(
                "{}: leftover file {} ({} bytes) from an interrupted write",
                self.dir.display(),
                l.file_name,
                l.len
            );
        }
        let total: u64 = manifest.entries.iter().map(|e| e.data_pages).sum();
        let mut prog = ProgressTracker::new(self.progress.as_ref(), total);
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        // Chain by chain: on object storage each chain's segments open in one round trip,
        // as for a restore (only one chain's indexes are held at a time).
        let segments = chains(&manifest.entries)
            .into_iter()
            .flat_map(|c| open_segments(&self.backend, &self.dir, &manifest, &manifest.entries[c]));
        for opened in segments {
            let seg = match opened {
                Ok(s) => s,
                Err(err) => {
                    report.problems.push(problem(err));
                    continue;
                }
            };
            if let Some(backend) = self.backend.object() {
                let jobs: Vec<(usize, usize)> = (0..seg.runs.len())
                    .filter(|&r| seg.runs[r].kind != RunKind::Zero)
                    .map(|r| (0, r))
                    .collect();
                let segs = std::slice::from_ref(&seg);
                let r = fetch_runs(backend, segs, &jobs, |i, _| -> Result<(), ReadError> {
                    let run = &seg.runs[jobs[i].1];
                    report.bytes_checked += run.stored_len;
                    prog.add(run.page_count, run.stored_len);
                    Ok(())
                });
                if let Err(err) = r {
                    report.problems.push(problem(err));
                }
                continue;
            }
            for run in seg.runs.iter().filter(|r| r.kind != RunKind::Zero) {
                match seg.read_run(run, &mut scratch, &mut out) {
                    Ok(_) => {
                        report.bytes_checked += run.stored_len;
                        prog.add(run.page_count, run.stored_len);
                    }
                    Err(err) => {
                        report.problems.push(problem(err));
                        break;
                    }
                }
            }
        }
        prog.finish();
        Ok(report)
    }
}

/// A failed read is a problem of the report.
fn problem(e: ReadError) -> VerifyProblem {
    match e {
        ReadError::Io(e) => e.into(),
        ReadError::Corrupt(e) => e.into(),
    }
}
