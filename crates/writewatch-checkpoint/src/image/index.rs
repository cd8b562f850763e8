//! The `IMAGE` index: versioned JSON body behind a one-line header with its CRC-32C.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, IoError};
use crate::files::{fresh_nonce, fsync_dir, TempFile, TEMP_PREFIX};

/// File name of the index in an image directory.
pub const IMAGE_NAME: &str = "IMAGE";
/// The index format version this crate writes and reads.
pub const IMAGE_VERSION: u32 = 1;
const MAGIC: &str = "WWPROCIMG";

/// What backs a range of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Backing {
    /// Anonymous memory; `name` is the maps pseudo-path (`[heap]`, `[stack]`, `[anon:x]`).
    Anonymous {
        /// The pseudo-path shown in `/proc/PID/maps`, if any.
        name: Option<String>,
    },
    /// A file mapping (private or shared): the file and the offset of the range's start.
    File {
        /// The mapped file's path as `/proc/PID/maps` shows it.
        path: String,
        /// Offset in the file of the range's first byte.
        offset: u64,
    },
}

/// One address range of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRange {
    /// First address.
    pub start: u64,
    /// Length in bytes (a multiple of the page size).
    pub len: u64,
    /// Protection and sharing as `/proc/PID/maps` shows it (`rw-p`, `rw-s`).
    pub prot: String,
    /// What backs the range.
    pub backing: Backing,
    /// The store holding the content, relative to the image directory (`gen-3/r12`).
    pub store: String,
    /// The store's epoch holding the content at the image instant.
    pub epoch: u64,
}

impl ImageRange {
    /// A range whose content is in store `r<id>` of the generation being written (the
    /// writer fills in the store path when it commits).
    pub fn new(start: u64, len: u64, prot: &str, backing: Backing, id: u64) -> Self {
        Self {
            start,
            len,
            prot: prot.to_string(),
            backing,
            store: format!("r{id}"),
            epoch: u64::MAX,
        }
    }
}

/// The committed index of an image directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIndex {
    /// Format version ([`IMAGE_VERSION`]).
    pub version: u32,
    /// The process the image was taken from.
    pub pid: u32,
    /// The dump generation (one per dump into this directory).
    pub generation: u64,
    /// Page size of every range.
    pub page_size: u64,
    /// Wall-clock time of the commit, milliseconds since the Unix epoch.
    pub committed_unix_ms: u64,
    /// The ranges, ascending by address, non-overlapping.
    pub ranges: Vec<ImageRange>,
}

/// Errors reading, writing or checking a process image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The directory holds no `IMAGE`.
    #[error("{}: not a process image (no IMAGE file); run `writewatch dump --pid PID --dir DIR` first", .0.display())]
    NotAnImage(PathBuf),
    /// The `IMAGE` file is damaged.
    #[error("{}: corrupt IMAGE index: {what}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Written by a newer writewatch.
    #[error("{}: IMAGE format version {found} is not supported (this build reads {IMAGE_VERSION})", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The directory holds files that are not ours.
    #[error("{}: directory is not empty and holds no process image; name a new or empty directory", .0.display())]
    NotEmpty(PathBuf),
    /// Another process writes the image.
    #[error("{}: the image is locked by another writer", .0.display())]
    Locked(PathBuf),
    /// A store of the image failed.
    #[error("store {store} of the image")]
    Store {
        /// The store (relative path).
        store: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Bad input (a range that does not fit the image, ...).
    #[error("{0}")]
    Invalid(String),
}

impl ImageError {
    /// Whether the error is a detected corruption (exit code 1 in the CLI).
    pub fn is_corruption(&self) -> bool {
        match self {
            ImageError::Corrupt { .. } => true,
            ImageError::Store { source, .. } => {
                source
                    .downcast_ref::<crate::VerifyError>()
                    .is_some_and(crate::CheckpointError::is_corruption)
                    || source
                        .downcast_ref::<crate::RestoreError>()
                        .is_some_and(crate::CheckpointError::is_corruption)
                    || source
                        .downcast_ref::<crate::OpenError>()
                        .is_some_and(crate::CheckpointError::is_corruption)
            }
            _ => false,
        }
    }
}

/// Reads and checks `DIR/IMAGE` (header, CRC-32C, version, range order).
pub fn read_image(dir: &Path) -> Result<ImageIndex, ImageError> {
    let path = dir.join(IMAGE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImageError::NotAnImage(dir.to_path_buf()))
        }
        Err(e) => return Err(IoError::new("read", &path, e).into()),
    };
    let corrupt = |what: &str| ImageError::Corrupt {
        path: path.clone(),
        what: what.to_string(),
    };
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header line"))?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| corrupt("header is not text"))?;
    let f: Vec<&str> = header.split(' ').collect();
    if f.len() != 4 || f[0] != MAGIC {
        return Err(corrupt("bad header (expected `WWPROCIMG VERSION CRC LEN`)"));
    }
    let version: u32 = f[1].parse().map_err(|_| corrupt("bad version"))?;
    let crc = u32::from_str_radix(f[2], 16).map_err(|_| corrupt("bad crc field"))?;
    let len: usize = f[3].parse().map_err(|_| corrupt("bad length field"))?;
    let body = &bytes[nl + 1..];
    if body.len() != len {
        return Err(corrupt(&format!(
            "body is {} bytes, header says {len} (truncated?)",
            body.len()
        )));
    }
    if crc32c::crc32c(body) != crc {
        return Err(corrupt("CRC-32C mismatch"));
    }
    if version != IMAGE_VERSION {
        return Err(ImageError::Version {
            path,
            found: version,
        });
    }
    let index: ImageIndex =
        serde_json::from_slice(body).map_err(|e| corrupt(&format!("bad JSON: {e}")))?;
    let mut end = 0;
    for r in &index.ranges {
        if r.start < end || r.len == 0 || index.page_size == 0 || r.len % index.page_size != 0 {
            return Err(corrupt(
                "ranges overlap, are unordered or not page multiples",
            ));
        }
        if r.store.contains("..") || r.store.starts_with('/') {
            return Err(corrupt("a store path leaves the image directory"));
        }
        end = r.start + r.len;
    }
    Ok(index)
}

/// Atomically replaces `DIR/IMAGE` with `index`: temporary file, `fdatasync`, rename,
/// directory `fsync`. The rename is the commit point.
pub(crate) fn write_image(dir: &Path, index: &ImageIndex) -> Result<(), ImageError> {
    let body = serde_json::to_vec_pretty(index)
        .map_err(|e| ImageError::Invalid(format!("serialising the index: {e}")))?;
    let header = format!(
        "{MAGIC} {IMAGE_VERSION} {:08x} {}\n",
        crc32c::crc32c(&body),
        body.len()
    );
    let tmp = dir.join(format!("{TEMP_PREFIX}IMAGE-{:016x}", fresh_nonce()));
    let (mut guard, mut file) = TempFile::create(tmp.clone())?;
    file.write_all(header.as_bytes())
        .and_then(|()| file.write_all(&body))
        .ctx("write", &tmp)?;
    file.sync_data().ctx("fdatasync", &tmp)?;
    let path = dir.join(IMAGE_NAME);
    std::fs::rename(&tmp, &path).ctx("rename", &path)?;
    guard.disarm();
    fsync_dir(dir)?;
    Ok(())
}
