//! Model C: eager re-arming (`service/eager.rs`, `armed.rs`) composed with fault service on
//! the service thread (with fault-around) or in the writers' `SIGBUS` handlers
//! (`inthread.rs`), and the adaptive per-chunk re-protection plan of a cut
//! (`service/policy.rs::plan_chunks`). Two pages, two writers, up to two background arming
//! steps at any moment and one cut at any moment.
//!
//! Checked at every write that lands (the store finds its page writable): the page's dirty
//! bit is set, or a cut in progress has harvested it (the write is then part of that cut).
//! That is invariant I1 of docs/design.md (a clear bit means write-protected), the one an
//! armed-but-writable page breaks: the cut skips re-protecting armed pages, so such a page
//! stays writable with its bit cleared and its next write is lost.

use super::bfs;

const PAGES: usize = 2;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Mode {
    /// Faults served by the service thread, with fault-around of one extra page.
    Service,
    /// Faults served by the faulting writer's `SIGBUS` handler.
    InThread,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Plan {
    /// One protect call per dirty run.
    PerRun,
    /// One protect call over the span of the unarmed dirty pages (the chunk is "whole").
    Whole,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mutant {
    /// In-thread arming without the `synchronize` between setting armed bits and protecting.
    NoSynchronize,
    /// In-thread arming that sets the armed bit after the protect ioctl (the service-thread
    /// order, which is only right when no handler runs concurrently).
    ArmAfterProtect,
    /// Fault-around clears the armed bit of the faulting page only, not of the extension.
    AroundKeepsArmed,
    /// The whole-chunk plan's span stops one page short of the last dirty run.
    SpanShort,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Svc {
    Idle,
    /// Arming page: armed bit set (in-thread order), waiting to synchronize.
    ArmSet(u8),
    /// Synchronizing before the protect of an arming step.
    ArmSync(u8),
    /// Protect ioctl done, armed bit not yet set (mutant `ArmAfterProtect`).
    ArmProtected(u8),
    /// Cut: `cutting` raised, synchronizing.
    CutSync,
    /// Cut: harvested, re-protecting.
    CutProtect,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum W {
    /// About to execute its next store.
    Write,
    /// Service mode: blocked in the kernel until the service thread serves the fault.
    Blocked,
    /// In-thread handler steps.
    Enter,
    Check,
    Take,
    Dirty,
    Unprotect,
    Leave,
    /// Waiting outside the in-flight section until the cut lowers `cutting`.
    WaitCut,
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct S {
    prot: [bool; PAGES],
    dirty: [bool; PAGES],
    armed: [bool; PAGES],
    hot: [bool; PAGES],
    harvested: [bool; PAGES],
    svc: Svc,
    cutting: bool,
    cuts_left: u8,
    arms_left: u8,
    /// Pages with a pending (unserved) fault, service mode.
    pending: [bool; PAGES],
    w: [W; 2],
    /// Index of each writer's next store in its program.
    pc: [u8; 2],
    inflight: u8,
    sync_wait: u8,
}

/// Each writer's stores (page numbers).
const PROGRAM: [&[usize]; 2] = [&[0, 0, 1], &[1, 0]];

fn page_of(s: &S, i: usize) -> Option<usize> {
    PROGRAM[i].get(s.pc[i] as usize).copied()
}

fn successors(mode: Mode, plan: Plan, m: Option<Mutant>, s: &S) -> Vec<(&'static str, S)> {
    let mut out = Vec::new();
    let in_thread = mode == Mode::InThread;
    // ---- service thread
    match s.svc {
        Svc::Idle => {
            if s.arms_left > 0 {
                for p in 0..PAGES {
                    if s.dirty[p] && !s.armed[p] && !s.hot[p] {
                        let mut n = *s;
                        n.arms_left -= 1;
                        if !in_thread {
                            // One thread: protect and arm, no handler can run in between.
                            n.prot[p] = true;
                            n.armed[p] = true;
                            out.push(("svc: arm (protect, armed)", n));
                        } else if m == Some(Mutant::ArmAfterProtect) {
                            n.prot[p] = true;
                            n.svc = Svc::ArmProtected(p as u8);
                            out.push(("svc: arm: protect", n));
                        } else {
                            n.armed[p] = true;
                            n.svc = Svc::ArmSet(p as u8);
                            out.push(("svc: arm: armed = 1", n));
                        }
                    }
                }
            }
            if s.cuts_left > 0 {
                let mut n = *s;
                n.cuts_left -= 1;
                n.cutting = true;
                n.sync_wait = if in_thread { s.inflight } else { 0 };
                n.svc = Svc::CutSync;
                out.push(("svc: cut: cutting = 1, synchronize", n));
            }
            if !in_thread {
                for p in 0..PAGES {
                    if s.pending[p] {
                        // Serve the fault with fault-around: page p and p+1 (if any).
                        let mut n = *s;
                        let last = (p + 1).min(PAGES - 1);
                        for q in p..=last {
                            let clear = q == p || m != Some(Mutant::AroundKeepsArmed);
                            if clear && n.armed[q] {
                                n.armed[q] = false;
                                n.hot[q] = true;
                            }
                            n.dirty[q] = true;
                        }
                        for q in p..=last {
                            n.prot[q] = false;
                            n.pending[q] = false;
                        }
                        for i in 0..2 {
                            if n.w[i] == W::Blocked
                                && page_of(s, i).is_some_and(|q| q >= p && q <= last)
                            {
                                n.w[i] = W::Write;
                            }
                        }
                        out.push(("svc: serve fault (+ fault-around): take armed, dirty, un-protect, wake", n));
                    }
                }
            }
        }
        Svc::ArmSet(p) => {
            let mut n = *s;
            if m == Some(Mutant::NoSynchronize) {
                n.prot[p as usize] = true;
                n.svc = Svc::Idle;
                out.push(("svc: arm: protect (no synchronize)", n));
            } else {
                n.sync_wait = s.inflight;
                n.svc = Svc::ArmSync(p);
                out.push(("svc: arm: synchronize starts", n));
            }
        }
        Svc::ArmSync(p) if s.sync_wait == 0 => {
            let mut n = *s;
            n.prot[p as usize] = true;
            n.svc = Svc::Idle;
            out.push(("svc: arm: synchronize done, protect", n));
        }
        Svc::ArmProtected(p) => {
            let mut n = *s;
            n.armed[p as usize] = true;
            n.svc = Svc::Idle;
            out.push(("svc: arm: armed = 1 (after protect)", n));
        }
        Svc::CutSync if s.sync_wait == 0 => {
            let mut n = *s;
            n.harvested = s.dirty;
            n.dirty = [false; PAGES];
            n.svc = Svc::CutProtect;
            out.push(("svc: cut: harvest", n));
        }
        Svc::CutProtect => {
            let mut n = *s;
            let todo: Vec<usize> = (0..PAGES)
                .filter(|&p| s.harvested[p] && !s.armed[p])
                .collect();
            match plan {
                Plan::PerRun => todo.iter().for_each(|&p| n.prot[p] = true),
                Plan::Whole => {
                    if let (Some(&a), Some(&b)) = (todo.first(), todo.last()) {
                        let end = if m == Some(Mutant::SpanShort) && b > a {
                            b
                        } else {
                            b + 1
                        };
                        (a..end).for_each(|p| n.prot[p] = true);
                    }
                }
            }
            n.armed = [false; PAGES];
            n.hot = [false; PAGES];
            n.harvested = [false; PAGES];
            n.cutting = false;
            n.svc = Svc::Idle;
            out.push((
                "svc: cut: re-protect unarmed dirty pages, reset armed/hot, cutting = 0",
                n,
            ));
        }
        Svc::ArmSync(_) | Svc::CutSync => {}
    }
    // ---- writers
    for i in 0..2 {
        let me = 1u8 << i;
        let mut n = *s;
        let Some(p) = page_of(s, i) else {
            continue;
        };
        let label = match s.w[i] {
            W::Write if s.prot[p] => {
                if in_thread {
                    n.w[i] = W::Enter;
                } else {
                    n.pending[p] = true;
                    n.w[i] = W::Blocked;
                }
                "writer: store faults"
            }
            W::Write => {
                n.pc[i] += 1;
                n.w[i] = if page_of(&n, i).is_some() {
                    W::Write
                } else {
                    W::Done
                };
                "writer: store lands"
            }
            W::Enter => {
                n.inflight |= me;
                n.w[i] = W::Check;
                "handler: in-flight++"
            }
            W::Check if s.cutting => {
                n.inflight &= !me;
                n.sync_wait &= !me;
                n.w[i] = W::WaitCut;
                "handler: cutting: in-flight--, wait"
            }
            W::Check => {
                n.w[i] = W::Take;
                "handler: cutting = 0"
            }
            W::WaitCut if !s.cutting => {
                n.w[i] = W::Write;
                "handler: cut over, retry the store"
            }
            W::Take => {
                if s.armed[p] {
                    n.armed[p] = false;
                    n.hot[p] = true;
                }
                n.w[i] = W::Dirty;
                "handler: armed.take (=> hot)"
            }
            W::Dirty => {
                n.dirty[p] = true;
                n.w[i] = W::Unprotect;
                "handler: dirty = 1"
            }
            W::Unprotect => {
                n.prot[p] = false;
                n.w[i] = W::Leave;
                "handler: un-protect"
            }
            W::Leave => {
                n.inflight &= !me;
                n.sync_wait &= !me;
                n.w[i] = W::Write;
                "handler: in-flight--, return (the store re-executes)"
            }
            W::Blocked | W::WaitCut | W::Done => continue,
        };
        out.push((label, n));
    }
    out
}

/// A store that lands must find its page's dirty bit set, or harvested by the cut running.
fn check(s: &S) -> Option<String> {
    for i in 0..2 {
        if let (W::Write, Some(p)) = (s.w[i], page_of(s, i)) {
            if !s.prot[p] && !s.dirty[p] && !s.harvested[p] {
                return Some(format!(
                    "writer {i} can store to page {p}, writable with its dirty bit clear: the write would be missed (armed {:?})",
                    s.armed
                ));
            }
        }
    }
    None
}

/// Explores one configuration; returns (states, first violation).
pub(super) fn explore(mode: Mode, plan: Plan, m: Option<Mutant>) -> (usize, Option<String>) {
    let init = S {
        prot: [true; PAGES],
        dirty: [false; PAGES],
        armed: [false; PAGES],
        hot: [false; PAGES],
        harvested: [false; PAGES],
        svc: Svc::Idle,
        cutting: false,
        cuts_left: 1,
        arms_left: 2,
        pending: [false; PAGES],
        w: [W::Write; 2],
        pc: [0; 2],
        inflight: 0,
        sync_wait: 0,
    };
    bfs(
        init,
        |s| successors(mode, plan, m, s),
        check,
        |s| {
            let writers_done = s.w.iter().all(|w| *w == W::Done);
            (!writers_done).then(|| format!("stuck: {:?}", s.w))
        },
    )
}

/// Every (mode, plan) configuration.
pub(super) fn configs() -> Vec<(Mode, Plan)> {
    let mut v = Vec::new();
    for mode in [Mode::Service, Mode::InThread] {
        for plan in [Plan::PerRun, Plan::Whole] {
            v.push((mode, plan));
        }
    }
    v
}
