//! The upstream transport: a request's units as one body in the
//! upstream's `format` (encoded, maybe gzipped, by [`super::encode`]),
//! POSTed to `url`, and the collector's answer in the engine's
//! [`Outcome`] vocabulary.
//!
//! Invariant: only this module decides what an answer means: which
//! statuses are retried (connection errors, timeouts, 408, 429, 5xx),
//! split (413) or dead-lettered (every other 4xx; 401/403 only with
//! `auth_failures = "dead_letter"`), and, for collectors that judge records
//! one by one (an Elasticsearch `_bulk` answer with `"errors": true`, a
//! Splunk HEC answer with a non-zero `code` or an `invalid-event-number`),
//! which records were taken, which are retried and which are refused for
//! good. Every answer is read within bounds ([`crate::delivery::http`]): a
//! `_bulk` answer up to a few KB per record, others a few KB.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::config::UpstreamFormat;
use super::encode::Encoder;
use crate::delivery::http::{self as wire, AuthFailures, Body, Client, RESPONSE_BODY_TIMEOUT, RESPONSE_SNIPPET_BYTES};
use crate::delivery::{Item, Outcome, Transport, Units};

/// How much of a 2xx answer that says nothing per record (NDJSON, ECLS) is
/// read so the connection can be reused; a longer one is dropped.
pub const DRAIN_BYTES: usize = 64 * 1024;

/// A `_bulk` answer is read up to this much per record (a typical item is
/// about 200 bytes; an error item with its reason about 1 KB) ...
pub const BULK_ANSWER_BYTES_PER_RECORD: usize = 2048;

/// ... plus this much.
pub const BULK_ANSWER_BASE_BYTES: usize = 64 * 1024;

/// The upstream collector as the engine's transport.
pub struct Upstream {
    /// The client and URL.
    pub client: Client,
    /// Encodes bodies (format and compression in force).
    pub encoder: Encoder,
    /// 401/403 answers.
    pub auth_failures: AuthFailures,
}

impl Transport for Upstream {
    type Body = Body;

    async fn body(&self, units: &Arc<Units>) -> Option<Body> {
        let (units, enc) = (units.clone(), self.encoder.clone());
        let (content_type, content_encoding, records) = (enc.content_type(), enc.compression.content_encoding(), units.len());
        match tokio::task::spawn_blocking(move || enc.body(&units)).await {
            Ok(b) => Some(Body { bytes: bytes::Bytes::from(b), content_type, content_encoding, records }),
            Err(e) => {
                tracing::error!(error = %e, "encoding a request failed");
                None
            }
        }
    }

    async fn attempt(&self, body: &Body, _units: &Units) -> Outcome {
        attempt(&self.client, body, self.encoder.format.kind(), self.auth_failures).await
    }

    fn destination(&self) -> &str {
        self.client.log_url()
    }
}

/// Sends one body of `format` and classifies the answer.
pub async fn attempt(client: &Client, body: &Body, format: UpstreamFormat, auth_failures: AuthFailures) -> Outcome {
    let mut resp = match client.post(body).await {
        Ok(r) => r,
        Err(retry) => return retry,
    };
    let status = resp.status();
    if status.is_success() {
        return match format {
            UpstreamFormat::Elasticsearch => {
                let max = BULK_ANSWER_BASE_BYTES.saturating_add(body.records.saturating_mul(BULK_ANSWER_BYTES_PER_RECORD));
                match wire::read_body(&mut resp, max).await {
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
            UpstreamFormat::SplunkHec => hec_ok_outcome(&wire::read_body(&mut resp, RESPONSE_SNIPPET_BYTES).await.0),
            // The status says the batch is delivered; the (usually empty)
            // answer is drained so the connection is reused, within bounds.
            UpstreamFormat::Ndjson | UpstreamFormat::Ecls => {
                let _ = wire::read_body(&mut resp, DRAIN_BYTES).await;
                Outcome::Delivered
            }
        };
    }
    let code = status.as_u16();
    let after = wire::retry_after(&resp);
    let text = wire::error_text(&mut resp).await;
    match code {
        400 if format == UpstreamFormat::SplunkHec => {
            hec_invalid_event(&text, body.records).unwrap_or(Outcome::Poison { status: code, body: text })
        }
        // 408, 429, 5xx, and 1xx/3xx which a POST to a collector should
        // never get, are retried; other 4xx are poison.
        _ => wire::status_outcome(code, after, text, auth_failures, code == 408 || code == 429 || !(400..=499).contains(&code)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
