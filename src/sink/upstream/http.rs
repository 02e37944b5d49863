//! The HTTP side: building the client (auth, extra headers, TLS) and
//! classifying one attempt's outcome into what the sender does next.
//!
//! Invariant: only this module decides which responses are retried
//! (connection errors, timeouts, 408, 429, 5xx), split (413) or
//! dead-lettered (every other 4xx). Secrets go into headers marked
//! sensitive and are never logged.

use std::time::Duration;

use anyhow::Context;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};

use crate::config::{AuthFailures, UpstreamAuth, UpstreamConfig};

/// How much of an error response body is kept for logs and the dead-letter
/// file.
pub const RESPONSE_SNIPPET_BYTES: usize = 1024;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: delivered.
    Delivered,
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
    let auth = cfg.auth()?;
    let auth_value = match &auth {
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
        .timeout(Duration::from_millis(cfg.request_timeout_ms))
        .connect_timeout(Duration::from_millis(cfg.request_timeout_ms.min(10_000)))
        .pool_max_idle_per_host(cfg.max_in_flight)
        // A redirect would turn the POST into a GET; report it instead.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("calllog-bridge/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("upstream.ca_file: cannot read {}", ca.display()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("upstream.ca_file: {} is not PEM", ca.display()))?;
        if certs.is_empty() {
            anyhow::bail!("upstream.ca_file: {} holds no certificate", ca.display());
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if let (Some(cert), Some(key)) = (&cfg.client_cert, &cfg.client_key) {
        let mut pem = std::fs::read(cert).with_context(|| format!("upstream.client_cert: cannot read {}", cert.display()))?;
        pem.push(b'\n');
        pem.extend(std::fs::read(key).with_context(|| format!("upstream.client_key: cannot read {}", key.display()))?);
        let id = reqwest::Identity::from_pem(&pem).context("upstream.client_cert / client_key: not a PEM certificate and key")?;
        b = b.identity(id);
    }
    b.build().context("upstream: cannot build the HTTP client")
}

/// Sends one body and classifies the answer.
pub async fn attempt(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: bytes::Bytes,
    auth_failures: AuthFailures,
) -> Outcome {
    let mut req = client.post(url).header(CONTENT_TYPE, content_type).body(body);
    if let Some(e) = encoding {
        req = req.header(CONTENT_ENCODING, e);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        // The URL is left out: it is logged redacted by the caller.
        Err(e) => return Outcome::Retry { reason: describe(&e.without_url()), after: None },
    };
    let status = resp.status();
    if status.is_success() {
        // Drain the (usually small) answer so the connection is reused; the
        // status already says the batch is delivered.
        let _ = resp.bytes().await;
        return Outcome::Delivered;
    }
    let code = status.as_u16();
    let after = resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, crate::time::now_ms()));
    let body = snippet(resp).await;
    match code {
        413 => Outcome::TooLarge,
        408 | 429 => Outcome::Retry { reason: format!("HTTP {code}"), after },
        401 | 403 if auth_failures == AuthFailures::Retry => Outcome::Retry {
            reason: format!("HTTP {code}: the collector refuses the credentials (fix them, then `systemctl reload`)"),
            after,
        },
        400..=499 => Outcome::Poison { status: code, body },
        // 5xx, and 1xx/3xx which a POST to a collector should never get.
        _ => Outcome::Retry { reason: format!("HTTP {code}: {}", body.chars().take(200).collect::<String>()), after },
    }
}

/// The first [`RESPONSE_SNIPPET_BYTES`] of a response body, lossily as text.
async fn snippet(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < RESPONSE_SNIPPET_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    buf.truncate(RESPONSE_SNIPPET_BYTES);
    String::from_utf8_lossy(&buf).into_owned()
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

/// The URL without user info and query (they may hold credentials), for
/// logs.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = path.split(['?', '#']).next().unwrap_or("");
    format!("{scheme}://{host}{path}")
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

/// The delay before retry number `attempt` (0-based): exponential from
/// `initial_ms`, capped at `max_ms`, with "equal jitter" (half fixed, half
/// random) so that many bridges do not retry in lockstep.
pub fn backoff(attempt: u32, initial_ms: u64, max_ms: u64) -> Duration {
    let exp = initial_ms.saturating_mul(1u64 << attempt.min(32)).min(max_ms).max(1);
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
    fn urls_in_logs_lose_credentials() {
        assert_eq!(redact_url("https://u:p@h.example:9200/_bulk?token=x"), "https://h.example:9200/_bulk");
        assert_eq!(redact_url("http://127.0.0.1:1/"), "http://127.0.0.1:1/");
        assert_eq!(redact_url("http://h?x=1"), "http://h");
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("user:pass", "dXNlcjpwYXNz")] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        for a in 0..40 {
            let d = backoff(a, 100, 10_000).as_millis() as u64;
            let exp = (100u64 << a.min(32)).min(10_000);
            assert!(d >= exp / 2 && d <= exp, "attempt {a}: {d}");
        }
    }
}
