//! `Region::fork` (issue 17): the request's scenario byte for byte, consistent cuts under
//! running writers (the stamped-page oracle of the snapshot tests), and bad input.
mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use writewatch_core::{Backend, ForkError, Invalidation, Tracker};

const PS: usize = 4096;

/// The Mach program of the request: one page, 'a'; clone; both read 'a'; the clone writes
/// 'b'; the origin still reads 'a'. Byte for byte, through the unsafe slice API.
#[test]
fn request_scenario_byte_for_byte() {
    watchdog(30, "request scenario", || {
        let t = Tracker::builder().build().unwrap();
        let origin = t.map_anonymous(PS).unwrap();
        // SAFETY: no other thread touches these regions.
        unsafe { origin.as_mut_slice()[0] = b'a' };
        let clone = origin.fork().unwrap();
        assert_ne!(clone.as_ptr(), origin.as_ptr());
        assert_eq!(clone.len(), origin.len());
        // SAFETY: as above; one slice at a time.
        unsafe {
            assert_eq!(origin.as_slice()[0], b'a');
            assert_eq!(clone.as_slice()[0], b'a');
            assert!(clone.as_slice()[1..].iter().all(|&b| b == 0));
            clone.as_mut_slice()[0] = b'b';
            assert_eq!(clone.as_slice()[0], b'b');
            assert_eq!(origin.as_slice()[0], b'a');
            // And the other way round.
            origin.as_mut_slice()[0] = b'c';
            assert_eq!(clone.as_slice()[0], b'b');
            assert_eq!(origin.as_slice()[0], b'c');
        }
    });
}

/// Each side's writes never show in the other, for pages written first by the origin (the
/// clone's copy is made at the origin's fault), first by the clone, and never written.
#[test]
fn writes_on_either_side_stay_on_that_side() {
    watchdog(60, "either side", || {
        let t = Tracker::builder().build().unwrap();
        let pages = 64;
        let a = t.map_anonymous(pages * PS).unwrap();
        let w = a.as_atomic_u64();
        for p in 0..pages {
            w[p * 512].store(1000 + p as u64, SeqCst);
        }
        let b = a.fork().unwrap();
        let v = b.as_atomic_u64();
        for p in (0..pages).step_by(3) {
            w[p * 512].store(2000 + p as u64, SeqCst); // origin first
        }
        for p in (1..pages).step_by(3) {
            v[p * 512].store(3000 + p as u64, SeqCst); // clone first
        }
        for p in 0..pages {
            let (ea, eb) = match p % 3 {
                0 => (2000, 1000),
                1 => (1000, 3000),
                _ => (1000, 1000),
            };
            assert_eq!(w[p * 512].load(SeqCst), ea + p as u64, "origin page {p}");
            assert_eq!(v[p * 512].load(SeqCst), eb + p as u64, "clone page {p}");
            assert_eq!(v[p * 512 + 1].load(SeqCst), 0);
        }
        // The clone is a full region: its first epoch reports every page (content new to the
        // tracker), the next one exactly what was written.
        assert_eq!(b.cut().unwrap().dirty().len(), pages);
        v[5 * 512].store(9, SeqCst);
        assert_eq!(b.cut().unwrap().dirty().iter().collect::<Vec<_>>(), vec![5]);
        // The origin's open epoch was not closed by the fork.
        assert_eq!(a.cut().unwrap().dirty().len(), pages);
    });
}

/// 4 writer threads stamp their own word of random pages of the origin while it is forked
/// 100 times; every clone, read while the writers keep going, must equal the replay of a
/// prefix of each thread's writes (docs/design.md section 4, claims 1 and 2), with nothing
/// outside the stamp slots.
#[test]
fn fork_oracle_4_writers_100_forks() {
    watchdog(240, "fork oracle", || {
        let t = Tracker::builder().build().unwrap();
        let r = fork_oracle(&t, 256, 4, 100);
        println!("fork oracle: {r:?}, stats {:?}", t.stats());
        assert_eq!((r.violations, r.torn, r.lost), (0, 0, 0));
        assert!(r.writes > 1000, "writers made progress: {}", r.writes);
    });
}

/// The same oracle on a shared (memfd) origin, with eager re-protection and fault-around.
#[test]
fn fork_oracle_shared_origin_with_eager_and_fault_around() {
    watchdog(240, "fork oracle shmem", || {
        let t = Tracker::builder()
            .eager_reprotect(Duration::ZERO)
            .fault_around(8)
            .build()
            .unwrap();
        let r = fork_oracle_on(&t, true, 256, 4, 30);
        assert_eq!((r.violations, r.torn, r.lost), (0, 0, 0), "{r:?}");
    });
}

fn fork_oracle(t: &Tracker, pages: usize, threads: usize, forks: u64) -> Consistency {
    fork_oracle_on(t, false, pages, threads, forks)
}

fn fork_oracle_on(
    t: &Tracker,
    shared: bool,
    pages: usize,
    threads: usize,
    forks: u64,
) -> Consistency {
    let region = Arc::new(if shared {
        t.map_shared(pages * PS).unwrap()
    } else {
        t.map_anonymous(pages * PS).unwrap()
    });
    let mut w = StampedWriters::start(
        &region,
        threads,
        64,
        Duration::from_micros(100),
        0x5EED_0000,
    );
    let mut r = Consistency::default();
    let mut touched = Vec::new();
    for _ in 0..forks {
        std::thread::sleep(Duration::from_millis(2));
        let clone = region.fork().expect("fork");
        r.cuts += 1;
        // Read the clone while the origin's writers go on (pages get privatised meanwhile).
        let cw = clone.as_atomic_u64();
        let mut image = vec![[0u64; SLOTS]; pages];
        for p in 0..pages {
            for s in 0..SLOTS {
                image[p][s] = cw[p * WORDS_PER_PAGE + s].load(SeqCst);
            }
            if cw[p * WORDS_PER_PAGE + SLOTS..(p + 1) * WORDS_PER_PAGE]
                .iter()
                .any(|w| w.load(SeqCst) != 0)
            {
                r.torn += 1;
            }
        }
        touched.clear();
        w.replay_to(&image, &mut touched, &mut r);
        w.check(&image, 0..pages, &mut r, "clone");
        // Writes to the clone never reach the origin (slot SLOTS-1 is unused when threads < 4;
        // use the word after the slots instead).
        cw[SLOTS].store(0xC10E, SeqCst);
        assert_eq!(region.as_atomic_u64()[SLOTS].load(SeqCst), 0);
    }
    r.writes = w.finish();
    r
}

#[test]
fn forking_an_invalidated_region_is_a_typed_error() {
    watchdog(30, "invalidated", || {
        let t = Tracker::builder().build().unwrap();
        let len = 4 * PS;
        let p = anon_mmap(len);
        // SAFETY: the mapping is ours; it is unmapped below while tracked, which
        // invalidates the region (documented).
        let r = unsafe { t.adopt(p.cast(), len) }.unwrap();
        // SAFETY: our mapping; unmapping it while tracked invalidates the region (documented).
        unsafe { libc::munmap(p, len) };
        // The UNMAP event is read asynchronously: wait for the invalidation.
        for _ in 0..1000 {
            if r.invalidation().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        match r.fork() {
            Err(ForkError::Invalidated { reason, .. }) => {
                assert_eq!(reason, Invalidation::Unmapped)
            }
            other => panic!("expected Invalidated, got {other:?}"),
        }
        // After shutdown: Unavailable.
        let r2 = t.map_anonymous(len).unwrap();
        t.shutdown();
        assert!(matches!(r2.fork(), Err(ForkError::Unavailable(_))));
    });
}

#[test]
fn backends_that_cannot_fork_name_sync_uffd() {
    for backend in [Backend::Mprotect, Backend::AsyncUffd] {
        let Ok(t) = Tracker::builder().backend(backend).build() else {
            continue;
        };
        let r = t.map_anonymous(4 * PS).unwrap();
        let e = r.fork().unwrap_err();
        assert!(matches!(e, ForkError::Unsupported { .. }), "{e:?}");
        assert!(e.to_string().contains("Backend::SyncUffd"), "{e}");
    }
    let t = Tracker::builder().in_thread_faults(true).build().unwrap();
    let r = t.map_anonymous(4 * PS).unwrap();
    let e = r.fork().unwrap_err();
    assert!(matches!(e, ForkError::InThread), "{e:?}");
    assert!(e.to_string().contains("Backend::SyncUffd"), "{e}");
}

/// An adopted (eagerly protected) origin forks like an owned one; dropping it gives the clone
/// every page it still shared, so the application may then unmap its memory.
#[test]
fn adopted_origin_forks_and_can_be_unmapped_after_its_drop() {
    watchdog(60, "adopted origin", || {
        let t = Tracker::builder().build().unwrap();
        let pages = 32;
        let len = pages * PS;
        let p = anon_mmap(len);
        // SAFETY: our mapping, unmapped only after the region is dropped.
        let origin = unsafe { t.adopt(p.cast(), len) }.unwrap();
        let w = origin.as_atomic_u64();
        for q in 0..pages {
            w[q * WORDS_PER_PAGE].store(500 + q as u64, SeqCst);
        }
        let clone = origin.fork().unwrap();
        w[3 * WORDS_PER_PAGE].store(1, SeqCst);
        drop(origin);
        // SAFETY: the region is dropped; nothing refers to the mapping any more.
        unsafe { libc::munmap(p, len) };
        let v = clone.as_atomic_u64();
        for q in 0..pages {
            assert_eq!(
                v[q * WORDS_PER_PAGE].load(SeqCst),
                500 + q as u64,
                "page {q}"
            );
        }
    });
}

/// Options that change how the origin is protected: eager protection at registration
/// (`lazy_arming(false)`), background re-arming, fault-around, a spinning service thread.
#[test]
fn fork_under_other_tracker_options() {
    watchdog(120, "options", || {
        let builders = [
            Tracker::builder().lazy_arming(false),
            Tracker::builder().eager_reprotect(Duration::ZERO),
            Tracker::builder().fault_around(16),
            Tracker::builder().spin(Duration::from_micros(20)),
        ];
        for (k, b) in builders.into_iter().enumerate() {
            let t = b.build().unwrap();
            let pages = 64;
            let a = t.map_anonymous(pages * PS).unwrap();
            let w = a.as_atomic_u64();
            for p in 0..pages {
                w[p * WORDS_PER_PAGE].store(p as u64 + 1, SeqCst);
            }
            let b = a.fork().unwrap();
            for p in 0..pages {
                w[p * WORDS_PER_PAGE].store(0, SeqCst); // sequential: fault-around runs
            }
            let c = b.fork().unwrap();
            for p in 0..pages {
                b.as_atomic_u64()[p * WORDS_PER_PAGE].store(7, SeqCst);
            }
            for p in 0..pages {
                let want = p as u64 + 1;
                assert_eq!(
                    c.as_atomic_u64()[p * WORDS_PER_PAGE].load(SeqCst),
                    want,
                    "{k}: c {p}"
                );
                assert_eq!(
                    b.as_atomic_u64()[p * WORDS_PER_PAGE].load(SeqCst),
                    7,
                    "{k}: b {p}"
                );
                assert_eq!(w[p * WORDS_PER_PAGE].load(SeqCst), 0, "{k}: a {p}");
            }
        }
    });
}
