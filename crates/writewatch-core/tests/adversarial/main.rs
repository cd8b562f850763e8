//! Adversarial tests of the rollback / dropped-region / bounce-buffer / budget-generation /
//! prepare_overwrite changes. Every check is against an independent oracle (our own copies of
//! the expected bytes), never against the code under test. Every test runs under a watchdog.
#[path = "../common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use writewatch_core::{
    Backend, CutError, Epoch, Invalidation, Region, Snapshot, SnapshotError, Tracker,
    TrackerBuilder, Unavailable,
};

mod adopt;
mod madvise_budget;
mod rollback_overwrite;
mod teardown;

const PS: usize = 4096;
const WPP: usize = PS / 8;

/// A tracker (faults served in the writer's thread if `in_thread`) and an 8-page region whose
/// page `p` holds `base + p` in its first word.
fn filled(in_thread: bool, base: u64) -> (Tracker, Region) {
    let t = Tracker::builder()
        .in_thread_faults(in_thread)
        .build()
        .unwrap();
    let r = t.map_anonymous(8 * PS).unwrap();
    for p in 0..8 {
        touch(&r, p, base + p);
    }
    (t, r)
}

fn word0(buf: &[u8]) -> u64 {
    u64::from_ne_bytes(buf[..8].try_into().unwrap())
}

fn words_of(buf: &[u8]) -> Vec<u64> {
    buf.chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

/// Independent model of the region: one Vec<u64> per page.
type Model = Vec<Vec<u64>>;

/// The model of a fresh region of `pages` pages (all zero).
fn zero_model(pages: usize) -> Model {
    vec![vec![0u64; WPP]; pages]
}

fn live_page(r: &Region, p: usize) -> Vec<u64> {
    r.as_atomic_u64()[p * WPP..(p + 1) * WPP]
        .iter()
        .map(|w| w.load(SeqCst))
        .collect()
}

fn check_live(r: &Region, m: &Model, what: &str) {
    for (p, exp) in m.iter().enumerate() {
        let got = live_page(r, p);
        if &got != exp {
            let w = got.iter().zip(exp).position(|(a, b)| a != b).unwrap();
            panic!(
                "{what}: live page {p} word {w}: got {:#x}, expected {:#x}",
                got[w], exp[w]
            );
        }
    }
}

fn write_word(r: &Region, m: &mut Model, p: usize, w: usize, v: u64) {
    r.as_atomic_u64()[p * WPP + w].store(v, SeqCst);
    m[p][w] = v;
}

#[derive(Clone, Copy, Debug)]
enum Cfg {
    Default,
    InThread,
    Eager0,
    Eager1ms,
    FaultAround,
    MergeGap0,
    InThreadEager0,
    Fixed,
}

const CFGS: [Cfg; 8] = [
    Cfg::Default,
    Cfg::InThread,
    Cfg::Eager0,
    Cfg::Eager1ms,
    Cfg::FaultAround,
    Cfg::MergeGap0,
    Cfg::InThreadEager0,
    Cfg::Fixed,
];

/// The configurations the rollback tests with threads run under (the fuzz runs all of `CFGS`).
const ROLLBACK_CFGS: [Cfg; 5] = [
    Cfg::Default,
    Cfg::InThread,
    Cfg::Eager0,
    Cfg::FaultAround,
    Cfg::InThreadEager0,
];

fn builder(c: Cfg) -> TrackerBuilder {
    let b = Tracker::builder().backend(Backend::SyncUffd);
    match c {
        Cfg::Default => b,
        Cfg::InThread => b.in_thread_faults(true),
        Cfg::Eager0 => b.eager_reprotect(Duration::ZERO),
        Cfg::Eager1ms => b.eager_reprotect(Duration::from_millis(1)),
        Cfg::FaultAround => b.fault_around(16),
        Cfg::MergeGap0 => b.merge_gap_pages(0),
        Cfg::InThreadEager0 => b.in_thread_faults(true).eager_reprotect(Duration::ZERO),
        Cfg::Fixed => b.adaptive(false),
    }
}

/// Reads every dirty page of `e` and compares with `at_cut`.
fn check_epoch(e: &Epoch, at_cut: &Model, what: &str) {
    let mut buf = vec![0u8; PS];
    for p in e.dirty().iter() {
        e.read_page(p, &mut buf)
            .unwrap_or_else(|err| panic!("{what}: epoch {} page {p}: {err}", e.number()));
        let got = words_of(&buf);
        if got != at_cut[p as usize] {
            let w = got
                .iter()
                .zip(&at_cut[p as usize])
                .position(|(a, b)| a != b)
                .unwrap();
            panic!(
                "{what}: epoch {} page {p} word {w}: got {:#x}, expected at cut {:#x}",
                e.number(),
                got[w],
                at_cut[p as usize][w]
            );
        }
    }
}

fn check_snapshot(s: &Snapshot, m: &Model, what: &str) {
    let mut buf = vec![0u8; PS];
    for (p, exp) in m.iter().enumerate() {
        s.read_page(p as u64, &mut buf)
            .unwrap_or_else(|err| panic!("{what}: snapshot page {p}: {err}"));
        let got = words_of(&buf);
        if &got != exp {
            let w = got.iter().zip(exp).position(|(a, b)| a != b).unwrap();
            panic!(
                "{what}: snapshot page {p} word {w}: got {:#x}, expected {:#x}",
                got[w], exp[w]
            );
        }
    }
}

/// Random single-threaded operation sequences on one region (writes, cuts, snapshots,
/// rollbacks to any live snapshot, epoch reads late, drops, prepare_overwrite), checked
/// against a model after every step: live content, every epoch's content at its cut, every
/// snapshot's content, and dirty sets (every page that changed between cuts is reported).
fn rollback_fuzz(cfg: Cfg, seed: u64, steps: usize) {
    const PAGES: usize = 24;
    let t = builder(cfg).build().unwrap();
    let r = t.map_anonymous(PAGES * PS).unwrap();
    let mut rng = Rng(seed);
    let mut m = zero_model(PAGES);
    let mut snaps: Vec<(Snapshot, Model)> = Vec::new();
    let mut epochs: Vec<(Epoch, Model)> = Vec::new();
    let mut last_cut: Model = m.clone();
    // epoch 0 includes nothing
    drop(r.cut().unwrap());
    let mut overwrite_mode = false;
    for step in 0..steps {
        let what = format!("{cfg:?} seed {seed:#x} step {step}");
        match rng.below(100) {
            0..=44 => {
                // writes: a few pages, a few words each
                for _ in 0..1 + rng.below(4) {
                    let p = rng.below(PAGES as u64) as usize;
                    for _ in 0..1 + rng.below(3) {
                        let w = rng.below(WPP as u64) as usize;
                        let v = if rng.below(4) == 0 { 0 } else { rng.next() };
                        write_word(&r, &mut m, p, w, v);
                    }
                }
            }
            45..=56 => {
                let e = r.cut().unwrap();
                for p in 0..PAGES {
                    if m[p] != last_cut[p] {
                        assert!(
                            e.dirty().contains(p as u64),
                            "{what}: page {p} changed since the previous cut but epoch {} does not report it (dirty {:?})",
                            e.number(),
                            e.dirty().iter().collect::<Vec<_>>()
                        );
                    }
                }
                last_cut = m.clone();
                overwrite_mode = false;
                if epochs.len() < 3 && rng.below(3) != 0 {
                    epochs.push((e, m.clone()));
                }
            }
            57..=64 => {
                if snaps.len() < 3 {
                    let s = r.snapshot().unwrap();
                    snaps.push((s, m.clone()));
                }
            }
            65..=82 => {
                if !snaps.is_empty() {
                    let i = rng.below(snaps.len() as u64) as usize;
                    let (s, sm) = &snaps[i];
                    r.rollback(s)
                        .unwrap_or_else(|e| panic!("{what}: rollback to snapshot {i}: {e}"));
                    m = sm.clone();
                    check_live(&r, &m, &format!("{what}: after rollback to snapshot {i}"));
                }
            }
            83..=88 => {
                if !epochs.is_empty() {
                    let i = rng.below(epochs.len() as u64) as usize;
                    let (e, em) = epochs.remove(i);
                    if rng.below(2) == 0 {
                        check_epoch(&e, &em, &what);
                    }
                }
            }
            89..=92 => {
                if !snaps.is_empty() {
                    let i = rng.below(snaps.len() as u64) as usize;
                    let (s, sm) = snaps.remove(i);
                    check_snapshot(&s, &sm, &what);
                }
            }
            93..=95 => {
                r.prepare_overwrite()
                    .unwrap_or_else(|e| panic!("{what}: prepare_overwrite: {e}"));
                overwrite_mode = true;
                // scribble over many pages via atomics
                for p in 0..PAGES {
                    if rng.below(2) == 0 {
                        let v = rng.next();
                        write_word(&r, &mut m, p, (v % WPP as u64) as usize, v);
                    }
                }
            }
            _ => {
                // check everything we hold now
                for (i, (s, sm)) in snaps.iter().enumerate() {
                    check_snapshot(s, sm, &format!("{what}: snapshot {i}"));
                }
            }
        }
        check_live(&r, &m, &what);
    }
    let _ = overwrite_mode;
    for (i, (s, sm)) in snaps.iter().enumerate() {
        check_snapshot(s, sm, &format!("{cfg:?} seed {seed:#x} end: snapshot {i}"));
    }
    for (e, em) in epochs.drain(..) {
        check_epoch(&e, &em, &format!("{cfg:?} seed {seed:#x} end"));
    }
}

#[test]
fn fuzz_rollback_snapshots_epochs_model() {
    for cfg in CFGS {
        for seed in 1..=6u64 {
            watchdog(120, &format!("rollback fuzz {cfg:?} {seed}"), move || {
                rollback_fuzz(cfg, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, 1500)
            });
        }
    }
}
