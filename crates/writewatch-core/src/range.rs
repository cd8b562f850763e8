//! [`RegionInner`]: the state of one tracked range that the region handle, the service
//! thread, views and the signal handlers share; and [`RegionKind`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, RwLock};

use crate::bitmap::AtomicBitmap;
use crate::error::Invalidation;
use crate::lineage::{Lineage, PageSource};
use crate::stats::RegionCounters;
use crate::sys;

/// The kind of memory behind a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum RegionKind {
    /// Private anonymous memory (write-protect needs kernel >= 5.7).
    Anonymous,
    /// Shared memory: memfd, `MAP_SHARED|MAP_ANONYMOUS`, SysV shm, tmpfs (kernel >= 5.19).
    Shmem,
    /// hugetlbfs memory; dirty granularity is the huge page size (kernel >= 5.19).
    Hugetlb,
    /// A private mapping of a regular file (`mmap(MAP_PRIVATE)` of a file, a program's ELF
    /// `.data`). Async backend only (`UFFD_FEATURE_WP_ASYNC`, Linux >= 6.7). The first write
    /// to a page both copies it (the kernel's copy-on-write: the page stops being the file's)
    /// and marks it written; a later write to the copy, after a cut, marks it written again.
    /// Reads map the file's page without marking it. Changes made to the file itself (by
    /// `write(2)` or another mapping) show through pages never copied and are not reported.
    FilePrivate,
    /// A shared mapping of a regular file (`mmap(MAP_SHARED)`). Async backend only. A page is
    /// marked written when this mapping writes it (the page cache page, written back to the
    /// file by the kernel); writes by `write(2)` or through other mappings are not reported.
    FileShared,
}

impl RegionKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            RegionKind::Anonymous => "private anonymous",
            RegionKind::Shmem => "shmem",
            RegionKind::Hugetlb => "hugetlbfs",
            RegionKind::FilePrivate => "file-backed private",
            RegionKind::FileShared => "file-backed shared",
        }
    }

    /// Whether the kind is a mapping of a regular file (async backend only).
    pub(crate) fn is_file(self) -> bool {
        matches!(self, RegionKind::FilePrivate | RegionKind::FileShared)
    }
}

const LIVE: u8 = 0;
const UNMAPPED: u8 = 1;
const REMAPPED: u8 = 2;
const DROPPED: u8 = 3;

/// State shared by a [`Region`], the service thread and any [`Epoch`] that still reads it.
#[derive(Debug)]
pub(crate) struct RegionInner {
    pub id: u64,
    pub start: usize,
    pub len: usize,
    pub page_size: usize,
    pub page_count: u64,
    pub kind: RegionKind,
    /// The pages may be copies (COW) of a file's pages that the kernel can drop without a
    /// write or a `REMOVE` event (`ftruncate`): a private mapping of a regular file or of a
    /// shmem file (memfd, `/dev/shm`). See `service/cow.rs`.
    pub cow_file: bool,
    /// Dirty bits of the current (open) epoch. Invariant (sync backend): a page whose bit is
    /// clear is write-protected, so its next write faults before it completes.
    pub dirty: AtomicBitmap,
    /// Number of the current (open) epoch.
    pub epoch: AtomicU64,
    status: AtomicU8,
    /// Readers copying live memory (PENDING pages of views) hold it shared; dropping the
    /// [`Region`] takes it exclusively to mark the region DROPPED before unregistering it.
    /// So a live copy never runs after the drop, when the owner may unmap adopted memory.
    gate: RwLock<()>,
    /// Page runs the application `madvise`d away. On anonymous memory the kernel zaps them
    /// (dropping write protection) *after* the REMOVE event is read, possibly after a later
    /// cut re-protected them; cuts and snapshot copies therefore re-check these runs with
    /// `PAGEMAP_SCAN`. Written by the service thread, read by cuts and snapshot readers.
    suspect: Mutex<Vec<(u64, u64)>>,
    has_suspect: AtomicBool,
    pub counters: RegionCounters,
    /// Lazily armed (see `service::lazy`): `/proc/self/mem`, through which live pages are
    /// copied without faulting (a never-touched page raises a missing fault, which the
    /// service thread, if it were the reader, could not serve). None: eagerly protected.
    pub lazy: Option<std::sync::Arc<std::fs::File>>,
    /// Adopted memory backed by a file or shmem object that its owner can truncate
    /// (`ftruncate` of a memfd, a `/dev/shm` or a regular file): `/proc/self/mem`, through
    /// which live pages are copied, so that a page past the new end of the file is an error
    /// (`SnapshotError::BeyondEndOfFile`) instead of a `SIGBUS`. None: read directly.
    pub file_mem: Option<std::sync::Arc<std::fs::File>>,
    /// A fork clone's inheritance (see `fork`): which pages still share the parent's content.
    /// None: not a clone.
    pub lineage: Option<std::sync::Arc<Lineage>>,
    /// The memory (unmapped when the last reference goes, if owned). By then the service
    /// thread has unregistered the range (Region::drop waits for it), so the munmap raises no
    /// UNMAP event and never waits on the service thread.
    pub mapping: sys::Mapping,
}

impl RegionInner {
    pub(crate) fn new(id: u64, mapping: sys::Mapping, page_size: usize, kind: RegionKind) -> Self {
        let (start, len) = (mapping.start(), mapping.len());
        let page_count = (len / page_size) as u64;
        Self {
            id,
            start,
            len,
            page_size,
            page_count,
            kind,
            cow_file: kind == RegionKind::FilePrivate,
            dirty: AtomicBitmap::new(page_count as usize),
            epoch: AtomicU64::new(0),
            status: AtomicU8::new(LIVE),
            gate: RwLock::new(()),
            suspect: Mutex::new(Vec::new()),
            has_suspect: AtomicBool::new(false),
            counters: RegionCounters::default(),
            lazy: None,
            file_mem: None,
            lineage: None,
            mapping,
        }
    }

    pub(crate) fn end(&self) -> usize {
        self.start + self.len
    }

    pub(crate) fn invalidation(&self) -> Option<Invalidation> {
        match self.status.load(Ordering::Acquire) {
            LIVE => None,
            UNMAPPED => Some(Invalidation::Unmapped),
            REMAPPED => Some(Invalidation::Remapped),
            _ => Some(Invalidation::Dropped),
        }
    }

    /// Held while copying live memory (see `gate`).
    pub(crate) fn read_gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the region dropped, after every live copy in progress has finished.
    pub(crate) fn close(&self) {
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .status
            .compare_exchange(LIVE, DROPPED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Marks the region dead because the application unmapped or moved it.
    pub(crate) fn invalidate(&self, why: Invalidation) {
        self.mapping.leak();
        let v = match why {
            Invalidation::Unmapped => UNMAPPED,
            Invalidation::Remapped => REMAPPED,
            Invalidation::Dropped => DROPPED,
        };
        let _ = self
            .status
            .compare_exchange(LIVE, v, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn page_of(&self, addr: usize) -> u64 {
        ((addr - self.start) / self.page_size) as u64
    }

    pub(crate) fn add_suspect(&self, first: u64, count: u64) {
        let mut s = self.suspect.lock().unwrap_or_else(|e| e.into_inner());
        crate::dirty::add_run(&mut s, first, count);
        self.has_suspect.store(true, Ordering::Release);
    }

    pub(crate) fn suspect_runs(&self) -> Vec<(u64, u64)> {
        if !self.has_suspect.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.suspect
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the page lies in a range that ever received a REMOVE event.
    pub(crate) fn is_suspect(&self, page: u64) -> bool {
        if !self.has_suspect.load(Ordering::Acquire) {
            return false;
        }
        let s = self.suspect.lock().unwrap_or_else(|e| e.into_inner());
        let i = s.partition_point(|&(a, _)| a <= page);
        i > 0 && page < s[i - 1].0 + s[i - 1].1
    }

    /// Sets the dirty bits of the pages that lie in io_uring fixed buffers: the kernel writes
    /// them through a long-term pin, without a fault (see `pins`). If a ring's buffers cannot
    /// be listed, every page (over-report, never under-report).
    pub(crate) fn mark_pinned(&self) {
        let pinned = crate::pins::io_uring_buffers();
        if pinned.unknown {
            self.dirty.set_range(0, self.page_count as usize);
            return;
        }
        for (a, len) in pinned.buffers {
            let (s, e) = (a.max(self.start), a.saturating_add(len).min(self.end()));
            if s < e {
                let (pa, pb) = (self.page_of(s), self.page_of(e - 1));
                self.dirty.set_range(pa as usize, (pb - pa + 1) as usize);
            }
        }
    }

    /// Copies page `page` into `buf` as it is now: with atomic 8-byte loads (sound even if
    /// the page were written concurrently; callers copy only pages the protocol keeps
    /// write-protected), or, in a lazily armed region, through `/proc/self/mem`, which never
    /// faults: a page with no content (never touched, or zapped) reads as zeros, which is its
    /// content.
    ///
    /// A fork clone's page that still shares its parent's content is copied from the parent.
    pub(crate) fn copy_page(&self, page: u64, buf: &mut [u8]) {
        match &self.lineage {
            Some(l) => l.copy(page, buf, |b| {
                self.copy_own_page(page, b);
            }),
            None => {
                self.copy_own_page(page, buf);
            }
        }
    }

    /// [`copy_page`](Self::copy_page) of the page in this mapping (a clone's shared page reads
    /// as zeros here: it has no content of its own). False when a lazily armed region's page
    /// had no content (it read as zeros).
    pub(crate) fn copy_own_page(&self, page: u64, buf: &mut [u8]) -> bool {
        if let Some(mem) = &self.lazy {
            use std::os::unix::fs::FileExt;
            let addr = self.start + page as usize * self.page_size;
            match mem.read_exact_at(buf, addr as u64) {
                Ok(()) => return true,
                // EIO/EFAULT: no page there (the kernel refuses to fault it in for us).
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EFAULT)) => {
                    buf.fill(0);
                    return false;
                }
                Err(e) => tracing::warn!(%e, "reading /proc/self/mem failed; copying directly"),
            }
        }
        let wpp = self.page_size / 8;
        let words = &self.mapping.atomic_words()[page as usize * wpp..(page as usize + 1) * wpp];
        for (w, out) in words.iter().zip(buf.chunks_exact_mut(8)) {
            out.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        true
    }

    /// Copies page `page` as it is now, like [`copy_page`](Self::copy_page), but through
    /// `file_mem` when the region has one: a page past the end of a truncated file is then
    /// `BeyondEndOfFile` instead of a `SIGBUS`.
    pub(crate) fn copy_live(
        &self,
        page: u64,
        buf: &mut [u8],
    ) -> Result<(), crate::error::SnapshotError> {
        match &self.file_mem {
            Some(mem) => self.read_file_page(mem, page, buf),
            None => {
                self.copy_page(page, buf);
                Ok(())
            }
        }
    }

    /// Reads page `page` of a file-backed region through `mem` (`/proc/self/mem`): a page
    /// past the end of a truncated file is an error there, where touching it directly would
    /// raise `SIGBUS`.
    pub(crate) fn read_file_page(
        &self,
        mem: &std::fs::File,
        page: u64,
        buf: &mut [u8],
    ) -> Result<(), crate::error::SnapshotError> {
        use std::os::unix::fs::FileExt;
        let addr = self.start + page as usize * self.page_size;
        match mem.read_exact_at(buf, addr as u64) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EFAULT)) => {
                Err(crate::error::SnapshotError::BeyondEndOfFile { page })
            }
            Err(e) => {
                tracing::warn!(%e, "reading /proc/self/mem failed; copying directly");
                self.copy_own_page(page, buf);
                Ok(())
            }
        }
    }

    /// Makes the region a fork clone (before it is registered).
    pub(crate) fn make_clone(&mut self, lineage: std::sync::Arc<Lineage>) {
        self.lineage = Some(lineage);
    }

    /// Makes the region lazily armed (before it is registered); `mem` is the tracker's
    /// `/proc/self/mem`.
    pub(crate) fn make_lazy(&mut self, mem: std::sync::Arc<std::fs::File>) {
        self.lazy = Some(mem);
    }

    /// Writes `data` over page `page` with atomic 8-byte stores (rollback). The stores are
    /// ordinary tracked writes: they fault if the page is protected.
    pub(crate) fn write_page(&self, page: u64, data: &[u8]) {
        let wpp = self.page_size / 8;
        let words = &self.mapping.atomic_words()[page as usize * wpp..(page as usize + 1) * wpp];
        for (w, v) in words.iter().zip(data.chunks_exact(8)) {
            let v = u64::from_ne_bytes(v.try_into().unwrap_or([0; 8]));
            if w.load(Ordering::Relaxed) != v {
                w.store(v, Ordering::Relaxed);
            }
        }
    }
}

impl PageSource for RegionInner {
    /// A clone's parent page as it is now, unless the parent was dropped or invalidated (its
    /// memory may be gone). The read gate keeps a drop from completing during the copy.
    fn read_source_page(&self, page: u64, buf: &mut [u8]) -> bool {
        let _g = self.read_gate();
        if self.invalidation().is_some() {
            return false;
        }
        self.copy_page(page, buf);
        true
    }
}
