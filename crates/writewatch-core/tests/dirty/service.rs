//! Region lookup and the service thread (panicking, spinning).

use super::*;

#[test]
fn many_regions_found_by_address() {
    let t = tracker();
    let regions: Vec<_> = (0..50)
        .map(|i| t.map_anonymous((i % 5 + 1) * 4096).unwrap())
        .collect();
    for (i, r) in regions.iter().enumerate() {
        touch(r, (i as u64) % r.page_count(), 1);
    }
    for (i, r) in regions.iter().enumerate() {
        assert_eq!(
            r.cut().unwrap().dirty().iter().collect::<Vec<_>>(),
            vec![(i as u64) % r.page_count()]
        );
    }
    let s = t.stats();
    assert!(s.wp_faults >= 50);
    let me = nix::unistd::gettid().as_raw();
    assert!(
        s.threads.iter().any(|th| th.tid == me && th.faults >= 50),
        "faulting thread recorded: {:?}",
        s.threads
    );
    assert!(s.service_ns.count() >= 50);
    assert_eq!(regions[3].stats().last_tid, me);
}

#[test]
fn panicking_service_thread_poisons_without_hanging_writers() {
    let t = tracker();
    let region = Arc::new(t.map_anonymous(4 * MIB).unwrap());
    region.cut().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hs: Vec<_> = (0..2u64)
        .map(|th| {
            let (region, stop) = (Arc::clone(&region), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut rng = Rng(th + 3);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    touch(&region, rng.below(region.page_count()), 1);
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let t2 = t.clone();
    watchdog(20, "injected service panic", move || {
        t2.debug_inject_panic()
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    watchdog(20, "writers after poisoning", move || {
        hs.into_iter().for_each(|h| h.join().unwrap())
    });
    assert_eq!(
        t.unavailable(),
        Some(writewatch_core::Unavailable::Poisoned)
    );
    let e = region.cut().unwrap_err();
    assert!(e.to_string().contains("poisoned"), "{e}");
    assert!(matches!(
        t.map_anonymous(4096),
        Err(writewatch_core::MapError::Unavailable(
            writewatch_core::Unavailable::Poisoned
        ))
    ));
}

#[test]
fn spinning_service_thread_is_exact() {
    // The busy-poll path (`spin`) services faults and commands without poll(2): it must keep
    // every guarantee of the blocking path.
    let t = Tracker::builder()
        .spin(std::time::Duration::from_micros(200))
        .build()
        .unwrap();
    let region = Arc::new(t.map_anonymous(16 * MIB).unwrap());
    region.cut().unwrap();
    lockstep_exact(Arc::clone(&region), 2, 20, 100, true);
    let (w, m, o) = racing_oracle(region, 2, 20, true);
    assert!(w > 0);
    assert_eq!((m, o), (0, 0));
}
