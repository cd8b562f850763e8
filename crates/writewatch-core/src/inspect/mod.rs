//! The page-state inspector: for each mapping of a process (this one, or another one the
//! caller has ptrace-read access to), which pages are present, swapped, copied on write,
//! exclusive or shared, the zero page, huge, written since an async write-protect re-arm,
//! soft-dirty; as counts and runs, with the totals `/proc/PID/smaps` prints.
//!
//! # Where each field comes from (none needs root)
//!
//! | field | source (`PAGEMAP_SCAN` walk; fallback: raw `/proc/PID/pagemap` entries) |
//! |---|---|
//! | `present` | `PAGE_IS_PRESENT` (fallback: bit 63) |
//! | `swapped` | `PAGE_IS_SWAPPED` with `PAGE_IS_WRITTEN` (no uffd-wp bit) (fallback: bit 62 without bit 57) |
//! | `wp_marker` | `PAGE_IS_SWAPPED` without `PAGE_IS_WRITTEN`: a uffd-wp marker (fallback: bits 62 and 57) |
//! | `anonymous`, `cow_copied` | present, not `PAGE_IS_PFNZERO`, raw bit 61 ("file page or shared anonymous": a mapped page that is not anonymous, the same test as `PAGE_IS_FILE`) clear (fallback: the zero page cannot be told apart) |
//! | `file_uncopied` | present and raw bit 61 set |
//! | `exclusive` / `shared` | raw bit 56 ("exclusively mapped") |
//! | `zero_page` | `PAGE_IS_PFNZERO` (fallback: not available: PFNs need `CAP_SYS_ADMIN`) |
//! | `huge` | `PAGE_IS_HUGE` (fallback: not available) |
//! | `written` | `PAGE_IS_WRITTEN` in mappings with `PAGE_IS_WPALLOWED` (an async write-protect userfaultfd arms them) |
//! | `soft_dirty` | `PAGE_IS_SOFT_DIRTY` (fallback: bit 55), only where the kernel has soft-dirty |
//!
//! Both `PAGEMAP_SCAN` and the pagemap flags need only ptrace-read access to the process
//! (its own user, or `CAP_SYS_PTRACE`); page frame numbers, which need `CAP_SYS_ADMIN`, are
//! never used. Per mapping: one `PAGEMAP_SCAN` walk over populated pages (holes cost
//! nothing; it reads page-table entries only), then one raw read per present run (in
//! blocks of 32 Ki entries) for the per-page bits 61 and 56.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use writewatch_core::inspect::{Inspector, Select};
//! let v = vec![7u8; 1 << 20];                          // 256 heap pages, written
//! let report = Inspector::open(None)?.inspect(&Select::All)?;
//! let heap = report.mappings.iter().find(|m| m.start <= v.as_ptr() as usize
//!     && (v.as_ptr() as usize) < m.end).unwrap();
//! assert!(heap.present.pages >= 255 && heap.anonymous.pages >= 255);
//! assert!(report.totals().rss_kb > 1000);
//! # Ok(()) }
//! ```

mod error;
mod mapping;
mod runs;
mod walk;

use std::sync::OnceLock;

pub use error::InspectError;
pub use mapping::{writable_mappings, Mapping, MappingKind};
pub use runs::PageRuns;
pub use walk::{MappingPages, SmapsTotals};

use crate::error::Errno;
use crate::pagemap::Pagemap;
use walk::Env;

/// Which mappings to inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// Every mapping.
    All,
    /// The parts of mappings inside `[start, end)` (page-aligned).
    Range {
        /// Start address.
        start: usize,
        /// End address (exclusive).
        end: usize,
    },
    /// The mappings of this path (as `/proc/PID/maps` prints it, or just its file name).
    Path(String),
}

/// The page state of a process's mappings.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Report {
    /// The process.
    pub pid: u32,
    /// The page size every page number and count refers to.
    pub page_size: usize,
    /// `"PAGEMAP_SCAN"` or `"pagemap"` (the raw-read fallback).
    pub source: &'static str,
    /// Why a field is `None` / empty where it is, for every mapping (`field: reason`).
    pub not_available: Vec<(&'static str, &'static str)>,
    /// The inspected mappings, in address order.
    pub mappings: Vec<MappingPages>,
}

impl Report {
    /// The sum of every mapping's smaps totals.
    pub fn totals(&self) -> SmapsTotals {
        let mut t = SmapsTotals::default();
        for m in &self.mappings {
            t += m.totals;
        }
        t
    }
}

/// An open view of one process's page tables.
#[derive(Debug)]
pub struct Inspector {
    pid: u32,
    maps_path: String,
    pagemap: Pagemap,
    scan: bool,
}

fn system() -> &'static (bool, bool, bool) {
    static S: OnceLock<(bool, bool, bool)> = OnceLock::new();
    S.get_or_init(|| {
        let swap_active = std::fs::read_to_string("/proc/swaps")
            .map(|s| s.lines().count() > 1)
            .unwrap_or(false);
        (
            Pagemap::scan_available(),
            swap_active,
            crate::sys::soft_dirty_probe(),
        )
    })
}

impl Inspector {
    /// Opens process `pid`'s page tables (`None`: this process).
    ///
    /// Errors: [`InspectError::NoSuchProcess`], [`InspectError::PermissionDenied`] (no
    /// ptrace-read access).
    pub fn open(pid: Option<u32>) -> Result<Self, InspectError> {
        let id = pid.unwrap_or_else(std::process::id);
        let (maps_path, pm_path) = match pid {
            Some(p) => (format!("/proc/{p}/maps"), format!("/proc/{p}/pagemap")),
            None => ("/proc/self/maps".into(), "/proc/self/pagemap".into()),
        };
        if let Some(p) = pid {
            if p == 0 || p > i32::MAX as u32 {
                return Err(InspectError::NoSuchProcess { pid: p });
            }
        }
        // The maps file first: it tells a missing process from a forbidden one.
        std::fs::File::open(&maps_path).map_err(|e| InspectError::io(id, &maps_path, e))?;
        // A process without an address space (kernel thread, zombie) has a maps file but
        // no pagemap to open (ESRCH).
        let pagemap = Pagemap::open_pid(pid).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => why_nothing(id),
            _ => InspectError::io(id, &pm_path, e),
        })?;
        Ok(Inspector {
            pid: id,
            maps_path,
            pagemap,
            scan: system().0,
        })
    }

    /// Uses only raw `/proc/PID/pagemap` reads, as on a kernel without `PAGEMAP_SCAN`
    /// (before 6.7): `zero_page`, `huge` and `written` are then not available.
    pub fn without_pagemap_scan(mut self) -> Self {
        self.scan = false;
        self
    }

    /// The process inspected.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The error for an address space that vanished during a walk: the process exited
    /// (no such process now), or it lives on with another address space (`execve`).
    fn gone(&self) -> InspectError {
        match process_state(self.pid) {
            None => InspectError::NoSuchProcess { pid: self.pid },
            Some(_) => InspectError::AddressSpaceGone { pid: self.pid },
        }
    }

    /// The process's mappings, as `/proc/PID/maps` lists them now.
    pub fn mappings(&self) -> Result<Vec<Mapping>, InspectError> {
        let text = std::fs::read_to_string(&self.maps_path)
            .map_err(|e| InspectError::io(self.pid, &self.maps_path, e))?;
        Ok(mapping::parse(&text))
    }

    /// Inspects the selected mappings.
    pub fn inspect(&self, select: &Select) -> Result<Report, InspectError> {
        let ps = crate::sys::base_page_size();
        if let Select::Range { start, end } = *select {
            for (what, value) in [("start", start), ("end", end)] {
                if value % ps != 0 {
                    return Err(InspectError::Unaligned {
                        what,
                        value,
                        page_size: ps,
                    });
                }
            }
            if end <= start {
                return Err(InspectError::EmptyRange { start, end });
            }
        }
        let all = self.mappings()?;
        if all.is_empty() {
            return Err(why_nothing(self.pid));
        }
        let chosen: Vec<(Mapping, usize, usize)> = all
            .into_iter()
            .filter_map(|m| match select {
                Select::All => Some((m.start, m.end, m)),
                Select::Range { start, end } => (m.end > *start && m.start < *end)
                    .then(|| (m.start.max(*start), m.end.min(*end), m)),
                Select::Path(p) => {
                    // maps prints an unlinked file as "/path (deleted)": both forms match.
                    let path = m.path.strip_suffix(" (deleted)").unwrap_or(&m.path);
                    let name = path.rsplit('/').next().unwrap_or("");
                    let hit = !p.is_empty()
                        && (m.path == *p || path == p || (!p.contains('/') && name == p));
                    hit.then_some((m.start, m.end, m))
                }
            })
            .map(|(a, b, m)| (m, a, b))
            .collect();
        if chosen.is_empty() {
            return Err(match select {
                Select::Range { start, end } => InspectError::NotMapped {
                    pid: self.pid,
                    start: *start,
                    end: *end,
                },
                Select::Path(p) => InspectError::NoSuchMapping {
                    pid: self.pid,
                    path: p.clone(),
                },
                Select::All => InspectError::NoSuchProcess { pid: self.pid },
            });
        }
        let &(_, swap_active, soft_dirty) = system();
        let env = Env {
            scan: self.scan,
            swap_active,
            soft_dirty,
        };
        let mut mappings = Vec::with_capacity(chosen.len());
        let mut bufs = walk::Bufs::default();
        for (m, a, b) in &chosen {
            let pages = walk::walk(&self.pagemap, &env, m, (*a, *b), &mut bufs).map_err(
                |(errno, io)| {
                    match errno {
                        // The address space walked is gone: exit or execve meanwhile.
                        Some(nix::errno::Errno::ESRCH) => self.gone(),
                        Some(e) => InspectError::Scan {
                            start: *a,
                            end: *b,
                            errno: Errno::from_raw(e as i32),
                        },
                        None if io.raw_os_error() == Some(libc::ESRCH) => self.gone(),
                        None => InspectError::io(self.pid, "pagemap", io),
                    }
                },
            )?;
            mappings.push(pages);
        }
        let mut not_available = Vec::new();
        if !self.scan {
            not_available.push(("zero_page", "needs PAGEMAP_SCAN (Linux >= 6.7): raw pagemap entries hide PFNs without CAP_SYS_ADMIN"));
            not_available.push(("huge", "needs PAGEMAP_SCAN (Linux >= 6.7)"));
            not_available.push(("written", "needs PAGEMAP_SCAN (Linux >= 6.7)"));
        } else {
            not_available.push(("written", "reported only for mappings an async write-protect userfaultfd (UFFD_FEATURE_WP_ASYNC) arms"));
        }
        if !soft_dirty {
            not_available.push((
                "soft_dirty",
                "not available: this kernel has no soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY)",
            ));
        }
        Ok(Report {
            pid: self.pid,
            page_size: ps,
            source: if self.scan { "PAGEMAP_SCAN" } else { "pagemap" },
            not_available,
            mappings,
        })
    }
}

/// The error for a process that has no mapping at all: a kernel thread or a zombie has no
/// user address space; a process that is gone, none; otherwise its address space went away
/// meanwhile (exit or `execve` in progress).
fn why_nothing(pid: u32) -> InspectError {
    match process_state(pid) {
        None => InspectError::NoSuchProcess { pid },
        Some((state, flags)) => {
            const PF_KTHREAD: u64 = 0x0020_0000;
            let why = if flags & PF_KTHREAD != 0 {
                "kernel thread"
            } else if matches!(state, 'Z' | 'X') {
                "zombie: exited, not yet reaped by its parent"
            } else {
                return InspectError::AddressSpaceGone { pid };
            };
            InspectError::NoAddressSpace { pid, why }
        }
    }
}

/// State letter and `flags` (fields 3 and 9 of `/proc/PID/stat`), None when the process is
/// gone. The command name (field 2) may hold spaces and parentheses: fields are counted after
/// its last `)`.
fn process_state(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let flags = f.nth(5)?.parse().ok()?;
    Some((state, flags))
}
