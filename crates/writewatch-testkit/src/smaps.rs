//! Memory figures of mappings from `/proc/self/smaps` and `/proc/self/pagemap` (fork
//! memory-sharing tests, the cow-fork example and the fork bench).
//!
//! The kernel merges adjacent mappings with the same flags into one VMA (two tracked regions
//! side by side can become one), and smaps reports per VMA: [`smaps_of_ranges`] therefore
//! sums every VMA that overlaps any of the ranges, once, and [`Smaps::exact`] says whether
//! those VMAs lie wholly inside the ranges. [`resident_of`] counts one range's pages exactly,
//! from the page tables.

use std::os::unix::fs::FileExt;

/// `Rss`, `Pss` and `Private_Dirty` in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Smaps {
    /// Resident memory.
    pub rss: u64,
    /// Proportional share of the resident memory.
    pub pss: u64,
    /// Resident pages that only this process maps and that were written.
    pub private_dirty: u64,
    /// Every VMA counted lies inside the ranges asked for (false: a VMA merged with a
    /// neighbour was counted whole).
    pub exact: bool,
}

impl std::ops::Add for Smaps {
    type Output = Smaps;
    fn add(self, o: Smaps) -> Smaps {
        Smaps {
            rss: self.rss + o.rss,
            pss: self.pss + o.pss,
            private_dirty: self.private_dirty + o.private_dirty,
            exact: self.exact && o.exact,
        }
    }
}

/// [`smaps_of_ranges`] of one range.
pub fn smaps_of(start: usize, len: usize) -> Smaps {
    smaps_of_ranges(&[(start, len)])
}

/// Sums the figures of every mapping of this process that overlaps one of `ranges`
/// (`(start, len)`), each mapping once. Zero if `/proc/self/smaps` cannot be read.
pub fn smaps_of_ranges(ranges: &[(usize, usize)]) -> Smaps {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut out = Smaps {
        exact: true,
        ..Smaps::default()
    };
    // The ranges' union as sorted, merged intervals (two adjacent regions make one).
    let mut union: Vec<(usize, usize)> = ranges.iter().map(|&(s, l)| (s, s + l)).collect();
    union.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (s, e) in union {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut counted = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                counted = merged.iter().any(|&(s, e)| a < e && b > s);
                if counted && !merged.iter().any(|&(s, e)| a >= s && b <= e) {
                    out.exact = false;
                }
                continue;
            }
        }
        if !counted {
            continue;
        }
        let kib = || {
            words
                .clone()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        match first {
            "Rss:" => out.rss += kib(),
            "Pss:" => out.pss += kib(),
            "Private_Dirty:" => out.private_dirty += kib(),
            _ => {}
        }
    }
    out
}

/// Bytes of `[start, start+len)` (4 KiB pages) that are resident or swapped, from
/// `/proc/self/pagemap` (exact per range, whatever the VMAs). Zero if it cannot be read.
pub fn resident_of(start: usize, len: usize) -> u64 {
    const PS: usize = 4096;
    let Ok(f) = std::fs::File::open("/proc/self/pagemap") else {
        return 0;
    };
    let pages = len / PS;
    let mut buf = vec![0u8; 8 * 4096];
    let mut n = 0u64;
    let mut done = 0;
    while done < pages {
        let k = (pages - done).min(4096);
        let off = ((start / PS + done) * 8) as u64;
        if f.read_exact_at(&mut buf[..k * 8], off).is_err() {
            return 0;
        }
        for e in buf[..k * 8].chunks_exact(8) {
            let v = u64::from_ne_bytes(e.try_into().unwrap_or([0; 8]));
            if v & (3 << 62) != 0 {
                n += 1;
            }
        }
        done += k;
    }
    n * PS as u64
}
