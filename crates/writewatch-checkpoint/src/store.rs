//! The store: a directory with a manifest and segment files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{
    CompactError, CorruptError, Corruption, IoContext, IoError, OpenError, ReadError, RestoreError,
    RetainError, VerifyError, WriteError,
};
use crate::format::{
    is_segment_file_name, segment_file_name, Manifest, ManifestEntry, RunKind, SegmentHeader,
    FLAG_BASE, FLAG_COMPRESSED, MAX_PAGE_SIZE, MAX_REGION_LEN, MIN_PAGE_SIZE, NO_PARENT,
};
use crate::restore::{Plan, ProgressTracker};
use crate::segment::SegmentFile;
use crate::sys::{self, AnonMap};
use crate::writer::{FinishedSegment, ProgressFn, SegmentBuilder, WriterOptions};
use crate::PageSource;

/// Name of the manifest file inside a store directory.
pub const MANIFEST_NAME: &str = "MANIFEST";
/// Name of the lock file inside a store directory.
pub const LOCK_NAME: &str = "LOCK";
/// Prefix of temporary files (ignored, and removed by a read-write open).
pub const TEMP_PREFIX: &str = ".tmp-";

/// Page size and page count of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Page size in bytes (power of two, 512 B ..= 1 GiB).
    pub page_size: usize,
    /// Number of pages (> 0).
    pub page_count: u64,
}

impl Geometry {
    /// Region length in bytes.
    pub fn region_len(&self) -> u64 {
        self.page_size as u64 * self.page_count
    }

    fn validate(&self) -> Result<(), WriteError> {
        let ps = self.page_size as u64;
        if !ps.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&ps) {
            return Err(WriteError::InvalidInput(format!(
                "page size {ps} is not a power of two in 512..=1GiB"
            )));
        }
        if self.page_count == 0
            || self
                .page_count
                .checked_mul(ps)
                .map_or(true, |l| l > MAX_REGION_LEN)
        {
            return Err(WriteError::InvalidInput(format!(
                "page count {} must be > 0 with a region of at most 128 TiB",
                self.page_count
            )));
        }
        Ok(())
    }
}

/// Whether a segment is a base or a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// All non-zero pages of the region; pages not stored are zero.
    Base,
    /// Pages changed since the parent epoch (with explicit zero runs).
    Delta,
}

/// Description of one committed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Epoch of the checkpoint.
    pub epoch: u64,
    /// Parent epoch (`None` for a base).
    pub parent: Option<u64>,
    /// Base or delta.
    pub kind: SegmentKind,
    /// File name inside the store directory.
    pub file_name: String,
    /// File length in bytes.
    pub file_len: u64,
    /// Pages stored with data.
    pub data_pages: u64,
    /// Pages recorded as having become zero (deltas only).
    pub zero_pages: u64,
    /// Stored data bytes (after compression).
    pub data_bytes: u64,
    /// Segment checksum (crc32c of the footer, which covers header, index
    /// and, through the index, every run's checksum).
    pub checksum: u32,
    /// Whether runs may be lz4-compressed.
    pub compressed: bool,
    /// Page size of the region.
    pub page_size: usize,
    /// Number of pages in the region.
    pub page_count: u64,
}

impl SegmentInfo {
    fn from_entry(e: &ManifestEntry, m: &Manifest) -> SegmentInfo {
        let page_count = m.region_len / u64::from(m.page_size.max(1));
        SegmentInfo {
            epoch: e.epoch,
            parent: (e.parent_epoch != NO_PARENT).then_some(e.parent_epoch),
            kind: if e.flags & FLAG_BASE != 0 {
                SegmentKind::Base
            } else {
                SegmentKind::Delta
            },
            file_name: e.file_name(),
            file_len: e.file_len,
            data_pages: e.data_pages,
            zero_pages: e.zero_pages,
            data_bytes: e.data_bytes,
            checksum: e.footer_crc,
            compressed: e.flags & FLAG_COMPRESSED != 0,
            page_size: m.page_size as usize,
            page_count,
        }
    }

    /// Fraction of the region's pages recorded in this segment (data and zero
    /// runs).
    pub fn dirty_ratio(&self) -> f64 {
        if self.page_count == 0 {
            0.0
        } else {
            (self.data_pages + self.zero_pages) as f64 / self.page_count as f64
        }
    }
}

/// A problem found by [`Store::verify`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyProblem {
    /// A file is corrupt or the chain is broken.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
    /// A file could not be read.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Result of [`Store::verify`].
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Segments of the manifest, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// Problems found (empty if the store is sound).
    pub problems: Vec<VerifyProblem>,
    /// Bytes of run data read and checked.
    pub bytes_checked: u64,
    /// Files left in the store directory by an interrupted write (temporary files and segment
    /// files the manifest does not reference). They do not affect the committed chain; a
    /// read-write [`Store::open`] (for example [`Store::compact`]'s caller) removes them.
    pub leftovers: Vec<Leftover>,
}

impl VerifyReport {
    /// Whether no problem was found in the committed chain (leftover files are not problems:
    /// see [`is_clean`](Self::is_clean)).
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Whether no problem was found *and* the directory holds no leftover file.
    pub fn is_clean(&self) -> bool {
        self.is_ok() && self.leftovers.is_empty()
    }
}

/// A file in a store directory that no committed segment uses: a temporary file or an
/// unreferenced segment file, left by a crash or a kill during a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// File name inside the store directory.
    pub file_name: String,
    /// Its length in bytes.
    pub len: u64,
}

/// Result of [`Store::compact`].
#[derive(Debug, Clone)]
pub struct CompactReport {
    /// The new base (or the existing one if there was nothing to merge).
    pub base: SegmentInfo,
    /// Segment files merged and removed.
    pub removed: Vec<String>,
}

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

fn fresh_nonce() -> u64 {
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

fn fsync_dir(dir: &Path) -> Result<(), IoError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

/// Writes `m` to a new temporary file in `dir` and `fdatasync`s it.
fn write_manifest_temp(dir: &Path, m: &Manifest) -> Result<crate::writer::TempFile, IoError> {
    let bytes = m.encode();
    let temp_path = dir.join(format!("{TEMP_PREFIX}manifest-{:016x}", fresh_nonce()));
    let temp = crate::writer::TempFile::new(temp_path.clone());
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp_path)
        .ctx("create", &temp_path)?;
    f.write_all(&bytes).ctx("write", &temp_path)?;
    f.sync_data().ctx("fdatasync", &temp_path)?;
    Ok(temp)
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>, ReadError> {
    let path = dir.join(MANIFEST_NAME);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IoError::new("open", &path, e).into()),
    };
    let len = f.metadata().ctx("stat", &path)?.len();
    // The manifest is one 64-byte entry per segment: cap at 64 MiB (a million
    // segments) before allocating.
    if len > 64 << 20 {
        return Err(CorruptError::new(
            &path,
            0,
            Corruption::Field {
                field: "file size",
                value: len,
                reason: "manifest larger than 64 MiB",
            },
        )
        .into());
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.read_to_end(&mut buf).ctx("read", &path)?;
    Ok(Some(Manifest::decode(&path, &buf)?))
}

/// An incremental checkpoint store (a directory).
///
/// A read-write [`Store::open`] takes an exclusive lock on the directory, so
/// one process writes at a time; [`Store::open_read_only`] takes a shared lock.
///
/// ```
/// use writewatch_checkpoint::{SliceSource, Store};
///
/// let dir = tempfile::tempdir()?;
/// let mut region = vec![0u8; 16 * 4096];
/// region[5 * 4096] = 7;
///
/// let mut store = Store::create(dir.path())?;
/// let base = store.write_base(&SliceSource::new(&region, 4096)?)?;
///
/// region[9 * 4096] = 1;
/// region[5 * 4096] = 0; // page 5 became zero again
/// store.write_delta(base.epoch + 1, &SliceSource::new(&region, 4096)?, &[(5, 1), (9, 1)])?;
///
/// let restored = store.restore(base.epoch + 1)?;
/// assert_eq!(restored.as_slice(), &region[..]);
/// assert!(store.verify()?.is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Store {
    dir: PathBuf,
    manifest: Manifest,
    _lock: File,
    read_only: bool,
    options: WriterOptions,
    progress: Option<ProgressFn>,
    removed_on_open: Vec<Leftover>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("segments", &self.manifest.entries.len())
            .field("read_only", &self.read_only)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Creates a new, empty store in `dir` (created with mode 0700 if
    /// missing). Fails if a store already exists there.
    pub fn create(dir: impl AsRef<Path>) -> Result<Store, OpenError> {
        let dir = dir.as_ref();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ctx("create directory", dir)?;
        if dir.join(MANIFEST_NAME).exists() {
            return Err(OpenError::AlreadyExists(dir.to_path_buf()));
        }
        // Never adopt a directory holding someone else's files: a store writes, renames and
        // removes files in its directory.
        let foreign = fs::read_dir(dir)
            .ctx("list", dir)?
            .filter_map(Result::ok)
            .any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                // What an interrupted `create` of our own leaves behind.
                name != LOCK_NAME && !name.starts_with(&format!("{TEMP_PREFIX}manifest-"))
            });
        if foreign {
            return Err(OpenError::NotEmpty(dir.to_path_buf()));
        }
        let lock = Self::lock(dir, true)?;
        if dir.join(MANIFEST_NAME).exists() {
            return Err(OpenError::AlreadyExists(dir.to_path_buf()));
        }
        let mut store = Store {
            dir: dir.to_path_buf(),
            manifest: Manifest::default(),
            _lock: lock,
            read_only: false,
            options: WriterOptions::default(),
            progress: None,
            removed_on_open: Vec::new(),
        };
        store.commit_manifest(Manifest::default())?;
        store.cleanup()?;
        Ok(store)
    }

    /// Opens an existing store read-write: takes the exclusive lock and
    /// removes temporary files and segment files not in the manifest (left by
    /// a crash).
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, OpenError> {
        Self::open_impl(dir.as_ref(), false)
    }

    /// Opens an existing store, or creates it if `dir` has no manifest.
    pub fn open_or_create(dir: impl AsRef<Path>) -> Result<Store, OpenError> {
        let dir = dir.as_ref();
        match Self::open(dir) {
            Err(OpenError::NotAStore(_)) => Self::create(dir),
            Err(OpenError::Io(e)) if e.source.kind() == io::ErrorKind::NotFound => {
                Self::create(dir)
            }
            r => r,
        }
    }

    /// Opens an existing store read-only (shared lock, no cleanup). Temporary
    /// files are ignored.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Store, OpenError> {
        Self::open_impl(dir.as_ref(), true)
    }

    fn lock(dir: &Path, exclusive: bool) -> Result<File, OpenError> {
        let path = dir.join(LOCK_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .or_else(|e| {
                if !exclusive
                    && (e.kind() == io::ErrorKind::PermissionDenied
                        || e.raw_os_error() == Some(libc::EROFS))
                {
                    File::open(dir)
                } else {
                    Err(e)
                }
            })
            .ctx("open lock file", &path)?;
        if !sys::flock(&file, exclusive).ctx("lock", &path)? {
            return Err(OpenError::Locked(dir.to_path_buf()));
        }
        Ok(file)
    }

    fn open_impl(dir: &Path, read_only: bool) -> Result<Store, OpenError> {
        let meta = fs::metadata(dir).ctx("open store", dir)?;
        if !meta.is_dir() {
            return Err(OpenError::NotAStore(dir.to_path_buf()));
        }
        if !dir.join(MANIFEST_NAME).exists() {
            return Err(OpenError::NotAStore(dir.to_path_buf()));
        }
        let lock = Self::lock(dir, !read_only)?;
        let manifest =
            read_manifest(dir)?.ok_or_else(|| OpenError::NotAStore(dir.to_path_buf()))?;
        let mut store = Store {
            dir: dir.to_path_buf(),
            manifest,
            _lock: lock,
            read_only,
            options: WriterOptions::default(),
            progress: None,
            removed_on_open: Vec::new(),
        };
        if !read_only {
            store.removed_on_open = store.cleanup()?;
        }
        Ok(store)
    }

    /// Temporary files and segment files that `manifest` does not reference (only regular
    /// files whose names the store itself generates).
    fn list_leftovers(dir: &Path, manifest: &Manifest) -> Result<Vec<Leftover>, IoError> {
        let mut out = Vec::new();
        for ent in fs::read_dir(dir).ctx("list", dir)? {
            let ent = ent.ctx("list", dir)?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale = if name.starts_with(TEMP_PREFIX) {
                true
            } else if is_segment_file_name(name) {
                !manifest.entries.iter().any(|e| e.file_name() == name)
            } else {
                false
            };
            if !stale {
                continue;
            }
            match ent.metadata() {
                Ok(m) if m.is_file() => out.push(Leftover {
                    file_name: name.to_string(),
                    len: m.len(),
                }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(IoError::new("stat", ent.path(), e)),
            }
        }
        out.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        Ok(out)
    }

    /// Removes temporary files and unreferenced segment files; returns what it removed.
    fn cleanup(&self) -> Result<Vec<Leftover>, IoError> {
        let mut removed = Vec::new();
        for l in Self::list_leftovers(&self.dir, &self.manifest)? {
            let path = self.dir.join(&l.file_name);
            tracing::info!(
                "removing leftover file {} ({} bytes)",
                path.display(),
                l.len
            );
            match fs::remove_file(&path) {
                Ok(()) => removed.push(l),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(IoError::new("remove", path, e)),
            }
        }
        if !removed.is_empty() {
            fsync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Leftover files a read-write open removed (left by a crash or kill during a write).
    pub fn removed_leftovers(&self) -> &[Leftover] {
        &self.removed_on_open
    }

    /// Sets the writer options (compression, buffer sizes, background thread).
    pub fn set_writer_options(&mut self, options: WriterOptions) {
        self.options = options;
    }

    /// The writer options in use.
    pub fn writer_options(&self) -> &WriterOptions {
        &self.options
    }

    /// Sets a progress callback for writes, restores, verify and compaction.
    pub fn set_progress(&mut self, progress: Option<ProgressFn>) {
        self.progress = progress;
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether the store was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The committed segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.manifest
            .entries
            .iter()
            .map(|e| SegmentInfo::from_entry(e, &self.manifest))
            .collect()
    }

    /// The newest committed segment.
    pub fn head(&self) -> Option<SegmentInfo> {
        self.manifest
            .entries
            .last()
            .map(|e| SegmentInfo::from_entry(e, &self.manifest))
    }

    /// The epoch `write_base` would use: one past the newest, or 0.
    pub fn next_epoch(&self) -> u64 {
        self.manifest.entries.last().map_or(0, |e| e.epoch + 1)
    }

    /// Page size and count shared by all segments (`None` when empty).
    pub fn geometry(&self) -> Option<Geometry> {
        (!self.manifest.entries.is_empty()).then(|| Geometry {
            page_size: self.manifest.page_size as usize,
            page_count: self.manifest.region_len / u64::from(self.manifest.page_size),
        })
    }

    fn check_new_segment(&self, epoch: u64, geometry: Geometry) -> Result<(), WriteError> {
        if self.read_only {
            return Err(WriteError::ReadOnly);
        }
        geometry.validate()?;
        // Geometry first: a region of another size is the real problem, whatever its epoch.
        if let Some(g) = self.geometry() {
            if g != geometry {
                return Err(WriteError::GeometryMismatch {
                    store_page_size: g.page_size,
                    store_pages: g.page_count,
                    page_size: geometry.page_size,
                    pages: geometry.page_count,
                });
            }
        }
        if let Some(last) = self.manifest.entries.last() {
            if epoch <= last.epoch {
                return Err(WriteError::EpochNotIncreasing {
                    epoch,
                    head: last.epoch,
                });
            }
        }
        if epoch == NO_PARENT {
            return Err(WriteError::InvalidInput(
                "epoch u64::MAX is reserved".into(),
            ));
        }
        Ok(())
    }

    fn builder(
        &self,
        epoch: u64,
        geometry: Geometry,
        base: bool,
        total: Option<u64>,
    ) -> Result<SegmentBuilder, WriteError> {
        let header = SegmentHeader {
            page_size: geometry.page_size as u32,
            flags: if base { FLAG_BASE } else { 0 },
            region_len: geometry.region_len(),
            epoch,
            parent_epoch: if base {
                NO_PARENT
            } else {
                self.manifest.entries.last().map_or(NO_PARENT, |e| e.epoch)
            },
        };
        let temp = self.dir.join(format!(
            "{TEMP_PREFIX}seg-{epoch:016x}-{:016x}",
            fresh_nonce()
        ));
        SegmentBuilder::create(temp, header, &self.options, self.progress.clone(), total)
    }

    /// Starts a base segment at `epoch` written page by page with a
    /// [`SegmentWriter`].
    pub fn begin_base(
        &mut self,
        epoch: u64,
        geometry: Geometry,
    ) -> Result<SegmentWriter<'_>, WriteError> {
        self.check_new_segment(epoch, geometry)?;
        let builder = self.builder(epoch, geometry, true, Some(geometry.page_count))?;
        Ok(SegmentWriter {
            store: self,
            builder,
            replace_from: None,
        })
    }

    /// Starts a delta segment at `epoch` (parent: the newest segment).
    pub fn begin_delta(
        &mut self,
        epoch: u64,
        geometry: Geometry,
    ) -> Result<SegmentWriter<'_>, WriteError> {
        self.begin_delta_inner(epoch, geometry, None)
    }

    fn begin_delta_inner(
        &mut self,
        epoch: u64,
        geometry: Geometry,
        total: Option<u64>,
    ) -> Result<SegmentWriter<'_>, WriteError> {
        if self.manifest.entries.is_empty() {
            return Err(WriteError::NoParent);
        }
        self.check_new_segment(epoch, geometry)?;
        let builder = self.builder(epoch, geometry, false, total)?;
        Ok(SegmentWriter {
            store: self,
            builder,
            replace_from: None,
        })
    }

    /// Writes a base checkpoint of all pages of `source` at
    /// [`next_epoch`](Self::next_epoch). All-zero pages are not stored.
    pub fn write_base<S: PageSource + ?Sized>(
        &mut self,
        source: &S,
    ) -> Result<SegmentInfo, WriteError> {
        self.write_base_at(self.next_epoch(), source)
    }

    /// Writes a base checkpoint at a given epoch (greater than the newest).
    pub fn write_base_at<S: PageSource + ?Sized>(
        &mut self,
        epoch: u64,
        source: &S,
    ) -> Result<SegmentInfo, WriteError> {
        let geometry = Geometry {
            page_size: source.page_size(),
            page_count: source.page_count(),
        };
        let mut w = self.begin_base(epoch, geometry)?;
        for page in 0..geometry.page_count {
            w.push_from(page, source)?;
        }
        w.commit()
    }

    /// Writes a delta checkpoint at `epoch` (greater than the newest, which
    /// becomes its parent) holding the pages of `runs` — ascending,
    /// non-overlapping `(first_page, count)` pairs. Pages of `runs` that are
    /// all zero are recorded as zero runs; pages outside `runs` are taken as
    /// unchanged since the parent.
    pub fn write_delta<S: PageSource + ?Sized>(
        &mut self,
        epoch: u64,
        source: &S,
        runs: &[(u64, u64)],
    ) -> Result<SegmentInfo, WriteError> {
        let geometry = Geometry {
            page_size: source.page_size(),
            page_count: source.page_count(),
        };
        validate_runs(runs, geometry.page_count)?;
        let mut w =
            self.begin_delta_inner(epoch, geometry, Some(runs.iter().map(|r| r.1).sum()))?;
        for &(first, count) in runs {
            for page in first..first + count {
                w.push_from(page, source)?;
            }
        }
        w.commit()
    }

    /// Makes a finished segment durable and commits the manifest with
    /// entries `[..replace_from]` followed by the new one.
    ///
    /// The segment is renamed to its final name *before* it is synced: the
    /// name means nothing until the manifest references it (unreferenced
    /// segment files are garbage to a read-write open), and this way one
    /// journal commit covers data and rename. The new manifest's temporary
    /// file is written and synced concurrently. Only then (segment data and
    /// directory entry durable, manifest content durable) is the manifest
    /// renamed into place, followed by a directory fsync.
    fn commit_segment(
        &mut self,
        mut fin: FinishedSegment,
        replace_from: usize,
    ) -> Result<SegmentInfo, WriteError> {
        let nonce = fresh_nonce();
        let name = segment_file_name(fin.header.epoch, nonce);
        let final_path = self.dir.join(&name);
        fs::rename(&fin.temp.path, &final_path).ctx("rename", &fin.temp.path)?;
        fin.temp.disarm();
        // Removes the segment unless the manifest ends up referencing it.
        let mut guard = crate::writer::TempFile::new(final_path.clone());
        let entry = ManifestEntry {
            epoch: fin.header.epoch,
            parent_epoch: fin.header.parent_epoch,
            nonce,
            file_len: fin.file_len,
            flags: fin.header.flags,
            footer_crc: fin.footer_crc,
            data_pages: fin.footer.data_pages,
            zero_pages: fin.footer.zero_pages,
            data_bytes: fin.footer.data_bytes,
        };
        let mut next = self.manifest.clone();
        next.entries.truncate(replace_from);
        next.entries.push(entry);
        next.page_size = fin.header.page_size;
        next.region_len = fin.header.region_len;
        next.generation += 1;
        let dir = &self.dir;
        let (seg_synced, manifest_temp) = std::thread::scope(|s| {
            let prepared = s.spawn(|| write_manifest_temp(dir, &next));
            let synced = fin
                .file
                .sync_data()
                .ctx("fdatasync", &final_path)
                .and_then(|()| fsync_dir(dir));
            (synced, prepared.join())
        });
        let manifest_temp = manifest_temp.unwrap_or_else(|_| {
            Err(IoError::new(
                "write manifest",
                dir.join(MANIFEST_NAME),
                io::Error::other("thread panicked"),
            ))
        })?;
        seg_synced?;
        let r = self.install_manifest(manifest_temp, next);
        if self.manifest.entries.last() == Some(&entry) {
            // The manifest was renamed into place: the segment is referenced.
            guard.disarm();
        }
        r?;
        let info = SegmentInfo::from_entry(&entry, &self.manifest);
        tracing::debug!(
            epoch = info.epoch,
            bytes = info.file_len,
            "committed segment {name}"
        );
        Ok(info)
    }

    /// Atomically replaces the manifest (temp file, fdatasync, rename, fsync
    /// dir). The in-memory manifest follows the rename.
    fn commit_manifest(&mut self, next: Manifest) -> Result<(), IoError> {
        let temp = write_manifest_temp(&self.dir, &next)?;
        self.install_manifest(temp, next)
    }

    /// Renames a durable manifest temp file over `MANIFEST` and fsyncs the
    /// directory. The in-memory manifest follows the rename.
    fn install_manifest(
        &mut self,
        mut temp: crate::writer::TempFile,
        next: Manifest,
    ) -> Result<(), IoError> {
        let target = self.dir.join(MANIFEST_NAME);
        fs::rename(&temp.path, &target).ctx("rename", &temp.path)?;
        temp.disarm();
        self.manifest = next;
        fsync_dir(&self.dir)
    }

    fn remove_segment_files(&self, entries: &[ManifestEntry]) -> Vec<String> {
        let mut removed = Vec::new();
        for e in entries {
            let path = self.dir.join(e.file_name());
            match fs::remove_file(&path) {
                Ok(()) => removed.push(e.file_name()),
                Err(err) => tracing::warn!(
                    "removing {}: {err} (will be removed on next open)",
                    path.display()
                ),
            }
        }
        if !removed.is_empty() {
            if let Err(e) = fsync_dir(&self.dir) {
                tracing::warn!("{e}");
            }
        }
        removed
    }

    fn find(&self, epoch: u64) -> Result<usize, RestoreError> {
        if self.manifest.entries.is_empty() {
            return Err(RestoreError::Empty);
        }
        self.manifest
            .entries
            .iter()
            .position(|e| e.epoch == epoch)
            .ok_or(RestoreError::NoSuchEpoch(epoch))
    }

    /// Opens and cross-checks the segments of the chain ending at entry `idx`.
    fn open_chain(&self, idx: usize) -> Result<Vec<SegmentFile>, RestoreError> {
        let entries = &self.manifest.entries;
        let base = (0..=idx)
            .rev()
            .find(|&i| entries[i].flags & FLAG_BASE != 0)
            .ok_or_else(|| {
                CorruptError::new(
                    &self.dir.join(MANIFEST_NAME),
                    0,
                    Corruption::Chain {
                        reason: "no base before the requested epoch".into(),
                    },
                )
            })?;
        entries[base..=idx]
            .iter()
            .map(|e| self.open_segment(e).map_err(RestoreError::from))
            .collect()
    }

    fn open_segment(&self, e: &ManifestEntry) -> Result<SegmentFile, ReadError> {
        open_segment(&self.dir, &self.manifest, e)
    }

    fn plan(&self, epoch: u64) -> Result<Plan, RestoreError> {
        let idx = self.find(epoch)?;
        Ok(Plan::build(self.open_chain(idx)?))
    }

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
        let mut temp = crate::writer::TempFile::new(temp_path.clone());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp_path)
            .ctx("create", &temp_path)?;
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

    /// Asks the kernel to drop the cached pages of the store's files
    /// (`POSIX_FADV_DONTNEED`; clean pages only, a hint). Useful after a
    /// restore, whose segment data is not needed in the page cache any more,
    /// and to measure cold reads.
    pub fn drop_page_cache(&self) -> Result<(), IoError> {
        let names = self
            .manifest
            .entries
            .iter()
            .map(|e| e.file_name())
            .chain(std::iter::once(MANIFEST_NAME.to_string()));
        for name in names {
            let path = self.dir.join(name);
            let f = File::open(&path).ctx("open", &path)?;
            sys::fadvise(&f, 0, 0, sys::Advice::DontNeed).ctx("posix_fadvise", &path)?;
        }
        Ok(())
    }

    /// Checks every checksum of every segment (header, index, footer, all run
    /// data, decompression), each segment against its manifest entry, and
    /// chain continuity (each delta's parent is the previous segment, same
    /// page size and region length). The manifest is re-read from disk.
    pub fn verify(&self) -> Result<VerifyReport, VerifyError> {
        let manifest = read_manifest(&self.dir)?.ok_or_else(|| {
            VerifyError::Corrupt(CorruptError::new(
                &self.dir.join(MANIFEST_NAME),
                0,
                Corruption::Missing,
            ))
        })?;
        let mut report = VerifyReport {
            segments: manifest
                .entries
                .iter()
                .map(|e| SegmentInfo::from_entry(e, &manifest))
                .collect(),
            leftovers: Self::list_leftovers(&self.dir, &manifest)?,
            ..Default::default()
        };
        for l in &report.leftovers {
            tracing::warn!(
                "{}: leftover file {} ({} bytes) from an interrupted write",
                self.dir.display(),
                l.file_name,
                l.len
            );
        }
        let total: u64 = manifest.entries.iter().map(|e| e.data_pages).sum();
        let mut prog = ProgressTracker::new(self.progress.as_ref(), total);
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        for e in &manifest.entries {
            let seg = match open_segment(&self.dir, &manifest, e) {
                Ok(s) => s,
                Err(ReadError::Io(err)) => {
                    report.problems.push(err.into());
                    continue;
                }
                Err(ReadError::Corrupt(err)) => {
                    report.problems.push(err.into());
                    continue;
                }
            };
            for run in seg.runs.iter().filter(|r| r.kind != RunKind::Zero) {
                match seg.read_run(run, &mut scratch, &mut out) {
                    Ok(_) => {
                        report.bytes_checked += run.stored_len;
                        prog.add(run.page_count, run.stored_len);
                    }
                    Err(ReadError::Io(err)) => {
                        report.problems.push(err.into());
                        break;
                    }
                    Err(ReadError::Corrupt(err)) => {
                        report.problems.push(err.into());
                        break;
                    }
                }
            }
        }
        prog.finish();
        Ok(report)
    }

    /// Merges the newest chain (its base and the deltas after it) into a new
    /// base at the newest epoch: writes the base, swaps the manifest, then
    /// deletes the merged segments. A crash at any point leaves either the old
    /// or the new chain committed. Older bases (and their deltas) are kept;
    /// see [`retain_bases`](Self::retain_bases).
    pub fn compact(&mut self) -> Result<CompactReport, CompactError> {
        if self.read_only {
            return Err(WriteError::ReadOnly.into());
        }
        let entries = self.manifest.entries.clone();
        let head_idx = entries.len().checked_sub(1).ok_or(RestoreError::Empty)?;
        let base_idx = (0..=head_idx)
            .rev()
            .find(|&i| entries[i].flags & FLAG_BASE != 0)
            .unwrap_or(0);
        if base_idx == head_idx {
            return Ok(CompactReport {
                base: SegmentInfo::from_entry(&entries[head_idx], &self.manifest),
                removed: Vec::new(),
            });
        }
        let head = entries[head_idx];
        let plan = Plan::build(self.open_chain(head_idx)?);
        let geometry = Geometry {
            page_size: plan.page_size,
            page_count: plan.page_count,
        };
        let mut builder = self.builder(head.epoch, geometry, true, Some(plan.data_pages()))?;
        plan.for_each_page_in_order(|page, bytes| -> Result<(), CompactError> {
            builder.push_with(page, |buf| {
                buf.copy_from_slice(bytes);
                Ok(())
            })?;
            Ok(())
        })?;
        let fin = builder.finish()?;
        let info = self.commit_segment(fin, base_idx)?;
        let removed = self.remove_segment_files(&entries[base_idx..]);
        Ok(CompactReport {
            base: info,
            removed,
        })
    }

    /// Keeps the newest `n` (>= 1) bases and the deltas after them; drops
    /// every older segment (manifest swapped first, files deleted after).
    /// Returns the names of the files removed.
    pub fn retain_bases(&mut self, n: usize) -> Result<Vec<String>, RetainError> {
        if self.read_only {
            return Err(RetainError::ReadOnly);
        }
        if n == 0 {
            return Err(RetainError::InvalidArgument(
                "must keep at least one base".into(),
            ));
        }
        let bases: Vec<usize> = (0..self.manifest.entries.len())
            .filter(|&i| self.manifest.entries[i].flags & FLAG_BASE != 0)
            .collect();
        if bases.len() <= n {
            return Ok(Vec::new());
        }
        let cut = bases[bases.len() - n];
        self.drop_entries(|i, _| i < cut)
    }

    /// Drops every segment newer than `epoch` (a rollback). Returns the names
    /// of the files removed.
    pub fn discard_after(&mut self, epoch: u64) -> Result<Vec<String>, RetainError> {
        if self.read_only {
            return Err(RetainError::ReadOnly);
        }
        self.drop_entries(|_, e| e.epoch > epoch)
    }

    fn drop_entries(
        &mut self,
        drop_it: impl Fn(usize, &ManifestEntry) -> bool,
    ) -> Result<Vec<String>, RetainError> {
        let (gone, kept): (Vec<_>, Vec<_>) = self
            .manifest
            .entries
            .iter()
            .enumerate()
            .partition(|(i, e)| drop_it(*i, e));
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let gone: Vec<ManifestEntry> = gone.into_iter().map(|(_, e)| *e).collect();
        let mut next = self.manifest.clone();
        next.entries = kept.into_iter().map(|(_, e)| *e).collect();
        next.generation += 1;
        if next.entries.is_empty() {
            next.page_size = 0;
            next.region_len = 0;
        }
        self.commit_manifest(next)?;
        Ok(self.remove_segment_files(&gone))
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
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else {
        "non-regular file"
    };
    Err(RestoreError::NotARegularFile {
        path: path.to_path_buf(),
        kind,
    })
}

/// Opens a segment and cross-checks it against its manifest entry.
fn open_segment(
    dir: &Path,
    manifest: &Manifest,
    e: &ManifestEntry,
) -> Result<SegmentFile, ReadError> {
    let path = dir.join(e.file_name());
    let seg = SegmentFile::open(&path)?;
    let h = &seg.header;
    let mismatch = |field: &'static str, manifest: u64, segment: u64| -> ReadError {
        CorruptError::new(
            &path,
            0,
            Corruption::ManifestMismatch {
                field,
                manifest,
                segment,
            },
        )
        .into()
    };
    if seg.file_len != e.file_len {
        return Err(mismatch("file_len", e.file_len, seg.file_len));
    }
    if seg.footer_crc != e.footer_crc {
        return Err(mismatch(
            "checksum",
            e.footer_crc.into(),
            seg.footer_crc.into(),
        ));
    }
    if h.epoch != e.epoch {
        return Err(mismatch("epoch", e.epoch, h.epoch));
    }
    if h.parent_epoch != e.parent_epoch {
        return Err(mismatch("parent_epoch", e.parent_epoch, h.parent_epoch));
    }
    if h.flags != e.flags {
        return Err(mismatch("flags", e.flags.into(), h.flags.into()));
    }
    if h.page_size != manifest.page_size {
        return Err(mismatch(
            "page_size",
            manifest.page_size.into(),
            h.page_size.into(),
        ));
    }
    if h.region_len != manifest.region_len {
        return Err(mismatch("region_len", manifest.region_len, h.region_len));
    }
    Ok(seg)
}

fn validate_runs(runs: &[(u64, u64)], page_count: u64) -> Result<(), WriteError> {
    let mut next = 0u64;
    for (i, &(first, count)) in runs.iter().enumerate() {
        if count == 0 {
            return Err(WriteError::InvalidInput(format!("run {i} is empty")));
        }
        if first < next {
            return Err(WriteError::InvalidInput(format!(
                "run {i} ({first}+{count}) overlaps or is not ascending"
            )));
        }
        next = first
            .checked_add(count)
            .filter(|&e| e <= page_count)
            .ok_or_else(|| {
                WriteError::InvalidInput(format!("run {i} ({first}+{count}) is outside the region"))
            })?;
    }
    Ok(())
}

/// Writes one segment page by page, in ascending page order, then commits it
/// atomically with [`commit`](Self::commit). Dropping it without committing
/// removes the temporary file and leaves the store unchanged.
///
/// ```
/// use writewatch_checkpoint::{Geometry, Store};
///
/// let dir = tempfile::tempdir()?;
/// let mut store = Store::create(dir.path())?;
/// let geometry = Geometry { page_size: 4096, page_count: 8 };
/// let mut w = store.begin_base(0, geometry)?;
/// w.push_page(3, &[1u8; 4096])?;
/// w.push_page(4, &[2u8; 4096])?;
/// let info = w.commit()?;
/// assert_eq!(info.data_pages, 2);
///
/// let mut w = store.begin_delta(1, geometry)?;
/// w.push_zero_pages(3, 1)?; // page 3 became zero
/// w.commit()?;
/// assert!(store.restore(1)?.as_slice()[3 * 4096..4 * 4096].iter().all(|&b| b == 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SegmentWriter<'s> {
    store: &'s mut Store,
    builder: SegmentBuilder,
    replace_from: Option<usize>,
}

impl std::fmt::Debug for SegmentWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("temp", &self.builder.temp_path())
            .finish()
    }
}

impl SegmentWriter<'_> {
    /// Adds page `index` (`page.len()` must be the page size; indexes must be
    /// strictly ascending). An all-zero page is a hole in a base and a zero
    /// run in a delta.
    pub fn push_page(&mut self, index: u64, page: &[u8]) -> Result<(), WriteError> {
        if page.len() != self.builder.page_size() {
            return Err(WriteError::InvalidInput(format!(
                "page {index} has {} bytes, page size is {}",
                page.len(),
                self.builder.page_size()
            )));
        }
        self.builder.push_with(index, |buf| {
            buf.copy_from_slice(page);
            Ok(())
        })
    }

    /// Records that pages `first..first+count` are zero (a zero run in a
    /// delta; nothing to store in a base).
    pub fn push_zero_pages(&mut self, first: u64, count: u64) -> Result<(), WriteError> {
        self.builder.push_zero(first, count)
    }

    fn push_from<S: PageSource + ?Sized>(
        &mut self,
        page: u64,
        source: &S,
    ) -> Result<(), WriteError> {
        self.builder.push_with(page, |buf| {
            source
                .read_page(page, buf)
                .map_err(|source| WriteError::Source { page, source })
        })
    }

    /// Finishes the file (index, footer, `fdatasync`), renames it into place
    /// and atomically commits the new manifest.
    pub fn commit(self) -> Result<SegmentInfo, WriteError> {
        let fin = self.builder.finish()?;
        let from = self
            .replace_from
            .unwrap_or(self.store.manifest.entries.len());
        self.store.commit_segment(fin, from)
    }

    /// Abandons the segment (same as dropping the writer).
    pub fn abort(self) {}
}
