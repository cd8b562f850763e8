//! Model 0: the per-page view protocol (PENDING / COPYING / PRESERVING / PRESERVED /
//! RELEASED / LOST) against the service thread's fault path; see the header of `main.rs`.

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
pub(super) struct Cfg {
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
pub(super) enum Mutant {
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
pub(super) fn explore(c: &Cfg) -> (usize, Option<String>) {
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

pub(super) fn configs(mutant: Option<Mutant>) -> Vec<Cfg> {
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
