//! The store's `flock`: a lock held for a moment by another open file description (a child
//! between `fork` and `exec` holds a copy of the owner's descriptor) is waited out; a lock
//! held for longer than the grace period is `OpenError::Locked`.
//!
//! Regression: a clean-clone CI run failed `writewatch inspect` with "store is locked by
//! another process" right after the test's writer had dropped the store, while another test
//! thread spawned a process. `flock(1)` plays that inheriting child here.

use std::process::Command;
use std::time::{Duration, Instant};

use writewatch_checkpoint::{OpenError, Store, LOCK_NAME};

fn hold_lock(dir: &std::path::Path, secs: &str) -> std::process::Child {
    let child = Command::new("flock")
        .args(["-x", dir.join(LOCK_NAME).to_str().unwrap(), "sleep", secs])
        .spawn()
        .expect("flock(1) from util-linux");
    // Wait until the child holds the lock (a non-blocking probe fails).
    let t0 = Instant::now();
    while Command::new("flock")
        .args(["-n", "-s", dir.join(LOCK_NAME).to_str().unwrap(), "true"])
        .status()
        .unwrap()
        .success()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "flock child never locked"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

#[test]
fn a_lock_held_for_a_moment_is_waited_out() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Store::create(tmp.path()).unwrap());
    let mut child = hold_lock(tmp.path(), "0.3");
    let t0 = Instant::now();
    let s = Store::open_read_only(tmp.path());
    assert!(s.is_ok(), "{:?}", s.err());
    assert!(
        t0.elapsed() >= Duration::from_millis(100),
        "the lock was really held"
    );
    drop(s);
    let w = Store::open(tmp.path());
    assert!(w.is_ok(), "{:?}", w.err());
    child.wait().unwrap();
}

#[test]
fn a_lock_held_past_the_grace_period_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Store::create(tmp.path()).unwrap());
    let mut child = hold_lock(tmp.path(), "4");
    let Err(e) = Store::open(tmp.path()) else {
        panic!("opened a store another process holds locked")
    };
    assert!(matches!(e, OpenError::Locked(_)), "{e}");
    assert!(e.to_string().contains("locked by another process"), "{e}");
    child.kill().unwrap();
    child.wait().unwrap();
}
