//! Reading the userfaultfd: fault batches, non-cooperative events (REMOVE, UNMAP, REMAP), and
//! serving pending faults (dirty bit, preserve for live views, then un-protect and wake).

use std::sync::atomic::Ordering;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use userfaultfd::Event;

use super::{Ev, Fault, Service};
use crate::backend::Backend;
use crate::error::Invalidation;
use crate::sys::{self, Addr};

/// Maximum number of distinct threads tracked in the per-thread fault map.
const MAX_THREADS: usize = 256;

impl Service {
    /// Reads one batch of events. Faults are queued in `pending`; non-cooperative events are
    /// handled at once (the application thread that caused them waits until we read them).
    /// Returns the number of events read.
    pub(super) fn read_batch(&mut self) -> usize {
        let t = Instant::now();
        let mut evs = std::mem::take(&mut self.evs);
        evs.clear();
        // Odd while a read's non-cooperative events are not yet processed: snapshot readers
        // whose copy overlapped this window re-validate (a madvise zap may start the moment
        // the REMOVE event is read). See view.rs.
        self.shared.read_seq.fetch_add(1, Ordering::SeqCst);
        let uffd = self.uffd.as_ref().expect("a userfaultfd backend");
        match uffd.read_events(&mut self.buf) {
            Ok(it) => {
                for e in it {
                    evs.push(match e {
                        // Write-protect faults, and missing faults of lazily armed regions.
                        Ok(Event::Pagefault {
                            kind,
                            rw,
                            addr,
                            thread_id,
                            ..
                        }) => Ev::Fault(Fault {
                            addr: addr as usize,
                            tid: thread_id.as_raw(),
                            t,
                            missing: kind == userfaultfd::FaultKind::Missing,
                            write: rw == userfaultfd::ReadWrite::Write,
                            install: false,
                        }),
                        Ok(Event::Remove { start, end }) => {
                            Ev::Remove(start as usize, end as usize)
                        }
                        Ok(Event::Unmap { start, end }) => Ev::Unmap(start as usize, end as usize),
                        Ok(Event::Remap { from, to, len }) => {
                            Ev::Remap(from as usize, to as usize, len)
                        }
                        Ok(Event::Fork { .. }) | Err(_) => Ev::Other,
                    });
                }
            }
            Err(e) => tracing::warn!(%e, "reading the userfaultfd failed"),
        }
        let n = evs.len();
        if n > 0 {
            self.shared.counters.reads.fetch_add(1, Relaxed);
            self.last_event = t;
        }
        for ev in evs.drain(..) {
            match ev {
                Ev::Fault(f) => {
                    if self.shared.config.trace_faults {
                        tracing::trace!(
                            addr = format_args!("{:#x}", f.addr),
                            tid = f.tid,
                            "write-protect fault"
                        );
                    }
                    self.pending.push(f)
                }
                Ev::Remove(s, e) => self.on_remove(s, e),
                Ev::Unmap(s, e) => self.on_unmap(s, e, Invalidation::Unmapped, None),
                Ev::Remap(from, to, len) => self.on_unmap(
                    from,
                    from.saturating_add(len),
                    Invalidation::Remapped,
                    Some(to),
                ),
                Ev::Other => {
                    self.shared.counters.other_events.fetch_add(1, Relaxed);
                }
            }
        }
        self.evs = evs;
        self.shared.read_seq.fetch_add(1, Ordering::SeqCst);
        n
    }

    /// Regions overlapping `[start, end)`, by start address.
    pub(super) fn overlapping(&self, start: usize, end: usize) -> Vec<usize> {
        let first = self
            .by_start
            .range(..=start)
            .next_back()
            .map(|(k, _)| *k)
            .unwrap_or(start);
        self.by_start
            .range(first..end)
            .filter(|(_, e)| e.inner.end() > start)
            .map(|(k, _)| *k)
            .collect()
    }

    pub(super) fn on_remove(&mut self, start: usize, end: usize) {
        self.shared.counters.remove_events.fetch_add(1, Relaxed);
        self.before_remove(start, end);
        tracing::debug!(
            start = format_args!("{start:#x}"),
            end = format_args!("{end:#x}"),
            "REMOVE event"
        );
        for key in self.overlapping(start, end) {
            let Some(entry) = self.by_start.get_mut(&key) else {
                continue;
            };
            if entry.populated.is_some() {
                self.on_remove_lazy(key, start, end);
                continue;
            }
            let views = entry.live_views();
            let inner = &entry.inner;
            let s = start.max(inner.start);
            let e = end.min(inner.end());
            let first = inner.page_of(s);
            let last = inner.page_of(e - 1);
            // The content of these pages becomes zero: a write, as far as the dirty set goes.
            inner
                .dirty
                .set_range(first as usize, (last - first + 1) as usize);
            inner.counters.remove_events.fetch_add(1, Relaxed);
            inner.add_suspect(first, last - first + 1);
            if let Some(eg) = entry.eager.as_mut() {
                eg.forget(first, last - first + 1);
            }
            // Content at earlier cuts that was not preserved yet is gone (the zap may already
            // be running): readers get `Discarded`, never zeros.
            for v in &views {
                for p in first..=last {
                    v.mark_lost(p);
                }
            }
        }
    }

    pub(super) fn on_unmap(
        &mut self,
        start: usize,
        end: usize,
        why: Invalidation,
        moved_to: Option<usize>,
    ) {
        let c = &self.shared.counters;
        match why {
            Invalidation::Unmapped => c.unmap_events.fetch_add(1, Relaxed),
            Invalidation::Remapped => c.remap_events.fetch_add(1, Relaxed),
            Invalidation::Dropped => 0,
        };
        tracing::debug!(
            start = format_args!("{start:#x}"),
            end = format_args!("{end:#x}"),
            ?why,
            "region invalidated"
        );
        for key in self.overlapping(start, end) {
            if let Some(id) = self.by_start.get(&key).map(|e| e.inner.id) {
                // The memory is gone (or moved): clones sharing its pages cannot get them.
                self.release_lineage(id, false);
            }
            let Some(entry) = self.by_start.remove(&key) else {
                continue;
            };
            let inner = entry.inner;
            self.by_id.remove(&inner.id);
            inner.invalidate(why);
            // Stop tracking what is left of the range (and the moved part, for mremap), so the
            // application's later writes there never wait for us.
            let _ = self.u().unregister(Addr(inner.start).ptr(), inner.len);
            if let Some(to) = moved_to {
                let _ = self.u().unregister(Addr(to).ptr(), end - start);
            }
            if let Some((_, slot)) = entry.hook {
                sys::sigbus::retire(slot);
            }
        }
    }

    /// Services every pending fault: per region, sorted and coalesced into runs of adjacent
    /// pages; each run's dirty bits are set, then the run is un-protected (waking its writers).
    pub(super) fn service_pending(&mut self) {
        let mut faults = std::mem::take(&mut self.pending);
        // Missing faults first (lazily armed regions): arming changes no content and a
        // reader may be waiting on one; write-protect faults may then wait for readers.
        if faults.iter().any(|f| f.missing) {
            faults = self.serve_missing(faults);
        }
        faults.sort_unstable_by_key(|f| f.addr);
        let served_from = Instant::now();
        let served = faults.len();
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        counters.faults.fetch_add(faults.len() as u64, Relaxed);
        self.tids.clear();
        let mut i = 0;
        while i < faults.len() {
            let f = faults[i];
            let Some(key) = self.region_key(f.addr) else {
                // A fault on no live region: a stale event for a range that was just
                // unregistered or invalidated. Wake the writer; it retries untracked.
                let ps = sys::base_page_size();
                let page = f.addr & !(ps - 1);
                let _ = self.u().remove_write_protection(Addr(page).ptr(), ps, true);
                let _ = self.u().wake(Addr(page).ptr(), ps);
                counters.foreign_faults.fetch_add(1, Relaxed);
                i += 1;
                continue;
            };
            let entry = self
                .by_start
                .get_mut(&key)
                .expect("region_key returned a live key");
            let inner = Arc::clone(&entry.inner);
            let first = inner.page_of(f.addr);
            let mut last = first;
            let mut j = i;
            while j < faults.len() && faults[j].addr < inner.end() {
                let p = inner.page_of(faults[j].addr);
                if p > last + 1 {
                    break;
                }
                last = p;
                j += 1;
            }
            // Fault-around: a writer walking pages in order gets a growing run un-protected
            // ahead of it (preserved first for every view that needs them). Forced by
            // `fault_around(n)`, else granted per epoch by the adaptive policy to regions
            // whose faults were sequential.
            let in_order = first == entry.next_expected;
            entry.seq.note(in_order);
            let cfg = &shared.config;
            let around = if cfg.fault_around_set || !cfg.adaptive {
                cfg.fault_around
            } else {
                entry.seq.around
            };
            if around == 0 {
                entry.next_expected = last + 1;
                entry.ahead = 0; // a later grant ramps up from 1 again (over-report bound)
            } else {
                entry.ahead = if in_order {
                    (entry.ahead * 2).clamp(1, around)
                } else {
                    0
                };
                let mut ext = 0;
                // (A set dirty bit does not mean writable: a snapshot re-protects dirty pages
                // without clearing their bits. Un-protecting a writable page is a no-op.)
                while ext + 1 < entry.ahead && last + 1 < inner.page_count {
                    last += 1;
                    ext += 1;
                }
                entry.next_expected = last + 1;
            }
            // Copy-before-write for every view that still needs these pages. The pages are
            // still protected (their writers blocked), so the copies are their content at the cut.
            let views = entry.live_views();
            if !views.is_empty() {
                let gen = shared.budget.gen.load(Ordering::SeqCst);
                // A suspect page must still be protected, except an empty page of a lazily
                // armed region that never got content from us (not populated): it is zero, as
                // at the cut (the rule `mark_unprotected` uses).
                let populated = entry.populated.as_ref();
                let verify = |p: u64| {
                    !inner.is_suspect(p)
                        || populated.is_some_and(|pop| !pop.contains(p))
                        || shared.verify_protected(&inner, p)
                };
                let mut ok = true;
                'pages: for p in first..=last {
                    for v in &views {
                        if !v.preserve(p, verify) {
                            ok = false;
                            break 'pages;
                        }
                    }
                }
                if !ok {
                    // Budget full: keep the writers blocked; retried when readers free budget.
                    shared.counters.deferred.fetch_add(1, Relaxed);
                    shared.budget.waiting.store(true, Ordering::SeqCst);
                    self.deferred_gen = gen;
                    self.deferred.extend_from_slice(&faults[i..j]);
                    i = j;
                    continue;
                }
            }
            // Fork clones that still share these pages get their own copies BEFORE the
            // parent's pages are un-protected (see service/fork.rs).
            if self.family.has_children(inner.id) {
                self.privatise(&inner, first, last);
            }
            self.family.unprotecting(inner.id, first, last);
            let Some(entry) = self.by_start.get_mut(&key) else {
                // Invalidated while events were read: the unregister woke its writers.
                i = j;
                continue;
            };
            let count = last - first + 1;
            // Armed bits cleared BEFORE un-protect (invariant: armed => protected).
            if let Some(eg) = entry.eager.as_mut() {
                let refaults = eg.unprotecting(first, last, f.t);
                counters.refaults.fetch_add(refaults, Relaxed);
                if self.eager_due.is_none() {
                    self.eager_due = Some(f.t + eg.age);
                }
            }
            // Dirty bit BEFORE un-protect: the write may proceed only once it is recorded.
            inner.dirty.set_range(first as usize, count as usize);
            inner.counters.faults.fetch_add((j - i) as u64, Relaxed);
            inner
                .counters
                .last_tid
                .store(faults[j - 1].tid as u64, Relaxed);
            counters.wp_faults.fetch_add((j - i) as u64, Relaxed);
            let addr = inner.start + first as usize * inner.page_size;
            // Missing write faults: their pages get their content writable now, after the
            // dirty bit and the views' copies (lazy.rs). A one-page run is then done (the
            // install woke its writers); a longer one is un-protected and woken as a whole.
            let mut woken = false;
            if count > 1 && entry_is_plain_lazy(&self.by_start, key) {
                // Fault-around in a lazily armed region: its empty pages are installed too
                // (zeros, writable; dirty bits and views' copies are done above), so a writer
                // filling fresh memory in order takes one fault per run, not one per page.
                self.install_zeros_writable(&inner, first, last);
                // A faulting page `populated` holds was skipped there: it may be empty (its
                // content lost), and the writer would only fault on it again.
                let installs = install_addrs(&faults[i..j]);
                for a in installs {
                    if self.may_have_content(key, inner.page_of(a)) {
                        self.install_for_write(&inner, a, false);
                    }
                }
            } else if faults[i..j].iter().any(|f| f.install) {
                let single = count == 1;
                let installs = install_addrs(&faults[i..j]);
                for a in installs {
                    woken |= self.install_for_write(&inner, a, single) && single;
                }
            }
            if !woken {
                self.unprotect(addr, count as usize * inner.page_size);
            }
            let done = Instant::now();
            for f in &faults[i..j] {
                counters
                    .service_ns
                    .record(done.duration_since(f.t).as_nanos() as u64);
                match self.tids.iter_mut().find(|(t, _)| *t == f.tid) {
                    Some((_, n)) => *n += 1,
                    None => self.tids.push((f.tid, 1)),
                }
            }
            i = j;
        }
        if !self.tids.is_empty() {
            if let Ok(mut m) = self.shared.threads.lock() {
                for &(tid, n) in &self.tids {
                    if m.len() < MAX_THREADS || m.contains_key(&tid) {
                        *m.entry(tid).or_insert(0) += n;
                    }
                }
            }
        }
        self.policy
            .served(served, served_from.elapsed().as_nanos() as u64);
        faults.clear();
        // Keep the larger allocation; anything queued meanwhile is appended.
        faults.append(&mut self.pending);
        self.pending = faults;
    }

    pub(super) fn region_key(&self, addr: usize) -> Option<usize> {
        let (k, e) = self.by_start.range(..=addr).next_back()?;
        (addr < e.inner.end() && e.inner.invalidation().is_none()).then_some(*k)
    }

    /// Un-protects and wakes. On `EAGAIN` (a non-cooperative event is pending: the kernel
    /// refuses protection changes until we read it) reads events and retries.
    pub(super) fn unprotect(&mut self, addr: usize, len: usize) {
        for attempt in 0.. {
            match self
                .u()
                .remove_write_protection(Addr(addr).ptr(), len, true)
                .map_err(|e| sys::errno_of(&e))
            {
                Ok(()) => {
                    self.shared.counters.unprotect_ioctls.fetch_add(1, Relaxed);
                    return;
                }
                Err(Errno::EAGAIN) if attempt < 100_000 => self.pump(),
                Err(e) => {
                    // The range went away (munmap raced with the fault): wake the writer; the
                    // kernel re-evaluates its access on retry.
                    tracing::debug!(addr = format_args!("{addr:#x}"), %e, "un-protect failed; waking");
                    let _ = self.u().wake(Addr(addr).ptr(), len);
                    return;
                }
            }
        }
    }

    /// Protects `[addr, addr+len)`, reading (and holding) events on `EAGAIN`.
    pub(super) fn protect(&mut self, addr: usize, len: usize) -> Result<(), Errno> {
        if self.backend == Backend::Mprotect {
            sys::mprotect(addr, len, false)?;
            self.shared.counters.protect_ioctls.fetch_add(1, Relaxed);
            return Ok(());
        }
        for attempt in 0.. {
            match self
                .u()
                .write_protect(Addr(addr).ptr(), len)
                .map_err(|e| sys::errno_of(&e))
            {
                Ok(()) => {
                    self.shared.counters.protect_ioctls.fetch_add(1, Relaxed);
                    return Ok(());
                }
                Err(Errno::EAGAIN) if attempt < 100_000 => self.pump(),
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EAGAIN)
    }

    /// Reads pending events without servicing faults (they stay in `pending`).
    pub(super) fn pump(&mut self) {
        if self.read_batch() == 0 {
            std::thread::yield_now();
        }
    }
}

/// Whether the region at `key` is lazily armed and not a fork clone (its empty pages are
/// zeros; a clone's are inherited).
fn entry_is_plain_lazy(
    by_start: &std::collections::BTreeMap<usize, super::Entry>,
    key: usize,
) -> bool {
    by_start
        .get(&key)
        .is_some_and(|e| e.populated.is_some() && e.inner.lineage.is_none())
}

/// The addresses of the missing write faults among `faults` (their pages get installed).
fn install_addrs(faults: &[super::Fault]) -> Vec<usize> {
    faults
        .iter()
        .filter(|f| f.install)
        .map(|f| f.addr)
        .collect()
}
