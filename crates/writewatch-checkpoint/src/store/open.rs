//! Creating and opening a store: the directory, its lock, and the removal of what an
//! interrupted write left behind.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::backend::{Backend, LocalDir};
use super::manifest::{read_manifest, MANIFEST_NAME};
use super::{Leftover, Store};
use crate::error::{CommitError, IoContext, IoError, OpenError};
use crate::files::{lock_dir, TEMP_PREFIX};
use crate::format::Manifest;
use crate::writer::WriterOptions;

/// Name of the lock file inside a store directory.
pub const LOCK_NAME: &str = "LOCK";

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
        let mut store = Store::with_backend(
            dir.to_path_buf(),
            Manifest::default(),
            Backend::Local(LocalDir {
                dir: dir.to_path_buf(),
                _lock: lock,
            }),
            false,
        );
        store
            .commit_manifest(Manifest::default())
            .map_err(|e| match e {
                CommitError::Io(e) => OpenError::Io(e),
                CommitError::Conflict(_) => OpenError::AlreadyExists(dir.to_path_buf()),
            })?;
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
        lock_dir(dir, LOCK_NAME, exclusive, |e| {
            e.kind() == io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EROFS)
        })?
        .ok_or_else(|| OpenError::Locked(dir.to_path_buf()))
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
        let mut store = Store::with_backend(
            dir.to_path_buf(),
            manifest,
            Backend::Local(LocalDir {
                dir: dir.to_path_buf(),
                _lock: lock,
            }),
            read_only,
        );
        if !read_only {
            store.removed_on_open = store.cleanup()?;
        }
        Ok(store)
    }

    /// A store value around an opened backend.
    pub(super) fn with_backend(
        dir: PathBuf,
        manifest: Manifest,
        backend: Backend,
        read_only: bool,
    ) -> Store {
        Store {
            dir,
            manifest,
            backend,
            read_only,
            options: WriterOptions::default(),
            progress: None,
            removed_on_open: Vec::new(),
        }
    }

    /// Removes temporary files and unreferenced segment files; returns what it removed.
    fn cleanup(&self) -> Result<Vec<Leftover>, IoError> {
        let mut removed = Vec::new();
        for l in self.backend.ops().list_leftovers(&self.manifest)? {
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
            crate::files::fsync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}
