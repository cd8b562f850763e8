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
use writewatch_testkit::run_child;

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
