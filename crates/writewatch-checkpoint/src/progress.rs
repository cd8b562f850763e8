//! Progress reporting of long operations (write, restore, verify, compact).

use std::sync::Arc;

/// Progress of a long operation (write, restore, verify, compact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Pages processed so far.
    pub pages_done: u64,
    /// Total pages to process, when known.
    pub pages_total: Option<u64>,
    /// Bytes written or read so far.
    pub bytes: u64,
}

/// A progress callback; called from the thread doing the operation every few
/// MiB and once at the end.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Rate-limited progress reporting (every 4 MiB).
pub(crate) struct ProgressTracker<'a> {
    cb: Option<&'a ProgressFn>,
    total: u64,
    pages: u64,
    bytes: u64,
    last_report: u64,
}

impl<'a> ProgressTracker<'a> {
    pub(crate) fn new(cb: Option<&'a ProgressFn>, total: u64) -> Self {
        ProgressTracker {
            cb,
            total,
            pages: 0,
            bytes: 0,
            last_report: 0,
        }
    }

    pub(crate) fn add(&mut self, pages: u64, bytes: u64) {
        self.pages += pages;
        self.bytes += bytes;
        if self.bytes - self.last_report >= 4 << 20 {
            self.report();
        }
    }

    fn report(&mut self) {
        self.last_report = self.bytes;
        if let Some(cb) = self.cb {
            cb(Progress {
                pages_done: self.pages,
                pages_total: Some(self.total),
                bytes: self.bytes,
            });
        }
    }

    pub(crate) fn finish(&mut self) {
        self.report();
    }
}
