//! `az://` against a real Azure Blob emulator, Azurite (npm `azurite` 3.35.0, installed by
//! `make test`'s set-up, `make azurite`, into `target/azurite`), one server for this test
//! binary, started on a loopback port by the tests and stopped when the binary exits
//! (`writewatch_testkit::azurite`).
//!
//! 1. `uffd-demo --dir az://...` twice (a new store, then continued: the manifest replaced
//!    by ETag), then `writewatch verify` and `restore` of every epoch; each image must match
//!    the reference the demo took from live memory at its cut (`reference_digests`).
//! 2. A stale writer loses with `WriteError::Conflict`, and the store stays whole.
//! 3. The conditional-put race: two writers commit the same epoch at once (a barrier), and
//!    exactly one wins, in every round. Azurite evaluates `If-Match` / `If-None-Match` and
//!    writes the blob record in one synchronous step of its single-threaded event loop, as
//!    Azure Blob Storage does atomically (docs/reliability.md §2b).

mod demo_support;

use demo_support::{built, demo_args, restore_each_epoch_matches, run};
use writewatch::checkpoint::{SliceSource, Store, WriteError};
use writewatch_testkit::azurite::Azurite;
use writewatch_testkit::race::two_writers_race;
use writewatch_testkit::watchdog;

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn az_store_on_azurite_demo_cli_and_a_stale_writer() {
    watchdog(240, "az:// on Azurite", || {
        let az = Azurite::shared();
        az.create_container("ctr");
        let url = "az://ctr/demo";
        let demo = built("examples/uffd-demo");
        let cli = built("writewatch");
        let demo_args = demo_args(url);
        let env = az.env();
        let mut digests = Vec::new();
        for (i, epochs) in [[0, 1], [2, 3]].iter().enumerate() {
            let o = run(&demo, &env, &demo_args);
            assert_eq!(o.status.code(), Some(0), "demo run {i}: {o:?}");
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["verified"], true, "{v}");
            assert_eq!(v["store_epochs"], serde_json::json!(epochs), "{v}");
            for d in v["reference_digests"].as_array().unwrap() {
                digests.push(d.as_u64().unwrap());
            }
        }
        let o = run(&cli, &env, &args(&["verify", url]));
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        restore_each_epoch_matches(&cli, &env, url, &digests, 1 << 20);

        // A stale writer, through the library (configured by options, not the environment).
        let opts = az.options();
        let url = "az://ctr/stale";
        let mut first = Store::create_url_with(url, &opts).unwrap();
        let base = vec![1u8; 64 * 4096];
        let src = SliceSource::new(&base, 4096).unwrap();
        first.write_base(&src).unwrap();
        let mut second = Store::open_url_with(url, &opts, false, false).unwrap();
        first.write_delta(1, &src, &[(0, 1)]).unwrap();
        match second.write_delta(1, &src, &[(1, 1)]) {
            Err(WriteError::Conflict(_)) => {}
            other => panic!("stale writer on Azurite: {other:?}"),
        }
        let report = first.verify().unwrap();
        assert!(report.is_ok() && report.leftovers.is_empty(), "{report:?}");
        assert_eq!(first.segments().len(), 2);
        assert!(first.restore(1).unwrap().as_slice() == &base[..]);
    });
}

/// Rounds of the race (`WW_AZ_RACE_ROUNDS` overrides the default 8, to run it longer).
fn race_rounds() -> u32 {
    std::env::var("WW_AZ_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

#[test]
fn two_writers_race_on_azurite_exactly_one_wins() {
    watchdog(240, "two writers on Azurite", || {
        let az = Azurite::shared();
        az.create_container("race");
        let rounds = race_rounds();
        let tally = two_writers_race("az://race/store", &az.options(), rounds, true);
        assert_eq!(tally.exactly_one, rounds, "{tally:?}");
    });
}
