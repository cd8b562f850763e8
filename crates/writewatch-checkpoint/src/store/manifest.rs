//! The manifest file: reading it, and replacing it atomically (the commit point of every
//! change to the store).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use super::Store;
use crate::error::{CommitError, CorruptError, Corruption, IoContext, IoError, ReadError};
use crate::files::{fresh_nonce, fsync_dir, TempFile, TEMP_PREFIX};
use crate::format::Manifest;

pub use crate::format::MANIFEST_NAME;

/// Writes `m` to a new temporary file in `dir` and `fdatasync`s it.
pub(super) fn write_manifest_temp(dir: &Path, m: &Manifest) -> Result<TempFile, IoError> {
    let bytes = m.encode();
    let temp_path = dir.join(format!("{TEMP_PREFIX}manifest-{:016x}", fresh_nonce()));
    let (temp, mut f) = TempFile::create(temp_path.clone())?;
    f.write_all(&bytes).ctx("write", &temp_path)?;
    f.sync_data().ctx("fdatasync", &temp_path)?;
    Ok(temp)
}

pub(super) fn read_manifest(dir: &Path) -> Result<Option<Manifest>, ReadError> {
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

impl Store {
    /// Atomically replaces the manifest (local: temp file, fdatasync, rename, fsync dir;
    /// objects: conditional put on the version read). The in-memory manifest follows.
    pub(super) fn commit_manifest(&mut self, next: Manifest) -> Result<(), CommitError> {
        self.backend.ops().commit_manifest(&next)?;
        self.manifest = next;
        Ok(())
    }

    /// Renames a durable manifest temp file over `MANIFEST` and fsyncs the
    /// directory. The in-memory manifest follows the rename.
    pub(super) fn install_manifest(
        &mut self,
        mut temp: TempFile,
        next: Manifest,
    ) -> Result<(), IoError> {
        let target = self.dir.join(MANIFEST_NAME);
        fs::rename(&temp.path, &target).ctx("rename", &temp.path)?;
        temp.disarm();
        self.manifest = next;
        fsync_dir(&self.dir)
    }
}
