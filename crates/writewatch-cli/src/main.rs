//! `writewatch`: command-line tool for writewatch checkpoint stores.
//!
//! Subcommands: `probe`, `pages`, `inspect`, `verify`, `restore`, `compact`. Human-readable output by
//! default, `--json` for scripts.
//!
//! Exit codes: 0 success, 1 verification failure or corruption, 2 usage or
//! any other error.

mod pages;
mod probe;
mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use probe::probe;
use progress::progress_bar;
use serde::Serialize;
use writewatch_checkpoint::{
    CheckpointError, Leftover, RestoreError, SegmentInfo, SegmentKind, Store,
};

const AFTER_HELP: &str = "\
Exit status:
  0  success
  1  corruption: verify found a problem, a store file is corrupt, or
     probe --require-expected found a feature missing
  2  usage error or any other failure (I/O, locked store, missing epoch,
     refused destination such as `restore --to /dev/null`)

Logging: RUST_LOG (e.g. RUST_LOG=debug, RUST_LOG=writewatch_checkpoint=info); default warn.";

/// Inspect, verify, restore and compact writewatch checkpoint stores.
#[derive(Debug, Parser)]
#[command(name = "writewatch", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the chain of a store: segments, sizes, dirty ratios.
    Inspect {
        /// Store directory.
        dir: PathBuf,
    },
    /// Check every checksum and the chain's continuity; list files left by an interrupted
    /// write.
    Verify {
        /// Store directory.
        dir: PathBuf,
    },
    /// Write the region at an epoch as a (sparse) image file.
    Restore {
        /// Store directory.
        dir: PathBuf,
        /// Output image file: a new path or an existing regular file (replaced atomically).
        /// Device nodes, directories, FIFOs, sockets and symbolic links are refused (exit 2).
        #[arg(long)]
        to: PathBuf,
        /// Epoch to restore (default: the newest).
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Merge the newest chain into a single base segment; removes files left by an
    /// interrupted write.
    Compact {
        /// Store directory.
        dir: PathBuf,
    },
    /// Show the page state of a process's mappings: present, swapped, copied on write,
    /// exclusive or shared, zero page, huge, written since an async write-protect re-arm;
    /// with the totals /proc/PID/smaps prints.
    Pages(pages::PagesArgs),
    /// Show what this kernel and process can do: userfaultfd access, each feature, and which
    /// tracking backend works here.
    Probe {
        /// Exit 1 if the kernel's version says a feature should be present but it is not.
        #[arg(long)]
        require_expected: bool,
    },
}

/// Exit status: 0 ok, 1 corruption / verification failure, 2 other errors.
const EXIT_CORRUPT: u8 = 1;
const EXIT_OTHER: u8 = 2;

/// A failed command: message and exit code.
struct Failure {
    code: u8,
    message: String,
}

/// A checkpoint error is a corruption (exit 1) or another failure (exit 2).
impl<E: CheckpointError> From<E> for Failure {
    fn from(e: E) -> Self {
        let message = chain(&e);
        Failure {
            code: if e.is_corruption() {
                EXIT_CORRUPT
            } else {
                EXIT_OTHER
            },
            message,
        }
    }
}

/// An error and its sources, `: `-separated (an error does not repeat its source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// The JSON printed on failure with `--json`.
#[derive(Serialize)]
struct FailureJson<'a> {
    ok: bool,
    error: &'a str,
    exit_code: u8,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_OTHER } else { 0 });
        }
    };
    let json = cli.json;
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            if json {
                print_json(&FailureJson {
                    ok: false,
                    error: &f.message,
                    exit_code: f.code,
                });
            }
            eprintln!("writewatch: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Inspect { dir } => inspect(&dir, cli.json),
        Command::Verify { dir } => verify(&dir, cli.json),
        Command::Restore { dir, to, epoch } => restore(&dir, &to, epoch, cli.json),
        Command::Compact { dir } => compact(&dir, cli.json),
        Command::Probe { require_expected } => probe(require_expected, cli.json),
        Command::Pages(a) => pages::pages(&a, cli.json),
    }
}

/// Prints one JSON document on stdout.
fn print_json(v: &impl Serialize) {
    match serde_json::to_string(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("writewatch: error: encoding JSON: {e}"),
    }
}

fn kind_str(k: SegmentKind) -> &'static str {
    match k {
        SegmentKind::Base => "base",
        SegmentKind::Delta => "delta",
    }
}

#[derive(Serialize)]
struct SegmentJson<'a> {
    epoch: u64,
    parent: Option<u64>,
    kind: &'static str,
    file: &'a str,
    file_len: u64,
    data_pages: u64,
    zero_pages: u64,
    data_bytes: u64,
    dirty_ratio: f64,
    compressed: bool,
    checksum: String,
}

fn segment_json(s: &SegmentInfo) -> SegmentJson<'_> {
    SegmentJson {
        epoch: s.epoch,
        parent: s.parent,
        kind: kind_str(s.kind),
        file: &s.file_name,
        file_len: s.file_len,
        data_pages: s.data_pages,
        zero_pages: s.zero_pages,
        data_bytes: s.data_bytes,
        dirty_ratio: s.dirty_ratio(),
        compressed: s.compressed,
        checksum: format!("{:08x}", s.checksum),
    }
}

#[derive(Serialize)]
struct LeftoverJson<'a> {
    file: &'a str,
    len: u64,
}

fn leftovers_json(l: &[Leftover]) -> Vec<LeftoverJson<'_>> {
    l.iter()
        .map(|l| LeftoverJson {
            file: &l.file_name,
            len: l.len,
        })
        .collect()
}

#[derive(Serialize)]
struct InspectJson<'a> {
    ok: bool,
    store: String,
    page_size: Option<usize>,
    page_count: Option<u64>,
    region_len: Option<u64>,
    total_bytes: u64,
    segments: Vec<SegmentJson<'a>>,
}

#[derive(Serialize)]
struct VerifyJson<'a> {
    ok: bool,
    segments: usize,
    bytes_checked: u64,
    problems: Vec<String>,
    leftovers: Vec<LeftoverJson<'a>>,
}

#[derive(Serialize)]
struct RestoreJson {
    ok: bool,
    epoch: u64,
    file: String,
    bytes: u64,
}

#[derive(Serialize)]
struct CompactJson<'a> {
    ok: bool,
    base: SegmentJson<'a>,
    removed: &'a [String],
    removed_leftovers: Vec<LeftoverJson<'a>>,
    bytes_before: u64,
    bytes_after: u64,
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn inspect(dir: &Path, json_out: bool) -> Result<u8, Failure> {
    let store = Store::open_read_only(dir)?;
    let segs = store.segments();
    let geometry = store.geometry();
    let total: u64 = segs.iter().map(|s| s.file_len).sum();
    if json_out {
        print_json(&InspectJson {
            ok: true,
            store: dir.display().to_string(),
            page_size: geometry.map(|g| g.page_size),
            page_count: geometry.map(|g| g.page_count),
            region_len: geometry.map(|g| g.region_len()),
            total_bytes: total,
            segments: segs.iter().map(segment_json).collect(),
        });
        return Ok(0);
    }
    println!("store {}", dir.display());
    match geometry {
        Some(g) => println!(
            "region: {} pages x {} B = {}",
            g.page_count,
            g.page_size,
            human_bytes(g.region_len())
        ),
        None => println!("region: (empty store)"),
    }
    println!(
        "{:>8}  {:<5}  {:>8}  {:>10}  {:>10}  {:>10}  {:>7}  file",
        "epoch", "kind", "parent", "size", "pages", "zeroed", "dirty"
    );
    for s in &segs {
        println!(
            "{:>8}  {:<5}  {:>8}  {:>10}  {:>10}  {:>10}  {:>6.2}%  {}",
            s.epoch,
            kind_str(s.kind),
            s.parent.map_or("-".to_string(), |p| p.to_string()),
            human_bytes(s.file_len),
            s.data_pages,
            s.zero_pages,
            s.dirty_ratio() * 100.0,
            s.file_name
        );
    }
    println!("{} segment(s), {} on disk", segs.len(), human_bytes(total));
    Ok(0)
}

fn verify(dir: &Path, json_out: bool) -> Result<u8, Failure> {
    let mut store = Store::open_read_only(dir)?;
    let bar = progress_bar(&mut store, "verify");
    let report = store.verify();
    bar.finish_and_clear();
    let report = report?;
    let code = if report.is_ok() { 0 } else { EXIT_CORRUPT };
    if json_out {
        print_json(&VerifyJson {
            ok: report.is_ok(),
            segments: report.segments.len(),
            bytes_checked: report.bytes_checked,
            problems: report.problems.iter().map(|p| chain(p)).collect(),
            leftovers: leftovers_json(&report.leftovers),
        });
        return Ok(code);
    }
    if report.is_ok() {
        println!(
            "ok: {} segment(s), {} of data checked",
            report.segments.len(),
            human_bytes(report.bytes_checked)
        );
    } else {
        for p in &report.problems {
            println!("CORRUPT: {}", chain(p));
        }
        println!("{} problem(s) found", report.problems.len());
    }
    if !report.leftovers.is_empty() {
        let bytes: u64 = report.leftovers.iter().map(|l| l.len).sum();
        for l in &report.leftovers {
            println!(
                "LEFTOVER: {} ({}) from an interrupted write",
                l.file_name,
                human_bytes(l.len)
            );
        }
        println!(
            "{} leftover file(s), {} not part of any checkpoint: `writewatch compact {}` removes them",
            report.leftovers.len(),
            human_bytes(bytes),
            dir.display()
        );
    }
    Ok(code)
}

fn restore(dir: &Path, to: &Path, epoch: Option<u64>, json_out: bool) -> Result<u8, Failure> {
    let mut store = Store::open_read_only(dir)?;
    let epoch = match epoch {
        Some(e) => e,
        None => {
            store
                .head()
                .ok_or_else(|| Failure::from(RestoreError::Empty))?
                .epoch
        }
    };
    let bar = progress_bar(&mut store, "restore");
    let r = store.restore_to_file(epoch, to);
    bar.finish_and_clear();
    r?;
    let len = store.geometry().map_or(0, |g| g.region_len());
    if json_out {
        print_json(&RestoreJson {
            ok: true,
            epoch,
            file: to.display().to_string(),
            bytes: len,
        });
    } else {
        println!(
            "restored epoch {epoch} to {} ({})",
            to.display(),
            human_bytes(len)
        );
    }
    Ok(0)
}

fn compact(dir: &Path, json_out: bool) -> Result<u8, Failure> {
    let mut store = Store::open(dir)?;
    let leftovers = store.removed_leftovers().to_vec();
    let before: u64 = store.segments().iter().map(|s| s.file_len).sum();
    let bar = progress_bar(&mut store, "compact");
    let r = store.compact();
    bar.finish_and_clear();
    let report = r?;
    let after: u64 = store.segments().iter().map(|s| s.file_len).sum();
    if json_out {
        print_json(&CompactJson {
            ok: true,
            base: segment_json(&report.base),
            removed: &report.removed,
            removed_leftovers: leftovers_json(&leftovers),
            bytes_before: before,
            bytes_after: after,
        });
        return Ok(0);
    }
    for l in &leftovers {
        println!(
            "removed leftover {} ({}) from an interrupted write",
            l.file_name,
            human_bytes(l.len)
        );
    }
    if report.removed.is_empty() {
        println!(
            "nothing to compact (newest segment is a base, epoch {})",
            report.base.epoch
        );
    } else {
        println!(
            "compacted {} segment(s) into a base at epoch {} ({} -> {})",
            report.removed.len(),
            report.base.epoch,
            human_bytes(before),
            human_bytes(after)
        );
    }
    Ok(0)
}
