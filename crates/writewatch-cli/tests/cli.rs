//! End-to-end tests of the `writewatch` binary on a store made here.

use std::path::Path;
use std::process::{Command, Output};

use writewatch_checkpoint::Store;
use writewatch_testkit::chain::write_chain;

const PS: usize = 4096;

fn ww(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_writewatch"))
        .args(args)
        .output()
        .expect("run writewatch")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Base + 2 deltas over a 256-page region; returns the content per epoch.
fn make_store(dir: &Path) -> Vec<Vec<u8>> {
    let mut region = vec![0u8; 256 * PS];
    for p in 0..100 {
        region[p * PS..(p + 1) * PS].fill(p as u8 + 1);
    }
    let mut delta1 = |r: &mut [u8]| {
        r[10 * PS..12 * PS].fill(0xAA);
        r[50 * PS..51 * PS].fill(0);
        vec![(10, 2), (50, 1)]
    };
    let mut delta2 = |r: &mut [u8]| {
        r[200 * PS..201 * PS].fill(0xBB);
        vec![(200, 1)]
    };
    write_chain(dir, region, PS, &mut [&mut delta1, &mut delta2])
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bad json {e}: {}", stdout(o)))
}

#[test]
fn inspect_verify_restore_compact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let states = make_store(&dir);
    let d = dir.to_str().unwrap();

    let o = ww(&["inspect", d]);
    assert!(o.status.success(), "{o:?}");
    let s = stdout(&o);
    assert!(
        s.contains("3 segment(s)") && s.contains("base") && s.contains("delta"),
        "{s}"
    );

    let o = ww(&["inspect", d, "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v = json(&o);
    assert_eq!(v["segments"].as_array().unwrap().len(), 3);
    assert_eq!(v["page_size"], 4096);
    assert_eq!(v["segments"][1]["parent"], 0);
    assert_eq!(v["segments"][1]["data_pages"], 2);
    assert_eq!(v["segments"][1]["zero_pages"], 1);
    assert!(v["segments"][2]["dirty_ratio"].as_f64().unwrap() > 0.0);

    let o = ww(&["verify", d]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(stdout(&o).starts_with("ok:"));
    let v = json(&ww(&["--json", "verify", d]));
    assert_eq!(v["ok"], true);

    for (k, want) in states.iter().enumerate() {
        let img = tmp.path().join(format!("img{k}"));
        let o = ww(&[
            "restore",
            d,
            "--to",
            img.to_str().unwrap(),
            "--epoch",
            &k.to_string(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        assert!(std::fs::read(&img).unwrap() == *want, "epoch {k}");
    }
    let img = tmp.path().join("latest");
    let v = json(&ww(&[
        "restore",
        d,
        "--to",
        img.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["epoch"], 2);
    assert!(std::fs::read(&img).unwrap() == states[2]);

    let o = ww(&["restore", d, "--to", img.to_str().unwrap(), "--epoch", "9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("epoch 9"));

    let v = json(&ww(&["compact", d, "--json"]));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["base"]["epoch"], 2);
    assert_eq!(v["removed"].as_array().unwrap().len(), 3);
    let o = ww(&["compact", d]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("nothing to compact"));
    let v = json(&ww(&["inspect", d, "--json"]));
    assert_eq!(v["segments"].as_array().unwrap().len(), 1);
    let o = ww(&["restore", d, "--to", img.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(std::fs::read(&img).unwrap() == states[2]);
}

#[test]
fn corruption_and_usage_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    make_store(&dir);
    let d = dir.to_str().unwrap();

    // Usage errors: 2.
    assert_eq!(ww(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(ww(&["restore", d]).status.code(), Some(2)); // missing --to
    let missing = tmp.path().join("nope");
    assert_eq!(
        ww(&["verify", missing.to_str().unwrap()]).status.code(),
        Some(2)
    );

    // Flip a byte in a delta's data: verify says 1 and names the file.
    let seg = Store::open_read_only(&dir).unwrap().segments()[1]
        .file_name
        .clone();
    let path = dir.join(&seg);
    let mut b = std::fs::read(&path).unwrap();
    b[200] ^= 0x10;
    std::fs::write(&path, &b).unwrap();
    let o = ww(&["verify", d]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(stdout(&o).contains(&seg), "{}", stdout(&o));
    let v = json(&ww(&["verify", d, "--json"]));
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"].as_array().unwrap().len(), 1);
    let img = tmp.path().join("img");
    let o = ww(&["restore", d, "--to", img.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(!img.exists(), "no partial image on failure");

    // Corrupt manifest: 1 for every command that reads it.
    let m = dir.join("MANIFEST");
    let mut b = std::fs::read(&m).unwrap();
    b[20] ^= 1;
    std::fs::write(&m, &b).unwrap();
    assert_eq!(ww(&["inspect", d]).status.code(), Some(1));
    assert_eq!(ww(&["verify", d]).status.code(), Some(1));
    let v = json(&ww(&["verify", d, "--json"]));
    assert_eq!(v["ok"], false);
}

/// `writewatch restore <store> --to /dev/null` run as root replaced the device node with a
/// regular file. Device nodes (a copy of /dev/null's numbers made here, so nothing real is at
/// risk on the old code), FIFOs, directories and symbolic links are refused with exit 2 and
/// left as they were.
#[test]
fn restore_refuses_non_regular_destinations() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    make_store(&dir);
    let d = dir.to_str().unwrap();
    let dev = tmp.path().join("null");
    let made_dev = Command::new("mknod")
        .args([dev.to_str().unwrap(), "c", "1", "3"])
        .status()
        .is_ok_and(|s| s.success());
    let fifo = tmp.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let sub = tmp.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let mut targets = vec![fifo.clone(), sub.clone()];
    if made_dev {
        targets.push(dev.clone());
    } else {
        eprintln!("note: cannot mknod a device node here (not root): case skipped");
    }
    for t in &targets {
        let o = ww(&["restore", d, "--to", t.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}: {o:?}", t.display());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("refusing"), "{err}");
    }
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(std::fs::symlink_metadata(&sub).unwrap().is_dir());
    if made_dev {
        assert!(std::fs::symlink_metadata(&dev)
            .unwrap()
            .file_type()
            .is_char_device());
    }
    let v = json(&ww(&[
        "restore",
        d,
        "--to",
        fifo.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(
        (v["ok"].as_bool(), v["exit_code"].as_u64()),
        (Some(false), Some(2))
    );
}

/// `verify` said "ok" while a leftover `.tmp-seg` sat in the store: it lists it (text and
/// JSON), and `compact` removes it and says so.
#[test]
fn verify_lists_leftovers_and_compact_removes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    make_store(&dir);
    let d = dir.to_str().unwrap();
    let name = ".tmp-seg-0000000000000003-0123456789abcdef";
    std::fs::write(dir.join(name), vec![0u8; 3 << 20]).unwrap();
    let o = ww(&["verify", d]);
    let out = stdout(&o);
    assert!(
        out.contains("LEFTOVER") && out.contains(name) && out.contains("3.0 MiB"),
        "{out}"
    );
    assert!(out.contains("compact"), "{out}");
    let v = json(&ww(&["verify", d, "--json"]));
    assert_eq!(v["leftovers"][0]["file"], name);
    assert_eq!(v["leftovers"][0]["len"], 3 << 20);
    let o = ww(&["compact", d]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(stdout(&o).contains(name), "{}", stdout(&o));
    assert!(!dir.join(name).exists());
    let v = json(&ww(&["verify", d, "--json"]));
    assert_eq!(v["leftovers"].as_array().unwrap().len(), 0);
}

#[test]
fn help_documents_exit_codes_and_logging() {
    let o = ww(&["--help"]);
    let out = stdout(&o);
    assert!(
        out.contains("Exit status") && out.contains("0  success") && out.contains("RUST_LOG"),
        "{out}"
    );
}
