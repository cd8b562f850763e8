//! No destructive footguns: the store only writes, renames or removes what the caller named
//! as its own. Each test is a regression test for a reported accident.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use writewatch_checkpoint::{
    CastError, Geometry, OpenError, RestoreError, SliceSource, Store, WriteError,
};

const PS: usize = 4096;

fn small_store(dir: &Path) -> Store {
    let mut store = Store::create(dir).unwrap();
    let mut region = vec![0u8; 8 * PS];
    region[PS..2 * PS].fill(7);
    store
        .write_base(&SliceSource::new(&region, PS).unwrap())
        .unwrap();
    store
}

fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> bool {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::mknod(c.as_ptr(), mode, dev) == 0 }
}

/// `restore --to /dev/null` as root replaced the device node with a regular file (rename over
/// the target). A character device made here (a copy of /dev/null's numbers, so nothing real
/// is at risk on the old code), a FIFO, a directory and a symbolic link are all refused and
/// left as they were.
#[test]
fn restore_to_file_refuses_non_regular_destinations() {
    let tmp = tempfile::tempdir().unwrap();
    let store = small_store(&tmp.path().join("store"));

    let fifo = tmp.path().join("fifo");
    assert!(mknod(&fifo, libc::S_IFIFO | 0o600, 0));
    let dir = tmp.path().join("a-directory");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep"), b"mine").unwrap();
    let target = tmp.path().join("target");
    std::fs::write(&target, b"target of the link").unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let mut cases = vec![
        (fifo.clone(), "FIFO"),
        (dir.clone(), "directory"),
        (link.clone(), "symbolic link"),
    ];
    // Device nodes need CAP_MKNOD (root here); without it the case is skipped, said loudly.
    let null = tmp.path().join("null");
    if mknod(&null, libc::S_IFCHR | 0o666, libc::makedev(1, 3)) {
        cases.push((null.clone(), "character device"));
    } else {
        eprintln!("note: cannot mknod a character device here (not root): case skipped");
    }

    for (path, kind) in &cases {
        let err = store.restore_to_file(0, path).unwrap_err();
        match &err {
            RestoreError::NotARegularFile { path: p, kind: k } => {
                assert_eq!((p, *k), (path, *kind))
            }
            other => panic!("{}: expected NotARegularFile, got {other}", path.display()),
        }
        let msg = err.to_string();
        assert!(msg.contains("refusing") && msg.contains(kind), "{msg}");
    }
    // Untouched.
    let t = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(t.is_fifo());
    assert_eq!(std::fs::read(dir.join("keep")).unwrap(), b"mine");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"target of the link");
    if cases.len() == 4 {
        assert!(std::fs::symlink_metadata(&null)
            .unwrap()
            .file_type()
            .is_char_device());
    }
    // No temporary file left next to the refused destinations.
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("ww-restore")), "{names:?}");

    // A new path and an existing regular file are fine.
    let new = tmp.path().join("image");
    store.restore_to_file(0, &new).unwrap();
    assert_eq!(std::fs::read(&new).unwrap()[PS], 7);
    std::fs::write(&new, b"old").unwrap();
    store.restore_to_file(0, &new).unwrap();
    assert_eq!(std::fs::metadata(&new).unwrap().len(), 8 * PS as u64);
}

/// `Store::create` on a directory holding unrelated files would take it over (and a
/// read-write open would then remove files there that look like ours). It is refused.
#[test]
fn create_refuses_a_non_empty_directory_that_is_not_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("holiday.jpg"), b"jpeg").unwrap();
    std::fs::write(dir.join(".tmp-notes"), b"user notes").unwrap();
    match Store::create(&dir) {
        Err(e @ OpenError::NotEmpty(_)) => {
            assert!(e.to_string().contains("not empty"), "{e}")
        }
        other => panic!("expected NotEmpty, got {other:?}"),
    }
    match Store::open_or_create(&dir) {
        Err(OpenError::NotEmpty(_)) => {}
        other => panic!("expected NotEmpty, got {other:?}"),
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec![".tmp-notes", "holiday.jpg"]);
    // An empty directory is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    Store::create(&empty).unwrap();
}

/// `verify` said "ok" while a 94 MiB `.tmp-seg` left by a crash sat in the store: it now lists
/// leftovers (still `is_ok`, not `is_clean`), and a read-write open removes them and says so.
#[test]
fn verify_reports_leftover_files_and_open_removes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    drop(small_store(&dir));
    let leftover = ".tmp-seg-0000000000000001-00000000deadbeef";
    std::fs::write(dir.join(leftover), vec![1u8; 3 * PS]).unwrap();

    let ro = Store::open_read_only(&dir).unwrap();
    let report = ro.verify().unwrap();
    assert!(report.is_ok());
    assert!(!report.is_clean());
    assert_eq!(report.leftovers.len(), 1);
    assert_eq!(report.leftovers[0].file_name, leftover);
    assert_eq!(report.leftovers[0].len, 3 * PS as u64);
    drop(ro);

    let rw = Store::open(&dir).unwrap();
    assert_eq!(rw.removed_leftovers().len(), 1);
    assert_eq!(rw.removed_leftovers()[0].file_name, leftover);
    assert!(!dir.join(leftover).exists());
    assert!(rw.verify().unwrap().is_clean());
}

/// Saving a region of another size into a store reported an epoch-order error
/// ("epoch 0 is not after the newest epoch ..."): the geometry is the real problem.
#[test]
fn geometry_mismatch_is_reported_before_epoch_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = small_store(&tmp.path().join("store"));
    let other = Geometry {
        page_size: PS,
        page_count: 16,
    };
    for r in [
        store.begin_delta(0, other).map(drop),
        store.begin_base(0, other).map(drop),
    ] {
        match r {
            Err(WriteError::GeometryMismatch {
                store_pages: 8,
                pages: 16,
                ..
            }) => {}
            other => panic!("expected GeometryMismatch, got {other:?}"),
        }
    }
}

/// Typed views of a restored mapping: no `unsafe { align_to }` needed, typed errors.
#[test]
fn restored_mapping_typed_views() {
    let tmp = tempfile::tempdir().unwrap();
    let store = small_store(&tmp.path().join("store"));
    let mut m = store.restore(0).unwrap();
    let words = m.as_slice_of::<u64>().unwrap();
    assert_eq!(words.len(), 8 * PS / 8);
    assert_eq!(words[PS / 8], u64::from_ne_bytes([7; 8]));
    assert_eq!(words[0], 0);
    m.as_mut_slice_of::<u32>().unwrap()[0] = 5;
    assert_eq!(m.as_slice()[0], 5);
    match m.as_slice_of::<[u8; 3]>() {
        Err(CastError::Size { size: 3, len, .. }) => assert_eq!(len, 8 * PS),
        other => panic!("expected a size error, got {other:?}"),
    }
}
