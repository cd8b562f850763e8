//! `uffd-demo --dir s3://...` end to end against a real S3 server (`s3s-fs` on a loopback
//! port, started and stopped by this test; `make s3-server` installs it), configured the way
//! users configure it: through the `AWS_*` environment.
//!
//! The demo writes its epochs to the object store and restores them; a second run continues
//! the same store. Then the `writewatch` CLI verifies the store, inspects it, and restores
//! every epoch to an image file. Oracle: each image's page CRCs must match the reference the
//! demo took from live memory at that epoch's cut (`reference_digests` in its JSON), which
//! the store code never sees.
//!
//! Runs the binaries that `cargo test --workspace` / `cargo build --workspace --bins
//! --examples` build: `target/<profile>/examples/uffd-demo` and `target/<profile>/writewatch`.

mod demo_support;

use demo_support::{built, demo_args, restore_each_epoch_matches, run};
use writewatch_testkit::s3server::S3Server;
use writewatch_testkit::watchdog;

fn json(o: &std::process::Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"))
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn demo_on_s3_then_cli_verifies_and_restores_every_epoch() {
    watchdog(240, "uffd-demo on s3://", || {
        let demo = built("examples/uffd-demo");
        let cli = built("writewatch");
        let server = S3Server::start();
        let env = server.env();
        let url = "s3://bucket/demo";
        let demo_args = demo_args(url);

        // A new store on s3://, then the same store continued.
        let first = json(&run(&demo, &env, &demo_args));
        assert_eq!(first["verified"], true, "{first}");
        assert_eq!(first["store_epochs"], serde_json::json!([0, 1]));
        let second = json(&run(&demo, &env, &demo_args));
        assert_eq!(second["verified"], true, "{second}");
        assert_eq!(second["resumed_from"], 1, "{second}");
        assert_eq!(second["store_epochs"], serde_json::json!([2, 3]));
        let digests: Vec<u64> = [&first, &second]
            .iter()
            .flat_map(|v| v["reference_digests"].as_array().unwrap().clone())
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(digests.len(), 4, "{first} {second}");
        // The objects are really in the server's bucket.
        let objects = std::fs::read_dir(server.data_dir().join("bucket/demo")).unwrap();
        assert!(objects.count() >= 5, "a manifest and four segments");

        // The CLI on the same URL.
        let o = run(&cli, &env, &args(&["verify", url]));
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let v = json(&run(&cli, &env, &args(&["--json", "inspect", url])));
        assert_eq!(v["segments"].as_array().map(Vec::len), Some(4), "{v}");
        restore_each_epoch_matches(&cli, &env, url, &digests, 1 << 20);
    });
}
