//! The replay log: the channel's records on disk, for `?since=` replay
//! across reconnects and restarts, with a small hot tail in memory
//! ([`HOT_BYTES`], 2 MiB).
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
//! record is `len: u32 LE` (the body's length; its high bit set for the
//! current format), `crc32(body): u32 LE`, then the body: `seq: u64`,
//! `observed_ms: i64`, `written_ms: i64`, `status: u16`, `api_key digest:
//! [u8; 16]` (SHA-256 of the unmasked key, for the `api_key=` filter: the
//! key itself is never written), `service_id len: u16`, `service_id`,
//! then `n: u8` and `n` texts, each `channels: u64` (the slot bits of the
//! channels it is for, [`super::slots`]), `len: u32` and the record's JSON
//! exactly as those channels are sent it (one text per masking among the
//! channels the record reaches; none when it reaches no channel: the
//! record keeps its sequence number). Sequence numbers increase strictly
//! within and across segments (they may jump after a crash: see
//! `channel.seq`).
//!
//! Records of the first format (written before channels had slots: the
//! high bit of `len` clear, the JSON right after `service_id`) are read as
//! the default channel's only: a stream never sees a record from before
//! it existed. A bridge of the first format cannot read the current one
//! (downgrading means removing `<state_dir>/replay`).
//!
//! In memory each segment keeps a sparse index (a `(seq, offset)` pair
//! every [`INDEX_EVERY_BYTES`]) and the channels of each record
//! (`SeqBits`, a byte per record); the channels of records no longer
//! held are kept a while longer ([`HISTORY_RECORDS`]), so a `lost` notice
//! counts only the records of the channel that asks ([`ReplayLog::count_for`]).

//! # Damage
//!
//! A segment may hold bytes that are not a good record (a disk error, a
//! tool that wrote into the file, a power loss): one whose length is
//! impossible, whose checksum fails, whose body does not decode or whose
//! sequence number does not follow the one before. Reading (at start and
//! while running, `SegmentReader`) skips past them to the next good
//! record: the next offset holding a plausible header, a body with the
//! right checksum and a sequence number after the last good one (and,
//! while running, not after the segment's last). Within a segment
//! sequence numbers follow one another (each run of the bridge starts a
//! new segment), so what the damage destroyed is known by sequence
//! numbers: the first after the last good record to the one before the
//! next good record, or, at a segment's end, to the one before the next
//! segment's first (the log's next at the newest segment; after a crash
//! these may include numbers never used). Records removed whole from the
//! middle of a segment show the same way (a number jumps). Readers
//! report it ([`ReadOutcome`]), the log keeps it ([`ReplayLog::note_lost`],
//! [`Plan::Lost`]) and the channel sends clients a `lost` notice for it.
//! Damaged bytes stay in the file (a later start finds and reports the
//! same loss), except a torn tail: a record that runs past the end of the
//! newest bytes and starts like the next record, what a kill in the middle
//! of a `write()` leaves. That record was never acknowledged nor served:
//! the file is cut back to its last whole record ([`Repair::truncated`]).
//! Not detectable: a segment that lost its last records whole (cut at a
//! record boundary, as a power loss can): the numbers after its last
//! record look like those a crash skips, and pass without a notice.
//!
//! A directory removed while the bridge runs is made again
//! ([`ReplayLog::check_dir`]): the records it held are gone (clients asking
//! for them get the `lost` notice of evicted records), new ones go to new
//! segments.
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
pub const DIR: &str = crate::state_dir::StateDir::REPLAY;

/// Segment file extension.
const EXT: &str = "seg";

/// `len` and `crc` before each body.
const HEAD: usize = 8;

/// The fixed part of a body, before `service_id` and the JSON.
const FIXED: usize = 8 + 8 + 8 + 2 + 16 + 2;

/// A body longer than this is damage, not a record (records are a few KB).
const MAX_BODY: usize = 16 << 20;

/// The high bit of `len`: a record of the second format (channel slots and
/// one text per masking). Records of the first format (one text, for the
/// default channel) are still read.
const V2_FLAG: u32 = 1 << 31;

/// The most texts a record has (one per masking among its channels).
const MAX_TEXTS: usize = 64;

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

/// Slot bits a record of the first format (before channel slots) is
/// read with: the default channel's only ([`super::slots`]).
pub const DEFAULT_BITS: u64 = 1;

/// Bit 63 is no channel's (slots are 0 to 62): it marks a record whose
/// channels are unknown in [`SeqBits`]'s wide form.
const UNKNOWN_BITS: u64 = 1 << 63;

/// A record's texts, by the channels (slot bits) each is for: one text per
/// masking among the channels the record reaches ([`super::route`]).
#[derive(Debug)]
pub enum Texts {
    /// The record reaches no channel (it keeps its sequence number).
    None,
    /// One text for the channels in the bits (the common case).
    One(u64, Box<str>),
    /// One text per masking, each for the channels in its bits (disjoint).
    Many(Box<[(u64, Box<str>)]>),
}

impl Texts {
    /// From `(bits, text)` pairs (a text for no channel is left out).
    pub fn from_vec(mut v: Vec<(u64, Box<str>)>) -> Texts {
        v.retain(|(b, _)| *b != 0);
        match v.len() {
            0 => Texts::None,
            1 => {
                let (b, t) = v.remove(0);
                Texts::One(b, t)
            }
            _ => Texts::Many(v.into_boxed_slice()),
        }
    }

    /// Every channel the record reaches.
    pub fn bits(&self) -> u64 {
        self.iter().fold(0, |acc, (b, _)| acc | b)
    }

    /// The text for the channel `bit` (a single bit), if it reaches it.
    #[inline]
    pub fn text_for(&self, bit: u64) -> Option<&str> {
        match self {
            Texts::None => None,
            Texts::One(b, t) => (b & bit != 0).then_some(&**t),
            Texts::Many(v) => v.iter().find(|(b, _)| b & bit != 0).map(|(_, t)| &**t),
        }
    }

    /// Bytes of every text.
    pub fn bytes(&self) -> usize {
        self.iter().map(|(_, t)| t.len()).sum()
    }

    /// `(bits, text)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &str)> {
        let (one, many) = match self {
            Texts::None => (None, &[][..]),
            Texts::One(b, t) => (Some((*b, &**t)), &[][..]),
            Texts::Many(v) => (None, &v[..]),
        };
        one.into_iter().chain(many.iter().map(|(b, t)| (*b, &**t)))
    }
}

/// One record as the channel serves it.
#[derive(Debug)]
pub struct Item {
    /// The record in the `ecls` shape, one text per masking of the
    /// channels it reaches.
    pub texts: Texts,
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

/// Damage found in a segment when the log was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The segment file.
    pub path: PathBuf,
    /// Where the bad bytes start.
    pub offset: u64,
    /// How many there are (up to the next good record, or the end).
    pub bytes: u64,
    /// True for a torn tail: the file was cut back to `offset`, and no
    /// record was lost.
    pub truncated: bool,
    /// The first and last sequence numbers whose records the damage
    /// destroyed (`None`: a torn tail).
    pub lost: Option<(u64, u64)>,
    /// What was wrong there.
    pub problem: &'static str,
}

/// Damage a reader met and skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub path: PathBuf,
    /// Where the bad bytes start.
    pub offset: u64,
    /// How many there are.
    pub bytes: u64,
    /// The first and last sequence numbers whose records it destroyed.
    pub lost: (u64, u64),
    /// What was wrong there.
    pub problem: &'static str,
}

/// What a [`DiskRead`] met besides its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Sequence numbers at or after the read's start that were lost to
    /// damage, just before the records read (first, last): the reader is
    /// owed a `lost` notice before them.
    pub lost: Option<(u64, u64)>,
    /// The damage met, whole (for the log to keep and count).
    pub damage: Option<Damage>,
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
    /// The channels of each record, from the name's number on.
    bits: SeqBits,
}

impl Segment {
    fn empty(path: PathBuf, first_seq: u64) -> Segment {
        Segment {
            path,
            first_seq,
            last_seq: 0,
            records: 0,
            len: 0,
            index: Vec::new(),
            since_index: 0,
            oldest_ms: 0,
            newest_ms: 0,
            bits: SeqBits::new(first_seq),
        }
    }

    /// Notes damaged bytes at the end (kept in the file, never read as a
    /// record).
    fn skip(&mut self, bytes: u64) {
        self.len += bytes;
        self.since_index += bytes;
    }

    /// Notes a record of `bytes` bytes at the end, reaching the channels
    /// `bits`.
    fn note(&mut self, seq: u64, bytes: u64, written_ms: i64, bits: u64) {
        self.bits.set(seq, Some(bits));
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

    /// The indexed record at or before `seq`: its sequence number and
    /// offset.
    fn index_for(&self, seq: u64) -> (u64, u64) {
        let i = self.index.partition_point(|&(s, _)| s <= seq);
        if i == 0 {
            (self.first_seq, 0)
        } else {
            self.index[i - 1]
        }
    }
}

/// The channels (slot bits) of a run of sequence numbers, one byte per
/// record (a code into a small table of the distinct sets; eight bytes
/// per record once a run has more than 254 of them), so `lost` notices can
/// count a channel's own records among those gone ([`ReplayLog::count_for`]).
/// A number whose record was destroyed before its channels were read
/// (damage found at start) is unknown.
#[derive(Debug, Default)]
struct SeqBits {
    /// The first sequence number covered.
    base: u64,
    /// The distinct sets, by code.
    dict: Vec<u64>,
    /// One code per number from `base` ([`UNKNOWN_CODE`]: unknown).
    codes: Vec<u8>,
    /// The sets themselves, once `dict` is full (then `codes` is empty).
    wide: Option<Vec<u64>>,
}

/// The code of an unknown set.
const UNKNOWN_CODE: u8 = u8::MAX;

/// Numbers whose channels are kept after their records left the log (for
/// the `lost` counts of clients asking for them): about 1 MiB.
pub const HISTORY_RECORDS: usize = 1 << 20;

impl SeqBits {
    fn new(base: u64) -> SeqBits {
        SeqBits { base, ..SeqBits::default() }
    }

    /// Numbers covered.
    fn len(&self) -> usize {
        self.wide.as_ref().map_or(self.codes.len(), Vec::len)
    }

    /// The number after the last covered.
    fn end(&self) -> u64 {
        self.base + self.len() as u64
    }

    /// Sets the channels of `seq` (`None`: unknown); the numbers between
    /// the last covered and `seq` become unknown.
    fn set(&mut self, seq: u64, bits: Option<u64>) {
        if seq < self.base {
            return;
        }
        let i = (seq - self.base) as usize;
        if self.wide.is_none() {
            let code = match bits {
                None => Some(UNKNOWN_CODE),
                Some(b) => match self.dict.iter().position(|&d| d == b) {
                    Some(c) => Some(c as u8),
                    None if self.dict.len() < usize::from(UNKNOWN_CODE) => {
                        self.dict.push(b);
                        Some((self.dict.len() - 1) as u8)
                    }
                    None => None,
                },
            };
            match code {
                Some(c) => {
                    if self.codes.len() <= i {
                        self.codes.resize(i + 1, UNKNOWN_CODE);
                    }
                    self.codes[i] = c;
                    return;
                }
                None => {
                    let wide: Vec<u64> =
                        self.codes.iter().map(|&c| self.dict.get(usize::from(c)).copied().unwrap_or(UNKNOWN_BITS)).collect();
                    self.codes = Vec::new();
                    self.dict = Vec::new();
                    self.wide = Some(wide);
                }
            }
        }
        if let Some(w) = self.wide.as_mut() {
            if w.len() <= i {
                w.resize(i + 1, UNKNOWN_BITS);
            }
            w[i] = bits.unwrap_or(UNKNOWN_BITS);
        }
    }

    /// Marks `first..=last` unknown where not known yet (damage at the end
    /// of a segment).
    fn pad_unknown(&mut self, last: u64) {
        // Bounded: a range that large is numbers a crash skipped, not records.
        if last >= self.end() && last - self.base < HISTORY_RECORDS as u64 {
            self.set(last, None);
        }
    }

    /// Records of `first..=last` (clamped to what is covered) that reach
    /// `bit`, and those whose channels are unknown.
    fn count(&self, bit: u64, first: u64, last: u64) -> (u64, u64) {
        let lo = first.max(self.base);
        let hi = last.min(self.end().saturating_sub(1));
        if lo > hi || self.len() == 0 {
            return (0, 0);
        }
        let range = (lo - self.base) as usize..=(hi - self.base) as usize;
        let (mut known, mut unknown) = (0, 0);
        match &self.wide {
            Some(w) => {
                for &b in &w[range] {
                    if b == UNKNOWN_BITS {
                        unknown += 1;
                    } else if b & bit != 0 {
                        known += 1;
                    }
                }
            }
            None => {
                let hits: Vec<bool> = self.dict.iter().map(|&d| d & bit != 0).collect();
                for &c in &self.codes[range] {
                    if c == UNKNOWN_CODE {
                        unknown += 1;
                    } else if hits.get(usize::from(c)).copied().unwrap_or(false) {
                        known += 1;
                    }
                }
            }
        }
        (known, unknown)
    }
}

/// Records to read from a segment file, outside the log's lock.
#[derive(Debug, Clone)]
pub struct DiskRead {
    /// The segment file.
    path: PathBuf,
    /// Where to start reading (an indexed record at or before `from`).
    offset: u64,
    /// The sequence number of the record at `offset`.
    offset_seq: u64,
    /// Read no further (the segment's length when planned).
    end: u64,
    /// The segment's last good record when planned: nothing after it is
    /// a record of this read.
    last_seq: u64,
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
    /// The records `first..=last` were lost to damage (known from an
    /// earlier read or the start): the reader is owed a `lost` notice, and
    /// goes on at `last + 1`.
    Lost {
        /// The reader's cursor.
        first: u64,
        /// The last sequence number lost.
        last: u64,
    },
}

impl DiskRead {
    /// The segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the planned records into `out`, skipping past damage
    /// ([`ReadOutcome`]: a read that met damage after some records stops
    /// there, so that a `lost` notice always comes before the records
    /// after the damage). `NotFound`: the segment file is gone (retention
    /// removed it meanwhile, or someone else did).
    pub fn run(&self, out: &mut Vec<Entry>) -> std::io::Result<ReadOutcome> {
        let file = File::open(&self.path)?;
        let end = self.end.min(file.metadata()?.len());
        let mut r = SegmentReader::new(&file, self.offset, end, self.offset_seq.saturating_sub(1), self.last_seq)?;
        let mut outcome = ReadOutcome::default();
        let mut bytes = 0usize;
        while out.len() < self.max_records && bytes < self.max_bytes {
            match r.next()? {
                Next::End => break,
                Next::Record { seq, .. } => {
                    if seq < self.from {
                        continue;
                    }
                    if let Some(e) = r.entry() {
                        bytes += e.item.texts.bytes();
                        out.push(e);
                    }
                }
                Next::Damage { at, resume, after, next_seq, problem, .. } => {
                    let last = next_seq.map_or(self.last_seq, |s| s - 1);
                    if last <= after {
                        // Nothing numbered was in the bad bytes (a
                        // record copied twice, a tail past the last).
                        continue;
                    }
                    let first = (after + 1).max(self.from);
                    if first > last {
                        continue;
                    }
                    if !out.is_empty() || outcome.lost.is_some() {
                        break;
                    }
                    outcome.lost = Some((first, last));
                    outcome.damage =
                        Some(Damage { path: self.path.clone(), offset: at, bytes: resume - at, lost: (after + 1, last), problem });
                }
            }
        }
        Ok(outcome)
    }
}

/// What [`SegmentReader::next`] met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// A good record ([`SegmentReader::entry`] has it).
    Record {
        /// Its sequence number.
        seq: u64,
        /// When it was written (epoch ms).
        written_ms: i64,
        /// Its size in the file.
        size: u64,
        /// The channels it reaches.
        bits: u64,
    },
    /// Bytes from `at` to `resume` are not a record.
    Damage {
        /// Where they start.
        at: u64,
        /// Where the next good record starts (or the end).
        resume: u64,
        /// The last good record's sequence number before them.
        after: u64,
        /// The next good record's (`None`: none before the end).
        next_seq: Option<u64>,
        /// What was wrong at `at`.
        problem: &'static str,
        /// A torn tail: a record that runs past the end and starts like
        /// the record after `after` (a write cut short), with nothing good
        /// after it.
        torn: bool,
    },
    /// The end.
    End,
}

/// Reads one segment file's records in order from an offset, skipping
/// past damage to the next good record (see the module docs). Bounded:
/// each byte is looked at a fixed number of times; a candidate record's
/// checksum is computed only when its header, sequence number and layout
/// are plausible.
struct SegmentReader<'f> {
    /// The file.
    file: &'f File,
    /// Buffered reads of it, at `pos`.
    r: BufReader<&'f File>,
    /// Where the next record starts.
    pos: u64,
    /// Read no further.
    end: u64,
    /// The last good record's sequence number: the next must be above.
    prev: u64,
    /// No record of this segment is numbered above this.
    max_seq: u64,
    /// The current record's body.
    body: Vec<u8>,
}

/// Bytes the search for the next good record looks at per read.
const RESYNC_WINDOW: usize = 64 << 10;

impl<'f> SegmentReader<'f> {
    fn new(file: &'f File, pos: u64, end: u64, prev: u64, max_seq: u64) -> std::io::Result<SegmentReader<'f>> {
        let mut r = BufReader::with_capacity(64 << 10, file);
        r.seek(SeekFrom::Start(pos))?;
        Ok(SegmentReader { file, r, pos, end, prev, max_seq, body: Vec::new() })
    }

    /// The next record, damage, or the end.
    fn next(&mut self) -> std::io::Result<Next> {
        if self.pos >= self.end {
            return Ok(Next::End);
        }
        let at = self.pos;
        let (problem, torn) = match read_record(&mut self.r, &mut self.body, self.end - at, self.prev + 1)? {
            Ok(size) => match decode(&self.body) {
                Ok(d) if d.seq > self.prev + 1 && d.seq <= self.max_seq => {
                    // Within a segment numbers follow one another: the
                    // records between were removed whole. Said first; the
                    // record is read again next.
                    let (after, seq) = (self.prev, d.seq);
                    self.prev = seq - 1;
                    self.r.seek(SeekFrom::Start(at))?;
                    return Ok(Next::Damage { at, resume: at, after, next_seq: Some(seq), problem: "records missing", torn: false });
                }
                Ok(d) if d.seq > self.prev && d.seq <= self.max_seq => {
                    let (seq, written_ms, bits) = (d.seq, d.written_ms, d.bits());
                    self.pos += size;
                    self.prev = seq;
                    return Ok(Next::Record { seq, written_ms, size, bits });
                }
                Ok(_) => ("sequence numbers do not increase", false),
                Err(p) => (p, false),
            },
            Err(bad) => bad,
        };
        let (resume, next_seq) = self.resync(at + 1)?;
        self.pos = resume;
        self.r.seek(SeekFrom::Start(resume))?;
        let after = self.prev;
        if let Some(s) = next_seq {
            // What lies between is reported here, once.
            self.prev = s - 1;
        }
        Ok(Next::Damage { at, resume, after, next_seq, problem, torn: torn && next_seq.is_none() })
    }

    /// The current record (after [`Next::Record`]) as an entry.
    fn entry(&self) -> Option<Entry> {
        decode(&self.body).ok().map(Decoded::into_entry)
    }

    /// The offset of the next good record at or after `from` and its
    /// sequence number; `(end, None)` when there is none.
    fn resync(&mut self, from: u64) -> std::io::Result<(u64, Option<u64>)> {
        use std::os::unix::fs::FileExt;
        let mut window = vec![0u8; RESYNC_WINDOW];
        let mut base = from;
        while base < self.end {
            let want = (self.end - base).min(RESYNC_WINDOW as u64) as usize;
            let mut got = 0;
            while got < want {
                match self.file.read_at(&mut window[got..want], base + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if got < want {
                // The file is shorter than planned (cut meanwhile).
                self.end = base + got as u64;
            }
            let at_end = base + got as u64 >= self.end;
            // A candidate needs its fixed part in the window; those too
            // close to its end are looked at from the next window.
            let last_start = if at_end { got } else { got.saturating_sub(HEAD + FIXED).max(1) };
            for i in 0..last_start {
                if let Some(seq) = self.plausible(&window[i..got], base + i as u64) {
                    if self.verify(base + i as u64, seq)? {
                        return Ok((base + i as u64, Some(seq)));
                    }
                }
            }
            base += last_start as u64;
        }
        Ok((self.end, None))
    }

    /// The sequence number of a record that could start at `offset`, whose
    /// first bytes are `b`, judged without its checksum.
    fn plausible(&self, b: &[u8], offset: u64) -> Option<u64> {
        if b.len() < HEAD + FIXED {
            return None;
        }
        let (len, v2) = body_len(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if !(FIXED..=MAX_BODY).contains(&len) || offset + (HEAD + len) as u64 > self.end {
            return None;
        }
        let body = &b[HEAD..];
        let seq = u64::from_le_bytes(body[..8].try_into().ok()?);
        if seq <= self.prev || seq > self.max_seq {
            return None;
        }
        let svc_len = u16::from_le_bytes([body[42], body[43]]) as usize;
        if FIXED + svc_len >= len {
            return None;
        }
        if v2 {
            // The number of texts, then the first one's bits, length and
            // JSON (an object).
            let at = FIXED + svc_len;
            return match body.get(at) {
                Some(&n) if usize::from(n) > MAX_TEXTS => None,
                Some(0) => (at + 1 == len).then_some(seq),
                _ => match body.get(at + 1 + 12) {
                    Some(&c) if c != b'{' => None,
                    _ => Some(seq),
                },
            };
        }
        // The JSON of a record is an object.
        match body.get(FIXED + svc_len) {
            Some(&c) if c != b'{' => None,
            _ => Some(seq),
        }
    }

    /// True when the record at `offset` numbered `seq` is whole and good.
    fn verify(&mut self, offset: u64, seq: u64) -> std::io::Result<bool> {
        use std::os::unix::fs::FileExt;
        let mut head = [0u8; HEAD];
        self.file.read_exact_at(&mut head, offset)?;
        let (len, _) = body_len(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        self.body.resize(len, 0);
        self.file.read_exact_at(&mut self.body, offset + HEAD as u64)?;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        Ok(crc32fast::hash(&self.body) == crc && decode(&self.body).is_ok_and(|d| d.seq == seq))
    }
}

/// Reads a segment file from its start, for tools that read the log
/// offline (`lag report`): each good record's observed time (epoch ms)
/// and JSON go to `visit`. Damage is skipped to the next good record as
/// the channel skips it (`SegmentReader`; the file is not changed).
/// Returns the records read and the damage met; a range lost at the
/// segment's end runs to `u64::MAX` (the next segment's first record is
/// not looked at).
pub fn read_segment(path: &Path, mut visit: impl FnMut(i64, &str)) -> std::io::Result<(u64, Vec<Damage>)> {
    let file = File::open(path)?;
    let end = file.metadata()?.len();
    // A segment is named after its first record's number.
    let first_seq = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let mut r = SegmentReader::new(&file, 0, end, first_seq.saturating_sub(1), u64::MAX)?;
    let (mut n, mut damage) = (0u64, Vec::new());
    loop {
        match r.next()? {
            Next::End => return Ok((n, damage)),
            Next::Record { .. } => {
                // One text per masking of the channels it reached: any
                // serves (masking changes keys only).
                if let Ok(d) = decode(&r.body) {
                    if let Some((_, json)) = d.texts.first() {
                        n += 1;
                        visit(d.observed_ms, json);
                    }
                }
            }
            Next::Damage { at, resume, after, next_seq, problem, .. } => {
                let lost = (after + 1, next_seq.map_or(u64::MAX, |s| s - 1));
                damage.push(Damage { path: path.to_path_buf(), offset: at, bytes: resume - at, lost, problem });
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
    /// `(bits, text)`: one per masking (a record of the first format: one,
    /// for the default channel).
    texts: Vec<(u64, &'a str)>,
}

impl Decoded<'_> {
    /// The channels the record reaches.
    fn bits(&self) -> u64 {
        self.texts.iter().fold(0, |acc, (b, _)| acc | b)
    }

    fn into_entry(self) -> Entry {
        Entry {
            seq: self.seq,
            item: Arc::new(Item {
                texts: Texts::from_vec(self.texts.iter().map(|(b, t)| (*b, Box::<str>::from(*t))).collect()),
                service_id: self.service_id.into(),
                key_digest: self.key_digest,
                status: self.status,
                observed_ms: self.observed_ms,
            }),
        }
    }
}

/// Reads one record of at most `remaining` bytes into `body`: its size
/// in the file, or what is wrong with it and whether it is torn (it runs
/// past `remaining` and starts like record `expected`: what a write cut
/// short leaves).
fn read_record<R: Read>(
    r: &mut R,
    body: &mut Vec<u8>,
    remaining: u64,
    expected: u64,
) -> std::io::Result<Result<u64, (&'static str, bool)>> {
    let mut head = [0u8; HEAD];
    let got = read_full(r, &mut head[..(remaining.min(HEAD as u64) as usize)])?;
    if got < HEAD {
        return Ok(Err(("torn record header", true)));
    }
    let (len, _) = body_len(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(FIXED..=MAX_BODY).contains(&len) {
        return Ok(Err(("bad record length", false)));
    }
    let room = (remaining - HEAD as u64).min(len as u64) as usize;
    body.resize(room, 0);
    let got = read_full(r, body)?;
    if got < len {
        // Torn when what is there starts like the expected record.
        let seq = body.get(..8.min(got)).filter(|b| b.len() == 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        return Ok(Err(("torn record", seq.is_none_or(|s| s == expected))));
    }
    if crc32fast::hash(body) != crc {
        return Ok(Err(("checksum mismatch", false)));
    }
    Ok(Ok((HEAD + len) as u64))
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

/// The body length in a record's `len` field, and whether the record is
/// of the second format (channel slots and texts: the high bit set).
fn body_len(raw: u32) -> (usize, bool) {
    ((raw & !V2_FLAG) as usize, raw & V2_FLAG != 0)
}

/// Decodes a body of either format. They cannot be mistaken for one
/// another: after `service_id`, the first format has its JSON (`{`, 123)
/// and the second its number of texts (at most [`MAX_TEXTS`]).
fn decode(b: &[u8]) -> Result<Decoded<'_>, &'static str> {
    if b.len() < FIXED {
        return Err("record too short");
    }
    let svc_len = u16::from_le_bytes([b[42], b[43]]) as usize;
    match b.get(FIXED + svc_len) {
        Some(&n) if usize::from(n) <= MAX_TEXTS => decode_v2(b),
        _ => decode_v1(b),
    }
}

/// The second format: after `service_id`, `n: u8`, then `n` times
/// `bits: u64`, `len: u32` and the text.
fn decode_v2(b: &[u8]) -> Result<Decoded<'_>, &'static str> {
    let mut d = decode_v1_head(b)?;
    let mut at = FIXED + d.1;
    let n = usize::from(*b.get(at).ok_or("no text count")?);
    if n > MAX_TEXTS {
        return Err("too many texts");
    }
    at += 1;
    for _ in 0..n {
        let head = b.get(at..at + 12).ok_or("text header cut short")?;
        let bits = u64::from_le_bytes(head[..8].try_into().unwrap_or([0; 8]));
        let len = u32::from_le_bytes(head[8..12].try_into().unwrap_or([0; 4])) as usize;
        at += 12;
        let text = b.get(at..at + len).ok_or("text cut short")?;
        let text = std::str::from_utf8(text).map_err(|_| "record is not UTF-8")?;
        if bits == 0 || bits & UNKNOWN_BITS != 0 || !text.starts_with('{') {
            return Err("bad text");
        }
        d.0.texts.push((bits, text));
        at += len;
    }
    if at != b.len() {
        return Err("bytes after the texts");
    }
    Ok(d.0)
}

/// The first format: the JSON after `service_id`, for the default channel.
fn decode_v1(b: &[u8]) -> Result<Decoded<'_>, &'static str> {
    let (mut d, svc_len) = decode_v1_head(b)?;
    let json = std::str::from_utf8(&b[FIXED + svc_len..]).map_err(|_| "record is not UTF-8")?;
    d.texts.push((DEFAULT_BITS, json));
    Ok(d)
}

/// The fixed part and `service_id` (both formats), and `service_id`'s
/// length.
fn decode_v1_head(b: &[u8]) -> Result<(Decoded<'_>, usize), &'static str> {
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
    Ok((Decoded { seq, observed_ms, written_ms, status, key_digest, service_id, texts: Vec::new() }, svc_len))
}

/// Appends one encoded record (the second format) to `buf`; returns its
/// size.
fn encode(buf: &mut Vec<u8>, seq: u64, item: &Item, written_ms: i64) -> u64 {
    let start = buf.len();
    let svc = &item.service_id.as_bytes()[..item.service_id.len().min(u16::MAX as usize)];
    // A text for no channel (or for the bit that means unknown) is none.
    let texts: Vec<(u64, &str)> = item.texts.iter().filter(|(b, _)| *b != 0 && b & UNKNOWN_BITS == 0).take(MAX_TEXTS).collect();
    let len = FIXED + svc.len() + 1 + texts.iter().map(|(_, t)| 12 + t.len()).sum::<usize>();
    buf.extend_from_slice(&(len as u32 | V2_FLAG).to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&item.observed_ms.to_le_bytes());
    buf.extend_from_slice(&written_ms.to_le_bytes());
    buf.extend_from_slice(&item.status.to_le_bytes());
    buf.extend_from_slice(&item.key_digest);
    buf.extend_from_slice(&(svc.len() as u16).to_le_bytes());
    buf.extend_from_slice(svc);
    buf.push(texts.len() as u8);
    for (bits, t) in texts {
        buf.extend_from_slice(&bits.to_le_bytes());
        buf.extend_from_slice(&(t.len() as u32).to_le_bytes());
        buf.extend_from_slice(t.as_bytes());
    }
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
    /// Sealed segment files not yet fsynced, by path. A segment removed
    /// before its fsync leaves this list at once: an open descriptor would
    /// keep a deleted file's blocks in use until the next group fsync, and
    /// a burst rolls many segments within one fsync interval.
    unsynced: Vec<(PathBuf, File)>,
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
    /// Sequence numbers whose records damage destroyed, known so far
    /// (first, last; sorted, disjoint), at or after the oldest held.
    lost: Vec<(u64, u64)>,
    /// The channels of records no longer held (removed by the retention or
    /// from outside), oldest first, at most [`HISTORY_RECORDS`] numbers.
    history: VecDeque<SeqBits>,
    /// Numbers `history` covers.
    history_len: usize,
}

impl ReplayLog {
    /// Opens (creating) `dir`, scanning its segments: what they hold, and
    /// the damage they have ([`Repair`]; see the module docs). Numbering
    /// continues after the newest record, or at `min_next_seq` when that
    /// is later.
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
        for (i, (first, path)) in names.iter().enumerate() {
            // No record of this segment is numbered at or after the next
            // segment's first.
            let max_seq = names.get(i + 1).map_or(u64::MAX, |(n, _)| n.saturating_sub(1));
            let (seg, found) = scan(path, *first, last_seq, max_seq)?;
            repairs.extend(found);
            if seg.records == 0 {
                std::fs::remove_file(path)?;
                continue;
            }
            last_seq = seg.last_seq;
            segments.push_back(seg);
        }
        // Damage at the newest segment's end had records numbered up to
        // at least its start: never number them again.
        let tail_lost = repairs.iter().filter_map(|r| r.lost).map(|(a, _)| a).max().unwrap_or(0);
        let next_seq = (last_seq + 1).max(tail_lost + 1).max(min_next_seq).max(1);
        for r in &mut repairs {
            if let Some((_, last)) = r.lost.as_mut().filter(|(_, l)| *l == u64::MAX) {
                *last = next_seq - 1;
            }
        }
        // Damage at a segment's end destroyed records whose channels are
        // unknown now.
        for r in &repairs {
            if let Some((_, last)) = r.lost {
                if let Some(seg) = segments.iter_mut().find(|s| s.path == r.path) {
                    seg.bits.pad_unknown(last);
                }
            }
        }
        let mut lost: Vec<(u64, u64)> = Vec::new();
        let mut found: Vec<(u64, u64)> = repairs.iter().filter_map(|r| r.lost).collect();
        found.sort_unstable();
        for (a, b) in found {
            match lost.last_mut() {
                Some(m) if a <= m.1.saturating_add(1) => m.1 = m.1.max(b),
                _ => lost.push((a, b)),
            }
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
            next_seq,
            total_bytes,
            total_records,
            retention,
            buf: Vec::new(),
            lost,
            history: VecDeque::new(),
            history_len: 0,
        };
        Ok((log, repairs))
    }

    /// Notes that damage destroyed the records `first..=last`; returns how
    /// many of them were not known to be lost yet.
    pub fn note_lost(&mut self, first: u64, last: u64) -> u64 {
        let first = first.max(self.first_seq());
        if first > last {
            return 0;
        }
        // What of first..=last no known range covers.
        let mut new = 0;
        let mut at = first;
        for &(a, b) in &self.lost {
            if b < at {
                continue;
            }
            if a > last {
                break;
            }
            if a > at {
                new += a - at;
            }
            at = b.saturating_add(1);
            if at > last {
                break;
            }
        }
        if at <= last {
            new += last - at + 1;
        }
        if new > 0 {
            self.lost.push((first, last));
            self.lost.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.lost.len());
            for &(a, b) in &self.lost {
                match merged.last_mut() {
                    Some(m) if a <= m.1.saturating_add(1) => m.1 = m.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            self.lost = merged;
        }
        new
    }

    /// A segment file found missing by a reader: its records are lost
    /// (noted as such); returns them (first, last), or `None` when the log
    /// no longer lists it (retention removed it).
    pub fn segment_gone(&mut self, path: &Path) -> Option<(u64, u64)> {
        let i = self.segments.iter().position(|s| s.path == path)?;
        if i + 1 == self.segments.len() {
            // The newest: start a new one at the next append.
            self.active = None;
            self.dirty = false;
        }
        let mut s = self.segments.remove(i)?;
        self.forget_unsynced(&s.path);
        self.total_bytes -= s.len;
        self.total_records -= s.records;
        self.hot_trim();
        self.keep_history(std::mem::take(&mut s.bits));
        (s.records > 0).then(|| {
            self.note_lost(s.first_seq, s.last_seq);
            (s.first_seq, s.last_seq)
        })
    }

    /// Notices files removed from outside: the segment being written (the
    /// log forgets it, [`ReplayLog::segment_gone`]) or the whole directory
    /// (made again; the log forgets everything). Either way the next append
    /// starts a new segment. Returns the sequence numbers forgotten (first,
    /// last), if any. A directory that cannot be made again shows as a
    /// fault of the next append (which tries too).
    pub fn check_dir(&mut self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let active_unlinked = self.active.as_ref().is_some_and(|f| f.metadata().is_ok_and(|m| m.nlink() == 0));
        let dir_there = self.dir.is_dir();
        if dir_there && !active_unlinked {
            return None;
        }
        if dir_there {
            let newest = self.segments.back()?.path.clone();
            return self.segment_gone(&newest);
        }
        let _ = std::fs::create_dir_all(&self.dir);
        if self.segments.is_empty() && self.active.is_none() {
            return None;
        }
        let held = (self.first_seq(), self.next_seq - 1);
        for mut s in std::mem::take(&mut self.segments) {
            self.keep_history(std::mem::take(&mut s.bits));
        }
        self.active = None;
        self.unsynced.clear();
        self.dirty = false;
        self.hot.clear();
        self.hot_bytes = 0;
        self.total_bytes = 0;
        self.total_records = 0;
        self.lost.clear();
        self.dir_dirty = true;
        Some(held)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
                let item = items[done + i].clone();
                seg.note(seq, *n, now_ms, item.texts.bits());
                self.hot_bytes += item.texts.bytes() as u64;
                self.hot.push_back(Entry { seq, item });
                self.next_seq += 1;
            }
            self.total_bytes += bytes;
            self.total_records += sizes.len() as u64;
            done += sizes.len();
        }
        while self.hot_bytes > HOT_BYTES && self.hot.len() > 1 {
            if let Some(e) = self.hot.pop_front() {
                self.hot_bytes -= e.item.texts.bytes() as u64;
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
                if let Some(s) = self.segments.back() {
                    self.unsynced.push((s.path.clone(), old));
                }
            }
            self.dirty = false;
        }
        // The directory may have been removed meanwhile.
        std::fs::create_dir_all(&self.dir)?;
        // An empty newest segment (its file was created, nothing written):
        // reuse its name.
        if self.segments.back().is_some_and(|s| s.records == 0) {
            if let Some(s) = self.segments.pop_back() {
                self.forget_unsynced(&s.path);
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
            let Some(mut s) = self.segments.pop_front() else { break };
            self.forget_unsynced(&s.path);
            self.keep_history(std::mem::take(&mut s.bits));
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
        self.hot_trim();
        removed
    }

    /// Drops the unsynced descriptor of a segment leaving the log: nothing
    /// of a removed file needs to reach the disk, and closing it lets the
    /// file system free its blocks now.
    fn forget_unsynced(&mut self, path: &Path) {
        self.unsynced.retain(|(p, _)| p != path);
    }

    /// Keeps the channels of records that leave the log (bounded).
    fn keep_history(&mut self, bits: SeqBits) {
        if bits.len() == 0 {
            return;
        }
        self.history_len += bits.len();
        let at = self.history.partition_point(|h| h.base < bits.base);
        self.history.insert(at, bits);
        while self.history_len > HISTORY_RECORDS {
            match self.history.pop_front() {
                Some(h) => self.history_len -= h.len(),
                None => break,
            }
        }
    }

    /// Of the records `first..=last` numbered at or after `from_seq`: how
    /// many reach the channel `bit` (as the log knows, held or gone), and
    /// how many whose channels the log cannot tell any more (evicted
    /// before this run or beyond [`HISTORY_RECORDS`], or destroyed by
    /// damage found at start). Numbers no record ever had (skipped after a
    /// crash) count in neither, except before the oldest the log knows of.
    pub fn count_for(&self, bit: u64, from_seq: u64, first: u64, last: u64) -> (u64, u64) {
        let first = first.max(from_seq).max(1);
        if first > last {
            return (0, 0);
        }
        let (mut known, mut unknown) = (0, 0);
        let mut earliest = u64::MAX;
        for b in self.history.iter().chain(self.segments.iter().map(|s| &s.bits)) {
            if b.len() > 0 {
                earliest = earliest.min(b.base);
            }
            let (k, u) = b.count(bit, first, last);
            known += k;
            unknown += u;
        }
        if first < earliest {
            unknown += last.min(earliest.saturating_sub(1)) - first + 1;
        }
        (known, unknown)
    }

    /// Keeps the hot tail and the lost ranges within what the log holds.
    fn hot_trim(&mut self) {
        let first = self.first_seq();
        while self.hot.front().is_some_and(|e| e.seq < first) {
            if let Some(e) = self.hot.pop_front() {
                self.hot_bytes -= e.item.texts.bytes() as u64;
            }
        }
        self.lost.retain(|&(_, b)| b >= first);
    }

    /// Files to fsync now (`None`: nothing unsynced).
    pub fn take_sync(&mut self) -> std::io::Result<Option<SyncJob>> {
        let mut files: Vec<File> = std::mem::take(&mut self.unsynced).into_iter().map(|(_, f)| f).collect();
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
                bytes += e.item.texts.bytes();
                out.push(e.clone());
            }
            return Ok(Plan::Hot { skip_to: self.next_seq });
        }
        // Records damage destroyed (the hot tail is never damaged).
        if let Some(&(_, last)) = self.lost.iter().find(|&&(a, b)| a <= from && from <= b) {
            return Ok(Plan::Lost { first: from, last });
        }
        // The first segment with a record at or after `from`.
        let i = self.segments.partition_point(|s| s.records > 0 && s.last_seq < from);
        let Some(seg) = self.segments.get(i).filter(|s| s.records > 0) else {
            return Ok(Plan::Hot { skip_to: self.hot.front().map_or(self.next_seq, |h| h.seq) });
        };
        let gap_to = self.segments.get(i + 1).filter(|s| s.records > 0).map_or(self.next_seq, |s| s.first_seq).max(from);
        let (offset_seq, offset) = seg.index_for(from);
        Ok(Plan::Disk(DiskRead {
            path: seg.path.clone(),
            offset,
            offset_seq,
            end: seg.len,
            last_seq: seg.last_seq,
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

/// Reads a segment named `first_seq` whose records follow `after_seq`
/// (the previous segment's last) and are numbered at most `max_seq`,
/// building its index; notes damage ([`Repair`]; a lost range at the
/// newest segment's end is up to `u64::MAX`, which [`ReplayLog::open`]
/// narrows) and cuts a torn tail.
fn scan(path: &Path, first_seq: u64, after_seq: u64, max_seq: u64) -> std::io::Result<(Segment, Vec<Repair>)> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let file_len = file.metadata()?.len();
    let mut seg = Segment::empty(path.to_path_buf(), first_seq);
    let mut repairs = Vec::new();
    let mut r = SegmentReader::new(&file, 0, file_len, after_seq.max(first_seq.saturating_sub(1)), max_seq)?;
    loop {
        match r.next()? {
            Next::End => break,
            Next::Record { seq, written_ms, size, bits } => seg.note(seq, size, written_ms, bits),
            Next::Damage { at, resume, after, next_seq, problem, torn } => {
                if torn {
                    repairs.push(Repair { path: path.to_path_buf(), offset: at, bytes: resume - at, truncated: true, lost: None, problem });
                    drop(r);
                    file.set_len(at)?;
                    file.sync_all()?;
                    return Ok((seg, repairs));
                }
                seg.skip(resume - at);
                let last = next_seq.map_or(max_seq, |s| s - 1);
                let lost = (last > after).then_some((after + 1, last));
                repairs.push(Repair { path: path.to_path_buf(), offset: at, bytes: resume - at, truncated: false, lost, problem });
            }
        }
    }
    Ok((seg, repairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(i: u64, len: usize) -> Arc<Item> {
        let json = format!("{{\"n\":\"{i}\",\"pad\":\"{}\"}}", "x".repeat(len));
        Arc::new(Item {
            texts: Texts::One(DEFAULT_BITS, json.into()),
            service_id: "svc".into(),
            key_digest: key_digest("k"),
            status: 200,
            observed_ms: 7,
        })
    }

    /// The text the default channel gets.
    fn json(item: &Item) -> &str {
        item.texts.text_for(DEFAULT_BITS).unwrap_or("")
    }

    fn seqs(out: &[Entry]) -> Vec<u64> {
        out.iter().map(|e| e.seq).collect()
    }

    /// Reads everything from `from` like a connection does.
    fn read_all(log: &ReplayLog, from: u64) -> Vec<Entry> {
        let (all, lost) = read_all_lost(log, from);
        assert!(lost.is_empty(), "{lost:?}");
        all
    }

    /// [`read_all`], with the lost ranges reported on the way (as the
    /// notices a connection sends, in order among the records).
    fn read_all_lost(log: &ReplayLog, mut from: u64) -> (Vec<Entry>, Vec<(u64, u64)>) {
        let mut all = Vec::new();
        let mut lost = Vec::new();
        while from < log.next_seq() {
            let mut out = Vec::new();
            let skip = match log.read(from, 100, 1 << 20, &mut out).unwrap() {
                Plan::Hot { skip_to } => skip_to,
                Plan::Lost { first, last } => {
                    lost.push((first, last));
                    last + 1
                }
                Plan::Disk(d) => {
                    let outcome = d.run(&mut out).unwrap();
                    if let Some((a, b)) = outcome.lost {
                        assert!(out.first().is_none_or(|e| e.seq > b));
                        lost.push((a, b));
                        if out.is_empty() {
                            from = b + 1;
                            continue;
                        }
                    }
                    d.gap_to
                }
            };
            match out.last() {
                Some(l) => from = l.seq + 1,
                None => from = skip,
            }
            all.extend(out);
        }
        (all, lost)
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
        assert_eq!(json(&all[4321].item), json(&items[4321]));
        assert_eq!(all[0].item.key_digest, key_digest("k"));
        drop(log);
        let (log, repairs) = ReplayLog::open(dir.path(), ret, 1).unwrap();
        assert!(repairs.is_empty());
        assert_eq!(log.next_seq(), 5001);
        assert_eq!(log.first_seq(), 1);
        let all = read_all(&log, 2500);
        assert_eq!(seqs(&all), (2500..=5000).collect::<Vec<_>>());
        assert_eq!(json(&all[0].item), json(&items[2499]));
    }

    /// A record reaching the channels `bits` (one text for them).
    fn item_for(i: u64, bits: u64) -> Arc<Item> {
        let json = format!("{{\"n\":\"{i}\",\"pad\":\"{}\"}}", "x".repeat(300));
        Arc::new(Item {
            texts: Texts::from_vec(vec![(bits, json.into())]),
            service_id: "svc".into(),
            key_digest: key_digest("k"),
            status: 200,
            observed_ms: 7,
        })
    }

    #[test]
    fn records_of_the_first_format_are_read_as_the_default_channels_only() {
        let dir = tempfile::tempdir().unwrap();
        // A segment as a bridge without channel slots wrote it.
        let mut bytes = Vec::new();
        for seq in 1..=3u64 {
            let json = format!("{{\"request_uuid\":\"old-{seq}\"}}");
            let mut body = Vec::new();
            body.extend_from_slice(&seq.to_le_bytes());
            body.extend_from_slice(&5i64.to_le_bytes());
            body.extend_from_slice(&1000i64.to_le_bytes());
            body.extend_from_slice(&200u16.to_le_bytes());
            body.extend_from_slice(&key_digest("k"));
            body.extend_from_slice(&3u16.to_le_bytes());
            body.extend_from_slice(b"svc");
            body.extend_from_slice(json.as_bytes());
            bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            bytes.extend_from_slice(&body);
        }
        std::fs::write(dir.path().join(format!("{:020}.{EXT}", 1)), &bytes).unwrap();
        let ret = Retention::new(1 << 30, i64::MAX / 2);
        let (mut log, repairs) = ReplayLog::open(dir.path(), ret, 1).unwrap();
        assert!(repairs.is_empty(), "{repairs:?}");
        assert_eq!(log.next_seq(), 4);
        log.append(&[item_for(4, 2 | DEFAULT_BITS)], 2000).unwrap();
        let all = read_all(&log, 1);
        assert_eq!(seqs(&all), vec![1, 2, 3, 4]);
        assert_eq!(all[0].item.texts.bits(), DEFAULT_BITS);
        assert_eq!(all[0].item.texts.text_for(DEFAULT_BITS), Some("{\"request_uuid\":\"old-1\"}"));
        assert_eq!(all[0].item.texts.text_for(2), None, "a stream never sees a record from before slots");
        assert_eq!(&*all[0].item.service_id, "svc");
        assert_eq!(all[3].item.texts.bits(), 2 | DEFAULT_BITS);
        // The channels of the old records are known: the default channel's.
        assert_eq!(log.count_for(2, 0, 1, 4), (1, 0));
        assert_eq!(log.count_for(DEFAULT_BITS, 0, 1, 4), (4, 0));
    }

    #[test]
    fn records_keep_one_text_per_masking_and_reaching_no_channel_keeps_the_number() {
        let dir = tempfile::tempdir().unwrap();
        let ret = Retention::new(1 << 30, i64::MAX / 2);
        let (mut log, _) = ReplayLog::open(dir.path(), ret, 1).unwrap();
        let two = Arc::new(Item {
            texts: Texts::Many(vec![(1, "{\"k\":\"secret\"}".into()), (2 | 4, "{\"k\":\"s****t\"}".into())].into_boxed_slice()),
            service_id: "".into(),
            key_digest: key_digest(""),
            status: 503,
            observed_ms: 9,
        });
        let none = Arc::new(Item { texts: Texts::None, service_id: "s".into(), key_digest: key_digest(""), status: 0, observed_ms: 9 });
        log.append(&[two, none, item_for(3, 8)], 1000).unwrap();
        drop(log);
        let (log, repairs) = ReplayLog::open(dir.path(), ret, 1).unwrap();
        assert!(repairs.is_empty());
        let all = read_all(&log, 1);
        assert_eq!(seqs(&all), vec![1, 2, 3]);
        assert_eq!(all[0].item.texts.text_for(4), Some("{\"k\":\"s****t\"}"));
        assert_eq!(all[0].item.texts.text_for(1), Some("{\"k\":\"secret\"}"));
        assert_eq!((all[1].item.texts.bits(), all[1].item.texts.bytes()), (0, 0));
        assert_eq!(all[2].item.texts.bits(), 8);
    }

    #[test]
    fn a_segment_removed_before_its_fsync_is_closed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let ret = Retention::new(64 << 10, i64::MAX / 2);
        let (mut log, _) = ReplayLog::open(dir.path(), Retention { segment_bytes: MIN_SEGMENT_BYTES, ..ret }, 1).unwrap();
        // A burst within one fsync interval: many segments rolled, most
        // removed by retention, none fsynced yet.
        for i in 1..=2000 {
            log.append(&[item_for(i, 2)], 1000).unwrap();
            log.retain(1000);
        }
        assert!(log.unsynced.len() < log.segments.len(), "{} unsynced, {} segments", log.unsynced.len(), log.segments.len());
        // No descriptor of this process points at a deleted segment.
        let deleted: Vec<_> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|t| t.starts_with(dir.path()) && t.to_string_lossy().ends_with("(deleted)"))
            .collect();
        assert!(deleted.is_empty(), "{deleted:?}");
        let job = log.take_sync().unwrap().unwrap();
        job.run().unwrap();
        assert!(log.unsynced.is_empty());
    }

    #[test]
    fn lost_counts_are_each_channels_own_records_evicted_damaged_or_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let ret = Retention::new(64 << 10, i64::MAX / 2);
        let (mut log, _) = ReplayLog::open(dir.path(), Retention { segment_bytes: MIN_SEGMENT_BYTES, ..ret }, 1).unwrap();
        // Odd records reach channel 2, even ones channel 4, every third none.
        let bits = |i: u64| {
            if i.is_multiple_of(3) {
                0
            } else if i % 2 == 1 {
                2
            } else {
                4
            }
        };
        for i in 1..=400 {
            log.append(&[item_for(i, bits(i))], 1000).unwrap();
            log.retain(1000);
        }
        let first = log.first_seq();
        assert!(first > 100, "{first}");
        let want = |bit: u64, a: u64, b: u64| (a..=b).filter(|&i| bits(i) == bit).count() as u64;
        // Evicted: counted from what the log remembers of them.
        assert_eq!(log.count_for(2, 0, 1, first - 1), (want(2, 1, first - 1), 0));
        assert_eq!(log.count_for(4, 0, 1, first - 1), (want(4, 1, first - 1), 0));
        // A channel counts only its records from its slot's first number.
        assert_eq!(log.count_for(2, 50, 1, first - 1), (want(2, 50, first - 1), 0));
        // Held, whatever damage does to them later.
        assert_eq!(log.count_for(4, 0, first, 400), (want(4, first, 400), 0));
        drop(log);
        // After a restart, what was evicted before is unknown; what is held
        // is read again.
        let (log, _) = ReplayLog::open(dir.path(), ret, 1).unwrap();
        assert_eq!(log.count_for(2, 0, 1, first - 1), (0, first - 1));
        assert_eq!(log.count_for(2, 0, first, 400), (want(2, first, 400), 0));
        // A channel whose slot starts later has nothing unknown before it.
        assert_eq!(log.count_for(2, first, 1, first - 1), (0, 0));
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
        assert_eq!(
            (repairs[0].offset, repairs[0].bytes, repairs[0].problem, repairs[0].truncated, repairs[0].lost),
            (whole, (buf.len() / 2) as u64, "torn record", true, None)
        );
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole);
        assert_eq!(seqs(&read_all(&log, 1)), (1..=10).collect::<Vec<_>>());
        assert_eq!(log.next_seq(), 11);
        // A flipped byte inside the last record: that record is lost (and
        // said so), its number is never used again, and the bytes stay
        // (a later start says the same).
        drop(log);
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = bytes.len() - 10;
        bytes[at] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        for _ in 0..2 {
            let (log, repairs) = ReplayLog::open(dir.path(), ret, 1).unwrap();
            assert_eq!((repairs[0].problem, repairs[0].truncated, repairs[0].lost), ("checksum mismatch", false, Some((10, 10))));
            let (all, lost) = read_all_lost(&log, 1);
            assert_eq!((seqs(&all), lost), ((1..=9).collect::<Vec<_>>(), vec![(10, 10)]));
            assert_eq!(log.next_seq(), 11);
            assert_eq!(std::fs::metadata(&seg).unwrap().len(), bytes.len() as u64);
        }
        // Numbering never goes back: the caller's reservation wins.
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

    /// Writes `garbage` over a log's only segment at `at`.
    fn damage(dir: &Path, at: u64, garbage: &[u8]) -> (PathBuf, Vec<(u64, u64, u64)>) {
        let seg = std::fs::read_dir(dir).unwrap().next().unwrap().unwrap().path();
        let bytes = std::fs::read(&seg).unwrap();
        // (offset, end, seq) of each record before the damage.
        let mut records = Vec::new();
        let mut off = 0usize;
        while off + 16 <= bytes.len() {
            let (len, _) = body_len(u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()));
            records.push((off as u64, (off + HEAD + len) as u64, u64::from_le_bytes(bytes[off + 8..off + 16].try_into().unwrap())));
            off += HEAD + len;
        }
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, garbage, at).unwrap();
        (seg, records)
    }

    #[test]
    fn damage_in_the_middle_is_skipped_and_its_records_known_running_and_at_start() {
        for garbage in [vec![0u8; 3000], (0..3000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(), vec![0xff; 3000]] {
            let dir = tempfile::tempdir().unwrap();
            let ret = Retention::new(1 << 30, i64::MAX / 2);
            let (mut log, _) = ReplayLog::open(dir.path(), ret, 1).unwrap();
            let items: Vec<_> = (0..2000).map(|i| item(i, 300)).collect();
            for chunk in items.chunks(100) {
                log.append(chunk, 1000).unwrap();
            }
            // Behind the hot tail (2 MiB of the ~700 KB here is all of
            // it): drop it, as after a restart, to read from the file.
            log.hot.clear();
            log.hot_bytes = 0;
            let at = 100_000;
            let (seg, records) = damage(dir.path(), at, &garbage);
            let hit: Vec<u64> = records.iter().filter(|(o, e, _)| *e > at && *o < at + garbage.len() as u64).map(|r| r.2).collect();
            let (first, last) = (hit[0], *hit.last().unwrap());
            // The damage starts with the first record it touched.
            let damaged_at = records.iter().find(|r| r.2 == first).unwrap().0;
            let want: Vec<u64> = (1..=2000).filter(|s| !hit.contains(s)).collect();
            // Running: the reader skips past it and says what it destroyed.
            let (all, lost) = read_all_lost(&log, 1);
            assert_eq!((seqs(&all), lost), (want.clone(), vec![(first, last)]));
            let (all, lost) = read_all_lost(&log, first + 1);
            assert_eq!(lost, vec![(first + 1, last)]);
            assert_eq!(all[0].seq, last + 1);
            assert_eq!(json(&all[0].item), json(&items[last as usize]));
            // Known once noted: a reader inside it is told at once.
            assert_eq!(log.note_lost(first, last), last - first + 1);
            assert_eq!(log.note_lost(first, last), 0);
            let mut out = Vec::new();
            assert!(
                matches!(log.read(first + 1, 10, 1 << 20, &mut out), Ok(Plan::Lost { first: f, last: l }) if (f, l) == (first + 1, last))
            );
            drop(log);
            // Offline (`lag report`): the same records and the same loss.
            let mut jsons = Vec::new();
            let (n, met) = read_segment(&seg, |_, json| jsons.push(json.to_string())).unwrap();
            let want_json: Vec<String> = want.iter().map(|s| items[*s as usize - 1].texts.iter().next().unwrap().1.to_string()).collect();
            assert_eq!((n as usize, jsons), (want.len(), want_json));
            assert_eq!(met.iter().map(|d| (d.offset, d.lost)).collect::<Vec<_>>(), vec![(damaged_at, (first, last))]);
            // At start: the same, twice (the bytes stay).
            for _ in 0..2 {
                let (log, repairs) = ReplayLog::open(dir.path(), ret, 1).unwrap();
                assert_eq!(repairs.len(), 1, "{repairs:?}");
                assert_eq!((repairs[0].offset, repairs[0].truncated, repairs[0].lost), (damaged_at, false, Some((first, last))));
                assert_eq!(log.next_seq(), 2001);
                let (all, lost) = read_all_lost(&log, 1);
                assert_eq!((seqs(&all), lost), (want.clone(), vec![(first, last)]));
            }
        }
    }

    #[test]
    fn lost_ranges_count_each_number_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = ReplayLog::open(dir.path(), Retention::new(1 << 30, i64::MAX / 2), 1).unwrap();
        log.append(&(0..100).map(|i| item(i, 10)).collect::<Vec<_>>(), 1).unwrap();
        assert_eq!(log.note_lost(10, 19), 10);
        assert_eq!(log.note_lost(15, 24), 5);
        assert_eq!(log.note_lost(5, 30), 11);
        assert_eq!(log.note_lost(40, 40), 1);
        // 1..=50 less 5..=30 and 40.
        assert_eq!(log.note_lost(1, 50), 50 - 26 - 1);
        assert_eq!(log.lost, vec![(1, 50)]);
        assert_eq!(log.note_lost(60, 50), 0);
    }

    #[test]
    fn a_removed_directory_or_segment_is_noticed_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let replay = dir.path().join("replay");
        let ret = Retention::new(64 << 10, i64::MAX / 2);
        let (mut log, _) = ReplayLog::open(&replay, Retention { segment_bytes: MIN_SEGMENT_BYTES, ..ret }, 1).unwrap();
        for i in 0..100 {
            log.append(&[item(i, 400)], 1).unwrap();
        }
        assert!(log.check_dir().is_none());
        std::fs::remove_dir_all(&replay).unwrap();
        assert_eq!(log.check_dir(), Some((1, 100)));
        assert!(replay.is_dir());
        assert!(log.check_dir().is_none(), "said once");
        assert_eq!((log.first_seq(), log.next_seq(), log.figures().segments), (101, 101, 0));
        for i in 0..100 {
            log.append(&[item(i, 400)], 1).unwrap();
        }
        assert_eq!(seqs(&read_all(&log, 101)), (101..=200).collect::<Vec<_>>());
        assert!(std::fs::read_dir(&replay).unwrap().count() > 1);
        // A sealed segment removed by hand: its records are lost, said so.
        log.hot.clear();
        log.hot_bytes = 0;
        let second = log.segments[1].path.clone();
        let (a, b) = (log.segments[1].first_seq, log.segments[1].last_seq);
        std::fs::remove_file(&second).unwrap();
        let mut out = Vec::new();
        let Ok(Plan::Disk(d)) = log.read(a, 10, 1 << 20, &mut out) else { panic!("a disk read") };
        assert_eq!(d.run(&mut out).unwrap_err().kind(), std::io::ErrorKind::NotFound);
        assert_eq!(log.segment_gone(&second), Some((a, b)));
        assert_eq!(log.segment_gone(&second), None);
        let (all, lost) = read_all_lost(&log, log.first_seq());
        assert_eq!(lost, vec![(a, b)]);
        assert_eq!(all.len() as u64, 100 - (b - a + 1));
        // The segment being written removed alone: it is forgotten, the
        // others stay.
        for i in 0..60 {
            log.append(&[item(i, 400)], 1).unwrap();
        }
        let segments = log.figures().segments;
        let newest = log.segments.back().map(|s| (s.path.clone(), s.first_seq, s.last_seq)).unwrap();
        std::fs::remove_file(&newest.0).unwrap();
        assert_eq!(log.check_dir(), Some((newest.1, newest.2)));
        assert_eq!(log.figures().segments, segments - 1);
        assert!(log.check_dir().is_none());
        log.append(&[item(0, 400)], 1).unwrap();
        assert_eq!(log.next_seq(), 262);
        assert!(log.segments.back().unwrap().path.exists());
    }
}
