//! Registering and releasing ranges, per backend (sync/async uffd, mprotect, in-thread hooks).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use nix::errno::Errno;
use userfaultfd::RegisterMode;

use super::eager::Eager;
use super::{Entry, Service};
use crate::armed::ArmBits;
use crate::backend::Backend;
use crate::error::{CutError, Invalidation, MapError, PublicErrno};
use crate::inthread::Hook;
use crate::probe::Feature;
use crate::range::RegionInner;
use crate::sys::{self, Addr};

impl Service {
    pub(super) fn register(
        &mut self,
        inner: Arc<RegionInner>,
        all_dirty: bool,
    ) -> Result<(), MapError> {
        let (start, end) = (inner.start, inner.end());
        if let Some((_, e)) = self.by_start.range(..end).next_back() {
            if e.inner.end() > start {
                return Err(MapError::Overlap {
                    start,
                    end,
                    existing_start: e.inner.start,
                    existing_end: e.inner.end(),
                });
            }
        }
        if self.backend == Backend::Mprotect {
            return self.register_mprotect(inner, all_dirty);
        }
        // Eager re-protection's armed bits, shared with the in-thread hook if there is one.
        let arm = self
            .eager_on()
            .then(|| Arc::new(ArmBits::new(inner.page_count)));
        // In-thread mode: the handler must know the range before any of its pages can fault.
        let hook = if self.shared.config.in_thread {
            let h = Arc::new(Hook::new(
                Arc::clone(&inner),
                Arc::clone(&self.shared),
                sys::UffdRef::new(self.u()),
                arm.clone(),
            ));
            let slot = sys::sigbus::register(start, inner.len, &h).ok_or(MapError::Sys {
                op: "register",
                errno: Errno::ENOSPC.public(),
                hint: Some("in-thread fault handling serves at most 1024 regions per process"),
            })?;
            Some((h, slot))
        } else {
            None
        };
        let r = self.register_uffd(&inner, all_dirty, arm);
        if r.is_err() {
            if let Some((_, slot)) = hook {
                sys::sigbus::retire(slot);
            }
            return r;
        }
        if let Some(entry) = self.by_start.get_mut(&start) {
            entry.hook = hook;
        }
        Ok(())
    }

    pub(super) fn register_uffd(
        &mut self,
        inner: &Arc<RegionInner>,
        all_dirty: bool,
        arm: Option<Arc<ArmBits>>,
    ) -> Result<(), MapError> {
        let start = inner.start;
        let inner = Arc::clone(inner);
        // Lazily armed regions also take missing faults: their never-touched pages stay
        // unprotected (no page tables) until first touched (see `lazy`).
        let mode = if inner.lazy.is_some() {
            RegisterMode::WRITE_PROTECT | RegisterMode::MISSING
        } else {
            RegisterMode::WRITE_PROTECT
        };
        let ioctls = self.u().register_with_mode(Addr(start).ptr(), inner.len, mode).map_err(
            |e| {
                let errno = sys::errno_of(&e);
                let public = errno.public();
                match errno {
                    Errno::ENOMEM => MapError::NotMapped { addr: start },
                    Errno::EBUSY => MapError::Sys {
                        op: "UFFDIO_REGISTER",
                        errno: public,
                        hint: Some("the range is already registered with another userfaultfd (another tracker or library)"),
                    },
                    Errno::EINVAL => MapError::Sys {
                        op: "UFFDIO_REGISTER",
                        errno: public,
                        hint: Some("the kernel cannot write-protect this memory (anonymous needs >= 5.7, shmem/hugetlbfs >= 5.19)"),
                    },
                    _ => MapError::Sys { op: "UFFDIO_REGISTER", errno: public, hint: None },
                }
            },
        )?;
        if !ioctls.contains(userfaultfd::IoctlFlags::WRITE_PROTECT) {
            let _ = self.u().unregister(Addr(start).ptr(), inner.len);
            return Err(MapError::KindUnsupported {
                kind: inner.kind.name(),
                needs: "Linux >= 5.19 for shmem/hugetlbfs write-protect",
            });
        }
        if all_dirty {
            inner.dirty.set_range(0, inner.page_count as usize);
        }
        if self.backend == Backend::SyncUffd {
            // KSM replaces a merged page's entry with one that has no uffd-wp bit: later
            // writes would go unseen (sync backend invariant: bit clear => protected). Keep
            // the range out of KSM (a no-op unless it, or the whole process through
            // PR_SET_MEMORY_MERGE, was made mergeable; fails harmlessly without CONFIG_KSM).
            // A range made mergeable again *after* registration is a documented limit.
            let _ = sys::madvise_nondestructive(
                Addr(start).ptr().cast(),
                inner.len,
                libc::MADV_UNMERGEABLE,
            );
        }
        let r = if inner.lazy.is_some() {
            Ok(()) // every page is empty: missing faults guard it
        } else {
            self.populate_if_needed(start, inner.len)
                .and_then(|()| self.protect(start, inner.len))
        };
        if let Err(errno) = r {
            let _ = self.u().unregister(Addr(start).ptr(), inner.len);
            return Err(MapError::Sys {
                op: "UFFDIO_WRITEPROTECT",
                errno: errno.public(),
                hint: None,
            });
        }
        self.by_id.insert(inner.id, start);
        let copied = self.initial_copied(&inner);
        let mut entry = Entry::new(inner);
        entry.copied = copied;
        if entry.inner.lazy.is_some() {
            entry.populated = Some(super::lazy::Populated::default());
        }
        if let Some(bits) = arm {
            let cfg = &self.shared.config;
            let age = cfg.eager.unwrap_or(super::policy::AGE_START);
            let mut eg = Eager::new(bits, age, cfg.eager.is_none(), cfg.in_thread);
            if all_dirty {
                // Every page is dirty and protected now: all armed, so the first cut skips
                // them all. (Otherwise arming clean pages would only make first writes
                // count as re-faults.)
                eg.arm(0, entry.inner.page_count);
            }
            entry.eager = Some(eg);
            if cfg.in_thread {
                // The service thread sees no fault: it scans for written pages every `age`.
                let due = std::time::Instant::now() + age;
                self.eager_due = Some(self.eager_due.map_or(due, |d| d.min(due)));
            }
        }
        self.by_start.insert(start, entry);
        Ok(())
    }

    pub(super) fn register_mprotect(
        &mut self,
        inner: Arc<RegionInner>,
        all_dirty: bool,
    ) -> Result<(), MapError> {
        let start = inner.start;
        let shift = inner.page_size.trailing_zeros();
        let slot = sys::segv::register(
            start,
            inner.len,
            shift,
            inner.dirty.external_words(),
            inner.page_count as usize,
        )
        .ok_or(MapError::Sys {
            op: "register",
            errno: Errno::ENOSPC.public(),
            hint: Some("the mprotect backend tracks at most 4096 regions per process"),
        })?;
        if all_dirty {
            inner.dirty.set_range(0, inner.page_count as usize);
        }
        if let Err(errno) = sys::mprotect(start, inner.len, false) {
            sys::segv::unregister(slot);
            return Err(MapError::Sys {
                op: "mprotect",
                errno: errno.public(),
                hint: None,
            });
        }
        self.shared.counters.protect_ioctls.fetch_add(1, Relaxed);
        self.by_id.insert(inner.id, start);
        let mut e = Entry::new(inner);
        e.slot = Some(slot);
        self.by_start.insert(start, e);
        Ok(())
    }

    /// Stops tracking one range: uffd unregister, or (mprotect) make it writable first, then
    /// retire the handler slot (in that order, so no write can fault with nobody to serve it).
    pub(super) fn release(&self, start: usize, entry: &Entry) -> Result<(), Errno> {
        match entry.slot {
            Some(slot) => {
                let r = sys::mprotect(start, entry.inner.len, true);
                sys::segv::unregister(slot);
                r
            }
            None => {
                let r = self
                    .u()
                    .unregister(Addr(start).ptr(), entry.inner.len)
                    .map_err(|e| sys::errno_of(&e));
                // After the unregister no write faults any more; retiring waits for handlers
                // still serving earlier ones.
                if let Some((_, slot)) = entry.hook {
                    sys::sigbus::retire(slot);
                }
                r
            }
        }
    }

    /// Without `WP_UNPOPULATED`, protecting a never-touched page is silently skipped by the
    /// kernel, so its first write would go unseen: map every page (read-only zero page) first.
    pub(super) fn populate_if_needed(&self, addr: usize, len: usize) -> Result<(), Errno> {
        if self.backend == Backend::Mprotect || self.shared.features.has(Feature::WpUnpopulated) {
            return Ok(());
        }
        match sys::madvise_nondestructive(addr as *mut u8, len, libc::MADV_POPULATE_READ) {
            Ok(()) => Ok(()),
            // Kernels before 5.14: touch each page (a read never raises a WP fault).
            Err(Errno::EINVAL) => {
                sys::touch_read(addr as *const u8, len, sys::base_page_size());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn unregister(&mut self, id: u64) -> Result<(), Errno> {
        // Fork clones of this region get every page they still share; a clone lets go of its
        // parent (service/fork.rs).
        self.release_lineage(id, true);
        let Some(start) = self.by_id.remove(&id) else {
            return Ok(());
        };
        let Some(entry) = self.by_start.remove(&start) else {
            return Ok(());
        };
        // Views that outlive the region must not read its live memory any more: after the
        // release nothing holds its pages' content, and an adopted range may be unmapped.
        entry.inner.close();
        match self.release(start, &entry) {
            Ok(()) => Ok(()),
            Err(e) if entry.inner.invalidation().is_none() => Err(e),
            Err(_) => Ok(()),
        }
    }

    pub(super) fn release_all(&mut self) {
        for (start, entry) in std::mem::take(&mut self.by_start) {
            // Unregistering wakes every thread waiting on a fault in the range; their writes
            // then complete untracked.
            let _ = self.release(start, &entry);
        }
        self.by_id.clear();
    }

    /// The live region registered under `id`.
    pub(super) fn region_by_id(&self, id: u64) -> Result<(usize, Arc<RegionInner>), CutError> {
        let gone = |start| CutError::Invalidated {
            start,
            reason: Invalidation::Unmapped,
        };
        let &start = self.by_id.get(&id).ok_or(gone(0))?;
        let entry = self.by_start.get(&start).ok_or(gone(start))?;
        Ok((start, Arc::clone(&entry.inner)))
    }
}
