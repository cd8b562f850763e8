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
use crate::copy::{normalize, push_run, read_chunks, read_into, Copied, CHUNK_PAGES};
use crate::error::{AttachError, DumpError};
use crate::freeze::Frozen;
use crate::maps::read_maps;
use crate::options::{DumpOptions, Priority};
use crate::pieces::{reverted_cow_pages, sync, Piece};
pub use crate::report::{DumpReport, FreezeTimes, RoundReport, Skipped, WriterReport};
use crate::sys;
use crate::verify::verify_frozen;

/// The plan of one round for one piece.
struct Work {
    idx: usize,
    runs: Vec<(u64, u64)>,
}

struct Dumper {
    at: Attached,
    bg: BgWriter,
    pieces: Vec<Piece>,
    next_id: u64,
    page: usize,
    opts: DumpOptions,
    untracked: usize,
    /// Time in `plan` re-reading maps and registering / harvesting, since the last reset.
    maps_time: Duration,
    harvest_time: Duration,
    /// The final round's pages, back to back: pre-faulted before the last pre-copy round
    /// (sized like that round), so the freeze copies into memory already mapped.
    arena: Vec<u8>,
}

/// Nice levels the dump's thread is raised by while the target is stopped (when allowed).
const FREEZE_BOOST: i32 = 10;

/// The cheap part of `check` (atomics only), also run between chunks: cancelled, `SIGINT`,
/// or the writer failed.
fn stop_asked(opts: &DumpOptions, bg: &BgWriter) -> Result<(), DumpError> {
    let cancelled = opts
        .cancel
        .as_ref()
        .is_some_and(|c| c.load(Ordering::Relaxed));
    if cancelled || sys::SIGINT_SEEN.load(Ordering::Relaxed) {
        return Err(DumpError::Interrupted);
    }
    if bg.failed() {
        // Replaced by the writer's own error in `dump_attached`.
        return Err(DumpError::Invalid(WRITER_FAILED.into()));
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Dumper {
    fn pid(&self) -> u32 {
        self.at.pid()
    }

    fn check(&self) -> Result<(), DumpError> {
        stop_asked(&self.opts, &self.bg)?;
        if !self.at.alive() {
            return Err(DumpError::Exited(self.pid()));
        }
        self.check_exec()
    }

    /// The address space the userfaultfd tracks is still the target's: after an `execve`
    /// the old one is gone, its harvests would report nothing, and the maps are the new
    /// program's. Checked every round and, with every thread stopped, in the final round.
    fn check_exec(&self) -> Result<(), DumpError> {
        if self.at.same_address_space() {
            return Ok(());
        }
        if !self.at.alive() {
            return Err(DumpError::Exited(self.pid()));
        }
        Err(DumpError::Execed(self.pid()))
    }

    /// Re-reads maps, drops and adds pieces, harvests: returns the work of the round and
    /// (new, dropped) counts. A harvest that finds a piece's mapping replaced (`EPERM` from
    /// `PM_SCAN_CHECK_WPASYNC`: the VMA there is not ours any more) drops the piece and
    /// re-reads the maps to add what replaced it.
    fn plan(&mut self, first: bool) -> Result<(Vec<Work>, usize, usize), DumpError> {
        use std::collections::{BTreeMap, BTreeSet};
        let pid = self.pid();
        let (mut new, mut dropped) = (0, 0);
        let mut runs_by_id: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
        let mut fresh: BTreeSet<u64> = BTreeSet::new();
        for _pass in 0..8 {
            let t_maps = Instant::now();
            let maps = read_maps(pid).map_err(|_| DumpError::Exited(pid))?;
            let s = sync(&mut self.pieces, &maps, &mut self.next_id);
            dropped += s.dropped.len();
            for id in s.dropped {
                self.bg.drop_range(id);
                fresh.remove(&id);
                runs_by_id.remove(&id);
            }
            for mut p in s.added {
                match self.at.uffd().register_wp(p.start, p.end - p.start) {
                    Ok(()) => {}
                    Err(e) if e.raw() == libc::EBUSY && first => {
                        return Err(AttachError::AlreadyTracked {
                            pid,
                            start: p.start,
                            end: p.end,
                        }
                        .into())
                    }
                    Err(e) => {
                        tracing::warn!(
                            pid,
                            "range {:#x}-{:#x} {}: not registered ({e}); copied whole every round",
                            p.start,
                            p.end,
                            p.perms
                        );
                        p.tracked = false;
                        self.untracked += 1;
                    }
                }
                // Created by the writer thread, off the round's (and the freeze's) path.
                self.bg.add_range(p.id, p.pages(self.page));
                fresh.insert(p.id);
                new += 1;
                self.pieces.push(p);
            }
            self.pieces.sort_by_key(|p| p.start);
            let t_harvest = Instant::now();
            self.maps_time += t_harvest - t_maps;
            let mut replaced = Vec::new();
            let page = self.page;
            for p in &mut self.pieces {
                if !p.tracked || runs_by_id.contains_key(&p.id) {
                    continue;
                }
                let is_fresh = fresh.contains(&p.id);
                let mut runs = Vec::new();
                let r = if is_fresh {
                    Ok(0)
                } else {
                    self.at.pagemap().harvest(p.start, p.end, |a, b| {
                        push_run(&mut runs, p.start, page, a.max(p.start), b.min(p.end));
                    })
                };
                let r = r.and_then(|n| {
                    if p.private_file() {
                        reverted_cow_pages(self.at.pagemap(), p, page, &mut runs)?;
                    }
                    Ok(n)
                });
                match r {
                    Ok(_) if is_fresh => {}
                    Ok(_) => {
                        runs_by_id.insert(p.id, runs);
                    }
                    Err(e) if e.raw() == libc::EPERM => replaced.push(p.id),
                    Err(source) => {
                        return Err(DumpError::Scan {
                            pid,
                            start: p.start,
                            end: p.end,
                            source,
                        })
                    }
                }
            }
            self.harvest_time += t_harvest.elapsed();
            if replaced.is_empty() {
                break;
            }
            self.pieces.retain(|p| !replaced.contains(&p.id));
            for id in replaced {
                self.bg.drop_range(id);
                dropped += 1;
            }
        }
        let mut work = Vec::new();
        for (idx, p) in self.pieces.iter().enumerate() {
            let runs = if fresh.contains(&p.id) || !p.tracked {
                vec![(0, p.pages(self.page))]
            } else {
                let mut r = runs_by_id.remove(&p.id).unwrap_or_default();
                normalize(&mut r);
                r
            };
            if !runs.is_empty() {
                work.push(Work { idx, runs });
            }
        }
        Ok((work, new, dropped))
    }

    /// Copies the planned runs into memory, chunk by chunk, and queues them for the writer
    /// thread (waiting while the queue is over its bound); with `held` (the final round,
    /// target stopped), reads them into the arena instead, to be queued after the resume
    /// ([`send_held`](Self::send_held)). Returns what was read and the time waited for the
    /// writer.
    fn copy(
        &mut self,
        work: &[Work],
        mut held: Option<&mut Vec<HeldSegment>>,
    ) -> Result<(Copied, Duration), DumpError> {
        let mut total = Copied::default();
        let mut waited = Duration::ZERO;
        let (pid, page) = (self.pid(), self.page);
        let mut used = 0usize;
        for w in work {
            self.check()?;
            let p = &self.pieces[w.idx];
            let (id, start, pages) = (p.id, p.start, p.pages(page));
            if let Some(held) = held.as_deref_mut() {
                let bytes = w.runs.iter().map(|r| r.1 as usize).sum::<usize>() * page;
                if self.arena.len() < used + bytes {
                    self.arena.resize(used + bytes, 0); // beyond the estimate
                }
                total.add(read_into(
                    pid,
                    start,
                    page,
                    &w.runs,
                    &mut self.arena[used..used + bytes],
                ));
                held.push(HeldSegment {
                    idx: w.idx,
                    runs: w.runs.clone(),
                    at: used,
                });
                used += bytes;
                continue;
            }
            let (bg, opts) = (&self.bg, &self.opts);
            bg.begin(id, start, p.end, pages);
            // A large range takes many chunks: cancellation is honoured between them (an
            // open segment is then never committed).
            let c = read_chunks::<DumpError>(
                pid,
                start,
                page,
                &w.runs,
                &mut Vec::with_capacity,
                &mut |pages, data| {
                    stop_asked(opts, bg)?;
                    waited += bg.send_chunk(pages, data);
                    Ok(())
                },
            )?;
            bg.end();
            total.add(c);
        }
        Ok((total, waited))
    }

    /// Queues the final round's pages (in the arena) for the writer, in chunks, and frees
    /// the arena.
    fn send_held(&mut self, held: Vec<HeldSegment>) {
        let page = self.page;
        for h in held {
            let p = &self.pieces[h.idx];
            self.bg.begin(p.id, p.start, p.end, p.pages(page));
            let all: Vec<u64> = h.runs.iter().flat_map(|&(f, c)| f..f + c).collect();
            for (k, pages) in all.chunks(CHUNK_PAGES).enumerate() {
                let from = h.at + k * CHUNK_PAGES * page;
                let data = self.arena[from..from + pages.len() * page].to_vec();
                self.bg.send_chunk_unbounded(pages.to_vec(), data);
            }
            self.bg.end();
        }
        self.arena = Vec::new();
    }

    /// Pre-faults the arena for about `bytes` (at most the final buffer).
    fn prefault(&mut self, bytes: u64) {
        let want = bytes.min(self.opts.final_buffer_bytes as u64) as usize;
        if self.arena.len() < want {
            // Non-zero: memset writes every page now (a zeroed allocation would be mapped
            // lazily and fault during the freeze). Every byte is overwritten by the copy.
            self.arena = vec![1u8; want];
        }
    }

    /// Waits until the image writer has written everything queued (pacing), honouring
    /// cancellation meanwhile.
    fn wait_writer(&self) -> Result<(), DumpError> {
        self.bg.drain_checked(&|| self.check())
    }

    /// Sleeps until `until`, checking for cancellation every 50 ms.
    fn sleep_until(&self, until: Instant) -> Result<(), DumpError> {
        loop {
            stop_asked(&self.opts, &self.bg)?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
    }
}

/// One range's final-round pages, copied into the arena while the target is stopped.
struct HeldSegment {
    idx: usize,
    runs: Vec<(u64, u64)>,
    /// Offset of its first page in the arena.
    at: usize,
}

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

/// The pre-copy rounds while the target runs: round 0 copies everything, each later round
/// what was written since the previous harvest. Paced: a round starts `interval` after the
/// previous one at the earliest, and only once the image writer has written the previous
/// rounds (the writer is the slow part; re-reading the hot set faster only costs the target
/// CPU). Calls `emit` after each round.
fn precopy(
    d: &mut Dumper,
    emit: &mut dyn FnMut(&RoundReport),
) -> Result<Vec<RoundReport>, DumpError> {
    let page = d.page;
    let mut rounds: Vec<RoundReport> = Vec::new();
    let mut last_end = Instant::now();
    for round in 0..=d.opts.rounds {
        let mut drain_ms = 0.0;
        if round > 0 {
            // The drain also makes the last pre-copy round copy at memory speed (no wait
            // for the writer), and the final round follows it at once: its dirty set is
            // what the target writes during this short round.
            let t = Instant::now();
            d.wait_writer()?;
            drain_ms = ms(t.elapsed());
            d.sleep_until(last_end + d.opts.interval)?;
        }
        if round > 0 && round == d.opts.rounds {
            let last = rounds.last().map_or(0, |r| r.bytes);
            d.prefault(last);
        }
        d.check()?;
        let t0 = Instant::now();
        let (work, new, dropped) = d.plan(round == 0)?;
        let t1 = Instant::now();
        let (c, waited) = d.copy(&work, None)?;
        last_end = Instant::now();
        let r = RoundReport {
            round,
            is_final: false,
            pages: c.pages,
            bytes: c.pages * page as u64,
            unreadable_pages: c.unreadable,
            new_ranges: new,
            dropped_ranges: dropped,
            harvest_ms: ms(t1 - t0),
            copy_ms: ms(t1.elapsed()),
            wait_ms: ms(waited),
            read_ms: c.read_ns as f64 / 1e6,
            drain_ms,
            ms: ms(t0.elapsed()),
        };
        emit(&r);
        let small = round > 0 && d.opts.until_pages.is_some_and(|n| r.pages <= n);
        rounds.push(r);
        if small {
            break;
        }
    }
    Ok(rounds)
}

/// Runs [`precopy`] on the thread `ww-dump-rounds` at `opts.priority` ([`Priority::Normal`]:
/// on the caller's thread), forwarding the round reports to `progress` on the caller's
/// thread. Lowered priority cannot be raised back without `CAP_SYS_NICE`, so it is never
/// applied to the caller's thread, which runs the final round.
fn precopy_on_worker(
    d: &mut Dumper,
    progress: &mut Option<&mut dyn FnMut(&RoundReport)>,
) -> Result<Vec<RoundReport>, DumpError> {
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
    let mut rounds = precopy_on_worker(d, &mut progress)?;
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
    let (work, new, dropped) = d.plan(false)?;
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
        round: rounds.len() as u32,
        is_final: true,
        pages: c.pages,
        bytes: c.pages * page as u64,
        unreadable_pages: c.unreadable,
        new_ranges: new,
        dropped_ranges: dropped,
        harvest_ms: ms(t1 - t0),
        copy_ms: ft.copy_ms,
        wait_ms: 0.0,
        read_ms: ft.read_ms,
        drain_ms: 0.0,
        ms: stopped_ms,
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
