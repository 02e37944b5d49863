//! The replay log: the channel's records on disk, for `?since=` replay
//! across reconnects and restarts, with a small hot tail in memory.
//!
//! Every record the channel receives is serialised once (the `ecls` shape,
//! masked when the channel masks) and appended here with the next sequence
//! number. Connections do not get copies pushed to them: each one reads the
//! log from its own cursor (its next sequence number): from the hot tail
//! when it keeps up, from the segment files when it is behind. That makes
//! a broadcast O(1) for the sink whatever the number of clients, makes
//! `?since=` replay and the live stream one code path (no gap, no
//! duplicate between them), and makes a stalled client cost no memory.
//!
//! # On disk
//!
//! `<state_dir>/replay/<first seq, 20 digits>.seg`, append-only. Each
//! record is `len: u32 LE`, `crc32(body): u32 LE`, then the body:
//! `seq: u64`, `observed_ms: i64`, `written_ms: i64`, `status: u16`,
//! `api_key digest: [u8; 16]` (SHA-256 of the unmasked key, for the
//! `api_key=` filter: the key itself is never written), `service_id len:
//! u16`, `service_id`, then the record's JSON exactly as the channel sends
//! it. Sequence numbers increase strictly within and across segments (they
//! may jump after a crash: see `channel.seq`).
//!
//! Opening the log scans every segment: a record that is torn (the tail
//! after a kill or a crash) or fails its checksum ends the segment there;
//! the file is truncated to its last whole record, and the bytes dropped
//! are counted and logged ([`Repair`]). In memory each segment keeps a
//! sparse index (a `(seq, offset)` pair every [`INDEX_EVERY_BYTES`]).
//!
//! # Retention
//!
//! Whole segments are removed, oldest first, while the log holds more than
//! `replay_max_bytes` (the newest segment always stays) or when their
//! newest record was written more than `replay_max_age_secs` ago. A
//! segment is sealed once it reaches [`Retention::segment_bytes`].
//!
//! # Durability
//!
//! [`ReplayLog::append`] writes a batch with one `write()` before the
//! channel acknowledges it: it survives a crash or a kill of the bridge.
//! Files are fsynced in groups ([`ReplayLog::take_sync`], about once a
//! second, at every roll and at shutdown), so a power loss can lose at most
//! the last second of the log; the channel never promised more (it kept
//! its records in memory only).
//!
//! No locks here: the channel holds the log behind a mutex, and disk reads
//! ([`DiskRead`]) run outside it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The directory under `state_dir`.
pub const DIR: &str = "replay";

/// Segment file extension.
const EXT: &str = "seg";

/// `len` and `crc` before each body.
const HEAD: usize = 8;

/// The fixed part of a body, before `service_id` and the JSON.
const FIXED: usize = 8 + 8 + 8 + 2 + 16 + 2;

/// A body longer than this is damage, not a record (records are a few KB).
const MAX_BODY: usize = 16 << 20;

/// One sparse-index entry per this many bytes of a segment: finding a
/// sequence number reads at most this much more than needed.
pub const INDEX_EVERY_BYTES: u64 = 64 << 10;

/// Bytes of the newest records kept in memory for the clients that keep up.
pub const HOT_BYTES: u64 = 2 << 20;

/// The smallest segment (tests use tiny retentions).
pub const MIN_SEGMENT_BYTES: u64 = 16 << 10;

/// The largest segment.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;

/// Digest of an `api_key`, for the `api_key=` filter.
pub type KeyDigest = [u8; 16];

/// The digest the log stores and the `api_key=` filter compares.
pub fn key_digest(key: &str) -> KeyDigest {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
}

/// One record as the channel serves it.
#[derive(Debug)]
pub struct Item {
    /// The record in the `ecls` shape (masked when the channel masks).
    pub json: Box<str>,
    /// `service_id`, for the `service_id=` filter.
    pub service_id: Box<str>,
    /// Digest of the unmasked `api_key`, for the `api_key=` filter.
    pub key_digest: KeyDigest,
    /// `http_status_code` as a number (0 when it is not one), for `status=`.
    pub status: u16,
    /// Epoch ms when the bridge read the record (delivery-delay samples).
    pub observed_ms: i64,
}

/// A record with its sequence number.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The record's sequence number.
    pub seq: u64,
    /// The record.
    pub item: Arc<Item>,
}

/// The reader asked for records that retention removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// The oldest sequence number still held (or the next one to be
    /// assigned when the log is empty).
    pub first_available: u64,
}

/// How much the log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `replay_max_bytes`.
    pub max_bytes: u64,
    /// `replay_max_age_secs`, in ms.
    pub max_age_ms: i64,
    /// Seal a segment at this size: an eighth of `max_bytes`, within
    /// [`MIN_SEGMENT_BYTES`]..=[`MAX_SEGMENT_BYTES`].
    pub segment_bytes: u64,
}

impl Retention {
    /// Retention by bytes and age; the segment size follows from the bytes.
    pub fn new(max_bytes: u64, max_age_ms: i64) -> Retention {
        Retention { max_bytes, max_age_ms, segment_bytes: (max_bytes / 8).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES) }
    }
}

/// A segment truncated when the log was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The segment file.
    pub path: PathBuf,
    /// Where its last whole record ends (its new length).
    pub offset: u64,
    /// Bytes dropped after it.
    pub dropped_bytes: u64,
    /// What was wrong there.
    pub problem: &'static str,
}

/// What the log holds, for `/status` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Figures {
    /// Bytes of every segment.
    pub bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// Records held.
    pub records: u64,
    /// The oldest sequence number held (the next one when empty).
    pub first_seq: u64,
    /// Epoch ms when the oldest record held was written (`None`: empty).
    pub oldest_written_ms: Option<i64>,
    /// Bytes of the hot tail (JSON).
    pub hot_bytes: u64,
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    /// Its file.
    path: PathBuf,
    /// The first record's sequence number (the name's number).
    first_seq: u64,
    /// The last record's sequence number.
    last_seq: u64,
    /// Records in it.
    records: u64,
    /// Bytes of whole records (the file's length).
    len: u64,
    /// `(seq, offset)` of a record every [`INDEX_EVERY_BYTES`].
    index: Vec<(u64, u64)>,
    /// Bytes appended since the last index entry.
    since_index: u64,
    /// When its oldest record was written (epoch ms).
    oldest_ms: i64,
    /// When its newest record was written (epoch ms).
    newest_ms: i64,
}

impl Segment {
    fn empty(path: PathBuf, first_seq: u64) -> Segment {
        Segment { path, first_seq, last_seq: 0, records: 0, len: 0, index: Vec::new(), since_index: 0, oldest_ms: 0, newest_ms: 0 }
    }

    /// Notes a record of `bytes` bytes at the end.
    fn note(&mut self, seq: u64, bytes: u64, written_ms: i64) {
        if self.records == 0 {
            self.first_seq = seq;
            self.oldest_ms = written_ms;
        }
        if self.records == 0 || self.since_index >= INDEX_EVERY_BYTES {
            self.index.push((seq, self.len));
            self.since_index = 0;
        }
        self.last_seq = seq;
        self.records += 1;
        self.len += bytes;
        self.since_index += bytes;
        self.newest_ms = written_ms;
    }

    /// Offset of the indexed record at or before `seq`.
    fn offset_for(&self, seq: u64) -> u64 {
        let i = self.index.partition_point(|&(s, _)| s <= seq);
        if i == 0 {
            0
        } else {
            self.index[i - 1].1
        }
    }
}

/// Records to read from a segment file, outside the log's lock.
#[derive(Debug, Clone)]
pub struct DiskRead {
    /// The segment file.
    path: PathBuf,
    /// Where to start reading (an indexed record at or before `from`).
    offset: u64,
    /// Read no further (the segment's length when planned).
    end: u64,
    /// The first sequence number wanted.
    from: u64,
    /// At most this many records.
    max_records: usize,
    /// Stop once this many JSON bytes are read.
    max_bytes: usize,
    /// Where the reader's cursor goes when nothing at or after `from` is in
    /// this segment (the next record held, or the head).
    pub gap_to: u64,
}

/// How a read is served.
#[derive(Debug)]
pub enum Plan {
    /// From memory: the records are in `out`; when there are none, the
    /// cursor moves to `skip_to` (sequence numbers never used).
    Hot {
        /// The next sequence number held at or after the cursor.
        skip_to: u64,
    },
    /// From a segment file: run [`DiskRead::run`] off the async runtime.
    Disk(DiskRead),
}

impl DiskRead {
    /// Reads the planned records into `out`. `NotFound`: retention removed
    /// the segment meanwhile.
    pub fn run(&self, out: &mut Vec<Entry>) -> std::io::Result<()> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut r = BufReader::with_capacity(64 << 10, f.take(self.end.saturating_sub(self.offset)));
        let mut body = Vec::new();
        let mut bytes = 0usize;
        let mut n = 0usize;
        while n < self.max_records && bytes < self.max_bytes {
            match read_record(&mut r, &mut body)? {
                None => break,
                Some(Err(problem)) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {problem}", self.path.display())))
                }
                Some(Ok(rec)) => {
                    if rec.seq < self.from {
                        continue;
                    }
                    bytes += rec.json.len();
                    n += 1;
                    out.push(rec.into_entry());
                }
            }
        }
        Ok(())
    }
}

/// Reads a segment file from its start, for tools that read the log
/// offline (`lag report`): each whole record's observed time (epoch ms)
/// and JSON go to `visit`. Returns the records read and, when the segment
/// ends in a torn or corrupt record, what was wrong there (nothing after
/// it is read; the file is not changed).
pub fn read_segment(path: &Path, mut visit: impl FnMut(i64, &str)) -> std::io::Result<(u64, Option<&'static str>)> {
    let mut r = BufReader::with_capacity(256 << 10, File::open(path)?);
    let mut body = Vec::new();
    let mut n = 0u64;
    loop {
        match read_record(&mut r, &mut body)? {
            None => return Ok((n, None)),
            Some(Err(problem)) => return Ok((n, Some(problem))),
            Some(Ok(rec)) => {
                n += 1;
                visit(rec.observed_ms, rec.json);
            }
        }
    }
}

/// True when `path` is named like a segment file (`<20 digits>.seg`).
pub fn is_segment_name(path: &Path) -> bool {
    path.extension().and_then(|x| x.to_str()) == Some(EXT)
        && path.file_stem().and_then(|s| s.to_str()).is_some_and(|s| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
}

/// A record as read back.
struct Decoded<'a> {
    seq: u64,
    observed_ms: i64,
    written_ms: i64,
    status: u16,
    key_digest: KeyDigest,
    service_id: &'a str,
    json: &'a str,
}

impl Decoded<'_> {
    fn into_entry(self) -> Entry {
        Entry {
            seq: self.seq,
            item: Arc::new(Item {
                json: self.json.into(),
                service_id: self.service_id.into(),
                key_digest: self.key_digest,
                status: self.status,
                observed_ms: self.observed_ms,
            }),
        }
    }
}

/// Reads one record: `None` at a clean end, `Some(Err)` for damage (a torn
/// or corrupt record), I/O errors as such.
fn read_record<'a, R: Read>(r: &mut R, body: &'a mut Vec<u8>) -> std::io::Result<Option<Result<Decoded<'a>, &'static str>>> {
    let mut head = [0u8; HEAD];
    match read_full(r, &mut head)? {
        0 => return Ok(None),
        n if n < HEAD => return Ok(Some(Err("torn record header"))),
        _ => {}
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(FIXED..=MAX_BODY).contains(&len) {
        return Ok(Some(Err("bad record length")));
    }
    body.resize(len, 0);
    if read_full(r, body)? < len {
        return Ok(Some(Err("torn record")));
    }
    if crc32fast::hash(body) != crc {
        return Ok(Some(Err("checksum mismatch")));
    }
    Ok(Some(decode(body)))
}

/// Reads until `buf` is full or the end; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn decode(b: &[u8]) -> Result<Decoded<'_>, &'static str> {
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    let seq = u64_at(0);
    let observed_ms = u64_at(8) as i64;
    let written_ms = u64_at(16) as i64;
    let status = u16::from_le_bytes([b[24], b[25]]);
    let mut key_digest = [0u8; 16];
    key_digest.copy_from_slice(&b[26..42]);
    let svc_len = u16::from_le_bytes([b[42], b[43]]) as usize;
    if FIXED + svc_len > b.len() {
        return Err("bad service_id length");
    }
    let service_id = std::str::from_utf8(&b[FIXED..FIXED + svc_len]).map_err(|_| "service_id is not UTF-8")?;
    let json = std::str::from_utf8(&b[FIXED + svc_len..]).map_err(|_| "record is not UTF-8")?;
    Ok(Decoded { seq, observed_ms, written_ms, status, key_digest, service_id, json })
}

/// Appends one encoded record to `buf`; returns its size.
fn encode(buf: &mut Vec<u8>, seq: u64, item: &Item, written_ms: i64) -> u64 {
    let start = buf.len();
    let svc = &item.service_id.as_bytes()[..item.service_id.len().min(u16::MAX as usize)];
    let len = FIXED + svc.len() + item.json.len();
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&item.observed_ms.to_le_bytes());
    buf.extend_from_slice(&written_ms.to_le_bytes());
    buf.extend_from_slice(&item.status.to_le_bytes());
    buf.extend_from_slice(&item.key_digest);
    buf.extend_from_slice(&(svc.len() as u16).to_le_bytes());
    buf.extend_from_slice(svc);
    buf.extend_from_slice(item.json.as_bytes());
    let crc = crc32fast::hash(&buf[start + HEAD..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    (buf.len() - start) as u64
}

/// Files to fsync, taken from the log and synced off the async runtime.
pub struct SyncJob {
    /// Segment files with unsynced writes.
    files: Vec<File>,
    /// The directory, when segments were created or removed.
    dir: Option<PathBuf>,
}

impl SyncJob {
    /// fsyncs the files, then the directory.
    pub fn run(self) -> std::io::Result<()> {
        for f in &self.files {
            f.sync_data()?;
        }
        if let Some(dir) = self.dir {
            File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// The log. See the module docs.
#[derive(Debug)]
pub struct ReplayLog {
    /// `<state_dir>/replay`.
    dir: PathBuf,
    /// Segments, oldest first; the last one is appended to (once `active`
    /// is open).
    segments: VecDeque<Segment>,
    /// The newest segment, open for appending (`None`: the next append
    /// starts a new segment).
    active: Option<File>,
    /// Sealed segment files not yet fsynced.
    unsynced: Vec<File>,
    /// The active segment has unsynced writes.
    dirty: bool,
    /// Segments were created or removed since the last directory fsync.
    dir_dirty: bool,
    /// The newest records, oldest first (contiguous sequence numbers).
    hot: VecDeque<Entry>,
    /// JSON bytes in `hot`.
    hot_bytes: u64,
    /// The sequence number the next record gets.
    next_seq: u64,
    /// Bytes of every segment.
    total_bytes: u64,
    /// Records in every segment.
    total_records: u64,
    /// How much to keep.
    retention: Retention,
    /// Encoding buffer, reused.
    buf: Vec<u8>,
}

impl ReplayLog {
    /// Opens (creating) `dir`, scanning and repairing its segments.
    /// Numbering continues after the newest record, or at `min_next_seq`
    /// when that is later.
    pub fn open(dir: &Path, retention: Retention, min_next_seq: u64) -> std::io::Result<(ReplayLog, Vec<Repair>)> {
        std::fs::create_dir_all(dir)?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let path = e?.path();
            if path.extension().and_then(|x| x.to_str()) != Some(EXT) {
                continue;
            }
            if let Some(n) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()) {
                names.push((n, path));
            }
        }
        names.sort();
        let mut segments = VecDeque::new();
        let mut repairs = Vec::new();
        let mut last_seq = 0u64;
        for (first, path) in names {
            let (seg, repair) = scan(&path, first, last_seq)?;
            repairs.extend(repair);
            if seg.records == 0 {
                std::fs::remove_file(&path)?;
                continue;
            }
            last_seq = seg.last_seq;
            segments.push_back(seg);
        }
        let total_bytes = segments.iter().map(|s| s.len).sum();
        let total_records = segments.iter().map(|s| s.records).sum();
        let log = ReplayLog {
            dir: dir.to_path_buf(),
            segments,
            active: None,
            unsynced: Vec::new(),
            dirty: false,
            dir_dirty: !repairs.is_empty(),
            hot: VecDeque::new(),
            hot_bytes: 0,
            next_seq: (last_seq + 1).max(min_next_seq).max(1),
            total_bytes,
            total_records,
            retention,
            buf: Vec::new(),
        };
        Ok((log, repairs))
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The oldest sequence number held (`next_seq` when empty).
    pub fn first_seq(&self) -> u64 {
        self.segments.front().map_or(self.next_seq, |s| s.first_seq)
    }

    /// Appends records (one `write()`, two when a segment is sealed on the
    /// way) and returns the last sequence number. On an error, the records
    /// before `.0` are in the log (numbered) and the rest are not: the
    /// caller retries with those.
    pub fn append(&mut self, items: &[Arc<Item>], now_ms: i64) -> Result<u64, (usize, std::io::Error)> {
        let mut done = 0usize;
        while done < items.len() {
            if self.active.is_none() || self.segments.back().is_none_or(|s| s.len >= self.retention.segment_bytes) {
                self.roll().map_err(|e| (done, e))?;
            }
            let Some(seg) = self.segments.back() else { break };
            // Encode what fits in this segment (at least one record).
            let room = self.retention.segment_bytes.saturating_sub(seg.len);
            self.buf.clear();
            let mut sizes: Vec<u64> = Vec::new();
            let mut bytes = 0u64;
            for (i, it) in items[done..].iter().enumerate() {
                if i > 0 && bytes >= room {
                    break;
                }
                let n = encode(&mut self.buf, self.next_seq + i as u64, it, now_ms);
                bytes += n;
                sizes.push(n);
            }
            let committed = seg.len;
            let Some(f) = self.active.as_mut() else { break };
            if let Err(e) = f.write_all(&self.buf) {
                // Drop a partial write so the file ends on a whole record.
                let _ = f.set_len(committed);
                let _ = f.seek(SeekFrom::Start(committed));
                return Err((done, e));
            }
            self.dirty = true;
            let Some(seg) = self.segments.back_mut() else { break };
            for (i, n) in sizes.iter().enumerate() {
                let seq = self.next_seq;
                seg.note(seq, *n, now_ms);
                let item = items[done + i].clone();
                self.hot_bytes += item.json.len() as u64;
                self.hot.push_back(Entry { seq, item });
                self.next_seq += 1;
            }
            self.total_bytes += bytes;
            self.total_records += sizes.len() as u64;
            done += sizes.len();
        }
        while self.hot_bytes > HOT_BYTES && self.hot.len() > 1 {
            if let Some(e) = self.hot.pop_front() {
                self.hot_bytes -= e.item.json.len() as u64;
            }
        }
        if self.buf.capacity() > 4 << 20 {
            self.buf = Vec::new();
        }
        Ok(self.next_seq - 1)
    }

    /// Seals the active segment (to be fsynced) and starts a new one named
    /// after the next sequence number.
    fn roll(&mut self) -> std::io::Result<()> {
        if let Some(old) = self.active.take() {
            if self.dirty {
                self.unsynced.push(old);
            }
            self.dirty = false;
        }
        // An empty newest segment (its file was created, nothing written):
        // reuse its name.
        if self.segments.back().is_some_and(|s| s.records == 0) {
            if let Some(s) = self.segments.pop_back() {
                let _ = std::fs::remove_file(&s.path);
            }
        }
        let path = self.dir.join(format!("{:020}.{EXT}", self.next_seq));
        let f = OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
        self.segments.push_back(Segment::empty(path, self.next_seq));
        self.active = Some(f);
        self.dir_dirty = true;
        Ok(())
    }

    /// Removes segments beyond the retention; returns true when any was.
    pub fn retain(&mut self, now_ms: i64) -> bool {
        let mut removed = false;
        loop {
            let n = self.segments.len();
            let Some(front) = self.segments.front() else { break };
            let too_old = front.records > 0 && now_ms - front.newest_ms > self.retention.max_age_ms;
            let too_big = n > 1 && self.total_bytes > self.retention.max_bytes;
            if !(too_old || too_big) {
                break;
            }
            let Some(s) = self.segments.pop_front() else { break };
            if n == 1 {
                // The newest segment aged out (no traffic for that long):
                // the next append starts a new one.
                self.active = None;
                self.dirty = false;
                self.hot.clear();
                self.hot_bytes = 0;
            }
            self.total_bytes -= s.len;
            self.total_records -= s.records;
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(path = %s.path.display(), error = %e, "channel: cannot remove a replay log segment");
            }
            self.dir_dirty = true;
            removed = true;
        }
        // The hot tail never holds records older than the log.
        let first = self.first_seq();
        while self.hot.front().is_some_and(|e| e.seq < first) {
            if let Some(e) = self.hot.pop_front() {
                self.hot_bytes -= e.item.json.len() as u64;
            }
        }
        removed
    }

    /// Files to fsync now (`None`: nothing unsynced).
    pub fn take_sync(&mut self) -> std::io::Result<Option<SyncJob>> {
        let mut files = std::mem::take(&mut self.unsynced);
        if self.dirty {
            if let Some(f) = &self.active {
                files.push(f.try_clone()?);
            }
            self.dirty = false;
        }
        let dir = std::mem::take(&mut self.dir_dirty).then(|| self.dir.clone());
        if files.is_empty() && dir.is_none() {
            return Ok(None);
        }
        Ok(Some(SyncJob { files, dir }))
    }

    /// Plans a read of records `from..`: at most `max_records`, stopping
    /// once `max_bytes` of JSON are read (at least one record when any is
    /// held). Hot records are copied into `out` at once.
    pub fn read(&self, from: u64, max_records: usize, max_bytes: usize, out: &mut Vec<Entry>) -> Result<Plan, Evicted> {
        let first = self.first_seq();
        if from < first {
            return Err(Evicted { first_available: first });
        }
        if from >= self.next_seq {
            return Ok(Plan::Hot { skip_to: self.next_seq });
        }
        if let Some(h) = self.hot.front().filter(|h| from >= h.seq) {
            let start = self.hot.partition_point(|e| e.seq < from);
            let _ = h;
            let mut bytes = 0usize;
            for e in self.hot.iter().skip(start).take(max_records) {
                if bytes >= max_bytes {
                    break;
                }
                bytes += e.item.json.len();
                out.push(e.clone());
            }
            return Ok(Plan::Hot { skip_to: self.next_seq });
        }
        // The first segment with a record at or after `from`.
        let i = self.segments.partition_point(|s| s.records > 0 && s.last_seq < from);
        let Some(seg) = self.segments.get(i).filter(|s| s.records > 0) else {
            return Ok(Plan::Hot { skip_to: self.hot.front().map_or(self.next_seq, |h| h.seq) });
        };
        let gap_to = self.segments.get(i + 1).filter(|s| s.records > 0).map_or(self.next_seq, |s| s.first_seq).max(from);
        Ok(Plan::Disk(DiskRead {
            path: seg.path.clone(),
            offset: seg.offset_for(from),
            end: seg.len,
            from,
            max_records,
            max_bytes,
            gap_to,
        }))
    }

    /// What the log holds.
    pub fn figures(&self) -> Figures {
        Figures {
            bytes: self.total_bytes,
            segments: self.segments.len() as u64,
            records: self.total_records,
            first_seq: self.first_seq(),
            oldest_written_ms: self.segments.front().filter(|s| s.records > 0).map(|s| s.oldest_ms),
            hot_bytes: self.hot_bytes,
        }
    }
}

/// Reads a segment, building its index; truncates it after its last whole
/// record when the rest is torn or corrupt (or numbered at or below
/// `after_seq`, the previous segment's last).
fn scan(path: &Path, first_seq: u64, after_seq: u64) -> std::io::Result<(Segment, Option<Repair>)> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let file_len = file.metadata()?.len();
    let mut seg = Segment::empty(path.to_path_buf(), first_seq);
    let mut r = BufReader::with_capacity(64 << 10, &file);
    let mut body = Vec::new();
    let mut problem = None;
    let mut prev = after_seq;
    loop {
        match read_record(&mut r, &mut body)? {
            None => break,
            Some(Err(p)) => {
                problem = Some(p);
                break;
            }
            Some(Ok(rec)) => {
                if rec.seq <= prev {
                    problem = Some("sequence numbers do not increase");
                    break;
                }
                prev = rec.seq;
                let n = (HEAD + body_len(&rec)) as u64;
                seg.note(rec.seq, n, rec.written_ms);
            }
        }
    }
    drop(r);
    let repair = match problem {
        Some(problem) => {
            file.set_len(seg.len)?;
            file.sync_all()?;
            Some(Repair { path: path.to_path_buf(), offset: seg.len, dropped_bytes: file_len - seg.len, problem })
        }
        None => None,
    };
    Ok((seg, repair))
}

fn body_len(d: &Decoded<'_>) -> usize {
    FIXED + d.service_id.len() + d.json.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(i: u64, len: usize) -> Arc<Item> {
        let json = format!("{{\"n\":\"{i}\",\"pad\":\"{}\"}}", "x".repeat(len));
        Arc::new(Item { json: json.into(), service_id: "svc".into(), key_digest: key_digest("k"), status: 200, observed_ms: 7 })
    }

    fn seqs(out: &[Entry]) -> Vec<u64> {
        out.iter().map(|e| e.seq).collect()
    }

    /// Reads everything from `from` like a connection does.
    fn read_all(log: &ReplayLog, mut from: u64) -> Vec<Entry> {
        let mut all = Vec::new();
        while from < log.next_seq() {
            let mut out = Vec::new();
            let skip = match log.read(from, 100, 1 << 20, &mut out).unwrap() {
                Plan::Hot { skip_to } => skip_to,
                Plan::Disk(d) => {
                    d.run(&mut out).unwrap();
                    d.gap_to
                }
            };
            match out.last() {
                Some(l) => from = l.seq + 1,
                None => from = skip,
            }
            all.extend(out);
        }
        all
    }

    #[test]
    fn appends_reads_back_and_reopens_where_it_left_off() {
        let dir = tempfile::tempdir().unwrap();
        let ret = Retention::new(1 << 30, i64::MAX / 2);
        let (mut log, repairs) = ReplayLog::open(dir.path(), ret, 1).unwrap();
        assert!(repairs.is_empty());
        let items: Vec<_> = (0..5000).map(|i| item(i, 100)).collect();
        for chunk in items.chunks(100) {
            log.append(chunk, 1000).unwrap();
        }
        assert_eq!(log.next_seq(), 5001);
        let all = read_all(&log, 1);
        assert_eq!(seqs(&all), (1..=5000).collect::<Vec<_>>());
        assert_eq!(&*all[4321].item.json, &*items[4321].json);
        assert_eq!(all[0].item.key_digest, key_digest("k"));
        drop(log);
        let (log, repairs) = ReplayLog::open(dir.path(), ret, 1).unwrap();
        assert!(repairs.is_empty());
        assert_eq!(log.next_seq(), 5001);
        assert_eq!(log.first_seq(), 1);
        let all = read_all(&log, 2500);
        assert_eq!(seqs(&all), (2500..=5000).collect::<Vec<_>>());
        assert_eq!(&*all[0].item.json, &*items[2499].json);
    }

    #[test]
    fn a_torn_tail_is_truncated_to_the_last_whole_record_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let ret = Retention::new(1 << 30, i64::MAX / 2);
        let (mut log, _) = ReplayLog::open(dir.path(), ret, 1).unwrap();
        let items: Vec<_> = (0..10).map(|i| item(i, 50)).collect();
        log.append(&items, 1000).unwrap();
        drop(log);
        let seg = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        let whole = std::fs::metadata(&seg).unwrap().len();
        // Half a record more: what a kill in the middle of a write leaves.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        let mut buf = Vec::new();
        encode(&mut buf, 11, &items[0], 1000);
        f.write_all(&buf[..buf.len() / 2]).unwrap();
        drop(f);
        let (log, repairs) = ReplayLog::open(dir.path(), ret, 1).unwrap();
        assert_eq!(repairs.len(), 1);
        assert_eq!((repairs[0].offset, repairs[0].dropped_bytes, repairs[0].problem), (whole, (buf.len() / 2) as u64, "torn record"));
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole);
        assert_eq!(seqs(&read_all(&log, 1)), (1..=10).collect::<Vec<_>>());
        assert_eq!(log.next_seq(), 11);
        // A flipped byte inside a record: the segment ends before it.
        drop(log);
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = bytes.len() - 10;
        bytes[at] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let (log, repairs) = ReplayLog::open(dir.path(), ret, 1).unwrap();
        assert_eq!(repairs[0].problem, "checksum mismatch");
        assert_eq!(seqs(&read_all(&log, 1)), (1..=9).collect::<Vec<_>>());
        // Numbering never goes back: the caller's reservation wins.
        assert_eq!(log.next_seq(), 10);
        let (log, _) = ReplayLog::open(dir.path(), ret, 500).unwrap();
        assert_eq!(log.next_seq(), 500);
    }

    #[test]
    fn retention_by_bytes_removes_whole_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        let ret = Retention::new(256 << 10, i64::MAX / 2);
        assert_eq!(ret.segment_bytes, 32 << 10);
        let (mut log, _) = ReplayLog::open(dir.path(), ret, 1).unwrap();
        for i in 0..2000 {
            log.append(&[item(i, 400)], 1000).unwrap();
            log.retain(1000);
        }
        let f = log.figures();
        assert!(f.bytes <= (256 << 10) + (32 << 10), "{f:?}");
        assert!(f.segments >= 8, "{f:?}");
        let files = std::fs::read_dir(dir.path()).unwrap().count() as u64;
        assert_eq!(files, f.segments);
        let first = log.first_seq();
        assert!(first > 1);
        let mut out = Vec::new();
        assert_eq!(log.read(first - 1, 10, 1000, &mut out).unwrap_err(), Evicted { first_available: first });
        assert_eq!(seqs(&read_all(&log, first)), (first..=2000).collect::<Vec<_>>());
        assert_eq!(f.records, 2001 - first);
    }

    #[test]
    fn retention_by_age_removes_old_segments_and_an_idle_newest_one() {
        let dir = tempfile::tempdir().unwrap();
        let ret = Retention::new(1 << 30, 60_000);
        let (mut log, _) = ReplayLog::open(dir.path(), Retention { segment_bytes: MIN_SEGMENT_BYTES, ..ret }, 1).unwrap();
        for i in 0..200 {
            log.append(&[item(i, 400)], 1_000 + i as i64 * 1000).unwrap();
        }
        let segs = log.figures().segments;
        assert!(segs > 3);
        // At 150 s, records written before 90 s are too old.
        assert!(log.retain(150_000));
        let first = log.first_seq();
        assert!(first > 1 && first <= 90, "{first}");
        assert!(log.figures().oldest_written_ms.unwrap() >= 60_000);
        // Long after the last record: everything goes, numbering goes on.
        log.retain(10_000_000);
        assert_eq!(log.figures().segments, 0);
        assert_eq!(log.first_seq(), 201);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        log.append(&[item(0, 10)], 10_000_000).unwrap();
        assert_eq!(seqs(&read_all(&log, 1.max(log.first_seq()))), vec![201]);
    }

    #[test]
    fn reading_across_a_numbering_gap_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let ret = Retention::new(1 << 30, i64::MAX / 2);
        let (mut log, _) = ReplayLog::open(dir.path(), ret, 1).unwrap();
        log.append(&[item(1, 10), item(2, 10)], 1).unwrap();
        drop(log);
        // A restart after a crash: numbering resumes past the reservation.
        let (mut log, _) = ReplayLog::open(dir.path(), ret, 100).unwrap();
        log.append(&[item(3, 10)], 1).unwrap();
        assert_eq!(seqs(&read_all(&log, 1)), vec![1, 2, 100]);
        assert_eq!(seqs(&read_all(&log, 50)), vec![100]);
    }
}
