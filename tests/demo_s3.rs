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

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use writewatch_testkit::s3server::S3Server;
use writewatch_testkit::watchdog;

fn built(rel: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let p = dir.join(rel);
    assert!(
        p.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins --examples` \
         (cargo test --workspace --all-targets does)",
        p.display()
    );
    p
}

fn run(server: &S3Server, exe: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(exe);
    for (k, v) in server.env() {
        c.env(k, v);
    }
    c.args(args).output().expect("run a built binary")
}

fn json(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"))
}

/// The demo's `reference_digests` formula, applied to a restored image.
fn digest(image: &[u8], page_size: usize) -> u32 {
    let crcs: Vec<u8> = image
        .chunks_exact(page_size)
        .flat_map(|p| crc32c::crc32c(p).to_le_bytes())
        .collect();
    crc32c::crc32c(&crcs)
}

#[test]
fn demo_on_s3_then_cli_verifies_and_restores_every_epoch() {
    watchdog(240, "uffd-demo on s3://", || {
        let demo = built("examples/uffd-demo");
        let cli = built("writewatch");
        let server = S3Server::start();
        let url = "s3://bucket/demo";
        let demo_args = [
            "--size",
            "1M",
            "--threads",
            "1",
            "--epochs",
            "2",
            "--epoch-ms",
            "20",
            "--no-baseline",
            "--json",
            "--dir",
            url,
        ];

        // A new store on s3://, then the same store continued.
        let first = json(&run(&server, &demo, &demo_args));
        assert_eq!(first["verified"], true, "{first}");
        assert_eq!(first["store_epochs"], serde_json::json!([0, 1]));
        let second = json(&run(&server, &demo, &demo_args));
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
        let o = run(&server, &cli, &["verify", url]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let v = json(&run(&server, &cli, &["--json", "inspect", url]));
        assert_eq!(v["segments"].as_array().map(Vec::len), Some(4), "{v}");
        let tmp = tempfile::tempdir().unwrap();
        for (epoch, want) in (0u64..4).zip(&digests) {
            let img = tmp.path().join(format!("epoch{epoch}"));
            let e = epoch.to_string();
            let o = run(
                &server,
                &cli,
                &["restore", url, "--epoch", &e, "--to", img.to_str().unwrap()],
            );
            assert_eq!(o.status.code(), Some(0), "epoch {epoch}: {o:?}");
            let image = std::fs::read(&img).unwrap();
            assert_eq!(image.len(), 1 << 20);
            assert_eq!(
                u64::from(digest(&image, 4096)),
                *want,
                "epoch {epoch}: the image restored by the CLI differs from the demo's reference"
            );
        }
    });
}
