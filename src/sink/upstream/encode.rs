//! Request bodies: records encoded for the upstream's `format`, and the
//! optional gzip layer.
//!
//! Every record is encoded once, when it enters the sink, into a *unit*:
//! the bytes that carry it in the body (an NDJSON line, an `_bulk`
//! action/document pair, a HEC event object, or an ECLS array element).
//! A request is a run of units ([`Units`]), so a 413 can split it in halves
//! without re-encoding, the spool can store it as is, and the dead-letter
//! file can quote each record's document. Invariant: only this module knows
//! the body formats.

use std::io::Write;

use super::config::{Compression, Format, UpstreamConfig};
use crate::record::{write_json_str, Field, Record, Shape};

/// Where one record's bytes lie in [`Units::buf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Span {
    /// End of the record's unit (the next unit starts here).
    pub end: usize,
    /// Start of the record's JSON document inside the unit.
    pub doc_start: usize,
    /// End of the record's JSON document inside the unit.
    pub doc_end: usize,
}

/// Encoded records, back to back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Units {
    /// The units, concatenated.
    pub buf: Vec<u8>,
    /// One span per record, in order.
    pub spans: Vec<Span>,
}

impl Units {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Start of record `i`'s unit.
    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.spans[i - 1].end
        }
    }

    /// The JSON document of record `i`.
    pub fn doc(&self, i: usize) -> &[u8] {
        let s = self.spans[i];
        &self.buf[s.doc_start..s.doc_end]
    }

    /// The unit of record `i`.
    pub fn unit(&self, i: usize) -> &[u8] {
        &self.buf[self.start(i)..self.spans[i].end]
    }

    /// Drops the last record (used when it made the request too big).
    pub fn pop(&mut self) {
        if self.spans.pop().is_some() {
            let end = self.spans.last().map_or(0, |s| s.end);
            self.buf.truncate(end);
        }
    }

    /// The records at `indices` (ascending), as units of their own.
    pub fn select(&self, indices: &[usize]) -> Units {
        let mut out = Units::default();
        for &i in indices {
            let (start, s) = (self.start(i), self.spans[i]);
            let base = out.buf.len();
            out.buf.extend_from_slice(&self.buf[start..s.end]);
            out.spans.push(Span {
                end: base + (s.end - start),
                doc_start: base + (s.doc_start - start),
                doc_end: base + (s.doc_end - start),
            });
        }
        out
    }

    /// Splits into records `[0, at)` and `[at, len)`.
    pub fn split_at(&self, at: usize) -> (Units, Units) {
        let cut = self.start(at);
        let head = Units { buf: self.buf[..cut].to_vec(), spans: self.spans[..at].to_vec() };
        let tail = Units {
            buf: self.buf[cut..].to_vec(),
            spans: self.spans[at..]
                .iter()
                .map(|s| Span { end: s.end - cut, doc_start: s.doc_start - cut, doc_end: s.doc_end - cut })
                .collect(),
        };
        (head, tail)
    }
}

/// Encodes records and bodies for one upstream.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// The body format, with its keys.
    pub format: Format,
    /// Body compression.
    pub compression: Compression,
}

impl Encoder {
    /// The encoder `[upstream]` asks for.
    pub fn for_config(cfg: &UpstreamConfig) -> Encoder {
        Encoder { format: cfg.format.clone(), compression: cfg.compression }
    }

    /// Appends one record's unit.
    pub fn push(&self, r: &Record<'_>, units: &mut Units) {
        let out = &mut units.buf;
        let (doc_start, doc_end);
        match &self.format {
            Format::Ndjson => {
                doc_start = out.len();
                r.write_json(Shape::Ndjson, out);
                doc_end = out.len();
                out.push(b'\n');
            }
            Format::Ecls => {
                doc_start = out.len();
                r.write_json(Shape::Ecls, out);
                doc_end = out.len();
            }
            Format::Elasticsearch { index } => {
                out.extend_from_slice(b"{\"index\":{");
                if let Some(ix) = index {
                    out.extend_from_slice(b"\"_index\":");
                    write_json_str(out, ix);
                    out.push(b',');
                }
                out.extend_from_slice(b"\"_id\":");
                write_json_str(out, r.get(Field::RequestUuid));
                out.extend_from_slice(b"}}\n");
                doc_start = out.len();
                r.write_json(Shape::Ndjson, out);
                doc_end = out.len();
                out.push(b'\n');
            }
            Format::SplunkHec { sourcetype } => {
                out.push(b'{');
                if let Some(ms) = r.request_time_ms {
                    // Epoch seconds with a fraction, as HEC's `time` wants.
                    out.extend_from_slice(b"\"time\":");
                    let (s, f) = (ms.div_euclid(1000), ms.rem_euclid(1000));
                    let _ = write!(out, "{s}.{f:03},");
                }
                if let Some(st) = sourcetype {
                    out.extend_from_slice(b"\"sourcetype\":");
                    write_json_str(out, st);
                    out.push(b',');
                }
                out.extend_from_slice(b"\"event\":");
                doc_start = out.len();
                r.write_json(Shape::Ndjson, out);
                doc_end = out.len();
                out.extend_from_slice(b"}\n");
            }
        }
        units.spans.push(Span { end: out.len(), doc_start, doc_end });
    }

    /// Bytes the body adds around the units (the ECLS wrapper and commas).
    pub fn framing_bytes(&self, records: usize) -> usize {
        match self.format {
            Format::Ecls => 11 + records.saturating_sub(1),
            _ => 0,
        }
    }

    /// `Content-Type` of the body.
    pub fn content_type(&self) -> &'static str {
        match self.format {
            Format::Ndjson | Format::Elasticsearch { .. } => "application/x-ndjson",
            Format::Ecls | Format::SplunkHec { .. } => "application/json",
        }
    }

    /// `Content-Encoding` of the body, if any.
    pub fn content_encoding(&self) -> Option<&'static str> {
        match self.compression {
            Compression::Gzip { .. } => Some("gzip"),
            Compression::None => None,
        }
    }

    /// The request body for `units`, compressed as configured. CPU-bound:
    /// call it off the async runtime for large requests.
    pub fn body(&self, units: &Units) -> Vec<u8> {
        let raw_len = units.buf.len() + self.framing_bytes(units.len());
        match self.compression {
            Compression::None => {
                let mut out = Vec::with_capacity(raw_len);
                self.write_body(units, &mut out);
                out
            }
            Compression::Gzip { level } => {
                // Call logs compress about 8:1; start with room for that.
                let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(raw_len / 6 + 64), flate2::Compression::new(level));
                self.write_body(units, &mut gz);
                // Writing into a Vec cannot fail.
                gz.finish().unwrap_or_default()
            }
        }
    }

    fn write_body(&self, units: &Units, out: &mut impl Write) {
        // Writes go to a Vec or a GzEncoder over a Vec: they cannot fail.
        match self.format {
            Format::Ecls => {
                let _ = out.write_all(b"{\"data\":[");
                for i in 0..units.len() {
                    if i > 0 {
                        let _ = out.write_all(b",");
                    }
                    let _ = out.write_all(units.unit(i));
                }
                let _ = out.write_all(b"]}");
            }
            _ => {
                let _ = out.write_all(&units.buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::UpstreamFormat;
    use super::*;
    use std::io::Read;

    fn record(uuid: &str, ms: i64) -> Record<'static> {
        let mut r = Record::new_ml();
        r.set(Field::RequestUuid, uuid.to_string());
        r.set(Field::Bytes, "113");
        r.set_request_time_ms(ms);
        r.stamp_observed(ms + 1500);
        r
    }

    fn enc(format: UpstreamFormat) -> Encoder {
        let format = match format {
            UpstreamFormat::Ndjson => Format::Ndjson,
            UpstreamFormat::Ecls => Format::Ecls,
            UpstreamFormat::Elasticsearch => Format::Elasticsearch { index: Some("calls".into()) },
            UpstreamFormat::SplunkHec => Format::SplunkHec { sourcetype: Some("calllog".into()) },
        };
        Encoder { format, compression: Compression::None }
    }

    fn body(format: UpstreamFormat, n: usize) -> (Encoder, Units, String) {
        let e = enc(format);
        let mut u = Units::default();
        for i in 0..n {
            e.push(&record(&format!("u{i}"), 1_555_711_003_068 + i as i64), &mut u);
        }
        let b = String::from_utf8(e.body(&u)).unwrap();
        (e, u, b)
    }

    #[test]
    fn ndjson_is_one_record_per_line() {
        let (_, u, b) = body(UpstreamFormat::Ndjson, 3);
        let lines: Vec<serde_json::Value> = b.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1]["request_uuid"], "u1");
        assert_eq!(lines[1]["bytes"], 113);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(u.doc(2)).unwrap()["request_uuid"], "u2");
    }

    #[test]
    fn ecls_wraps_records_in_data() {
        let (_, _, b) = body(UpstreamFormat::Ecls, 2);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["data"][0]["bytes"], "113");
        let (_, _, empty) = body(UpstreamFormat::Ecls, 0);
        assert_eq!(empty, "{\"data\":[]}");
    }

    #[test]
    fn bulk_pairs_action_and_document() {
        let (_, u, b) = body(UpstreamFormat::Elasticsearch, 2);
        assert!(b.ends_with('\n'));
        let lines: Vec<serde_json::Value> = b.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], serde_json::json!({"index": {"_index": "calls", "_id": "u0"}}));
        assert_eq!(lines[3]["request_uuid"], "u1");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(u.doc(1)).unwrap()["request_uuid"], "u1");
        let mut no_index = enc(UpstreamFormat::Elasticsearch);
        no_index.format = Format::Elasticsearch { index: None };
        let mut u = Units::default();
        no_index.push(&record("x", 0), &mut u);
        assert!(String::from_utf8(u.buf).unwrap().starts_with("{\"index\":{\"_id\":\"x\"}}\n"));
    }

    #[test]
    fn hec_events_carry_time_in_epoch_seconds() {
        let (_, _, b) = body(UpstreamFormat::SplunkHec, 2);
        let events: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&b).into_iter().map(Result::unwrap).collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["time"].as_f64().unwrap(), 1_555_711_003.068);
        assert_eq!(events[0]["sourcetype"], "calllog");
        assert_eq!(events[1]["event"]["request_uuid"], "u1");
    }

    #[test]
    fn gzip_round_trips() {
        let mut e = enc(UpstreamFormat::Ndjson);
        e.compression = Compression::Gzip { level: 6 };
        let mut u = Units::default();
        for i in 0..50 {
            e.push(&record(&format!("u{i}"), 0), &mut u);
        }
        let gz = e.body(&u);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut plain).unwrap();
        assert_eq!(plain, u.buf);
        assert!(gz.len() < u.buf.len() / 4);
    }

    #[test]
    fn split_and_pop_keep_spans_consistent() {
        for format in [UpstreamFormat::Ndjson, UpstreamFormat::Ecls, UpstreamFormat::Elasticsearch, UpstreamFormat::SplunkHec] {
            let (e, mut u, _) = body(format, 5);
            let (a, b) = u.split_at(2);
            assert_eq!((a.len(), b.len()), (2, 3));
            let mut whole = Units::default();
            for i in 0..5 {
                e.push(&record(&format!("u{i}"), 1_555_711_003_068 + i as i64), &mut whole);
            }
            assert_eq!(b.doc(0), whole.doc(2));
            assert_eq!(b.unit(2), whole.unit(4));
            assert_eq!(a.unit(1), whole.unit(1));
            let picked = whole.select(&[1, 3, 4]);
            assert_eq!(picked.len(), 3);
            assert_eq!((picked.unit(0), picked.unit(1), picked.unit(2)), (whole.unit(1), whole.unit(3), whole.unit(4)));
            assert_eq!((picked.doc(0), picked.doc(2)), (whole.doc(1), whole.doc(4)));
            u.pop();
            assert_eq!(u.len(), 4);
            assert_eq!(u.buf.len(), whole.spans[3].end);
        }
    }
}
