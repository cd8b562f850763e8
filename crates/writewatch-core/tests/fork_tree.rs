//! `Region::fork` trees (issue 17): random writes on a tree of depth 5 against an in-memory
//! model of every node, drops in every order, forks while another fork's first writes are in
//! flight, shutdown and prepare_overwrite with clones alive.
mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Barrier};

use common::*;
use writewatch_core::{Region, Tracker};

const PS: usize = 4096;
const WPP: usize = PS / 8;

/// Every word the model knows of `node` (sparse: page -> (word, value)) read through a
/// snapshot (copy_page, which does not give the clone pages) or live memory.
fn check(node: &Region, model: &[Vec<u64>], via_snapshot: bool, what: &str) {
    let pages = model.len();
    if via_snapshot {
        let snap = node.snapshot().unwrap();
        let mut buf = vec![0u8; PS];
        for (p, words) in model.iter().enumerate() {
            snap.read_page(p as u64, &mut buf).unwrap();
            for (i, &v) in words.iter().enumerate() {
                let got = u64::from_ne_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap());
                assert_eq!(got, v, "{what}: page {p} word {i} (snapshot)");
            }
        }
    } else {
        let w = node.as_atomic_u64();
        for p in 0..pages {
            for (i, &v) in model[p].iter().enumerate() {
                assert_eq!(w[p * WPP + i].load(SeqCst), v, "{what}: page {p} word {i}");
            }
        }
    }
}

/// Random writes, forks (of origins and clones, depth up to 5) and drops; every node checked
/// against its model after each round, alternately through snapshots and live memory.
#[test]
fn tree_of_depth_5_matches_a_model_of_every_node() {
    watchdog(240, "fork tree", || {
        let t = Tracker::builder().build().unwrap();
        let pages = 24;
        let words = 4; // the model tracks the first 4 words of each page
        let mut rng = Rng(0x7EE5);
        // (region, depth, model)
        let mut nodes: Vec<(Region, usize, Vec<Vec<u64>>)> = Vec::new();
        nodes.push((
            t.map_anonymous(pages * PS).unwrap(),
            0,
            vec![vec![0; words]; pages],
        ));
        let mut forks = 0;
        for round in 0..60 {
            for _ in 0..20 {
                let n = rng.below(nodes.len() as u64) as usize;
                let p = rng.below(pages as u64) as usize;
                let i = rng.below(words as u64) as usize;
                let v = rng.next() | 1;
                nodes[n].0.as_atomic_u64()[p * WPP + i].store(v, SeqCst);
                nodes[n].2[p][i] = v;
            }
            let op = rng.below(10);
            if op < 5 && nodes.len() < 16 {
                let candidates: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].1 < 5).collect();
                if !candidates.is_empty() {
                    let n = rng.pick(&candidates);
                    let c = nodes[n].0.fork().unwrap();
                    let (d, m) = (nodes[n].1 + 1, nodes[n].2.clone());
                    nodes.push((c, d, m));
                    forks += 1;
                }
            } else if op < 7 && nodes.len() > 1 {
                let n = rng.below(nodes.len() as u64) as usize;
                nodes.swap_remove(n);
            }
            for (k, (r, _, m)) in nodes.iter().enumerate() {
                check(r, m, round % 2 == 0, &format!("round {round} node {k}"));
            }
        }
        let depth = nodes.iter().map(|n| n.1).max().unwrap();
        println!(
            "fork tree: {forks} forks, {} nodes left, max depth {depth}",
            nodes.len()
        );
        assert!(forks >= 10);
    });
}

/// A root, two clones and a grandchild with distinct writes, dropped in each of the 24
/// orders; after every drop the remaining nodes hold their own content (checked through
/// snapshots first, so shared pages are still shared when the next node goes, then live).
#[test]
fn dropping_in_every_order_changes_no_other_node() {
    watchdog(240, "drop orders", || {
        let t = Tracker::builder().build().unwrap();
        let pages = 16;
        let mut orders = Vec::new();
        permutations(&mut vec![0, 1, 2, 3], 0, &mut orders);
        assert_eq!(orders.len(), 24);
        for order in orders {
            let root = t.map_anonymous(pages * PS).unwrap();
            let mut models = vec![vec![vec![0u64; 1]; pages]; 4];
            let put = |r: &Region, m: &mut Vec<Vec<u64>>, p: usize, v: u64| {
                r.as_atomic_u64()[p * WPP].store(v, SeqCst);
                m[p][0] = v;
            };
            for p in 0..pages {
                put(&root, &mut models[0], p, 100 + p as u64);
            }
            let a = root.fork().unwrap();
            models[1] = models[0].clone();
            put(&root, &mut models[0], 1, 1); // root writes after fork a
            put(&a, &mut models[1], 2, 2); // a writes
            let b = root.fork().unwrap();
            models[2] = models[0].clone();
            let g = a.fork().unwrap();
            models[3] = models[1].clone();
            put(&a, &mut models[1], 3, 3); // a writes after its own fork
            put(&root, &mut models[0], 4, 4);
            put(&g, &mut models[3], 5, 5);
            put(&b, &mut models[2], 6, 6);
            let mut nodes: Vec<Option<Region>> = vec![Some(root), Some(a), Some(b), Some(g)];
            for (step, &k) in order.iter().enumerate() {
                nodes[k] = None;
                for (j, n) in nodes.iter().enumerate() {
                    if let Some(r) = n {
                        check(
                            r,
                            &models[j],
                            true,
                            &format!("order {order:?} step {step} node {j}"),
                        );
                    }
                }
            }
        }
    });
}

fn permutations(v: &mut Vec<usize>, k: usize, out: &mut Vec<Vec<usize>>) {
    if k == v.len() {
        out.push(v.clone());
        return;
    }
    for i in k..v.len() {
        v.swap(k, i);
        permutations(v, k + 1, out);
        v.swap(k, i);
    }
}

/// Fork 1 is taken, then 4 threads make their first writes to every page of the origin (each
/// one privatises fork 1's page) while forks 2 and 3 (a fork of fork 1) are taken. Fork 1 and
/// fork 3 hold the content before any of those writes; fork 2 a per-thread prefix (each
/// thread writes the pages in order).
#[test]
fn fork_while_another_forks_first_writes_are_in_flight() {
    watchdog(120, "fork during first writes", || {
        let t = Tracker::builder().build().unwrap();
        let pages = 2048usize;
        let origin = Arc::new(t.map_anonymous(pages * PS).unwrap());
        let w = origin.as_atomic_u64();
        for p in 0..pages {
            for s in 0..SLOTS {
                w[p * WPP + s].store(1, SeqCst);
            }
        }
        let f1 = origin.fork().unwrap();
        let go = Arc::new(Barrier::new(SLOTS + 1));
        let hs: Vec<_> = (0..SLOTS)
            .map(|th| {
                let (o, go) = (Arc::clone(&origin), Arc::clone(&go));
                std::thread::spawn(move || {
                    go.wait();
                    let w = o.as_atomic_u64();
                    for p in 0..pages {
                        w[p * WPP + th].store(stamp(th, p as u64 + 1), SeqCst);
                    }
                })
            })
            .collect();
        go.wait();
        let f2 = origin.fork().unwrap();
        let f3 = f1.fork().unwrap();
        for h in hs {
            h.join().unwrap();
        }
        for (name, f) in [("fork 1", &f1), ("fork 3", &f3)] {
            let v = f.as_atomic_u64();
            for p in 0..pages {
                for s in 0..SLOTS {
                    assert_eq!(v[p * WPP + s].load(SeqCst), 1, "{name} page {p} slot {s}");
                }
            }
        }
        let v = f2.as_atomic_u64();
        for th in 0..SLOTS {
            let written: Vec<bool> = (0..pages)
                .map(|p| {
                    let x = v[p * WPP + th].load(SeqCst);
                    assert!(
                        x == 1 || x == stamp(th, p as u64 + 1),
                        "fork 2 page {p}: {x:#x}"
                    );
                    x != 1
                })
                .collect();
            let k = written.iter().take_while(|&&b| b).count();
            assert!(
                written[k..].iter().all(|&b| !b),
                "fork 2 thread {th}: not a prefix"
            );
        }
    });
}

/// Clones keep their content when the tracker shuts down (their shared pages are given to
/// them first) and when the origin is overwritten with `prepare_overwrite`.
#[test]
fn shutdown_and_prepare_overwrite_keep_clones_intact() {
    watchdog(60, "shutdown/overwrite", || {
        let t = Tracker::builder().build().unwrap();
        let pages = 32;
        let a = t.map_anonymous(pages * PS).unwrap();
        for p in 0..pages {
            a.as_atomic_u64()[p * WPP].store(7 + p as u64, SeqCst);
        }
        let b = a.fork().unwrap();
        let c = b.fork().unwrap();
        a.prepare_overwrite().unwrap();
        // SAFETY: no other thread touches `a`.
        unsafe { a.as_mut_slice() }.fill(0xEE);
        b.prepare_overwrite().unwrap();
        // SAFETY: no other thread touches `b`.
        unsafe { b.as_mut_slice()[..PS].fill(0xDD) };
        for p in 0..pages {
            assert_eq!(c.as_atomic_u64()[p * WPP].load(SeqCst), 7 + p as u64);
        }
        let d = c.fork().unwrap();
        t.shutdown();
        for p in 0..pages {
            assert_eq!(
                d.as_atomic_u64()[p * WPP].load(SeqCst),
                7 + p as u64,
                "page {p}"
            );
            if p > 0 {
                assert_eq!(b.as_atomic_u64()[p * WPP].load(SeqCst), 7 + p as u64);
            }
        }
    });
}

/// `madvise(MADV_DONTNEED)` on a clone zeroes the clone's pages (not the parent's or a
/// sibling's); on the parent, pages the clones already hold stay. (A parent's zap racing with
/// the copy of a page a clone still shares is a documented limitation: docs/design.md, Fork.)
#[test]
fn madvise_on_either_side() {
    watchdog(60, "madvise", || {
        let t = Tracker::builder().build().unwrap();
        let pages = 16;
        let a = t.map_anonymous(pages * PS).unwrap();
        for p in 0..pages {
            a.as_atomic_u64()[p * WPP].store(40 + p as u64, SeqCst);
        }
        let b = a.fork().unwrap();
        let c = a.fork().unwrap();
        for p in 8..12 {
            for r in [&b, &c] {
                assert_eq!(r.as_atomic_u64()[p * WPP].load(SeqCst), 40 + p as u64);
            }
        }
        assert_eq!(b.cut().unwrap().dirty().len(), pages); // the clone's first epoch
        let snap = b.snapshot().unwrap();
        // SAFETY: the ranges are the regions' own; zapping them is a documented event.
        unsafe { libc::madvise(b.as_ptr().cast(), 4 * PS, libc::MADV_DONTNEED) };
        // SAFETY: as above.
        unsafe { libc::madvise(a.as_ptr().add(8 * PS).cast(), 4 * PS, libc::MADV_DONTNEED) };
        for p in 0..pages {
            let (ea, eb) = match p {
                0..=3 => (40 + p as u64, 0),
                8..=11 => (0, 40 + p as u64),
                _ => (40 + p as u64, 40 + p as u64),
            };
            assert_eq!(
                a.as_atomic_u64()[p * WPP].load(SeqCst),
                ea,
                "origin page {p}"
            );
            assert_eq!(
                b.as_atomic_u64()[p * WPP].load(SeqCst),
                eb,
                "clone page {p}"
            );
            assert_eq!(
                c.as_atomic_u64()[p * WPP].load(SeqCst),
                40 + p as u64,
                "clone 2 page {p}"
            );
        }
        // The zapped pages (shared ones included) changed: reported in the clone's epoch,
        // and the snapshot taken before says Discarded for them, never zeros.
        let dirty: Vec<u64> = b.cut().unwrap().dirty().iter().collect();
        assert!((0..4).all(|p| dirty.contains(&p)), "{dirty:?}");
        let mut buf = vec![0u8; PS];
        for p in 0..4u64 {
            match snap.read_page(p, &mut buf) {
                Err(writewatch_core::SnapshotError::Discarded { .. }) => {}
                Ok(()) => assert_eq!(
                    u64::from_ne_bytes(buf[..8].try_into().unwrap()),
                    40 + p,
                    "snapshot page {p}"
                ),
                Err(e) => panic!("snapshot page {p}: {e}"),
            }
        }
    });
}

/// Repeated forks re-protect only what was un-protected since the previous fork: writes made
/// between forks (by faults, and after `prepare_overwrite`, which un-protects everything)
/// must still be captured by the next fork and kept out of the earlier ones.
#[test]
fn repeated_forks_see_writes_made_between_them() {
    watchdog(60, "repeated forks", || {
        let t = Tracker::builder().build().unwrap();
        let pages = 64;
        let a = t.map_anonymous(pages * PS).unwrap();
        let w = a.as_atomic_u64();
        let mut clones = Vec::new();
        for round in 1..=6u64 {
            match round {
                3 => {
                    a.prepare_overwrite().unwrap();
                    // SAFETY: no other thread touches `a`.
                    unsafe { a.as_mut_slice() }.fill(round as u8);
                }
                _ => {
                    for p in (round as usize % 3..pages).step_by(3) {
                        w[p * WPP].store(round, SeqCst);
                    }
                }
            }
            let image: Vec<u64> = (0..pages).map(|p| w[p * WPP].load(SeqCst)).collect();
            clones.push((a.fork().unwrap(), image));
        }
        w[0].store(99, SeqCst);
        for (k, (c, image)) in clones.iter().enumerate() {
            for (p, &want) in image.iter().enumerate() {
                assert_eq!(
                    c.as_atomic_u64()[p * WPP].load(SeqCst),
                    want,
                    "clone {k} page {p}"
                );
            }
        }
    });
}
