//! `restore_region` (a checkpoint into a live tracked region) against `Store::restore` (into
//! a fresh mapping), same store, same run: prints the throughput ratio (target >= 0.8). Checks
//! correctness, never timing. `WRITEWATCH_RESTORE_MIB` sets the region size (default 256).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use writewatch::checkpoint::Store;
use writewatch::{restore_region, save_epoch, Tracker};

#[test]
fn restore_region_vs_store_restore_ratio() {
    let mib: usize = std::env::var("WRITEWATCH_RESTORE_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("restore-speed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = Store::create(&dir).unwrap();
    let tracker = Tracker::builder().build().unwrap();
    let region = tracker.map_anonymous(mib << 20).unwrap();
    let words = region.as_atomic_u64();
    let fill = |seed: u64| {
        region.prepare_overwrite().unwrap();
        let mut x = seed;
        for w in words {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.store(x, Relaxed);
        }
    };
    fill(0x1234_5678);
    let expected: Vec<u64> = words.iter().map(|w| w.load(Relaxed)).collect();
    // A dense store: every page holds data.
    save_epoch(&mut store, &region.cut().unwrap()).unwrap();
    drop(store.restore(0).unwrap()); // warm the page cache for both

    let mut t_store = f64::MAX;
    let mut t_region = f64::MAX;
    for round in 0..3u64 {
        let t = Instant::now();
        let m = store.restore(0).unwrap();
        t_store = t_store.min(t.elapsed().as_secs_f64());
        assert!(m.as_slice_of::<u64>().unwrap() == &expected[..]);
        drop(m);

        fill(0xDEAD_BEEF + round); // every page differs from the checkpoint
        drop(region.cut().unwrap()); // re-armed, like a live region
        let t = Instant::now();
        restore_region(&store, 0, &region).unwrap();
        t_region = t_region.min(t.elapsed().as_secs_f64());
        assert!(words
            .iter()
            .map(|w| w.load(Relaxed))
            .eq(expected.iter().copied()));
    }
    let mibs = |t: f64| mib as f64 / t;
    eprintln!(
        "restore of {mib} MiB (best of 3): Store::restore {:.1} ms ({:.0} MiB/s), restore_region {:.1} ms ({:.0} MiB/s): ratio {:.2} (target >= 0.80)",
        t_store * 1e3,
        mibs(t_store),
        t_region * 1e3,
        mibs(t_region),
        t_store / t_region
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
