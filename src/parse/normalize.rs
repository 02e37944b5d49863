//! Normalisation shared by every parser (docs/FORMATS.md §4): Local Edition
//! field names to schema names, `request_time` to ISO 8601 UTC,
//! `response_string` to the stream spelling, api key / service id from
//! `request_id`, and the checks that make a record acceptable.
//!
//! Invariant: pure functions over borrowed values. Nothing here allocates
//! unless a value must change (a `response_string` outside the common
//! table, a `request_time` that is reformatted).

use std::borrow::Cow;

use crate::parse::{Reject, RejectReason};
use crate::record::{is_absent, Field, Record};
use crate::time;

/// The schema field a column / JSON key name fills: schema names as they
/// are, Local Edition names mapped (`method` → `http_method`, `spkey` →
/// `service_id`, `proxy` / `proxy_worker` → `traffic_manager`, ...).
/// `None` for names the schema has no place for.
pub fn field_for_name(name: &str) -> Option<Field> {
    let f = match name {
        "api_method" => Field::ApiMethodName,
        "method" => Field::HttpMethod,
        "status" => Field::HttpStatusCode,
        "throttle_value" => Field::QpsThrottleValue,
        "epkey" => Field::ServiceDefinitionEndpointUuid,
        "spkey" => Field::ServiceId,
        "exec_time" => Field::TotalRequestExecTime,
        "proxy" | "proxy_worker" => Field::TrafficManager,
        "proxy_error_code" => Field::TrafficManagerErrorCode,
        "responsestr" => Field::ResponseString,
        _ => return Field::from_name(name),
    };
    Some(f)
}

/// The parts of a `request_id`: `<epoch.frac>_<api_key>_<service_id>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestIdParts<'a> {
    /// `1707986837.343`: when the call reached the traffic manager.
    pub epoch: &'a str,
    /// The api key segment (may be empty). `None` when the id has fewer
    /// than three segments.
    pub api_key: Option<&'a str>,
    /// The last segment: the service id (SPKEY).
    pub service_id: Option<&'a str>,
}

/// Splits a `request_id`. The epoch is everything before the first `_`,
/// the service id everything after the last `_`, the api key what lies
/// between (api keys do not normally contain `_`, but if one does it stays
/// whole). `None` when the id does not start with an epoch.
pub fn split_request_id(id: &str) -> Option<RequestIdParts<'_>> {
    // Byte loops: these ids are short, a SIMD search call costs more.
    let first = id.bytes().position(|c| c == b'_');
    let epoch = match first {
        Some(i) => &id[..i],
        None => id,
    };
    if !looks_like_epoch(epoch) {
        return None;
    }
    let (api_key, service_id) = match first {
        Some(i) => {
            let rest = &id[i + 1..];
            match rest.bytes().rposition(|c| c == b'_') {
                Some(j) => (Some(&rest[..j]), Some(&rest[j + 1..])),
                None => (None, None),
            }
        }
        None => (None, None),
    };
    Some(RequestIdParts { epoch, api_key, service_id })
}

fn looks_like_epoch(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b[0].is_ascii_digit() && b.iter().all(|c| c.is_ascii_digit() || *c == b'.')
}

/// The `response_string` values the stream writes most often, so that the
/// common spellings normalise without allocating.
macro_rules! with_sources {
    ($($s:literal),* $(,)?) => { &[ $( concat!($s, "_API"), concat!($s, "_Mashery") ),* ] };
}
static KNOWN_RESPONSES: &[&str] = with_sources!(
    "200_OK",
    "201_Created",
    "202_Accepted",
    "204_No_Content",
    "206_Partial_Content",
    "301_Moved_Permanently",
    "302_Found",
    "304_Not_Modified",
    "400_Bad_Request",
    "401_Unauthorized",
    "403_Forbidden",
    "404_Not_Found",
    "405_Method_Not_Allowed",
    "406_Not_Acceptable",
    "408_Request_Timeout",
    "409_Conflict",
    "413_Request_Entity_Too_Large",
    "414_Request-URI_Too_Long",
    "415_Unsupported_Media_Type",
    "422_Unprocessable_Entity",
    "429_Too_Many_Requests",
    "500_Internal_Server_Error",
    "502_Bad_Gateway",
    "503_Service_Unavailable",
    "504_Gateway_Timeout",
    "596_Service_Not_Found",
);

/// A small fixed buffer so the common case builds the stream spelling on
/// the stack.
struct StackBuf {
    /// The bytes written so far.
    buf: [u8; 80],
    /// How many of them are used.
    len: usize,
}

impl StackBuf {
    fn push_byte(&mut self, c: u8) -> bool {
        if self.len == self.buf.len() {
            return false;
        }
        self.buf[self.len] = c;
        self.len += 1;
        true
    }

    fn push(&mut self, s: &str) -> bool {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return false;
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        true
    }
}

/// Rewrites a `response_string` in the stream spelling
/// `<code>_<reason words joined by _>_<source>`: `200 OK (API)`,
/// `200OK (API)` and `200_OK_API` all become `200_OK_API`;
/// `403 Forbidden (Mashery)` becomes `403_Forbidden_Mashery`; LE 5's
/// squashed `404NotFound (API)` becomes `404_Not_Found_API` (the words of
/// the code's registered reason phrase, see `restore_reason`). Values with
/// neither a space nor a parenthesis (already the stream spelling, `-`,
/// empty) are returned unchanged.
pub fn response_string(v: Cow<'_, str>) -> Cow<'_, str> {
    let s = v.trim();
    if !s.bytes().any(|c| c == b' ' || c == b'(' || c == b')' || c == b'\t') {
        if s.len() == v.len() {
            return v;
        }
        return Cow::Owned(s.to_owned());
    }
    // The common case, in one pass on the stack: separators become a single
    // `_`, and a leading `200OK` gets its `_` between code and word.
    let mut sb = StackBuf { buf: [0; 80], len: 0 };
    let mut fits = true;
    let mut pending = false;
    let mut first_word = true;
    let mut all_digits = true;
    for &c in s.as_bytes() {
        if matches!(c, b' ' | b'(' | b')' | b'_' | b'\t') {
            if sb.len > 0 {
                pending = true;
                first_word = false;
            }
            continue;
        }
        if pending {
            fits &= sb.push("_");
            pending = false;
        } else if first_word && all_digits && sb.len > 0 && !c.is_ascii_digit() {
            fits &= sb.push("_");
        }
        if !c.is_ascii_digit() {
            all_digits = false;
        }
        fits &= sb.push_byte(c);
    }
    if fits {
        let built = &sb.buf[..sb.len];
        if let Some(k) = KNOWN_RESPONSES.iter().find(|k| k.as_bytes() == built) {
            return Cow::Borrowed(k);
        }
        if let Ok(t) = std::str::from_utf8(built) {
            return known_or_owned(restore_reason(t).unwrap_or_else(|| t.to_owned()));
        }
    }
    let mut out = String::with_capacity(s.len());
    for (i, w) in words(s).enumerate() {
        if i > 0 {
            out.push('_');
        }
        out.push_str(w);
    }
    known_or_owned(restore_reason(&out).unwrap_or(out))
}

/// The common spelling borrowed from [`KNOWN_RESPONSES`] when it is one.
fn known_or_owned(s: String) -> Cow<'static, str> {
    match KNOWN_RESPONSES.iter().find(|k| **k == s) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(s),
    }
}

/// Registered reason phrases (the IANA HTTP status code registry, with the
/// older RFC 2616 / 7231 names that servers still send, and Mashery's 596),
/// by status code.
static REASON_PHRASES: &[(u16, &str)] = &[
    (100, "Continue"),
    (101, "Switching Protocols"),
    (102, "Processing"),
    (103, "Early Hints"),
    (200, "OK"),
    (201, "Created"),
    (202, "Accepted"),
    (203, "Non-Authoritative Information"),
    (204, "No Content"),
    (205, "Reset Content"),
    (206, "Partial Content"),
    (207, "Multi-Status"),
    (208, "Already Reported"),
    (226, "IM Used"),
    (300, "Multiple Choices"),
    (301, "Moved Permanently"),
    (302, "Found"),
    (303, "See Other"),
    (304, "Not Modified"),
    (305, "Use Proxy"),
    (307, "Temporary Redirect"),
    (308, "Permanent Redirect"),
    (400, "Bad Request"),
    (401, "Unauthorized"),
    (402, "Payment Required"),
    (403, "Forbidden"),
    (404, "Not Found"),
    (405, "Method Not Allowed"),
    (406, "Not Acceptable"),
    (407, "Proxy Authentication Required"),
    (408, "Request Timeout"),
    (408, "Request Time-out"),
    (409, "Conflict"),
    (410, "Gone"),
    (411, "Length Required"),
    (412, "Precondition Failed"),
    (413, "Content Too Large"),
    (413, "Payload Too Large"),
    (413, "Request Entity Too Large"),
    (414, "URI Too Long"),
    (414, "Request-URI Too Long"),
    (415, "Unsupported Media Type"),
    (416, "Range Not Satisfiable"),
    (416, "Requested Range Not Satisfiable"),
    (417, "Expectation Failed"),
    (418, "I'm a teapot"),
    (421, "Misdirected Request"),
    (422, "Unprocessable Content"),
    (422, "Unprocessable Entity"),
    (423, "Locked"),
    (424, "Failed Dependency"),
    (425, "Too Early"),
    (426, "Upgrade Required"),
    (428, "Precondition Required"),
    (429, "Too Many Requests"),
    (431, "Request Header Fields Too Large"),
    (451, "Unavailable For Legal Reasons"),
    (500, "Internal Server Error"),
    (501, "Not Implemented"),
    (502, "Bad Gateway"),
    (503, "Service Unavailable"),
    (504, "Gateway Timeout"),
    (504, "Gateway Time-out"),
    (505, "HTTP Version Not Supported"),
    (506, "Variant Also Negotiates"),
    (507, "Insufficient Storage"),
    (508, "Loop Detected"),
    (510, "Not Extended"),
    (511, "Network Authentication Required"),
    (596, "Service Not Found"),
];

/// LE 5 writes the reason phrase without its spaces (`404NotFound (API)`),
/// which the word split alone turns into `404_NotFound_API`. When the
/// words after the status code, joined, are a registered reason phrase of
/// that code without its spaces, they are replaced by the phrase's words:
/// `404_NotFound_API` → `404_Not_Found_API`. `None` when nothing changes
/// (another spelling is kept as written).
fn restore_reason(built: &str) -> Option<String> {
    let parts: Vec<&str> = built.split('_').collect();
    let code: u16 = parts.first().filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()))?.parse().ok()?;
    for &(_, phrase) in REASON_PHRASES.iter().filter(|(c, _)| *c == code) {
        let squashed: String = phrase.split(' ').collect();
        let mut joined = String::new();
        for k in 1..parts.len() {
            joined.push_str(parts[k]);
            if joined.len() > squashed.len() {
                break;
            }
            if joined == squashed {
                let words: Vec<&str> = phrase.split(' ').collect();
                if parts[1..=k] == words[..] {
                    return None;
                }
                let mut out = String::with_capacity(built.len() + words.len());
                out.push_str(parts[0]);
                for w in words.iter().chain(&parts[k + 1..]) {
                    out.push('_');
                    out.push_str(w);
                }
                return Some(out);
            }
        }
    }
    None
}

/// The words of a `response_string`: split at spaces, parentheses and
/// underscores, with a leading `200OK` split into `200` and `OK` (LE 5
/// writes the code and the first reason word together).
fn words(s: &str) -> impl Iterator<Item = &str> + '_ {
    s.split([' ', '(', ')', '_', '\t']).filter(|p| !p.is_empty()).enumerate().flat_map(|(i, p)| {
        let digits = p.bytes().take_while(u8::is_ascii_digit).count();
        let (a, b) = if i == 0 && digits > 0 && digits < p.len() { (&p[..digits], &p[digits..]) } else { (p, "") };
        [a, b].into_iter().filter(|w| !w.is_empty())
    })
}

/// What [`finish`] does beyond the checks every record gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finish {
    /// Fill a missing `api_key` / `service_id` from `request_id`.
    pub ids_from_request_id: bool,
    /// Force `log_type` = `ML` (every Local Edition format); when false a
    /// `log_type` the source had is kept and only an empty one becomes `ML`.
    pub force_ml: bool,
}

/// LE 6, whose parser has already taken the ids and the time from
/// `request_id`: only the checks and `log_type` = `ML`.
pub const FINISH_LE6: Finish = Finish { ids_from_request_id: false, force_ml: true };

/// Local Edition formats: ids derived, `log_type` = `ML`.
pub const FINISH_LE: Finish = Finish { ids_from_request_id: true, force_ml: true };

/// Normalises a freshly parsed record and checks that it is acceptable:
/// a `request_uuid` is present ([`RejectReason::BadField`]) and
/// `request_time` parses ([`RejectReason::BadTime`]). If
/// [`Record::request_time_ms`] is already set (LE 6 takes it from the
/// `request_id`) the time is left alone.
pub fn finish<'a>(rec: &mut Record<'a>, how: Finish) -> Result<(), Reject> {
    if rec.is_missing(Field::RequestUuid) {
        return Err(Reject::new(RejectReason::BadField, "request_uuid is missing"));
    }
    if how.force_ml || rec.get(Field::LogType).is_empty() {
        rec.set(Field::LogType, crate::record::LOG_TYPE_ML);
    }
    let rs = std::mem::take(&mut rec.fields[Field::ResponseString.index()]);
    rec.fields[Field::ResponseString.index()] = response_string(rs);

    let need_time = rec.request_time_ms.is_none();
    if !how.ids_from_request_id && !need_time {
        return Ok(());
    }
    let id = std::mem::take(&mut rec.fields[Field::RequestId.index()]);
    let id_epoch_ms = {
        let parts = split_request_id(&id);
        if how.ids_from_request_id {
            if let Some(p) = parts {
                if rec.is_missing(Field::ApiKey) {
                    if let Some(k) = p.api_key {
                        rec.set(Field::ApiKey, sub_cow(&id, k));
                    }
                }
                if is_absent(rec.get(Field::ServiceId)) {
                    if let Some(s) = p.service_id.filter(|s| !s.is_empty()) {
                        rec.set(Field::ServiceId, sub_cow(&id, s));
                    }
                }
            }
        }
        if need_time {
            parts.and_then(|p| time::parse_epoch_seconds(p.epoch))
        } else {
            None
        }
    };
    rec.fields[Field::RequestId.index()] = id;

    if rec.request_time_ms.is_none() {
        let ms = if rec.is_missing(Field::RequestTime) {
            id_epoch_ms.ok_or_else(|| Reject::new(RejectReason::BadTime, "request_time is missing (and request_id has no epoch)"))?
        } else {
            let raw = rec.get(Field::RequestTime);
            let ms = time::parse_any(raw)
                .ok_or_else(|| Reject::new(RejectReason::BadTime, format!("request_time {:?} does not parse", clip(raw, 64))))?;
            // A time written to the second gains the milliseconds of the
            // request_id epoch when both name the same second.
            match id_epoch_ms {
                Some(id_ms) if ms % 1000 == 0 && id_ms.div_euclid(1000) == ms.div_euclid(1000) => id_ms,
                _ => ms,
            }
        };
        rec.set_request_time_ms(ms);
    }
    Ok(())
}

/// A sub-slice of a Cow as a Cow with the same lifetime: borrowed when
/// the parent is borrowed and `part` lies inside it, copied otherwise.
pub fn sub_cow<'a>(parent: &Cow<'a, str>, part: &str) -> Cow<'a, str> {
    if part.is_empty() {
        return Cow::Borrowed("");
    }
    if let Cow::Borrowed(p) = parent {
        // Re-slice `p` so the result has its lifetime 'a.
        let base = p.as_ptr() as usize;
        let at = part.as_ptr() as usize;
        if at >= base && at + part.len() <= base + p.len() {
            let start = at - base;
            if let Some(sub) = p.get(start..start + part.len()) {
                return Cow::Borrowed(sub);
            }
        }
    }
    Cow::Owned(part.to_owned())
}

/// At most `n` bytes of `s` (on a char boundary), for reject details.
pub fn clip(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_rs(input: &str, expected: &str, borrowed: bool) {
        let out = response_string(Cow::Borrowed(input));
        assert_eq!(out, expected, "{input:?}");
        assert_eq!(matches!(out, Cow::Borrowed(_)), borrowed, "{input:?} borrowed");
    }

    #[test]
    fn response_strings() {
        check_rs("200 OK (API)", "200_OK_API", true);
        check_rs("200OK (API)", "200_OK_API", true);
        check_rs("200_OK_API", "200_OK_API", true);
        check_rs("201Created (API)", "201_Created_API", true);
        check_rs("403 Forbidden (Mashery)", "403_Forbidden_Mashery", true);
        check_rs("403Forbidden (Mashery)", "403_Forbidden_Mashery", true);
        check_rs("404 Not Found (API)", "404_Not_Found_API", true);
        check_rs("418 I'm a teapot (API)", "418_I'm_a_teapot_API", false);
        // LE 5 squashes the reason phrase: the words come back from the
        // registered phrase of the code.
        check_rs("404NotFound (API)", "404_Not_Found_API", true);
        check_rs("429TooManyRequests (Mashery)", "429_Too_Many_Requests_Mashery", true);
        check_rs("500InternalServerError (API)", "500_Internal_Server_Error_API", true);
        check_rs("414Request-URITooLong (API)", "414_Request-URI_Too_Long_API", true);
        check_rs("413ContentTooLarge (API)", "413_Content_Too_Large_API", false);
        check_rs("418I'mateapot (API)", "418_I'm_a_teapot_API", false);
        // Not the phrase of that code: kept as written.
        check_rs("404NotHere (API)", "404_NotHere_API", false);
        check_rs("200NotFound (API)", "200_NotFound_API", false);
        check_rs("404notfound (API)", "404_notfound_API", false);
        check_rs("-", "-", true);
        check_rs("", "", true);
        check_rs("a b c d e f g h i j k l m n (API)", "a_b_c_d_e_f_g_h_i_j_k_l_m_n_API", false);
    }

    fn check_id(id: &str, expected: Option<(&str, Option<&str>, Option<&str>)>) {
        let got = split_request_id(id).map(|p| (p.epoch, p.api_key, p.service_id));
        assert_eq!(got, expected, "{id:?}");
    }

    #[test]
    fn request_ids() {
        check_id(
            "1707986837.343_test3_b2qxuqhyh652hma8jw99gx5y",
            Some(("1707986837.343", Some("test3"), Some("b2qxuqhyh652hma8jw99gx5y"))),
        );
        check_id("1555711003.068__fav6x8vp8wwcyj65m7yv3bzt", Some(("1555711003.068", Some(""), Some("fav6x8vp8wwcyj65m7yv3bzt"))));
        check_id("1555711003.068_a_b_svc", Some(("1555711003.068", Some("a_b"), Some("svc"))));
        check_id("1555711003.068_only", Some(("1555711003.068", None, None)));
        check_id("1555711003", Some(("1555711003", None, None)));
        check_id("-", None);
        check_id("", None);
        check_id("abc_def_ghi", None);
    }

    #[test]
    fn names() {
        assert_eq!(field_for_name("proxy_worker"), Some(Field::TrafficManager));
        assert_eq!(field_for_name("spkey"), Some(Field::ServiceId));
        assert_eq!(field_for_name("service_id"), Some(Field::ServiceId));
        assert_eq!(field_for_name("ingestion_time"), None);
        assert_eq!(field_for_name("nonsense"), None);
    }

    #[test]
    fn finish_checks_and_derives() {
        let mut r = Record::default();
        r.set(Field::RequestUuid, "u1");
        r.set(Field::RequestId, "1542643298.014_key_svc");
        r.set(Field::RequestTime, "2018-11-19T16:01:38Z");
        r.set(Field::ResponseString, "200OK (API)");
        finish(&mut r, FINISH_LE).unwrap();
        assert_eq!(r.get(Field::ApiKey), "key");
        assert_eq!(r.get(Field::ServiceId), "svc");
        assert_eq!(r.get(Field::LogType), "ML");
        assert_eq!(r.get(Field::ResponseString), "200_OK_API");
        assert_eq!(r.get(Field::RequestTime), "2018-11-19T16:01:38Z");
        assert_eq!(r.request_time_ms, Some(1_542_643_298_014));

        let mut r = Record::default();
        r.set(Field::RequestId, "1542643298.014_key_svc");
        assert_eq!(finish(&mut r, FINISH_LE).unwrap_err().reason, RejectReason::BadField);

        let mut r = Record::default();
        r.set(Field::RequestUuid, "u1");
        r.set(Field::RequestTime, "yesterday");
        assert_eq!(finish(&mut r, FINISH_LE).unwrap_err().reason, RejectReason::BadTime);

        let mut r = Record::default();
        r.set(Field::RequestUuid, "u1");
        assert_eq!(finish(&mut r, FINISH_LE).unwrap_err().reason, RejectReason::BadTime);

        // No request_time: the request_id epoch stands in.
        let mut r = Record::default();
        r.set(Field::RequestUuid, "u1");
        r.set(Field::RequestId, "1542643298.014__svc");
        r.set(Field::ApiKey, "unknown");
        finish(&mut r, FINISH_LE).unwrap();
        assert_eq!(r.get(Field::ApiKey), "unknown");
        assert_eq!(r.request_time_ms, Some(1_542_643_298_014));
    }

    #[test]
    fn sub_cow_borrows() {
        let s = String::from("abc_def");
        let c: Cow<'_, str> = Cow::Borrowed(&s);
        assert!(matches!(sub_cow(&c, &c[4..]), Cow::Borrowed("def")));
        let o: Cow<'_, str> = Cow::Owned(s.clone());
        assert_eq!(sub_cow(&o, &o[4..]), "def");
    }
}
