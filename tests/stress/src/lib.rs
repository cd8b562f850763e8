//! Shared pieces of the writewatch reliability suite (see `docs/reliability.md`): the run mode
//! (short for `make test`, long for `make stress`), the per-suite summary line and the
//! watchdog that turns any hang into a failure (on `writewatch_testkit::watch`).

use std::fmt;
use std::time::{Duration, Instant};

pub use writewatch_testkit::within;
use writewatch_testkit::{watch, Outcome};

/// How long and hard to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `make test`: the whole suite in well under 90 s.
    Short,
    /// `make stress` (`WW_STRESS=long`): the acceptance volumes, about 10 minutes.
    Long,
}

impl Mode {
    /// From `WW_STRESS` (`long` selects [`Mode::Long`], anything else [`Mode::Short`]).
    pub fn from_env() -> Mode {
        match std::env::var("WW_STRESS").as_deref() {
            Ok("long") | Ok("LONG") => Mode::Long,
            _ => Mode::Short,
        }
    }

    /// `short` in short mode, `long` in long mode.
    pub fn pick<T>(self, short: T, long: T) -> T {
        match self {
            Mode::Short => short,
            Mode::Long => long,
        }
    }

    /// The mode's name.
    pub fn name(self) -> &'static str {
        self.pick("short", "long")
    }
}

/// The counters every suite reports in its one summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Suite name.
    pub suite: String,
    /// Backend name (`sync`, `async`, `mprotect`, or a list).
    pub backend: String,
    /// Writes (or pipeline operations) performed.
    pub ops: u64,
    /// Cuts (or snapshots) taken.
    pub cuts: u64,
    /// Threads that wrote concurrently.
    pub threads: u64,
    /// Faults injected (kills, failing sinks, panics, ...).
    pub injected_faults: u64,
    /// Oracle violations (content or order that no serial execution explains).
    pub violations: u64,
    /// Writes, pages or epochs that should have been reported or restored and were not.
    pub lost: u64,
    /// Pages whose content mixes two instants.
    pub torn: u64,
    /// Operations that did not finish in time.
    pub hangs: u64,
}

impl Summary {
    /// A zeroed summary for `suite` on `backend`.
    pub fn new(suite: &str, backend: &str) -> Summary {
        Summary {
            suite: suite.into(),
            backend: backend.into(),
            ..Summary::default()
        }
    }

    /// Whether the suite passed: no violation, nothing lost or torn, no hang.
    pub fn ok(&self) -> bool {
        self.violations == 0 && self.lost == 0 && self.torn == 0 && self.hangs == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "suite={} backend={} ops={} cuts={} threads={} injected_faults={} violations={} lost={} torn={} hangs={}",
            self.suite,
            self.backend,
            self.ops,
            self.cuts,
            self.threads,
            self.injected_faults,
            self.violations,
            self.lost,
            self.torn,
            self.hangs
        )
    }
}

/// Runs one suite on its own thread under a watchdog of `secs` seconds and prints its
/// summary line. A suite that does not finish in time prints a summary with `hangs=1` and
/// the whole process exits with status 2 (a hung thread cannot be cancelled; never wait on
/// it). A panic inside the suite is reported as one violation.
pub fn run_suite(
    name: &str,
    backend: &str,
    secs: u64,
    f: impl FnOnce() -> Summary + Send + 'static,
) -> Summary {
    let t0 = Instant::now();
    let s = match watch(Some(format!("suite-{name}")), Duration::from_secs(secs), f) {
        Outcome::Finished(s) => s,
        Outcome::Panicked => {
            let mut s = Summary::new(name, backend);
            s.violations = 1;
            println!("{s}");
            eprintln!("suite {name} panicked");
            return s;
        }
        Outcome::Hung => {
            let mut s = Summary::new(name, backend);
            s.hangs = 1;
            println!("{s}");
            eprintln!("watchdog: suite {name} did not finish within {secs} s: failing (hang)");
            std::process::exit(2);
        }
    };
    println!("{s}");
    eprintln!("  ({name}: {:.1} s)", t0.elapsed().as_secs_f64());
    s
}

/// Page counts at the interesting boundaries: 1 page, 2^k - 1, 2^k, 2^k + 1 up to 1025 (the
/// checkpoint writer's 1 MiB run limit and buffer sizes are 256 pages).
pub fn boundary_page_counts() -> Vec<u64> {
    let mut v = vec![1, 2, 3];
    for k in 2..=10 {
        let n = 1u64 << k;
        v.extend([n - 1, n, n + 1]);
    }
    v.dedup();
    v
}

/// A pause point for writer threads: the coordinator can quiesce every writer (to take a
/// reference copy of the memory) and release them again, or stop them.
#[derive(Debug, Default)]
pub struct Gate {
    hold: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
    parked: std::sync::atomic::AtomicUsize,
}

impl Gate {
    /// A gate that lets writers run.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Called by a writer between two writes: parks while the coordinator holds the gate;
    /// returns false once the writers should stop.
    pub fn pass(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        if self.hold.load(SeqCst) {
            self.parked.fetch_add(1, SeqCst);
            while self.hold.load(SeqCst) && !self.stop.load(SeqCst) {
                std::thread::sleep(Duration::from_micros(50));
            }
            self.parked.fetch_sub(1, SeqCst);
        }
        !self.stop.load(SeqCst)
    }

    /// Holds the gate and waits until `writers` writers are parked (none is between two
    /// writes). Returns false if that takes longer than `timeout` (a hang).
    pub fn pause(&self, writers: usize, timeout: Duration) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.hold.store(true, SeqCst);
        let t0 = Instant::now();
        while self.parked.load(SeqCst) < writers {
            if t0.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        true
    }

    /// Releases parked writers.
    pub fn resume(&self) {
        self.hold.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Tells every writer to finish.
    pub fn stop(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.stop.store(true, SeqCst);
        self.hold.store(false, SeqCst);
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// FNV-1a of a page: the pipeline suite keeps one hash per page and epoch instead of copies.
pub fn page_hash(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for chunk in bytes.chunks_exact(8) {
        h ^= u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
