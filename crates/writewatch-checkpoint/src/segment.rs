//! Reading and validating segment files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{CorruptError, Corruption, IoContext, IoError, ReadError};
use crate::format::{
    decode_frame, decode_index, RunEntry, RunKind, SegmentHeader, HEADER_LEN, RUN_ENTRY_LEN,
};
use crate::remote::frame::Prefetched;
use crate::remote::ObjectBackend;
use crate::sys;

/// Where a segment's bytes are read from.
#[derive(Debug)]
pub(crate) enum SegSrc {
    /// A local file.
    File(File),
    /// An object (name under the store prefix).
    Object(Arc<ObjectBackend>, String),
}

impl SegSrc {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        match self {
            SegSrc::File(f) => f.read_exact_at(buf, off),
            SegSrc::Object(b, name) => {
                if buf.is_empty() {
                    return Ok(());
                }
                let got = b.get_range(name, off..off + buf.len() as u64)?;
                if got.len() != buf.len() {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.copy_from_slice(&got);
                Ok(())
            }
        }
    }

    /// The local file, if the segment is one.
    pub(crate) fn file(&self) -> Option<&File> {
        match self {
            SegSrc::File(f) => Some(f),
            SegSrc::Object(..) => None,
        }
    }
}

/// An open, structurally validated segment (header, footer and index
/// checksums verified; run data not yet read).
#[derive(Debug)]
pub(crate) struct SegmentFile {
    pub(crate) path: PathBuf,
    pub(crate) src: SegSrc,
    pub(crate) header: SegmentHeader,
    pub(crate) footer_crc: u32,
    pub(crate) file_len: u64,
    pub(crate) runs: Vec<RunEntry>,
}

/// Reads `buf.len()` bytes at `off`: from `pre` if it holds them, else from `file`.
fn read_exact_at(
    file: &SegSrc,
    pre: Option<&Prefetched>,
    path: &Path,
    buf: &mut [u8],
    off: u64,
    file_len: u64,
) -> Result<(), ReadError> {
    if pre.is_some_and(|p| p.read_at(buf, off)) {
        return Ok(());
    }
    file.read_exact_at(buf, off)
        .map_err(|e| read_failure(path, e, off, buf.len() as u64, file_len))
}

/// The error of a failed exact read of `needed` bytes at `off`: a premature end of file is
/// a truncated file, anything else an I/O error.
pub(crate) fn read_failure(
    path: &Path,
    e: std::io::Error,
    off: u64,
    needed: u64,
    file_len: u64,
) -> ReadError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ReadError::Corrupt(CorruptError::new(
            path,
            off,
            Corruption::Truncated { needed, file_len },
        ))
    } else {
        ReadError::Io(IoError::new("read", path, e))
    }
}

impl SegmentFile {
    /// Opens and validates a segment's structure.
    pub(crate) fn open(path: &Path) -> Result<SegmentFile, ReadError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CorruptError::new(path, 0, Corruption::Missing).into())
            }
            Err(e) => return Err(IoError::new("open", path, e).into()),
        };
        let file_len = file.metadata().ctx("stat", path)?.len();
        let _ = sys::fadvise(&file, 0, 0, sys::Advice::Sequential);
        Self::from_src(path, SegSrc::File(file), file_len, None)
    }

    /// Opens and validates a segment stored as object `name` (shown as `path`).
    pub(crate) fn open_object(
        backend: &Arc<ObjectBackend>,
        name: &str,
        path: &Path,
    ) -> Result<SegmentFile, ReadError> {
        let Some(len) = backend.size(name)? else {
            return Err(CorruptError::new(path, 0, Corruption::Missing).into());
        };
        Self::from_src(
            path,
            SegSrc::Object(backend.clone(), name.to_string()),
            len,
            None,
        )
    }

    /// [`open_object`](Self::open_object) with the object's size and (some of) its header,
    /// index and footer bytes already fetched: reads they do not cover are ranged GETs.
    pub(crate) fn open_object_prefetched(
        backend: &Arc<ObjectBackend>,
        name: &str,
        path: &Path,
        pre: &Prefetched,
    ) -> Result<SegmentFile, ReadError> {
        let src = SegSrc::Object(backend.clone(), name.to_string());
        Self::from_src(path, src, pre.size, Some(pre))
    }

    /// Validates a segment from a source of known length (`pre`: bytes already fetched).
    fn from_src(
        path: &Path,
        file: SegSrc,
        file_len: u64,
        pre: Option<&Prefetched>,
    ) -> Result<SegmentFile, ReadError> {
        let mut hbuf = [0u8; HEADER_LEN];
        let hlen = (file_len.min(HEADER_LEN as u64)) as usize;
        read_exact_at(&file, pre, path, &mut hbuf[..hlen], 0, file_len)?;
        let (header, footer, footer_crc) =
            decode_frame(path, &hbuf[..hlen], file_len, |off, fbuf| {
                read_exact_at(&file, pre, path, fbuf, off, file_len)
            })?;
        // Size checked against the file length by SegmentFooter::decode.
        let index_len = (footer.run_count * RUN_ENTRY_LEN as u64) as usize;
        let mut index = vec![0u8; index_len];
        read_exact_at(&file, pre, path, &mut index, footer.index_offset, file_len)?;
        footer.check_index(path, &index)?;
        let runs = decode_index(path, &index, &header, &footer)?;
        Ok(SegmentFile {
            path: path.to_path_buf(),
            src: file,
            header,
            footer_crc,
            file_len,
            runs,
        })
    }

    pub(crate) fn page_size(&self) -> usize {
        self.header.page_size as usize
    }

    /// The error of a failed exact read of run `run`'s stored bytes.
    pub(crate) fn run_read_failure(&self, run: &RunEntry, e: std::io::Error) -> ReadError {
        read_failure(
            &self.path,
            e,
            run.data_offset,
            run.stored_len,
            self.file_len,
        )
    }

    /// Reads run `run` (a data run), verifies it and returns its raw page
    /// bytes (decompressed if needed). `scratch` and `out` are reused buffers.
    pub(crate) fn read_run<'b>(
        &self,
        run: &RunEntry,
        scratch: &'b mut Vec<u8>,
        out: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], ReadError> {
        debug_assert!(run.kind != RunKind::Zero);
        // stored_len was bounds-checked against the data area by decode_index.
        scratch.resize(run.stored_len as usize, 0);
        read_exact_at(
            &self.src,
            None,
            &self.path,
            scratch,
            run.data_offset,
            self.file_len,
        )?;
        run.check_crc(&self.path, scratch)?;
        Ok(run.decode_checked(&self.path, self.header.page_size, scratch, out)?)
    }
}
