//! Incremental pre-copy dumps: rounds while the target runs, then a short final round with
//! every thread stopped. The image is the target's memory at the freeze, exactly.
//!
//! Why exact: every piece is write-protected before its first copy, and every harvest
//! re-protects what it reports *before* the pages are read. A page not reported since its
//! last copy was not written after its last harvest, so its copy (taken after that harvest)
//! is its content at the freeze; every page written since is reported by the final harvest,
//! taken with all threads stopped, and copied before they resume.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use writewatch_checkpoint::image::ImageWriter;
use writewatch_checkpoint::Geometry;

use crate::attach::{attach, Attached};
use crate::copy::{copy_runs, normalize, push_run};
use crate::error::{AttachError, DumpError};
use crate::freeze::Frozen;
use crate::maps::read_maps;
use crate::pieces::{sync, Piece};
use crate::sys;
use crate::verify::{verify_frozen, VerifyOutcome};

/// How a dump runs.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Pre-copy rounds while the target runs (after the first full copy), before the final
    /// round. 0: the first full copy, then the final round.
    pub rounds: u32,
    /// Stop the pre-copy rounds early once a round harvests at most this many pages.
    pub until_pages: Option<u64>,
    /// Pause between rounds.
    pub interval: Duration,
    /// Leave the target stopped (`SIGSTOP`) after the final round.
    pub leave_stopped: bool,
    /// Compare the committed image with the target's memory before resuming it.
    pub verify: bool,
    /// Final-round pages are copied into memory up to this many bytes, so the target can
    /// resume before they are written to disk; beyond it they are written while it is stopped.
    pub final_buffer_bytes: usize,
    /// Set to stop the dump at the next check (SIGINT handlers).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for DumpOptions {
    fn default() -> Self {
        Self {
            rounds: 3,
            until_pages: None,
            interval: Duration::from_millis(100),
            leave_stopped: false,
            verify: false,
            final_buffer_bytes: 256 << 20,
            cancel: None,
        }
    }
}

/// One round's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    /// Round number (0: the first full copy).
    pub round: u32,
    /// Whether this is the final (stopped) round.
    pub is_final: bool,
    /// Pages copied.
    pub pages: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Pages that could not be read (recorded as zero).
    pub unreadable_pages: u64,
    /// Ranges that appeared (copied whole) / disappeared this round.
    pub new_ranges: usize,
    /// Ranges dropped (unmapped, moved, replaced).
    pub dropped_ranges: usize,
    /// Time to re-read maps, register and harvest.
    pub harvest_ms: f64,
    /// Time to copy (and, except in a buffered final round, to write).
    pub copy_ms: f64,
    /// Of `copy_ms`, the time spent reading the target's memory (`process_vm_readv`).
    pub read_ms: f64,
    /// The whole round.
    pub ms: f64,
}

/// A mapping the dump does not track, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// First address.
    pub start: usize,
    /// End.
    pub end: usize,
    /// Path or pseudo-path.
    pub path: String,
    /// Why.
    pub reason: &'static str,
}

/// What a dump did.
#[derive(Debug, Clone, Serialize)]
pub struct DumpReport {
    /// The target.
    pub pid: u32,
    /// The image directory.
    pub dir: PathBuf,
    /// The image generation committed.
    pub generation: u64,
    /// Ranges in the image.
    pub ranges: usize,
    /// Bytes of address space in the image.
    pub range_bytes: u64,
    /// Every round, the final one last.
    pub rounds: Vec<RoundReport>,
    /// Time the target was stopped for the final round until its pages were copied: what it
    /// is stopped for without `verify` / `leave_stopped`.
    pub freeze_ms: f64,
    /// Time the target was actually held stopped by the dump (includes the write when the
    /// final round exceeded the buffer, and the verification).
    pub stopped_ms: f64,
    /// Threads stopped.
    pub threads: usize,
    /// The whole dump.
    pub total_ms: f64,
    /// The verification's result, when asked.
    pub verified: Option<VerifyOutcome>,
    /// Whether the userfaultfd is `UFFD_USER_MODE_ONLY`.
    pub user_mode_only: bool,
    /// Ranges registration refused (copied whole every round instead).
    pub untracked_ranges: usize,
    /// Writable-looking mappings not dumped, and why.
    pub skipped: Vec<Skipped>,
}

/// Makes `SIGINT` and `SIGTERM` stop a running [`dump`] at its next check (between rounds
/// and between ranges) with [`DumpError::Interrupted`] instead of killing the process: the
/// target is resumed and untracked, and the image keeps its previous commit. Without it a
/// `SIGINT` kills the dumper, which the target also survives (the kernel detaches it and
/// closes the userfaultfd), silently.
pub fn catch_sigint() -> Result<(), crate::Errno> {
    sys::catch_sigint().map_err(|e| crate::Errno::from_raw(e as i32))
}

/// The plan of one round for one piece.
struct Work {
    idx: usize,
    runs: Vec<(u64, u64)>,
}

struct Dumper<'p> {
    at: Attached,
    writer: ImageWriter,
    pieces: Vec<Piece>,
    next_id: u64,
    page: usize,
    opts: DumpOptions,
    progress: Option<&'p mut dyn FnMut(&RoundReport)>,
    untracked: usize,
    /// Ranges added whose store is not created yet.
    pending_stores: Vec<(u64, u64)>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Dumper<'_> {
    fn pid(&self) -> u32 {
        self.at.pid()
    }

    fn check(&self) -> Result<(), DumpError> {
        let cancelled = self
            .opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed));
        if cancelled || sys::SIGINT_SEEN.load(Ordering::Relaxed) {
            return Err(DumpError::Interrupted);
        }
        if !self.at.alive() {
            return Err(DumpError::Exited(self.pid()));
        }
        Ok(())
    }

    fn image_err(&self, source: writewatch_checkpoint::image::ImageError) -> DumpError {
        DumpError::Image {
            dir: self.writer.dir().to_path_buf(),
            source,
        }
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
            let maps = read_maps(pid).map_err(|_| DumpError::Exited(pid))?;
            let s = sync(&mut self.pieces, &maps, &mut self.next_id);
            dropped += s.dropped.len();
            for id in s.dropped {
                self.writer.drop_range(id);
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
                // The store is created later (`ensure_stores`): in the final round, after
                // the target resumes.
                self.pending_stores.push((p.id, p.pages(self.page)));
                fresh.insert(p.id);
                new += 1;
                self.pieces.push(p);
            }
            self.pieces.sort_by_key(|p| p.start);
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
            if replaced.is_empty() {
                break;
            }
            self.pieces.retain(|p| !replaced.contains(&p.id));
            for id in replaced {
                self.writer.drop_range(id);
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

    /// Creates the stores of ranges added since the last call (still present).
    fn ensure_stores(&mut self) -> Result<(), DumpError> {
        for (id, pages) in std::mem::take(&mut self.pending_stores) {
            if self.pieces.iter().any(|p| p.id == id) {
                if let Err(e) = self.writer.add_range(id, self.page as u64, pages) {
                    return Err(self.image_err(e));
                }
            }
        }
        Ok(())
    }

    /// Copies the planned runs straight into the pieces' stores.
    fn write(&mut self, work: &[Work]) -> Result<crate::copy::Copied, DumpError> {
        self.ensure_stores()?;
        let mut total = crate::copy::Copied::default();
        let pid = self.pid();
        for w in work {
            self.check()?;
            let p = self.pieces[w.idx].clone();
            let geo = Geometry {
                page_size: self.page,
                page_count: p.pages(self.page),
            };
            let store_err = |e: Box<dyn std::error::Error + Send + Sync>| DumpError::Store {
                start: p.start,
                end: p.end,
                source: e,
            };
            let store = self
                .writer
                .store(p.id)
                .ok_or_else(|| DumpError::Invalid(format!("range {} has no store", p.id)))?;
            let mut seg = store.begin_next(geo).map_err(|e| store_err(Box::new(e)))?;
            let c = copy_runs(pid, p.start, self.page, &w.runs, &mut |i, b| {
                seg.push_page(i, b)
            })
            .map_err(|e| store_err(Box::new(e)))?;
            seg.commit().map_err(|e| store_err(Box::new(e)))?;
            total.pages += c.pages;
            total.unreadable += c.unreadable;
            total.read_ns += c.read_ns;
        }
        Ok(total)
    }

    fn report(&mut self, r: RoundReport) -> RoundReport {
        if let Some(p) = self.progress.as_mut() {
            p(&r);
        }
        r
    }
}

/// For a private file piece: re-reads which pages are COW copies (after the harvest, before
/// the copy), adds to `runs` the pages that were COW copies last time and no longer are
/// (dropped by `MADV_DONTNEED`: their content reverted to the file's), and remembers the new
/// set. A COW copy swapped out also leaves the set: reported again, an over-report.
fn reverted_cow_pages(
    pm: &writewatch_core::remote::RemotePagemap,
    p: &mut Piece,
    page: usize,
    runs: &mut Vec<(u64, u64)>,
) -> Result<(), crate::Errno> {
    let n = p.pages(page) as usize;
    let mut now = vec![0u64; n.div_ceil(64)];
    pm.anon_present(p.start, p.end, |a, b| {
        let (a, b) = (a.max(p.start), b.min(p.end));
        for i in (a - p.start) / page..(b - p.start).div_ceil(page) {
            now[i / 64] |= 1 << (i % 64);
        }
    })?;
    if let Some(before) = &p.cow {
        for (w, (&old, &new)) in before.iter().zip(&now).enumerate() {
            let gone = old & !new;
            for bit in 0..64 {
                if gone & (1 << bit) != 0 {
                    runs.push(((w * 64 + bit) as u64, 1));
                }
            }
        }
    }
    p.cow = Some(now);
    Ok(())
}

/// The final round's pages, copied while the target is stopped.
type Buffered = Vec<(usize, Vec<u64>, Vec<u8>)>;

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
    let mut d = Dumper {
        at,
        writer,
        pieces: Vec::new(),
        next_id: 0,
        page,
        opts,
        progress,
        untracked: 0,
        pending_stores: Vec::new(),
    };
    let mut rounds = Vec::new();
    for round in 0..=d.opts.rounds {
        if round > 0 {
            std::thread::sleep(d.opts.interval);
        }
        d.check()?;
        let t0 = Instant::now();
        let (work, new, dropped) = d.plan(round == 0)?;
        let t1 = Instant::now();
        let c = d.write(&work)?;
        let r = d.report(RoundReport {
            round,
            is_final: false,
            pages: c.pages,
            bytes: c.pages * page as u64,
            unreadable_pages: c.unreadable,
            new_ranges: new,
            dropped_ranges: dropped,
            harvest_ms: ms(t1 - t0),
            copy_ms: ms(t1.elapsed()),
            read_ms: c.read_ns as f64 / 1e6,
            ms: ms(t0.elapsed()),
        });
        let small = round > 0 && d.opts.until_pages.is_some_and(|n| r.pages <= n);
        rounds.push(r);
        if small {
            break;
        }
    }
    // The final round.
    d.check()?;
    let t0 = Instant::now();
    let frozen = Frozen::freeze(pid)?;
    let threads = frozen.threads();
    let (work, new, dropped) = d.plan(false)?;
    let t1 = Instant::now();
    let bytes: u64 = work
        .iter()
        .map(|w| w.runs.iter().map(|r| r.1).sum::<u64>() * page as u64)
        .sum();
    let mut c = crate::copy::Copied::default();
    let freeze_ms;
    let hold = d.opts.verify || d.opts.leave_stopped;
    let held = if bytes <= d.opts.final_buffer_bytes as u64 {
        let mut buf: Buffered = Vec::new();
        for w in &work {
            let p = &d.pieces[w.idx];
            let n: u64 = w.runs.iter().map(|r| r.1).sum();
            let mut idx = Vec::with_capacity(n as usize);
            let mut data = Vec::with_capacity(n as usize * page);
            let cc =
                copy_runs::<std::convert::Infallible>(pid, p.start, page, &w.runs, &mut |i, b| {
                    idx.push(i);
                    data.extend_from_slice(b);
                    Ok(())
                })
                .unwrap_or_default();
            c.pages += cc.pages;
            c.unreadable += cc.unreadable;
            c.read_ns += cc.read_ns;
            buf.push((w.idx, idx, data));
        }
        freeze_ms = ms(t0.elapsed());
        let frozen_until_written = if hold {
            Some(frozen)
        } else {
            drop(frozen);
            None
        };
        d.ensure_stores()?;
        for (idx, pages, data) in buf {
            let p = d.pieces[idx].clone();
            let geo = Geometry {
                page_size: page,
                page_count: p.pages(page),
            };
            let store_err = |e: Box<dyn std::error::Error + Send + Sync>| DumpError::Store {
                start: p.start,
                end: p.end,
                source: e,
            };
            let store = d
                .writer
                .store(p.id)
                .ok_or_else(|| DumpError::Invalid("no store".into()))?;
            let mut seg = store.begin_next(geo).map_err(|e| store_err(Box::new(e)))?;
            for (k, i) in pages.iter().enumerate() {
                seg.push_page(*i, &data[k * page..(k + 1) * page])
                    .map_err(|e| store_err(Box::new(e)))?;
            }
            seg.commit().map_err(|e| store_err(Box::new(e)))?;
        }
        frozen_until_written
    } else {
        c = d.write(&work)?;
        freeze_ms = ms(t0.elapsed());
        if hold {
            Some(frozen)
        } else {
            drop(frozen);
            None
        }
    };
    let held = held.map(|mut f| {
        if d.opts.leave_stopped {
            f.leave_stopped();
        }
        f
    });
    finish(
        d,
        rounds,
        c,
        (new, dropped),
        (t0, t1),
        freeze_ms,
        held,
        threads,
        t_start,
        skipped,
    )
}

#[allow(clippy::too_many_arguments)]
fn finish(
    mut d: Dumper<'_>,
    mut rounds: Vec<RoundReport>,
    c: crate::copy::Copied,
    (new, dropped): (usize, usize),
    (t0, t1): (Instant, Instant),
    freeze_ms: f64,
    frozen: Option<Frozen>,
    threads: usize,
    t_start: Instant,
    skipped: Vec<Skipped>,
) -> Result<DumpReport, DumpError> {
    let page = d.page;
    let ranges: Vec<_> = d.pieces.iter().map(Piece::image_range).collect();
    let index = d.writer.commit(ranges).map_err(|e| d.image_err(e))?;
    let verified = match (&frozen, d.opts.verify) {
        (Some(_), true) => Some(verify_frozen(d.pid(), &mut d.writer, &index)),
        _ => None,
    };
    let stopped_ms = ms(t0.elapsed());
    drop(frozen); // resumes, or leaves stopped with SIGSTOP
    let r = d.report(RoundReport {
        round: rounds.len() as u32,
        is_final: true,
        pages: c.pages,
        bytes: c.pages * page as u64,
        unreadable_pages: c.unreadable,
        new_ranges: new,
        dropped_ranges: dropped,
        harvest_ms: ms(t1 - t0),
        copy_ms: freeze_ms - ms(t1 - t0),
        read_ms: c.read_ns as f64 / 1e6,
        ms: stopped_ms,
    });
    rounds.push(r);
    Ok(DumpReport {
        pid: d.pid(),
        dir: d.writer.dir().to_path_buf(),
        generation: index.generation,
        ranges: index.ranges.len(),
        range_bytes: index.ranges.iter().map(|r| r.len).sum(),
        rounds,
        freeze_ms,
        stopped_ms,
        threads,
        total_ms: ms(t_start.elapsed()),
        verified,
        user_mode_only: d.at.user_mode_only(),
        untracked_ranges: d.untracked,
        skipped,
    })
}
