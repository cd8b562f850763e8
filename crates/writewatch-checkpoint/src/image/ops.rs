//! Reading an image back: [`verify_image`], [`restore_image`], [`compact_image`].

use std::path::Path;

use serde::Serialize;

use super::index::{read_image, ImageError, ImageIndex, IMAGE_NAME};
use super::writer::{gen_of, io, lock_image};
use crate::files::fsync_dir;
use crate::Store;

/// Whether `dir` holds a process image (an `IMAGE` file).
pub fn is_image(dir: &Path) -> bool {
    dir.join(IMAGE_NAME).is_file()
}

fn store_err(store: &str, e: impl std::error::Error + Send + Sync + 'static) -> ImageError {
    ImageError::Store {
        store: store.to_string(),
        source: Box::new(e),
    }
}

/// What [`verify_image`] found.
#[derive(Debug, Clone, Serialize)]
pub struct ImageVerifyReport {
    /// The index that was checked.
    pub generation: u64,
    /// Ranges checked.
    pub ranges: usize,
    /// Problems, one line each (empty when the image is sound).
    pub problems: Vec<String>,
}

impl ImageVerifyReport {
    /// No problem found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the index CRC and every range's store (every checksum, the chain, and that the
/// epoch the index names is committed with the range's length).
pub fn verify_image(dir: &Path) -> Result<ImageVerifyReport, ImageError> {
    let _lock = lock_image(dir, false)?;
    let index = read_image(dir)?;
    let mut problems = Vec::new();
    for r in &index.ranges {
        let store = match Store::open_read_only(dir.join(&r.store)) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{}: {e}", r.store));
                continue;
            }
        };
        match store.verify() {
            Ok(rep) if rep.is_ok() => {}
            Ok(rep) => problems.push(format!("{}: {:?}", r.store, rep.problems)),
            Err(e) => problems.push(format!("{}: {e}", r.store)),
        }
        if !store.segments().iter().any(|s| s.epoch == r.epoch) {
            problems.push(format!("{}: epoch {} is not committed", r.store, r.epoch));
        }
        let len = store
            .geometry()
            .map_or(0, |g| g.page_count * g.page_size as u64);
        if len != r.len {
            problems.push(format!(
                "{}: holds {len} bytes, range is {}",
                r.store, r.len
            ));
        }
    }
    Ok(ImageVerifyReport {
        generation: index.generation,
        ranges: index.ranges.len(),
        problems,
    })
}

/// One file written by [`restore_image`].
#[derive(Debug, Clone, Serialize)]
pub struct RestoredRange {
    /// First address of the range.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// The file name (in the output directory).
    pub file: String,
}

/// Writes one sparse file per range (`<start:016x>-<end:016x>.bin`) into the new or empty
/// directory `to`, and `index.json`: the image index plus each range's file name.
pub fn restore_image(dir: &Path, to: &Path) -> Result<Vec<RestoredRange>, ImageError> {
    let _lock = lock_image(dir, false)?;
    let index = read_image(dir)?;
    std::fs::create_dir_all(to).map_err(|e| io("create directory", to, e))?;
    if std::fs::read_dir(to)
        .map_err(|e| io("list", to, e))?
        .next()
        .is_some()
    {
        return Err(ImageError::NotEmpty(to.to_path_buf()));
    }
    let mut out = Vec::new();
    for r in &index.ranges {
        let store =
            Store::open_read_only(dir.join(&r.store)).map_err(|e| store_err(&r.store, e))?;
        let file = format!("{:016x}-{:016x}.bin", r.start, r.start + r.len);
        store
            .restore_to_file(r.epoch, to.join(&file))
            .map_err(|e| store_err(&r.store, e))?;
        out.push(RestoredRange {
            start: r.start,
            len: r.len,
            file,
        });
    }
    #[derive(Serialize)]
    struct Out<'a> {
        image: &'a ImageIndex,
        files: &'a [RestoredRange],
    }
    let json = serde_json::to_vec_pretty(&Out {
        image: &index,
        files: &out,
    })
    .map_err(|e| ImageError::Invalid(e.to_string()))?;
    let p = to.join("index.json");
    std::fs::write(&p, json).map_err(|e| io("write", &p, e))?;
    fsync_dir(to)?;
    Ok(out)
}

/// Merges every range store's chain into one base segment and removes the generation
/// directories (`gen-<G>`) the committed index does not reference (older dumps, failed
/// dumps). Returns the removed directories.
pub fn compact_image(dir: &Path) -> Result<Vec<String>, ImageError> {
    let _lock = lock_image(dir, true)?;
    let index = read_image(dir)?;
    for r in &index.ranges {
        let mut store = Store::open(dir.join(&r.store)).map_err(|e| store_err(&r.store, e))?;
        if store.head().map(|h| h.epoch) == Some(r.epoch) && store.segments().len() > 1 {
            store.compact().map_err(|e| store_err(&r.store, e))?;
        }
    }
    let keep = format!("gen-{}", index.generation);
    let mut removed = Vec::new();
    for e in std::fs::read_dir(dir)
        .map_err(|e| io("list", dir, e))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if gen_of(&name).is_some() && name != keep && e.path().is_dir() {
            // Only our own layout: gen-<G>/r<ID>/ store directories.
            std::fs::remove_dir_all(e.path()).map_err(|er| io("remove", &e.path(), er))?;
            removed.push(name);
        }
    }
    fsync_dir(dir)?;
    Ok(removed)
}
