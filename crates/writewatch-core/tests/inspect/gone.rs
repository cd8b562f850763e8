//! Processes without (or no longer with) the address space the inspector opened get a typed
//! error, never an empty or partial report (regressions from the issue-15 adversarial
//! review: a kernel thread and a zombie were "no such process", and the raw-pagemap fallback
//! read an exec'd process as empty).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use writewatch_core::inspect::{InspectError, Inspector, Select};

fn state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn kernel_thread_has_no_address_space() {
    // pid 2 is kthreadd on Linux (in a pid namespace it may be another process: then skip).
    let comm = std::fs::read_to_string("/proc/2/comm").unwrap_or_default();
    if comm.trim() != "kthreadd" {
        println!("skipped: pid 2 is not kthreadd here ({comm:?})");
        return;
    }
    let e = Inspector::open(Some(2))
        .and_then(|i| i.inspect(&Select::All))
        .unwrap_err();
    assert!(
        matches!(
            e,
            InspectError::NoAddressSpace {
                pid: 2,
                why: "kernel thread"
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("no user address space"), "{e}");
}

#[test]
fn zombie_has_no_address_space() {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    wait_for("the zombie", || state(pid) == Some('Z'));
    let e = Inspector::open(Some(pid))
        .and_then(|i| i.inspect(&Select::All))
        .unwrap_err();
    assert!(
        matches!(e, InspectError::NoAddressSpace { why, .. } if why.starts_with("zombie")),
        "{e}"
    );
    c.wait().unwrap();
}

#[test]
fn exec_after_open_is_an_error_with_and_without_pagemap_scan() {
    for scan in [true, false] {
        let mut c = Command::new("sh")
            .args(["-c", "read x; exec sleep 30"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = c.id();
        let mut i = Inspector::open(Some(pid)).unwrap();
        if !scan {
            i = i.without_pagemap_scan();
        }
        // The inspector's pagemap belongs to the shell; now the shell becomes `sleep`.
        c.stdin.take().unwrap().write_all(b"\n").unwrap();
        wait_for("the exec", || {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|p| p.to_string_lossy().contains("sleep"))
                .unwrap_or(false)
        });
        let r = i.inspect(&Select::All);
        c.kill().unwrap();
        c.wait().unwrap();
        let e = r.map(|rep| rep.mappings.len()).unwrap_err();
        assert!(
            matches!(e, InspectError::AddressSpaceGone { pid: p } if p == pid),
            "scan {scan}: {e}"
        );
    }
}
