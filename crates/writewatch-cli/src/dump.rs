//! `writewatch dump`: incremental pre-copy dumps of another process, and
//! the process-image side of `inspect` / `verify` / `restore` / `compact`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use writewatch_checkpoint::image;
use writewatch_process::{DumpOptions, DumpReport, Priority, RoundReport};

use crate::{chain, print_json, Failure, EXIT_CORRUPT, EXIT_OTHER};

pub(crate) use writewatch_checkpoint::image::is_image;

/// Options of `dump`.
#[derive(Debug, clap::Args)]
pub(crate) struct DumpArgs {
    /// Image directory (new, empty, or an earlier image: the dump becomes its next generation).
    #[arg(long)]
    dir: PathBuf,
    /// Pre-copy rounds while the target runs, after the first full copy.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Stop the pre-copy rounds once a round copies at most this many pages.
    #[arg(long)]
    until_pages: Option<u64>,
    /// Milliseconds between rounds.
    #[arg(long, default_value_t = 100)]
    interval: u64,
    /// Leave the target stopped (SIGSTOP) after the final round; resume it with `kill -CONT`.
    #[arg(long)]
    leave_stopped: bool,
    /// Compare the committed image with the target's memory before resuming it.
    #[arg(long)]
    verify: bool,
    /// CPU priority of the pre-copy rounds and the image writer while the target runs:
    /// `idle` (SCHED_IDLE, the default), `low` (nice 19) or `normal`.
    #[arg(long, value_enum, default_value_t = PriorityArg::Idle)]
    priority: PriorityArg,
}

/// `--priority` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum PriorityArg {
    /// The dumper's own priority (the image writer 10 nice levels below).
    Normal,
    /// nice 19.
    Low,
    /// SCHED_IDLE.
    Idle,
}

impl DumpArgs {
    /// The library options (SIGINT / SIGTERM stop the dump cleanly: `catch_sigint`).
    fn options(&self) -> DumpOptions {
        DumpOptions {
            rounds: self.rounds,
            until_pages: self.until_pages,
            interval: Duration::from_millis(self.interval),
            leave_stopped: self.leave_stopped,
            verify: self.verify,
            priority: match self.priority {
                PriorityArg::Normal => Priority::Normal,
                PriorityArg::Low => Priority::Low,
                PriorityArg::Idle => Priority::Idle,
            },
            ..Default::default()
        }
    }
}

fn fail(e: &dyn std::error::Error, corrupt: bool) -> Failure {
    Failure {
        code: if corrupt { EXIT_CORRUPT } else { EXIT_OTHER },
        message: chain(e),
    }
}

#[derive(Serialize)]
struct DumpJson<'a> {
    ok: bool,
    pid: u32,
    ranges: usize,
    range_bytes: u64,
    rounds: &'a [RoundReport],
    freeze_ms: f64,
    stopped_ms: f64,
    total_ms: f64,
    verified: Option<bool>,
    report: &'a DumpReport,
}

fn print_report(r: &DumpReport, json: bool) -> u8 {
    let verified = r.verified.as_ref().map(|v| v.ok);
    if json {
        print_json(&DumpJson {
            ok: verified != Some(false),
            pid: r.pid,
            ranges: r.ranges,
            range_bytes: r.range_bytes,
            rounds: &r.rounds,
            freeze_ms: r.freeze_ms,
            stopped_ms: r.stopped_ms,
            total_ms: r.total_ms,
            verified,
            report: r,
        });
    } else {
        println!(
            "pid {}: {} ranges ({} KiB), generation {} in {}",
            r.pid,
            r.ranges,
            r.range_bytes / 1024,
            r.generation,
            r.dir.display()
        );
        for x in &r.rounds {
            println!(
                "  round {}{}: {} pages, {:.1} ms (+{} / -{} ranges)",
                x.round,
                if x.is_final { " (final, stopped)" } else { "" },
                x.pages,
                x.ms,
                x.new_ranges,
                x.dropped_ranges
            );
        }
        println!(
            "freeze {:.2} ms ({} threads), total {:.0} ms",
            r.freeze_ms, r.threads, r.total_ms
        );
        let f = &r.freeze_times;
        println!(
            "  freeze: stop {:.2} ms, maps {:.2} ms, harvest {:.2} ms, copy {:.2} ms (read {:.2} ms); after it: writes {:.1} ms, commit {:.1} ms",
            f.stop_ms, f.maps_ms, f.harvest_ms, f.copy_ms, f.read_ms, f.write_ms, f.commit_ms
        );
        if let Some(v) = &r.verified {
            println!(
                "verify: {} ({} pages, {} mismatched)",
                if v.ok { "ok" } else { "MISMATCH" },
                v.pages,
                v.mismatched_pages
            );
        }
    }
    if verified == Some(false) {
        EXIT_CORRUPT
    } else {
        0
    }
}

fn progress() -> impl FnMut(&RoundReport) {
    let bar = indicatif::ProgressBar::new_spinner();
    move |r: &RoundReport| {
        bar.set_message(format!(
            "round {}{}: {} pages in {:.1} ms",
            r.round,
            if r.is_final { " (final)" } else { "" },
            r.pages,
            r.ms
        ));
        bar.tick();
        if r.is_final {
            bar.finish_and_clear();
        }
    }
}

/// `writewatch dump --pid PID --dir DIR ...`
pub(crate) fn dump(pid: u32, args: &DumpArgs, json: bool) -> Result<u8, Failure> {
    let _ = writewatch_process::catch_sigint();
    let mut p = progress();
    let r = writewatch_process::dump(pid, &args.dir, args.options(), Some(&mut p))
        .map_err(|e| fail(&e, false))?;
    Ok(print_report(&r, json))
}

/// `writewatch run --dir DIR ... -- PROG ARGS`: starts PROG tracked from its first
/// instruction, dumps it after the rounds, then waits for it (unless left stopped).
pub(crate) fn run(args: &DumpArgs, cmd: &[std::ffi::OsString], json: bool) -> Result<u8, Failure> {
    let (prog, rest) = cmd.split_first().ok_or_else(|| Failure {
        code: EXIT_OTHER,
        message: "run: name a program after `--`".into(),
    })?;
    let _ = writewatch_process::catch_sigint();
    let s = writewatch_process::spawn_tracked(prog, rest).map_err(|e| fail(&e, false))?;
    let mut child = s.child;
    let mut p = progress();
    let r = writewatch_process::dump_attached_process(
        s.attached,
        &args.dir,
        args.options(),
        Some(&mut p),
    )
    .map_err(|e| fail(&e, false))?;
    let code = print_report(&r, json);
    if !args.leave_stopped {
        if let Ok(st) = child.wait() {
            if !json {
                println!("{}: {st}", prog.to_string_lossy());
            }
        }
    }
    Ok(code)
}

/// `inspect` of an image directory.
pub(crate) fn inspect_image(dir: &Path, json: bool) -> Result<u8, Failure> {
    let index = image::read_image(dir).map_err(|e| fail(&e, e.is_corruption()))?;
    if json {
        print_json(&index);
    } else {
        println!(
            "process image of pid {}, generation {}, {} ranges",
            index.pid,
            index.generation,
            index.ranges.len()
        );
        for r in &index.ranges {
            let backing = match &r.backing {
                image::Backing::Anonymous { name } => name.clone().unwrap_or_default(),
                image::Backing::File { path, offset } => format!("{path} @{offset:#x}"),
            };
            println!(
                "  {:#014x}-{:#014x} {} {:>8} KiB  {}  ({} epoch {})",
                r.start,
                r.start + r.len,
                r.prot,
                r.len / 1024,
                backing,
                r.store,
                r.epoch
            );
        }
    }
    Ok(0)
}

/// `verify` of an image directory.
pub(crate) fn verify_image(dir: &Path, json: bool) -> Result<u8, Failure> {
    let rep = image::verify_image(dir).map_err(|e| fail(&e, e.is_corruption()))?;
    if json {
        print_json(&rep);
    } else if rep.is_ok() {
        println!("ok: {} ranges", rep.ranges);
    } else {
        for p in &rep.problems {
            println!("problem: {p}");
        }
    }
    Ok(if rep.is_ok() { 0 } else { EXIT_CORRUPT })
}

/// `restore --to DIR` of an image directory.
pub(crate) fn restore_image(dir: &Path, to: &Path, json: bool) -> Result<u8, Failure> {
    let files = image::restore_image(dir, to).map_err(|e| fail(&e, e.is_corruption()))?;
    if json {
        print_json(&files);
    } else {
        println!(
            "{} ranges restored into {} (index.json)",
            files.len(),
            to.display()
        );
    }
    Ok(0)
}

/// `compact` of an image directory.
pub(crate) fn compact_image(dir: &Path, json: bool) -> Result<u8, Failure> {
    let removed = image::compact_image(dir).map_err(|e| fail(&e, e.is_corruption()))?;
    if json {
        print_json(&removed);
    } else {
        println!("compacted; removed {} old generations", removed.len());
    }
    Ok(0)
}
