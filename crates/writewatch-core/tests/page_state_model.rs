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
//! Pure computation: runs under Miri (`make miri`).

use std::collections::{HashSet, VecDeque};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum St {
    Pending,
    Copying,
    Preserving,
    Preserved,
    Released,
    Lost,
}

/// Content values: 0 = content at T, 1..=2 = written by writer k, 9 = zero page after a zap.
const AT_T: u8 = 0;
const ZAPPED: u8 = 9;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum W {
    /// About to write.
    Ready,
    /// Faulted: waiting in the kernel for the service thread.
    Blocked,
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Svc {
    Idle,
    /// Servicing a fault: load state / take budget / CAS PENDING->PRESERVING.
    V0,
    /// Copying the live page into `copy_buf`.
    V1,
    /// Verify + publish the copy (PRESERVED) or LOST.
    V2,
    /// UFFDIO_WRITEPROTECT (un-protect) + wake.
    V3,
    /// Handling a REMOVE event batch: mark_lost, then the batch is done.
    Remove,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum R {
    /// Load the state and act on it.
    R0,
    /// Load the event sequence counter (s1).
    R1,
    /// Copy the live page.
    R2,
    /// Load s2; decide whether to wait for the event batch.
    R3,
    /// Wait for an even sequence counter (batch processed).
    R4,
    /// Verify protection (suspect range) and CAS COPYING -> after-read.
    R5,
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Zap {
    /// No madvise in this run.
    None,
    /// The madvise caller waits for its REMOVE event to be read.
    Waiting,
    /// Read by the service thread: the kernel may zap at any moment.
    Armed,
    Zapped,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct S {
    st: St,
    protected: bool,
    live: u8,
    copy: Option<u8>,
    copy_buf: u8,
    budget: u8,
    svc: Svc,
    serving: u8,
    /// In-thread mode: each writer's own SIGBUS handler (the service thread then only
    /// handles REMOVE events).
    h: [Svc; 2],
    /// Each handler's event sequence counter read before its copy.
    hs1: [u8; 2],
    w: [W; 2],
    r: R,
    reads_left: u8,
    r_buf: u8,
    s1: u8,
    seq: u8,
    suspect: bool,
    zap: Zap,
    bad: Option<&'static str>,
}

#[derive(Clone, Copy, Debug)]
struct Cfg {
    writers: usize,
    retain: bool,
    budget: u8,
    madvise: bool,
    /// The view was created after a REMOVE whose zap has not landed yet (suspect range).
    late_zap: bool,
    /// Faults served by the faulting writers themselves (`in_thread_faults`): two
    /// preservers may race on the page.
    in_thread: bool,
    mutant: Option<Mutant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutant {
    /// The service thread does not wait for a COPYING saver before un-protecting.
    UnprotectWhileCopying,
    /// The service thread un-protects, then copies.
    UnprotectBeforeCopy,
    /// The saver ignores the event sequence counter.
    NoSeqWait,
    /// The saver does not verify protection after copying a suspect page.
    NoVerify,
    /// In-thread mode: a handler that finds the page PRESERVING (another writer's handler
    /// is copying it) un-protects at once instead of waiting.
    NoWaitPreserving,
    /// In-thread mode: a handler ignores the event sequence counter around its copy (a REMOVE
    /// read but not yet processed, whose zap races with the copy, goes unnoticed).
    NoSeqCheckInHandler,
}

fn init(c: &Cfg) -> S {
    S {
        st: St::Pending,
        protected: true,
        live: AT_T,
        copy: None,
        copy_buf: 0,
        budget: c.budget,
        svc: Svc::Idle,
        serving: 0,
        h: [Svc::Idle; 2],
        hs1: [0; 2],
        w: [W::Ready, if c.writers > 1 { W::Ready } else { W::Done }],
        r: R::R0,
        reads_left: if c.retain { 2 } else { 1 },
        r_buf: 0,
        s1: 0,
        seq: if c.late_zap { 2 } else { 0 },
        suspect: c.late_zap,
        zap: if c.late_zap {
            Zap::Armed
        } else if c.madvise {
            Zap::Waiting
        } else {
            Zap::None
        },
        bad: None,
    }
}

fn successors(c: &Cfg, s: &S) -> Vec<S> {
    let mut out = Vec::new();
    let m = c.mutant;
    // Writers.
    for k in 0..2 {
        if s.w[k] == W::Ready {
            let mut n = *s;
            if s.protected {
                n.w[k] = W::Blocked;
            } else {
                n.live = k as u8 + 1;
                n.w[k] = W::Done;
            }
            out.push(n);
        }
    }
    // Kernel zap (after the REMOVE event was read): content zero, protection dropped.
    if s.zap == Zap::Armed {
        let mut n = *s;
        n.live = ZAPPED;
        n.protected = false;
        n.zap = Zap::Zapped;
        out.push(n);
    }
    // Service thread.
    match s.svc {
        Svc::Idle => {
            if s.zap == Zap::Waiting {
                // Reads the REMOVE event: the batch begins (odd counter) and the madvise
                // caller is released (the zap may now land before the batch is processed).
                let mut n = *s;
                n.seq += 1;
                n.zap = Zap::Armed;
                n.svc = Svc::Remove;
                out.push(n);
            }
            for k in 0..2 {
                if s.w[k] == W::Blocked && !c.in_thread {
                    let mut n = *s;
                    n.svc = Svc::V0;
                    n.serving = k as u8;
                    out.push(n);
                }
            }
        }
        Svc::Remove => {
            // Processing the batch: the range becomes suspect, the view's page LOST.
            let mut n = *s;
            n.suspect = true;
            if matches!(s.st, St::Pending | St::Copying) {
                n.st = St::Lost;
            }
            n.seq += 1; // batch processed (even)
            n.svc = Svc::Idle;
            out.push(n);
        }
        v => out.extend(fault_step(c, s, v, None)),
    }
    // In-thread mode: each blocked writer runs its own handler.
    if c.in_thread {
        for k in 0..2 {
            match s.h[k] {
                Svc::Idle => {
                    if s.w[k] == W::Blocked {
                        let mut n = *s;
                        n.h[k] = Svc::V0;
                        out.push(n);
                    }
                }
                v => out.extend(fault_step(c, s, v, Some(k))),
            }
        }
    }
    // Saver.
    let after_read = if c.retain { St::Pending } else { St::Released };
    let finish = |n: &mut S, val: Option<u8>| {
        if let Some(v) = val {
            if v != AT_T {
                n.bad = Some("a read returned content other than the content at T");
            }
        }
        n.reads_left -= 1;
        n.r = if n.reads_left == 0 { R::Done } else { R::R0 };
    };
    match s.r {
        R::R0 => match s.st {
            St::Pending => {
                let mut n = *s;
                n.st = St::Copying;
                n.r = R::R1;
                out.push(n);
            }
            St::Preserved => {
                let mut n = *s;
                let v = s.copy.expect("PRESERVED has a copy");
                if !c.retain {
                    n.copy = None;
                    n.st = St::Released;
                    n.budget += 1;
                }
                finish(&mut n, Some(v));
                out.push(n);
            }
            St::Lost | St::Released => {
                let mut n = *s;
                finish(&mut n, None);
                out.push(n);
            }
            St::Preserving | St::Copying => {} // brief: wait for the other side
        },
        R::R1 => {
            let mut n = *s;
            n.s1 = s.seq;
            n.r = R::R2;
            out.push(n);
        }
        R::R2 => {
            let mut n = *s;
            n.r_buf = s.live;
            n.r = R::R3;
            out.push(n);
        }
        R::R3 => {
            let mut n = *s;
            let s2 = s.seq;
            n.r = if m != Some(Mutant::NoSeqWait) && (s2 != s.s1 || s.s1 % 2 == 1) {
                R::R4
            } else {
                R::R5
            };
            out.push(n);
        }
        R::R4 => {
            if s.seq % 2 == 0 {
                let mut n = *s;
                n.r = R::R5;
                out.push(n);
            }
        }
        R::R5 => {
            let mut n = *s;
            let ok = !s.suspect || s.protected || m == Some(Mutant::NoVerify);
            if s.st == St::Copying && ok {
                n.st = after_read;
                finish(&mut n, Some(s.r_buf));
            } else {
                n.st = St::Lost;
                finish(&mut n, None);
            }
            out.push(n);
        }
        R::Done => {}
    }
    out
}

/// One step of the fault path (preserve, then un-protect) of the service thread
/// (`handler == None`) or of writer `k`'s own handler (`Some(k)`), from state `v`.
fn fault_step(c: &Cfg, s: &S, v: Svc, handler: Option<usize>) -> Vec<S> {
    let m = c.mutant;
    let mut out = Vec::new();
    let set = |n: &mut S, x: Svc| match handler {
        None => n.svc = x,
        Some(k) => n.h[k] = x,
    };
    match v {
        Svc::V0 => match s.st {
            St::Pending => {
                let mut n = *s;
                if s.budget == 0 {
                    // Deferred: the writer stays blocked until budget is given back.
                    set(&mut n, Svc::Idle);
                    // It is retried when budget comes back (a reader consumed a page
                    // or the view was dropped): the Idle arm picks blocked writers again.
                } else {
                    n.budget -= 1;
                    n.st = St::Preserving;
                    set(
                        &mut n,
                        if m == Some(Mutant::UnprotectBeforeCopy) {
                            Svc::V3
                        } else {
                            Svc::V1
                        },
                    );
                }
                out.push(n);
            }
            St::Copying if m != Some(Mutant::UnprotectWhileCopying) => {
                // Wait for the saver: no step.
            }
            // Another handler is copying the page (in-thread mode only): wait for it.
            St::Preserving if handler.is_some() && m != Some(Mutant::NoWaitPreserving) => {}
            _ => {
                let mut n = *s;
                set(&mut n, Svc::V3);
                out.push(n);
            }
        },
        Svc::V1 => {
            let mut n = *s;
            if let Some(k) = handler {
                n.hs1[k] = s.seq;
            }
            n.copy_buf = s.live;
            set(&mut n, Svc::V2);
            out.push(n);
        }
        Svc::V2 => {
            let mut n = *s;
            if let Some(k) = handler {
                if m != Some(Mutant::NoSeqCheckInHandler)
                    && (s.hs1[k] % 2 == 1 || s.seq != s.hs1[k])
                {
                    // An event batch overlapped the copy (a zap may have raced with it): undo,
                    // leave the handler, retry later.
                    n.budget += 1;
                    n.st = St::Pending;
                    set(&mut n, Svc::Idle);
                    out.push(n);
                    return out;
                }
            }
            let ok = !s.suspect || s.protected || m == Some(Mutant::UnprotectBeforeCopy);
            if ok {
                n.copy = Some(s.copy_buf);
                n.st = St::Preserved;
            } else {
                n.budget += 1;
                n.st = St::Lost;
            }
            set(
                &mut n,
                if m == Some(Mutant::UnprotectBeforeCopy) {
                    Svc::Idle
                } else {
                    Svc::V3
                },
            );
            out.push(n);
        }
        Svc::V3 => {
            let mut n = *s;
            n.protected = false;
            match handler {
                // The service thread wakes every waiter on the page: they retry their write.
                None => {
                    for k in 0..2 {
                        if n.w[k] == W::Blocked {
                            n.w[k] = W::Ready;
                        }
                    }
                }
                // A handler returns to its own writer, which retries its write; another
                // writer's handler goes on by itself.
                Some(k) => n.w[k] = W::Ready,
            }
            set(
                &mut n,
                if m == Some(Mutant::UnprotectBeforeCopy) && s.st == St::Preserving {
                    Svc::V1
                } else {
                    Svc::Idle
                },
            );
            out.push(n);
        }
        Svc::Idle | Svc::Remove => {}
    }
    out
}

fn check_state(s: &S) -> Option<&'static str> {
    if let Some(b) = s.bad {
        return Some(b);
    }
    if matches!(s.st, St::Pending | St::Copying)
        && s.zap != Zap::Zapped
        && (!s.protected || s.live != AT_T)
    {
        return Some("I2: a PENDING/COPYING page is un-protected or changed");
    }
    None
}

fn is_final(s: &S) -> bool {
    s.r == R::Done
        && s.w.iter().all(|w| *w == W::Done)
        && s.svc == Svc::Idle
        && s.h == [Svc::Idle; 2]
        && !matches!(s.zap, Zap::Waiting | Zap::Armed)
}

/// Explores every interleaving; returns (states, first violation).
fn explore(c: &Cfg) -> (usize, Option<String>) {
    let s0 = init(c);
    let mut seen = HashSet::new();
    let mut q = VecDeque::new();
    seen.insert(s0);
    q.push_back(s0);
    while let Some(s) = q.pop_front() {
        if let Some(why) = check_state(&s) {
            return (seen.len(), Some(format!("{why}: {s:?}")));
        }
        let next = successors(c, &s);
        if next.is_empty() && !is_final(&s) {
            // A deferred writer with budget 0 and a reader that already finished can only be
            // released by dropping the view (which returns budget): model that drop.
            if s.r == R::Done && s.budget == 0 && s.w.contains(&W::Blocked) {
                let mut n = s;
                n.budget = 1;
                n.st = St::Released;
                if seen.insert(n) {
                    q.push_back(n);
                }
                continue;
            }
            return (seen.len(), Some(format!("deadlock: {s:?}")));
        }
        for n in next {
            if seen.insert(n) {
                q.push_back(n);
            }
        }
    }
    (seen.len(), None)
}

fn configs(mutant: Option<Mutant>) -> Vec<Cfg> {
    let mut v = Vec::new();
    for in_thread in [false, true] {
        for writers in [1, 2] {
            for retain in [false, true] {
                for budget in [0, 1] {
                    for (madvise, late_zap) in [(false, false), (true, false), (false, true)] {
                        v.push(Cfg {
                            writers,
                            retain,
                            budget,
                            madvise,
                            late_zap,
                            in_thread,
                            mutant,
                        });
                    }
                }
            }
        }
    }
    v
}

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
mod budget_wakeup {
    use super::bfs;

    /// Budget limit, in pages. One page is already charged to another page's copy.
    const LIMIT: u8 = 1;

    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    enum Svc {
        /// `g = budget.gen.load()` (service_pending, before preserving).
        LoadGen,
        /// `try_preserve` loads the page state: not PENDING any more => no copy needed.
        Check,
        /// `try_take`: `prev = used.fetch_add(1)`.
        Take,
        /// `prev + 1 > limit && prev != 0`?
        Decide,
        /// `used.fetch_sub(1)`: the failed take is undone.
        Undo,
        /// Mutant `LateGen`: the generation is loaded only now.
        LateLoadGen,
        /// `waiting.store(true)`.
        Raise,
        /// `deferred_gen = g` (old protocol: `deferred_used = used.load()`).
        Record,
        /// `retry_deferred(false)` before blocking: retry if the generation moved.
        Retry,
        /// Blocked in `poll` until the eventfd is kicked (then `retry_deferred(true)`).
        Poll,
        /// The fault proceeded (copied, or no copy needed).
        Done,
    }

    /// What the freer does: returns a page of budget (`give`: a read in consume mode, a
    /// release of a PRESERVED page, a view dropped), or makes the deferred page need no copy
    /// (`freed` alone: a read or release of the PENDING page, `mark_lost`).
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    pub(super) enum Free {
        Give,
        Release,
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(super) enum Mutant {
        /// The protocol before the generation: `deferred_used = used.load()` after raising
        /// `waiting`, retry only if `used` dropped below it; releasing a PENDING page wakes
        /// nobody.
        Old,
        /// The freer swaps `waiting` (and kicks) before its effect and the generation bump.
        WakeBeforeBump,
        /// The service thread loads the generation after the failed `try_take`.
        LateGen,
    }

    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    struct S {
        used: u8,
        /// The deferred fault's page still needs a copy (PENDING).
        need: bool,
        gen: u8,
        waiting: bool,
        kicked: bool,
        svc: Svc,
        g: u8,
        prev: u8,
        deferred: u8,
        /// Freer: action index and step within it.
        fa: u8,
        fs: u8,
    }

    fn successors(plan: &[Free], m: Option<Mutant>, s: &S) -> Vec<(&'static str, S)> {
        let mut out = Vec::new();
        let old = m == Some(Mutant::Old);
        // Service thread.
        let mut n = *s;
        let step = match s.svc {
            Svc::LoadGen => {
                if m != Some(Mutant::LateGen) {
                    n.g = s.gen;
                }
                n.svc = Svc::Check;
                Some("svc: g = gen")
            }
            Svc::Check => {
                n.svc = if s.need { Svc::Take } else { Svc::Done };
                Some("svc: load page state")
            }
            Svc::Take => {
                n.prev = s.used;
                n.used += 1;
                n.svc = Svc::Decide;
                Some("svc: used.fetch_add")
            }
            Svc::Decide => {
                n.svc = if s.prev + 1 > LIMIT && s.prev != 0 {
                    Svc::Undo
                } else {
                    Svc::Done
                };
                Some("svc: over limit?")
            }
            Svc::Undo => {
                n.used -= 1;
                n.svc = if m == Some(Mutant::LateGen) {
                    Svc::LateLoadGen
                } else {
                    Svc::Raise
                };
                Some("svc: used.fetch_sub (take failed)")
            }
            Svc::LateLoadGen => {
                n.g = s.gen;
                n.svc = Svc::Raise;
                Some("svc: g = gen (late)")
            }
            Svc::Raise => {
                n.waiting = true;
                n.svc = Svc::Record;
                Some("svc: waiting = true")
            }
            Svc::Record => {
                n.deferred = if old { s.used } else { s.g };
                n.svc = Svc::Retry;
                Some(if old {
                    "svc: deferred_used = used"
                } else {
                    "svc: deferred_gen = g"
                })
            }
            Svc::Retry => {
                let again = if old {
                    s.used < s.deferred
                } else {
                    s.gen != s.deferred
                };
                n.svc = if again { Svc::LoadGen } else { Svc::Poll };
                Some("svc: retry_deferred")
            }
            Svc::Poll if s.kicked => {
                n.kicked = false;
                n.svc = Svc::LoadGen;
                Some("svc: poll woken, retry_deferred(true)")
            }
            Svc::Poll | Svc::Done => None,
        };
        if let Some(label) = step {
            out.push((label, n));
        }
        // Freer: effect, generation bump, `waiting.swap(false)` + kick (in that order).
        if let Some(&kind) = plan.get(s.fa as usize) {
            #[derive(PartialEq)]
            enum F {
                Effect,
                Bump,
                Wake,
            }
            let order: &[F] = match (m, kind) {
                (Some(Mutant::Old), Free::Give) => &[F::Effect, F::Wake],
                (Some(Mutant::Old), Free::Release) => &[F::Effect],
                (Some(Mutant::WakeBeforeBump), _) => &[F::Wake, F::Effect, F::Bump],
                _ => &[F::Effect, F::Bump, F::Wake],
            };
            let mut n = *s;
            let label = match order[s.fs as usize] {
                F::Effect if kind == Free::Give => {
                    n.used -= 1;
                    "freer: used.fetch_sub (give)"
                }
                F::Effect => {
                    n.need = false;
                    "freer: page needs no copy"
                }
                F::Bump => {
                    n.gen += 1;
                    "freer: gen += 1"
                }
                F::Wake => {
                    if s.waiting {
                        n.waiting = false;
                        n.kicked = true;
                    }
                    "freer: waiting.swap(false) => kick"
                }
            };
            n.fs += 1;
            if n.fs as usize == order.len() {
                n.fs = 0;
                n.fa += 1;
            }
            out.push((label, n));
        }
        out
    }

    /// Explores one freer plan; returns (states, first violation).
    pub(super) fn explore(plan: &[Free], m: Option<Mutant>) -> (usize, Option<String>) {
        let init = S {
            used: LIMIT,
            need: true,
            gen: 0,
            waiting: false,
            kicked: false,
            svc: Svc::LoadGen,
            g: 0,
            prev: 0,
            deferred: 0,
            fa: 0,
            fs: 0,
        };
        bfs(
            init,
            |s| successors(plan, m, s),
            |_| None,
            |s| {
                let could_proceed = s.used < LIMIT || !s.need;
                (s.svc != Svc::Done).then(|| {
                    if could_proceed {
                        "lost wake-up: the service thread sleeps while its deferred fault could proceed"
                            .to_string()
                    } else {
                        "deadlock".to_string()
                    }
                })
            },
        )
    }

    /// The freer plans explored: one or two frees of either kind.
    pub(super) fn plans() -> Vec<Vec<Free>> {
        use Free::*;
        vec![
            vec![Give],
            vec![Release],
            vec![Give, Release],
            vec![Release, Give],
        ]
    }
}

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
    for m in [Old, WakeBeforeBump, LateGen] {
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
mod rollback {
    use super::bfs;

    /// Content values: the page before the run, zero after a zap, writes 1 (round 1),
    /// 2 (round 2) and 3 (a stray writer that ignores the quiescence rule).
    const A: u8 = 0;
    const Z: u8 = 9;
    const STRAY: u8 = 3;

    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    enum St {
        NoView,
        Pending,
        Preserved,
        Clean,
        Lost,
    }

    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    enum Zap {
        Idle,
        /// The madvise caller waits for its REMOVE event to be read.
        Requested,
        /// Read: the kernel may zap at any moment (before madvise returns).
        Armed,
        Done,
    }

    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    enum Svc {
        Idle,
        /// A batch holding the REMOVE event was read (`read_seq` odd): `on_remove` next.
        Remove,
        /// `on_remove` done: `read_seq` becomes even next.
        BatchEnd,
        /// Snapshot: the suspect runs were re-checked; re-protect dirty pages next.
        Snap2,
        /// Snapshot: re-protected; create the view next.
        Snap3,
        /// Fault: preserved; mark dirty, un-protect and wake next.
        Unprotect,
        /// Rearm: first half done.
        Rearm2,
        /// Cut: suspect runs re-checked; harvest and re-protect next.
        Cut2,
    }

    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    enum App {
        /// Round r begins: madvise (if configured), else the write.
        Start,
        MadviseWait,
        /// Round 1 only: the snapshot (requested by another thread) must exist first.
        WaitSnapshot,
        Write,
        /// Rollback: load `read_seq`.
        Rb0,
        /// Wait until `read_seq` moves off the odd value seen.
        RbWait,
        /// Any LOST page => Err(Discarded).
        RbLost,
        /// Take the `rewritten` list.
        RbTake,
        /// Scan the suspect runs for unprotected pages.
        RbScan,
        /// Write the queued page back from its copy (a tracked write: faults if protected).
        RbWrite,
        /// Wait for the service thread's rearm.
        RbRearm,
        Done,
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(super) enum Mutant {
        /// Rollback does not wait for an even `read_seq`.
        NoSeqWait,
        /// Rollback does not scan the suspect runs.
        NoScan,
        /// The snapshot does not re-check the suspect runs.
        NoSnapshotRecheck,
        /// `mark_lost` leaves a CLEAN page CLEAN (not re-queued).
        CleanNotRequeued,
        /// Rearm marks pages CLEAN before re-protecting them.
        CleanBeforeProtect,
    }

    /// When the (at most one) cut of the region may run.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(super) enum Cut {
        No,
        /// Before the snapshot command (an earlier epoch boundary).
        BeforeSnapshot,
        /// After the first rollback returned.
        AfterRollback,
        /// At any moment.
        Any,
    }

    #[derive(Clone, Copy, Debug)]
    pub(super) struct Cfg {
        /// madvise(DONTNEED) in round 1 (concurrent with the snapshot) / round 2.
        pub madvise: [bool; 2],
        /// The round-2 write (round 1 always writes).
        pub write2: bool,
        pub cut: Cut,
        /// Proposed fix: the cut's (and snapshot's) suspect re-check also applies `mark_lost`
        /// to the live views' pages it finds un-protected, the cut checks and re-protects
        /// atomically per page (no zap can land between), and `write_back` fails on a page
        /// found LOST after its scan (a cut may run while it scans).
        pub fix: bool,
        /// A second thread writes once while round 1 runs (not quiesced).
        pub stray: bool,
        pub mutant: Option<Mutant>,
    }

    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    struct S {
        live: u8,
        protected: bool,
        dirty: bool,
        suspect: bool,
        st: St,
        copy: Option<u8>,
        /// In the view's `rewritten` list.
        queued: bool,
        seq: u8,
        zap: Zap,
        svc: Svc,
        snapshot_requested: bool,
        cut_pending: bool,
        rearm_requested: bool,
        app: App,
        round: u8,
        /// The app thread's write is blocked in a fault.
        app_blocked: bool,
        /// Stray writer: 0 = ready, 1 = blocked, 2 = done.
        stray: u8,
        /// Rollback locals.
        rb_seq: u8,
        rb_pages: bool,
        /// The round-1 madvise returned before the snapshot command began.
        early: bool,
        madvise_returned: bool,
        /// The content the view was created over.
        at_snapshot: Option<u8>,
        /// Result of the first checked successful rollback.
        first_ok: Option<u8>,
        bad: Option<&'static str>,
    }

    fn successors(c: &Cfg, s: &S) -> Vec<(&'static str, S)> {
        let m = c.mutant;
        let mut out = Vec::new();
        let r = s.round as usize;
        // Kernel zap.
        if s.zap == Zap::Armed {
            let mut n = *s;
            n.live = Z;
            n.protected = false;
            n.zap = Zap::Done;
            out.push(("kernel: zap (zero, un-protect)", n));
        }
        // Service thread.
        service(c, s, &mut out);
        // Stray writer.
        if c.stray && s.stray == 0 && s.st != St::NoView && s.round == 0 {
            let mut n = *s;
            if s.protected {
                n.stray = 1;
                out.push(("stray: write faults", n));
            } else {
                n.live = STRAY;
                n.stray = 2;
                out.push(("stray: write lands", n));
            }
        }
        // Application thread.
        if s.app_blocked {
            return out;
        }
        let mut n = *s;
        let label = match s.app {
            // Round 2 starts once the stray writer (if any) has finished: quiescence.
            App::Start if s.stray != 1 => {
                if c.madvise[r] {
                    n.zap = Zap::Requested;
                    n.app = App::MadviseWait;
                    "app: madvise (REMOVE queued)"
                } else {
                    n.app = if r == 0 {
                        App::WaitSnapshot
                    } else {
                        App::Write
                    };
                    "app: no madvise"
                }
            }
            App::MadviseWait if s.zap == Zap::Done => {
                n.zap = Zap::Idle;
                if r == 0 {
                    n.madvise_returned = true;
                }
                n.app = if r == 0 {
                    App::WaitSnapshot
                } else {
                    App::Write
                };
                "app: madvise returns"
            }
            App::WaitSnapshot if s.st != St::NoView => {
                n.app = App::Write;
                "app: snapshot exists"
            }
            App::Write => {
                if r == 1 && !c.write2 {
                    n.app = App::Rb0;
                    "app: no write"
                } else if s.protected {
                    n.app_blocked = true;
                    "app: write faults"
                } else {
                    n.live = r as u8 + 1;
                    n.app = App::Rb0;
                    "app: write lands"
                }
            }
            App::Rb0 => {
                n.rb_seq = s.seq;
                n.app = if s.seq % 2 == 1 && m != Some(Mutant::NoSeqWait) {
                    App::RbWait
                } else {
                    App::RbLost
                };
                "rollback: load read_seq"
            }
            App::RbWait if s.seq != s.rb_seq => {
                n.app = App::RbLost;
                "rollback: read_seq moved"
            }
            App::RbLost => {
                if s.st == St::Lost {
                    finish(c, &mut n, None);
                    "rollback: LOST => Err"
                } else {
                    n.app = App::RbTake;
                    "rollback: nothing LOST"
                }
            }
            App::RbTake => {
                n.rb_pages = s.queued;
                n.queued = false;
                n.app = App::RbScan;
                "rollback: take rewritten"
            }
            App::RbScan => {
                n.app = App::RbWrite;
                if m != Some(Mutant::NoScan) && s.suspect && !s.protected {
                    match s.st {
                        St::Pending => {
                            n.st = St::Lost;
                            n.queued |= s.rb_pages;
                            finish(c, &mut n, None);
                            "rollback: scan: un-protected PENDING => LOST, Err"
                        }
                        St::Clean => {
                            n.st = St::Preserved;
                            n.rb_pages = true;
                            "rollback: scan: un-protected CLEAN => rewrite"
                        }
                        St::Lost if c.fix => {
                            finish(c, &mut n, None);
                            "rollback: scan: LOST => Err"
                        }
                        _ => "rollback: scan",
                    }
                } else {
                    if c.fix && s.st == St::Lost {
                        finish(c, &mut n, None);
                        "rollback: scan: LOST => Err"
                    } else {
                        "rollback: scan (nothing)"
                    }
                }
            }
            App::RbWrite => {
                if !s.rb_pages {
                    finish(c, &mut n, Some(s.live));
                    "rollback: nothing to rewrite => Ok"
                } else if s.protected {
                    n.app_blocked = true;
                    "rollback: write-back faults"
                } else {
                    n.live = s.copy.expect("a queued page has a copy");
                    n.rearm_requested = true;
                    n.app = App::RbRearm;
                    "rollback: write back; request rearm"
                }
            }
            App::RbRearm if !s.rearm_requested => {
                finish(c, &mut n, Some(s.live));
                "rollback: rearmed => Ok"
            }
            _ => return out,
        };
        out.push((label, n));
        out
    }

    /// A rollback returned (`Some(content)` = Ok): check it, then next round.
    fn finish(c: &Cfg, n: &mut S, ok: Option<u8>) {
        let concurrent = c.madvise[0] && !n.early;
        match ok {
            None if !concurrent => {
                n.bad = Some("rollback failed (Discarded) though no madvise raced the snapshot")
            }
            None => {}
            // A stray write may land after round 1's write-back: only round 2 is checked.
            Some(v) if !(c.stray && n.round == 0) => {
                let snap = n.at_snapshot.expect("a view");
                if v != snap && !(concurrent && v == Z) {
                    n.bad = Some("rollback Ok but the page holds neither its content at the snapshot nor the madvise's zero");
                } else if n.first_ok.is_some_and(|f| f != v) {
                    n.bad = Some("two successful rollbacks restored different contents");
                }
                n.first_ok = Some(v);
            }
            Some(_) => {}
        }
        n.round += 1;
        n.app = if n.round == 2 { App::Done } else { App::Start };
    }

    /// `on_remove`'s per-view part (`View::mark_lost`), also used by the proposed re-check fix.
    fn mark_lost(m: Option<Mutant>, n: &mut S) {
        match n.st {
            St::Pending => n.st = St::Lost,
            St::Clean if m != Some(Mutant::CleanNotRequeued) => {
                n.st = St::Preserved;
                n.queued = true;
            }
            _ => {}
        }
    }

    /// Suspect-run re-check (`mark_unprotected`): un-protected suspect pages are dirty.
    fn recheck(c: &Cfg, n: &mut S) {
        if n.suspect && !n.protected {
            n.dirty = true;
            if c.fix {
                mark_lost(c.mutant, n);
            }
        }
    }

    fn service(c: &Cfg, s: &S, out: &mut Vec<(&'static str, S)>) {
        let m = c.mutant;
        let mut n = *s;
        match s.svc {
            Svc::Idle => {
                if s.zap == Zap::Requested {
                    let mut n = *s;
                    n.seq += 1;
                    n.zap = Zap::Armed;
                    n.svc = Svc::Remove;
                    out.push(("svc: read batch (REMOVE; read_seq odd)", n));
                }
                if s.snapshot_requested {
                    let mut n = *s;
                    n.snapshot_requested = false;
                    n.early = s.madvise_returned;
                    if m != Some(Mutant::NoSnapshotRecheck) {
                        recheck(c, &mut n);
                    }
                    n.svc = Svc::Snap2;
                    out.push(("svc: snapshot: re-check suspect runs", n));
                }
                let cut_ok = match c.cut {
                    Cut::No => false,
                    Cut::BeforeSnapshot => s.snapshot_requested,
                    Cut::AfterRollback => s.round > 0,
                    Cut::Any => true,
                };
                if s.cut_pending && cut_ok {
                    let mut n = *s;
                    n.cut_pending = false;
                    recheck(c, &mut n);
                    if c.fix {
                        // Check and re-protect atomically per page (no zap in between).
                        harvest(&mut n);
                    } else {
                        n.svc = Svc::Cut2;
                    }
                    out.push(("svc: cut: re-check suspect runs", n));
                }
                if s.app_blocked || s.stray == 1 {
                    // Fault: preserve (verify a suspect page is still protected).
                    let mut n = *s;
                    match s.st {
                        St::Pending if s.suspect && !s.protected => n.st = St::Lost,
                        St::Pending => {
                            n.copy = Some(s.live);
                            n.st = St::Preserved;
                            n.queued = true;
                        }
                        St::Clean => {
                            n.st = St::Preserved;
                            n.queued = true;
                        }
                        _ => {}
                    }
                    n.svc = Svc::Unprotect;
                    out.push(("svc: fault: preserve", n));
                }
                if s.rearm_requested {
                    let mut n = *s;
                    if m == Some(Mutant::CleanBeforeProtect) {
                        mark_clean(&mut n);
                    } else {
                        n.protected = true;
                    }
                    n.svc = Svc::Rearm2;
                    out.push(("svc: rearm (1/2)", n));
                }
            }
            Svc::Remove => {
                n.dirty = true;
                n.suspect = true;
                mark_lost(m, &mut n);
                n.svc = Svc::BatchEnd;
                out.push(("svc: on_remove (dirty, suspect, mark_lost)", n));
            }
            Svc::BatchEnd => {
                n.seq += 1;
                n.svc = Svc::Idle;
                out.push(("svc: batch done (read_seq even)", n));
            }
            Svc::Snap2 => {
                if s.dirty {
                    n.protected = true;
                }
                n.svc = Svc::Snap3;
                out.push(("svc: snapshot: re-protect dirty", n));
            }
            Svc::Snap3 => {
                n.st = St::Pending;
                n.at_snapshot = Some(s.live);
                n.svc = Svc::Idle;
                out.push(("svc: snapshot: view created (PENDING)", n));
            }
            Svc::Unprotect => {
                n.dirty = true;
                n.protected = false;
                n.app_blocked = false;
                if s.stray == 1 {
                    n.stray = 0;
                }
                n.svc = Svc::Idle;
                out.push(("svc: fault: dirty, un-protect, wake", n));
            }
            Svc::Rearm2 => {
                if m == Some(Mutant::CleanBeforeProtect) {
                    n.protected = true;
                } else {
                    mark_clean(&mut n);
                }
                n.rearm_requested = false;
                n.svc = Svc::Idle;
                out.push(("svc: rearm (2/2)", n));
            }
            Svc::Cut2 => {
                harvest(&mut n);
                n.svc = Svc::Idle;
                out.push(("svc: cut: harvest, re-protect dirty", n));
            }
        }
    }

    /// The cut's harvest: re-protect the dirty page, clear its bit.
    fn harvest(n: &mut S) {
        if n.dirty {
            n.protected = true;
        }
        n.dirty = false;
    }

    /// `View::mark_clean`: a PRESERVED page equal to its copy becomes CLEAN, else re-queued.
    fn mark_clean(n: &mut S) {
        if n.st == St::Preserved {
            if Some(n.live) == n.copy {
                n.st = St::Clean;
            } else {
                n.queued = true;
            }
        }
    }

    pub(super) fn explore(c: &Cfg) -> (usize, Option<String>) {
        let init = S {
            live: A,
            protected: true,
            dirty: false,
            suspect: false,
            st: St::NoView,
            copy: None,
            queued: false,
            seq: 0,
            zap: Zap::Idle,
            svc: Svc::Idle,
            snapshot_requested: true,
            cut_pending: c.cut != Cut::No,
            rearm_requested: false,
            app: App::Start,
            round: 0,
            app_blocked: false,
            stray: if c.stray { 0 } else { 2 },
            rb_seq: 0,
            rb_pages: false,
            early: false,
            madvise_returned: false,
            at_snapshot: None,
            first_ok: None,
            bad: None,
        };
        bfs(
            init,
            |s| successors(c, s),
            |s| s.bad.map(str::to_string),
            |s| {
                let idle = s.app == App::Done && s.svc == Svc::Idle && !s.rearm_requested;
                (!idle || s.stray == 1).then(|| "deadlock".to_string())
            },
        )
    }

    /// Every combination of madvise per round, round-2 write, cut timing and stray writer.
    pub(super) fn configs(cuts: &[Cut], fix: bool, mutant: Option<Mutant>) -> Vec<Cfg> {
        let mut v = Vec::new();
        for m1 in [false, true] {
            for m2 in [false, true] {
                for write2 in [false, true] {
                    for &cut in cuts {
                        for stray in [false, true] {
                            v.push(Cfg {
                                madvise: [m1, m2],
                                write2,
                                cut,
                                fix,
                                stray,
                                mutant,
                            });
                        }
                    }
                }
            }
        }
        v
    }
}

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
