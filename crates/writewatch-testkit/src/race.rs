//! The two-writers race on a store on object storage, shared by the `s3://` tests (against
//! `s3s-fs`) and the `az://` tests (against Azurite): per round, two threads open the same
//! store, each builds a delta of the same next epoch with its own content, and both commit
//! at once (released by a barrier). Feature `checkpoint`.

use std::sync::{Arc, Barrier};

use writewatch_checkpoint::{Geometry, RemoteOptions, Store, WriteError};

/// How the rounds of [`two_writers_race`] ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaceTally {
    /// Rounds in which exactly one writer committed.
    pub exactly_one: u32,
    /// Rounds in which both writers' conditional puts were accepted (the later manifest
    /// overwrote the earlier: a server that checks the condition, then writes, unlocked).
    pub both: u32,
}

const PS: usize = 4096;
const PAGES: u64 = 256;

/// Runs `rounds` rounds of the race on the store at `url` (created here, with a base of
/// 256 pages of 1s). Writer `w` (0 or 1) writes page 0 as `10 + w`.
///
/// Checked in every round, whatever the server: at least one writer won; every loser got
/// [`WriteError::Conflict`]; the head restores to one winner's page and the winner's epoch;
/// `verify` finds no problem; `compact` succeeds. With `exactly_one`, also: exactly one
/// writer won, the chain grew by exactly one segment, and the loser left no object behind
/// (`verify` lists no leftovers).
///
/// # Panics
/// When any check fails (a test helper).
pub fn two_writers_race(
    url: &str,
    opts: &RemoteOptions,
    rounds: u32,
    exactly_one: bool,
) -> RaceTally {
    let mut seed = Store::create_url_with(url, opts).unwrap();
    let base = vec![1u8; PAGES as usize * PS];
    seed.write_base(&writewatch_checkpoint::SliceSource::new(&base, PS).unwrap())
        .unwrap();
    let mut chain_len = seed.segments().len();
    drop(seed);
    let mut tally = RaceTally::default();
    for round in 0..rounds {
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2u8)
            .map(|w| {
                let (barrier, opts, url) = (barrier.clone(), opts.clone(), url.to_string());
                std::thread::Builder::new()
                    .name(format!("ww-race-{w}"))
                    .spawn(move || {
                        let mut store = Store::open_url_with(&url, &opts, false, false).unwrap();
                        let epoch = store.next_epoch();
                        let g = Geometry {
                            page_size: PS,
                            page_count: PAGES,
                        };
                        let mut sw = store.begin_delta(epoch, g).unwrap();
                        sw.push_page(0, &[10 + w; PS]).unwrap();
                        // Both have read the same manifest and built a delta; both commit now.
                        barrier.wait();
                        (w, epoch, sw.commit().map(|i| i.epoch))
                    })
                    .unwrap()
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|r| r.2.is_ok()).collect();
        for r in results.iter().filter(|r| r.2.is_err()) {
            match &r.2 {
                Err(WriteError::Conflict(c)) => {
                    assert!(c.to_string().contains("another writer"), "{c}")
                }
                other => panic!("round {round}: loser got {other:?}"),
            }
        }
        assert!(
            !winners.is_empty(),
            "round {round}: nobody won: {results:?}"
        );
        if winners.len() == 1 {
            tally.exactly_one += 1;
        } else {
            tally.both += 1;
        }
        if exactly_one {
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        }
        // Whatever the server did, the store holds one winner's commit, whole.
        let store = Store::open_url_with(url, opts, false, false).unwrap();
        let head = store.head().unwrap();
        let m = store.restore(head.epoch).unwrap();
        let first = m.as_slice()[0];
        assert!(
            winners
                .iter()
                .any(|(w, e, _)| *e == head.epoch && first == 10 + w),
            "round {round}: head {head:?} page 0 = {first}, results {results:?}"
        );
        assert!(
            m.as_slice()[PS..].iter().all(|&b| b == 1),
            "round {round}: pages other than 0 changed"
        );
        let report = store.verify().unwrap();
        assert!(report.is_ok(), "round {round}: {report:?}");
        if exactly_one {
            assert_eq!(store.segments().len(), chain_len + 1, "round {round}");
            assert!(
                report.leftovers.is_empty(),
                "round {round}: the loser left objects: {report:?}"
            );
        }
        // (an overwritten "winner" of a non-atomic server leaves an orphan: compact.)
        drop(store);
        let mut store = Store::open_url_with(url, opts, false, false).unwrap();
        store.compact().unwrap();
        chain_len = store.segments().len();
    }
    tally
}
