//! Corruption: every single-byte flip and every truncation of every file of a
//! tiny store is detected by verify and by restore, without panicking and
//! without a wrong restore reported as success. Plus targeted malformed files
//! (wrong version, wrong page size, missing parent, oversized fields).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use writewatch_checkpoint::format::{SegmentHeader, FOOTER_LEN, HEADER_LEN};
use writewatch_checkpoint::{Corruption, OpenError, RestoreError, Store};
use writewatch_testkit::chain::write_chain;

const PS: usize = 512;
const PAGES: usize = 8;

/// Base (pages 0..5), delta 1 (pages 2,3 rewritten, page 4 zeroed: a zero
/// run), delta 2 (pages 6,7 new, page 0 rewritten). Returns the content per
/// epoch.
fn build(dir: &Path) -> Vec<Vec<u8>> {
    let mut region = vec![0u8; PS * PAGES];
    let rng = std::cell::RefCell::new(common::Rng(99));
    rng.borrow_mut().fill(&mut region[..5 * PS]);
    write_chain(
        dir,
        region,
        PS,
        &mut [
            &mut |r: &mut [u8]| {
                rng.borrow_mut().fill(&mut r[2 * PS..4 * PS]);
                r[4 * PS..5 * PS].fill(0);
                vec![(2, 3)]
            },
            &mut |r: &mut [u8]| {
                rng.borrow_mut().fill(&mut r[6 * PS..8 * PS]);
                rng.borrow_mut().fill(&mut r[..PS]);
                vec![(0, 1), (6, 2)]
            },
        ],
    )
}

fn store_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n == "MANIFEST" || n.ends_with(".wws")
        })
        .collect();
    v.sort();
    v
}

/// Returns (verify detected, some restore failed), and asserts no restore
/// returned wrong content as success.
fn check(dir: &Path, states: &[Vec<u8>], what: &str) -> (bool, bool) {
    let store = match Store::open_read_only(dir) {
        Ok(s) => s,
        Err(OpenError::Corrupt(_)) => return (true, true),
        Err(e) => panic!("{what}: unexpected open error {e}"),
    };
    let verify_detected = match store.verify() {
        Ok(r) => !r.is_ok(),
        Err(_) => true,
    };
    let mut restore_failed = false;
    for (k, want) in states.iter().enumerate() {
        match store.restore(k as u64) {
            Ok(m) => assert!(
                m.as_slice() == &want[..],
                "{what}: epoch {k} restored wrong content"
            ),
            Err(RestoreError::Corrupt(_)) | Err(RestoreError::NoSuchEpoch(_)) => {
                restore_failed = true
            }
            Err(e) => panic!("{what}: unexpected restore error {e}"),
        }
        let mut buf = vec![0x77u8; PS * PAGES];
        match store.restore_into(k as u64, &mut buf) {
            Ok(()) => assert!(buf == *want, "{what}: epoch {k} restore_into wrong content"),
            Err(_) => restore_failed = true,
        }
    }
    (verify_detected, restore_failed)
}

#[test]
fn every_byte_flip_and_truncation_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let states = build(dir);
    assert_eq!(check(dir, &states, "pristine"), (false, false));
    let files = store_files(dir);
    assert_eq!(files.len(), 4, "{files:?}");
    let mut cases = 0;
    for f in &files {
        let orig = fs::read(f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for i in 0..orig.len() {
            let mut bad = orig.clone();
            bad[i] ^= 0xFF;
            fs::write(f, &bad).unwrap();
            let what = format!("{name} byte {i} flipped");
            let (v, r) = check(dir, &states, &what);
            assert!(v, "{what}: verify did not notice");
            assert!(r, "{what}: no restore noticed");
            cases += 1;
        }
        for len in 0..orig.len() {
            fs::write(f, &orig[..len]).unwrap();
            let what = format!("{name} truncated to {len}");
            let (v, r) = check(dir, &states, &what);
            assert!(v, "{what}: verify did not notice");
            assert!(r, "{what}: no restore noticed");
            cases += 1;
        }
        fs::write(f, &orig).unwrap();
    }
    assert_eq!(check(dir, &states, "restored"), (false, false));
    eprintln!("{cases} corruptions checked");
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    store_files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wws"))
        .collect()
}

fn restore_err(dir: &Path, epoch: u64) -> writewatch_checkpoint::CorruptError {
    let store = Store::open_read_only(dir).unwrap();
    match store.restore(epoch) {
        Err(RestoreError::Corrupt(c)) => c,
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// Rewrites a header field and fixes the header checksum (and the copy of it
/// in the footer), so that only the semantic check can catch it.
fn patch_header(path: &Path, off: usize, bytes: &[u8]) {
    let mut b = fs::read(path).unwrap();
    b[off..off + bytes.len()].copy_from_slice(bytes);
    let crc = crc32c::crc32c(&b[..HEADER_LEN - 4]);
    b[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    fs::write(path, &b).unwrap();
}

#[test]
fn wrong_version_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let seg = &segment_paths(tmp.path())[0];
    patch_header(seg, 8, &2u32.to_le_bytes());
    let e = restore_err(tmp.path(), 0);
    assert_eq!(&e.path, seg);
    assert_eq!(e.offset, 8);
    assert_eq!(e.kind, Corruption::UnsupportedVersion { found: 2 });
    assert!(
        e.to_string().contains("unsupported format version 2"),
        "{e}"
    );
}

#[test]
fn wrong_page_size_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let seg = &segment_paths(tmp.path())[1];
    // A valid-looking header with another page size (and region length).
    patch_header(seg, 16, &1024u32.to_le_bytes());
    let e = restore_err(tmp.path(), 1);
    assert_eq!(&e.path, seg);
    // Footer copy of the header crc no longer matches, or the manifest.
    let s = e.to_string();
    assert!(s.contains("checksum") || s.contains("page_size"), "{s}");

    // Same with the footer fixed up too: the manifest cross-check names it.
    let mut b = fs::read(seg).unwrap();
    let (h, hcrc) = SegmentHeader::decode(seg, &b[..HEADER_LEN], b.len() as u64).unwrap();
    assert_eq!(h.page_size, 1024);
    let fo = b.len() - FOOTER_LEN;
    b[fo + 48..fo + 52].copy_from_slice(&hcrc.to_le_bytes());
    let fcrc = crc32c::crc32c(&b[fo..fo + FOOTER_LEN - 4]);
    b[fo + FOOTER_LEN - 4..].copy_from_slice(&fcrc.to_le_bytes());
    fs::write(seg, &b).unwrap();
    let e = restore_err(tmp.path(), 1);
    assert!(
        matches!(
            e.kind,
            Corruption::ManifestMismatch { .. } | Corruption::Field { .. }
        ),
        "{e}"
    );
}

#[test]
fn missing_parent_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let segs = segment_paths(tmp.path());
    fs::remove_file(&segs[1]).unwrap();
    let e = restore_err(tmp.path(), 2);
    assert_eq!(e.path, segs[1]);
    assert_eq!(e.kind, Corruption::Missing);
    // Epoch 0 does not need it.
    let store = Store::open_read_only(tmp.path()).unwrap();
    assert!(store.restore(0).is_ok());
    let report = store.verify().unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
}

#[test]
fn oversized_fields_do_not_allocate() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let seg = &segment_paths(tmp.path())[0];
    let orig = fs::read(seg).unwrap();
    let fo = orig.len() - FOOTER_LEN;
    // Huge run count / data length with valid footer checksums.
    for (off, val) in [
        (16usize, u64::MAX / 40),
        (16, 1 << 40),
        (40, u64::MAX - 200),
        (8, 1 << 62),
    ] {
        let mut b = orig.clone();
        b[fo + off..fo + off + 8].copy_from_slice(&val.to_le_bytes());
        let crc = crc32c::crc32c(&b[fo..fo + FOOTER_LEN - 4]);
        b[fo + FOOTER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        fs::write(seg, &b).unwrap();
        let e = restore_err(tmp.path(), 0);
        assert!(matches!(e.kind, Corruption::Field { .. }), "{e}");
        // Named at a footer field (the inconsistency may be reported on the
        // partner field, e.g. index_offset for data_bytes).
        assert!((fo as u64..orig.len() as u64).contains(&e.offset), "{e}");
        assert!(writewatch_checkpoint::format::decode_segment(seg, &b).is_err());
    }
    // Huge region length with a valid header checksum.
    fs::write(seg, &orig).unwrap();
    patch_header(seg, 24, &(1u64 << 60).to_le_bytes());
    let e = restore_err(tmp.path(), 0);
    assert!(
        matches!(
            e.kind,
            Corruption::Field {
                field: "region_len",
                ..
            }
        ),
        "{e}"
    );
}
