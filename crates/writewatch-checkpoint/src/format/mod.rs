//! On-disk layout: constants, encoders and validating decoders.
//!
//! See `docs/format.md` for the byte layout. Everything is little-endian and
//! fixed-size; every length read from disk is checked against the file size
//! before it drives an allocation.
//!
//! * `common`: the constants, the preamble check (magic, version, length, trailing
//!   checksum) and the geometry rule shared by both codecs;
//! * `segment`: segment header, footer, page index, in-memory segment decoder;
//! * `manifest`: the manifest and the segment file names.
//!
//! Public for the fuzz target and the property tests, not part of the documented API.

mod common;
mod manifest;
mod segment;

pub(crate) use common::{check_geometry, GeometryFault};
pub use common::{
    is_zero, lz4_len_plausible, max_run_bytes, FLAG_BASE, FLAG_COMPRESSED, FOOTER_LEN,
    FOOTER_MAGIC, FORMAT_VERSION, HEADER_LEN, MANIFEST_ENTRY_LEN, MANIFEST_HEADER_LEN,
    MANIFEST_MAGIC, MAX_PAGE_SIZE, MAX_REGION_LEN, MAX_RUN_BYTES, MIN_PAGE_SIZE, NO_PARENT,
    RUN_ENTRY_LEN, SEGMENT_MAGIC,
};
pub use manifest::{
    is_segment_file_name, segment_file_name, Manifest, ManifestEntry, MANIFEST_NAME,
};
pub(crate) use segment::decode_frame;
pub use segment::{
    decode_index, decode_segment, encode_index, DecodedSegment, RunEntry, RunKind, SegmentFooter,
    SegmentHeader,
};
