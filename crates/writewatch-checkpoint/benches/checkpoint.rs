//! Checkpoint write and restore throughput for a 1 GiB region (256 MiB with
//! `WW_BENCH_QUICK=1`) at 1%, 10% and 100% dirty pages, each beside a plain
//! baseline on the same bytes in the same run:
//!
//! * write: `Store::write_delta` of the dirty pages (uniformly random pages,
//!   the worst case for run coalescing) vs. a sequential `write` (4 MiB
//!   chunks) of the same number of bytes plus `fdatasync`;
//! * restore: `Store::open_read_only` + `Store::restore` of that delta's epoch
//!   into a fresh mapping, with cold page cache, vs. a sequential `read` of a
//!   plain file of the same size into a freshly mapped buffer, cold too.
//!
//! Run with `cargo bench -p writewatch-checkpoint --bench checkpoint`. Under
//! `cargo test` (no `--bench` argument) the sizes shrink to a few MiB so that
//! the bench only smoke-tests. `WW_BENCH_DIR` picks the directory (default:
//! the system temp dir). A summary of medians and ratios is printed at the
//! end.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use writewatch_checkpoint::{Geometry, SliceSource, Store};

const PS: usize = 4096;
const CHUNK: usize = 4 << 20;

static TIMES: Mutex<BTreeMap<String, Vec<Duration>>> = Mutex::new(BTreeMap::new());

fn record(key: &str, d: Duration) {
    TIMES
        .lock()
        .unwrap()
        .entry(key.to_string())
        .or_default()
        .push(d);
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn fill_random(buf: &mut [u8], mut x: u64) {
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = (x | 1).to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// Uniformly random dirty pages (`pct` percent), coalesced into runs.
fn dirty_runs(pages: u64, pct: u64) -> Vec<(u64, u64)> {
    if pct >= 100 {
        return vec![(0, pages)];
    }
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ pct;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for p in 0..pages {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 100 < pct {
            match runs.last_mut() {
                Some((f, c)) if *f + *c == p => *c += 1,
                _ => runs.push((p, 1)),
            }
        }
    }
    runs
}

fn plain_write(path: &Path, data: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    for c in data.chunks(CHUNK) {
        f.write_all(c).unwrap();
    }
    f.sync_data().unwrap();
}

fn drop_cache(path: &Path) {
    // Clean pages only; equivalent to what Store::drop_page_cache does.
    let f = File::open(path).unwrap();
    f.sync_all().unwrap();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
}

/// Reads the file into freshly mapped memory, as a restore must produce fresh memory. (A
/// reused heap `Vec` would hand the baseline pre-faulted pages: after the first free of a
/// multi-MiB buffer glibc raises its mmap threshold and serves the next one from the heap.)
fn plain_read(path: &Path, len: usize) -> FreshBuf {
    let mut f = File::open(path).unwrap();
    let mut buf = FreshBuf::new(len);
    for c in buf.as_mut_slice().chunks_mut(CHUNK) {
        f.read_exact(c).unwrap();
    }
    buf
}

/// An anonymous mapping, unmapped on drop.
struct FreshBuf {
    ptr: *mut u8,
    len: usize,
}

impl FreshBuf {
    fn new(len: usize) -> Self {
        // SAFETY: a new private anonymous mapping chosen by the kernel.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        FreshBuf { ptr: p.cast(), len }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: our mapping of `len` bytes, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for FreshBuf {
    fn drop(&mut self) {
        // SAFETY: our mapping; no borrow outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len.max(1)) };
    }
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let quick = std::env::var("WW_BENCH_QUICK").is_ok_and(|v| v == "1");
    let region_len: usize = if !bench_mode {
        4 << 20
    } else if quick {
        256 << 20
    } else {
        1 << 30
    };
    let base_dir = std::env::var_os("WW_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let tmp = tempfile::tempdir_in(base_dir).unwrap();
    let pages = (region_len / PS) as u64;
    let mut region = vec![0u8; region_len];
    fill_random(&mut region, 0x1234_5678_9ABC_DEF1);
    let geometry = Geometry {
        page_size: PS,
        page_count: pages,
    };

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(if bench_mode { 5 } else { 1 }));
    let mib = region_len >> 20;

    for pct in [1u64, 10, 100] {
        let runs = dirty_runs(pages, pct);
        let dirty_pages: u64 = runs.iter().map(|r| r.1).sum();
        let bytes = dirty_pages as usize * PS;
        let store_dir = tmp.path().join(format!("store-{pct}"));
        let mut store = Store::create(&store_dir).unwrap();
        // An empty base: the delta carries all the bytes under test.
        store.begin_base(0, geometry).unwrap().commit().unwrap();
        let src = SliceSource::new(&region, PS).unwrap();
        let plain = tmp.path().join(format!("plain-{pct}"));

        let mut g = flat_group(&mut c, format!("write-{mib}MiB"), bytes);
        g.bench_function(BenchmarkId::new("checkpoint", format!("{pct}%")), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    store.write_delta(1, &src, &runs).unwrap();
                    let d = t.elapsed();
                    record(&format!("write {pct}% checkpoint"), d);
                    total += d;
                    store.discard_after(0).unwrap();
                }
                total
            })
        });
        g.bench_function(BenchmarkId::new("baseline", format!("{pct}%")), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    plain_write(&plain, &region[..bytes]);
                    let d = t.elapsed();
                    record(&format!("write {pct}% baseline"), d);
                    total += d;
                }
                total
            })
        });
        g.finish();

        store.write_delta(1, &src, &runs).unwrap();
        drop(store);
        let seg_files: Vec<_> = std::fs::read_dir(&store_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let mut g = flat_group(&mut c, format!("restore-{mib}MiB-cold"), bytes);
        g.bench_function(BenchmarkId::new("checkpoint", format!("{pct}%")), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for f in &seg_files {
                        drop_cache(f);
                    }
                    let t = Instant::now();
                    let store = Store::open_read_only(&store_dir).unwrap();
                    let m = store.restore(1).unwrap();
                    assert_eq!(m.len(), region_len);
                    drop(m);
                    let d = t.elapsed();
                    record(&format!("restore {pct}% checkpoint"), d);
                    total += d;
                }
                total
            })
        });
        g.bench_function(BenchmarkId::new("baseline", format!("{pct}%")), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    drop_cache(&plain);
                    let t = Instant::now();
                    let v = plain_read(&plain, bytes);
                    assert_eq!(v.len(), bytes);
                    drop(v);
                    let d = t.elapsed();
                    record(&format!("restore {pct}% baseline"), d);
                    total += d;
                }
                total
            })
        });
        g.finish();
        let _ = std::fs::remove_file(&plain);
        let _ = std::fs::remove_dir_all(&store_dir);
    }
    c.final_summary();

    let mut times = TIMES.lock().unwrap();
    println!("\nsummary ({mib} MiB region, medians over all runs incl. warm-up; ratio = baseline time / checkpoint time)");
    for op in ["write", "restore"] {
        for pct in [1u64, 10, 100] {
            let bytes = dirty_runs(pages, pct).iter().map(|r| r.1).sum::<u64>() * PS as u64;
            let ck = times
                .get_mut(&format!("{op} {pct}% checkpoint"))
                .map(|v| median(v));
            let bl = times
                .get_mut(&format!("{op} {pct}% baseline"))
                .map(|v| median(v));
            if let (Some(ck), Some(bl)) = (ck, bl) {
                let rate = |d: Duration| bytes as f64 / d.as_secs_f64() / (1 << 20) as f64;
                println!(
                    "{op:>8} {pct:>3}% {:>8.1} MiB: checkpoint {:>9.2?} ({:>7.0} MiB/s)  baseline {:>9.2?} ({:>7.0} MiB/s)  ratio {:.2}",
                    bytes as f64 / (1 << 20) as f64,
                    ck,
                    rate(ck),
                    bl,
                    rate(bl),
                    bl.as_secs_f64() / ck.as_secs_f64()
                );
            }
        }
    }
}

/// A benchmark group with flat sampling and byte throughput (`bytes` per iteration).
fn flat_group(
    c: &mut Criterion,
    name: String,
    bytes: usize,
) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes(bytes as u64));
    g
}
