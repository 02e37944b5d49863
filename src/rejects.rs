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
//! `raw_truncated: true` and `raw_len` the full length. Used by `parse`
//! and by the running bridge; the writer only formats and writes.

use std::io::{self, Write};

use crate::parse::RejectReason;
use crate::record::write_json_str;

/// The default cap on the bytes of a raw line copied into the rejects file.
pub const DEFAULT_MAX_RAW_BYTES: usize = 64 * 1024;

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
