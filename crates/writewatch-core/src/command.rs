//! Commands to the fault-service thread, and [`Control`]: the sending side of the channel
//! (held by the tracker handles and the regions) with the service thread's join handle.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use nix::errno::Errno;

use crate::epoch::Epoch;
use crate::error::{CutError, ForkError, MapError, Unavailable};
use crate::range::RegionInner;
use crate::shared::{Shared, RUNNING, SHUT_DOWN};
use crate::snapshot::Snapshot;
use crate::view::View;

/// A control command for the service thread. Each carries a reply channel.
pub(crate) enum Command {
    Register {
        region: Arc<RegionInner>,
        /// Report every page dirty in the first epoch (adopted content is new to the tracker).
        all_dirty: bool,
        reply: Sender<Result<(), MapError>>,
    },
    Unregister {
        id: u64,
        reply: Sender<Result<(), Errno>>,
    },
    Cut {
        id: u64,
        reply: Sender<Result<Epoch, CutError>>,
    },
    Snapshot {
        id: u64,
        reply: Sender<Result<Snapshot, CutError>>,
    },
    /// Rollback: re-protect `pages` (just rewritten from `view`'s copies) and mark them clean.
    Rearm {
        id: u64,
        view: Arc<View>,
        pages: Vec<u64>,
        reply: Sender<Result<(), CutError>>,
    },
    /// `Region::prepare_overwrite`.
    PrepareOverwrite {
        id: u64,
        reply: Sender<Result<(), CutError>>,
    },
    /// `Region::fork`: protect region `id` at one instant and register `child` (a clone whose
    /// lineage names `id`).
    Fork {
        id: u64,
        child: Arc<RegionInner>,
        reply: Sender<Result<(), ForkError>>,
    },
    Shutdown {
        reply: Sender<()>,
    },
    /// Test hook: make the service thread panic (see `Tracker::debug_inject_panic`).
    InjectPanic,
}

/// Receiver type used by the service thread.
pub(crate) type CommandRx = Receiver<Command>;

/// The command side of a tracker: the channel to the service thread and its join handle, over
/// the [`Shared`] state (which it dereferences to).
pub(crate) struct Control {
    pub shared: Arc<Shared>,
    pub cmd_tx: Sender<Command>,
    pub join: Mutex<Option<JoinHandle<()>>>,
}

impl std::ops::Deref for Control {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Control {
    /// Sends a command and waits for its reply. If the service thread is gone (or goes away
    /// before answering), the reply channel is disconnected and the caller gets `Unavailable`:
    /// this never blocks forever.
    pub(crate) fn call<T>(
        &self,
        make: impl FnOnce(Sender<T>) -> Command,
    ) -> Result<T, Unavailable> {
        self.available()?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.cmd_tx.send(make(tx)).map_err(|_| self.unavailable())?;
        self.kick();
        rx.recv().map_err(|_| self.unavailable())
    }

    /// Shuts the service thread down (idempotent) and joins it.
    pub(crate) fn shutdown(&self) {
        if self
            .state
            .compare_exchange(RUNNING, SHUT_DOWN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if self.cmd_tx.send(Command::Shutdown { reply: tx }).is_ok() {
                self.kick();
                let _ = rx.recv();
            }
        }
        let handle = self.join.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}
