//! The `writewatch` binary on a store in object storage (a real `s3s-fs` server on a
//! loopback port), configured the way users configure it: through the `AWS_*` environment.

use std::process::{Command, Output};

use writewatch_checkpoint::{SliceSource, Store};
use writewatch_testkit::s3server::{self, S3Server};

const PS: usize = 4096;

fn ww(server: &S3Server, secret: &str, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_writewatch"));
    for (k, v) in server.env() {
        c.env(k, v);
    }
    c.env("AWS_SECRET_ACCESS_KEY", secret)
        .args(args)
        .output()
        .expect("run writewatch")
}

#[test]
fn cli_inspect_verify_restore_compact_on_s3() {
    let server = S3Server::start();
    let url = "s3://bucket/cli";
    let mut store = Store::create_url_with(url, &server.options()).unwrap();
    let mut region = vec![0u8; 128 * PS];
    region[..10 * PS].fill(7);
    store
        .write_base(&SliceSource::new(&region, PS).unwrap())
        .unwrap();
    region[64 * PS..65 * PS].fill(9);
    store
        .write_delta(1, &SliceSource::new(&region, PS).unwrap(), &[(64, 1)])
        .unwrap();
    drop(store);
    let secret = s3server::SECRET_KEY;

    let o = ww(&server, secret, &["--json", "inspect", url]);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["segments"].as_array().map(Vec::len), Some(2), "{v}");

    let o = ww(&server, secret, &["verify", url]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");

    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("img");
    let o = ww(
        &server,
        secret,
        &["restore", url, "--to", img.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(std::fs::read(&img).unwrap() == region);

    let o = ww(&server, secret, &["compact", url]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = ww(&server, secret, &["--json", "inspect", url]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["segments"].as_array().map(Vec::len), Some(1), "{v}");

    // Wrong secret: exit 2 and a message that says what to fix.
    let o = ww(&server, "wrong", &["verify", url]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
}
