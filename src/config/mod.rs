//! The config file: TOML -> the typed settings of the whole bridge.
//!
//! Invariant: this is the only code that sees TOML text. The file is
//! parsed once; each `[[source]]` goes to the source kind its `kind` names
//! ([`crate::source::KINDS`]), each sink section to the sink that declares
//! it ([`crate::sink::REGISTRY`]), the rest (`host`, `state_dir`, `log_level`,
//! `[enrich]`, `[status]`, `[rejects]`) to [`crate::settings`]. Unknown keys are
//! refused by serde with the key's line; a value that is not acceptable is
//! a [`ConfigError::Invalid`] naming its key (`channel.listen`). Relative
//! paths are resolved against the config file's directory. A config error
//! exits with [`EXIT_CONFIG`].

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

pub use crate::settings::{
    check_token, ws_origin, ConfigError, EnrichConfig, ReadFrom, RejectsConfig, Secret, SourceConfig, StatusConfig, EXIT_CONFIG,
    MIN_TOKEN_BYTES,
};
use crate::settings::{footprint, SectionError, StatusSection};
use crate::sink::Sinks;
use crate::source::SourceConfigured;

/// The whole configuration file, typed and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where checkpoints, the rejects file and the upstream spool live.
    pub state_dir: PathBuf,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace` or an
    /// `EnvFilter` directive); `RUST_LOG` overrides it.
    pub log_level: String,
    /// Where records come from (`[[source]]`). At least one.
    pub sources: Vec<SourceConfigured>,
    /// Lookup tables and masking.
    pub enrich: EnrichConfig,
    /// Where records go (`[file_output]`, `[channel]`, `[upstream]`, ...).
    /// At least one.
    pub sinks: Sinks,
    /// Metrics, status, health and the dashboard.
    pub status: StatusConfig,
    /// The bound of the rejects file on disk.
    pub rejects: RejectsConfig,
    /// `memory_max_bytes`: the memory budget of records read and not yet
    /// delivered (see [`crate::budget`]).
    pub memory_max_bytes: usize,
    /// `checkpoint_interval_ms`: how often acknowledged offsets are
    /// written (shutdown and reload write the final state too).
    pub checkpoint_interval: std::time::Duration,
    /// `host`: the name stamped on every record read from files (default
    /// the machine's host name; see [`crate::settings::host`]).
    pub host: String,
}

/// The top-level keys that are not a source or a sink, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Top {
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_log_level")]
    log_level: String,
    #[serde(default)]
    enrich: EnrichConfig,
    #[serde(default)]
    status: StatusSection,
    #[serde(default)]
    rejects: RejectsConfig,
    #[serde(default = "footprint::default_memory_max_bytes")]
    memory_max_bytes: usize,
    #[serde(default = "footprint::default_checkpoint_interval_ms")]
    checkpoint_interval_ms: u64,
    #[serde(default)]
    host: Option<String>,
}

/// [`Top`]'s keys, and where `[[source]]` and the sink sections go in
/// the list of keys an unknown one is compared with.
const TOP_KEYS: [&str; 8] = ["host", "state_dir", "log_level", "memory_max_bytes", "checkpoint_interval_ms", "enrich", "status", "rejects"];

/// The `[[source]]` array.
const SOURCE: &str = "source";

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/calllog-bridge")
}

fn default_log_level() -> String {
    "info".to_string()
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
        let syntax = |mut e: toml::de::Error| {
            e.set_input(Some(text));
            ConfigError::Syntax { path: path.to_path_buf(), message: e.to_string() }
        };
        let section_error = |e: SectionError| match e {
            SectionError::Toml(e) => syntax(e),
            SectionError::Invalid(e) => e,
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();

        let root = DeTable::parse(text).map_err(syntax)?;
        let span = root.span();
        let mut table = root.into_inner();
        let sources = table.remove(SOURCE);
        let mut sink_sections: Vec<(&'static str, Spanned<DeValue<'_>>)> = Vec::new();
        for kind in crate::sink::REGISTRY {
            if let Some(v) = table.remove(kind.section()) {
                sink_sections.push((kind.section(), v));
            }
        }
        if let Some((key, _)) = table.iter().find(|(k, _)| !TOP_KEYS.contains(&k.get_ref().as_ref())) {
            return Err(syntax(unknown_key(key)));
        }
        let top = Top::deserialize(toml::de::Deserializer::from(Spanned::new(span, table))).map_err(syntax)?;

        let mut state_dir = top.state_dir;
        crate::settings::resolve(&base, &mut state_dir);
        let sources = match sources {
            Some(v) => read_sources(v, &base).map_err(section_error)?,
            None => Vec::new(),
        };
        if sources.is_empty() {
            return Err(ConfigError::invalid(SOURCE, "at least one [[source]] section is required"));
        }
        let mut enrich = top.enrich;
        enrich.resolve_paths(&base);
        enrich.validate("enrich")?;
        let sinks = Sinks::parse(
            |section| {
                let i = sink_sections.iter().position(|(s, _)| *s == section)?;
                Some(ValueDeserializer::from(sink_sections.swap_remove(i).1))
            },
            &base,
        )
        .map_err(section_error)?;
        let status = StatusConfig::from_section(top.status, "status")?;
        let rejects = top.rejects;
        rejects.validate("rejects")?;
        if sinks.is_empty() {
            let names: Vec<String> = crate::sink::REGISTRY.iter().map(|k| format!("[{}]", k.section())).collect();
            return Err(ConfigError::invalid(
                crate::sink::REGISTRY.first().map_or("sink", |k| k.section()),
                format!("no output configured: add at least one of {}", names.join(", ")),
            ));
        }
        let memory_max_bytes = footprint::memory_max_bytes(top.memory_max_bytes, "memory_max_bytes")?;
        let checkpoint_interval = footprint::checkpoint_interval(top.checkpoint_interval_ms, "checkpoint_interval_ms")?;
        let host = crate::settings::host("host", top.host)?;
        Ok(Config {
            state_dir,
            log_level: top.log_level,
            sources,
            enrich,
            sinks,
            status,
            rejects,
            memory_max_bytes,
            checkpoint_interval,
            host,
        })
    }
}

/// Each `[[source]]`: its `kind` (the first of [`crate::source::KINDS`]
/// when absent) reads it; `name` defaults to `source<N>`.
fn read_sources(value: Spanned<DeValue<'_>>, base: &Path) -> Result<Vec<SourceConfigured>, SectionError> {
    let span = value.span();
    let items = match value.into_inner() {
        DeValue::Array(items) => items,
        // Not an array of tables: serde says so, with the line.
        other => {
            Vec::<serde::de::IgnoredAny>::deserialize(ValueDeserializer::from(Spanned::new(span, other))).map_err(SectionError::Toml)?;
            return Ok(Vec::new());
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let key = format!("{SOURCE}[{i}]");
        let span = item.span();
        let (kind, name, item) = match item.into_inner() {
            DeValue::Table(mut t) => {
                let kind = t.remove("kind").map(string).transpose()?;
                let name = t.remove("name").map(string).transpose()?;
                (kind, name, DeValue::Table(t))
            }
            other => (None, None, other),
        };
        let Some(kind) = (match &kind {
            Some(k) => crate::source::KINDS.iter().find(|s| s.kind() == k),
            None => crate::source::KINDS.first(),
        }) else {
            let known: Vec<&str> = crate::source::KINDS.iter().map(|k| k.kind()).collect();
            return Err(ConfigError::invalid(
                format!("{key}.kind"),
                format!("unknown source kind `{}`; known: {}", kind.unwrap_or_default(), known.join(", ")),
            )
            .into());
        };
        let config = kind.parse(ValueDeserializer::from(Spanned::new(span, item)), &key, base)?;
        out.push(SourceConfigured::new(name.unwrap_or_else(|| format!("{SOURCE}{i}")), config));
    }
    Ok(out)
}

/// A string value (`kind`, `name`), or serde's error with its line.
fn string(v: Spanned<DeValue<'_>>) -> Result<String, SectionError> {
    String::deserialize(ValueDeserializer::from(v)).map_err(SectionError::Toml)
}

/// Every top-level key, in the order the file reference lists them.
fn top_level_keys() -> &'static [&'static str] {
    static KEYS: OnceLock<Vec<&'static str>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut keys = vec!["host", "state_dir", "log_level", "memory_max_bytes", "checkpoint_interval_ms", SOURCE, "enrich"];
        keys.extend(crate::sink::REGISTRY.iter().map(|k| k.section()));
        keys.push("status");
        keys.push("rejects");
        keys
    })
}

/// serde's "unknown field" error for a top-level key, placed at the key
/// (so it is rendered with its line), listing every top-level key.
fn unknown_key(key: &Spanned<std::borrow::Cow<'_, str>>) -> toml::de::Error {
    struct Unknown;
    impl<'de> serde::de::Visitor<'de> for Unknown {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a known key")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
            Err(E::unknown_field(v, top_level_keys()))
        }
    }
    let value = ValueDeserializer::from(Spanned::new(key.span(), DeValue::String(key.get_ref().clone())));
    match serde::Deserializer::deserialize_any(value, Unknown) {
        Err(e) => e,
        Ok(()) => <toml::de::Error as serde::de::Error>::unknown_field(key.get_ref(), top_level_keys()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::channel::ChannelSink;

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

    fn file_source(c: &Config, i: usize) -> &SourceConfig {
        c.sources[i].get::<crate::source::file::FileSource>().unwrap()
    }

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
    fn unknown_keys_anywhere_are_named_with_their_line_and_what_is_known() {
        let check = |extra: &str, line: usize, want: &[&str]| {
            let text = format!("{MINIMAL}{extra}");
            let e = load(&text).unwrap_err().to_string();
            assert!(e.contains(&format!("line {line}")), "{extra}: {e}");
            for w in want {
                assert!(e.contains(w), "{extra}: no {w}: {e}");
            }
        };
        let n = MINIMAL.lines().count();
        check("[chanel]\nlisten = \"x\"\n", n + 1, &["unknown field `chanel`", "`channel`", "`upstream`", "`source`", "`status`"]);
        // After MINIMAL's [file_output]: a key of that section.
        check("verbose = true\n", n + 1, &["unknown field `verbose`", "`fsync_interval_ms`"]);
        let e = load(&format!("verbose = true\n{MINIMAL}")).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("unknown field `verbose`") && e.contains("`log_level`"), "{e}");
        check("[channel]\ntoken = \"token-0123456789abcdef\"\nlisen = 1\n", n + 3, &["unknown field `lisen`", "`listen`"]);
        check("[[source]]\npaths = [\"/x/*.log\"]\nformatt = \"le6\"\n", n + 3, &["unknown field `formatt`", "`format`"]);
        check("[upstream]\nurl = 5\n", n + 2, &["invalid type"]);
        check("[[source]]\nname = 3\npaths = [\"/x/*.log\"]\n", n + 2, &["invalid type"]);
        let e = load("source = 5\n[file_output]\npath = \"/tmp/o\"\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("invalid type"), "{e}");
    }

    #[test]
    fn every_top_level_key_is_accepted() {
        let c = load(&format!("log_level = \"debug\"\n{MINIMAL}[enrich]\n[status]\nenabled = false\n")).unwrap();
        assert_eq!((c.log_level.as_str(), c.status.enabled), ("debug", false));
        for k in TOP_KEYS {
            assert!(top_level_keys().contains(&k), "{k}");
        }
    }

    #[test]
    fn host_is_a_top_level_key_defaulting_to_the_machine_name() {
        assert_eq!(load(&format!("host = \"tm-dc1-07\"\n{MINIMAL}")).unwrap().host, "tm-dc1-07");
        assert_eq!(load(MINIMAL).unwrap().host, crate::settings::machine_host_name());
        assert!(!load(MINIMAL).unwrap().host.is_empty());
        for bad in [r#""""#, r#""a\u0007b""#] {
            let e = load(&format!("host = {bad}\n{MINIMAL}")).unwrap_err();
            assert_eq!(e.key(), Some("host"), "{e}");
        }
    }

    #[test]
    fn a_source_kind_must_be_known() {
        let c = load(&MINIMAL.replace("[[source]]\n", "[[source]]\nkind = \"file\"\nname = \"le\"\n")).unwrap();
        assert_eq!(c.sources[0].name, "le");
        assert_eq!(file_source(&c, 0).paths, ["/var/log/le/access*.log"]);
        let e = load(&MINIMAL.replace("[[source]]\n", "[[source]]\nkind = \"carrier-pigeon\"\n")).unwrap_err();
        assert_eq!(e.key(), Some("source[0].kind"), "{e}");
        assert!(e.to_string().contains("known: file"), "{e}");
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
        assert_eq!(c.sinks.get::<ChannelSink>().unwrap().listen.to_string(), "127.0.0.1:9101");
        let e = load(&format!("{MINIMAL}\n[status]\nlisten = \"localhost:http\"\n")).unwrap_err().to_string();
        assert!(e.contains("status.listen") && e.contains("bad port"), "{e}");
    }

    #[test]
    fn no_source_is_an_error() {
        let e = load("[file_output]\npath = \"/tmp/o\"\n").unwrap_err().to_string();
        assert!(e.contains("`source`"), "{e}");
    }

    #[test]
    fn no_sink_is_an_error_naming_every_sink() {
        let e = load("[[source]]\npaths = [\"/x/*.log\"]\n").unwrap_err().to_string();
        assert!(e.contains("`file_output`") && e.contains("[file_output], [channel], [upstream]"), "{e}");
    }

    #[test]
    fn relative_globs_follow_the_config_file_but_leading_wildcards_match_anywhere() {
        let c = load("[[source]]\npaths = [\"logs/*.log\"]\nexclude = [\"*.tmp\", \"logs/old*\"]\n[file_output]\npath = \"o\"\n").unwrap();
        assert_eq!(file_source(&c, 0).paths, ["/etc/calllog-bridge/logs/*.log"]);
        assert_eq!(file_source(&c, 0).exclude, ["*.tmp", "/etc/calllog-bridge/logs/old*"]);
    }

    #[test]
    fn durations_are_typed_from_their_keys() {
        let c = load(&MINIMAL.replace("[[source]]\n", "[[source]]\npoll_interval_ms = 250\nignore_older_secs = 60\n")).unwrap();
        let s = file_source(&c, 0);
        assert_eq!(s.poll_interval, Some(std::time::Duration::from_millis(250)));
        assert_eq!(s.ignore_older, Some(std::time::Duration::from_secs(60)));
        assert_eq!(s.rescan_interval, std::time::Duration::from_secs(10));
        assert_eq!(s.partial_grace, std::time::Duration::from_millis(500));
        assert_eq!(s.read_delay, std::time::Duration::from_millis(50));
        assert_eq!(c.status.delay_window, std::time::Duration::from_secs(300));
        assert_eq!(c.status, StatusConfig::default());
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
    fn footprint_bounds_default_and_are_checked_by_key() {
        let c = load(MINIMAL).unwrap();
        assert_eq!((c.memory_max_bytes, c.checkpoint_interval), (24 << 20, std::time::Duration::from_secs(1)));
        let c = load(&format!("memory_max_bytes = 16777216\ncheckpoint_interval_ms = 250\n{MINIMAL}")).unwrap();
        assert_eq!((c.memory_max_bytes, c.checkpoint_interval), (16 << 20, std::time::Duration::from_millis(250)));
        let e = load(&format!("memory_max_bytes = 1000\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.key(), Some("memory_max_bytes"), "{e}");
        let e = load(&format!("checkpoint_interval_ms = 0\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.key(), Some("checkpoint_interval_ms"), "{e}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
    }
}
