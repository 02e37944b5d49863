//! The disk spool: requests a sink on the engine set aside (during a long
//! outage, when waiting would hold up reading, for files that went away),
//! stored in the sink's directory under `state_dir` (`upstream-spool/<format>/`,
//! `kafka-spool/`, `otlp-spool/`: units as the sink encoded them) so that
//! the readers can keep reading (and acknowledging) while Local Edition
//! rotates and deletes its files.
//!
//! One file per request, `<seq>.spool`: a JSON header line (records,
//! observed time, CRC of the units, their spans) then the encoded units.
//! Written to a temporary file, fsynced, renamed, directory fsynced: a file
//! that exists is complete, so its pipeline batches can be acknowledged.
//! The spool is bounded by `spool_max_bytes`; when a new request does not
//! fit, the oldest files not being sent are deleted with a loud log line and
//! counted as dropped. All file I/O here is blocking: callers run it with
//! `spawn_blocking`. The in-memory index is guarded by the caller's mutex.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::units::{Span, Units};

/// The header line of a spool file.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    /// Layout version.
    v: u32,
    /// Records in the file.
    records: usize,
    /// Observed time (epoch ms) of the oldest record (delivery delay).
    observed_ms: i64,
    /// Length of the units after the header.
    len: usize,
    /// CRC-32 of the units.
    crc: u32,
    /// The units' spans.
    spans: Vec<Span>,
}

/// One spooled request.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Sequence number (file name), increasing in spool order.
    pub seq: u64,
    /// File size.
    pub bytes: u64,
    /// Records held.
    pub records: usize,
    /// Observed time of its oldest record.
    pub observed_ms: i64,
    /// Being sent: not evicted, not handed out again.
    pub taken: bool,
}

/// Files deleted to make room.
#[derive(Debug, Default)]
pub struct Evicted {
    /// Number of files.
    pub files: usize,
    /// Records they held.
    pub records: usize,
}

/// The spool index and directory.
#[derive(Debug)]
pub struct Spool {
    /// The directory.
    dir: PathBuf,
    /// Upper bound of the files' total size.
    max_bytes: u64,
    /// Spooled requests, oldest first.
    entries: VecDeque<Entry>,
    /// Total size of `entries`.
    bytes: u64,
    /// Bytes reserved for files being written (counted against
    /// `max_bytes`, so concurrent writers cannot overshoot it together).
    reserved: u64,
    /// Next sequence number.
    next_seq: u64,
}

impl Spool {
    /// Opens (creating) the spool directory and indexes the files a previous
    /// run left, oldest first. Unreadable files are reported and skipped.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut entries = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                // A write interrupted by a crash: its batches were never acked.
                let _ = fs::remove_file(e.path());
                continue;
            }
            let Some(seq) = name.strip_suffix(".spool").and_then(|s| s.parse::<u64>().ok()) else { continue };
            match read_header(&e.path()) {
                Ok((h, bytes)) => entries.push(Entry { seq, bytes, records: h.records, observed_ms: h.observed_ms, taken: false }),
                Err(err) => {
                    tracing::error!(file = %e.path().display(), error = %err, "an unreadable spool file is left in place")
                }
            }
        }
        entries.sort_by_key(|e| e.seq);
        let bytes = entries.iter().map(|e| e.bytes).sum();
        let next_seq = entries.last().map_or(1, |e| e.seq + 1);
        Ok(Spool { dir: dir.to_path_buf(), max_bytes, entries: entries.into(), bytes, reserved: 0, next_seq })
    }

    /// Bytes spooled.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records spooled.
    pub fn records(&self) -> usize {
        self.entries.iter().map(|e| e.records).sum()
    }

    /// Files spooled.
    pub fn files(&self) -> usize {
        self.entries.len()
    }

    /// True when some file waits to be sent.
    pub fn has_untaken(&self) -> bool {
        self.entries.iter().any(|e| !e.taken)
    }

    /// Observed time of the oldest spooled record, if any.
    pub fn oldest_observed_ms(&self) -> Option<i64> {
        self.entries.iter().map(|e| e.observed_ms).min()
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.spool"))
    }

    /// Reserves a sequence number and returns the path to write to.
    /// `need` bytes count against `max_bytes` until [`Spool::add`] or
    /// [`Spool::unreserve`].
    pub fn reserve(&mut self, need: u64) -> (u64, PathBuf) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.reserved += need;
        (seq, self.path(seq))
    }

    /// Gives back a reservation whose file was not written.
    pub fn unreserve(&mut self, need: u64) {
        self.reserved = self.reserved.saturating_sub(need);
    }

    /// Makes room for `need` more bytes by deleting the oldest files not
    /// being sent. Returns what was deleted; the caller logs and counts it.
    pub fn make_room(&mut self, need: u64) -> Evicted {
        let mut ev = Evicted::default();
        while self.bytes + self.reserved + need > self.max_bytes {
            let Some(i) = self.entries.iter().position(|e| !e.taken) else { break };
            let Some(e) = self.entries.remove(i) else { break };
            let _ = fs::remove_file(self.path(e.seq));
            self.bytes -= e.bytes;
            ev.files += 1;
            ev.records += e.records;
        }
        ev
    }

    /// True when `need` more bytes fit.
    pub fn fits(&self, need: u64) -> bool {
        self.bytes + self.reserved + need <= self.max_bytes
    }

    /// Registers a file written by [`write_file`] for a reservation of
    /// `reserved` bytes; `taken` when its writer goes on sending it.
    pub fn add(&mut self, seq: u64, bytes: u64, records: usize, observed_ms: i64, reserved: u64, taken: bool) {
        self.unreserve(reserved);
        // Keep sequence order even if writes finished out of order.
        let at = self.entries.iter().position(|e| e.seq > seq).unwrap_or(self.entries.len());
        self.entries.insert(at, Entry { seq, bytes, records, observed_ms, taken });
        self.bytes += bytes;
    }

    /// Hands out the oldest file not being sent.
    pub fn take_oldest(&mut self) -> Option<(Entry, PathBuf)> {
        let e = self.entries.iter_mut().find(|e| !e.taken)?;
        e.taken = true;
        let e = e.clone();
        let p = self.path(e.seq);
        Some((e, p))
    }

    /// Gives a taken file back (sending was abandoned).
    pub fn release(&mut self, seq: u64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.seq == seq) {
            e.taken = false;
        }
    }

    /// Forgets a delivered file; the caller deletes it.
    pub fn remove(&mut self, seq: u64) -> PathBuf {
        if let Some(i) = self.entries.iter().position(|e| e.seq == seq) {
            if let Some(e) = self.entries.remove(i) {
                self.bytes -= e.bytes;
            }
        }
        self.path(seq)
    }
}

/// The size a spool file for `units` will have (close enough for room
/// checks: the header is estimated).
pub fn file_size_estimate(units: &Units) -> u64 {
    (units.buf.len() + 96 + units.spans.len() * 48) as u64
}

/// Writes `units` durably to `path` (temporary file, fsync, rename, fsync
/// of the directory). Returns the file size.
pub fn write_file(path: &Path, units: &Units, observed_ms: i64) -> std::io::Result<u64> {
    let h = Header {
        v: 1,
        records: units.len(),
        observed_ms,
        len: units.buf.len(),
        crc: crc32fast::hash(&units.buf),
        spans: units.spans.clone(),
    };
    let mut head = serde_json::to_vec(&h).map_err(std::io::Error::other)?;
    head.push(b'\n');
    crate::state_dir::write_atomic_with(path, |f| {
        f.write_all(&head)?;
        f.write_all(&units.buf)
    })?;
    Ok((head.len() + units.buf.len()) as u64)
}

fn read_header(path: &Path) -> std::io::Result<(Header, u64)> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    let h: Header = serde_json::from_slice(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if h.v != 1 || h.spans.len() != h.records || line.len() as u64 + h.len as u64 != size {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "spool header does not match the file"));
    }
    Ok((h, size))
}

/// Reads a spool file back.
pub fn read_file(path: &Path) -> std::io::Result<(Units, i64)> {
    let f = File::open(path)?;
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    let h: Header = serde_json::from_slice(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut buf = Vec::with_capacity(h.len);
    r.read_to_end(&mut buf)?;
    let spans_ok = h.spans.last().map_or(0, |s| s.end) == buf.len()
        && h.spans.iter().all(|s| s.doc_start <= s.doc_end && s.doc_end <= s.end && s.end <= buf.len());
    if h.v != 1 || buf.len() != h.len || crc32fast::hash(&buf) != h.crc || !spans_ok {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "spool file is damaged (length or CRC mismatch)"));
    }
    Ok((Units { buf, spans: h.spans }, h.observed_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(n: usize, size: usize) -> Units {
        let mut u = Units::default();
        for _ in 0..n {
            let s = u.buf.len();
            u.buf.extend(std::iter::repeat_n(b'x', size));
            u.spans.push(Span { end: u.buf.len(), doc_start: s, doc_end: u.buf.len() });
        }
        u
    }

    #[test]
    fn write_read_and_reopen_in_order() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 1 << 20).unwrap();
        for i in 0..3 {
            let (seq, p) = s.reserve(0);
            let u = units(i + 1, 10);
            let n = write_file(&p, &u, 100 + i as i64).unwrap();
            s.add(seq, n, u.len(), 100 + i as i64, 0, false);
        }
        assert_eq!(s.records(), 6);
        let again = Spool::open(d.path(), 1 << 20).unwrap();
        assert_eq!(again.records(), 6);
        assert_eq!(again.bytes(), s.bytes());
        let (e, p) = s.take_oldest().unwrap();
        assert_eq!((e.records, e.observed_ms), (1, 100));
        let (u, obs) = read_file(&p).unwrap();
        assert_eq!((u, obs), (units(1, 10), 100));
        assert_eq!(s.take_oldest().unwrap().0.records, 2);
        s.release(e.seq);
        assert_eq!(s.take_oldest().unwrap().0.seq, e.seq);
    }

    #[test]
    fn make_room_evicts_oldest_untaken() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 0).unwrap();
        let mut size = 0;
        for _ in 0..3 {
            let (seq, p) = s.reserve(0);
            size = write_file(&p, &units(2, 100), 1).unwrap();
            s.add(seq, size, 2, 1, 0, false);
        }
        s.max_bytes = 3 * size;
        let (taken, _) = s.take_oldest().unwrap();
        let ev = s.make_room(size);
        assert_eq!((ev.files, ev.records), (1, 2));
        assert!(s.entries.iter().any(|e| e.seq == taken.seq), "a file being sent is not evicted");
        assert_eq!(s.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![taken.seq, taken.seq + 2]);
        assert!(s.fits(size));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn reservations_count_against_the_bound() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 1000).unwrap();
        // Two writers reserve before either has written: the second does
        // not fit, so together they cannot pass the bound.
        assert!(s.fits(600));
        let (a, _) = s.reserve(600);
        assert!(!s.fits(600), "the first reservation counts");
        s.add(a, 550, 1, 1, 600, false);
        assert_eq!((s.bytes(), s.reserved), (550, 0));
        let (_, _) = s.reserve(400);
        s.unreserve(400);
        assert!(s.fits(450));
    }

    #[test]
    fn damaged_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("1.spool");
        write_file(&p, &units(2, 10), 1).unwrap();
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] = b'y';
        fs::write(&p, bytes).unwrap();
        assert!(read_file(&p).is_err());
    }
}
