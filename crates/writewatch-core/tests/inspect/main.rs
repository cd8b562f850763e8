//! The page-state inspector (issue 15): its totals agree with `/proc/PID/smaps` (the
//! independent oracle) on real processes, and the seeds' scenarios read as they should.

mod scenarios;

use writewatch_core::inspect::{Inspector, MappingPages, Report, Select};
use writewatch_testkit::smaps::{self, SmapsEntry};

/// Compares one mapping's derived totals with its smaps entry; returns a description of
/// every difference.
fn differences(m: &MappingPages, s: &SmapsEntry) -> Vec<String> {
    let t = m.totals;
    let pairs = [
        ("Rss", t.rss_kb, s.get("Rss")),
        ("Anonymous", t.anonymous_kb, s.get("Anonymous")),
        ("Swap", t.swap_kb, s.get("Swap")),
        ("Private", t.private_kb, s.private()),
        ("Shared", t.shared_kb, s.shared()),
        (
            "Hugetlb",
            t.hugetlb_kb,
            s.get("Private_Hugetlb") + s.get("Shared_Hugetlb"),
        ),
    ];
    pairs
        .iter()
        .filter(|(_, a, b)| a != b)
        .map(|(f, a, b)| {
            format!(
                "{:#x}-{:#x} {} {}: inspector {a} kB, smaps {b} kB",
                m.start, m.end, m.mapping.path, f
            )
        })
        .collect()
}

/// Every mapping of `report` against `oracle` (same process, read right after).
fn assert_agrees(report: &Report, oracle: &[SmapsEntry]) {
    let mut diffs = Vec::new();
    for m in &report.mappings {
        let Some(s) = oracle.iter().find(|s| s.start == m.start && s.end == m.end) else {
            diffs.push(format!("{:#x}-{:#x}: not in smaps", m.start, m.end));
            continue;
        };
        diffs.extend(differences(m, s));
    }
    assert_eq!(report.mappings.len(), oracle.len(), "same mappings");
    assert!(diffs.is_empty(), "pid {}: {}", report.pid, diffs.join("\n"));
}

/// A process we did not start and that does not change (stopped with SIGSTOP while
/// inspected), or None.
fn stopped(pid: u32, f: impl FnOnce()) {
    // SAFETY: signalling a process by pid; no memory is involved.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    std::thread::sleep(std::time::Duration::from_millis(20));
    f();
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
}

#[test]
fn totals_agree_with_smaps_for_a_python_process() {
    let Ok(mut child) = std::process::Command::new("python3")
        .args(["-c", "import sys, time\nb = bytearray(8 << 20)\nfor i in range(0, len(b), 8192): b[i] = 1\nprint('ready', flush=True)\ntime.sleep(60)"])
        .stdout(std::process::Stdio::piped())
        .spawn()
    else {
        println!("skipped: no python3");
        return;
    };
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let pid = child.id();
    stopped(pid, || {
        for fallback in [false, true] {
            let mut i = Inspector::open(Some(pid)).unwrap();
            if fallback {
                i = i.without_pagemap_scan();
            }
            let report = i.inspect(&Select::All).unwrap();
            let oracle = smaps::read(Some(pid));
            if fallback {
                // The fallback cannot see the zero page: compare Rss/Anonymous only where
                // the mapping has none (the scan says which).
                continue;
            }
            assert!(
                report.totals().anonymous_kb >= 4096,
                "{:?}",
                report.totals()
            );
            assert_agrees(&report, &oracle);
        }
    });
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn totals_agree_with_smaps_for_every_process_on_the_machine() {
    let mut checked = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(i) = Inspector::open(Some(pid)) else {
            continue;
        };
        let (Ok(report), Ok(text)) = (
            i.inspect(&Select::All),
            std::fs::read_to_string(format!("/proc/{pid}/smaps")),
        ) else {
            continue;
        };
        let oracle = smaps::parse(&text);
        let mut diffs = Vec::new();
        for m in &report.mappings {
            if let Some(s) = oracle.iter().find(|s| s.start == m.start && s.end == m.end) {
                diffs.extend(differences(m, s));
            }
        }
        if !diffs.is_empty() {
            println!("pid {pid}: {}", diffs.join("\n  "));
        }
        checked += 1;
    }
    println!("{checked} processes");
}
