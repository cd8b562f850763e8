//! Cost of the page-state inspector (`writewatch_core::inspect`) against its baseline, one
//! `read` of the same process's `/proc/PID/smaps`, measured in the same run on processes
//! the bench did not write: an idle `sleep`, and `python3` holding 64 MiB (quick) or
//! 512 MiB of written memory (its pages are resident and anonymous).
//!
//! Per target: median wall time of `read_to_string(/proc/PID/smaps)`, of
//! `Inspector::inspect(&Select::All)` (one `PAGEMAP_SCAN` walk per mapping + raw pagemap
//! reads of the present runs), and of the raw-pagemap fallback; and the ratios
//! inspector / smaps. Figures go to stdout (a Markdown table) and
//! `<criterion dir>/writewatch-stats/inspect.json`.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it): a short smoke run.

// A bench binary's `main` and helpers are not a public API.
#![allow(missing_docs)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Value;
use writewatch::inspect::{Inspector, Select};

/// A target process, killed on drop.
struct Target(Child, &'static str);

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python(mib: usize) -> Option<Target> {
    let script = format!(
        "import time\nb = bytearray({mib} << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('ready', flush=True)\ntime.sleep(600)"
    );
    let mut c = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(c.stdout.take()?), &mut line).ok()?;
    Some(Target(c, "python3"))
}

fn sleeper() -> Target {
    let c = Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("spawn sleep");
    std::thread::sleep(Duration::from_millis(100));
    Target(c, "sleep")
}

/// Median of `n` timed runs of `f`.
fn median(n: usize, mut f: impl FnMut()) -> Duration {
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[n / 2]
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (n, mib) = if smoke {
        (3, 16)
    } else if common::quick() {
        (21, 64)
    } else {
        (51, 512)
    };
    let mut targets = vec![sleeper()];
    targets.extend(python(mib));
    println!("| target | mappings | Rss | smaps read | inspector | ratio | fallback | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut fields = vec![("runs", Value::U(n as u64))];
    let mut keys = Vec::new();
    for t in &targets {
        let pid = t.0.id();
        let path = format!("/proc/{pid}/smaps");
        let scan = Inspector::open(Some(pid)).expect("inspector");
        let raw = Inspector::open(Some(pid))
            .expect("inspector")
            .without_pagemap_scan();
        let report = scan.inspect(&Select::All).expect("inspect");
        let smaps = median(n, || {
            std::hint::black_box(std::fs::read_to_string(&path).expect("smaps"));
        });
        let ins = median(n, || {
            std::hint::black_box(scan.inspect(&Select::All).expect("inspect"));
        });
        let fb = median(n, || {
            std::hint::black_box(raw.inspect(&Select::All).expect("inspect"));
        });
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let (r1, r2) = (us(ins) / us(smaps), us(fb) / us(smaps));
        println!(
            "| {} | {} | {} MiB | {:.0} us | {:.0} us | {r1:.2}x | {:.0} us | {r2:.2}x |",
            t.1,
            report.mappings.len(),
            report.totals().rss_kb >> 10,
            us(smaps),
            us(ins),
            us(fb)
        );
        keys.push((t.1, us(smaps), us(ins), us(fb), r1, r2));
    }
    for (name, s, i, f, r1, r2) in keys {
        fields.push((leak(format!("{name}_smaps_us")), Value::F(s)));
        fields.push((leak(format!("{name}_inspect_us")), Value::F(i)));
        fields.push((leak(format!("{name}_fallback_us")), Value::F(f)));
        fields.push((leak(format!("{name}_inspect_ratio")), Value::F(r1)));
        fields.push((leak(format!("{name}_fallback_ratio")), Value::F(r2)));
    }
    if !smoke {
        common::write_side_file("inspect", &fields);
    }
}

/// Side-file keys are `&str`: a handful of small strings live for the bench's run.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}
