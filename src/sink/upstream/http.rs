//! The HTTP side: building the client (auth, extra headers, TLS) and
//! classifying one attempt's outcome into what the sender does next.
//!
//! Invariant: only this module decides which responses are retried
//! (connection errors, timeouts, 408, 429, 5xx), split (413) or
//! dead-lettered (every other 4xx), and, for collectors that judge records
//! one by one (an Elasticsearch `_bulk` answer with `"errors": true`, a
//! Splunk HEC answer with a non-zero `code` or an `invalid-event-number`),
//! which records were taken, which are retried and which are refused for
//! good. Secrets go into headers marked sensitive and are never logged.
//!
//! Every peer is bounded: a response body is read up to a byte limit
//! (a few KB for an error text; for a `_bulk` answer, a few KB per record)
//! and within [`RESPONSE_BODY_TIMEOUT`], so a collector that answers with
//! an endless or dripping body costs neither memory nor a stalled sender.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};

use super::config::{AuthFailures, UpstreamAuth, UpstreamConfig, UpstreamFormat};

/// How much of an error response body is kept for logs and the dead-letter
/// file.
pub const RESPONSE_SNIPPET_BYTES: usize = 1024;

/// How much of a 2xx answer that says nothing per record (NDJSON, ECLS) is
/// read so the connection can be reused; a longer one is dropped.
pub const DRAIN_BYTES: usize = 64 * 1024;

/// A `_bulk` answer is read up to this much per record (a typical item is
/// about 200 bytes; an error item with its reason about 1 KB) ...
pub const BULK_ANSWER_BYTES_PER_RECORD: usize = 2048;

/// ... plus this much.
pub const BULK_ANSWER_BASE_BYTES: usize = 64 * 1024;

/// The body of an answer must arrive within this long after its headers
/// (and within `request_timeout_ms` of the request's start): a collector
/// that drips its answer does not hold a sender for the whole request
/// timeout.
pub const RESPONSE_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// One request body and what the answer is judged against.
#[derive(Debug, Clone)]
pub struct Body {
    /// The encoded (maybe compressed) body.
    pub bytes: bytes::Bytes,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// `Content-Encoding`, if any.
    pub content_encoding: Option<&'static str>,
    /// The body format (how the answer speaks of single records).
    pub format: UpstreamFormat,
    /// Records in the body.
    pub records: usize,
}

/// What the collector did with one record of a request it judged record
/// by record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Taken (indexed).
    Done,
    /// Not taken this time (429, 5xx): send it again.
    Retry,
    /// Refused for good: dead-lettered with the collector's reason.
    Rejected {
        /// The record's status.
        status: u16,
        /// The collector's error for it (its start).
        error: String,
    },
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: delivered.
    Delivered,
    /// The collector judged the records one by one and not all were taken.
    Partial {
        /// One entry per record of the request, in order.
        items: Vec<Item>,
        /// A summary for the log.
        reason: String,
    },
    /// Try again later; `after` is the server's `Retry-After`, if given.
    Retry {
        /// Why (status or error), for the log.
        reason: String,
        /// The server asked to wait this long.
        after: Option<Duration>,
    },
    /// 413: the body is too large; split it.
    TooLarge,
    /// Any other 4xx: the batch is poison.
    Poison {
        /// The status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
}

/// Builds the client: timeouts, TLS (extra CA, client certificate), auth
/// and extra headers as default headers.
pub fn client(cfg: &UpstreamConfig) -> anyhow::Result<reqwest::Client> {
    let mut headers = HeaderMap::new();
    for (k, v) in &cfg.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).with_context(|| format!("upstream.headers: `{k}` is not a header name"))?;
        let value = HeaderValue::from_str(v).with_context(|| format!("upstream.headers.{k}: not a valid header value"))?;
        headers.insert(name, value);
    }
    let auth_value = match &cfg.auth {
        UpstreamAuth::None => None,
        UpstreamAuth::Bearer(t) => Some(format!("Bearer {}", t.expose())),
        UpstreamAuth::Basic { user, password } => Some(format!("Basic {}", base64(format!("{user}:{}", password.expose()).as_bytes()))),
    };
    if let Some(v) = auth_value {
        // The message names the key only: the value is a secret.
        let mut v =
            HeaderValue::from_str(&v).map_err(|_| anyhow::anyhow!("upstream credentials contain characters not allowed in a header"))?;
        v.set_sensitive(true);
        headers.insert(AUTHORIZATION, v);
    }
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .default_headers(headers)
        .timeout(cfg.request_timeout)
        .connect_timeout(cfg.request_timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(cfg.max_in_flight)
        // A redirect would turn the POST into a GET; report it instead.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("calllog-bridge/", env!("CARGO_PKG_VERSION")));
    // The PEM files were read with the config (a reload re-reads them).
    if let Some(ca) = &cfg.ca {
        let certs = reqwest::Certificate::from_pem_bundle(&ca.bytes)
            .with_context(|| format!("upstream.ca_file: {} is not PEM", ca.path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("upstream.ca_file: {} holds no certificate", ca.path.display());
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if let Some((cert, key)) = &cfg.client_identity {
        let mut pem = cert.bytes.clone();
        pem.push(b'\n');
        pem.extend_from_slice(&key.bytes);
        let id = reqwest::Identity::from_pem(&pem).context("upstream.client_cert / client_key: not a PEM certificate and key")?;
        b = b.identity(id);
    }
    b.build().context("upstream: cannot build the HTTP client")
}

/// Sends one body and classifies the answer.
pub async fn attempt(client: &reqwest::Client, url: &str, body: &Body, auth_failures: AuthFailures) -> Outcome {
    let mut req = client.post(url).header(CONTENT_TYPE, body.content_type).body(body.bytes.clone());
    if let Some(e) = body.content_encoding {
        req = req.header(CONTENT_ENCODING, e);
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        // The URL is left out: it is logged redacted by the caller.
        Err(e) => return Outcome::Retry { reason: describe(&e.without_url()), after: None },
    };
    let status = resp.status();
    if status.is_success() {
        return match body.format {
            UpstreamFormat::Elasticsearch => {
                let max = BULK_ANSWER_BASE_BYTES.saturating_add(body.records.saturating_mul(BULK_ANSWER_BYTES_PER_RECORD));
                match read_body(&mut resp, max).await {
                    (answer, true) => bulk_outcome(&answer, body.records),
                    (answer, false) => Outcome::Retry {
                        reason: format!(
                            "the _bulk answer did not arrive whole within {} s and {max} bytes ({} bytes read): which records were indexed is unknown",
                            RESPONSE_BODY_TIMEOUT.as_secs(),
                            answer.len()
                        ),
                        after: None,
                    },
                }
            }
            UpstreamFormat::SplunkHec => hec_ok_outcome(&read_body(&mut resp, RESPONSE_SNIPPET_BYTES).await.0),
            // The status says the batch is delivered; the (usually empty)
            // answer is drained so the connection is reused, within bounds.
            UpstreamFormat::Ndjson | UpstreamFormat::Ecls => {
                let _ = read_body(&mut resp, DRAIN_BYTES).await;
                Outcome::Delivered
            }
        };
    }
    let code = status.as_u16();
    let after = resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, crate::time::now_ms()));
    let text = String::from_utf8_lossy(&read_body(&mut resp, RESPONSE_SNIPPET_BYTES).await.0).into_owned();
    match code {
        413 => Outcome::TooLarge,
        408 | 429 => Outcome::Retry { reason: format!("HTTP {code}"), after },
        401 | 403 if auth_failures == AuthFailures::Retry => Outcome::Retry {
            reason: format!("HTTP {code}: the collector refuses the credentials (fix them, then `systemctl reload`)"),
            after,
        },
        400 if body.format == UpstreamFormat::SplunkHec => {
            hec_invalid_event(&text, body.records).unwrap_or(Outcome::Poison { status: code, body: text })
        }
        400..=499 => Outcome::Poison { status: code, body: text },
        // 5xx, and 1xx/3xx which a POST to a collector should never get.
        _ => Outcome::Retry { reason: format!("HTTP {code}: {}", crate::logsafe::clip(&text, 200)), after },
    }
}

/// Reads at most `max` bytes of a response body, within
/// [`RESPONSE_BODY_TIMEOUT`]. True when the body was read whole.
async fn read_body(resp: &mut reqwest::Response, max: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let read = async {
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    let room = max.saturating_sub(buf.len());
                    buf.extend_from_slice(&c[..c.len().min(room)]);
                    if c.len() > room {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    };
    let whole = tokio::time::timeout(RESPONSE_BODY_TIMEOUT, read).await.unwrap_or(false);
    (buf, whole)
}

/// The parts of a `_bulk` answer the bridge reads.
#[derive(serde::Deserialize)]
struct BulkAnswer {
    /// True when some item failed.
    #[serde(default)]
    errors: bool,
    /// One entry per action (`{"index": {...}}`), in request order.
    #[serde(default)]
    items: Option<Vec<BTreeMap<String, BulkItem>>>,
}

/// One `_bulk` item result.
#[derive(serde::Deserialize)]
struct BulkItem {
    /// The item's HTTP status.
    status: u16,
    /// Why it failed, when it did.
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// A 2xx `_bulk` answer: every record indexed, or which were not.
pub fn bulk_outcome(answer: &[u8], records: usize) -> Outcome {
    let retry_all = |why: String| Outcome::Retry { reason: why, after: None };
    let parsed: BulkAnswer = match serde_json::from_slice(answer) {
        Ok(a) => a,
        Err(e) => return retry_all(format!("the _bulk answer is not a bulk response ({e}): which records were indexed is unknown")),
    };
    if !parsed.errors {
        return Outcome::Delivered;
    }
    let Some(list) = parsed.items else { return retry_all("the _bulk answer has errors but no items".into()) };
    if list.len() != records {
        return retry_all(format!("the _bulk answer has {} items for {records} records", list.len()));
    }
    let mut items = Vec::with_capacity(records);
    let (mut retry, mut rejected, mut first) = (0, 0, None);
    for m in list {
        let Some(it) = m.into_values().next() else { return retry_all("a _bulk answer item is empty".into()) };
        let item = item_for(it.status, || it.error.as_ref().map(|e| e.to_string()).unwrap_or_default());
        match &item {
            Item::Done => {}
            Item::Retry => retry += 1,
            Item::Rejected { .. } => rejected += 1,
        }
        if item != Item::Done && first.is_none() {
            let e = it.error.as_ref().map(|e| e.to_string()).unwrap_or_default();
            first = Some(format!("{} {}", it.status, crate::logsafe::clip(&e, 200)));
        }
        items.push(item);
    }
    if retry == 0 && rejected == 0 {
        return Outcome::Delivered;
    }
    let reason = format!("_bulk: {retry} item(s) to retry, {rejected} refused, of {records} (first: {})", first.unwrap_or_default());
    Outcome::Partial { items, reason }
}

/// What a per-record status means: taken, retried (408, 429, 5xx) or
/// refused for good (any other status).
fn item_for(status: u16, error: impl FnOnce() -> String) -> Item {
    match status {
        200..=299 => Item::Done,
        408 | 429 | 500..=599 => Item::Retry,
        _ => {
            let e = error();
            Item::Rejected { status, error: crate::parse::normalize::clip(&e, RESPONSE_SNIPPET_BYTES).to_string() }
        }
    }
}

/// The parts of a Splunk HEC answer the bridge reads.
#[derive(serde::Deserialize)]
struct HecAnswer {
    /// The human-readable status.
    #[serde(default)]
    text: String,
    /// 0 = success.
    #[serde(default)]
    code: Option<i64>,
    /// For a refused batch, the index (from 0) of the first invalid event.
    #[serde(default, rename = "invalid-event-number")]
    invalid_event_number: Option<usize>,
}

/// A 2xx HEC answer: delivered when its `code` is 0 (or absent: not a HEC
/// status object); any other code means the events were not taken, so the
/// request is retried (busy and unhealthy codes are temporary; others are
/// a configuration problem, such as a URL naming the health endpoint,
/// that must not dead-letter the records).
pub fn hec_ok_outcome(answer: &[u8]) -> Outcome {
    match serde_json::from_slice::<HecAnswer>(answer) {
        Ok(HecAnswer { code: Some(code), text, .. }) if code != 0 => {
            Outcome::Retry { reason: format!("HEC answered code {code}: {}", crate::logsafe::clip(&text, 200)), after: None }
        }
        _ => Outcome::Delivered,
    }
}

/// A HEC 400 naming the first invalid event: that event is refused; the
/// others are sent again (HEC may have indexed the ones before it, so
/// they may arrive twice, which at-least-once allows; losing them would
/// not be).
pub fn hec_invalid_event(answer: &str, records: usize) -> Option<Outcome> {
    let a: HecAnswer = serde_json::from_str(answer).ok()?;
    let n = a.invalid_event_number?;
    if n >= records {
        return None;
    }
    let mut items = vec![Item::Retry; records];
    items[n] = Item::Rejected { status: 400, error: answer.to_string() };
    let reason = format!("HEC refused event {n} of {records} (code {}: {})", a.code.unwrap_or(-1), crate::logsafe::clip(&a.text, 200));
    Some(Outcome::Partial { items, reason })
}

/// A short description of a transport error (without the URL).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else {
        "transport error"
    };
    let mut msg = format!("{kind}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// `Retry-After` as a delay: delta seconds, or an HTTP date (IMF-fixdate,
/// `Sun, 06 Nov 1994 08:49:37 GMT`) relative to `now_ms`. A date in the
/// past means "now".
pub fn parse_retry_after(v: &str, now_ms: i64) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(v)?;
    Some(Duration::from_millis((at - now_ms).max(0) as u64))
}

/// Parses an IMF-fixdate to epoch ms.
fn parse_http_date(v: &str) -> Option<i64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let (_, rest) = v.split_once(", ")?;
    let mut it = rest.split(' ');
    let day: u32 = it.next()?.parse().ok()?;
    let mon = it.next()?;
    let year: i64 = it.next()?.parse().ok()?;
    let clock = it.next()?;
    if it.next()? != "GMT" {
        return None;
    }
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == mon)? as u32 + 1;
    let mut c = clock.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (c.next()??, c.next()??, c.next()??);
    if day == 0 || day > 31 || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = crate::time::days_from_civil(year, month, day);
    Some(((days * 24 + h) * 60 + m) * 60_000 + s * 1000)
}

/// Standard base64 (for basic auth).
fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The delay before retry number `attempt` (0-based): the server's
/// `Retry-After` when it gave one, but never more than `max_ms` (a collector
/// asking for an hour must not park records for an hour when it may answer
/// again at once), else [`backoff`]. True when a `Retry-After` was cut down.
pub fn retry_delay(after: Option<Duration>, attempt: u32, initial: Duration, max: Duration) -> (Duration, bool) {
    let max = max.max(Duration::from_millis(1));
    match after {
        Some(a) if a > max => (max, true),
        Some(a) => (a, false),
        None => (backoff(attempt, initial, max), false),
    }
}

/// The delay before retry number `attempt` (0-based): exponential from
/// `initial_ms`, capped at `max_ms`, with "equal jitter" (half fixed, half
/// random) so that many bridges do not retry in lockstep.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let exp = ms(initial).saturating_mul(1u64 << attempt.min(32)).min(ms(max)).max(1);
    let half = exp / 2;
    Duration::from_millis(half + rand::random_range(0..=exp - half))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("3", 0), Some(Duration::from_secs(3)));
        let now = 784_111_777_000 - 5_000; // 5 s before Sun, 06 Nov 1994 08:49:37
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now + 60_000), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", 0), None);
        assert_eq!(parse_retry_after("Sun, 06 Foo 1994 08:49:37 GMT", 0), None);
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("user:pass", "dXNlcjpwYXNz")] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn retry_after_is_capped_by_retry_max() {
        assert_eq!(
            retry_delay(Some(Duration::from_secs(3600)), 0, Duration::from_millis(100), Duration::from_millis(5_000)),
            (Duration::from_secs(5), true)
        );
        assert_eq!(
            retry_delay(Some(Duration::from_secs(2)), 0, Duration::from_millis(100), Duration::from_millis(5_000)),
            (Duration::from_secs(2), false)
        );
        let (d, capped) = retry_delay(None, 0, Duration::from_millis(100), Duration::from_millis(5_000));
        assert!(!capped && d <= Duration::from_millis(100));
    }

    fn check_bulk(answer: &str, records: usize, expected: &Outcome) {
        let got = bulk_outcome(answer.as_bytes(), records);
        match (&got, expected) {
            (Outcome::Partial { items: a, .. }, Outcome::Partial { items: b, .. }) => assert_eq!(a, b, "{answer}"),
            (Outcome::Retry { .. }, Outcome::Retry { .. }) => {}
            _ => assert_eq!(&got, expected, "{answer}"),
        }
    }

    #[test]
    fn bulk_answers_are_judged_item_by_item() {
        let retry = Outcome::Retry { reason: String::new(), after: None };
        check_bulk(r#"{"took":3,"errors":false,"items":[{"index":{"status":201}}]}"#, 1, &Outcome::Delivered);
        check_bulk(r#"{"took":3,"errors":false}"#, 5, &Outcome::Delivered);
        let partial = |items: Vec<Item>| Outcome::Partial { items, reason: String::new() };
        let rej = |status, error: &str| Item::Rejected { status, error: error.to_string() };
        check_bulk(
            r#"{"errors":true,"items":[{"index":{"_id":"a","status":201}},{"index":{"_id":"b","status":429,"error":{"type":"es_rejected_execution_exception"}}},
               {"index":{"_id":"c","status":400,"error":{"type":"mapper_parsing_exception"}}},{"create":{"status":503}},{"index":{"status":409,"error":"conflict"}}]}"#,
            5,
            &partial(vec![
                Item::Done,
                Item::Retry,
                rej(400, r#"{"type":"mapper_parsing_exception"}"#),
                Item::Retry,
                rej(409, r#""conflict""#),
            ]),
        );
        check_bulk(r#"{"errors":true,"items":[{"index":{"status":200}},{"index":{"status":201}}]}"#, 2, &Outcome::Delivered);
        // Unknowable which were indexed: everything is sent again (the _id
        // makes it harmless).
        check_bulk(r#"{"errors":true,"items":[{"index":{"status":429}}]}"#, 2, &retry);
        check_bulk(r#"{"errors":true}"#, 2, &retry);
        check_bulk("<html>proxy error</html>", 2, &retry);
        check_bulk(r#"{"errors":true,"items":[{}]}"#, 1, &retry);
    }

    #[test]
    fn hec_codes_and_invalid_events() {
        assert_eq!(hec_ok_outcome(br#"{"text":"Success","code":0}"#), Outcome::Delivered);
        assert_eq!(hec_ok_outcome(b""), Outcome::Delivered);
        assert!(matches!(hec_ok_outcome(br#"{"text":"Server is busy","code":9}"#), Outcome::Retry { .. }));
        assert!(matches!(hec_ok_outcome(br#"{"text":"HEC is healthy","code":17}"#), Outcome::Retry { .. }));
        let answer = r#"{"text":"Invalid data format","code":6,"invalid-event-number":2}"#;
        let Some(Outcome::Partial { items, .. }) = hec_invalid_event(answer, 4) else { panic!("partial") };
        assert_eq!(items, vec![Item::Retry, Item::Retry, Item::Rejected { status: 400, error: answer.to_string() }, Item::Retry]);
        assert_eq!(hec_invalid_event(answer, 2), None, "out of range: the whole request is poison");
        assert_eq!(hec_invalid_event(r#"{"text":"No data","code":5}"#, 2), None);
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        for a in 0..40 {
            let d = backoff(a, Duration::from_millis(100), Duration::from_millis(10_000)).as_millis() as u64;
            let exp = (100u64 << a.min(32)).min(10_000);
            assert!(d >= exp / 2 && d <= exp, "attempt {a}: {d}");
        }
    }
}
