//! Durable read offsets, one per file identity (fingerprint).
//!
//! Invariant: an offset advances only when every sink has acknowledged the
//! records before it, and only in file order, even when batches are
//! acknowledged out of order (an upstream sink with several requests in
//! flight). So after a crash or `kill -9` the bridge re-reads at most the
//! batches that were not yet acknowledged (at-least-once), never less.
//!
//! The document is written as soon as an offset advances, at most once per
//! `checkpoint_interval_ms` (1 s by default), and at every stop and reload.
//!
//! The file is `<state_dir>/checkpoints.json`, a versioned JSON document
//! (`{"version":1,"files":[...]}`), written to a temporary file, fsynced,
//! then renamed over the old one (and the directory fsynced), so a crash
//! leaves either the old or the new document, never a torn one.
//!
//! Entries are keyed by the file's content [`fingerprint`], not by path or
//! inode: a renamed, copied, replaced or compressed file keeps its offset.
//! Entries of files that have not been seen for [`PRUNE_AFTER_MS`] are
//! pruned. With its offset an entry keeps an [`Anchor`] (a checksum of
//! the bytes just before it): a reader resuming there first checks that
//! the file still holds them, so content rewritten in place (or a copy of
//! another version) is never taken for a continuation of what was read.
//!
//! The acknowledgement order of each file's batches (how far the offset
//! may advance, which batch a cancelled send takes back, where a reader
//! resumes) is [`crate::ack_order`]'s, shared with the Kafka source.
//!
//! File identity and durable offsets live together (as in Vector's file
//! source): the tailer asks this module what a file is and where to start,
//! and this module knows nothing of the tailer (no import of `tail`).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub mod fingerprint;

use crate::ack_order::{AckOrder, Positions};
use fingerprint::Fingerprint;

/// The current version of the checkpoint document.
pub const VERSION: u32 = 1;

/// Name of the checkpoint file inside `state_dir`.
pub const FILE_NAME: &str = crate::state_dir::StateDir::CHECKPOINTS;

/// A checkpoint whose file has not been seen by any scan for this long is
/// dropped: the file is gone for good (rotated out and deleted). Long
/// enough that a rotated file compressed later (`.gz`) is still recognised.
pub const PRUNE_AFTER_MS: i64 = 24 * 3600 * 1000;

/// One file's checkpoint, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The content fingerprint (16 hex digits).
    pub fingerprint: Fingerprint,
    /// Bytes of the (decompressed) content delivered to every sink.
    pub offset: u64,
    /// Where the file was last seen (informational).
    pub path: String,
    /// Device of the file when last seen (informational).
    #[serde(default)]
    pub dev: u64,
    /// Inode of the file when last seen (informational).
    #[serde(default)]
    pub ino: u64,
    /// Epoch ms when a scan last saw the file; drives pruning.
    pub last_seen_ms: i64,
    /// The file's size when last seen (compressed size for a `.gz`): with
    /// `offset`, how much was left unread if the file is gone at the next
    /// start (the tailer's start-up check for files left unread).
    #[serde(default)]
    pub size: u64,
    /// For a `.gz` read to its end: its compressed size then and the
    /// content offset of its end. A restart that finds the same `.gz` (same
    /// fingerprint and size) with `offset` at that end does not decompress
    /// it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gz_complete: Option<GzComplete>,
    /// The bytes just before `offset`, by checksum (plain files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<Anchor>,
}

/// The last bytes before an offset (at most [`Anchor::MAX_BYTES`]), by
/// checksum: the file that holds them there is the content that was read
/// up to that offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// How many bytes (the offset's, when it is smaller than the maximum).
    pub len: u32,
    /// Their CRC-32.
    pub crc32: u32,
}

impl Anchor {
    /// Bytes an anchor covers at most.
    pub const MAX_BYTES: usize = 64;

    /// The anchor of `bytes` (the last ones before an offset).
    pub fn of(bytes: &[u8]) -> Anchor {
        let b = &bytes[bytes.len().saturating_sub(Anchor::MAX_BYTES)..];
        Anchor { len: b.len() as u32, crc32: crc32fast::hash(b) }
    }
}

impl Entry {
    /// A file not read yet: offset 0, location unknown.
    fn new(fingerprint: Fingerprint, last_seen_ms: i64) -> Entry {
        Entry { fingerprint, offset: 0, path: String::new(), dev: 0, ino: 0, last_seen_ms, size: 0, gz_complete: None, anchor: None }
    }
}

/// See [`Entry::gz_complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GzComplete {
    /// Compressed size of the file, bytes.
    pub size: u64,
    /// Offset of the end of its content.
    pub end: u64,
}

/// The stored document.
#[derive(Debug, Serialize, Deserialize)]
struct Document {
    /// Format version ([`VERSION`]).
    version: u32,
    /// One entry per known file.
    files: Vec<Entry>,
}

/// Errors loading or writing checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoint file could not be read or written.
    #[error("checkpoint file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The checkpoint file is not a checkpoint document we understand.
    #[error("checkpoint file {path} is not valid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Exit code when a state file under `state_dir` is damaged (EX_DATAERR):
/// restarting cannot help, the operator decides where reading resumes
/// (`calllog-bridge reset-state`). The systemd unit names it in
/// `RestartPreventExitStatus=`.
pub const EXIT_DAMAGED_STATE: i32 = 65;

/// A state file (`checkpoints.json`, `channel.seq`) that exists but cannot
/// be understood. The bridge does not guess where to resume: it stops with
/// [`EXIT_DAMAGED_STATE`] and says how to recover.
#[derive(Debug, thiserror::Error)]
#[error("{} is damaged: {problem}", path.display())]
pub struct DamagedState {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

impl DamagedState {
    /// The recovery instructions for the operator, naming the config file.
    pub fn recovery(&self, config: &Path) -> String {
        let c = config.display();
        format!(
            "The bridge does not guess where to resume and will not start until this is decided (exit code {EXIT_DAMAGED_STATE}: \
             systemd does not restart it). The file is left as it is. To recover, keep it aside and choose where reading resumes:\n  \
             calllog-bridge reset-state --config {c} --read-from end\n      \
             every file resumes at its current end: nothing is sent twice; records written while the bridge was stopped, \
             and any not yet delivered, are skipped\n  \
             calllog-bridge reset-state --config {c} --read-from beginning\n      \
             every file is read again from its start: nothing is skipped; records already delivered are sent again \
             (de-duplicate on request_uuid)\n\
             then start the bridge again."
        )
    }
}

/// A batch's place in the acknowledgement order of its file: returned by
/// [`Checkpointer::register`], handed back to [`Checkpointer::ack`].
pub type Ticket = crate::ack_order::Ticket<Fingerprint>;

/// Where a batch in flight ends: what its acknowledgement makes durable.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// The offset after the batch.
    end: u64,
    /// The anchor at `end`.
    anchor: Option<Anchor>,
}

#[derive(Default)]
struct State {
    /// Durable offsets by fingerprint.
    entries: HashMap<Fingerprint, Entry>,
    /// Batches in flight, in acknowledgement order per fingerprint.
    order: AckOrder<Fingerprint, Mark>,
    /// Entries changed since the last write.
    dirty: bool,
}

/// The shared checkpoint registry. Cheap to clone.
#[derive(Clone)]
pub struct Checkpointer {
    /// `<state_dir>/checkpoints.json`.
    path: Arc<PathBuf>,
    /// Offsets and the acknowledgement order.
    state: Arc<Mutex<State>>,
    /// Signalled when an offset advanced, so the writer writes promptly.
    changed: Arc<tokio::sync::Notify>,
}

impl Checkpointer {
    /// Loads `<state_dir>/checkpoints.json` (an absent file is an empty
    /// registry). The directory must exist.
    pub fn load(state_dir: &Path) -> Result<Checkpointer, CheckpointError> {
        let path = crate::state_dir::StateDir::new(state_dir).checkpoints();
        let mut state = State::default();
        match fs::read(&path) {
            Ok(bytes) => {
                let doc: Document =
                    serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Invalid { path: path.clone(), message: e.to_string() })?;
                if doc.version != VERSION {
                    return Err(CheckpointError::Invalid {
                        path,
                        message: format!("version {} is not supported (expected {VERSION})", doc.version),
                    });
                }
                for e in doc.files {
                    state.entries.insert(e.fingerprint, e);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(CheckpointError::Io { path, source }),
        }
        Ok(Checkpointer { path: Arc::new(path), state: Arc::new(Mutex::new(state)), changed: Arc::new(tokio::sync::Notify::new()) })
    }

    /// An empty registry for `<state_dir>/checkpoints.json` that ignores
    /// what the file holds (`reset-state` builds a new one).
    pub fn empty(state_dir: &Path) -> Checkpointer {
        Checkpointer {
            path: Arc::new(crate::state_dir::StateDir::new(state_dir).checkpoints()),
            state: Arc::new(Mutex::new(State::default())),
            changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state directory the registry lives in (where other sources
    /// keep their positions: the Kafka source's offsets).
    pub fn state_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The durable offset of a file, if it has one.
    pub fn offset(&self, fp: Fingerprint) -> Option<u64> {
        self.lock().entries.get(&fp).map(|e| e.offset)
    }

    /// Where the file was last seen (path, device, inode), if known.
    pub fn location(&self, fp: Fingerprint) -> Option<(String, u64, u64)> {
        self.lock().entries.get(&fp).filter(|e| !e.path.is_empty()).map(|e| (e.path.clone(), e.dev, e.ino))
    }

    /// Where a reader of the file should start: the end of the last batch
    /// registered (read and handed to the sinks, perhaps not yet
    /// acknowledged), or the durable offset when nothing is in flight.
    /// Equal to [`Checkpointer::offset`] at start-up; after a reload
    /// restarts the tailers it keeps batches still in flight from being
    /// read twice (their acknowledgements still advance the durable offset).
    pub fn resume_offset(&self, fp: Fingerprint) -> Option<u64> {
        let st = self.lock();
        let durable = st.entries.get(&fp).map(|e| e.offset);
        let in_flight = st.order.newest(&fp).map(|b| b.end);
        match (durable, in_flight) {
            (Some(d), Some(f)) => Some(d.max(f)),
            (d, f) => d.or(f),
        }
    }

    /// The anchor at [`Checkpointer::resume_offset`], when known: what a
    /// reader resuming there checks first.
    pub fn resume_anchor(&self, fp: Fingerprint) -> Option<Anchor> {
        let st = self.lock();
        let durable = st.entries.get(&fp).map(|e| (e.offset, e.anchor));
        match (durable, st.order.newest(&fp)) {
            (Some((d, a)), Some(b)) if d > b.end => a,
            (_, Some(b)) => b.anchor,
            (Some((_, a)), None) => a,
            (None, None) => None,
        }
    }

    /// Notes that a scan saw the file, `size` bytes long (keeps its entry
    /// from being pruned). Creates an entry at offset 0 for a file seen for
    /// the first time.
    pub fn seen(&self, fp: Fingerprint, path: &str, dev: u64, ino: u64, size: u64, now_ms: i64) {
        let mut st = self.lock();
        let e = st.entries.entry(fp).or_insert_with(|| Entry::new(fp, 0));
        let changed = e.path != path || e.dev != dev || e.ino != ino;
        e.path.clear();
        e.path.push_str(path);
        e.dev = dev;
        e.ino = ino;
        // Written with the next change (an offset advancing), not on its own.
        e.size = size;
        // Only a move of the file makes the document dirty; last_seen alone
        // is refreshed whenever something else is written.
        e.last_seen_ms = now_ms;
        if changed {
            st.dirty = true;
        }
    }

    /// Sets a file's offset directly, for a file started at its end
    /// (`read_from = "end"`): there is nothing before it to acknowledge.
    pub fn start_at(&self, fp: Fingerprint, offset: u64) {
        let mut st = self.lock();
        if let Some(e) = st.entries.get_mut(&fp) {
            if e.offset < offset {
                e.offset = offset;
                e.anchor = None;
                st.dirty = true;
            }
        }
    }

    /// Reading of a file starts again at `offset`, below the offset it had
    /// (a file shorter than what was read for its content: truncated and
    /// rewritten, replaced by a shorter copy, or behind a restored state).
    /// Batches of the previous reading still in flight stay tracked
    /// ([`Checkpointer::in_flight`]) but no longer move the offset when
    /// they are acknowledged, so it never jumps back past what the new
    /// reading delivered.
    pub fn restart_at(&self, fp: Fingerprint, offset: u64) {
        let mut st = self.lock();
        let now = crate::time::now_ms();
        let e = st.entries.entry(fp).or_insert_with(|| Entry::new(fp, now));
        e.offset = offset;
        e.gz_complete = None;
        e.anchor = None;
        st.order.restart(&fp);
        st.dirty = true;
        drop(st);
        self.changed.notify_one();
    }

    /// Notes that a `.gz` of `size` compressed bytes was read to its end at
    /// content offset `end` (see [`Entry::gz_complete`]).
    pub fn mark_gz_complete(&self, fp: Fingerprint, size: u64, end: u64) {
        let mut st = self.lock();
        if let Some(e) = st.entries.get_mut(&fp) {
            let mark = Some(GzComplete { size, end });
            if e.gz_complete != mark {
                e.gz_complete = mark;
                st.dirty = true;
            }
        }
    }

    /// True when the `.gz` with this fingerprint and compressed size was
    /// read to its end and everything up to that end is delivered: there is
    /// nothing to read in it.
    pub fn gz_done(&self, fp: Fingerprint, size: u64) -> bool {
        let st = self.lock();
        let in_flight = st.order.in_flight(&fp) > 0;
        st.entries.get(&fp).is_some_and(|e| !in_flight && e.gz_complete.is_some_and(|g| g.size == size && e.offset >= g.end))
    }

    /// True while some batch of the file is registered and not yet
    /// acknowledged (its records exist only in the file and in memory).
    pub fn in_flight(&self, fp: Fingerprint) -> bool {
        self.lock().order.in_flight(&fp) > 0
    }

    /// Registers a batch that ends at `end_offset` (with the anchor
    /// there, for plain files), in read order. Its offset becomes durable
    /// once it and every earlier batch of the same file are acknowledged.
    pub fn register(&self, fp: Fingerprint, end_offset: u64, anchor: Option<Anchor>) -> Ticket {
        self.lock().order.register(fp, Mark { end: end_offset, anchor })
    }

    /// Takes back the newest registered batch of its file, which was never
    /// handed to a sink (its send was cancelled): it will be read again, so
    /// [`Checkpointer::resume_offset`] no longer counts it and it no longer
    /// holds back later acknowledgements. Only the newest batch, not yet
    /// acknowledged, can be taken back ([`crate::ack_order`]); for any other
    /// ticket this does nothing and returns false.
    pub fn withdraw(&self, ticket: &Ticket) -> bool {
        self.lock().order.withdraw(ticket)
    }

    /// Acknowledges a registered batch. Returns the file's new durable
    /// offset when it advanced.
    pub fn ack(&self, ticket: &Ticket) -> Option<u64> {
        let mut st = self.lock();
        let Mark { end, anchor } = st.order.ack(ticket)?;
        let fp = *ticket.key();
        let e = st.entries.entry(fp).or_insert_with(|| Entry::new(fp, crate::time::now_ms()));
        if end > e.offset {
            e.offset = end;
            e.anchor = anchor;
            st.dirty = true;
            self.changed.notify_one();
        }
        Some(end)
    }

    /// A copy of every entry (the start-up check for files left unread).
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().entries.values().cloned().collect()
    }

    /// Waits until an offset advanced since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Drops entries not seen since `now_ms - PRUNE_AFTER_MS`.
    pub fn prune(&self, now_ms: i64) {
        let mut st = self.lock();
        let before = st.entries.len();
        let State { entries, order, .. } = &mut *st;
        entries.retain(|fp, e| e.last_seen_ms >= now_ms - PRUNE_AFTER_MS || order.in_flight(fp) > 0);
        if st.entries.len() != before {
            tracing::debug!(pruned = before - st.entries.len(), "pruned checkpoints of files gone for good");
            st.dirty = true;
        }
    }

    /// The document to write when something changed since the last write
    /// (`force` writes it anyway).
    fn snapshot(&self, force: bool) -> Option<Vec<u8>> {
        let mut st = self.lock();
        if !st.dirty && !force {
            return None;
        }
        st.dirty = false;
        let mut files: Vec<Entry> = st.entries.values().cloned().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path).then(a.fingerprint.cmp(&b.fingerprint)));
        let doc = Document { version: VERSION, files };
        serde_json::to_vec_pretty(&doc).ok()
    }

    /// Writes the document if it changed (or always with `force`): temp
    /// file, fsync, rename. A forced write (the final one at shutdown,
    /// `reset-state`) also fsyncs the directory; the periodic ones do not
    /// (one fsync per write instead of two): after a power loss the
    /// previous document may be the one found, which reads some records
    /// again and loses none, since offsets only move forward. Blocking:
    /// call it from a blocking thread.
    pub fn write(&self, force: bool) -> Result<bool, CheckpointError> {
        let Some(bytes) = self.snapshot(force) else {
            return Ok(false);
        };
        let io = |source| CheckpointError::Io { path: self.path.to_path_buf(), source };
        let written = if force {
            crate::state_dir::write_atomic(&self.path, &bytes)
        } else {
            crate::state_dir::write_atomic_lazy_dir(&self.path, &bytes)
        };
        if let Err(e) = written {
            // Try again next time.
            self.lock().dirty = true;
            return Err(io(e));
        }
        Ok(true)
    }

    /// Writes from a blocking thread (for async callers).
    pub async fn write_async(&self, force: bool) -> Result<bool, CheckpointError> {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.write(force)).await {
            Ok(r) => r,
            Err(e) => Err(CheckpointError::Io { path: self.path.to_path_buf(), source: std::io::Error::other(e.to_string()) }),
        }
    }
}

impl Positions for Checkpointer {
    type Key = Fingerprint;
    type Position = u64;

    fn ack(&self, ticket: &Ticket) -> Option<u64> {
        Checkpointer::ack(self, ticket)
    }

    fn withdraw(&self, ticket: &Ticket) -> bool {
        Checkpointer::withdraw(self, ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u64) -> Fingerprint {
        Fingerprint(n)
    }

    #[test]
    fn resume_offset_is_past_batches_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpointer::load(dir.path()).unwrap();
        assert_eq!(c.resume_offset(fp(1)), None);
        c.seen(fp(1), "/a", 1, 2, 0, 0);
        assert_eq!(c.resume_offset(fp(1)), Some(0));
        let t1 = c.register(fp(1), 10, None);
        let t2 = c.register(fp(1), 20, None);
        assert_eq!((c.offset(fp(1)), c.resume_offset(fp(1))), (Some(0), Some(20)));
        c.ack(&t1);
        assert_eq!((c.offset(fp(1)), c.resume_offset(fp(1))), (Some(10), Some(20)));
        c.ack(&t2);
        assert_eq!((c.offset(fp(1)), c.resume_offset(fp(1))), (Some(20), Some(20)));
    }

    #[test]
    fn a_restart_below_the_offset_is_not_undone_by_batches_of_the_reading_before() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpointer::load(dir.path()).unwrap();
        c.seen(fp(1), "/a", 1, 2, 0, 0);
        let old1 = c.register(fp(1), 100, None);
        let old2 = c.register(fp(1), 200, None);
        c.ack(&old1);
        c.restart_at(fp(1), 0);
        assert_eq!((c.offset(fp(1)), c.resume_offset(fp(1))), (Some(0), Some(0)));
        assert!(c.in_flight(fp(1)), "the old batch still needs its sinks");
        let new1 = c.register(fp(1), 30, None);
        assert_eq!(c.resume_offset(fp(1)), Some(30));
        assert_eq!(c.ack(&new1), None, "waits behind the old batch");
        assert_eq!(c.ack(&old2), Some(30), "the old batch's end is not taken");
        assert_eq!(c.offset(fp(1)), Some(30));
        assert!(!c.in_flight(fp(1)));
        // A withdrawn first batch of the new reading holds nothing back.
        c.restart_at(fp(1), 0);
        let a = c.register(fp(1), 10, None);
        assert!(c.withdraw(&a));
        let b = c.register(fp(1), 10, None);
        assert_eq!(c.ack(&b), Some(10));
        assert_eq!(c.offset(fp(1)), Some(10));
    }

    #[test]
    fn a_withdrawn_batch_is_read_again_and_holds_nothing_back() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpointer::load(dir.path()).unwrap();
        c.seen(fp(1), "/a", 1, 2, 0, 0);
        let t1 = c.register(fp(1), 10, None);
        let t2 = c.register(fp(1), 20, None);
        assert!(!c.withdraw(&t1), "only the newest batch can be taken back");
        assert!(c.withdraw(&t2));
        assert_eq!(c.resume_offset(fp(1)), Some(10), "read again from the end of the batch before");
        let t3 = c.register(fp(1), 20, None);
        assert_eq!(c.ack(&t3), None, "waits for the batch before");
        assert_eq!(c.ack(&t1), Some(20));
        assert_eq!(c.offset(fp(1)), Some(20));
    }

    impl crate::ack_order::model::Subject for Checkpointer {
        type Ticket = Ticket;
        fn register(&mut self, stream: usize, end: u64) -> Ticket {
            Checkpointer::register(self, fp(stream as u64), end, None)
        }
        fn ack(&mut self, ticket: &Ticket) {
            Checkpointer::ack(self, ticket);
        }
        fn withdraw(&mut self, ticket: &Ticket) -> bool {
            Checkpointer::withdraw(self, ticket)
        }
        fn restart(&mut self, stream: usize, at: u64) -> Option<()> {
            self.restart_at(fp(stream as u64), at);
            Some(())
        }
        fn position(&self, stream: usize) -> u64 {
            self.offset(fp(stream as u64)).unwrap_or(0)
        }
        fn resume(&self, stream: usize) -> u64 {
            self.resume_offset(fp(stream as u64)).unwrap_or(0)
        }
    }

    #[test]
    fn random_sequences_never_advance_an_offset_past_an_unacknowledged_batch() {
        let dir = tempfile::tempdir().unwrap();
        crate::ack_order::model::run(500, 60, || Checkpointer::empty(dir.path()));
    }

    #[test]
    fn a_gz_read_to_its_end_is_done_once_delivered_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpointer::load(dir.path()).unwrap();
        c.seen(fp(7), "/a.gz", 1, 2, 0, 0);
        let t = c.register(fp(7), 500, None);
        c.mark_gz_complete(fp(7), 120, 500);
        assert!(!c.gz_done(fp(7), 120), "not delivered yet");
        c.ack(&t);
        assert!(c.gz_done(fp(7), 120));
        assert!(!c.gz_done(fp(7), 121), "another size is another file");
        assert!(!c.gz_done(fp(8), 120));
        c.write(true).unwrap();
        let again = Checkpointer::load(dir.path()).unwrap();
        assert!(again.gz_done(fp(7), 120));
    }

    #[test]
    fn advances_in_order_when_acks_come_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpointer::load(dir.path()).unwrap();
        c.seen(fp(1), "/a", 1, 2, 0, 0);
        let t1 = c.register(fp(1), 10, None);
        let t2 = c.register(fp(1), 20, None);
        let t3 = c.register(fp(1), 30, None);
        assert_eq!(c.ack(&t2), None);
        assert_eq!(c.offset(fp(1)), Some(0));
        assert_eq!(c.ack(&t1), Some(20));
        assert_eq!(c.offset(fp(1)), Some(20));
        assert_eq!(c.ack(&t3), Some(30));
        assert_eq!(c.offset(fp(1)), Some(30));
    }

    #[test]
    fn survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpointer::load(dir.path()).unwrap();
        c.seen(fp(7), "/a", 1, 2, 0, crate::time::now_ms());
        c.ack(&c.register(fp(7), 42, Some(Anchor::of(b"x\n"))));
        assert!(c.write(false).unwrap());
        assert!(!c.write(false).unwrap(), "nothing changed");
        let c2 = Checkpointer::load(dir.path()).unwrap();
        assert_eq!(c2.offset(fp(7)), Some(42));
        assert_eq!(c2.resume_anchor(fp(7)), Some(Anchor::of(b"x\n")), "the anchor is kept with its offset");
        let text = fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
    }

    #[test]
    fn rejects_unknown_version() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), r#"{"version":99,"files":[]}"#).unwrap();
        let e = Checkpointer::load(dir.path()).err().unwrap().to_string();
        assert!(e.contains("version 99"), "{e}");
    }

    #[test]
    fn prunes_files_gone_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpointer::load(dir.path()).unwrap();
        c.seen(fp(1), "/old", 1, 1, 0, 0);
        c.seen(fp(2), "/new", 1, 2, 0, PRUNE_AFTER_MS + 10);
        c.prune(PRUNE_AFTER_MS + 20);
        assert_eq!(c.offset(fp(1)), None);
        assert_eq!(c.offset(fp(2)), Some(0));
    }
}
