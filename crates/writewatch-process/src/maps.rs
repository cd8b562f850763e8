//! `/proc/PID/maps`: the target's mappings, and which of them a dump tracks.

use writewatch_checkpoint::image::Backing;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// `rw-p`, `r-xp`, `rw-s`, ...
    pub perms: String,
    /// File offset of `start`.
    pub offset: u64,
    /// `major:minor` of the file's device.
    pub dev: String,
    /// Inode (0 for anonymous memory).
    pub inode: u64,
    /// Path or pseudo-path (`[heap]`, `[stack]`, `[vdso]`), empty for plain anonymous.
    pub path: String,
}

impl Mapping {
    /// Whether the mapping is writable.
    pub fn writable(&self) -> bool {
        self.perms.as_bytes().get(1) == Some(&b'w')
    }

    /// What backs the mapping, as recorded in the image.
    pub fn backing(&self) -> Backing {
        if self.inode == 0 {
            Backing::Anonymous {
                name: (!self.path.is_empty()).then(|| self.path.clone()),
            }
        } else {
            Backing::File {
                path: self.path.clone(),
                offset: self.offset,
            }
        }
    }

    /// Why a dump does not track this mapping, or `None` when it does.
    ///
    /// Not tracked: read-only and `PROT_NONE` mappings (guard pages, reservations: nothing
    /// can write them without an `mprotect` first, which the next round sees), and the
    /// kernel's `[vvar]`, `[vvar_vclock]`, `[vdso]`, `[vsyscall]` and `[uprobes]` pages
    /// (kernel-owned; a restore maps them anew).
    pub fn skip_reason(&self) -> Option<&'static str> {
        const KERNEL: [&str; 5] = [
            "[vvar]",
            "[vvar_vclock]",
            "[vdso]",
            "[vsyscall]",
            "[uprobes]",
        ];
        if KERNEL.contains(&self.path.as_str()) {
            return Some("kernel-provided page");
        }
        if !self.writable() {
            return Some("not writable");
        }
        if !self.perms.starts_with('r') {
            return Some("writable but not readable (cannot be copied)");
        }
        None
    }
}

/// Parses `/proc/PID/maps` text.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.to_string();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?.to_string();
    let inode = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (a, b) = range.split_once('-')?;
    Some(Mapping {
        start: usize::from_str_radix(a, 16).ok()?,
        end: usize::from_str_radix(b, 16).ok()?,
        perms,
        offset,
        dev,
        inode,
        path,
    })
}

/// Reads and parses `/proc/PID/maps`.
pub fn read_maps(pid: u32) -> std::io::Result<Vec<Mapping>> {
    Ok(parse_maps(&std::fs::read_to_string(format!(
        "/proc/{pid}/maps"
    ))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_skips() {
        let m = parse_maps(
            "55d0a000-55d0b000 rw-p 00002000 08:01 1234 /usr/bin/x y\n\
             7ffd0000-7ffd2000 r-xp 00000000 00:00 0 [vdso]\n\
             7f000000-7f001000 rw-p 00000000 00:00 0 \n\
             7f001000-7f002000 ---p 00000000 00:00 0\n",
        );
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].path, "/usr/bin/x y");
        assert_eq!(m[0].offset, 0x2000);
        assert_eq!(m[0].skip_reason(), None);
        assert_eq!(m[1].skip_reason(), Some("kernel-provided page"));
        assert_eq!(m[2].path, "");
        assert_eq!(m[2].skip_reason(), None);
        assert_eq!(m[3].skip_reason(), Some("not writable"));
    }
}
