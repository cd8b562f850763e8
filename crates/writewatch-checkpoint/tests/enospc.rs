//! ENOSPC: a store on a tiny tmpfs. A checkpoint that does not fit fails with
//! an I/O error carrying ENOSPC, the temporary file is removed and the previous
//! chain still restores. Needs root to mount; prints `skipped: <reason>`
//! otherwise.

mod common;

use std::path::Path;
use std::process::Command;

use writewatch_checkpoint::{SliceSource, Store, WriteError};

const PS: usize = 4096;
const ENOSPC: i32 = 28;

struct Mount<'a>(&'a Path);

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect()
}

#[test]
fn enospc_keeps_previous_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "ww-enospc"])
        .arg(&mnt)
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!(
                "skipped: mount tmpfs failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            println!("skipped: cannot run mount: {e}");
            return;
        }
    }
    let _guard = Mount(&mnt);
    let dir = mnt.join("store");
    let mut rng = common::Rng(5);
    let mut region = vec![0u8; 160 * PS]; // 640 KiB region
    rng.fill(&mut region);
    let mut store = Store::create(&dir).unwrap();
    store
        .write_base(&SliceSource::new(&region, PS).unwrap())
        .unwrap();
    let v0 = region.clone();

    // A full delta needs another 640 KiB: does not fit in 1 MiB.
    rng.fill(&mut region);
    let err = store
        .write_delta(1, &SliceSource::new(&region, PS).unwrap(), &[(0, 160)])
        .unwrap_err();
    match &err {
        WriteError::Io(e) => assert_eq!(e.raw_os_error(), Some(ENOSPC), "{e}"),
        other => panic!("expected ENOSPC, got {other}"),
    }
    // The message names the file; the OS error is its source (not repeated in the message).
    let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        msg.contains(".tmp-seg-") && msg.contains("No space left"),
        "{msg}"
    );
    assert!(temp_files(&dir).is_empty(), "{:?}", temp_files(&dir));
    assert_eq!(store.head().unwrap().epoch, 0);
    assert!(store.restore(0).unwrap().as_slice() == &v0[..]);

    // Foreground writer too.
    store.set_writer_options(writewatch_checkpoint::WriterOptions {
        background: false,
        ..Default::default()
    });
    assert!(matches!(
        store.write_delta(1, &SliceSource::new(&region, PS).unwrap(), &[(0, 160)]),
        Err(WriteError::Io(_))
    ));
    assert!(temp_files(&dir).is_empty());
    drop(store);

    // The store reopens; a small checkpoint still fits.
    let mut store = Store::open(&dir).unwrap();
    assert!(store.restore(0).unwrap().as_slice() == &v0[..]);
    store
        .write_delta(1, &SliceSource::new(&region, PS).unwrap(), &[(3, 2)])
        .unwrap();
    let mut want = v0.clone();
    want[3 * PS..5 * PS].copy_from_slice(&region[3 * PS..5 * PS]);
    assert!(store.restore(1).unwrap().as_slice() == &want[..]);
    assert!(store.verify().unwrap().is_ok());
}
