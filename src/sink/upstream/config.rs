//! `[upstream]`: the section as written and the upstream sink's typed
//! settings: the endpoint and the delivery keys as every HTTP sink on the
//! engine has them ([`Endpoint`], [`Settings`], defaults from the one
//! table), and the body format with its own keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::delivery::http::{AuthFailures, CompressionName, Endpoint};
use crate::delivery::Settings;
use crate::settings::{ConfigError, Secret};

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
    #[serde(default = "crate::delivery::http::default_gzip_level")]
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
    #[serde(default = "crate::delivery::settings::default::batch_max_records")]
    pub batch_max_records: usize,
    /// Flush a batch at this many (uncompressed) body bytes.
    #[serde(default = "crate::delivery::settings::default::batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Flush a non-empty batch after this long.
    #[serde(default = "crate::delivery::settings::default::flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Per-request timeout.
    #[serde(default = "crate::delivery::settings::default::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Requests in flight at once.
    #[serde(default = "crate::delivery::settings::default::max_in_flight")]
    pub max_in_flight: usize,
    /// First retry delay; doubles up to `retry_max_ms`, with jitter.
    #[serde(default = "crate::delivery::settings::default::retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    #[serde(default = "crate::delivery::settings::default::retry_max_ms")]
    pub retry_max_ms: u64,
    /// Disk spool bound during long outages (under `state_dir`); 0 turns
    /// the spool off (an outage then only pauses reading).
    #[serde(default = "crate::delivery::settings::default::spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// How long upstream must have been failing before requests go to the
    /// spool (and are acknowledged) instead of waiting in memory while
    /// reading pauses.
    #[serde(default = "crate::delivery::settings::default::spool_after_ms")]
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
    #[serde(default = "crate::delivery::settings::default::dead_letter_rotate_bytes")]
    pub dead_letter_rotate_bytes: u64,
    /// Rotated dead-letter files kept (`.1` ...); older ones are deleted
    /// (logged as an error with their size).
    #[serde(default = "crate::delivery::settings::default::dead_letter_keep_files")]
    pub dead_letter_keep_files: usize,
    /// Splunk HEC `sourcetype`.
    #[serde(default)]
    pub splunk_sourcetype: Option<String>,
    /// Elasticsearch index for `_bulk` actions.
    #[serde(default)]
    pub elasticsearch_index: Option<String>,
    /// SIGTERM grace period to flush what is batched.
    #[serde(default = "crate::delivery::settings::default::shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

/// The upstream sink's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "UpstreamSection")]
pub struct UpstreamConfig {
    /// Where and how requests are sent (URL, credentials, TLS,
    /// compression, timeout).
    pub endpoint: Endpoint,
    /// Body format, with its keys.
    pub format: Format,
    /// Batching, retries, spool, dead letters, shutdown.
    pub delivery: Settings,
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
    pub fn from_section(s: UpstreamSection, base: &Path) -> Result<UpstreamConfig, ConfigError> {
        let endpoint = Endpoint::from_keys(crate::endpoint_keys!(s), super::SECTION, base)?;
        let delivery = Settings::from_knobs(crate::knobs!(s, flush_interval_ms), super::SECTION, base)?;
        let format = match s.format {
            UpstreamFormat::Ndjson => Format::Ndjson,
            UpstreamFormat::Ecls => Format::Ecls,
            UpstreamFormat::Elasticsearch => Format::Elasticsearch { index: s.elasticsearch_index },
            UpstreamFormat::SplunkHec => Format::SplunkHec { sourcetype: s.splunk_sourcetype },
        };
        Ok(UpstreamConfig { endpoint, format, delivery })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::http::Auth;

    #[test]
    fn inline_secrets_are_used_but_never_printed() {
        let bearer: UpstreamConfig = toml::from_str("url = \"https://c.example/\"\nbearer_token = \"t0ps3cret\"\n").unwrap();
        assert!(!format!("{bearer:?}").contains("t0ps3cret"), "{bearer:?}");
        assert!(matches!(&bearer.endpoint.auth, Auth::Bearer(t) if t.expose() == "t0ps3cret"));
        let basic: UpstreamConfig =
            toml::from_str("url = \"https://c.example/\"\nbasic_user = \"bridge\"\nbasic_password = \"pa55word\"\n").unwrap();
        assert!(!format!("{basic:?}").contains("pa55word"), "{basic:?}");
        assert!(matches!(&basic.endpoint.auth, Auth::Basic { user, password } if user == "bridge" && password.expose() == "pa55word"));
    }

    #[test]
    fn credentials_are_one_of_three_ways() {
        let check = |keys: &str, want: Result<&str, &str>| {
            let s: UpstreamSection = toml::from_str(&format!("url = \"https://c.example/\"\n{keys}")).unwrap();
            match (UpstreamConfig::from_section(s, Path::new("")), want) {
                (Ok(c), Ok(kind)) => {
                    let got = match c.endpoint.auth {
                        Auth::None => "none",
                        Auth::Bearer(_) => "bearer",
                        Auth::Basic { .. } => "basic",
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
