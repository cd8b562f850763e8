//! [`Lineage`]: what a fork clone inherits, and how its pages that still share the parent's
//! content are read.
//!
//! A clone page is either **owned** (its content lives in the clone: installed by the service
//! thread, or zero after a `madvise` zap) or **shared** (its content is the parent's page,
//! which the protocol keeps unchanged since the fork: the parent's first write to it
//! privatises the clone's page first). Pages only ever go from shared to owned.

use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, RwLock};

use crate::bitmap::AtomicBitmap;

/// Something a clone inherits pages from: its parent region.
pub(crate) trait PageSource: Send + Sync + std::fmt::Debug {
    /// Copies `page` as the source sees it now into `buf` (one page). False if the source
    /// can no longer be read (dropped or invalidated): the caller re-checks ownership, which
    /// the service thread sets for every page before a source goes away.
    fn read_source_page(&self, page: u64, buf: &mut [u8]) -> bool;
}

/// The fork state of one clone region (see the module documentation).
#[derive(Debug)]
pub(crate) struct Lineage {
    /// Id of the region this clone was forked from.
    pub parent_id: u64,
    /// Pages whose content lives in the clone. Set by the service thread only, always after
    /// the page got its content (or lost it to a zap) and before the parent's page may change.
    owned: AtomicBitmap,
    pages: usize,
    /// The parent, while some page may still be shared. Cleared (None) once every page is
    /// owned, which lets the parent's memory go.
    source: RwLock<Option<Arc<dyn PageSource>>>,
}

impl Lineage {
    pub(crate) fn new(parent_id: u64, pages: u64, source: Arc<dyn PageSource>) -> Self {
        Self {
            parent_id,
            owned: AtomicBitmap::new(pages as usize),
            pages: pages as usize,
            source: RwLock::new(Some(source)),
        }
    }

    /// Whether `page` holds its own content (or may not share the parent's any more).
    pub(crate) fn owns(&self, page: u64) -> bool {
        self.owned.get(page as usize)
    }

    /// Service thread: `page` holds its own content from now on.
    pub(crate) fn own(&self, page: u64) {
        self.owned.set(page as usize);
        // The parent's page may change right after this returns (it gets un-protected): a
        // reader that copied the parent's page must see this bit when it re-checks.
        fence(Ordering::SeqCst);
    }

    /// Service thread: every page holds its own content; the parent is no longer needed.
    pub(crate) fn detach(&self) {
        self.owned.set_range(0, self.pages());
        fence(Ordering::SeqCst);
        *self.source.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Number of pages.
    pub(crate) fn pages(&self) -> usize {
        self.pages
    }

    /// Number of pages still shared with the parent.
    pub(crate) fn shared_pages(&self) -> usize {
        self.pages() - self.owned.count_ones()
    }

    /// Copies `page` as the clone sees it: `own` (a copy of the clone's live page) if the page
    /// is owned, else the parent's page.
    ///
    /// Race with the service thread privatising the page (install, then `own`, then the
    /// parent's page may change): the parent's page is copied, then ownership is checked
    /// again; if it became owned meanwhile the copy may hold the parent's *new* content, so
    /// the clone's own page (installed before the bit was set) is read instead.
    pub(crate) fn copy(&self, page: u64, buf: &mut [u8], mut own: impl FnMut(&mut [u8])) {
        if self.owns(page) {
            return own(buf);
        }
        let source = self
            .source
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(source) = source else {
            return own(buf);
        };
        let read = source.read_source_page(page, buf);
        fence(Ordering::SeqCst);
        if !read || self.owns(page) {
            own(buf);
        }
    }
}
