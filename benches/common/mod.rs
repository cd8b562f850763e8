//! Helpers shared by the writewatch benches: raw mappings, a minimal raw userfaultfd
//! (write-protect mode, driven by plain `ioctl`s), quick-mode switches, a deterministic
//! shuffle, and the side files (`writewatch-stats/*.json`) read by `scripts/bench-report.py`.
#![allow(dead_code)] // each bench uses a subset

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

pub const PS: usize = 4096;

/// `WW_BENCH_QUICK=1`: smaller regions and short criterion runs (used by `make bench-report`).
pub fn quick() -> bool {
    std::env::var("WW_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Criterion settings: short in quick mode, moderate otherwise.
pub fn criterion() -> criterion::Criterion {
    let c = criterion::Criterion::default().without_plots();
    if quick() {
        c.sample_size(20)
            .warm_up_time(Duration::from_millis(800))
            .measurement_time(Duration::from_secs(5))
    } else {
        c.sample_size(20)
            .warm_up_time(Duration::from_secs(2))
            .measurement_time(Duration::from_secs(6))
    }
}

/// Where criterion writes (`$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else
/// `target/criterion`); our side files go to `<that>/writewatch-stats/`.
pub fn stats_dir() -> PathBuf {
    let base = if let Some(h) = std::env::var_os("CRITERION_HOME") {
        PathBuf::from(h)
    } else if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        PathBuf::from(t).join("criterion")
    } else {
        // cargo runs benches with the package root as the working directory.
        PathBuf::from("target/criterion")
    };
    base.join("writewatch-stats")
}

/// Writes `<stats_dir>/<name>.json` with the given flat key/value pairs (numbers or strings).
pub fn write_side_file(name: &str, fields: &[(&str, Value)]) {
    let dir = stats_dir();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("bench: cannot create {}: {e}", dir.display());
        return;
    }
    let mut s = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&format!("\"{k}\": "));
        match v {
            Value::U(n) => s.push_str(&n.to_string()),
            Value::F(x) => s.push_str(&format!("{x:.3}")),
            Value::S(t) => s.push_str(&format!(
                "\"{}\"",
                t.replace('\\', "\\\\").replace('"', "\\\"")
            )),
        }
    }
    s.push_str("}\n");
    let path = dir.join(format!("{name}.json"));
    match std::fs::File::create(&path) {
        Ok(mut f) => {
            let _ = f.write_all(s.as_bytes());
        }
        Err(e) => eprintln!("bench: cannot write {}: {e}", path.display()),
    }
}

/// A value in a side file.
pub enum Value {
    U(u64),
    F(f64),
    S(String),
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// An owned private anonymous mapping (`Mmap::no_thp`: THP off; `Mmap::populated`: THP off
/// and every page resident), unmapped on drop.
pub use writewatch_testkit::Mmap;

// ------------------------------------------------------------------ raw userfaultfd

const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xC018_AA06;
const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_MSG_SIZE: usize = 32;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}
#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// A userfaultfd in write-protect mode, opened with the raw syscall, closed on drop (which
/// unregisters its ranges and wakes any waiter).
pub struct RawUffd {
    pub fd: libc::c_int,
}

impl RawUffd {
    /// Opens a non-blocking uffd with `UFFD_FEATURE_PAGEFAULT_FLAG_WP` (no WP_UNPOPULATED:
    /// like the C baseline, the ranges it protects are populated first).
    pub fn new() -> RawUffd {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) }
            as libc::c_int;
        assert!(
            fd >= 0,
            "userfaultfd: {} (run as root or set vm.unprivileged_userfaultfd=1)",
            errno()
        );
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_PAGEFAULT_FLAG_WP,
            ioctls: 0,
        };
        // SAFETY: valid fd and argument struct.
        let r = unsafe { libc::ioctl(fd, UFFDIO_API, &mut api) };
        assert!(r == 0, "UFFDIO_API: {}", errno());
        RawUffd { fd }
    }

    pub fn register_wp(&self, addr: *mut u8, len: usize) {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: addr as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: valid fd and argument struct; the range is our mapping.
        let r = unsafe { libc::ioctl(self.fd, UFFDIO_REGISTER, &mut reg) };
        assert!(r == 0, "UFFDIO_REGISTER: {}", errno());
    }

    /// `UFFDIO_WRITEPROTECT` on a range: protect (`on`) or un-protect and wake.
    #[inline]
    pub fn wp(&self, addr: usize, len: usize, on: bool) -> Result<(), std::io::Error> {
        raw_wp(self.fd, addr, len, on)
    }
}

#[inline]
fn raw_wp(fd: libc::c_int, addr: usize, len: usize, on: bool) -> Result<(), std::io::Error> {
    let mut w = UffdioWriteprotect {
        range: UffdioRange {
            start: addr as u64,
            len: len as u64,
        },
        mode: if on { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
    };
    // SAFETY: valid fd and argument struct.
    if unsafe { libc::ioctl(fd, UFFDIO_WRITEPROTECT, &mut w) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

impl Drop for RawUffd {
    fn drop(&mut self) {
        // SAFETY: our fd.
        unsafe { libc::close(self.fd) };
    }
}

/// The first row of `variants.c`: a region, populated, registered and write-protected on a
/// raw uffd, served by a thread doing `poll()` + `read()` + copy 4 KiB to a backup +
/// `UFFDIO_WRITEPROTECT` un-protect (one page per fault).
///
/// The thread also polls an eventfd: dropping the struct signals it, joins it, then closes
/// the uffd (unregistering the range), so nothing can hang.
pub struct RawUffdLoop {
    pub region: Mmap,
    _backup: std::sync::Arc<Mmap>,
    uffd: std::sync::Arc<RawUffd>,
    stop_fd: libc::c_int,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl RawUffdLoop {
    pub fn new(len: usize) -> RawUffdLoop {
        let region = Mmap::populated(len);
        let backup = std::sync::Arc::new(Mmap::populated(len));
        let uffd = std::sync::Arc::new(RawUffd::new());
        uffd.register_wp(region.as_ptr(), len);
        uffd.wp(region.as_ptr() as usize, len, true)
            .expect("UFFDIO_WRITEPROTECT whole range");
        // SAFETY: plain syscall.
        let stop_fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(stop_fd >= 0, "eventfd: {}", errno());
        let (u, b, base) = (
            std::sync::Arc::clone(&uffd),
            std::sync::Arc::clone(&backup),
            region.as_ptr() as usize,
        );
        let thread = std::thread::Builder::new()
            .name("raw-uffd-svc".into())
            .spawn(move || raw_service(u.fd, stop_fd, base, b.as_ptr() as usize))
            .expect("spawn raw uffd service thread");
        RawUffdLoop {
            region,
            _backup: backup,
            uffd,
            stop_fd,
            thread: Some(thread),
        }
    }
}

impl Drop for RawUffdLoop {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: our eventfd, 8-byte write.
        unsafe { libc::write(self.stop_fd, (&one as *const u64).cast(), 8) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // SAFETY: our eventfd.
        unsafe { libc::close(self.stop_fd) };
        let _ = &self.uffd; // closed when the last Arc goes (after the join)
    }
}

/// The service loop. Returns the number of faults served.
fn raw_service(fd: libc::c_int, stop_fd: libc::c_int, base: usize, backup: usize) -> u64 {
    let mut buf = [0u8; UFFD_MSG_SIZE * 64];
    let mut served = 0u64;
    loop {
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: valid array of two pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if errno().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            panic!("poll: {}", errno());
        }
        if fds[1].revents != 0 {
            return served;
        }
        if fds[0].revents & libc::POLLIN == 0 {
            if fds[0].revents != 0 {
                return served; // POLLERR/POLLHUP: give up
            }
            continue;
        }
        // SAFETY: reading into our buffer.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            continue; // EAGAIN: another wake-up raced
        }
        for m in buf[..r as usize].chunks_exact(UFFD_MSG_SIZE) {
            if m[0] != UFFD_EVENT_PAGEFAULT {
                continue;
            }
            let addr = u64::from_ne_bytes(m[16..24].try_into().unwrap()) as usize & !(PS - 1);
            // SAFETY: the faulting page lies in the registered region (readable, write-
            // protected, so stable while we copy); backup has the same size and layout.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    addr as *const u8,
                    (backup + (addr - base)) as *mut u8,
                    PS,
                )
            };
            raw_wp(fd, addr, PS, false).expect("un-protect");
            served += 1;
        }
    }
}

// ------------------------------------------------------------------ fork helpers

/// A child forked from this process that blocks on a pipe until dropped, then exits; it is
/// always reaped (also on unwinding).
pub struct BlockedChild {
    pid: libc::pid_t,
    wr: libc::c_int,
}

impl BlockedChild {
    /// Forks; returns the child handle and the time `fork()` took in the parent.
    pub fn fork() -> (BlockedChild, Duration) {
        let mut p = [0 as libc::c_int; 2];
        // SAFETY: valid array.
        let r = unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(r, 0, "pipe: {}", errno());
        let t = std::time::Instant::now();
        // SAFETY: the child only calls async-signal-safe functions (read, _exit).
        let pid = unsafe { libc::fork() };
        let d = t.elapsed();
        if pid == 0 {
            let mut x = 0u8;
            // SAFETY: async-signal-safe calls only.
            unsafe {
                libc::close(p[1]);
                libc::read(p[0], (&mut x as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        assert!(pid > 0, "fork: {}", errno());
        // SAFETY: our fd.
        unsafe { libc::close(p[0]) };
        (BlockedChild { pid, wr: p[1] }, d)
    }
}

impl Drop for BlockedChild {
    fn drop(&mut self) {
        // Closing the write end makes the child's read return 0: it exits.
        // SAFETY: our fd; waitpid on our child.
        unsafe {
            libc::close(self.wr);
            let mut st = 0;
            while libc::waitpid(self.pid, &mut st, 0) < 0
                && errno().raw_os_error() == Some(libc::EINTR)
            {}
        }
    }
}

/// `fork()` whose child exits at once; returns the time the parent spent in `fork()`.
/// The child is reaped before returning.
pub fn fork_exit() -> Duration {
    let t = std::time::Instant::now();
    // SAFETY: the child only calls _exit.
    let pid = unsafe { libc::fork() };
    let d = t.elapsed();
    if pid == 0 {
        // SAFETY: async-signal-safe.
        unsafe { libc::_exit(0) };
    }
    assert!(pid > 0, "fork: {}", errno());
    let mut st = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(pid, &mut st, 0) } < 0
        && errno().raw_os_error() == Some(libc::EINTR)
    {}
    d
}

/// `/proc/loadavg`'s first three fields (a noise indicator for the report).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Run metadata for the report (`meta-<bench>.json`): mode, load average, bench specifics.
pub fn write_meta(bench: &str, fields: &[(&str, Value)]) {
    let mut all: Vec<(&str, Value)> = vec![
        ("quick", Value::U(quick() as u64)),
        ("loadavg", Value::S(loadavg())),
        (
            "unix_time",
            Value::U(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            ),
        ),
    ];
    for (k, v) in fields {
        all.push((
            k,
            match v {
                Value::U(n) => Value::U(*n),
                Value::F(x) => Value::F(*x),
                Value::S(s) => Value::S(s.clone()),
            },
        ));
    }
    write_side_file(&format!("meta-{bench}"), &all);
}
