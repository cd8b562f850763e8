//! Memory figures of one mapping from `/proc/self/smaps` (fork memory-sharing tests, the
//! cow-fork example and the fork bench).

/// `Rss`, `Pss` and `Private_Dirty` of the mappings inside `[start, start + len)`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Smaps {
    /// Resident memory.
    pub rss: u64,
    /// Proportional share of the resident memory.
    pub pss: u64,
    /// Resident pages that only this process maps and that were written.
    pub private_dirty: u64,
}

impl std::ops::Add for Smaps {
    type Output = Smaps;
    fn add(self, o: Smaps) -> Smaps {
        Smaps {
            rss: self.rss + o.rss,
            pss: self.pss + o.pss,
            private_dirty: self.private_dirty + o.private_dirty,
        }
    }
}

/// Sums the figures of every mapping of this process that lies inside `[start, start+len)`
/// (a tracked region may be split into several VMAs). Zero if `/proc/self/smaps` cannot be
/// read.
pub fn smaps_of(start: usize, len: usize) -> Smaps {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let end = start + len;
    let mut out = Smaps::default();
    let mut inside = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a >= start && b <= end;
                continue;
            }
        }
        if !inside {
            continue;
        }
        let kib = || words.clone().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
        match first {
            "Rss:" => out.rss += kib(),
            "Pss:" => out.pss += kib(),
            "Private_Dirty:" => out.private_dirty += kib(),
            _ => {}
        }
    }
    out
}
