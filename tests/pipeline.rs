//! End to end through the real engine: live cuts -> incremental checkpoints -> restore.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use writewatch::checkpoint::Store;
use writewatch::{restore_region, save_epoch, Tracker};

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn round_trip_64mib_20_epochs_with_live_writers() {
    let dir = tmpdir("pipeline-roundtrip");
    let mut store = Store::create(&dir).unwrap();
    let tracker = Tracker::builder().build().unwrap();
    let region = Arc::new(tracker.map_anonymous(64 << 20).unwrap());
    let pages = region.page_count() as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let (region, stop, pause, paused) = (
                Arc::clone(&region),
                Arc::clone(&stop),
                Arc::clone(&pause),
                Arc::clone(&paused),
            );
            std::thread::spawn(move || {
                let w = region.as_atomic_u64();
                let mut x = 0x1234_5678_9ABC_DEF0u64 ^ (t + 1);
                while !stop.load(SeqCst) {
                    if pause.load(SeqCst) {
                        paused.fetch_add(1, SeqCst);
                        while pause.load(SeqCst) {
                            std::thread::yield_now();
                        }
                        paused.fetch_sub(1, SeqCst);
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let page = (x % pages as u64) as usize;
                    // Some writes zero a page word again: zero pages must restore as zero.
                    let v = if x % 17 == 0 { 0 } else { x };
                    w[page * 512 + (x as usize >> 40) % 512].store(v, SeqCst);
                }
            })
        })
        .collect();
    let mut copies = Vec::new();
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        pause.store(true, SeqCst);
        while paused.load(SeqCst) < 2 {
            std::thread::yield_now();
        }
        let epoch = region.cut().unwrap();
        // SAFETY: the writers are paused: nobody writes the region while we copy it.
        copies.push(unsafe { region.as_slice() }.to_vec());
        pause.store(false, SeqCst);
        // The writers run again while the epoch streams out (copy-before-write).
        save_epoch(&mut store, &epoch).unwrap();
    }
    stop.store(true, SeqCst);
    writers.into_iter().for_each(|h| h.join().unwrap());
    assert!(
        tracker.stats().preserved > 0,
        "pages were preserved while streaming"
    );
    for (k, copy) in copies.iter().enumerate() {
        let m = store.restore(k as u64).unwrap();
        assert!(
            m.as_slice() == &copy[..],
            "epoch {k} restores exactly the content at cut {k}"
        );
    }
    assert!(store.verify().unwrap().is_ok());
    // Restore into the live (tracked) region: every page is in the next cut (the region was
    // overwritten as a whole), and the cut re-arms tracking.
    region.cut().unwrap();
    restore_region(&store, 5, &region).unwrap();
    // SAFETY: no writer is running any more.
    assert!(unsafe { region.as_slice() } == &copies[5][..]);
    assert_eq!(
        region.cut().unwrap().dirty().len() as u64,
        region.page_count()
    );
    assert!(region.cut().unwrap().dirty().is_empty(), "re-armed");
    let _ = std::fs::remove_dir_all(&dir);
}
