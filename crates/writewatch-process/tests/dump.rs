//! Dumps of the helper target (`ww-target`): the image equals the target's memory at the
//! freeze, byte for byte, read back through an independent reader (`/proc/PID/mem` while
//! the target is still stopped); stamps are never torn; faults leave the target running
//! untracked. These tests ptrace a child process (allowed for a parent under Yama
//! ptrace_scope 1); the SIGKILL test ptraces a non-child (a sibling): it needs root or
//! ptrace_scope 0 and says so when skipped.

mod common;

use std::time::Duration;

use common::{read_mem, Target};
use writewatch_checkpoint::image::{compact_image, read_image, restore_image, verify_image};
use writewatch_process::{dump, AttachError, DumpError, DumpOptions};
use writewatch_testkit::watchdog::within;

fn opts(rounds: u32) -> DumpOptions {
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
fn dump_and_check(t: &Target, dir: &std::path::Path, rounds: u32) -> Vec<(u64, Vec<u8>)> {
    let report = dump(t.pid, dir, opts(rounds), None).expect("dump");
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
fn check_image(pid: u32, dir: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
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
fn check_stamps(files: &[(u64, Vec<u8>)], regions: &[usize], pages: usize) {
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

#[test]
fn stamped_pages_from_4_threads_image_equals_memory_at_freeze() {
    within(Duration::from_secs(240), || {
        let mut t = Target::start(&["--pages", "128"]);
        let regions = t.status().regions;
        let dir = common::tmp();
        let img = dir.path().join("img");
        let files = dump_and_check(&t, &img, 3);
        check_stamps(&files, &regions, 128);
        // Resumed: it runs on, untracked.
        t.resume();
        let s1 = t.status();
        std::thread::sleep(Duration::from_millis(50));
        let s2 = t.status();
        assert!(
            s2.progress.iter().zip(&s1.progress).all(|(b, a)| b > a),
            "{s1:?} {s2:?}"
        );
        assert_eq!(s2.uffd_wp_vmas, 0);
        assert!(s2.regs_ok && s2.code_ok, "{s2:?}");
        // A second dump into the same directory is a new generation; compact drops the old.
        let files = dump_and_check(&t, &img, 1);
        check_stamps(&files, &regions, 128);
        assert_eq!(read_image(&img).unwrap().generation, 2);
        t.resume();
        assert_eq!(compact_image(&img).unwrap(), vec!["gen-1".to_string()]);
        assert!(verify_image(&img).unwrap().is_ok());
    })
    .expect("test finished in time");
}

#[test]
fn mmap_munmap_mremap_during_rounds() {
    within(Duration::from_secs(240), || {
        let mut t = Target::start(&["--pages", "64", "--churn"]);
        let regions = t.status().regions;
        let dir = common::tmp();
        let img = dir.path().join("img");
        let report_files = dump_and_check(&t, &img, 5);
        check_stamps(&report_files, &regions, 64);
        t.resume();
        assert_eq!(t.status().uffd_wp_vmas, 0);
    })
    .expect("test finished in time");
}

#[test]
fn attach_twice_second_gets_a_clear_error() {
    within(Duration::from_secs(240), || {
        let mut t = Target::start(&[]);
        let first = writewatch_process::attach(t.pid).expect("first attach");
        for m in writewatch_process::read_maps(t.pid).unwrap() {
            if m.skip_reason().is_none() {
                let _ = first.uffd().register_wp(m.start, m.end - m.start);
            }
        }
        let dir = common::tmp();
        let err = dump(t.pid, &dir.path().join("img"), opts(0), None).unwrap_err();
        assert!(
            matches!(err, DumpError::Attach(AttachError::AlreadyTracked { .. })),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("already registered with another userfaultfd"),
            "{err}"
        );
        assert_ne!(t.state(), 'T', "not left stopped");
        drop(first);
        let s = t.status();
        assert_eq!(s.uffd_wp_vmas, 0);
        assert!(s.regs_ok && s.code_ok);
        // Once the first tracker is gone, a dump works.
        dump_and_check(&t, &dir.path().join("img2"), 0);
    })
    .expect("test finished in time");
}

#[test]
fn bad_input_gets_typed_errors() {
    let err = dump(
        u32::MAX - 1,
        std::path::Path::new("/nonexistent/x"),
        opts(0),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, DumpError::Attach(AttachError::NoSuchProcess(_))),
        "{err}"
    );
    let mut t = Target::start(&[]);
    let dir = common::tmp();
    std::fs::write(dir.path().join("someone-elses-file"), b"x").unwrap();
    let err = dump(t.pid, dir.path(), opts(0), None).unwrap_err();
    assert!(err.to_string().contains("writing the image"), "{err}");
    assert!(dir.path().join("someone-elses-file").exists());
    assert_ne!(t.state(), 'T');
    assert_eq!(
        t.status().uffd_wp_vmas,
        0,
        "the failed dump left nothing registered"
    );
}

#[test]
fn sigkill_of_the_dumper_mid_round_leaves_the_target_running_untracked() {
    if !nix_is_root() {
        eprintln!("skipped: ptrace of a non-child needs root or kernel.yama.ptrace_scope=0");
        return;
    }
    within(Duration::from_secs(240), || {
        use std::io::BufRead;
        let mut t = Target::start(&["--pages", "256"]);
        let dir = common::tmp();
        let mut dumper = std::process::Command::new(common::EXE)
            .args([
                "dump",
                &t.pid.to_string(),
                dir.path().join("img").to_str().unwrap(),
                "1000",
                "5",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(dumper.stdout.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("round 3") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "dumper ended early");
        }
        assert!(t.status().uffd_wp_vmas > 0, "tracked while the dumper runs");
        dumper.kill().unwrap(); // SIGKILL
        dumper.wait().unwrap();
        let mut s = t.status();
        for _ in 0..100 {
            if s.uffd_wp_vmas == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            s = t.status();
        }
        assert_eq!(s.uffd_wp_vmas, 0, "untracked after the dumper died");
        assert!(s.regs_ok, "registers unchanged");
        assert!(s.code_ok, "code unchanged");
        std::thread::sleep(Duration::from_millis(50));
        let s2 = t.status();
        assert!(
            s2.progress.iter().zip(&s.progress).all(|(b, a)| b > a),
            "runs on"
        );
        assert_ne!(t.state(), 'T');
        // Nothing was committed: the directory holds no image.
        assert!(read_image(&dir.path().join("img")).is_err());
    })
    .expect("test finished in time");
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

#[test]
fn run_tracks_a_program_from_its_first_instruction() {
    within(Duration::from_secs(240), || {
        let s = writewatch_process::spawn_tracked(
            &common::EXE.into(),
            &["--pages".into(), "32".into(), "--stay".into()],
        )
        .expect("spawn");
        let mut child = s.child;
        let pid = child.id();
        // Let it start its threads, then dump it (left stopped) and check like the others.
        std::thread::sleep(Duration::from_millis(200));
        let dir = common::tmp();
        let report = writewatch_process::dump_attached_process(
            s.attached,
            &dir.path().join("img"),
            opts(2),
            None,
        )
        .expect("dump");
        assert!(report.verified.as_ref().unwrap().ok, "{:?}", report.verified);
        // The loader's and the program's data are in the image (tracked from exec on).
        let index = read_image(&dir.path().join("img")).unwrap();
        assert!(index.ranges.iter().any(|r| matches!(&r.backing,
            writewatch_checkpoint::image::Backing::File { path, .. } if path.ends_with("ww-target"))));
        for r in &index.ranges {
            let _ = read_mem(pid, r.start, 1); // readable: the process is alive
        }
        let _ = child.kill();
        let _ = child.wait();
    })
    .expect("test finished in time");
}

#[test]
fn corrupt_index_is_a_typed_error_and_the_previous_commit_survives_a_failed_dump() {
    within(Duration::from_secs(240), || {
        let t = Target::start(&["--pages", "16"]);
        let dir = common::tmp();
        let img = dir.path().join("img");
        dump_and_check(&t, &img, 0);
        t.resume();
        let before = std::fs::read(img.join("IMAGE")).unwrap();
        // A failed dump (the pid is gone) leaves the committed image as it was.
        let err = dump(u32::MAX - 1, &img, opts(0), None).unwrap_err();
        assert!(matches!(
            err,
            DumpError::Attach(AttachError::NoSuchProcess(_))
        ));
        assert_eq!(std::fs::read(img.join("IMAGE")).unwrap(), before);
        assert!(verify_image(&img).unwrap().is_ok());
        // One flipped byte in the index body: a corruption, named as such.
        let mut bad = before.clone();
        let last = bad.len() - 3;
        bad[last] ^= 1;
        std::fs::write(img.join("IMAGE"), &bad).unwrap();
        let e = read_image(&img).unwrap_err();
        assert!(e.is_corruption(), "{e}");
        assert!(e.to_string().contains("CRC-32C mismatch"), "{e}");
    })
    .expect("test finished in time");
}

#[test]
fn sigint_of_the_dumper_is_a_clear_error_and_the_target_runs_on() {
    if !nix_is_root() {
        eprintln!("skipped: ptrace of a non-child needs root or kernel.yama.ptrace_scope=0");
        return;
    }
    within(Duration::from_secs(240), || {
        use std::io::BufRead;
        let mut t = Target::start(&["--pages", "64"]);
        let dir = common::tmp();
        let mut dumper = std::process::Command::new(common::EXE)
            .args([
                "dump",
                &t.pid.to_string(),
                dir.path().join("img").to_str().unwrap(),
                "1000",
                "5",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(dumper.stdout.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("round 2") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "dumper ended early");
        }
        common::unsafe_free_kill(dumper.id(), "INT");
        let mut last = String::new();
        for l in out.lines() {
            last = l.unwrap();
        }
        assert!(dumper.wait().unwrap().success());
        assert!(last.contains("dump interrupted"), "{last}");
        assert!(
            read_image(&dir.path().join("img")).is_err(),
            "nothing committed"
        );
        let s = t.status();
        assert_eq!(s.uffd_wp_vmas, 0);
        assert!(s.regs_ok && s.code_ok);
        assert_ne!(t.state(), 'T');
    })
    .expect("test finished in time");
}

/// Deterministic: a private file page written before round 1 (so round 1 copies it and
/// re-protects it) and zapped with `MADV_DONTNEED` after round 1 reverts to the file's
/// content with the protection marker kept: invisible to the harvest. The image must still
/// hold the file's content (checked against /proc/PID/mem and by the built-in verify).
#[test]
fn written_private_file_page_zapped_after_its_copy() {
    within(Duration::from_secs(240), || {
        let dir = common::tmp();
        let file = dir.path().join("mapped.bin");
        let mut t = Target::start(&["--pages", "4", "--file-map", file.to_str().unwrap()]);
        let pid = t.pid;
        let img = dir.path().join("img");
        let report = {
            let mut step = |r: &writewatch_process::RoundReport| match r.round {
                0 => t.cmd("fw 3"),
                1 => t.cmd("fz 3"),
                _ => {}
            };
            dump(pid, &img, opts(3), Some(&mut step)).expect("dump")
        };
        let v = report.verified.as_ref().expect("verified");
        assert!(v.ok, "{v:?}");
        for _ in 0..200 {
            if t.state() == 'T' {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        check_image(pid, &img);
        t.resume();
    })
    .expect("test finished in time");
}

#[test]
fn private_file_pages_zapped_during_rounds() {
    within(Duration::from_secs(240), || {
        let dir = common::tmp();
        let file = dir.path().join("mapped.bin");
        let mut t = Target::start(&["--pages", "16", "--file-zap", file.to_str().unwrap()]);
        let _ = t.status();
        std::thread::sleep(Duration::from_millis(50));
        // Several dumps: each final image must equal memory (reverted pages included).
        for i in 0..3 {
            dump_and_check(&t, &dir.path().join(format!("img{i}")), 4);
            t.resume();
        }
    })
    .expect("test finished in time");
}
