//! Opening segment objects in one round trip.
//!
//! A segment's structure is its header (the first [`HEADER_LEN`] bytes), its index and its
//! footer (the object's tail, from `HEADER_LEN + data_bytes` on). The manifest entry names
//! the object's length and data bytes, so both ranges are known before any request: they
//! are fetched with two concurrent ranged GETs (one GET of the whole object when the data
//! between them is small), for every segment of a chain at once, instead of a HEAD then
//! three dependent reads per segment. The object's real size comes back with the tail (the
//! `Content-Range` total), so a truncated or replaced object is still reported as such by
//! the same decoding and checks as before; the bytes are only a cache in front of the
//! ordinary reads ([`Prefetched::read_at`]), which fall back to a ranged GET on a miss.

use bytes::Bytes;
use object_store::{GetOptions, GetRange, ObjectStore};

use super::ObjectBackend;
use crate::format::{ManifestEntry, FOOTER_LEN, HEADER_LEN};

/// Below this many data bytes between header and index, one GET fetches the whole object.
const WHOLE_OBJECT_GAP: u64 = 256 << 10;

/// Bytes of a segment object fetched ahead of decoding its structure.
#[derive(Debug, Default)]
pub(crate) struct Prefetched {
    /// The object's size as the server reported it.
    pub(crate) size: u64,
    /// `(offset, bytes)` chunks of the object.
    pub(crate) chunks: Vec<(u64, Bytes)>,
}

impl Prefetched {
    /// Copies the `buf.len()` bytes at `off` into `buf` if one chunk holds them all.
    pub(crate) fn read_at(&self, buf: &mut [u8], off: u64) -> bool {
        let want = buf.len() as u64;
        for (start, bytes) in &self.chunks {
            let end = start + bytes.len() as u64;
            if off >= *start && off.checked_add(want).is_some_and(|e| e <= end) {
                let at = (off - start) as usize;
                buf.copy_from_slice(&bytes[at..at + buf.len()]);
                return true;
            }
        }
        false
    }
}

/// What prefetching one segment gave.
pub(crate) enum FrameFetch {
    /// The bytes (and real size) of the object.
    Got(Prefetched),
    /// The object does not exist.
    Missing,
    /// The requests failed: open it the ordinary way, which reports why.
    Fallback,
}

/// The byte ranges that hold a segment's header, and its index and footer, per its
/// manifest entry; `None` when the entry is implausible (then the ordinary open reports it).
fn frame_ranges(e: &ManifestEntry) -> Option<(u64, u64)> {
    let index_offset = (HEADER_LEN as u64).checked_add(e.data_bytes)?;
    let min_end = index_offset.checked_add(FOOTER_LEN as u64)?;
    (e.file_len >= min_end).then_some((index_offset, e.file_len))
}

async fn fetch_one(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    e: &ManifestEntry,
) -> FrameFetch {
    let Some((index_offset, end)) = frame_ranges(e) else {
        return FrameFetch::Fallback;
    };
    let get = |range: Option<GetRange>| {
        let options = GetOptions {
            range,
            ..Default::default()
        };
        async move {
            let got = store.get_opts(path, options).await?;
            let (start, size) = (got.range.start, got.meta.size);
            Ok::<_, object_store::Error>((start, size, got.bytes().await?))
        }
    };
    let r = if index_offset - HEADER_LEN as u64 <= WHOLE_OBJECT_GAP {
        get(None).await.map(|(_, size, all)| Prefetched {
            size,
            chunks: vec![(0, all)],
        })
    } else {
        // The tail as a suffix: a shorter object answers with what it has (not 416).
        let (head, tail) = futures_util::future::join(
            get(Some(GetRange::Bounded(0..HEADER_LEN as u64))),
            get(Some(GetRange::Suffix(end - index_offset))),
        )
        .await;
        head.and_then(|(_, _, h)| {
            tail.map(|(start, size, t)| Prefetched {
                size,
                chunks: vec![(0, h), (start, t)],
            })
        })
    };
    match r {
        Ok(p) => FrameFetch::Got(p),
        Err(object_store::Error::NotFound { .. }) => FrameFetch::Missing,
        // Anything else (including a server that answers an out-of-range request with an
        // error rather than the bytes it has): the ordinary open, which asks for the size
        // first, reports it as before. Both are bounded by the retry timeout.
        Err(_) => FrameFetch::Fallback,
    }
}

impl ObjectBackend {
    /// Fetches the header, index and footer of the segments of `entries`, all at once.
    pub(crate) fn prefetch_frames(&self, entries: &[ManifestEntry]) -> Vec<FrameFetch> {
        let store = self.store.as_ref();
        let paths: Vec<_> = entries.iter().map(|e| self.path(&e.file_name())).collect();
        self.block_on(futures_util::future::join_all(
            entries
                .iter()
                .zip(&paths)
                .map(|(e, p)| fetch_one(store, p, e)),
        ))
    }
}
