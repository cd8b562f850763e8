//! The segment codec: header, footer, page index, and the in-memory decoder of a whole
//! segment. See `docs/format.md` for the byte layout.

use std::path::Path;

use super::common::{
    bad_field, check_geometry, le_u32, le_u64, lz4_len_plausible, max_run_bytes, put_u32, put_u64,
    GeometryFault, Preamble, FLAG_BASE, FOOTER_LEN, FOOTER_MAGIC, HEADER_LEN, KNOWN_FLAGS,
    NO_PARENT, RUN_ENTRY_LEN, SEGMENT_MAGIC,
};
use crate::error::{CorruptError, Corruption};

/// The segment header's preamble.
const HEADER: Preamble = Preamble {
    magic: SEGMENT_MAGIC,
    versioned: true,
    what: "header",
};

/// The segment footer's preamble (no version: the header has it).
const FOOTER: Preamble = Preamble {
    magic: FOOTER_MAGIC,
    versioned: false,
    what: "footer",
};

/// How the data of a run is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Raw page bytes.
    Raw = 0,
    /// One lz4 block (lz4_flex block format) of the page bytes.
    Lz4 = 1,
    /// The pages became zero; no data.
    Zero = 2,
}

impl RunKind {
    fn from_u8(v: u8) -> Option<RunKind> {
        match v {
            0 => Some(RunKind::Raw),
            1 => Some(RunKind::Lz4),
            2 => Some(RunKind::Zero),
            _ => None,
        }
    }
}

/// Decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Page size in bytes (power of two).
    pub page_size: u32,
    /// Flags (`FLAG_*`).
    pub flags: u32,
    /// Region length in bytes (multiple of the page size).
    pub region_len: u64,
    /// Epoch of this checkpoint.
    pub epoch: u64,
    /// Parent epoch (`NO_PARENT` for a base).
    pub parent_epoch: u64,
}

impl SegmentHeader {
    /// Whether this is a base segment.
    pub fn is_base(&self) -> bool {
        self.flags & FLAG_BASE != 0
    }

    /// Number of pages in the region.
    pub fn page_count(&self) -> u64 {
        self.region_len / u64::from(self.page_size)
    }

    /// Serializes the header (including its checksum).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        put_u32(&mut b, 12, HEADER_LEN as u32);
        put_u32(&mut b, 16, self.page_size);
        put_u32(&mut b, 20, self.flags);
        put_u64(&mut b, 24, self.region_len);
        put_u64(&mut b, 32, self.epoch);
        put_u64(&mut b, 40, self.parent_epoch);
        HEADER.seal(&mut b);
        b
    }

    /// Parses and validates a header. `b` must be the first bytes of the file
    /// (at least `HEADER_LEN`, else `Truncated`).
    pub fn decode(
        path: &Path,
        b: &[u8],
        file_len: u64,
    ) -> Result<(SegmentHeader, u32), CorruptError> {
        HEADER.check_start(path, b, 0, HEADER_LEN, file_len)?;
        let b = &b[..HEADER_LEN];
        let stored = HEADER.check_crc(path, b, 0)?;
        let field = |off: u64, field: &'static str, value: u64, reason: &'static str| {
            bad_field(path, off, field, value, reason)
        };
        let header_len = le_u32(b, 12);
        if header_len as usize != HEADER_LEN {
            return Err(field(12, "header_len", header_len.into(), "must be 128"));
        }
        let page_size = le_u32(b, 16);
        let ps = u64::from(page_size);
        let flags = le_u32(b, 20);
        let region_len = le_u64(b, 24);
        let geometry = check_geometry(ps, region_len);
        if let Err(f @ GeometryFault::PageSize) = geometry {
            return Err(field(16, "page_size", ps, f.reason()));
        }
        if flags & !KNOWN_FLAGS != 0 {
            return Err(field(20, "flags", flags.into(), "unknown flag bits"));
        }
        if let Err(f) = geometry {
            return Err(field(24, "region_len", region_len, f.reason()));
        }
        let epoch = le_u64(b, 32);
        let parent_epoch = le_u64(b, 40);
        if flags & FLAG_BASE != 0 {
            if parent_epoch != NO_PARENT {
                return Err(field(
                    40,
                    "parent_epoch",
                    parent_epoch,
                    "a base has no parent",
                ));
            }
        } else if parent_epoch >= epoch {
            return Err(field(
                40,
                "parent_epoch",
                parent_epoch,
                "must be below the epoch",
            ));
        }
        if b[48..HEADER_LEN - 4].iter().any(|&x| x != 0) {
            return Err(field(48, "reserved", 0, "reserved bytes must be zero"));
        }
        Ok((
            SegmentHeader {
                page_size,
                flags,
                region_len,
                epoch,
                parent_epoch,
            },
            stored,
        ))
    }
}

/// Decoded segment footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentFooter {
    /// Offset of the page index (= header length + data bytes).
    pub index_offset: u64,
    /// Number of index entries.
    pub run_count: u64,
    /// Pages stored with data.
    pub data_pages: u64,
    /// Pages recorded as zero runs.
    pub zero_pages: u64,
    /// Bytes of run data (stored, possibly compressed).
    pub data_bytes: u64,
    /// Copy of the header checksum.
    pub header_crc: u32,
    /// Checksum of the page index.
    pub index_crc: u32,
}

impl SegmentFooter {
    /// Verifies the index bytes against the footer's index checksum.
    pub fn check_index(&self, path: &Path, index: &[u8]) -> Result<(), CorruptError> {
        let computed = crc32c::crc32c(index);
        expect_crc(path, self.index_offset, "index", self.index_crc, computed)
    }

    /// Serializes the footer; returns the bytes and the footer checksum.
    pub fn encode(&self) -> ([u8; FOOTER_LEN], u32) {
        let mut b = [0u8; FOOTER_LEN];
        put_u64(&mut b, 8, self.index_offset);
        put_u64(&mut b, 16, self.run_count);
        put_u64(&mut b, 24, self.data_pages);
        put_u64(&mut b, 32, self.zero_pages);
        put_u64(&mut b, 40, self.data_bytes);
        put_u32(&mut b, 48, self.header_crc);
        put_u32(&mut b, 52, self.index_crc);
        let crc = FOOTER.seal(&mut b);
        (b, crc)
    }

    /// Parses a footer found at `footer_off` of a file of `file_len` bytes and
    /// checks its sizes against the file size. Returns it with its checksum.
    pub fn decode(
        path: &Path,
        b: &[u8; FOOTER_LEN],
        footer_off: u64,
        file_len: u64,
    ) -> Result<(SegmentFooter, u32), CorruptError> {
        FOOTER.check_start(path, b, footer_off, FOOTER_LEN, file_len)?;
        let stored = FOOTER.check_crc(path, b, footer_off)?;
        let f = SegmentFooter {
            index_offset: le_u64(b, 8),
            run_count: le_u64(b, 16),
            data_pages: le_u64(b, 24),
            zero_pages: le_u64(b, 32),
            data_bytes: le_u64(b, 40),
            header_crc: le_u32(b, 48),
            index_crc: le_u32(b, 52),
        };
        let field = |rel: u64, field: &'static str, value: u64, reason: &'static str| {
            bad_field(path, footer_off + rel, field, value, reason)
        };
        if le_u32(b, 56) != 0 {
            return Err(field(56, "reserved", le_u32(b, 56).into(), "must be zero"));
        }
        if Some(f.index_offset) != (HEADER_LEN as u64).checked_add(f.data_bytes) {
            return Err(field(
                8,
                "index_offset",
                f.index_offset,
                "must equal 128 + data_bytes",
            ));
        }
        let end = f
            .run_count
            .checked_mul(RUN_ENTRY_LEN as u64)
            .and_then(|x| x.checked_add(f.index_offset))
            .and_then(|x| x.checked_add(FOOTER_LEN as u64));
        if end != Some(file_len) {
            return Err(field(
                16,
                "run_count",
                f.run_count,
                "index does not end at the footer (size mismatch with the file)",
            ));
        }
        Ok((f, stored))
    }
}

/// One entry of the page index: a run of consecutive pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEntry {
    /// First page of the run.
    pub first_page: u64,
    /// Number of pages (> 0).
    pub page_count: u64,
    /// Absolute file offset of the run's data (for zero runs: where it would be).
    pub data_offset: u64,
    /// Bytes stored on disk (0 for a zero run).
    pub stored_len: u64,
    /// How the data is stored.
    pub kind: RunKind,
    /// crc32c of the stored bytes (0 for a zero run).
    pub crc: u32,
}

impl RunEntry {
    /// One past the last page.
    pub fn end_page(&self) -> u64 {
        self.first_page + self.page_count
    }

    /// Checks the run's stored bytes against its checksum.
    pub(crate) fn check_crc(&self, path: &Path, stored: &[u8]) -> Result<(), CorruptError> {
        let computed = crc32c::crc32c(stored);
        expect_crc(path, self.data_offset, "run data", self.crc, computed)
    }

    /// The page bytes of a run whose stored bytes the caller has verified with
    /// [`check_crc`](Self::check_crc): `stored` itself for a raw run, decompressed into `out`
    /// (and checked to decode to exactly its pages) for an lz4 run.
    pub(crate) fn decode_checked<'b>(
        &self,
        path: &Path,
        page_size: u32,
        stored: &'b [u8],
        out: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], CorruptError> {
        if self.kind != RunKind::Lz4 {
            return Ok(stored);
        }
        let raw_len = (self.page_count * u64::from(page_size)) as usize;
        out.resize(raw_len, 0);
        let message = match lz4_flex::block::decompress_into(stored, out) {
            Ok(n) if n == raw_len => return Ok(&out[..]),
            Ok(n) => format!("decompressed to {n} bytes, expected {raw_len}"),
            Err(e) => e.to_string(),
        };
        Err(CorruptError::new(
            path,
            self.data_offset,
            Corruption::Decompress { message },
        ))
    }

    /// Serializes into `b` (RUN_ENTRY_LEN bytes).
    pub fn encode_into(&self, b: &mut [u8]) {
        put_u64(b, 0, self.first_page);
        put_u64(b, 8, self.page_count);
        put_u64(b, 16, self.data_offset);
        put_u64(b, 24, self.stored_len);
        b[32] = self.kind as u8;
        b[33..36].fill(0);
        put_u32(b, 36, self.crc);
    }
}

/// Encodes a list of runs as a page index.
pub fn encode_index(runs: &[RunEntry]) -> Vec<u8> {
    let mut v = vec![0u8; runs.len() * RUN_ENTRY_LEN];
    for (r, chunk) in runs.iter().zip(v.chunks_exact_mut(RUN_ENTRY_LEN)) {
        r.encode_into(chunk);
    }
    v
}

/// Decodes and validates a page index (`bytes` starts at `index_offset`).
///
/// Checks: kinds, non-empty ascending non-overlapping runs inside the region,
/// data contiguity from `HEADER_LEN` to `index_offset`, per-kind length rules,
/// and the totals against the footer.
pub fn decode_index(
    path: &Path,
    bytes: &[u8],
    header: &SegmentHeader,
    footer: &SegmentFooter,
) -> Result<Vec<RunEntry>, CorruptError> {
    let ps = u64::from(header.page_size);
    let page_count = header.page_count();
    let max_run = max_run_bytes(ps);
    let mut runs = Vec::with_capacity(bytes.len() / RUN_ENTRY_LEN);
    let mut cursor = HEADER_LEN as u64;
    let mut next_page = 0u64;
    let mut data_pages = 0u64;
    let mut zero_pages = 0u64;
    for (i, b) in bytes.chunks_exact(RUN_ENTRY_LEN).enumerate() {
        let off = footer.index_offset + (i * RUN_ENTRY_LEN) as u64;
        let bad = |rel: u64, field: &'static str, value: u64, reason: &'static str| {
            bad_field(path, off + rel, field, value, reason)
        };
        let first_page = le_u64(b, 0);
        let count = le_u64(b, 8);
        let data_offset = le_u64(b, 16);
        let stored_len = le_u64(b, 24);
        let kind =
            RunKind::from_u8(b[32]).ok_or_else(|| bad(32, "run kind", b[32].into(), "unknown"))?;
        if b[33..36].iter().any(|&x| x != 0) {
            return Err(bad(33, "run reserved", 0, "must be zero"));
        }
        let crc = le_u32(b, 36);
        if count == 0 {
            return Err(bad(8, "page_count", 0, "empty run"));
        }
        if first_page < next_page {
            return Err(bad(
                0,
                "first_page",
                first_page,
                "runs overlap or are not ascending",
            ));
        }
        let end = first_page
            .checked_add(count)
            .filter(|&e| e <= page_count)
            .ok_or_else(|| bad(8, "page_count", count, "run extends past the region"))?;
        next_page = end;
        if data_offset != cursor {
            return Err(bad(
                16,
                "data_offset",
                data_offset,
                "run data is not contiguous",
            ));
        }
        let raw_len = count * ps; // <= region_len, no overflow
        if kind != RunKind::Zero && raw_len > max_run {
            return Err(bad(
                8,
                "page_count",
                count,
                "run longer than the maximum run",
            ));
        }
        match kind {
            RunKind::Zero => {
                if stored_len != 0 || crc != 0 {
                    return Err(bad(24, "stored_len", stored_len, "zero run with data"));
                }
                zero_pages += count;
            }
            RunKind::Raw => {
                if stored_len != raw_len {
                    return Err(bad(
                        24,
                        "stored_len",
                        stored_len,
                        "raw run length != pages * page size",
                    ));
                }
                data_pages += count;
            }
            RunKind::Lz4 => {
                // lz4 cannot expand by more than ~255x: bounds the output
                // allocation by bytes actually present in the file.
                if !lz4_len_plausible(raw_len, stored_len) {
                    return Err(bad(
                        24,
                        "stored_len",
                        stored_len,
                        "implausible compressed length",
                    ));
                }
                data_pages += count;
            }
        }
        cursor = cursor
            .checked_add(stored_len)
            .filter(|&c| c <= footer.index_offset)
            .ok_or_else(|| {
                bad(
                    24,
                    "stored_len",
                    stored_len,
                    "run data extends past the data area",
                )
            })?;
        runs.push(RunEntry {
            first_page,
            page_count: count,
            data_offset,
            stored_len,
            kind,
            crc,
        });
    }
    let total_err = |field: &'static str, value: u64| {
        bad_field(
            path,
            footer.index_offset,
            field,
            value,
            "does not match the page index",
        )
    };
    if cursor != footer.index_offset {
        return Err(total_err("data_bytes", footer.data_bytes));
    }
    if data_pages != footer.data_pages {
        return Err(total_err("data_pages", footer.data_pages));
    }
    if zero_pages != footer.zero_pages {
        return Err(total_err("zero_pages", footer.zero_pages));
    }
    Ok(runs)
}

/// A segment fully decoded from memory by [`decode_segment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSegment {
    /// The header.
    pub header: SegmentHeader,
    /// The footer.
    pub footer: SegmentFooter,
    /// The page index.
    pub runs: Vec<RunEntry>,
}

/// Decodes and fully verifies a segment held in memory: header, footer,
/// index, every run's checksum and every compressed run's decoding. `path`
/// only names the file in errors. Never panics, whatever the bytes.
///
/// ```
/// use std::path::Path;
/// use writewatch_checkpoint::format::decode_segment;
/// assert!(decode_segment(Path::new("junk"), b"not a segment").is_err());
/// ```
pub fn decode_segment(path: &Path, bytes: &[u8]) -> Result<DecodedSegment, CorruptError> {
    let file_len = bytes.len() as u64;
    let head = &bytes[..bytes.len().min(HEADER_LEN)];
    let (header, footer, _) = decode_frame(path, head, file_len, |off, fb| {
        fb.copy_from_slice(&bytes[off as usize..]);
        Ok::<(), CorruptError>(())
    })?;
    // Bounds established by SegmentFooter::decode (index ends at the footer).
    let index = &bytes[footer.index_offset as usize..bytes.len() - FOOTER_LEN];
    footer.check_index(path, index)?;
    let runs = decode_index(path, index, &header, &footer)?;
    let mut out = Vec::new();
    for r in runs.iter().filter(|r| r.kind != RunKind::Zero) {
        let data = &bytes[r.data_offset as usize..(r.data_offset + r.stored_len) as usize];
        r.check_crc(path, data)?;
        r.decode_checked(path, header.page_size, data, &mut out)?;
    }
    Ok(DecodedSegment {
        header,
        footer,
        runs,
    })
}

/// Decodes the frame of a segment of `file_len` bytes: the header from `head` (the file's
/// first bytes, at most `HEADER_LEN`); then, once the file is known to be long enough for a
/// header and a footer, the footer from the bytes that `read_footer` puts in its buffer
/// (those at the footer's offset, its first argument), checked against the file size and
/// against the header's checksum. Returns the header, the footer and the footer's checksum.
pub(crate) fn decode_frame<E: From<CorruptError>>(
    path: &Path,
    head: &[u8],
    file_len: u64,
    read_footer: impl FnOnce(u64, &mut [u8; FOOTER_LEN]) -> Result<(), E>,
) -> Result<(SegmentHeader, SegmentFooter, u32), E> {
    let (header, header_crc) = SegmentHeader::decode(path, head, file_len)?;
    let min = (HEADER_LEN + FOOTER_LEN) as u64;
    if file_len < min {
        return Err(CorruptError::new(
            path,
            HEADER_LEN as u64,
            Corruption::Truncated {
                needed: min,
                file_len,
            },
        )
        .into());
    }
    let footer_off = file_len - FOOTER_LEN as u64;
    let mut fb = [0u8; FOOTER_LEN];
    read_footer(footer_off, &mut fb)?;
    let (footer, footer_crc) = SegmentFooter::decode(path, &fb, footer_off, file_len)?;
    expect_crc(
        path,
        footer_off + 48,
        "header (copy in footer)",
        footer.header_crc,
        header_crc,
    )?;
    Ok((header, footer, footer_crc))
}

/// Checks a checksum `computed` from the bytes at file offset `at` against the one `stored`.
fn expect_crc(
    path: &Path,
    at: u64,
    what: &'static str,
    stored: u32,
    computed: u32,
) -> Result<(), CorruptError> {
    if computed != stored {
        return Err(CorruptError::new(
            path,
            at,
            Corruption::Checksum {
                what,
                stored,
                computed,
            },
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = SegmentHeader {
            page_size: 4096,
            flags: FLAG_BASE,
            region_len: 4096 * 10,
            epoch: 3,
            parent_epoch: NO_PARENT,
        };
        let b = h.encode();
        let (d, _) = SegmentHeader::decode(Path::new("x"), &b, 1000).unwrap();
        assert_eq!(d, h);
    }
}
