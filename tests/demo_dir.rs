//! `uffd-demo --dir X` ran `remove_dir_all(X)` first and deleted an unrelated directory's
//! contents. It now refuses a non-empty directory that is not a store (exit 2, nothing
//! touched), creates a store in a new path, and continues an existing store.
//!
//! Runs the example binary that `cargo test` / `cargo build --examples` builds next to the
//! test binaries (`target/<profile>/examples/uffd-demo`).

mod demo_support;

use std::process::Output;

use demo_support::{built, demo_args, run};

fn demo(dir: &std::path::Path) -> Output {
    run(
        &built("examples/uffd-demo"),
        &[],
        &demo_args(dir.to_str().unwrap()),
    )
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
