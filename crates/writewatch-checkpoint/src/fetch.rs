//! Restoring from object storage (beside `restore.rs`, whose plans it executes; `remote/` below
//! it owns the connection): the runs a [`Plan`] needs are fetched with ranged
//! requests (`get_ranges`, which coalesces neighbouring ranges), in batches of about
//! [`RemoteOptions::fetch_batch`] bytes of one segment, [`RemoteOptions::fetch_concurrency`]
//! batches in flight on the I/O runtime. Each run's CRC is verified by the fetching task as
//! its batch arrives (lz4 runs are then decompressed by the restoring thread), and the
//! pages are copied straight into the destination; memory stays about `fetch_batch × fetch_concurrency`.
//!
//! [`RemoteOptions::fetch_batch`]: crate::RemoteOptions::fetch_batch
//! [`RemoteOptions::fetch_concurrency`]: crate::RemoteOptions::fetch_concurrency

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::error::{IoError, ReadError, RestoreError};
use crate::format::RunEntry;
use crate::remote::{to_io, ObjectBackend};
use crate::restore::{Piece, Plan};
use crate::segment::{read_failure, SegSrc, SegmentFile};

/// A batch: consecutive jobs (data runs) of one segment and their byte ranges.
struct Batch {
    seg: usize,
    jobs: Range<usize>,
    ranges: Vec<Range<u64>>,
}

/// Groups consecutive `jobs` of the same segment into batches of at most `max_bytes`.
fn batches(segs: &[SegmentFile], jobs: &[(usize, usize)], max_bytes: u64) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    let mut bytes = 0u64;
    for (i, &(seg, run)) in jobs.iter().enumerate() {
        let run = &segs[seg].runs[run];
        let range = run.data_offset..run.data_offset + run.stored_len;
        match out.last_mut() {
            Some(b) if b.seg == seg && bytes + run.stored_len <= max_bytes => {
                b.jobs.end = i + 1;
                b.ranges.push(range);
                bytes += run.stored_len;
            }
            _ => {
                out.push(Batch {
                    seg,
                    jobs: i..i + 1,
                    ranges: vec![range],
                });
                bytes = run.stored_len;
            }
        }
    }
    out
}

/// Fetches the data runs `jobs` (`(segment, run)` pairs into `segs`, all objects of
/// `backend`) with parallel ranged requests, verifies each (CRC, decompression) and calls
/// `sink(job_index, raw_page_bytes)` in job order.
///
/// The CRCs are checked by the fetching tasks on the I/O runtime as each batch arrives
/// (in parallel with each other and with the calling thread's copying); only checked bytes
/// are handed back, and lz4 runs are decompressed here, into one reused buffer, just before
/// `sink` (so memory stays bounded by the stored bytes in flight).
pub(crate) fn fetch_runs<E: From<ReadError>>(
    backend: &Arc<ObjectBackend>,
    segs: &[SegmentFile],
    jobs: &[(usize, usize)],
    mut sink: impl FnMut(usize, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let o = &backend.options;
    let batches = batches(segs, jobs, o.fetch_batch.max(1 << 20) as u64);
    let rt = backend.runtime();
    let fetches = batches.iter().map(|b| {
        let seg = &segs[b.seg];
        let store = backend.store.clone();
        let name = match &seg.src {
            SegSrc::Object(_, name) => name.as_str(),
            SegSrc::File(_) => "",
        };
        let path = backend.path(name);
        let ranges = b.ranges.clone();
        let runs: Vec<RunEntry> = b.jobs.clone().map(|j| seg.runs[jobs[j].1]).collect();
        let (shown, file_len) = (seg.path.clone(), seg.file_len);
        rt.spawn(async move {
            let got = store
                .get_ranges(&path, &ranges)
                .await
                .map_err(|e| ReadError::from(IoError::new("read", &shown, to_io(e))))?;
            if got.len() != runs.len() {
                let eof = std::io::ErrorKind::UnexpectedEof.into();
                return Err(ReadError::from(IoError::new("read", &shown, eof)));
            }
            for (run, stored) in runs.iter().zip(&got) {
                if stored.len() as u64 != run.stored_len {
                    let eof = std::io::ErrorKind::UnexpectedEof.into();
                    return Err(read_failure(
                        &shown,
                        eof,
                        run.data_offset,
                        run.stored_len,
                        file_len,
                    ));
                }
                run.check_crc(&shown, stored)?;
            }
            Ok(got)
        })
    });
    let mut stream = futures_util::stream::iter(fetches).buffered(o.fetch_concurrency.max(1));
    let mut out = Vec::new();
    // The stream is polled inside the runtime, the sink called outside it (it may itself
    // block on the runtime: compaction uploads what it reads). The spawned fetches keep
    // running (and checking) on the runtime's workers in between.
    for b in &batches {
        let Some(joined) = backend.block_on(stream.next()) else {
            break;
        };
        let seg: &SegmentFile = &segs[b.seg];
        let got: Vec<Bytes> = match joined {
            Ok(r) => r?,
            Err(e) => {
                return Err(ReadError::from(IoError::new(
                    "read",
                    &seg.path,
                    std::io::Error::other(e),
                ))
                .into())
            }
        };
        for (job, stored) in b.jobs.clone().zip(&got) {
            let run = &seg.runs[jobs[job].1];
            // CRC checked by the fetching task above.
            let raw = run
                .decode_checked(&seg.path, seg.header.page_size, stored, &mut out)
                .map_err(ReadError::from)?;
            sink(job, raw)?;
        }
    }
    Ok(())
}

impl Plan {
    /// The object backend when this plan's segments are objects.
    pub(crate) fn remote(&self) -> Option<Arc<ObjectBackend>> {
        match self.segs.first().map(|s| &s.src) {
            Some(SegSrc::Object(b, _)) => Some(b.clone()),
            _ => None,
        }
    }

    /// Fetches every run group of the plan from object storage, verifies it, and calls
    /// `sink(pieces_of_the_group, raw_run_bytes)` for each, in plan order.
    pub(crate) fn visit_remote(
        &self,
        backend: &Arc<ObjectBackend>,
        mut sink: impl FnMut(&[Piece], &[u8]) -> Result<(), RestoreError>,
    ) -> Result<(), RestoreError> {
        let groups = self.groups();
        let jobs: Vec<(usize, usize)> = groups
            .iter()
            .map(|g| (self.pieces[g.start].seg, self.pieces[g.start].run))
            .collect();
        fetch_runs(backend, &self.segs, &jobs, |i, raw| {
            sink(&self.pieces[groups[i].clone()], raw)
        })
    }

    /// [`for_each_page_in_order`](Plan::for_each_page_in_order) for object storage: the runs
    /// are fetched in page order, in parallel.
    pub(crate) fn for_each_page_remote<E: From<RestoreError>>(
        &self,
        backend: &Arc<ObjectBackend>,
        mut sink: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let ps = self.page_size;
        let mut by_page: Vec<&Piece> = self.pieces.iter().collect();
        by_page.sort_unstable_by_key(|p| p.first_page);
        let jobs: Vec<(usize, usize)> = by_page.iter().map(|p| (p.seg, p.run)).collect();
        let r = fetch_runs(
            backend,
            &self.segs,
            &jobs,
            |i, raw| -> Result<(), Wrap<E>> {
                let p = by_page[i];
                let run = &self.segs[p.seg].runs[p.run];
                for page in p.first_page..p.first_page + p.count {
                    let off = ((page - run.first_page) as usize) * ps;
                    sink(page, &raw[off..off + ps]).map_err(Wrap::Sink)?;
                }
                Ok(())
            },
        );
        match r {
            Ok(()) => Ok(()),
            Err(Wrap::Sink(e)) => Err(e),
            Err(Wrap::Read(e)) => Err(E::from(RestoreError::from(e))),
        }
    }
}

/// A sink's own error, or a read error.
enum Wrap<E> {
    Sink(E),
    Read(ReadError),
}

impl<E> From<ReadError> for Wrap<E> {
    fn from(e: ReadError) -> Self {
        Wrap::Read(e)
    }
}
