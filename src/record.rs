//! The call-log record and its JSON shapes.
//!
//! [`Record`] is the 41-field call-log schema (FORMATS.md §1) plus the
//! bridge's own `sync_delay_ms`. Values borrow from the line buffer
//! (`Cow::Borrowed`) while a line is parsed, enriched and serialised; the
//! running bridge turns them into `Record<'static>` with [`Record::into_owned`]
//! before they cross a task boundary.
//!
//! Invariant: only this module decides the JSON shape of a record
//! ([`Shape::Ecls`] or [`Shape::Ndjson`]).

use std::borrow::Cow;

use crate::time;

/// How a field's value is written in the `ndjson` shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Always a JSON string.
    Str,
    /// A JSON integer when the value is one, `null` when absent (`-`, empty).
    Int,
    /// A JSON number when the value is one, `null` when absent.
    Float,
}

macro_rules! fields {
    ($( $variant:ident => $name:literal : $kind:ident ),+ $(,)?) => {
        /// One field of the call-log schema, in the order the hosted stream
        /// writes them. `ingestion_time` is not here: it is a number the
        /// bridge stamps, kept in [`Record::ingestion_time`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum Field { $( $variant ),+ }

        impl Field {
            /// Every field, in wire order.
            pub const ALL: &'static [Field] = &[ $( Field::$variant ),+ ];

            /// The schema name of the field (`api_key`, `http_status_code`, ...).
            pub const fn name(self) -> &'static str {
                match self { $( Field::$variant => $name ),+ }
            }

            /// How the `ndjson` shape writes the field.
            pub const fn kind(self) -> Kind {
                match self { $( Field::$variant => Kind::$kind ),+ }
            }
        }
    };
}

fields! {
    ApiKey => "api_key": Str,
    ApiMethodName => "api_method_name": Str,
    Bytes => "bytes": Int,
    CacheHit => "cache_hit": Int,
    ClientTransferTime => "client_transfer_time": Float,
    ConnectTime => "connect_time": Float,
    EndpointName => "endpoint_name": Str,
    HttpMethod => "http_method": Str,
    HttpStatusCode => "http_status_code": Int,
    HttpVersion => "http_version": Str,
    LogType => "log_type": Str,
    OauthAccessToken => "oauth_access_token": Str,
    PackageName => "package_name": Str,
    PackageUuid => "package_uuid": Str,
    PlanName => "plan_name": Str,
    PlanUuid => "plan_uuid": Str,
    PreTransferTime => "pre_transfer_time": Float,
    QpsThrottleValue => "qps_throttle_value": Int,
    QuotaValue => "quota_value": Int,
    Referrer => "referrer": Str,
    RemoteTotalTime => "remote_total_time": Float,
    RequestHostName => "request_host_name": Str,
    RequestId => "request_id": Str,
    RequestTime => "request_time": Str,
    RequestUuid => "request_uuid": Str,
    ResponseString => "response_string": Str,
    ServiceDefinitionEndpointUuid => "service_definition_endpoint_uuid": Str,
    ServiceId => "service_id": Str,
    ServiceName => "service_name": Str,
    SrcIp => "src_ip": Str,
    SslEnabled => "ssl_enabled": Int,
    TotalRequestExecTime => "total_request_exec_time": Float,
    TrafficManager => "traffic_manager": Str,
    TrafficManagerErrorCode => "traffic_manager_error_code": Str,
    Uri => "uri": Str,
    UserAgent => "user_agent": Str,
    OrgName => "org_name": Str,
    OrgUuid => "org_uuid": Str,
    SubOrgName => "sub_org_name": Str,
    SubOrgUuid => "sub_org_uuid": Str,
}

/// Number of string-valued schema fields held in [`Record::fields`]
/// (the 41 schema fields minus `ingestion_time`).
pub const FIELD_COUNT: usize = Field::ALL.len();

impl Field {
    /// Looks a schema field up by its name. `ingestion_time` is not a
    /// [`Field`] (see [`Record::ingestion_time`]) and returns `None`.
    pub fn from_name(name: &str) -> Option<Field> {
        // Linear search over 40 short names is faster than hashing for the
        // header-mapping and JSON-key paths that call this.
        Field::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// Position of the field in [`Record::fields`].
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The value `log_type` takes for everything read from Local Edition.
pub const LOG_TYPE_ML: &str = "ML";

/// One API call in the call-log schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The schema fields, indexed by [`Field::index`]. A field the source
    /// did not have is the empty string; `-` is kept where the source wrote it.
    /// `request_time` holds ISO 8601 UTC (`2019-04-19T21:56:43Z`).
    pub fields: [Cow<'a, str>; FIELD_COUNT],
    /// `request_time` as epoch milliseconds (keeps the fraction that the
    /// seconds-precision ISO string drops); used for the sync delay.
    pub request_time_ms: Option<i64>,
    /// Epoch milliseconds when the bridge read the line (the stream's
    /// `ingestion_time`). `None` in offline `parse` unless asked.
    pub ingestion_time: Option<i64>,
    /// `ingestion_time - request_time_ms`, filled in by the running bridge.
    /// Negative when `request_time` lies in the future (clock skew).
    pub sync_delay_ms: Option<i64>,
}

impl Default for Record<'_> {
    fn default() -> Self {
        Record { fields: std::array::from_fn(|_| Cow::Borrowed("")), request_time_ms: None, ingestion_time: None, sync_delay_ms: None }
    }
}

impl<'a> Record<'a> {
    /// An empty record with `log_type` = `ML`.
    pub fn new_ml() -> Self {
        let mut r = Record::default();
        r.fields[Field::LogType.index()] = Cow::Borrowed(LOG_TYPE_ML);
        r
    }

    /// The value of a field (empty when the source had none).
    #[inline]
    pub fn get(&self, f: Field) -> &str {
        &self.fields[f.index()]
    }

    /// Sets a field.
    #[inline]
    pub fn set(&mut self, f: Field, v: impl Into<Cow<'a, str>>) {
        self.fields[f.index()] = v.into();
    }

    /// True when the field holds no value (empty or `-`).
    #[inline]
    pub fn is_missing(&self, f: Field) -> bool {
        is_absent(self.get(f))
    }

    /// Sets `request_time` from epoch milliseconds: the ISO string (seconds,
    /// as the stream writes it) and [`Record::request_time_ms`].
    pub fn set_request_time_ms(&mut self, ms: i64) {
        self.request_time_ms = Some(ms);
        self.fields[Field::RequestTime.index()] = Cow::Owned(time::format_iso_seconds(ms));
    }

    /// Stamps the time the bridge observed the record and derives
    /// `sync_delay_ms` from it.
    pub fn stamp_observed(&mut self, observed_ms: i64) {
        self.ingestion_time = Some(observed_ms);
        self.sync_delay_ms = self.request_time_ms.map(|rt| observed_ms - rt);
    }

    /// Detaches the record from the line buffer it borrows from.
    pub fn into_owned(self) -> Record<'static> {
        Record {
            fields: self.fields.map(|c| Cow::Owned(c.into_owned())),
            request_time_ms: self.request_time_ms,
            ingestion_time: self.ingestion_time,
            sync_delay_ms: self.sync_delay_ms,
        }
    }

    /// Appends the record as one JSON object in the given shape (no newline).
    pub fn write_json(&self, shape: Shape, out: &mut Vec<u8>) {
        match shape {
            Shape::Ecls => self.write_ecls(out),
            Shape::Ndjson => self.write_ndjson(out),
        }
    }

    /// The `ecls` shape: every value a JSON string, as the hosted stream
    /// sends it.
    fn write_ecls(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        for &f in Field::ALL {
            if f == Field::LogType {
                // The stream places ingestion_time just before log_type.
                key(out, &mut first, "ingestion_time");
                match self.ingestion_time {
                    Some(ms) => {
                        out.push(b'"');
                        push_i64(out, ms);
                        out.push(b'"');
                    }
                    None => out.extend_from_slice(b"\"\""),
                }
            }
            key(out, &mut first, f.name());
            write_json_str(out, self.get(f));
        }
        if let Some(d) = self.sync_delay_ms {
            key(out, &mut first, "sync_delay_ms");
            out.push(b'"');
            push_i64(out, d);
            out.push(b'"');
        }
        out.push(b'}');
    }

    /// The `ndjson` shape: numbers as JSON numbers (`null` when absent),
    /// times as ISO 8601.
    fn write_ndjson(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        for &f in Field::ALL {
            if f == Field::LogType {
                key(out, &mut first, "ingestion_time");
                match self.ingestion_time {
                    Some(ms) => {
                        out.push(b'"');
                        out.extend_from_slice(time::format_iso_millis(ms).as_bytes());
                        out.push(b'"');
                    }
                    None => out.extend_from_slice(b"null"),
                }
            }
            key(out, &mut first, f.name());
            let v = self.get(f);
            match f.kind() {
                Kind::Str => write_json_str(out, v),
                Kind::Int | Kind::Float => {
                    if is_absent(v) {
                        out.extend_from_slice(b"null");
                    } else if is_json_number(v) {
                        out.extend_from_slice(v.as_bytes());
                    } else {
                        // Keep what the source wrote rather than lose it.
                        write_json_str(out, v);
                    }
                }
            }
        }
        key(out, &mut first, "sync_delay_ms");
        match self.sync_delay_ms {
            Some(d) => push_i64(out, d),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }

    /// The record as a `serde_json::Value` in the given shape (tests, tools).
    pub fn to_value(&self, shape: Shape) -> serde_json::Value {
        let mut buf = Vec::with_capacity(1024);
        self.write_json(shape, &mut buf);
        serde_json::from_slice(&buf).expect("record JSON is valid")
    }
}

/// Which JSON shape records are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Exactly what the hosted Call Log Stream sends: every value a string.
    Ecls,
    /// One record per line, numbers as numbers, times as ISO 8601.
    #[default]
    Ndjson,
}

/// Appends `{"data":[r1,r2,...]}`, the stream's message framing, in the
/// `ecls` shape.
pub fn write_ecls_message<'r, 'a: 'r>(records: impl IntoIterator<Item = &'r Record<'a>>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"data\":[");
    let mut first = true;
    for r in records {
        if !first {
            out.push(b',');
        }
        first = false;
        r.write_ecls(out);
    }
    out.extend_from_slice(b"]}");
}

/// True for the spellings of "no value": empty or `-`.
#[inline]
pub fn is_absent(v: &str) -> bool {
    v.is_empty() || v == "-"
}

#[inline]
fn key(out: &mut Vec<u8>, first: &mut bool, name: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn push_i64(out: &mut Vec<u8>, v: i64) {
    let mut buf = itoa_buf(v);
    out.append(&mut buf);
}

fn itoa_buf(v: i64) -> Vec<u8> {
    // Small and allocation-light enough for the few integers per record.
    let mut tmp = [0u8; 20];
    let neg = v < 0;
    let mut n = v.unsigned_abs();
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut v = Vec::with_capacity(21);
    if neg {
        v.push(b'-');
    }
    v.extend_from_slice(&tmp[i..]);
    v
}

/// True when `v` is a valid JSON number literal (so it can be written raw).
pub fn is_json_number(v: &str) -> bool {
    let b = v.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_len = i - int_start;
    if int_len == 0 || (int_len > 1 && b[int_start] == b'0') {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    i == b.len()
}

/// Appends `s` as a JSON string literal, escaping what JSON requires.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(c >> 4) as usize], HEX[(c & 0xf) as usize]]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_has_41_fields_with_ingestion_time() {
        assert_eq!(FIELD_COUNT + 1, 41);
    }

    #[test]
    fn ecls_every_value_is_a_string() {
        let mut r = Record::new_ml();
        r.set(Field::Bytes, "113");
        r.set(Field::UserAgent, "a \"quoted\"\tvalue\u{1}");
        r.set_request_time_ms(1_555_711_003_068);
        r.stamp_observed(1_555_711_021_034);
        let v = r.to_value(Shape::Ecls);
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 42);
        assert!(o.values().all(|v| v.is_string()));
        assert_eq!(o["bytes"], "113");
        assert_eq!(o["ingestion_time"], "1555711021034");
        assert_eq!(o["request_time"], "2019-04-19T21:56:43Z");
        assert_eq!(o["user_agent"], "a \"quoted\"\tvalue\u{1}");
        assert_eq!(o["sync_delay_ms"], "17966");
        let keys: Vec<_> = o.keys().collect();
        assert_eq!(keys[10], "ingestion_time");
        assert_eq!(keys[11], "log_type");
    }

    #[test]
    fn ndjson_numbers_and_nulls() {
        let mut r = Record::new_ml();
        r.set(Field::Bytes, "113");
        r.set(Field::ConnectTime, "0.101");
        r.set(Field::CacheHit, "-");
        r.set(Field::QuotaValue, "n/a");
        let v = r.to_value(Shape::Ndjson);
        assert_eq!(v["bytes"], 113);
        assert_eq!(v["connect_time"], 0.101);
        assert!(v["cache_hit"].is_null());
        assert_eq!(v["quota_value"], "n/a");
        assert!(v["ingestion_time"].is_null());
        assert!(v["sync_delay_ms"].is_null());
    }

    #[test]
    fn json_number_literals() {
        for ok in ["0", "-1", "0.000", "16.388", "1e5", "1.5E-3"] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in ["", "-", "01", "1.", ".5", "1e", "NaN", "0x10", "1 "] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }

    #[test]
    fn message_framing() {
        let r = Record::new_ml();
        let mut out = Vec::new();
        write_ecls_message([&r, &r], &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["data"][0]["log_type"], "ML");
    }
}
