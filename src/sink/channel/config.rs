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
    /// The replay log (`<state_dir>/replay`) keeps at most this many bytes
    /// of records for `?since=` replay (whole segments are removed, oldest
    /// first). Disk, not memory: only a small hot tail is in memory.
    #[serde(default)]
    pub replay_max_bytes: Option<u64>,
    /// ... and no record written longer ago than this.
    #[serde(default = "default_replay_max_age_secs")]
    pub replay_max_age_secs: u64,
    /// Deprecated (the replay ring's record count): mapped to
    /// `replay_max_bytes` at [`REPLAY_BYTES_PER_RECORD`] bytes a record
    /// when that is not set, with a warning.
    #[serde(default)]
    pub replay_records: Option<usize>,
    /// Deprecated (the in-memory send queue's bound): accepted and ignored
    /// with a warning; a client that falls behind reads from the replay
    /// log and costs no memory.
    #[serde(default)]
    pub send_queue_bytes: Option<usize>,
    /// Mask `api_key` / `oauth_access_token` on this channel, keeping this
    /// many characters at each end ([`crate::mask`]: the rule of
    /// `[enrich]`'s mask keys, in every field the secrets appear in).
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
fn default_replay_max_age_secs() -> u64 {
    DEFAULT_REPLAY_MAX_AGE_SECS
}

/// `replay_max_bytes` when not set: 256 MiB, about 200,000 records.
pub const DEFAULT_REPLAY_MAX_BYTES: u64 = 256 << 20;

/// `replay_max_age_secs` when not set: a day.
pub const DEFAULT_REPLAY_MAX_AGE_SECS: u64 = 86_400;

/// The smallest `replay_max_bytes` accepted.
pub const MIN_REPLAY_MAX_BYTES: u64 = 64 << 10;

/// The deprecated `replay_records` maps to `replay_max_bytes` at this many
/// bytes a record (an `ecls` record is about 1.3 KB, plus its log header).
pub const REPLAY_BYTES_PER_RECORD: u64 = 2048;

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
    /// The replay log keeps at most this many bytes.
    pub replay_max_bytes: u64,
    /// ... and nothing written longer ago than this.
    pub replay_max_age: Duration,
    /// Warnings about deprecated keys, logged when the channel starts.
    pub deprecated: Vec<String>,
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
        let (replay_max_bytes, deprecated) = replay_bytes(&s)?;
        if s.replay_max_age_secs == 0 {
            return Err(ConfigError::invalid(format!("{key}.replay_max_age_secs"), "must be > 0"));
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
            replay_max_bytes,
            replay_max_age: secs(s.replay_max_age_secs),
            deprecated,
            mask_keep: s.mask_keep,
            tls,
        })
    }
}

/// `replay_max_bytes` (or the deprecated `replay_records` mapped to it)
/// and the warnings the deprecated keys call for.
fn replay_bytes(s: &ChannelSection) -> Result<(u64, Vec<String>), ConfigError> {
    let mut warnings = Vec::new();
    let bytes = match (s.replay_max_bytes, s.replay_records) {
        (Some(b), Some(_)) => {
            warnings.push("channel.replay_records is deprecated and ignored: channel.replay_max_bytes is set".to_string());
            b
        }
        (Some(b), None) => b,
        (None, Some(r)) => {
            let b = (r as u64).saturating_mul(REPLAY_BYTES_PER_RECORD).max(MIN_REPLAY_MAX_BYTES);
            warnings.push(format!(
                "channel.replay_records is deprecated: replay_records = {r} is read as replay_max_bytes = {b} ({REPLAY_BYTES_PER_RECORD} bytes a record); set channel.replay_max_bytes instead"
            ));
            b
        }
        (None, None) => DEFAULT_REPLAY_MAX_BYTES,
    };
    if bytes < MIN_REPLAY_MAX_BYTES {
        return Err(ConfigError::invalid("channel.replay_max_bytes", format!("must be at least {MIN_REPLAY_MAX_BYTES}")));
    }
    if s.send_queue_bytes.is_some() {
        warnings.push(
            "channel.send_queue_bytes is deprecated and ignored: a client that falls behind reads from the replay log (no memory), and is closed only when it falls out of its retention"
                .to_string(),
        );
    }
    Ok((bytes, warnings))
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

    fn section(extra: &str) -> Result<ChannelConfig, ConfigError> {
        let c: ChannelSection = toml::from_str(&format!("token = \"0123456789abcdef0123\"\n{extra}")).unwrap();
        ChannelConfig::from_section(c, Path::new(""))
    }

    #[test]
    fn replay_retention_and_the_deprecated_keys() {
        let c = section("").unwrap();
        assert_eq!((c.replay_max_bytes, c.replay_max_age.as_secs()), (DEFAULT_REPLAY_MAX_BYTES, 86_400));
        assert!(c.deprecated.is_empty());
        let c = section("replay_max_bytes = 1048576\nreplay_max_age_secs = 60").unwrap();
        assert_eq!((c.replay_max_bytes, c.replay_max_age.as_secs()), (1 << 20, 60));
        // The old record count maps to bytes, said out loud.
        let c = section("replay_records = 1000").unwrap();
        assert_eq!(c.replay_max_bytes, 1000 * REPLAY_BYTES_PER_RECORD);
        assert!(c.deprecated[0].contains("replay_records = 1000 is read as replay_max_bytes = 2048000"), "{:?}", c.deprecated);
        let c = section("replay_records = 1000\nreplay_max_bytes = 1048576\nsend_queue_bytes = 1").unwrap();
        assert_eq!(c.replay_max_bytes, 1 << 20);
        assert_eq!(c.deprecated.len(), 2);
        assert!(c.deprecated[1].contains("channel.send_queue_bytes is deprecated and ignored"));
        let e = section("replay_max_bytes = 10").unwrap_err().to_string();
        assert!(e.contains("channel.replay_max_bytes"), "{e}");
        let e = section("replay_max_age_secs = 0").unwrap_err().to_string();
        assert!(e.contains("channel.replay_max_age_secs"), "{e}");
    }

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
