//! Streaming segment writer: pages in ascending order in, one segment file
//! out, with bounded memory (two I/O buffers plus one run buffer when
//! compressing) and large sequential writes, optionally on a background
//! thread.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::error::{IoContext, IoError, WriteError};
use crate::files::TempFile;
use crate::format::{
    encode_index, is_zero, lz4_len_plausible, max_run_bytes, RunEntry, RunKind, SegmentFooter,
    SegmentHeader, FLAG_BASE, FLAG_COMPRESSED, FOOTER_LEN, HEADER_LEN,
};
use crate::progress::{Progress, ProgressFn};
use crate::remote::upload::ObjectSink;
use crate::sys;

/// Per-run compression of page data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Store pages raw (default).
    #[default]
    None,
    /// Compress each run with lz4 (block format, `lz4_flex`); a run that does
    /// not shrink is stored raw.
    Lz4,
}

/// Tuning of the segment writer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Per-run compression (default: none).
    pub compression: Compression,
    /// Size of each of the two I/O buffers (default 4 MiB, minimum 1 MiB or
    /// one page). Writes to the file are this large except the last one.
    pub buffer_size: usize,
    /// Do the `write` calls on a background thread while pages are being
    /// gathered (default: true).
    pub background: bool,
    /// Start asynchronous writeback after each buffer (`sync_file_range`) so
    /// the final `fdatasync` is short (default: true).
    pub early_writeback: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            compression: Compression::None,
            buffer_size: 4 << 20,
            background: true,
            early_writeback: true,
        }
    }
}

type Returned = Result<Vec<u8>, io::Error>;

enum Sink {
    Direct {
        file: File,
        pos: u64,
        writeback: bool,
    },
    Background {
        tx: Option<SyncSender<(Vec<u8>, usize)>>,
        rx: Receiver<Returned>,
        handle: Option<JoinHandle<File>>,
        in_flight: usize,
    },
    /// A multipart upload to object storage.
    Object(Box<ObjectSink>),
    Done,
}

fn write_chunk(file: &mut File, pos: u64, data: &[u8], writeback: bool) -> io::Result<()> {
    file.write_all(data)?;
    if writeback && !data.is_empty() {
        // A hint: failure (e.g. on filesystems without support) is harmless.
        let _ = sys::start_writeback(file, pos, data.len() as u64);
    }
    Ok(())
}

/// A finished temporary segment file: all bytes written, not yet synced.
#[derive(Debug)]
pub(crate) struct FinishedSegment {
    pub(crate) temp: TempFile,
    /// The local file (`None` for an uploaded object).
    pub(crate) file: Option<File>,
    /// The uploaded object's (name, nonce) (`None` for a local file).
    pub(crate) object: Option<(String, u64)>,
    pub(crate) header: SegmentHeader,
    pub(crate) footer: SegmentFooter,
    pub(crate) footer_crc: u32,
    pub(crate) file_len: u64,
}

struct CurRun {
    first_page: u64,
    count: u64,
    data_offset: u64,
    zero: bool,
    crc: u32,
}

/// Builds one segment file (crate-private engine behind
/// [`SegmentWriter`](crate::SegmentWriter)).
pub(crate) struct SegmentBuilder {
    temp: TempFile,
    header: SegmentHeader,
    ps: usize,
    page_count: u64,
    base: bool,
    compression: Compression,
    sink: Sink,
    buf: Vec<u8>,
    filled: usize,
    free: Vec<Vec<u8>>,
    data_end: u64,
    runs: Vec<RunEntry>,
    cur: Option<CurRun>,
    run_buf: Vec<u8>,
    lz4_out: Vec<u8>,
    page_buf: Vec<u8>,
    next_page: u64,
    data_pages: u64,
    zero_pages: u64,
    pages_done: u64,
    pages_total: Option<u64>,
    progress: Option<ProgressFn>,
    failed: bool,
}

impl SegmentBuilder {
    /// Creates the temporary file (0600) and the buffers.
    pub(crate) fn create(
        temp_path: PathBuf,
        header: SegmentHeader,
        opts: &WriterOptions,
        progress: Option<ProgressFn>,
        pages_total: Option<u64>,
    ) -> Result<SegmentBuilder, WriteError> {
        Self::create_with(temp_path, header, opts, progress, pages_total, None)
    }

    /// Like [`create`](Self::create), but streaming into a multipart upload (`object`)
    /// instead of a temporary file.
    pub(crate) fn create_upload(
        object: ObjectSink,
        header: SegmentHeader,
        opts: &WriterOptions,
        progress: Option<ProgressFn>,
        pages_total: Option<u64>,
    ) -> Result<SegmentBuilder, WriteError> {
        let label = object.display();
        Self::create_with(label, header, opts, progress, pages_total, Some(object))
    }

    fn create_with(
        temp_path: PathBuf,
        mut header: SegmentHeader,
        opts: &WriterOptions,
        progress: Option<ProgressFn>,
        pages_total: Option<u64>,
        object: Option<ObjectSink>,
    ) -> Result<SegmentBuilder, WriteError> {
        let ps = header.page_size as usize;
        let max_run = max_run_bytes(ps as u64) as usize;
        let buffer_size = opts.buffer_size.max(1 << 20).max(ps);
        if opts.compression == Compression::Lz4 {
            header.flags |= FLAG_COMPRESSED;
        }
        let background = opts.background && object.is_none();
        let (temp, sink) = match object {
            Some(o) => (TempFile::label(temp_path), Sink::Object(Box::new(o))),
            None => {
                let (temp, file) = TempFile::create(temp_path)?;
                let sink = Self::file_sink(&temp, file, opts, background)?;
                (temp, sink)
            }
        };
        let mut buf = vec![0u8; buffer_size];
        buf[..HEADER_LEN].copy_from_slice(&header.encode());
        let free = if background {
            vec![vec![0u8; buffer_size]]
        } else {
            Vec::new()
        };
        let (run_buf, lz4_out, page_buf) = if opts.compression == Compression::Lz4 {
            (
                Vec::with_capacity(max_run),
                vec![0u8; lz4_flex::block::get_maximum_output_size(max_run)],
                vec![0u8; ps],
            )
        } else {
            (Vec::new(), Vec::new(), Vec::new())
        };
        Ok(SegmentBuilder {
            temp,
            base: header.flags & FLAG_BASE != 0,
            page_count: header.page_count(),
            header,
            ps,
            compression: opts.compression,
            sink,
            buf,
            filled: HEADER_LEN,
            free,
            data_end: HEADER_LEN as u64,
            runs: Vec::new(),
            cur: None,
            run_buf,
            lz4_out,
            page_buf,
            next_page: 0,
            data_pages: 0,
            zero_pages: 0,
            pages_done: 0,
            pages_total,
            progress,
            failed: false,
        })
    }

    fn file_sink(
        temp: &TempFile,
        file: File,
        opts: &WriterOptions,
        background: bool,
    ) -> Result<Sink, WriteError> {
        Ok(if background {
            let (tx, thread_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(2);
            let (thread_tx, rx) = mpsc::sync_channel::<Returned>(2);
            let writeback = opts.early_writeback;
            let mut file = file;
            let handle = std::thread::Builder::new()
                .name("ww-ckpt-writer".into())
                .spawn(move || {
                    let mut pos = 0u64;
                    for (buf, len) in thread_rx {
                        match write_chunk(&mut file, pos, &buf[..len], writeback) {
                            Ok(()) => {
                                pos += len as u64;
                                if thread_tx.send(Ok(buf)).is_err() {
                                    break;
                                }
                            }
                            Err(e) => {
                                let _ = thread_tx.send(Err(e));
                                break;
                            }
                        }
                    }
                    file
                })
                .ctx("spawn writer thread for", &temp.path)?;
            Sink::Background {
                tx: Some(tx),
                rx,
                handle: Some(handle),
                in_flight: 0,
            }
        } else {
            Sink::Direct {
                file,
                pos: 0,
                writeback: opts.early_writeback,
            }
        })
    }

    pub(crate) fn page_size(&self) -> usize {
        self.ps
    }

    fn io_err(&self, op: &'static str, e: io::Error) -> WriteError {
        WriteError::Io(IoError::new(op, &self.temp.path, e))
    }

    /// Hands the filled buffer to the sink and gets an empty one.
    fn flush_buf(&mut self) -> Result<(), WriteError> {
        if self.filled == 0 {
            return Ok(());
        }
        let len = self.filled;
        self.filled = 0;
        match &mut self.sink {
            Sink::Direct {
                file,
                pos,
                writeback,
            } => {
                let r = write_chunk(file, *pos, &self.buf[..len], *writeback);
                *pos += len as u64;
                r.map_err(|e| WriteError::Io(IoError::new("write", &self.temp.path, e)))?;
            }
            Sink::Background {
                tx, rx, in_flight, ..
            } => {
                let next = match self.free.pop() {
                    Some(b) => b,
                    None => {
                        let r = rx.recv();
                        *in_flight -= 1;
                        match r {
                            Ok(Ok(b)) => b,
                            Ok(Err(e)) => return Err(self.io_err("write", e)),
                            Err(_) => {
                                return Err(
                                    self.io_err("write", io::Error::other("writer thread died"))
                                )
                            }
                        }
                    }
                };
                let full = std::mem::replace(&mut self.buf, next);
                let sent = tx.as_ref().map(|tx| tx.send((full, len)));
                match sent {
                    Some(Ok(())) => *in_flight += 1,
                    _ => {
                        // The thread stopped after an error: fetch it.
                        let e = match rx.recv() {
                            Ok(Err(e)) => e,
                            _ => io::Error::other("writer thread stopped"),
                        };
                        return Err(self.io_err("write", e));
                    }
                }
            }
            Sink::Object(o) => {
                o.write(&self.buf[..len])
                    .map_err(|e| WriteError::Io(IoError::new("upload", &self.temp.path, e)))?;
            }
            Sink::Done => {
                return Err(self.io_err("write", io::Error::other("segment already finished")))
            }
        }
        self.report(self.data_end);
        Ok(())
    }

    /// Calls the progress callback, if any, with `bytes` written so far.
    fn report(&self, bytes: u64) {
        if let Some(p) = &self.progress {
            p(Progress {
                pages_done: self.pages_done,
                pages_total: self.pages_total,
                bytes,
            });
        }
    }

    /// Appends bytes to the output, flushing as needed.
    fn append(&mut self, mut data: &[u8]) -> Result<(), WriteError> {
        while !data.is_empty() {
            if self.filled == self.buf.len() {
                self.flush_buf()?;
            }
            let n = data.len().min(self.buf.len() - self.filled);
            self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
        }
        Ok(())
    }

    fn close_run(&mut self) -> Result<(), WriteError> {
        let Some(cur) = self.cur.take() else {
            return Ok(());
        };
        let ps = self.ps as u64;
        let entry = if cur.zero {
            RunEntry {
                first_page: cur.first_page,
                page_count: cur.count,
                data_offset: cur.data_offset,
                stored_len: 0,
                kind: RunKind::Zero,
                crc: 0,
            }
        } else if self.compression == Compression::Lz4 {
            let raw = std::mem::take(&mut self.run_buf);
            let out = std::mem::take(&mut self.lz4_out);
            let r = self.append_compressed(&raw, out);
            self.run_buf = raw;
            self.run_buf.clear();
            let (kind, len, crc) = r?;
            RunEntry {
                first_page: cur.first_page,
                page_count: cur.count,
                data_offset: cur.data_offset,
                stored_len: len,
                kind,
                crc,
            }
        } else {
            RunEntry {
                first_page: cur.first_page,
                page_count: cur.count,
                data_offset: cur.data_offset,
                stored_len: cur.count * ps,
                kind: RunKind::Raw,
                crc: cur.crc,
            }
        };
        self.runs.push(entry);
        Ok(())
    }

    /// Compresses `raw`, appends the compressed (or raw, if it does not
    /// shrink) bytes; returns (kind, stored length, crc). Gives `out` back.
    fn append_compressed(
        &mut self,
        raw: &[u8],
        mut out: Vec<u8>,
    ) -> Result<(RunKind, u64, u32), WriteError> {
        let n = match lz4_flex::block::compress_into(raw, &mut out) {
            Ok(n) if lz4_len_plausible(raw.len() as u64, n as u64) => Some(n),
            _ => None,
        };
        let r = match n {
            Some(n) => {
                let crc = crc32c::crc32c(&out[..n]);
                self.append(&out[..n])
                    .map(|()| (RunKind::Lz4, n as u64, crc))
            }
            None => {
                let crc = crc32c::crc32c(raw);
                self.append(raw)
                    .map(|()| (RunKind::Raw, raw.len() as u64, crc))
            }
        };
        self.lz4_out = out;
        let r = r?;
        self.data_end += r.1;
        Ok(r)
    }

    fn check_index(&mut self, index: u64) -> Result<(), WriteError> {
        if self.failed {
            return Err(WriteError::InvalidInput(
                "writer failed earlier; abort it".into(),
            ));
        }
        if index < self.next_page {
            return Err(WriteError::InvalidInput(format!(
                "page {index} pushed out of order (next allowed page is {})",
                self.next_page
            )));
        }
        if index >= self.page_count {
            return Err(WriteError::InvalidInput(format!(
                "page {index} is outside the region of {} pages",
                self.page_count
            )));
        }
        Ok(())
    }

    /// Records `count` zero pages from `first` (a zero run in a delta,
    /// nothing in a base).
    pub(crate) fn push_zero(&mut self, first: u64, count: u64) -> Result<(), WriteError> {
        if count == 0 {
            return Ok(());
        }
        self.check_index(first)?;
        let end = first
            .checked_add(count)
            .filter(|&e| e <= self.page_count)
            .ok_or_else(|| {
                WriteError::InvalidInput(format!("zero run {first}+{count} outside the region"))
            })?;
        let r = self.push_zero_unchecked(first, count);
        self.next_page = end;
        self.pages_done += count;
        r
    }

    fn push_zero_unchecked(&mut self, first: u64, count: u64) -> Result<(), WriteError> {
        if self.base {
            return Ok(());
        }
        if let Some(cur) = &mut self.cur {
            if cur.zero && cur.first_page + cur.count == first {
                cur.count += count;
                self.zero_pages += count;
                return Ok(());
            }
        }
        self.close_run().inspect_err(|_| self.failed = true)?;
        self.cur = Some(CurRun {
            first_page: first,
            count,
            data_offset: self.data_end,
            zero: true,
            crc: 0,
        });
        self.zero_pages += count;
        Ok(())
    }

    /// Adds page `index`, whose content `fill` writes into the given
    /// page-sized buffer. All-zero pages become holes (base) or zero runs
    /// (delta).
    pub(crate) fn push_with(
        &mut self,
        index: u64,
        fill: impl FnOnce(&mut [u8]) -> Result<(), WriteError>,
    ) -> Result<(), WriteError> {
        self.check_index(index)?;
        let r = self.push_inner(index, fill);
        if let Err(WriteError::Io(_)) = &r {
            self.failed = true;
        }
        r
    }

    fn push_inner(
        &mut self,
        index: u64,
        fill: impl FnOnce(&mut [u8]) -> Result<(), WriteError>,
    ) -> Result<(), WriteError> {
        let ps = self.ps;
        let max_pages = max_run_bytes(ps as u64) / ps as u64;
        let extend = matches!(&self.cur, Some(c) if !c.zero && c.first_page + c.count == index && c.count < max_pages);
        let zero;
        if self.compression == Compression::Lz4 {
            let mut page = std::mem::take(&mut self.page_buf);
            let r = fill(&mut page);
            zero = r.is_ok() && is_zero(&page);
            if r.is_ok() && !zero {
                if !extend {
                    if let Err(e) = self.close_run() {
                        self.page_buf = page;
                        return Err(e);
                    }
                    self.start_data_run(index);
                }
                self.run_buf.extend_from_slice(&page);
            }
            self.page_buf = page;
            r?;
        } else {
            if self.buf.len() - self.filled < ps {
                self.flush_buf()?;
            }
            fill(&mut self.buf[self.filled..self.filled + ps])?;
            zero = is_zero(&self.buf[self.filled..self.filled + ps]);
            if !zero {
                if !extend {
                    self.close_run()?;
                    self.start_data_run(index);
                }
                let slot = &self.buf[self.filled..self.filled + ps];
                if let Some(c) = &mut self.cur {
                    c.crc = crc32c::crc32c_append(c.crc, slot);
                }
                self.filled += ps;
                self.data_end += ps as u64;
            }
        }
        self.next_page = index + 1;
        self.pages_done += 1;
        if zero {
            return self.push_zero_unchecked(index, 1);
        }
        if let Some(c) = &mut self.cur {
            c.count += 1;
        }
        self.data_pages += 1;
        Ok(())
    }

    fn start_data_run(&mut self, index: u64) {
        self.cur = Some(CurRun {
            first_page: index,
            count: 0,
            data_offset: self.data_end,
            zero: false,
            crc: 0,
        });
    }

    /// Writes index and footer and waits for all writes (the caller syncs).
    pub(crate) fn finish(mut self) -> Result<FinishedSegment, WriteError> {
        if self.failed {
            return Err(WriteError::InvalidInput("writer failed earlier".into()));
        }
        self.close_run()?;
        let index = encode_index(&self.runs);
        let footer = SegmentFooter {
            index_offset: self.data_end,
            run_count: self.runs.len() as u64,
            data_pages: self
                .runs
                .iter()
                .filter(|r| r.kind != RunKind::Zero)
                .map(|r| r.page_count)
                .sum(),
            zero_pages: self
                .runs
                .iter()
                .filter(|r| r.kind == RunKind::Zero)
                .map(|r| r.page_count)
                .sum(),
            data_bytes: self.data_end - HEADER_LEN as u64,
            header_crc: crc32c::crc32c(&self.header.encode()[..HEADER_LEN - 4]),
            index_crc: crc32c::crc32c(&index),
        };
        let (fbytes, footer_crc) = footer.encode();
        self.append(&index)?;
        self.append(&fbytes)?;
        self.flush_buf()?;
        let file_len = self.data_end + index.len() as u64 + FOOTER_LEN as u64;
        let sink = std::mem::replace(&mut self.sink, Sink::Done);
        let mut object = None;
        let file = match sink {
            Sink::Direct { file, .. } => Some(file),
            Sink::Object(mut o) => {
                o.finish()
                    .map_err(|e| self.io_err("complete the upload of", e))?;
                object = Some((o.name.clone(), o.nonce));
                None
            }
            Sink::Background {
                tx,
                rx,
                mut handle,
                in_flight,
            } => {
                drop(tx);
                let mut first_err = None;
                for _ in 0..in_flight {
                    match rx.recv() {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            first_err.get_or_insert(e);
                        }
                        Err(_) => break,
                    }
                }
                let file = handle.take().map(|h| h.join());
                if let Some(e) = first_err {
                    return Err(self.io_err("write", e));
                }
                match file {
                    Some(Ok(f)) => Some(f),
                    _ => {
                        return Err(self.io_err("write", io::Error::other("writer thread panicked")))
                    }
                }
            }
            Sink::Done => {
                return Err(self.io_err("write", io::Error::other("segment already finished")))
            }
        };
        self.report(file_len);
        let temp = if object.is_some() {
            TempFile::label(self.temp.path.clone())
        } else {
            TempFile::new(self.temp.path.clone())
        };
        self.temp.disarm();
        Ok(FinishedSegment {
            temp,
            file,
            object,
            header: self.header,
            footer,
            footer_crc,
            file_len,
        })
    }

    /// Path of the temporary file.
    pub(crate) fn temp_path(&self) -> &Path {
        &self.temp.path
    }
}

impl Drop for SegmentBuilder {
    fn drop(&mut self) {
        // Stop the background thread before the temp file guard removes the
        // file (field order would drop `temp` first).
        if let Sink::Background { tx, handle, .. } = &mut self.sink {
            drop(tx.take());
            if let Some(h) = handle.take() {
                // Drain so the thread is not blocked on a full return channel.
                if let Sink::Background { rx, .. } = &self.sink {
                    while rx.try_recv().is_ok() {}
                }
                let _ = h.join();
            }
        }
    }
}
