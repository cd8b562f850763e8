//! `Region::fork`: a writable copy-on-write clone inside the same process.
//!
//! A clone is a new, lazily armed private anonymous region (registered for missing and
//! write-protect faults) whose pages start **shared**: they have no content of their own and
//! read as the parent's page. The protocol keeps a shared page's parent content unchanged
//! until the clone has its own copy:
//!
//! ```text
//!   clone page SHARED (empty, inherits the parent's page)
//!     | clone touches it (missing fault)      -> service thread installs the parent's page
//!     | parent's first write to it (WP fault) -> service thread installs it into the clone
//!     |                                          BEFORE un-protecting the parent's page
//!     | parent dropped / overwritten / shut down -> installed for every clone
//!     | clone madvise(DONTNEED)               -> nothing installed: its content is zero
//!     v
//!   clone page OWNED (its own content, or empty = zeros)   (never goes back)
//! ```
//!
//! Files: `crate::lineage` (the clone's owned bits and parent, and how a shared page is read;
//! a module of its own, below `range.rs`, which holds a clone's lineage);
//! `clone.rs` (creating the clone's mapping and asking the service thread to fork);
//! the service-thread side is `service/fork.rs`. The design and its proof are in
//! docs/design.md, section 13.

pub(crate) mod clone;
