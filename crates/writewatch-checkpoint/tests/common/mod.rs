//! Shared helpers for the integration tests.
#![allow(dead_code)]

/// splitmix64 (`next`, `below`, `fill`), from `writewatch-testkit`.
pub use writewatch_testkit::SplitMix64 as Rng;

/// Sorted unique page indexes -> coalesced `(first, count)` runs.
pub fn coalesce(pages: &mut Vec<u64>) -> Vec<(u64, u64)> {
    pages.sort_unstable();
    pages.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &p in pages.iter() {
        match runs.last_mut() {
            Some((f, c)) if *f + *c == p => *c += 1,
            _ => runs.push((p, 1)),
        }
    }
    runs
}

/// Index of the first differing page, for readable assertion messages.
pub fn first_diff_page(a: &[u8], b: &[u8], page_size: usize) -> Option<usize> {
    if a.len() != b.len() {
        return Some(usize::MAX);
    }
    a.chunks(page_size)
        .zip(b.chunks(page_size))
        .position(|(x, y)| x != y)
}

/// Applies one epoch of random writes to `region`: random page fills, partial
/// writes, zeroings and a contiguous burst. Returns the dirty pages.
pub fn mutate(rng: &mut Rng, region: &mut [u8], page_size: usize, writes: usize) -> Vec<u64> {
    let pages = (region.len() / page_size) as u64;
    let mut dirty = Vec::new();
    for _ in 0..writes {
        let p = rng.below(pages);
        let page = &mut region[p as usize * page_size..(p as usize + 1) * page_size];
        match rng.below(10) {
            0 | 1 => page.fill(0),
            2..=5 => {
                let off = rng.below(page_size as u64 - 64) as usize;
                rng.fill(&mut page[off..off + 64]);
            }
            _ => rng.fill(page),
        }
        dirty.push(p);
    }
    // A contiguous burst spanning run-size boundaries sometimes.
    if rng.below(2) == 0 {
        let len = 1 + rng.below(64.min(pages));
        let first = rng.below(pages - len + 1);
        for p in first..first + len {
            let page = &mut region[p as usize * page_size..(p as usize + 1) * page_size];
            rng.fill(page);
            dirty.push(p);
        }
    }
    dirty
}
