//! The writewatch stress suite (issue #7). One binary, suites run one after another, each
//! under a watchdog, each printing one summary line:
//!
//! `suite=<name> backend=<b> ops=<n> cuts=<n> threads=<n> injected_faults=<n> violations=<n> lost=<n> torn=<n> hangs=<n>`
//!
//! Short mode (default, `make test`) keeps the whole binary well under 90 s; long mode
//! (`WW_STRESS=long`, `make stress`) runs the acceptance volumes. An optional argument
//! selects the suites whose name contains it. See docs/reliability.md.

#[path = "../../../../crates/writewatch-core/tests/common/mod.rs"]
mod common;
mod views;
use common::Rng;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use writewatch::checkpoint::Store;
use writewatch::{
    save_epoch, Backend, CutAndCopyError, CutError, MapError, Region, RegionError, SnapshotError,
    Tracker, Unavailable,
};
use writewatch_stress::{boundary_page_counts, page_hash, run_suite, within, Gate, Mode, Summary};

mod eio;
mod kill;
mod pipeline;
mod poison;

use eio::eio;
use kill::{kill, kill_child};
use pipeline::pipeline;
use poison::poison;

const PS: usize = 4096;
const WPP: usize = PS / 8;
const KILL_CHILD_ENV: &str = "WW_STRESS_KILL_CHILD";

fn main() {
    if let Ok(dir) = std::env::var(KILL_CHILD_ENV) {
        kill_child(&dir);
    }
    // The poison suite makes the service thread panic on purpose: keep its report quiet.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if !msg.contains("injected service-thread panic") {
            default_hook(info);
        }
    }));
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mode = Mode::from_env();
    let t0 = Instant::now();
    eprintln!("writewatch stress suite, mode {}", mode.name());
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let mut all = Vec::new();
    // Watchdog budgets: generous against the expected run time, far below "forever".
    let wd = |short: u64, long: u64| mode.pick(short, long);
    if want("consistency") {
        all.push(run_suite("consistency", "sync", wd(60, 400), move || {
            consistency(mode, false)
        }));
        all.push(run_suite(
            "consistency-tiny-budget",
            "sync",
            wd(60, 300),
            move || consistency(mode, true),
        ));
        all.push(run_suite(
            "consistency-in-thread",
            "sync-in-thread",
            wd(60, 400),
            move || consistency_with(mode, false, true),
        ));
        all.push(run_suite(
            "consistency-in-thread-tiny-budget",
            "sync-in-thread",
            wd(60, 300),
            move || consistency_with(mode, true, true),
        ));
    }
    for b in [Backend::SyncUffd, Backend::AsyncUffd, Backend::Mprotect] {
        let name = format!("dirty-{}", b.name());
        if want(&name) {
            all.push(run_suite(&name, b.name(), wd(60, 300), move || {
                dirty(mode, b)
            }));
        }
    }
    if want("pipeline") {
        all.push(run_suite("pipeline", "sync", wd(60, 400), move || {
            pipeline(mode)
        }));
    }
    if want("kill") {
        all.push(run_suite("kill", "sync", wd(60, 400), move || kill(mode)));
    }
    for b in [Backend::SyncUffd, Backend::AsyncUffd, Backend::Mprotect] {
        let name = format!("eio-{}", b.name());
        if want(&name) {
            all.push(run_suite(&name, b.name(), wd(60, 200), move || {
                eio(mode, b)
            }));
        }
    }
    for in_thread in [false, true] {
        let sfx = if in_thread { "-in-thread" } else { "" };
        let be = if in_thread { "sync-in-thread" } else { "sync" };
        if want(&format!("rollback-madvise{sfx}")) {
            all.push(run_suite(
                &format!("rollback-madvise{sfx}"),
                be,
                wd(60, 300),
                move || views::rollback_madvise(mode, in_thread),
            ));
        }
        if want(&format!("budget-wakeups{sfx}")) {
            all.push(run_suite(
                &format!("budget-wakeups{sfx}"),
                be,
                wd(60, 300),
                move || views::budget_wakeups(mode, in_thread),
            ));
        }
        if want(&format!("rollback-fuzz{sfx}")) {
            all.push(run_suite(
                &format!("rollback-fuzz{sfx}"),
                be,
                wd(60, 300),
                move || views::rollback_fuzz(mode, in_thread),
            ));
        }
    }
    if want("poison") {
        all.push(run_suite("poison", "sync", wd(60, 300), move || {
            poison(mode)
        }));
    }
    let failed: Vec<_> = all.iter().filter(|s| !s.ok()).map(|s| &s.suite).collect();
    eprintln!(
        "stress ({}): {} suites in {:.1} s, failed: {:?}",
        mode.name(),
        all.len(),
        t0.elapsed().as_secs_f64(),
        failed
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

fn tracker(b: Backend) -> Tracker {
    Tracker::builder()
        .backend(b)
        .build()
        .unwrap_or_else(|e| panic!("backend {}: {e}", b.name()))
}

// ------------------------------------------------------------------------------ consistency

/// The consistency oracle of snapshot.rs (`oracle_every_cut`), run to a volume target and
/// counting instead of asserting: 4 writers stamp (thread, seq) into their own word of random
/// pages; every cut's image must equal, for each thread, the replay of a prefix of its
/// writes (claim 1) that never shrinks (claim 2 across cuts); bytes outside the stamp slots
/// must stay zero (a torn or foreign copy would show).
fn consistency(mode: Mode, tiny_budget: bool) -> Summary {
    consistency_with(mode, tiny_budget, false)
}

/// [`consistency`], with faults served in the writers' `SIGBUS` handler if `in_thread`.
fn consistency_with(mode: Mode, tiny_budget: bool, in_thread: bool) -> Summary {
    let threads = 4;
    let (min_cuts, min_writes, cap) = match (mode, tiny_budget) {
        (Mode::Short, false) => (60u64, 200_000u64, Duration::from_secs(15)),
        (Mode::Long, false) => (400, 6_000_000, Duration::from_secs(300)),
        (Mode::Short, true) => (15, 0, Duration::from_secs(8)),
        (Mode::Long, true) => (120, 200_000, Duration::from_secs(120)),
    };
    let mut s = Summary::new(
        match (tiny_budget, in_thread) {
            (true, false) => "consistency-tiny-budget",
            (false, false) => "consistency",
            (true, true) => "consistency-in-thread-tiny-budget",
            (false, true) => "consistency-in-thread",
        },
        if in_thread { "sync-in-thread" } else { "sync" },
    );
    s.threads = threads as u64;
    let mut b = Tracker::builder()
        .backend(Backend::SyncUffd)
        .in_thread_faults(in_thread);
    if tiny_budget {
        b = b.copy_budget(16 * PS);
    }
    let tracker = b.build().expect("sync tracker");
    let len = if tiny_budget { 4 << 20 } else { 32 << 20 };
    let region = Arc::new(tracker.map_anonymous(len).unwrap());
    let t0 = Instant::now();
    let slow = tiny_budget.then_some(Duration::from_micros(30));
    let r = common::consistency_oracle(region, threads, slow, |cuts, writes| {
        (cuts >= min_cuts && writes >= min_writes) || t0.elapsed() > cap
    });
    s.cuts = r.cuts;
    s.violations = r.violations;
    s.torn = r.torn;
    s.lost = r.lost;
    s.ops = r.writes;
    let st = tracker.stats();
    eprintln!(
        "  consistency: faults {} preserved {} deferred {}",
        st.wp_faults, st.preserved, st.deferred
    );
    if s.cuts < min_cuts || s.ops < min_writes {
        eprintln!(
            "  consistency: volume target missed: {} cuts (want {min_cuts}), {} writes (want {min_writes})",
            s.cuts, s.ops
        );
        s.violations += 1;
    }
    s
}

// ------------------------------------------------------------------------------------ dirty

/// The racing dirty-set oracle of the core tests (`common::racing_oracle`) on one backend, in
/// rounds of fresh regions (its write log grows with time).
fn dirty(mode: Mode, b: Backend) -> Summary {
    let mut s = Summary::new(&format!("dirty-{}", b.name()), b.name());
    let t = tracker(b);
    let rounds = mode.pick(3, 48);
    let mut max_threads = 0;
    for round in 0..rounds {
        let threads = [4usize, 1, 2][round % 3];
        max_threads = max_threads.max(threads);
        let len = [16usize << 20, 1 << 20, 64 << 20][round % 3];
        let region = Arc::new(t.map_anonymous(len).unwrap());
        region.cut().unwrap();
        let cuts = 40;
        let (writes, misses, over) =
            common::racing_oracle(Arc::clone(&region), threads, cuts, true);
        s.ops += writes;
        s.cuts += cuts as u64 + 1;
        s.lost += misses;
        // An owned anonymous region is exact on every backend (design.md section 2).
        s.violations += over;
        if writes == 0 {
            s.violations += 1;
        }
    }
    s.threads = max_threads as u64;
    s
}
