//! Dumping Debian's `redis-server` (a program no one here wrote) holding >= 1 GiB under
//! `redis-benchmark` SET load. Measures, in one run:
//!
//! - the final freeze of an incremental pre-copy dump, against a full stop-and-copy of the
//!   same process (every writable page read with the process stopped) and against Redis's
//!   own fork for `BGSAVE` (`INFO persistence` `latest_fork_usec`);
//! - Redis SET throughput with tracking on vs off;
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

    // Untracked baseline: the same SET runs as during the dump.
    let requests = 100_000;
    let off: f64 = (0..3).map(|_| set_load(requests, hot)).sum::<f64>() / 3.0;

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
    let runs = load.join().expect("load");
    let on = runs.iter().sum::<f64>() / runs.len().max(1) as f64;
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
            "  round {:>2}{}: {:>8} pages {:>8.1} ms (harvest {:.2} ms)",
            r.round,
            if r.is_final { " final" } else { "      " },
            r.pages,
            r.ms,
            r.harvest_ms
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
    println!("SET ops/s untracked   {off:>9.0}");
    println!(
        "SET ops/s tracked     {on:>9.0}             ratio {:.3}",
        on / off
    );
    println!(
        "round 0 copy rate     {:>9.2} GB/s read from memory ({} pages, {:.0} ms in process_vm_readv); {:.2} GB/s with the store writes ({:.0} ms)",
        r0.bytes as f64 / (r0.read_ms / 1e3) / 1e9,
        r0.pages,
        r0.read_ms,
        r0.bytes as f64 / (r0.copy_ms / 1e3) / 1e9,
        r0.copy_ms
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
