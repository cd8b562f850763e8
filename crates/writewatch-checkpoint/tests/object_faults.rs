//! Faults on object storage, against a real S3 server (`s3s-fs`, `writewatch_testkit::s3server`):
//! corrupted objects are detected on read, a store written by a newer format version is
//! named, an endpoint that drops connections mid-upload gives a typed error after the
//! retries with nothing half-visible, and a writer SIGKILLed at random instants leaves the
//! previous chain intact, with orphans that `verify` lists and `compact` removes; `verify`
//! reports each damaged segment of each chain by name.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{coalesce, mutate, write_epochs, CommittingChild, Rng};
use writewatch_checkpoint::{
    Corruption, OpenError, RemoteErrorKind, RestoreError, SliceSource, Store, VerifyProblem,
    WriteError,
};
use writewatch_testkit::s3server::{self, DroppingProxy, S3Server};
use writewatch_testkit::watchdog;

const PS: usize = 4096;
const CHILD_ENV: &str = "WW_OBJECT_CRASH_CHILD";

fn url(prefix: &str) -> String {
    format!("s3://bucket/{prefix}")
}

/// A store of three epochs at `prefix`; returns the states.
fn build(server: &S3Server, prefix: &str) -> Vec<Vec<u8>> {
    let mut store = Store::create_url_with(&url(prefix), &server.options()).unwrap();
    write_epochs(&mut store, 64, PS, 3, 99, |_| 20)
}

/// The file behind object `name` of `prefix` in the server's data directory.
fn object_file(server: &S3Server, prefix: &str, name: &str) -> PathBuf {
    server.data_dir().join("bucket").join(prefix).join(name)
}

#[test]
fn corrupted_objects_are_detected_on_read() {
    watchdog(120, "object corruption", || {
        let server = S3Server::start();
        let states = build(&server, "c");
        let store = Store::open_url_with(&url("c"), &server.options(), false, true).unwrap();
        let segs = store.segments();
        let base = object_file(&server, "c", &segs[0].file_name);
        let pristine = std::fs::read(&base).unwrap();
        let len = pristine.len();
        // Header, first run's data, the middle of the data, the index, the footer.
        for off in [10, 200, len / 2, len - 64 - 20, len - 10] {
            let mut b = pristine.clone();
            b[off] ^= 0x40;
            std::fs::write(&base, &b).unwrap();
            let r = store.restore(2);
            assert!(
                matches!(&r, Err(RestoreError::Corrupt(_))),
                "flip at {off}: {:?}",
                r.map(|_| ())
            );
            let report = store.verify().unwrap();
            assert!(!report.is_ok(), "flip at {off}: verify saw nothing");
        }
        // Truncated object.
        std::fs::write(&base, &pristine[..len - 100]).unwrap();
        assert!(matches!(store.restore(0), Err(RestoreError::Corrupt(_))));
        // Missing object.
        std::fs::remove_file(&base).unwrap();
        match store.restore(0) {
            Err(RestoreError::Corrupt(c)) => assert_eq!(c.kind, Corruption::Missing),
            other => panic!("missing object: {:?}", other.map(|_| ())),
        }
        std::fs::write(&base, &pristine).unwrap();
        assert!(store.restore(2).unwrap().as_slice() == &states[2][..]);
    });
}

#[test]
fn newer_format_version_is_named() {
    watchdog(60, "newer version", || {
        let server = S3Server::start();
        build(&server, "v");
        let manifest = object_file(&server, "v", "MANIFEST");
        let mut b = std::fs::read(&manifest).unwrap();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(&manifest, &b).unwrap();
        match Store::open_url_with(&url("v"), &server.options(), false, false) {
            Err(OpenError::Corrupt(c)) => {
                assert_eq!(c.kind, Corruption::UnsupportedVersion { found: 2 });
                assert!(c
                    .path
                    .to_string_lossy()
                    .starts_with("s3://bucket/v/MANIFEST"));
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn dropped_connections_mid_upload_give_a_typed_error_and_leave_nothing_visible() {
    watchdog(120, "dropping endpoint", || {
        let server = S3Server::start();
        let states = build(&server, "drop");
        // A proxy that cuts every connection once 2 MiB have gone through it.
        let proxy = DroppingProxy::start(server.port, 2 << 20);
        let opts = S3Server::options_for(&proxy.endpoint(), s3server::SECRET_KEY);
        let mut store = Store::open_url_with(&url("drop"), &opts, false, false).unwrap();
        let mut region = states[2].clone();
        region.resize(64 * PS, 0);
        let big: Vec<u8> = {
            let mut r = Rng(5);
            let mut v = vec![0u8; 64 * PS];
            r.fill(&mut v);
            v
        };
        let src = SliceSource::new(&big, PS).unwrap();
        // Enough epochs to push more than 2 MiB through the proxy.
        let mut err = None;
        for e in 3..40u64 {
            if let Err(x) = store.write_delta(e, &src, &[(0, 64)]) {
                err = Some(x);
                break;
            }
        }
        match err {
            Some(WriteError::Io(e)) => {
                assert_eq!(e.remote_kind(), Some(RemoteErrorKind::Transport), "{e:?}");
            }
            other => panic!("expected a transport error, got {other:?}"),
        }
        drop(store);
        drop(proxy);
        // Through the direct endpoint: every committed epoch intact, nothing half-visible.
        let store = Store::open_url_with(&url("drop"), &server.options(), false, false).unwrap();
        let head = store.head().unwrap().epoch;
        for e in 0..=head {
            let want: &[u8] = if e < 3 { &states[e as usize] } else { &big };
            assert!(store.restore(e).unwrap().as_slice() == want, "epoch {e}");
        }
        let report = store.verify().unwrap();
        assert!(report.is_ok(), "{report:?}");
    });
}

/// The child of `crash_leaves_the_chain_intact`: writes to the store named by the
/// environment until killed (a no-op in a normal test run).
#[test]
fn object_crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (endpoint, prefix) = spec.split_once(' ').unwrap();
    let opts = S3Server::options_for(endpoint, s3server::SECRET_KEY);
    let mut store = Store::open_url_with(&url(prefix), &opts, true, false).unwrap();
    let mut region = vec![0u8; 512 * PS];
    let mut e = store.next_epoch();
    if e > 0 {
        region = store.restore(e - 1).unwrap().as_slice().to_vec();
    }
    loop {
        let mut rng = Rng(e);
        let mut dirty = mutate(&mut rng, &mut region, PS, 64);
        let src = SliceSource::new(&region, PS).unwrap();
        if store.head().is_none() {
            store.write_base_at(e, &src).unwrap();
        } else {
            store.write_delta(e, &src, &coalesce(&mut dirty)).unwrap();
        }
        println!("COMMITTED {e}");
        if e % 4 == 3 {
            store.compact().unwrap();
        }
        e += 1;
    }
}

#[test]
fn crash_leaves_the_chain_intact_and_compact_removes_orphans() {
    watchdog(240, "object crash", || {
        let server = S3Server::start();
        let mut rng = Rng(4321);
        let mut last: Option<u64> = None;
        let mut saw_orphans = false;
        let mut region = vec![0u8; 512 * PS];
        for iter in 0..8 {
            let env = format!("{} crash", server.endpoint());
            let child = CommittingChild::spawn("object_crash_child", (CHILD_ENV, env.as_ref()));
            std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
            for e in child.kill() {
                last = Some(e);
            }
            let Ok(store) = Store::open_url_with(&url("crash"), &server.options(), false, false)
            else {
                assert!(last.is_none(), "iteration {iter}: store vanished");
                continue;
            };
            let Some(head) = store.head() else {
                assert!(last.is_none());
                continue;
            };
            if let Some(l) = last {
                assert!(head.epoch == l || head.epoch == l + 1, "iteration {iter}");
            }
            // Oracle: replay the child's deterministic writes up to the head.
            let mut oracle = vec![0u8; 512 * PS];
            for e in 0..=head.epoch {
                mutate(&mut Rng(e), &mut oracle, PS, 64);
            }
            assert!(
                store.restore(head.epoch).unwrap().as_slice() == &oracle[..],
                "iteration {iter}: head {} differs",
                head.epoch
            );
            region.copy_from_slice(&oracle);
            let report = store.verify().unwrap();
            assert!(report.is_ok(), "iteration {iter}: {:?}", report.problems);
            saw_orphans |= !report.leftovers.is_empty();
        }
        // compact removes whatever orphans the kills left, and the orphan a writer killed
        // between the end of its upload and its manifest commit leaves (made here for sure:
        // a complete, valid segment object that the manifest does not reference).
        let mut store =
            Store::open_url_with(&url("crash"), &server.options(), false, false).unwrap();
        let head = store.head().unwrap();
        let orphan = format!("seg-{:016x}-{:016x}.wws", head.epoch + 1, 0xDEAD_BEEFu64);
        std::fs::copy(
            object_file(&server, "crash", &head.file_name),
            object_file(&server, "crash", &orphan),
        )
        .unwrap();
        let before = store.verify().unwrap().leftovers;
        assert!(before.iter().any(|l| l.file_name == orphan), "{before:?}");
        let report = store.compact().unwrap();
        for l in &before {
            assert!(report.removed.contains(&l.file_name), "{l:?} not removed");
        }
        let after = store.verify().unwrap();
        assert!(after.is_ok() && after.leftovers.is_empty(), "{after:?}");
        let head = store.head().unwrap().epoch;
        assert!(store.restore(head).unwrap().as_slice() == &region[..]);
        eprintln!("object crash: last reported {last:?}, orphans seen: {saw_orphans}");
    });
}

/// Restores open every segment of the chain with ranged reads of its header and its
/// index + footer, sized from the manifest, with no HEAD (issue 18 restore throughput).
/// A segment object that no longer matches the manifest must still be reported as
/// corrupt whatever its new length: shorter by a few bytes, shorter than the tail the
/// manifest predicts, shorter than a header, empty. Oracle: the states written.
#[test]
fn ranged_segment_opening_detects_objects_that_changed_length() {
    watchdog(120, "ranged frame reads", || {
        let server = S3Server::start();
        let mut store = Store::create_url_with(&url("t"), &server.options()).unwrap();
        let mut rng = Rng(5);
        // 2 MiB of data: above the size fetched as one whole-object GET.
        let mut region = vec![0u8; 512 * PS];
        rng.fill(&mut region);
        store
            .write_base(&SliceSource::new(&region, PS).unwrap())
            .unwrap();
        let base_state = region.clone();
        let mut dirty = mutate(&mut rng, &mut region, PS, 30);
        store
            .write_delta(
                1,
                &SliceSource::new(&region, PS).unwrap(),
                &coalesce(&mut dirty),
            )
            .unwrap();
        assert!(store.restore(0).unwrap().as_slice() == &base_state[..]);
        assert!(store.restore(1).unwrap().as_slice() == &region[..]);
        let base = object_file(&server, "t", &store.segments()[0].file_name);
        let pristine = std::fs::read(&base).unwrap();
        let len = pristine.len();
        for keep in [len - 7, len - 5000, 100, 0] {
            std::fs::write(&base, &pristine[..keep]).unwrap();
            for epoch in [0, 1] {
                let r = store.restore(epoch);
                assert!(
                    matches!(&r, Err(RestoreError::Corrupt(_))),
                    "object cut to {keep} of {len} bytes, epoch {epoch}: {:?}",
                    r.map(|_| ())
                );
            }
        }
        // One byte longer: not the object the manifest names either.
        let mut longer = pristine.clone();
        longer.push(0);
        std::fs::write(&base, &longer).unwrap();
        assert!(matches!(store.restore(1), Err(RestoreError::Corrupt(_))));
        std::fs::write(&base, &pristine).unwrap();
        assert!(store.restore(1).unwrap().as_slice() == &region[..]);
    });
}

/// `verify` on object storage opens each chain's segments the way a restore does (header,
/// index and footer of every segment fetched at once), and still checks every segment on
/// its own: two chains (base, delta, base, delta); the first delta gets a flipped data byte
/// (a run CRC), the second base is cut short (its index and footer gone), and a copy of a
/// segment under an unreferenced name is left beside them. Oracle: the damage done here:
/// exactly the two damaged segments are reported (by name), the intact ones are not, the
/// orphan is listed, and restoring the intact chain still gives the state written.
#[test]
fn verify_reports_each_damaged_segment_of_each_chain_and_lists_orphans() {
    watchdog(120, "verify chains", || {
        let server = S3Server::start();
        let mut store = Store::create_url_with(&url("v"), &server.options()).unwrap();
        let mut rng = Rng(77);
        let mut region = vec![0u8; 512 * PS];
        rng.fill(&mut region);
        let mut states = Vec::new();
        for epoch in 0..4u64 {
            let src = SliceSource::new(&region, PS).unwrap();
            if epoch % 2 == 0 {
                store.write_base(&src).unwrap();
            } else {
                let mut dirty = mutate(&mut rng, &mut region, PS, 30);
                let src = SliceSource::new(&region, PS).unwrap();
                store
                    .write_delta(epoch, &src, &coalesce(&mut dirty))
                    .unwrap();
            }
            states.push(region.clone());
            if epoch % 2 == 0 {
                mutate(&mut rng, &mut region, PS, 30);
            }
        }
        let names: Vec<String> = store
            .segments()
            .iter()
            .map(|s| s.file_name.clone())
            .collect();
        assert_eq!(names.len(), 4);
        let report = store.verify().unwrap();
        assert!(report.is_ok() && report.leftovers.is_empty(), "{report:?}");
        let clean_bytes = report.bytes_checked;

        // Damage: a data byte of segment 1 (just past the 128-byte header), the tail of
        // segment 2; an orphan copy of segment 3.
        let f1 = object_file(&server, "v", &names[1]);
        let mut b = std::fs::read(&f1).unwrap();
        b[128 + 10] ^= 0x08;
        std::fs::write(&f1, &b).unwrap();
        let f2 = object_file(&server, "v", &names[2]);
        let b = std::fs::read(&f2).unwrap();
        std::fs::write(&f2, &b[..b.len() - 200]).unwrap();
        let orphan = format!("seg-{:016x}-{:016x}.wws", 9, 0xBAD_u64);
        std::fs::copy(
            object_file(&server, "v", &names[3]),
            object_file(&server, "v", &orphan),
        )
        .unwrap();

        let report = store.verify().unwrap();
        let named = |name: &str| {
            report.problems.iter().any(|p| match p {
                VerifyProblem::Corrupt(c) => c.path.to_string_lossy().ends_with(name),
                _ => false,
            })
        };
        assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
        assert!(
            named(&names[1]) && named(&names[2]),
            "{:?}",
            report.problems
        );
        assert!(
            !named(&names[0]) && !named(&names[3]),
            "{:?}",
            report.problems
        );
        assert!(report.bytes_checked < clean_bytes, "{report:?}");
        let leftovers: Vec<_> = report.leftovers.iter().map(|l| &l.file_name).collect();
        assert_eq!(leftovers, [&orphan], "{report:?}");
        // The first chain's base is intact; its delta is not.
        assert!(store.restore(0).unwrap().as_slice() == &states[0][..]);
        assert!(matches!(store.restore(1), Err(RestoreError::Corrupt(_))));
        assert!(matches!(store.restore(3), Err(RestoreError::Corrupt(_))));
    });
}
