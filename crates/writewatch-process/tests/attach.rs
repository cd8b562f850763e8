//! Attaching at the worst moment: right after the parent's `spawn` returned, while the child
//! may still be inside `execve` (new mm installed, vDSO not mapped yet).
//!
//! Regression: a clean-clone CI run under load failed `writewatch dump --pid` with "no [vdso]
//! with a system-call instruction" because the maps were read before the thread was stopped.
//! The window is a race, so this test widens it: two threads burn both vCPUs while the
//! children are spawned and attached at once.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn attach_right_after_spawn_under_load_always_succeeds() {
    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..2)
        .map(|i| {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("hog-{i}"))
                .spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
                .unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    for round in 0..30 {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        match writewatch_process::attach(child.id()) {
            Ok(a) => {
                assert!(a.alive());
                drop(a);
            }
            Err(e) => failures.push(format!("round {round}: {e}")),
        }
        // The target runs on after the tracker let go: it still answers signals.
        let _ = child.kill();
        let status = child.wait().unwrap();
        assert!(!status.success(), "sleep ended by itself?");
    }
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
