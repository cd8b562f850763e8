//! `writewatch`: command-line tool for writewatch checkpoint stores.
//!
//! Subcommands: `probe`, `inspect`, `verify`, `restore`, `compact`. Human-readable output by
//! default, `--json` for scripts.
//!
//! Exit codes: 0 success, 1 verification failure or corruption, 2 usage or
//! any other error.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use writewatch_checkpoint::{
    CompactError, OpenError, Progress, RestoreError, SegmentInfo, SegmentKind, Store, VerifyError,
};

/// Inspect, verify, restore and compact writewatch checkpoint stores.
#[derive(Debug, Parser)]
#[command(name = "writewatch", version, about)]
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
    /// Check every checksum and the chain's continuity.
    Verify {
        /// Store directory.
        dir: PathBuf,
    },
    /// Write the region at an epoch as a (sparse) image file.
    Restore {
        /// Store directory.
        dir: PathBuf,
        /// Output image file.
        #[arg(long)]
        to: PathBuf,
        /// Epoch to restore (default: the newest).
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Merge the newest chain into a single base segment.
    Compact {
        /// Store directory.
        dir: PathBuf,
    },
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

impl Failure {
    fn corrupt(e: impl std::fmt::Display) -> Self {
        Failure {
            code: EXIT_CORRUPT,
            message: e.to_string(),
        }
    }
    fn other(e: impl std::fmt::Display) -> Self {
        Failure {
            code: EXIT_OTHER,
            message: e.to_string(),
        }
    }
}

impl From<OpenError> for Failure {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Corrupt(_) => Failure::corrupt(e),
            _ => Failure::other(e),
        }
    }
}

impl From<RestoreError> for Failure {
    fn from(e: RestoreError) -> Self {
        match e {
            RestoreError::Corrupt(_) => Failure::corrupt(e),
            _ => Failure::other(e),
        }
    }
}

impl From<VerifyError> for Failure {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Corrupt(_) => Failure::corrupt(e),
            VerifyError::Io(_) => Failure::other(e),
        }
    }
}

impl From<CompactError> for Failure {
    fn from(e: CompactError) -> Self {
        match e {
            CompactError::Read(RestoreError::Corrupt(_)) => Failure::corrupt(e),
            _ => Failure::other(e),
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WRITEWATCH_LOG")
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
                println!(
                    "{}",
                    json!({ "ok": false, "error": f.message, "exit_code": f.code })
                );
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
    }
}

fn probe(require_expected: bool, json: bool) -> Result<u8, Failure> {
    use writewatch_core::{Backend, Feature, Purpose, Tracker};
    let p = writewatch_core::probe();
    let missing = p.expected_but_missing();
    let backends: Vec<(Backend, Result<(), String>)> =
        [Backend::SyncUffd, Backend::AsyncUffd, Backend::Mprotect]
            .into_iter()
            .map(|b| {
                (
                    b,
                    Tracker::builder()
                        .backend(b)
                        .build()
                        .map(drop)
                        .map_err(|e| e.to_string()),
                )
            })
            .collect();
    let auto_dirty = Tracker::builder()
        .purpose(Purpose::DirtyTracking)
        .build()
        .map(|t| t.backend().name());
    let auto_snap = Tracker::builder()
        .purpose(Purpose::Snapshots)
        .build()
        .map(|t| t.backend().name());
    if json {
        let features: serde_json::Map<String, Value> = Feature::ALL
            .iter()
            .map(|f| (f.name().to_string(), json!({ "present": p.has(*f), "min_kernel": format!("{}.{}", f.min_kernel().0, f.min_kernel().1) })))
            .collect();
        println!(
            "{}",
            json!({
                "kernel": p.kernel_release,
                "access": format!("{:?}", p.access),
                "usable": p.usable(),
                "features_bits": p.features,
                "features": features,
                "pagemap_scan": p.pagemap_scan,
                "soft_dirty": p.soft_dirty,
                "unprivileged_userfaultfd": p.unprivileged_userfaultfd,
                "thp": p.thp,
                "backends": backends.iter().map(|(b, r)| (b.name().to_string(), json!({ "works": r.is_ok(), "error": r.as_ref().err() }))).collect::<serde_json::Map<_, _>>(),
                "auto": { "dirty_tracking": auto_dirty.as_ref().ok(), "snapshots": auto_snap.as_ref().ok() },
                "expected_but_missing": missing.iter().map(|f| f.name()).collect::<Vec<_>>(),
            })
        );
    } else {
        print!("{p}");
        println!("backends:");
        for (b, r) in &backends {
            let need = match b {
                Backend::SyncUffd => "userfaultfd + UFFD_FEATURE_PAGEFAULT_FLAG_WP (Linux >= 5.7); copy-before-write snapshots",
                Backend::AsyncUffd => "UFFD_FEATURE_WP_ASYNC + WP_UNPOPULATED + PAGEMAP_SCAN (Linux >= 6.7); dirty sets only",
                _ => "nothing (mprotect + SIGSEGV); dirty sets only, syscalls writing tracked memory get EFAULT",
            };
            match r {
                Ok(()) => println!("  {:<9} works   needs {need}", b.name()),
                Err(e) => println!("  {:<9} NO      {e}", b.name()),
            }
        }
        println!(
            "auto picks: {} for dirty tracking, {} for snapshots",
            auto_dirty.as_deref().unwrap_or("none"),
            auto_snap.as_deref().unwrap_or("none")
        );
        if !missing.is_empty() {
            println!(
                "MISSING although kernel {} should have them: {}",
                p.kernel_release,
                missing
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(if require_expected && !missing.is_empty() {
        EXIT_CORRUPT
    } else {
        0
    })
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
fn progress_bar(store: &mut Store, what: &str) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} pages {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_message(what.to_string());
        b
    } else {
        ProgressBar::hidden()
    };
    let b = bar.clone();
    store.set_progress(Some(Arc::new(move |p: Progress| {
        if let Some(t) = p.pages_total {
            b.set_length(t);
        }
        b.set_position(p.pages_done);
    })));
    bar
}

fn kind_str(k: SegmentKind) -> &'static str {
    match k {
        SegmentKind::Base => "base",
        SegmentKind::Delta => "delta",
    }
}

fn segment_json(s: &SegmentInfo) -> Value {
    json!({
        "epoch": s.epoch,
        "parent": s.parent,
        "kind": kind_str(s.kind),
        "file": s.file_name,
        "file_len": s.file_len,
        "data_pages": s.data_pages,
        "zero_pages": s.zero_pages,
        "data_bytes": s.data_bytes,
        "dirty_ratio": s.dirty_ratio(),
        "compressed": s.compressed,
        "checksum": format!("{:08x}", s.checksum),
    })
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
        println!(
            "{}",
            json!({
                "ok": true,
                "store": dir.display().to_string(),
                "page_size": geometry.map(|g| g.page_size),
                "page_count": geometry.map(|g| g.page_count),
                "region_len": geometry.map(|g| g.region_len()),
                "total_bytes": total,
                "segments": segs.iter().map(segment_json).collect::<Vec<_>>(),
            })
        );
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
        println!(
            "{}",
            json!({
                "ok": report.is_ok(),
                "segments": report.segments.len(),
                "bytes_checked": report.bytes_checked,
                "problems": report.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            })
        );
    } else if report.is_ok() {
        println!(
            "ok: {} segment(s), {} of data checked",
            report.segments.len(),
            human_bytes(report.bytes_checked)
        );
    } else {
        for p in &report.problems {
            println!("CORRUPT: {p}");
        }
        println!("{} problem(s) found", report.problems.len());
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
                .ok_or_else(|| Failure::other(RestoreError::Empty))?
                .epoch
        }
    };
    let bar = progress_bar(&mut store, "restore");
    let r = store.restore_to_file(epoch, to);
    bar.finish_and_clear();
    r?;
    let len = store.geometry().map_or(0, |g| g.region_len());
    if json_out {
        println!(
            "{}",
            json!({ "ok": true, "epoch": epoch, "file": to.display().to_string(), "bytes": len })
        );
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
    let before: u64 = store.segments().iter().map(|s| s.file_len).sum();
    let bar = progress_bar(&mut store, "compact");
    let r = store.compact();
    bar.finish_and_clear();
    let report = r?;
    let after: u64 = store.segments().iter().map(|s| s.file_len).sum();
    if json_out {
        println!(
            "{}",
            json!({
                "ok": true,
                "base": segment_json(&report.base),
                "removed": report.removed,
                "bytes_before": before,
                "bytes_after": after,
            })
        );
    } else if report.removed.is_empty() {
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
