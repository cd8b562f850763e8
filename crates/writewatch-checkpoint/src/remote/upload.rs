//! Streaming a segment into a multipart upload: the segment writer hands its filled
//! buffers over, they are cut into parts of [`RemoteOptions::part_size`] bytes uploaded
//! concurrently (at most [`RemoteOptions::upload_concurrency`] in flight, so memory stays
//! bounded whatever the segment size). Nothing is visible under the object's name until
//! [`ObjectSink::finish`] completes the upload; dropping the sink aborts it.
//!
//! [`RemoteOptions::part_size`]: crate::RemoteOptions::part_size
//! [`RemoteOptions::upload_concurrency`]: crate::RemoteOptions::upload_concurrency

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use object_store::{ObjectStoreExt, WriteMultipart};

use super::{to_io, ObjectBackend};
use crate::error::IoError;

/// Smallest part S3 accepts (except the last one).
const MIN_PART: usize = 5 << 20;

/// Most parts one S3 multipart upload may have.
const MAX_PARTS: u64 = 10_000;

/// The part size for a segment of at most `max_len` bytes: the configured size, raised
/// (to a whole MiB) so that the upload needs at most [`MAX_PARTS`] parts.
pub(crate) fn part_size_for(configured: usize, max_len: u64) -> usize {
    let needed = max_len.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    configured.max(MIN_PART).max(needed as usize)
}

/// One segment being uploaded.
pub(crate) struct ObjectSink {
    backend: Arc<ObjectBackend>,
    pub(crate) name: String,
    pub(crate) nonce: u64,
    upload: Option<WriteMultipart>,
    concurrency: usize,
}

impl ObjectSink {
    /// Starts a multipart upload of object `name`.
    /// `max_len` bounds the segment's size (it sets the smallest usable part size).
    pub(crate) fn begin(
        backend: Arc<ObjectBackend>,
        name: String,
        nonce: u64,
        max_len: u64,
    ) -> Result<ObjectSink, IoError> {
        let path = backend.path(&name);
        let upload = backend
            .block_on(backend.store.put_multipart(&path))
            .map_err(|e| IoError::new("start upload of", backend.display(&name), to_io(e)))?;
        let part = part_size_for(backend.options.part_size, max_len);
        let concurrency = backend.options.upload_concurrency.max(1);
        Ok(ObjectSink {
            upload: Some(WriteMultipart::new_with_chunk_size(upload, part)),
            backend,
            name,
            nonce,
            concurrency,
        })
    }

    /// `url/name`, for messages.
    pub(crate) fn display(&self) -> PathBuf {
        self.backend.display(&self.name)
    }

    /// Queues `data` (waits while `upload_concurrency` parts are in flight).
    pub(crate) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(w) = self.upload.as_mut() else {
            return Err(io::Error::other("upload already finished"));
        };
        let rt = self.backend.runtime();
        rt.block_on(w.wait_for_capacity(self.concurrency))
            .map_err(to_io)?;
        let _enter = rt.enter();
        w.write(data);
        Ok(())
    }

    /// Uploads the last part and completes the upload: the object appears, whole.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        let Some(w) = self.upload.take() else {
            return Err(io::Error::other("upload already finished"));
        };
        self.backend.block_on(w.finish()).map(drop).map_err(to_io)
    }
}

impl Drop for ObjectSink {
    fn drop(&mut self) {
        if let Some(w) = self.upload.take() {
            tracing::debug!("aborting the upload of {}", self.display().display());
            if let Err(e) = self.backend.block_on(w.abort()) {
                tracing::warn!(
                    "aborting the upload of {}: {e} (the bucket's lifecycle rule for incomplete multipart uploads removes its parts)",
                    self.display().display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_keeps_every_upload_within_the_part_limit() {
        for max_len in [
            0u64,
            1,
            5 << 20,
            100 << 30,
            (100 << 30) + (100 << 30) / 100,
            4 << 40,
        ] {
            for configured in [0usize, 1, 5 << 20, 16 << 20, 1 << 30] {
                let p = part_size_for(configured, max_len);
                assert!(p >= MIN_PART && p >= configured);
                assert!(
                    max_len.div_ceil(p as u64) <= MAX_PARTS,
                    "{max_len} {configured}"
                );
            }
        }
        assert_eq!(part_size_for(16 << 20, 100 << 30), 16 << 20);
    }
}
