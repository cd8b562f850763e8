//! The application's own `mprotect` on tracked ranges (a read-only child runs in a
//! subprocess: its test path is `mprotect::mprotect_read_only_child`).

use super::*;

// ----------------------------------------------------------------- mprotect by the app

const MPROTECT_CHILD: &str = "WW_MISBEHAVIOUR_MPROTECT_CHILD";

/// Child: a write to a tracked page the application made read-only gets SIGSEGV, as the
/// application asked.
#[test]
fn mprotect_read_only_child() {
    if std::env::var_os(MPROTECT_CHILD).is_none() {
        return;
    }
    let t = sync_tracker();
    let region = t.map_anonymous(8 * PS).unwrap();
    touch(&region, 1, 1);
    region.cut().unwrap();
    // SAFETY: pages 0..4 of the region.
    let r = unsafe { libc::mprotect(region.as_ptr().cast(), 4 * PS, libc::PROT_READ) };
    assert_eq!(r, 0);
    touch(&region, 6, 1); // still writable: tracked, fine
    touch(&region, 2, 1); // SIGSEGV
    std::process::exit(0);
}

#[test]
fn mprotect_read_only_by_the_application_segfaults_writes() {
    use std::os::unix::process::ExitStatusExt;
    let st = run_child("mprotect::mprotect_read_only_child", MPROTECT_CHILD, 20);
    assert_eq!(st.signal(), Some(libc::SIGSEGV), "{st:?}");
}

#[test]
fn mprotect_read_only_then_back_keeps_tracking() {
    for t in uffd_trackers() {
        let region = t.map_anonymous(32 * PS).unwrap();
        for pg in 0..32 {
            touch(&region, pg, 1);
        }
        region.cut().unwrap();
        // SAFETY: the whole region; no other thread accesses it.
        unsafe {
            assert_eq!(
                libc::mprotect(region.as_ptr().cast(), 32 * PS, libc::PROT_READ),
                0
            );
            assert_eq!(
                libc::mprotect(
                    region.as_ptr().cast(),
                    32 * PS,
                    libc::PROT_READ | libc::PROT_WRITE
                ),
                0
            );
        }
        for round in 0..3u64 {
            let w = [round + 4, 17, 30];
            for pg in w {
                touch(&region, pg, round + 2);
            }
            let e = region.cut().unwrap();
            assert_eq!(
                e.dirty().iter().collect::<BTreeSet<_>>(),
                w.into_iter().collect::<BTreeSet<_>>(),
                "{}: round {round}",
                t.backend().name()
            );
        }
    }
}

/// The mprotect backend: the application makes tracked pages writable again behind the
/// backend's back. The write must not fault into the backend (it completes), and the dirty
/// set must still not under-report (design.md section 2). Found by this suite (the backend
/// learned of writes only through its own SIGSEGV, which the application's mprotect(RW)
/// removed); fixed in 71c7b01 (each cut marks pages of writable mappings dirty).
/// The mprotect backend, a region whose pages the application made writable again with
/// `mprotect(RW)`, then a write to page 3: the tracker and the dirty set of the next cut.
fn mprotect_rw_then_write() -> (Tracker, Region, writewatch_core::DirtySet) {
    let t = Tracker::builder()
        .backend(Backend::Mprotect)
        .build()
        .unwrap();
    let region = t.map_anonymous(8 * PS).unwrap();
    region.cut().unwrap();
    // SAFETY: the whole region; no other thread accesses it.
    unsafe {
        assert_eq!(
            libc::mprotect(
                region.as_ptr().cast(),
                8 * PS,
                libc::PROT_READ | libc::PROT_WRITE
            ),
            0
        );
    }
    touch(&region, 3, 1);
    let d = region.cut().unwrap().into_dirty();
    (t, region, d)
}

#[test]
fn mprotect_backend_application_mprotect_rw_still_reports_writes() {
    let (_t, _region, d) = mprotect_rw_then_write();
    assert!(
        d.contains(3),
        "write to page 3 after mprotect(RW) not reported: {:?}",
        d.iter().collect::<Vec<_>>()
    );
}

/// The mprotect backend after the application's mprotect(RW): the write completes (no
/// SIGSEGV, no hang) and the tracker stays usable.
#[test]
fn mprotect_backend_application_mprotect_rw_does_not_crash_or_hang() {
    let (t, region, d) = mprotect_rw_then_write();
    println!(
        "mprotect backend after the application's mprotect(RW): reported {:?}",
        d.iter().collect::<Vec<_>>()
    );
    assert_eq!(region.as_atomic_u64()[3 * WORDS_PER_PAGE].load(SeqCst), 1);
    let other = t.map_anonymous(2 * PS).unwrap();
    touch(&other, 1, 1);
    assert!(other.cut().unwrap().dirty().contains(1));
}
