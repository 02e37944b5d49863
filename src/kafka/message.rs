//! Kafka messages: a record becomes one message (key, headers, value), and
//! the key picks the partition as Kafka's own clients pick it.
//!
//! Each message is encoded once, when its record enters the sink, into a
//! *unit* of [`Units`] (the delivery engine's container, so the spool and
//! the dead-letter file take Kafka messages as they are): a
//! small binary prefix with the key and the headers, then the value, which
//! is the unit's document (what the dead-letter file quotes). Invariant:
//! only this module knows that layout.
//!
//! Value: the record in the `ndjson` shape, or in the `ecls` shape wrapped
//! as a stream message `{"data":[record]}`: one record per message, so the
//! key is that record's. Headers: `host` (the bridge that read the line),
//! `file` (the file it was read from), `sync_delay_ms`.

use crate::delivery::{Span, Units};
use crate::record::{write_ecls_message, Field, Record, Shape};

/// Header naming the bridge that read the record.
pub const HEADER_HOST: &str = "host";
/// Header naming the file the record was read from.
pub const HEADER_FILE: &str = "file";
/// Header holding the record's sync delay (ms) as measured there.
pub const HEADER_SYNC_DELAY: &str = "sync_delay_ms";

/// How a record is written as a message value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The record in the `ndjson` shape (numbers as numbers).
    #[default]
    Ndjson,
    /// `{"data":[record]}`, every value a string, as the stream sends it.
    Ecls,
}

impl Format {
    /// The name as the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Ecls => "ecls",
        }
    }
}

/// Which value of a record is its message key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyField {
    /// A schema field (`request_uuid`, `service_id`, ...).
    Field(Field),
    /// The bridge's `host`.
    Host,
}

impl KeyField {
    /// The key field named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<KeyField> {
        match name {
            "host" => Some(KeyField::Host),
            n => Field::from_name(n).map(KeyField::Field),
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            KeyField::Field(f) => f.name(),
            KeyField::Host => "host",
        }
    }

    fn value<'r>(self, r: &'r Record<'_>) -> &'r str {
        match self {
            KeyField::Field(f) => r.get(f),
            KeyField::Host => &r.host,
        }
    }
}

/// Encodes records into messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoder {
    /// The value's shape.
    pub format: Format,
    /// Where the key comes from.
    pub key_field: KeyField,
    /// This bridge's `host`, for records that carry none (read from files
    /// here rather than received from another bridge).
    host: String,
    /// `,"host":"<host>"`, escaped once.
    host_member: Vec<u8>,
}

/// The prefix's marker of a message without a key.
const NO_KEY: u32 = u32::MAX;

impl Encoder {
    /// An encoder writing `format`, keyed by `key_field`, that names
    /// `host` on records that carry no host of their own.
    pub fn new(format: Format, key_field: KeyField, host: &str) -> Encoder {
        let host_member = if host.is_empty() {
            Vec::new()
        } else {
            // A String always serializes.
            format!(",\"host\":{}", serde_json::to_string(host).unwrap_or_else(|_| "\"\"".into())).into_bytes()
        };
        Encoder { format, key_field, host: host.to_string(), host_member }
    }

    /// Appends the message of record `r`, read from `file`, as one unit.
    /// An empty key value gives a message without a key (spread over the
    /// partitions).
    pub fn push(&self, r: &Record<'_>, file: &str, units: &mut Units) {
        let out = &mut units.buf;
        let own_host = r.host.is_empty();
        let key = match self.key_field {
            KeyField::Host if own_host => self.host.as_str(),
            k => k.value(r),
        };
        if key.is_empty() || key == "-" {
            out.extend_from_slice(&NO_KEY.to_le_bytes());
        } else {
            push_bytes32(out, key.as_bytes());
        }
        let mut delay = [0u8; 20];
        let delay = r.sync_delay_ms.map(|d| format_i64(d, &mut delay));
        let host = if own_host { self.host.as_bytes() } else { r.host.as_bytes() };
        let headers = [(HEADER_HOST, Some(host)), (HEADER_FILE, Some(file.as_bytes())), (HEADER_SYNC_DELAY, delay)];
        let present = headers.iter().filter(|(_, v)| v.is_some_and(|v| !v.is_empty())).count();
        out.push(present as u8);
        for (name, v) in headers {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                out.push(name.len() as u8);
                out.extend_from_slice(name.as_bytes());
                push_bytes32(out, v);
            }
        }
        let doc_start = out.len();
        match self.format {
            Format::Ndjson => r.write_json(Shape::Ndjson, out),
            Format::Ecls => write_ecls_message(std::iter::once(r), out),
        }
        if own_host && !self.host_member.is_empty() {
            // The host goes last in both shapes (as `Record::write_json`
            // puts it): before the record's closing brace, and for `ecls`
            // before the `]}` that close the message.
            let tail: &[u8] = match self.format {
                Format::Ndjson => b"}",
                Format::Ecls => b"}]}",
            };
            if out.ends_with(tail) {
                out.truncate(out.len() - tail.len());
                out.extend_from_slice(&self.host_member);
                out.extend_from_slice(tail);
            }
        }
        units.spans.push(Span { end: out.len(), doc_start, doc_end: out.len() });
    }
}

fn push_bytes32(out: &mut Vec<u8>, v: &[u8]) {
    // A value over 4 GiB cannot reach here (lines are bounded far below).
    out.extend_from_slice(&(v.len().min(NO_KEY as usize - 1) as u32).to_le_bytes());
    out.extend_from_slice(&v[..v.len().min(NO_KEY as usize - 1)]);
}

/// The decimal digits of `v` in `buf`.
fn format_i64(v: i64, buf: &mut [u8; 20]) -> &[u8] {
    use std::io::Write;
    let mut c = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(c, "{v}");
    let n = c.position() as usize;
    &buf[..n]
}

/// One message read back from its unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// The key; `None` for a message without one.
    pub key: Option<&'a [u8]>,
    /// The headers, in order.
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// The value.
    pub value: &'a [u8],
}

/// Why a unit is not a message (a damaged spool file passes its CRC only
/// by a bug, but a bug must not panic the sink).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed message unit")]
pub struct Malformed;

/// The message of unit `i`.
pub fn message(units: &Units, i: usize) -> Result<Message<'_>, Malformed> {
    let unit = units.unit(i);
    let s = units.spans[i];
    let start = s.end - unit.len();
    let prefix = unit.get(..s.doc_start.checked_sub(start).ok_or(Malformed)?).ok_or(Malformed)?;
    let mut r = Reader(prefix);
    let key = match r.u32()? {
        NO_KEY => None,
        n => Some(r.take(n as usize)?),
    };
    let count = r.take(1)?[0];
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let n = r.take(1)?[0] as usize;
        let name = std::str::from_utf8(r.take(n)?).map_err(|_| Malformed)?;
        let len = r.u32()? as usize;
        headers.push((name, r.take(len)?));
    }
    if !r.0.is_empty() {
        return Err(Malformed);
    }
    Ok(Message { key, headers, value: &unit[prefix.len()..] })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), so a key lands on
/// the partition any Kafka client would choose for it.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ len as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= (tail[2] as u32) << 16;
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed message among `partitions` (the Java
/// client's default partitioner: `toPositive(murmur2(key)) % n`).
pub fn partition_for(key: &[u8], partitions: usize) -> usize {
    ((murmur2(key) & 0x7fff_ffff) as usize) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn record() -> Record<'static> {
        let mut r = Record::new_ml();
        r.set(Field::RequestUuid, "uuid-1");
        r.set(Field::ServiceId, "svc\"1");
        r.set_request_time_ms(1_555_710_203_000);
        r.stamp_observed(1_555_710_204_500);
        r.host = Cow::Borrowed("edge-a");
        r
    }

    #[test]
    fn a_unit_holds_key_headers_and_the_record() {
        let mut u = Units::default();
        let e = Encoder::new(Format::Ndjson, KeyField::Field(Field::RequestUuid), "");
        e.push(&record(), "/logs/access.log", &mut u);
        let mut r2 = record();
        r2.set(Field::RequestUuid, "");
        r2.sync_delay_ms = None;
        r2.host = Cow::Borrowed("");
        Encoder::new(Format::Ecls, e.key_field, "").push(&r2, "", &mut u);
        let m = message(&u, 0).unwrap();
        assert_eq!(m.key, Some(&b"uuid-1"[..]));
        assert_eq!(m.headers, vec![("host", &b"edge-a"[..]), ("file", &b"/logs/access.log"[..]), ("sync_delay_ms", &b"1500"[..])]);
        let v: serde_json::Value = serde_json::from_slice(m.value).unwrap();
        assert_eq!(
            (v["request_uuid"].as_str(), v["host"].as_str(), v["sync_delay_ms"].as_i64()),
            (Some("uuid-1"), Some("edge-a"), Some(1500))
        );
        assert_eq!(u.doc(0), m.value, "the dead-letter file quotes the value");
        let m = message(&u, 1).unwrap();
        assert_eq!((m.key, m.headers.len()), (None, 0), "an empty key value and empty headers are left out");
        let v: serde_json::Value = serde_json::from_slice(m.value).unwrap();
        assert_eq!(v["data"][0]["service_id"], "svc\"1");
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
        // Units survive the upstream machinery that splits and selects.
        let (_, tail) = u.split_at(1);
        assert_eq!(message(&tail, 0).unwrap(), m);
        let mut bad = u.clone();
        bad.buf[0] = 0xfe;
        assert_eq!(message(&bad, 0), Err(Malformed));
    }

    #[test]
    fn records_without_a_host_carry_the_bridges() {
        let mut r = record();
        r.host = Cow::Borrowed("");
        let mut u = Units::default();
        Encoder::new(Format::Ndjson, KeyField::Host, "edge \"b\"").push(&r, "f", &mut u);
        Encoder::new(Format::Ecls, KeyField::Host, "edge-b").push(&r, "f", &mut u);
        Encoder::new(Format::Ndjson, KeyField::Host, "edge-b").push(&record(), "f", &mut u);
        let m = message(&u, 0).unwrap();
        assert_eq!((m.key, m.headers[0]), (Some(&b"edge \"b\""[..]), ("host", &b"edge \"b\""[..])));
        let v: serde_json::Value = serde_json::from_slice(m.value).unwrap();
        assert_eq!(v["host"], "edge \"b\"");
        let v: serde_json::Value = serde_json::from_slice(message(&u, 1).unwrap().value).unwrap();
        assert_eq!(v["data"][0]["host"], "edge-b");
        let m = message(&u, 2).unwrap();
        let v: serde_json::Value = serde_json::from_slice(m.value).unwrap();
        assert_eq!((m.key, v["host"].as_str()), (Some(&b"edge-a"[..]), Some("edge-a")), "a record's own host is kept");
    }

    #[test]
    fn key_fields() {
        assert_eq!(KeyField::from_name("service_id"), Some(KeyField::Field(Field::ServiceId)));
        assert_eq!(KeyField::from_name("host"), Some(KeyField::Host));
        assert_eq!(KeyField::from_name("ingestion_time"), None);
        assert_eq!(KeyField::from_name("nope"), None);
    }

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from Apache Kafka's UtilsTest.testMurmur2.
        for (input, expected) in [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            ("abc", 479470107),
        ] {
            assert_eq!(murmur2(input.as_bytes()), expected, "{input}");
        }
        assert!((0..1000).all(|i| partition_for(format!("k{i}").as_bytes(), 3) < 3));
    }
}
