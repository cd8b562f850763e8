//! Suite `eio_*`: failing checkpoint sinks (EIO at random points) on every backend.

use super::*;

// -------------------------------------------------------------------------------------- eio

#[derive(Debug)]
struct Eio;

/// A sink that fails with EIO at its `k`-th page (0-based), like a checkpoint device that
/// returns EIO mid-segment.
fn failing_sink(
    k: usize,
    sunk: &mut Vec<(u64, Vec<u8>)>,
) -> impl FnMut(u64, &[u8]) -> Result<(), std::io::Error> + '_ {
    move |page, bytes| {
        if sunk.len() == k {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        sunk.push((page, bytes.to_vec()));
        Ok(())
    }
}

/// EIO while saving: (a) `cut_and_copy` into a sink that fails at the k-th page: the error
/// comes back typed, pages handed over before it are exact, and the region and tracker keep
/// working (later writes are tracked and copied exactly); (b) the retry pattern an
/// application uses to lose nothing: cut, copy each page, and on a failure keep the epoch's
/// unsaved dirty pages for the next save. Nothing may be lost across the failure.
pub(super) fn eio(mode: Mode, b: Backend) -> Summary {
    let _ = Eio;
    let mut s = Summary::new(&format!("eio-{}", b.name()), b.name());
    s.threads = 1;
    let t = tracker(b);
    let region = t.map_anonymous(300 * PS).unwrap();
    region.cut().unwrap();
    let mut rng = Rng(0xE10 + b as u64);
    let rounds = mode.pick(40, 2000);
    let write_some = |rng: &mut Rng, region: &Region, ops: &mut u64| -> BTreeSet<u64> {
        let mut w = BTreeSet::new();
        for _ in 0..1 + rng.below(40) {
            let p = rng.below(region.page_count());
            region.as_atomic_u64()[p as usize * WPP + rng.below(WPP as u64) as usize]
                .store(rng.next() | 1, SeqCst);
            w.insert(p);
            *ops += 1;
        }
        w
    };
    // Pages the application still has to save (the retry pattern's carry-over).
    let mut carry: BTreeSet<u64> = BTreeSet::new();
    for _ in 0..rounds {
        // (a) cut_and_copy with a failing sink.
        let w1 = write_some(&mut rng, &region, &mut s.ops);
        // SAFETY: this suite's only writer is this thread, which is not writing now.
        let reference = unsafe { region.as_slice() }.to_vec();
        let k = rng.below(w1.len() as u64 + 1) as usize;
        let mut sunk = Vec::new();
        let r = region.cut_and_copy(failing_sink(k, &mut sunk));
        s.cuts += 1;
        match r {
            Err(CutAndCopyError::Sink(e)) if e.raw_os_error() == Some(libc::EIO) => {
                s.injected_faults += 1;
                if sunk.len() != k {
                    s.violations += 1;
                }
            }
            Ok(e) if k >= w1.len() => {
                if e.dirty().len() != w1.len() {
                    s.violations += 1;
                }
            }
            other => {
                eprintln!("eio: unexpected result {other:?}");
                s.violations += 1;
            }
        }
        for (p, bytes) in &sunk {
            if bytes[..] != reference[*p as usize * PS..(*p as usize + 1) * PS] {
                s.torn += 1;
            }
        }
        // The pages of the failed epoch that the sink did not take must be reported again
        // by the next cut (cut_and_copy requeues them); the application also keeps them
        // itself (the retry pattern below), so a regression shows as `lost`, not as a gap.
        let unsaved: Vec<u64> = w1
            .iter()
            .copied()
            .filter(|p| !sunk.iter().any(|(q, _)| q == p))
            .collect();
        carry.extend(unsaved.iter().copied());
        // (b) the retry pattern, with a failure in one save out of three.
        let w2 = write_some(&mut rng, &region, &mut s.ops);
        // SAFETY: as above.
        let reference = unsafe { region.as_slice() }.to_vec();
        let epoch = region.cut().expect("cut after a failed sink");
        s.cuts += 1;
        for p in &w2 {
            if !epoch.dirty().contains(*p) {
                s.lost += 1; // the tracker stopped tracking after the failure
            }
        }
        for p in &unsaved {
            if !epoch.dirty().contains(*p) {
                s.lost += 1; // a failed cut_and_copy dropped pages it had not saved
            }
        }
        let mut todo: BTreeSet<u64> = epoch.dirty().iter().collect();
        todo.extend(carry.iter().copied());
        let fail_at = if rng.below(3) == 0 {
            rng.below(todo.len() as u64 + 1) as usize
        } else {
            usize::MAX
        };
        let mut saved = BTreeSet::new();
        let mut buf = vec![0u8; PS];
        for (i, &p) in todo.iter().enumerate() {
            if i == fail_at {
                s.injected_faults += 1;
                break;
            }
            // Pages of this epoch are read as at the cut; carried pages were not written
            // since (single writer, quiesced), so the live copy is their content.
            let ok = if epoch.dirty().contains(p) && b == Backend::SyncUffd {
                epoch.read_page(p, &mut buf).is_ok()
            } else {
                buf.copy_from_slice(&reference[p as usize * PS..(p as usize + 1) * PS]);
                true
            };
            if !ok || buf[..] != reference[p as usize * PS..(p as usize + 1) * PS] {
                s.torn += 1;
            }
            saved.insert(p);
        }
        carry = todo.difference(&saved).copied().collect();
        drop(epoch);
    }
    // Finally everything still carried is saved; the tracker works as on day one.
    let w = write_some(&mut rng, &region, &mut s.ops);
    let e = region.cut().unwrap();
    s.cuts += 1;
    s.lost += w.iter().filter(|p| !e.dirty().contains(**p)).count() as u64;
    if t.unavailable().is_some() {
        s.violations += 1;
    }
    s
}
