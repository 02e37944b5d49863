//! `[status]`: Prometheus metrics, `/status`, health and the dashboard.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{parse_listen, secs, ConfigError};

/// The `[status]` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSection {
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
    /// Minutes of per-minute sync-delay history kept per file for
    /// `/history` and the dashboard's history panel (0: none).
    #[serde(default = "default_history_minutes")]
    pub history_minutes: u32,
    /// Set to false to run without the status listener.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// WebSocket origins (`wss://host[:port]`) the dashboard may subscribe
    /// to besides the bridge's own channel and the page's own origin: a
    /// channel behind a reverse proxy, named with `#ws=` in the page's URL.
    /// The page sends the channel token nowhere else, and its
    /// Content-Security-Policy allows no other WebSocket origin.
    #[serde(default)]
    pub dashboard_channel_origins: Vec<String>,
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
fn default_history_minutes() -> u32 {
    360
}
/// A week of minutes: the most history kept.
const MAX_HISTORY_MINUTES: u32 = 7 * 24 * 60;
fn default_true() -> bool {
    true
}

fn de_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_listen("status.listen", &s).map_err(serde::de::Error::custom)
}

/// Metrics, status, health and the dashboard: the `[status]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusConfig {
    /// Address of the status listener (loopback by default).
    pub listen: SocketAddr,
    /// Label file metrics per file (off by default: file names are an
    /// unbounded label set).
    pub per_file_metrics: bool,
    /// Window over which per-file sync-delay percentiles are computed
    /// (`delay_window_secs`).
    pub delay_window: Duration,
    /// A file with no new data for this long is `idle` (`idle_after_secs`).
    pub idle_after: Duration,
    /// A file with data waiting and no read progress for this long is
    /// `stalled` (`stalled_after_secs`).
    pub stalled_after: Duration,
    /// A source whose globs have matched no file for this long is reported
    /// (`no_files_after_secs`).
    pub no_files_after: Duration,
    /// Minutes of sync-delay history kept per file (`history_minutes`;
    /// 0: none).
    pub history_minutes: u32,
    /// False: no status listener.
    pub enabled: bool,
    /// WebSocket origins the dashboard may subscribe to besides the
    /// bridge's own channel (as written; each is a valid origin).
    pub dashboard_channel_origins: Vec<String>,
}

impl Default for StatusSection {
    fn default() -> Self {
        StatusSection {
            listen: default_listen(),
            per_file_metrics: false,
            delay_window_secs: default_window_secs(),
            idle_after_secs: default_idle_after_secs(),
            stalled_after_secs: default_stalled_after_secs(),
            no_files_after_secs: default_no_files_after_secs(),
            history_minutes: default_history_minutes(),
            enabled: true,
            dashboard_channel_origins: Vec::new(),
        }
    }
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            listen: default_listen(),
            per_file_metrics: false,
            delay_window: secs(default_window_secs()),
            idle_after: secs(default_idle_after_secs()),
            stalled_after: secs(default_stalled_after_secs()),
            no_files_after: secs(default_no_files_after_secs()),
            history_minutes: default_history_minutes(),
            enabled: true,
            dashboard_channel_origins: Vec::new(),
        }
    }
}

impl StatusConfig {
    /// The typed settings of a `[status]` section; errors name the key
    /// under `key` (`status`).
    pub fn from_section(s: StatusSection, key: &str) -> Result<StatusConfig, ConfigError> {
        if s.delay_window_secs == 0 {
            return Err(ConfigError::invalid(format!("{key}.delay_window_secs"), "must be > 0"));
        }
        if s.idle_after_secs == 0 {
            return Err(ConfigError::invalid(format!("{key}.idle_after_secs"), "must be > 0"));
        }
        if s.stalled_after_secs == 0 {
            return Err(ConfigError::invalid(format!("{key}.stalled_after_secs"), "must be > 0"));
        }
        if s.history_minutes > MAX_HISTORY_MINUTES {
            return Err(ConfigError::invalid(format!("{key}.history_minutes"), format!("at most {MAX_HISTORY_MINUTES} (a week)")));
        }
        for o in &s.dashboard_channel_origins {
            if ws_origin(o).is_none() {
                return Err(ConfigError::invalid(
                    format!("{key}.dashboard_channel_origins"),
                    format!("`{o}` is not a WebSocket origin: write ws://HOST[:PORT] or wss://HOST[:PORT], with no path"),
                ));
            }
        }
        Ok(StatusConfig {
            listen: s.listen,
            per_file_metrics: s.per_file_metrics,
            delay_window: secs(s.delay_window_secs),
            idle_after: secs(s.idle_after_secs),
            stalled_after: secs(s.stalled_after_secs),
            no_files_after: secs(s.no_files_after_secs),
            history_minutes: s.history_minutes,
            enabled: s.enabled,
            dashboard_channel_origins: s.dashboard_channel_origins,
        })
    }
}

/// A WebSocket origin, normalised as browsers write origins (`scheme://host`
/// or `scheme://host:port`, lower case, the scheme's default port left
/// out); `None` unless `v` is `ws://` or `wss://` and a host name, IPv4 or
/// bracketed IPv6 address, with an optional port and nothing else (it goes
/// into a Content-Security-Policy and an HTML attribute).
pub fn ws_origin(v: &str) -> Option<String> {
    let v = v.trim().to_ascii_lowercase();
    let (scheme, rest) = v.split_once("://")?;
    let default_port = match scheme {
        "ws" => 80,
        "wss" => 443,
        _ => return None,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match rest.strip_prefix('[') {
        Some(r) => {
            let (inner, after) = r.split_once(']')?;
            if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                return None;
            }
            (format!("[{inner}]"), after)
        }
        None => {
            let end = rest.find(':').unwrap_or(rest.len());
            let host = &rest[..end];
            if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
                return None;
            }
            (host.to_string(), &rest[end..])
        }
    };
    let port = match port {
        "" => None,
        p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
    };
    Some(match port {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_origins() {
        let check = |v: &str, want: Option<&str>| assert_eq!(ws_origin(v).as_deref(), want, "{v}");
        check("wss://Bridge.Example.com", Some("wss://bridge.example.com"));
        check("wss://bridge.example.com:443/", Some("wss://bridge.example.com"));
        check("ws://10.0.0.5:8790", Some("ws://10.0.0.5:8790"));
        check("ws://[::1]:8790", Some("ws://[::1]:8790"));
        check("ws://h:80", Some("ws://h"));
        for bad in [
            "https://h",
            "ws://",
            "ws://h/stream",
            "ws://h:x",
            "ws://h:99999",
            "ws://h; connect-src *",
            "ws://*",
            "ws://h\"x",
            "wss://[zz]:1",
            "h:1",
        ] {
            check(bad, None);
        }
    }
}
