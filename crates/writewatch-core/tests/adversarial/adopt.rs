//! Adopting memory: overlaps, refusals, guard pages kept through `prepare_overwrite`.

use super::*;

/// The mprotect backend: adopting (part of) a range this very tracker already tracks must be
/// reported as `MapError::Overlap` ("this tracker already tracks"), not as tracked by
/// another tracker.
// Was a defect (adversarial review): a region created by `map_anonymous` / `map_shared` on
// an mprotect tracker never got its segv slot's owner tag, so adopting part of it with the
// same tracker said `TrackedElsewhere`. Every mprotect region is now tagged at registration.
#[test]
fn mprotect_adopt_overlapping_own_mapped_region_is_overlap() {
    watchdog(30, "adopt own region", || {
        let t = Tracker::builder()
            .backend(Backend::Mprotect)
            .build()
            .unwrap();
        let r = t.map_anonymous(4 * PS).unwrap();
        // SAFETY: the range stays mapped (owned by `r`) for the duration; adopt must refuse.
        let res = unsafe { t.adopt(r.as_ptr().add(PS), PS) };
        match res {
            Err(writewatch_core::MapError::Overlap { .. }) => {}
            other => panic!("expected MapError::Overlap, got {other:?}"),
        }
    });
}

/// Adopt refusals (item 7): another tracker's range, the calling thread's stack, a read-only
/// mapping.
#[test]
fn adopt_refusals() {
    watchdog(30, "adopt refusals", || {
        use writewatch_core::MapError;
        let t1 = Tracker::builder()
            .backend(Backend::Mprotect)
            .build()
            .unwrap();
        let t2 = Tracker::builder()
            .backend(Backend::Mprotect)
            .build()
            .unwrap();
        let mem = anon_mmap(8 * PS) as *mut u8;
        // SAFETY: our mapping, unmapped at the end after both regions are gone.
        let r1 = unsafe { t1.adopt(mem, 4 * PS) }.unwrap();
        // SAFETY: as above; must be refused.
        match unsafe { t2.adopt(mem.add(2 * PS), 4 * PS) } {
            Err(MapError::TrackedElsewhere { .. }) => {}
            other => panic!("other tracker's range: {other:?}"),
        }
        // Same tracker: overlap.
        // SAFETY: as above; must be refused.
        match unsafe { t1.adopt(mem.add(3 * PS), 2 * PS) } {
            Err(MapError::Overlap { .. }) => {}
            other => panic!("own adopted range: {other:?}"),
        }
        // A uffd tracker on the mprotect tracker's range.
        let u = Tracker::builder()
            .backend(Backend::SyncUffd)
            .build()
            .unwrap();
        // SAFETY: as above; must be refused.
        assert!(unsafe { u.adopt(mem, PS) }.is_err());
        drop(r1);
        // After the drop the range is free again.
        // SAFETY: as above.
        let r2 = unsafe { t2.adopt(mem, 4 * PS) }.unwrap();
        drop(r2);
        // The calling thread's stack.
        let local = [0u8; 3 * PS];
        let a = (local.as_ptr() as usize + PS - 1) & !(PS - 1);
        // SAFETY: must be refused before anything is registered.
        match unsafe { u.adopt(a as *mut u8, PS) } {
            Err(MapError::OwnMemory { .. }) => {}
            other => panic!("own stack: {other:?}"),
        }
        std::hint::black_box(&local);
        // Read-only mapping.
        assert_eq!(
            // SAFETY: our own mapping.
            unsafe { libc::mprotect(mem.add(6 * PS).cast(), PS, libc::PROT_READ) },
            0
        );
        // SAFETY: must be refused.
        match unsafe { u.adopt(mem.add(6 * PS), PS) } {
            Err(MapError::NotReadWrite { .. }) => {}
            other => panic!("read-only: {other:?}"),
        }
        // SAFETY: nothing tracks it any more.
        unsafe { libc::munmap(mem.cast(), 8 * PS) };
    });
}

fn perms_of(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for l in maps.lines() {
        let mut f = l.split_whitespace();
        let range = f.next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            usize::from_str_radix(a, 16).unwrap(),
            usize::from_str_radix(b, 16).unwrap(),
        );
        if a <= addr && addr < b {
            return f.next().unwrap().to_string();
        }
    }
    panic!("{addr:#x} not mapped")
}

/// mprotect backend: an application guard page (PROT_NONE) inside an adopted region stays
/// PROT_NONE across cuts, prepare_overwrite and the region's drop.
#[test]
fn mprotect_guard_page_survives_prepare_overwrite_and_cuts() {
    watchdog(30, "guard page", || {
        let t = Tracker::builder()
            .backend(Backend::Mprotect)
            .build()
            .unwrap();
        let mem = anon_mmap(8 * PS) as *mut u8;
        // SAFETY: our mapping, unmapped at the end after the region is dropped.
        let r = unsafe { t.adopt(mem, 8 * PS) }.unwrap();
        let guard = mem as usize + 4 * PS;
        assert_eq!(
            // SAFETY: our own mapping; nothing references page 4.
            unsafe { libc::mprotect(guard as *mut _, PS, libc::PROT_NONE) },
            0
        );
        touch(&r, 1, 1);
        drop(r.cut().unwrap());
        assert_eq!(perms_of(guard), "---p", "after cut");
        r.prepare_overwrite().unwrap();
        assert_eq!(perms_of(guard), "---p", "after prepare_overwrite");
        touch(&r, 2, 1);
        drop(r.cut().unwrap());
        assert_eq!(perms_of(guard), "---p", "after cut 2");
        drop(r);
        assert_eq!(perms_of(guard), "---p", "after drop");
        // SAFETY: nothing tracks it any more.
        unsafe { libc::munmap(mem.cast(), 8 * PS) };
    });
}
