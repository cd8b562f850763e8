//! Helpers of the tests that run the built `uffd-demo` example and `writewatch` binary
//! (`demo_dir.rs`, `demo_s3.rs`, `azurite.rs`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `target/<profile>/<rel>` (the test binary is in `target/<profile>/deps/`), which must
/// exist: `cargo test --workspace --all-targets` or `cargo build --workspace --bins
/// --examples` builds it.
pub fn built(rel: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(|d| d.parent()).unwrap().join(rel);
    assert!(
        p.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins --examples` \
         (cargo test --workspace --all-targets does)",
        p.display()
    );
    p
}

/// A short demo run on a 1 MiB region (two epochs of 20 ms, no untracked baseline, JSON
/// output) into `dir`.
pub fn demo_args(dir: &str) -> Vec<String> {
    [
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
        dir,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs `exe` with `args` and the environment `env` added.
pub fn run(exe: &Path, env: &[(&str, String)], args: &[String]) -> Output {
    let mut c = Command::new(exe);
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(args).output().expect("run a built binary")
}

/// The demo's `reference_digests` formula (CRC-32C of the little-endian CRC-32Cs of the
/// 4 KiB pages), applied to a restored image.
pub fn digest(image: &[u8]) -> u64 {
    let crcs: Vec<u8> = image
        .chunks_exact(4096)
        .flat_map(|p| crc32c::crc32c(p).to_le_bytes())
        .collect();
    u64::from(crc32c::crc32c(&crcs))
}

/// `writewatch restore URL --epoch E --to FILE` for every epoch of `digests` (its index),
/// each image checked against the demo's reference digest of that epoch (and its length).
#[allow(dead_code)]
pub fn restore_each_epoch_matches(
    cli: &Path,
    env: &[(&str, String)],
    url: &str,
    digests: &[u64],
    image_len: usize,
) {
    let tmp = tempfile::tempdir().unwrap();
    for (epoch, want) in digests.iter().enumerate() {
        let img = tmp.path().join(format!("epoch{epoch}"));
        let e = epoch.to_string();
        let a: Vec<String> = ["restore", url, "--epoch", &e, "--to", img.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = run(cli, env, &a);
        assert_eq!(o.status.code(), Some(0), "epoch {epoch}: {o:?}");
        let image = std::fs::read(&img).unwrap();
        assert_eq!(image.len(), image_len, "epoch {epoch}");
        assert_eq!(
            digest(&image),
            *want,
            "epoch {epoch}: the image restored by the CLI differs from the demo's reference"
        );
    }
}
