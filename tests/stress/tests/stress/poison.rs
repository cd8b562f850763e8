//! Suite `poison`: the service thread panics with writers running and an epoch outstanding.

use super::*;

// ----------------------------------------------------------------------------------- poison

/// The service thread panics (`debug_inject_panic`) while 4 writers run and an epoch is
/// outstanding: writers must finish (no hang), every later call returns `Poisoned`, and the
/// outstanding epoch never returns content other than the content at its cut.
pub(super) fn poison(mode: Mode) -> Summary {
    let mut s = Summary::new("poison", "sync");
    let threads = 4usize;
    s.threads = threads as u64;
    let iterations = mode.pick(5, 100);
    let mut rng = Rng(0xB0B);
    for _ in 0..iterations {
        let t = tracker(Backend::SyncUffd);
        let region = Arc::new(t.map_anonymous(4 << 20).unwrap());
        region.cut().unwrap();
        let gate = Arc::new(Gate::new());
        let ops = Arc::new(AtomicU64::new(0));
        let hs: Vec<_> = (0..threads)
            .map(|th| {
                let (region, gate, ops) =
                    (Arc::clone(&region), Arc::clone(&gate), Arc::clone(&ops));
                std::thread::spawn(move || {
                    let mut r = Rng(th as u64 * 31 + 7);
                    let words = region.as_atomic_u64();
                    let mut n = 0;
                    while gate.pass() {
                        let i = r.below(words.len() as u64) as usize;
                        words[i].store(r.next(), SeqCst);
                        n += 1;
                        if n % 256 == 0 {
                            std::thread::yield_now();
                        }
                    }
                    ops.fetch_add(n, SeqCst);
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(5 + rng.below(20)));
        if !gate.pause(threads, Duration::from_secs(20)) {
            s.hangs += 1;
            gate.stop();
            continue;
        }
        // SAFETY: all writers are parked.
        let reference = unsafe { region.as_slice() }.to_vec();
        let epoch = region.cut().unwrap();
        let snap = region.snapshot().unwrap();
        s.cuts += 2;
        gate.resume();
        // Read part of the epoch while writers run, then poison mid-stream.
        let dirty: Vec<u64> = epoch.dirty().iter().collect();
        let mut buf = vec![0u8; PS];
        let half = dirty.len() / 2;
        for &p in &dirty[..half] {
            match epoch.read_page(p, &mut buf) {
                Ok(()) if buf[..] == reference[p as usize * PS..(p as usize + 1) * PS] => {}
                Ok(()) => s.torn += 1,
                Err(e) => {
                    eprintln!("poison: read before the panic: {e}");
                    s.lost += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(rng.below(10)));
        let t2 = t.clone();
        if within(Duration::from_secs(20), move || t2.debug_inject_panic()).is_none() {
            s.hangs += 1;
        }
        s.injected_faults += 1;
        std::thread::sleep(Duration::from_millis(5));
        gate.stop();
        if within(Duration::from_secs(20), move || {
            hs.into_iter().for_each(|h| h.join().unwrap())
        })
        .is_none()
        {
            s.hangs += 1;
            continue;
        }
        s.ops += ops.load(SeqCst);
        // After the panic: either the content at the cut (preserved before the panic) or a
        // typed Poisoned error; never the live content.
        let poisoned = SnapshotError::Unavailable(Unavailable::Poisoned);
        for &p in &dirty[half..] {
            match epoch.read_page(p, &mut buf) {
                Ok(()) if buf[..] == reference[p as usize * PS..(p as usize + 1) * PS] => {}
                Ok(()) => s.torn += 1,
                Err(e) if e == poisoned => {}
                Err(e) => {
                    eprintln!("poison: unexpected read error {e}");
                    s.violations += 1;
                }
            }
        }
        for p in 0..region.page_count() {
            match snap.read_page(p, &mut buf) {
                Ok(()) if buf[..] == reference[p as usize * PS..(p as usize + 1) * PS] => {}
                Ok(()) => s.torn += 1,
                Err(e) if e == poisoned => {}
                Err(e) => {
                    eprintln!("poison: unexpected snapshot read error {e}");
                    s.violations += 1;
                }
            }
        }
        let checks = [
            t.unavailable() == Some(Unavailable::Poisoned),
            matches!(
                region.cut(),
                Err(CutError::Unavailable(Unavailable::Poisoned))
            ),
            matches!(
                region.snapshot(),
                Err(CutError::Unavailable(Unavailable::Poisoned))
            ),
            matches!(
                region.dirty_pages(),
                Err(RegionError::Unavailable(Unavailable::Poisoned))
            ),
            matches!(
                region.rollback(&snap),
                Err(SnapshotError::Unavailable(Unavailable::Poisoned))
            ),
            matches!(
                t.map_anonymous(PS),
                Err(MapError::Unavailable(Unavailable::Poisoned))
            ),
            matches!(
                region.cut_and_copy(|_, _| Ok::<(), ()>(())),
                Err(CutAndCopyError::Cut(CutError::Unavailable(
                    Unavailable::Poisoned
                )))
            ),
        ];
        for (i, ok) in checks.iter().enumerate() {
            if !ok {
                eprintln!("poison: check {i} did not return Poisoned");
                s.violations += 1;
            }
        }
        drop(epoch);
        drop(snap);
        // Dropping the region and the tracker must not hang either.
        let t3 = t.clone();
        if within(Duration::from_secs(20), move || {
            drop(region);
            t3.shutdown();
            drop(t);
        })
        .is_none()
        {
            s.hangs += 1;
        }
    }
    s
}
