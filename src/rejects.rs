//! The rejects file: one JSON object per line that did not parse, saying
//! where it came from (file, line number, byte offset), why (reason and
//! detail) and what it was (the raw line, escaped).
//!
//! ```text
//! {"file":"access.log","line":7,"offset":4096,"reason":"bad_time","detail":"request_time \"x\" does not parse","raw":"..."}
//! ```
//!
//! `raw` is the line as UTF-8 (invalid bytes shown as U+FFFD); when the
//! line is not valid UTF-8 `raw_hex` also holds its exact bytes in hex.
//! Lines longer than the writer's `max_raw_bytes` are cut, with
//! `raw_truncated: true` and `raw_len` the full length; a line whose format
//! could not be detected (`unknown_format`: it may not be a log line at
//! all, say a linked secret) keeps at most [`UNKNOWN_FORMAT_RAW_BYTES`]. Used by `parse`
//! (through [`RejectsWriter`]) and by the running bridge (through
//! [`RejectsFile`], which bounds the file on disk: `[rejects]`
//! `rotate_bytes` and `keep_files`).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::parse::RejectReason;
use crate::record::write_json_str;
use crate::rotating::{RotatingFile, Rotation};
use crate::telemetry::log_limit::LogLimit;

/// Name of the running bridge's rejects file inside `state_dir`.
pub const FILE_NAME: &str = crate::state_dir::StateDir::REJECTS;

/// The default cap on the bytes of a raw line copied into the rejects file.
pub const DEFAULT_MAX_RAW_BYTES: usize = 64 * 1024;

/// The cap on the raw bytes of a line whose format could not be detected
/// (`unknown_format`): what it holds is not known to be a log line at all
/// (a linked secret, a binary file), so only a short prefix is kept.
pub const UNKNOWN_FORMAT_RAW_BYTES: usize = 256;

/// One rejected line.
#[derive(Clone, Copy, Debug)]
pub struct RejectEntry<'a> {
    /// The file it came from (as the user named it; `-` for stdin).
    pub file: &'a str,
    /// 1-based line number (the first line of a multi-line document).
    pub line: u64,
    /// Byte offset of the line's first byte in the (decompressed) input.
    pub offset: u64,
    /// Why it was rejected.
    pub reason: RejectReason,
    /// What exactly was wrong.
    pub detail: &'a str,
    /// The line as read, without its terminator.
    pub raw: &'a [u8],
    /// When the bridge read it (epoch ms), if known.
    pub observed_ms: Option<i64>,
}

impl RejectEntry<'_> {
    /// Appends the entry as one JSON object (no newline), copying at most
    /// `max_raw_bytes` of the raw line.
    pub fn write_json(&self, max_raw_bytes: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"file\":");
        write_json_str(out, self.file);
        out.extend_from_slice(
            format!(",\"line\":{},\"offset\":{},\"reason\":\"{}\",\"detail\":", self.line, self.offset, self.reason).as_bytes(),
        );
        write_json_str(out, self.detail);
        if let Some(ms) = self.observed_ms {
            out.extend_from_slice(format!(",\"observed_ms\":{ms}").as_bytes());
        }
        let max_raw_bytes =
            if self.reason == RejectReason::UnknownFormat { max_raw_bytes.min(UNKNOWN_FORMAT_RAW_BYTES) } else { max_raw_bytes };
        let truncated = self.raw.len() > max_raw_bytes;
        let raw = &self.raw[..self.raw.len().min(max_raw_bytes)];
        out.extend_from_slice(b",\"raw\":");
        let text = String::from_utf8_lossy(raw);
        write_json_str(out, &text);
        if std::str::from_utf8(raw).is_err() {
            out.extend_from_slice(b",\"raw_hex\":\"");
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for &b in raw {
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            out.push(b'"');
        }
        if truncated {
            out.extend_from_slice(format!(",\"raw_truncated\":true,\"raw_len\":{}", self.raw.len()).as_bytes());
        }
        out.push(b'}');
    }
}

/// Writes rejected lines as JSON lines to any writer (a file, a buffer).
pub struct RejectsWriter<W: Write> {
    /// Where the lines go.
    out: W,
    /// Scratch buffer reused for every entry.
    buf: Vec<u8>,
    /// Cap on the raw bytes copied per entry.
    max_raw_bytes: usize,
    /// Entries written so far.
    written: u64,
}

impl<W: Write> RejectsWriter<W> {
    /// A writer with the default raw-line cap ([`DEFAULT_MAX_RAW_BYTES`]).
    pub fn new(out: W) -> Self {
        RejectsWriter { out, buf: Vec::with_capacity(1024), max_raw_bytes: DEFAULT_MAX_RAW_BYTES, written: 0 }
    }

    /// Changes the cap on the raw bytes copied per entry.
    pub fn with_max_raw_bytes(mut self, n: usize) -> Self {
        self.max_raw_bytes = n;
        self
    }

    /// Writes one entry (one line).
    pub fn write(&mut self, entry: &RejectEntry<'_>) -> io::Result<()> {
        self.buf.clear();
        entry.write_json(self.max_raw_bytes, &mut self.buf);
        self.buf.push(b'\n');
        self.out.write_all(&self.buf)?;
        self.written += 1;
        Ok(())
    }

    /// Entries written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// The running bridge's rejects file (`<state_dir>/rejects.ndjson`),
/// shared by every reader: rotated by size, keeping `keep_files` old files,
/// so that input cannot fill the disk through it (every reject is still
/// counted in `/metrics`). A write error is logged (rate limited) and
/// never stops reading.
pub struct RejectsFile {
    /// The file, its bound, a scratch buffer and the error-log limit.
    inner: Mutex<RejectsInner>,
    /// The file's path (for logs).
    path: PathBuf,
}

struct RejectsInner {
    file: RotatingFile,
    rotation: Rotation,
    buf: Vec<u8>,
    /// Limits the rotation and write-error log lines (junk input rotates
    /// the file every `rotate_bytes`).
    notes: LogLimit,
}

impl RejectsFile {
    /// The rejects file at `path` (created on the first reject).
    pub fn new(path: PathBuf, rotation: Rotation) -> RejectsFile {
        let inner = RejectsInner { file: RotatingFile::new(path.clone()), rotation, buf: Vec::new(), notes: LogLimit::default() };
        RejectsFile { inner: Mutex::new(inner), path }
    }

    /// The current file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the entries in one write (blocking I/O: call from the
    /// blocking pool).
    pub fn write_all<'a>(&self, entries: impl IntoIterator<Item = RejectEntry<'a>>) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *g;
        inner.buf.clear();
        for e in entries {
            e.write_json(DEFAULT_MAX_RAW_BYTES, &mut inner.buf);
            inner.buf.push(b'\n');
        }
        if inner.buf.is_empty() {
            return;
        }
        let res = inner.file.append(&inner.buf, inner.rotation);
        // A chunk of rejects can be large; do not keep its buffer.
        if inner.buf.capacity() > 1 << 20 {
            inner.buf = Vec::new();
        }
        let now = Instant::now();
        match res {
            Ok(a) if a.deleted_bytes > 0 => {
                if inner.notes.allow(now, "rotated") {
                    tracing::info!(
                        file = %self.path.display(), deleted_bytes = a.deleted_bytes, keep_files = inner.rotation.keep_files,
                        "rejects file rotated; the oldest rotated file was deleted ([rejects] rotate_bytes, keep_files)"
                    );
                }
            }
            Ok(_) => {}
            Err(e) => {
                if inner.notes.allow(now, "write_error") {
                    tracing::warn!(file = %self.path.display(), error = %e, "cannot write to the rejects file (the rejects are still counted)");
                }
            }
        }
        if let Some(s) = inner.notes.summary(now, false) {
            tracing::warn!(file = %self.path.display(), suppressed = s.total, by_kind = %s.by_label, "rejects file: {} similar log lines suppressed", s.total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(raw: &[u8]) -> RejectEntry<'_> {
        RejectEntry { file: "a\"b.log", line: 3, offset: 120, reason: RejectReason::BadTime, detail: "x \"y\"", raw, observed_ms: None }
    }

    #[test]
    fn one_json_object_per_line() {
        let mut w = RejectsWriter::new(Vec::new());
        w.write(&entry(b"line \"one\"\t")).unwrap();
        w.write(&entry(b"bad \xff utf8")).unwrap();
        assert_eq!(w.written(), 2);
        let text = String::from_utf8(w.into_inner()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["file"], "a\"b.log");
        assert_eq!(lines[0]["line"], 3);
        assert_eq!(lines[0]["offset"], 120);
        assert_eq!(lines[0]["reason"], "bad_time");
        assert_eq!(lines[0]["detail"], "x \"y\"");
        assert_eq!(lines[0]["raw"], "line \"one\"\t");
        assert!(lines[0].get("raw_hex").is_none());
        assert_eq!(lines[1]["raw"], "bad \u{fffd} utf8");
        assert_eq!(lines[1]["raw_hex"], "62616420ff2075746638");
    }

    #[test]
    fn long_lines_are_cut() {
        let mut w = RejectsWriter::new(Vec::new()).with_max_raw_bytes(4);
        w.write(&entry(b"0123456789")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&w.into_inner()).unwrap();
        assert_eq!(v["raw"], "0123");
        assert_eq!(v["raw_truncated"], true);
        assert_eq!(v["raw_len"], 10);
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    #[test]
    fn a_line_of_unknown_format_keeps_a_short_prefix() {
        let raw = vec![b'r'; 1000];
        let e =
            RejectEntry { file: "f", line: 1, offset: 0, reason: RejectReason::UnknownFormat, detail: "d", raw: &raw, observed_ms: None };
        let mut out = Vec::new();
        e.write_json(DEFAULT_MAX_RAW_BYTES, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["raw"].as_str().unwrap().len(), UNKNOWN_FORMAT_RAW_BYTES);
        assert_eq!((v["raw_truncated"].as_bool(), v["raw_len"].as_u64()), (Some(true), Some(1000)));
    }

    #[test]
    fn the_rejects_file_is_bounded_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rejects.ndjson");
        let f = RejectsFile::new(path.clone(), Rotation { rotate_bytes: 4096, keep_files: 2 });
        let e = RejectEntry { file: "f", line: 1, offset: 0, reason: RejectReason::BadJson, detail: "d", raw: b"junk", observed_ms: None };
        for _ in 0..1000 {
            f.write_all(std::iter::repeat_n(e, 10));
        }
        let total: u64 = std::fs::read_dir(dir.path()).unwrap().map(|d| d.unwrap().metadata().unwrap().len()).sum();
        assert!(total <= 3 * 4096, "{total} bytes on disk");
        assert!(crate::rotating::rotated_path(&path, 2).exists());
        assert!(!crate::rotating::rotated_path(&path, 3).exists());
        for l in std::fs::read_to_string(&path).unwrap().lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
    }
}
