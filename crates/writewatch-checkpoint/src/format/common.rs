//! What the segment and manifest codecs share: constants, little-endian field access, the
//! preamble check of every checksummed structure, and the geometry rule.

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
pub(super) const KNOWN_FLAGS: u32 = FLAG_BASE | FLAG_COMPRESSED;

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

/// Which part of a region's geometry breaks the format's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GeometryFault {
    /// The page size is not a power of two in 512 B ..= 1 GiB.
    PageSize,
    /// The region length is zero, not a multiple of the page size, or over 128 TiB.
    RegionLen,
}

impl GeometryFault {
    /// Why, in words (for corruption reports).
    pub(crate) fn reason(self) -> &'static str {
        match self {
            GeometryFault::PageSize => "must be a power of two in 512..=1GiB",
            GeometryFault::RegionLen => {
                "must be a non-zero multiple of the page size, at most 128 TiB"
            }
        }
    }
}

/// The one geometry rule of the format (segment headers, the manifest, and the writer's
/// input): the page size is a power of two in 512 B ..= 1 GiB, and the region length a
/// non-zero multiple of it, at most 128 TiB. The page size is checked first.
pub(crate) fn check_geometry(page_size: u64, region_len: u64) -> Result<(), GeometryFault> {
    if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(GeometryFault::PageSize);
    }
    if region_len == 0 || region_len % page_size != 0 || region_len > MAX_REGION_LEN {
        return Err(GeometryFault::RegionLen);
    }
    Ok(())
}

pub(super) fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

pub(super) fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

pub(super) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// A field with an invalid value, at file offset `off`.
pub(super) fn bad_field(
    path: &Path,
    off: u64,
    field: &'static str,
    value: u64,
    reason: &'static str,
) -> CorruptError {
    CorruptError::new(
        path,
        off,
        Corruption::Field {
            field,
            value,
            reason,
        },
    )
}

/// The preamble every checksummed structure of the format shares: magic bytes at its
/// offset 0, for the file headers the format version at offset 8, and a crc32c of all its
/// bytes but the last four stored in those four (little-endian).
///
/// Checked in two steps, [`check_start`](Self::check_start) then
/// [`check_crc`](Self::check_crc), so that a decoder can check its length field in
/// between (the manifest's length depends on its entry count).
#[derive(Debug, Clone, Copy)]
pub(super) struct Preamble {
    /// Magic bytes at offset 0.
    pub(super) magic: [u8; 8],
    /// Whether the format version follows the magic (the file headers, not the footer).
    pub(super) versioned: bool,
    /// The structure, as named in checksum errors.
    pub(super) what: &'static str,
}

impl Preamble {
    /// Checks that `b` (the structure's bytes, at file offset `at` of a file of `file_len`
    /// bytes) holds at least `min_len` bytes, then the magic and the version.
    pub(super) fn check_start(
        &self,
        path: &Path,
        b: &[u8],
        at: u64,
        min_len: usize,
        file_len: u64,
    ) -> Result<(), CorruptError> {
        let err = |rel: u64, kind| CorruptError::new(path, at + rel, kind);
        if b.len() < min_len {
            return Err(err(
                0,
                Corruption::Truncated {
                    needed: min_len as u64,
                    file_len,
                },
            ));
        }
        if b[0..8] != self.magic {
            return Err(err(0, Corruption::BadMagic));
        }
        if self.versioned {
            let version = le_u32(b, 8);
            if version != FORMAT_VERSION {
                return Err(err(8, Corruption::UnsupportedVersion { found: version }));
            }
        }
        Ok(())
    }

    /// Checks the trailing checksum of `b` (the whole structure, at file offset `at`);
    /// returns it.
    pub(super) fn check_crc(&self, path: &Path, b: &[u8], at: u64) -> Result<u32, CorruptError> {
        let end = b.len() - 4;
        let stored = le_u32(b, end);
        let computed = crc32c::crc32c(&b[..end]);
        if stored != computed {
            return Err(CorruptError::new(
                path,
                at + end as u64,
                Corruption::Checksum {
                    what: self.what,
                    stored,
                    computed,
                },
            ));
        }
        Ok(stored)
    }

    /// Writes the magic, the version (if any) and, over the rest of `b`, the trailing
    /// checksum; returns the checksum. The other fields must be in place.
    pub(super) fn seal(&self, b: &mut [u8]) -> u32 {
        b[0..8].copy_from_slice(&self.magic);
        if self.versioned {
            put_u32(b, 8, FORMAT_VERSION);
        }
        let end = b.len() - 4;
        let crc = crc32c::crc32c(&b[..end]);
        put_u32(b, end, crc);
        crc
    }
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
    fn geometry_rule() {
        assert_eq!(check_geometry(4096, 4096 * 3), Ok(()));
        assert_eq!(check_geometry(4000, 4000), Err(GeometryFault::PageSize));
        assert_eq!(check_geometry(256, 256), Err(GeometryFault::PageSize));
        assert_eq!(check_geometry(4096, 0), Err(GeometryFault::RegionLen));
        assert_eq!(check_geometry(4096, 4097), Err(GeometryFault::RegionLen));
        assert_eq!(
            check_geometry(4096, MAX_REGION_LEN + 4096),
            Err(GeometryFault::RegionLen)
        );
    }
}
