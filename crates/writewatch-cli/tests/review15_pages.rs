//! Adversarial review of issue 15: `writewatch pages --pid P --json` against an independent
//! smaps reader on a program this project did not write (redis-server when installed, else
//! python3), comparing Private and Shared exactly too, with and without PAGEMAP_SCAN.

use std::process::{Child, Command, Stdio};

use writewatch_testkit::smaps;

/// A child killed and reaped on drop, with its socket file (if any) removed.
struct Reaped(Child, Option<std::path::PathBuf>);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(p) = &self.1 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// redis-server (if installed) or python3, settled, allocating some memory.
fn target() -> Option<Reaped> {
    // A unix socket only (no TCP port to collide with), in the test's temporary directory.
    let sock = std::env::temp_dir().join(format!("review15-redis-{}.sock", std::process::id()));
    let redis = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--unixsocket",
        ])
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn();
    let (child, sock) = match redis {
        Ok(c) => (c, Some(sock)),
        Err(_) => Command::new("python3")
            .args([
                "-c",
                "import time\na=bytearray(20_000_000)\nfor i in range(0,len(a),8192): a[i]=1\nprint('ok',flush=True)\ntime.sleep(60)",
            ])
            .stdout(Stdio::null())
            .spawn()
            .ok()
            .map(|c| (c, None))?,
    };
    std::thread::sleep(std::time::Duration::from_millis(800));
    Some(Reaped(child, sock))
}

/// Every mapping's totals, exact (Private and Shared included), with the target stopped.
///
/// Private and Shared of a library's pages depend on how many processes map them *now*:
/// another test's process that starts or exits between the two reads moves a libc page
/// between the two (seen in CI: libc Private 0 vs 36 KiB). So smaps is read before and after
/// the inspector, and an attempt counts only when both reads agree (the sharing did not
/// change around it); up to 8 attempts, then the last one is compared as it is.
fn compare(pid: u32, extra: &[&str]) -> Vec<String> {
    let mut last = Vec::new();
    for _attempt in 0..8 {
        let (diffs, stable) = compare_once(pid, extra);
        if stable {
            return diffs;
        }
        last = diffs;
    }
    last
}

/// One attempt of [`compare`]: the differences against the smaps read before the
/// inspector, and whether the smaps read after it gave the same totals.
fn compare_once(pid: u32, extra: &[&str]) -> (Vec<String>, bool) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let oracle = smaps::read(Some(pid));
    let out = Command::new(env!("CARGO_BIN_EXE_writewatch"))
        .args(["pages", "--pid", &pid.to_string(), "--json"])
        .args(extra)
        .output()
        .unwrap();
    let after = smaps::read(Some(pid));
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields = |s: &smaps::SmapsEntry| {
        (
            s.start,
            s.end,
            s.get("Rss"),
            s.get("Anonymous"),
            s.get("Swap"),
            s.private(),
            s.shared(),
        )
    };
    let stable = oracle.len() == after.len()
        && oracle
            .iter()
            .zip(&after)
            .all(|(x, y)| fields(x) == fields(y));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut diffs = Vec::new();
    let maps = v["mappings"].as_array().unwrap();
    assert_eq!(maps.len(), oracle.len());
    for m in maps {
        let (a, b) = (
            m["start"].as_u64().unwrap() as usize,
            m["end"].as_u64().unwrap() as usize,
        );
        let s = oracle.iter().find(|s| s.start == a && s.end == b).unwrap();
        let t = &m["totals"];
        for (f, mine, theirs) in [
            ("Rss", t["rss_kb"].as_u64().unwrap(), s.get("Rss")),
            (
                "Anonymous",
                t["anonymous_kb"].as_u64().unwrap(),
                s.get("Anonymous"),
            ),
            ("Swap", t["swap_kb"].as_u64().unwrap(), s.get("Swap")),
        ] {
            if mine != theirs {
                diffs.push(format!("{a:#x} {} {f}: {mine} vs smaps {theirs}", s.path));
            }
        }
        // Private and Shared: exact, except for the observer. While `writewatch pages`
        // runs, its own process maps the same shared libraries, so a library page that only
        // the target and the inspector map is Shared for the inspector and Private in the
        // smaps read after it exits (seen in CI: one libm page, 12 vs 16 KiB). The observer
        // only ever moves pages from Private to Shared, and only in file mappings of
        // libraries it maps itself: anything else must be exact.
        let (mp, ms) = (
            t["private_kb"].as_u64().unwrap(),
            t["shared_kb"].as_u64().unwrap(),
        );
        let observer_lib = s.path.contains(".so") && s.get("Anonymous") == 0;
        let ok = if observer_lib {
            mp + ms == s.private() + s.shared() && mp <= s.private()
        } else {
            mp == s.private() && ms == s.shared()
        };
        if !ok {
            diffs.push(format!(
                "{a:#x} {} Private/Shared: {mp}/{ms} vs smaps {}/{}",
                s.path,
                s.private(),
                s.shared()
            ));
        }
    }
    (diffs, stable)
}

#[test]
fn foreign_program_json_totals_equal_smaps_exactly() {
    let Some(t) = target() else {
        println!("skipped: neither redis-server nor python3");
        return;
    };
    let d = compare(t.0.id(), &[]);
    assert!(d.is_empty(), "{d:#?}");
}

/// Finding 6 (low): in the `--no-scan` fallback, a zero-page mapping (read, never written)
/// counts in Rss and Anonymous, and as *shared* with another process: the JSON totals differ
/// from smaps although every such page is reported under fields that look available
/// (design.md mentions "counts them as anonymous", not Rss or Shared).
#[test]
#[ignore = "finding 6: --no-scan counts zero pages in Rss, Anonymous and Shared (totals != smaps)"]
fn foreign_program_json_totals_equal_smaps_without_pagemap_scan() {
    let Some(t) = target() else { return };
    let d = compare(t.0.id(), &["--no-scan"]);
    assert!(d.is_empty(), "{d:#?}");
}
