//! Running code on a helper thread with a deadline, so that a hang becomes a failure.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// How a watched closure ended.
#[derive(Debug)]
pub enum Outcome<T> {
    /// It returned this value.
    Finished(T),
    /// It panicked (the panic was reported on its thread).
    Panicked,
    /// It did not finish in time; its thread is abandoned (it cannot be cancelled).
    Hung,
}

/// Runs `f` on a new thread (named `name` if given) and waits at most `d` for it. A thread
/// that finished or panicked is joined; a hung one is abandoned.
pub fn watch<T: Send + 'static>(
    name: Option<String>,
    d: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Outcome<T> {
    let (tx, rx) = mpsc::channel();
    let mut b = std::thread::Builder::new();
    if let Some(n) = name {
        b = b.name(n);
    }
    let h = b
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn watched thread");
    match rx.recv_timeout(d) {
        Ok(v) => {
            let _ = h.join();
            Outcome::Finished(v)
        }
        Err(RecvTimeoutError::Disconnected) => {
            let _ = h.join();
            Outcome::Panicked
        }
        Err(RecvTimeoutError::Timeout) => Outcome::Hung,
    }
}

/// Runs `f` on a helper thread and returns `None` if it panics or does not finish within
/// `d` (the thread is abandoned; callers count a hang).
pub fn within<T: Send + 'static>(d: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match watch(None, d, f) {
        Outcome::Finished(v) => Some(v),
        Outcome::Panicked | Outcome::Hung => None,
    }
}

/// Runs `f` on a thread and fails the test (panics) if it does not finish within `secs`.
pub fn watchdog<T: Send + 'static>(
    secs: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    match within(Duration::from_secs(secs), f) {
        Some(v) => v,
        None => panic!("watchdog: {what} did not finish within {secs} s (hang)"),
    }
}
