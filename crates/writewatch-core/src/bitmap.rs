//! An atomic dirty bitmap, harvested one word at a time.
//!
//! One bit per tracked page. The fault-service thread sets bits (`fetch_or`); readers peek with
//! loads; a cut harvests with one `swap(0)` per 64-bit word, so a bit set concurrently with the
//! harvest lands either in the harvested copy or in the bitmap that stays behind, never in
//! neither. (In the sync backend only the service thread sets bits and the cut runs on that same
//! thread, so this race does not even arise there; the per-word swap keeps the bitmap correct
//! for the backends where it does.)
//!
//! **Over-report rule**: a set bit means "this page may have been written"; a clear bit means
//! "this page has certainly not been written since the last harvest". Setting a bit is always
//! safe; clearing one is only done by `harvest`.

use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed-size bitmap of atomic words.
#[derive(Debug)]
pub(crate) struct AtomicBitmap {
    words: Box<[AtomicU64]>,
    bits: usize,
}

impl AtomicBitmap {
    /// A bitmap of `bits` clear bits.
    pub(crate) fn new(bits: usize) -> Self {
        let words = (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Self { words, bits }
    }

    /// The words (for the mprotect backend's signal handler, which sets bits itself).
    pub(crate) fn words(&self) -> &[AtomicU64] {
        &self.words
    }

    /// Sets bit `i`; returns whether it was already set.
    pub(crate) fn set(&self, i: usize) -> bool {
        debug_assert!(i < self.bits);
        let m = 1u64 << (i % 64);
        self.words[i / 64].fetch_or(m, Ordering::AcqRel) & m != 0
    }

    /// Sets bits `[start, start+count)`.
    pub(crate) fn set_range(&self, start: usize, count: usize) {
        let end = (start + count).min(self.bits);
        let mut i = start;
        while i < end {
            let w = i / 64;
            let lo = i % 64;
            let hi = (end - w * 64).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            self.words[w].fetch_or(mask, Ordering::AcqRel);
            i = w * 64 + hi;
        }
    }

    /// Whether bit `i` is set.
    pub(crate) fn get(&self, i: usize) -> bool {
        i < self.bits && self.words[i / 64].load(Ordering::Acquire) & (1u64 << (i % 64)) != 0
    }

    /// A copy of the words (peek; the bitmap is unchanged).
    pub(crate) fn snapshot(&self) -> Vec<u64> {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .collect()
    }

    /// Takes every set bit out of the bitmap: one atomic swap per word.
    pub(crate) fn harvest(&self) -> Vec<u64> {
        self.words
            .iter()
            .map(|w| w.swap(0, Ordering::AcqRel))
            .collect()
    }

    /// ORs `words` (as returned by `harvest`) back in. Used to undo a harvest whose cut failed,
    /// so a failed cut never loses dirty bits.
    pub(crate) fn restore(&self, words: &[u64]) {
        for (w, v) in self.words.iter().zip(words) {
            if *v != 0 {
                w.fetch_or(*v, Ordering::AcqRel);
            }
        }
    }

    /// Number of set bits.
    pub(crate) fn count_ones(&self) -> usize {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire).count_ones() as usize)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_harvest() {
        let b = AtomicBitmap::new(130);
        assert!(!b.set(0));
        assert!(b.set(0));
        b.set(129);
        assert!(b.get(0) && b.get(129) && !b.get(1) && !b.get(500));
        assert_eq!(b.count_ones(), 2);
        let h = b.harvest();
        assert_eq!(h, vec![1, 0, 2]);
        assert_eq!(b.count_ones(), 0);
        b.restore(&h);
        assert_eq!(b.count_ones(), 2);
    }

    #[test]
    fn set_range_matches_single_sets() {
        for start in 0..140 {
            for count in [0, 1, 2, 63, 64, 65, 127, 128, 129] {
                let a = AtomicBitmap::new(200);
                let b = AtomicBitmap::new(200);
                a.set_range(start, count);
                for i in start..(start + count).min(200) {
                    b.set(i);
                }
                assert_eq!(a.snapshot(), b.snapshot(), "start {start} count {count}");
            }
        }
    }
}
