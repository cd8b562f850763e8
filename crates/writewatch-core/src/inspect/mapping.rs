//! [`Mapping`] and [`MappingKind`]: one line of `/proc/PID/maps`, classified.

use crate::maps::{self, Vma};
use crate::range::RegionKind;

/// What kind of memory a mapping is (from its `/proc/PID/maps` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum MappingKind {
    /// Private anonymous memory (including `[anon:name]`).
    Anonymous,
    /// Shared memory: memfd, shared anonymous, SysV, `/dev/shm`.
    Shmem,
    /// hugetlbfs (recognised by its `/anon_hugepage` name).
    Hugetlb,
    /// A private mapping of a regular file (program text and `.data`, `mmap(MAP_PRIVATE)`).
    FilePrivate,
    /// A shared mapping of a regular file.
    FileShared,
    /// The process heap (`[heap]`).
    Heap,
    /// The main thread's stack (`[stack]`).
    Stack,
    /// Anything else: `[vdso]`, `[vvar]`, `[vsyscall]`, device mappings.
    Special,
}

/// One mapping of a process, as `/proc/PID/maps` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Mapping {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// Permissions as printed (`rw-p`).
    pub perms: String,
    /// The path or name (`/usr/bin/python3`, `[heap]`, empty for anonymous memory).
    pub path: String,
    /// Its kind.
    pub kind: MappingKind,
}

impl Mapping {
    /// Whether the mapping is readable and writable.
    pub fn is_writable(&self) -> bool {
        self.perms.starts_with("rw")
    }

    /// The [`RegionKind`] a tracker would adopt it as, if it is a kind trackers take
    /// (the heap and the main stack are refused by `adopt`: the tracker writes there).
    pub fn region_kind(&self) -> Option<RegionKind> {
        match self.kind {
            MappingKind::Anonymous => Some(RegionKind::Anonymous),
            MappingKind::Shmem => Some(RegionKind::Shmem),
            MappingKind::Hugetlb => Some(RegionKind::Hugetlb),
            MappingKind::FilePrivate => Some(RegionKind::FilePrivate),
            MappingKind::FileShared => Some(RegionKind::FileShared),
            _ => None,
        }
    }
}

fn kind_of(v: &Vma) -> MappingKind {
    let p = v.path.as_str();
    if p == "[heap]" {
        return MappingKind::Heap;
    }
    if p.starts_with("[stack") {
        return MappingKind::Stack;
    }
    if p.starts_with("/anon_hugepage") {
        return MappingKind::Hugetlb;
    }
    match maps::classify(v) {
        Ok(RegionKind::Anonymous) => MappingKind::Anonymous,
        Ok(RegionKind::Shmem) => MappingKind::Shmem,
        Ok(RegionKind::Hugetlb) => MappingKind::Hugetlb,
        Ok(RegionKind::FilePrivate) => MappingKind::FilePrivate,
        Ok(RegionKind::FileShared) => MappingKind::FileShared,
        Err(_) => MappingKind::Special,
    }
}

/// Parses `/proc/PID/maps` (or `smaps`) text.
pub(crate) fn parse(text: &str) -> Vec<Mapping> {
    maps::parse_smaps(text)
        .into_iter()
        .map(|v| Mapping {
            start: v.start,
            end: v.end,
            kind: kind_of(&v),
            perms: v.perms,
            path: v.path,
        })
        .collect()
}

/// This process's readable and writable mappings, with their kinds: the candidates for
/// [`Tracker::adopt`](crate::Tracker::adopt) (see [`Mapping::region_kind`]).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use writewatch_core::inspect::{writable_mappings, MappingKind};
/// let maps = writable_mappings()?;
/// assert!(maps.iter().any(|m| m.kind == MappingKind::Heap || m.kind == MappingKind::Anonymous));
/// assert!(maps.iter().all(|m| m.is_writable()));
/// # Ok(()) }
/// ```
pub fn writable_mappings() -> Result<Vec<Mapping>, super::InspectError> {
    let pid = std::process::id();
    let text = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| super::InspectError::io(pid, "/proc/self/maps", e))?;
    Ok(parse(&text)
        .into_iter()
        .filter(Mapping::is_writable)
        .collect())
}
