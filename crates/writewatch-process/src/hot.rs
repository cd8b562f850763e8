//! Hot pages: the pages of a piece that every pre-copy round finds written again.
//!
//! Copying them in every round is wasted work (the next round copies them again), and
//! re-protecting them costs the target one write fault per page per round. So a page that
//! two consecutive harvests report joins its piece's *hot* set, and the following pre-copy
//! rounds harvest the piece around it: the hot pages keep their `written` state (no
//! re-protection, no fault, no copy) until the last pre-copy round, whose harvest walks
//! every page again, reports them (still written) and copies them at memory speed just
//! before the freeze. The final round walks every page too, so the image is still the
//! memory at the freeze (docs/design.md section 12).

use crate::copy::normalize;

/// Shortest hot run left out of a harvest, in pages: each gap in a walk costs two more
/// `PAGEMAP_SCAN` calls, and a few re-armed pages cost less.
pub(crate) const MIN_HOT_RUN: u64 = 4;

/// Most hot runs per piece (the longest are kept): bounds the walks per piece per round.
pub(crate) const MAX_HOT_RUNS: usize = 256;

/// The hot set of one piece, in page runs `(first, count)` relative to its start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Heat {
    /// What the previous harvest reported (sorted, merged).
    last: Vec<(u64, u64)>,
    /// Left out of the harvests until the last pre-copy round (sorted, disjoint).
    hot: Vec<(u64, u64)>,
}

impl Heat {
    /// The runs of a piece of `pages` pages to harvest: all of it but the hot runs.
    pub(crate) fn walk(&self, pages: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::with_capacity(self.hot.len() + 1);
        let mut at = 0;
        for &(f, c) in &self.hot {
            if f > at {
                out.push((at, f - at));
            }
            at = at.max(f + c);
        }
        if at < pages {
            out.push((at, pages - at));
        }
        out
    }

    /// After a harvest that left the hot runs out and reported `got`: the pages reported
    /// by this and the previous harvest join the hot set.
    pub(crate) fn update(&mut self, got: &[(u64, u64)]) {
        let mut got = got.to_vec();
        normalize(&mut got);
        let mut hot = intersect(&self.last, &got);
        hot.extend_from_slice(&self.hot);
        normalize(&mut hot);
        hot.retain(|r| r.1 >= MIN_HOT_RUN);
        if hot.len() > MAX_HOT_RUNS {
            hot.sort_unstable_by_key(|r| std::cmp::Reverse(r.1));
            hot.truncate(MAX_HOT_RUNS);
            hot.sort_unstable();
        }
        self.hot = hot;
        self.last = got;
    }

    /// After a harvest that walked every page: nothing is left out any more.
    pub(crate) fn cool(&mut self, got: &[(u64, u64)]) {
        self.hot.clear();
        self.last = got.to_vec();
        normalize(&mut self.last);
    }

    /// Pages in the hot set.
    pub(crate) fn hot_pages(&self) -> u64 {
        self.hot.iter().map(|r| r.1).sum()
    }
}

/// The pages in both `a` and `b` (each sorted and disjoint).
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), (a[i].0 + a[i].1).min(b[j].0 + b[j].1));
        if s < e {
            out.push((s, e - s));
        }
        if a[i].0 + a[i].1 < b[j].0 + b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page sets as bitmaps: the oracle for the run arithmetic.
    fn bits(runs: &[(u64, u64)], n: u64) -> Vec<bool> {
        let mut v = vec![false; n as usize];
        for &(f, c) in runs {
            for p in f..f + c {
                v[p as usize] = true;
            }
        }
        v
    }

    #[test]
    fn pages_written_in_two_consecutive_harvests_are_left_out_until_cooled() {
        let n = 200;
        let mut h = Heat::default();
        assert_eq!(h.walk(n), vec![(0, n)]);
        h.update(&[(10, 20), (100, 2), (150, 10)]);
        assert_eq!(h.hot_pages(), 0, "one harvest is not enough");
        h.update(&[(15, 30), (100, 2), (150, 10)]);
        // 15..30 and 150..160 twice; 100..102 too, but shorter than MIN_HOT_RUN.
        assert_eq!(h.hot, vec![(15, 15), (150, 10)]);
        let walk = h.walk(n);
        let (w, hot) = (bits(&walk, n), bits(&h.hot, n));
        for p in 0..n as usize {
            assert_ne!(w[p], hot[p], "page {p}: walked xor hot");
        }
        // Hot runs stay hot while left out (a harvest cannot report them).
        h.update(&[(0, 1)]);
        assert_eq!(h.hot_pages(), 25);
        h.cool(&[(15, 15)]);
        assert_eq!(h.walk(n), vec![(0, n)]);
    }

    #[test]
    fn the_longest_hot_runs_are_kept() {
        let mut h = Heat::default();
        let runs: Vec<(u64, u64)> = (0..MAX_HOT_RUNS as u64 + 10)
            .map(|i| (i * 20, MIN_HOT_RUN + i % 7))
            .collect();
        h.update(&runs);
        h.update(&runs);
        assert_eq!(h.hot.len(), MAX_HOT_RUNS);
        assert!(h.hot.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0));
        let shortest_kept = h.hot.iter().map(|r| r.1).min().unwrap();
        let dropped = runs.iter().filter(|r| !h.hot.contains(r));
        assert!(dropped.into_iter().all(|r| r.1 <= shortest_kept));
    }

    #[test]
    fn intersect_matches_bitmaps() {
        let a = [(0, 5), (10, 10), (30, 1)];
        let b = [(3, 9), (19, 12)];
        let got = bits(&intersect(&a, &b), 40);
        let (x, y) = (bits(&a, 40), bits(&b, 40));
        for p in 0..40 {
            assert_eq!(got[p], x[p] && y[p], "page {p}");
        }
    }
}
