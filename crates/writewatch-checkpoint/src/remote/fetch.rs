//! Restoring from object storage: the runs a [`Plan`] needs are fetched with ranged
//! requests (`get_ranges`, which coalesces neighbouring ranges), in batches of about
//! [`RemoteOptions::fetch_batch`] bytes of one segment, [`RemoteOptions::fetch_concurrency`]
//! batches in flight on the I/O runtime. Each run's CRC is verified (and lz4 runs
//! decompressed) as its batch arrives, and the pages are copied straight into the
//! destination; memory stays about `fetch_batch × fetch_concurrency`.
//!
//! [`RemoteOptions::fetch_batch`]: crate::RemoteOptions::fetch_batch
//! [`RemoteOptions::fetch_concurrency`]: crate::RemoteOptions::fetch_concurrency

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use super::{to_io, ObjectBackend};
use crate::error::{IoError, RestoreError};
use crate::restore::{Piece, Plan};
use crate::segment::{SegSrc, SegmentFile};

/// A batch: consecutive run groups of one segment and their byte ranges.
struct Batch {
    seg: usize,
    groups: Vec<Range<usize>>,
    ranges: Vec<Range<u64>>,
}

impl Plan {
    /// The object backend when this plan's segments are objects.
    pub(crate) fn remote(&self) -> Option<Arc<ObjectBackend>> {
        match self.segs.first().map(|s| &s.src) {
            Some(SegSrc::Object(b, _)) => Some(b.clone()),
            _ => None,
        }
    }

    fn batches(&self, max_bytes: u64) -> Vec<Batch> {
        let mut out: Vec<Batch> = Vec::new();
        let mut bytes = 0u64;
        for g in self.groups() {
            let p = self.pieces[g.start];
            let run = &self.segs[p.seg].runs[p.run];
            let range = run.data_offset..run.data_offset + run.stored_len;
            match out.last_mut() {
                Some(b) if b.seg == p.seg && bytes + run.stored_len <= max_bytes => {
                    b.groups.push(g);
                    b.ranges.push(range);
                    bytes += run.stored_len;
                }
                _ => {
                    out.push(Batch {
                        seg: p.seg,
                        groups: vec![g],
                        ranges: vec![range],
                    });
                    bytes = run.stored_len;
                }
            }
        }
        out
    }

    /// Fetches every run group of the plan from object storage, verifies it, and calls
    /// `sink(pieces_of_the_group, raw_run_bytes)` for each, in plan order.
    pub(crate) fn visit_remote(
        &self,
        backend: &Arc<ObjectBackend>,
        mut sink: impl FnMut(&[Piece], &[u8]) -> Result<(), RestoreError>,
    ) -> Result<(), RestoreError> {
        let o = &backend.options;
        let batches = self.batches(o.fetch_batch.max(1 << 20) as u64);
        let names: Vec<String> = self
            .segs
            .iter()
            .map(|s| match &s.src {
                SegSrc::Object(_, name) => name.clone(),
                SegSrc::File(_) => String::new(),
            })
            .collect();
        let rt = backend.runtime();
        let fetches = batches.iter().map(|b| {
            let store = backend.store.clone();
            let path = backend.path(&names[b.seg]);
            let ranges = b.ranges.clone();
            rt.spawn(async move { store.get_ranges(&path, &ranges).await })
        });
        let mut stream = futures_util::stream::iter(fetches).buffered(o.fetch_concurrency.max(1));
        let mut out = Vec::new();
        let mut i = 0usize;
        backend.block_on(async {
            while let Some(joined) = stream.next().await {
                let b = &batches[i];
                i += 1;
                let seg: &SegmentFile = &self.segs[b.seg];
                let got: Vec<Bytes> = match joined {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => return Err(IoError::new("read", &seg.path, to_io(e)).into()),
                    Err(e) => {
                        return Err(IoError::new("read", &seg.path, std::io::Error::other(e)).into())
                    }
                };
                for ((g, range), stored) in b.groups.iter().zip(&b.ranges).zip(&got) {
                    let p = self.pieces[g.start];
                    let run = &seg.runs[p.run];
                    if stored.len() as u64 != range.end - range.start {
                        return Err(seg
                            .run_read_failure(run, std::io::ErrorKind::UnexpectedEof.into())
                            .into());
                    }
                    let raw = run.decode_data(&seg.path, seg.header.page_size, stored, &mut out)?;
                    sink(&self.pieces[g.clone()], raw)?;
                }
            }
            Ok(())
        })
    }
}
