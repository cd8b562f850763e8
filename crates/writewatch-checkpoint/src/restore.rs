//! Restore planning (page -> newest segment map) and execution.
//!
//! The plan is built from the chain's page indexes only, newest segment
//! first: a run contributes the pages not already covered by a newer
//! segment. Every page is then read exactly once from the segment that holds
//! its newest version; segments are read in file order.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoError, RestoreError};
use crate::format::{RunEntry, RunKind};
use crate::progress::{ProgressFn, ProgressTracker};
use crate::segment::SegmentFile;
use crate::sys;

/// A range of pages whose newest version is in run `run` of segment `seg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) first_page: u64,
    pub(crate) count: u64,
    pub(crate) seg: usize,
    pub(crate) run: usize,
}

/// What to read from where to rebuild one epoch.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Chain from the base to the target epoch, oldest first.
    pub(crate) segs: Vec<SegmentFile>,
    /// Data pieces, sorted by (segment, run, page). Pages not covered are zero.
    pub(crate) pieces: Vec<Piece>,
    pub(crate) page_size: usize,
    pub(crate) page_count: u64,
}

impl Plan {
    /// Builds the plan; `segs` is the chain oldest first (first is a base).
    pub(crate) fn build(segs: Vec<SegmentFile>) -> Plan {
        let page_size = segs.first().map_or(4096, |s| s.page_size());
        let page_count = segs.first().map_or(0, |s| s.header.page_count());
        // covered: start -> end of page ranges claimed by newer segments.
        let mut covered: BTreeMap<u64, u64> = BTreeMap::new();
        let mut pieces = Vec::new();
        let mut touching: Vec<(u64, u64)> = Vec::new();
        for (si, seg) in segs.iter().enumerate().rev() {
            for (ri, run) in seg.runs.iter().enumerate() {
                let (s, e) = (run.first_page, run.end_page());
                touching.clear();
                for (&a, &b) in covered.range(..=e).rev() {
                    if b < s {
                        break;
                    }
                    touching.push((a, b));
                }
                touching.reverse();
                if run.kind != RunKind::Zero {
                    let mut pos = s;
                    for &(a, b) in &touching {
                        if pos >= e {
                            break;
                        }
                        if a > pos {
                            let end = a.min(e);
                            pieces.push(Piece {
                                first_page: pos,
                                count: end - pos,
                                seg: si,
                                run: ri,
                            });
                        }
                        pos = pos.max(b);
                    }
                    if pos < e {
                        pieces.push(Piece {
                            first_page: pos,
                            count: e - pos,
                            seg: si,
                            run: ri,
                        });
                    }
                }
                let ns = touching.first().map_or(s, |t| t.0.min(s));
                let ne = touching.last().map_or(e, |t| t.1.max(e));
                for &(a, _) in &touching {
                    covered.remove(&a);
                }
                covered.insert(ns, ne);
            }
        }
        pieces.sort_unstable_by_key(|p| (p.seg, p.run, p.first_page));
        Plan {
            segs,
            pieces,
            page_size,
            page_count,
        }
    }

    pub(crate) fn region_len(&self) -> u64 {
        self.page_count * self.page_size as u64
    }

    /// Total pages with data to read.
    pub(crate) fn data_pages(&self) -> u64 {
        self.pieces.iter().map(|p| p.count).sum()
    }

    /// Page ranges with data, sorted by page.
    pub(crate) fn data_ranges_by_page(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .pieces
            .iter()
            .map(|p| (p.first_page, p.count))
            .collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn run(&self, p: &Piece) -> (&SegmentFile, &RunEntry) {
        let seg = &self.segs[p.seg];
        (seg, &seg.runs[p.run])
    }

    /// Groups `pieces` by run: returns index ranges into `pieces`.
    pub(crate) fn groups(&self) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.pieces.len() {
            let mut j = i + 1;
            while j < self.pieces.len()
                && self.pieces[j].seg == self.pieces[i].seg
                && self.pieces[j].run == self.pieces[i].run
            {
                j += 1;
            }
            out.push(i..j);
            i = j;
        }
        out
    }

    /// Restores into `dst` (exactly the region length). If `fresh_zeroed`,
    /// `dst` is known to be all zero and holes are not written.
    pub(crate) fn restore_into(
        &self,
        dst: &mut [u8],
        fresh_zeroed: bool,
        progress: Option<&ProgressFn>,
    ) -> Result<(), RestoreError> {
        let ps = self.page_size;
        if dst.len() as u64 != self.region_len() {
            return Err(RestoreError::SizeMismatch {
                expected: self.region_len(),
                got: dst.len() as u64,
            });
        }
        if !fresh_zeroed {
            let mut pos = 0u64;
            for (first, count) in self.data_ranges_by_page() {
                if first > pos {
                    dst[(pos as usize) * ps..(first as usize) * ps].fill(0);
                }
                pos = first + count;
            }
            dst[(pos as usize) * ps..].fill(0);
        }
        let total = self.data_pages();
        let mut prog = ProgressTracker::new(progress, total);
        if let Some(backend) = self.remote() {
            self.visit_remote(&backend, |pieces, raw| {
                for piece in pieces {
                    let run = &self.segs[piece.seg].runs[piece.run];
                    let off = ((piece.first_page - run.first_page) as usize) * ps;
                    let len = piece.count as usize * ps;
                    let d = piece.first_page as usize * ps;
                    dst[d..d + len].copy_from_slice(&raw[off..off + len]);
                    prog.add(piece.count, len as u64);
                }
                Ok(())
            })?;
            prog.finish();
            return Ok(());
        }
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        // A batch of whole raw runs, file-contiguous in one segment, read with
        // one preadv straight into `dst`.
        let mut batch: Vec<usize> = Vec::new(); // piece indices
        let mut batch_bytes = 0u64;
        const BATCH_MAX: u64 = 4 << 20;
        let groups = self.groups();
        for g in groups.iter().cloned() {
            let p = &self.pieces[g.start];
            let (seg, run) = self.run(p);
            let whole_raw = g.len() == 1 && run.kind == RunKind::Raw && p.count == run.page_count;
            if whole_raw {
                let contiguous = batch.last().is_some_and(|&last| {
                    let lp = &self.pieces[last];
                    lp.seg == p.seg && lp.run + 1 == p.run
                });
                if !contiguous || batch_bytes + run.stored_len > BATCH_MAX {
                    self.read_batch(&batch, dst, &mut prog)?;
                    batch.clear();
                    batch_bytes = 0;
                }
                batch.push(g.start);
                batch_bytes += run.stored_len;
                continue;
            }
            self.read_batch(&batch, dst, &mut prog)?;
            batch.clear();
            batch_bytes = 0;
            let raw = seg.read_run(run, &mut scratch, &mut out)?;
            for piece in &self.pieces[g] {
                let off = ((piece.first_page - run.first_page) as usize) * ps;
                let len = piece.count as usize * ps;
                let d = piece.first_page as usize * ps;
                dst[d..d + len].copy_from_slice(&raw[off..off + len]);
                prog.add(piece.count, len as u64);
            }
        }
        self.read_batch(&batch, dst, &mut prog)?;
        prog.finish();
        Ok(())
    }

    /// Restores into `dst` (words; exactly the region length) without a `&mut`: every run
    /// is read and its checksum (and decompression) verified in a first pass, before `dst` is
    /// touched; then holes are zeroed, whole raw runs are read by the kernel straight into
    /// `dst`, and the other pieces are copied word by word (atomic stores).
    pub(crate) fn restore_into_words(
        &self,
        dst: &[AtomicU64],
        progress: Option<&ProgressFn>,
    ) -> Result<(), RestoreError> {
        let ps = self.page_size;
        let got = std::mem::size_of_val(dst) as u64;
        if got != self.region_len() || ps % 8 != 0 {
            return Err(RestoreError::SizeMismatch {
                expected: self.region_len(),
                got,
            });
        }
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        let groups = self.groups();
        let remote = self.remote();
        match &remote {
            // Objects: a verifying pass over the fetched runs (a second fetch copies).
            Some(backend) => self.visit_remote(backend, |_, _| Ok(()))?,
            None => {
                for g in groups.iter().cloned() {
                    let (seg, run) = self.run(&self.pieces[g.start]);
                    seg.read_run(run, &mut scratch, &mut out)?;
                }
            }
        }
        let wpp = ps / 8;
        let words = |first: u64, count: u64| {
            let s = first as usize * wpp;
            &dst[s..s + count as usize * wpp]
        };
        let zero = |ws: &[AtomicU64]| {
            for w in ws {
                if w.load(Ordering::Relaxed) != 0 {
                    w.store(0, Ordering::Relaxed);
                }
            }
        };
        let mut pos = 0u64;
        for (first, count) in self.data_ranges_by_page() {
            if first > pos {
                zero(words(pos, first - pos));
            }
            pos = first + count;
        }
        zero(words(pos, self.page_count - pos));
        let mut prog = ProgressTracker::new(progress, self.data_pages());
        let store_words = |piece: &Piece, src: &[u8]| {
            for (w, b) in words(piece.first_page, piece.count)
                .iter()
                .zip(src.chunks_exact(8))
            {
                w.store(
                    u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])),
                    Ordering::Relaxed,
                );
            }
        };
        if let Some(backend) = &remote {
            self.visit_remote(backend, |pieces, raw| {
                for piece in pieces {
                    let run = &self.segs[piece.seg].runs[piece.run];
                    let off = ((piece.first_page - run.first_page) as usize) * ps;
                    let len = piece.count as usize * ps;
                    store_words(piece, &raw[off..off + len]);
                    prog.add(piece.count, len as u64);
                }
                Ok(())
            })?;
            prog.finish();
            return Ok(());
        }
        for g in groups.iter().cloned() {
            let p = &self.pieces[g.start];
            let (seg, run) = self.run(p);
            if g.len() == 1 && run.kind == RunKind::Raw && p.count == run.page_count {
                sys::pread_exact_words(
                    local_file(seg)?,
                    run.data_offset,
                    words(p.first_page, p.count),
                )
                .map_err(|e| seg.run_read_failure(run, e))?;
                prog.add(p.count, p.count * ps as u64);
                continue;
            }
            let raw = seg.read_run(run, &mut scratch, &mut out)?;
            for piece in &self.pieces[g] {
                let off = ((piece.first_page - run.first_page) as usize) * ps;
                let len = piece.count as usize * ps;
                store_words(piece, &raw[off..off + len]);
                prog.add(piece.count, len as u64);
            }
        }
        prog.finish();
        Ok(())
    }

    fn read_batch(
        &self,
        batch: &[usize],
        dst: &mut [u8],
        prog: &mut ProgressTracker<'_>,
    ) -> Result<(), RestoreError> {
        let Some(&first) = batch.first() else {
            return Ok(());
        };
        let ps = self.page_size;
        let (seg, first_run) = self.run(&self.pieces[first]);
        let mut slices: Vec<&mut [u8]> = Vec::with_capacity(batch.len());
        let mut rest: &mut [u8] = dst;
        let mut base = 0usize;
        for &pi in batch {
            let p = &self.pieces[pi];
            let start = p.first_page as usize * ps - base;
            let len = p.count as usize * ps;
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(start);
            let (s, tail) = tail.split_at_mut(len);
            slices.push(s);
            rest = tail;
            base = (p.first_page + p.count) as usize * ps;
        }
        sys::preadv_exact(local_file(seg)?, first_run.data_offset, &mut slices)
            .map_err(|e| seg.run_read_failure(first_run, e))?;
        for (&pi, s) in batch.iter().zip(slices.iter()) {
            let p = &self.pieces[pi];
            let run = &seg.runs[p.run];
            run.check_crc(&seg.path, s)?;
            prog.add(p.count, s.len() as u64);
        }
        Ok(())
    }

    /// Writes the restored image into `file` (already `region_len` long and
    /// all zero/sparse): holes are skipped.
    pub(crate) fn restore_to_file(
        &self,
        file: &File,
        path: &std::path::Path,
        progress: Option<&ProgressFn>,
    ) -> Result<(), RestoreError> {
        let ps = self.page_size;
        let mut prog = ProgressTracker::new(progress, self.data_pages());
        let mut write = |pieces: &[Piece], raw: &[u8]| -> Result<(), RestoreError> {
            for piece in pieces {
                let run = &self.segs[piece.seg].runs[piece.run];
                let off = ((piece.first_page - run.first_page) as usize) * ps;
                let len = piece.count as usize * ps;
                file.write_all_at(&raw[off..off + len], piece.first_page * ps as u64)
                    .map_err(|e| IoError::new("write", path, e))?;
                prog.add(piece.count, len as u64);
            }
            Ok(())
        };
        if let Some(backend) = self.remote() {
            self.visit_remote(&backend, write)?;
        } else {
            let mut scratch = Vec::new();
            let mut out = Vec::new();
            for g in self.groups() {
                let (seg, run) = self.run(&self.pieces[g.start]);
                let raw = seg.read_run(run, &mut scratch, &mut out)?;
                write(&self.pieces[g], raw)?;
            }
        }
        prog.finish();
        Ok(())
    }

    /// Calls `sink(page_index, page_bytes)` for every page with data in
    /// ascending page order (for compaction). Runs are verified when read.
    pub(crate) fn for_each_page_in_order<E: From<RestoreError>>(
        &self,
        mut sink: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(backend) = self.remote() {
            return self.for_each_page_remote(&backend, sink);
        }
        let ps = self.page_size;
        let mut by_page: Vec<&Piece> = self.pieces.iter().collect();
        by_page.sort_unstable_by_key(|p| p.first_page);
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        let mut cached: Option<(usize, usize)> = None;
        let mut raw_copy: Vec<u8> = Vec::new();
        for p in by_page {
            let (seg, run) = self.run(p);
            if cached != Some((p.seg, p.run)) {
                let raw = seg
                    .read_run(run, &mut scratch, &mut out)
                    .map_err(|e| E::from(RestoreError::from(e)))?;
                raw_copy.clear();
                raw_copy.extend_from_slice(raw);
                cached = Some((p.seg, p.run));
            }
            for i in 0..p.count {
                let page = p.first_page + i;
                let off = ((page - run.first_page) as usize) * ps;
                sink(page, &raw_copy[off..off + ps])?;
            }
        }
        Ok(())
    }
}

/// The local file of a segment (every segment of a local plan has one).
fn local_file(seg: &SegmentFile) -> Result<&File, RestoreError> {
    seg.src.file().ok_or_else(|| {
        IoError::new(
            "read",
            &seg.path,
            std::io::Error::other("not a local segment file"),
        )
        .into()
    })
}
