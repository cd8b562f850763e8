//! `fork`, `execv` from a thread (subprocess: `process::exec_from_thread_child`) and writes
//! from signal handlers.

use super::*;

// --------------------------------------------------------------------------------- fork

#[test]
fn fork_with_snapshot_in_progress_child_free_parent_exact() {
    let t = sync_tracker();
    let pages = 128usize;
    let region = Arc::new(t.map_anonymous(pages * PS).unwrap());
    for pg in 0..pages as u64 {
        touch(&region, pg, 100 + pg);
    }
    // SAFETY: no other thread writes the region yet.
    let reference = unsafe { region.as_slice() }.to_vec();
    let snap = region.snapshot().unwrap();
    let epoch = region.cut().unwrap();
    // A parent writer runs across the fork.
    let stop = Arc::new(AtomicBool::new(false));
    let (r2, s2) = (Arc::clone(&region), Arc::clone(&stop));
    let writer = std::thread::spawn(move || {
        let mut rng = Rng(5);
        while !s2.load(SeqCst) {
            touch(&r2, rng.below(pages as u64), 0xBAD);
        }
    });
    std::thread::sleep(Duration::from_millis(5));
    fork_and_write(region.as_atomic_u64(), pages);
    stop.store(true, SeqCst);
    watchdog(10, "parent writer", move || writer.join().unwrap());
    let mut buf = vec![0u8; PS];
    for pg in 0..pages as u64 {
        snap.read_page(pg, &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            &reference[pg as usize * PS..(pg as usize + 1) * PS],
            "snapshot page {pg}"
        );
        epoch.read_page(pg, &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            &reference[pg as usize * PS..(pg as usize + 1) * PS],
            "epoch page {pg}"
        );
    }
    // The child's writes never reach the parent; tracking continues.
    assert!((0..pages)
        .all(|pg| region.as_atomic_u64()[pg * WORDS_PER_PAGE + 8].load(SeqCst) != 0xC0FFEE));
    touch(&region, 9, 1);
    assert!(region.cut().unwrap().dirty().contains(9));
}

#[test]
fn fork_without_snapshot_child_free_parent_tracking_exact() {
    let t = sync_tracker();
    let pages = 64usize;
    let region = t.map_anonymous(pages * PS).unwrap();
    touch(&region, 1, 1);
    region.cut().unwrap();
    fork_and_write(region.as_atomic_u64(), pages);
    // The parent's pages are COW-shared with the (gone) child: its writes still fault and
    // are tracked exactly.
    for pg in [0u64, 5, 63] {
        touch(&region, pg, 2);
    }
    assert_eq!(
        region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
        vec![0, 5, 63]
    );
}

// ---------------------------------------------------------------------- exec from thread

const EXEC_CHILD: &str = "WW_MISBEHAVIOUR_EXEC_CHILD";

#[test]
fn exec_from_thread_child() {
    if std::env::var_os(EXEC_CHILD).is_none() {
        return;
    }
    // Small budget: some writers sit blocked in the kernel on deferred faults at exec time.
    let t = Tracker::builder()
        .backend(Backend::SyncUffd)
        .copy_budget(4 * PS)
        .build()
        .unwrap();
    let region = Arc::new(t.map_anonymous(256 * PS).unwrap());
    for pg in 0..256 {
        touch(&region, pg, 1);
    }
    let _epoch = region.cut().unwrap(); // unread: copies fill the budget, writers block
    for th in 0..3u64 {
        let r = Arc::clone(&region);
        std::thread::spawn(move || {
            let mut rng = Rng(th + 1);
            loop {
                touch(&r, rng.below(256), th);
            }
        });
    }
    std::thread::sleep(Duration::from_millis(30));
    std::thread::spawn(|| {
        let prog = std::ffi::CString::new("/bin/true").unwrap();
        let argv = [prog.as_ptr(), std::ptr::null()];
        // SAFETY: a valid NUL-terminated argv; on success exec never returns.
        unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
        std::process::exit(3);
    })
    .join()
    .unwrap();
}

#[test]
fn exec_from_a_thread_while_writers_fault_does_not_hang() {
    let st = run_child("process::exec_from_thread_child", EXEC_CHILD, 20);
    assert_eq!(st.code(), Some(0), "the exec'd /bin/true exits 0: {st:?}");
}

// ---------------------------------------------------------------------- signal handlers

static SIG_TARGET: AtomicPtr<u64> = AtomicPtr::new(std::ptr::null_mut());
static SIG_COUNT: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_usr2(_: libc::c_int) {
    let p = SIG_TARGET.load(SeqCst);
    let n = SIG_COUNT.fetch_add(1, SeqCst) + 1;
    // SAFETY: points into a tracked page that lives for the test; a volatile store from a
    // signal handler is async-signal-safe (it may fault: the service thread resolves it).
    unsafe { p.write_volatile(n) };
}

#[test]
fn sync_write_from_a_signal_handler_is_tracked_and_snapshotted() {
    for t in sync_trackers() {
        let region = t.map_anonymous(16 * PS).unwrap();
        touch(&region, 6, 0x77);
        region.cut().unwrap();
        // SAFETY: page 6 of the region, 8-byte aligned.
        SIG_TARGET.store(unsafe { region.as_ptr().add(6 * PS).cast() }, SeqCst);
        // SAFETY: installing a handler that only performs a volatile store and an atomic add.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_usr2 as *const () as usize;
            libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut());
        }
        for round in 0..20u64 {
            let snap = region.snapshot().unwrap();
            let before = SIG_COUNT.load(SeqCst);
            // From another thread too: the handler runs on whichever thread gets the signal.
            let h = std::thread::spawn(|| {
                // SAFETY: raising a signal whose handler is installed above.
                unsafe { libc::raise(libc::SIGUSR2) };
            });
            watchdog(10, "signal handler write", move || h.join().unwrap());
            // SAFETY: as above.
            unsafe { libc::raise(libc::SIGUSR2) };
            assert_eq!(
                region.as_atomic_u64()[6 * WORDS_PER_PAGE].load(SeqCst),
                before + 2
            );
            let e = region.cut().unwrap();
            assert_eq!(
                e.dirty().iter().collect::<Vec<_>>(),
                vec![6],
                "round {round}"
            );
            let mut buf = vec![0u8; PS];
            snap.read_page(6, &mut buf).unwrap();
            let at_snap = u64::from_ne_bytes(buf[..8].try_into().unwrap());
            assert_eq!(at_snap, if round == 0 { 0x77 } else { before });
        }
    }
}
