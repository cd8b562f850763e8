//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

use writewatch_checkpoint::{SliceSource, Store};

/// splitmix64 (`next`, `below`, `fill`), from `writewatch-testkit`.
pub use writewatch_testkit::SplitMix64 as Rng;

/// Sorted unique page indexes -> coalesced `(first, count)` runs.
pub fn coalesce(pages: &mut Vec<u64>) -> Vec<(u64, u64)> {
    pages.sort_unstable();
    pages.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &p in pages.iter() {
        match runs.last_mut() {
            Some((f, c)) if *f + *c == p => *c += 1,
            _ => runs.push((p, 1)),
        }
    }
    runs
}

/// Index of the first differing page, for readable assertion messages.
pub fn first_diff_page(a: &[u8], b: &[u8], page_size: usize) -> Option<usize> {
    if a.len() != b.len() {
        return Some(usize::MAX);
    }
    a.chunks(page_size)
        .zip(b.chunks(page_size))
        .position(|(x, y)| x != y)
}

/// Applies one epoch of random writes to `region`: random page fills, partial
/// writes, zeroings and a contiguous burst. Returns the dirty pages.
pub fn mutate(rng: &mut Rng, region: &mut [u8], page_size: usize, writes: usize) -> Vec<u64> {
    let pages = (region.len() / page_size) as u64;
    let mut dirty = Vec::new();
    for _ in 0..writes {
        let p = rng.below(pages);
        let page = &mut region[p as usize * page_size..(p as usize + 1) * page_size];
        match rng.below(10) {
            0 | 1 => page.fill(0),
            2..=5 => {
                let off = rng.below(page_size as u64 - 64) as usize;
                rng.fill(&mut page[off..off + 64]);
            }
            _ => rng.fill(page),
        }
        dirty.push(p);
    }
    // A contiguous burst spanning run-size boundaries sometimes.
    if rng.below(2) == 0 {
        let len = 1 + rng.below(64.min(pages));
        let first = rng.below(pages - len + 1);
        for p in first..first + len {
            let page = &mut region[p as usize * page_size..(p as usize + 1) * page_size];
            rng.fill(page);
            dirty.push(p);
        }
    }
    dirty
}

/// Writes epochs `0..epochs` to `store` (the base, then deltas), each `writes(e)` random
/// writes ([`mutate`], seeded with `seed`) to a region of `pages` pages of `page_size` bytes.
/// Returns the region's content after every epoch: the oracle the tests restore against.
pub fn write_epochs(
    store: &mut Store,
    pages: usize,
    page_size: usize,
    epochs: u64,
    seed: u64,
    writes: impl Fn(u64) -> usize,
) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    let mut region = vec![0u8; pages * page_size];
    let mut states = Vec::new();
    for e in 0..epochs {
        let mut dirty = mutate(&mut rng, &mut region, page_size, writes(e));
        let src = SliceSource::new(&region, page_size).unwrap();
        if e == 0 {
            store.write_base(&src).unwrap();
        } else {
            store.write_delta(e, &src, &coalesce(&mut dirty)).unwrap();
        }
        states.push(region.clone());
    }
    states
}

/// A writer child: this test binary re-executed to run test `test` alone with `env` set,
/// its stdout read by a thread that passes on the epoch of every `COMMITTED <epoch>` line.
pub struct CommittingChild {
    child: Child,
    reader: JoinHandle<()>,
    committed: mpsc::Receiver<u64>,
}

impl CommittingChild {
    /// Starts the child (stderr discarded).
    pub fn spawn(test: &str, env: (&str, &std::ffi::OsStr)) -> CommittingChild {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(env.0, env.1)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, committed) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test <name> ... " before the first line without a
                // newline.
                if let Some((_, e)) = line.rsplit_once("COMMITTED ") {
                    let _ = tx.send(e.trim().parse::<u64>().unwrap());
                }
            }
        });
        CommittingChild {
            child,
            reader,
            committed,
        }
    }

    /// SIGKILLs the child, reaps it, and returns the epochs it reported committed, in order.
    pub fn kill(mut self) -> Vec<u64> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.reader.join().unwrap();
        self.committed.try_iter().collect()
    }
}
