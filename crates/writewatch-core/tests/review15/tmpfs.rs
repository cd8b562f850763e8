//! `MAP_PRIVATE` of a tmpfs file (`/dev/shm`, memfd) is classified `Shmem`, so the
//! issue-15 fixes for private file mappings (dropped COW copies reported, `cut_and_copy`
//! through `/proc/self/mem`) do not apply to it; and shared tmpfs regions still read pages
//! directly in `cut_and_copy`.

use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;

use super::*;
use writewatch_testkit::run_child;

/// Finding 1: a protected COW copy of a `MAP_PRIVATE` tmpfs mapping dropped by `ftruncate`
/// (shrink then extend) changes the page's content (copy -> zeros) without any report, on
/// the async and sync backends.
#[test]
fn private_tmpfs_mapping_ftruncate_dropped_copies_are_reported() {
    let mut missed = Vec::new();
    for backend in [Backend::AsyncUffd, Backend::SyncUffd] {
        let Ok(t) = Tracker::builder().backend(backend).build() else {
            continue;
        };
        let pages = 8;
        let (path, f) = data_file(&shm(), &format!("trunc-{backend:?}"), pages * 4096);
        let map = Mmap::file(&f, pages * 4096, false);
        let region = adopt(&t, &map).unwrap();
        println!("{backend:?}: kind {:?}", region.kind());
        region.cut().unwrap();
        common::touch(&region, 3, 33); // copy; protected again at the next cut
        assert_eq!(dirty(&region), vec![3]);
        f.set_len(0).unwrap();
        f.set_len((pages * 4096) as u64).unwrap();
        // Oracle: the mapping itself now shows the file's page (zero), not the copy (33).
        assert_eq!(word(&map, 3), 0, "{backend:?}: the copy is gone");
        let got = dirty(&region);
        if !got.contains(&3) {
            missed.push(format!(
                "{backend:?}: page 3 went 33 -> 0, dirty set {got:?}"
            ));
        }
        drop(region);
        drop(map);
        std::fs::remove_file(&path).unwrap();
    }
    assert!(missed.is_empty(), "under-report: {missed:?}");
}

const SIGBUS_CHILD: &str = "WRITEWATCH_REVIEW15_SIGBUS_CHILD";

/// Finding 2 (child half): `cut_and_copy` of an adopted shared tmpfs (/dev/shm) region whose
/// file shrank reads the dirty page directly.
#[test]
fn sigbus_child() {
    if std::env::var_os(SIGBUS_CHILD).is_none() {
        return;
    }
    let Some(t) = async_tracker() else {
        std::process::exit(0)
    };
    let (path, f) = data_file(&shm(), "sigbus", 8 * 4096);
    let map = Mmap::file(&f, 8 * 4096, true);
    let region = adopt(&t, &map).unwrap();
    region.cut().unwrap();
    common::touch(&region, 6, 66);
    f.set_len(4096).unwrap();
    std::fs::remove_file(&path).unwrap();
    let r = region.cut_and_copy(|_, _| Ok::<(), std::io::Error>(()));
    println!("{:?}", r.as_ref().map(|_| ()));
    // Fixed: the typed error, not SIGBUS (and not Ok with made-up bytes).
    let typed = matches!(
        r,
        Err(writewatch_core::CutAndCopyError::Read(
            writewatch_core::SnapshotError::BeyondEndOfFile { page: 6 }
        ))
    );
    std::process::exit(if typed { 0 } else { 3 });
}

const SNAPSHOT_CHILD: &str = "WRITEWATCH_REVIEW15_SNAPSHOT_CHILD";

/// Finding 2 (second child): the sync backend's `Snapshot::read_page` of an adopted memfd
/// region that shrank after the snapshot reads the live page directly.
#[test]
fn snapshot_sigbus_child() {
    if std::env::var_os(SNAPSHOT_CHILD).is_none() {
        return;
    }
    let Ok(t) = Tracker::builder().backend(Backend::SyncUffd).build() else {
        std::process::exit(0)
    };
    let (fd, map) = Mmap::memfd_shared(8 * 4096);
    let region = adopt(&t, &map).unwrap();
    let snap = region.snapshot().unwrap();
    // SAFETY: ftruncate of our own memfd.
    let r = unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), 4096) };
    assert_eq!(r, 0);
    let mut buf = vec![0u8; 4096];
    let r = snap.read_page(6, &mut buf);
    println!("{r:?}");
    let typed = r == Err(writewatch_core::SnapshotError::BeyondEndOfFile { page: 6 });
    std::process::exit(if typed { 0 } else { 3 });
}

/// Runs a child test and requires it to exit normally with status 0 (no SIGBUS).
fn child_survives(name: &str, env: &str) {
    let st = run_child(name, env, 60);
    assert_ne!(
        st.signal(),
        Some(libc::SIGBUS),
        "the child died of SIGBUS: {st:?}"
    );
    assert!(st.success(), "{st:?}");
}

/// Finding 2 (sync backend): a safe `Snapshot::read_page` killed the process with SIGBUS when
/// the adopted memfd shrank after the snapshot. Now `BeyondEndOfFile`.
#[test]
fn snapshot_read_of_shrunk_memfd_is_an_error_not_sigbus() {
    child_survives("tmpfs::snapshot_sigbus_child", SNAPSHOT_CHILD);
}

/// Finding 2: a safe call (`Region::cut_and_copy`) killed the process with SIGBUS when the
/// adopted shared tmpfs file shrank. Now `BeyondEndOfFile`.
#[test]
fn cut_and_copy_of_shrunk_shmem_is_an_error_not_sigbus() {
    child_survives("tmpfs::sigbus_child", SIGBUS_CHILD);
}

/// Held: a `MAP_SHARED` tmpfs mapping's content after writes via pwrite is what the cut
/// copies (no under-report for writes through the mapping).
#[test]
fn shared_tmpfs_cut_and_copy_matches_pread() {
    let Some(t) = async_tracker() else { return };
    let (path, f) = data_file(&shm(), "pread", 16 * 4096);
    let map = Mmap::file(&f, 16 * 4096, true);
    let region = adopt(&t, &map).unwrap();
    region.cut().unwrap();
    for p in [0u64, 5, 15] {
        common::touch(&region, p, 1000 + p);
    }
    let mut got = Vec::new();
    region
        .cut_and_copy(|p, b| {
            let mut disk = vec![0u8; 4096];
            f.read_exact_at(&mut disk, p * 4096).unwrap();
            assert_eq!(b, &disk[..], "page {p}");
            got.push(p);
            Ok::<(), std::io::Error>(())
        })
        .unwrap();
    assert_eq!(got, vec![0, 5, 15]);
    drop(region);
    drop(map);
    std::fs::remove_file(&path).unwrap();
}

/// Held: the generic dirty suite on `MAP_PRIVATE` and `MAP_SHARED` tmpfs (/dev/shm) file
/// mappings, async and sync backends.
#[test]
fn tmpfs_file_mappings_pass_the_generic_dirty_suite() {
    for backend in [Backend::AsyncUffd, Backend::SyncUffd] {
        let Ok(t) = Tracker::builder().backend(backend).build() else {
            continue;
        };
        for shared in [false, true] {
            let (path, f) = data_file(&shm(), &format!("suite-{backend:?}-{shared}"), 1 << 20);
            let map = Mmap::file(&f, 1 << 20, shared);
            let region = std::sync::Arc::new(adopt(&t, &map).unwrap());
            region.cut().unwrap();
            common::lockstep_exact(std::sync::Arc::clone(&region), 2, 10, 50, true);
            let (w, m, o) = common::racing_oracle(std::sync::Arc::clone(&region), 2, 10, true);
            assert!(w > 0);
            assert_eq!((m, o), (0, 0), "{backend:?} shared {shared}");
            drop(region);
            drop(map);
            std::fs::remove_file(&path).unwrap();
        }
    }
}
