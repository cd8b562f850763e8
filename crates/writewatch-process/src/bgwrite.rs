//! The image writer thread (`ww-dump-writer`): rounds hand it the pages they copied and go
//! on; it writes them into the range stores (one segment per changed range per round, each
//! `fdatasync`ed by the store) while the next round harvests. A round therefore lasts as
//! long as its harvest and its `process_vm_readv`, not as long as the disk: the last
//! pre-copy round is short, and so is the final round's dirty set.
//!
//! Memory is bounded: pages queued and not yet written count against `bound` bytes, and a
//! round that would exceed it waits for the writer ([`BgWriter::send_chunk`]). The final
//! round may bypass the bound ([`BgWriter::send_chunk_unbounded`]): its pages are already
//! in memory (copied while the target was stopped, bounded by `final_buffer_bytes`).
//!
//! Order is kept: the messages of one channel are written in the order sent, so a range
//! added, written and dropped is handled as the dump saw it. The first error stops the
//! writing (later messages are drained, their memory released) and is returned by
//! [`BgWriter::finish`] with the [`ImageWriter`]; the dump checks [`BgWriter::failed`]
//! between ranges and rounds so it stops early.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use writewatch_checkpoint::image::ImageWriter;
use writewatch_checkpoint::Geometry;

use crate::error::DumpError;
use crate::options::Priority;

/// What the writer is told, in order.
enum Msg {
    /// Create range `id`'s store.
    Add { id: u64, page_count: u64 },
    /// Forget range `id` (unmapped).
    Drop(u64),
    /// A segment of range `id` (`[start, end)` in the target, for errors): its chunks follow,
    /// then `End`.
    Begin {
        id: u64,
        start: usize,
        end: usize,
        page_count: u64,
    },
    /// Pages of the open segment: page numbers and their bytes.
    Chunk { pages: Vec<u64>, data: Vec<u8> },
    /// Commit the open segment.
    End,
    /// Answer once everything before has been written.
    Barrier(SyncSender<()>),
}

/// Bytes queued and not yet written; the pause flag; written chunks' buffers for reuse.
#[derive(Default)]
struct Credits {
    queued: Mutex<usize>,
    freed: Condvar,
    paused: Mutex<bool>,
    resumed: Condvar,
    /// Buffers of written chunks, mapped and faulted in already: a round reads into them
    /// instead of a fresh allocation (whose pages the kernel would zero and fault in again
    /// for every chunk; one chunk each, at most the bound's worth).
    pool: Mutex<Vec<Vec<u8>>>,
    /// Bytes of one chunk's buffer; most buffers kept.
    chunk: usize,
    pool_cap: usize,
}

impl Credits {
    fn recycle(&self, data: Vec<u8>) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < self.pool_cap && data.capacity() >= self.chunk {
            pool.push(data);
        }
    }
}

/// Cumulative figures of the writer thread.
#[derive(Default)]
pub(crate) struct WriterTimes {
    /// Nanoseconds pushing pages into segments (checksums, `write`).
    pub push_ns: AtomicU64,
    /// Nanoseconds committing segments (the store's `fdatasync`s and renames).
    pub commit_ns: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Segments committed.
    pub segments: AtomicU64,
}

/// The placeholder error `check` returns when the writer failed; replaced by the writer's
/// own error.
pub(crate) const WRITER_FAILED: &str = "the image writer failed";

/// The handle of the writer thread.
pub(crate) struct BgWriter {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<(ImageWriter, Option<DumpError>)>>,
    credits: Arc<Credits>,
    failed: Arc<AtomicBool>,
    /// Set by the thread when it ends (normally or by a panic): a waiting sender stops.
    gone: Arc<AtomicBool>,
    pub times: Arc<WriterTimes>,
    bound: usize,
    /// The writer thread's id (0 until it started).
    tid: Arc<AtomicI32>,
}

/// Sets `gone` and wakes waiting senders when the writer thread ends, even by a panic.
struct GoneGuard(Arc<AtomicBool>, Arc<Credits>);

impl Drop for GoneGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        self.1.freed.notify_all();
    }
}

impl BgWriter {
    /// Starts the writer thread, which owns `writer` until [`finish`](Self::finish).
    /// Its CPU priority is `prio`'s (for background work: the target and the rounds come
    /// first).
    pub(crate) fn start(
        writer: ImageWriter,
        page: usize,
        bound: usize,
        prio: Priority,
    ) -> Result<Self, DumpError> {
        let (tx, rx) = sync_channel::<Msg>(4096);
        let chunk = crate::copy::CHUNK_PAGES * page;
        let credits = Arc::new(Credits {
            chunk,
            pool_cap: (bound / chunk).max(1),
            ..Credits::default()
        });
        let failed = Arc::new(AtomicBool::new(false));
        let gone = Arc::new(AtomicBool::new(false));
        let times = Arc::new(WriterTimes::default());
        let tid = Arc::new(AtomicI32::new(0));
        let (c, f, g, t) = (credits.clone(), failed.clone(), gone.clone(), times.clone());
        let tid2 = tid.clone();
        let thread = std::thread::Builder::new()
            .name("ww-dump-writer".into())
            .spawn(move || {
                let _guard = GoneGuard(g, c.clone());
                tid2.store(crate::sys::gettid(), Ordering::SeqCst);
                prio.apply_here(true);
                run(writer, page, &rx, &c, &f, &t)
            })
            .map_err(|e| {
                DumpError::Invalid(format!("cannot start the image writer thread: {e}"))
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            credits,
            failed,
            gone,
            times,
            bound: bound.max(1),
            tid,
        })
    }

    /// Whether the writer has failed (its error comes with [`finish`](Self::finish)).
    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed) || self.gone.load(Ordering::Relaxed)
    }

    fn send(&self, m: Msg) {
        // A send fails only when the thread is gone: `finish` reports why.
        if let Some(tx) = &self.tx {
            let _ = tx.send(m);
        }
    }

    pub(crate) fn add_range(&self, id: u64, page_count: u64) {
        self.send(Msg::Add { id, page_count });
    }

    pub(crate) fn drop_range(&self, id: u64) {
        self.send(Msg::Drop(id));
    }

    pub(crate) fn begin(&self, id: u64, start: usize, end: usize, page_count: u64) {
        self.send(Msg::Begin {
            id,
            start,
            end,
            page_count,
        });
    }

    pub(crate) fn end(&self) {
        self.send(Msg::End);
    }

    /// A buffer for a chunk of `bytes` bytes: a written chunk's when one is large enough
    /// (its content is overwritten by the read), else a new one.
    pub(crate) fn buffer(&self, bytes: usize) -> Vec<u8> {
        let mut pool = self.credits.pool.lock().unwrap_or_else(|e| e.into_inner());
        match pool.iter().position(|b| b.capacity() >= bytes) {
            Some(i) => pool.swap_remove(i),
            // A whole chunk's capacity (only what is read is touched), so it can be reused.
            None => Vec::with_capacity(bytes.max(self.credits.chunk)),
        }
    }

    /// Fills the pool with buffers already faulted in for about `bytes` of chunks (at most
    /// the bound): the last pre-copy round reads into them without page faults.
    pub(crate) fn prefill(&self, bytes: usize) {
        let c = &self.credits;
        let want = bytes.min(self.bound).div_ceil(c.chunk).min(c.pool_cap);
        let have = c.pool.lock().unwrap_or_else(|e| e.into_inner()).len();
        // Non-zero: memset writes every page now. Every byte is overwritten by a read.
        let fresh: Vec<Vec<u8>> = (have..want).map(|_| vec![1u8; c.chunk]).collect();
        c.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(fresh);
    }

    /// Queues a chunk, first waiting while the queued bytes would exceed the bound (unless
    /// nothing is queued). Returns the time waited.
    pub(crate) fn send_chunk(&self, pages: Vec<u64>, data: Vec<u8>) -> Duration {
        let t = Instant::now();
        let n = data.len();
        {
            let mut q = self
                .credits
                .queued
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            while *q > 0 && *q + n > self.bound && !self.gone.load(Ordering::SeqCst) {
                // Timed: the thread's end is also signalled, this is a second safety net.
                q = self
                    .credits
                    .freed
                    .wait_timeout(q, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            *q += n;
        }
        self.send(Msg::Chunk { pages, data });
        t.elapsed()
    }

    /// Pauses (or resumes) the writing between chunks: the final round pauses it so the
    /// writer's checksums and writes do not compete for the CPU with the freeze.
    pub(crate) fn pause(&self, on: bool) {
        *self
            .credits
            .paused
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = on;
        self.credits.resumed.notify_all();
    }

    /// Queues a chunk already in memory, whatever the bound.
    pub(crate) fn send_chunk_unbounded(&self, pages: Vec<u64>, data: Vec<u8>) {
        *self
            .credits
            .queued
            .lock()
            .unwrap_or_else(|e| e.into_inner()) += data.len();
        self.send(Msg::Chunk { pages, data });
    }

    /// Waits until everything queued so far is written (or the writer failed).
    pub(crate) fn drain(&self) {
        self.pause(false);
        let (tx, rx) = sync_channel(1);
        self.send(Msg::Barrier(tx));
        // Err: the thread is gone (its sender dropped).
        let _ = rx.recv();
    }

    /// Like [`drain`](Self::drain), but calls `check` every 50 ms meanwhile and returns its
    /// error (cancellation, target gone) without waiting further.
    pub(crate) fn drain_checked(
        &self,
        check: &dyn Fn() -> Result<(), DumpError>,
    ) -> Result<(), DumpError> {
        use std::sync::mpsc::RecvTimeoutError;
        self.pause(false);
        let (tx, rx) = sync_channel(1);
        self.send(Msg::Barrier(tx));
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                // Disconnected: the thread is gone; `check` / `finish` say why.
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return check(),
                Err(RecvTimeoutError::Timeout) => check()?,
            }
        }
    }

    /// Best effort: gives the writer thread an ordinary priority at nice `nice` (the
    /// final round's unbuffered writes, while the target is stopped). Needs
    /// `CAP_SYS_NICE` when it raises the priority; otherwise the writer stays where it is.
    pub(crate) fn raise(&self, nice: i32) {
        let tid = self.tid.load(Ordering::SeqCst);
        if tid > 0 && !crate::sys::restore_thread(tid, nice) {
            tracing::debug!("the image writer keeps its low priority during the freeze");
        }
    }

    /// Ends the thread after everything queued and returns the image writer, or the first
    /// error.
    pub(crate) fn finish(&mut self) -> Result<ImageWriter, DumpError> {
        self.pause(false);
        drop(self.tx.take());
        let Some(thread) = self.thread.take() else {
            return Err(DumpError::Invalid(
                "the image writer already finished".into(),
            ));
        };
        match thread.join() {
            Ok((w, None)) => Ok(w),
            Ok((_, Some(e))) => Err(e),
            Err(_) => Err(DumpError::Invalid(
                "the image writer thread panicked; the image directory keeps its previous commit"
                    .into(),
            )),
        }
    }
}

impl Drop for BgWriter {
    /// Without [`finish`](BgWriter::finish) (the dump failed): the writer discards what is
    /// still queued instead of writing it (nothing of this dump will be committed).
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.failed.store(true, Ordering::SeqCst);
        }
        self.pause(false);
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn release(c: &Credits, n: usize) {
    let mut q = c.queued.lock().unwrap_or_else(|e| e.into_inner());
    *q = q.saturating_sub(n);
    c.freed.notify_all();
}

/// The thread: writes until the channel closes; after an error only drains.
fn run(
    mut writer: ImageWriter,
    page: usize,
    rx: &Receiver<Msg>,
    credits: &Credits,
    failed: &AtomicBool,
    times: &WriterTimes,
) -> (ImageWriter, Option<DumpError>) {
    let mut err: Option<DumpError> = None;
    let image_err = |w: &ImageWriter, source| DumpError::Image {
        dir: w.dir().to_path_buf(),
        source,
    };
    while let Ok(m) = rx.recv() {
        match m {
            Msg::Chunk { data, .. } => release(credits, data.len()), // segment failed earlier
            Msg::End => {}
            Msg::Barrier(tx) => {
                let _ = tx.send(());
            }
            _ if err.is_some() || failed.load(Ordering::Relaxed) => {}
            Msg::Add { id, page_count } => {
                if let Err(e) = writer.add_range(id, page as u64, page_count) {
                    err = Some(image_err(&writer, e));
                }
            }
            Msg::Drop(id) => writer.drop_range(id),
            Msg::Begin {
                id,
                start,
                end,
                page_count,
            } => {
                let geo = Geometry {
                    page_size: page,
                    page_count,
                };
                if let Err(e) = segment(&mut writer, id, geo, rx, credits, times, failed) {
                    err = Some(DumpError::Store {
                        start,
                        end,
                        source: e,
                    });
                }
            }
        }
        if err.is_some() {
            failed.store(true, Ordering::Relaxed);
        }
    }
    (writer, err)
}

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// Waits while the dump has paused the writer (the final round's freeze). Timed: the pause
/// lasts one freeze, and `finish` / `drain` / drop lift it.
fn wait_unpaused(c: &Credits) {
    let mut p = c.paused.lock().unwrap_or_else(|e| e.into_inner());
    while *p {
        p = c
            .resumed
            .wait_timeout(p, Duration::from_millis(100))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Writes one segment: its chunks until `End`, then the commit.
fn segment(
    writer: &mut ImageWriter,
    id: u64,
    geo: Geometry,
    rx: &Receiver<Msg>,
    credits: &Credits,
    times: &WriterTimes,
    abandoned: &AtomicBool,
) -> Result<(), BoxErr> {
    let store = writer
        .store(id)
        .ok_or_else(|| BoxErr::from(format!("range {id} has no store")))?;
    let mut seg = store.begin_next(geo)?;
    let page = geo.page_size;
    loop {
        match rx.recv() {
            Ok(Msg::Chunk { pages, data }) => {
                wait_unpaused(credits);
                if abandoned.load(Ordering::Relaxed) {
                    release(credits, data.len());
                    return Err("image writer: the dump was abandoned".into());
                }
                let t = Instant::now();
                let r = pages
                    .iter()
                    .enumerate()
                    .try_for_each(|(k, &i)| seg.push_page(i, &data[k * page..(k + 1) * page]));
                times
                    .push_ns
                    .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                times.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                release(credits, data.len());
                credits.recycle(data);
                r?;
            }
            Ok(Msg::End) => break,
            Ok(Msg::Barrier(tx)) => {
                let _ = tx.send(());
            }
            Ok(_) => return Err("image writer: segment not ended".into()),
            Err(_) => return Err("image writer: the dump ended inside a segment".into()),
        }
    }
    let t = Instant::now();
    seg.commit()?;
    times
        .commit_ns
        .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    times.segments.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
