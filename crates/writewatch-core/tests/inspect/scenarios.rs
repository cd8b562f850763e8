//! The seeds' scenarios: a private file mapping's copied / file / absent pages, pages
//! shared or exclusive after `fork`, a `.data` static written since an async re-arm, and
//! bad input.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::SeqCst;

use super::*;
use writewatch_core::inspect::InspectError;
use writewatch_core::{Backend, StaticPages, Tracker};
use writewatch_testkit::{fork_and_hold, Mmap};

fn set(r: &writewatch_core::inspect::PageRuns) -> BTreeSet<u64> {
    r.iter().collect()
}

fn pages(v: &[u64]) -> BTreeSet<u64> {
    v.iter().copied().collect()
}

/// Inspects exactly `[start, start+len)` of process `pid` and checks the mapping's totals
/// against smaps (the range must be a whole mapping).
fn inspect_whole(pid: Option<u32>, start: usize, len: usize) -> MappingPages {
    let report = Inspector::open(pid)
        .unwrap()
        .inspect(&Select::Range {
            start,
            end: start + len,
        })
        .unwrap();
    assert_eq!(report.mappings.len(), 1);
    let m = report.mappings[0].clone();
    assert_eq!((m.start, m.end), (start, start + len), "one whole mapping");
    let oracle = smaps::read(pid);
    let s = oracle
        .iter()
        .find(|s| s.start == start && s.end == start + len)
        .expect("mapping in smaps");
    let d = differences(&m, s);
    assert!(d.is_empty(), "{}", d.join("\n"));
    m
}

#[test]
fn private_file_mapping_pages_copied_file_and_absent() {
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("writewatch-inspect-4p-{}", std::process::id()));
    std::fs::write(&path, vec![0x5au8; 4 * 4096]).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.sync_all().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: advice on our own file: drop its clean cached pages, so no page is mapped
    // by fault-around unless this test touched it.
    let r = unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
    let map = Mmap::file(&f, 4 * 4096, false);
    // SAFETY: advice on our own mapping (no read-ahead); contents unchanged.
    let r = unsafe { libc::madvise(map.as_ptr().cast(), map.len(), libc::MADV_RANDOM) };
    assert_eq!(r, 0);
    let w = map.as_atomic_u64();
    w[0].store(1, SeqCst); // page 0: written (copied)
    w[2 * 512].store(1, SeqCst); // page 2: written (copied)
    assert_eq!(w[3 * 512].load(SeqCst), 0x5a5a_5a5a_5a5a_5a5a); // page 3: read
    let m = inspect_whole(None, map.as_ptr() as usize, map.len());
    assert_eq!(
        m.mapping.kind,
        writewatch_core::inspect::MappingKind::FilePrivate
    );
    assert_eq!(set(m.cow_copied.as_ref().unwrap()), pages(&[0, 2]));
    assert_eq!(set(m.file_uncopied.as_ref().unwrap()), pages(&[3]));
    assert_eq!(
        set(&m.present),
        pages(&[0, 2, 3]),
        "page 1 untouched: absent"
    );
    assert_eq!(m.totals.anonymous_kb, 8);
    // No other process maps this file: Private vs Shared is exact here too (file page 3
    // is mapped once, so private), against smaps.
    let s = smaps::read(None)
        .into_iter()
        .find(|s| s.start == m.start && s.end == m.end)
        .expect("mapping in smaps");
    assert_eq!((m.totals.private_kb, m.totals.shared_kb), (12, 0));
    assert_eq!((s.private(), s.shared()), (12, 0), "smaps agrees");
    assert!(m.written.is_none(), "no async tracker arms this mapping");
    drop(map);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn after_fork_written_pages_are_exclusive_the_rest_shared_both_sides() {
    // 8 pages between two PROT_NONE guard pages: a mapping of its own (never merged with
    // a neighbour), so its smaps entry is exactly these pages.
    let map = Mmap::no_thp(10 * 4096);
    map.touch_all();
    for guard in [0, 9] {
        // SAFETY: our own mapping; only the guard pages lose access, and nothing uses them.
        let r =
            unsafe { libc::mprotect(map.as_ptr().add(guard * 4096).cast(), 4096, libc::PROT_NONE) };
        assert_eq!(r, 0);
    }
    let (start, len) = (map.as_ptr() as usize + 4096, 8 * 4096);
    let before = inspect_whole(None, start, len);
    assert_eq!(before.exclusive.pages, 8, "all exclusive before fork");
    let child = fork_and_hold(&map.as_atomic_u64()[512..9 * 512], &[1, 5]);
    for (pid, who) in [(None, "parent"), (Some(child.pid()), "child")] {
        let m = inspect_whole(pid, start, len);
        assert_eq!(set(&m.exclusive), pages(&[1, 5]), "{who}");
        assert_eq!(set(&m.shared), pages(&[0, 2, 3, 4, 6, 7]), "{who}");
        assert_eq!(m.totals.shared_kb, 24, "{who}");
    }
    drop(child);
    let after = inspect_whole(None, start, len);
    assert_eq!(
        after.exclusive.pages, 8,
        "exclusive again once the child exited"
    );
}

static DATA: StaticPages<4> = StaticPages::new(0x1A5);

#[test]
fn data_static_written_since_the_async_rearm() {
    let Ok(t) = Tracker::builder().backend(Backend::AsyncUffd).build() else {
        println!("skipped: no async backend");
        return;
    };
    let region = t.adopt_static(&DATA).unwrap();
    region.cut().unwrap();
    let (start, end) = (
        region.as_ptr() as usize,
        region.as_ptr() as usize + region.len(),
    );
    let inspect = || {
        Inspector::open(None)
            .unwrap()
            .inspect(&Select::Range { start, end })
            .unwrap()
    };
    let r = inspect();
    assert!(r
        .mappings
        .iter()
        .all(|m| m.written.as_ref().is_some_and(PageRuns::is_empty)));
    DATA.page(2)[9].store(7, SeqCst);
    let r = inspect();
    let written: BTreeSet<u64> = r
        .mappings
        .iter()
        .flat_map(|m| {
            let off = ((m.start - start) / 4096) as u64;
            m.written.as_ref().unwrap().iter().map(move |p| p + off)
        })
        .collect();
    assert_eq!(written, pages(&[2]), "the inspector sees the write");
    assert!(r
        .mappings
        .iter()
        .all(|m| m.mapping.kind == writewatch_core::inspect::MappingKind::FilePrivate));
    assert_eq!(
        region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
        vec![2]
    );
    let r = inspect();
    assert!(
        r.mappings
            .iter()
            .all(|m| m.written.as_ref().unwrap().is_empty()),
        "re-armed"
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let gone = c.id();
    c.wait().unwrap();
    let e = Inspector::open(Some(gone)).unwrap_err();
    assert!(
        matches!(e, InspectError::NoSuchProcess { pid } if pid == gone),
        "{e}"
    );
    assert!(e.to_string().contains("no process with pid"));
    assert!(matches!(
        Inspector::open(Some(0)),
        Err(InspectError::NoSuchProcess { .. })
    ));
    let i = Inspector::open(None).unwrap();
    let e = i
        .inspect(&Select::Range {
            start: 0x1001,
            end: 0x3000,
        })
        .unwrap_err();
    assert!(
        matches!(e, InspectError::Unaligned { what: "start", .. }),
        "{e}"
    );
    let e = i
        .inspect(&Select::Range {
            start: 0x1000,
            end: 0x2800,
        })
        .unwrap_err();
    assert!(
        matches!(e, InspectError::Unaligned { what: "end", .. }),
        "{e}"
    );
    let e = i
        .inspect(&Select::Range {
            start: 0x3000,
            end: 0x3000,
        })
        .unwrap_err();
    assert!(matches!(e, InspectError::EmptyRange { .. }), "{e}");
    // Page 1 is below mmap_min_addr: never mapped.
    let e = i
        .inspect(&Select::Range {
            start: 0x1000,
            end: 0x2000,
        })
        .unwrap_err();
    assert!(matches!(e, InspectError::NotMapped { .. }), "{e}");
    assert!(e.to_string().contains("/maps"), "{e}");
    let e = i
        .inspect(&Select::Path("/no/such/file".into()))
        .unwrap_err();
    assert!(matches!(e, InspectError::NoSuchMapping { .. }), "{e}");
}
