//! The adaptive policy (sync backend, on by default; `TrackerBuilder::adaptive(false)` turns
//! it off, and each existing option forces its own choice). It measures the engine's own
//! costs at run time and decides, per region and per epoch:
//!
//! - **re-protection plan per 2 MiB chunk** (`plan_chunks`): one `UFFDIO_WRITEPROTECT` per
//!   dirty run costs `k * ioctl + d * pte`; one over the chunk's dirty span costs
//!   `ioctl + span * pte` (clean pages in between are protected already: a no-op for them).
//!   `ioctl` (fixed cost per call) and `pte` (cost per page walked) are fitted online by
//!   least squares with exponential forgetting over every protect call the service thread
//!   makes ([`Costs`]). Forced by `merge_gap_pages(n)`.
//! - **eager re-arming age** (`Eager::tune`): doubled when more than a quarter of the pages
//!   re-armed in the last epoch were written again (each such write is one more fault),
//!   halved when fewer than 1 in 20 were, between 0.5 ms and 1 s. Hot pages are never
//!   re-armed. Forced by `eager_reprotect(age)`.
//! - **fault-around** for a region whose last epoch's faults, or the open epoch's so far,
//!   were at least 90 % sequential (and at least 64 of them): up to [`ADAPTIVE_AROUND`] pages
//!   (in a lazily armed region the run's empty pages are installed too), granted by doubling only after the
//!   writer proved it walks in order, so the over-report is at most `min(127, pages the
//!   stream wrote)` per sequential stream and epoch for a stream that writes what it walks
//!   through (127 per in-order fault at worst; docs/design.md section 10). Forced by `fault_around(n)`.
//! - **in-thread handling**: needs `UFFD_FEATURE_SIGBUS` when the userfaultfd is opened, so it
//!   cannot be switched on at run time; the report says when the fault rate came within 80 %
//!   of the service thread's measured limit (then `in_thread_faults(true)` is the fix).

use std::time::Duration;

use std::sync::Arc;
use std::time::Instant;

use super::Service;
use crate::backend::Backend;
use crate::policy::{PolicyChoice, PolicyReport};
use crate::range::RegionInner;
use crate::shared::Config;

/// Pages per re-protection chunk (2 MiB of 4 KiB pages).
pub(super) const CHUNK: u64 = 512;
/// Largest fault-around the adaptive policy grants. Each fault costs a service round trip
/// (30-55 us on the reference machine, where an idle vCPU halts at once), so a sequential
/// writer's cost per page is about `round trip / run + copy + un-protect`: first write during
/// a snapshot, in order, measured against the kernel's fork COW fault in the same run: 16
/// pages 1.70x, 64 pages 0.96x, 128 pages 0.64x (2026-11-30). The over-report bound grows
/// with it: `min(ADAPTIVE_AROUND - 1, pages the stream wrote)` per stream and epoch.
pub(super) const ADAPTIVE_AROUND: u64 = 128;
/// First age of eager re-arming, and its bounds.
pub(super) const AGE_START: Duration = Duration::from_millis(4);
pub(super) const AGE_MIN: Duration = Duration::from_micros(500);
pub(super) const AGE_MAX: Duration = Duration::from_secs(1);

/// Online estimate of `t = ioctl + pages * pte` for protect calls: `ioctl` from small calls
/// (at most [`SMALL`] pages), `pte` from large ones (at least [`LARGE`] pages, the whole-chunk
/// calls), each an exponentially weighted mean. (A least-squares line over all calls was tried
/// first: nearly every call covers 1-3 pages, so under load the slope came out as noise,
/// 650 ns per page, and no chunk was ever planned whole.) Starts from priors measured on the
/// reference machine.
#[derive(Debug, Clone)]
pub(super) struct Costs {
    ioctl: f64,
    pte: f64,
}

/// Calls of at most this many pages update the per-call estimate.
const SMALL: u64 = 4;
/// Calls of at least this many pages update the per-page estimate.
const LARGE: u64 = 32;
/// Weight of a new sample.
const ALPHA: f64 = 0.05;
/// Priors (reference machine: ~1.3 us per ioctl, ~10 ns per page table entry walked).
const PRIOR_IOCTL_NS: f64 = 1300.0;
const PRIOR_PTE_NS: f64 = 10.0;

impl Default for Costs {
    fn default() -> Self {
        Self {
            ioctl: PRIOR_IOCTL_NS,
            pte: PRIOR_PTE_NS,
        }
    }
}

impl Costs {
    /// One protect call over `pages` pages took `ns`.
    pub(super) fn record(&mut self, pages: u64, ns: u64) {
        // A sample is clipped to twice the current estimate: a call preempted on a loaded
        // machine (a 25 us "ioctl" was seen) moves the estimate by at most 5 % per call.
        let t = ns as f64;
        if pages <= SMALL {
            let sample = (t - pages as f64 * self.pte).clamp(50.0, 2.0 * self.ioctl);
            self.ioctl += ALPHA * (sample - self.ioctl);
        } else if (LARGE..=64 * CHUNK).contains(&pages) {
            let sample = ((t - self.ioctl) / pages as f64).clamp(0.05, 2.0 * self.pte);
            self.pte += ALPHA * (sample - self.pte);
        }
    }

    /// (ioctl ns, pte ns).
    pub(super) fn fit(&self) -> (f64, f64) {
        (self.ioctl, self.pte)
    }
}

/// Longest adaptive spin after serving faults.
pub(super) const SPIN_WINDOW: Duration = Duration::from_micros(50);

/// Adaptive spinning (service thread, sync backend): after serving a batch of faults, busy-poll
/// the userfaultfd for up to [`SPIN_WINDOW`] if the next fault usually arrives within it.
/// Every wait after a batch is one sample: a *hit* if the next fault came within the window
/// (seen while spinning, or measured from `poll`'s return when not spinning), a *miss*
/// otherwise; the hit rate is an exponentially weighted mean. Spinning is on while the rate is
/// at least one half, so the time spent spinning in vain is at most about one window per
/// fault served. A writer that faults back to back then finds the service thread awake
/// instead of a halted CPU to wake (on the reference machine a blocked wait cost 10-90 us per
/// fault, most of it waking halted vCPUs). Forced by `spin(d)` (`spin(ZERO)`: off).
#[derive(Debug, Clone)]
pub(super) struct SpinGate {
    hits: f64,
    /// When the last batch was served (None: no batch since the last sample).
    since: Option<Instant>,
}

impl Default for SpinGate {
    fn default() -> Self {
        Self {
            hits: 0.0,
            since: None,
        }
    }
}

impl SpinGate {
    const ALPHA: f64 = 0.1;

    /// A batch of faults was just served.
    pub(super) fn served(&mut self, now: Instant) {
        self.since = Some(now);
    }

    /// The next event arrived at `now` (while blocked or spinning).
    pub(super) fn arrived(&mut self, now: Instant) {
        if let Some(t) = self.since.take() {
            let hit = now.saturating_duration_since(t) <= SPIN_WINDOW;
            self.sample(hit);
        }
    }

    /// A spin ended without an event.
    pub(super) fn missed(&mut self) {
        if self.since.take().is_some() {
            self.sample(false);
        }
    }

    fn sample(&mut self, hit: bool) {
        let x = if hit { 1.0 } else { 0.0 };
        self.hits += Self::ALPHA * (x - self.hits);
    }

    /// Whether to spin now.
    pub(super) fn spin(&self) -> bool {
        self.since.is_some() && self.hits >= 0.5
    }

    /// The current hit rate.
    pub(super) fn rate(&self) -> f64 {
        self.hits
    }
}

/// Outcome of [`plan_chunks`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub ranges: Vec<(u64, u64)>,
    pub whole_chunks: u64,
    pub run_chunks: u64,
}

/// Plans the re-protection of sorted, non-overlapping dirty `runs` chunk by chunk: per 2 MiB
/// chunk (runs grouped by the chunk of their first page), one call over the group's span if
/// `ioctl + span * pte` < `k * ioctl + dirty * pte`, else one call per run. Every page of
/// every run is covered; a range only adds pages between runs of the same group.
pub(super) fn plan_chunks(
    runs: impl Iterator<Item = (u64, u64)>,
    (ioctl, pte): (f64, f64),
) -> Plan {
    let mut plan = Plan::default();
    let mut group: Vec<(u64, u64)> = Vec::new();
    let flush = |group: &mut Vec<(u64, u64)>, plan: &mut Plan| {
        let (Some(&(a, _)), Some(&(b, m))) = (group.first(), group.last()) else {
            return;
        };
        let span = b + m - a;
        let dirty: u64 = group.iter().map(|r| r.1).sum();
        let k = group.len() as f64;
        let whole = ioctl + span as f64 * pte;
        let each = k * ioctl + dirty as f64 * pte;
        if group.len() > 1 && whole < each {
            plan.ranges.push((a, span));
            plan.whole_chunks += 1;
        } else {
            plan.ranges.extend(group.iter().copied());
            plan.run_chunks += 1;
        }
        group.clear();
    };
    for (first, count) in runs {
        if count == 0 {
            continue;
        }
        if group
            .first()
            .is_some_and(|&(a, _)| a / CHUNK != first / CHUNK)
        {
            flush(&mut group, &mut plan);
        }
        group.push((first, count));
    }
    flush(&mut group, &mut plan);
    plan
}

/// The service thread's policy state: measured costs and the report `TrackerStats` shows.
#[derive(Debug, Default)]
pub(super) struct Policy {
    pub costs: Costs,
    pub report: PolicyReport,
    /// (whole, per-run) chunks of the last adaptive re-protection plan.
    pub last_plan: (u64, u64),
    /// Service-thread time per fault served (EWMA, ns).
    pub fault_ns: f64,
    /// Adaptive spinning after faults.
    pub spin: SpinGate,
}

impl Policy {
    /// The policy of a tracker built with `config` on `backend`.
    pub(super) fn of(config: &Config, backend: Backend) -> Self {
        let sync = backend == Backend::SyncUffd;
        let forced = Forced {
            eager: config.eager.map(|a| format!("eager_reprotect({a:?})")),
            merge_gap: config
                .merge_gap_set
                .then(|| format!("merge_gap_pages({})", config.merge_gap_pages)),
            around: config
                .fault_around_set
                .then(|| format!("fault_around({})", config.fault_around)),
            in_thread: config
                .in_thread
                .then(|| "in_thread_faults(true): faults served by the writers".to_string()),
            spin: config.spin_set.then(|| format!("spin({:?})", config.spin)),
        };
        let mut p = Self::new(config.adaptive && sync, forced);
        if !sync {
            let not = |c: &mut PolicyChoice| {
                *c = PolicyChoice {
                    chosen: "n/a".into(),
                    why: format!("the {} backend has no adaptive policy", backend.name()),
                }
            };
            not(&mut p.report.rearm);
            not(&mut p.report.reprotect);
            not(&mut p.report.fault_around);
            not(&mut p.report.in_thread);
            not(&mut p.report.spin);
        }
        p
    }

    /// Records the service-thread time spent serving `faults` faults.
    pub(super) fn served(&mut self, faults: usize, ns: u64) {
        if faults > 0 {
            let per = ns as f64 / faults as f64;
            self.fault_ns = if self.fault_ns == 0.0 {
                per
            } else {
                self.fault_ns * 0.99 + per * 0.01
            };
        }
    }

    fn new(adaptive: bool, forced: Forced) -> Self {
        let choice = |on: &str, forced: Option<String>| match forced {
            Some(why) => PolicyChoice {
                chosen: "forced".into(),
                why,
            },
            None if adaptive => PolicyChoice {
                chosen: on.into(),
                why: "adaptive default; no measurement yet".into(),
            },
            None => PolicyChoice {
                chosen: "off".into(),
                why: "adaptive(false)".into(),
            },
        };
        Self {
            costs: Costs::default(),
            last_plan: (0, 0),
            fault_ns: 0.0,
            spin: SpinGate::default(),
            report: PolicyReport {
                adaptive,
                rearm: choice("background re-arming", forced.eager),
                rearm_age_us: 0,
                reprotect: choice("per 2 MiB chunk", forced.merge_gap),
                ioctl_ns: 0.0,
                pte_ns: 0.0,
                whole_chunks: 0,
                run_chunks: 0,
                fault_around: choice("off until a region writes sequentially", forced.around),
                fault_around_regions: 0,
                in_thread: choice("service thread", forced.in_thread),
                spin: choice("spin while faults come back to back", forced.spin),
                spin_hit_rate: 0.0,
                fault_rate: 0.0,
                service_limit: 0.0,
            },
        }
    }
}

impl Service {
    /// A cut of the region at `start` closed its epoch (faults held, every page protected):
    /// updates the region's fault-around grant and the report. `tuned`: the re-arming age used
    /// in the epoch and what tuning made of it.
    pub(super) fn close_policy_epoch(
        &mut self,
        start: usize,
        inner: &Arc<RegionInner>,
        tuned: Option<(Duration, String)>,
    ) {
        if self.backend != Backend::SyncUffd {
            return;
        }
        let now = Instant::now();
        let faults = inner
            .counters
            .faults
            .load(std::sync::atomic::Ordering::Relaxed);
        let cfg = &self.shared.config;
        let (adaptive, around_set, merge_set) =
            (cfg.adaptive, cfg.fault_around_set, cfg.merge_gap_set);
        let Some(e) = self.by_start.get_mut(&start) else {
            return;
        };
        let secs = now.duration_since(e.epoch_t0).as_secs_f64().max(1e-6);
        let rate = faults.saturating_sub(e.faults_at_cut) as f64 / secs;
        e.epoch_t0 = now;
        e.faults_at_cut = faults;
        let (seq_faults, seq_in_order) = (e.seq.faults, e.seq.in_order);
        e.seq.close_epoch();
        // The run-ahead restarts with the epoch: the over-report bound is per epoch, and a
        // run-ahead carried over let one write right after the cut un-protect (and report) a
        // whole run of pages never written in the new epoch (found by review, 2026-11-30).
        e.ahead = 0;
        e.next_expected = u64::MAX;
        let granted = e.seq.around;
        let p = &mut self.policy;
        let (ioctl, pte) = p.costs.fit();
        let r = &mut p.report;
        r.ioctl_ns = ioctl;
        r.pte_ns = pte;
        (r.whole_chunks, r.run_chunks) = std::mem::take(&mut p.last_plan);
        r.fault_rate = rate;
        r.service_limit = if p.fault_ns > 0.0 {
            1e9 / p.fault_ns
        } else {
            0.0
        };
        if adaptive && !merge_set {
            r.reprotect.chosen = "per 2 MiB chunk".into();
            r.reprotect.why = format!(
                "measured {ioctl:.0} ns per call + {pte:.2} ns per page: {} chunks whole, {} run by run",
                r.whole_chunks, r.run_chunks
            );
        }
        if let Some((age, why)) = tuned {
            r.rearm_age_us = age.as_micros() as u64;
            if cfg_rearm_adaptive(r) {
                r.rearm.chosen = "background re-arming".into();
                r.rearm.why = why;
            }
        }
        if adaptive && !around_set {
            r.fault_around_regions = u64::from(granted > 0);
            r.fault_around.chosen = if granted > 0 {
                format!("up to {granted} pages")
            } else {
                "off".into()
            };
            r.fault_around.why = format!(
                "{seq_in_order} of {seq_faults} faults in order (needs >= 90% of >= 64); over-report <= min({}, pages the stream wrote) per stream",
                ADAPTIVE_AROUND - 1
            );
        }
        r.spin_hit_rate = p.spin.rate();
        if r.spin.chosen != "forced" && adaptive && !cfg.in_thread {
            let on = p.spin.rate() >= 0.5;
            r.spin.chosen = if on { "spinning" } else { "blocking" }.into();
            r.spin.why = format!(
                "{:.0}% of recent faults arrived within {:?} of the previous batch (spins at >= 50%)",
                p.spin.rate() * 100.0,
                SPIN_WINDOW
            );
        }
        if r.in_thread.chosen != "forced" && adaptive {
            let near = r.service_limit > 0.0 && rate > 0.8 * r.service_limit;
            r.in_thread.chosen = "service thread".into();
            r.in_thread.why = if near {
                format!("fault rate {rate:.0}/s is within 80% of the service thread's limit {:.0}/s: build with in_thread_faults(true) (needs UFFD_FEATURE_SIGBUS at open, not switchable at run time)", r.service_limit)
            } else {
                format!(
                    "fault rate {rate:.0}/s, service thread limit {:.0}/s",
                    r.service_limit
                )
            };
        }
        if let Ok(mut shared) = self.shared.policy.lock() {
            shared.clone_from(r);
        }
    }
}

/// Re-arming is the policy's choice (not forced, not off).
fn cfg_rearm_adaptive(r: &PolicyReport) -> bool {
    r.rearm.chosen != "forced" && r.rearm.chosen != "off"
}

/// The options the user set explicitly (each forces its own choice), with the reason shown.
#[derive(Debug, Default)]
pub(super) struct Forced {
    pub eager: Option<String>,
    pub merge_gap: Option<String>,
    pub around: Option<String>,
    pub in_thread: Option<String>,
    pub spin: Option<String>,
}

/// Per-region sequentiality of the faults served on the service thread in the open epoch.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Sequential {
    pub faults: u64,
    pub in_order: u64,
    /// Adaptive fault-around granted to this region for the open epoch.
    pub around: u64,
}

impl Sequential {
    /// Whether the faults counted so far were sequential: at least 64, at least 90 % in order.
    fn sequential(&self) -> bool {
        self.faults >= 64 && self.in_order * 10 >= self.faults * 9
    }

    /// Counts one served fault (run). Grants fault-around for the rest of the open epoch as
    /// soon as its faults so far are sequential (a writer filling fresh memory gets it in
    /// its first epoch, not only from the next one), and takes it back once they are not
    /// (a region written at random gains nothing from it, only over-reports).
    pub(super) fn note(&mut self, in_order: bool) {
        self.faults += 1;
        self.in_order += u64::from(in_order);
        if self.faults >= 64 {
            self.around = if self.sequential() {
                ADAPTIVE_AROUND
            } else {
                0
            };
        }
    }

    /// Closes an epoch: grants fault-around for the next one if this one was sequential.
    pub(super) fn close_epoch(&mut self) {
        self.around = if self.sequential() {
            ADAPTIVE_AROUND
        } else {
            0
        };
        self.faults = 0;
        self.in_order = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Oracle: every dirty page is covered, nothing lies outside the chunk groups' spans, and
    /// the chosen cost is the minimum of the two per group.
    #[test]
    fn plans_cover_every_run_within_their_chunk() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..300 {
            let mut runs: Vec<(u64, u64)> = Vec::new();
            let mut p = 0u64;
            let density = 1 + round % 40;
            while p < 4 * CHUNK {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p += 1 + x % (100 / density);
                let n = 1 + (x >> 20) % 3;
                if p + n > 4 * CHUNK {
                    break;
                }
                runs.push((p, n));
                p += n;
            }
            for costs in [(1300.0, 10.0), (1300.0, 0.5), (100.0, 50.0)] {
                let plan = plan_chunks(runs.iter().copied(), costs);
                for &(a, n) in &runs {
                    for q in a..a + n {
                        assert!(plan.ranges.iter().any(|&(s, c)| q >= s && q < s + c));
                    }
                }
                for &(s, c) in &plan.ranges {
                    // A range starts on a dirty page and ends on one, within one group.
                    assert!(runs.iter().any(|&(a, _)| a == s));
                    assert!(runs.iter().any(|&(a, n)| a + n == s + c));
                    let last_group_start = runs
                        .iter()
                        .filter(|&&(a, n)| a + n == s + c)
                        .map(|&(a, _)| a)
                        .next()
                        .unwrap();
                    assert_eq!(s / CHUNK, last_group_start / CHUNK);
                }
                assert_eq!(
                    plan.whole_chunks + plan.run_chunks,
                    runs.iter()
                        .map(|r| r.0 / CHUNK)
                        .collect::<std::collections::BTreeSet<_>>()
                        .len() as u64
                );
            }
        }
    }

    #[test]
    fn costs_follow_small_and_large_calls() {
        let mut c = Costs::default();
        for i in 0..400u64 {
            let n = if i % 2 == 0 { 1 + i % 3 } else { 100 + i % 400 };
            c.record(n, 2000 + n * 3);
        }
        let (a, b) = c.fit();
        assert!(
            (a - 2000.0).abs() < 60.0 && (b - 3.0).abs() < 0.6,
            "{a} {b}"
        );
        // Middle-sized calls inform neither estimate.
        c.record(10, 1_000_000);
        assert_eq!(c.fit(), (a, b));
    }

    #[test]
    fn spin_gate_follows_the_hit_rate() {
        let mut g = SpinGate::default();
        let t = Instant::now();
        assert!(!g.spin(), "no sample yet");
        for _ in 0..20 {
            g.served(t);
            g.arrived(t + Duration::from_micros(10));
        }
        g.served(t);
        assert!(g.spin(), "faults within the window: spin ({})", g.rate());
        for _ in 0..20 {
            g.served(t);
            g.missed();
        }
        g.served(t);
        assert!(!g.spin(), "spins that found nothing: stop ({})", g.rate());
        for _ in 0..20 {
            g.served(t);
            g.arrived(t + Duration::from_millis(2));
        }
        g.served(t);
        assert!(!g.spin(), "faults far apart: never spin ({})", g.rate());
        // Only the first event after a batch is a sample.
        g.arrived(t);
        g.arrived(t);
        assert!(g.rate() < 0.5);
    }

    #[test]
    fn sequential_regions_get_fault_around() {
        let mut s = Sequential {
            faults: 100,
            in_order: 95,
            around: 0,
        };
        s.close_epoch();
        assert_eq!(s.around, ADAPTIVE_AROUND);
        s.faults = 100;
        s.in_order = 50;
        s.close_epoch();
        assert_eq!(s.around, 0);
    }

    #[test]
    fn a_sequential_writer_gets_fault_around_within_its_first_epoch() {
        let mut s = Sequential::default();
        for k in 0..63 {
            s.note(k > 0);
            assert_eq!(s.around, 0, "not before 64 faults");
        }
        s.note(true);
        assert_eq!(s.around, ADAPTIVE_AROUND);
        // A random writer never gets it, and a writer that turns random loses it.
        let mut r = Sequential::default();
        for k in 0..1000 {
            r.note(k % 3 == 0);
        }
        assert_eq!(r.around, 0);
        for _ in 0..200 {
            s.note(false);
        }
        assert_eq!(s.around, 0);
    }
}
