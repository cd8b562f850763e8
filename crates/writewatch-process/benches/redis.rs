//! Dumping Debian's `redis-server` (a program no one here wrote) holding >= 1 GiB under
//! `redis-benchmark` SET load. Measures, in one run:
//!
//! - the final freeze of an incremental pre-copy dump, against a full stop-and-copy of the
//!   same process (every writable page read with the process stopped) and against Redis's
//!   own fork for `BGSAVE` (`INFO persistence` `latest_fork_usec`);
//! - Redis SET throughput with tracking on vs off: pairs of equal windows (default 3 pairs of
//!   20 s, `-- --pairs N --window S`), the order alternating, each "on" window a dump
//!   running (cancelled at the window's end); the median of the per-pair ratios;
//! - the first round's copy rate (pages read with `process_vm_readv` and written to the
//!   image store).
//!
//! Needs `redis-server` and `redis-benchmark` (`apt-get install redis-server redis-tools`)
//! and root (or ptrace_scope 0). Run: `cargo bench -p writewatch-process --bench redis`
//! (`-- --gib N` for another dataset size, `-- --hot-keys N` for the keys the load writes,
//! 0 = all, `-- --image-in /dev/shm` to write the image to memory). Measures only under `--bench`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use writewatch_process::{dump, read_maps, DumpOptions};

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
fn on_window(
    pid: u32,
    dir: &std::path::Path,
    window: Duration,
    keys: u64,
) -> (Vec<LoadRun>, Option<(Instant, Duration)>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let cancel = Arc::new(AtomicBool::new(false));
    let r0 = Arc::new(Mutex::new(None));
    let (c2, r02, dir2) = (cancel.clone(), r0.clone(), dir.to_path_buf());
    let dumper = std::thread::spawn(move || {
        let mut progress = |r: &writewatch_process::RoundReport| {
            if r.round == 0 {
                *r02.lock().unwrap() = Some(Instant::now());
            }
        };
        let opts = DumpOptions {
            rounds: 100_000,
            interval: Duration::from_millis(300),
            cancel: Some(c2),
            ..Default::default()
        };
        dump(pid, &dir2, opts, Some(&mut progress))
    });
    let t_window = Instant::now();
    let runs = load_window(window, keys);
    cancel.store(true, Ordering::Relaxed);
    match dumper.join().expect("dumper thread") {
        Err(writewatch_process::DumpError::Interrupted) => {}
        other => panic!("on-window dump: {other:?}"),
    }
    let _ = std::fs::remove_dir_all(dir);
    let t = *r0.lock().unwrap();
    (runs, t.map(|t| (t, t - t_window)))
}

/// Throughput with tracking off vs on: `pairs` pairs of equal windows, alternating which
/// comes first (off-on, on-off, ...) so a steady drift of the machine's load cancels out;
/// returns the per-pair ratios (whole window, and the part after round 0) and prints them.
fn throughput(pid: u32, root: &std::path::Path, pairs: usize, window: Duration, keys: u64) {
    let mut whole = Vec::new();
    let mut steady = Vec::new();
    for i in 0..pairs {
        let dir = root.join(format!("tp-img{i}"));
        let (off, (on, r0)) = if i % 2 == 0 {
            let off = load_window(window, keys);
            (off, on_window(pid, &dir, window, keys))
        } else {
            let on = on_window(pid, &dir, window, keys);
            (load_window(window, keys), on)
        };
        let off = ops_of(&off, None).unwrap_or(f64::NAN);
        let on_all = ops_of(&on, None).unwrap_or(f64::NAN);
        let on_steady = r0.and_then(|(t, _)| ops_of(&on, Some(t)));
        whole.push(on_all / off);
        if let Some(s) = on_steady {
            steady.push(s / off);
        }
        println!(
            "  pair {i} ({}): off {off:>8.0} ops/s, on {on_all:>8.0} (ratio {:.3}), on after round 0 {} (round 0 took {} of the window)",
            if i % 2 == 0 { "off, on" } else { "on, off" },
            on_all / off,
            on_steady.map_or("n/a".into(), |s| format!("{s:.0} (ratio {:.3})", s / off)),
            r0.map_or("the whole window".into(), |(_, d)| format!("{:.1} s", d.as_secs_f64())),
        );
    }
    println!(
        "SET ops/s tracked / untracked, median of {pairs} pairs of {:.0} s windows: {:.3} whole window (first full copy included), {} after round 0",
        window.as_secs_f64(),
        median(whole),
        if steady.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.3} ({} pairs)", median(steady.clone()), steady.len())
        }
    );
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
    let pairs: usize = std::env::args()
        .skip_while(|a| a != "--pairs")
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
    throughput(pid, dir.parent().unwrap(), pairs, window, hot);
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
            "  round {:>2}{}: {:>8} pages {:>8.1} ms (harvest {:.2} ms, copy {:.1} ms, waiting for the writer {:.1} ms)",
            r.round,
            if r.is_final { " final" } else { "      " },
            r.pages,
            r.ms,
            r.harvest_ms,
            r.copy_ms,
            r.wait_ms
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
        "round 0 copy rate     {:>9.2} GB/s read from memory ({} pages, {:.0} ms in process_vm_readv); {:.2} GB/s for the round ({:.0} ms, {:.0} ms of it waiting for the writer)",
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
