//! What every HTTP transport on the engine shares (upstream, OpenTelemetry):
//! the endpoint keys (`url`, `headers`, the credentials, TLS files,
//! compression, `request_timeout_ms`), declared once for every HTTP sink's
//! section by `http_section!` with the delivery keys, and their checks,
//! the client built from them, sending a body, reading an answer within
//! bounds, and `Retry-After`. What an answer *means* is the transport's
//! (upstream's `_bulk` items and HEC codes, OTLP's `partial_success`).
//!
//! Secrets go into headers marked sensitive and are never logged. Every
//! peer is bounded: an answer's body is read up to a byte limit and within
//! [`RESPONSE_BODY_TIMEOUT`], so a peer that answers with an endless or
//! dripping body costs neither memory nor a stalled sender.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use serde::Deserialize;

use super::outcome::Outcome;
use crate::settings::{millis, pem_certificates, pem_private_key, resolve, ConfigError, Pem, Secret};

/// How much of an error answer is kept for logs and the dead-letter file.
pub const RESPONSE_SNIPPET_BYTES: usize = 1024;

/// The body of an answer must arrive within this long after its headers
/// (and within `request_timeout_ms` of the request's start): a peer that
/// drips its answer does not hold a sender for the whole request timeout.
pub const RESPONSE_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Body compression, as the `compression` key names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionName {
    /// `Content-Encoding: gzip`.
    #[default]
    Gzip,
    /// Uncompressed.
    None,
}

/// The default `gzip_level`: 1 (Filebeat's default too): about half the
/// CPU of level 6 for about twice the bytes; catch-up after an outage is
/// CPU-bound (benches/upstream.rs).
pub fn default_gzip_level() -> u32 {
    1
}

/// Body compression with its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Uncompressed.
    None,
    /// `Content-Encoding: gzip` at this level (0-9, `gzip_level`).
    Gzip {
        /// gzip level.
        level: u32,
    },
}

impl Compression {
    /// `Content-Encoding` of a body, if any.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::Gzip { .. } => Some("gzip"),
            Compression::None => None,
        }
    }

    /// A body of about `raw_len` bytes written by `write`, compressed.
    /// CPU-bound: call it off the async runtime for large bodies.
    pub fn body(self, raw_len: usize, write: impl FnOnce(&mut dyn Write)) -> Vec<u8> {
        match self {
            Compression::None => {
                let mut out = Vec::with_capacity(raw_len);
                write(&mut out);
                out
            }
            Compression::Gzip { level } => {
                // Call logs compress about 8:1; start with room for that.
                let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(raw_len / 6 + 64), flate2::Compression::new(level));
                write(&mut gz);
                // Writing into a Vec cannot fail.
                gz.finish().unwrap_or_default()
            }
        }
    }
}

/// What a 401 or 403 answer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthFailures {
    /// Retried with backoff like an outage (spooled after `spool_after_ms`):
    /// refused credentials are a configuration problem, not a bad batch, so
    /// nothing is set aside while the token is fixed (then `systemctl
    /// reload`).
    #[default]
    Retry,
    /// Dead-lettered like any other 4xx.
    DeadLetter,
}

/// Credentials: one of the three ways, never two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    None,
    /// `Authorization: Bearer ...` (`bearer_token` or `bearer_token_file`).
    Bearer(Secret),
    /// `Authorization: Basic ...` (`basic_user` with `basic_password` or
    /// `basic_password_file`).
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: Secret,
    },
}

/// The endpoint keys as a section wrote them, handed over by an
/// `http_section!` section's `endpoint_keys()`.
#[derive(Debug, Clone)]
pub struct EndpointKeys {
    /// `url`.
    pub url: String,
    /// `compression`.
    pub compression: CompressionName,
    /// `gzip_level`.
    pub gzip_level: u32,
    /// `headers`.
    pub headers: BTreeMap<String, String>,
    /// `bearer_token`.
    pub bearer_token: Option<Secret>,
    /// `bearer_token_file`.
    pub bearer_token_file: Option<PathBuf>,
    /// `basic_user`.
    pub basic_user: Option<String>,
    /// `basic_password`.
    pub basic_password: Option<Secret>,
    /// `basic_password_file`.
    pub basic_password_file: Option<PathBuf>,
    /// `ca_file`.
    pub ca_file: Option<PathBuf>,
    /// `client_cert`.
    pub client_cert: Option<PathBuf>,
    /// `client_key`.
    pub client_key: Option<PathBuf>,
    /// `request_timeout_ms`.
    pub request_timeout_ms: u64,
    /// `auth_failures`.
    pub auth_failures: AuthFailures,
}

/// Declares an HTTP sink's section as written (`[upstream]`, `[otlp]`):
/// the keys given, then the endpoint keys (`url`, `compression`,
/// `gzip_level`, `headers`, the credentials, the TLS files,
/// `auth_failures`, `request_timeout_ms`) and the delivery keys (batching,
/// retries, spool, dead letters, shutdown), listed here once with their
/// defaults. Serde reads the section whole with unknown keys refused, so a
/// mistyped key keeps its line and its nearest known key (a flattened
/// sub-struct would lose both). `endpoint_keys()` hands the endpoint keys
/// to [`Endpoint::from_keys`], `knobs()` the delivery keys to
/// [`Settings::from_knobs`](crate::delivery::Settings::from_knobs): one
/// check of each for every HTTP sink.
macro_rules! http_section {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Where bodies are POSTed (for OpenTelemetry, the collector's
            /// logs endpoint, `http://collector:4318/v1/logs`).
            pub url: String,
            $($body)*
            /// Body compression.
            #[serde(default)]
            pub compression: $crate::delivery::http::CompressionName,
            /// gzip level 0-9 (default 1: fast; 6 halves the bytes for
            /// about twice the CPU).
            #[serde(default = "crate::delivery::http::default_gzip_level")]
            pub gzip_level: u32,
            /// Extra request headers (a collector's API key header, a
            /// tenant).
            #[serde(default)]
            pub headers: std::collections::BTreeMap<String, String>,
            /// Bearer token (prefer `bearer_token_file`); redacted in
            /// `Debug` (what `check-config` prints).
            #[serde(default, deserialize_with = "crate::settings::inline_secret")]
            pub bearer_token: Option<$crate::settings::Secret>,
            /// File holding the bearer token.
            #[serde(default)]
            pub bearer_token_file: Option<std::path::PathBuf>,
            /// Basic-auth user.
            #[serde(default)]
            pub basic_user: Option<String>,
            /// Basic-auth password (prefer `basic_password_file`);
            /// redacted in `Debug`.
            #[serde(default, deserialize_with = "crate::settings::inline_secret")]
            pub basic_password: Option<$crate::settings::Secret>,
            /// File holding the basic-auth password.
            #[serde(default)]
            pub basic_password_file: Option<std::path::PathBuf>,
            /// Extra CA certificate (PEM) to trust.
            #[serde(default)]
            pub ca_file: Option<std::path::PathBuf>,
            /// Client certificate (PEM) for mutual TLS.
            #[serde(default)]
            pub client_cert: Option<std::path::PathBuf>,
            /// Client key (PEM) for mutual TLS.
            #[serde(default)]
            pub client_key: Option<std::path::PathBuf>,
            /// 401/403 answers: `retry` (default) or `dead_letter`.
            #[serde(default)]
            pub auth_failures: $crate::delivery::http::AuthFailures,
            /// Per-request timeout.
            #[serde(default = "crate::delivery::settings::default::request_timeout_ms")]
            pub request_timeout_ms: u64,
            /// A request is sent at this many records ...
            #[serde(default = "crate::delivery::settings::default::batch_max_records")]
            pub batch_max_records: usize,
            /// ... or at this many (uncompressed) body bytes ...
            #[serde(default = "crate::delivery::settings::default::batch_max_bytes")]
            pub batch_max_bytes: usize,
            /// ... or this long after its first record.
            #[serde(default = "crate::delivery::settings::default::flush_interval_ms")]
            pub flush_interval_ms: u64,
            /// Requests in flight at once.
            #[serde(default = "crate::delivery::settings::default::max_in_flight")]
            pub max_in_flight: usize,
            /// First retry delay; doubles up to `retry_max_ms`, with jitter.
            #[serde(default = "crate::delivery::settings::default::retry_initial_ms")]
            pub retry_initial_ms: u64,
            /// Longest retry delay (and longest `Retry-After` honoured).
            #[serde(default = "crate::delivery::settings::default::retry_max_ms")]
            pub retry_max_ms: u64,
            /// Disk spool bound during long outages (under `state_dir`); 0
            /// turns the spool off (an outage then only pauses reading).
            #[serde(default = "crate::delivery::settings::default::spool_max_bytes")]
            pub spool_max_bytes: u64,
            /// How long the peer must have been failing before requests go
            /// to the spool (and are acknowledged) instead of waiting in
            /// memory while reading pauses.
            #[serde(default = "crate::delivery::settings::default::spool_after_ms")]
            pub spool_after_ms: u64,
            /// Poison batches (4xx other than 408/413/429, and 401/403 with
            /// `auth_failures = "dead_letter"`) are written here; default
            /// the sink's file under `state_dir`
            /// (`<state_dir>/dead-letter.ndjson` for `[upstream]`,
            /// `<state_dir>/otlp-dead-letter.ndjson` for `[otlp]`).
            #[serde(default)]
            pub dead_letter_file: Option<std::path::PathBuf>,
            /// Rotate the dead-letter file before it would pass this size
            /// (a peer that refuses every batch must not fill the disk).
            #[serde(default = "crate::delivery::settings::default::dead_letter_rotate_bytes")]
            pub dead_letter_rotate_bytes: u64,
            /// Rotated dead-letter files kept (`.1` ...); older ones are
            /// deleted (logged as an error with their size).
            #[serde(default = "crate::delivery::settings::default::dead_letter_keep_files")]
            pub dead_letter_keep_files: usize,
            /// SIGTERM grace period to flush what is batched.
            #[serde(default = "crate::delivery::settings::default::shutdown_grace_ms")]
            pub shutdown_grace_ms: u64,
        }

        impl $name {
            /// The endpoint keys of this section.
            pub fn endpoint_keys(&self) -> $crate::delivery::http::EndpointKeys {
                $crate::delivery::http::EndpointKeys {
                    url: self.url.clone(),
                    compression: self.compression,
                    gzip_level: self.gzip_level,
                    headers: self.headers.clone(),
                    bearer_token: self.bearer_token.clone(),
                    bearer_token_file: self.bearer_token_file.clone(),
                    basic_user: self.basic_user.clone(),
                    basic_password: self.basic_password.clone(),
                    basic_password_file: self.basic_password_file.clone(),
                    ca_file: self.ca_file.clone(),
                    client_cert: self.client_cert.clone(),
                    client_key: self.client_key.clone(),
                    request_timeout_ms: self.request_timeout_ms,
                    auth_failures: self.auth_failures,
                }
            }

            /// The delivery keys of this section.
            pub fn knobs(&self) -> $crate::delivery::settings::Knobs {
                $crate::knobs!(self, flush_interval_ms)
            }
        }
    };
}
pub(crate) use http_section;

/// Where and how an HTTP transport sends: the typed endpoint keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where bodies are POSTed.
    pub url: String,
    /// Body compression.
    pub compression: Compression,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Credentials (files read when the config was read).
    pub auth: Auth,
    /// Extra CA certificates to trust (`ca_file`).
    pub ca: Option<Pem>,
    /// Client certificate and key for mutual TLS (`client_cert`,
    /// `client_key`).
    pub client_identity: Option<(Pem, Pem)>,
    /// Per-request timeout (`request_timeout_ms`).
    pub request_timeout: Duration,
    /// 401/403 answers: retried or dead-lettered.
    pub auth_failures: AuthFailures,
}

impl Endpoint {
    /// The endpoint of section `section` (`upstream`): relative paths
    /// resolved against `base`, credential and TLS files read and checked
    /// (so `check-config` and `run` refuse a missing or non-PEM file with
    /// exit 64); errors name the key (`upstream.url`).
    pub fn from_keys(mut k: EndpointKeys, section: &str, base: &Path) -> Result<Endpoint, ConfigError> {
        let key = |name: &str| format!("{section}.{name}");
        for p in [&mut k.bearer_token_file, &mut k.basic_password_file, &mut k.ca_file, &mut k.client_cert, &mut k.client_key]
            .into_iter()
            .flatten()
        {
            resolve(base, p);
        }
        if !(k.url.starts_with("http://") || k.url.starts_with("https://")) {
            return Err(ConfigError::invalid(key("url"), format!("`{}` is not an http:// or https:// URL", k.url)));
        }
        let auth = auth(&k, section)?;
        if k.gzip_level > 9 {
            return Err(ConfigError::invalid(key("gzip_level"), "must be 0-9"));
        }
        if k.request_timeout_ms < 1 {
            return Err(ConfigError::invalid(key("request_timeout_ms"), "must be at least 1"));
        }
        if k.client_cert.is_some() != k.client_key.is_some() {
            return Err(ConfigError::invalid(key("client_cert"), "`client_cert` and `client_key` go together"));
        }
        let ca = match k.ca_file {
            Some(p) => Some(pem_certificates(p, &key("ca_file"))?),
            None => None,
        };
        let client_identity = match (k.client_cert, k.client_key) {
            (Some(cert), Some(pk)) => Some((pem_certificates(cert, &key("client_cert"))?, pem_private_key(pk, &key("client_key"))?)),
            _ => None,
        };
        let compression = match k.compression {
            CompressionName::Gzip => Compression::Gzip { level: k.gzip_level },
            CompressionName::None => Compression::None,
        };
        Ok(Endpoint {
            url: k.url,
            compression,
            headers: k.headers,
            auth,
            ca,
            client_identity,
            request_timeout: millis(k.request_timeout_ms),
            auth_failures: k.auth_failures,
        })
    }

    /// `check-config`'s words for it: the URL without credentials, then
    /// `(<format>, gzip, bearer token, headers X-A, X-B (values not
    /// shown))`.
    pub fn summary(&self, format: &str) -> String {
        let auth = match self.auth {
            Auth::Bearer(_) => "bearer token",
            Auth::Basic { .. } => "basic auth",
            Auth::None => "no credentials",
        };
        let compression = match self.compression {
            Compression::Gzip { .. } => "gzip",
            Compression::None => "uncompressed",
        };
        let headers = if self.headers.is_empty() {
            String::new()
        } else {
            format!(", headers {} (values not shown)", self.headers.keys().cloned().collect::<Vec<_>>().join(", "))
        };
        format!("{} ({format}, {compression}, {auth}{headers})", crate::url::redact_url(&self.url))
    }
}

/// The credentials from the inline or file keys: a bearer token, or a
/// user with a password, or none.
fn auth(k: &EndpointKeys, section: &str) -> Result<Auth, ConfigError> {
    let key = |name: &str| format!("{section}.{name}");
    let bearer = Secret::resolve(
        k.bearer_token.as_ref().map(Secret::expose),
        k.bearer_token_file.as_deref(),
        &key("bearer_token"),
        &key("bearer_token_file"),
    )?;
    let password = Secret::resolve(
        k.basic_password.as_ref().map(Secret::expose),
        k.basic_password_file.as_deref(),
        &key("basic_password"),
        &key("basic_password_file"),
    )?;
    if bearer.is_some() && k.basic_user.is_some() {
        return Err(ConfigError::invalid(key("bearer_token"), "give a bearer token or basic auth, not both"));
    }
    let basic = match (&k.basic_user, password) {
        (Some(user), Some(password)) => Some(Auth::Basic { user: user.clone(), password }),
        (Some(_), None) => {
            return Err(ConfigError::invalid(key("basic_password"), "`basic_user` needs `basic_password` or `basic_password_file`"))
        }
        (None, Some(_)) => return Err(ConfigError::invalid(key("basic_password"), "set without `basic_user`")),
        (None, None) => None,
    };
    Ok(match (bearer, basic) {
        (Some(t), _) => Auth::Bearer(t),
        (None, Some(b)) => b,
        (None, None) => Auth::None,
    })
}

/// One request body.
#[derive(Debug, Clone)]
pub struct Body {
    /// The encoded (maybe compressed) body.
    pub bytes: bytes::Bytes,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// `Content-Encoding`, if any.
    pub content_encoding: Option<&'static str>,
    /// Records in the body.
    pub records: usize,
}

/// An endpoint's HTTP client (auth, TLS, headers) and URL.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client.
    client: reqwest::Client,
    /// Where bodies go.
    url: String,
    /// The URL as logs show it (no user info, no query: they may hold
    /// credentials).
    log_url: String,
}

impl Client {
    /// Builds the client of `e` for `max_in_flight` requests at once:
    /// timeouts, TLS (extra CA, client certificate), credentials and extra
    /// headers as default headers. Errors name the key of `section`.
    pub fn build(e: &Endpoint, max_in_flight: usize, section: &str) -> anyhow::Result<Client> {
        let mut headers = HeaderMap::new();
        for (k, v) in &e.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).with_context(|| format!("{section}.headers: `{k}` is not a header name"))?;
            let value = HeaderValue::from_str(v).with_context(|| format!("{section}.headers.{k}: not a valid header value"))?;
            headers.insert(name, value);
        }
        let auth_value = match &e.auth {
            Auth::None => None,
            Auth::Bearer(t) => Some(format!("Bearer {}", t.expose())),
            Auth::Basic { user, password } => Some(format!("Basic {}", base64(format!("{user}:{}", password.expose()).as_bytes()))),
        };
        if let Some(v) = auth_value {
            // The message names the key only: the value is a secret.
            let mut v = HeaderValue::from_str(&v)
                .map_err(|_| anyhow::anyhow!("{section} credentials contain characters not allowed in a header"))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .default_headers(headers)
            .timeout(e.request_timeout)
            .connect_timeout(e.request_timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(max_in_flight)
            // A redirect would turn the POST into a GET; report it instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("calllog-bridge/", env!("CARGO_PKG_VERSION")));
        // The PEM files were read with the config (a reload re-reads them).
        if let Some(ca) = &e.ca {
            let certs = reqwest::Certificate::from_pem_bundle(&ca.bytes)
                .with_context(|| format!("{section}.ca_file: {} is not PEM", ca.path.display()))?;
            if certs.is_empty() {
                anyhow::bail!("{section}.ca_file: {} holds no certificate", ca.path.display());
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some((cert, key)) = &e.client_identity {
            let mut pem = cert.bytes.clone();
            pem.push(b'\n');
            pem.extend_from_slice(&key.bytes);
            let id = reqwest::Identity::from_pem(&pem)
                .with_context(|| format!("{section}.client_cert / client_key: not a PEM certificate and key"))?;
            b = b.identity(id);
        }
        let client = b.build().with_context(|| format!("{section}: cannot build the HTTP client"))?;
        Ok(Client { client, url: e.url.clone(), log_url: crate::url::redact_url(&e.url) })
    }

    /// The URL as logs show it (no credentials).
    pub fn log_url(&self) -> &str {
        &self.log_url
    }

    /// POSTs `body`; a transport error (connection, TLS, timeout) is a
    /// retry, described without the URL (the caller logs it redacted).
    pub async fn post(&self, body: &Body) -> Result<reqwest::Response, Outcome> {
        let mut req = self.client.post(&self.url).header(CONTENT_TYPE, body.content_type).body(body.bytes.clone());
        if let Some(e) = body.content_encoding {
            req = req.header(CONTENT_ENCODING, e);
        }
        req.send().await.map_err(|e| Outcome::Retry { reason: describe(&e.without_url()), after: None })
    }
}

/// What the statuses every HTTP peer shares mean, when the transport has
/// nothing more specific to say: 413 splits, 401/403 follow
/// `auth_failures`, `retryable` statuses are retried (honouring
/// `Retry-After`), any other status is poison. `text` is the start of the
/// answer.
pub fn status_outcome(code: u16, after: Option<Duration>, text: String, auth_failures: AuthFailures, retryable: bool) -> Outcome {
    match code {
        413 => Outcome::TooLarge,
        401 | 403 if auth_failures == AuthFailures::Retry => Outcome::Retry {
            reason: format!("HTTP {code}: the collector refuses the credentials (fix them, then `systemctl reload`)"),
            after,
        },
        _ if retryable => Outcome::Retry { reason: format!("HTTP {code}: {}", crate::logsafe::clip(&text, 200)), after },
        _ => Outcome::Poison { status: code, body: text },
    }
}

/// The answer's `Retry-After`, if it has a readable one.
pub fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, crate::time::now_ms()))
}

/// The start of an error answer, as text.
pub async fn error_text(resp: &mut reqwest::Response) -> String {
    String::from_utf8_lossy(&read_body(resp, RESPONSE_SNIPPET_BYTES).await.0).into_owned()
}

/// Reads at most `max` bytes of an answer's body, within
/// [`RESPONSE_BODY_TIMEOUT`]. True when the body was read whole.
pub async fn read_body(resp: &mut reqwest::Response, max: usize) -> (Vec<u8>, bool) {
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
    fn shared_statuses() {
        let text = || "nope".to_string();
        assert_eq!(status_outcome(413, None, text(), AuthFailures::Retry, false), Outcome::TooLarge);
        assert!(matches!(status_outcome(401, None, text(), AuthFailures::Retry, false), Outcome::Retry { .. }));
        assert_eq!(status_outcome(403, None, text(), AuthFailures::DeadLetter, false), Outcome::Poison { status: 403, body: text() });
        let after = Some(Duration::from_secs(2));
        assert_eq!(
            status_outcome(503, after, text(), AuthFailures::Retry, true),
            Outcome::Retry { reason: "HTTP 503: nope".into(), after }
        );
        assert_eq!(status_outcome(400, None, text(), AuthFailures::Retry, false), Outcome::Poison { status: 400, body: text() });
    }
}
