//! Backend-specific acceptance tests (issue: one API, three backends).
mod common;

use std::sync::atomic::{AtomicPtr, Ordering::SeqCst};
use std::sync::Arc;

use common::*;
use writewatch_core::{Backend, CutError, Purpose, SnapshotError, Tracker};

const MIB: usize = 1 << 20;

#[test]
fn auto_resolves_by_purpose() {
    let p = writewatch_core::probe();
    let dirty = Tracker::builder()
        .purpose(Purpose::DirtyTracking)
        .build()
        .unwrap();
    let snap = Tracker::builder().build().unwrap();
    if p.has(writewatch_core::Feature::WpAsync) && p.has(writewatch_core::Feature::PagemapScan) {
        assert_eq!(dirty.backend(), Backend::AsyncUffd);
    }
    if p.has(writewatch_core::Feature::PagefaultFlagWp) {
        assert_eq!(snap.backend(), Backend::SyncUffd);
    }
}

#[test]
fn async_harvest_of_256mib_at_1_percent_is_one_pagemap_scan() {
    let t = Tracker::builder()
        .backend(Backend::AsyncUffd)
        .build()
        .unwrap();
    let region = t.map_anonymous(256 * MIB).unwrap();
    assert!(region.cut().unwrap().dirty().is_empty());
    let pages = region.page_count();
    let mut rng = Rng(99);
    let mut written = std::collections::BTreeSet::new();
    while written.len() < (pages / 100) as usize {
        let p = rng.below(pages);
        touch(&region, p, 1);
        written.insert(p);
    }
    assert_eq!(
        region
            .dirty_pages()
            .unwrap()
            .iter()
            .collect::<std::collections::BTreeSet<_>>(),
        written,
        "peek"
    );
    let e = region.cut().unwrap();
    assert_eq!(
        e.dirty().iter().collect::<std::collections::BTreeSet<_>>(),
        written
    );
    assert_eq!(
        e.stats().scan_ioctls,
        1,
        "one PAGEMAP_SCAN pass harvests and re-arms"
    );
    assert_eq!(e.stats().protect_ioctls, 0);
    // Re-armed: the next epoch sees only new writes.
    touch(&region, 5, 2);
    assert_eq!(
        region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
        vec![5]
    );
}

#[test]
fn cut_and_copy_captures_exact_content_when_quiesced() {
    for b in [Backend::AsyncUffd, Backend::Mprotect, Backend::SyncUffd] {
        let t = Tracker::builder().backend(b).build().unwrap();
        let region = t.map_anonymous(8 * MIB).unwrap();
        region.cut().unwrap();
        let mut rng = Rng(7);
        for _ in 0..500 {
            let p = rng.below(region.page_count());
            let w = rng.below(512) as usize;
            region.as_atomic_u64()[p as usize * 512 + w].store(rng.next(), SeqCst);
        }
        // SAFETY: the test's only writer is this thread, which is not writing now.
        let reference = unsafe { region.as_slice() }.to_vec();
        let mut copied = std::collections::BTreeMap::new();
        let epoch = region
            .cut_and_copy(|p, bytes| {
                copied.insert(p, bytes.to_vec());
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(copied.len(), epoch.dirty().len());
        for (p, bytes) in &copied {
            assert_eq!(
                &reference[*p as usize * 4096..(*p as usize + 1) * 4096],
                &bytes[..],
                "{} page {p}",
                b.name()
            );
        }
    }
}

#[test]
fn copy_before_write_needs_the_sync_backend() {
    for b in [Backend::AsyncUffd, Backend::Mprotect] {
        let t = Tracker::builder().backend(b).build().unwrap();
        let region = t.map_anonymous(4 * 4096).unwrap();
        let e = region.snapshot().unwrap_err();
        assert!(matches!(e, CutError::Unsupported { .. }), "{e}");
        assert!(
            e.to_string().contains("SyncUffd"),
            "the error names the backend that can: {e}"
        );
        touch(&region, 1, 1);
        let epoch = region.cut().unwrap();
        let mut buf = vec![0u8; 4096];
        assert!(matches!(
            epoch.read_page(1, &mut buf),
            Err(SnapshotError::Unsupported { .. })
        ));
    }
}

#[test]
fn async_tracks_kernel_mode_writes() {
    let t = Tracker::builder()
        .backend(Backend::AsyncUffd)
        .build()
        .unwrap();
    let region = t.map_anonymous(8 * 4096).unwrap();
    region.cut().unwrap();
    let (r, w) = nix::unistd::pipe().unwrap();
    nix::unistd::write(&w, &[7u8; 4096]).unwrap();
    // SAFETY: page 3 of the region; nothing else accesses it.
    let n = unsafe {
        libc::read(
            std::os::fd::AsRawFd::as_raw_fd(&r),
            region.as_ptr().add(3 * 4096).cast(),
            4096,
        )
    };
    assert_eq!(n, 4096);
    assert_eq!(
        region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
        vec![3]
    );
}

static SIG_TARGET: AtomicPtr<u64> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn usr1(_: libc::c_int) {
    let p = SIG_TARGET.load(SeqCst);
    // SAFETY: points into a tracked page that lives for the test; a volatile store from a
    // signal handler is async-signal-safe.
    unsafe { p.write_volatile(0x5151) };
}

#[test]
fn mprotect_write_from_a_signal_handler_is_tracked() {
    let t = Tracker::builder()
        .backend(Backend::Mprotect)
        .build()
        .unwrap();
    let region = t.map_anonymous(8 * 4096).unwrap();
    region.cut().unwrap();
    // SAFETY: page 6 of the region, 8-byte aligned.
    SIG_TARGET.store(unsafe { region.as_ptr().add(6 * 4096).cast() }, SeqCst);
    // SAFETY: installing a handler that only performs a volatile store.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = usr1 as *const () as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        libc::raise(libc::SIGUSR1);
    }
    assert_eq!(region.as_atomic_u64()[6 * 512].load(SeqCst), 0x5151);
    assert_eq!(
        region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
        vec![6]
    );
}

#[test]
fn mprotect_keeps_rusts_stack_overflow_message() {
    if std::env::var_os("WW_STACK_OVERFLOW_CHILD").is_some() {
        let t = Tracker::builder()
            .backend(Backend::Mprotect)
            .build()
            .unwrap();
        let region = t.map_anonymous(4 * 4096).unwrap();
        touch(&region, 0, 1);
        #[allow(unconditional_recursion)]
        fn recurse(n: u64) -> u64 {
            let buf = [n; 512];
            std::hint::black_box(&buf);
            recurse(n + 1) + buf[3]
        }
        std::thread::Builder::new()
            .name("overflower".into())
            .stack_size(256 * 1024)
            .spawn(|| recurse(0))
            .unwrap()
            .join()
            .unwrap();
        unreachable!();
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "mprotect_keeps_rusts_stack_overflow_message",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WW_STACK_OVERFLOW_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "status {:?}, stderr: {stderr}",
        out.status
    );
    assert!(
        stderr.contains("has overflowed its stack"),
        "Rust's message is printed: {stderr}"
    );
}

/// Allocates `n` 2 MiB huge pages for the test (root), restoring the previous setting after.
struct HugePages {
    prev: Option<String>,
}

impl HugePages {
    fn reserve(n: usize) -> Result<Self, String> {
        let path = "/proc/sys/vm/nr_hugepages";
        let prev = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let have: usize = prev.trim().parse().unwrap_or(0);
        let free: usize = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("HugePages_Free:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0);
        if free >= n {
            return Ok(Self { prev: None });
        }
        std::fs::write(path, (have + n).to_string())
            .map_err(|e| format!("cannot write {path} (needs root): {e}"))?;
        Ok(Self { prev: Some(prev) })
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Some(p) = &self.prev {
            let _ = std::fs::write("/proc/sys/vm/nr_hugepages", p.trim());
        }
    }
}

#[test]
fn hugetlb_region_passes_the_dirty_suite_on_every_backend() {
    let _hp = match HugePages::reserve(8) {
        Ok(h) => h,
        Err(why) => {
            assert!(
                !nix::unistd::geteuid().is_root(),
                "root must be able to reserve huge pages: {why}"
            );
            println!("skipped: {why}");
            return;
        }
    };
    for b in [Backend::SyncUffd, Backend::AsyncUffd, Backend::Mprotect] {
        let t = Tracker::builder().backend(b).build().unwrap();
        let len = 4 * 2 * MIB;
        // SAFETY: a fresh hugetlb mapping owned by this test, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            panic!(
                "MAP_HUGETLB failed with huge pages reserved: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: the mapping outlives the region (dropped before munmap).
        let region = Arc::new(unsafe { t.adopt(p.cast(), len) }.unwrap());
        assert_eq!(
            region.page_size(),
            2 * MIB,
            "dirty granularity is the huge page size"
        );
        assert_eq!(region.page_count(), 4);
        assert_eq!(
            region.cut().unwrap().dirty().len(),
            4,
            "adopted: all dirty first"
        );
        lockstep_exact(Arc::clone(&region), 2, 10, 3, true);
        let (w, m, o) = racing_oracle(Arc::clone(&region), 2, 10, true);
        assert!(w > 0);
        assert_eq!((m, o), (0, 0), "{}", b.name());
        drop(region);
        // SAFETY: our own mapping, no longer tracked or referenced.
        unsafe { libc::munmap(p, len) };
    }
}
