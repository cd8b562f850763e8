//! The store's `flock`: a lock held for a moment by another open file description (a child
//! between `fork` and `exec` holds a copy of the owner's descriptor) is waited out; a lock
//! held for longer than the grace period is `OpenError::Locked`.
//!
//! Regression: a clean-clone CI run failed `writewatch inspect` with "store is locked by
//! another process" right after the test's writer had dropped the store, while another test
//! thread spawned a process. `flock(1)` plays that inheriting child here.

use std::process::Command;

use writewatch_checkpoint::{OpenError, Store, LOCK_NAME};

fn hold_lock(dir: &std::path::Path, secs: &str) -> std::process::Child {
    // -o: flock(1) itself holds the lock while the command runs (killing it releases it).
    // The command prints once flock(1) holds the lock: a probe from here could be fooled by
    // another holder (a sibling test's forked child holding a copy of our descriptor).
    let mut child = Command::new("flock")
        .args([
            "-o",
            "-x",
            dir.join(LOCK_NAME).to_str().unwrap(),
            "sh",
            "-c",
        ])
        .arg(format!("echo locked; exec sleep {secs}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("flock(1) from util-linux");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked", "flock child never locked");
    child
}

#[test]
fn a_lock_held_for_a_moment_is_waited_out() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Store::create(tmp.path()).unwrap());
    // Held for at most 1 s more (the probe in `hold_lock` saw it held), under the 2 s grace.
    let mut child = hold_lock(tmp.path(), "1");
    let s = Store::open_read_only(tmp.path());
    assert!(s.is_ok(), "{:?}", s.err());
    drop(s);
    let w = Store::open(tmp.path());
    assert!(w.is_ok(), "{:?}", w.err());
    child.wait().unwrap();
}

#[test]
fn a_lock_held_past_the_grace_period_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Store::create(tmp.path()).unwrap());
    let mut child = hold_lock(tmp.path(), "30");
    let Err(e) = Store::open(tmp.path()) else {
        panic!("opened a store another process holds locked")
    };
    assert!(matches!(e, OpenError::Locked(_)), "{e}");
    assert!(e.to_string().contains("locked by another process"), "{e}");
    child.kill().unwrap();
    child.wait().unwrap();
}
