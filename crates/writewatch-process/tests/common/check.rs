//! Dumping the helper target and checking the image against its memory: the oracle of the
//! dump tests (`/proc/PID/mem` while the target is still stopped, restored images, stamps).

use std::time::Duration;

use writewatch_checkpoint::image::{read_image, restore_image, verify_image};
use writewatch_process::{dump, DumpOptions};

use super::{read_mem, Target};

pub fn opts(rounds: u32) -> DumpOptions {
    DumpOptions {
        rounds,
        interval: Duration::from_millis(20),
        leave_stopped: true,
        verify: true,
        ..Default::default()
    }
}

/// Dumps `t` (left stopped), then checks every range of the image against /proc/PID/mem.
/// Returns the restored files (address, bytes).
pub fn dump_and_check(t: &Target, dir: &std::path::Path, rounds: u32) -> Vec<(u64, Vec<u8>)> {
    dump_and_check_with(t, dir, opts(rounds), None)
}

/// [`dump_and_check`] with given options (`leave_stopped` and `verify` set) and progress.
pub fn dump_and_check_with(
    t: &Target,
    dir: &std::path::Path,
    o: DumpOptions,
    progress: Option<&mut dyn FnMut(&writewatch_process::RoundReport)>,
) -> Vec<(u64, Vec<u8>)> {
    let rounds = o.rounds;
    let report = dump(t.pid, dir, o, progress).expect("dump");
    // The SIGSTOP queued before the detach becomes a group stop as the threads resume.
    for _ in 0..200 {
        if t.state() == 'T' {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(t.state(), 'T', "left stopped as asked");
    let v = report.verified.as_ref().expect("verified");
    assert!(v.ok, "built-in verify: {v:?}");
    assert_eq!(report.rounds.len() as u32, rounds + 2);
    assert!(report.rounds.last().unwrap().is_final);
    check_image(t.pid, dir)
}

/// Every range of the image in `dir` equals process `pid`'s memory (read through
/// /proc/PID/mem, which must not change meanwhile). Returns the restored files.
pub fn check_image(pid: u32, dir: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
    let index = read_image(dir).unwrap();
    assert!(!index.ranges.is_empty());
    let out = dir.with_extension(format!("restored{}", index.generation));
    let files = restore_image(dir, &out).unwrap();
    let mut got = Vec::new();
    for f in files {
        let img = std::fs::read(out.join(&f.file)).unwrap();
        assert_eq!(img.len() as u64, f.len);
        let mem = read_mem(pid, f.start, f.len as usize);
        if img != mem {
            let page = (0..img.len() / 4096)
                .find(|p| img[p * 4096..(p + 1) * 4096] != mem[p * 4096..(p + 1) * 4096]);
            panic!(
                "range {:#x}: image differs from memory at page {page:?}",
                f.start
            );
        }
        got.push((f.start, img));
    }
    assert!(verify_image(dir).unwrap().is_ok());
    got
}

/// Every stamp region in the image: each page is uniform (one counter value in every word)
/// except at most the one its thread was writing at the freeze.
pub fn check_stamps(files: &[(u64, Vec<u8>)], regions: &[usize], pages: usize) {
    for &r in regions {
        let (start, img) = files
            .iter()
            .find(|(s, img)| *s as usize <= r && r < *s as usize + img.len())
            .expect("stamp region in the image");
        let off = r - *start as usize;
        let mut torn = 0;
        let mut max = 0;
        for p in 0..pages {
            let page = &img[off + p * 4096..off + (p + 1) * 4096];
            let words: Vec<u64> = page
                .chunks(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            max = max.max(words[0]);
            if words.iter().any(|&w| w != words[0]) {
                torn += 1;
            }
        }
        assert!(torn <= 1, "region {r:#x}: {torn} torn pages");
        assert!(max > 0, "region {r:#x} was written");
    }
}
