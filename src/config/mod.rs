//! TOML configuration -> validated, typed settings.
//!
//! Invariant: this is the only code that sees raw TOML. One typed struct per
//! concern (one file per section under `config/`); unknown keys are
//! rejected by serde with the key's name and line; [`Config::validate`]
//! checks values and names the offending key (`channel.listen`, ...).
//! A config error exits with [`EXIT_CONFIG`].

mod channel;
mod enrich;
mod output;
mod rejects;
mod source;
mod status;
mod upstream;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use channel::{check_token, ChannelConfig, MIN_TOKEN_BYTES};
pub use enrich::EnrichConfig;
pub use output::FileOutputConfig;
pub use rejects::RejectsConfig;
pub use source::{ReadFrom, SourceConfig};
pub use status::{ws_origin, StatusConfig};
pub use upstream::{AuthFailures, Compression, UpstreamAuth, UpstreamConfig, UpstreamFormat};

/// Exit code for an invalid configuration (EX_USAGE, as linkerd2-proxy).
/// systemd's `RestartPreventExitStatus=` names it so a bad config is not
/// restarted in a loop.
pub const EXIT_CONFIG: i32 = 64;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where checkpoints, the rejects file and the upstream spool live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace` or an
    /// `EnvFilter` directive); `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Files to follow. At least one.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Lookup tables and masking.
    #[serde(default)]
    pub enrich: EnrichConfig,
    /// Local archive of records (NDJSON or ECLS JSON).
    pub file_output: Option<FileOutputConfig>,
    /// The local Call Log Stream (WebSocket).
    pub channel: Option<ChannelConfig>,
    /// Batches over HTTP to a central collector.
    pub upstream: Option<UpstreamConfig>,
    /// Metrics, status, health and the dashboard.
    #[serde(default)]
    pub status: StatusConfig,
    /// The bound of the rejects file on disk.
    #[serde(default)]
    pub rejects: RejectsConfig,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/calllog-bridge")
}

fn default_log_level() -> String {
    "info".to_string()
}

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
    /// TOML syntax, a wrong type, or an unknown key (the message names the
    /// key and its line).
    #[error("invalid config file {path}: {message}")]
    Syntax {
        /// The config file.
        path: PathBuf,
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
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates config text; `path` is used in messages and
    /// to resolve relative paths (relative to the config file's directory).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        cfg.resolve_paths(&base);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Makes relative paths relative to the config file's directory.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.state_dir);
        for s in &mut self.sources {
            s.resolve_paths(base);
        }
        self.enrich.resolve_paths(base);
        if let Some(o) = &mut self.file_output {
            fix(&mut o.path);
        }
        if let Some(c) = &mut self.channel {
            c.resolve_paths(base);
        }
        if let Some(u) = &mut self.upstream {
            u.resolve_paths(base);
        }
    }

    /// Checks values; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sources.is_empty() {
            return Err(ConfigError::invalid("source", "at least one [[source]] section is required"));
        }
        for (i, s) in self.sources.iter().enumerate() {
            s.validate(&format!("source[{i}]"))?;
        }
        self.enrich.validate("enrich")?;
        if let Some(o) = &self.file_output {
            o.validate("file_output")?;
        }
        if let Some(c) = &self.channel {
            c.validate("channel")?;
        }
        if let Some(u) = &self.upstream {
            u.validate("upstream")?;
        }
        self.status.validate("status")?;
        self.rejects.validate("rejects")?;
        if self.file_output.is_none() && self.channel.is_none() && self.upstream.is_none() {
            return Err(ConfigError::invalid(
                "file_output",
                "no output configured: add at least one of [file_output], [channel], [upstream]",
            ));
        }
        Ok(())
    }
}

/// Parses a listen address (`127.0.0.1:8791`, `[::1]:8791`, `0.0.0.0:8791`,
/// or `localhost:8791`, which means 127.0.0.1), naming the key on error.
/// No other host name is resolved: a listener binds an address.
pub(crate) fn parse_listen(key: &str, v: &str) -> Result<std::net::SocketAddr, ConfigError> {
    if let Some(port) = v.strip_prefix("localhost:") {
        return port
            .parse::<u16>()
            .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)))
            .map_err(|e| ConfigError::invalid(key, format!("`{v}`: bad port ({e})")));
    }
    v.parse().map_err(|_| ConfigError::invalid(key, format!("`{v}` is not an address:port (e.g. 127.0.0.1:8791 or localhost:8791)")))
}

/// A secret given inline or read from a file (`token` / `token_file`).
/// Never printed: `Debug` shows `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
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

/// Deserializes an inline secret key (`token`, `bearer_token`, ...) as a
/// [`Secret`], so that printing the config (`check-config`) does not show it.
pub(crate) fn inline_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(Secret::new))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/calllog-bridge/config.toml"))
    }

    const MINIMAL: &str = r#"
state_dir = "/tmp/x"
[[source]]
paths = ["/var/log/le/access*.log"]
[file_output]
path = "/tmp/out.ndjson"
"#;

    #[test]
    fn minimal_config_loads() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.sources.len(), 1);
        assert_eq!(c.status.listen.to_string(), "127.0.0.1:8791");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = load(&format!("{MINIMAL}\n[status]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn invalid_value_names_the_key() {
        let e = load(&format!("{MINIMAL}\n[status]\nlisten = \"nowhere\"\n")).unwrap_err().to_string();
        assert!(e.contains("status.listen"), "{e}");
    }

    #[test]
    fn localhost_is_accepted_in_every_listen_key() {
        let c = load(&format!("{MINIMAL}\n[status]\nlisten = \"localhost:9100\"\n[channel]\nlisten = \"localhost:9101\"\ntoken = \"token-0123456789abcdef\"\n"))
            .unwrap();
        assert_eq!(c.status.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(c.channel.unwrap().listen_addr().unwrap().to_string(), "127.0.0.1:9101");
        let e = load(&format!("{MINIMAL}\n[status]\nlisten = \"localhost:http\"\n")).unwrap_err().to_string();
        assert!(e.contains("status.listen") && e.contains("bad port"), "{e}");
    }

    #[test]
    fn no_source_is_an_error() {
        let e = load("[file_output]\npath = \"/tmp/o\"\n").unwrap_err().to_string();
        assert!(e.contains("`source`"), "{e}");
    }

    #[test]
    fn relative_globs_follow_the_config_file_but_leading_wildcards_match_anywhere() {
        let c = load("[[source]]\npaths = [\"logs/*.log\"]\nexclude = [\"*.tmp\", \"logs/old*\"]\n[file_output]\npath = \"o\"\n").unwrap();
        assert_eq!(c.sources[0].paths, ["/etc/calllog-bridge/logs/*.log"]);
        assert_eq!(c.sources[0].exclude, ["*.tmp", "/etc/calllog-bridge/logs/old*"]);
    }

    #[test]
    fn rejects_bound_defaults_and_checks() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.rejects.rotation(), crate::rotating::Rotation { rotate_bytes: 16 << 20, keep_files: 3 });
        let c = load(&format!("{MINIMAL}\n[rejects]\nrotate_bytes = 65536\nkeep_files = 0\n")).unwrap();
        assert_eq!((c.rejects.rotate_bytes, c.rejects.keep_files), (65536, 0));
        let e = load(&format!("{MINIMAL}\n[rejects]\nrotate_bytes = 0\n")).unwrap_err().to_string();
        assert!(e.contains("rejects.rotate_bytes"), "{e}");
        let e = load(&format!("{MINIMAL}\n[upstream]\nurl = \"http://c/\"\ndead_letter_rotate_bytes = 10\n")).unwrap_err().to_string();
        assert!(e.contains("upstream.dead_letter_rotate_bytes"), "{e}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
    }
}
