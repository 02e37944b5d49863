//! One file's reader: reads the file's content from an offset, chunk by
//! chunk, hands each chunk to the file's [`Ingest`] (lines and documents
//! become records or rejects there) and sends the records as an
//! acknowledged batch. File mechanics only: what is read, from where, when
//! to stop, and when the file may be let go.
//!
//! Invariants:
//! - Offsets count bytes of the file's content (decompressed for `.gz`);
//!   the offset a batch acknowledges is [`Ingest::offset`], never inside a
//!   line or a multi-line document: a checkpoint never points into one.
//!   While the rest of an over-long line is skipped, the offset stays at
//!   that line's start: skipping sends nothing.
//! - Only records go to the sinks: a chunk that holds none (rejected lines
//!   only) frees its bytes at once and its offset is acknowledged directly,
//!   in order with the batches before it.
//! - What the ingest did not consume (a partial last line, an open
//!   document) is carried into the next chunk; it is handled as complete
//!   only when the file has been deleted or rotated away and read to its
//!   end, or when a `.gz` (which never grows) ends.
//! - A file that shrank below the offset was truncated (copytruncate): the
//!   reader stops and the tailer treats the content as a new file. So is
//!   one that no longer holds the bytes just before the offset (its
//!   [`Anchor`], checked before each read of new data, and first of all
//!   when a reader resumes where another one, or the last run, stopped):
//!   content rewritten in place and grown past the offset, or a copy of
//!   another version, is never read on from the middle.
//! - Reads happen on the blocking pool (`spawn_blocking`), one chunk at a
//!   time, so the runtime does not wait on the disk. The one exception is
//!   a file being trickled: when the last read of a plain file followed
//!   through inotify (a local filesystem) found at most
//!   [`INLINE_READ_BYTES`], the next read of at most that much happens in
//!   place, from the page cache, in microseconds. Handing it to another
//!   thread and back would cost more than the read (two thread wake-ups
//!   per read, the main CPU cost of a file written a line at a time).

use std::convert::Infallible;
use std::fs::File;
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flate2::read::MultiGzDecoder;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::fingerprint::{checksum, Fingerprint};
use crate::checkpoint::{Anchor, Checkpointer};
use crate::enrich::Enricher;
use crate::ingest::{Context, Ingest, RejectBatch, RejectTally};
use crate::parse::Format;
use crate::pipeline::{Batch, Fanout, RecordSource, Records};
use crate::telemetry::log_limit::LogLimit;
use crate::telemetry::FileStats;

/// Bytes read per chunk (one batch at most per chunk).
pub const CHUNK_BYTES: usize = 256 * 1024;

/// The most a read in place reads (see the module docs): a few dozen
/// lines, parsed in well under a millisecond.
pub const INLINE_READ_BYTES: usize = 64 * 1024;

/// A reader at the end of its file closes the file after this long without
/// new data; the tailer reopens it if it grows. Bounds open descriptors
/// when thousands of rotated files stay matched by the globs.
pub const IDLE_CLOSE: Duration = Duration::from_secs(30);

/// A `.gz` that fails to decompress and was modified less than this long
/// ago is taken to be still being written (logged at DEBUG, not WARN).
pub const GZ_SETTLE: Duration = Duration::from_secs(60);

/// Signals from the tailer to a running reader.
#[derive(Default)]
pub struct Control {
    /// New data may be there (or a flag below changed).
    pub wake: Notify,
    /// The file is no longer at any watched path (deleted, or moved where
    /// the globs do not match): read to the end, then stop.
    pub gone: AtomicBool,
    /// The file was renamed (rotated): once read to the end, its partial
    /// last line is complete.
    pub rotated: AtomicBool,
    /// Another file with the same fingerprint waits to continue this one
    /// (sync-tool replace, gzip of a rotated file): hand the partial last
    /// line over to it instead of emitting it.
    pub superseded: AtomicBool,
}

/// Why a reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Gone and read to the end.
    Gone,
    /// The file shrank below the offset (copytruncate).
    Truncated,
    /// A `.gz` read to the end.
    Complete,
    /// At the end and idle for [`IDLE_CLOSE`].
    Idle,
    /// The bridge is stopping.
    Shutdown,
    /// A read error (logged); the tailer retries when the file changes.
    Failed,
}

/// What a reader reports when it stops.
#[derive(Debug)]
pub struct Finished {
    /// Device and inode of the file.
    pub key: (u64, u64),
    /// The file's fingerprint.
    pub fp: Fingerprint,
    /// Offset after the last line sent.
    pub offset: u64,
    /// Size of the file when it stopped (compressed size for `.gz`).
    pub size: u64,
    /// Why.
    pub exit: Exit,
}

/// What every reader of a source shares.
#[derive(Clone)]
pub struct ReaderShared {
    /// The source's configured format.
    pub format: Format,
    /// Lines longer than this are rejected.
    pub max_line_bytes: usize,
    /// Small reads may happen in place (files found through inotify, on a
    /// local filesystem; not when polling, as for NFS): see the module
    /// docs.
    pub inline_reads: bool,
    /// A partial last line of a file rotated away or deleted is emitted
    /// only once the file has not grown for this long since it went: a
    /// writer that still holds the file open (a logger finishing its last
    /// write, a sync tool writing in pieces) may complete the line first.
    pub partial_grace: Duration,
    /// Sends batches to the sinks.
    pub fanout: Fanout,
    /// Durable offsets.
    pub checkpoints: Checkpointer,
    /// Lookups and masking.
    pub enricher: Arc<Enricher>,
    /// The top-level `host`, stamped on every record.
    pub host: Arc<str>,
    /// Stops reading.
    pub shutdown: CancellationToken,
    /// Where rejected lines are written (file, offset, why, the line).
    pub rejects: Option<RejectSink>,
    /// Limits the "rejected line" log lines of the source's readers (a
    /// file of junk would otherwise log one line per line it holds).
    pub reject_log: Arc<Mutex<LogLimit>>,
}

/// Where rejected lines are written (on the blocking pool).
pub type RejectSink = Arc<crate::rejects::RejectsFile>;

/// One file to read.
pub struct Spec {
    /// Device and inode.
    pub key: (u64, u64),
    /// The path it was opened at (for logs, stats and the rejects file).
    pub path: Arc<str>,
    /// The open file.
    pub file: File,
    /// gzip-compressed.
    pub gz: bool,
    /// Fingerprint and its line's byte range, to detect content replaced
    /// in place.
    pub fp: Fingerprint,
    /// Start and length of the fingerprinted line (plain files).
    pub fp_range: (u64, u64),
    /// Offset to start at.
    pub offset: u64,
    /// The bytes before `offset` as they were read (plain files), when
    /// known: checked before anything is read.
    pub anchor: Option<Anchor>,
}

/// Reading state moved in and out of the blocking pool.
struct State {
    file: File,
    gz: Option<MultiGzDecoder<File>>,
    /// Bytes of content read (plain: file position).
    pos: u64,
    /// Bytes read that the ingest did not consume yet (a partial line, an
    /// open document): the front of the next chunk. Its capacity may be a
    /// whole chunk kept for reuse (see [`State::release_buffer`]).
    carry: Vec<u8>,
    /// Lines and documents to records; `ingest.position()` is always
    /// `pos - carry.len()`.
    ingest: Ingest,
    fp: Fingerprint,
    fp_range: (u64, u64),
    /// The anchor at an offset (plain files): the bytes before it as
    /// read, checked before new data is read. Moves with the offset.
    anchor: Option<(u64, Anchor)>,
    enricher: Arc<Enricher>,
    /// The top-level `host`.
    host: Arc<str>,
    /// Bytes per record in the last chunk that had records (sizes the
    /// next chunk's records list: sized by a count, a longer chunk would
    /// double the list, and the copy and the spare half cost memory and
    /// time on every chunk of a backlog).
    bytes_per_record: usize,
}

/// One chunk's outcome.
struct Chunk {
    records: Records,
    rejects: RejectTally,
    /// Observed time of the chunk's records.
    observed_ms: i64,
    /// Offset after the last line or document handled.
    offset: u64,
    /// The anchor at `offset` (plain files).
    anchor: Option<Anchor>,
    /// File size (plain) when read.
    size: u64,
    status: Status,
    /// A partial line (or an unterminated document) was handled.
    partial: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// More data may follow right away.
    More,
    /// At the end of the data.
    End,
    /// The file shrank or its first line changed.
    Truncated,
}

impl State {
    fn offset(&self) -> u64 {
        self.ingest.offset()
    }

    /// Reads one chunk and ingests it. With `flush_partial`, what is left
    /// at the end of the data (a partial last line, an open document) is
    /// handled as complete.
    ///
    /// The chunk's bytes (the carried-over rest, then what was read)
    /// become the records' [`RecordSource`]: records borrow from them
    /// instead of copying every value. Rejects go to `rejects` (the rejects
    /// file) in batches.
    fn read_chunk(
        &mut self,
        max: usize,
        flush_partial: bool,
        rejects: Option<&crate::rejects::RejectsFile>,
        file: &str,
    ) -> io::Result<Chunk> {
        let mut data = std::mem::take(&mut self.carry);
        let carry_len = data.len();
        let mut size = 0;
        let n = match self.read_more(&mut data, &mut size, max) {
            Ok(Some(n)) => n,
            Ok(None) => {
                data.truncate(carry_len);
                self.carry = data;
                return Ok(self.chunk_status(Status::Truncated, size));
            }
            Err(e) => {
                data.truncate(carry_len);
                self.carry = data;
                return Err(e);
            }
        };
        self.pos += n as u64;
        let observed_ms = crate::time::now_ms();
        let at_end = n == 0 || (self.gz.is_none() && self.pos >= size);
        let flush = at_end && flush_partial;
        let enricher = (!self.enricher.is_noop()).then_some(&*self.enricher);
        let ingest = &mut self.ingest;
        let capacity = match self.bytes_per_record {
            0 => 0,
            // A sixteenth more than expected: lines vary in length.
            b => (data.len() / b) + (data.len() / b) / 16 + 1,
        };
        let mut tally = RejectTally::default();
        let mut consumed = 0;
        let mut partial = false;
        let source = RecordSource { data, tables: self.enricher.tables(), host: self.host.clone() };
        let records = Records::borrowing(source, |src| {
            let mut out = Vec::with_capacity(capacity);
            let cx = Context { tables: &src.tables, enricher, observed_ms: Some(observed_ms), host: &src.host };
            let mut batch = RejectBatch::new(rejects, file, observed_ms, &mut tally);
            let fed = ingest.feed(&src.data, flush, &cx, &mut out, &mut batch);
            (consumed, partial) = (fed.consumed, fed.partial);
            out
        });
        let records = if records.is_empty() {
            // Nothing borrows the bytes (rejected lines only, or the middle
            // of an over-long line): no batch keeps them alive, and the
            // buffer is kept for the next chunk, so skipping hostile input
            // allocates nothing per chunk.
            let mut data = records.into_source_data().unwrap_or_default();
            self.anchor_at(self.ingest.offset(), Some(&data), self.pos - n as u64 - carry_len as u64);
            data.drain(..consumed);
            self.carry = data;
            Records::default()
        } else {
            self.carry = records.source_data().map(|d| d[consumed..].to_vec()).unwrap_or_default();
            records
        };
        if !records.is_empty() {
            self.bytes_per_record = (records.source_data().map_or(0, <[u8]>::len) / records.len()).max(1);
        }
        let anchor = self.anchor_at(self.offset(), records.source_data(), self.pos - n as u64 - carry_len as u64);
        Ok(Chunk {
            records,
            rejects: tally,
            observed_ms,
            anchor,
            offset: self.offset(),
            size: if self.gz.is_some() { self.pos } else { size },
            status: if at_end { Status::End } else { Status::More },
            partial,
        })
    }

    /// Appends the next bytes of content to `data`: how many, or `None`
    /// when the file was truncated or replaced in place. Sets `size` to
    /// the file's size (plain files).
    fn read_more(&mut self, data: &mut Vec<u8>, size: &mut u64, max: usize) -> io::Result<Option<usize>> {
        let base = data.len();
        if let Some(gz) = &mut self.gz {
            data.resize(base + max, 0);
            let n = loop {
                match gz.read(&mut data[base..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            data.truncate(base + n);
            return Ok(Some(n));
        }
        *size = self.file.metadata()?.len();
        if *size < self.pos || !self.same_identity(*size)? || !self.same_anchor(*size)? {
            return Ok(None);
        }
        let want = (*size - self.pos).min(max as u64) as usize;
        data.resize(base + want, 0);
        let mut got = 0;
        while got < want {
            match self.file.read_at(&mut data[base + got..], self.pos + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        data.truncate(base + got);
        Ok(Some(got))
    }

    /// The bytes of the file before `at` (at most [`Anchor::MAX_BYTES`]).
    fn bytes_before(&self, at: u64) -> io::Result<Vec<u8>> {
        let k = at.min(Anchor::MAX_BYTES as u64);
        let mut b = vec![0u8; k as usize];
        let mut got = 0;
        while got < b.len() {
            match self.file.read_at(&mut b[got..], at - k + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        b.truncate(got);
        Ok(b)
    }

    /// Checks, when there is new data to read, that the file still holds
    /// the bytes before the anchored offset as they were read (plain
    /// files): content rewritten in place and grown past the offset, or a
    /// copy of another version, is a new file, not a continuation. Without
    /// an anchor (a reader resuming where none is known), what is there now
    /// becomes the reference.
    fn same_anchor(&mut self, size: u64) -> io::Result<bool> {
        if size <= self.pos {
            return Ok(true);
        }
        match self.anchor {
            Some((at, want)) => {
                let b = self.bytes_before(at)?;
                Ok(b.len() == want.len as usize && Anchor::of(&b) == want)
            }
            None => {
                let at = self.offset();
                if at > 0 {
                    self.anchor = Some((at, Anchor::of(&self.bytes_before(at)?)));
                }
                Ok(true)
            }
        }
    }

    /// Moves the anchor to the offset `at` (plain files) after a chunk:
    /// from the chunk's bytes (`data`, which start at file offset `start`)
    /// when they hold the bytes before it, else read from the file.
    /// Returns it.
    fn anchor_at(&mut self, at: u64, data: Option<&[u8]>, start: u64) -> Option<Anchor> {
        if self.gz.is_some() || at == 0 {
            return None;
        }
        if let Some((a, anchor)) = self.anchor {
            if a == at {
                return Some(anchor);
            }
        }
        let k = at.min(Anchor::MAX_BYTES as u64);
        let from_chunk = data
            .filter(|d| at - k >= start && at <= start + d.len() as u64)
            .map(|d| Anchor::of(&d[(at - k - start) as usize..(at - start) as usize]));
        let anchor = match from_chunk {
            Some(a) => Some(a),
            None => self.bytes_before(at).ok().filter(|b| b.len() as u64 == k).map(|b| Anchor::of(&b)),
        };
        self.anchor = anchor.map(|a| (at, a));
        anchor
    }

    /// At the end of the data, waiting: a buffer kept for reuse is given
    /// back, so an idle reader holds no more than its partial line.
    fn release_buffer(&mut self) {
        self.carry.shrink_to_fit();
    }

    fn chunk_status(&self, status: Status, size: u64) -> Chunk {
        Chunk {
            records: Records::default(),
            rejects: RejectTally::default(),
            observed_ms: 0,
            offset: self.offset(),
            anchor: None,
            size,
            status,
            partial: false,
        }
    }

    /// Checks that the fingerprinted line is still the file's: content
    /// replaced in place (truncated and rewritten past our offset before we
    /// looked) is a new file.
    fn same_identity(&self, size: u64) -> io::Result<bool> {
        let (start, len) = self.fp_range;
        if len == 0 {
            return Ok(true);
        }
        // The file held its identifying line and newline when it was
        // fingerprinted: shorter now means truncated, even when the offset
        // is still before that line (copytruncate of a file not read yet).
        if size < start + len + 1 {
            return Ok(false);
        }
        if size == self.pos {
            // Nothing new to read: no need to look.
            return Ok(true);
        }
        let mut b = vec![0u8; len as usize];
        let mut got = 0;
        while got < b.len() {
            match self.file.read_at(&mut b[got..], start + got as u64)? {
                0 => return Ok(false),
                n => got += n,
            }
        }
        Ok(checksum(&b) == self.fp)
    }
}

/// Opens the decompressor and skips `offset` bytes of content.
fn open_gz(file: &File, offset: u64) -> io::Result<(MultiGzDecoder<File>, u64)> {
    let mut f = file.try_clone()?;
    // The clone shares the position the fingerprint probe moved.
    io::Seek::seek(&mut f, io::SeekFrom::Start(0))?;
    let mut dec = MultiGzDecoder::new(f);
    let skipped = io::copy(&mut (&mut dec).take(offset), &mut io::sink())?;
    Ok((dec, skipped))
}

/// How often a reader holding a file re-checks its acknowledgements.
const HOLD_POLL: Duration = Duration::from_millis(20);

/// When the bridge stops or reloads, a reader of a file that is gone (it
/// cannot be read again) gets this long to hand its last batch over and to
/// see its records made durable, before it lets the file go.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Before the last handle on a file is released: waits, holding it open,
/// until none of its batches is unacknowledged. While the file is gone
/// (deleted, or rotated out of the globs) it demands durability
/// ([`crate::pipeline::Durability`]), so the sinks that hold its records in
/// memory spool them at once instead of waiting for their peer: a
/// `kill -9` then loses nothing. False when the bridge stops first (the
/// sinks then spool what they hold at shutdown).
async fn hold_until_acked(shared: &ReaderShared, ctl: &Control, fp: Fingerprint) -> bool {
    let mut demand = None;
    let mut stop_by = None;
    while shared.checkpoints.in_flight(fp) {
        let gone = ctl.gone.load(Ordering::Acquire);
        if demand.is_none() && gone {
            tracing::debug!("file gone with records not yet acknowledged: making them durable before letting it go");
            demand = Some(shared.fanout.durability().demand());
        }
        if shared.shutdown.is_cancelled() {
            // Stopping or reloading: a file that is gone gets a short while
            // for its records to become durable; one that is not is read
            // again by the next reader.
            let by = *stop_by.get_or_insert_with(|| tokio::time::Instant::now() + STOP_GRACE);
            if !gone || tokio::time::Instant::now() >= by {
                return false;
            }
            tokio::time::sleep(HOLD_POLL).await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(HOLD_POLL) => {}
            _ = shared.shutdown.cancelled() => {}
        }
    }
    true
}

/// Runs a reader until it stops; returns why and where.
pub async fn run(spec: Spec, shared: ReaderShared, ctl: Arc<Control>, stats: FileStats) -> Finished {
    let mut reader = Reader::new(&spec, shared, ctl, stats);
    let ControlFlow::Break(finished) = reader.steps(spec).await;
    finished
}

/// One step of a reader: go on with the next step (`Continue`), or stop and
/// report (`Break`).
type Step<T = ()> = ControlFlow<Finished, T>;

/// A running reader: what its loop keeps between chunks (the reading
/// [`State`] itself moves in and out of the blocking pool, so it is passed
/// along separately).
struct Reader {
    shared: ReaderShared,
    ctl: Arc<Control>,
    stats: FileStats,
    key: (u64, u64),
    fp: Fingerprint,
    path: Arc<str>,
    /// File size at the last read (reported when the reader stops).
    size: u64,
    /// Offset after the last chunk sent (or acknowledged directly).
    last_sent: u64,
    /// When the file last gave new bytes, or was first seen rotated away or
    /// deleted, whichever is later: the partial-line grace period runs from
    /// there.
    last_growth: tokio::time::Instant,
    /// The file was seen rotated away or deleted.
    went_away: bool,
    /// Bytes the last read found (the first read of a file goes to the
    /// blocking pool: it may have a backlog).
    last_read: u64,
}

impl Reader {
    fn new(spec: &Spec, shared: ReaderShared, ctl: Arc<Control>, stats: FileStats) -> Reader {
        Reader {
            shared,
            ctl,
            stats,
            key: spec.key,
            fp: spec.fp,
            path: spec.path.clone(),
            size: 0,
            last_sent: spec.offset,
            last_growth: tokio::time::Instant::now(),
            went_away: false,
            last_read: u64::MAX,
        }
    }

    /// Stops at `offset` for `exit`, with the size of the last read.
    fn stop<T>(&self, offset: u64, exit: Exit) -> Step<T> {
        ControlFlow::Break(Finished { key: self.key, fp: self.fp, offset, size: self.size, exit })
    }

    /// The reader's loop: opens the file, then reads, checks and sends one
    /// chunk at a time, and at the end of the data waits or finishes.
    async fn steps(&mut self, spec: Spec) -> Step<Infallible> {
        let mut st = self.open(spec).await?;
        // The offset the first chunk starts from.
        self.last_sent = st.offset();
        self.last_growth = tokio::time::Instant::now();
        loop {
            self.wait_for_room(&st).await?;
            let flush_partial = self.flush_partial(&st);
            let (s, chunk) = self.read(st, flush_partial).await?;
            st = s;
            let status = chunk.status;
            self.check(&chunk)?;
            self.send(chunk).await?;
            self.mark_finished(&st, status);
            if status == Status::More {
                continue;
            }
            self.at_end(&mut st, flush_partial).await?;
        }
    }

    /// Opens the reading state at the spec's offset; a `.gz` gets its
    /// decompressor, moved past the offset on the blocking pool (a `.gz`
    /// shorter than the offset is complete).
    async fn open(&self, spec: Spec) -> Step<State> {
        let mut st = State {
            gz: None,
            pos: spec.offset,
            carry: Vec::new(),
            ingest: Ingest::new(self.shared.format, self.shared.max_line_bytes, spec.offset),
            fp: self.fp,
            fp_range: spec.fp_range,
            anchor: spec.anchor.filter(|_| !spec.gz && spec.offset > 0).map(|a| (spec.offset, a)),
            enricher: self.shared.enricher.clone(),
            host: self.shared.host.clone(),
            bytes_per_record: 0,
            file: spec.file,
        };
        if !spec.gz {
            return ControlFlow::Continue(st);
        }
        let file = match st.file.try_clone() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read gzip file");
                return self.stop(spec.offset, Exit::Failed);
            }
        };
        let offset = spec.offset;
        let res = tokio::task::spawn_blocking(move || open_gz(&file, offset)).await;
        match res {
            Ok(Ok((dec, skipped))) => {
                st.gz = Some(dec);
                st.pos = skipped;
                if skipped < offset {
                    return self.stop(skipped, Exit::Complete);
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "gzip file not readable yet (still being written?)");
                return self.stop(spec.offset, Exit::Failed);
            }
            Err(_) => return self.stop(spec.offset, Exit::Failed),
        }
        ControlFlow::Continue(st)
    }

    /// Waits, before each read, while the memory budget is reached (as for
    /// a full sink queue: nothing more is read ahead); stops when the
    /// bridge stops.
    async fn wait_for_room(&self, st: &State) -> Step {
        if self.shared.shutdown.is_cancelled() {
            return self.stop(st.offset(), Exit::Shutdown);
        }
        tokio::select! {
            _ = self.shared.fanout.budget().room() => {}
            _ = self.shared.shutdown.cancelled() => return self.stop(st.offset(), Exit::Shutdown),
        }
        ControlFlow::Continue(())
    }

    /// Whether this read handles what is left at the end of the data as
    /// complete: always for a `.gz`; for a file rotated away or deleted,
    /// once it has not grown for the grace period and no other file waits
    /// to continue it. Starts the grace period when the file is first seen
    /// gone.
    fn flush_partial(&mut self, st: &State) -> bool {
        let gone = self.ctl.gone.load(Ordering::Acquire) || self.ctl.rotated.load(Ordering::Acquire);
        if gone && !self.went_away {
            self.went_away = true;
            self.last_growth = tokio::time::Instant::now();
        }
        let settled = self.last_growth.elapsed() >= self.shared.partial_grace;
        st.gz.is_some() || (gone && settled && !self.ctl.superseded.load(Ordering::Acquire))
    }

    /// Reads and ingests one chunk: in place when the last read of a
    /// trickled plain file was small (see the module docs), otherwise on
    /// the blocking pool. A read error stops the reader.
    async fn read(&mut self, mut st: State, flush_partial: bool) -> Step<(State, Chunk)> {
        let pos_before = st.pos;
        let inline = self.shared.inline_reads && st.gz.is_none() && self.last_read <= INLINE_READ_BYTES as u64;
        let res = if inline {
            let r = st.read_chunk(INLINE_READ_BYTES, flush_partial, self.shared.rejects.as_deref(), &self.path);
            Ok((st, r))
        } else {
            let (rejects, file) = (self.shared.rejects.clone(), self.path.clone());
            tokio::task::spawn_blocking(move || {
                let r = st.read_chunk(CHUNK_BYTES, flush_partial, rejects.as_deref(), &file);
                (st, r)
            })
            .await
        };
        let (st, r) = match res {
            Ok(read) => read,
            Err(e) => {
                tracing::error!(error = %e, "reader task failed");
                // The state went with the task: no offset to report.
                return ControlFlow::Break(Finished { key: self.key, fp: self.fp, offset: 0, size: 0, exit: Exit::Failed });
            }
        };
        self.last_read = st.pos.saturating_sub(pos_before);
        if st.pos > pos_before {
            self.last_growth = tokio::time::Instant::now();
        }
        match r {
            Ok(chunk) => ControlFlow::Continue((st, chunk)),
            Err(e) => {
                self.read_failed(&st, &e);
                self.stop(st.offset(), Exit::Failed)
            }
        }
    }

    /// Logs a read error: a `.gz` still being written (logrotate
    /// compressing it) ends early, routine while it changes (DEBUG); one
    /// that stays broken, or a plain file's read error, needs an operator.
    fn read_failed(&self, st: &State, e: &io::Error) {
        let being_written = st.gz.is_some()
            && st.file.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).is_some_and(|a| a < GZ_SETTLE);
        if being_written {
            tracing::debug!(offset = st.offset(), error = %e, "gzip file not complete yet; retried when it changes");
        } else {
            let exit = if st.gz.is_some() { "gzip file incomplete or corrupt; retried when it changes" } else { "read error" };
            tracing::warn!(offset = st.offset(), error = %e, "{exit}");
        }
    }

    /// Records the chunk's position; stops on a file truncated or replaced
    /// in place; reports an emitted partial line and the chunk's rejects.
    fn check(&mut self, chunk: &Chunk) -> Step {
        self.size = chunk.size;
        self.stats.set_position(chunk.size, chunk.offset);
        if chunk.status == Status::Truncated {
            tracing::info!(
                offset = chunk.offset,
                size = chunk.size,
                "file truncated or replaced in place; reading its new content as a new file"
            );
            return self.stop(chunk.offset, Exit::Truncated);
        }
        if chunk.partial {
            self.stats.partial_line();
            tracing::info!(offset = chunk.offset, "emitted a partial last line (no newline) of a file rotated away or deleted");
        }
        chunk.rejects.report(&self.path, &self.stats, &self.shared.reject_log);
        ControlFlow::Continue(())
    }

    /// Sends the chunk's records (if it moved the offset) under a ticket
    /// for its offset; the offset is acknowledged once every sink has them.
    async fn send(&mut self, chunk: Chunk) -> Step {
        if chunk.offset <= self.last_sent && !chunk.partial {
            return ControlFlow::Continue(());
        }
        let chunk_start = self.last_sent;
        self.last_sent = chunk.offset;
        self.stats.records_read(chunk.observed_ms, chunk.records.iter().map(|r| (r.sync_delay_ms, r.write_time_ms)));
        let ticket = self.shared.checkpoints.register(self.fp, chunk.offset, chunk.anchor);
        let stats = self.stats.clone();
        let batch = Batch::new(self.path.clone(), chunk.records, chunk.observed_ms, None);
        // A sink that cannot take more (upstream down) must not hold up
        // a shutdown or a reload: a send given up reached no sink, so the
        // batch is taken back and the next reader of the file (after a
        // reload, or after the restart) reads it again from
        // `chunk_start`. A file that is gone cannot be read again: its
        // send gets [`STOP_GRACE`] more.
        let cancel = async {
            self.shared.shutdown.cancelled().await;
            if self.ctl.gone.load(Ordering::Acquire) {
                tokio::time::sleep(STOP_GRACE).await;
            }
        };
        let sent =
            self.shared.fanout.send_under_ticket(&self.shared.checkpoints, ticket, batch, move |off| stats.set_committed(off), cancel);
        if sent.await.is_err() {
            return self.stop(chunk_start, Exit::Shutdown);
        }
        ControlFlow::Continue(())
    }

    /// Rotated away (renamed or deleted) and read to its end: no longer
    /// part of the current sync delay (a `.gz` is marked by the tailer
    /// once complete).
    fn mark_finished(&self, st: &State, status: Status) {
        let rotated_away = self.ctl.gone.load(Ordering::Acquire) || self.ctl.rotated.load(Ordering::Acquire);
        self.stats.set_finished(status == Status::End && st.gz.is_none() && rotated_away && st.carry.is_empty());
    }

    /// At the end of the data: a `.gz` is complete and a file gone is done
    /// (once their batches are acknowledged); a partial last line of a file
    /// gone waits for its grace period; otherwise waits for new data, or
    /// closes the file once idle. `Continue` reads again.
    async fn at_end(&self, st: &mut State, flush_partial: bool) -> Step {
        if st.gz.is_some() {
            if !hold_until_acked(&self.shared, &self.ctl, self.fp).await {
                return self.stop(st.offset(), Exit::Shutdown);
            }
            return self.stop(st.offset(), Exit::Complete);
        }
        st.release_buffer();
        let superseded = self.ctl.superseded.load(Ordering::Acquire);
        let needs_flush = !st.carry.is_empty() && !superseded && !flush_partial;
        let away = self.ctl.gone.load(Ordering::Acquire) || self.ctl.rotated.load(Ordering::Acquire);
        if away && needs_flush {
            // Rotated away or deleted with a partial last line: once the
            // grace period passes without growth, one more pass emits it;
            // new bytes meanwhile may complete it.
            tokio::select! {
                _ = tokio::time::sleep_until(self.last_growth + self.shared.partial_grace) => {}
                _ = self.ctl.wake.notified() => {}
                _ = self.shared.shutdown.cancelled() => return self.stop(st.offset(), Exit::Shutdown),
            }
            return ControlFlow::Continue(());
        }
        if self.ctl.gone.load(Ordering::Acquire) {
            if !hold_until_acked(&self.shared, &self.ctl, self.fp).await {
                return self.stop(st.offset(), Exit::Shutdown);
            }
            return self.stop(st.offset(), Exit::Gone);
        }
        tokio::select! {
            _ = self.ctl.wake.notified() => {}
            _ = self.shared.shutdown.cancelled() => return self.stop(st.offset(), Exit::Shutdown),
            _ = tokio::time::sleep(IDLE_CLOSE) => {
                // Not while some of its batches are unacknowledged: the
                // open descriptor is their copy if the file is deleted.
                if st.carry.is_empty() && !self.shared.checkpoints.in_flight(self.fp) {
                    return self.stop(st.offset(), Exit::Idle);
                }
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(uuid: &str) -> String {
        format!("{{\"request_uuid\":\"{uuid}\",\"request_time\":\"2024-01-01T00:00:00Z\",\"status\":\"200\"}}\n")
    }

    fn state(file: File, max_line_bytes: usize) -> State {
        State {
            file,
            gz: None,
            pos: 0,
            carry: Vec::new(),
            ingest: Ingest::new(Format::LeJson, max_line_bytes, 0),
            fp: Fingerprint(0),
            fp_range: (0, 0),
            anchor: None,
            enricher: Arc::new(Enricher::new(&[], None, None).unwrap()),
            host: Arc::from("test-host"),
            bytes_per_record: 0,
        }
    }

    #[test]
    fn skipping_an_over_long_line_keeps_the_offset_at_its_start_and_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.log");
        let a = line("a");
        let long = "x".repeat(CHUNK_BYTES * 2);
        std::fs::write(&p, format!("{a}{long}\n{}", line("b"))).unwrap();
        let mut st = state(File::open(&p).unwrap(), 1000);
        let c = st.read_chunk(CHUNK_BYTES, false, None, "f.log").unwrap();
        assert_eq!(c.records.len(), 1);
        assert_eq!(c.rejects.total(), 1);
        let r = &c.rejects.samples[0];
        assert_eq!((r.offset, r.reject.reason), (a.len() as u64, crate::parse::RejectReason::TooLong));
        assert_eq!(c.offset, a.len() as u64, "the offset stays before the over-long line");
        let c = st.read_chunk(CHUNK_BYTES, false, None, "f.log").unwrap();
        assert!(c.records.is_empty() && c.rejects.total() == 0);
        assert!(c.records.source_data().is_none(), "a chunk without records holds no bytes");
        assert_eq!(c.offset, a.len() as u64, "still skipping");
        let c = st.read_chunk(CHUNK_BYTES, false, None, "f.log").unwrap();
        assert_eq!(c.records.len(), 1);
        assert_eq!(c.records.as_slice()[0].get(crate::record::Field::RequestUuid), "b");
        assert_eq!(c.offset, (a.len() + long.len() + 1 + line("b").len()) as u64);
        assert_eq!(c.status, Status::End);
    }

    #[test]
    fn content_rewritten_in_place_and_grown_past_the_offset_is_not_read_on_from_its_middle() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.log");
        let (a, b, c) = (line("a"), line("bb"), line("c"));
        std::fs::write(&p, format!("{a}{b}")).unwrap();
        let mut st = state(File::open(&p).unwrap(), 1000);
        let chunk = st.read_chunk(CHUNK_BYTES, false, None, "f.log").unwrap();
        assert_eq!(chunk.records.len(), 2);
        assert_eq!(chunk.anchor, Some(Anchor::of(b.as_bytes())), "the anchor is the bytes before the offset");
        // Appended: read on.
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(c.as_bytes()).unwrap();
        assert_eq!(st.read_chunk(CHUNK_BYTES, false, None, "f.log").unwrap().records.len(), 1);
        // Rewritten in place (same first line) and grown past the offset.
        let new: String = (0..5).map(|i| line(&format!("n{i}"))).collect();
        std::fs::write(&p, format!("{a}{new}")).unwrap();
        assert_eq!(st.read_chunk(CHUNK_BYTES, false, None, "f.log").unwrap().status, Status::Truncated);
        // A reader resuming with an anchor that does not match stops at once too.
        let mut st = state(File::open(&p).unwrap(), 1000);
        st.pos = (a.len() + b.len()) as u64;
        st.ingest = Ingest::new(Format::LeJson, 1000, st.pos);
        st.anchor = Some((st.pos, Anchor::of(b.as_bytes())));
        assert_eq!(st.read_chunk(CHUNK_BYTES, false, None, "f.log").unwrap().status, Status::Truncated);
    }

    #[test]
    fn a_chunk_of_rejects_only_keeps_its_buffer_for_reuse_and_its_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.log");
        std::fs::write(&p, "junk\nmore junk\n{\"request_uuid\":").unwrap();
        let mut st = state(File::open(&p).unwrap(), 1000);
        let c = st.read_chunk(CHUNK_BYTES, false, None, "f.log").unwrap();
        assert_eq!((c.records.len(), c.rejects.total(), c.offset), (0, 2, 15));
        assert_eq!(st.carry, b"{\"request_uuid\":");
        assert!(st.carry.capacity() > st.carry.len(), "the chunk's buffer is reused, not copied");
        st.release_buffer();
        assert_eq!(st.carry.capacity(), st.carry.len());
    }

    #[test]
    fn a_chunk_of_many_rejects_writes_them_in_batches_and_keeps_a_few() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.log");
        std::fs::write(&p, "x\n".repeat(100_000)).unwrap();
        let file = crate::rejects::RejectsFile::new(
            dir.path().join("rejects.ndjson"),
            crate::rotating::Rotation { rotate_bytes: 1 << 30, keep_files: 1 },
        );
        let mut st = state(File::open(&p).unwrap(), 1000);
        let c = st.read_chunk(CHUNK_BYTES, false, Some(&file), "f.log").unwrap();
        assert_eq!(c.rejects.total(), 100_000);
        assert_eq!(c.rejects.samples.len(), crate::ingest::rejects::REJECT_SAMPLES);
        let written = std::fs::read_to_string(dir.path().join("rejects.ndjson")).unwrap();
        assert_eq!(written.lines().count(), 100_000);
        let last: serde_json::Value = serde_json::from_str(written.lines().last().unwrap()).unwrap();
        assert_eq!((last["line"].as_u64(), last["offset"].as_u64()), (Some(100_000), Some(199_998)));
    }

    #[test]
    fn a_pretty_printed_document_split_across_chunks_is_one_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        let msg = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/samples/ecls-message.json")).unwrap();
        // A first line that fills most of a chunk, so the document starts
        // near its end and is carried over into the next.
        let pad = format!("{}\n", " ".repeat(CHUNK_BYTES - 100));
        std::fs::write(&p, [pad.as_bytes(), &msg].concat()).unwrap();
        let mut st = state(File::open(&p).unwrap(), 1 << 20);
        st.ingest = Ingest::new(Format::Ecls, 1 << 20, 0);
        let c = st.read_chunk(CHUNK_BYTES, false, None, "f.json").unwrap();
        assert_eq!((c.records.len(), c.rejects.total(), c.status), (0, 0, Status::More));
        assert_eq!(c.offset, pad.len() as u64, "the offset stays at the open document");
        let c = st.read_chunk(CHUNK_BYTES, false, None, "f.json").unwrap();
        assert_eq!((c.records.len(), c.rejects.total(), c.status), (1, 0, Status::End));
        assert_eq!(c.records.as_slice()[0].get(crate::record::Field::RequestUuid), "132da36d-37b7-41e4-9d03-5e9f900f13c4");
        assert_eq!(c.offset, (pad.len() + msg.len()) as u64);
    }
}
