//! `[channel]`: the section as written and the channel's typed settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::settings::{check_token, parse_listen, resolve, secs, ConfigError, Secret};

/// The `[channel]` section as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSection {
    /// Listen address (loopback by default).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The channel id in `/ecls/subscribe/<channel_id>/<area>`.
    #[serde(default = "default_channel_id")]
    pub channel_id: String,
    /// The area name in `/ecls/subscribe/<channel_id>/<area>`.
    #[serde(default = "default_area")]
    pub area: String,
    /// The access token (`?key=`). Prefer `token_file`.
    #[serde(default, deserialize_with = "crate::settings::inline_secret")]
    pub token: Option<Secret>,
    /// A file holding the access token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// At most this many concurrent connections (the hosted stream allows 5).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Send a ping this often; close a connection that misses two.
    #[serde(default = "default_ping_interval_secs")]
    pub ping_interval_secs: u64,
    /// Records per `{"data":[...]}` message (1 = compatibility mode).
    #[serde(default = "default_records_per_message")]
    pub records_per_message: usize,
    /// Records kept for `?since=` replay (the ring also keeps what is
    /// within `send_queue_bytes` of the newest record). Memory is about
    /// this many times the record size (~1.3 KB in the `ecls` shape),
    /// whatever the number or speed of clients.
    #[serde(default = "default_replay_records")]
    pub replay_records: usize,
    /// Per-connection send queue bound: a client whose unsent bytes stay
    /// above it for more than a second is closed (1013 `slow consumer`)
    /// and counted; it never slows the tailers or the other clients.
    #[serde(default = "default_send_queue_bytes")]
    pub send_queue_bytes: usize,
    /// Mask `api_key` / `oauth_access_token` on this channel, keeping this
    /// many characters at each end.
    #[serde(default)]
    pub mask_keep: Option<usize>,
    /// PEM certificate chain for `wss://`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `wss://`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_listen() -> String {
    "127.0.0.1:8790".into()
}
fn default_channel_id() -> String {
    "local".into()
}
fn default_area() -> String {
    "local".into()
}
fn default_max_connections() -> usize {
    5
}
fn default_ping_interval_secs() -> u64 {
    30
}
fn default_records_per_message() -> usize {
    1
}
fn default_replay_records() -> usize {
    100_000
}
fn default_send_queue_bytes() -> usize {
    8 << 20
}

/// The certificate and key for `wss://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain (`tls_cert`).
    pub cert: PathBuf,
    /// PEM private key (`tls_key`).
    pub key: PathBuf,
}

/// The channel's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ChannelSection")]
pub struct ChannelConfig {
    /// The listen address (`localhost:PORT` means 127.0.0.1).
    pub listen: SocketAddr,
    /// `channel_id` in the subscribe path.
    pub channel_id: String,
    /// `area` in the subscribe path.
    pub area: String,
    /// The token clients present, from `token` or the content of
    /// `token_file` when the config was read (so a reload sees a new
    /// file content as a change).
    pub token: Secret,
    /// Where the token came from, when from a file.
    pub token_file: Option<PathBuf>,
    /// Connections allowed at once.
    pub max_connections: usize,
    /// Ping this often; a client silent for two intervals is closed.
    pub ping_interval: Duration,
    /// Records per message, for clients that ask for none of their own.
    pub records_per_message: usize,
    /// Records kept for replay.
    pub replay_records: usize,
    /// Unsent bytes allowed per connection.
    pub send_queue_bytes: usize,
    /// Characters kept at each end of masked keys; `None`: no masking.
    pub mask_keep: Option<usize>,
    /// `wss://` when set.
    pub tls: Option<TlsFiles>,
}

/// `toml::from_str::<ChannelConfig>` (tests, benchmarks): the section's
/// settings with paths as written.
impl TryFrom<ChannelSection> for ChannelConfig {
    type Error = ConfigError;

    fn try_from(s: ChannelSection) -> Result<Self, Self::Error> {
        ChannelConfig::from_section(s, Path::new(""))
    }
}

impl ChannelConfig {
    /// The settings of a `[channel]` section: relative paths resolved
    /// against `base`, the token read and checked, the TLS files checked;
    /// errors name the key (`channel.listen`).
    pub fn from_section(mut s: ChannelSection, base: &Path) -> Result<ChannelConfig, ConfigError> {
        let key = super::SECTION;
        for p in [&mut s.token_file, &mut s.tls_cert, &mut s.tls_key].into_iter().flatten() {
            resolve(base, p);
        }
        let listen = parse_listen(&format!("{key}.listen"), &s.listen)?;
        let token = token(&s)?;
        if s.max_connections == 0 {
            return Err(ConfigError::invalid(format!("{key}.max_connections"), "must be > 0"));
        }
        if s.records_per_message == 0 {
            return Err(ConfigError::invalid(format!("{key}.records_per_message"), "must be > 0"));
        }
        if s.ping_interval_secs == 0 {
            return Err(ConfigError::invalid(format!("{key}.ping_interval_secs"), "must be > 0"));
        }
        if s.channel_id.is_empty() || s.channel_id.contains('/') {
            return Err(ConfigError::invalid(format!("{key}.channel_id"), "must be non-empty and contain no `/`"));
        }
        if s.area.is_empty() || s.area.contains('/') {
            return Err(ConfigError::invalid(format!("{key}.area"), "must be non-empty and contain no `/`"));
        }
        let tls = match (s.tls_cert, s.tls_key) {
            (Some(cert), Some(tls_key)) => {
                check_pem(&format!("{key}.tls_cert"), &cert, false)?;
                check_pem(&format!("{key}.tls_key"), &tls_key, true)?;
                Some(TlsFiles { cert, key: tls_key })
            }
            (None, None) => None,
            _ => return Err(ConfigError::invalid(format!("{key}.tls_cert"), "`tls_cert` and `tls_key` go together")),
        };
        Ok(ChannelConfig {
            listen,
            channel_id: s.channel_id,
            area: s.area,
            token,
            token_file: s.token_file,
            max_connections: s.max_connections,
            ping_interval: secs(s.ping_interval_secs),
            records_per_message: s.records_per_message,
            replay_records: s.replay_records,
            send_queue_bytes: s.send_queue_bytes,
            mask_keep: s.mask_keep,
            tls,
        })
    }
}

/// The token from `token` or `token_file`, refused when weak
/// ([`check_token`]).
fn token(s: &ChannelSection) -> Result<Secret, ConfigError> {
    let token = Secret::resolve(s.token.as_ref().map(Secret::expose), s.token_file.as_deref(), "channel.token", "channel.token_file")?
        .ok_or_else(|| ConfigError::invalid("channel.token", "a token is required: set `token_file` (or `token`)"))?;
    let key = if s.token.is_some() { "channel.token" } else { "channel.token_file" };
    check_token(key, &token)?;
    Ok(token)
}

/// Checks that `path` holds a PEM certificate (or, with `private_key`, a
/// PEM private key), naming `key` when it does not.
fn check_pem(key: &str, path: &Path, private_key: bool) -> Result<(), ConfigError> {
    let pem = crate::settings::read_pem(path, key)?;
    let found = if private_key {
        matches!(rustls_pemfile::private_key(&mut pem.as_slice()), Ok(Some(_)))
    } else {
        rustls_pemfile::certs(&mut pem.as_slice()).next().is_some_and(|c| c.is_ok())
    };
    if found {
        Ok(())
    } else {
        let what = if private_key { "a PEM private key" } else { "a PEM certificate" };
        Err(ConfigError::invalid(key, format!("{} does not hold {what}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_named_when_it_holds_the_weak_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("channel.token");
        std::fs::write(&f, "tiny\n").unwrap();
        let c: ChannelSection = toml::from_str(&format!("token_file = {:?}", f.display().to_string())).unwrap();
        let e = ChannelConfig::from_section(c, Path::new("")).unwrap_err().to_string();
        assert!(e.contains("channel.token_file") && e.contains("4 bytes"), "{e}");
    }
}
