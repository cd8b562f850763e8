//! `uffd-demo --dir X` ran `remove_dir_all(X)` first and deleted an unrelated directory's
//! contents. It now refuses a non-empty directory that is not a store (exit 2, nothing
//! touched), creates a store in a new path, and continues an existing store.
//!
//! Runs the example binary that `cargo test` / `cargo build --examples` builds next to the
//! test binaries (`target/<profile>/examples/uffd-demo`).

use std::path::PathBuf;
use std::process::{Command, Output};

fn demo_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let p = dir.join("examples").join("uffd-demo");
    assert!(
        p.exists(),
        "{} is missing: build it first with `cargo build --example uffd-demo` (cargo test --all-targets does)",
        p.display()
    );
    p
}

fn demo(dir: &std::path::Path) -> Output {
    Command::new(demo_exe())
        .args([
            "--size",
            "1M",
            "--threads",
            "1",
            "--epochs",
            "2",
            "--epoch-ms",
            "20",
        ])
        .args(["--json", "--dir"])
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn demo_never_deletes_a_directory_it_did_not_create() {
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("demo-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();

    // An unrelated, non-empty directory: refused, untouched.
    let mine = tmp.join("my-project");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), b"precious").unwrap();
    let o = demo(&mine);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not empty"), "{err}");
    let names: Vec<_> = std::fs::read_dir(&mine)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("notes.txt")]);
    assert_eq!(std::fs::read(mine.join("notes.txt")).unwrap(), b"precious");

    // A new path: a new store, kept (it was named by the user).
    let store = tmp.join("store");
    let o = demo(&store);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["store_epochs"], serde_json::json!([0, 1]));
    assert!(store.join("MANIFEST").exists());

    // The same store again: continued from its head, not wiped.
    let o = demo(&store);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["resumed_from"], 1);
    assert_eq!(v["store_epochs"], serde_json::json!([2, 3]));
    let _ = std::fs::remove_dir_all(&tmp);
}
