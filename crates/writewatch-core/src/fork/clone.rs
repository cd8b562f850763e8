//! Creating a fork clone: its mapping and lineage, then the `Fork` command.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backend::Backend;
use crate::command::{Command, Control};
use crate::error::{ForkError, MapError, PublicErrno};
use crate::lineage::{Lineage, PageSource};
use crate::range::{RegionInner, RegionKind};
use crate::sys;

/// Forks `parent` (see [`Region::fork`](crate::Region::fork)): returns the registered clone.
pub(crate) fn fork(
    parent: &Arc<RegionInner>,
    control: &Control,
) -> Result<Arc<RegionInner>, ForkError> {
    if let Some(reason) = parent.invalidation() {
        return Err(ForkError::Invalidated {
            start: parent.start,
            reason,
        });
    }
    control.available()?;
    if control.backend != Backend::SyncUffd {
        return Err(ForkError::Unsupported {
            backend: control.backend.name(),
        });
    }
    if control.config.in_thread {
        return Err(ForkError::InThread);
    }
    if !matches!(parent.kind, RegionKind::Anonymous | RegionKind::Shmem) {
        return Err(ForkError::KindUnsupported {
            kind: parent.kind.name(),
        });
    }
    // A clone's live pages are read through /proc/self/mem, like any lazily armed region's.
    let mem = match &control.mem {
        Some(m) => Arc::clone(m),
        None => Arc::new(std::fs::File::open("/proc/self/mem").map_err(|e| {
            ForkError::Map(MapError::Sys {
                op: "open /proc/self/mem",
                errno: crate::error::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                hint: Some("a fork clone reads its pages through /proc/self/mem: mount /proc"),
            })
        })?),
    };
    let map = sys::Mapping::anonymous(parent.len).map_err(|errno| {
        ForkError::Map(MapError::Sys {
            op: "mmap",
            errno: errno.public(),
            hint: Some("not enough address space or memory for the clone (check vm.overcommit_memory, vm.max_map_count)"),
        })
    })?;
    let id = control.next_id.fetch_add(1, Ordering::Relaxed);
    let mut inner = RegionInner::new(id, map, parent.page_size, RegionKind::Anonymous);
    inner.make_lazy(mem);
    let source: Arc<dyn PageSource> = Arc::clone(parent) as Arc<dyn PageSource>;
    inner.make_clone(Arc::new(Lineage::new(parent.id, parent.page_count, source)));
    let child = Arc::new(inner);
    let span = tracing::debug_span!(
        "fork",
        parent = format_args!("{:#x}", parent.start),
        clone = format_args!("{:#x}", child.start),
        len = parent.len
    );
    let _g = span.enter();
    let c = Arc::clone(&child);
    control.call(|reply| Command::Fork {
        id: parent.id,
        child: c,
        reply,
    })??;
    Ok(child)
}
