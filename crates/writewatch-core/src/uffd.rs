//! Opening the userfaultfd for a uffd backend: which kind of fd may be opened, the feature
//! handshake, and the backend `Auto` resolves to. Next to `probe`, which asks the same
//! questions without keeping the fd.

use std::os::fd::AsRawFd;

use linux_raw_sys::general as k;
use nix::errno::Errno;

use crate::backend::{Backend, Features, Purpose};
use crate::error::{BuildError, PublicErrno};
use crate::pagemap::Pagemap;
use crate::probe::{open_best, Access, Feature};
use crate::sys;

/// Opens and negotiates the userfaultfd for a uffd backend (or `Auto`), with the builder's
/// options that bear on it.
pub(crate) fn open_uffd(
    requested: Backend,
    disabled: &[Feature],
    force_user_mode_only: bool,
    purpose: Purpose,
    in_thread: bool,
) -> Result<(Backend, userfaultfd::Uffd, Features), BuildError> {
    let base = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // 1. Which kind of fd may we open, and what does the kernel offer on it?
    let (access, probe_fd) = if force_user_mode_only {
        match sys::userfaultfd_syscall(base | k::UFFD_USER_MODE_ONLY as libc::c_int) {
            Ok(fd) => (Access::UserModeOnly, Some(fd)),
            Err(e) => (Access::Denied(e.public()), None),
        }
    } else {
        open_best(base)
    };
    let probe_fd = match (access, probe_fd) {
        (_, Some(fd)) => fd,
        (Access::Denied(errno), None) => return Err(BuildError::PermissionDenied { errno }),
        (Access::Absent(errno), None) => return Err(BuildError::NoUserfaultfd { errno }),
        (_, None) => {
            return Err(BuildError::NoUserfaultfd {
                errno: Errno::ENOSYS.public(),
            })
        }
    };
    let (offered, _) =
        sys::uffdio_api(probe_fd.as_raw_fd(), 0).map_err(|errno| BuildError::Handshake {
            errno: errno.public(),
        })?;
    drop(probe_fd);
    if offered & k::UFFD_FEATURE_PAGEFAULT_FLAG_WP as u64 == 0
        || disabled.contains(&Feature::PagefaultFlagWp)
    {
        return Err(BuildError::MissingFeature {
            feature: "UFFD_FEATURE_PAGEFAULT_FLAG_WP",
            needs: "Linux >= 5.7 with CONFIG_HAVE_ARCH_USERFAULTFD_WP (x86_64, arm64 >= 6.10)",
        });
    }
    let async_ok = offered & k::UFFD_FEATURE_WP_ASYNC as u64 != 0
        && offered & k::UFFD_FEATURE_WP_UNPOPULATED as u64 != 0
        && !disabled.contains(&Feature::WpAsync)
        && !disabled.contains(&Feature::WpUnpopulated)
        && Pagemap::scan_available();
    let backend = match requested {
        Backend::AsyncUffd if !async_ok => {
            return Err(BuildError::MissingFeature {
                feature: "UFFD_FEATURE_WP_ASYNC + WP_UNPOPULATED + PAGEMAP_SCAN",
                needs: "Linux >= 6.7 (or use Backend::SyncUffd)",
            })
        }
        Backend::Auto if async_ok && purpose == Purpose::DirtyTracking => Backend::AsyncUffd,
        Backend::Auto => Backend::SyncUffd,
        b => b,
    };
    let mut wanted = [
        Feature::PagefaultFlagWp,
        Feature::WpUnpopulated,
        Feature::ThreadId,
        Feature::EventRemove,
        Feature::EventUnmap,
        Feature::EventRemap,
        Feature::WpHugetlbfsShmem,
    ]
    .iter()
    .filter(|f| !disabled.contains(f))
    .filter_map(|f| f.bit())
    .fold(0u64, |a, b| a | b)
        & offered;
    if backend == Backend::AsyncUffd {
        wanted |= k::UFFD_FEATURE_WP_ASYNC as u64;
    }
    if in_thread {
        if offered & k::UFFD_FEATURE_SIGBUS as u64 == 0 || disabled.contains(&Feature::Sigbus) {
            return Err(BuildError::MissingFeature {
                feature: "UFFD_FEATURE_SIGBUS",
                needs: "Linux >= 4.14 (or leave in_thread_faults off)",
            });
        }
        wanted |= k::UFFD_FEATURE_SIGBUS as u64;
    }
    let user_mode_only = access == Access::UserModeOnly;

    // 2. The real fd, opened with the userfaultfd crate.
    let uffd = userfaultfd::UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(user_mode_only)
        .require_features(userfaultfd::FeatureFlags::from_bits_retain(wanted))
        .create();
    let uffd = match uffd {
        Ok(u) => u,
        // The crate insists on /dev/userfaultfd when it exists; the syscall may still be
        // allowed (vm.unprivileged_userfaultfd=1 with a root-only device node).
        Err(userfaultfd::Error::OpenDevUserfaultfd(_)) => {
            let flags = base
                | if user_mode_only {
                    k::UFFD_USER_MODE_ONLY as libc::c_int
                } else {
                    0
                };
            let fd =
                sys::userfaultfd_syscall(flags).map_err(|errno| BuildError::PermissionDenied {
                    errno: errno.public(),
                })?;
            sys::uffdio_api(fd.as_raw_fd(), wanted).map_err(|errno| BuildError::Handshake {
                errno: errno.public(),
            })?;
            sys::uffd_from_fd(fd)
        }
        Err(e) => {
            return Err(match sys::errno_of(&e) {
                errno @ (Errno::EPERM | Errno::EACCES) => BuildError::PermissionDenied {
                    errno: errno.public(),
                },
                errno => BuildError::Handshake {
                    errno: errno.public(),
                },
            })
        }
    };
    Ok((
        backend,
        uffd,
        Features {
            bits: wanted,
            user_mode_only,
        },
    ))
}
