//! The upstream's encoder: records encoded for its `format`, and request
//! bodies with the optional gzip layer.
//!
//! Every record is encoded once, when it enters the sink, into a unit
//! ([`Units`]): an NDJSON line, an `_bulk` action/document pair, a HEC
//! event object, or an ECLS array element, whose document is the record's
//! JSON. Invariant: only this module knows the body formats.

use std::io::Write;

use super::config::{Format, UpstreamConfig};
use crate::delivery::http::Compression;
use crate::delivery::{Encode, Span, Units};
use crate::record::{write_json_str, Field, Record, Shape};

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
        Encoder { format: cfg.format.clone(), compression: cfg.endpoint.compression }
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

    /// The request body for `units`, compressed as configured. CPU-bound:
    /// call it off the async runtime for large requests.
    pub fn body(&self, units: &Units) -> Vec<u8> {
        let raw_len = units.buf.len() + self.framing_bytes(units.len());
        self.compression.body(raw_len, |out| self.write_body(units, out))
    }

    fn write_body(&self, units: &Units, out: &mut dyn Write) {
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

impl Encode for Encoder {
    fn encode(&self, r: &Record<'_>, _file: &str, units: &mut Units) {
        self.push(r, units)
    }

    fn framing_bytes(&self, records: usize) -> usize {
        Encoder::framing_bytes(self, records)
    }

    fn format(&self) -> &'static str {
        self.format.kind().name()
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
