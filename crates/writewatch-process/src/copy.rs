//! Copying page runs out of the target with batched `process_vm_readv`, in chunks.

use crate::sys;

/// Pages per chunk (4 MiB of 4 KiB pages): the unit a round hands to the image writer.
pub(crate) const CHUNK_PAGES: usize = 1024;

/// Most iovecs per `process_vm_readv` (`IOV_MAX`).
const MAX_IOV: usize = 1024;

/// What a copy read.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Copied {
    pub pages: u64,
    /// Pages the kernel refused to read (unmapped meanwhile, beyond the end of a file,
    /// device memory): recorded as zero, and counted.
    pub unreadable: u64,
    /// Time spent in `process_vm_readv` (the read side of the copy), nanoseconds.
    pub read_ns: u64,
    /// CPU time of the reading thread in `process_vm_readv`, nanoseconds (without the time
    /// it waited for a CPU: what the copy costs, whatever its priority).
    pub read_cpu_ns: u64,
}

impl Copied {
    pub(crate) fn add(&mut self, o: Copied) {
        self.pages += o.pages;
        self.unreadable += o.unreadable;
        self.read_ns += o.read_ns;
        self.read_cpu_ns += o.read_cpu_ns;
    }
}

/// Reads pages `runs` (`(first, count)` page numbers from `base`) of process `pid` in
/// chunks of at most [`CHUNK_PAGES`] pages, straight into buffers from `alloc(bytes)` (one
/// `process_vm_readv` per up to 1024 runs, no intermediate copy), and hands each chunk to
/// `emit(page_numbers, bytes)` in ascending order.
pub(crate) fn read_chunks<E>(
    pid: u32,
    base: usize,
    page: usize,
    runs: &[(u64, u64)],
    alloc: &mut dyn FnMut(usize) -> Vec<u8>,
    emit: &mut dyn FnMut(Vec<u64>, Vec<u8>) -> Result<(), E>,
) -> Result<Copied, E> {
    let mut out = Copied::default();
    let mut chunk: Vec<(u64, u64)> = Vec::new();
    let mut n = 0usize;
    let mut flush = |chunk: &mut Vec<(u64, u64)>, n: &mut usize, out: &mut Copied| {
        if *n == 0 {
            return Ok(());
        }
        let mut data = alloc(*n * page);
        data.truncate(*n * page);
        data.resize(*n * page, 0);
        let c = read_into(pid, base, page, chunk, &mut data);
        out.add(c);
        let pages = chunk.iter().flat_map(|&(f, c)| f..f + c).collect();
        chunk.clear();
        *n = 0;
        emit(pages, data)
    };
    for &(mut first, mut count) in runs {
        while count > 0 {
            let take = count.min((CHUNK_PAGES - n) as u64);
            chunk.push((first, take));
            n += take as usize;
            first += take;
            count -= take;
            if n == CHUNK_PAGES {
                flush(&mut chunk, &mut n, &mut out)?;
            }
        }
    }
    flush(&mut chunk, &mut n, &mut out)?;
    Ok(out)
}

/// Reads `runs` into `buf` (their pages back to back). A page the kernel refuses is zeroed
/// and counted; the read goes on after it.
pub(crate) fn read_into(
    pid: u32,
    base: usize,
    page: usize,
    runs: &[(u64, u64)],
    buf: &mut [u8],
) -> Copied {
    let mut out = Copied::default();
    // Cursor: run `i`, `k` pages into it, `off` bytes into `buf`.
    let (mut i, mut k, mut off) = (0usize, 0u64, 0usize);
    while i < runs.len() {
        let mut addrs = Vec::with_capacity(MAX_IOV.min(runs.len() - i));
        let mut lens = Vec::with_capacity(addrs.capacity());
        for (j, &(f, c)) in runs[i..].iter().enumerate().take(MAX_IOV) {
            let skip = if j == 0 { k } else { 0 };
            addrs.push(base + (f + skip) as usize * page);
            lens.push((c - skip) as usize * page);
        }
        let want: usize = lens.iter().sum();
        let mut slices: Vec<&mut [u8]> = Vec::with_capacity(lens.len());
        let mut rest = &mut buf[off..off + want];
        for l in &lens {
            let (a, b) = rest.split_at_mut(*l);
            slices.push(a);
            rest = b;
        }
        let (t, cpu) = (std::time::Instant::now(), sys::thread_cpu_ns());
        let got = sys::read_remote(pid, &addrs, &mut slices).unwrap_or(0);
        out.read_ns += t.elapsed().as_nanos() as u64;
        out.read_cpu_ns += sys::thread_cpu_ns().saturating_sub(cpu);
        let mut done = (got / page) as u64;
        let bad = got < want;
        if bad {
            done += 1; // the page at the failure: zero, then go on after it
        }
        out.pages += done;
        // Advance the cursor by `done` pages.
        let mut left = done;
        while left > 0 {
            let avail = runs[i].1 - k;
            let step = left.min(avail);
            k += step;
            left -= step;
            if k == runs[i].1 {
                i += 1;
                k = 0;
            }
        }
        off += done as usize * page;
        if bad {
            buf[off - page..off].fill(0);
            out.unreadable += 1;
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads this process's own pages (oracle: the buffer itself): an unmapped page (the
    /// NULL page) is zero and counted, a run crossing the chunk boundary is split, every
    /// other page is read exactly.
    #[test]
    fn read_chunks_reads_runs_and_zeroes_unreadable_pages() {
        let page = crate::sys::page_size();
        let n = CHUNK_PAGES + 100;
        let mut mem = vec![0u8; (n + 1) * page];
        let off = mem.as_ptr().align_offset(page);
        let base_addr = mem.as_ptr() as usize + off;
        for (i, b) in mem[off..off + n * page].iter_mut().enumerate() {
            *b = (i / page) as u8 ^ (i as u8);
        }
        let first = (base_addr / page) as u64;
        let runs = vec![(0, 1), (first, 3), (first + 5, n as u64 - 5)];
        let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
        let c = read_chunks::<()>(
            std::process::id(),
            0,
            page,
            &runs,
            &mut Vec::with_capacity,
            &mut |pages, data| {
                assert!(pages.len() <= CHUNK_PAGES);
                for (k, p) in pages.into_iter().enumerate() {
                    got.push((p, data[k * page..(k + 1) * page].to_vec()));
                }
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(c.unreadable, 1);
        assert_eq!(c.pages, 1 + 3 + n as u64 - 5);
        assert_eq!(got.len() as u64, c.pages);
        assert_eq!(got[0].0, 0);
        assert!(got[0].1.iter().all(|&b| b == 0));
        for (p, bytes) in &got[1..] {
            let i = (*p - first) as usize;
            assert_eq!(
                bytes[..],
                mem[off + i * page..off + (i + 1) * page],
                "page {i}"
            );
        }
    }
}
