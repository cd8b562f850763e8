//! The walk of one mapping: one `PAGEMAP_SCAN` walk (plus raw pagemap reads of its present
//! runs, for the exclusive bit), or the raw-pagemap fallback; and the totals smaps prints.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use nix::errno::Errno;

use super::mapping::{Mapping, MappingKind};
use super::runs::PageRuns;
use crate::pagemap::Pagemap;
use crate::sys::{self, pm, ScanArgs};

/// Raw pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PM_UFFD_WP: u64 = 1 << 57;
const PM_EXCLUSIVE: u64 = 1 << 56;
const PM_SOFT_DIRTY: u64 = 1 << 55;

/// Entries per raw `pread` (256 KiB).
const BLOCK: usize = 32 * 1024;

/// Whether this kernel rejects `PAGE_IS_GUARD` (before 6.14): learnt on first use.
static NO_GUARD: AtomicBool = AtomicBool::new(false);

/// The page state of one mapping (or of the part of it inside the inspected range). Page
/// numbers in every [`PageRuns`] count 4 KiB pages from [`start`](Self::start).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct MappingPages {
    /// The mapping.
    pub mapping: Mapping,
    /// First inspected address (the mapping's start unless a range clipped it).
    pub start: usize,
    /// One past the last inspected address.
    pub end: usize,
    /// Pages mapped in memory (including the shared zero page).
    pub present: PageRuns,
    /// Pages swapped out (swap entries without a write-protect marker; on a system with
    /// active swap, also swapped pages that carry one).
    pub swapped: PageRuns,
    /// Non-present pages carrying a userfaultfd write-protect marker (armed, never filled).
    pub wp_marker: PageRuns,
    /// Present anonymous pages (not the zero page): smaps' `Anonymous`.
    pub anonymous: PageRuns,
    /// Private file mappings: present pages still the file's own (never copied).
    pub file_uncopied: Option<PageRuns>,
    /// Private file mappings: present anonymous pages, i.e. pages the kernel copied on
    /// write (COW).
    pub cow_copied: Option<PageRuns>,
    /// Present pages mapped by this process only (pagemap bit 56), zero page excluded.
    pub exclusive: PageRuns,
    /// Present pages mapped by more than one process (e.g. after `fork`), zero page excluded.
    pub shared: PageRuns,
    /// Pages mapping the shared zero page (read, never written). `None`: not available
    /// (the raw-pagemap fallback; PFNs need `CAP_SYS_ADMIN`).
    pub zero_page: Option<PageRuns>,
    /// Pages of a huge page (THP or hugetlb). `None`: not available (fallback).
    pub huge: Option<PageRuns>,
    /// Pages written since the last re-arm of an async userfaultfd write-protect tracker
    /// (`UFFD_FEATURE_WP_ASYNC`): `None` where no such tracker arms the mapping, or in the
    /// fallback.
    pub written: Option<PageRuns>,
    /// Soft-dirty pages: `None` where the kernel has no soft-dirty tracking.
    pub soft_dirty: Option<PageRuns>,
    /// The totals `/proc/PID/smaps` prints for this mapping, derived from the page states.
    pub totals: SmapsTotals,
}

/// The totals `/proc/PID/smaps` prints, derived from page states (kB).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SmapsTotals {
    /// `Rss`: present pages except the zero page (0 for hugetlb mappings).
    pub rss_kb: u64,
    /// `Anonymous`.
    pub anonymous_kb: u64,
    /// `Swap`.
    pub swap_kb: u64,
    /// `Private_Clean + Private_Dirty`: exclusive pages.
    pub private_kb: u64,
    /// `Shared_Clean + Shared_Dirty`: pages mapped by another process too.
    pub shared_kb: u64,
    /// `Private_Hugetlb + Shared_Hugetlb`.
    pub hugetlb_kb: u64,
}

impl std::ops::AddAssign for SmapsTotals {
    fn add_assign(&mut self, o: Self) {
        self.rss_kb += o.rss_kb;
        self.anonymous_kb += o.anonymous_kb;
        self.swap_kb += o.swap_kb;
        self.private_kb += o.private_kb;
        self.shared_kb += o.shared_kb;
        self.hugetlb_kb += o.hugetlb_kb;
    }
}

/// What the walk needs to know about the system.
pub(crate) struct Env {
    pub scan: bool,
    pub swap_active: bool,
    pub soft_dirty: bool,
}

/// Accumulates one mapping's page states in address order.
struct Acc {
    base: usize,
    ps: usize,
    present: PageRuns,
    swapped: PageRuns,
    marker: PageRuns,
    anon: PageRuns,
    file: PageRuns,
    exclusive: PageRuns,
    shared: PageRuns,
    zero: PageRuns,
    huge: PageRuns,
    written: PageRuns,
    soft_dirty: PageRuns,
    armed: bool,
}

impl Acc {
    fn new(base: usize, ps: usize) -> Self {
        let e = PageRuns::default;
        Acc {
            base,
            ps,
            present: e(),
            swapped: e(),
            marker: e(),
            anon: e(),
            file: e(),
            exclusive: e(),
            shared: e(),
            zero: e(),
            huge: e(),
            written: e(),
            soft_dirty: e(),
            armed: false,
        }
    }

    fn page(&self, addr: usize) -> u64 {
        ((addr - self.base) / self.ps) as u64
    }

    /// Sorts one present page's raw entry: file / anonymous (bit 61: the same test as
    /// `PAGE_IS_FILE`, a mapped page that is not anonymous) and exclusive / shared (bit 56).
    /// Asking these of the raw entries rather than of `PAGEMAP_SCAN` keeps the scan from
    /// looking up every page's `struct page` too.
    fn present_bits(&mut self, p: u64, e: u64) {
        if e & PM_FILE != 0 {
            self.file.push(p, 1);
        } else {
            self.anon.push(p, 1);
        }
        if e & PM_EXCLUSIVE != 0 {
            self.exclusive.push(p, 1);
        } else {
            self.shared.push(p, 1);
        }
    }
}

/// Buffers reused across the mappings of one inspection.
#[derive(Default)]
pub(crate) struct Bufs {
    /// Raw pagemap entries (grown to the largest read, at most `BLOCK`).
    raw: Vec<u64>,
    /// `PAGEMAP_SCAN` output.
    out: Vec<sys::PageRegion>,
    /// One mapping's scan runs.
    regions: Vec<sys::PageRegion>,
}

impl Bufs {
    /// A raw-entry buffer of at least `min(n, BLOCK)` entries.
    fn raw(&mut self, n: u64) -> &mut [u64] {
        let want = (n as usize).clamp(1, BLOCK);
        if self.raw.len() < want {
            self.raw.resize(want, 0);
        }
        &mut self.raw
    }
}

/// Walks `[start, end)` of `mapping`.
pub(crate) fn walk(
    pm: &Pagemap,
    env: &Env,
    mapping: &Mapping,
    (start, end): (usize, usize),
    bufs: &mut Bufs,
) -> Result<MappingPages, (Option<Errno>, std::io::Error)> {
    let ps = sys::base_page_size();
    let mut acc = Acc::new(start, ps);
    // The gate area ([vsyscall]) is not in the page tables pagemap walks.
    if mapping.path != "[vsyscall]" {
        if env.scan {
            scan_walk(pm, env, &mut acc, start, end, bufs)?;
        } else {
            let buf = bufs.raw(((end - start) / ps) as u64);
            raw_walk(pm, env, &mut acc, start, end, buf).map_err(|e| (None, e))?;
        }
    }
    Ok(finish(acc, env, mapping, start, end))
}

fn scan_walk(
    pm: &Pagemap,
    env: &Env,
    acc: &mut Acc,
    start: usize,
    end: usize,
    bufs: &mut Bufs,
) -> Result<(), (Option<Errno>, std::io::Error)> {
    // Not PAGE_IS_FILE: see `page_bits`.
    let all = pm::PAGE_IS_WPALLOWED
        | pm::PAGE_IS_WRITTEN
        | pm::PAGE_IS_PRESENT
        | pm::PAGE_IS_SWAPPED
        | pm::PAGE_IS_PFNZERO
        | pm::PAGE_IS_HUGE
        | pm::PAGE_IS_SOFT_DIRTY;
    if bufs.out.is_empty() {
        bufs.out = vec![sys::EMPTY_PAGE_REGION; 1024];
    }
    let (out, regions) = (&mut bufs.out, &mut bufs.regions);
    regions.clear();
    let mut q = ScanArgs {
        category_anyof_mask: pm::PAGE_IS_PRESENT | pm::PAGE_IS_SWAPPED | pm::PAGE_IS_WPALLOWED,
        return_mask: if NO_GUARD.load(Relaxed) {
            all
        } else {
            all | pm::PAGE_IS_GUARD
        },
        ..Default::default()
    };
    let mut r = pm.scan(start, end, q, out, |r| regions.push(*r));
    if r == Err(Errno::EINVAL) && q.return_mask & pm::PAGE_IS_GUARD != 0 {
        NO_GUARD.store(true, Relaxed);
        q.return_mask = all;
        regions.clear();
        r = pm.scan(start, end, q, out, |r| regions.push(*r));
    }
    r.map_err(|e| (Some(e), std::io::Error::from_raw_os_error(e as i32)))?;
    let regions = std::mem::take(&mut bufs.regions);
    for r in &regions {
        let (a, c) = (acc.page(r.start as usize), r.categories);
        let n = acc.page(r.end as usize) - a;
        let armed = c & pm::PAGE_IS_WPALLOWED != 0;
        acc.armed |= armed;
        if armed
            && c & pm::PAGE_IS_WRITTEN != 0
            && c & (pm::PAGE_IS_PRESENT | pm::PAGE_IS_SWAPPED) != 0
        {
            acc.written.push(a, n);
        }
        if c & pm::PAGE_IS_SOFT_DIRTY != 0 {
            acc.soft_dirty.push(a, n);
        }
        if c & pm::PAGE_IS_PRESENT != 0 {
            acc.present.push(a, n);
            if c & pm::PAGE_IS_HUGE != 0 {
                acc.huge.push(a, n);
            }
            if c & pm::PAGE_IS_PFNZERO != 0 {
                acc.zero.push(a, n);
                continue;
            }
            let vpn = (acc.base / acc.ps) as u64 + a;
            pm.for_each_entry(vpn, n, bufs.raw(n), |i, e| acc.present_bits(a + i, e))
                .map_err(|e| (None, e))?;
        } else if c & pm::PAGE_IS_SWAPPED != 0 && c & pm::PAGE_IS_GUARD == 0 {
            // A swap entry without the uffd-wp bit is real swap (or a transient migration
            // entry); with it, a write-protect marker -- or a protected swapped page, which
            // only a system with active swap can have.
            if c & pm::PAGE_IS_WRITTEN != 0 {
                acc.swapped.push(a, n);
            } else {
                acc.marker.push(a, n);
                if env.swap_active {
                    acc.swapped.push(a, n);
                }
            }
        }
    }
    bufs.regions = regions;
    Ok(())
}

fn raw_walk(
    pm: &Pagemap,
    env: &Env,
    acc: &mut Acc,
    start: usize,
    end: usize,
    buf: &mut [u64],
) -> std::io::Result<()> {
    let (vpn0, total) = ((start / acc.ps) as u64, ((end - start) / acc.ps) as u64);
    pm.for_each_entry(vpn0, total, buf, |p, e| {
        if env.soft_dirty && e & PM_SOFT_DIRTY != 0 {
            acc.soft_dirty.push(p, 1);
        }
        if e & PM_PRESENT != 0 {
            acc.present.push(p, 1);
            acc.present_bits(p, e);
        } else if e & PM_SWAP != 0 {
            if e & PM_UFFD_WP == 0 {
                acc.swapped.push(p, 1);
            } else {
                acc.marker.push(p, 1);
                if env.swap_active {
                    acc.swapped.push(p, 1);
                }
            }
        }
    })
}

fn finish(acc: Acc, env: &Env, mapping: &Mapping, start: usize, end: usize) -> MappingPages {
    let kb = |r: &PageRuns| r.pages * (acc.ps as u64 / 1024);
    let hugetlb = mapping.kind == MappingKind::Hugetlb;
    let totals = if hugetlb {
        SmapsTotals {
            hugetlb_kb: kb(&acc.present),
            ..Default::default()
        }
    } else {
        SmapsTotals {
            rss_kb: kb(&acc.present) - kb(&acc.zero),
            anonymous_kb: kb(&acc.anon),
            swap_kb: kb(&acc.swapped),
            private_kb: kb(&acc.exclusive),
            shared_kb: kb(&acc.shared),
            hugetlb_kb: 0,
        }
    };
    // A private mapping of a shmem file (memfd, /dev/shm) holds COW copies too; the inspector
    // names its kind `Shmem`, as a tracker adopts it.
    let private_file = mapping.kind == MappingKind::FilePrivate
        || (mapping.kind == MappingKind::Shmem && mapping.perms.as_bytes().get(3) == Some(&b'p'));
    MappingPages {
        mapping: mapping.clone(),
        start,
        end,
        file_uncopied: private_file.then(|| acc.file.clone()),
        cow_copied: private_file.then(|| acc.anon.clone()),
        zero_page: env.scan.then_some(acc.zero),
        huge: env.scan.then_some(acc.huge),
        written: (env.scan && acc.armed).then_some(acc.written),
        soft_dirty: env.soft_dirty.then_some(acc.soft_dirty),
        present: acc.present,
        swapped: acc.swapped,
        wp_marker: acc.marker,
        anonymous: acc.anon,
        exclusive: acc.exclusive,
        shared: acc.shared,
        totals,
    }
}
