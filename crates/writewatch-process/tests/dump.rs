//! Dumps of the helper target (`ww-target`): the image equals the target's memory at the
//! freeze, byte for byte, read back through an independent reader (`/proc/PID/mem` while
//! the target is still stopped); stamps are never torn; faults leave the target running
//! untracked. These tests ptrace a child process (allowed for a parent under Yama
//! ptrace_scope 1); the SIGKILL test ptraces a non-child (a sibling): it needs root or
//! ptrace_scope 0 and says so when skipped.

mod common;

use std::time::Duration;

use common::check::{check_image, check_stamps, dump_and_check, opts};
use common::{read_mem, Target};
use writewatch_checkpoint::image::{compact_image, read_image, verify_image};
use writewatch_process::{dump, AttachError, DumpError, DumpOptions};
use writewatch_testkit::watchdog::within;

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
        let s2 = t.status_untracked();
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
        assert_eq!(t.status_untracked().uffd_wp_vmas, 0);
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
        let s = t.status_untracked();
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
        t.status_untracked().uffd_wp_vmas,
        0,
        "the failed dump left nothing registered"
    );
}

#[test]
fn sigkill_of_the_dumper_mid_round_leaves_the_target_running_untracked() {
    if !common::is_root() {
        eprintln!("skipped: ptrace of a non-child needs root or kernel.yama.ptrace_scope=0");
        return;
    }
    within(Duration::from_secs(240), || {
        let mut t = Target::start(&["--pages", "256"]);
        let dir = common::tmp();
        let (mut dumper, _out) = common::dumper_at_round(t.pid, &dir.path().join("img"), 3);
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
    if !common::is_root() {
        eprintln!("skipped: ptrace of a non-child needs root or kernel.yama.ptrace_scope=0");
        return;
    }
    within(Duration::from_secs(240), || {
        use std::io::BufRead;
        let mut t = Target::start(&["--pages", "64"]);
        let dir = common::tmp();
        let (mut dumper, out) = common::dumper_at_round(t.pid, &dir.path().join("img"), 2);
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
        let s = t.status_untracked();
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

/// The error chain of `e` holds an OS error `errno`.
fn has_errno(e: &(dyn std::error::Error + 'static), errno: i32) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            == Some(errno)
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// After a failed dump: the target runs (no thread stopped, progress goes on), untracked,
/// with its registers and code unchanged.
fn assert_running_untracked(t: &mut Target) {
    assert!(!t.any_thread_stopped(), "a thread was left stopped");
    let s1 = t.status();
    std::thread::sleep(Duration::from_millis(50));
    let s2 = t.status_untracked();
    assert!(
        s2.progress.iter().zip(&s1.progress).all(|(b, a)| b > a),
        "runs on: {s1:?} {s2:?}"
    );
    assert_eq!(s2.uffd_wp_vmas, 0, "nothing registered is left");
    assert!(s2.regs_ok && s2.code_ok, "{s2:?}");
}

/// ENOSPC on a tiny tmpfs the test mounts (root only): first with the file system full
/// before the dump (the rounds' writes fail), then filled during the last pre-copy round
/// (the last writes fail, possibly after the final round resumed the target). Each time: a
/// typed error carrying ENOSPC, the previous commit intact byte for byte and sound, the
/// target running, untracked, no thread left stopped (even with `leave_stopped` asked).
#[test]
fn enospc_is_a_typed_error_and_the_previous_commit_survives() {
    if !common::is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    within(Duration::from_secs(240), || {
        let mut t = Target::start(&["--pages", "64"]);
        let dir = tempfile::tempdir().unwrap();
        let fs = common::Tmpfs::mount(&dir.path().join("mnt"), "32m");
        let img = fs.dir.join("img");
        dump_and_check(&t, &img, 1);
        t.resume();
        let before = std::fs::read(img.join("IMAGE")).unwrap();
        let check_failed = |err: DumpError, t: &mut Target| {
            eprintln!("dump failed as expected: {err:?}");
            assert!(
                matches!(err, DumpError::Store { .. } | DumpError::Image { .. }),
                "{err:?}"
            );
            assert!(
                has_errno(&err, libc::ENOSPC),
                "ENOSPC in the chain: {err:?}"
            );
            assert!(err.to_string().contains("previous commit"), "{err}");
            assert_eq!(std::fs::read(img.join("IMAGE")).unwrap(), before);
            assert!(verify_image(&img).unwrap().is_ok());
            assert_ne!(t.state(), 'T');
            assert_running_untracked(t);
        };
        // Full before the dump.
        fs.fill("filler");
        let err = dump(t.pid, &img, opts(2), None).unwrap_err();
        check_failed(err, &mut t);
        // Filled during the last pre-copy round (no verify: the final round resumes the
        // target before its pages are written).
        std::fs::remove_file(fs.dir.join("filler")).unwrap();
        let _ = compact_image(&img);
        let o = DumpOptions {
            verify: false,
            leave_stopped: false,
            ..opts(2)
        };
        let mut step = |r: &writewatch_process::RoundReport| {
            if r.round == 2 {
                fs.fill("filler");
            }
        };
        let err = dump(t.pid, &img, o, Some(&mut step)).unwrap_err();
        check_failed(err, &mut t);
        std::fs::remove_file(fs.dir.join("filler")).unwrap();
        // With space again, a dump works and compact drops the failed generations.
        dump_and_check(&t, &img, 1);
        t.resume();
        compact_image(&img).unwrap();
        assert!(verify_image(&img).unwrap().is_ok());
    })
    .expect("test finished in time");
}

/// The target forks during the rounds: the child (which overwrites its copies of the stamp
/// regions with `u64::MAX`) is not tracked and not dumped; the parent's image still equals
/// its memory at the freeze, byte for byte, and holds none of the child's writes.
#[test]
fn target_forking_during_rounds_parent_image_exact_child_untracked() {
    within(Duration::from_secs(240), || {
        let mut t = Target::start(&["--pages", "64"]);
        let regions = t.status().regions;
        let dir = common::tmp();
        let img = dir.path().join("img");
        let mut child = 0u32;
        let pid = t.pid;
        let report = {
            let mut step = |r: &writewatch_process::RoundReport| {
                if r.round == 1 {
                    let reply = t.cmd_reply("fork");
                    child = reply.strip_prefix("ok ").unwrap().parse().unwrap();
                }
            };
            dump(pid, &img, opts(4), Some(&mut step)).expect("dump")
        };
        assert!(child > 0);
        assert!(
            report.verified.as_ref().unwrap().ok,
            "{:?}",
            report.verified
        );
        for _ in 0..200 {
            if t.state() == 'T' {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let files = check_image(t.pid, &img);
        check_stamps(&files, &regions, 64);
        for &r in &regions {
            let (start, bytes) = files
                .iter()
                .find(|(s, b)| *s as usize <= r && r < *s as usize + b.len())
                .unwrap();
            let off = r - *start as usize;
            assert!(
                bytes[off..off + 64 * 4096]
                    .chunks(8)
                    .all(|w| w != u64::MAX.to_le_bytes()),
                "the child's writes are not the parent's"
            );
        }
        // The child: running, never stopped, nothing registered in it.
        let smaps = std::fs::read_to_string(format!("/proc/{child}/smaps")).unwrap();
        assert!(!smaps
            .lines()
            .any(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "uw")));
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap();
        let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
        assert!(state != 'T' && state != 't', "child state {state}");
        t.resume();
        assert_running_untracked(&mut t);
        common::unsafe_free_kill(child, "KILL");
    })
    .expect("test finished in time");
}

/// The target execs during the rounds: a typed error (`Execed`), nothing committed over the
/// previous image, and the new program runs untracked with nothing of the dump in it (no
/// registered range, no thread stopped, its own register/code self-check intact), even
/// with `leave_stopped` asked.
#[test]
fn target_execing_during_rounds_is_a_typed_error_and_runs_on() {
    within(Duration::from_secs(240), || {
        let mut t = Target::start(&["--pages", "32"]);
        let dir = common::tmp();
        let img = dir.path().join("img");
        dump_and_check(&t, &img, 0);
        t.resume();
        let before = std::fs::read(img.join("IMAGE")).unwrap();
        let pid = t.pid;
        let err = {
            let mut step = |r: &writewatch_process::RoundReport| {
                if r.round == 1 {
                    t.cmd("exec");
                    assert_eq!(t.line(), format!("ready {pid}"));
                }
            };
            dump(pid, &img, opts(4), Some(&mut step)).unwrap_err()
        };
        assert!(matches!(err, DumpError::Execed(p) if p == pid), "{err:?}");
        assert!(err.to_string().contains("execve"), "{err}");
        assert_eq!(std::fs::read(img.join("IMAGE")).unwrap(), before);
        assert!(verify_image(&img).unwrap().is_ok());
        assert_ne!(t.state(), 'T');
        assert_running_untracked(&mut t);
        // The new program can be dumped.
        dump_and_check(&t, &dir.path().join("img2"), 1);
        t.resume();
    })
    .expect("test finished in time");
}
