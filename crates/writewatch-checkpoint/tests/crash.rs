//! Crash safety: a child process (this test binary re-executed with an
//! environment variable) writes checkpoints, compacts and applies retention in
//! a loop and is SIGKILLed at 100 random instants. After each kill the store
//! opens, the newest committed epoch restores bit-exact, and no temporary file
//! survives the open.

mod common;

use std::time::{Duration, Instant};

use common::{coalesce, CommittingChild, Rng};
use writewatch_checkpoint::{SliceSource, Store};

const PS: usize = 4096;
const PAGES: usize = 64;
const CHILD_ENV: &str = "WW_CRASH_CHILD_DIR";

/// Deterministic content per epoch: `state(e) = apply(writes(e), state(e-1))`.
struct Model {
    epoch: Option<u64>,
    state: Vec<u8>,
    prev: Vec<u8>,
    dirty: Vec<u64>,
}

impl Model {
    fn new() -> Model {
        Model {
            epoch: None,
            state: vec![0; PS * PAGES],
            prev: vec![0; PS * PAGES],
            dirty: Vec::new(),
        }
    }

    /// Advances to the next epoch; returns it.
    fn step(&mut self) -> u64 {
        let e = self.epoch.map_or(0, |e| e + 1);
        self.prev.copy_from_slice(&self.state);
        let mut rng = Rng(0xC0FFEE ^ e.wrapping_mul(0x1000_0001));
        self.dirty.clear();
        let n = if e == 0 {
            PAGES as u64 / 2
        } else {
            1 + rng.below(8)
        };
        for _ in 0..n {
            let p = rng.below(PAGES as u64) as usize;
            let page = &mut self.state[p * PS..(p + 1) * PS];
            if rng.below(4) == 0 {
                page.fill(0);
            } else {
                rng.fill(page);
            }
            self.dirty.push(p as u64);
        }
        self.epoch = Some(e);
        e
    }

    fn advance_to(&mut self, target: u64) {
        while self.epoch.is_none_or(|e| e < target) {
            self.step();
        }
    }
}

/// The child: runs only when re-executed by `crash_safety` (a no-op in a
/// normal test run). Loops forever writing checkpoints until killed.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut store = Store::open_or_create(&dir).expect("child open");
    let mut model = Model::new();
    if let Some(head) = store.head() {
        model.advance_to(head.epoch);
    }
    loop {
        let e = model.step();
        let src = SliceSource::new(&model.state, PS).unwrap();
        if e % 7 == 0 || store.head().is_none() {
            store.write_base_at(e, &src).expect("child base");
        } else {
            let runs = coalesce(&mut model.dirty.clone());
            store.write_delta(e, &src, &runs).expect("child delta");
        }
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "COMMITTED {e}").unwrap();
        out.flush().unwrap();
        drop(out);
        if e % 5 == 3 {
            store.compact().expect("child compact");
        }
        if e % 11 == 4 {
            store.retain_bases(2).expect("child retain");
        }
    }
}

#[test]
fn crash_safety() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut rng = Rng(1234);
    let mut model = Model::new();
    let mut last_reported: Option<u64> = None;
    let mut last_head: Option<u64> = None;
    let start = Instant::now();
    let mut kills_with_progress = 0;
    for iter in 0..100 {
        let child = CommittingChild::spawn("crash_child", (CHILD_ENV, store_dir.as_os_str()));
        // Random instant: from during start-up to well into the write loop.
        std::thread::sleep(Duration::from_micros(rng.below(60_000)));
        let before = last_reported;
        for e in child.kill() {
            assert!(last_reported.is_none_or(|l| e > l), "epochs must increase");
            last_reported = Some(e);
        }
        if last_reported != before {
            kills_with_progress += 1;
        }

        // The store must open and the newest committed epoch restore exactly.
        if !store_dir.join("MANIFEST").exists() {
            assert!(
                last_reported.is_none(),
                "iteration {iter}: manifest vanished"
            );
            continue;
        }
        let store =
            Store::open(&store_dir).unwrap_or_else(|e| panic!("iteration {iter}: open: {e}"));
        let leftovers: Vec<String> = std::fs::read_dir(&store_dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "iteration {iter}: {leftovers:?}");
        let Some(head) = store.head() else {
            assert!(last_reported.is_none());
            continue;
        };
        // Everything reported (or seen committed before) must still be
        // there; the child may have committed one more epoch without
        // reporting it.
        let floor = last_reported.max(last_head);
        if let Some(f) = floor {
            assert!(
                head.epoch == f || head.epoch == f + 1,
                "iteration {iter}: head {} vs last known committed {f}",
                head.epoch
            );
        }
        last_head = Some(head.epoch);
        model.advance_to(head.epoch);
        let got = store
            .restore(head.epoch)
            .unwrap_or_else(|e| panic!("iteration {iter}: restore: {e}"));
        assert!(
            got.as_slice() == &model.state[..],
            "iteration {iter}: epoch {} differs at page {:?}",
            head.epoch,
            common::first_diff_page(got.as_slice(), &model.state, PS)
        );
        if let Some(l) = last_reported.filter(|&l| l + 1 == head.epoch) {
            // The previous epoch too, if compaction has not merged it away.
            if store.segments().iter().any(|s| s.epoch == l) {
                let got = store.restore(l).unwrap();
                assert!(
                    got.as_slice() == &model.prev[..],
                    "iteration {iter}: epoch {l}"
                );
            }
        }
        let report = store.verify().unwrap();
        assert!(report.is_ok(), "iteration {iter}: {:?}", report.problems);
    }
    eprintln!(
        "crash_safety: 100 kills, {kills_with_progress} with new commits, last epoch {last_reported:?}, {:?}",
        start.elapsed()
    );
    assert!(
        kills_with_progress > 10,
        "the child rarely got to commit: test is not exercising much"
    );
}
