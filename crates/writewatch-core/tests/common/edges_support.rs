//! Helpers for tests/edges.rs (issue 11): subprocess runs, forks whose fate is checked, and
//! typed-error checks that name the variant.
#![allow(dead_code)]

use std::time::Duration;

/// Whether `e`'s variant is `name` (its `Debug` form starts with the variant name).
pub fn is_variant(e: &impl std::fmt::Debug, name: &str) -> bool {
    let d = format!("{e:?}");
    d == name || d.starts_with(&format!("{name} ")) || d.starts_with(&format!("{name}("))
}

pub use writewatch_testkit::run_child;

/// How a forked child ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    Exited(i32),
    Signalled(i32),
}

/// Forks; the child runs `f` (which must only do async-signal-safe things: volatile accesses,
/// raw system calls) and `_exit(0)`s; the parent waits (at most 20 s, then kills it) and
/// returns how the child ended.
pub fn fork_run(f: impl FnOnce()) -> Fate {
    // SAFETY: the child runs only `f` (async-signal-safe by the caller's contract) and _exit.
    match unsafe { libc::fork() } {
        0 => {
            f();
            // SAFETY: async-signal-safe exit of the forked child.
            unsafe { libc::_exit(0) };
        }
        pid if pid > 0 => {
            let t0 = std::time::Instant::now();
            let mut st = 0;
            loop {
                // SAFETY: polling our own child.
                let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
                if r == pid {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(20) {
                    // SAFETY: our own child.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, &mut st, 0);
                    }
                    panic!("forked child did not finish within 20 s (hang)");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if libc::WIFSIGNALED(st) {
                Fate::Signalled(libc::WTERMSIG(st))
            } else {
                Fate::Exited(libc::WEXITSTATUS(st))
            }
        }
        _ => panic!("fork failed"),
    }
}

/// A private anonymous mapping of `len` bytes with protection `prot` (owned by the caller).
pub fn mmap_prot(len: usize, prot: libc::c_int) -> *mut u8 {
    writewatch_testkit::Mmap::with_prot(len, prot).into_raw()
}

/// The `[start, end)` of the first `/proc/self/maps` line whose path is `name`.
pub fn maps_range(name: &str) -> Option<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let range = f.next()?;
        let path = f.nth(4)?;
        if path != name {
            return None;
        }
        let (a, b) = range.split_once('-')?;
        Some((
            usize::from_str_radix(a, 16).ok()?,
            usize::from_str_radix(b, 16).ok()?,
        ))
    })
}
