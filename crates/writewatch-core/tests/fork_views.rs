//! A fork clone is a full region (issue 17): snapshots, rollback and epochs of a clone read
//! its inherited pages as the clone sees them; a parent dropped while the clone's writers run
//! leaves the clone's content intact.
mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Barrier};

use common::*;
use writewatch_core::Tracker;

const PS: usize = 4096;
const WPP: usize = PS / 8;

#[test]
fn snapshot_rollback_and_epochs_of_a_clone() {
    watchdog(60, "clone views", || {
        let t = Tracker::builder().build().unwrap();
        let pages = 16;
        let a = t.map_anonymous(pages * PS).unwrap();
        for p in 0..pages {
            a.as_atomic_u64()[p * WPP].store(10 + p as u64, SeqCst);
        }
        let b = a.fork().unwrap();
        let snap = b.snapshot().unwrap();
        let v = b.as_atomic_u64();
        // Page 1: read first (owned), then written; page 2: written while still shared;
        // page 3: the parent writes it (privatised), then the clone.
        assert_eq!(v[WPP].load(SeqCst), 11);
        v[WPP].store(100, SeqCst);
        v[2 * WPP].store(200, SeqCst);
        a.as_atomic_u64()[3 * WPP].store(1, SeqCst);
        v[3 * WPP].store(300, SeqCst);
        let mut buf = vec![0u8; PS];
        for p in 0..pages {
            snap.read_page(p as u64, &mut buf).unwrap();
            let got = u64::from_ne_bytes(buf[..8].try_into().unwrap());
            assert_eq!(got, 10 + p as u64, "snapshot page {p}");
        }
        assert_eq!(b.rollback(&snap).unwrap(), 3);
        for p in 0..pages {
            assert_eq!(
                v[p * WPP].load(SeqCst),
                10 + p as u64,
                "rolled back page {p}"
            );
        }
        // Epochs: the first reports every page, read as the clone sees them (shared pages
        // through the parent), while the clone keeps writing.
        let e = b.cut().unwrap();
        assert_eq!(e.dirty().len(), pages);
        v[5 * WPP].store(555, SeqCst);
        let mut reader = e.reader();
        while let Some(x) = reader.next_page() {
            let (p, bytes) = x.unwrap();
            let got = u64::from_ne_bytes(bytes[..8].try_into().unwrap());
            assert_eq!(got, 10 + p, "epoch page {p}");
        }
        assert_eq!(a.as_atomic_u64()[5 * WPP].load(SeqCst), 15);
    });
}

/// The parent is dropped while 4 threads write their own word of every page of the clone:
/// the clone's pages keep the parent's content at the fork in every other word.
#[test]
fn parent_dropped_while_the_clones_writers_run() {
    watchdog(120, "drop under writers", || {
        let t = Tracker::builder().build().unwrap();
        let pages = 1024usize;
        let a = t.map_anonymous(pages * PS).unwrap();
        for p in 0..pages {
            a.as_atomic_u64()[p * WPP + 8].store(7000 + p as u64, SeqCst);
        }
        let b = Arc::new(a.fork().unwrap());
        let go = Arc::new(Barrier::new(SLOTS + 1));
        let hs: Vec<_> = (0..SLOTS)
            .map(|th| {
                let (b, go) = (Arc::clone(&b), Arc::clone(&go));
                std::thread::spawn(move || {
                    go.wait();
                    let v = b.as_atomic_u64();
                    for p in 0..pages {
                        v[p * WPP + th].store(stamp(th, p as u64), SeqCst);
                    }
                })
            })
            .collect();
        go.wait();
        drop(a);
        for h in hs {
            h.join().unwrap();
        }
        let v = b.as_atomic_u64();
        for p in 0..pages {
            assert_eq!(v[p * WPP + 8].load(SeqCst), 7000 + p as u64, "page {p}");
            for th in 0..SLOTS {
                assert_eq!(v[p * WPP + th].load(SeqCst), stamp(th, p as u64));
            }
        }
    });
}
