//! Cuts, snapshots, rollback re-arm and `prepare_overwrite`: everything that re-protects
//! dirty pages and publishes a view while faults are held.

use std::sync::atomic::Ordering;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;

use super::{Entry, Service};
use crate::backend::Backend;
use crate::dirty::{plan_ranges, DirtySet};
use crate::epoch::{CutStats, Epoch};
use crate::error::{CutError, PublicErrno};
use crate::range::RegionInner;
use crate::snapshot::Snapshot;
use crate::stats::{EpochStat, HISTORY};
use crate::sys;
use crate::view::{Mode, View};

/// Holds a region's in-thread faults while a cut or snapshot runs (see `sys::sigbus`): raised
/// on creation, lowered on drop, so every return path releases the held writers.
struct Holding(Option<usize>);

impl Holding {
    fn new(slot: Option<usize>) -> Self {
        if let Some(i) = slot {
            sys::sigbus::set_cutting(i, true);
        }
        Self(slot)
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            sys::sigbus::set_cutting(i, false);
        }
    }
}

impl Service {
    /// Re-protects the coalesced runs of `set` (gaps up to `merge_gap_pages` merged); returns
    /// the number of protect calls. Faults read meanwhile stay pending until the caller's
    /// command returns.
    pub(super) fn reprotect_runs(
        &mut self,
        inner: &RegionInner,
        set: &DirtySet,
    ) -> Result<u64, CutError> {
        if set.is_empty() {
            return Ok(0); // (`runs` would scan every word of a huge, clean region)
        }
        self.reprotect_run_list(inner, set.runs())
    }

    /// [`reprotect_runs`](Self::reprotect_runs) of sorted, coalesced runs.
    pub(super) fn reprotect_run_list(
        &mut self,
        inner: &RegionInner,
        runs: impl Iterator<Item = (u64, u64)>,
    ) -> Result<u64, CutError> {
        let mut calls = 0;
        let cfg = &self.shared.config;
        let ranges = if cfg.adaptive && !cfg.merge_gap_set && self.backend == Backend::SyncUffd {
            // Per 2 MiB chunk: one call per run or one over the dirty span, from measured costs.
            let plan = super::policy::plan_chunks(runs, self.policy.costs.fit());
            self.policy.last_plan = (plan.whole_chunks, plan.run_chunks);
            plan.ranges
        } else {
            plan_ranges(runs, cfg.merge_gap_pages)
        };
        for (first, count) in ranges {
            let addr = inner.start + first as usize * inner.page_size;
            let len = count as usize * inner.page_size;
            // (A lazily armed region needs no populate: its empty pages take missing faults,
            // and populating them from this thread would wait on itself.)
            let populated = if inner.lazy.is_some() {
                Ok(())
            } else {
                self.populate_if_needed(addr, len)
            };
            let t = Instant::now();
            let r = populated.and_then(|()| self.protect(addr, len));
            if r.is_ok() {
                self.policy
                    .costs
                    .record(count, t.elapsed().as_nanos() as u64);
            }
            if let Err(errno) = r {
                return Err(match inner.invalidation() {
                    Some(reason) => CutError::Invalidated {
                        start: inner.start,
                        reason,
                    },
                    None => CutError::Protect {
                        errno: errno.public(),
                    },
                });
            }
            calls += 1;
        }
        Ok(calls)
    }

    pub(super) fn cut(&mut self, id: u64) -> Result<Epoch, CutError> {
        let t0 = Instant::now();
        let (start, inner) = self.region_by_id(id)?;
        let suspect = inner.suspect_runs();
        let span = tracing::debug_span!(
            "cut",
            start = format_args!("{start:#x}"),
            epoch = inner.epoch.load(Relaxed)
        );
        let _g = span.enter();
        // In-thread mode: from here on, faults on this region wait until the cut is done.
        let _held = Holding::new(self.hook_slot(start));

        // 1. Pages the kernel may have un-protected behind our back (madvise zaps).
        let mut scan_ioctls = 0;
        for &(first, count) in &suspect {
            scan_ioctls += self.mark_unprotected(&inner, first, count);
        }
        // 2. Harvest: the epoch's dirty set; the bitmap starts the next epoch empty.
        if self.backend == Backend::Mprotect {
            // The application may have made tracked pages writable itself (mprotect): the
            // handler would never see their writes. Any writable mapping inside the region
            // whose pages are not dirty is such a case: report it (over-report at worst) and
            // let this cut re-protect it.
            mark_writable_mappings(&inner);
        }
        let harvest = inner.dirty.harvest();
        let (mut words, mut count) = (harvest.words, Some(harvest.count));
        if self.backend == Backend::Mprotect {
            // Signal handlers that set a bit we just harvested must finish their un-protect
            // before we re-protect, or a page could end up writable with its bit clear.
            sys::segv::synchronize();
        }
        if self.backend == Backend::AsyncUffd {
            // The kernel resolved the writes itself: one PAGEMAP_SCAN walk reports and
            // re-protects (atomically per page) every written page.
            let harvested = self
                .async_harvest(&inner, &mut words)
                .and_then(|n| Ok(n + self.private_file_changes(start, &inner, &mut words)?));
            match harvested {
                Ok(n) => scan_ioctls += n,
                Err(errno) => {
                    inner.dirty.restore(&words);
                    return Err(CutError::Protect {
                        errno: errno.public(),
                    });
                }
            }
            count = None; // bits were added anywhere: count them all
        } else if self.backend == Backend::SyncUffd && inner.cow_file {
            // COW copies the kernel dropped without a fault (service/cow.rs).
            match self.private_file_changes(start, &inner, &mut words) {
                Ok(n) => scan_ioctls += n,
                Err(errno) => {
                    inner.dirty.restore(&words);
                    return Err(CutError::Protect {
                        errno: errno.public(),
                    });
                }
            }
            count = None;
        }
        let set = match count {
            Some(n) => DirtySet::from_words_counted(inner.page_size, inner.page_count, words, n),
            None => DirtySet::from_words(inner.page_size, inner.page_count, words),
        };
        // 3. Re-protect the dirty runs (faults read meanwhile stay pending until we return),
        // except pages eager re-protection already re-armed.
        let (protect_ioctls, pre_protected) = if self.backend == Backend::AsyncUffd {
            (0, 0)
        } else {
            match self.reprotect_dirty(start, &inner, &set, &suspect) {
                Ok(r) => r,
                Err(e) => {
                    // Never lose dirty bits: put the whole harvest back (pages already
                    // re-protected are over-reported next time, which is allowed).
                    inner.dirty.restore(set.words());
                    return Err(e);
                }
            }
        };
        // Every page of the region is protected now.
        let tuned = self.eager_of(start).map(|eg| {
            let t = eg.tune();
            eg.reset(set.words());
            t
        });
        self.close_policy_epoch(start, &inner, tuned);
        let number = inner.epoch.fetch_add(1, Ordering::AcqRel);
        // The epoch's pages can be read as they were at this instant until consumed.
        let view = if set.is_empty() || self.backend != Backend::SyncUffd {
            None
        } else {
            Some(self.attach_view(start, &inner, Some(&set), Mode::Consume))
        };
        if let Ok(mut h) = inner.counters.history.lock() {
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(EpochStat {
                epoch: number,
                pages: set.len() as u64,
            });
        }
        self.shared.counters.cuts.fetch_add(1, Relaxed);
        let duration = t0.elapsed();
        tracing::debug!(
            pages = set.len(),
            protect_ioctls,
            scan_ioctls,
            ?duration,
            "cut"
        );
        Ok(Epoch {
            number,
            dirty: set,
            stats: CutStats {
                protect_ioctls,
                scan_ioctls,
                duration,
                pre_protected,
            },
            view,
            backend: self.backend,
            region: Arc::clone(&inner),
        })
    }

    /// A whole-region snapshot: re-protects the pages written in the current epoch without
    /// closing it (their dirty bits stay), then every page is needed by a retain-mode view.
    pub(super) fn snapshot(&mut self, id: u64) -> Result<Snapshot, CutError> {
        if self.backend != Backend::SyncUffd {
            return Err(CutError::Unsupported {
                what: "snapshot",
                backend: self.backend.name(),
            });
        }
        let (start, inner) = self.region_by_id(id)?;
        let _g = tracing::debug_span!("snapshot", start = format_args!("{start:#x}")).entered();
        let _held = Holding::new(self.hook_slot(start));
        self.protect_open_epoch(start, &inner, None)?;
        Ok(Snapshot {
            view: self.attach_view(start, &inner, None, Mode::Retain),
        })
    }

    /// Write-protects every page written in the open epoch without closing it (dirty bits
    /// stay): afterwards every page of the region is protected, so the next write to any page
    /// faults. The instant of a snapshot or a fork.
    ///
    /// `only`: a bitmap of the pages that may be writable (a fork's record of the pages
    /// un-protected since its region's previous fork); dirty pages outside it are protected
    /// already and skipped. Suspect runs are always re-protected.
    pub(super) fn protect_open_epoch(
        &mut self,
        start: usize,
        inner: &Arc<RegionInner>,
        only: Option<&[u64]>,
    ) -> Result<(), CutError> {
        // (In-thread mode: the caller holds the handlers.)
        // Pages the kernel un-protected behind our back (a madvise zap that ran after its
        // REMOVE event was read) are dirty: re-protect them too, as a cut does.
        let suspect = inner.suspect_runs();
        for &(first, count) in &suspect {
            self.mark_unprotected(inner, first, count);
        }
        let mut words = inner.dirty.snapshot();
        if let Some(only) = only {
            let mut mask = only.to_vec();
            for &(first, count) in &suspect {
                crate::pagemap::set_dirty_bits(&mut mask, first..=first + count - 1);
            }
            words.iter_mut().zip(&mask).for_each(|(w, m)| *w &= m);
        }
        let dirty = DirtySet::from_words(inner.page_size, inner.page_count, words);
        self.reprotect_dirty(start, inner, &dirty, &suspect)?;
        // Every dirty page is protected now (armed => protected holds).
        if let Some(eg) = self.eager_of(start) {
            for (first, count) in dirty.runs() {
                eg.arm(first, count);
            }
        }
        Ok(())
    }

    /// Rollback's second step: re-protects the pages just rewritten from `view`'s copies
    /// (faults held meanwhile), then lets the view mark those still equal to their copy CLEAN.
    /// Dirty bits stay set (the pages were written in this epoch).
    pub(super) fn rearm(&mut self, id: u64, view: &View, pages: &[u64]) -> Result<(), CutError> {
        let requeue = |e| {
            view.requeue(pages);
            e
        };
        let (start, inner) = self.region_by_id(id).map_err(requeue)?;
        let _held = Holding::new(self.hook_slot(start));
        let mut set = DirtySet::empty(inner.page_size, inner.page_count);
        for &p in pages {
            set.insert(p);
        }
        self.reprotect_runs(&inner, &set).map_err(requeue)?;
        view.mark_clean(pages);
        Ok(())
    }

    /// `Region::prepare_overwrite`: preserve every page live views still need, mark every
    /// page dirty, then lift the protection of the whole range (dirty bit before un-protect).
    pub(super) fn prepare_overwrite(&mut self, id: u64) -> Result<(), CutError> {
        let (start, inner) = self.region_by_id(id)?;
        let _held = Holding::new(self.hook_slot(start));
        // Fork clones get their copies first; a clone gets what it still shares.
        self.before_overwrite(&inner);
        let views = self
            .by_start
            .get_mut(&start)
            .map(Entry::live_views)
            .unwrap_or_default();
        let shared = Arc::clone(&self.shared);
        let verify = |p: u64| !inner.is_suspect(p) || shared.verify_protected(&inner, p);
        for p in 0..inner.page_count {
            for v in &views {
                if !v.preserve(p, verify) {
                    return Err(CutError::CopyBudget {
                        budget: shared.budget.limit,
                    });
                }
            }
        }
        let n = inner.page_count;
        inner.dirty.set_range(0, n as usize);
        if let Some(eg) = self.eager_of(start) {
            eg.forget(0, n);
        }
        if self.backend == Backend::Mprotect {
            sys::mprotect(start, inner.len, true).map_err(|errno| CutError::Protect {
                errno: errno.public(),
            })?;
        } else {
            if inner.lazy.is_some() {
                // Empty pages would each take a missing fault: give them the zero page now
                // (written pages then copy it on write, at memory speed).
                // Every page counts as populated even if the fill fails partway: pages that
                // got the zero page are present and writable (review of 2026-11-30).
                if let Some(c) = self
                    .by_start
                    .get_mut(&start)
                    .and_then(|e| e.populated.as_mut())
                {
                    c.set_all(inner.page_count);
                }
                // (A REMOVE read while the fill waits forgets pages of its range: `zero_fill`
                // records again the pages it has yet to fill.)
                self.zero_fill(start, inner.len)
                    .map_err(|errno| CutError::Protect {
                        errno: errno.public(),
                    })?;
            }
            self.unprotect(start, inner.len);
        }
        Ok(())
    }

    /// Re-protects the pages of `set` that eager re-protection has not re-armed (all of them
    /// without it; armed bits inside `suspect` runs are not trusted). Returns the protect
    /// calls made and the pages skipped as already armed.
    pub(super) fn reprotect_dirty(
        &mut self,
        start: usize,
        inner: &RegionInner,
        set: &DirtySet,
        suspect: &[(u64, u64)],
    ) -> Result<(u64, u64), CutError> {
        match self.eager_of(start) {
            Some(eg) => {
                let (runs, skipped) = eg.unarmed_runs(set.words(), suspect);
                Ok((self.reprotect_run_list(inner, runs.into_iter())?, skipped))
            }
            None => Ok((self.reprotect_runs(inner, set)?, 0)),
        }
    }

    /// Creates the copy-before-write view of `needed` pages and registers it with the region
    /// (and, in in-thread mode, with the `SIGBUS` handler's list).
    pub(super) fn attach_view(
        &mut self,
        start: usize,
        inner: &Arc<RegionInner>,
        needed: Option<&DirtySet>,
        mode: Mode,
    ) -> crate::view::ViewHandle {
        let v = Arc::new(View::new(
            Arc::clone(inner),
            Arc::clone(&self.shared),
            needed,
            mode,
        ));
        if let Some(e) = self.by_start.get_mut(&start) {
            e.views.push(Arc::downgrade(&v));
            if let Some((h, _)) = &e.hook {
                h.prune();
                h.views.update(|l| l.push(Arc::clone(&v)));
            }
        }
        crate::view::ViewHandle(v)
    }

    pub(super) fn hook_slot(&self, start: usize) -> Option<usize> {
        self.by_start
            .get(&start)?
            .hook
            .as_ref()
            .map(|(_, slot)| *slot)
    }

    /// In-thread mode: lets go of views that only the handler's list still holds.
    pub(super) fn prune_hooks(&self) {
        for e in self.by_start.values() {
            if let Some((h, _)) = &e.hook {
                h.prune();
            }
        }
    }

    /// The async backend's harvest over the whole region ([`crate::pagemap::Pagemap::harvest`]): every written
    /// page is reported in `words` and write-protected again in the same walk.
    pub(super) fn async_harvest(
        &mut self,
        inner: &RegionInner,
        words: &mut [u64],
    ) -> Result<u64, Errno> {
        let pm = self.shared.pagemap.as_ref().ok_or(Errno::ENOTTY)?;
        pm.harvest(
            (inner.start, inner.end(), inner.page_size),
            words,
            &mut self.async_out,
            &self.shared.counters.scan_ioctls,
        )
    }

    /// Sets the dirty bit of every page in the run that is not write-protected (see
    /// [`crate::pagemap::Pagemap::unprotected`]). Returns the number of `PAGEMAP_SCAN` ioctls made. Without
    /// `PAGEMAP_SCAN`, marks the whole run (over-report).
    pub(super) fn mark_unprotected(&mut self, inner: &RegionInner, first: u64, count: u64) -> u64 {
        let start = inner.start + first as usize * inner.page_size;
        let end = start + count as usize * inner.page_size;
        let Some(pm) = self.shared.pagemap.as_ref() else {
            inner.dirty.set_range(first as usize, count as usize);
            return 0;
        };
        let base = (inner.start, inner.page_size);
        let mut changed = Vec::new();
        let r = pm.unprotected(base, start, end, &mut self.scan_out, |pages| {
            changed.push(pages.into_inner());
        });
        // Pages changed behind our back (written without a fault, or emptied): dirty, and
        // LOST for every view that still needs their earlier content (a PRESERVED page keeps
        // its copy). In a lazily armed region an empty page that never got content from us
        // (not populated) is zero and unchanged: neither.
        let (views, populated) = match self.by_start.get_mut(&inner.start) {
            Some(e) => (e.live_views(), e.populated.as_ref()),
            None => (Vec::new(), None),
        };
        for (pa, pb) in changed {
            for p in pa..=pb {
                if populated.is_some_and(|pop| !pop.contains(p)) {
                    continue;
                }
                inner.dirty.set_range(p as usize, 1);
                for v in &views {
                    v.mark_lost(p);
                }
            }
        }
        match r {
            Ok(n) => {
                self.shared.counters.scan_ioctls.fetch_add(n, Relaxed);
                n
            }
            Err(e) => {
                tracing::debug!(%e, "PAGEMAP_SCAN failed; marking the suspect run dirty");
                inner.dirty.set_range(first as usize, count as usize);
                1
            }
        }
    }
}

/// Mprotect backend: sets the dirty bits of every page of `inner` that lies in a writable
/// mapping (per `/proc/self/maps`). If the maps cannot be read, marks the whole region
/// (over-report, never under-report).
fn mark_writable_mappings(inner: &RegionInner) {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        inner.dirty.set_range(0, inner.page_count as usize);
        return;
    };
    for v in crate::maps::parse_smaps(&maps) {
        if !v.writable || v.end <= inner.start || v.start >= inner.end() {
            continue;
        }
        let a = inner.page_of(v.start.max(inner.start));
        let b = inner.page_of(v.end.min(inner.end()) - 1);
        inner.dirty.set_range(a as usize, (b - a + 1) as usize);
    }
}
