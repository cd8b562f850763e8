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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A fixed-size bitmap of atomic words, with a summary level: one bit per word, set after the
/// word's own bit by every setter of this type. Harvests and peeks visit only the words whose
/// summary bit is set, so their cost follows the dirty pages, not the region's size (a 1 TiB
/// reservation has 4 Mi words). Memory comes zeroed from the allocator: untouched words cost
/// nothing.
///
/// A setter that writes the words directly (the mprotect backend's signal handler, through
/// [`external_words`](Self::external_words)) bypasses the summary: from then on harvests scan
/// every word.
#[derive(Debug)]
pub(crate) struct AtomicBitmap {
    words: crate::sys::ZeroedSlice<AtomicU64>,
    summary: crate::sys::ZeroedSlice<AtomicU64>,
    /// Set once the words were handed to an external setter: the summary is not complete.
    external: AtomicBool,
    bits: usize,
}

/// What [`AtomicBitmap::harvest`] took: the words (zero where nothing was set) and the number
/// of set bits.
pub(crate) struct Harvest {
    pub words: Vec<u64>,
    pub count: usize,
}

impl AtomicBitmap {
    /// A bitmap of `bits` clear bits.
    pub(crate) fn new(bits: usize) -> Self {
        let n = bits.div_ceil(64);
        Self {
            words: crate::sys::zeroed_atomics(n),
            summary: crate::sys::zeroed_atomics(n.div_ceil(64)),
            external: AtomicBool::new(false),
            bits,
        }
    }

    /// The words, for the mprotect backend's signal handler, which sets bits itself (without
    /// the summary: harvests scan every word from now on).
    pub(crate) fn external_words(&self) -> &[AtomicU64] {
        self.external.store(true, Ordering::SeqCst);
        &self.words
    }

    /// Address range of the words (to refuse adopting the tracker's own memory).
    pub(crate) fn words_addr(&self) -> usize {
        self.words.as_ptr() as usize
    }

    fn mark(&self, w: usize) {
        let m = 1u64 << (w % 64);
        if self.summary[w / 64].load(Ordering::Relaxed) & m == 0 {
            self.summary[w / 64].fetch_or(m, Ordering::AcqRel);
        }
    }

    /// Sets bit `i`; returns whether it was already set.
    pub(crate) fn set(&self, i: usize) -> bool {
        debug_assert!(i < self.bits);
        let m = 1u64 << (i % 64);
        let was = self.words[i / 64].fetch_or(m, Ordering::AcqRel) & m != 0;
        self.mark(i / 64);
        was
    }

    /// Sets bits `[start, start+count)`.
    pub(crate) fn set_range(&self, start: usize, count: usize) {
        for (w, mask) in self.range_words(start, count) {
            self.words[w].fetch_or(mask, Ordering::AcqRel);
            self.mark(w);
        }
    }

    /// ORs `bits` into word `w` (ignored past the end).
    pub(crate) fn or_word(&self, w: usize, bits: u64) {
        if bits != 0 && w < self.words.len() {
            self.words[w].fetch_or(bits, Ordering::AcqRel);
            self.mark(w);
        }
    }

    /// Clears bit `i`; returns whether it was set.
    pub(crate) fn take(&self, i: usize) -> bool {
        if i >= self.bits {
            return false;
        }
        let m = 1u64 << (i % 64);
        self.words[i / 64].fetch_and(!m, Ordering::SeqCst) & m != 0
    }

    /// Clears bits `[start, start+count)` (the summary keeps over-approximating).
    pub(crate) fn clear_range(&self, start: usize, count: usize) {
        for (w, mask) in self.range_words(start, count) {
            // Words with none of the bits are not written: a write would commit the lazily
            // zero-filled page under them (a 64 GiB region's bitmap is 2 MiB of them).
            if self.words[w].load(Ordering::Acquire) & mask != 0 {
                self.words[w].fetch_and(!mask, Ordering::SeqCst);
            }
        }
    }

    /// The words holding bits `[start, start+count)` (clipped to the bitmap), each with the
    /// mask of its bits in that range, in order.
    fn range_words(&self, start: usize, count: usize) -> impl Iterator<Item = (usize, u64)> {
        let end = (start + count).min(self.bits);
        let mut i = start;
        std::iter::from_fn(move || {
            if i >= end {
                return None;
            }
            let w = i / 64;
            let lo = i % 64;
            let hi = (end - w * 64).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            i = w * 64 + hi;
            Some((w, mask))
        })
    }

    /// Clears every bit.
    pub(crate) fn clear_all(&self) {
        self.candidates(true, |w| {
            if self.words[w].load(Ordering::Acquire) != 0 {
                self.words[w].store(0, Ordering::SeqCst);
            }
        });
    }

    /// Word `w` (bits `64w..64w+64`), 0 past the end.
    pub(crate) fn word(&self, w: usize) -> u64 {
        self.words.get(w).map_or(0, |x| x.load(Ordering::Acquire))
    }

    /// Whether bit `i` is set.
    pub(crate) fn get(&self, i: usize) -> bool {
        i < self.bits && self.words[i / 64].load(Ordering::Acquire) & (1u64 << (i % 64)) != 0
    }

    /// Indexes of the words that may hold set bits: those under a set summary bit (clearing
    /// it if `take`), or every word if an external setter writes them.
    fn candidates(&self, take: bool, mut f: impl FnMut(usize)) {
        if self.external.load(Ordering::SeqCst) {
            (0..self.words.len()).for_each(f);
            return;
        }
        for (si, s) in self.summary.iter().enumerate() {
            let mut bits = if take {
                s.swap(0, Ordering::AcqRel)
            } else {
                s.load(Ordering::Acquire)
            };
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                f(si * 64 + b);
            }
        }
    }

    /// The non-zero words as `(index, word)`, in index order (peek; the bitmap is
    /// unchanged). Only the words under set summary bits are read: a sparse bitmap costs its
    /// set words, and no copy of the whole bitmap is made (one of a 64 GiB region's is 2 MiB
    /// of fresh, resident memory).
    pub(crate) fn set_words(&self) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        self.candidates(false, |w| {
            let v = self.words[w].load(Ordering::Acquire);
            if v != 0 {
                out.push((w, v));
            }
        });
        out
    }

    /// A copy of the words (peek; the bitmap is unchanged).
    pub(crate) fn snapshot(&self) -> Vec<u64> {
        let mut out = vec![0u64; self.words.len()];
        self.candidates(false, |w| out[w] = self.words[w].load(Ordering::Acquire));
        out
    }

    /// Takes every set bit out of the bitmap: one atomic swap per candidate word.
    ///
    /// A setter sets the word's bit, then the summary bit; this clears the summary bit, then
    /// the word. A bit set concurrently is therefore either taken now, or left in the word
    /// with its summary bit set for the next harvest: never lost.
    pub(crate) fn harvest(&self) -> Harvest {
        let mut words = vec![0u64; self.words.len()];
        let mut count = 0;
        self.candidates(true, |w| {
            // A zero word is not swapped (no write, so its zero-filled page stays shared); a
            // bit set after this load stays in the word for the next harvest, as one set
            // after the swap would.
            if self.words[w].load(Ordering::Acquire) == 0 {
                return;
            }
            let v = self.words[w].swap(0, Ordering::AcqRel);
            count += v.count_ones() as usize;
            words[w] = v;
        });
        Harvest { words, count }
    }

    /// ORs `words` (as returned by `harvest`) back in. Used to undo a harvest whose cut failed,
    /// so a failed cut never loses dirty bits.
    pub(crate) fn restore(&self, words: &[u64]) {
        for (i, (w, v)) in self.words.iter().zip(words).enumerate() {
            if *v != 0 {
                w.fetch_or(*v, Ordering::AcqRel);
                self.mark(i);
            }
        }
    }

    /// Number of set bits.
    pub(crate) fn count_ones(&self) -> usize {
        let mut n = 0;
        self.candidates(false, |w| {
            n += self.words[w].load(Ordering::Acquire).count_ones() as usize
        });
        n
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
        assert_eq!((h.words.clone(), h.count), (vec![1, 0, 2], 2));
        assert_eq!(b.count_ones(), 0);
        assert_eq!(b.harvest().count, 0);
        b.restore(&h.words);
        assert_eq!(b.count_ones(), 2);
        assert_eq!(b.harvest().words, vec![1, 0, 2]);
    }

    #[test]
    fn range_ops_match_single_bit_ops() {
        for start in 0..140 {
            for count in [0, 1, 2, 63, 64, 65, 127, 128, 129] {
                let range = start..(start + count).min(200);
                let a = AtomicBitmap::new(200);
                let b = AtomicBitmap::new(200);
                a.set_range(start, count);
                for i in range.clone() {
                    b.set(i);
                }
                assert_eq!(
                    a.snapshot(),
                    b.snapshot(),
                    "set: start {start} count {count}"
                );
                for i in (0..200).step_by(3) {
                    a.set(i);
                    b.set(i);
                }
                a.clear_range(start, count);
                for i in range {
                    b.take(i);
                }
                assert_eq!(
                    a.snapshot(),
                    b.snapshot(),
                    "clear: start {start} count {count}"
                );
            }
        }
    }

    #[test]
    fn external_setters_are_harvested_by_a_full_scan() {
        let b = AtomicBitmap::new(64 * 200);
        b.set(5);
        b.external_words()[150].fetch_or(8, Ordering::SeqCst); // no summary bit
        let h = b.harvest();
        assert_eq!((h.count, h.words[0], h.words[150]), (2, 32, 8));
    }
}
