//! Child processes: a forked child that writes to its copy of tracked memory, and a
//! re-executed test binary running one test under a deadline.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

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

/// A forked child holding still after its writes: see [`fork_and_hold`]. Dropping it lets
/// the child exit and reaps it.
#[derive(Debug)]
pub struct HeldChild {
    pid: libc::pid_t,
    hold: Option<std::fs::File>,
}

impl HeldChild {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }
}

impl Drop for HeldChild {
    fn drop(&mut self) {
        drop(self.hold.take()); // end of file: the child exits
        let pid = self.pid;
        // Should another fork have inherited our pipe end, the child would not see end of
        // file: make sure it goes.
        sys::kill_child(pid);
        watchdog(20, "held child exiting", move || sys::wait_child(pid));
    }
}

/// Forks; the child writes 0xC0FFEE at byte 64 of each page in `pages` of `words` (its
/// private copy after `fork`), then holds still, alive, until the returned [`HeldChild`] is
/// dropped: so its memory (and the parent's) can be inspected from outside. Returns once
/// the child's writes are done.
pub fn fork_and_hold(words: &[AtomicU64], pages: &[usize]) -> HeldChild {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let wpp = PAGE_SIZE / 8;
    let stores: Vec<(usize, u64)> = pages
        .iter()
        .map(|&p| (p * wpp + 64 / 8, 0xC0FFEE))
        .collect();
    assert!(
        stores.iter().all(|&(i, _)| i < words.len()),
        "fork_and_hold: page out of range"
    );
    let ((mut ready_r, ready_w), (hold_r, hold_w)) = (sys::pipe(), sys::pipe());
    let pid = sys::fork_holding(
        words,
        &stores,
        ready_w.as_raw_fd(),
        hold_r.as_raw_fd(),
        [ready_r.as_raw_fd(), hold_w.as_raw_fd()],
    );
    drop((ready_w, hold_r));
    let mut b = [0u8];
    ready_r.read_exact(&mut b).expect("held child ready");
    HeldChild {
        pid,
        hold: Some(hold_w),
    }
}

/// Re-executes this test binary to run only `test` (its full path, `module::name` for a test
/// in a module) with `env` set to 1; returns its status, or panics if it does not finish
/// within `secs` (the child is killed).
pub fn run_child(test: &str, env: &str, secs: u64) -> std::process::ExitStatus {
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

/// Forks a child that exits at once; returns the time the parent spent in `fork()` (the
/// baseline "the process's own fork() at this resident size"). The child is reaped.
pub fn timed_fork_exit() -> std::time::Duration {
    let t = std::time::Instant::now();
    let pid = sys::fork_storing(&[], &[]);
    let d = t.elapsed();
    sys::wait_child(pid);
    d
}
