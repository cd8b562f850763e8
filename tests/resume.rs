//! Restart-and-resume through real processes: a child writes a table in a tracked region and
//! checkpoints in a loop until it is `kill -9`ed at a random instant; a second child resumes
//! the store and is killed too; then this process opens the store, resumes it into a fresh
//! region, takes 10 more epochs, and every epoch of the store restores to the content an
//! independent model (a plain `Vec<u64>` replaying the same deterministic steps) predicts.
//!
//! Before `writewatch::resume` and store-assigned numbering, the first `save_epoch` after the
//! restart failed with "epoch 0 is not after the newest epoch N in the store".

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use writewatch::checkpoint::Store;
use writewatch::{resume, save_epoch, SaveError, Tracker};
use writewatch_testkit::SplitMix64;

const PAGES: usize = 512;
const WPP: usize = 512; // u64 slots per 4 KiB page
const SLOTS: usize = PAGES * WPP;
const CHILD_ENV: &str = "WRITEWATCH_RESUME_CHILD_DIR";

/// The writes that turn store epoch `s - 1`'s table into epoch `s`'s: a deterministic
/// function of `s` only. Some steps zero a whole page (zero pages must restore as zero).
fn step(s: u64, mut set: impl FnMut(usize, u64)) {
    let mut rng = SplitMix64(s.wrapping_mul(0xA24B_AED4_963E_E407) ^ 0x5EED);
    for _ in 0..64 {
        let slot = (rng.next() % SLOTS as u64) as usize;
        set(slot, rng.next() | 1);
    }
    if s % 5 == 4 {
        let page = (rng.next() % PAGES as u64) as usize;
        for k in 0..WPP {
            set(page * WPP + k, 0);
        }
    }
}

/// The model: the table of each store epoch, replayed in a plain vector.
fn model_upto(last: u64) -> Vec<Vec<u64>> {
    let mut t = vec![0u64; SLOTS];
    let mut out = Vec::new();
    for s in 0..=last {
        step(s, |i, v| t[i] = v);
        out.push(t.clone());
    }
    out
}

/// The child: open (or create) the store, resume it, then step/cut/save forever.
fn child(dir: &str) -> ! {
    let mut store = Store::open_or_create(dir).expect("child: open store");
    let tracker = Tracker::builder().build().expect("child: tracker");
    let region = tracker.map_anonymous(PAGES * 4096).expect("child: map");
    resume(&mut store, &region, None).expect("child: resume");
    let words = region.as_atomic_u64();
    loop {
        let s = store.next_epoch();
        step(s, |i, v| words[i].store(v, SeqCst));
        let epoch = region.cut().expect("child: cut");
        let info = save_epoch(&mut store, &epoch).expect("child: save_epoch");
        assert_eq!(info.epoch, s);
        println!("SAVED {s}");
    }
}

/// Entry point of the re-executed test binary (does nothing in a normal test run).
#[test]
fn resume_child_entry() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
    }
}

/// Runs a child until it reported `min_saves` saves, then SIGKILLs it after a random delay.
/// Returns the last epoch it reported.
fn run_and_kill(dir: &std::path::Path, min_saves: usize, delay_us: u64) -> u64 {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "resume_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(c.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { break };
            if let Some(e) = line.strip_prefix("SAVED ") {
                let _ = tx.send(e.trim().parse::<u64>().unwrap());
            }
        }
    });
    let mut last = None;
    let mut seen = 0;
    while seen < min_saves {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(e) => {
                last = Some(e);
                seen += 1;
            }
            Err(e) => {
                let _ = c.kill();
                panic!("child made no progress ({e}); status {:?}", c.try_wait());
            }
        }
    }
    std::thread::sleep(Duration::from_micros(delay_us));
    assert!(c.try_wait().unwrap().is_none(), "child exited by itself");
    c.kill().unwrap(); // SIGKILL
    let status = c.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    reader.join().unwrap();
    for e in rx.try_iter() {
        last = Some(e);
    }
    last.unwrap()
}

#[test]
fn kill_9_then_resume_and_restore_any_epoch() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("resume-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let dir = tmp.join("store");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = SplitMix64(seed);
    eprintln!("kill delays seeded with {seed}");

    // Two generations of children, each killed at a random point of its loop.
    let mut last_reported = 0;
    for gen in 0..2 {
        let delay = rng.next() % 20_000;
        let last = run_and_kill(&dir, 5 + gen * 3, delay);
        assert!(last >= last_reported, "epochs went backwards");
        last_reported = last;
    }

    // This process: open (removes what the kill left), resume into a fresh region.
    let mut store = Store::open(&dir).unwrap();
    let head = store.head().unwrap().epoch;
    assert!(
        head >= last_reported,
        "head {head} is older than the last epoch the child reported saved ({last_reported})"
    );
    for l in store.removed_leftovers() {
        eprintln!("removed leftover {} ({} bytes)", l.file_name, l.len);
    }
    let tracker = Tracker::builder().build().unwrap();
    let region = tracker.map_anonymous(PAGES * 4096).unwrap();
    let r = resume(&mut store, &region, None).unwrap();
    assert_eq!((r.restored, r.head, r.rebased), (head, head, false));
    let mut model = model_upto(head);
    let words = region.as_atomic_u64();
    let now: Vec<u64> = words.iter().map(|w| w.load(SeqCst)).collect();
    assert!(
        now == model[head as usize],
        "the resumed region holds epoch {head}"
    );

    // 10 more epochs.
    for s in head + 1..=head + 10 {
        step(s, |i, v| words[i].store(v, SeqCst));
        let info = save_epoch(&mut store, &region.cut().unwrap()).unwrap();
        assert_eq!(info.epoch, s);
        let mut t = model.last().unwrap().clone();
        step(s, |i, v| t[i] = v);
        model.push(t);
    }

    // Every epoch, from the first child's base to the last one here, restores to the model.
    assert!(store.verify().unwrap().is_clean());
    drop(store);
    let store = Store::open_read_only(&dir).unwrap();
    for (s, expected) in model.iter().enumerate() {
        let m = store.restore(s as u64).unwrap();
        let got = m.as_slice_of::<u64>().unwrap();
        if got != &expected[..] {
            let bad = got.iter().zip(expected).position(|(a, b)| a != b).unwrap();
            panic!("epoch {s} differs from the model at slot {bad}");
        }
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Resuming an older epoch writes its content as a new base (nothing deleted): later epochs
/// stay restorable and the new chain continues from the resumed content.
#[test]
fn resume_an_older_epoch_rebases_without_deleting() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let tmp = tempfile_dir("resume-older");
    let mut store = Store::create(&tmp).unwrap();
    let model = model_upto(5);
    {
        let tracker = Tracker::builder().build().unwrap();
        let region = tracker.map_anonymous(PAGES * 4096).unwrap();
        let words = region.as_atomic_u64();
        for s in 0..=5 {
            step(s, |i, v| words[i].store(v, SeqCst));
            save_epoch(&mut store, &region.cut().unwrap()).unwrap();
        }
    }
    let tracker = Tracker::builder().build().unwrap();
    let region = tracker.map_anonymous(PAGES * 4096).unwrap();
    let words = region.as_atomic_u64();
    let r = resume(&mut store, &region, Some(2)).unwrap();
    assert_eq!((r.restored, r.head, r.rebased), (2, 6, true));
    let mut expected = model.clone();
    expected.push(model[2].clone()); // epoch 6 = epoch 2's content
    for s in 7..=9 {
        step(s, |i, v| words[i].store(v, SeqCst));
        assert_eq!(
            save_epoch(&mut store, &region.cut().unwrap())
                .unwrap()
                .epoch,
            s
        );
        let mut t = expected.last().unwrap().clone();
        step(s, |i, v| t[i] = v);
        expected.push(t);
    }
    for (s, e) in expected.iter().enumerate() {
        assert!(
            store
                .restore(s as u64)
                .unwrap()
                .as_slice_of::<u64>()
                .unwrap()
                == &e[..],
            "epoch {s}"
        );
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A fresh region's first epoch saved into a non-empty store without `resume` would record a
/// wrong image (changes from zero, not from the store's head): refused, nothing written.
#[test]
fn first_epoch_of_an_unresumed_region_is_refused() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let tmp = tempfile_dir("not-resumed");
    let mut store = Store::create(&tmp).unwrap();
    let tracker = Tracker::builder().build().unwrap();
    let a = tracker.map_anonymous(8 * 4096).unwrap();
    a.as_atomic_u64()[0].store(1, SeqCst);
    save_epoch(&mut store, &a.cut().unwrap()).unwrap();
    let b = tracker.map_anonymous(8 * 4096).unwrap();
    b.as_atomic_u64()[512].store(2, SeqCst);
    match save_epoch(&mut store, &b.cut().unwrap()) {
        Err(e @ SaveError::NotResumed { head: 0 }) => {
            assert!(e.to_string().contains("resume"), "{e}")
        }
        other => panic!("expected NotResumed, got {other:?}"),
    }
    assert_eq!(store.segments().len(), 1);
    // A region of another size: a geometry error, not an epoch-order one.
    let c = tracker.map_anonymous(16 * 4096).unwrap();
    assert_eq!(resume(&mut store, &c, None).unwrap_err().to_string(), {
        "the checkpoint holds 8 pages of 4096 bytes; the region has 16 of 4096: map a region of 8 x 4096 bytes"
    });
    resume(&mut store, &b, None).unwrap();
    b.as_atomic_u64()[512].store(2, SeqCst);
    save_epoch(&mut store, &b.cut().unwrap()).unwrap();
    match save_epoch(&mut store, &c.cut().unwrap()) {
        Err(SaveError::Write(writewatch::checkpoint::WriteError::GeometryMismatch { .. })) => {}
        other => panic!("expected a geometry mismatch, got {other:?}"),
    }
    let m = store.restore(1).unwrap();
    let w = m.as_slice_of::<u64>().unwrap();
    assert_eq!((w[0], w[512]), (1, 2));
    drop(store);
    let _ = std::fs::remove_dir_all(&tmp);
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The checksums are verified before the region is written: restoring from a store whose
/// data is corrupt fails and leaves the region's content as it was.
#[test]
fn restore_region_from_a_corrupt_store_leaves_the_region_unchanged() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let tmp = tempfile_dir("corrupt-restore");
    let mut store = Store::create(&tmp).unwrap();
    let tracker = Tracker::builder().build().unwrap();
    let region = tracker.map_anonymous(PAGES * 4096).unwrap();
    let words = region.as_atomic_u64();
    for s in 0..3 {
        step(s, |i, v| words[i].store(v, SeqCst));
        save_epoch(&mut store, &region.cut().unwrap()).unwrap();
    }
    step(3, |i, v| words[i].store(v, SeqCst));
    let before: Vec<u64> = words.iter().map(|w| w.load(SeqCst)).collect();
    // Flip one byte of the newest segment's page data.
    let seg = tmp.join(store.head().unwrap().file_name);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[writewatch::checkpoint::format::HEADER_LEN + 100] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();
    match writewatch::restore_region(&store, 2, &region) {
        Err(writewatch::RestoreRegionError::Store(
            writewatch::checkpoint::RestoreError::Corrupt(_),
        )) => {}
        other => panic!("expected a corruption error, got {other:?}"),
    }
    assert!(words
        .iter()
        .map(|w| w.load(SeqCst))
        .eq(before.iter().copied()));
    drop(store);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `resume` and `restore_region` work on every backend (they rely on
/// `Region::prepare_overwrite`), and tracking is re-armed afterwards.
#[test]
fn resume_on_every_backend() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let tmp = tempfile_dir("every-backend");
    let mut store = Store::create(&tmp).unwrap();
    let model = model_upto(2);
    {
        let tracker = Tracker::builder().build().unwrap();
        let region = tracker.map_anonymous(PAGES * 4096).unwrap();
        let words = region.as_atomic_u64();
        for s in 0..=2 {
            step(s, |i, v| words[i].store(v, SeqCst));
            save_epoch(&mut store, &region.cut().unwrap()).unwrap();
        }
    }
    for backend in [
        writewatch::Backend::SyncUffd,
        writewatch::Backend::AsyncUffd,
        writewatch::Backend::Mprotect,
    ] {
        let tracker = Tracker::builder().backend(backend).build().unwrap();
        let region = tracker.map_anonymous(PAGES * 4096).unwrap();
        let head = store.head().unwrap().epoch;
        let r = resume(&mut store, &region, Some(head)).unwrap();
        let words = region.as_atomic_u64();
        let now: Vec<u64> = words.iter().map(|w| w.load(SeqCst)).collect();
        assert!(now == model[2], "{backend:?}: resumed content");
        assert!(!r.rebased);
        words[3 * WPP].store(77, SeqCst);
        let dirty: Vec<u64> = region.cut().unwrap().dirty().iter().collect();
        assert_eq!(dirty, vec![3], "{backend:?}: re-armed after the resume");
        writewatch::restore_region(&store, 0, &region).unwrap();
        let now: Vec<u64> = words.iter().map(|w| w.load(SeqCst)).collect();
        assert!(now == model[0], "{backend:?}: restore_region content");
        assert_eq!(
            region.cut().unwrap().dirty().len() as u64,
            region.page_count(),
            "{backend:?}"
        );
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&tmp);
}
