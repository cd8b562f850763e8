//! Acceptance tests of the sync backend's dirty sets (issue: foundation).
#[path = "../common/mod.rs"]
mod common;

use std::sync::Arc;

use common::*;
use writewatch_core::{Backend, Feature, Tracker};

// The tests kept here sort (by name) before every test of the modules below, as they did in
// the single file: `foreign_sigbus_still_reaches_the_previous_handler` replaces the process's
// SIGBUS handler and must run before the in-thread trackers of the module tests install theirs.
mod lifecycle;
mod oracles;
mod service;

const MIB: usize = 1 << 20;

fn tracker() -> Tracker {
    Tracker::builder()
        .backend(Backend::SyncUffd)
        .build()
        .expect("build tracker (needs userfaultfd: run as root or see the error)")
}

/// One tracker per backend the running machine supports. A backend the probe says this kernel
/// should have but that fails to build is a test failure, never a silent skip.
fn all_backends() -> Vec<Tracker> {
    let probe = writewatch_core::probe();
    let mut v = Vec::new();
    for b in [Backend::SyncUffd, Backend::AsyncUffd, Backend::Mprotect] {
        match Tracker::builder().backend(b).build() {
            Ok(t) => v.push(t),
            Err(e) => {
                let expected = match b {
                    Backend::AsyncUffd => probe.kernel_version >= (6, 7, 0) && probe.usable(),
                    Backend::SyncUffd => probe.kernel_version >= (5, 7, 0) && probe.usable(),
                    _ => true,
                };
                assert!(
                    !expected,
                    "backend {} should work on kernel {}: {e}",
                    b.name(),
                    probe.kernel_release
                );
                println!("skipped: backend {}: {e}", b.name());
            }
        }
    }
    // The sync backend once more with eager re-protection at age 0: pages are re-armed as
    // soon as the service thread is idle, so writers keep re-faulting on armed pages (the
    // path most likely to lose a write if the armed => protected invariant broke).
    if v.iter().any(|t| t.backend() == Backend::SyncUffd) {
        v.push(
            Tracker::builder()
                .backend(Backend::SyncUffd)
                .eager_reprotect(std::time::Duration::ZERO)
                .build()
                .expect("sync backend with eager re-protection"),
        );
        // And with in-thread fault handling (SIGBUS mode): faults served by the writers.
        v.push(
            Tracker::builder()
                .backend(Backend::SyncUffd)
                .in_thread_faults(true)
                .build()
                .expect("sync backend with in-thread faults"),
        );
        // Both composed (issue 14): handlers clear armed bits the service thread sets while
        // they run; age 0 re-arms as often as the scan allows.
        v.push(
            Tracker::builder()
                .backend(Backend::SyncUffd)
                .in_thread_faults(true)
                .eager_reprotect(std::time::Duration::ZERO)
                .build()
                .expect("sync backend with in-thread faults and eager re-protection"),
        );
        // And the fixed behaviour before the adaptive policy.
        v.push(
            Tracker::builder()
                .backend(Backend::SyncUffd)
                .adaptive(false)
                .build()
                .expect("sync backend, adaptive(false)"),
        );
    }
    v
}

#[test]
fn fork_child_writes_without_hanging() {
    let t = tracker();
    let region = t.map_anonymous(64 * 4096).unwrap();
    touch(&region, 1, 1);
    region.cut().unwrap();
    fork_and_write(region.as_atomic_u64(), 64);
    // The parent's tracking is unaffected and its memory unchanged by the child.
    touch(&region, 7, 2);
    assert_eq!(
        region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
        vec![7]
    );
    assert_eq!(
        region.as_atomic_u64()[2 * WORDS_PER_PAGE].load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[test]
fn bad_input_gets_typed_errors() {
    use writewatch_core::MapError;
    let t = tracker();
    assert!(matches!(t.map_anonymous(0), Err(MapError::ZeroLength)));
    assert!(matches!(
        t.map_anonymous(100),
        Err(MapError::Unaligned { what: "length", .. })
    ));
    assert!(matches!(t.map_shared(0), Err(MapError::ZeroLength)));
    let region = t.map_anonymous(16 * 4096).unwrap();
    // SAFETY: (all adopt calls below) each is expected to be rejected before registering.
    unsafe {
        assert!(matches!(
            t.adopt(region.as_ptr().add(1), 4096),
            Err(MapError::Unaligned {
                what: "address",
                ..
            })
        ));
        assert!(matches!(
            t.adopt(region.as_ptr(), 100),
            Err(MapError::Unaligned { what: "length", .. })
        ));
        assert!(matches!(
            t.adopt(region.as_ptr(), 0),
            Err(MapError::ZeroLength)
        ));
        assert!(matches!(
            t.adopt((usize::MAX - 4095) as *mut u8, 8192),
            Err(MapError::Overflow { .. })
        ));
        let e = t.adopt(region.as_ptr().add(4096), 4096).unwrap_err();
        assert!(matches!(e, MapError::Overlap { .. }), "{e}");
    }
    // Not mapped: a hole we make ourselves.
    // SAFETY: map then unmap our own range to obtain an address that is not mapped.
    let hole = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            8 * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        libc::munmap(p, 8 * 4096);
        p
    };
    // SAFETY: expected to be rejected.
    let e = unsafe { t.adopt(hole.cast(), 8 * 4096) }.unwrap_err();
    assert!(matches!(e, MapError::NotMapped { .. }), "{e}");
    // File-backed on a regular filesystem.
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("writewatch-file-backed");
    std::fs::write(&path, vec![0u8; 4 * 4096]).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // SAFETY: a shared mapping of our own file.
    let fp = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4 * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(fp, libc::MAP_FAILED);
    // SAFETY: expected to be rejected.
    let e = unsafe { t.adopt(fp.cast(), 4 * 4096) }.unwrap_err();
    let fs_is_tmpfs = std::fs::read_to_string("/proc/self/mounts")
        .map(|_| false)
        .unwrap_or(false);
    if !fs_is_tmpfs {
        // File-backed memory: only the async backend tracks it (tests/mappings).
        assert!(matches!(e, MapError::FileBackedNeedsAsync { .. }), "{e}");
        assert!(e.to_string().contains("file-backed"), "{e}");
    }
    // SAFETY: our own mapping.
    unsafe { libc::munmap(fp, 4 * 4096) };
    // Errors name the fix.
    assert!(MapError::ZeroLength
        .to_string()
        .contains("at least one page"));
}

#[test]
fn cut_cost_is_proportional_to_dirty_runs() {
    for b in [Backend::SyncUffd, Backend::Mprotect] {
        let t = Tracker::builder()
            .backend(b)
            .merge_gap_pages(8)
            // The fixed plan's cost is what is counted: the adaptive policy may re-arm some
            // pages in the background before the cut (fewer cut ioctls, seen in a loaded run).
            .adaptive(false)
            .build()
            .unwrap();
        let region = t.map_anonymous(64 * MIB).unwrap();
        region.cut().unwrap();
        // k scattered pages, 100 pages apart (more than the merge gap).
        let k = 37u64;
        for i in 0..k {
            touch(&region, i * 100 + 5, 1);
        }
        let e = region.cut().unwrap();
        assert_eq!(e.dirty().len() as u64, k);
        assert!(
            e.stats().protect_ioctls <= k,
            "{} ioctls for {k} pages",
            e.stats().protect_ioctls
        );
        assert_eq!(e.stats().protect_ioctls, k);
        // One contiguous run: one ioctl.
        for p in 1000..1300 {
            touch(&region, p, 1);
        }
        let e = region.cut().unwrap();
        assert_eq!(e.dirty().runs().collect::<Vec<_>>(), vec![(1000, 300)]);
        assert_eq!(e.stats().protect_ioctls, 1);
        // Runs separated by small gaps merge.
        for p in [2000, 2003, 2006] {
            touch(&region, p, 1);
        }
        let e = region.cut().unwrap();
        assert_eq!(e.dirty().len(), 3);
        assert_eq!(e.stats().protect_ioctls, 1);
        // An empty epoch costs nothing.
        assert_eq!(region.cut().unwrap().stats().protect_ioctls, 0);
    }
}

#[test]
fn dropped_region_is_unregistered_and_unmapped() {
    let t = tracker();
    let r = t.map_anonymous(4 * 4096).unwrap();
    let p = r.as_ptr() as usize;
    touch(&r, 0, 1);
    drop(r);
    // The address range is gone from our maps.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        !maps.lines().any(|l| l.starts_with(&format!("{p:x}-"))),
        "owned region unmapped on drop"
    );
}

#[test]
fn eager_reprotect_rearms_in_the_background_and_cut_skips_armed_pages() {
    use std::time::{Duration, Instant};
    let t = Tracker::builder()
        .backend(Backend::SyncUffd)
        .eager_reprotect(Duration::from_millis(1))
        // The per-run plan (the adaptive per-chunk plan would merge the re-faulted pages of a
        // 2 MiB chunk into one call; the ioctl counts below are per run).
        .merge_gap_pages(8)
        .build()
        .unwrap();
    let region = t.map_anonymous(4096 * 4096).unwrap();
    region.cut().unwrap();
    let pages: Vec<u64> = (0..4096).step_by(16).collect(); // 256 scattered pages
    let wait_armed = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while t.stats().eager_pages < n {
            assert!(
                Instant::now() < deadline,
                "eager re-protection never ran: {:?}",
                t.stats()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    for round in 0..3u64 {
        let base = t.stats();
        for &p in &pages {
            touch(&region, p, round + 1);
        }
        wait_armed(base.eager_pages + pages.len() as u64);
        // Write 8 of them again: one more fault each (re-fault), then they stay writable.
        for &p in &pages[..8] {
            touch(&region, p, round + 100);
        }
        // (Under load a writer may be descheduled for longer than the age between its fault
        // being served and its store retrying: the page is re-armed first and faults once more.
        // Correct, and counted, so these are lower bounds.)
        let s = t.stats();
        assert!(s.refaults - base.refaults >= 8, "{s:?}");
        let e = region.cut().unwrap();
        assert_eq!(e.dirty().iter().collect::<Vec<_>>(), pages, "round {round}");
        // Pages 16 apart: one ioctl per page the cut still had to re-protect (the re-faulted
        // ones); every other page was re-armed in the background.
        let st = e.stats();
        assert!(st.protect_ioctls >= 8, "{st:?}");
        assert_eq!(
            st.pre_protected + st.protect_ioctls,
            pages.len() as u64,
            "{st:?}"
        );
        drop(e.into_dirty());
        // Nothing is left writable: the next epoch sees exactly the next writes.
        touch(&region, 1, 7);
        assert_eq!(
            region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
            vec![1]
        );
    }
}

#[test]
fn in_thread_mode_kernel_write_gets_efault_not_a_hang() {
    // Documented trade-off of in-thread fault handling: a system call writing tracked memory
    // cannot raise SIGBUS in user space, so it fails with EFAULT (nothing is lost: nothing
    // was written).
    let t = Tracker::builder().in_thread_faults(true).build().unwrap();
    let region = t.map_anonymous(4 * 4096).unwrap();
    region.cut().unwrap();
    let (r, w) = nix::unistd::pipe().unwrap();
    nix::unistd::write(&w, &[7u8; 64]).unwrap();
    // SAFETY: the destination is inside the region, mapped for the test's duration.
    let n = unsafe {
        libc::read(
            std::os::fd::AsRawFd::as_raw_fd(&r),
            region.as_ptr().add(4096).cast(),
            64,
        )
    };
    assert_eq!(n, -1);
    assert_eq!(nix::errno::Errno::last(), nix::errno::Errno::EFAULT);
    assert!(region.cut().unwrap().dirty().is_empty());
    // A user-space write to the same page is tracked as usual.
    touch(&region, 1, 9);
    assert_eq!(
        region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
        vec![1]
    );
}

#[test]
fn in_thread_mode_rejects_other_backends_and_composes_with_eager() {
    use writewatch_core::BuildError;
    for b in [Backend::AsyncUffd, Backend::Mprotect] {
        let e = Tracker::builder().backend(b).in_thread_faults(true).build();
        assert!(matches!(e, Err(BuildError::Incompatible { .. })), "{b:?}");
    }
    // Eager re-protection composes with in-thread faults (armed bits shared with the
    // handler): the combination builds.
    Tracker::builder()
        .in_thread_faults(true)
        .eager_reprotect(std::time::Duration::ZERO)
        .build()
        .unwrap();
    let e = Tracker::builder()
        .in_thread_faults(true)
        .without(Feature::Sigbus)
        .build();
    assert!(
        matches!(e, Err(BuildError::MissingFeature { feature, .. }) if feature == "UFFD_FEATURE_SIGBUS")
    );
}

#[test]
fn foreign_sigbus_still_reaches_the_previous_handler() {
    // A SIGBUS that is not a write-protect fault on a tracked page (here: raised with kill)
    // must reach the handler installed before the tracker's.
    use std::sync::atomic::{AtomicUsize, Ordering};
    static HITS: AtomicUsize = AtomicUsize::new(0);
    extern "C" fn prev(_: libc::c_int) {
        HITS.fetch_add(1, Ordering::SeqCst);
    }
    // SAFETY: installing a plain handler that only bumps an atomic.
    let old = unsafe { libc::signal(libc::SIGBUS, prev as *const () as libc::sighandler_t) };
    assert_ne!(old, libc::SIG_ERR);
    let t = Tracker::builder().in_thread_faults(true).build().unwrap();
    let region = t.map_anonymous(4 * 4096).unwrap();
    touch(&region, 0, 1);
    // SAFETY: raising a signal in this thread; the handler above is async-signal-safe.
    assert_eq!(unsafe { libc::raise(libc::SIGBUS) }, 0);
    assert!(
        HITS.load(Ordering::SeqCst) >= 1,
        "previous SIGBUS handler not called"
    );
    assert_eq!(
        region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
        vec![0]
    );
}
