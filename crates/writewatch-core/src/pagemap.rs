//! [`Pagemap`]: the one owner of `PAGEMAP_SCAN` (`/proc/self/pagemap`), used by the service
//! thread (async harvest, suspect runs), region peeks and snapshot readers. The ioctl itself is
//! `sys::pagemap_scan`; the questions asked of it are here.

use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use nix::errno::Errno;

use crate::sys::{self, pm, PageRegion, ScanArgs};

/// An open `/proc/self/pagemap`.
#[derive(Debug)]
pub(crate) struct Pagemap {
    file: std::fs::File,
}

/// The pages (numbered from `base`, `page_size` each) that the scanned address range
/// `[a, b)` touches.
pub(crate) fn pages_of(base: usize, page_size: usize, a: usize, b: usize) -> RangeInclusive<u64> {
    let page = |addr: usize| ((addr - base) / page_size) as u64;
    page(a)..=page(b.max(a + 1) - 1)
}

/// Sets the dirty bits of `pages` in a bitmap's words.
pub(crate) fn set_dirty_bits(words: &mut [u64], pages: RangeInclusive<u64>) {
    for p in pages {
        words[p as usize / 64] |= 1 << (p % 64);
    }
}

impl Pagemap {
    /// Opens `/proc/self/pagemap` (None if it cannot be opened).
    pub(crate) fn open() -> Option<Self> {
        Self::open_pid(None).ok()
    }

    /// Opens `/proc/PID/pagemap` (`None`: this process). Another process's needs
    /// ptrace-read access to it (same user and not made non-dumpable, or `CAP_SYS_PTRACE`).
    pub(crate) fn open_pid(pid: Option<u32>) -> std::io::Result<Self> {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/pagemap"),
            None => "/proc/self/pagemap".to_string(),
        };
        std::fs::File::open(path).map(|file| Self { file })
    }

    /// One `PAGEMAP_SCAN` walk of `[start, end)` asking `q` (its `start`/`end` are
    /// ignored): calls `f` for each output run, looping on `walk_end` while `out` fills up.
    /// Returns the number of ioctls.
    pub(crate) fn scan(
        &self,
        start: usize,
        end: usize,
        q: ScanArgs,
        out: &mut [PageRegion],
        mut f: impl FnMut(&PageRegion),
    ) -> Result<u64, Errno> {
        let fd = self.file.as_raw_fd();
        let (mut cursor, mut ioctls) = (start, 0);
        while cursor < end {
            let args = ScanArgs {
                start: cursor,
                end,
                ..q
            };
            ioctls += 1;
            let (n, walk_end) = sys::pagemap_scan(fd, &args, out)?;
            out[..n].iter().for_each(&mut f);
            if n < out.len() || walk_end <= cursor {
                break;
            }
            cursor = walk_end;
        }
        Ok(ioctls)
    }

    /// Calls `f(i, entry)` with the raw 64-bit pagemap entry of each page `vpn + i`,
    /// `i < n`, read in blocks of `buf.len()` entries (one `pread` each).
    ///
    /// A short read is an error (`ESRCH`), never a silent end: the range is inside the
    /// address space the file was opened on, so reading less means that address space is
    /// gone (the process exited or ran `execve`; the kernel then reads nothing).
    pub(crate) fn for_each_entry(
        &self,
        vpn: u64,
        n: u64,
        buf: &mut [u64],
        mut f: impl FnMut(u64, u64),
    ) -> std::io::Result<()> {
        let mut done = 0;
        while done < n {
            let want = ((n - done) as usize).min(buf.len());
            let got = self.read_entries(vpn + done, &mut buf[..want])?;
            for (i, &e) in buf[..got].iter().enumerate() {
                f(done + i as u64, e);
            }
            if got < want {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            done += got as u64;
        }
        Ok(())
    }

    /// Reads the raw entries of the pages from virtual page number `vpn` on into `entries`
    /// (one `pread`); returns how many were read.
    fn read_entries(&self, vpn: u64, entries: &mut [u64]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(entries);
        let mut done = 0;
        while done < bytes.len() {
            match self.file.read_at(&mut bytes[done..], vpn * 8 + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        for e in &mut entries[..done / 8] {
            *e = u64::from_le(*e);
        }
        Ok(done / 8)
    }

    /// Whether the running kernel has `PAGEMAP_SCAN`.
    pub(crate) fn scan_available() -> bool {
        let Some(pm) = Self::open() else {
            return false;
        };
        let mut out = [sys::EMPTY_PAGE_REGION; 1];
        // An empty range: a kernel with PAGEMAP_SCAN answers 0 entries; one without answers ENOTTY.
        let args = ScanArgs {
            start: 0x10000,
            end: 0x10000,
            ..Default::default()
        };
        sys::pagemap_scan(pm.file.as_raw_fd(), &args, &mut out).is_ok()
    }

    /// Calls `f(pages)` for every page run (numbered from `base`) in `[start, end)` whose pages
    /// are **not** write-protected: present (or swapped) without the uffd-wp bit
    /// (`PAGE_IS_WRITTEN`), or empty PTEs that carry no protection marker (zapped by
    /// `madvise`). Returns the number of ioctls.
    ///
    /// Both are asked in separate walks because `PAGEMAP_SCAN` matches a conjunction of
    /// categories per walk. Each walk loops on `walk_end` when `out` fills up.
    pub(crate) fn unprotected(
        &self,
        (base, page_size): (usize, usize),
        start: usize,
        end: usize,
        out: &mut [PageRegion],
        mut f: impl FnMut(RangeInclusive<u64>),
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
            ioctls += self.scan(start, end, q, out, |r| {
                f(pages_of(base, page_size, r.start as usize, r.end as usize))
            })?;
        }
        Ok(ioctls)
    }

    /// The address of the first page of `[start, end)` that has a present or swapped entry,
    /// if any (a zap in progress moves it up; `MADV_FREE` leaves it where it is).
    pub(crate) fn first_content(&self, start: usize, end: usize) -> Result<Option<usize>, Errno> {
        let mut out = [sys::EMPTY_PAGE_REGION; 1];
        let args = ScanArgs {
            start,
            end,
            category_anyof_mask: pm::PAGE_IS_PRESENT | pm::PAGE_IS_SWAPPED,
            return_mask: pm::PAGE_IS_PRESENT | pm::PAGE_IS_SWAPPED,
            ..Default::default()
        };
        let (n, _) = sys::pagemap_scan(self.file.as_raw_fd(), &args, &mut out)?;
        Ok((n > 0).then_some(out[0].start as usize))
    }

    /// Whether the page at `start` (`page_size` long) is still write-protected (present with
    /// the uffd-wp bit, or a protection marker). False when it cannot be determined.
    pub(crate) fn is_protected(&self, start: usize, page_size: usize) -> bool {
        let mut out = [sys::EMPTY_PAGE_REGION; 4];
        let mut unprotected = false;
        match self.unprotected(
            (start, page_size),
            start,
            start + page_size,
            &mut out,
            |_| unprotected = true,
        ) {
            Ok(_) => !unprotected,
            Err(_) => false,
        }
    }

    /// The async backend's harvest: `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING` over
    /// `[start, end)` reports every written page (setting its bit in `words`, pages numbered
    /// from `start`) and write-protects it again in the same walk. Loops on `walk_end` when
    /// the output vector fills up (and grows it for the next cut). Counts each ioctl in
    /// `scan_ioctls` as it is made; returns their number.
    ///
    /// With exactly this query (category and return mask `PAGE_IS_WRITTEN`) the kernel takes
    /// its fast path, which reports and arms every entry that is not protected, **empty
    /// entries without a marker included** (`pagemap_scan_pmd_entry`): a page zapped while
    /// unprotected (written in this epoch) without a `REMOVE` event, e.g. by `ftruncate`, is
    /// reported here. `tests/mappings/truncate.rs` checks it (page 7).
    pub(crate) fn harvest(
        &self,
        (start, end, page_size): (usize, usize, usize),
        words: &mut [u64],
        out: &mut Vec<PageRegion>,
        scan_ioctls: &AtomicU64,
    ) -> Result<u64, Errno> {
        let fd = self.file.as_raw_fd();
        let mut cursor = start;
        let mut ioctls = 0;
        loop {
            let args = ScanArgs {
                flags: pm::PM_SCAN_WP_MATCHING | pm::PM_SCAN_CHECK_WPASYNC,
                start: cursor,
                end,
                category_mask: pm::PAGE_IS_WRITTEN,
                return_mask: pm::PAGE_IS_WRITTEN,
                ..Default::default()
            };
            ioctls += 1;
            scan_ioctls.fetch_add(1, Relaxed);
            let (n, walk_end) = sys::pagemap_scan(fd, &args, out)?;
            for r in &out[..n] {
                set_dirty_bits(
                    words,
                    pages_of(start, page_size, r.start as usize, r.end as usize),
                );
            }
            if n < out.len() || walk_end >= end || walk_end <= cursor {
                break;
            }
            cursor = walk_end;
            let grown = out.len() * 2;
            out.resize(grown.min(1 << 20), sys::EMPTY_PAGE_REGION);
        }
        Ok(ioctls)
    }

    /// Sets in `words` the pages of `[start, end)` that are present and not file pages:
    /// inside a private file mapping, exactly the pages the kernel copied on write (COW).
    /// Read-only. Returns the number of ioctls.
    pub(crate) fn copied(
        &self,
        (start, end, page_size): (usize, usize, usize),
        words: &mut [u64],
        out: &mut [PageRegion],
    ) -> Result<u64, Errno> {
        let q = ScanArgs {
            category_inverted: pm::PAGE_IS_FILE,
            category_mask: pm::PAGE_IS_FILE | pm::PAGE_IS_PRESENT,
            return_mask: pm::PAGE_IS_PRESENT,
            ..Default::default()
        };
        self.scan(start, end, q, out, |r| {
            set_dirty_bits(
                words,
                pages_of(start, page_size, r.start as usize, r.end as usize),
            )
        })
    }
}
