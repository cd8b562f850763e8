//! Where a store keeps its bytes: a local directory ([`LocalDir`], the original store) or
//! an object-storage prefix ([`ObjectBackend`]). [`StorageBackend`] is what the store's
//! operations need from either: the manifest (read, atomic replace), the listing of
//! leftovers, removal, and opening segments for reading. Writing segments differs more
//! (temporary file + rename + fsync versus multipart upload) and is chosen in `save.rs`.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::manifest::{read_manifest, write_manifest_temp, MANIFEST_NAME};
use super::Leftover;
use crate::error::{CommitError, ConflictError, IoContext, IoError, ReadError, RemoteErrorKind};
use crate::files::{fsync_dir, TEMP_PREFIX};
use crate::format::{is_segment_file_name, Manifest};
use crate::remote::ObjectBackend;
use crate::segment::SegmentFile;

/// The storage operations shared by local and object-storage stores.
pub(crate) trait StorageBackend {
    /// The current manifest, re-read from storage (`None` if there is none).
    fn read_manifest(&self) -> Result<Option<Manifest>, ReadError>;
    /// Atomically replaces the manifest with `next` (the commit point).
    fn commit_manifest(&self, next: &Manifest) -> Result<(), CommitError>;
    /// Temporary files/objects and segments that `manifest` does not reference.
    fn list_leftovers(&self, manifest: &Manifest) -> Result<Vec<Leftover>, IoError>;
    /// Removes the named files/objects; returns those removed (failures are logged).
    fn remove(&self, names: &[String]) -> Vec<String>;
    /// Opens segment `name` for reading; `shown` names it in errors.
    fn open_segment(&self, name: &str, shown: &Path) -> Result<SegmentFile, ReadError>;
}

/// A local store directory and the `flock` that guards it.
#[derive(Debug)]
pub(crate) struct LocalDir {
    pub(crate) dir: PathBuf,
    pub(crate) _lock: File,
}

impl StorageBackend for LocalDir {
    fn read_manifest(&self) -> Result<Option<Manifest>, ReadError> {
        read_manifest(&self.dir)
    }

    fn commit_manifest(&self, next: &Manifest) -> Result<(), CommitError> {
        let mut temp = write_manifest_temp(&self.dir, next)?;
        let target = self.dir.join(MANIFEST_NAME);
        fs::rename(&temp.path, &target).ctx("rename", &temp.path)?;
        temp.disarm();
        fsync_dir(&self.dir)?;
        Ok(())
    }

    fn list_leftovers(&self, manifest: &Manifest) -> Result<Vec<Leftover>, IoError> {
        let dir = &self.dir;
        let mut out = Vec::new();
        for ent in fs::read_dir(dir).ctx("list", dir)? {
            let ent = ent.ctx("list", dir)?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if !is_leftover(name, manifest) {
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

    fn remove(&self, names: &[String]) -> Vec<String> {
        let mut removed = Vec::new();
        for name in names {
            let path = self.dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => removed.push(name.clone()),
                Err(err) => tracing::warn!(
                    "removing {}: {err} (will be removed on next open)",
                    path.display()
                ),
            }
        }
        if !removed.is_empty() {
            if let Err(e) = fsync_dir(&self.dir) {
                tracing::warn!("{e}: {}", e.source);
            }
        }
        removed
    }

    fn open_segment(&self, name: &str, _shown: &Path) -> Result<SegmentFile, ReadError> {
        SegmentFile::open(&self.dir.join(name))
    }
}

/// Whether `name` (in a store directory or under a store prefix) is a leftover for
/// `manifest`: a temporary name, or a segment name the manifest does not reference.
pub(crate) fn is_leftover(name: &str, manifest: &Manifest) -> bool {
    if name.starts_with(TEMP_PREFIX) {
        true
    } else if is_segment_file_name(name) {
        !manifest.entries.iter().any(|e| e.file_name() == name)
    } else {
        false
    }
}

impl StorageBackend for Arc<ObjectBackend> {
    fn read_manifest(&self) -> Result<Option<Manifest>, ReadError> {
        Ok(self.get_manifest()?.map(|(m, _)| m))
    }

    /// A conditional put on the version read at open (or written last). When the request
    /// fails, the manifest is read back: a retried request may have been applied before
    /// its answer was lost, and then `next` *is* the stored manifest.
    fn commit_manifest(&self, next: &Manifest) -> Result<(), CommitError> {
        let err = match self.put_manifest(next, false) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if let Ok(Some((stored, version))) = self.get_manifest() {
            if &stored == next {
                tracing::info!("{}: the manifest update was applied after all", self.url);
                self.set_version(Some(version));
                return Ok(());
            }
        }
        if err.remote_kind() == Some(RemoteErrorKind::Conflict) {
            return Err(CommitError::Conflict(ConflictError {
                url: self.url.clone(),
            }));
        }
        Err(CommitError::Io(err))
    }

    fn list_leftovers(&self, manifest: &Manifest) -> Result<Vec<Leftover>, IoError> {
        let mut out: Vec<Leftover> = self
            .list()?
            .into_iter()
            .filter(|(name, _)| is_leftover(name, manifest))
            .map(|(file_name, len)| Leftover { file_name, len })
            .collect();
        out.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        Ok(out)
    }

    fn remove(&self, names: &[String]) -> Vec<String> {
        let mut removed = Vec::new();
        for name in names {
            match self.delete(name) {
                Ok(()) => removed.push(name.clone()),
                Err(e) => tracing::warn!("{e}: {} (compact removes it later)", e.source),
            }
        }
        removed
    }

    fn open_segment(&self, name: &str, shown: &Path) -> Result<SegmentFile, ReadError> {
        SegmentFile::open_object(self, name, shown)
    }
}

/// The backend of an open store.
#[derive(Debug)]
pub(crate) enum Backend {
    Local(LocalDir),
    Object(Arc<ObjectBackend>),
}

impl Backend {
    /// The shared operations.
    pub(crate) fn ops(&self) -> &dyn StorageBackend {
        match self {
            Backend::Local(l) => l,
            Backend::Object(o) => o,
        }
    }

    /// The object backend, for an object-storage store.
    pub(crate) fn object(&self) -> Option<&Arc<ObjectBackend>> {
        match self {
            Backend::Local(_) => None,
            Backend::Object(o) => Some(o),
        }
    }
}
