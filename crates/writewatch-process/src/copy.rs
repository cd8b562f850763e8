//! Copying page runs out of the target with batched `process_vm_readv`, bounded memory.

use crate::sys;

/// Pages per `process_vm_readv` batch (1 MiB of 4 KiB pages): the copy's memory bound.
const BATCH_PAGES: usize = 256;

/// Receives each copied page: `(page_number, bytes)`.
pub(crate) type Sink<'a, E> = &'a mut dyn FnMut(u64, &[u8]) -> Result<(), E>;

/// What a copy read.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Copied {
    pub pages: u64,
    /// Pages the kernel refused to read (unmapped meanwhile, beyond the end of a file,
    /// device memory): recorded as zero, and counted.
    pub unreadable: u64,
    /// Time spent in `process_vm_readv` (the read side of the copy), nanoseconds.
    pub read_ns: u64,
}

/// Reads pages `runs` (`(first, count)` page numbers from `base`) of process `pid` and hands
/// each to `sink(page_number, bytes)` in ascending order.
pub(crate) fn copy_runs<E>(
    pid: u32,
    base: usize,
    page: usize,
    runs: &[(u64, u64)],
    sink: Sink<'_, E>,
) -> Result<Copied, E> {
    let mut buf = vec![0u8; BATCH_PAGES * page];
    let mut out = Copied::default();
    let mut pages: Vec<u64> = Vec::with_capacity(BATCH_PAGES);
    let mut flush = |pages: &mut Vec<u64>, out: &mut Copied| -> Result<(), E> {
        let mut done = 0;
        while done < pages.len() {
            // iovecs for consecutive pages from `done`
            let mut addrs = Vec::new();
            let mut lens = Vec::new();
            let mut i = done;
            while i < pages.len() {
                let start = i;
                while i + 1 < pages.len() && pages[i + 1] == pages[i] + 1 {
                    i += 1;
                }
                addrs.push(base + pages[start] as usize * page);
                lens.push((i + 1 - start) * page);
                i += 1;
                if addrs.len() == 1024 {
                    break;
                }
            }
            let total: usize = lens.iter().sum();
            let mut slices: Vec<&mut [u8]> = Vec::with_capacity(lens.len());
            let mut rest = &mut buf[..total];
            for l in &lens {
                let (a, b) = rest.split_at_mut(*l);
                slices.push(a);
                rest = b;
            }
            let t = std::time::Instant::now();
            let n = sys::read_remote(pid, &addrs, &mut slices).unwrap_or(0);
            out.read_ns += t.elapsed().as_nanos() as u64;
            let full = n / page;
            let span = total / page;
            for k in 0..full.min(span) {
                sink(pages[done + k], &buf[k * page..(k + 1) * page])?;
            }
            out.pages += full.min(span) as u64;
            if full < span {
                // The page at `full` could not be read: record it as zero, go on after it.
                buf[full * page..(full + 1) * page].fill(0);
                sink(pages[done + full], &buf[full * page..(full + 1) * page])?;
                out.pages += 1;
                out.unreadable += 1;
                done += full + 1;
            } else {
                done += span;
            }
        }
        pages.clear();
        Ok(())
    };
    for &(first, count) in runs {
        for p in first..first + count {
            pages.push(p);
            if pages.len() == BATCH_PAGES {
                flush(&mut pages, &mut out)?;
            }
        }
    }
    flush(&mut pages, &mut out)?;
    Ok(out)
}

/// Adds page runs of `[a, b)` (addresses) relative to `base` to `runs`, merging with the last
/// run when adjacent or overlapping (harvest walks return ascending runs per walk).
pub(crate) fn push_run(runs: &mut Vec<(u64, u64)>, base: usize, page: usize, a: usize, b: usize) {
    let first = ((a - base) / page) as u64;
    let end = (b - base).div_ceil(page) as u64;
    runs.push((first, end - first));
}

/// Sorts and merges overlapping or adjacent runs.
pub(crate) fn normalize(runs: &mut Vec<(u64, u64)>) {
    runs.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for &(f, c) in runs.iter() {
        if let Some(last) = out.last_mut() {
            if f <= last.0 + last.1 {
                let end = (last.0 + last.1).max(f + c);
                last.1 = end - last.0;
                continue;
            }
        }
        out.push((f, c));
    }
    *runs = out;
}
