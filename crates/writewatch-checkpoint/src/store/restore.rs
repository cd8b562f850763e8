//! Restoring an epoch: into a fresh mapping, caller memory, or an image file.

use std::fs;
use std::io;
use std::path::Path;

use super::Store;
use crate::error::{IoContext, IoError, RestoreError};
use crate::files::{fresh_nonce, TempFile};
use crate::sys::AnonMap;

/// A memory region restored from a checkpoint: a private anonymous mapping
/// owned by this value and unmapped on drop.
pub struct RestoredMapping {
    map: AnonMap,
    epoch: u64,
}

impl std::fmt::Debug for RestoredMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoredMapping")
            .field("addr", &self.map.as_ptr())
            .field("len", &self.map.len())
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl RestoredMapping {
    /// The restored bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.map.as_slice()
    }

    /// The restored bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.map.as_mut_slice()
    }

    /// Start address of the mapping.
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// Length in bytes (the region length).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false (regions are never empty).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// The epoch that was restored.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The restored bytes as a slice of `T` (for example `u64`), without `unsafe`.
    ///
    /// Fails with [`CastError`] if the length is not a multiple of `size_of::<T>()` or the
    /// mapping is not aligned for `T` (a mapping is page-aligned, so this only happens for
    /// types aligned to more than a page).
    ///
    /// ```
    /// use writewatch_checkpoint::{SliceSource, Store};
    /// let dir = tempfile::tempdir()?;
    /// let mut store = Store::create(dir.path().join("s"))?;
    /// let mut region = vec![0u8; 2 * 4096];
    /// region[8..16].copy_from_slice(&42u64.to_ne_bytes());
    /// store.write_base(&SliceSource::new(&region, 4096)?)?;
    /// let m = store.restore(0)?;
    /// let words: &[u64] = m.as_slice_of::<u64>()?;
    /// assert_eq!((words.len(), words[1]), (1024, 42));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_slice_of<T: bytemuck::Pod>(&self) -> Result<&[T], CastError> {
        bytemuck::try_cast_slice(self.as_slice()).map_err(|e| CastError::new::<T>(e, self.len()))
    }

    /// The restored bytes as a mutable slice of `T`; see [`as_slice_of`](Self::as_slice_of).
    pub fn as_mut_slice_of<T: bytemuck::Pod>(&mut self) -> Result<&mut [T], CastError> {
        let len = self.len();
        bytemuck::try_cast_slice_mut(self.as_mut_slice()).map_err(|e| CastError::new::<T>(e, len))
    }

    /// Releases ownership of the mapping: the caller must `munmap(ptr, len)`
    /// it eventually (or keep it for the life of the process).
    pub fn into_raw(self) -> (*mut u8, usize) {
        self.map.into_raw()
    }
}

/// Why restored bytes cannot be viewed as a slice of some type `T`
/// ([`RestoredMapping::as_slice_of`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CastError {
    /// The length is not a multiple of the element size.
    #[error("{len} bytes is not a whole number of {type_name} ({size} bytes each): view it as a type whose size divides the region length")]
    Size {
        /// Length of the restored region in bytes.
        len: usize,
        /// The element type.
        type_name: &'static str,
        /// Its size.
        size: usize,
    },
    /// The mapping is not aligned for the element type.
    #[error("the mapping is not aligned to {align} bytes as {type_name} needs: view it as bytes and copy")]
    Alignment {
        /// The element type.
        type_name: &'static str,
        /// Its alignment.
        align: usize,
    },
}

impl CastError {
    fn new<T>(e: bytemuck::PodCastError, len: usize) -> Self {
        let type_name = std::any::type_name::<T>();
        match e {
            bytemuck::PodCastError::TargetAlignmentGreaterAndInputNotAligned
            | bytemuck::PodCastError::AlignmentMismatch => CastError::Alignment {
                type_name,
                align: std::mem::align_of::<T>(),
            },
            _ => CastError::Size {
                len,
                type_name,
                size: std::mem::size_of::<T>(),
            },
        }
    }
}

impl Store {
    /// Restores `epoch` into a fresh private anonymous mapping. Every
    /// checksum involved is verified before the mapping is returned.
    pub fn restore(&self, epoch: u64) -> Result<RestoredMapping, RestoreError> {
        let plan = self.plan(epoch)?;
        let len = plan.region_len();
        let mut map =
            AnonMap::new(len as usize).map_err(|source| RestoreError::Map { len, source })?;
        plan.restore_into(map.as_mut_slice(), true, self.progress.as_ref())?;
        Ok(RestoredMapping { map, epoch })
    }

    /// Restores the newest epoch into a fresh mapping.
    pub fn restore_latest(&self) -> Result<RestoredMapping, RestoreError> {
        let head = self.manifest.entries.last().ok_or(RestoreError::Empty)?;
        self.restore(head.epoch)
    }

    /// Restores `epoch` into a fresh mapping placed exactly at `addr`
    /// (page-aligned) with `MAP_FIXED_NOREPLACE`, so that data holding
    /// pointers into the region can be restored in a new process. Fails with
    /// [`RestoreError::Map`] (`EEXIST`) if the range is not free.
    pub fn restore_at(&self, epoch: u64, addr: usize) -> Result<RestoredMapping, RestoreError> {
        let plan = self.plan(epoch)?;
        let len = plan.region_len();
        let mut map = AnonMap::new_fixed(addr, len as usize)
            .map_err(|source| RestoreError::Map { len, source })?;
        plan.restore_into(map.as_mut_slice(), true, self.progress.as_ref())?;
        Ok(RestoredMapping { map, epoch })
    }

    /// Restores `epoch` into caller memory (`dst.len()` must be the region
    /// length). Pages that are zero at that epoch are zero-filled.
    ///
    /// On error the content of `dst` is unspecified and the error is
    /// returned; there is no partial success.
    pub fn restore_into(&self, epoch: u64, dst: &mut [u8]) -> Result<(), RestoreError> {
        let plan = self.plan(epoch)?;
        plan.restore_into(dst, false, self.progress.as_ref())
    }

    /// Restores `epoch` into memory seen as 64-bit words (`dst` must be exactly the region
    /// length): for example a live region that other code reads through atomics.
    ///
    /// Every checksum the restore needs is verified (and compressed runs decoded) in a first
    /// pass, **before** `dst` is touched: a corrupt store leaves `dst` unchanged. Then pages
    /// that are zero at `epoch` are zeroed (words already zero are not written), raw runs are
    /// read by the kernel straight into `dst`, and the rest is copied with relaxed atomic
    /// stores. Concurrent writers to `dst` would interleave with the restore (no undefined
    /// behaviour, but no meaningful content either): quiesce them.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    /// use writewatch_checkpoint::{SliceSource, Store};
    /// let dir = tempfile::tempdir()?;
    /// let mut store = Store::create(dir.path().join("s"))?;
    /// let mut image = vec![0u8; 2 * 4096];
    /// image[4096..4104].copy_from_slice(&9u64.to_ne_bytes());
    /// store.write_base(&SliceSource::new(&image, 4096)?)?;
    /// let words: Vec<AtomicU64> = (0..1024).map(|_| AtomicU64::new(1)).collect();
    /// store.restore_into_words(0, &words)?;
    /// assert_eq!((words[0].load(Relaxed), words[512].load(Relaxed)), (0, 9));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn restore_into_words(
        &self,
        epoch: u64,
        dst: &[std::sync::atomic::AtomicU64],
    ) -> Result<(), RestoreError> {
        let plan = self.plan(epoch)?;
        plan.restore_into_words(dst, self.progress.as_ref())
    }

    /// Restores `epoch` as a plain image file at `path` (sparse: zero pages
    /// are holes). The image is written to a temporary name next to `path`,
    /// fsynced and renamed, so `path` never holds a partial image.
    ///
    /// `path` must be a new path or an existing regular file (which is
    /// replaced). Anything else (a device node such as `/dev/null`, a
    /// directory, a FIFO, a socket, a symbolic link) is refused with
    /// [`RestoreError::NotARegularFile`] and left untouched.
    pub fn restore_to_file(&self, epoch: u64, path: impl AsRef<Path>) -> Result<(), RestoreError> {
        let path = path.as_ref();
        check_restore_destination(path)?;
        let plan = self.plan(epoch)?;
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let fname = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp_path = parent.join(format!(".{fname}.ww-restore-{:016x}", fresh_nonce()));
        let (mut temp, file) = TempFile::create(temp_path.clone())?;
        file.set_len(plan.region_len())
            .ctx("truncate", &temp_path)?;
        plan.restore_to_file(&file, &temp_path, self.progress.as_ref())?;
        file.sync_all().ctx("fsync", &temp_path)?;
        // Re-check just before the rename: the destination may have appeared meanwhile.
        check_restore_destination(path)?;
        fs::rename(&temp_path, path).ctx("rename", &temp_path)?;
        temp.disarm();
        Ok(())
    }
}

/// Refuses a restore destination that exists and is not a regular file.
fn check_restore_destination(path: &Path) -> Result<(), RestoreError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(IoError::new("stat", path, e).into()),
    };
    let t = meta.file_type();
    if t.is_file() {
        return Ok(());
    }
    let kinds: [(bool, &'static str); 6] = [
        (t.is_dir(), "directory"),
        (t.is_symlink(), "symbolic link"),
        (t.is_char_device(), "character device"),
        (t.is_block_device(), "block device"),
        (t.is_fifo(), "FIFO"),
        (t.is_socket(), "socket"),
    ];
    let kind = kinds
        .iter()
        .find_map(|&(is, kind)| is.then_some(kind))
        .unwrap_or("non-regular file");
    Err(RestoreError::NotARegularFile {
        path: path.to_path_buf(),
        kind,
    })
}
