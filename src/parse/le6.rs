//! `le6`: the LE 6.x enriched access log. One call per line, 71
//! space-separated fields (docs/FORMATS.md §3), some `"quoted"` (with `\"` and
//! `\\` escapes), one `[bracketed]`, optionally a trailing `class` field.
//! The api key and service id come from `request_id`
//! (`<epoch.frac>_<api_key>_<service_id>`) and `request_time` from its
//! epoch (falling back to the `[process_time]` field).
//!
//! Invariant: the tokenizer records byte ranges in a fixed array; values
//! are borrowed from the line unless a quoted field holds an escape.

use std::borrow::Cow;

use memchr::memchr;

use crate::parse::normalize::{self, clip};
use crate::parse::{LineKind, Reject, RejectReason};
use crate::record::{Field, Record};
use crate::time;

/// Fields in a line without the trailing `class`.
pub const FIELDS: usize = 71;
/// Fields in a line with the trailing `class`.
pub const FIELDS_WITH_CLASS: usize = 72;

// Positions of the fields the schema uses (docs/FORMATS.md §3 order).
const LOG_TYPE: usize = 3;
const REQUEST_HOST_NAME: usize = 5;
const SRC_IP: usize = 6;
const IDENT: usize = 7;
const PROCESS_TIME: usize = 9;
const REQUEST: usize = 10;
const BYTES: usize = 11;
const STATUS: usize = 12;
const REFERRER: usize = 13;
const USER_AGENT: usize = 14;
const REQUEST_ID: usize = 15;
const PROXY_WORKER: usize = 17;
const API_METHOD: usize = 18;
const CACHE_HIT: usize = 19;
const PROXY_ERROR_CODE: usize = 20;
const EXEC_TIME: usize = 21;
const REMOTE_TOTAL_TIME: usize = 22;
const CONNECT_TIME: usize = 23;
const PRE_TRANSFER_TIME: usize = 24;
const OAUTH_ACCESS_TOKEN: usize = 27;
const SSL_ENABLED: usize = 30;
const QUOTA_VALUE: usize = 33;
const THROTTLE_VALUE: usize = 36;
const CLIENT_TRANSFER_TIME: usize = 46;
const LOG_INGESTION: usize = 49;
const SERVICE_NAME: usize = 52;
const SERVICE_DEFINITION_ENDPOINT_UUID: usize = 53;
const ENDPOINT_NAME: usize = 54;
const PLAN_NAME: usize = 55;
const PLAN_UUID: usize = 56;
const PACKAGE_NAME: usize = 58;
const PACKAGE_UUID: usize = 59;
const ORG_UUID: usize = 60;
const ORG_NAME: usize = 61;
const SUB_ORG_UUID: usize = 62;
const SUB_ORG_NAME: usize = 63;
const RESPONSESTR: usize = 67;

/// Fields copied as they are: (position, schema field).
const DIRECT: [(usize, Field); 32] = [
    (REQUEST_HOST_NAME, Field::RequestHostName),
    (SRC_IP, Field::SrcIp),
    (IDENT, Field::RequestUuid),
    (BYTES, Field::Bytes),
    (STATUS, Field::HttpStatusCode),
    (REFERRER, Field::Referrer),
    (USER_AGENT, Field::UserAgent),
    (REQUEST_ID, Field::RequestId),
    (PROXY_WORKER, Field::TrafficManager),
    (API_METHOD, Field::ApiMethodName),
    (CACHE_HIT, Field::CacheHit),
    (PROXY_ERROR_CODE, Field::TrafficManagerErrorCode),
    (EXEC_TIME, Field::TotalRequestExecTime),
    (REMOTE_TOTAL_TIME, Field::RemoteTotalTime),
    (CONNECT_TIME, Field::ConnectTime),
    (PRE_TRANSFER_TIME, Field::PreTransferTime),
    (OAUTH_ACCESS_TOKEN, Field::OauthAccessToken),
    (SSL_ENABLED, Field::SslEnabled),
    (QUOTA_VALUE, Field::QuotaValue),
    (THROTTLE_VALUE, Field::QpsThrottleValue),
    (CLIENT_TRANSFER_TIME, Field::ClientTransferTime),
    (SERVICE_NAME, Field::ServiceName),
    (SERVICE_DEFINITION_ENDPOINT_UUID, Field::ServiceDefinitionEndpointUuid),
    (ENDPOINT_NAME, Field::EndpointName),
    (PLAN_NAME, Field::PlanName),
    (PLAN_UUID, Field::PlanUuid),
    (PACKAGE_NAME, Field::PackageName),
    (PACKAGE_UUID, Field::PackageUuid),
    (ORG_UUID, Field::OrgUuid),
    (ORG_NAME, Field::OrgName),
    (SUB_ORG_UUID, Field::SubOrgUuid),
    (SUB_ORG_NAME, Field::SubOrgName),
];

/// One field of a line: a byte range (inside quotes / brackets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tok {
    /// First byte of the value.
    start: u32,
    /// One past the last byte.
    end: u32,
    /// A quoted value holding a backslash escape.
    escaped: bool,
}

/// The byte ranges of a line's fields.
struct Toks {
    /// Up to [`FIELDS_WITH_CLASS`] fields.
    t: [Tok; FIELDS_WITH_CLASS],
    /// How many were found.
    n: usize,
}

/// Splits a line into its fields. Errors: [`RejectReason::Quoting`] for an
/// unterminated quote or bracket or text glued to a closing quote,
/// [`RejectReason::ColumnCount`] for more than 72 fields.
fn tokenize(line: &str) -> Result<Toks, Reject> {
    let b = line.as_bytes();
    let mut toks = Toks { t: [Tok::default(); FIELDS_WITH_CLASS], n: 0 };
    let mut i = 0;
    loop {
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i >= b.len() {
            return Ok(toks);
        }
        let (tok, next) = match b[i] {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                let end = loop {
                    let k = find2(b, j, b'"', b'\\');
                    match b.get(k) {
                        None => return Err(Reject::new(RejectReason::Quoting, format!("unterminated quote in field {}", toks.n + 1))),
                        Some(b'"') => break k,
                        Some(_) => {
                            escaped = true;
                            j = k + 2;
                        }
                    }
                };
                (Tok { start: start as u32, end: end as u32, escaped }, end + 1)
            }
            b'[' => match memchr(b']', &b[i..]) {
                None => return Err(Reject::new(RejectReason::Quoting, format!("unterminated bracket in field {}", toks.n + 1))),
                Some(k) => (Tok { start: (i + 1) as u32, end: (i + k) as u32, escaped: false }, i + k + 1),
            },
            _ => {
                let end = find1(b, i + 1, b' ');
                (Tok { start: i as u32, end: end as u32, escaped: false }, end)
            }
        };
        if next < b.len() && b[next] != b' ' {
            return Err(Reject::new(
                RejectReason::Quoting,
                format!("text after the closing quote or bracket of field {} at byte {next}", toks.n + 1),
            ));
        }
        if toks.n == FIELDS_WITH_CLASS {
            let more = 1 + line[next..].split(' ').filter(|s| !s.is_empty()).count();
            return Err(Reject::new(
                RejectReason::ColumnCount,
                format!("expected {FIELDS} fields ({FIELDS_WITH_CLASS} with class), found at least {}", toks.n + more),
            ));
        }
        toks.t[toks.n] = tok;
        toks.n += 1;
        i = next;
    }
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Bits set at the bytes of `w` equal to `c` (exact for the lowest one,
/// which is all the callers use).
#[inline(always)]
fn eq_mask(w: u64, c: u8) -> u64 {
    let x = w ^ (LO * c as u64);
    x.wrapping_sub(LO) & !x & HI
}

/// Index of the first `c` in `b` at or after `i`, or `b.len()`. Eight
/// bytes at a time: fields are short, so one word usually settles it and a
/// field costs one unpredictable branch instead of one per byte.
#[inline]
fn find1(b: &[u8], mut i: usize, c: u8) -> usize {
    while let Some(chunk) = b.get(i..i + 8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        let m = eq_mask(u64::from_le_bytes(a), c);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && b[i] != c {
        i += 1;
    }
    i.min(b.len())
}

/// Index of the first `c1` or `c2` in `b` at or after `i`, or `b.len()`.
#[inline]
fn find2(b: &[u8], mut i: usize, c1: u8, c2: u8) -> usize {
    while let Some(chunk) = b.get(i..i + 8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        let w = u64::from_le_bytes(a);
        let m = eq_mask(w, c1) | eq_mask(w, c2);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && b[i] != c1 && b[i] != c2 {
        i += 1;
    }
    i.min(b.len())
}

/// Undoes `\"` and `\\`; other backslashes are kept as written.
fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('"' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Toks {
    #[inline]
    fn str<'a>(&self, line: &'a str, i: usize) -> &'a str {
        let t = self.t[i];
        &line[t.start as usize..t.end as usize]
    }

    #[inline]
    fn value<'a>(&self, line: &'a str, i: usize) -> Cow<'a, str> {
        let v = self.str(line, i);
        if self.t[i].escaped {
            Cow::Owned(unescape(v))
        } else {
            Cow::Borrowed(v)
        }
    }
}

/// True when the line looks like an LE 6 access line: it starts with a
/// `dd-mm-yyyy` date and holds ` PROXY_ACCESS `.
pub fn looks_like(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 11
        && b[..2].iter().all(u8::is_ascii_digit)
        && b[2] == b'-'
        && b[3..5].iter().all(u8::is_ascii_digit)
        && b[5] == b'-'
        && b[6..10].iter().all(u8::is_ascii_digit)
        && b[10] == b' '
        && memchr::memmem::find(b, b" PROXY_ACCESS ").is_some()
}

/// Parses one LE 6 line into one record.
pub fn parse<'a>(line: &'a str, out: &mut Vec<Record<'a>>) -> Result<LineKind, Reject> {
    let toks = tokenize(line)?;
    if toks.n != FIELDS && toks.n != FIELDS_WITH_CLASS {
        return Err(Reject::new(
            RejectReason::ColumnCount,
            format!("expected {FIELDS} fields ({FIELDS_WITH_CLASS} with class), found {}", toks.n),
        ));
    }
    let log_type = toks.str(line, LOG_TYPE);
    if log_type != "PROXY_ACCESS" {
        return Err(Reject::new(RejectReason::BadField, format!("field 4 is {:?}, not PROXY_ACCESS", clip(log_type, 40))));
    }
    let mut rec = Record::new_ml();
    for (pos, f) in DIRECT {
        rec.fields[f.index()] = toks.value(line, pos);
    }
    rec.fields[Field::ResponseString.index()] = normalize::response_string(toks.value(line, RESPONSESTR));

    // "GET /path?query HTTP/1.1": method, uri (may hold spaces), version.
    let request = toks.value(line, REQUEST);
    let (method, uri, version) = split_request(&request);
    let (method, uri, version) =
        (normalize::sub_cow(&request, method), normalize::sub_cow(&request, uri), normalize::sub_cow(&request, version));
    rec.set(Field::HttpMethod, method);
    rec.set(Field::Uri, uri);
    rec.set(Field::HttpVersion, version);

    let id = toks.str(line, REQUEST_ID);
    let parts = normalize::split_request_id(id);
    if let Some(p) = parts {
        if let Some(k) = p.api_key {
            rec.set(Field::ApiKey, k);
        }
        if let Some(s) = p.service_id {
            rec.set(Field::ServiceId, s);
        }
    }
    let ms = parts.and_then(|p| time::parse_epoch_seconds(p.epoch)).or_else(|| time::parse_clf(toks.str(line, PROCESS_TIME)));
    match ms {
        Some(ms) => rec.set_request_time_ms(ms),
        None => {
            return Err(Reject::new(
                RejectReason::BadTime,
                format!("neither request_id {:?} nor process_time [{}] holds a time", clip(id, 64), clip(toks.str(line, PROCESS_TIME), 40)),
            ));
        }
    }
    // The line's own write time; informational, so a value that is not a
    // plausible epoch in ms (older builds write `-` or 0) is left out.
    rec.write_time_ms = toks.str(line, LOG_INGESTION).parse::<i64>().ok().filter(|&t| t > 1_000_000_000_000);
    normalize::finish(&mut rec, normalize::FINISH_LE6)?;
    out.push(rec);
    Ok(LineKind::Records(1))
}

/// Splits the request field into method, uri and version. A field without
/// spaces is all uri.
fn split_request(r: &str) -> (&str, &str, &str) {
    match (r.bytes().position(|c| c == b' '), r.bytes().rposition(|c| c == b' ')) {
        (Some(a), Some(z)) if a < z => (&r[..a], &r[a + 1..z], &r[z + 1..]),
        (Some(a), Some(_)) => (&r[..a], &r[a + 1..], &r[r.len()..]),
        _ => (&r[..0], r, &r[r.len()..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "15-02-2024 08:47:17.389 INFO PROXY_ACCESS - tml.api.mashspud.com 10.128.0.81 dd1a5b27-e3ea-4139-95a4-a72c1609673e - [15/Feb/2024:08:47:17 +0000] \"GET /test3?api_key=XXXXX HTTP/1.1\" 25 200 \"-\" \"curl/7.29.0\" 1707986837.343_test3_b2qxuqhyh652hma8jw99gx5y \"-\" \"trafficmanager-deploy-6c8fbb8f54-64ghp\" \"-\" 0 - 0.045 0.030 0.000 0.000 - - - - - 0 6312 100 2 6312 100 1 0 0 6312 171234 0 0 0 0 0 0.000 v3 local 1707986837388 2222 \"tml\" \"Test_API3\" 3dcnbsdefv9ac2zd9qd2taq4 \"Test_EP3\" \"Test_Plan3\" d670a9f7-b523-4deb-b205-66b087020f42 0 \"Test_Pack3\" 447ae50c-349e-4386-abb9-0db67a64479e - \"-\" - \"-\" \"-\" 0.000 0.000 \"200 OK (API)\" \"200 OK\" true \"-\"";

    fn check(input: &str, expected: Result<&[(Field, &str)], RejectReason>) {
        let mut out = Vec::new();
        let got = parse(input, &mut out);
        match (got, expected) {
            (Ok(LineKind::Records(1)), Ok(fields)) => {
                assert_eq!(out.len(), 1);
                for (f, v) in fields {
                    assert_eq!(out[0].get(*f), *v, "{f:?} of {input:?}");
                }
            }
            (Err(r), Err(e)) => {
                assert_eq!(r.reason, e, "{input:?}: {r}");
                assert!(out.is_empty());
            }
            (g, e) => panic!("{input:?}: got {g:?}, expected {e:?}"),
        }
    }

    #[test]
    fn log_ingestion_is_the_write_time() {
        let mut out = Vec::new();
        parse(SAMPLE, &mut out).unwrap();
        assert_eq!(out[0].write_time_ms, Some(1_707_986_837_388));
        assert_eq!(out[0].request_time_ms, Some(1_707_986_837_343));
        let zero = SAMPLE.replace(" local 1707986837388 ", " local 0 ");
        let mut out = Vec::new();
        parse(&zero, &mut out).unwrap();
        assert_eq!(out[0].write_time_ms, None, "no plausible write time: left out, not a reject");
    }

    #[test]
    fn word_search_agrees_with_a_plain_search() {
        let hay = b"ab \"cd\\ef gh\"  ij klmnopqrstuvwxyz \"";
        for i in 0..=hay.len() + 2 {
            let plain1 = (i..hay.len()).find(|&k| hay[k] == b' ').unwrap_or(hay.len()).max(i.min(hay.len()));
            assert_eq!(find1(hay, i, b' '), if i >= hay.len() { hay.len() } else { plain1 }, "find1 from {i}");
            let plain2 = (i..hay.len()).find(|&k| hay[k] == b'"' || hay[k] == b'\\').unwrap_or(hay.len());
            assert_eq!(find2(hay, i, b'"', b'\\'), if i >= hay.len() { hay.len() } else { plain2 }, "find2 from {i}");
        }
        for c in 0..=255u8 {
            let mut w = [b'x'; 8];
            w[5] = c;
            w[6] = b' ';
            assert_eq!(find1(&w, 0, b' '), if c == b' ' { 5 } else { 6 });
        }
    }

    #[test]
    fn sample_line() {
        check(
            SAMPLE,
            Ok(&[
                (Field::RequestUuid, "dd1a5b27-e3ea-4139-95a4-a72c1609673e"),
                (Field::ApiKey, "test3"),
                (Field::ServiceId, "b2qxuqhyh652hma8jw99gx5y"),
                (Field::RequestTime, "2024-02-15T08:47:17Z"),
                (Field::HttpMethod, "GET"),
                (Field::Uri, "/test3?api_key=XXXXX"),
                (Field::HttpVersion, "HTTP/1.1"),
                (Field::TrafficManager, "trafficmanager-deploy-6c8fbb8f54-64ghp"),
                (Field::ResponseString, "200_OK_API"),
                (Field::QuotaValue, "2"),
                (Field::QpsThrottleValue, "1"),
                (Field::SubOrgName, "-"),
                (Field::LogType, "ML"),
            ]),
        );
        assert!(looks_like(SAMPLE));
    }

    #[test]
    fn quoting_and_counts() {
        let with_class = format!("{SAMPLE} com.example.Class");
        check(&with_class, Ok(&[(Field::RequestUuid, "dd1a5b27-e3ea-4139-95a4-a72c1609673e")]));
        let escaped = SAMPLE.replace("\"curl/7.29.0\"", "\"curl \\\"quoted\\\" \\\\ x\"");
        check(&escaped, Ok(&[(Field::UserAgent, "curl \"quoted\" \\ x")]));
        let uri_space = SAMPLE.replace("GET /test3?api_key=XXXXX HTTP/1.1", "GET /a b HTTP/1.1");
        check(&uri_space, Ok(&[(Field::Uri, "/a b"), (Field::HttpMethod, "GET")]));
        check(&SAMPLE.replace(" 0.045 ", " "), Err(RejectReason::ColumnCount));
        check(&format!("{SAMPLE} a b"), Err(RejectReason::ColumnCount));
        check(&SAMPLE.replace("\"curl/7.29.0\"", "\"curl/7.29.0"), Err(RejectReason::Quoting));
        check(&SAMPLE.replace("\"curl/7.29.0\"", "\"curl\"x"), Err(RejectReason::Quoting));
        check(&SAMPLE[..SAMPLE.len() - 1], Err(RejectReason::Quoting));
        check(&SAMPLE.replace("+0000]", "+0000"), Err(RejectReason::Quoting));
        check(&SAMPLE.replace("PROXY_ACCESS", "PROXY_ERROR"), Err(RejectReason::BadField));
        check(&SAMPLE.replace("dd1a5b27-e3ea-4139-95a4-a72c1609673e", "-"), Err(RejectReason::BadField));
        // request_id without an epoch: the process_time bracket stands in.
        let no_epoch = SAMPLE.replace("1707986837.343_test3_b2qxuqhyh652hma8jw99gx5y", "-");
        check(&no_epoch, Ok(&[(Field::RequestTime, "2024-02-15T08:47:17Z"), (Field::ApiKey, "")]));
        check(&no_epoch.replace("15/Feb/2024:08:47:17 +0000", "soon"), Err(RejectReason::BadTime));
        check("", Err(RejectReason::ColumnCount));
        check("\\", Err(RejectReason::ColumnCount));
        check("\"\\", Err(RejectReason::Quoting));
        // A request field without spaces is all uri.
        let bare = SAMPLE.replace("\"GET /test3?api_key=XXXXX HTTP/1.1\"", "\"-\"");
        check(&bare, Ok(&[(Field::Uri, "-"), (Field::HttpMethod, ""), (Field::HttpVersion, "")]));
    }
}
