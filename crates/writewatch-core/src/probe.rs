//! Runtime probe of what this kernel and this process can do.
//!
//! Nothing in writewatch is chosen by Cargo features: every capability is probed at runtime.
//! [`probe()`] opens a throwaway userfaultfd, asks the kernel which features it offers
//! (`UFFDIO_API` with no features requested), and checks `PAGEMAP_SCAN` and soft-dirty.
//!
//! [`Probe::expected_but_missing`] compares the answer with the kernel version: a feature that
//! the running kernel's version should have but the probe did not find is a configuration
//! problem (or a bug), and the test suite fails on it instead of silently skipping.
//!
//! ```
//! let p = writewatch_core::probe();
//! println!("{p}");
//! for f in writewatch_core::Feature::ALL {
//!     let _ = (f.name(), p.has(*f));
//! }
//! ```

use std::fmt;
use std::os::fd::AsRawFd;

use linux_raw_sys::general as k;
use nix::errno::Errno;

use crate::error::PublicErrno;
use crate::sys;

/// How this process can obtain a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Through `/dev/userfaultfd` (kernel >= 6.1): kernel-mode faults are serviced.
    DevUserfaultfd,
    /// Through the `userfaultfd(2)` syscall without `UFFD_USER_MODE_ONLY` (root,
    /// `CAP_SYS_PTRACE`, or `vm.unprivileged_userfaultfd=1`): kernel-mode faults are serviced.
    Syscall,
    /// Only with `UFFD_USER_MODE_ONLY` (kernel >= 5.11, unprivileged): a system call that writes
    /// into tracked memory (e.g. `read(2)` into a tracked buffer) fails with `EFAULT` instead of
    /// being tracked.
    UserModeOnly,
    /// The kernel refused (`EPERM`/`EACCES`).
    Denied(crate::error::Errno),
    /// The kernel has no userfaultfd (`ENOSYS`) or another error occurred.
    Absent(crate::error::Errno),
}

/// A capability the probe reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Feature {
    /// `UFFD_FEATURE_PAGEFAULT_FLAG_WP`: write-protect faults on private anonymous memory.
    PagefaultFlagWp,
    /// `UFFD_FEATURE_EVENT_REMOVE`: `madvise(MADV_DONTNEED/REMOVE)` reported.
    EventRemove,
    /// `UFFD_FEATURE_EVENT_UNMAP`: `munmap` reported.
    EventUnmap,
    /// `UFFD_FEATURE_EVENT_REMAP`: `mremap` reported.
    EventRemap,
    /// `UFFD_FEATURE_THREAD_ID`: the faulting thread's id comes with each fault.
    ThreadId,
    /// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`: write-protect on shmem/memfd and hugetlbfs.
    WpHugetlbfsShmem,
    /// `UFFD_FEATURE_WP_UNPOPULATED`: protecting never-touched pages (else they are silently skipped).
    WpUnpopulated,
    /// `UFFD_FEATURE_WP_ASYNC`: the kernel resolves write-protect faults itself.
    WpAsync,
    /// `UFFD_FEATURE_MOVE`: `UFFDIO_MOVE`.
    Move,
    /// `UFFD_FEATURE_SIGBUS`: faults raise `SIGBUS` in the faulting thread (in-thread fault
    /// handling).
    Sigbus,
    /// The `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap`.
    PagemapScan,
    /// Kernel-mode writes (e.g. `read(2)` into a tracked buffer) are serviced, not `EFAULT`.
    KernelModeFaults,
}

impl Feature {
    /// Every feature, in a stable order.
    pub const ALL: &'static [Feature] = &[
        Feature::PagefaultFlagWp,
        Feature::EventRemove,
        Feature::EventUnmap,
        Feature::EventRemap,
        Feature::ThreadId,
        Feature::WpHugetlbfsShmem,
        Feature::WpUnpopulated,
        Feature::WpAsync,
        Feature::Move,
        Feature::Sigbus,
        Feature::PagemapScan,
        Feature::KernelModeFaults,
    ];

    /// The uapi name.
    pub fn name(self) -> &'static str {
        match self {
            Feature::PagefaultFlagWp => "UFFD_FEATURE_PAGEFAULT_FLAG_WP",
            Feature::EventRemove => "UFFD_FEATURE_EVENT_REMOVE",
            Feature::EventUnmap => "UFFD_FEATURE_EVENT_UNMAP",
            Feature::EventRemap => "UFFD_FEATURE_EVENT_REMAP",
            Feature::ThreadId => "UFFD_FEATURE_THREAD_ID",
            Feature::WpHugetlbfsShmem => "UFFD_FEATURE_WP_HUGETLBFS_SHMEM",
            Feature::WpUnpopulated => "UFFD_FEATURE_WP_UNPOPULATED",
            Feature::WpAsync => "UFFD_FEATURE_WP_ASYNC",
            Feature::Move => "UFFD_FEATURE_MOVE",
            Feature::Sigbus => "UFFD_FEATURE_SIGBUS",
            Feature::PagemapScan => "PAGEMAP_SCAN",
            Feature::KernelModeFaults => "kernel-mode faults (no UFFD_USER_MODE_ONLY)",
        }
    }

    /// The `UFFD_FEATURE_*` bit, for the features that have one.
    pub fn bit(self) -> Option<u64> {
        Some(match self {
            Feature::PagefaultFlagWp => k::UFFD_FEATURE_PAGEFAULT_FLAG_WP,
            Feature::EventRemove => k::UFFD_FEATURE_EVENT_REMOVE,
            Feature::EventUnmap => k::UFFD_FEATURE_EVENT_UNMAP,
            Feature::EventRemap => k::UFFD_FEATURE_EVENT_REMAP,
            Feature::ThreadId => k::UFFD_FEATURE_THREAD_ID,
            Feature::WpHugetlbfsShmem => k::UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
            Feature::WpUnpopulated => k::UFFD_FEATURE_WP_UNPOPULATED,
            Feature::WpAsync => k::UFFD_FEATURE_WP_ASYNC,
            Feature::Move => k::UFFD_FEATURE_MOVE,
            Feature::Sigbus => k::UFFD_FEATURE_SIGBUS,
            Feature::PagemapScan | Feature::KernelModeFaults => return None,
        } as u64)
    }

    /// The first mainline kernel version that has the feature.
    pub fn min_kernel(self) -> (u32, u32) {
        match self {
            Feature::PagefaultFlagWp => (5, 7),
            Feature::EventRemove | Feature::EventUnmap | Feature::EventRemap => (4, 11),
            Feature::ThreadId | Feature::Sigbus => (4, 14),
            Feature::WpHugetlbfsShmem => (5, 19),
            Feature::WpUnpopulated => (6, 4),
            Feature::WpAsync | Feature::PagemapScan => (6, 7),
            Feature::Move => (6, 8),
            Feature::KernelModeFaults => (4, 3),
        }
    }
}

/// What this kernel and process can do; see [`probe()`].
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Probe {
    /// `uname -r`.
    pub kernel_release: String,
    /// Parsed `(major, minor, patch)` of the release.
    pub kernel_version: (u32, u32, u32),
    /// How a userfaultfd can be obtained.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::stats::serialize_debug")
    )]
    pub access: Access,
    /// `UFFD_FEATURE_*` bits the kernel offers (0 when no userfaultfd could be opened).
    pub features: u64,
    /// `_UFFDIO_*` ioctl bits the kernel offers on the fd.
    pub ioctls: u64,
    /// Whether `PAGEMAP_SCAN` is available.
    pub pagemap_scan: bool,
    /// Whether soft-dirty bits are tracked (`CONFIG_MEM_SOFT_DIRTY`). writewatch does not use
    /// them; reported because tools that do will not work here.
    pub soft_dirty: bool,
    /// `vm.unprivileged_userfaultfd`, if readable.
    pub unprivileged_userfaultfd: Option<u32>,
    /// Transparent huge pages mode (`/sys/kernel/mm/transparent_hugepage/enabled`), if readable.
    pub thp: Option<String>,
}

impl Probe {
    /// Whether the kernel and process offer `f`.
    pub fn has(&self, f: Feature) -> bool {
        match f {
            Feature::PagemapScan => self.pagemap_scan,
            Feature::KernelModeFaults => {
                matches!(self.access, Access::DevUserfaultfd | Access::Syscall)
            }
            other => other.bit().is_some_and(|b| self.features & b != 0),
        }
    }

    /// Whether a userfaultfd can be opened at all.
    pub fn usable(&self) -> bool {
        matches!(
            self.access,
            Access::DevUserfaultfd | Access::Syscall | Access::UserModeOnly
        )
    }

    /// Features this kernel's version should have but the probe did not find.
    ///
    /// `KernelModeFaults` is included only when the process is root (then only a kernel policy
    /// such as a hardened sysctl can remove it, which deserves a failure too).
    pub fn expected_but_missing(&self) -> Vec<Feature> {
        let (maj, min, _) = self.kernel_version;
        let root = nix::unistd::geteuid().is_root();
        Feature::ALL
            .iter()
            .copied()
            .filter(|f| (maj, min) >= f.min_kernel())
            .filter(|f| *f != Feature::KernelModeFaults || root)
            .filter(|f| !self.has(*f))
            .collect()
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kernel            {} ({}.{}.{})",
            self.kernel_release,
            self.kernel_version.0,
            self.kernel_version.1,
            self.kernel_version.2
        )?;
        let access = match self.access {
            Access::DevUserfaultfd => "/dev/userfaultfd (kernel-mode faults serviced)".to_string(),
            Access::Syscall => "userfaultfd(2) (kernel-mode faults serviced)".to_string(),
            Access::UserModeOnly => {
                "userfaultfd(2) with UFFD_USER_MODE_ONLY: syscalls writing tracked memory get EFAULT".to_string()
            }
            Access::Denied(e) => format!(
                "denied ({e}): run as root, grant CAP_SYS_PTRACE, open /dev/userfaultfd to the user, or sysctl vm.unprivileged_userfaultfd=1"
            ),
            Access::Absent(e) => format!("unavailable ({e}): kernel needs CONFIG_USERFAULTFD"),
        };
        writeln!(f, "userfaultfd       {access}")?;
        if let Some(v) = self.unprivileged_userfaultfd {
            writeln!(f, "vm.unprivileged_userfaultfd = {v}")?;
        }
        if let Some(t) = &self.thp {
            writeln!(f, "THP               {t}")?;
        }
        writeln!(
            f,
            "soft-dirty        {}",
            if self.soft_dirty {
                "yes"
            } else {
                "no (not used by writewatch)"
            }
        )?;
        for feat in Feature::ALL {
            let (a, b) = feat.min_kernel();
            writeln!(
                f,
                "  {:<3} {:<48} (mainline >= {a}.{b})",
                if self.has(*feat) { "yes" } else { "no" },
                feat.name()
            )?;
        }
        Ok(())
    }
}

/// Parses `"6.18.44-fc-v769"` into `(6, 18, 44)`.
pub(crate) fn parse_kernel_version(release: &str) -> (u32, u32, u32) {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// Which way of opening a userfaultfd works for this process, trying the most capable first.
/// Returns the access kind and, when one could be opened, the fd.
pub(crate) fn open_best(flags: libc::c_int) -> (Access, Option<std::os::fd::OwnedFd>) {
    if let Ok(fd) = sys::userfaultfd_dev(flags) {
        return (Access::DevUserfaultfd, Some(fd));
    }
    match sys::userfaultfd_syscall(flags) {
        Ok(fd) => return (Access::Syscall, Some(fd)),
        Err(Errno::ENOSYS) => return (Access::Absent(Errno::ENOSYS.public()), None),
        Err(_) => {}
    }
    match sys::userfaultfd_syscall(flags | k::UFFD_USER_MODE_ONLY as libc::c_int) {
        Ok(fd) => (Access::UserModeOnly, Some(fd)),
        Err(e @ (Errno::EPERM | Errno::EACCES)) => (Access::Denied(e.public()), None),
        Err(e) => (Access::Absent(e.public()), None),
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Probes the running kernel and process. Never fails: what cannot be determined is reported
/// as absent.
pub fn probe() -> Probe {
    let kernel_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let kernel_version = parse_kernel_version(&kernel_release);
    let (access, fd) = open_best(libc::O_CLOEXEC | libc::O_NONBLOCK);
    let (features, ioctls) = fd
        .as_ref()
        .and_then(|fd| sys::uffdio_api(fd.as_raw_fd(), 0).ok())
        .unwrap_or((0, 0));
    Probe {
        kernel_release,
        kernel_version,
        access,
        features,
        ioctls,
        pagemap_scan: crate::pagemap::Pagemap::scan_available(),
        soft_dirty: sys::soft_dirty_probe(),
        unprivileged_userfaultfd: read_trimmed("/proc/sys/vm/unprivileged_userfaultfd")
            .and_then(|s| s.parse().ok()),
        thp: read_trimmed("/sys/kernel/mm/transparent_hugepage/enabled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v769"), (6, 18, 44));
        assert_eq!(parse_kernel_version("5.15.0-91-generic"), (5, 15, 0));
        assert_eq!(parse_kernel_version("6.1"), (6, 1, 0));
        assert_eq!(parse_kernel_version(""), (0, 0, 0));
    }

    #[test]
    fn feature_bits_are_distinct() {
        let bits: Vec<u64> = Feature::ALL.iter().filter_map(|f| f.bit()).collect();
        for (i, a) in bits.iter().enumerate() {
            assert_eq!(a.count_ones(), 1);
            assert!(bits[i + 1..].iter().all(|b| b != a));
        }
    }
}
