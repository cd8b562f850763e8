//! The application misbehaves against a tracked region (issue #7, item 2). Each test is one
//! row of the misbehaviour table in docs/reliability.md; each asserts the defined outcome and
//! that nothing hangs (every blocking step runs under a watchdog or in a subprocess with a
//! timeout).
#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use writewatch_core::{Backend, CutError, Invalidation, Region, SnapshotError, Tracker};

mod madvise;
mod mprotect;
mod process;
mod shutdown;
mod unmap;

const PS: usize = 4096;

fn sync_tracker() -> Tracker {
    Tracker::builder()
        .backend(Backend::SyncUffd)
        .build()
        .unwrap()
}

/// The userfaultfd backends: sync (both fault modes) and async.
fn uffd_trackers() -> Vec<Tracker> {
    let mut v = sync_trackers();
    v.push(
        Tracker::builder()
            .backend(Backend::AsyncUffd)
            .build()
            .unwrap(),
    );
    v
}

/// The sync backend, with faults served by the service thread and in the faulting thread.
fn sync_trackers() -> Vec<Tracker> {
    vec![
        sync_tracker(),
        Tracker::builder()
            .backend(Backend::SyncUffd)
            .in_thread_faults(true)
            .build()
            .unwrap(),
    ]
}

/// A fresh private anonymous mapping of `pages` pages (the test owns it).
fn mmap_anon(pages: usize) -> *mut u8 {
    let p = anon_mmap(pages * PS);
    p.cast()
}

/// Re-executes this test binary to run only `test` with `env` set; returns its status, or
/// panics if it does not finish within `secs`.
fn run_child(test: &str, env: &str, secs: u64) -> std::process::ExitStatus {
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(env, "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {test} did not finish within {secs} s (hang)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
