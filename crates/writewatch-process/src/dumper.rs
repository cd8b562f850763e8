//! The state of one dump and its steps: planning a round (maps, registration, harvest),
//! copying it, the final round's arena, pacing and cancellation checks. The order of the
//! steps (rounds, final round, commit) is in `dump.rs`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::attach::Attached;
use crate::bgwrite::{BgWriter, WRITER_FAILED};
use crate::copy::{normalize, push_run, read_chunks, read_into, Copied, CHUNK_PAGES};
use crate::error::{AttachError, DumpError};
use crate::maps::read_maps;
use crate::options::DumpOptions;
use crate::pieces::{reverted_cow_pages, sync, Piece};
use crate::sys;

/// The plan of one round for one piece.
pub(crate) struct Work {
    pub(crate) idx: usize,
    pub(crate) runs: Vec<(u64, u64)>,
}

pub(crate) struct Dumper {
    pub(crate) at: Attached,
    pub(crate) bg: BgWriter,
    pub(crate) pieces: Vec<Piece>,
    pub(crate) next_id: u64,
    pub(crate) page: usize,
    pub(crate) opts: DumpOptions,
    pub(crate) untracked: usize,
    /// Time in `plan` re-reading maps and registering / harvesting, since the last reset.
    pub(crate) maps_time: Duration,
    pub(crate) harvest_time: Duration,
    /// The final round's pages, back to back: pre-faulted before the last pre-copy round
    /// (sized like that round), so the freeze copies into memory already mapped.
    pub(crate) arena: Vec<u8>,
}

/// The cheap part of `check` (atomics only), also run between chunks: cancelled, `SIGINT`,
/// or the writer failed.
pub(crate) fn stop_asked(opts: &DumpOptions, bg: &BgWriter) -> Result<(), DumpError> {
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

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Dumper {
    pub(crate) fn pid(&self) -> u32 {
        self.at.pid()
    }

    pub(crate) fn check(&self) -> Result<(), DumpError> {
        stop_asked(&self.opts, &self.bg)?;
        if !self.at.alive() {
            return Err(DumpError::Exited(self.pid()));
        }
        self.check_exec()
    }

    /// The address space the userfaultfd tracks is still the target's: after an `execve`
    /// the old one is gone, its harvests would report nothing, and the maps are the new
    /// program's. Checked every round and, with every thread stopped, in the final round.
    pub(crate) fn check_exec(&self) -> Result<(), DumpError> {
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
    ///
    /// `skip_hot` (pre-copy rounds but the last): leave each piece's hot pages out of the
    /// harvest (`hot.rs`); otherwise walk every page.
    pub(crate) fn plan(
        &mut self,
        first: bool,
        skip_hot: bool,
    ) -> Result<(Vec<Work>, usize, usize), DumpError> {
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
                let r: Result<u64, crate::error::Errno> = if is_fresh {
                    Ok(0)
                } else {
                    let walk = if skip_hot {
                        p.heat.walk(p.pages(page))
                    } else {
                        vec![(0, p.pages(page))]
                    };
                    walk.iter().try_fold(0, |n, &(f, c)| {
                        let (a, b) = (
                            p.start + f as usize * page,
                            p.start + (f + c) as usize * page,
                        );
                        let got = self.at.pagemap().harvest(a, b, |x, y| {
                            push_run(&mut runs, p.start, page, x.max(a), y.min(b));
                        })?;
                        Ok(n + got)
                    })
                };
                if r.is_ok() && !is_fresh {
                    normalize(&mut runs);
                    if skip_hot {
                        p.heat.update(&runs);
                    } else {
                        p.heat.cool(&runs);
                    }
                }
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
    pub(crate) fn copy(
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
                &mut |bytes| bg.buffer(bytes),
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
    pub(crate) fn send_held(&mut self, held: Vec<HeldSegment>) {
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
    pub(crate) fn prefault(&mut self, bytes: u64) {
        let want = bytes.min(self.opts.final_buffer_bytes as u64) as usize;
        if self.arena.len() < want {
            // Non-zero: memset writes every page now (a zeroed allocation would be mapped
            // lazily and fault during the freeze). Every byte is overwritten by the copy.
            self.arena = vec![1u8; want];
        }
    }

    /// Waits until the image writer has written everything queued (pacing), honouring
    /// cancellation meanwhile.
    pub(crate) fn wait_writer(&self) -> Result<(), DumpError> {
        self.bg.drain_checked(&|| self.check())
    }

    /// Sleeps until `until`, checking for cancellation every 50 ms.
    pub(crate) fn sleep_until(&self, until: Instant) -> Result<(), DumpError> {
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
pub(crate) struct HeldSegment {
    pub(crate) idx: usize,
    pub(crate) runs: Vec<(u64, u64)>,
    /// Offset of its first page in the arena.
    pub(crate) at: usize,
}
