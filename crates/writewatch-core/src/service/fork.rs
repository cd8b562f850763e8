//! The service-thread side of `Region::fork` (see `crate::fork`): registering a clone at one
//! instant, and giving clones their own copy of a page before the page they share changes.
//!
//! Hooks into the rest of the service thread (each one call):
//! - `service_pending` (events.rs): `privatise` the run about to be un-protected;
//! - `serve_missing` (lazy.rs): a clone's missing fault installs its inherited content
//!   (`serve_missing_clone`);
//! - `on_remove` (events.rs): `before_remove`;
//! - `unregister`, `on_unmap`, shutdown, `prepare_overwrite`: `release_lineage`,
//!   `materialise_all`, `before_overwrite`.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use nix::errno::Errno;

use super::Service;
use crate::backend::Backend;
use crate::error::ForkError;
use crate::range::RegionInner;
use crate::sys::{self, Addr};

/// Parent id -> its live clones (registered with this service thread); and, per region
/// forked at least once, the pages un-protected since its last fork (so the next fork
/// re-protects only those, not every page of the open epoch).
#[derive(Default)]
pub(super) struct Family(HashMap<u64, Vec<Arc<RegionInner>>>, HashMap<u64, Vec<u64>>);

impl Family {
    fn children(&self, parent: u64) -> Option<Vec<Arc<RegionInner>>> {
        self.0.get(&parent).filter(|v| !v.is_empty()).cloned()
    }

    /// Service thread, before un-protecting `first..=last` of region `id` (every un-protect
    /// path: fault service, fault-around; `prepare_overwrite` marks all).
    pub(super) fn unprotecting(&mut self, id: u64, first: u64, last: u64) {
        if let Some(w) = self.1.get_mut(&id) {
            crate::pagemap::set_dirty_bits(w, first..=last);
        }
    }

    /// Whether `parent` has live clones (the fast check on every serviced fault run).
    pub(super) fn has_children(&self, parent: u64) -> bool {
        self.0.get(&parent).is_some_and(|v| !v.is_empty())
    }
}

/// Where a page given to a clone comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The parent's page is about to change (its write fault, a zap, an overwrite).
    Privatise,
    /// The parent goes away (drop, shutdown) or the clone is about to be overwritten.
    Materialise,
}

impl Service {
    /// `Command::Fork`: write-protects every page of region `id` (its open epoch stays
    /// open, as for a snapshot), then registers `child`. Runs between two event reads, so
    /// the instant of the fork is a consistent cut, exactly as a snapshot's.
    pub(super) fn fork(&mut self, id: u64, child: Arc<RegionInner>) -> Result<(), ForkError> {
        if self.backend != Backend::SyncUffd {
            return Err(ForkError::Unsupported {
                backend: self.backend.name(),
            });
        }
        let (start, inner) = self.region_by_id(id).map_err(|e| match e {
            crate::error::CutError::Invalidated { start, reason } => {
                ForkError::Invalidated { start, reason }
            }
            e => ForkError::Protect(e),
        })?;
        let _g = tracing::debug_span!("fork", start = format_args!("{start:#x}")).entered();
        // After a first fork, only the pages un-protected since need protecting again.
        let only = self.family.1.remove(&id);
        if let Err(e) = self.protect_open_epoch(start, &inner, only.as_deref()) {
            if let Some(w) = only {
                self.family.1.insert(id, w);
            }
            return Err(ForkError::Protect(e));
        }
        self.family
            .1
            .insert(id, vec![0u64; (inner.page_count as usize).div_ceil(64)]);
        // Every page of the parent is protected (or empty, in a lazily armed parent: its
        // first access is a missing fault, served before its write). The clone's first epoch
        // reports every page: its content is new to the tracker (as for `adopt`), so a
        // checkpoint of the clone starts from a full image.
        // The clone gets the eager re-arming bits every region of this tracker gets (the
        // adaptive policy, design.md section 10); in-thread trackers cannot fork (`fork::clone`).
        let arm = self
            .eager_on()
            .then(|| Arc::new(crate::armed::ArmBits::new(child.page_count)));
        self.register_uffd(&child, true, arm)
            .map_err(ForkError::Map)?;
        self.family.0.entry(id).or_default().push(child);
        Ok(())
    }

    /// Gives every clone of `parent` that still shares a page of `first..=last` its own copy,
    /// before the caller lets the parent's pages change. The parent's pages are protected
    /// (their writers blocked), so the copies are the content at the fork. Each parent page
    /// is read once for all its clones.
    pub(super) fn privatise(&mut self, parent: &Arc<RegionInner>, first: u64, last: u64) {
        let Some(kids) = self.family.children(parent.id) else {
            return;
        };
        let last = last.min(parent.page_count.saturating_sub(1));
        let mut buf = std::mem::take(&mut self.page_buf);
        buf.resize(parent.page_size, 0);
        for p in first..=last {
            let needy: Vec<&Arc<RegionInner>> = kids.iter().filter(|k| inherits(k, p)).collect();
            if needy.is_empty() {
                continue;
            }
            parent.copy_page(p, &mut buf);
            for kid in needy {
                self.give(kid, p, &buf);
            }
        }
        self.page_buf = buf;
    }

    /// Gives `kid`'s page `p`, if it is still shared, its own copy of `from`'s page (the
    /// kid's parent, or the kid itself when it materialises its inheritance).
    fn give_page(&mut self, kid: &Arc<RegionInner>, from: &RegionInner, p: u64, why: Why) {
        let Some(l) = kid.lineage.as_ref() else {
            return;
        };
        if l.owns(p) {
            return;
        }
        let mut buf = std::mem::take(&mut self.page_buf);
        buf.resize(kid.page_size, 0);
        if why == Why::Materialise && std::ptr::eq(from, &**kid) {
            // The kid's own inheritance: its parent's page (the kid's page is empty).
            l.copy(p, &mut buf, |b| b.fill(0));
        } else {
            from.copy_page(p, &mut buf);
        }
        self.give(kid, p, &buf);
        self.page_buf = buf;
    }

    /// Installs `content` as `kid`'s page `p` (unless it became owned meanwhile) and marks
    /// it owned. An all-zero page is not installed: the kid's empty page, once owned, reads
    /// as zeros.
    fn give(&mut self, kid: &Arc<RegionInner>, p: u64, content: &[u8]) {
        let Some(l) = kid.lineage.as_ref() else {
            return;
        };
        if l.owns(p) {
            return;
        }
        if content.iter().any(|&b| b != 0) {
            let addr = kid.start + p as usize * kid.page_size;
            match self.install(kid, addr, content) {
                Ok(()) => self.mark_populated(kid, p),
                Err(e) => {
                    tracing::error!(
                        addr = format_args!("{addr:#x}"),
                        %e,
                        "giving a fork clone its copy of a page failed"
                    );
                }
            }
        }
        l.own(p);
    }

    /// `UFFDIO_COPY` of one page into a clone, write-protected, without waking anyone (a
    /// missing fault of the clone on that page, if pending, is served later and finds the
    /// page: `EEXIST`). `EEXIST` counts as done: the page has content already. Reads (and
    /// holds) events on `EAGAIN`, stopping if the page became owned meanwhile (a zap).
    fn install(&mut self, kid: &RegionInner, addr: usize, page: &[u8]) -> Result<(), Errno> {
        let fd = self.u().as_raw_fd();
        let p = kid.page_of(addr);
        for attempt in 0..100_000 {
            match sys::install_page(fd, addr, page, true, false) {
                Ok(()) | Err(Errno::EEXIST) => return Ok(()),
                Err(Errno::EAGAIN) if attempt < 99_999 => {
                    self.pump();
                    if kid.lineage.as_ref().is_some_and(|l| l.owns(p)) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EAGAIN)
    }

    fn mark_populated(&mut self, kid: &RegionInner, p: u64) {
        if let Some(pop) = self
            .by_start
            .get_mut(&kid.start)
            .and_then(|e| e.populated.as_mut())
        {
            pop.set(p);
        }
    }

    /// A missing fault on a clone's page (`serve_missing`): installs the page's content as the
    /// clone sees it (its parent's page while shared, zeros once owned), write-protected, and
    /// marks it owned. Wakes the faulting thread if `wake` (a read).
    pub(super) fn serve_missing_clone(
        &mut self,
        key: usize,
        page_addr: usize,
        wake: bool,
    ) -> Result<(), Errno> {
        let kid = match self.by_start.get(&key) {
            Some(e) => Arc::clone(&e.inner),
            None => return Ok(()),
        };
        let p = kid.page_of(page_addr);
        let ps = kid.page_size;
        let mut buf = std::mem::take(&mut self.page_buf);
        buf.resize(ps, 0);
        kid.copy_page(p, &mut buf);
        let r = self.install(&kid, page_addr, &buf);
        self.page_buf = buf;
        if r.is_ok() {
            self.mark_populated(&kid, p);
            if let Some(l) = &kid.lineage {
                l.own(p);
            }
        }
        if wake {
            let _ = self.u().wake(Addr(page_addr).ptr(), ps);
        }
        r
    }

    /// A REMOVE event (`madvise`) on `[start, end)`: clones of the regions there get their own
    /// copies of the shared pages first, and a clone's own pages in the range become owned
    /// (their content is zero from now on).
    ///
    /// The kernel zaps the range once the event is read, concurrently with this copy
    /// (docs/design.md section 13): a page copied while still present is its content before
    /// the zap; a lazily armed parent's page that had content and is already gone when read
    /// is lost for the clones that still shared it. They get zeros, and it is logged.
    pub(super) fn before_remove(&mut self, start: usize, end: usize) {
        for key in self.overlapping(start, end) {
            let Some(inner) = self.by_start.get(&key).map(|e| Arc::clone(&e.inner)) else {
                continue;
            };
            let (s, e) = (start.max(inner.start), end.min(inner.end()));
            let (first, last) = (inner.page_of(s), inner.page_of(e - 1));
            if let Some(kids) = self.family.children(inner.id) {
                let mut buf = vec![0u8; inner.page_size];
                let mut lost = 0u64;
                for p in first..=last {
                    let needy: Vec<&Arc<RegionInner>> =
                        kids.iter().filter(|k| inherits(k, p)).collect();
                    if needy.is_empty() {
                        continue;
                    }
                    let inherited = inherits(&inner, p);
                    if inherited {
                        inner.copy_page(p, &mut buf);
                    } else if !inner.copy_own_page(p, &mut buf) && self.may_have_content(key, p) {
                        lost += 1;
                    }
                    for kid in needy {
                        self.give(kid, p, &buf);
                    }
                }
                if lost > 0 {
                    tracing::error!(
                        start = format_args!("{s:#x}"),
                        pages = lost,
                        "madvise zapped pages of a forked region before its clones got their copies: those clones read zeros there"
                    );
                }
            }
            if let Some(l) = &inner.lineage {
                // A shared page's content changes too (inherited -> zero): count it as a page
                // with content, so the REMOVE handling reports it dirty and marks it LOST for
                // the clone's views (`on_remove_lazy` only looks at populated pages).
                for p in first..=last {
                    if !l.owns(p) {
                        self.mark_populated(&inner, p);
                        l.own(p);
                    }
                }
            }
        }
    }

    /// Whether page `p` of the lazily armed region at `key` may have had content.
    pub(super) fn may_have_content(&self, key: usize, p: u64) -> bool {
        self.by_start
            .get(&key)
            .and_then(|e| e.populated.as_ref())
            .is_some_and(|pop| pop.contains(p))
    }

    /// Before region `id` goes away (drop, or the application unmapped it): its clones get
    /// every page they still share (unless its memory is already gone: `readable` false, then
    /// those pages are lost and reported), and it lets go of its own parent.
    pub(super) fn release_lineage(&mut self, id: u64, readable: bool) {
        self.family.1.remove(&id);
        if let Some(kids) = self.family.0.remove(&id) {
            let parent = self
                .by_id
                .get(&id)
                .and_then(|s| self.by_start.get(s))
                .map(|e| Arc::clone(&e.inner));
            for kid in kids {
                match (&parent, readable) {
                    (Some(parent), true) => self.materialise_from(&kid, parent),
                    _ => {
                        if let Some(l) = &kid.lineage {
                            let lost = l.shared_pages();
                            if lost > 0 {
                                tracing::error!(
                                    clone = format_args!("{:#x}", kid.start),
                                    lost,
                                    "the parent of a fork clone was unmapped by the application: the pages the clone still shared read as zeros"
                                );
                            }
                        }
                    }
                }
                if let Some(l) = &kid.lineage {
                    l.detach();
                }
            }
        }
        // As a clone: stop being one of its parent's clones; its shared pages are its
        // views' business only now (a dropped region's views read no live memory).
        let me = self
            .by_id
            .get(&id)
            .and_then(|s| self.by_start.get(s))
            .map(|e| Arc::clone(&e.inner));
        if let Some(me) = me {
            if let Some(l) = &me.lineage {
                if let Some(v) = self.family.0.get_mut(&l.parent_id) {
                    v.retain(|k| k.id != id);
                }
                l.detach();
            }
        }
    }

    /// Every page `kid` still shares with `parent` gets its own copy; then `kid` lets go.
    fn materialise_from(&mut self, kid: &Arc<RegionInner>, parent: &Arc<RegionInner>) {
        let Some(l) = kid.lineage.as_ref() else {
            return;
        };
        for p in 0..kid.page_count {
            if !l.owns(p) {
                self.give_page(kid, parent, p, Why::Privatise);
            }
        }
        l.detach();
    }

    /// Region `key` is about to be overwritten (`prepare_overwrite`: its pages become
    /// writable without faults): its clones get their copies first, and, if it is a clone,
    /// it gets every page it still shares.
    pub(super) fn before_overwrite(&mut self, inner: &Arc<RegionInner>) {
        self.family
            .unprotecting(inner.id, 0, inner.page_count.saturating_sub(1));
        if self.family.has_children(inner.id) {
            self.privatise(inner, 0, inner.page_count.saturating_sub(1));
        }
        if let Some(l) = &inner.lineage {
            for p in 0..inner.page_count {
                self.give_page(inner, inner, p, Why::Materialise);
            }
            if let Some(v) = self.family.0.get_mut(&l.parent_id) {
                v.retain(|k| k.id != inner.id);
            }
            l.detach();
        }
    }

    /// Shutdown: the ranges are about to be unregistered, after which nothing would give a
    /// clone its copies. Every clone gets every page it still shares, parents first.
    pub(super) fn materialise_all(&mut self) {
        let parents: Vec<u64> = self.family.0.keys().copied().collect();
        for id in parents {
            // Forward order is fine: a clone's shared page reads through its parent chain.
            let Some(kids) = self.family.children(id) else {
                continue;
            };
            for kid in kids {
                for p in 0..kid.page_count {
                    self.give_page(&kid, &kid, p, Why::Materialise);
                }
                if let Some(l) = &kid.lineage {
                    l.detach();
                }
            }
        }
        self.family.0.clear();
        self.family.1.clear();
    }
}

/// Whether `region` is a clone that still shares page `p` with its parent (it does not own a
/// copy of its own yet).
fn inherits(region: &RegionInner, p: u64) -> bool {
    region.lineage.as_ref().is_some_and(|l| !l.owns(p))
}
