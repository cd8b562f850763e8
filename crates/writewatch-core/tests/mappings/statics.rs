//! A program's own statics (`.data`, `.bss`) tracked with `Tracker::adopt_static`.

use std::sync::atomic::Ordering::SeqCst;

use super::*;
use writewatch_core::StaticPages;

/// Initialised (non-zero): placed in `.data`, a private mapping of the test executable.
static DATA: StaticPages<8> = StaticPages::new(0xDA7A);
/// Zero-initialised: `.bss` (anonymous, possibly sharing `.data`'s last page).
static BSS: StaticPages<8> = StaticPages::new(0);

#[test]
fn data_static_written_by_the_test_shows_up_dirty() {
    let Some(t) = async_tracker() else { return };
    let region = t.adopt_static(&DATA).unwrap();
    assert_eq!(
        region.kind(),
        RegionKind::FilePrivate,
        "an initialised static is in .data"
    );
    assert_eq!(region.as_ptr() as usize, DATA.words().as_ptr() as usize);
    assert_eq!(
        region.cut().unwrap().dirty().len(),
        8,
        "epoch 0: every page"
    );
    for round in 0..5u64 {
        let pages = [round as usize % 8, (round as usize * 3 + 1) % 8];
        for &p in &pages {
            DATA.page(p)[round as usize].store(round + 100, SeqCst);
        }
        let mut expect: Vec<u64> = pages.iter().map(|&p| p as u64).collect();
        expect.sort();
        expect.dedup();
        assert_eq!(
            region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
            expect
        );
    }
    // Reads leave it clean; the initial value of unwritten words is intact.
    assert_eq!(DATA.page(7)[511].load(SeqCst), 0xDA7A);
    assert!(region.cut().unwrap().dirty().is_empty());
}

#[test]
fn bss_static_is_tracked_and_data_refused_off_async() {
    if let Some(t) = async_tracker() {
        let region = t.adopt_static(&BSS).unwrap();
        region.cut().unwrap();
        BSS.page(5)[0].store(1, SeqCst);
        assert_eq!(
            region.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
            vec![5]
        );
    }
    let t = Tracker::builder()
        .backend(Backend::SyncUffd)
        .build()
        .unwrap();
    let e = t.adopt_static(&DATA).unwrap_err();
    assert!(matches!(e, MapError::FileBackedNeedsAsync { .. }), "{e}");
}
