//! [`ImageWriter`]: one dump into an image directory (a new generation of range stores, then
//! one atomic `IMAGE` commit).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::index::{read_image, write_image, ImageError, ImageIndex, ImageRange, IMAGE_NAME};
use crate::error::{IoContext, IoError};
use crate::files::{lock_dir, TEMP_PREFIX};
use crate::Store;

/// Lock file of an image directory (held exclusively by the writer).
pub(crate) const IMAGE_LOCK: &str = "IMAGE.lock";

/// Whether `name` is a file an image directory may hold (ours).
pub(crate) fn is_image_entry(name: &str) -> bool {
    name == IMAGE_NAME
        || name == IMAGE_LOCK
        || name.starts_with(&format!("{TEMP_PREFIX}IMAGE-"))
        || gen_of(name).is_some()
}

/// The generation number of a `gen-<G>` directory name.
pub(crate) fn gen_of(name: &str) -> Option<u64> {
    name.strip_prefix("gen-")?.parse().ok()
}

/// Takes the image directory's lock (`exclusive` for writers).
pub(crate) fn lock_image(dir: &Path, exclusive: bool) -> Result<File, ImageError> {
    lock_dir(dir, IMAGE_LOCK, exclusive, |_| true)?
        .ok_or_else(|| ImageError::Locked(dir.to_path_buf()))
}

/// Writes one dump into an image directory.
///
/// [`begin`](Self::begin) creates a fresh generation directory `gen-<G>`; every range gets
/// its own [`Store`] there ([`add_range`](Self::add_range)), written round after round with
/// the store's own API; [`commit`](Self::commit) atomically replaces `IMAGE`. Until then the
/// previous image (an older generation) is untouched.
#[derive(Debug)]
pub struct ImageWriter {
    dir: PathBuf,
    pid: u32,
    generation: u64,
    stores: BTreeMap<u64, Store>,
    page_size: u64,
    _lock: File,
}

impl ImageWriter {
    /// Starts a dump of process `pid` into `dir` (created if missing). `dir` must be new,
    /// empty, or an image directory.
    pub fn begin(dir: &Path, pid: u32) -> Result<Self, ImageError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ctx("create directory", dir)?;
        let mut max_gen = 0;
        for e in std::fs::read_dir(dir).ctx("list", dir)? {
            let e = e.ctx("list", dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_image_entry(&name) {
                return Err(ImageError::NotEmpty(dir.to_path_buf()));
            }
            max_gen = max_gen.max(gen_of(&name).unwrap_or(0));
        }
        let lock = lock_image(dir, true)?;
        // Leftover index temporaries of a killed writer.
        for e in std::fs::read_dir(dir).ctx("list", dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{TEMP_PREFIX}IMAGE-")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let previous = match read_image(dir) {
            Ok(i) => i.generation,
            Err(ImageError::NotAnImage(_)) => 0,
            Err(e) => return Err(e),
        };
        let generation = max_gen.max(previous) + 1;
        let gdir = dir.join(format!("gen-{generation}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&gdir)
            .ctx("create directory", &gdir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            pid,
            generation,
            stores: BTreeMap::new(),
            page_size: 0,
            _lock: lock,
        })
    }

    /// The generation this dump writes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The image directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the store of range `id` (`gen-<G>/r<id>`) for `page_count` pages of
    /// `page_size` bytes and returns it; its first segment must be a base.
    pub fn add_range(
        &mut self,
        id: u64,
        page_size: u64,
        page_count: u64,
    ) -> Result<&mut Store, ImageError> {
        if self.page_size != 0 && self.page_size != page_size {
            return Err(ImageError::Invalid(format!(
                "range {id}: page size {page_size} differs from the image's {}",
                self.page_size
            )));
        }
        if page_count == 0 || self.stores.contains_key(&id) {
            return Err(ImageError::Invalid(format!(
                "range {id}: empty, or added twice"
            )));
        }
        self.page_size = page_size;
        let rel = format!("gen-{}/r{id}", self.generation);
        let store = Store::create(self.dir.join(&rel)).map_err(|e| ImageError::Store {
            store: rel,
            source: Box::new(e),
        })?;
        Ok(self.stores.entry(id).or_insert(store))
    }

    /// The store of range `id`, if added.
    pub fn store(&mut self, id: u64) -> Option<&mut Store> {
        self.stores.get_mut(&id)
    }

    /// Forgets range `id` (unmapped in the target): it is in no later commit. Its files stay
    /// until `compact`.
    pub fn drop_range(&mut self, id: u64) {
        self.stores.remove(&id);
    }

    /// Atomically commits an image made of `ranges` (built with [`ImageRange::new`], whose
    /// `store` names a range id added here): each range takes its store's newest epoch.
    pub fn commit(&mut self, mut ranges: Vec<ImageRange>) -> Result<ImageIndex, ImageError> {
        ranges.sort_by_key(|r| r.start);
        for r in &mut ranges {
            let id: u64 = r
                .store
                .strip_prefix('r')
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ImageError::Invalid(format!("bad range store {}", r.store)))?;
            let store = self.stores.get(&id).ok_or_else(|| {
                ImageError::Invalid(format!("range {id} has no store in this dump"))
            })?;
            let head = store.head().ok_or_else(|| {
                ImageError::Invalid(format!("range {id} has no committed segment"))
            })?;
            let geo = store
                .geometry()
                .map_or(0, |g| g.page_count * g.page_size as u64);
            if geo != r.len {
                return Err(ImageError::Invalid(format!(
                    "range {id} is {} bytes, its store holds {geo}",
                    r.len
                )));
            }
            r.store = format!("gen-{}/r{id}", self.generation);
            r.epoch = head.epoch;
        }
        let index = ImageIndex {
            version: super::IMAGE_VERSION,
            pid: self.pid,
            generation: self.generation,
            page_size: self.page_size.max(1),
            committed_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            ranges,
        };
        write_image(&self.dir, &index)?;
        Ok(index)
    }
}

/// Used by `ops` for error paths.
pub(crate) fn io(op: &'static str, path: &Path, e: std::io::Error) -> ImageError {
    IoError::new(op, path, e).into()
}
