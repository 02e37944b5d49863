//! The dead-letter file: records a peer refuses for good (a poison batch:
//! an HTTP 4xx other than 408/413/429, a single record still too large, an
//! OTLP `partial_success` rejection) are appended here as one JSON line per
//! request and then acknowledged, so they never block the stream; records
//! a peer refused one by one (`_bulk` item errors, a HEC invalid event, a
//! message a Kafka broker refused) get a line each, with their own status
//! and error.
//!
//! A line: `{"time":..., "url":..., "status":400, "response":"<start of the
//! body>", "format":"ndjson", "count":N, "records":[<document>, ...]}` where
//! each document is the record as the sink's format encodes it (`url` is
//! the sink's destination: a URL without credentials, or brokers/topic).
//!
//! The file is bounded on disk like the rejects file (the same
//! [`RotatingFile`]: `dead_letter_rotate_bytes`, `dead_letter_keep_files`),
//! so a collector that refuses every batch cannot fill the disk; the caller
//! logs the deletion of an old file as an error. Blocking I/O (append +
//! fsync): call with `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::units::Units;
use crate::rotating::{Appended, RotatingFile, Rotation};

/// The dead-letter file of a running sink.
pub struct DeadLetter {
    /// The file (opened on the first poison batch).
    file: Mutex<RotatingFile>,
    /// Its path (for logs).
    path: PathBuf,
}

impl DeadLetter {
    /// The dead-letter file at `path` (created on the first poison batch).
    pub fn new(path: PathBuf) -> DeadLetter {
        DeadLetter { file: Mutex::new(RotatingFile::new(path.clone())), path }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one poison batch and fsyncs it; rotates first when the line
    /// would take the file past `rotation`.
    pub fn append(
        &self,
        rotation: Rotation,
        url: &str,
        format: &str,
        status: u16,
        response: &str,
        units: &Units,
    ) -> std::io::Result<Appended> {
        let mut line = Vec::with_capacity(units.buf.len() + 512);
        push_line(&mut line, url, format, status, response, units, 0..units.len())?;
        self.write(&line, rotation)
    }

    /// Appends records refused one by one (a `_bulk` item error, a HEC
    /// invalid event): one line per record with its own status and error,
    /// in the same layout (`count` 1), and one fsync for all.
    pub fn append_each(
        &self,
        rotation: Rotation,
        url: &str,
        format: &str,
        errors: &[(u16, String)],
        units: &Units,
    ) -> std::io::Result<Appended> {
        let mut lines = Vec::with_capacity(units.buf.len() + 512 * units.len());
        for (i, (status, response)) in errors.iter().enumerate().take(units.len()) {
            push_line(&mut lines, url, format, *status, response, units, i..i + 1)?;
        }
        self.write(&lines, rotation)
    }

    fn write(&self, lines: &[u8], rotation: Rotation) -> std::io::Result<Appended> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let done = f.append(lines, rotation)?;
        f.sync()?;
        Ok(done)
    }
}

fn push_line(
    line: &mut Vec<u8>,
    url: &str,
    format: &str,
    status: u16,
    response: &str,
    units: &Units,
    records: std::ops::Range<usize>,
) -> std::io::Result<()> {
    let head = serde_json::json!({
        "time": crate::time::format_iso_millis(crate::time::now_ms()),
        "url": url,
        "status": status,
        "response": response,
        "format": format,
        "count": records.len(),
    });
    let head = serde_json::to_vec(&head).map_err(std::io::Error::other)?;
    // Re-open the object to append the records as raw JSON documents.
    line.extend_from_slice(&head[..head.len() - 1]);
    line.extend_from_slice(b",\"records\":[");
    for (n, i) in records.enumerate() {
        if n > 0 {
            line.push(b',');
        }
        line.extend_from_slice(units.doc(i));
    }
    line.extend_from_slice(b"]}\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Span;

    #[test]
    fn line_holds_status_response_and_records() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dl/dead.ndjson");
        // `_bulk`-like units: an action line, then the document.
        let mut u = Units::default();
        for id in ["a", "b"] {
            u.buf.extend_from_slice(format!("{{\"index\":{{\"_id\":\"{id}\"}}}}\n").as_bytes());
            let doc_start = u.buf.len();
            u.buf.extend_from_slice(format!("{{\"request_uuid\":\"{id}\",\"bytes\":113}}").as_bytes());
            let doc_end = u.buf.len();
            u.buf.push(b'\n');
            u.spans.push(Span { end: u.buf.len(), doc_start, doc_end });
        }
        let dl = DeadLetter::new(p.clone());
        let rot = Rotation { rotate_bytes: 1 << 20, keep_files: 1 };
        dl.append(rot, "http://x/_bulk", "elasticsearch", 400, "bad \"doc\"", &u).unwrap();
        dl.append(rot, "http://x/_bulk", "elasticsearch", 422, "", &u).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["status"], 400);
        assert_eq!(lines[0]["response"], "bad \"doc\"");
        assert_eq!(lines[0]["count"], 2);
        assert_eq!(lines[0]["records"][1]["request_uuid"], "b");
        assert_eq!(lines[1]["status"], 422);
        dl.append_each(rot, "http://x/_bulk", "elasticsearch", &[(400, "{\"type\":\"mapper\"}".into()), (409, "conflict".into())], &u)
            .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!((lines[2]["status"].as_u64(), lines[2]["count"].as_u64()), (Some(400), Some(1)));
        assert_eq!(lines[2]["records"][0]["request_uuid"], "a");
        assert_eq!((lines[3]["status"].as_u64(), lines[3]["response"].as_str()), (Some(409), Some("conflict")));
        assert_eq!(lines[3]["records"][0]["request_uuid"], "b");
        // Bounded: past rotate_bytes the file rotates, and beyond
        // keep_files the oldest is deleted (reported to the caller).
        let small = Rotation { rotate_bytes: 1, keep_files: 1 };
        let a = dl.append(small, "u", "ndjson", 400, "", &u).unwrap();
        assert_eq!((a.rotated, a.deleted_bytes), (true, 0));
        let b = dl.append(small, "u", "ndjson", 400, "", &u).unwrap();
        assert_eq!((b.rotated, b.deleted_bytes), (true, text.len() as u64));
        assert!(crate::rotating::rotated_path(&p, 1).exists() && !crate::rotating::rotated_path(&p, 2).exists());
    }
}
