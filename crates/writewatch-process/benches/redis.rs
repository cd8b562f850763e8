//! Dumping Debian's `redis-server` (a program no one here wrote) holding >= 1 GiB under
//! `redis-benchmark` SET load. Measures, in one run:
//!
//! - the final freeze of an incremental pre-copy dump, against a full stop-and-copy of the
//!   same process (every writable page read with the process stopped) and against Redis's
//!   own fork for `BGSAVE` (`INFO persistence` `latest_fork_usec`);
//! - Redis SET throughput with tracking on vs off, split: cycles of equal windows
//!   (default 3 cycles of 20 s, `-- --cycles N --window S`), the order rotating: untracked;
//!   attached with every range write-protected and nothing else; the same plus a harvest
//!   (re-protection) every 300 ms without copying; a whole dump (cancelled at the window's
//!   end) with `Priority::Normal`; the same with `Priority::Low`; the same with the default
//!   `Priority::Idle` (`-- --conds off,low,idle` picks conditions; untracked first). Each
//!   against the untracked window of its cycle (median over cycles), with the CPU the
//!   dumper, redis and redis-benchmark used in each window;
//! - the first round's copy rate (pages read with `process_vm_readv` and written to the
//!   image store).
//!
//! Needs `redis-server` and `redis-benchmark` (`apt-get install redis-server redis-tools`)
//! and root (or ptrace_scope 0). Run: `cargo bench -p writewatch-process --bench redis`
//! (`-- --gib N` for another dataset size, `-- --hot-keys N` for the keys the load writes,
//! 0 = all, `-- --image-in /dev/shm` to write the image to memory). Measures only under `--bench`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use writewatch_process::{dump, read_maps, DumpOptions, Priority};

const PORT: &str = "16399";

fn cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", PORT])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn info_field(section: &str, key: &str) -> Option<String> {
    cli(&["INFO", section]).lines().find_map(|l| {
        l.strip_prefix(&format!("{key}:"))
            .map(|v| v.trim().to_string())
    })
}

/// SET ops/s from one `redis-benchmark` run.
fn set_load(requests: u64, keys: u64) -> f64 {
    let out = Command::new("redis-benchmark")
        .args([
            "-p", PORT, "-t", "set", "-q", "-P", "16", "-c", "8", "-d", "1024",
        ])
        .args(["-n", &requests.to_string(), "-r", &keys.to_string()])
        .output()
        .expect("redis-benchmark");
    let s = String::from_utf8_lossy(&out.stdout);
    // "... SET: 123456.79 requests per second, p50=..." after \r-separated progress lines.
    let words: Vec<&str> = s.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[1] == "requests")
        .and_then(|w| w[0].parse().ok())
        .unwrap_or(0.0)
}

/// One `redis-benchmark` run inside a window: when it started, requests, ops/s.
struct LoadRun {
    start: Instant,
    requests: u64,
    ops: f64,
}

/// Short `redis-benchmark` runs back to back for `window`.
fn load_window(window: Duration, keys: u64) -> Vec<LoadRun> {
    let requests = 20_000;
    let t = Instant::now();
    let mut runs = Vec::new();
    while t.elapsed() < window {
        let start = Instant::now();
        let ops = set_load(requests, keys);
        if ops > 0.0 {
            runs.push(LoadRun {
                start,
                requests,
                ops,
            });
        }
    }
    runs
}

/// Aggregate ops/s of the runs that started at or after `from`: total requests over the
/// total time redis-benchmark measured.
fn ops_of(runs: &[LoadRun], from: Option<Instant>) -> Option<f64> {
    let sel: Vec<&LoadRun> = runs
        .iter()
        .filter(|r| from.is_none_or(|f| r.start >= f))
        .collect();
    let req: u64 = sel.iter().map(|r| r.requests).sum();
    let secs: f64 = sel.iter().map(|r| r.requests as f64 / r.ops).sum();
    (req > 0).then(|| req as f64 / secs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One "tracking on" window: a dump (8 rounds... until cancelled: 300 ms apart) runs for
/// `window` while the load runs; then it is cancelled (the target is untracked again) and
/// its uncommitted image removed. Returns the load runs and when round 0 (the full first
/// copy) ended.
#[allow(clippy::type_complexity)]
fn on_window(
    pid: u32,
    dir: &std::path::Path,
    window: Duration,
    keys: u64,
    priority: Priority,
) -> (Vec<LoadRun>, Option<(Instant, Duration)>, f64, f64) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let cancel = Arc::new(AtomicBool::new(false));
    let r0 = Arc::new(Mutex::new(None));
    let (c2, r02, dir2) = (cancel.clone(), r0.clone(), dir.to_path_buf());
    let dumper = std::thread::Builder::new()
        .name("ww-bench-dump".into())
        .spawn(move || {
            let mut progress = |r: &writewatch_process::RoundReport| {
                if r.round == 0 {
                    *r02.lock().unwrap() = Some(Instant::now());
                }
            };
            let opts = DumpOptions {
                rounds: 100_000,
                interval: Duration::from_millis(300),
                cancel: Some(c2),
                priority,
                ..Default::default()
            };
            dump(pid, &dir2, opts, Some(&mut progress))
        })
        .expect("spawn");
    let t_window = Instant::now();
    let runs = load_window(window, keys);
    let dump_s = thread_cpu("ww-bench-dump") + thread_cpu("ww-dump-rounds");
    let writer_s = thread_cpu("ww-dump-writer");
    cancel.store(true, Ordering::Relaxed);
    match dumper.join().expect("dumper thread") {
        Err(writewatch_process::DumpError::Interrupted) => {}
        other => panic!("on-window dump: {other:?}"),
    }
    let _ = std::fs::remove_dir_all(dir);
    let t = *r0.lock().unwrap();
    (runs, t.map(|t| (t, t - t_window)), dump_s, writer_s)
}

/// CPU figures of one window, in seconds of CPU (USER_HZ ticks of 10 ms).
#[derive(Debug, Default, Clone, Copy)]
struct Cpu {
    /// This process (the dumper's threads: the bench's main thread only waits).
    dumper: f64,
    /// The target (redis-server, all its threads).
    target: f64,
    /// The load generators (`redis-benchmark`, waited-for children).
    load: f64,
    /// The whole machine, busy (not idle, not iowait), in CPUs (0-2 on 2 vCPUs).
    machine_busy: f64,
    /// Window length, seconds.
    secs: f64,
}

/// (own utime + stime, waited children's utime + stime) of `/proc/<who>/stat`, seconds.
fn proc_ticks(who: &str) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{who}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: index 0 is field 3 (state); utime = field 14.
    let f: Vec<u64> = s
        .rsplit_once(')')
        .map(|(_, r)| {
            r.split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let g = |i: usize| f.get(i).copied().unwrap_or(0) as f64 / 100.0;
    (g(11) + g(12), g(13) + g(14))
}

/// Busy and total seconds of all CPUs (`/proc/stat`).
fn machine_ticks() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    ((total - idle) as f64 / 100.0, total as f64 / 100.0)
}

/// Runs `f` and measures the CPU it and the target used meanwhile.
fn with_cpu<R>(pid: u32, f: impl FnOnce() -> R) -> (R, Cpu) {
    let t = Instant::now();
    let (s0, c0) = proc_ticks("self");
    let (r0, _) = proc_ticks(&pid.to_string());
    let (b0, _) = machine_ticks();
    let r = f();
    let (s1, c1) = proc_ticks("self");
    let (r1, _) = proc_ticks(&pid.to_string());
    let (b1, _) = machine_ticks();
    let secs = t.elapsed().as_secs_f64();
    let cpu = Cpu {
        dumper: s1 - s0,
        target: r1 - r0,
        load: c1 - c0,
        machine_busy: (b1 - b0) / secs,
        secs,
    };
    (r, cpu)
}

/// CPU seconds of this process's live threads named `prefix*` (`/proc/self/task/*/stat`).
fn thread_cpu(prefix: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .map(|e| proc_ticks(&format!("self/task/{}", e.file_name().to_string_lossy())).0)
        .sum()
}

/// Attaches and write-protects every writable mapping (what a dump registers), without
/// copying anything: the cost of tracking alone.
fn arm(pid: u32) -> (writewatch_process::Attached, Vec<(usize, usize)>) {
    let at = writewatch_process::attach(pid).expect("attach");
    let mut ranges = Vec::new();
    for m in read_maps(pid).expect("maps") {
        if m.skip_reason().is_none() && at.uffd().register_wp(m.start, m.end - m.start).is_ok() {
            ranges.push((m.start, m.end));
        }
    }
    (at, ranges)
}

/// What runs in a window besides the SET load.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cond {
    /// Nothing: the target untracked.
    Off,
    /// Attached, every writable range write-protected (`WP_ASYNC`), nothing else: each page
    /// takes one write fault in the window.
    Armed,
    /// Armed, and every 300 ms a harvest (`PAGEMAP_SCAN` + re-protection of what was
    /// written) without copying: the write faults and harvests of the rounds, no copy, no
    /// image writer.
    Rearm,
    /// A whole dump (rounds 300 ms apart at least, the image writer), cancelled at the
    /// window's end, with `Priority::Normal` (the rounds at the dump's priority, the writer
    /// 10 nice levels below: the code before priorities and pacing, but paced).
    DumpNormal,
    /// The same with `Priority::Low` (rounds and writer at nice 19).
    Dump,
    /// The same with the default `Priority::Idle` (rounds and writer `SCHED_IDLE`).
    DumpIdle,
}

impl Cond {
    fn name(self) -> &'static str {
        match self {
            Cond::Off => "untracked",
            Cond::Armed => "armed, idle",
            Cond::Rearm => "harvest every 300 ms, no copy",
            Cond::DumpNormal => "full dump, Priority::Normal",
            Cond::Dump => "full dump, Priority::Low",
            Cond::DumpIdle => "full dump, Priority::Idle",
        }
    }

    /// The condition named `s` on the command line (`--conds off,low,idle`).
    fn parse(s: &str) -> Option<Cond> {
        Some(match s {
            "off" => Cond::Off,
            "armed" => Cond::Armed,
            "rearm" => Cond::Rearm,
            "normal" => Cond::DumpNormal,
            "low" => Cond::Dump,
            "idle" => Cond::DumpIdle,
            _ => return None,
        })
    }
}

/// One window of a condition: the load runs, the throughput, the CPU, when round 0 of a
/// dump ended, the pages re-armed per harvest (Rearm) and the named threads' CPU (dump
/// thread, image writer) just before the end.
struct Window {
    runs: Vec<LoadRun>,
    cpu: Cpu,
    r0: Option<(Instant, Duration)>,
    rearmed_per_pass: f64,
    dump_thread_s: f64,
    writer_thread_s: f64,
}

fn run_window(cond: Cond, pid: u32, dir: &std::path::Path, window: Duration, keys: u64) -> Window {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut w = Window {
        runs: Vec::new(),
        cpu: Cpu::default(),
        r0: None,
        rearmed_per_pass: 0.0,
        dump_thread_s: 0.0,
        writer_thread_s: 0.0,
    };
    match cond {
        Cond::Off => {
            let (runs, cpu) = with_cpu(pid, || load_window(window, keys));
            (w.runs, w.cpu) = (runs, cpu);
        }
        Cond::Armed => {
            let ((runs, at), cpu) = with_cpu(pid, || {
                let (at, _) = arm(pid);
                (load_window(window, keys), at)
            });
            drop(at);
            (w.runs, w.cpu) = (runs, cpu);
        }
        Cond::Rearm => {
            let stop = Arc::new(AtomicBool::new(false));
            let stop2 = stop.clone();
            let ((runs, passes), cpu) = with_cpu(pid, || {
                let h = std::thread::Builder::new()
                    .name("ww-bench-rearm".into())
                    .spawn(move || {
                        let (at, ranges) = arm(pid);
                        let mut passes = Vec::new();
                        while !stop2.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(300));
                            let mut pages = 0usize;
                            for &(a, b) in &ranges {
                                let _ = at.pagemap().harvest(a, b, |x, y| pages += (y - x) / 4096);
                            }
                            passes.push(pages);
                        }
                        passes
                    })
                    .expect("spawn");
                let runs = load_window(window, keys);
                stop.store(true, Ordering::Relaxed);
                (runs, h.join().expect("rearm thread"))
            });
            w.rearmed_per_pass = passes.iter().sum::<usize>() as f64 / passes.len().max(1) as f64;
            (w.runs, w.cpu) = (runs, cpu);
        }
        Cond::Dump | Cond::DumpNormal | Cond::DumpIdle => {
            let prio = match cond {
                Cond::Dump => Priority::Low,
                Cond::DumpIdle => Priority::Idle,
                _ => Priority::Normal,
            };
            let ((runs, r0, dt, wt), cpu) =
                with_cpu(pid, || on_window(pid, dir, window, keys, prio));
            (w.runs, w.cpu, w.r0) = (runs, cpu, r0);
            (w.dump_thread_s, w.writer_thread_s) = (dt, wt);
        }
    }
    w
}

/// Throughput with tracking off vs on, and where the difference goes: `cycles` cycles of
/// one window per [`Cond`], the order rotating from cycle to cycle (so a drift of the
/// machine's load spreads over all conditions); each condition's ratio to the untracked
/// window of its own cycle, the median over cycles, and the CPU each window used.
fn throughput(
    pid: u32,
    root: &std::path::Path,
    (cycles, window): (usize, Duration),
    keys: u64,
    conds: &[Cond],
) {
    assert_eq!(
        conds.first(),
        Some(&Cond::Off),
        "the untracked window comes first"
    );
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); conds.len()];
    let mut steady: Vec<Vec<f64>> = vec![Vec::new(); conds.len()];
    let mut cpus: Vec<Vec<Cpu>> = vec![Vec::new(); conds.len()];
    let mut effs: Vec<Vec<f64>> = vec![Vec::new(); conds.len()];
    for i in 0..cycles {
        let mut got: Vec<Option<Window>> = (0..conds.len()).map(|_| None).collect();
        for k in 0..conds.len() {
            let c = (i + k) % conds.len();
            let dir = root.join(format!("tp-img{i}"));
            got[c] = Some(run_window(conds[c], pid, &dir, window, keys));
        }
        let got: Vec<Window> = got.into_iter().map(|w| w.expect("window")).collect();
        let off = ops_of(&got[0].runs, None).unwrap_or(f64::NAN);
        // SETs per CPU-second of redis: what each SET costs redis (write faults included),
        // whatever share of the CPUs the machine's other load leaves it.
        let per_cpu =
            |w: &Window| w.runs.iter().map(|r| r.requests).sum::<u64>() as f64 / w.cpu.target;
        let off_eff = per_cpu(&got[0]);
        println!(
            "  cycle {i} (order from {}):",
            conds[i % conds.len()].name()
        );
        for (k, (c, w)) in conds.iter().zip(&got).enumerate() {
            let ops = ops_of(&w.runs, None).unwrap_or(f64::NAN);
            ratios[k].push(ops / off);
            effs[k].push(per_cpu(w) / off_eff);
            cpus[k].push(w.cpu);
            let per = |v: f64| v / w.cpu.secs;
            let mut extra = String::new();
            if *c == Cond::Rearm {
                extra = format!(", {:.0} pages re-armed per harvest", w.rearmed_per_pass);
            }
            if matches!(c, Cond::Dump | Cond::DumpNormal | Cond::DumpIdle) {
                let after = w.r0.and_then(|(t, _)| ops_of(&w.runs, Some(t)));
                if let Some(a) = after {
                    steady[k].push(a / off);
                }
                extra = format!(
                    ", round 0 took {}, after it {}; dump thread {:.2} s, writer {:.2} s CPU",
                    w.r0.map_or("the whole window".into(), |(_, d)| format!(
                        "{:.1} s",
                        d.as_secs_f64()
                    )),
                    after.map_or("n/a".into(), |a| format!("{a:.0} (ratio {:.3})", a / off)),
                    w.dump_thread_s,
                    w.writer_thread_s
                );
            }
            println!(
                "    {:<31} {ops:>8.0} SET/s ratio {:.3} (per redis CPU-second {:.3}); CPU/s: dumper {:.2}, redis {:.2}, redis-benchmark {:.2}, machine busy {:.2} of 2{extra}",
                c.name(),
                ops / off,
                per_cpu(w) / off_eff,
                per(w.cpu.dumper),
                per(w.cpu.target),
                per(w.cpu.load),
                w.cpu.machine_busy,
            );
        }
    }
    println!(
        "SET ops/s against untracked, median of {cycles} cycles of {:.0} s windows (range), SETs per redis CPU-second against untracked (median), CPU per second of window (mean: dumper / redis / redis-benchmark / machine busy):",
        window.as_secs_f64()
    );
    for (k, c) in conds.iter().enumerate() {
        let n = cpus[k].len().max(1) as f64;
        let m = |f: fn(&Cpu) -> f64| cpus[k].iter().map(|x| f(x) / x.secs).sum::<f64>() / n;
        println!(
            "  {:<31} {:.3} (range {:.3}-{:.3}), per redis CPU-second {:.3}   CPU {:.2} / {:.2} / {:.2} / {:.2}",
            c.name(),
            median(ratios[k].clone()),
            ratios[k].iter().copied().fold(f64::INFINITY, f64::min),
            ratios[k].iter().copied().fold(0.0, f64::max),
            median(effs[k].clone()),
            m(|x| x.dumper),
            m(|x| x.target),
            m(|x| x.load),
            cpus[k].iter().map(|x| x.machine_busy).sum::<f64>() / n,
        );
    }
    for (k, c) in conds.iter().enumerate() {
        if !matches!(c, Cond::Dump | Cond::DumpNormal | Cond::DumpIdle) {
            continue;
        }
        let s = &steady[k];
        println!(
            "  {}, after round 0: {}",
            c.name(),
            if s.is_empty() {
                "n/a".to_string()
            } else {
                format!("{:.3} ({} cycles)", median(s.clone()), s.len())
            }
        );
    }
}

/// A full stop-and-copy: SIGSTOP, read every writable page (like the dump's copy: into
/// memory, 1 MiB at a time), SIGCONT. Returns (ms stopped, bytes).
fn stop_and_copy(pid: u32) -> (f64, u64) {
    use std::os::unix::fs::FileExt;
    let kill = |sig: &str| {
        let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
    };
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    kill("-STOP");
    let mut bytes = 0u64;
    for m in read_maps(pid).expect("maps") {
        if m.skip_reason().is_some() {
            continue;
        }
        let mut a = m.start;
        while a < m.end {
            let n = buf.len().min(m.end - a);
            if mem.read_exact_at(&mut buf[..n], a as u64).is_ok() {
                bytes += n as u64;
            }
            a += n;
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    kill("-CONT");
    (ms, bytes)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches` builds it; only `cargo bench` measures.
    }
    let gib: f64 = std::env::args()
        .skip_while(|a| a != "--gib")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    // Keys the SET load writes (`redis-benchmark -r`): default the first 100k of the dataset
    // (a ~100 MiB hot set in a >= 1 GiB process); `--hot-keys 0` means every key.
    let hot: u64 = std::env::args()
        .skip_while(|a| a != "--hot-keys")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: redis-server not installed (apt-get install redis-server redis-tools)");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let mut redis: Child = Command::new("redis-server")
        .args(["--port", PORT, "--save", "", "--appendonly", "no"])
        .args(["--enable-debug-command", "yes"])
        .args(["--dir", work.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let pid = redis.id();
    for _ in 0..100 {
        if cli(&["PING"]).contains("PONG") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let keys = (gib * 1024.0 * 1024.0) as u64; // ~1 KiB values
    cli(&["DEBUG", "POPULATE", &keys.to_string(), "key", "1024"]);
    let rss = info_field("memory", "used_memory_rss").unwrap_or_default();
    let hot = if hot == 0 { keys } else { hot.min(keys) };
    println!("redis-server pid {pid}: {keys} keys, used_memory_rss {rss}; SET load on {hot} keys");

    let requests = 100_000;
    // Tracking on: SET runs back to back for the whole dump (its rounds and its final
    // freeze happen under load).
    // `--image-in DIR`: write the image under DIR (e.g. /dev/shm, to take the disk out).
    let image_root = std::env::args()
        .skip_while(|a| a != "--image-in")
        .nth(1)
        .map(std::path::PathBuf::from);
    let image_tmp = image_root.map(|r| tempfile::tempdir_in(r).expect("image dir"));
    let dir = image_tmp
        .as_ref()
        .map_or(work.path(), |t| t.path())
        .join("img");
    println!("image in {}", dir.display());
    let cycles: usize = std::env::args()
        .skip_while(|a| a != "--cycles")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let window = Duration::from_secs_f64(
        std::env::args()
            .skip_while(|a| a != "--window")
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(20.0),
    );
    // `--conds off,low,idle`: the conditions measured (the untracked window first); default
    // all of them.
    let conds: Vec<Cond> = std::env::args()
        .skip_while(|a| a != "--conds")
        .nth(1)
        .map(|v| {
            v.split(',')
                .map(|c| {
                    Cond::parse(c).unwrap_or_else(|| {
                        panic!("--conds: unknown {c:?} (off, armed, rearm, normal, low, idle)")
                    })
                })
                .collect()
        })
        .unwrap_or_else(|| {
            vec![
                Cond::Off,
                Cond::Armed,
                Cond::Rearm,
                Cond::DumpNormal,
                Cond::Dump,
                Cond::DumpIdle,
            ]
        });
    throughput(pid, dir.parent().unwrap(), (cycles, window), hot, &conds);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let load = std::thread::spawn(move || {
        let mut runs = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            runs.push(set_load(requests, hot));
        }
        runs
    });
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let rounds_opts = DumpOptions {
        rounds: 8,
        interval: Duration::from_millis(300),
        ..Default::default()
    };
    let report = dump(pid, &dir, rounds_opts, None).expect("dump");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.join().expect("load");
    let dump_s = t0.elapsed().as_secs_f64();
    let r0 = &report.rounds[0];
    let fork = {
        cli(&["BGSAVE"]);
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..600 {
            if info_field("persistence", "rdb_bgsave_in_progress").as_deref() == Some("0") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        info_field("stats", "latest_fork_usec")
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1e3
    };
    let (sc_ms, sc_bytes) = stop_and_copy(pid);
    println!(
        "dump: {} ranges, {:.0} MiB, {} rounds in {dump_s:.1} s",
        report.ranges,
        report.range_bytes as f64 / 1048576.0,
        report.rounds.len()
    );
    for r in &report.rounds {
        println!(
            "  round {:>2}{}: {:>8} pages {:>8.1} ms (harvest {:.2} ms, copy {:.1} ms of which process_vm_readv {:.1} ms, waiting for the writer {:.1} ms; paced: {:.0} ms waiting for the writer before it; {} hot pages left out)",
            r.round,
            if r.is_final { " final" } else { "      " },
            r.pages,
            r.ms,
            r.harvest_ms,
            r.copy_ms,
            r.read_ms,
            r.wait_ms,
            r.drain_ms,
            r.hot_pages
        );
    }
    println!(
        "final freeze          {:>9.2} ms ({} threads)",
        report.freeze_ms, report.threads
    );
    println!(
        "full stop-and-copy    {:>9.2} ms ({:.0} MiB)  ratio {:.3}",
        sc_ms,
        sc_bytes as f64 / 1048576.0,
        report.freeze_ms / sc_ms
    );
    println!(
        "redis BGSAVE fork     {:>9.2} ms             ratio {:.3}",
        fork,
        report.freeze_ms / fork
    );
    let f = &report.freeze_times;
    println!(
        "  freeze breakdown: stop {:.2} ms, maps {:.2} ms, harvest {:.2} ms, copy {:.2} ms (process_vm_readv {:.2} ms){}; then resume {:.2} ms, writes {:.1} ms, IMAGE commit {:.1} ms",
        f.stop_ms,
        f.maps_ms,
        f.harvest_ms,
        f.copy_ms,
        f.read_ms,
        if f.buffered { String::new() } else { format!(", writes while stopped {:.1} ms", f.stopped_write_ms) },
        f.resume_ms,
        f.write_ms,
        f.commit_ms
    );
    let w = &report.writer;
    println!(
        "  image writer thread: {:.0} MiB in {} segments, {:.0} ms pushing + {:.0} ms committing (fdatasync): {:.2} GB/s",
        w.bytes as f64 / 1048576.0,
        w.segments,
        w.push_ms,
        w.commit_ms,
        w.bytes as f64 / ((w.push_ms + w.commit_ms) / 1e3) / 1e9
    );
    println!(
        "round 0 copy rate     {:>9.2} GB/s read from memory per CPU-second of process_vm_readv ({:.0} ms CPU); {:.2} GB/s wall clock ({} pages, {:.0} ms in process_vm_readv, waiting for a CPU included: the rounds run at the dump's priority); {:.2} GB/s for the round ({:.0} ms, {:.0} ms of it waiting for the writer)",
        r0.bytes as f64 / (r0.read_cpu_ms / 1e3) / 1e9,
        r0.read_cpu_ms,
        r0.bytes as f64 / (r0.read_ms / 1e3) / 1e9,
        r0.pages,
        r0.read_ms,
        r0.bytes as f64 / (r0.copy_ms / 1e3) / 1e9,
        r0.copy_ms,
        r0.wait_ms
    );
    let (pg, rd): (u64, f64) = report
        .rounds
        .iter()
        .map(|r| (r.bytes, r.read_ms))
        .fold((0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    println!(
        "all rounds read rate  {:>9.2} GB/s",
        pg as f64 / (rd / 1e3) / 1e9
    );
    let _ = redis.kill();
    let _ = redis.wait();
}
