//! Small file-system helpers shared by the writer, the manifest and the restore: temporary
//! files removed unless kept, unique names, directory `fsync`, lock files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, IoError};

/// Prefix of temporary files (ignored, and removed by a read-write open).
pub const TEMP_PREFIX: &str = ".tmp-";

/// Removes a temporary file on drop unless disarmed.
#[derive(Debug)]
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// Guards an existing file: it is removed on drop unless [`disarm`](Self::disarm)ed.
    pub(crate) fn new(path: PathBuf) -> Self {
        TempFile { path, armed: true }
    }

    /// A name only (for messages): nothing is ever removed.
    pub(crate) fn label(path: PathBuf) -> Self {
        TempFile { path, armed: false }
    }

    /// Creates `path` (which must not exist) with mode 0600, opened for writing, and
    /// guards it. Nothing is guarded (or removed) if the creation fails.
    pub(crate) fn create(path: PathBuf) -> Result<(TempFile, File), IoError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .ctx("create", &path)?;
        Ok((TempFile::new(path), file))
    }

    /// Keeps the file.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = std::fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("removing temporary file {}: {e}", self.path.display());
                }
            }
        }
    }
}

/// A number for unique file names: time, process id and a counter, mixed.
pub(crate) fn fresh_nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = t
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finalizer
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// `fsync`s a directory (makes renames and removals in it durable).
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), IoError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

/// Opens (creating it with mode 0600 if need be) the lock file `name` in `dir` and takes its
/// `flock` without blocking: exclusive for writers, shared for readers. A reader that cannot
/// open the file read-write for a reason `fall_back_to_dir` accepts (a read-only directory,
/// say) locks the directory itself instead. `Ok(None)`: another holder has the lock.
pub(crate) fn lock_dir(
    dir: &Path,
    name: &str,
    exclusive: bool,
    fall_back_to_dir: impl Fn(&io::Error) -> bool,
) -> Result<Option<File>, IoError> {
    let path = dir.join(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .or_else(|e| {
            if !exclusive && fall_back_to_dir(&e) {
                File::open(dir)
            } else {
                Err(e)
            }
        })
        .ctx("open lock file", &path)?;
    Ok(crate::sys::flock(&file, exclusive)
        .ctx("lock", &path)?
        .then_some(file))
}
