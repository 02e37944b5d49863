//! OTLP logs on the wire: a record as an OpenTelemetry log record
//! (`opentelemetry.proto.logs.v1.LogRecord`), in protobuf (the default)
//! or OTLP/JSON, and request bodies (`ExportLogsServiceRequest`) that
//! group the records by `host` (the resource's `host.name`).
//!
//! Each record is encoded once into a unit: `[host length u16][host]
//! [log record length u32][log record][document]`, where the document is
//! the record in the `ndjson` shape (what the dead-letter file quotes, in
//! both wire formats). A body writes each unit's log record as it is, so
//! a retry, a split or a spool file never encodes a record again.
//!
//! The messages are written by hand (this module and [`proto`]: the few
//! OTLP messages the sink writes and the one it reads back), checked in
//! the tests against the official definitions (the `opentelemetry-proto`
//! Python package decodes every request). Invariant: only this module
//! knows the OTLP layout.
//!
//! Mapping (README, "OpenTelemetry"): `request_time` is the record's time,
//! `ingestion_time` its observed time, `host` the resource's `host.name`;
//! fields with an OpenTelemetry semantic convention become that attribute
//! (`http.request.method`, `http.response.status_code`, `url.path` and
//! `url.query` from `uri`, `client.address`, `server.address`,
//! `user_agent.original`, `network.protocol.version`,
//! `http.response.body.size`), the others `calllog.<field>` (numbers as
//! numbers); absent values (empty, `-`) are left out. Severity follows the
//! status (5xx ERROR, 4xx WARN, else INFO); the body is
//! `<method> <uri> <status>`.

use std::io::Write;

use serde::Deserialize;

use crate::delivery::http::Compression;
use crate::delivery::{Encode, Span, Units};
use crate::record::{is_absent, write_json_str, Field, Kind, Record, Shape};

/// The instrumentation scope every log record is under.
const SCOPE: &str = "calllog-bridge";

/// How requests are encoded, as `format` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wire {
    /// `application/x-protobuf` (OTLP/HTTP's default).
    #[default]
    Protobuf,
    /// `application/json` (OTLP/JSON).
    Json,
}

impl Wire {
    /// The name in the config, the spool path and the dead-letter file.
    pub fn name(self) -> &'static str {
        match self {
            Wire::Protobuf => "protobuf",
            Wire::Json => "json",
        }
    }

    /// `Content-Type` of a body.
    pub fn content_type(self) -> &'static str {
        match self {
            Wire::Protobuf => "application/x-protobuf",
            Wire::Json => "application/json",
        }
    }
}

/// How one record field becomes an attribute.
#[derive(Clone, Copy)]
enum Attr {
    /// A semantic convention's attribute, the value as the field's kind.
    Semconv(&'static str),
    /// `url.path` and `url.query` from `uri`.
    Uri,
    /// `network.protocol.version`: `HTTP/1.1` becomes `1.1`.
    Version,
    /// The record's time, not an attribute (kept as `calllog.request_time`
    /// when it could not be read as a time).
    Time,
    /// `calllog.<field>`.
    Own,
}

/// The attribute of each field with a semantic convention.
fn attr(f: Field) -> Attr {
    match f {
        Field::HttpMethod => Attr::Semconv("http.request.method"),
        Field::HttpStatusCode => Attr::Semconv("http.response.status_code"),
        Field::Uri => Attr::Uri,
        Field::SrcIp => Attr::Semconv("client.address"),
        Field::RequestHostName => Attr::Semconv("server.address"),
        Field::UserAgent => Attr::Semconv("user_agent.original"),
        Field::HttpVersion => Attr::Version,
        Field::Bytes => Attr::Semconv("http.response.body.size"),
        Field::RequestTime => Attr::Time,
        _ => Attr::Own,
    }
}

/// An attribute's value.
enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Double(f64),
}

impl<'a> Value<'a> {
    /// `v` as a field of kind `kind` says: a number when it is one.
    fn of(v: &'a str, kind: Kind) -> Value<'a> {
        match kind {
            Kind::Int => v.parse().map_or(Value::Str(v), Value::Int),
            Kind::Float => v.parse::<f64>().ok().filter(|d| d.is_finite()).map_or(Value::Str(v), Value::Double),
            Kind::Str => Value::Str(v),
        }
    }
}

/// Calls `each(key, value)` for every attribute of `r`, in field order.
fn attributes<'r>(r: &'r Record<'_>, mut each: impl FnMut(&str, Value<'r>)) {
    let mut own = String::with_capacity(48);
    for &f in Field::ALL {
        let v = r.get(f);
        if is_absent(v) {
            continue;
        }
        match attr(f) {
            Attr::Semconv(key) => each(key, Value::of(v, f.kind())),
            Attr::Uri => {
                let (path, query) = v.split_once('?').unwrap_or((v, ""));
                each("url.path", Value::Str(path));
                if !query.is_empty() {
                    each("url.query", Value::Str(query));
                }
            }
            Attr::Version => each("network.protocol.version", Value::Str(v.strip_prefix("HTTP/").unwrap_or(v))),
            Attr::Time if r.request_time_ms.is_some() => {}
            Attr::Time | Attr::Own => {
                own.clear();
                own.push_str("calllog.");
                own.push_str(f.name());
                each(&own, Value::of(v, f.kind()));
            }
        }
    }
    if let Some(d) = r.sync_delay_ms {
        each("calllog.sync_delay_ms", Value::Int(d));
    }
}

/// Severity from the status: 5xx ERROR, 4xx WARN, else INFO (none without
/// a status).
fn severity(r: &Record<'_>) -> Option<(u64, &'static str)> {
    let status: u16 = r.get(Field::HttpStatusCode).parse().ok()?;
    Some(match status {
        500.. => (17, "ERROR"),
        400..=499 => (13, "WARN"),
        _ => (9, "INFO"),
    })
}

/// The log record's body: `<method> <uri> <status>` (what is present).
fn summary(r: &Record<'_>) -> String {
    let parts = [Field::HttpMethod, Field::Uri, Field::HttpStatusCode].map(|f| r.get(f));
    parts.iter().filter(|v| !is_absent(v)).copied().collect::<Vec<_>>().join(" ")
}

/// Epoch ms as Unix nanoseconds (0, "unknown", before 1970).
fn nanos(ms: Option<i64>) -> u64 {
    ms.map_or(0, |ms| u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000))
}

/// Encodes records and bodies for one `[otlp]` sink.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// Protobuf or JSON.
    pub wire: Wire,
    /// Body compression.
    pub compression: Compression,
    /// Extra resource attributes (`resource_attributes`), after `host.name`.
    pub resource: Vec<(String, String)>,
}

impl Encode for Encoder {
    fn encode(&self, r: &Record<'_>, _file: &str, units: &mut Units) {
        let out = &mut units.buf;
        let host = &r.host.as_bytes()[..r.host.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(host.len() as u16).to_le_bytes());
        out.extend_from_slice(host);
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        match self.wire {
            Wire::Protobuf => log_record_proto(r, out),
            Wire::Json => log_record_json(r, out),
        }
        let len = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        let doc_start = out.len();
        r.write_json(Shape::Ndjson, out);
        units.spans.push(Span { end: out.len(), doc_start, doc_end: out.len() });
    }

    fn format(&self) -> &'static str {
        self.wire.name()
    }
}

/// The host and the encoded log record of unit `i`; `None` for a unit
/// that is not this layout (a bug: the spool's CRC guards its files).
fn parts(units: &Units, i: usize) -> Option<(&[u8], &[u8])> {
    let u = units.unit(i);
    let hl = usize::from(u16::from_le_bytes(u.get(..2)?.try_into().ok()?));
    let host = u.get(2..2 + hl)?;
    let rest = &u[2 + hl..];
    let wl = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    Some((host, rest.get(4..4 + wl)?))
}

impl Encoder {
    /// The request body for `units`, compressed as configured. CPU-bound:
    /// call it off the async runtime.
    pub fn body(&self, units: &Units) -> Vec<u8> {
        // Records grouped by host, hosts in order of first appearance.
        let mut groups: Vec<(&[u8], Vec<&[u8]>)> = Vec::new();
        for i in 0..units.len() {
            let Some((host, record)) = parts(units, i) else {
                tracing::error!(unit = i, "a unit is not an OTLP log record; left out of the request (a bug)");
                continue;
            };
            match groups.iter_mut().find(|(h, _)| *h == host) {
                Some((_, g)) => g.push(record),
                None => groups.push((host, vec![record])),
            }
        }
        let raw_len = units.buf.len() + 256 * groups.len();
        self.compression.body(raw_len, |out| {
            let _ = match self.wire {
                Wire::Protobuf => self.body_proto(&groups, out),
                Wire::Json => self.body_json(&groups, out),
            };
        })
    }

    /// The `Resource` of `host` and the `InstrumentationScope`, protobuf.
    fn resource_proto(&self, host: &[u8]) -> Vec<u8> {
        let mut res = Vec::new();
        if !host.is_empty() {
            proto::message(&mut res, 1, |kv| key_value_proto(kv, "host.name", &Value::Str(&String::from_utf8_lossy(host))));
        }
        for (k, v) in &self.resource {
            proto::message(&mut res, 1, |kv| key_value_proto(kv, k, &Value::Str(v)));
        }
        res
    }

    fn body_proto(&self, groups: &[(&[u8], Vec<&[u8]>)], out: &mut dyn Write) -> std::io::Result<()> {
        let mut scope = Vec::new();
        proto::string(&mut scope, 1, SCOPE);
        proto::string(&mut scope, 2, env!("CARGO_PKG_VERSION"));
        let mut head = Vec::new();
        for (host, records) in groups {
            let resource = self.resource_proto(host);
            let records_len: usize = records.iter().map(|r| proto::field_len(r.len())).sum();
            let scope_logs = proto::field_len(scope.len()) + records_len;
            let resource_logs = proto::field_len(resource.len()) + proto::field_len(scope_logs);
            // ExportLogsServiceRequest.resource_logs (1) { resource (1),
            // scope_logs (2) { scope (1), log_records (2) ... } }
            head.clear();
            proto::len_prefix(&mut head, 1, resource_logs);
            proto::len_prefix(&mut head, 1, resource.len());
            head.extend_from_slice(&resource);
            proto::len_prefix(&mut head, 2, scope_logs);
            proto::len_prefix(&mut head, 1, scope.len());
            head.extend_from_slice(&scope);
            out.write_all(&head)?;
            for r in records {
                head.clear();
                proto::len_prefix(&mut head, 2, r.len());
                out.write_all(&head)?;
                out.write_all(r)?;
            }
        }
        Ok(())
    }

    fn body_json(&self, groups: &[(&[u8], Vec<&[u8]>)], out: &mut dyn Write) -> std::io::Result<()> {
        out.write_all(b"{\"resourceLogs\":[")?;
        let mut head = Vec::new();
        for (g, (host, records)) in groups.iter().enumerate() {
            head.clear();
            head.extend_from_slice(if g > 0 { b",{\"resource\":{\"attributes\":[" } else { b"{\"resource\":{\"attributes\":[" });
            let host = String::from_utf8_lossy(host);
            let mut attrs = (!host.is_empty())
                .then_some(("host.name", &*host))
                .into_iter()
                .chain(self.resource.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            if let Some((k, v)) = attrs.next() {
                key_value_json(&mut head, k, &Value::Str(v));
            }
            for (k, v) in attrs {
                head.push(b',');
                key_value_json(&mut head, k, &Value::Str(v));
            }
            head.extend_from_slice(b"]},\"scopeLogs\":[{\"scope\":{\"name\":");
            write_json_str(&mut head, SCOPE);
            head.extend_from_slice(b",\"version\":");
            write_json_str(&mut head, env!("CARGO_PKG_VERSION"));
            head.extend_from_slice(b"},\"logRecords\":[");
            out.write_all(&head)?;
            for (i, r) in records.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                out.write_all(r)?;
            }
            out.write_all(b"]}]}")?;
        }
        out.write_all(b"]}")
    }
}

/// `LogRecord` in protobuf.
fn log_record_proto(r: &Record<'_>, out: &mut Vec<u8>) {
    proto::fixed64(out, 1, nanos(r.request_time_ms));
    proto::fixed64(out, 11, nanos(r.ingestion_time));
    if let Some((number, text)) = severity(r) {
        proto::varint_field(out, 2, number);
        proto::string(out, 3, text);
    }
    let body = summary(r);
    proto::message(out, 5, |v| value_proto(v, &Value::Str(&body)));
    attributes(r, |k, v| proto::message(out, 6, |kv| key_value_proto(kv, k, &v)));
}

/// `KeyValue` in protobuf.
fn key_value_proto(out: &mut Vec<u8>, key: &str, v: &Value<'_>) {
    proto::string(out, 1, key);
    proto::message(out, 2, |o| value_proto(o, v));
}

/// `AnyValue` in protobuf.
fn value_proto(out: &mut Vec<u8>, v: &Value<'_>) {
    match v {
        Value::Str(s) => proto::string(out, 1, s),
        // int64: the two's complement as a varint.
        Value::Int(i) => proto::varint_field(out, 3, *i as u64),
        Value::Double(d) => proto::fixed64(out, 4, d.to_bits()),
    }
}

/// `LogRecord` in OTLP/JSON (64-bit integers as decimal strings).
fn log_record_json(r: &Record<'_>, out: &mut Vec<u8>) {
    let _ = write!(out, "{{\"timeUnixNano\":\"{}\",\"observedTimeUnixNano\":\"{}\"", nanos(r.request_time_ms), nanos(r.ingestion_time));
    if let Some((number, text)) = severity(r) {
        let _ = write!(out, ",\"severityNumber\":{number},\"severityText\":\"{text}\"");
    }
    out.extend_from_slice(b",\"body\":");
    value_json(out, &Value::Str(&summary(r)));
    out.extend_from_slice(b",\"attributes\":[");
    let mut first = true;
    attributes(r, |k, v| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        key_value_json(out, k, &v);
    });
    out.extend_from_slice(b"]}");
}

/// `KeyValue` in OTLP/JSON.
fn key_value_json(out: &mut Vec<u8>, key: &str, v: &Value<'_>) {
    out.extend_from_slice(b"{\"key\":");
    write_json_str(out, key);
    out.extend_from_slice(b",\"value\":");
    value_json(out, v);
    out.push(b'}');
}

/// `AnyValue` in OTLP/JSON.
fn value_json(out: &mut Vec<u8>, v: &Value<'_>) {
    match v {
        Value::Str(s) => {
            out.extend_from_slice(b"{\"stringValue\":");
            write_json_str(out, s);
            out.push(b'}');
        }
        Value::Int(i) => {
            let _ = write!(out, "{{\"intValue\":\"{i}\"}}");
        }
        Value::Double(d) => {
            let _ = write!(out, "{{\"doubleValue\":{d}}}");
        }
    }
}

/// The protobuf wire format, as far as the sink needs it.
pub mod proto {
    /// Appends `v` as a varint.
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Bytes of `v` as a varint.
    pub fn varint_len(v: u64) -> usize {
        (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
    }

    /// Bytes of a length-delimited field of `len` bytes (tag, length, bytes;
    /// field numbers below 16).
    pub fn field_len(len: usize) -> usize {
        1 + varint_len(len as u64) + len
    }

    /// The tag and length of a length-delimited field.
    pub fn len_prefix(out: &mut Vec<u8>, field: u32, len: usize) {
        varint(out, u64::from(field << 3 | 2));
        varint(out, len as u64);
    }

    /// A varint field.
    pub fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
        varint(out, u64::from(field << 3));
        varint(out, v);
    }

    /// A fixed64 field.
    pub fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
        varint(out, u64::from(field << 3 | 1));
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// A string field.
    pub fn string(out: &mut Vec<u8>, field: u32, s: &str) {
        len_prefix(out, field, s.len());
        out.extend_from_slice(s.as_bytes());
    }

    /// An embedded message written by `write` (its length is known once
    /// written: one byte is reserved, and the message moved in the rare
    /// case its length needs more).
    pub fn message(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
        varint(out, u64::from(field << 3 | 2));
        let at = out.len();
        out.push(0);
        write(out);
        let len = out.len() - at - 1;
        let n = varint_len(len as u64);
        if n > 1 {
            out.splice(at + 1..at + 1, std::iter::repeat_n(0, n - 1));
        }
        let mut head = Vec::with_capacity(n);
        varint(&mut head, len as u64);
        out[at..at + n].copy_from_slice(&head);
    }

    /// One field read back: its number and value.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Read<'a> {
        /// A varint.
        Varint(u64),
        /// Length-delimited bytes.
        Bytes(&'a [u8]),
        /// A fixed 64 or 32-bit value.
        Fixed(u64),
    }

    /// Reads a varint at the start of `b`; the value and the rest.
    fn read_varint(b: &[u8]) -> Option<(u64, &[u8])> {
        let mut v = 0u64;
        for (i, byte) in b.iter().enumerate().take(10) {
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some((v, &b[i + 1..]));
            }
        }
        None
    }

    /// The fields of message `b`, in order; `None` when it is not a
    /// well-formed message.
    pub fn fields(mut b: &[u8]) -> Option<Vec<(u32, Read<'_>)>> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let (tag, rest) = read_varint(b)?;
            let field = u32::try_from(tag >> 3).ok()?;
            let (value, rest) = match tag & 7 {
                0 => {
                    let (v, r) = read_varint(rest)?;
                    (Read::Varint(v), r)
                }
                1 => (Read::Fixed(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?)), &rest[8..]),
                2 => {
                    let (len, r) = read_varint(rest)?;
                    let len = usize::try_from(len).ok()?;
                    (Read::Bytes(r.get(..len)?), &r[len..])
                }
                5 => (Read::Fixed(u64::from(u32::from_le_bytes(rest.get(..4)?.try_into().ok()?))), &rest[4..]),
                _ => return None,
            };
            out.push((field, value));
            b = rest;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::proto::{fields, Read};
    use super::*;
    use std::borrow::Cow;

    fn record(uuid: &str, host: &'static str, status: &str) -> Record<'static> {
        let mut r = Record::new_ml();
        r.set(Field::RequestUuid, uuid.to_string());
        r.set(Field::HttpMethod, "GET");
        r.set(Field::Uri, "/v1/items?id=7");
        r.set(Field::HttpStatusCode, status.to_string());
        r.set(Field::TotalRequestExecTime, "0.125");
        r.set(Field::Referrer, "-");
        r.set(Field::HttpVersion, "HTTP/1.1");
        r.set_request_time_ms(1_700_000_000_123);
        r.stamp_observed(1_700_000_001_000);
        r.host = Cow::Borrowed(host);
        r
    }

    fn encoder(wire: Wire) -> Encoder {
        Encoder { wire, compression: Compression::None, resource: vec![("service.name".into(), "calllog".into())] }
    }

    fn bytes<'a>(f: &[(u32, Read<'a>)], n: u32) -> Vec<&'a [u8]> {
        f.iter().filter(|(k, _)| *k == n).filter_map(|(_, v)| if let Read::Bytes(b) = v { Some(*b) } else { None }).collect()
    }

    /// Attribute key → (AnyValue field number, value read).
    fn attrs(list: Vec<&[u8]>) -> BTreeMap<String, (u32, String)> {
        list.into_iter()
            .map(|kv| {
                let kv = fields(kv).unwrap();
                let key = String::from_utf8(bytes(&kv, 1)[0].to_vec()).unwrap();
                let (n, v) = fields(bytes(&kv, 2)[0]).unwrap().into_iter().next().unwrap();
                let v = match v {
                    Read::Bytes(b) => String::from_utf8(b.to_vec()).unwrap(),
                    Read::Varint(i) => i.to_string(),
                    Read::Fixed(d) => f64::from_bits(d).to_string(),
                };
                (key, (n, v))
            })
            .collect()
    }
    use std::collections::BTreeMap;

    #[test]
    fn protobuf_requests_group_records_by_host_with_the_semantic_conventions() {
        let e = encoder(Wire::Protobuf);
        let mut u = Units::default();
        e.encode(&record("a", "edge-a", "200"), "f", &mut u);
        e.encode(&record("b", "edge-b", "503"), "f", &mut u);
        e.encode(&record("c", "edge-a", "404"), "f", &mut u);
        let doc: serde_json::Value = serde_json::from_slice(u.doc(1)).unwrap();
        assert_eq!(doc["request_uuid"], "b", "the dead-letter file quotes the record");
        let body = e.body(&u);
        let resource_logs = bytes(&fields(&body).unwrap(), 1);
        assert_eq!(resource_logs.len(), 2, "one resource per host");
        let rl = fields(resource_logs[0]).unwrap();
        let resource = attrs(bytes(&fields(bytes(&rl, 1)[0]).unwrap(), 1));
        assert_eq!(resource["host.name"], (1, "edge-a".into()));
        assert_eq!(resource["service.name"], (1, "calllog".into()));
        let sl = fields(bytes(&rl, 2)[0]).unwrap();
        let scope = fields(bytes(&sl, 1)[0]).unwrap();
        assert_eq!(bytes(&scope, 1)[0], SCOPE.as_bytes());
        let records = bytes(&sl, 2);
        assert_eq!(records.len(), 2, "edge-a's two records");
        let lr = fields(records[1]).unwrap();
        let fixed = |n| lr.iter().find_map(|(k, v)| if *k == n { Some(v) } else { None });
        assert_eq!(fixed(1), Some(&Read::Fixed(1_700_000_000_123_000_000)), "request_time is the record's time");
        assert_eq!(fixed(11), Some(&Read::Fixed(1_700_000_001_000_000_000)), "ingestion_time its observed time");
        assert_eq!(fixed(2), Some(&Read::Varint(13)), "404: WARN");
        let a = attrs(bytes(&lr, 6));
        assert_eq!(a["http.request.method"], (1, "GET".into()));
        assert_eq!(a["http.response.status_code"], (3, "404".into()), "an int");
        assert_eq!((a["url.path"].1.as_str(), a["url.query"].1.as_str()), ("/v1/items", "id=7"));
        assert_eq!(a["network.protocol.version"].1, "1.1");
        assert_eq!(a["calllog.total_request_exec_time"], (4, "0.125".into()), "a double");
        assert_eq!(a["calllog.request_uuid"].1, "c");
        assert_eq!(a["calllog.sync_delay_ms"], (3, "877".into()));
        assert!(!a.contains_key("calllog.referrer"), "absent values are left out");
        assert!(!a.contains_key("calllog.request_time"), "the time is the record's time");
        let body_value = fields(bytes(&lr, 5)[0]).unwrap();
        assert_eq!(bytes(&body_value, 1)[0], b"GET /v1/items?id=7 404");
    }

    #[test]
    fn json_requests_are_otlp_json() {
        let e = encoder(Wire::Json);
        let mut u = Units::default();
        e.encode(&record("a", "", "500"), "f", &mut u);
        e.encode(&record("b", "", "200"), "f", &mut u);
        let v: serde_json::Value = serde_json::from_slice(&e.body(&u)).unwrap();
        let rl = &v["resourceLogs"][0];
        assert_eq!(rl["resource"]["attributes"][0]["key"], "service.name", "no host, no host.name");
        let lr = &rl["scopeLogs"][0]["logRecords"];
        assert_eq!(lr.as_array().unwrap().len(), 2);
        assert_eq!((lr[0]["timeUnixNano"].as_str(), lr[0]["severityNumber"].as_u64()), (Some("1700000000123000000"), Some(17)));
        let status = lr[1]["attributes"].as_array().unwrap().iter().find(|a| a["key"] == "http.response.status_code").unwrap();
        assert_eq!(status["value"]["intValue"], "200");
    }

    #[test]
    fn messages_of_any_length_carry_their_length() {
        for n in [0usize, 1, 127, 128, 300, 20_000] {
            let mut out = Vec::new();
            proto::message(&mut out, 5, |o| o.extend(std::iter::repeat_n(b'x', n)));
            assert_eq!(fields(&out).unwrap(), vec![(5, Read::Bytes(&vec![b'x'; n][..]))], "{n}");
            assert_eq!(out.len(), proto::field_len(n));
        }
    }
}
