//! Edge cases found by the outside adversarial suite (issue 11, items 3, 7, 8, 9, 10, 11, and
//! issue 12's `adopt` of a read-only mapping). One test (or one pinned limit) per defect; each
//! row of docs/reliability-edges.md names its test. Nothing here can hang: blocking steps run
//! under a watchdog, in a forked child with a deadline, or in a re-executed test binary.
mod common;
#[path = "common/edges_support.rs"]
mod edges_support;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::*;
use edges_support::*;
use writewatch_core::{Backend, Tracker};
use writewatch_testkit::Mmap;

const PS: usize = 4096;

fn tracker(b: Backend) -> Tracker {
    Tracker::builder().backend(b).build().unwrap()
}

fn all_backends() -> Vec<Tracker> {
    vec![
        tracker(Backend::SyncUffd),
        Tracker::builder()
            .backend(Backend::SyncUffd)
            .in_thread_faults(true)
            .build()
            .unwrap(),
        tracker(Backend::AsyncUffd),
        tracker(Backend::Mprotect),
    ]
}

fn dirty(region: &writewatch_core::Region) -> BTreeSet<u64> {
    region.cut().unwrap().dirty().iter().collect()
}

// ------------------------------------------------------------- item 3: shared memory

/// Item 3: a fork child wrote a `map_shared` region; the parent's cut was empty and the
/// parent's memory held the child's value. Now the range is MADV_DONTFORK: the child has no
/// mapping there and dies of SIGSEGV; the parent's memory and dirty set are unchanged.
#[test]
fn map_shared_fork_child_cannot_write_parent_memory() {
    for t in all_backends() {
        let name = t.backend().name();
        let region = t.map_shared(4 * PS).unwrap();
        touch(&region, 0, 1);
        region.cut().unwrap();
        let addr = region.as_ptr() as usize + PS + 64;
        let fate = fork_run(|| {
            // SAFETY: the child writes what would be its copy of the shared mapping (if it
            // inherited one); with MADV_DONTFORK the address is unmapped and this faults.
            unsafe { std::ptr::write_volatile(addr as *mut u64, 0xC0FFEE) };
        });
        assert_eq!(fate, Fate::Signalled(libc::SIGSEGV), "{name}");
        assert_eq!(
            region.as_atomic_u64()[PS / 8 + 8].load(SeqCst),
            0,
            "{name}: the child changed the parent's memory"
        );
        assert_eq!(dirty(&region), BTreeSet::new(), "{name}");
        touch(&region, 2, 5);
        assert_eq!(
            dirty(&region),
            BTreeSet::from([2]),
            "{name}: tracking goes on"
        );
    }
}

/// Item 3, documented limit: an ADOPTED shared mapping is not made MADV_DONTFORK (the
/// caller's mapping, the caller's fork semantics): a fork child's write changes the parent's
/// memory and is not reported. Pinned so a change is noticed; the caller's remedy
/// (`madvise(MADV_DONTFORK)` before forking) is shown to work.
#[test]
fn adopted_shmem_fork_child_write_is_a_documented_limit() {
    for t in all_backends() {
        let name = t.backend().name();
        let (_fd, m) = Mmap::memfd_shared(4 * PS);
        let p = m.as_ptr();
        // SAFETY: our own mapping, unmapped only after the region is dropped.
        let region = unsafe { t.adopt(p, 4 * PS) }.unwrap();
        region.cut().unwrap(); // adoption: all dirty
        let addr = p as usize + PS + 64;
        let fate = fork_run(|| {
            // SAFETY: the child's (shared) mapping of the memfd.
            unsafe { std::ptr::write_volatile(addr as *mut u64, 0xC0FFEE) };
        });
        assert_eq!(fate, Fate::Exited(0), "{name}");
        assert_eq!(region.as_atomic_u64()[PS / 8 + 8].load(SeqCst), 0xC0FFEE);
        assert_eq!(
            dirty(&region),
            BTreeSet::new(),
            "{name}: the limit changed (the child's write is reported now): update design.md section 6"
        );
        // The remedy: MADV_DONTFORK by the caller.
        // SAFETY: advice on our own mapping; it changes nothing in this process.
        let r = unsafe { libc::madvise(p.cast(), 4 * PS, libc::MADV_DONTFORK) };
        assert_eq!(r, 0);
        let fate = fork_run(|| {
            // SAFETY: as above; the child has no mapping now.
            unsafe { std::ptr::write_volatile(addr as *mut u64, 1) };
        });
        assert_eq!(fate, Fate::Signalled(libc::SIGSEGV), "{name}");
        drop(region);
        drop(m);
    }
}

/// Item 3, documented limit: an alias of a `map_shared` region made with
/// `mremap(ptr, 0, len, MREMAP_MAYMOVE)`: writes through the alias change the region's pages
/// but are not reported, and the region is not invalidated (userfaultfd backends). On the
/// mprotect backend the alias inherits the read-only protection, so writes through it fault
/// (SIGSEGV) instead of going unseen. Pinned.
#[test]
fn mremap_alias_of_shared_region_is_a_documented_limit() {
    for t in all_backends() {
        let name = t.backend().name();
        let region = t.map_shared(4 * PS).unwrap();
        region.cut().unwrap();
        // SAFETY: creates a second mapping of the same shared pages; it aliases the region's
        // memory, which we only access through atomics / volatile stores below.
        let alias =
            unsafe { libc::mremap(region.as_ptr().cast(), 0, 4 * PS, libc::MREMAP_MAYMOVE) };
        assert_ne!(alias, libc::MAP_FAILED, "{name}: mremap");
        if t.backend() == Backend::Mprotect {
            // The alias copies the protection of the (clean, hence read-only) range: a write
            // through it raises SIGSEGV, which the handler passes on (not a tracked range).
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let line = maps
                .lines()
                .find(|l| l.starts_with(&format!("{:x}-", alias as usize)))
                .unwrap();
            assert!(line.contains(" r--s "), "{name}: {line}");
            // SAFETY: our alias mapping; nothing references it.
            unsafe { libc::munmap(alias, 4 * PS) };
            continue;
        }
        // SAFETY: the alias maps the region's pages read-write.
        unsafe { std::ptr::write_volatile((alias as usize + 3 * PS) as *mut u64, 77) };
        assert_eq!(region.as_atomic_u64()[3 * PS / 8].load(SeqCst), 77);
        let got = region
            .cut()
            .map(|e| e.dirty().iter().collect::<BTreeSet<u64>>());
        assert!(
            matches!(&got, Ok(d) if d.is_empty()),
            "{name}: the limit changed ({got:?}): update design.md section 6"
        );
        // SAFETY: our alias mapping; nothing references it.
        unsafe { libc::munmap(alias, 4 * PS) };
    }
}

/// Item 3, documented limit: `fallocate(PUNCH_HOLE)` on an adopted memfd zeroes a page
/// without a report. Pinned.
#[test]
fn adopted_memfd_punch_hole_is_a_documented_limit() {
    use std::os::fd::AsRawFd;
    for t in all_backends() {
        let name = t.backend().name();
        let (fd, m) = Mmap::memfd_shared(4 * PS);
        let p = m.as_ptr();
        // SAFETY: our own mapping, unmapped only after the region is dropped.
        let region = unsafe { t.adopt(p, 4 * PS) }.unwrap();
        touch(&region, 1, 9);
        region.cut().unwrap();
        // SAFETY: punching a hole in our own memfd (the page's content becomes zero).
        let r = unsafe {
            libc::fallocate(
                fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                PS as libc::off_t,
                PS as libc::off_t,
            )
        };
        assert_eq!(r, 0);
        assert_eq!(region.as_atomic_u64()[PS / 8].load(SeqCst), 0);
        assert_eq!(
            dirty(&region),
            BTreeSet::new(),
            "{name}: the limit changed (the hole is reported now): update design.md section 6"
        );
        drop(region);
        drop(m);
    }
}

// ------------------------------------------------------- item 7: two trackers, one range

/// Item 7: two mprotect-backend trackers adopted one range and the second missed 20/20
/// writes. Now the second adoption is refused (`TrackedElsewhere`, naming the range), across
/// backends both ways; once the first region is dropped the second tracker can adopt the
/// range and sees every write.
#[test]
fn second_tracker_on_a_tracked_range_is_refused() {
    let p = anon_mmap(8 * PS).cast::<u8>();
    let first = tracker(Backend::Mprotect);
    // SAFETY: our own mapping, unmapped at the end after every region is dropped.
    let r1 = unsafe { first.adopt(p, 8 * PS) }.unwrap();
    for second in [
        tracker(Backend::Mprotect),
        tracker(Backend::SyncUffd),
        tracker(Backend::AsyncUffd),
    ] {
        // SAFETY: as above (expected to be refused).
        let e = unsafe { second.adopt(p.wrapping_add(2 * PS), 2 * PS) }.unwrap_err();
        assert!(
            is_variant(&e, "TrackedElsewhere"),
            "{}: {e:?}",
            second.backend().name()
        );
        assert!(e.to_string().contains(&format!("{:x}", p as usize)), "{e}");
    }
    // The same tracker still gets its own `Overlap`.
    // SAFETY: as above (expected to be refused).
    let e = unsafe { first.adopt(p, PS) }.unwrap_err();
    assert!(is_variant(&e, "Overlap"), "{e:?}");
    // A userfaultfd tracker's range refuses an mprotect tracker too.
    let q = anon_mmap(4 * PS).cast::<u8>();
    let u = tracker(Backend::SyncUffd);
    // SAFETY: our own mapping.
    let ru = unsafe { u.adopt(q, 4 * PS) }.unwrap();
    // SAFETY: as above (expected to be refused).
    let e = unsafe { tracker(Backend::Mprotect).adopt(q, 4 * PS) }.unwrap_err();
    assert!(is_variant(&e, "TrackedElsewhere"), "{e:?}");
    drop(ru);
    // After the first region goes, the second tracker owns the range and misses nothing.
    drop(r1);
    let second = tracker(Backend::Mprotect);
    // SAFETY: as above.
    let r2 = unsafe { second.adopt(p, 8 * PS) }.unwrap();
    r2.cut().unwrap();
    for i in 0..20u64 {
        touch(&r2, i % 8, i + 1);
        assert_eq!(dirty(&r2), BTreeSet::from([i % 8]), "write {i}");
    }
    drop(r2);
    // SAFETY: our mappings; no region tracks them any more.
    unsafe {
        libc::munmap(p.cast(), 8 * PS);
        libc::munmap(q.cast(), 4 * PS);
    }
}

// ------------------------------------------- item 8: the application's own protections

/// Item 8: with the mprotect backend, a PROT_NONE guard page inside a tracked region was made
/// read-write by the SIGSEGV handler (a read or a write of it succeeded). Now faults on
/// unreadable pages and read faults go to the previous handler: the forked child that
/// touches the guard page dies of SIGSEGV, for a read and for a write.
#[test]
fn mprotect_backend_guard_page_keeps_guarding() {
    let t = tracker(Backend::Mprotect);
    let region = t.map_anonymous(4 * PS).unwrap();
    touch(&region, 0, 1);
    region.cut().unwrap();
    let guard = region.as_ptr() as usize + 2 * PS;
    // SAFETY: the application protects one page of its region; only the children touch it.
    let r = unsafe { libc::mprotect(guard as *mut libc::c_void, PS, libc::PROT_NONE) };
    assert_eq!(r, 0);
    let read = fork_run(|| {
        // SAFETY: a read of the guard page: must raise SIGSEGV in the child.
        let _ = unsafe { std::ptr::read_volatile(guard as *const u64) };
    });
    assert_eq!(read, Fate::Signalled(libc::SIGSEGV), "read of a guard page");
    let write = fork_run(|| {
        // SAFETY: a write to the guard page: must raise SIGSEGV in the child.
        unsafe { std::ptr::write_volatile(guard as *mut u64, 1) };
    });
    assert_eq!(
        write,
        Fate::Signalled(libc::SIGSEGV),
        "write to a guard page"
    );
    // Tracking of the other pages goes on, and the guard page still guards in the parent.
    touch(&region, 1, 2);
    touch(&region, 3, 2);
    assert!(dirty(&region).is_superset(&BTreeSet::from([1, 3])));
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| l.starts_with(&format!("{guard:x}-")))
        .unwrap();
    assert!(line.contains(" ---p "), "{line}");
    // The cut re-protected a merged run 1..=3 around the guard page: still a guard.
    let read = fork_run(|| {
        // SAFETY: as above.
        let _ = unsafe { std::ptr::read_volatile(guard as *const u64) };
    });
    assert_eq!(read, Fate::Signalled(libc::SIGSEGV), "read after a cut");
}

/// Item 8: a read of a tracked page the application made read-only never changes its
/// protection (the tracker's protection always leaves pages readable, so the read succeeds
/// and no SIGSEGV reaches the handler), and a write to it is, on this backend, taken for a
/// tracked first write: the page becomes writable and is reported (documented limit, pinned;
/// the userfaultfd backends raise SIGSEGV, see misbehaviour.rs).
#[test]
fn mprotect_backend_write_to_application_read_only_page_is_a_documented_limit() {
    let t = tracker(Backend::Mprotect);
    let region = t.map_anonymous(4 * PS).unwrap();
    touch(&region, 1, 3);
    region.cut().unwrap();
    let page = region.as_ptr() as usize + PS;
    // SAFETY: the application makes one of its pages read-only.
    let r = unsafe { libc::mprotect(page as *mut libc::c_void, PS, libc::PROT_READ) };
    assert_eq!(r, 0);
    assert_eq!(region.as_atomic_u64()[PS / 8].load(SeqCst), 3);
    let fate = fork_run(|| {
        // SAFETY: a write to the read-only page, in the child.
        unsafe { std::ptr::write_volatile(page as *mut u64, 4) };
    });
    assert_eq!(
        fate,
        Fate::Exited(0),
        "the limit changed (the write now faults): update design.md section 6 and the adopt rustdoc"
    );
}

// ------------------------------------------------------- item 10: the tracker's own memory

const OWN_MEMORY_CHILD: &str = "WW_EDGES_OWN_MEMORY_CHILD";

/// Child of `adopt_of_own_memory_is_refused_without_hang`: each refused adoption within a
/// watchdog; exit 0 if all were refused with `OwnMemory`.
#[test]
fn own_memory_child() {
    if std::env::var_os(OWN_MEMORY_CHILD).is_none() {
        return;
    }
    for b in [Backend::SyncUffd, Backend::AsyncUffd, Backend::Mprotect] {
        let t = tracker(b);
        for what in [
            "[heap]",
            "[stack]",
            "this thread's stack",
            "this thread's allocator arena",
        ] {
            let t = t.clone();
            // The adopting thread computes the range (its own stack and arena).
            let r = watchdog(10, what, move || {
                let local = 0u64;
                let boxed = Box::new([0u8; 64]);
                let (a, len) = match what {
                    "[heap]" | "[stack]" => match maps_range(what) {
                        Some((a, e)) => (a, e - a),
                        None => return None,
                    },
                    "this thread's stack" => ((std::ptr::addr_of!(local) as usize) & !(PS - 1), PS),
                    _ => ((boxed.as_ptr() as usize) & !(PS - 1), PS),
                };
                // SAFETY: expected to be refused before anything is registered.
                let r = unsafe { t.adopt(a as *mut u8, len) }.map(drop);
                std::hint::black_box((&local, &boxed));
                Some(r)
            });
            match r {
                None => {}
                Some(Err(e)) if is_variant(&e, "OwnMemory") => {}
                other => panic!("{}: adopt of {what}: {other:?}", b.name()),
            }
        }
    }
    std::process::exit(0);
}

/// Item 10: `adopt` of `[heap]` never returned (the service thread faulted on its own state).
/// Now `[heap]`, `[stack]`, the calling thread's stack and allocator arena are refused with
/// `OwnMemory` within a watchdog. Run in a child process: on the old code the child hangs
/// (and is killed), which fails this test instead of hanging the suite.
#[test]
fn adopt_of_own_memory_is_refused_without_hang() {
    let st = run_child("own_memory_child", OWN_MEMORY_CHILD, 60);
    assert!(st.success(), "{st:?}");
}

// --------------------------------------------------------- item 11: builder values

/// Item 11: `spin(Duration::MAX)` / `eager_reprotect(Duration::MAX)` overflowed an `Instant`
/// on the service thread, which poisoned the tracker at its first fault. Now both are clamped:
/// the first write is tracked and the tracker keeps running.
#[test]
fn huge_builder_durations_do_not_poison_the_tracker() {
    let builders = [
        (
            "spin",
            Tracker::builder()
                .backend(Backend::SyncUffd)
                .spin(Duration::MAX),
        ),
        (
            "eager_reprotect",
            Tracker::builder()
                .backend(Backend::SyncUffd)
                .eager_reprotect(Duration::MAX),
        ),
    ];
    for (what, b) in builders {
        let r = watchdog(20, what, move || {
            let t = b.build().unwrap();
            let region = t.map_anonymous(4 * PS).unwrap();
            region.cut().unwrap();
            touch(&region, 2, 1);
            let d = region.cut().map(|e| e.dirty().iter().collect::<Vec<_>>());
            let running = t.is_running();
            t.shutdown();
            (d.map_err(|e| e.to_string()), running)
        });
        assert_eq!(r, (Ok(vec![2]), true), "{what}(Duration::MAX)");
    }
}

/// Item 11: `thread_name("a\0b")` panicked inside `build()`. Now a typed `InvalidOption`.
#[test]
fn thread_name_with_nul_is_a_typed_error() {
    let r = std::panic::catch_unwind(|| Tracker::builder().thread_name("a\0b").build().map(drop));
    let e = r.expect("build() panicked").unwrap_err();
    assert!(is_variant(&e, "InvalidOption"), "{e:?}");
    assert!(e.to_string().contains("NUL"), "{e}");
}

// ------------------------------------------------ issue 12: adopt of a read-only mapping

/// Issue 12: `adopt` of a PROT_READ mapping succeeded, and the next safe
/// `as_atomic_u64()[0].store` died of SIGSEGV. Now refused with `NotReadWrite` (PROT_READ and
/// PROT_NONE), on every backend.
#[test]
fn adopt_of_a_mapping_that_is_not_read_write_is_refused() {
    for t in all_backends() {
        for prot in [libc::PROT_READ, libc::PROT_NONE] {
            let p = mmap_prot(4 * PS, prot);
            // SAFETY: expected to be refused; our own mapping.
            let r = unsafe { t.adopt(p, 4 * PS) };
            let e = r.map(drop).unwrap_err();
            assert!(
                is_variant(&e, "NotReadWrite"),
                "{}: {e:?}",
                t.backend().name()
            );
            assert!(e.to_string().contains("PROT_READ|PROT_WRITE"), "{e}");
            // SAFETY: our mapping, not tracked.
            unsafe { libc::munmap(p.cast(), 4 * PS) };
        }
    }
}

// ---------------------------------------------- item 9: kernel writes through pinned pages

/// Item 9: tracked pages registered as io_uring fixed buffers and filled by `READ_FIXED`
/// changed without a report (the kernel writes through its long-term pin, not through the
/// page tables that carry the write protection). Registration itself pins with FOLL_WRITE,
/// which is a tracked write. Now every cut lists the rings' registered buffers and reports
/// their pages dirty (was: an empty cut). Userfaultfd backends (the mprotect backend's
/// read-only pages cannot be registered at all: EFAULT).
#[test]
fn io_uring_fixed_buffer_pages_are_reported_at_every_cut() {
    use io_uring::{opcode, types, IoUring};
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join(format!("ww-edges-uring-{}", std::process::id()));
    std::fs::write(&path, vec![0xABu8; PS]).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    for t in [tracker(Backend::SyncUffd), tracker(Backend::AsyncUffd)] {
        let name = t.backend().name();
        let mut ring = match IoUring::new(4) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("io_uring unavailable ({e}): nothing to pin");
                return;
            }
        };
        let region = t.map_anonymous(4 * PS).unwrap();
        region.cut().unwrap();
        let buf = region.as_ptr() as usize + PS;
        let iov = libc::iovec {
            iov_base: buf as *mut libc::c_void,
            iov_len: PS,
        };
        // SAFETY: page 1 of the region stays mapped until the ring is dropped (below, before
        // the region); only the kernel writes it meanwhile.
        unsafe { ring.submitter().register_buffers(&[iov]) }.unwrap();
        let registered = region.cut().unwrap().into_dirty();
        assert!(registered.contains(1), "{name}: the pin is a tracked write");
        let e = opcode::ReadFixed::new(types::Fd(file.as_raw_fd()), buf as *mut u8, PS as u32, 0)
            .offset(0)
            .build()
            .user_data(1);
        // SAFETY: the entry points at the registered buffer, which outlives the operation.
        unsafe { ring.submission().push(&e) }.unwrap();
        ring.submit_and_wait(1).unwrap();
        let cqe = ring.completion().next().unwrap();
        assert_eq!(cqe.result(), PS as i32, "{name}");
        assert_eq!(
            region.as_atomic_u64()[PS / 8].load(SeqCst),
            0xABAB_ABAB_ABAB_ABAB,
            "{name}: the kernel wrote the page"
        );
        // Detected: the cut lists the ring's registered buffers (fdinfo `UserBufs:`) and
        // reports their pages dirty, whatever the kernel wrote through them (over-report).
        assert_eq!(
            dirty(&region),
            BTreeSet::from([1]),
            "{name}: pages of registered buffers are reported at every cut"
        );
        assert_eq!(dirty(&region), BTreeSet::from([1]), "{name}: and again");
        drop(ring);
        assert_eq!(dirty(&region), BTreeSet::new(), "{name}: unregistered");
    }
}
