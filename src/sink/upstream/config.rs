//! `[upstream]`: the section as written and the upstream sink's typed
//! settings (one enum for the credentials, the body format with its own
//! keys, compression with its level).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::rotating::Rotation;
use crate::settings::{check_rotate_bytes, millis, pem_certificates, pem_private_key, resolve, ConfigError, Pem, Secret};

/// Body format of upstream requests, as the `format` key names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamFormat {
    /// One JSON record per line.
    #[default]
    Ndjson,
    /// `{"data":[...]}` bodies, every value a string.
    Ecls,
    /// The `_bulk` API; `_id` = `request_uuid`.
    Elasticsearch,
    /// Splunk HTTP Event Collector event objects.
    SplunkHec,
}

impl UpstreamFormat {
    /// The name in the config file, spool paths and the dead-letter file.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamFormat::Ndjson => "ndjson",
            UpstreamFormat::Ecls => "ecls",
            UpstreamFormat::Elasticsearch => "elasticsearch",
            UpstreamFormat::SplunkHec => "splunk_hec",
        }
    }
}

/// The body format with the keys that belong to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// One JSON record per line.
    Ndjson,
    /// `{"data":[...]}` bodies.
    Ecls,
    /// `_bulk` actions.
    Elasticsearch {
        /// `_index` of each action (`elasticsearch_index`); `None` leaves
        /// it to the URL (`POST /<index>/_bulk`).
        index: Option<String>,
    },
    /// HEC event objects.
    SplunkHec {
        /// `sourcetype` of each event (`splunk_sourcetype`); `None`
        /// leaves it out.
        sourcetype: Option<String>,
    },
}

impl Format {
    /// Which format, without its keys.
    pub fn kind(&self) -> UpstreamFormat {
        match self {
            Format::Ndjson => UpstreamFormat::Ndjson,
            Format::Ecls => UpstreamFormat::Ecls,
            Format::Elasticsearch { .. } => UpstreamFormat::Elasticsearch,
            Format::SplunkHec { .. } => UpstreamFormat::SplunkHec,
        }
    }

    /// True when both are the same format, whatever their keys (a reload
    /// may change an index or a sourcetype, not the format).
    pub fn same_kind(a: &Format, b: &Format) -> bool {
        a.kind() == b.kind()
    }
}

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

/// The `[upstream]` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Where batches are POSTed.
    pub url: String,
    /// Body format.
    #[serde(default)]
    pub format: UpstreamFormat,
    /// Body compression.
    #[serde(default)]
    pub compression: CompressionName,
    /// gzip level 0-9 (default 1: fast; 6 halves the bytes for about
    /// twice the CPU).
    #[serde(default = "default_gzip_level")]
    pub gzip_level: u32,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Bearer token (prefer `bearer_token_file`); redacted in `Debug`
    /// (what `check-config` prints).
    #[serde(default, deserialize_with = "crate::settings::inline_secret")]
    pub bearer_token: Option<Secret>,
    /// File holding the bearer token.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Basic-auth user.
    #[serde(default)]
    pub basic_user: Option<String>,
    /// Basic-auth password (prefer `basic_password_file`); redacted in
    /// `Debug`.
    #[serde(default, deserialize_with = "crate::settings::inline_secret")]
    pub basic_password: Option<Secret>,
    /// File holding the basic-auth password.
    #[serde(default)]
    pub basic_password_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Flush a batch at this many records.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// Flush a batch at this many (uncompressed) body bytes.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Flush a non-empty batch after this long.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Per-request timeout.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Requests in flight at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// First retry delay; doubles up to `retry_max_ms`, with jitter.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Disk spool bound during long outages (under `state_dir`); 0 turns
    /// the spool off (an outage then only pauses reading).
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// How long upstream must have been failing before requests go to the
    /// spool (and are acknowledged) instead of waiting in memory while
    /// reading pauses.
    #[serde(default = "default_spool_after_ms")]
    pub spool_after_ms: u64,
    /// 401/403 answers: `retry` (default) or `dead_letter`.
    #[serde(default)]
    pub auth_failures: AuthFailures,
    /// Poison batches (4xx other than 408/413/429, and 401/403 with
    /// `auth_failures = "dead_letter"`) are written here;
    /// default `<state_dir>/dead-letter.ndjson`.
    #[serde(default)]
    pub dead_letter_file: Option<PathBuf>,
    /// Rotate the dead-letter file before it would pass this size (a
    /// collector that refuses every batch must not fill the disk).
    #[serde(default = "default_dead_letter_rotate_bytes")]
    pub dead_letter_rotate_bytes: u64,
    /// Rotated dead-letter files kept (`.1` ...); older ones are deleted
    /// (logged as an error with their size).
    #[serde(default = "default_dead_letter_keep_files")]
    pub dead_letter_keep_files: usize,
    /// Splunk HEC `sourcetype`.
    #[serde(default)]
    pub splunk_sourcetype: Option<String>,
    /// Elasticsearch index for `_bulk` actions.
    #[serde(default)]
    pub elasticsearch_index: Option<String>,
    /// SIGTERM grace period to flush what is batched.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

fn default_gzip_level() -> u32 {
    // Level 1 (Filebeat's default too): about half the CPU of level 6 for
    // about twice the bytes; catch-up after an outage is CPU-bound
    // (benches/upstream.rs).
    1
}
fn default_batch_max_records() -> usize {
    1000
}
fn default_batch_max_bytes() -> usize {
    4 << 20
}
fn default_flush_interval_ms() -> u64 {
    1000
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_max_in_flight() -> usize {
    4
}
fn default_retry_initial_ms() -> u64 {
    200
}
fn default_retry_max_ms() -> u64 {
    60_000
}
fn default_spool_max_bytes() -> u64 {
    1 << 30
}
fn default_spool_after_ms() -> u64 {
    30_000
}
fn default_shutdown_grace_ms() -> u64 {
    5_000
}
fn default_dead_letter_rotate_bytes() -> u64 {
    64 << 20
}
fn default_dead_letter_keep_files() -> usize {
    4
}

/// Upstream credentials: one of the three ways, never two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAuth {
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

/// The upstream sink's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "UpstreamSection")]
pub struct UpstreamConfig {
    /// Where batches are POSTed.
    pub url: String,
    /// Body format, with its keys.
    pub format: Format,
    /// Body compression.
    pub compression: Compression,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Credentials (files read when the config was read).
    pub auth: UpstreamAuth,
    /// Extra CA certificates to trust (`ca_file`).
    pub ca: Option<Pem>,
    /// Client certificate and key for mutual TLS (`client_cert`,
    /// `client_key`).
    pub client_identity: Option<(Pem, Pem)>,
    /// Flush a batch at this many records.
    pub batch_max_records: usize,
    /// Flush a batch at this many (uncompressed) body bytes.
    pub batch_max_bytes: usize,
    /// Flush a non-empty batch after this long (`flush_interval_ms`).
    pub flush_interval: Duration,
    /// Per-request timeout (`request_timeout_ms`).
    pub request_timeout: Duration,
    /// Requests in flight at once.
    pub max_in_flight: usize,
    /// First retry delay; doubles up to `retry_max`, with jitter
    /// (`retry_initial_ms`).
    pub retry_initial: Duration,
    /// Longest retry delay (`retry_max_ms`).
    pub retry_max: Duration,
    /// Disk spool bound; 0 turns the spool off.
    pub spool_max_bytes: u64,
    /// How long upstream must have been failing before requests go to the
    /// spool (`spool_after_ms`).
    pub spool_after: Duration,
    /// 401/403 answers: retried or dead-lettered.
    pub auth_failures: AuthFailures,
    /// Where poison batches go; `None`: `<state_dir>/dead-letter.ndjson`.
    pub dead_letter_file: Option<PathBuf>,
    /// The dead-letter file's bound on disk (`dead_letter_rotate_bytes`,
    /// `dead_letter_keep_files`).
    pub dead_letter_rotation: Rotation,
    /// SIGTERM grace period to flush what is batched
    /// (`shutdown_grace_ms`).
    pub shutdown_grace: Duration,
}

/// `toml::from_str::<UpstreamConfig>` (tests, benchmarks): the section's
/// settings with paths as written.
impl TryFrom<UpstreamSection> for UpstreamConfig {
    type Error = ConfigError;

    fn try_from(s: UpstreamSection) -> Result<Self, Self::Error> {
        UpstreamConfig::from_section(s, Path::new(""))
    }
}

impl UpstreamConfig {
    /// The settings of an `[upstream]` section: relative paths resolved
    /// against `base`, credential and TLS files read and checked; errors
    /// name the key (`upstream.url`).
    pub fn from_section(mut s: UpstreamSection, base: &Path) -> Result<UpstreamConfig, ConfigError> {
        let key = super::SECTION;
        for p in [
            &mut s.bearer_token_file,
            &mut s.basic_password_file,
            &mut s.ca_file,
            &mut s.client_cert,
            &mut s.client_key,
            &mut s.dead_letter_file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(base, p);
        }
        if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
            return Err(ConfigError::invalid(format!("{key}.url"), format!("`{}` is not an http:// or https:// URL", s.url)));
        }
        let auth = auth(&s)?;
        if s.gzip_level > 9 {
            return Err(ConfigError::invalid(format!("{key}.gzip_level"), "must be 0-9"));
        }
        for (k, v, name) in [
            (s.batch_max_records as u64, 1, "batch_max_records"),
            (s.batch_max_bytes as u64, 1024, "batch_max_bytes"),
            (s.flush_interval_ms, 1, "flush_interval_ms"),
            (s.request_timeout_ms, 1, "request_timeout_ms"),
            (s.max_in_flight as u64, 1, "max_in_flight"),
            (s.retry_initial_ms, 1, "retry_initial_ms"),
        ] {
            if k < v {
                return Err(ConfigError::invalid(format!("{key}.{name}"), format!("must be at least {v}")));
            }
        }
        check_rotate_bytes(&format!("{key}.dead_letter_rotate_bytes"), s.dead_letter_rotate_bytes)?;
        if s.retry_max_ms < s.retry_initial_ms {
            return Err(ConfigError::invalid(format!("{key}.retry_max_ms"), "must be >= retry_initial_ms"));
        }
        if s.client_cert.is_some() != s.client_key.is_some() {
            return Err(ConfigError::invalid(format!("{key}.client_cert"), "`client_cert` and `client_key` go together"));
        }
        // The TLS files are read here, not only when the client is built, so
        // that `check-config` (and `run` at start-up) refuse a missing or
        // non-PEM file with exit 64 naming the key.
        let ca = match s.ca_file {
            Some(p) => Some(pem_certificates(p, &format!("{key}.ca_file"))?),
            None => None,
        };
        let client_identity = match (s.client_cert, s.client_key) {
            (Some(cert), Some(k)) => {
                Some((pem_certificates(cert, &format!("{key}.client_cert"))?, pem_private_key(k, &format!("{key}.client_key"))?))
            }
            _ => None,
        };
        let format = match s.format {
            UpstreamFormat::Ndjson => Format::Ndjson,
            UpstreamFormat::Ecls => Format::Ecls,
            UpstreamFormat::Elasticsearch => Format::Elasticsearch { index: s.elasticsearch_index },
            UpstreamFormat::SplunkHec => Format::SplunkHec { sourcetype: s.splunk_sourcetype },
        };
        let compression = match s.compression {
            CompressionName::Gzip => Compression::Gzip { level: s.gzip_level },
            CompressionName::None => Compression::None,
        };
        Ok(UpstreamConfig {
            url: s.url,
            format,
            compression,
            headers: s.headers,
            auth,
            ca,
            client_identity,
            batch_max_records: s.batch_max_records,
            batch_max_bytes: s.batch_max_bytes,
            flush_interval: millis(s.flush_interval_ms),
            request_timeout: millis(s.request_timeout_ms),
            max_in_flight: s.max_in_flight,
            retry_initial: millis(s.retry_initial_ms),
            retry_max: millis(s.retry_max_ms),
            spool_max_bytes: s.spool_max_bytes,
            spool_after: millis(s.spool_after_ms),
            auth_failures: s.auth_failures,
            dead_letter_file: s.dead_letter_file,
            dead_letter_rotation: Rotation { rotate_bytes: s.dead_letter_rotate_bytes, keep_files: s.dead_letter_keep_files },
            shutdown_grace: millis(s.shutdown_grace_ms),
        })
    }
}

/// The credentials from the inline or file keys: a bearer token, or a
/// user with a password, or none.
fn auth(s: &UpstreamSection) -> Result<UpstreamAuth, ConfigError> {
    let bearer = Secret::resolve(
        s.bearer_token.as_ref().map(Secret::expose),
        s.bearer_token_file.as_deref(),
        "upstream.bearer_token",
        "upstream.bearer_token_file",
    )?;
    let password = Secret::resolve(
        s.basic_password.as_ref().map(Secret::expose),
        s.basic_password_file.as_deref(),
        "upstream.basic_password",
        "upstream.basic_password_file",
    )?;
    if bearer.is_some() && s.basic_user.is_some() {
        return Err(ConfigError::invalid("upstream.bearer_token", "give a bearer token or basic auth, not both"));
    }
    let basic = match (&s.basic_user, password) {
        (Some(user), Some(password)) => Some(UpstreamAuth::Basic { user: user.clone(), password }),
        (Some(_), None) => {
            return Err(ConfigError::invalid("upstream.basic_password", "`basic_user` needs `basic_password` or `basic_password_file`"))
        }
        (None, Some(_)) => return Err(ConfigError::invalid("upstream.basic_password", "set without `basic_user`")),
        (None, None) => None,
    };
    Ok(match (bearer, basic) {
        (Some(t), _) => UpstreamAuth::Bearer(t),
        (None, Some(b)) => b,
        (None, None) => UpstreamAuth::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_secrets_are_used_but_never_printed() {
        let bearer: UpstreamConfig = toml::from_str("url = \"https://c.example/\"\nbearer_token = \"t0ps3cret\"\n").unwrap();
        assert!(!format!("{bearer:?}").contains("t0ps3cret"), "{bearer:?}");
        assert!(matches!(&bearer.auth, UpstreamAuth::Bearer(t) if t.expose() == "t0ps3cret"));
        let basic: UpstreamConfig =
            toml::from_str("url = \"https://c.example/\"\nbasic_user = \"bridge\"\nbasic_password = \"pa55word\"\n").unwrap();
        assert!(!format!("{basic:?}").contains("pa55word"), "{basic:?}");
        assert!(matches!(&basic.auth, UpstreamAuth::Basic { user, password } if user == "bridge" && password.expose() == "pa55word"));
    }

    #[test]
    fn credentials_are_one_of_three_ways() {
        let check = |keys: &str, want: Result<&str, &str>| {
            let s: UpstreamSection = toml::from_str(&format!("url = \"https://c.example/\"\n{keys}")).unwrap();
            match (UpstreamConfig::from_section(s, Path::new("")), want) {
                (Ok(c), Ok(kind)) => {
                    let got = match c.auth {
                        UpstreamAuth::None => "none",
                        UpstreamAuth::Bearer(_) => "bearer",
                        UpstreamAuth::Basic { .. } => "basic",
                    };
                    assert_eq!(got, kind, "{keys}");
                }
                (Err(e), Err(key)) => assert_eq!(e.key(), Some(key), "{keys}: {e}"),
                (got, want) => panic!("{keys}: got {got:?}, want {want:?}"),
            }
        };
        check("", Ok("none"));
        check("bearer_token = \"t\"", Ok("bearer"));
        check("basic_user = \"u\"\nbasic_password = \"p\"", Ok("basic"));
        check("bearer_token = \"t\"\nbasic_user = \"u\"", Err("upstream.bearer_token"));
        check("bearer_token = \"t\"\nbasic_user = \"u\"\nbasic_password = \"p\"", Err("upstream.bearer_token"));
        check("bearer_token = \"t\"\nbasic_password = \"p\"", Err("upstream.basic_password"));
        check("basic_user = \"u\"", Err("upstream.basic_password"));
        check("basic_password = \"p\"", Err("upstream.basic_password"));
    }
}
