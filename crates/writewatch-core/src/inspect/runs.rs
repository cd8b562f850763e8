//! [`PageRuns`]: a set of pages as sorted runs, built in address order.

/// A set of pages of one mapping, as sorted, disjoint, non-adjacent runs `(first, count)` of
/// 4 KiB page numbers counted from the start of the mapping (or of the inspected range).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PageRuns {
    /// Total number of pages.
    pub pages: u64,
    /// The runs, ascending.
    pub runs: Vec<(u64, u64)>,
}

impl PageRuns {
    /// Adds `count` pages from `first` on; `first` must not be below the end of the last run.
    pub(crate) fn push(&mut self, first: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.pages += count;
        match self.runs.last_mut() {
            Some((f, c)) if *f + *c == first => *c += count,
            _ => self.runs.push((first, count)),
        }
    }

    /// Whether page `p` is in the set.
    pub fn contains(&self, p: u64) -> bool {
        let i = self.runs.partition_point(|&(f, _)| f <= p);
        i > 0 && {
            let (f, c) = self.runs[i - 1];
            p < f + c
        }
    }

    /// Every page, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|&(f, c)| f..f + c)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }
}

#[cfg(test)]
mod tests {
    use super::PageRuns;

    #[test]
    fn push_merges_adjacent_runs() {
        let mut r = PageRuns::default();
        r.push(0, 2);
        r.push(2, 1);
        r.push(5, 0);
        r.push(7, 3);
        assert_eq!(r.runs, vec![(0, 3), (7, 3)]);
        assert_eq!(r.pages, 6);
        assert!(r.contains(2) && !r.contains(3) && r.contains(9) && !r.contains(10));
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![0, 1, 2, 7, 8, 9]);
    }
}
