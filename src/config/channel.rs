//! `[channel]`: the local Call Log Stream (WebSocket).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{parse_listen, ConfigError, Secret};

/// The `[channel]` section as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
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
    #[serde(default, deserialize_with = "super::inline_secret")]
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

impl ChannelConfig {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.token_file, &mut self.tls_cert, &mut self.tls_key].into_iter().flatten() {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
    }

    /// The parsed listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_listen("channel.listen", &self.listen)
    }

    /// The token from `token` or `token_file`, refused when weak
    /// ([`check_token`]).
    pub fn token(&self) -> Result<Secret, ConfigError> {
        let token =
            Secret::resolve(self.token.as_ref().map(Secret::expose), self.token_file.as_deref(), "channel.token", "channel.token_file")?
                .ok_or_else(|| ConfigError::invalid("channel.token", "a token is required: set `token_file` (or `token`)"))?;
        let key = if self.token.is_some() { "channel.token" } else { "channel.token_file" };
        check_token(key, &token)?;
        Ok(token)
    }

    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.token()?;
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(format!("{key}.max_connections"), "must be > 0"));
        }
        if self.records_per_message == 0 {
            return Err(ConfigError::invalid(format!("{key}.records_per_message"), "must be > 0"));
        }
        if self.ping_interval_secs == 0 {
            return Err(ConfigError::invalid(format!("{key}.ping_interval_secs"), "must be > 0"));
        }
        if self.channel_id.is_empty() || self.channel_id.contains('/') {
            return Err(ConfigError::invalid(format!("{key}.channel_id"), "must be non-empty and contain no `/`"));
        }
        if self.area.is_empty() || self.area.contains('/') {
            return Err(ConfigError::invalid(format!("{key}.area"), "must be non-empty and contain no `/`"));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::invalid(format!("{key}.tls_cert"), "`tls_cert` and `tls_key` go together"));
        }
        if let (Some(cert), Some(tls_key)) = (&self.tls_cert, &self.tls_key) {
            check_pem(&format!("{key}.tls_cert"), cert, false)?;
            check_pem(&format!("{key}.tls_key"), tls_key, true)?;
        }
        Ok(())
    }
}

/// The shortest token the bridge accepts from its clients, in bytes:
/// 128 bits when the token is random (`openssl rand -hex 16` gives 32
/// characters), too long to guess over a socket.
pub const MIN_TOKEN_BYTES: usize = 16;

/// Refuses a token the bridge would check that is empty, shorter than
/// [`MIN_TOKEN_BYTES`], or holds whitespace or control characters (a
/// token of one space, a stray blank from a copy and paste: none of it
/// survives a URL's `?key=` intact). `key` names the config key in the
/// error; the token itself never appears in it.
pub fn check_token(key: &str, token: &Secret) -> Result<(), ConfigError> {
    let t = token.expose();
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::invalid(key, "the token contains whitespace or control characters; use printable characters only"));
    }
    if t.len() < MIN_TOKEN_BYTES {
        return Err(ConfigError::invalid(
            key,
            format!("the token is {} bytes; at least {MIN_TOKEN_BYTES} are required (for example `openssl rand -hex 16`)", t.len()),
        ));
    }
    Ok(())
}

/// Checks that `path` holds a PEM certificate (or, with `private_key`, a
/// PEM private key), naming `key` when it does not.
fn check_pem(key: &str, path: &Path, private_key: bool) -> Result<(), ConfigError> {
    let pem = std::fs::read(path).map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))?;
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
    fn weak_tokens_are_refused_naming_the_key_never_the_token() {
        let check = |t: &str, ok: bool| {
            let r = check_token("channel.token", &Secret::new(t));
            assert_eq!(r.is_ok(), ok, "{t:?}: {r:?}");
            if let Err(e) = r {
                let msg = e.to_string();
                assert!(msg.contains("channel.token"), "{msg}");
                assert!(t.trim().is_empty() || !msg.contains(t), "the token is not echoed: {msg}");
            }
        };
        check("", false);
        check(" ", false);
        check("                ", false);
        check("short-token", false);
        check("0123456789abcde", false);
        check("0123456789abcdef", true);
        check("0123456789abcdef ", false);
        check("01234567 89abcdef", false);
        check("0123456789abcdef\t", false);
        check("0123456789abcdef\u{7f}", false);
        check("ünïcödé-tökén-ok", true);
    }

    #[test]
    fn the_token_file_is_named_when_it_holds_the_weak_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("channel.token");
        std::fs::write(&f, "tiny\n").unwrap();
        let c: ChannelConfig = toml::from_str(&format!("token_file = {:?}", f.display().to_string())).unwrap();
        let e = c.token().unwrap_err().to_string();
        assert!(e.contains("channel.token_file") && e.contains("4 bytes"), "{e}");
    }
}
