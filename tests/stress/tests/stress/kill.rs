//! Suite `kill`: a child process saving checkpoints is killed at random points; the store
//! resumes to a consistent epoch.

use super::*;

// ------------------------------------------------------------------------------------- kill

const KILL_PAGES: usize = 67;

/// The deterministic batch of epoch `e`: (page, Some(seed) = fill with words from the seed,
/// None = zero the page).
fn kill_batch(e: u64) -> Vec<(usize, Option<u64>)> {
    let mut rng = Rng(0xC0FFEE ^ (e + 1).wrapping_mul(0x1000_0001));
    let n = if e == 0 { 40 } else { 1 + rng.below(10) };
    (0..n)
        .map(|_| {
            let p = rng.below(KILL_PAGES as u64) as usize;
            let v = if rng.below(5) == 0 {
                None
            } else {
                Some(rng.next())
            };
            (p, v)
        })
        .collect()
}

fn apply_batch(state: &mut [u64], e: u64) {
    for (p, v) in kill_batch(e) {
        let page = &mut state[p * WPP..(p + 1) * WPP];
        match v {
            None => page.fill(0),
            Some(seed) => {
                let mut r = Rng(seed | 1);
                page.iter_mut().for_each(|w| *w = r.next());
            }
        }
    }
}

/// The child of the kill suite: tracker + writer thread + `save_epoch` in a loop until
/// SIGKILLed. It resumes from the store's head ([`writewatch::resume`]: restores it into a
/// fresh region), then saves epochs head+1, head+2, ...
/// The writer writes epoch e+1's batch while epoch e is being saved (copy-before-write).
pub(super) fn kill_child(dir: &str) -> ! {
    let mut store = Store::open_or_create(dir).expect("child open");
    let tracker = tracker(Backend::SyncUffd);
    let region = Arc::new(tracker.map_anonymous(KILL_PAGES * PS).unwrap());
    // Resume from the store's head (O(pages), not O(epochs): the previous version burnt one
    // cut per stored epoch, so late children were still starting when the parent killed them).
    let head = store.head().map(|h| h.epoch);
    writewatch::resume(&mut store, &region, None).expect("child resume");
    let mut e = head.map_or(0, |h| h + 1);
    let (go_tx, go_rx) = mpsc::channel::<u64>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let r2 = Arc::clone(&region);
    std::thread::spawn(move || {
        let words = r2.as_atomic_u64();
        for e in go_rx {
            for (p, v) in kill_batch(e) {
                let mut r = Rng(v.unwrap_or(0) | 1);
                for k in 0..WPP {
                    let x = if v.is_some() { r.next() } else { 0 };
                    words[p * WPP + k].store(x, SeqCst);
                }
            }
            if done_tx.send(()).is_err() {
                return;
            }
        }
    });
    go_tx.send(e).unwrap();
    done_rx.recv().unwrap();
    loop {
        let epoch = region.cut().expect("child cut");
        go_tx.send(e + 1).unwrap();
        let info = save_epoch(&mut store, &epoch).expect("child save_epoch");
        assert_eq!(
            info.epoch, e,
            "store-numbered epochs continue from the head"
        );
        drop(epoch);
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "COMMITTED {e}").unwrap();
            out.flush().unwrap();
        }
        if e % 16 == 15 {
            store.compact().expect("child compact");
        }
        done_rx.recv().unwrap();
        e += 1;
    }
}

/// SIGKILL the tracker + save_epoch child at random instants; after each kill the store
/// opens and its head (at least the last epoch the child reported committed) restores
/// bit-exact against the deterministic model.
pub(super) fn kill(mode: Mode) -> Summary {
    let mut s = Summary::new("kill", "sync");
    s.threads = 2;
    let kills = mode.pick(15, 200);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(4242);
    let mut last_reported: Option<u64> = None;
    let mut model_epoch: Option<u64> = None;
    let mut state = vec![0u64; KILL_PAGES * WPP];
    let mut with_progress = 0;
    for i in 0..kills {
        let mut child = Command::new(&exe)
            .env(KILL_CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(e) = line.strip_prefix("COMMITTED ") {
                    let _ = tx.send(e.trim().parse::<u64>().unwrap());
                }
            }
        });
        let errs = std::thread::spawn(move || {
            let mut v = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut v);
            v
        });
        // A random instant: start-up, restore, burn, or the write/save/compact loop.
        let wait = if i % 4 == 0 {
            rng.below(15_000)
        } else {
            5_000 + rng.below(70_000)
        };
        std::thread::sleep(Duration::from_micros(wait));
        let early_exit = child.try_wait().unwrap();
        if early_exit.is_none() {
            child.kill().unwrap(); // SIGKILL
            s.injected_faults += 1;
        }
        let status = child.wait().unwrap();
        if within(Duration::from_secs(10), move || reader.join()).is_none() {
            s.hangs += 1;
        }
        let child_err = errs.join().unwrap_or_default();
        if early_exit.is_some() {
            eprintln!("kill: child exited by itself ({status:?}): {child_err}");
            s.violations += 1;
        }
        let before = last_reported;
        for e in rx.try_iter() {
            if last_reported.is_some_and(|l| e <= l) {
                s.violations += 1;
            }
            last_reported = Some(e);
            s.cuts += 1;
        }
        if last_reported != before {
            with_progress += 1;
        }
        let store = match Store::open(&dir) {
            Ok(st) => st,
            Err(e) if last_reported.is_none() => {
                // Killed before the store existed or before its first commit.
                let _ = e;
                continue;
            }
            Err(e) => {
                eprintln!("kill {i}: store does not open: {e}");
                s.lost += 1;
                continue;
            }
        };
        let Some(head) = store.head() else {
            if last_reported.is_some() {
                s.lost += 1;
            }
            continue;
        };
        if last_reported.is_some_and(|l| head.epoch < l) {
            eprintln!(
                "kill {i}: head {} older than the last committed epoch {last_reported:?}",
                head.epoch
            );
            s.lost += 1;
        }
        while model_epoch.is_none_or(|m| m < head.epoch) {
            let e = model_epoch.map_or(0, |m| m + 1);
            apply_batch(&mut state, e);
            model_epoch = Some(e);
        }
        if model_epoch != Some(head.epoch) {
            s.violations += 1; // the head went backwards
            continue;
        }
        match store.restore(head.epoch) {
            Ok(m) => {
                for (p, page) in m.as_slice().chunks(PS).enumerate() {
                    let want = &state[p * WPP..(p + 1) * WPP];
                    let got: Vec<u64> = page
                        .chunks_exact(8)
                        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
                        .collect();
                    if got != want {
                        s.torn += 1;
                    }
                }
                s.ops += 1;
            }
            Err(e) => {
                eprintln!("kill {i}: head {} does not restore: {e}", head.epoch);
                s.lost += 1;
            }
        }
        if i % 10 == 9 {
            match store.verify() {
                Ok(r) if r.is_ok() => {}
                other => {
                    eprintln!("kill {i}: verify: {other:?}");
                    s.violations += 1;
                }
            }
        }
    }
    eprintln!(
        "  kill: {} kills, {with_progress} with progress, last committed epoch {last_reported:?}",
        s.injected_faults
    );
    if with_progress * 2 < kills {
        eprintln!("  kill: too few kills landed after a commit");
        s.violations += 1;
    }
    s
}
