//! Adversarial review of issue 15 (file-backed mappings, program data, the inspector): each
//! finding is a test named after it; the ones that fail on this tree are `#[ignore]`d with the
//! finding's number in the reason. The rest are what held.
#[path = "../common/mod.rs"]
mod common;

mod held;
mod inspector;
mod tmpfs;

use std::fs::File;
use std::path::{Path, PathBuf};

use writewatch_core::{Backend, MapError, Region, Tracker};
use writewatch_testkit::Mmap;

/// An async tracker, or None without `WP_ASYNC` (then the test has nothing to check).
fn async_tracker() -> Option<Tracker> {
    match Tracker::builder().backend(Backend::AsyncUffd).build() {
        Ok(t) => Some(t),
        Err(e) => {
            println!("skipped: async backend: {e}");
            None
        }
    }
}

/// A file of `len` bytes under `dir` (page `p` holds `p + 1` in every word).
fn data_file(dir: &Path, name: &str, len: usize) -> (PathBuf, File) {
    common::pattern_file(dir, &format!("review15-{name}"), len)
}

/// A directory on the disk file system (ext4 on the reference machine).
fn disk() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// tmpfs.
fn shm() -> PathBuf {
    PathBuf::from("/dev/shm")
}

fn adopt(t: &Tracker, map: &Mmap) -> Result<Region, MapError> {
    // SAFETY: every test drops the region before `map`.
    unsafe { t.adopt(map.as_ptr(), map.len()) }
}

/// First word of page `p` of `map`.
fn word(map: &Mmap, p: usize) -> u64 {
    map.as_atomic_u64()[p * 512].load(std::sync::atomic::Ordering::SeqCst)
}

fn dirty(region: &Region) -> Vec<u64> {
    region.cut().unwrap().dirty().iter().collect()
}

fn madvise(map: &Mmap, page: usize, pages: usize, advice: libc::c_int) -> std::io::Result<()> {
    // SAFETY: advice on pages inside our own live mapping.
    let r = unsafe { libc::madvise(map.as_ptr().add(page * 4096).cast(), pages * 4096, advice) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
