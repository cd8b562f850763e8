//! Memory of `Region::fork` (issue 17) from `/proc/self/smaps`: a clone of a populated region
//! adds no resident memory; writing k pages on either side costs about k pages.
mod common;

use std::sync::atomic::Ordering::SeqCst;

use common::*;
use writewatch_core::{Region, Tracker};
use writewatch_testkit::{resident_of, smaps_of_ranges};

const PS: usize = 4096;
const MIB: usize = 1 << 20;

/// smaps of both regions together (their VMAs may have merged: each counted once).
fn both(a: &Region, b: &Region) -> writewatch_testkit::Smaps {
    smaps_of_ranges(&[
        (a.as_ptr() as usize, a.len()),
        (b.as_ptr() as usize, b.len()),
    ])
}

/// Resident bytes of one region, from the page tables.
fn resident(r: &Region) -> u64 {
    resident_of(r.as_ptr() as usize, r.len())
}

#[test]
fn smaps_fork_shares_until_written_on_either_side() {
    watchdog(120, "smaps accounting", || {
        let t = Tracker::builder().build().unwrap();
        let len = 64 * MIB;
        let pages = len / PS;
        let origin = t.map_anonymous(len).unwrap();
        let w = origin.as_atomic_u64();
        for p in 0..pages {
            w[p * 512].store(p as u64 + 1, SeqCst);
        }
        let before = smaps_of_ranges(&[(origin.as_ptr() as usize, len)]);
        assert!(before.private_dirty >= len as u64 * 99 / 100, "{before:?}");
        let clone = origin.fork().unwrap();
        assert_eq!(
            resident(&clone),
            0,
            "a fresh clone has no memory of its own"
        );
        let after_fork = both(&origin, &clone);
        assert_eq!(
            after_fork.private_dirty, before.private_dirty,
            "{after_fork:?}"
        );
        // 1% of the pages on each side, disjoint.
        let k = pages / 100;
        let order = Rng::shuffled(pages, 17);
        let v = clone.as_atomic_u64();
        for &p in &order[..k] {
            w[p * 512 + 1].store(0xA, SeqCst);
        }
        for &p in &order[k..2 * k] {
            v[p * 512 + 1].store(0xB, SeqCst);
        }
        let after = both(&origin, &clone);
        let written = (2 * k * PS) as u64;
        let cost = after.private_dirty.saturating_sub(before.private_dirty);
        println!(
            "smaps: origin before {before:?}; both after fork {after_fork:?}, after writes {after:?}; clone resident {}; cost {cost} for {written} written bytes ({:.3}x)",
            resident(&clone),
            cost as f64 / written as f64
        );
        assert!(
            cost >= written,
            "every written page costs a page: {cost} < {written}"
        );
        assert!(
            cost * 10 <= written * 11,
            "at most 1.1x the written pages: {cost} vs {written}"
        );
        assert_eq!(
            resident(&origin),
            len as u64,
            "the origin's memory is unchanged"
        );
        assert_eq!(
            resident(&clone),
            written,
            "the clone holds exactly the written pages"
        );
        assert_eq!(
            after.rss, after.pss,
            "nothing is shared with another process"
        );
        // Content check of the written pages.
        for &p in &order[..k] {
            assert_eq!(v[p * 512 + 1].load(SeqCst), 0);
            assert_eq!(v[p * 512].load(SeqCst), p as u64 + 1);
        }
        for &p in &order[k..2 * k] {
            assert_eq!(w[p * 512 + 1].load(SeqCst), 0);
        }
    });
}

/// A page of zeros is never copied: forking a sparse region and writing the origin's
/// never-touched pages costs the clone nothing.
#[test]
fn zero_pages_are_not_copied() {
    watchdog(60, "zero pages", || {
        let t = Tracker::builder().build().unwrap();
        let origin = t.map_anonymous(4 * MIB).unwrap();
        let clone = origin.fork().unwrap();
        let w = origin.as_atomic_u64();
        for p in 0..(4 * MIB / PS) {
            w[p * 512].store(1, SeqCst);
        }
        assert_eq!(resident(&clone), 0);
        assert_eq!(clone.as_atomic_u64()[512 * 9].load(SeqCst), 0);
    });
}
