//! A fork clone checkpoints like any region (issue 17): its first epoch reports every page
//! (its content is new to the tracker), so a store built from the clone's epochs restores to
//! the clone's content, inherited pages included; the origin's later writes never appear.

use std::sync::atomic::Ordering::SeqCst;

use writewatch::checkpoint::Store;
use writewatch::{save_epoch, Tracker};

const PAGES: usize = 64;
const WPP: usize = 512;

#[test]
fn checkpoints_of_a_clone_restore_to_its_content() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fork-checkpoint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = Tracker::builder().build().unwrap();
    let origin = t.map_anonymous(PAGES * 4096).unwrap();
    let w = origin.as_atomic_u64();
    for p in 0..PAGES {
        w[p * WPP].store(100 + p as u64, SeqCst);
    }
    let clone = origin.fork().unwrap();
    let v = clone.as_atomic_u64();
    let mut model: Vec<u64> = (0..PAGES).map(|p| 100 + p as u64).collect();
    v[3 * WPP].store(3, SeqCst);
    model[3] = 3;
    w[4 * WPP].store(4, SeqCst); // the origin's write: not the clone's
    let mut store = Store::create(&dir).unwrap();
    save_epoch(&mut store, &clone.cut().unwrap()).unwrap();
    v[5 * WPP].store(5, SeqCst);
    model[5] = 5;
    w[6 * WPP].store(6, SeqCst);
    save_epoch(&mut store, &clone.cut().unwrap()).unwrap();
    let m = store.restore_latest().unwrap();
    let got = m.as_slice_of::<u64>().unwrap();
    for p in 0..PAGES {
        assert_eq!(got[p * WPP], model[p], "restored page {p}");
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
