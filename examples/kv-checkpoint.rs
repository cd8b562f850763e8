//! `kv-checkpoint`: a key-value table in a tracked region, checkpointed periodically, killed
//! with `kill -9`, restored, resumed, and checked against an independent oracle.
//!
//! The parent re-executes itself as a child. The child keeps a hash table (open addressing,
//! `(key, value)` pairs of `u64`) in a tracked region, applies a batch of puts and deletes per
//! epoch, cuts, and saves the epoch into a checkpoint store, in a loop. The batch of store
//! epoch `s` is a deterministic function of `s`. The parent SIGKILLs the child at a random
//! instant, opens the store (removing what the kill left), resumes it into a fresh region,
//! runs more epochs itself, then restores every epoch of the store and compares its table
//! with the oracle: a `BTreeMap` replaying the same batches. Exit 0 when every epoch matches,
//! 1 when the oracle check fails, 2 on any other error.
//!
//! ```text
//! cargo run --example kv-checkpoint                 # 64 MiB table, ~10 epochs, kill, 10 more
//! cargo run --example kv-checkpoint -- --quick      # 1 MiB, a few epochs (for make test)
//!     [--dir DIR] [--keep] [--size 64M] [--before-kill 10] [--after 10] [--interval-ms 50]
//!     [--seed N]
//! ```
//! Logging: `RUST_LOG` (e.g. `RUST_LOG=writewatch=info`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use clap::Parser;
use writewatch::checkpoint::format::is_segment_file_name;
use writewatch::checkpoint::{Store, LOCK_NAME, MANIFEST_NAME};
use writewatch::{resume, save_epoch, Tracker};
use writewatch_testkit::SplitMix64;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "key-value table: checkpoint, kill -9, restore, resume, verify against an oracle"
)]
struct Args {
    /// Store directory: a new path or an empty directory (default: a temporary directory,
    /// removed at the end unless --keep).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the store.
    #[arg(long)]
    keep: bool,
    /// Table size in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: usize,
    /// Epochs the child saves before it may be killed.
    #[arg(long, default_value_t = 10)]
    before_kill: u64,
    /// Epochs the parent saves after resuming.
    #[arg(long, default_value_t = 10)]
    after: u64,
    /// Pause between the child's checkpoints.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Short run (1 MiB, 4 epochs, kill, 5 more, 5 ms apart): for `make test`.
    #[arg(long)]
    quick: bool,
    /// Seed of the kill delay (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Internal: run as the child.
    #[arg(long, hide = true)]
    child: bool,
}

/// Puts and deletes per epoch.
const OPS: u64 = 2000;

/// The batch of store epoch `s`: `(key, Some(value))` puts, `(key, None)` deletes. Keys are
/// in `1..=keyspace` (0 marks an empty slot), values are never 0.
fn batch(s: u64, keyspace: u64) -> impl Iterator<Item = (u64, Option<u64>)> {
    let mut rng = SplitMix64(s ^ 0x6B76_6B76);
    (0..OPS).map(move |_| {
        let key = rng.next() % keyspace + 1;
        let r = rng.next();
        (key, (r % 8 != 0).then_some(r | 1))
    })
}

/// The table in the region: slot `i` is words `2i` (key) and `2i + 1` (value; 0 = deleted).
/// Linear probing; a key keeps its slot forever, so at most `keyspace` slots are used.
struct Table<'a> {
    words: &'a [AtomicU64],
}

impl Table<'_> {
    fn slots(&self) -> u64 {
        self.words.len() as u64 / 2
    }
    fn slot_of(&self, key: u64) -> usize {
        let mut i = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) % self.slots();
        loop {
            let k = self.words[2 * i as usize].load(Relaxed);
            if k == key || k == 0 {
                return i as usize;
            }
            i = (i + 1) % self.slots();
        }
    }
    fn apply(&self, key: u64, value: Option<u64>) {
        let i = self.slot_of(key);
        self.words[2 * i].store(key, Relaxed);
        self.words[2 * i + 1].store(value.unwrap_or(0), Relaxed);
    }
}

/// The live entries of a table image.
fn entries(words: &[u64]) -> BTreeMap<u64, u64> {
    words
        .chunks_exact(2)
        .filter(|kv| kv[0] != 0 && kv[1] != 0)
        .map(|kv| (kv[0], kv[1]))
        .collect()
}

/// The oracle: the table after each store epoch, replayed in a `BTreeMap`.
fn oracle(upto: u64, keyspace: u64) -> Vec<BTreeMap<u64, u64>> {
    let mut m = BTreeMap::new();
    let mut out = Vec::new();
    for s in 0..=upto {
        for (k, v) in batch(s, keyspace) {
            match v {
                Some(v) => m.insert(k, v),
                None => m.remove(&k),
            };
        }
        out.push(m.clone());
    }
    out
}

fn keyspace(len: usize) -> u64 {
    (len as u64 / 16 / 4).max(16) // at most a quarter of the slots
}

fn child(args: &Args, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut store = Store::open_or_create(dir)?;
    let tracker = Tracker::builder().build()?;
    let region = tracker.map_anonymous(args.size_mib << 20)?;
    resume(&mut store, &region, None)?;
    let table = Table {
        words: region.as_atomic_u64(),
    };
    let ks = keyspace(region.len());
    loop {
        let s = store.next_epoch();
        for (k, v) in batch(s, ks) {
            table.apply(k, v);
        }
        let info = save_epoch(&mut store, &region.cut()?)?;
        println!("SAVED {}", info.epoch);
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    }
}

/// Runs the child until it saved `n` epochs, then SIGKILLs it after a random delay; returns
/// the newest epoch it reported.
fn run_child_and_kill(args: &Args, dir: &Path, n: u64, delay: Duration) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut c = Command::new(exe)
        .arg("--child")
        .arg("--dir")
        .arg(dir)
        .args(["--size-mib", &args.size_mib.to_string()])
        .args(["--interval-ms", &args.interval_ms.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning the child: {e}"))?;
    let out = BufReader::new(c.stdout.take().ok_or("no child stdout")?);
    let mut last = None;
    for line in out.lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(e) = line.strip_prefix("SAVED ") {
            let e: u64 = e.trim().parse().map_err(|_| format!("bad line {line:?}"))?;
            last = Some(e);
            if e + 1 >= n {
                break;
            }
        }
    }
    std::thread::sleep(delay);
    let _ = c.kill(); // SIGKILL
    let status = c.wait().map_err(|e| e.to_string())?;
    use std::os::unix::process::ExitStatusExt;
    if status.signal() != Some(libc::SIGKILL) {
        return Err(format!("the child ended by itself: {status}"));
    }
    last.ok_or_else(|| "the child saved nothing".to_string())
}

/// Compares the table in `words` with the oracle's; returns a description of the difference.
fn check(words: &[u64], want: &BTreeMap<u64, u64>) -> Result<(), String> {
    let got = entries(words);
    if &got == want {
        return Ok(());
    }
    let missing = want.keys().filter(|k| !got.contains_key(k)).count();
    let extra = got.keys().filter(|k| !want.contains_key(k)).count();
    let wrong = got
        .iter()
        .filter(|(k, v)| want.get(k).is_some_and(|w| w != *v))
        .count();
    Err(format!(
        "{} entries, oracle has {}: {missing} missing, {extra} extra, {wrong} with a wrong value",
        got.len(),
        want.len()
    ))
}

fn parent(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let (dir, ours) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("kv-checkpoint-{}", std::process::id())),
            true,
        ),
    };
    // A new store in a new or empty directory (a non-empty one is refused, never cleared).
    drop(Store::create(&dir).map_err(|e| format!("--dir: {e}"))?);
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let delay = Duration::from_micros(SplitMix64(seed).next() % (args.interval_ms * 1000 + 1));
    eprintln!(
        "kv-checkpoint: {} MiB table, store {}, child killed after {} epochs + {delay:?} (seed {seed})",
        args.size_mib,
        dir.display(),
        args.before_kill
    );
    let reported = run_child_and_kill(args, &dir, args.before_kill, delay)?;

    let mut store = Store::open(&dir)?;
    for l in store.removed_leftovers() {
        eprintln!("removed {} ({} bytes) left by the kill", l.file_name, l.len);
    }
    let head = store
        .head()
        .ok_or("the store is empty after the kill")?
        .epoch;
    eprintln!("child reported epoch {reported} saved; the store's head is {head}");
    if head < reported {
        eprintln!("ORACLE FAILED: the store lost epoch {reported}, which the child reported saved");
        return Ok(false);
    }
    let tracker = Tracker::builder().build()?;
    let region = tracker.map_anonymous(args.size_mib << 20)?;
    let ks = keyspace(region.len());
    let r = resume(&mut store, &region, None)?;
    let last = head + args.after;
    let want = oracle(last, ks);
    let words: Vec<u64> = region
        .as_atomic_u64()
        .iter()
        .map(|w| w.load(Relaxed))
        .collect();
    if let Err(e) = check(&words, &want[head as usize]) {
        eprintln!(
            "ORACLE FAILED: the resumed table (epoch {}): {e}",
            r.restored
        );
        return Ok(false);
    }
    let table = Table {
        words: region.as_atomic_u64(),
    };
    for s in head + 1..=last {
        for (k, v) in batch(s, ks) {
            table.apply(k, v);
        }
        let info = save_epoch(&mut store, &region.cut()?)?;
        if info.epoch != s {
            return Err(format!("saved epoch {} where {s} was expected", info.epoch).into());
        }
    }
    let report = store.verify()?;
    if !report.is_clean() {
        eprintln!("ORACLE FAILED: store verify: {report:?}");
        return Ok(false);
    }
    drop(store);
    let store = Store::open_read_only(&dir)?;
    let mut ok = true;
    for (s, want) in want.iter().enumerate() {
        let m = store.restore(s as u64)?;
        if let Err(e) = check(m.as_slice_of::<u64>()?, want) {
            eprintln!("ORACLE FAILED: epoch {s}: {e}");
            ok = false;
        }
    }
    drop(store);
    if ok {
        println!(
            "kv-checkpoint: ok: killed after epoch {reported} (store head {head}), resumed, {} more; all {} epochs restore to the oracle's table ({} keys at the end)",
            args.after,
            last + 1,
            want[last as usize].len()
        );
    }
    if ours && !args.keep {
        // Only the store this run created: its own files, then the (now empty) directory.
        let _ = Store::open(&dir).map(drop);
        for e in std::fs::read_dir(&dir)?.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name == MANIFEST_NAME || name == LOCK_NAME || is_segment_file_name(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
    Ok(ok)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = Args::parse();
    if args.quick {
        args.size_mib = 1;
        args.before_kill = 4;
        args.after = 5;
        args.interval_ms = 5;
    }
    if args.child {
        let Some(dir) = args.dir.clone() else {
            eprintln!("kv-checkpoint: --child needs --dir");
            return ExitCode::from(2);
        };
        if let Err(e) = child(&args, &dir) {
            eprintln!("kv-checkpoint child: {e}");
        }
        return ExitCode::from(2);
    }
    match parent(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("kv-checkpoint: {e}");
            ExitCode::from(2)
        }
    }
}
