//! Incremental pre-copy dumps: rounds while the target runs, then a short final round with
//! every thread stopped. The image is the target's memory at the freeze, exactly.
//!
//! Why exact: every piece is write-protected before its first copy, and every harvest
//! re-protects what it reports *before* the pages are read. A page not reported since its
//! last copy was not written after its last harvest, so its copy (taken after that harvest)
//! is its content at the freeze; every page written since is reported by the final harvest,
//! taken with all threads stopped, and copied before they resume.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use writewatch_checkpoint::image::ImageWriter;

use crate::attach::{attach, Attached};
use crate::bgwrite::{BgWriter, WRITER_FAILED};
use crate::dumper::{ms, Dumper};
use crate::error::DumpError;
use crate::freeze::Frozen;
use crate::maps::read_maps;
use crate::options::{DumpOptions, Priority};
use crate::pieces::Piece;
pub use crate::report::{DumpReport, FreezeTimes, RoundReport, Skipped, WriterReport};
use crate::sys;
use crate::verify::verify_frozen;

/// Nice levels the dump's thread is raised by while the target is stopped (when allowed).
const FREEZE_BOOST: i32 = 10;

/// Dumps process `pid` into the image directory `dir`: attach, a first full copy, `rounds`
/// pre-copy rounds while it runs, then the final round with every thread stopped. Calls
/// `progress` after each round.
///
/// On error the target is resumed and untracked (the userfaultfd is closed), and `dir`
/// keeps its previous commit.
pub fn dump(
    pid: u32,
    dir: &Path,
    opts: DumpOptions,
    progress: Option<&mut dyn FnMut(&RoundReport)>,
) -> Result<DumpReport, DumpError> {
    let t_start = Instant::now();
    let at = attach(pid)?;
    dump_attached(at, dir, opts, progress, t_start)
}

/// [`dump`] of a process already attached (e.g. by [`spawn_tracked`](crate::spawn_tracked)).
pub fn dump_attached_process(
    at: Attached,
    dir: &Path,
    opts: DumpOptions,
    progress: Option<&mut dyn FnMut(&RoundReport)>,
) -> Result<DumpReport, DumpError> {
    dump_attached(at, dir, opts, progress, Instant::now())
}

fn dump_attached(
    at: Attached,
    dir: &Path,
    opts: DumpOptions,
    progress: Option<&mut dyn FnMut(&RoundReport)>,
    t_start: Instant,
) -> Result<DumpReport, DumpError> {
    let pid = at.pid();
    let writer = ImageWriter::begin(dir, pid).map_err(|source| DumpError::Image {
        dir: dir.to_path_buf(),
        source,
    })?;
    let page = sys::page_size();
    let mut skipped = Vec::new();
    for m in read_maps(pid).map_err(|_| DumpError::Exited(pid))? {
        if let Some(reason) = m.skip_reason() {
            if reason != "not writable" {
                skipped.push(Skipped {
                    start: m.start,
                    end: m.end,
                    path: m.path.clone(),
                    reason,
                });
            }
        }
    }
    let bound = opts.final_buffer_bytes;
    let mut d = Dumper {
        at,
        bg: BgWriter::start(writer, page, bound, opts.priority)?,
        pieces: Vec::new(),
        next_id: 0,
        page,
        opts,
        untracked: 0,
        maps_time: Duration::ZERO,
        harvest_time: Duration::ZERO,
        arena: Vec::new(),
    };
    match run(&mut d, progress, skipped, t_start) {
        Ok(r) => Ok(r),
        // The writer's own error (ENOSPC, EIO...) rather than "the writer failed".
        Err(DumpError::Invalid(m)) if m == WRITER_FAILED => {
            Err(d.bg.finish().err().unwrap_or(DumpError::Invalid(m)))
        }
        Err(e) => Err(e),
    }
}

/// Where the pre-copy rounds are: the rounds so far, when the last one ended, and whether
/// the last pre-copy round (walking every page) is still due.
struct Pace {
    rounds: Vec<RoundReport>,
    last_end: Instant,
    last_due: bool,
}

/// One pre-copy round: paced (it starts `interval` after the previous one at the earliest,
/// and only once the image writer has written the previous rounds: the writer is the slow
/// part, and re-reading the hot set faster only costs the target CPU and write faults),
/// harvest (leaving hot pages out unless `is_last`), copy, queue for the writer.
fn one_round(d: &mut Dumper, pace: &mut Pace, is_last: bool) -> Result<RoundReport, DumpError> {
    let page = d.page;
    let round = pace.rounds.len() as u32;
    let mut drain_ms = 0.0;
    if round > 0 {
        // The drain also makes the last pre-copy round copy at memory speed (no wait for
        // the writer), and the final round follows it at once: its dirty set is what the
        // target writes during this short round.
        let t = Instant::now();
        d.wait_writer()?;
        drain_ms = ms(t.elapsed());
        d.sleep_until(pace.last_end + d.opts.interval)?;
    }
    if is_last {
        // Sized like the hot set plus the previous round: what this round copies.
        let hot: u64 = d.pieces.iter().map(|p| p.heat.hot_pages()).sum();
        let last = pace.rounds.last().map_or(0, |r| r.bytes);
        d.prefault(last + hot * page as u64);
        // This round's chunk buffers too (it copies the hot set: about as much).
        d.bg.prefill((last + hot * page as u64) as usize);
    }
    d.check()?;
    let t0 = Instant::now();
    let (work, new, dropped) = d.plan(round == 0, round > 0 && !is_last)?;
    let hot_pages = d.pieces.iter().map(|p| p.heat.hot_pages()).sum();
    let t1 = Instant::now();
    let (c, waited) = d.copy(&work, None)?;
    pace.last_end = Instant::now();
    let r = RoundReport {
        copy_ms: ms(t1.elapsed()),
        wait_ms: ms(waited),
        read_ms: c.read_ns as f64 / 1e6,
        drain_ms,
        hot_pages,
        ms: ms(t0.elapsed()),
        ..round_report(round, false, &c, page, (new, dropped), ms(t1 - t0))
    };
    pace.rounds.push(r.clone());
    Ok(r)
}

/// The pre-copy rounds while the target runs but the last: round 0 copies everything,
/// each later round what was written since the previous harvest, hot pages left out. Stops
/// with `last_due` when the last pre-copy round (which walks every page, then the final
/// round follows at once) is due: after `rounds` rounds, or earlier when `until_pages` is
/// reached while hot pages were left out. Calls `emit` after each round.
fn precopy(d: &mut Dumper, emit: &mut dyn FnMut(&RoundReport)) -> Result<Pace, DumpError> {
    let mut pace = Pace {
        rounds: Vec::new(),
        last_end: Instant::now(),
        last_due: false,
    };
    loop {
        let round = pace.rounds.len() as u32;
        if round > 0 && round == d.opts.rounds {
            pace.last_due = true;
            return Ok(pace);
        }
        let r = one_round(d, &mut pace, false)?;
        emit(&r);
        let small = round > 0 && d.opts.until_pages.is_some_and(|n| r.pages <= n);
        if round == d.opts.rounds || small {
            pace.last_due = small && r.hot_pages > 0;
            return Ok(pace);
        }
    }
}

/// Runs [`precopy`] on the thread `ww-dump-rounds` at `opts.priority` ([`Priority::Normal`]:
/// on the caller's thread), forwarding the round reports to `progress` on the caller's
/// thread. Lowered priority cannot be raised back without `CAP_SYS_NICE`, so it is never
/// applied to the caller's thread, which runs the final round.
fn precopy_on_worker(
    d: &mut Dumper,
    progress: &mut Option<&mut dyn FnMut(&RoundReport)>,
) -> Result<Pace, DumpError> {
    let prio = d.opts.priority;
    if prio == Priority::Normal {
        return precopy(d, &mut |r| {
            if let Some(p) = progress.as_mut() {
                p(r);
            }
        });
    }
    let (tx, rx) = std::sync::mpsc::channel::<RoundReport>();
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("ww-dump-rounds".into())
            .spawn_scoped(s, move || {
                prio.apply_here(false);
                precopy(d, &mut |r| {
                    let _ = tx.send(r.clone());
                })
            })
            .map_err(|e| DumpError::Invalid(format!("cannot start the pre-copy thread: {e}")))?;
        // Ends when the worker ends (its sender dropped), normally or not.
        for r in rx {
            if let Some(p) = progress.as_mut() {
                p(&r);
            }
        }
        worker.join().unwrap_or_else(|_| {
            Err(DumpError::Invalid(
                "the pre-copy thread panicked; the target runs untracked".into(),
            ))
        })
    })
}

/// The rounds, the final round and the commit.
fn run(
    d: &mut Dumper,
    mut progress: Option<&mut dyn FnMut(&RoundReport)>,
    skipped: Vec<Skipped>,
    t_start: Instant,
) -> Result<DumpReport, DumpError> {
    let (pid, page) = (d.pid(), d.page);
    let mut pace = precopy_on_worker(d, &mut progress)?;
    if pace.last_due {
        // On this thread, at the caller's priority: the final round's dirty set is what
        // the target writes while this round runs, so it must not wait for a CPU.
        let r = one_round(d, &mut pace, true)?;
        if let Some(p) = progress.as_mut() {
            p(&r);
        }
    }
    let mut rounds = pace.rounds;
    // The final round.
    d.check()?;
    d.maps_time = Duration::ZERO;
    d.harvest_time = Duration::ZERO;
    let mut ft = FreezeTimes::default();
    d.bg.pause(true);
    // The target is stopped for as long as this thread takes: on a busy machine, let it
    // run first (best effort; restored once the target runs again, or on error).
    let caller_nice = sys::this_thread_nice();
    let boost = sys::Boost::raise(FREEZE_BOOST);
    let t0 = Instant::now();
    let frozen = Frozen::freeze(pid)?;
    ft.stop_ms = ms(t0.elapsed());
    let threads = frozen.threads();
    // No execve can happen while every thread is stopped: one before is caught here.
    d.check_exec()?;
    let (work, new, dropped) = d.plan(false, false)?;
    ft.maps_ms = ms(d.maps_time);
    ft.harvest_ms = ms(d.harvest_time);
    let t1 = Instant::now();
    let bytes: u64 = work
        .iter()
        .map(|w| w.runs.iter().map(|r| r.1).sum::<u64>() * page as u64)
        .sum();
    let hold = d.opts.verify || d.opts.leave_stopped;
    ft.buffered = bytes <= d.opts.final_buffer_bytes as u64;
    if !ft.buffered {
        d.bg.pause(false); // the pages stream through it, while the target is stopped
        d.bg.raise(caller_nice);
    }
    let mut held = Vec::new();
    let (c, _) = d.copy(&work, ft.buffered.then_some(&mut held))?;
    ft.copy_ms = ms(t1.elapsed());
    ft.read_ms = c.read_ns as f64 / 1e6;
    if !ft.buffered {
        // Streamed through the writer while stopped: wait until it is on disk.
        let t = Instant::now();
        d.bg.drain();
        ft.stopped_write_ms = ms(t.elapsed());
    }
    let freeze_ms = ms(t0.elapsed());
    let mut frozen = Some(frozen);
    if !hold {
        let t = Instant::now();
        drop(frozen.take()); // resumes every thread
        ft.resume_ms = ms(t.elapsed());
    }
    if frozen.is_none() {
        drop(boost);
    }
    d.bg.pause(false);
    d.send_held(held);
    let t_w = Instant::now();
    let mut writer = d.bg.finish()?;
    ft.write_ms = ms(t_w.elapsed());
    let t_c = Instant::now();
    let ranges: Vec<_> = d.pieces.iter().map(Piece::image_range).collect();
    let index = writer.commit(ranges).map_err(|source| DumpError::Image {
        dir: writer.dir().to_path_buf(),
        source,
    })?;
    ft.commit_ms = ms(t_c.elapsed());
    let verified = match (&frozen, d.opts.verify) {
        (Some(_), true) => {
            let t = Instant::now();
            let v = verify_frozen(pid, &mut writer, &index);
            ft.verify_ms = ms(t.elapsed());
            Some(v)
        }
        _ => None,
    };
    let stopped_ms = if let Some(mut f) = frozen {
        if d.opts.leave_stopped {
            f.leave_stopped();
        }
        let s = ms(t0.elapsed());
        let t = Instant::now();
        drop(f); // resumes, or leaves stopped with SIGSTOP
        ft.resume_ms = ms(t.elapsed());
        s
    } else {
        freeze_ms
    };
    let r = RoundReport {
        copy_ms: ft.copy_ms,
        read_ms: ft.read_ms,
        ms: stopped_ms,
        ..round_report(
            rounds.len() as u32,
            true,
            &c,
            page,
            (new, dropped),
            ms(t1 - t0),
        )
    };
    if let Some(p) = progress.as_mut() {
        p(&r);
    }
    rounds.push(r);
    let t = &d.bg.times;
    let writer_report = WriterReport {
        bytes: t.bytes.load(Ordering::Relaxed),
        segments: t.segments.load(Ordering::Relaxed),
        push_ms: t.push_ns.load(Ordering::Relaxed) as f64 / 1e6,
        commit_ms: t.commit_ns.load(Ordering::Relaxed) as f64 / 1e6,
    };
    Ok(DumpReport {
        pid,
        dir: writer.dir().to_path_buf(),
        generation: index.generation,
        ranges: index.ranges.len(),
        range_bytes: index.ranges.iter().map(|r| r.len).sum(),
        rounds,
        freeze_ms,
        freeze_times: ft,
        writer: writer_report,
        stopped_ms,
        threads,
        total_ms: ms(t_start.elapsed()),
        verified,
        user_mode_only: d.at.user_mode_only(),
        untracked_ranges: d.untracked,
        skipped,
    })
}

/// The fields of a round's report that come from its copy and its maps re-read (the caller
/// fills in its times).
fn round_report(
    round: u32,
    is_final: bool,
    c: &crate::copy::Copied,
    page: usize,
    (new_ranges, dropped_ranges): (usize, usize),
    harvest_ms: f64,
) -> RoundReport {
    RoundReport {
        round,
        is_final,
        pages: c.pages,
        bytes: c.pages * page as u64,
        unreadable_pages: c.unreadable,
        new_ranges,
        dropped_ranges,
        harvest_ms,
        copy_ms: 0.0,
        wait_ms: 0.0,
        read_ms: 0.0,
        read_cpu_ms: c.read_cpu_ns as f64 / 1e6,
        drain_ms: 0.0,
        hot_pages: 0,
        ms: 0.0,
    }
}
