//! The manifest codec: the committed chain, and the segment file names. See
//! `docs/format.md` for the byte layout.

use std::path::Path;

use super::common::{
    bad_field, check_geometry, le_u32, le_u64, put_u32, put_u64, GeometryFault, Preamble,
    FLAG_BASE, FOOTER_LEN, HEADER_LEN, KNOWN_FLAGS, MANIFEST_ENTRY_LEN, MANIFEST_HEADER_LEN,
    MANIFEST_MAGIC, NO_PARENT,
};
use crate::error::{CorruptError, Corruption};

/// The manifest's preamble.
const PREAMBLE: Preamble = Preamble {
    magic: MANIFEST_MAGIC,
    versioned: true,
    what: "manifest",
};

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

/// Name of the manifest file inside a store directory (the manifest object under a prefix).
pub const MANIFEST_NAME: &str = "MANIFEST";

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
        PREAMBLE.seal(&mut b);
        b
    }

    /// Parses and validates a manifest (the whole file content).
    ///
    /// Checks the structure and the chain: first entry is a base, epochs
    /// strictly ascending, each delta's parent is the previous entry.
    pub fn decode(path: &Path, b: &[u8]) -> Result<Manifest, CorruptError> {
        let len = b.len() as u64;
        let err = |off: u64, kind| CorruptError::new(path, off, kind);
        PREAMBLE.check_start(path, b, 0, MANIFEST_HEADER_LEN + 4, len)?;
        let n = le_u32(b, 12) as u64;
        let expected = MANIFEST_HEADER_LEN as u64 + n * MANIFEST_ENTRY_LEN as u64 + 4;
        if expected != len {
            return Err(bad_field(
                path,
                12,
                "entry_count",
                n,
                "does not match the manifest size",
            ));
        }
        PREAMBLE.check_crc(path, b, 0)?;
        let field = |off: u64, field: &'static str, value: u64, reason: &'static str| {
            bad_field(path, off, field, value, reason)
        };
        if le_u32(b, 28) != 0 {
            return Err(field(28, "reserved", le_u32(b, 28).into(), "must be zero"));
        }
        let m_page_size = le_u32(b, 24);
        let m_region_len = le_u64(b, 32);
        if n > 0 {
            let ps = u64::from(m_page_size);
            match check_geometry(ps, m_region_len) {
                Err(f @ GeometryFault::PageSize) => {
                    return Err(field(24, "page_size", ps, f.reason()))
                }
                Err(f @ GeometryFault::RegionLen) => {
                    return Err(field(32, "region_len", m_region_len, f.reason()))
                }
                Ok(()) => {}
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
