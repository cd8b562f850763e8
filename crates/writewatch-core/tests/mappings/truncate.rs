//! The file under an adopted mapping changes size (regressions from the issue-15 adversarial
//! review): `ftruncate` drops a private mapping's COW copies without a `REMOVE` event, and a
//! shared mapping's pages past the new end of file raise `SIGBUS` when read.

use super::{adopt, async_tracker, data_file};
use crate::common::*;
use writewatch_core::SnapshotError;
use writewatch_testkit::Mmap;

fn word(map: &Mmap, page: usize) -> u64 {
    // SAFETY: `page` is inside the live mapping; the read is a plain aligned 8-byte load of
    // memory no other thread writes during the test.
    unsafe { map.as_ptr().add(page * 4096).cast::<u64>().read_volatile() }
}

fn dirty(region: &writewatch_core::Region) -> Vec<u64> {
    region.cut().unwrap().dirty().iter().collect()
}

#[test]
fn ftruncate_under_a_private_file_mapping_reports_the_dropped_copies() {
    let Some(t) = async_tracker() else { return };
    let pages = 16;
    let (path, f) = data_file("trunc-p", pages * 4096);
    let map = Mmap::file(&f, pages * 4096, false);
    // Page 1 is copied before the adopt: its copy must count too.
    // SAFETY: our own private mapping, page 1 is inside it.
    unsafe { map.as_ptr().add(4096).cast::<u64>().write_volatile(11) };
    let region = adopt(&t, &map).unwrap();
    region.cut().unwrap();
    touch(&region, 5, 55);
    assert_eq!(dirty(&region), vec![5]); // page 5's copy is protected again now
    touch(&region, 7, 77); // page 7's copy is written in the open epoch (unprotected)
    f.set_len(0).unwrap();
    f.set_len((pages * 4096) as u64).unwrap();
    // Independent oracle: the mapping itself reads the file's (now zero) pages there. Page 7
    // is read only after the cut: a read would map the file's page (unprotected, so
    // reported as written anyway) and hide the empty entry the zap left.
    for p in [1, 5] {
        assert_eq!(word(&map, p), 0, "page {p}: the copy is gone");
    }
    let got = dirty(&region);
    assert_eq!(word(&map, 7), 0, "page 7: the copy is gone");
    for p in [1, 5, 7] {
        assert!(
            got.contains(&p),
            "page {p} changed from its copy to zero: {got:?}"
        );
    }
    // Re-armed: the next epochs are exact again.
    touch(&region, 4, 1);
    touch(&region, 7, 2);
    assert_eq!(dirty(&region), vec![4, 7]);
    assert!(dirty(&region).is_empty());
    drop(region);
    drop(map);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn cut_and_copy_past_the_end_of_a_shrunk_file_is_a_typed_error_not_sigbus() {
    let Some(t) = async_tracker() else { return };
    for shared in [true, false] {
        let pages = 8;
        let (path, f) = data_file(if shared { "shrink-s" } else { "shrink-p" }, pages * 4096);
        let map = Mmap::file(&f, pages * 4096, shared);
        let region = adopt(&t, &map).unwrap();
        region.cut().unwrap();
        touch(&region, 2, 22);
        touch(&region, 6, 66);
        // The file now ends inside page 4: pages 5.. have no file behind them.
        f.set_len(4 * 4096 + 100).unwrap();
        let mut seen = Vec::new();
        let e = region
            .cut_and_copy(|p, bytes: &[u8]| {
                seen.push((p, u64::from_le_bytes(bytes[..8].try_into().unwrap())));
                Ok::<(), std::io::Error>(())
            })
            .unwrap_err();
        match e {
            writewatch_core::CutAndCopyError::Read(
                ref r @ SnapshotError::BeyondEndOfFile { page },
            ) => {
                assert_eq!(page, 6, "shared {shared}");
                assert!(r.to_string().contains("past the end of"), "{r}");
            }
            other => panic!("shared {shared}: {other}"),
        }
        // Page 2 (inside the file) was handed over with its content before the error.
        assert_eq!(seen, vec![(2, 22)], "shared {shared}");
        // Nothing is lost: once the file is long again, the next cut reports both pages.
        f.set_len((pages * 4096) as u64).unwrap();
        let got = dirty(&region);
        assert!(
            got.contains(&2) && got.contains(&6),
            "shared {shared}: {got:?}"
        );
        drop(region);
        drop(map);
        std::fs::remove_file(&path).unwrap();
    }
}
