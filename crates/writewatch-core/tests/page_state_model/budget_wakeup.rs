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
    /// The service thread blocks without `retry_deferred(false)` after recording the
    /// deferral (the adaptive spin phase's deferral return did, found by review in issue 14;
    /// `Service::run` now retries before every `wait`).
    NoRetryBeforeBlock,
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
            n.svc = if m == Some(Mutant::NoRetryBeforeBlock) {
                Svc::Poll
            } else {
                Svc::Retry
            };
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
