//! Small checkpoint chains for store tests: a base segment, then one delta per edit.

use std::path::Path;

use writewatch_checkpoint::{SliceSource, Store};

/// One edit of a chain: mutates the region in place and returns the `(first page, count)`
/// runs it changed (the delta's dirty runs).
pub type Edit<'a> = &'a mut dyn FnMut(&mut [u8]) -> Vec<(u64, u64)>;

/// Creates a store at `dir`, writes `region` as its base (epoch 0), then applies each edit and
/// writes its runs as delta epoch 1, 2, ... Returns the region's content after every epoch,
/// base first: the oracle the tests restore against.
///
/// # Panics
/// On any store error (a test fixture: the chain must be writable).
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let states = writewatch_testkit::chain::write_chain(
///     &dir.path().join("s"),
///     vec![1u8; 4 * 512],
///     512,
///     &mut [&mut |r: &mut [u8]| {
///         r[512..1024].fill(9);
///         vec![(1, 1)]
///     }],
/// );
/// assert_eq!(states.len(), 2);
/// assert_eq!(states[1][512], 9);
/// ```
pub fn write_chain(
    dir: &Path,
    mut region: Vec<u8>,
    page_size: usize,
    edits: &mut [Edit<'_>],
) -> Vec<Vec<u8>> {
    let mut store = Store::create(dir).expect("create the store");
    store
        .write_base(&source(&region, page_size))
        .expect("write the base");
    let mut states = vec![region.clone()];
    for (i, edit) in edits.iter_mut().enumerate() {
        let runs = edit(&mut region);
        store
            .write_delta(i as u64 + 1, &source(&region, page_size), &runs)
            .expect("write a delta");
        states.push(region.clone());
    }
    states
}

fn source(region: &[u8], page_size: usize) -> SliceSource<'_> {
    SliceSource::new(region, page_size).expect("a page-aligned region")
}
