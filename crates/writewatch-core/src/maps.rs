//! The `/proc/self/smaps` parser and classifier used by `adopt`: what kind of memory a range
//! is, whether it may be adopted, and whether some userfaultfd already write-protects it.

use crate::error::MapError;
use crate::range::RegionKind;
use crate::sys;

/// One mapping line of `/proc/self/smaps`, with the fields `adopt` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vma {
    pub start: usize,
    pub end: usize,
    pub shared: bool,
    pub readable: bool,
    pub writable: bool,
    /// The permission field as printed (`rw-p`), for error messages.
    pub perms: String,
    /// Registered for userfaultfd write-protect (`uw` in `VmFlags`) by some userfaultfd.
    pub uffd_wp: bool,
    pub path: String,
    pub kernel_page_size: usize,
    pub hugetlb: bool,
}

/// Parses `/proc/self/smaps` text.
/// `MM:mm` (hex, as maps prints it) as a `dev_t`.
fn parse_dev(s: &str) -> Option<u64> {
    let (ma, mi) = s.split_once(':')?;
    Some(libc::makedev(
        u32::from_str_radix(ma, 16).ok()?,
        u32::from_str_radix(mi, 16).ok()?,
    ))
}

/// [`sys::hugetlbfs_devs`], probed once per process.
fn hugetlbfs_devs() -> &'static [u64] {
    static DEVS: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    DEVS.get_or_init(sys::hugetlbfs_devs)
}

pub(crate) fn parse_smaps(text: &str) -> Vec<Vma> {
    let mut out: Vec<Vma> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                let perms = fields.next().unwrap_or("");
                let _offset = fields.next();
                let dev = fields.next().and_then(parse_dev);
                let _inode = fields.next();
                let path = fields.collect::<Vec<_>>().join(" ");
                // Named hugetlb memory (a hugetlbfs file, an MFD_HUGETLB memfd) is hugetlb
                // by its device; smaps' VmFlags say so too, plain maps text does not.
                let hugetlb = !path.is_empty()
                    && !path.starts_with('[')
                    && dev.is_some_and(|d| hugetlbfs_devs().contains(&d));
                out.push(Vma {
                    start,
                    end,
                    readable: perms.as_bytes().first() == Some(&b'r'),
                    writable: perms.as_bytes().get(1) == Some(&b'w'),
                    shared: perms.as_bytes().get(3) == Some(&b's'),
                    perms: perms.to_string(),
                    uffd_wp: false,
                    path,
                    kernel_page_size: 0,
                    hugetlb,
                });
                continue;
            }
        }
        let Some(v) = out.last_mut() else { continue };
        match first {
            "KernelPageSize:" => {
                v.kernel_page_size = fields
                    .next()
                    .and_then(|s| s.parse::<usize>().ok())
                    .unwrap_or(0)
                    * 1024;
            }
            "VmFlags:" => {
                for f in fields {
                    match f {
                        "ht" => v.hugetlb = true,
                        "uw" => v.uffd_wp = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Why a VMA cannot be adopted, or its kind.
pub(crate) fn classify(v: &Vma) -> Result<RegionKind, String> {
    if v.hugetlb {
        return Ok(RegionKind::Hugetlb);
    }
    let p = v.path.as_str();
    if p.is_empty() || p.starts_with("[anon:") {
        return Ok(if v.shared {
            RegionKind::Shmem
        } else {
            RegionKind::Anonymous
        });
    }
    // A private mapping of /dev/zero is anonymous memory (the kernel makes the VMA anonymous).
    if p.starts_with("/dev/zero") && !v.shared {
        return Ok(RegionKind::Anonymous);
    }
    if p.starts_with("[anon_shmem:")
        || p.starts_with("/memfd:")
        || p.starts_with("/dev/zero")
        || p.starts_with("/SYSV")
        || p.starts_with("/dev/shm/")
    {
        return Ok(RegionKind::Shmem);
    }
    if p.starts_with('[') || !p.starts_with('/') || p.starts_with("/dev/") {
        return Err(format!("special mapping {p}"));
    }
    Ok(if v.shared {
        RegionKind::FileShared
    } else {
        RegionKind::FilePrivate
    })
}

/// Checks that `[start, end)` is fully mapped by adoptable VMAs of one kind and page size:
/// readable and writable, and not the process heap or the main stack (the allocator and the
/// tracker's own threads write there).
pub(crate) fn check_adoptable(
    vmas: &[Vma],
    start: usize,
    end: usize,
) -> Result<(RegionKind, usize), MapError> {
    let mut cursor = start;
    let mut found: Option<(RegionKind, usize)> = None;
    for v in vmas.iter().filter(|v| v.end > start && v.start < end) {
        if v.start > cursor {
            return Err(MapError::NotMapped { addr: cursor });
        }
        let p = v.path.as_str();
        if p == "[heap]" || p.starts_with("[stack") {
            return Err(MapError::OwnMemory {
                start,
                end,
                what: if p == "[heap]" {
                    "the process heap ([heap]), where the allocator the tracker uses keeps its state"
                } else {
                    "the main thread's stack ([stack])"
                },
                addr: v.start.max(start),
            });
        }
        let kind = classify(v).map_err(|what| MapError::UnsupportedMemory {
            addr: v.start,
            what,
        })?;
        if !(v.readable && v.writable) {
            return Err(MapError::NotReadWrite {
                addr: v.start,
                perms: v.perms.clone(),
            });
        }
        let ps = if v.kernel_page_size == 0 {
            sys::base_page_size()
        } else {
            v.kernel_page_size
        };
        match found {
            None => found = Some((kind, ps)),
            Some((_, ps0)) if ps0 != ps => return Err(MapError::MixedPageSizes { a: ps0, b: ps }),
            // A program's `.bss` continues its file-backed `.data` in an anonymous mapping:
            // both are private memory, tracked alike (async backend).
            Some((RegionKind::FilePrivate, _)) if kind == RegionKind::Anonymous => {}
            Some((RegionKind::Anonymous, _)) if kind == RegionKind::FilePrivate => {
                found = Some((kind, ps));
            }
            Some((k0, _)) if k0 != kind => {
                return Err(MapError::UnsupportedMemory {
                    addr: v.start,
                    what: format!(
                        "mixes {} and {} memory; adopt each part separately",
                        k0.name(),
                        kind.name()
                    ),
                })
            }
            _ => {}
        }
        cursor = v.end;
        if cursor >= end {
            break;
        }
    }
    if cursor < end {
        return Err(MapError::NotMapped { addr: cursor });
    }
    found.ok_or(MapError::NotMapped { addr: start })
}

/// The first VMA of `[start, end)` registered with a userfaultfd for write-protect (`uw`),
/// as `(vma start, vma end)`.
pub(crate) fn uffd_wp_overlap(vmas: &[Vma], start: usize, end: usize) -> Option<(usize, usize)> {
    vmas.iter()
        .find(|v| v.end > start && v.start < end && v.uffd_wp)
        .map(|v| (v.start, v.end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0000004000 rw-p 00000000 00:00 0 
Size:                 16 kB
KernelPageSize:        4 kB
VmFlags: rd wr mr mw me ac sd 
7f0000004000-7f0000008000 rw-s 00000000 00:01 1234                       /memfd:writewatch (deleted)
KernelPageSize:        4 kB
VmFlags: rd wr sh mr mw me ms sd 
7f0000008000-7f0000408000 rw-s 00000000 00:0f 5678                       /anon_hugepage (deleted)
KernelPageSize:     2048 kB
VmFlags: rd wr sh mr mw me ms de ht sd 
7f0000600000-7f0000601000 r--p 00000000 08:01 42                         /usr/lib/libc.so.6
KernelPageSize:        4 kB
VmFlags: rd mr mw me sd 
";

    #[test]
    fn parses_and_classifies() {
        let v = parse_smaps(SMAPS);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].start, 0x7f00_0000_0000);
        assert_eq!(classify(&v[0]), Ok(RegionKind::Anonymous));
        assert_eq!(classify(&v[1]), Ok(RegionKind::Shmem));
        assert_eq!(v[2].kernel_page_size, 2 << 20);
        assert_eq!(classify(&v[2]), Ok(RegionKind::Hugetlb));
        assert_eq!(classify(&v[3]), Ok(RegionKind::FilePrivate));
    }

    #[test]
    fn refuses_heap_stack_and_non_read_write() {
        let text = "\
5600000000-5600004000 rw-p 00000000 00:00 0                              [heap]
7ff000000000-7ff000004000 rw-p 00000000 00:00 0                          [stack]
7f1000000000-7f1000004000 r--p 00000000 00:00 0 
7f2000000000-7f2000004000 rw-p 00000000 00:00 0 
VmFlags: rd wr mr mw me ac sd uw 
";
        let v = parse_smaps(text);
        assert!(!v[2].writable && v[2].readable && v[2].perms == "r--p");
        assert!(v[3].uffd_wp && !v[0].uffd_wp);
        assert!(matches!(
            check_adoptable(&v, 0x56_0000_0000, 0x56_0000_1000),
            Err(MapError::OwnMemory { .. })
        ));
        assert!(matches!(
            check_adoptable(&v, 0x7ff0_0000_1000, 0x7ff0_0000_2000),
            Err(MapError::OwnMemory { .. })
        ));
        assert!(matches!(
            check_adoptable(&v, 0x7f10_0000_0000, 0x7f10_0000_1000),
            Err(MapError::NotReadWrite { .. })
        ));
        assert_eq!(
            uffd_wp_overlap(&v, 0x7f20_0000_1000, 0x7f20_0000_2000),
            Some((0x7f20_0000_0000, 0x7f20_0000_4000))
        );
    }

    #[test]
    fn data_and_bss_adopt_together_as_file_private() {
        let text = "\
555500000000-555500002000 rw-p 00010000 08:01 99                         /usr/bin/prog
555500002000-555500004000 rw-p 00000000 00:00 0 
555500004000-555500005000 rw-s 00000000 08:01 98                         /data/file
";
        let v = parse_smaps(text);
        assert_eq!(classify(&v[2]), Ok(RegionKind::FileShared));
        for (a, b) in [
            (0x5555_0000_1000, 0x5555_0000_3000),
            (0x5555_0000_0000, 0x5555_0000_4000),
        ] {
            assert_eq!(
                check_adoptable(&v, a, b).unwrap(),
                (RegionKind::FilePrivate, 4096)
            );
        }
        assert!(matches!(
            check_adoptable(&v, 0x5555_0000_3000, 0x5555_0000_5000),
            Err(MapError::UnsupportedMemory { .. })
        ));
    }

    #[test]
    fn adoptable_ranges() {
        let v = parse_smaps(SMAPS);
        assert_eq!(
            check_adoptable(&v, 0x7f00_0000_0000, 0x7f00_0000_4000).unwrap(),
            (RegionKind::Anonymous, 4096)
        );
        assert!(matches!(
            check_adoptable(&v, 0x7f00_0000_0000, 0x7f00_0000_8000),
            Err(MapError::UnsupportedMemory { .. })
        ));
        assert!(matches!(
            check_adoptable(&v, 0x7f00_0040_8000, 0x7f00_0040_9000),
            Err(MapError::NotMapped {
                addr: 0x7f00_0040_8000
            })
        ));
        assert!(matches!(
            check_adoptable(&v, 0x7f00_0000_2000, 0x7f00_0000_5000),
            Err(MapError::UnsupportedMemory { .. })
        ));
        assert!(matches!(
            check_adoptable(&v, 0x7f00_0060_0000, 0x7f00_0060_1000),
            Err(MapError::NotReadWrite { .. })
        ));
        assert_eq!(
            check_adoptable(&v, 0x7f00_0000_8000, 0x7f00_0040_8000).unwrap(),
            (RegionKind::Hugetlb, 2 << 20)
        );
    }
}
