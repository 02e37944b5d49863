//! `[upstream]`: batches over HTTP to a central collector.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, Secret};

/// Body format of upstream requests.
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

/// Body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// `Content-Encoding: gzip`.
    #[default]
    Gzip,
    /// Uncompressed.
    None,
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

/// The `[upstream]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Where batches are POSTed.
    pub url: String,
    /// Body format.
    #[serde(default)]
    pub format: UpstreamFormat,
    /// Body compression.
    #[serde(default)]
    pub compression: Compression,
    /// gzip level 0-9 (default 1: fast; 6 halves the bytes for about
    /// twice the CPU).
    #[serde(default = "default_gzip_level")]
    pub gzip_level: u32,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Bearer token (prefer `bearer_token_file`); redacted in `Debug`
    /// (what `check-config` prints).
    #[serde(default, deserialize_with = "super::inline_secret")]
    pub bearer_token: Option<Secret>,
    /// File holding the bearer token.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Basic-auth user.
    #[serde(default)]
    pub basic_user: Option<String>,
    /// Basic-auth password (prefer `basic_password_file`); redacted in
    /// `Debug`.
    #[serde(default, deserialize_with = "super::inline_secret")]
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

/// Resolved upstream credentials.
#[derive(Debug, Clone)]
pub enum UpstreamAuth {
    /// No credentials.
    None,
    /// `Authorization: Bearer ...`.
    Bearer(Secret),
    /// `Authorization: Basic ...`.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: Secret,
    },
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

impl UpstreamConfig {
    /// The dead-letter file's bound on disk.
    pub fn dead_letter_rotation(&self) -> crate::rotating::Rotation {
        crate::rotating::Rotation { rotate_bytes: self.dead_letter_rotate_bytes, keep_files: self.dead_letter_keep_files }
    }

    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.bearer_token_file,
            &mut self.basic_password_file,
            &mut self.ca_file,
            &mut self.client_cert,
            &mut self.client_key,
            &mut self.dead_letter_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
    }

    /// The credentials from the inline or file keys.
    pub fn auth(&self) -> Result<UpstreamAuth, ConfigError> {
        let bearer = Secret::resolve(
            self.bearer_token.as_ref().map(Secret::expose),
            self.bearer_token_file.as_deref(),
            "upstream.bearer_token",
            "upstream.bearer_token_file",
        )?;
        let password = Secret::resolve(
            self.basic_password.as_ref().map(Secret::expose),
            self.basic_password_file.as_deref(),
            "upstream.basic_password",
            "upstream.basic_password_file",
        )?;
        match (bearer, &self.basic_user, password) {
            (Some(_), Some(_), _) => Err(ConfigError::invalid("upstream.bearer_token", "give a bearer token or basic auth, not both")),
            (Some(t), None, None) => Ok(UpstreamAuth::Bearer(t)),
            (Some(_), None, Some(_)) => Err(ConfigError::invalid("upstream.basic_password", "set without `basic_user`")),
            (None, Some(u), Some(p)) => Ok(UpstreamAuth::Basic { user: u.clone(), password: p }),
            (None, Some(_), None) => {
                Err(ConfigError::invalid("upstream.basic_password", "`basic_user` needs `basic_password` or `basic_password_file`"))
            }
            (None, None, Some(_)) => Err(ConfigError::invalid("upstream.basic_password", "set without `basic_user`")),
            (None, None, None) => Ok(UpstreamAuth::None),
        }
    }

    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ConfigError::invalid(format!("{key}.url"), format!("`{}` is not an http:// or https:// URL", self.url)));
        }
        self.auth()?;
        if self.gzip_level > 9 {
            return Err(ConfigError::invalid(format!("{key}.gzip_level"), "must be 0-9"));
        }
        for (k, v, name) in [
            (self.batch_max_records as u64, 1, "batch_max_records"),
            (self.batch_max_bytes as u64, 1024, "batch_max_bytes"),
            (self.flush_interval_ms, 1, "flush_interval_ms"),
            (self.request_timeout_ms, 1, "request_timeout_ms"),
            (self.max_in_flight as u64, 1, "max_in_flight"),
            (self.retry_initial_ms, 1, "retry_initial_ms"),
        ] {
            if k < v {
                return Err(ConfigError::invalid(format!("{key}.{name}"), format!("must be at least {v}")));
            }
        }
        super::rejects::check_rotate_bytes(&format!("{key}.dead_letter_rotate_bytes"), self.dead_letter_rotate_bytes)?;
        if self.retry_max_ms < self.retry_initial_ms {
            return Err(ConfigError::invalid(format!("{key}.retry_max_ms"), "must be >= retry_initial_ms"));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(ConfigError::invalid(format!("{key}.client_cert"), "`client_cert` and `client_key` go together"));
        }
        // The TLS files are read here, not only when the client is built, so
        // that `check-config` (and `run` at start-up) refuse a missing or
        // non-PEM file with exit 64 naming the key.
        if let Some(p) = &self.ca_file {
            pem_certificates(p, &format!("{key}.ca_file"))?;
        }
        if let (Some(cert), Some(k)) = (&self.client_cert, &self.client_key) {
            pem_certificates(cert, &format!("{key}.client_cert"))?;
            pem_private_key(k, &format!("{key}.client_key"))?;
        }
        Ok(())
    }
}

/// Reads `path`, naming `key` if it cannot be read.
fn read_pem(path: &Path, key: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// Checks that `path` holds at least one PEM certificate and nothing that
/// fails to decode.
fn pem_certificates(path: &Path, key: &str) -> Result<(), ConfigError> {
    let pem = read_pem(path, key)?;
    let mut n = 0;
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        c.map_err(|e| ConfigError::invalid(key, format!("{} is not valid PEM: {e}", path.display())))?;
        n += 1;
    }
    if n == 0 {
        return Err(ConfigError::invalid(key, format!("{} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)", path.display())));
    }
    Ok(())
}

/// Checks that `path` holds a PEM private key (PKCS#8, PKCS#1 or SEC1).
fn pem_private_key(path: &Path, key: &str) -> Result<(), ConfigError> {
    let pem = read_pem(path, key)?;
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(ConfigError::invalid(key, format!("{} holds no PEM private key", path.display()))),
        Err(e) => Err(ConfigError::invalid(key, format!("{} is not valid PEM: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_secrets_are_used_but_never_printed() {
        let bearer: UpstreamConfig = toml::from_str("url = \"https://c.example/\"\nbearer_token = \"t0ps3cret\"\n").unwrap();
        assert!(!format!("{bearer:?}").contains("t0ps3cret"), "{bearer:?}");
        assert!(matches!(bearer.auth().unwrap(), UpstreamAuth::Bearer(t) if t.expose() == "t0ps3cret"));
        let basic: UpstreamConfig =
            toml::from_str("url = \"https://c.example/\"\nbasic_user = \"bridge\"\nbasic_password = \"pa55word\"\n").unwrap();
        assert!(!format!("{basic:?}").contains("pa55word"), "{basic:?}");
        assert!(
            matches!(basic.auth().unwrap(), UpstreamAuth::Basic { user, password } if user == "bridge" && password.expose() == "pa55word")
        );
    }
}
