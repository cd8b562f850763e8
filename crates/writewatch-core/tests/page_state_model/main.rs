//! An exhaustive explicit-state model check of the per-page view protocol of design.md
//! section 5 (PENDING / COPYING / PRESERVING / PRESERVED / RELEASED / LOST), written against
//! the steps of `view.rs` (`View::read`, `View::preserve`, `View::mark_lost`) and the
//! service thread's fault path (preserve, then un-protect and wake).
//!
//! The real `View` is private, so the protocol is re-stated here as a transition system over
//! one page with: a saver (reader) thread, the service thread, up to two writer threads, an
//! optional `madvise(DONTNEED)` (REMOVE event read by the service, kernel zap racing with
//! everything), and a copy budget of 0 or 1 page (deferral / back-pressure). Every
//! interleaving of atomic steps is explored (breadth-first, visited set). Checked in every
//! reachable state:
//!
//! - I2: while the page is PENDING or COPYING (and the kernel has not zapped it), it is
//!   write-protected and holds its content at T;
//! - a read that succeeds returns the content at T (never a write after T, never the zero
//!   page of a zap);
//! - no deadlock: every non-final state has an enabled step.
//!
//! Every configuration is explored twice: faults served by the service thread, and served by
//! each faulting writer's own `SIGBUS` handler (`in_thread_faults`), where two handlers may
//! race to preserve the page.
//!
//! Mutants of the protocol (un-protect while COPYING, un-protect before the copy, a saver
//! that ignores the event sequence counter, a saver that skips the post-copy verification, a
//! handler that does not wait for another handler's PRESERVING copy, a handler that ignores
//! the event sequence counter around its copy) must each be caught:
//! that shows the checker can see the races it rules out.
//!
//! Two more models share a small breadth-first explorer (`bfs`, which prints the labelled
//! interleaving of a counter-example):
//!
//! - Model A (`budget_wakeup`): the copy-budget back-pressure wake-up. The service thread
//!   (`g = gen`, `try_take`, on failure `waiting = true`, `deferred_gen = g`,
//!   `retry_deferred`, sleep in `poll` until kicked) against a freer that gives budget back or
//!   makes the deferred page need no copy, then bumps `gen`, then `waiting.swap(false)` =>
//!   kick. Checked: the service thread never sleeps for good while its fault could proceed.
//!   Mutants caught: the old protocol (`deferred_used` compared with `used`, releases of a
//!   PENDING page wake nobody), a freer that swaps `waiting` before its effect and the bump,
//!   a service thread that loads `gen` after the failed `try_take`.
//! - Model B (`rollback`): one page of a snapshot rolled back twice, `madvise(DONTNEED)`
//!   racing the snapshot command and/or in round 2 (REMOVE read with `read_seq` odd,
//!   `on_remove`, kernel zap before madvise returns), an optional cut and an optional stray
//!   (non-quiesced) writer. Checked: a successful rollback leaves the page's content at the
//!   snapshot (or zero, when the madvise raced the snapshot), never a later write, the same
//!   every time; rollback fails with Discarded only when a madvise raced the snapshot.
//!   Mutants caught: no wait for an even `read_seq`, no suspect-run scan in `write_back`, no
//!   suspect re-check in the snapshot, `mark_lost` leaving CLEAN pages CLEAN, rearm marking
//!   CLEAN before re-protecting. Known gap (asserted as found): a cut that runs after a zap
//!   that landed on a PENDING page (REMOVE processed before the snapshot, zap after it) and a
//!   write that followed re-protects the page, so neither the LOST check nor the scan of
//!   `write_back` sees it and rollback returns Ok with the write. The model's `fix` (check and
//!   re-protect atomically, mark the views' un-protected pages lost, fail on LOST after the
//!   scan) passes every cut timing.
//!
//! - Model C (`rearm`, issue 14): eager re-arming composed with fault service on the service
//!   thread (with fault-around) or in `SIGBUS` handlers, and the cut's per-run or whole-chunk
//!   plan; two pages, two writers, arming steps and a cut at any moment. Checked: a store that
//!   lands finds its page's dirty bit set (or harvested by the running cut). Mutants caught:
//!   arming without `synchronize`, arming that marks after protecting, fault-around that
//!   clears only the faulting page's armed bit, a whole-chunk span one page short.
//!
//! Pure computation: runs under Miri (`make miri`).

mod view_protocol;

use std::collections::VecDeque;

use view_protocol::{configs, explore, Mutant};

#[test]
fn protocol_holds_in_every_interleaving() {
    let mut total = 0;
    for c in configs(None) {
        let (n, bad) = explore(&c);
        total += n;
        assert!(bad.is_none(), "{c:?}: {}", bad.unwrap());
    }
    println!("page-state model: {total} states explored, 0 violations");
    assert!(
        total > 1000,
        "the model explores a non-trivial space: {total}"
    );
}

#[test]
fn mutants_are_caught() {
    for m in [
        Mutant::UnprotectWhileCopying,
        Mutant::UnprotectBeforeCopy,
        Mutant::NoSeqWait,
        Mutant::NoVerify,
        Mutant::NoWaitPreserving,
        Mutant::NoSeqCheckInHandler,
    ] {
        let caught = configs(Some(m)).iter().find_map(|c| explore(c).1);
        assert!(caught.is_some(), "mutant {m:?} not caught by the model");
        println!("mutant {m:?}: {}", caught.unwrap());
    }
}

// ------------------------------------------------------------------ shared explorer

/// Breadth-first exploration of every interleaving of `succ` from `init` (each step labelled).
/// Returns the number of states and the first violation: a state `check` rejects, or a
/// non-final state without a step (`stuck` names it). The violation carries the labelled
/// path to it, so a counter-example reads as an interleaving.
fn bfs<S: Copy + Eq + std::hash::Hash + std::fmt::Debug>(
    init: S,
    succ: impl Fn(&S) -> Vec<(&'static str, S)>,
    check: impl Fn(&S) -> Option<String>,
    stuck: impl Fn(&S) -> Option<String>,
) -> (usize, Option<String>) {
    let mut parent: std::collections::HashMap<S, Option<(S, &'static str)>> =
        std::collections::HashMap::new();
    let mut q = VecDeque::new();
    parent.insert(init, None);
    q.push_back(init);
    let trace = |parent: &std::collections::HashMap<S, Option<(S, &'static str)>>, mut s: S| {
        let mut steps = Vec::new();
        while let Some(Some((p, label))) = parent.get(&s) {
            steps.push(*label);
            s = *p;
        }
        steps.reverse();
        steps.join(" -> ")
    };
    while let Some(s) = q.pop_front() {
        let next = succ(&s);
        let why = check(&s).or_else(|| if next.is_empty() { stuck(&s) } else { None });
        if let Some(why) = why {
            return (
                parent.len(),
                Some(format!(
                    "{why}\n  path: {}\n  state: {s:?}",
                    trace(&parent, s)
                )),
            );
        }
        for (label, n) in next {
            if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(n) {
                e.insert(Some((s, label)));
                q.push_back(n);
            }
        }
    }
    (parent.len(), None)
}

// ------------------------------------------------------------------ model A: budget wake-up

/// Model A: the copy-budget back-pressure wake-up (`Budget::try_take` / `give` / `freed`,
/// `Service::service_pending`'s deferral with `deferred_gen`, `retry_deferred`, `wait`).
mod budget_wakeup;

#[test]
fn budget_wakeup_holds_in_every_interleaving() {
    let mut total = 0;
    for plan in budget_wakeup::plans() {
        let (n, bad) = budget_wakeup::explore(&plan, None);
        assert!(bad.is_none(), "{plan:?}: {}", bad.unwrap());
        println!("budget wake-up model, freer {plan:?}: {n} states, 0 violations");
        total += n;
    }
    println!("budget wake-up model: {total} states explored");
    assert!(
        total > 100,
        "the model explores a non-trivial space: {total}"
    );
}

#[test]
fn budget_wakeup_mutants_are_caught() {
    use budget_wakeup::Mutant::*;
    for m in [Old, WakeBeforeBump, LateGen, NoRetryBeforeBlock] {
        let caught = budget_wakeup::plans()
            .iter()
            .find_map(|p| budget_wakeup::explore(p, Some(m)).1.map(|b| (p.clone(), b)));
        let (plan, why) = caught.unwrap_or_else(|| panic!("mutant {m:?} not caught by the model"));
        println!("budget mutant {m:?} (freer {plan:?}): {why}");
    }
}

// ------------------------------------------------------------------ model B: rollback

/// Model B: a retain-mode view (snapshot) of one page, rolled back twice, with `madvise`
/// racing the snapshot command and the second round (`Service::snapshot`, `read_batch` /
/// `on_remove`, `View::mark_lost` / `write_back` / `mark_clean`, `Service::rearm`, and the
/// suspect-run re-check of `Service::cut`).
mod rollback;

#[test]
fn rollback_holds_in_every_interleaving() {
    use rollback::Cut::*;
    let cuts = [No, BeforeSnapshot, AfterRollback];
    let mut total = 0;
    for c in rollback::configs(&cuts, false, None) {
        let (n, bad) = rollback::explore(&c);
        assert!(bad.is_none(), "{c:?}: {}", bad.unwrap());
        total += n;
    }
    println!("rollback model ({cuts:?}): {total} states explored, 0 violations");
}

#[test]
fn rollback_mutants_are_caught() {
    use rollback::Cut::*;
    use rollback::Mutant::*;
    for m in [
        NoSeqWait,
        NoScan,
        NoSnapshotRecheck,
        CleanNotRequeued,
        CleanBeforeProtect,
    ] {
        let caught = rollback::configs(&[No, BeforeSnapshot, AfterRollback], false, Some(m))
            .into_iter()
            .find_map(|c| rollback::explore(&c).1.map(|b| (c, b)));
        let (c, why) = caught.unwrap_or_else(|| panic!("mutant {m:?} not caught by the model"));
        println!("rollback mutant {m:?} ({c:?}): {why}");
    }
}

#[test]
fn rollback_cut_between_zap_and_rollback() {
    use rollback::Cut::*;
    let found = rollback::configs(&[Any], false, None)
        .into_iter()
        .find_map(|c| rollback::explore(&c).1.map(|b| (c, b)));
    // Known gap of the current protocol (see the header): a cut between the zap and the
    // rollback hides the zap. Kept as an assertion so a fix shows up here.
    let (c, why) = found.expect("the current protocol misses a zap hidden by a later cut");
    println!("current protocol, cut at any time ({c:?}): {why}");
    let mut total = 0;
    for c in rollback::configs(&[No, BeforeSnapshot, AfterRollback, Any], true, None) {
        let (n, bad) = rollback::explore(&c);
        assert!(bad.is_none(), "fixed re-check {c:?}: {}", bad.unwrap());
        total += n;
    }
    println!(
        "rollback model with the re-check fix, every cut timing: {total} states, 0 violations"
    );
}

// ------------------------------------------------------------------ model C: re-arming

/// Model C: eager re-arming composed with fault service on the service thread (with
/// fault-around) and in `SIGBUS` handlers, and the adaptive whole-chunk re-protection plan
/// (`armed.rs`, `service/eager.rs`, `inthread.rs`, `service/policy.rs`).
mod rearm;

#[test]
fn rearm_holds_in_every_interleaving() {
    let mut total = 0;
    for (mode, plan) in rearm::configs() {
        let (n, bad) = rearm::explore(mode, plan, None);
        assert!(bad.is_none(), "{mode:?} {plan:?}: {}", bad.unwrap());
        println!("re-arm model {mode:?} {plan:?}: {n} states, 0 violations");
        total += n;
    }
    assert!(
        total > 1000,
        "the model explores a non-trivial space: {total}"
    );
}

#[test]
fn rearm_mutants_are_caught() {
    use rearm::Mutant::*;
    for m in [NoSynchronize, ArmAfterProtect, AroundKeepsArmed, SpanShort] {
        let caught = rearm::configs().into_iter().find_map(|(mode, plan)| {
            rearm::explore(mode, plan, Some(m))
                .1
                .map(|b| (mode, plan, b))
        });
        let (mode, plan, why) =
            caught.unwrap_or_else(|| panic!("re-arm mutant {m:?} not caught by the model"));
        println!("re-arm mutant {m:?} ({mode:?} {plan:?}): {why}");
    }
}
