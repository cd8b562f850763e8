//! Pages the kernel may write without a fault: io_uring fixed buffers.
//!
//! A long-term pin (`io_uring_register(IORING_REGISTER_BUFFERS)`, RDMA, ...) takes a
//! reference to the pages once; later device or kernel writes go through it and bypass the
//! page tables that carry the write protection, so no fault ever reports them. Of those pins,
//! io_uring's are visible: `/proc/self/fdinfo/<ring>` lists each registered buffer as
//! `   N: 0x<addr>/<len>` after a `UserBufs:` line. Every cut reports the pages of the region
//! that lie in such a buffer as dirty (an over-report for buffers the kernel did not write,
//! never an under-report). The *content* of those pages in an epoch or snapshot is not
//! guaranteed (a kernel write can land after the cut without a copy): docs/design.md section 6.

use std::path::Path;

/// What the scan found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Pinned {
    /// `(start, len)` of every registered buffer.
    pub buffers: Vec<(usize, usize)>,
    /// A ring has buffers whose ranges the kernel did not list (its lock was busy): the
    /// caller cannot tell which pages they cover.
    pub unknown: bool,
}

/// Scans this process's io_uring instances for registered buffers. Cost: one `readlink` per
/// open file descriptor, plus one `fdinfo` read per ring.
pub(crate) fn io_uring_buffers() -> Pinned {
    let mut out = Pinned::default();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target != Path::new("anon_inode:[io_uring]") {
            continue;
        }
        let info = Path::new("/proc/self/fdinfo").join(entry.file_name());
        if let Ok(text) = std::fs::read_to_string(info) {
            parse_fdinfo(&text, &mut out);
        }
    }
    out
}

/// Parses the `UserBufs:` section of an io_uring fdinfo text into `out`.
pub(crate) fn parse_fdinfo(text: &str, out: &mut Pinned) {
    let mut lines = text.lines();
    let Some(n) = lines
        .by_ref()
        .find_map(|l| l.strip_prefix("UserBufs:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    else {
        return;
    };
    let mut listed = 0;
    for line in lines.take(n) {
        let Some((_, rest)) = line.split_once(':') else {
            break;
        };
        let rest = rest.trim();
        if rest == "<none>" {
            listed += 1;
            continue;
        }
        let parsed = rest.split_once('/').and_then(|(a, l)| {
            let a = usize::from_str_radix(a.trim().trim_start_matches("0x"), 16).ok()?;
            Some((a, l.trim().parse::<usize>().ok()?))
        });
        match parsed {
            Some(b) => {
                out.buffers.push(b);
                listed += 1;
            }
            None => break,
        }
    }
    if listed < n {
        out.unknown = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listed_and_unlisted_buffers() {
        let mut p = Pinned::default();
        parse_fdinfo(
            "SqMask:\t0x3\nUserFiles:\t0\nUserBufs:\t2\n    0: 0x7f0000001000/4096\n    1: <none>\nPollList:\n",
            &mut p,
        );
        assert_eq!(p.buffers, vec![(0x7f00_0000_1000, 4096)]);
        assert!(!p.unknown);
        let mut q = Pinned::default();
        parse_fdinfo("UserBufs:\t3\nPollList:\n", &mut q); // lock busy: not listed
        assert!(q.unknown);
        let mut r = Pinned::default();
        parse_fdinfo("UserBufs:\t0\n", &mut r);
        assert_eq!(r, Pinned::default());
    }
}
