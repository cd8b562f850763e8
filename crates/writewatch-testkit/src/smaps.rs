//! A minimal `/proc/PID/smaps` reader: the independent oracle for page-state totals (it
//! shares no code with the inspector under test, which walks pagemap).

use std::collections::BTreeMap;

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
