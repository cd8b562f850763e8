//! On-disk layout: constants, encoders and validating decoders.
//!
//! See `docs/format.md` for the byte layout. Everything is little-endian and
//! fixed-size; every length read from disk is checked against the file size
//! before it drives an allocation.

use std::path::Path;

use crate::error::{CorruptError, Corruption};

/// Magic bytes at offset 0 of a segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WWCKSEG\0";
/// Magic bytes at the start of a segment footer.
pub const FOOTER_MAGIC: [u8; 8] = *b"WWCKEND\0";
/// Magic bytes at offset 0 of the manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"WWCKMAN\0";
/// Format version written and read by this library (segments and manifest).
pub const FORMAT_VERSION: u32 = 1;
/// Size of the segment header.
pub const HEADER_LEN: usize = 128;
/// Size of the segment footer.
pub const FOOTER_LEN: usize = 64;
/// Size of one page-index entry.
pub const RUN_ENTRY_LEN: usize = 40;
/// Size of the manifest header.
pub const MANIFEST_HEADER_LEN: usize = 40;
/// Size of one manifest entry.
pub const MANIFEST_ENTRY_LEN: usize = 64;
/// Data runs are split so that their uncompressed size is at most this
/// (or one page, if pages are larger).
pub const MAX_RUN_BYTES: u64 = 1 << 20;
/// Smallest accepted page size.
pub const MIN_PAGE_SIZE: u64 = 512;
/// Largest accepted page size (1 GiB huge pages).
pub const MAX_PAGE_SIZE: u64 = 1 << 30;
/// Largest accepted region length (128 TiB, the x86-64 user address space).
pub const MAX_REGION_LEN: u64 = 1 << 47;
/// Parent epoch value stored for a base segment.
pub const NO_PARENT: u64 = u64::MAX;

/// Header flag: this segment is a base (pages not listed are zero).
pub const FLAG_BASE: u32 = 1;
/// Header flag: at least one run is lz4-compressed.
pub const FLAG_COMPRESSED: u32 = 2;
const KNOWN_FLAGS: u32 = FLAG_BASE | FLAG_COMPRESSED;

/// Largest uncompressed run for a page size.
pub fn max_run_bytes(page_size: u64) -> u64 {
    MAX_RUN_BYTES.max(page_size)
}

/// Whether `stored` compressed bytes can plausibly decode to `raw` bytes:
/// compressed data must be smaller than raw, and lz4 cannot expand by more
/// than ~255x. This bounds the decompression buffer by bytes present in the
/// file; the writer stores a run raw when this does not hold.
pub fn lz4_len_plausible(raw: u64, stored: u64) -> bool {
    stored > 0 && stored < raw && raw <= stored.saturating_mul(255)
}

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

fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
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
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        put_u32(&mut b, 8, FORMAT_VERSION);
        put_u32(&mut b, 12, HEADER_LEN as u32);
        put_u32(&mut b, 16, self.page_size);
        put_u32(&mut b, 20, self.flags);
        put_u64(&mut b, 24, self.region_len);
        put_u64(&mut b, 32, self.epoch);
        put_u64(&mut b, 40, self.parent_epoch);
        let crc = crc32c::crc32c(&b[..HEADER_LEN - 4]);
        put_u32(&mut b, HEADER_LEN - 4, crc);
        b
    }

    /// Parses and validates a header. `b` must be the first bytes of the file
    /// (at least `HEADER_LEN`, else `Truncated`).
    pub fn decode(
        path: &Path,
        b: &[u8],
        file_len: u64,
    ) -> Result<(SegmentHeader, u32), CorruptError> {
        let err = |off: u64, kind| CorruptError::new(path, off, kind);
        if b.len() < HEADER_LEN {
            return Err(err(
                0,
                Corruption::Truncated {
                    needed: HEADER_LEN as u64,
                    file_len,
                },
            ));
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(err(0, Corruption::BadMagic));
        }
        let version = le_u32(b, 8);
        if version != FORMAT_VERSION {
            return Err(err(8, Corruption::UnsupportedVersion { found: version }));
        }
        let stored = le_u32(b, HEADER_LEN - 4);
        let computed = crc32c::crc32c(&b[..HEADER_LEN - 4]);
        if stored != computed {
            return Err(err(
                (HEADER_LEN - 4) as u64,
                Corruption::Checksum {
                    what: "header",
                    stored,
                    computed,
                },
            ));
        }
        let field = |off: u64, field: &'static str, value: u64, reason: &'static str| {
            err(
                off,
                Corruption::Field {
                    field,
                    value,
                    reason,
                },
            )
        };
        let header_len = le_u32(b, 12);
        if header_len as usize != HEADER_LEN {
            return Err(field(12, "header_len", header_len.into(), "must be 128"));
        }
        let page_size = le_u32(b, 16);
        let ps = u64::from(page_size);
        if !ps.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&ps) {
            return Err(field(
                16,
                "page_size",
                ps,
                "must be a power of two in 512..=1GiB",
            ));
        }
        let flags = le_u32(b, 20);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(field(20, "flags", flags.into(), "unknown flag bits"));
        }
        let region_len = le_u64(b, 24);
        if region_len == 0 || region_len % ps != 0 || region_len > MAX_REGION_LEN {
            return Err(field(
                24,
                "region_len",
                region_len,
                "must be a non-zero multiple of the page size, at most 128 TiB",
            ));
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
        if computed != self.index_crc {
            return Err(CorruptError::new(
                path,
                self.index_offset,
                Corruption::Checksum {
                    what: "index",
                    stored: self.index_crc,
                    computed,
                },
            ));
        }
        Ok(())
    }

    /// Serializes the footer; returns the bytes and the footer checksum.
    pub fn encode(&self) -> ([u8; FOOTER_LEN], u32) {
        let mut b = [0u8; FOOTER_LEN];
        b[0..8].copy_from_slice(&FOOTER_MAGIC);
        put_u64(&mut b, 8, self.index_offset);
        put_u64(&mut b, 16, self.run_count);
        put_u64(&mut b, 24, self.data_pages);
        put_u64(&mut b, 32, self.zero_pages);
        put_u64(&mut b, 40, self.data_bytes);
        put_u32(&mut b, 48, self.header_crc);
        put_u32(&mut b, 52, self.index_crc);
        let crc = crc32c::crc32c(&b[..FOOTER_LEN - 4]);
        put_u32(&mut b, FOOTER_LEN - 4, crc);
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
        let err = |rel: u64, kind| CorruptError::new(path, footer_off + rel, kind);
        if b[0..8] != FOOTER_MAGIC {
            return Err(err(0, Corruption::BadMagic));
        }
        let stored = le_u32(b, FOOTER_LEN - 4);
        let computed = crc32c::crc32c(&b[..FOOTER_LEN - 4]);
        if stored != computed {
            return Err(err(
                (FOOTER_LEN - 4) as u64,
                Corruption::Checksum {
                    what: "footer",
                    stored,
                    computed,
                },
            ));
        }
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
            err(
                rel,
                Corruption::Field {
                    field,
                    value,
                    reason,
                },
            )
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
            CorruptError::new(
                path,
                off + rel,
                Corruption::Field {
                    field,
                    value,
                    reason,
                },
            )
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
        match kind {
            RunKind::Zero => {
                if stored_len != 0 || crc != 0 {
                    return Err(bad(24, "stored_len", stored_len, "zero run with data"));
                }
                zero_pages += count;
            }
            RunKind::Raw => {
                if raw_len > max_run {
                    return Err(bad(
                        8,
                        "page_count",
                        count,
                        "run longer than the maximum run",
                    ));
                }
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
                if raw_len > max_run {
                    return Err(bad(
                        8,
                        "page_count",
                        count,
                        "run longer than the maximum run",
                    ));
                }
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
        CorruptError::new(
            path,
            footer.index_offset,
            Corruption::Field {
                field,
                value,
                reason: "does not match the page index",
            },
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

/// One entry of the manifest: a committed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Epoch.
    pub epoch: u64,
    /// Parent epoch (`NO_PARENT` for a base).
    pub parent_epoch: u64,
    /// Unique part of the file name.
    pub nonce: u64,
    /// Segment file length.
    pub file_len: u64,
    /// Segment header flags.
    pub flags: u32,
    /// Segment footer checksum (covers header, index and thus all data crcs).
    pub footer_crc: u32,
    /// Pages with data.
    pub data_pages: u64,
    /// Pages in zero runs.
    pub zero_pages: u64,
    /// Stored data bytes.
    pub data_bytes: u64,
}

impl ManifestEntry {
    /// Segment file name for this entry.
    pub fn file_name(&self) -> String {
        segment_file_name(self.epoch, self.nonce)
    }
}

/// File name of a segment.
pub fn segment_file_name(epoch: u64, nonce: u64) -> String {
    format!("seg-{epoch:016x}-{nonce:016x}.wws")
}

/// Whether a file name looks like one of our segment names.
pub fn is_segment_file_name(name: &str) -> bool {
    name.len() == 4 + 16 + 1 + 16 + 4
        && name.starts_with("seg-")
        && name.ends_with(".wws")
        && name.as_bytes()[20] == b'-'
}

/// The decoded manifest: the chain, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// Incremented on each commit.
    pub generation: u64,
    /// Page size of all segments (0 when empty).
    pub page_size: u32,
    /// Region length of all segments (0 when empty).
    pub region_len: u64,
    /// Segments, oldest first.
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Serializes the manifest.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.entries.len();
        let mut b = vec![0u8; MANIFEST_HEADER_LEN + n * MANIFEST_ENTRY_LEN + 4];
        b[0..8].copy_from_slice(&MANIFEST_MAGIC);
        put_u32(&mut b, 8, FORMAT_VERSION);
        put_u32(&mut b, 12, n as u32);
        put_u64(&mut b, 16, self.generation);
        put_u32(&mut b, 24, self.page_size);
        put_u64(&mut b, 32, self.region_len);
        for (i, e) in self.entries.iter().enumerate() {
            let o = MANIFEST_HEADER_LEN + i * MANIFEST_ENTRY_LEN;
            put_u64(&mut b, o, e.epoch);
            put_u64(&mut b, o + 8, e.parent_epoch);
            put_u64(&mut b, o + 16, e.nonce);
            put_u64(&mut b, o + 24, e.file_len);
            put_u32(&mut b, o + 32, e.flags);
            put_u32(&mut b, o + 36, e.footer_crc);
            put_u64(&mut b, o + 40, e.data_pages);
            put_u64(&mut b, o + 48, e.zero_pages);
            put_u64(&mut b, o + 56, e.data_bytes);
        }
        let end = b.len() - 4;
        let crc = crc32c::crc32c(&b[..end]);
        put_u32(&mut b, end, crc);
        b
    }

    /// Parses and validates a manifest (the whole file content).
    ///
    /// Checks the structure and the chain: first entry is a base, epochs
    /// strictly ascending, each delta's parent is the previous entry.
    pub fn decode(path: &Path, b: &[u8]) -> Result<Manifest, CorruptError> {
        let len = b.len() as u64;
        let err = |off: u64, kind| CorruptError::new(path, off, kind);
        if b.len() < MANIFEST_HEADER_LEN + 4 {
            return Err(err(
                0,
                Corruption::Truncated {
                    needed: (MANIFEST_HEADER_LEN + 4) as u64,
                    file_len: len,
                },
            ));
        }
        if b[0..8] != MANIFEST_MAGIC {
            return Err(err(0, Corruption::BadMagic));
        }
        let version = le_u32(b, 8);
        if version != FORMAT_VERSION {
            return Err(err(8, Corruption::UnsupportedVersion { found: version }));
        }
        let n = le_u32(b, 12) as u64;
        let expected = MANIFEST_HEADER_LEN as u64 + n * MANIFEST_ENTRY_LEN as u64 + 4;
        if expected != len {
            return Err(err(
                12,
                Corruption::Field {
                    field: "entry_count",
                    value: n,
                    reason: "does not match the manifest size",
                },
            ));
        }
        let end = b.len() - 4;
        let stored = le_u32(b, end);
        let computed = crc32c::crc32c(&b[..end]);
        if stored != computed {
            return Err(err(
                end as u64,
                Corruption::Checksum {
                    what: "manifest",
                    stored,
                    computed,
                },
            ));
        }
        let field = |off: u64, field: &'static str, value: u64, reason: &'static str| {
            err(
                off,
                Corruption::Field {
                    field,
                    value,
                    reason,
                },
            )
        };
        if le_u32(b, 28) != 0 {
            return Err(field(28, "reserved", le_u32(b, 28).into(), "must be zero"));
        }
        let m_page_size = le_u32(b, 24);
        let m_region_len = le_u64(b, 32);
        if n > 0 {
            let ps = u64::from(m_page_size);
            if !ps.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&ps) {
                return Err(field(24, "page_size", ps, "invalid page size"));
            }
            if m_region_len == 0 || m_region_len % ps != 0 || m_region_len > MAX_REGION_LEN {
                return Err(field(
                    32,
                    "region_len",
                    m_region_len,
                    "invalid region length",
                ));
            }
        } else if m_page_size != 0 || m_region_len != 0 {
            return Err(field(
                24,
                "page_size",
                m_page_size.into(),
                "empty manifest with a geometry",
            ));
        }
        let mut entries = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            let o = MANIFEST_HEADER_LEN + i * MANIFEST_ENTRY_LEN;
            let e = ManifestEntry {
                epoch: le_u64(b, o),
                parent_epoch: le_u64(b, o + 8),
                nonce: le_u64(b, o + 16),
                file_len: le_u64(b, o + 24),
                flags: le_u32(b, o + 32),
                footer_crc: le_u32(b, o + 36),
                data_pages: le_u64(b, o + 40),
                zero_pages: le_u64(b, o + 48),
                data_bytes: le_u64(b, o + 56),
            };
            let o = o as u64;
            if e.flags & !KNOWN_FLAGS != 0 {
                return Err(field(o + 32, "flags", e.flags.into(), "unknown flag bits"));
            }
            let is_base = e.flags & FLAG_BASE != 0;
            match entries.last() {
                None if !is_base => {
                    return Err(err(
                        o,
                        Corruption::Chain {
                            reason: format!("oldest segment (epoch {}) is not a base", e.epoch),
                        },
                    ))
                }
                Some(prev) => {
                    let prev: &ManifestEntry = prev;
                    if e.epoch <= prev.epoch {
                        return Err(err(
                            o,
                            Corruption::Chain {
                                reason: format!("epoch {} follows epoch {}", e.epoch, prev.epoch),
                            },
                        ));
                    }
                    if !is_base && e.parent_epoch != prev.epoch {
                        return Err(err(
                            o + 8,
                            Corruption::Chain {
                                reason: format!(
                                    "delta {} has parent {} but the previous segment is {}",
                                    e.epoch, e.parent_epoch, prev.epoch
                                ),
                            },
                        ));
                    }
                }
                None => {}
            }
            if is_base && e.parent_epoch != NO_PARENT {
                return Err(field(
                    o + 8,
                    "parent_epoch",
                    e.parent_epoch,
                    "a base has no parent",
                ));
            }
            let min_len = (HEADER_LEN + FOOTER_LEN) as u64;
            if e.file_len < min_len {
                return Err(field(
                    o + 24,
                    "file_len",
                    e.file_len,
                    "too small for a segment",
                ));
            }
            entries.push(e);
        }
        Ok(Manifest {
            generation: le_u64(b, 16),
            page_size: m_page_size,
            region_len: m_region_len,
            entries,
        })
    }
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
    let (header, header_crc) =
        SegmentHeader::decode(path, &bytes[..bytes.len().min(HEADER_LEN)], file_len)?;
    let min = HEADER_LEN + FOOTER_LEN;
    if bytes.len() < min {
        return Err(CorruptError::new(
            path,
            HEADER_LEN as u64,
            Corruption::Truncated {
                needed: min as u64,
                file_len,
            },
        ));
    }
    let footer_off = bytes.len() - FOOTER_LEN;
    let mut fb = [0u8; FOOTER_LEN];
    fb.copy_from_slice(&bytes[footer_off..]);
    let (footer, _) = SegmentFooter::decode(path, &fb, footer_off as u64, file_len)?;
    if footer.header_crc != header_crc {
        return Err(CorruptError::new(
            path,
            footer_off as u64 + 48,
            Corruption::Checksum {
                what: "header (copy in footer)",
                stored: footer.header_crc,
                computed: header_crc,
            },
        ));
    }
    // Bounds established by SegmentFooter::decode (index ends at the footer).
    let index = &bytes[footer.index_offset as usize..footer_off];
    footer.check_index(path, index)?;
    let runs = decode_index(path, index, &header, &footer)?;
    let mut out = Vec::new();
    for r in runs.iter().filter(|r| r.kind != RunKind::Zero) {
        let data = &bytes[r.data_offset as usize..(r.data_offset + r.stored_len) as usize];
        let computed = crc32c::crc32c(data);
        if computed != r.crc {
            return Err(CorruptError::new(
                path,
                r.data_offset,
                Corruption::Checksum {
                    what: "run data",
                    stored: r.crc,
                    computed,
                },
            ));
        }
        if r.kind == RunKind::Lz4 {
            let raw_len = (r.page_count * u64::from(header.page_size)) as usize;
            out.resize(raw_len, 0);
            match lz4_flex::block::decompress_into(data, &mut out) {
                Ok(n) if n == raw_len => {}
                other => {
                    return Err(CorruptError::new(
                        path,
                        r.data_offset,
                        Corruption::Decompress {
                            message: format!("{other:?}"),
                        },
                    ))
                }
            }
        }
    }
    Ok(DecodedSegment {
        header,
        footer,
        runs,
    })
}

/// Fast all-zero check (u64 lanes, which the compiler vectorizes).
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    for c in &mut chunks {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            acc |= u64::from_ne_bytes(a);
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_check() {
        let mut v = vec![0u8; 4096 + 7];
        assert!(is_zero(&v));
        for i in [0, 63, 64, 4095, 4096, 4102] {
            v[i] = 1;
            assert!(!is_zero(&v));
            v[i] = 0;
        }
    }

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
