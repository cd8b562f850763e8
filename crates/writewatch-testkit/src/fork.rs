//! Forking a child that writes to its copy of tracked memory.

use std::sync::atomic::AtomicU64;

use crate::{sys, watchdog, PAGE_SIZE};

/// Forks; the child writes 0xC0FFEE at byte 64 of each of the first `pages` pages of
/// `words` (its private copy of the mapping, or the shared pages) and exits; the parent
/// waits for it (under a 20 s watchdog) and asserts a clean exit.
pub fn fork_and_write(words: &[AtomicU64], pages: usize) {
    let wpp = PAGE_SIZE / 8;
    assert!(
        pages * wpp <= words.len(),
        "fork_and_write: {pages} pages out of range"
    );
    let stores: Vec<(usize, u64)> = (0..pages).map(|p| (p * wpp + 64 / 8, 0xC0FFEE)).collect();
    let pid = sys::fork_storing(words, &stores);
    let status = watchdog(20, "forked child writing a tracked region", move || {
        sys::wait_child(pid)
    });
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}
