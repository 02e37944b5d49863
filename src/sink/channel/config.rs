//! `[channel]`: the section as written and the channel's typed settings:
//! the listener, the default channel (its `token` / `token_file`, and
//! `tokens` / `token_files` for a rotation), and the `[[channel.stream]]`
//! channels, each with its id, tokens, record filter
//! ([`super::route::RouteFilter`]) and limits.
//!
//! Every token follows the one token rule ([`check_token`]) and opens one
//! channel: a token given twice (in one channel or two) is refused, as are
//! two streams with one id or a stream with the default channel's
//! `channel_id`. A token may carry `not_after` (RFC 3339) after which it
//! opens nothing, and a `label` shown in `/status` instead of its digest
//! prefix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::route::RouteFilter;
use crate::record::Field;
use crate::settings::{check_token, parse_listen, resolve, secs, ConfigError, Secret};

/// A token written inline (`tokens = ["..."]`), kept as a [`Secret`] from
/// the moment it is read (never printed).
#[derive(Clone)]
pub struct InlineToken(Secret);

impl std::fmt::Debug for InlineToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for InlineToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(InlineToken(Secret::new(String::deserialize(d)?)))
    }
}

/// One entry of `tokens`: the token, or a table with its `not_after` and
/// `label`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenEntry {
    /// `"..."`.
    Plain(InlineToken),
    /// `{ token = "...", not_after = "2026-07-01T00:00:00Z", label = "..." }`.
    Table(TokenTable),
}

/// A token with its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenTable {
    /// The token.
    pub token: InlineToken,
    /// The token opens nothing after this instant (RFC 3339), and its
    /// clients are closed then (1008 `token expired`).
    #[serde(default)]
    pub not_after: Option<String>,
    /// Shown in `/status`, `/metrics` and the dashboard instead of the
    /// token's digest prefix.
    #[serde(default)]
    pub label: Option<String>,
}

/// One entry of `token_files`: the file, or a table with its `not_after`
/// and `label`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenFileEntry {
    /// `"/etc/calllog-bridge/partner-a.token"`.
    Plain(PathBuf),
    /// `{ file = "...", not_after = "...", label = "..." }`.
    Table(TokenFileTable),
}

/// A token file with its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFileTable {
    /// The file holding the token.
    pub file: PathBuf,
    /// See [`TokenTable::not_after`].
    #[serde(default)]
    pub not_after: Option<String>,
    /// See [`TokenTable::label`].
    #[serde(default)]
    pub label: Option<String>,
}

/// A filter key's values: a list, or one value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum Values {
    /// `["a", "b"]`.
    #[default]
    None,
    /// `"a"`.
    One(String),
    /// `["a", "b"]`.
    Many(Vec<String>),
}

impl Values {
    fn into_vec(self) -> Vec<String> {
        match self {
            Values::None => Vec::new(),
            Values::One(v) => vec![v],
            Values::Many(v) => v,
        }
    }
}

/// A `[[channel.stream]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    /// The `<channel_id>` of `/ecls/subscribe/<channel_id>/<area>`.
    pub id: String,
    /// Tokens written inline.
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
    /// Files holding tokens (one token each).
    #[serde(default)]
    pub token_files: Vec<TokenFileEntry>,
    /// Filter: `org_uuid` is one of these.
    #[serde(default)]
    pub org_uuid: Values,
    /// Filter: `org_name` is one of these.
    #[serde(default)]
    pub org_name: Values,
    /// Filter: `sub_org_uuid` is one of these.
    #[serde(default)]
    pub sub_org_uuid: Values,
    /// Filter: `sub_org_name` is one of these.
    #[serde(default)]
    pub sub_org_name: Values,
    /// Filter: `service_id` is one of these.
    #[serde(default)]
    pub service_id: Values,
    /// Filter: `service_name` is one of these.
    #[serde(default)]
    pub service_name: Values,
    /// Filter: `package_uuid` is one of these.
    #[serde(default)]
    pub package_uuid: Values,
    /// Filter: `package_name` is one of these.
    #[serde(default)]
    pub package_name: Values,
    /// Filter: `plan_uuid` is one of these.
    #[serde(default)]
    pub plan_uuid: Values,
    /// Filter: `plan_name` is one of these.
    #[serde(default)]
    pub plan_name: Values,
    /// Filter: `http_status_code` matches one of these codes or classes
    /// (`"404"`, `"5xx"`).
    #[serde(default)]
    pub status: Values,
    /// At most this many connections to this channel (default:
    /// `[channel] max_connections`).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Records per message for its clients that ask for none of their own
    /// (default: `[channel] records_per_message`).
    #[serde(default)]
    pub records_per_message: Option<usize>,
    /// Characters kept at each end of masked keys on this channel
    /// (default: `[channel] mask_keep`).
    #[serde(default)]
    pub mask_keep: Option<usize>,
}

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
    /// `replay_max_bytes` at `REPLAY_BYTES_PER_RECORD` bytes a record
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
    /// More tokens of the default channel (a rotation: the new one next
    /// to the old one).
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
    /// More files holding tokens of the default channel.
    #[serde(default)]
    pub token_files: Vec<TokenFileEntry>,
    /// The channels of `[[channel.stream]]`.
    #[serde(default)]
    pub stream: Vec<StreamSection>,
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

/// The most `[[channel.stream]]` sections: each takes one of the replay
/// log's 62 channel slots, and a slot a reload frees is used again only
/// after a restart ([`super::slots`]).
pub const MAX_STREAMS: usize = 32;

/// The longest stream id (it is a metric label value and a path segment).
pub const MAX_ID_BYTES: usize = 64;

/// The longest token label.
pub const MAX_LABEL_BYTES: usize = 64;

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

/// A token a channel accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelToken {
    /// The token, as read when the config was read (so a reload sees a
    /// new file content as a change).
    pub secret: Secret,
    /// The file it came from, if any.
    pub file: Option<PathBuf>,
    /// It opens nothing from this instant on (epoch ms).
    pub not_after: Option<i64>,
    /// Its name in `/status` (instead of its digest prefix).
    pub label: Option<String>,
    /// The config key that gave it (`channel.stream[0].token_files[1]`).
    pub key: String,
}

impl ChannelToken {
    /// How `/status`, `/metrics`, logs and the dashboard name the token:
    /// its label, or `sha256:` and the first 8 hex digits of its SHA-256
    /// (never the token).
    pub fn name(&self) -> String {
        match &self.label {
            Some(l) => l.clone(),
            None => digest_name(self.secret.expose()),
        }
    }
}

/// `sha256:` and the first 8 hex digits of the token's SHA-256: how a
/// token without a label is shown (32 bits of a hash tell nothing useful
/// about a token of 128 random bits or more).
pub fn digest_name(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let hex: String = d.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A `[[channel.stream]]`'s settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// Its id (the `<channel_id>` of its path).
    pub id: String,
    /// Its tokens.
    pub tokens: Vec<ChannelToken>,
    /// Which records it gets.
    pub filter: RouteFilter,
    /// Connections allowed at once.
    pub max_connections: usize,
    /// Records per message, for clients that ask for none of their own.
    pub records_per_message: usize,
    /// Characters kept at each end of masked keys; `None`: no masking.
    pub mask_keep: Option<usize>,
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
    /// The default channel's tokens (`token` or `token_file`, then
    /// `tokens` and `token_files`); none: the default channel is off
    /// (allowed only with streams).
    pub tokens: Vec<ChannelToken>,
    /// The default channel's connections allowed at once (and the default
    /// of the streams').
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
    /// The `[[channel.stream]]` channels.
    pub streams: Vec<StreamConfig>,
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
        let mut tokens = Vec::new();
        if let Some(t) = token(&s)? {
            tokens.push(t);
        }
        tokens.extend(token_list(&s.tokens, &s.token_files, key, base)?);
        if tokens.is_empty() && s.stream.is_empty() {
            return Err(ConfigError::invalid("channel.token", "a token is required: set `token_file` (or `token`)"));
        }
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
        let streams = streams(&s, base)?;
        check_unique(&s.channel_id, &tokens, &streams)?;
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
            tokens,
            max_connections: s.max_connections,
            ping_interval: secs(s.ping_interval_secs),
            records_per_message: s.records_per_message,
            replay_max_bytes,
            replay_max_age: secs(s.replay_max_age_secs),
            deprecated,
            mask_keep: s.mask_keep,
            tls,
            streams,
        })
    }

    /// Connections the listener may hold for subscribers: every channel's
    /// `max_connections` together.
    pub fn subscriber_capacity(&self) -> usize {
        let default = if self.tokens.is_empty() { 0 } else { self.max_connections };
        self.streams.iter().fold(default, |n, s| n.saturating_add(s.max_connections))
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
fn token(s: &ChannelSection) -> Result<Option<ChannelToken>, ConfigError> {
    let Some(token) =
        Secret::resolve(s.token.as_ref().map(Secret::expose), s.token_file.as_deref(), "channel.token", "channel.token_file")?
    else {
        return Ok(None);
    };
    let key = if s.token.is_some() { "channel.token" } else { "channel.token_file" };
    check_token(key, &token)?;
    Ok(Some(ChannelToken { secret: token, file: s.token_file.clone(), not_after: None, label: None, key: key.to_string() }))
}

/// The tokens of `tokens` and `token_files` under `key` (`channel`,
/// `channel.stream[0]`), each checked ([`check_token`], `not_after`,
/// `label`).
fn token_list(inline: &[TokenEntry], files: &[TokenFileEntry], key: &str, base: &Path) -> Result<Vec<ChannelToken>, ConfigError> {
    let mut out = Vec::new();
    for (i, t) in inline.iter().enumerate() {
        let key = format!("{key}.tokens[{i}]");
        let (secret, not_after, label) = match t {
            TokenEntry::Plain(t) => (t.0.clone(), None, None),
            TokenEntry::Table(t) => (t.token.0.clone(), t.not_after.as_deref(), t.label.clone()),
        };
        out.push(checked(secret, None, not_after, label, key)?);
    }
    for (i, f) in files.iter().enumerate() {
        let key = format!("{key}.token_files[{i}]");
        let (mut path, not_after, label) = match f {
            TokenFileEntry::Plain(p) => (p.clone(), None, None),
            TokenFileEntry::Table(t) => (t.file.clone(), t.not_after.as_deref(), t.label.clone()),
        };
        resolve(base, &mut path);
        let secret = Secret::resolve(None, Some(&path), &key, &key)?.ok_or_else(|| ConfigError::invalid(&key, "no token"))?;
        out.push(checked(secret, Some(path), not_after, label, key)?);
    }
    Ok(out)
}

/// A token with its settings, checked.
fn checked(
    secret: Secret,
    file: Option<PathBuf>,
    not_after: Option<&str>,
    label: Option<String>,
    key: String,
) -> Result<ChannelToken, ConfigError> {
    if secret.expose().is_empty() {
        return Err(ConfigError::invalid(&key, "is empty"));
    }
    check_token(&key, &secret)?;
    let not_after = match not_after {
        None => None,
        Some(t) => Some(rfc3339(t).ok_or_else(|| {
            ConfigError::invalid(format!("{key}.not_after"), format!("{t:?} is not an RFC 3339 instant with a zone (2026-07-01T00:00:00Z)"))
        })?),
    };
    if let Some(l) = &label {
        if !valid_name(l, MAX_LABEL_BYTES) {
            return Err(ConfigError::invalid(
                format!("{key}.label"),
                format!("1 to {MAX_LABEL_BYTES} characters: letters, digits, `.`, `_`, `-`"),
            ));
        }
    }
    Ok(ChannelToken { secret, file, not_after, label, key })
}

/// An RFC 3339 instant with its zone (`Z` or an offset), as epoch ms.
fn rfc3339(t: &str) -> Option<i64> {
    let zoned = t.ends_with(['Z', 'z']) || t.rsplit_once(['T', 't']).is_some_and(|(_, time)| time.contains(['+', '-']));
    zoned.then(|| crate::time::parse_iso(t)).flatten()
}

/// True for 1 to `max` bytes of letters, digits, `.`, `_` and `-`.
fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The `[[channel.stream]]` channels.
fn streams(s: &ChannelSection, base: &Path) -> Result<Vec<StreamConfig>, ConfigError> {
    if s.stream.len() > MAX_STREAMS {
        return Err(ConfigError::invalid("channel.stream", format!("at most {MAX_STREAMS} streams")));
    }
    let mut out = Vec::new();
    for (i, st) in s.stream.iter().enumerate() {
        let key = format!("channel.stream[{i}]");
        if !valid_name(&st.id, MAX_ID_BYTES) {
            return Err(ConfigError::invalid(
                format!("{key}.id"),
                format!("1 to {MAX_ID_BYTES} characters: letters, digits, `.`, `_`, `-` (it is a path segment and a metric label)"),
            ));
        }
        let tokens = token_list(&st.tokens, &st.token_files, &key, base)?;
        if tokens.is_empty() {
            return Err(ConfigError::invalid(format!("{key}.tokens"), "a stream needs a token: set `token_files` (or `tokens`)"));
        }
        let fields: Vec<(Field, Vec<String>)> = [
            (Field::OrgUuid, &st.org_uuid),
            (Field::OrgName, &st.org_name),
            (Field::SubOrgUuid, &st.sub_org_uuid),
            (Field::SubOrgName, &st.sub_org_name),
            (Field::ServiceId, &st.service_id),
            (Field::ServiceName, &st.service_name),
            (Field::PackageUuid, &st.package_uuid),
            (Field::PackageName, &st.package_name),
            (Field::PlanUuid, &st.plan_uuid),
            (Field::PlanName, &st.plan_name),
        ]
        .into_iter()
        .map(|(f, v)| (f, v.clone().into_vec()))
        .collect();
        let filter = RouteFilter::new(fields, &st.status.clone().into_vec(), &key).map_err(|(k, m)| ConfigError::invalid(k, m))?;
        let max_connections = st.max_connections.unwrap_or(s.max_connections);
        if max_connections == 0 {
            return Err(ConfigError::invalid(format!("{key}.max_connections"), "must be > 0"));
        }
        let records_per_message = st.records_per_message.unwrap_or(s.records_per_message);
        if records_per_message == 0 {
            return Err(ConfigError::invalid(format!("{key}.records_per_message"), "must be > 0"));
        }
        out.push(StreamConfig {
            id: st.id.clone(),
            tokens,
            filter,
            max_connections,
            records_per_message,
            mask_keep: st.mask_keep.or(s.mask_keep),
        });
    }
    Ok(out)
}

/// Refuses two streams with one id (or the default channel's), a token
/// given twice (one token opens one channel) and a label given twice in
/// one channel.
fn check_unique(channel_id: &str, default: &[ChannelToken], streams: &[StreamConfig]) -> Result<(), ConfigError> {
    for (i, st) in streams.iter().enumerate() {
        if st.id == channel_id {
            return Err(ConfigError::invalid(
                format!("channel.stream[{i}].id"),
                format!("{:?} is the default channel's channel_id: each channel needs its own id", st.id),
            ));
        }
        if let Some(j) = streams[..i].iter().position(|o| o.id == st.id) {
            return Err(ConfigError::invalid(format!("channel.stream[{i}].id"), format!("{:?} is channel.stream[{j}]'s id too", st.id)));
        }
    }
    let all: Vec<(usize, &ChannelToken)> = default
        .iter()
        .map(|t| (0, t))
        .chain(streams.iter().enumerate().flat_map(|(i, s)| s.tokens.iter().map(move |t| (i + 1, t))))
        .collect();
    for (n, (chan, t)) in all.iter().enumerate() {
        if let Some((_, first)) = all[..n].iter().find(|(_, o)| o.secret == t.secret) {
            return Err(ConfigError::invalid(
                &t.key,
                format!("the same token as {}: each token opens one channel (make one with `calllog-bridge token new`)", first.key),
            ));
        }
        if let Some(l) = &t.label {
            if let Some((_, first)) = all[..n].iter().find(|(c, o)| c == chan && o.label.as_ref() == Some(l)) {
                return Err(ConfigError::invalid(format!("{}.label", t.key), format!("{l:?} is {}'s label too", first.key)));
            }
        }
    }
    Ok(())
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

    fn streams(text: &str) -> Result<ChannelConfig, ConfigError> {
        let c: ChannelSection = toml::from_str(text).unwrap();
        ChannelConfig::from_section(c, Path::new(""))
    }

    #[test]
    fn streams_with_their_tokens_filters_and_limits() {
        let c = streams(
            r#"
token = "0123456789abcdef0123"
max_connections = 7
mask_keep = 2
[[stream]]
id = "partner-a"
tokens = ["partner-a-token-0123456789", { token = "partner-a-token-new-0123", not_after = "2026-07-01T00:00:00Z", label = "new" }]
org_name = ["Partner A"]
status = ["5xx", "404"]
[[stream]]
id = "partner-b"
tokens = ["partner-b-token-0123456789"]
org_uuid = "org-b"
max_connections = 2
mask_keep = 4
"#,
        )
        .unwrap();
        assert_eq!(c.tokens.len(), 1);
        let (a, b) = (&c.streams[0], &c.streams[1]);
        assert_eq!((a.id.as_str(), a.max_connections, a.mask_keep, a.records_per_message), ("partner-a", 7, Some(2), 1));
        assert_eq!((b.id.as_str(), b.max_connections, b.mask_keep), ("partner-b", 2, Some(4)));
        assert_eq!(a.filter.describe(), "org_name=Partner A; status=5xx,404");
        assert_eq!(b.filter.describe(), "org_uuid=org-b");
        assert_eq!(a.tokens[1].not_after, Some(1_782_864_000_000));
        assert_eq!((a.tokens[1].name(), a.tokens[1].key.as_str()), ("new".to_string(), "channel.stream[0].tokens[1]"));
        assert!(a.tokens[0].name().starts_with("sha256:") && a.tokens[0].name().len() == 15, "{}", a.tokens[0].name());
        assert_eq!(c.subscriber_capacity(), 7 + 7 + 2);
        // Streams without a default token: the default channel is off.
        let c = streams("[[stream]]\nid = \"x\"\ntokens = [\"partner-x-token-0123456\"]\n").unwrap();
        assert!(c.tokens.is_empty());
        assert_eq!(c.subscriber_capacity(), 5);
    }

    #[test]
    fn stream_mistakes_name_their_key() {
        let e = |text: &str| streams(text).unwrap_err().to_string();
        let t = "token = \"0123456789abcdef0123\"\n";
        let err = e(&format!("{t}[[stream]]\nid = \"a\"\ntokens = [\"0123456789abcdef0123\"]\n"));
        assert!(err.contains("channel.stream[0].tokens[0]") && err.contains("the same token as channel.token"), "{err}");
        assert!(!err.contains("0123456789abcdef0123"), "the token is not shown: {err}");
        let err = e(&format!(
            "{t}[[stream]]\nid = \"a\"\ntokens = [\"tok-a-0123456789\"]\n[[stream]]\nid = \"a\"\ntokens = [\"tok-b-0123456789\"]\n"
        ));
        assert!(err.contains("channel.stream[1].id") && err.contains("channel.stream[0]'s id too"), "{err}");
        let err = e(&format!("{t}[[stream]]\nid = \"local\"\ntokens = [\"tok-a-0123456789\"]\n"));
        assert!(err.contains("channel.stream[0].id") && err.contains("default channel"), "{err}");
        let err = e(&format!("{t}[[stream]]\nid = \"a/b\"\ntokens = [\"tok-a-0123456789\"]\n"));
        assert!(err.contains("channel.stream[0].id"), "{err}");
        let err = e(&format!("{t}[[stream]]\nid = \"a\"\n"));
        assert!(err.contains("channel.stream[0].tokens") && err.contains("needs a token"), "{err}");
        let err = e(&format!("{t}[[stream]]\nid = \"a\"\ntokens = [\"aaaaaaaaaaaaaaaaaaaa\"]\n"));
        assert!(err.contains("channel.stream[0].tokens[0]") && err.contains("too little variety"), "{err}");
        let err = e(&format!("{t}[[stream]]\nid = \"a\"\ntokens = [{{ token = \"tok-a-0123456789\", not_after = \"2026-07-01\" }}]\n"));
        assert!(err.contains("channel.stream[0].tokens[0].not_after"), "{err}");
        let err =
            e(&format!("{t}[[stream]]\nid = \"a\"\ntokens = [{{ token = \"tok-a-0123456789\", not_after = \"2026-07-01T00:00:00\" }}]\n"));
        assert!(err.contains("not_after") && err.contains("with a zone"), "{err}");
        let err = e(&format!("{t}[[stream]]\nid = \"a\"\ntokens = [\"tok-a-0123456789\"]\nstatus = [\"6xx\"]\n"));
        assert!(err.contains("channel.stream[0].status"), "{err}");
        let err = e(&format!(
            "{t}[[stream]]\nid = \"a\"\ntokens = [{{ token = \"tok-a-0123456789\", label = \"x\" }}, {{ token = \"tok-b-0123456789\", label = \"x\" }}]\n"
        ));
        assert!(err.contains("channel.stream[0].tokens[1].label"), "{err}");
        let err = e("max_connections = 3\n");
        assert!(err.contains("channel.token") && err.contains("a token is required"), "{err}");
        // A token file's problem names its entry.
        let err = e(&format!("{t}[[stream]]\nid = \"a\"\ntoken_files = [\"/nonexistent/a.token\"]\n"));
        assert!(err.contains("channel.stream[0].token_files[0]") && err.contains("/nonexistent/a.token"), "{err}");
    }

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
