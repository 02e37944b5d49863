//! The dead-letter file: poison batches (a 4xx other than 408/413/429, or a
//! single record still too large) are appended here as one JSON line each
//! and then acknowledged, so they never block the stream; records a
//! collector refused one by one (`_bulk` item errors, a HEC invalid event)
//! get a line each, with their own status and error.
//!
//! A line: `{"time":..., "url":..., "status":400, "response":"<start of the
//! body>", "format":"ndjson", "count":N, "records":[<document>, ...]}` where
//! each document is the record as the upstream format encodes it. Blocking
//! I/O (append + fsync): call with `spawn_blocking`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use super::encode::Units;

/// Appends one poison batch to `path` and fsyncs it.
pub fn append(path: &Path, url: &str, format: &str, status: u16, response: &str, units: &Units) -> std::io::Result<()> {
    let mut line = Vec::with_capacity(units.buf.len() + 512);
    push_line(&mut line, url, format, status, response, units, 0..units.len())?;
    write(path, &line)
}

/// Appends records refused one by one (a `_bulk` item error, a HEC
/// invalid event): one line per record with its own status and error, in
/// the same layout (`count` 1), and one fsync for all.
pub fn append_each(path: &Path, url: &str, format: &str, errors: &[(u16, String)], units: &Units) -> std::io::Result<()> {
    let mut lines = Vec::with_capacity(units.buf.len() + 512 * units.len());
    for (i, (status, response)) in errors.iter().enumerate().take(units.len()) {
        push_line(&mut lines, url, format, *status, response, units, i..i + 1)?;
    }
    write(path, &lines)
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

fn write(path: &Path, line: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(line)?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Field, Record};
    use crate::sink::upstream::config::{Compression, Format};
    use crate::sink::upstream::encode::Encoder;

    #[test]
    fn line_holds_status_response_and_records() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dl/dead.ndjson");
        let e = Encoder { format: Format::Elasticsearch { index: None }, compression: Compression::None };
        let mut u = Units::default();
        for id in ["a", "b"] {
            let mut r = Record::new_ml();
            r.set(Field::RequestUuid, id);
            e.push(&r, &mut u);
        }
        append(&p, "http://x/_bulk", "elasticsearch", 400, "bad \"doc\"", &u).unwrap();
        append(&p, "http://x/_bulk", "elasticsearch", 422, "", &u).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["status"], 400);
        assert_eq!(lines[0]["response"], "bad \"doc\"");
        assert_eq!(lines[0]["count"], 2);
        assert_eq!(lines[0]["records"][1]["request_uuid"], "b");
        assert_eq!(lines[1]["status"], 422);
        append_each(&p, "http://x/_bulk", "elasticsearch", &[(400, "{\"type\":\"mapper\"}".into()), (409, "conflict".into())], &u).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!((lines[2]["status"].as_u64(), lines[2]["count"].as_u64()), (Some(400), Some(1)));
        assert_eq!(lines[2]["records"][0]["request_uuid"], "a");
        assert_eq!((lines[3]["status"].as_u64(), lines[3]["response"].as_str()), (Some(409), Some("conflict")));
        assert_eq!(lines[3]["records"][0]["request_uuid"], "b");
    }
}
