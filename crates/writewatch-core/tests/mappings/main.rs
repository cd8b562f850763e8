//! Any mapping (issue 15): file-backed private and shared mappings adopted on the async
//! backend pass the generic dirty suite; other backends refuse them with a typed error; a
//! program's own statics are tracked.
#[path = "../common/mod.rs"]
mod common;

mod statics;
mod truncate;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use writewatch_core::{Backend, MapError, Region, RegionKind, Tracker};
use writewatch_testkit::Mmap;

const MIB: usize = 1 << 20;

/// An async tracker, or None when the kernel has no `WP_ASYNC` (then the test checks the
/// refusal instead of tracking).
fn async_tracker() -> Option<Tracker> {
    let probe = writewatch_core::probe();
    match Tracker::builder().backend(Backend::AsyncUffd).build() {
        Ok(t) => Some(t),
        Err(e) => {
            assert!(
                probe.kernel_version < (6, 7, 0) || !probe.usable(),
                "the async backend should work on kernel {}: {e}",
                probe.kernel_release
            );
            println!("skipped: async backend: {e}");
            None
        }
    }
}

/// A file of `len` bytes (pattern-filled: page `p` holds `p + 1` in every word) in the test
/// target's temporary directory, on a regular file system (not tmpfs).
fn data_file(name: &str, len: usize) -> (PathBuf, File) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    common::pattern_file(&dir, &format!("mappings-{name}"), len)
}

/// Adopts a file mapping; the region must not outlive `map` (the tests drop it first).
fn adopt(t: &Tracker, map: &Mmap) -> Result<Region, MapError> {
    // SAFETY: `map` stays mapped until after the region is dropped in every test below.
    unsafe { t.adopt(map.as_ptr(), map.len()) }
}

#[test]
fn file_mappings_pass_the_generic_dirty_suite_on_async() {
    let Some(t) = async_tracker() else { return };
    for shared in [false, true] {
        let (path, f) = data_file(if shared { "suite-s" } else { "suite-p" }, 16 * MIB);
        let map = Mmap::file(&f, 16 * MIB, shared);
        let region = Arc::new(adopt(&t, &map).unwrap());
        let kind = if shared {
            RegionKind::FileShared
        } else {
            RegionKind::FilePrivate
        };
        assert_eq!(region.kind(), kind);
        // Epoch 0: every page (new to the tracker); then exactly the written pages.
        assert_eq!(
            region.cut().unwrap().dirty().len() as u64,
            region.page_count()
        );
        assert!(region.cut().unwrap().dirty().is_empty(), "{kind:?}: clean");
        for threads in [1, 2, 4] {
            lockstep_exact(Arc::clone(&region), threads, 20, 100, true);
        }
        let (w, m, o) = racing_oracle(Arc::clone(&region), 2, 20, true);
        println!("{kind:?}: {w} writes, {m} misses, {o} over-reports");
        assert!(w > 100, "writers made progress ({w})");
        assert_eq!((m, o), (0, 0), "{kind:?}");
        drop(region);
        drop(map);
        let on_disk = std::fs::read(&path).unwrap();
        let first = u64::from_le_bytes(on_disk[..8].try_into().unwrap());
        if shared {
            assert_ne!(first, 1, "shared: writes reach the file");
        } else {
            assert!(
                on_disk
                    .chunks_exact(4096)
                    .enumerate()
                    .all(|(p, pg)| pg[..8] == (p as u64 + 1).to_le_bytes()),
                "private: the file is unchanged"
            );
        }
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn file_mapping_over_20_epochs_has_exact_dirty_sets_and_copies() {
    let Some(t) = async_tracker() else { return };
    for shared in [false, true] {
        let pages = 256usize;
        let (path, f) = data_file(if shared { "20-s" } else { "20-p" }, pages * 4096);
        let map = Mmap::file(&f, pages * 4096, shared);
        let region = adopt(&t, &map).unwrap();
        region.cut().unwrap();
        let words = region.as_atomic_u64();
        let mut rng = Rng(0x15 + shared as u64);
        for epoch in 0..20u64 {
            // Read some pages (never dirty), write others.
            let mut sum = 0u64;
            for _ in 0..16 {
                sum = sum.wrapping_add(
                    words[rng.below(pages as u64) as usize * WORDS_PER_PAGE]
                        .load(std::sync::atomic::Ordering::SeqCst),
                );
            }
            assert!(sum > 0, "file content is visible");
            let mut expect = std::collections::BTreeSet::new();
            for _ in 0..rng.below(40) {
                let p = rng.below(pages as u64);
                touch(&region, p, epoch << 32 | p);
                expect.insert(p);
            }
            let mut copied = Vec::new();
            let e = region
                .cut_and_copy(|p, bytes| {
                    copied.push((p, u64::from_le_bytes(bytes[..8].try_into().unwrap())));
                    Ok::<(), std::io::Error>(())
                })
                .unwrap();
            let got: std::collections::BTreeSet<u64> = e.dirty().iter().collect();
            assert_eq!(got, expect, "epoch {epoch} (shared {shared})");
            assert!(copied.iter().all(|&(p, v)| v == epoch << 32 | p));
        }
        drop(region);
        drop(map);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn madvise_dontneed_on_a_file_mapping_is_reported_and_rearmed() {
    let Some(t) = async_tracker() else { return };
    for shared in [false, true] {
        let (path, f) = data_file(if shared { "dn-s" } else { "dn-p" }, 16 * 4096);
        let map = Mmap::file(&f, 16 * 4096, shared);
        let region = adopt(&t, &map).unwrap();
        region.cut().unwrap();
        touch(&region, 5, 77);
        assert_eq!(
            region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
            vec![5]
        );
        // SAFETY: our own mapping; the zapped pages read back from the file.
        let r = unsafe {
            libc::madvise(
                map.as_ptr().add(4 * 4096).cast(),
                4 * 4096,
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(r, 0);
        let words = region.as_atomic_u64();
        let page5 = words[5 * WORDS_PER_PAGE].load(std::sync::atomic::Ordering::SeqCst);
        if shared {
            assert_eq!(page5, 77, "shared: the write is in the file");
        } else {
            assert_eq!(
                page5, 6,
                "private: the copy is gone, the file's page is back"
            );
        }
        let got: Vec<u64> = region.cut().unwrap().dirty().iter().collect();
        assert!(
            (4..8).all(|p| got.contains(&p)) || shared,
            "shared {shared}: a zap changes private content: reported ({got:?})"
        );
        assert!(got.iter().all(|p| (4..8).contains(p)), "{got:?}");
        // Protection is back: the next writes are exactly reported.
        for p in [4, 6, 9] {
            touch(&region, p, 1);
        }
        assert_eq!(
            region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
            vec![4, 6, 9],
            "shared {shared}"
        );
        assert!(region.cut().unwrap().dirty().is_empty());
        drop(region);
        drop(map);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn sync_and_mprotect_refuse_file_mappings_with_a_typed_error() {
    let (path, f) = data_file("refuse", 4 * 4096);
    for b in [Backend::SyncUffd, Backend::Mprotect] {
        let t = Tracker::builder().backend(b).build().unwrap();
        for shared in [false, true] {
            let map = Mmap::file(&f, 4 * 4096, shared);
            let e = adopt(&t, &map).unwrap_err();
            match &e {
                MapError::FileBackedNeedsAsync {
                    addr,
                    kind,
                    path: p,
                    backend,
                    kernel,
                } => {
                    assert_eq!(*addr, map.as_ptr() as usize);
                    assert!(kind.starts_with("file-backed"));
                    assert!(p.ends_with(path.file_name().unwrap().to_str().unwrap()));
                    assert_eq!(*backend, b.name());
                    assert!(!kernel.is_empty());
                }
                other => panic!("{}: {other}", b.name()),
            }
            let msg = e.to_string();
            assert!(
                msg.contains("Backend::AsyncUffd") && msg.contains("6.7"),
                "{msg}"
            );
        }
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn special_mappings_are_still_refused() {
    let Some(t) = async_tracker() else { return };
    // [vdso] is not writable; [vvar] neither: both refused before registering.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let vdso = maps.lines().find(|l| l.ends_with("[vdso]")).unwrap();
    let (a, b) = vdso
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    let (a, b) = (
        usize::from_str_radix(a, 16).unwrap(),
        usize::from_str_radix(b, 16).unwrap(),
    );
    // SAFETY: expected to be rejected before registering.
    let e = unsafe { t.adopt(a as *mut u8, b - a) }.unwrap_err();
    assert!(matches!(e, MapError::UnsupportedMemory { .. }), "{e}");
}
