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
