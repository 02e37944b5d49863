//! `[status]`: Prometheus metrics, `/status`, health and the dashboard.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{parse_listen, ConfigError};

/// The `[status]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Address of the status listener (loopback by default).
    #[serde(default = "default_listen", deserialize_with = "de_listen")]
    pub listen: SocketAddr,
    /// Label file metrics per file (off by default: file names are an
    /// unbounded label set).
    #[serde(default)]
    pub per_file_metrics: bool,
    /// Window over which per-file sync-delay percentiles are computed.
    #[serde(default = "default_window_secs")]
    pub delay_window_secs: u64,
    /// A file with no new data for this long is `idle` (and shows no
    /// current sync delay).
    #[serde(default = "default_idle_after_secs")]
    pub idle_after_secs: u64,
    /// A file with data waiting (size > offset) and no read progress for
    /// this long is `stalled`.
    #[serde(default = "default_stalled_after_secs")]
    pub stalled_after_secs: u64,
    /// A source whose globs have matched no file for this long is reported
    /// (`no-files` in `/status` and `lag`; `/readyz` answers 503 and
    /// `lag --max-lag` fails), so a wrong path never looks healthy.
    #[serde(default = "default_no_files_after_secs")]
    pub no_files_after_secs: u64,
    /// Set to false to run without the status listener.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8791))
}
fn default_window_secs() -> u64 {
    300
}
fn default_idle_after_secs() -> u64 {
    60
}
fn default_stalled_after_secs() -> u64 {
    30
}
fn default_no_files_after_secs() -> u64 {
    60
}
fn default_true() -> bool {
    true
}

fn de_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_listen("status.listen", &s).map_err(serde::de::Error::custom)
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            listen: default_listen(),
            per_file_metrics: false,
            delay_window_secs: default_window_secs(),
            idle_after_secs: default_idle_after_secs(),
            stalled_after_secs: default_stalled_after_secs(),
            no_files_after_secs: default_no_files_after_secs(),
            enabled: true,
        }
    }
}

impl StatusConfig {
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.delay_window_secs == 0 {
            return Err(ConfigError::invalid(format!("{key}.delay_window_secs"), "must be > 0"));
        }
        if self.idle_after_secs == 0 {
            return Err(ConfigError::invalid(format!("{key}.idle_after_secs"), "must be > 0"));
        }
        if self.stalled_after_secs == 0 {
            return Err(ConfigError::invalid(format!("{key}.stalled_after_secs"), "must be > 0"));
        }
        Ok(())
    }
}
