//! Re-opening hot pages after a cut (`service/reopen.rs`, `TrackerBuilder::reopen_hot`):
//! the re-opened pages are served like write faults, so every cut stays a consistent cut and
//! no write is lost, and the path is actually taken on defaults.
//!
//! Oracle (independent of the engine): one writer stores stamps 1, 2, 3, ... round-robin into
//! the first word of `HOT` pages; at any instant the hot pages hold exactly `HOT` consecutive
//! stamps, page `i` the one congruent to `i + 1`. The image rebuilt from the epochs (each
//! epoch's view for its dirty pages, the previous image for the rest) must show such a window
//! after every cut: a page missing from a dirty set (a lost write) leaves an old stamp
//! behind (and the image falls behind the last stamp stored before the cut began), and a
//! copy taken after the cut instant a stamp from the future.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use writewatch_core::Tracker;
use writewatch_testkit::watchdog;

const PS: usize = 4096;
const HOT: u64 = 96;
/// Hot pages lie 7 pages apart (separate runs), the rest of the region is cold.
const STRIDE: u64 = 7;
const PAGES: u64 = 1024;

/// Runs `cuts` cuts against the writer; returns the pages re-opened over all cuts.
fn run(reopen: Option<bool>, cuts: usize) -> u64 {
    let mut b = Tracker::builder();
    if let Some(on) = reopen {
        b = b.reopen_hot(on);
    }
    let tracker = b.build().unwrap();
    let region = Arc::new(tracker.map_anonymous(PAGES as usize * PS).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    // The last stamp the writer stored (published after its store).
    let done = Arc::new(AtomicU64::new(0));
    let writer = {
        let (region, stop, done) = (Arc::clone(&region), Arc::clone(&stop), Arc::clone(&done));
        std::thread::spawn(move || {
            let words = region.as_atomic_u64();
            let mut s = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let page = (s % HOT) * STRIDE;
                words[page as usize * PS / 8].store(s + 1, Ordering::Release);
                done.store(s + 1, Ordering::Release);
                s += 1;
                if s % 4096 == 0 {
                    // Short pauses: the service thread gets idle time to re-arm, so pages
                    // turn hot (written again after re-arming).
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            s
        })
    };
    let mut image = vec![0u64; HOT as usize];
    let mut reopened = 0;
    let mut buf = vec![0u8; PS];
    std::thread::sleep(Duration::from_millis(20));
    for c in 0..cuts {
        std::thread::sleep(Duration::from_millis(12));
        // Every stamp up to `before` was stored before the cut began: the cut includes it.
        let before = done.load(Ordering::Acquire);
        let epoch = region.cut().unwrap();
        reopened += tracker.stats().policy.reopened_pages;
        for i in 0..HOT {
            let p = i * STRIDE;
            if epoch.dirty().contains(p) {
                epoch.read_page(p, &mut buf).unwrap();
                image[i as usize] = u64::from_ne_bytes(buf[..8].try_into().unwrap());
            }
        }
        let min = *image.iter().min().unwrap();
        let max = *image.iter().max().unwrap();
        if max < HOT {
            continue; // the writer has not filled the window yet
        }
        assert!(
            max >= before,
            "cut {c}: stamp {before} was stored before the cut, the image stops at {max}: a write was lost"
        );
        assert_eq!(
            max - min,
            HOT - 1,
            "cut {c}: the hot pages do not hold one window of consecutive stamps: {image:?}"
        );
        for (i, &st) in image.iter().enumerate() {
            assert_eq!(
                (st - 1) % HOT,
                i as u64,
                "cut {c}: page {i} holds stamp {st}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > HOT * 10, "the writer made {writes} writes");
    reopened
}

#[test]
fn reopened_hot_pages_keep_every_cut_consistent() {
    let reopened = watchdog(120, "reopen on", || {
        let mut total = 0;
        // Hot pages need background re-arming first; a few rounds make it certain.
        for _ in 0..5 {
            total += run(None, 15);
            if total > 0 {
                break;
            }
        }
        total
    });
    assert!(
        reopened > 0,
        "defaults never re-opened a hot page: the path under test did not run"
    );
}

#[test]
fn reopen_hot_false_is_off_and_consistent() {
    let reopened = watchdog(120, "reopen off", || run(Some(false), 10));
    assert_eq!(reopened, 0);
    let t = Tracker::builder().reopen_hot(false).build().unwrap();
    let r = t.map_anonymous(4 * PS).unwrap();
    r.cut().unwrap();
    assert_eq!(t.stats().policy.reopen.chosen, "forced");
}
