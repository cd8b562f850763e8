//! A minimal `/proc/PID/smaps` reader ([`parse`], [`read`]): the independent oracle for
//! page-state totals (it shares no code with the inspector under test, which walks pagemap),
//! and memory figures of ranges for the fork tests, the cow-fork example and the fork bench
//! ([`smaps_of_ranges`], [`resident_of`]).
//!
//! The kernel merges adjacent mappings with the same flags into one VMA (two tracked regions
//! side by side can become one), and smaps reports per VMA: [`smaps_of_ranges`] therefore
//! sums every VMA that overlaps any of the ranges, once, and [`Smaps::exact`] says whether
//! those VMAs lie wholly inside the ranges. [`resident_of`] counts one range's pages exactly,
//! from the page tables.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

/// One mapping of `/proc/PID/smaps`: its address range, path and `kB` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmapsEntry {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// The path or name (empty for anonymous memory).
    pub path: String,
    /// Every `Name: N kB` field (`Rss`, `Anonymous`, `Swap`, `Private_Dirty`, ...), in kB.
    pub kb: BTreeMap<String, u64>,
}

impl SmapsEntry {
    /// A field in kB (0 if absent).
    pub fn get(&self, field: &str) -> u64 {
        self.kb.get(field).copied().unwrap_or(0)
    }

    /// `Private_Clean + Private_Dirty`.
    pub fn private(&self) -> u64 {
        self.get("Private_Clean") + self.get("Private_Dirty")
    }

    /// `Shared_Clean + Shared_Dirty`.
    pub fn shared(&self) -> u64 {
        self.get("Shared_Clean") + self.get("Shared_Dirty")
    }
}

/// Parses `/proc/PID/smaps` text.
pub fn parse(text: &str) -> Vec<SmapsEntry> {
    let mut out: Vec<SmapsEntry> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some(name) = first.strip_suffix(':') {
            if let (Some(v), Some(last)) = (f.next(), out.last_mut()) {
                if let Ok(v) = v.parse::<u64>() {
                    last.kb.insert(name.to_string(), v);
                }
            }
            continue;
        }
        let Some((a, b)) = first.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        else {
            continue;
        };
        let path = f.skip(4).collect::<Vec<_>>().join(" ");
        out.push(SmapsEntry {
            start,
            end,
            path,
            kb: BTreeMap::new(),
        });
    }
    out
}

/// Reads and parses `/proc/PID/smaps` (`None`: this process); panics if it cannot be read.
pub fn read(pid: Option<u32>) -> Vec<SmapsEntry> {
    let path = pid.map_or("/proc/self/smaps".to_string(), |p| {
        format!("/proc/{p}/smaps")
    });
    parse(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}")))
}

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
    for m in parse(&text) {
        if !merged.iter().any(|&(s, e)| m.start < e && m.end > s) {
            continue;
        }
        if !merged.iter().any(|&(s, e)| m.start >= s && m.end <= e) {
            out.exact = false;
        }
        out.rss += m.get("Rss") * 1024;
        out.pss += m.get("Pss") * 1024;
        out.private_dirty += m.get("Private_Dirty") * 1024;
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

#[cfg(test)]
mod tests {
    #[test]
    fn parses_fields_and_paths() {
        let t = "\
7f00-8f00 rw-p 00000000 00:00 0 
Rss:                  16 kB
Private_Dirty:         8 kB
VmFlags: rd wr
8f00-9f00 r--p 00001000 08:01 42                         /usr/lib/a b.so
Rss:                   4 kB
";
        let v = super::parse(t);
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].get("Rss"), v[0].private(), v[0].path.as_str()),
            (16, 8, "")
        );
        assert_eq!(v[1].path, "/usr/lib/a b.so");
    }
}
