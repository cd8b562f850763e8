//! `PAGEMAP_SCAN` queries shared by the service thread and the snapshot readers.

use std::os::fd::RawFd;

use nix::errno::Errno;

use crate::sys::{self, pm, PageRegion, ScanArgs};

/// Calls `f(start, end)` for every address range in `[start, end)` whose pages are **not**
/// write-protected: present (or swapped) without the uffd-wp bit (`PAGE_IS_WRITTEN`), or empty
/// PTEs that carry no protection marker (zapped by `madvise`). Returns the number of ioctls.
///
/// Both are asked in separate walks because `PAGEMAP_SCAN` matches a conjunction of
/// categories per walk. Each walk loops on `walk_end` when `out` fills up.
pub(crate) fn unprotected(
    fd: RawFd,
    start: usize,
    end: usize,
    out: &mut [PageRegion],
    mut f: impl FnMut(usize, usize),
) -> Result<u64, Errno> {
    let queries = [
        ScanArgs {
            category_mask: pm::PAGE_IS_WRITTEN,
            return_mask: pm::PAGE_IS_WRITTEN,
            ..Default::default()
        },
        ScanArgs {
            category_inverted: pm::PAGE_IS_PRESENT | pm::PAGE_IS_SWAPPED,
            category_mask: pm::PAGE_IS_PRESENT | pm::PAGE_IS_SWAPPED,
            return_mask: pm::PAGE_IS_PRESENT,
            ..Default::default()
        },
    ];
    let mut ioctls = 0;
    for q in queries {
        let mut cursor = start;
        while cursor < end {
            let args = ScanArgs {
                start: cursor,
                end,
                ..q
            };
            ioctls += 1;
            let (n, walk_end) = sys::pagemap_scan(fd, &args, out)?;
            for r in &out[..n] {
                f(r.start as usize, r.end as usize);
            }
            if n < out.len() || walk_end <= cursor {
                break;
            }
            cursor = walk_end;
        }
    }
    Ok(ioctls)
}
