//! `/proc/self/pagemap`: the `PAGEMAP_SCAN` ioctl (its only caller is `crate::pagemap`) and the
//! soft-dirty probe.

use std::os::fd::RawFd;

use linux_raw_sys::general as k;
use nix::errno::Errno;

use super::{base_page_size, mman::mmap_anonymous, mman::munmap};

/// `PAGEMAP_SCAN` = `_IOWR('f', 16, struct pm_scan_arg)`, derived from linux-raw-sys's struct.
pub(crate) const PAGEMAP_SCAN: libc::c_ulong =
    nix::request_code_readwrite!(b'f', 16, std::mem::size_of::<k::pm_scan_arg>()) as libc::c_ulong;

/// One output entry of `PAGEMAP_SCAN`: `[start, end)` with the categories it matched.
pub(crate) type PageRegion = k::page_region;

/// A zeroed `page_region`, for sizing output buffers.
pub(crate) const EMPTY_PAGE_REGION: PageRegion = k::page_region {
    start: 0,
    end: 0,
    categories: 0,
};

/// The `PAGEMAP_SCAN` category bits used by this crate.
pub(crate) mod pm {
    use linux_raw_sys::general as k;
    pub(crate) const PAGE_IS_WRITTEN: u64 = k::PAGE_IS_WRITTEN as u64;
    pub(crate) const PAGE_IS_PRESENT: u64 = k::PAGE_IS_PRESENT as u64;
    pub(crate) const PAGE_IS_SWAPPED: u64 = k::PAGE_IS_SWAPPED as u64;
    pub(crate) const PAGE_IS_WPALLOWED: u64 = k::PAGE_IS_WPALLOWED as u64;
    pub(crate) const PAGE_IS_PFNZERO: u64 = k::PAGE_IS_PFNZERO as u64;
    pub(crate) const PAGE_IS_HUGE: u64 = k::PAGE_IS_HUGE as u64;
    pub(crate) const PAGE_IS_SOFT_DIRTY: u64 = k::PAGE_IS_SOFT_DIRTY as u64;
    pub(crate) const PAGE_IS_GUARD: u64 = k::PAGE_IS_GUARD as u64;
    pub(crate) const PAGE_IS_FILE: u64 = k::PAGE_IS_FILE as u64;
    pub(crate) const PM_SCAN_WP_MATCHING: u64 = k::PM_SCAN_WP_MATCHING as u64;
    pub(crate) const PM_SCAN_CHECK_WPASYNC: u64 = k::PM_SCAN_CHECK_WPASYNC as u64;
}

/// Parameters of one `PAGEMAP_SCAN` call (the subset of `pm_scan_arg` this crate sets).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ScanArgs {
    pub flags: u64,
    pub start: usize,
    pub end: usize,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// Runs one `PAGEMAP_SCAN` ioctl on an open `/proc/self/pagemap`.
///
/// Fills `out` and returns `(entries_filled, walk_end)`: the kernel stops early at `walk_end`
/// when `out` is full, so callers loop from `walk_end` until it reaches `args.end`.
pub(crate) fn pagemap_scan(
    pagemap: RawFd,
    args: &ScanArgs,
    out: &mut [PageRegion],
) -> Result<(usize, usize), Errno> {
    let mut arg = k::pm_scan_arg {
        size: std::mem::size_of::<k::pm_scan_arg>() as u64,
        flags: args.flags,
        start: args.start as u64,
        end: args.end as u64,
        walk_end: 0,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        max_pages: 0,
        category_inverted: args.category_inverted,
        category_mask: args.category_mask,
        category_anyof_mask: args.category_anyof_mask,
        return_mask: args.return_mask,
    };
    // SAFETY: PAGEMAP_SCAN reads one `pm_scan_arg` on our stack and writes at most `vec_len`
    // `page_region`s into `out`, which is a live, exclusively borrowed slice of that length.
    // It reads page tables only, except with PM_SCAN_WP_MATCHING, where it changes page
    // protection (never contents).
    let r = unsafe { libc::ioctl(pagemap, PAGEMAP_SCAN as _, &mut arg as *mut k::pm_scan_arg) };
    let n = Errno::result(r)?;
    Ok((n as usize, arg.walk_end as usize))
}

/// Whether the kernel tracks soft-dirty bits: writes one private page and reads its pagemap
/// entry (bit 55 = soft-dirty).
pub(crate) fn soft_dirty_probe() -> bool {
    use std::os::unix::fs::FileExt;
    let ps = base_page_size();
    let Ok(p) = mmap_anonymous(ps, 0) else {
        return false;
    };
    // SAFETY: `p` is a fresh private read-write page that nothing else references.
    unsafe { p.as_ptr().write_volatile(1) };
    let mut e = [0u8; 8];
    let ok = std::fs::File::open("/proc/self/pagemap")
        .and_then(|f| f.read_exact_at(&mut e, (p.as_ptr() as u64 / ps as u64) * 8))
        .is_ok();
    // SAFETY: we own the page and no reference into it exists.
    let _ = unsafe { munmap(p.as_ptr(), ps) };
    ok && u64::from_le_bytes(e) & (1 << 55) != 0
}
