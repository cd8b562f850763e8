//! Dirty sets and the cut planner.
//!
//! A [`DirtySet`] is the answer to "which pages of this region were written in this epoch?".
//!
//! # The over-report rule
//!
//! A dirty set may contain pages that were **not** written (over-report), but it never misses
//! a page that was (under-report). Sources of over-report, all documented where they arise:
//! an adopted range reports every page in its first epoch (its content is new to the tracker);
//! `madvise(MADV_DONTNEED)` reports the removed range (its content became zero); a huge page
//! reports every base page it covers. The sync backend reports exactly the written pages of an
//! owned region otherwise.

use bitvec::prelude::{BitVec, Lsb0};

/// A set of page indices of one region, with their coalesced runs.
///
/// ```
/// use writewatch_core::DirtySet;
/// let set = DirtySet::from_pages(4096, 16, [1, 2, 3, 9]);
/// assert_eq!(set.len(), 4);
/// assert!(set.contains(2) && !set.contains(4));
/// assert_eq!(set.iter().collect::<Vec<_>>(), vec![1, 2, 3, 9]);
/// assert_eq!(set.runs().collect::<Vec<_>>(), vec![(1, 3), (9, 1)]);
/// assert_eq!(set.bytes(), 4 * 4096);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DirtySet {
    bits: BitVec<u64, Lsb0>,
    page_size: usize,
    count: usize,
}

impl std::fmt::Debug for DirtySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtySet")
            .field("pages", &self.count)
            .field("of", &self.bits.len())
            .field("runs", &self.runs().take(8).collect::<Vec<_>>())
            .finish()
    }
}

impl DirtySet {
    /// An empty set over a region of `page_count` pages of `page_size` bytes.
    pub fn empty(page_size: usize, page_count: u64) -> Self {
        Self {
            bits: BitVec::repeat(false, page_count as usize),
            page_size,
            count: 0,
        }
    }

    /// A set with every page of the region in it.
    pub fn full(page_size: usize, page_count: u64) -> Self {
        Self {
            bits: BitVec::repeat(true, page_count as usize),
            page_size,
            count: page_count as usize,
        }
    }

    /// A set holding `pages` (indices at or past `page_count` are ignored).
    pub fn from_pages(
        page_size: usize,
        page_count: u64,
        pages: impl IntoIterator<Item = u64>,
    ) -> Self {
        let mut s = Self::empty(page_size, page_count);
        for p in pages {
            s.insert(p);
        }
        s
    }

    /// Builds a set from bitmap words (bit `i` of word `i / 64` = page `i`).
    pub(crate) fn from_words(page_size: usize, page_count: u64, mut words: Vec<u64>) -> Self {
        let n = page_count as usize;
        words.resize(n.div_ceil(64), 0);
        if n % 64 != 0 {
            if let Some(last) = words.last_mut() {
                *last &= (1u64 << (n % 64)) - 1;
            }
        }
        let count = words.iter().map(|w| w.count_ones() as usize).sum();
        Self::from_words_counted(page_size, page_count, words, count)
    }

    /// [`from_words`](Self::from_words) when the number of set bits is known (a harvest
    /// counted them), so a huge, mostly clean bitmap is not scanned. `words` must have no bit
    /// set at or past `page_count`.
    pub(crate) fn from_words_counted(
        page_size: usize,
        page_count: u64,
        mut words: Vec<u64>,
        count: usize,
    ) -> Self {
        let n = page_count as usize;
        words.resize(n.div_ceil(64), 0);
        let mut bits = BitVec::from_vec(words);
        bits.truncate(n);
        Self {
            bits,
            page_size,
            count,
        }
    }

    /// The underlying bitmap words (bit `i` of word `i / 64` = page `i`).
    pub(crate) fn words(&self) -> &[u64] {
        self.bits.as_raw_slice()
    }

    /// Adds a page; returns whether it was newly inserted. Out-of-range pages are ignored.
    pub fn insert(&mut self, page: u64) -> bool {
        let p = page as usize;
        if p >= self.bits.len() || self.bits[p] {
            return false;
        }
        self.bits.set(p, true);
        self.count += 1;
        true
    }

    /// Adds every page of `other` (which must describe the same region geometry).
    ///
    /// # Panics
    /// Never: sets of different sizes are merged over their common prefix.
    pub fn union_with(&mut self, other: &DirtySet) {
        let n = self.bits.len().min(other.bits.len());
        let (a, b) = (&mut self.bits[..n], &other.bits[..n]);
        *a |= b;
        self.count = self.bits.count_ones();
    }

    /// Number of pages in the set.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no page is in the set.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether `page` is in the set (false for pages outside the region).
    pub fn contains(&self, page: u64) -> bool {
        self.bits.get(page as usize).map(|b| *b).unwrap_or(false)
    }

    /// Page indices, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.iter_ones().map(|i| i as u64)
    }

    /// The first page in the set at or after `page`.
    pub fn iter_from(&self, page: u64) -> Option<u64> {
        next_bit(
            self.bits.as_raw_slice(),
            self.bits.len(),
            page as usize,
            true,
        )
        .map(|p| p as u64)
    }

    /// Coalesced runs `(first_page, count)`, ascending and non-adjacent.
    pub fn runs(&self) -> Runs<'_> {
        Runs {
            words: self.bits.as_raw_slice(),
            nbits: self.bits.len(),
            pos: 0,
        }
    }

    /// Bytes covered by the set (`len() * page_size()`).
    pub fn bytes(&self) -> u64 {
        self.count as u64 * self.page_size as u64
    }

    /// Size of one page of the region, in bytes (the dirty granularity).
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Number of pages of the region the set is over.
    pub fn page_count(&self) -> u64 {
        self.bits.len() as u64
    }
}

/// Iterator over the coalesced runs of a [`DirtySet`]; see [`DirtySet::runs`].
#[derive(Debug, Clone)]
pub struct Runs<'a> {
    words: &'a [u64],
    nbits: usize,
    pos: usize,
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64);
    fn next(&mut self) -> Option<(u64, u64)> {
        let start = next_bit(self.words, self.nbits, self.pos, true)?;
        let end = next_bit(self.words, self.nbits, start, false).unwrap_or(self.nbits);
        self.pos = end;
        Some((start as u64, (end - start) as u64))
    }
}

/// Index of the next bit at or after `from` whose value is `value`, scanning whole words.
fn next_bit(words: &[u64], nbits: usize, from: usize, value: bool) -> Option<usize> {
    if from >= nbits {
        return None;
    }
    let mut w = from / 64;
    let flip = if value { 0 } else { u64::MAX };
    let mut cur = (words[w] ^ flip) & (u64::MAX << (from % 64));
    loop {
        if cur != 0 {
            let i = w * 64 + cur.trailing_zeros() as usize;
            return (i < nbits).then_some(i);
        }
        w += 1;
        if w >= words.len() || w * 64 >= nbits {
            return None;
        }
        cur = words[w] ^ flip;
    }
}

/// Plans the re-protect ioctls of a cut: coalesced runs, with runs separated by a gap of at
/// most `max_gap` clean pages merged into one range.
///
/// Re-protecting an already-protected page is a no-op for the kernel, so merging only costs the
/// page-table walk over the gap; on the reference machine one extra ioctl costs ~1 us and
/// walking one protected PTE ~20-70 ns, so gaps of up to ~8 pages are cheaper to merge.
/// The number of ranges returned is at most the number of runs, hence at most the number of
/// dirty pages.
pub(crate) fn plan_ranges(runs: impl Iterator<Item = (u64, u64)>, max_gap: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (start, count) in runs {
        if count == 0 {
            continue;
        }
        match out.last_mut() {
            Some((s, c)) if start >= *s + *c && start - (*s + *c) <= max_gap => {
                *c = start + count - *s
            }
            _ => out.push((start, count)),
        }
    }
    out
}

/// Merges a run into a sorted list of non-overlapping runs (used for the suspect-range list).
pub(crate) fn add_run(list: &mut Vec<(u64, u64)>, start: u64, count: u64) {
    if count == 0 {
        return;
    }
    let mut s = start;
    let mut e = start + count;
    let mut out = Vec::with_capacity(list.len() + 1);
    let mut placed = false;
    for &(a, c) in list.iter() {
        let b = a + c;
        if b < s {
            out.push((a, c));
        } else if a > e {
            if !placed {
                out.push((s, e - s));
                placed = true;
            }
            out.push((a, c));
        } else {
            s = s.min(a);
            e = e.max(b);
        }
    }
    if !placed {
        out.push((s, e - s));
    }
    *list = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_runs(pages: &[u64]) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = Vec::new();
        for &p in pages {
            match v.last_mut() {
                Some((s, c)) if *s + *c == p => *c += 1,
                _ => v.push((p, 1)),
            }
        }
        v
    }

    #[test]
    fn runs_match_naive_over_word_boundaries() {
        let n = 300u64;
        let patterns: Vec<Vec<u64>> = vec![
            vec![],
            vec![0],
            vec![299],
            (0..300).collect(),
            (60..70).collect(),
            (0..300).filter(|p| p % 3 == 0).collect(),
            (63..=64).chain(127..=128).chain(191..=256).collect(),
        ];
        for pages in patterns {
            let s = DirtySet::from_pages(4096, n, pages.iter().copied());
            assert_eq!(s.runs().collect::<Vec<_>>(), naive_runs(&pages));
            assert_eq!(s.iter().collect::<Vec<_>>(), pages);
            assert_eq!(s.len(), pages.len());
        }
    }

    #[test]
    fn from_words_masks_tail() {
        let s = DirtySet::from_words(4096, 70, vec![u64::MAX, u64::MAX]);
        assert_eq!(s.len(), 70);
        assert_eq!(s.runs().collect::<Vec<_>>(), vec![(0, 70)]);
        assert!(!s.contains(70));
    }

    #[test]
    fn union() {
        let mut a = DirtySet::from_pages(4096, 10, [1, 2]);
        a.union_with(&DirtySet::from_pages(4096, 10, [2, 7]));
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![1, 2, 7]);
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn plan_merges_small_gaps_only() {
        let runs = vec![(0, 1), (2, 1), (20, 3), (32, 1)];
        assert_eq!(plan_ranges(runs.clone().into_iter(), 0), runs);
        assert_eq!(
            plan_ranges(runs.clone().into_iter(), 1),
            vec![(0, 3), (20, 3), (32, 1)]
        );
        assert_eq!(
            plan_ranges(runs.clone().into_iter(), 9),
            vec![(0, 3), (20, 13)]
        );
        assert_eq!(plan_ranges(runs.into_iter(), 100), vec![(0, 33)]);
    }

    #[test]
    fn plan_never_exceeds_runs_and_covers_them() {
        let mut seed = 0x1234_5678_u64;
        for _ in 0..200 {
            let mut pages = Vec::new();
            for p in 0..500u64 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if (seed >> 33) % 7 == 0 {
                    pages.push(p);
                }
            }
            let s = DirtySet::from_pages(4096, 500, pages.iter().copied());
            let runs: Vec<_> = s.runs().collect();
            for gap in [0, 1, 4, 8, 64] {
                let plan = plan_ranges(runs.iter().copied(), gap);
                assert!(plan.len() <= runs.len());
                for &p in &pages {
                    assert!(plan.iter().any(|&(a, c)| p >= a && p < a + c));
                }
            }
        }
    }

    #[test]
    fn add_run_merges() {
        let mut l = Vec::new();
        add_run(&mut l, 10, 5);
        add_run(&mut l, 0, 2);
        add_run(&mut l, 30, 1);
        assert_eq!(l, vec![(0, 2), (10, 5), (30, 1)]);
        add_run(&mut l, 2, 8);
        assert_eq!(l, vec![(0, 15), (30, 1)]);
        add_run(&mut l, 14, 20);
        assert_eq!(l, vec![(0, 34)]);
    }
}
