//! The vocabulary of typed settings that every component uses: what a
//! config problem is ([`ConfigError`], always naming its key), secrets
//! ([`Secret`]), listen addresses, durations from `*_ms` / `*_secs` keys,
//! relative paths; and the sections of the parts every bridge has
//! (`[status]`, `[enrich]`, `[rejects]`, the file `[[source]]`) and the
//! top-level bounds of the bridge's own cost ([`footprint`]).
//!
//! Invariant: a leaf. Components (sinks, sources, telemetry, enrich) take
//! their settings from here or declare their own section next to their
//! code; [`crate::config`] puts the whole file together. Each section is
//! read in two steps: the section as written (serde, unknown keys refused
//! with their line), then its typed settings (`Duration`, `SocketAddr`,
//! enums for exclusive options, secrets read from their files), checked
//! with an error naming the key. Tasks never see `*_ms: u64`.

mod enrich;
pub mod footprint;
mod rejects;
mod source;
mod status;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use enrich::EnrichConfig;
pub use rejects::{check_rotate_bytes, RejectsConfig, MIN_ROTATE_BYTES};
pub use source::{
    default_max_line_bytes, ReadFrom, SourceConfig, SourceSection, DEFAULT_MAX_SCAN_ENTRIES, DEFAULT_MAX_SCAN_MS, DEFAULT_READ_DELAY_MS,
    MAX_READ_DELAY_MS,
};
pub use status::{ws_origin, StatusConfig, StatusSection};

/// Exit code for an invalid configuration (EX_USAGE, as linkerd2-proxy).
/// systemd's `RestartPreventExitStatus=` names it so a bad config is not
/// restarted in a loop.
pub const EXIT_CONFIG: i32 = 64;

/// A configuration problem, naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type, or an unknown key (the message shows
    /// its line).
    #[error("{}", match key {
        Some(key) => format!("invalid config key `{key}` in {}: {message}", path.display()),
        None => format!("invalid config file {}: {message}", path.display()),
    })]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// The key, as a dotted path, when the mistake is a key's (an
        /// unknown key, a value of the wrong type); `None` for the TOML
        /// syntax itself.
        key: Option<String>,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value that parses but is not acceptable.
    #[error("invalid config key `{key}`: {message}")]
    Invalid {
        /// The key, as a dotted path (`source[0].paths`, `channel.listen`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A well-formed value that does not work on this host: a glob whose
    /// directory does not exist, a lookup file that does not load, a
    /// directory that is not writable, a listen address in use (see
    /// [`crate::preflight`]).
    #[error("config key `{key}`: {message}")]
    Unusable {
        /// The key, as a dotted path.
        key: String,
        /// What does not work, said once.
        message: String,
    },
}

impl ConfigError {
    /// A validation error for `key`.
    pub fn invalid(key: impl Into<String>, message: impl fmt::Display) -> Self {
        ConfigError::Invalid { key: key.into(), message: message.to_string() }
    }

    /// A value that is well-formed but does not work on this host (a
    /// directory that does not exist, a port in use), for `key`.
    pub fn unusable(key: impl Into<String>, message: impl fmt::Display) -> Self {
        ConfigError::Unusable { key: key.into(), message: message.to_string() }
    }

    /// The key the error is about, when it names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } | ConfigError::Unusable { key, .. } => Some(key),
            ConfigError::Syntax { key, .. } => key.as_deref(),
            ConfigError::Read { .. } => None,
        }
    }

    /// The error with `hint` (what was probably meant) on a line of its own
    /// at the end, when there is one.
    pub fn hint(mut self, hint: Option<String>) -> Self {
        if let Some(h) = hint {
            match &mut self {
                ConfigError::Syntax { message, .. } | ConfigError::Invalid { message, .. } | ConfigError::Unusable { message, .. } => {
                    message.push('\n');
                    message.push_str(&h);
                }
                ConfigError::Read { .. } => {}
            }
        }
        self
    }
}

/// Why a section could not be read.
#[derive(Debug)]
pub enum SectionError {
    /// As written: a wrong type or an unknown key (the error has its
    /// place in the file; [`crate::config`] renders it with the line).
    Toml(toml::de::Error),
    /// A value that is not acceptable (the error names its key).
    Invalid(ConfigError),
}

impl From<ConfigError> for SectionError {
    fn from(e: ConfigError) -> Self {
        SectionError::Invalid(e)
    }
}

/// Reads a section as written (serde; unknown keys are refused with
/// their place in the file).
pub fn section<T: serde::de::DeserializeOwned>(value: toml::de::ValueDeserializer<'_>) -> Result<T, SectionError> {
    T::deserialize(value).map_err(SectionError::Toml)
}

/// Parses a listen address (`127.0.0.1:8791`, `[::1]:8791`, `0.0.0.0:8791`,
/// or `localhost:8791`, which means 127.0.0.1), naming the key on error.
/// No other host name is resolved: a listener binds an address.
pub fn parse_listen(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    if let Some(port) = v.strip_prefix("localhost:") {
        return port
            .parse::<u16>()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .map_err(|e| ConfigError::invalid(key, format!("`{v}`: bad port ({e})")));
    }
    v.parse().map_err(|_| ConfigError::invalid(key, format!("`{v}` is not an address:port (e.g. 127.0.0.1:8791 or localhost:8791)")))
}

/// A `*_ms` key's value.
pub fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// A `*_secs` key's value.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Makes a relative path relative to `base` (the config file's
/// directory); an empty `base` leaves it as written.
pub fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative() && !base.as_os_str().is_empty() {
        *p = base.join(&*p);
    }
}

/// The parent directory of a file the bridge writes (`.` for a bare
/// file name).
pub fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A secret given inline or read from a file (`token` / `token_file`).
/// Never printed: `Debug` shows `<redacted>`. Two secrets compare equal
/// in constant time (a reload compares the old token with the new one).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(v: impl Into<String>) -> Self {
        Secret(v.into())
    }

    /// The secret value. Callers compare it in constant time and never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Resolves an inline value or a file (trailing newline trimmed);
    /// `key` names the inline key, `file_key` the file key in errors.
    pub fn resolve(inline: Option<&str>, file: Option<&Path>, key: &str, file_key: &str) -> Result<Option<Secret>, ConfigError> {
        match (inline, file) {
            (Some(_), Some(_)) => Err(ConfigError::invalid(key, format!("give either `{key}` or `{file_key}`, not both"))),
            (Some(""), None) => Err(ConfigError::invalid(key, "is empty")),
            (Some(v), None) => Ok(Some(Secret::new(v))),
            (None, Some(p)) => {
                let v =
                    std::fs::read_to_string(p).map_err(|e| ConfigError::invalid(file_key, format!("cannot read {}: {e}", p.display())))?;
                let v = v.trim_end_matches(['\n', '\r']);
                if v.is_empty() {
                    return Err(ConfigError::invalid(file_key, format!("{} is empty", p.display())));
                }
                Ok(Some(Secret::new(v)))
            }
            (None, None) => Ok(None),
        }
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Deserializes an inline secret key (`token`, `bearer_token`, ...) as a
/// [`Secret`], so that printing a section does not show it.
pub fn inline_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(Secret::new))
}

/// The shortest token the bridge accepts from its clients, in bytes:
/// 128 bits when the token is random (`openssl rand -hex 16` gives 32
/// characters), too long to guess over a socket.
pub const MIN_TOKEN_BYTES: usize = 16;

/// The fewest different characters a token may hold. A random token has
/// many (`openssl rand -hex 8`, the shortest accepted, has fewer than 6 in
/// about 1 of 25,000 draws); a typed one of 16 identical characters, or two
/// or three alternating, is guessed in a handful of tries.
pub const MIN_TOKEN_DISTINCT_CHARS: usize = 6;

/// The one token rule, for every token the bridge checks (the channel's,
/// which the dashboard uses too): refuses a token that is empty, shorter
/// than [`MIN_TOKEN_BYTES`], holds whitespace or control characters (a
/// token of one space, a stray blank from a copy and paste: none of it
/// survives a URL's `?key=` intact), or has too little variety (fewer than
/// [`MIN_TOKEN_DISTINCT_CHARS`] different characters, or one short piece
/// repeated: `abcdabcdabcdabcd`). `key` names the config key in the error;
/// the token itself never appears in it.
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
    let chars: Vec<char> = t.chars().collect();
    let distinct = chars.iter().collect::<std::collections::HashSet<_>>().len();
    let weakness = if distinct < MIN_TOKEN_DISTINCT_CHARS {
        Some(format!("only {distinct} different character{}", if distinct == 1 { "" } else { "s" }))
    } else {
        (1..=chars.len() / 2)
            .find(|&p| chars.iter().skip(p).zip(&chars).all(|(a, b)| a == b))
            .map(|p| format!("one piece of {p} characters repeated"))
    };
    match weakness {
        Some(w) => Err(ConfigError::invalid(
            key,
            format!("the token has too little variety ({w}); use a random one (for example `openssl rand -hex 16`)"),
        )),
        None => Ok(()),
    }
}

/// Reads a PEM file named by `key`, so that `check-config` (and `run` at
/// start-up) refuse a missing file with exit 64 naming the key.
pub fn read_pem(path: &Path, key: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// A PEM file named in the config, with its content as read when the
/// config was read (a reload that finds new content is a change).
/// `Debug` shows the path only: a client key is a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    /// The file.
    pub path: PathBuf,
    /// Its content.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pem({}, {} bytes)", self.path.display(), self.bytes.len())
    }
}

/// Reads `path`, checking that it holds at least one PEM certificate and
/// nothing that fails to decode.
pub fn pem_certificates(path: PathBuf, key: &str) -> Result<Pem, ConfigError> {
    let pem = read_pem(&path, key)?;
    let mut n = 0;
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        c.map_err(|e| ConfigError::invalid(key, format!("{} is not valid PEM: {e}", path.display())))?;
        n += 1;
    }
    if n == 0 {
        return Err(ConfigError::invalid(key, format!("{} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)", path.display())));
    }
    Ok(Pem { path, bytes: pem })
}

/// Reads `path`, checking that it holds a PEM private key (PKCS#8,
/// PKCS#1 or SEC1).
pub fn pem_private_key(path: PathBuf, key: &str) -> Result<Pem, ConfigError> {
    let pem = read_pem(&path, key)?;
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(_)) => Ok(Pem { path, bytes: pem }),
        Ok(None) => Err(ConfigError::invalid(key, format!("{} holds no PEM private key", path.display()))),
        Err(e) => Err(ConfigError::invalid(key, format!("{} is not valid PEM: {e}", path.display()))),
    }
}

/// The longest `host` in bytes: what a bridge's `host` setting may be, and
/// what a hub keeps of a record's `host` read from Kafka.
pub const MAX_HOST_BYTES: usize = 255;

/// Why `path` cannot be used, said so that the operator can fix it: when
/// the error is "permission denied" because a directory on the way cannot
/// be searched (entered) by this user, that directory is named (a typo'd
/// directory under `/opt/le`, which the user may not enter, is reported on
/// `/opt/le`, not on the typo: whether the typo exists cannot be told);
/// otherwise `path: error`.
pub fn why_unreachable(path: &Path, e: &std::io::Error) -> String {
    match (e.kind(), unsearchable_ancestor(path)) {
        (std::io::ErrorKind::PermissionDenied, Some(dir)) => format!(
            "{} cannot be reached: this user may not search (enter) {} (Permission denied; it needs the `x` permission)",
            path.display(),
            dir.display()
        ),
        _ => format!("{}: {e}", path.display()),
    }
}

/// The first directory on the way to `path` that this user cannot search:
/// the last ancestor before a `stat` of the next component fails with
/// "permission denied". `None` when every step can be taken (the path
/// itself may still be unreadable).
pub fn unsearchable_ancestor(path: &Path) -> Option<PathBuf> {
    let mut reached = PathBuf::new();
    for part in path.components() {
        let next = reached.join(part);
        if !reached.as_os_str().is_empty() {
            match std::fs::symlink_metadata(&next) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Some(reached),
                Err(_) => return None,
            }
        }
        reached = next;
    }
    None
}

/// The bridge's `host` setting: the name it stamps on every record it
/// reads (the `host` member after `sync_delay_ms`), so a hub and anyone
/// downstream can tell the records of a fleet's bridges apart. Default:
/// the machine's host name. 1 to [`MAX_HOST_BYTES`] printable characters.
pub fn host(key: &str, written: Option<String>) -> Result<String, ConfigError> {
    match written {
        Some(h) if h.is_empty() || h.len() > MAX_HOST_BYTES || h.chars().any(char::is_control) => {
            Err(ConfigError::invalid(key, "must be 1 to 255 printable characters"))
        }
        Some(h) => Ok(h),
        None => Ok(machine_host_name()),
    }
}

/// The kernel's host name (`localhost` when it cannot be read). Read from
/// /proc/sys/kernel/hostname (what gethostname(2) returns on Linux, the
/// only platform the bridge ships for) rather than through a crate: one
/// file read at start, no unsafe and no dependency.
pub fn machine_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
    }

    #[test]
    fn secrets_compare_by_value() {
        assert_eq!(Secret::new("token-0123456789"), Secret::new("token-0123456789"));
        assert_ne!(Secret::new("token-0123456789"), Secret::new("token-0123456780"));
        assert_ne!(Secret::new("token"), Secret::new("token-longer"));
    }

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
        // Too little variety, whatever the length.
        check("aaaaaaaaaaaaaaaa", false);
        check("abababababababababababababab", false);
        check("abcdeabcdeabcdeabcde", false);
        check("abcdefabcdefabcdef", false);
        check("Xy3#Xy3#Xy3#Xy3#", false);
        check("abcdefgh12abcdefgh12", false);
        check("abcdefgh12abcdefgh1", true);
        check("replace-with-openssl-rand-hex-16", true);
        let e = check_token("channel.token", &Secret::new("aaaaaaaaaaaaaaaa")).unwrap_err().to_string();
        assert!(e.contains("too little variety (only 1 different character)"), "{e}");
        let e = check_token("channel.token", &Secret::new("abcdefabcdefabcdef")).unwrap_err().to_string();
        assert!(e.contains("too little variety (one piece of 6 characters repeated)"), "{e}");
    }
}
