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

/// A config file read as far as it goes: every problem it has, and the
/// settings of every part that has none.
///
/// One run names every mistake: a TOML syntax error does not hide the keys
/// after it (the parser recovers), a key serde refuses (unknown, or of the
/// wrong type) is reported and left out and the rest of its section read
/// again, and a section whose values are refused leaves the others to be
/// checked. The errors come syntax first (with their line), then values.
#[derive(Debug)]
pub struct Reading {
    /// The settings, leaving out the sources and sinks whose section has a
    /// problem (and the status listener, when `[status]` has one), so that
    /// what the rest points at can still be checked on the host
    /// ([`crate::preflight`]). `None` when the file cannot be read or
    /// `state_dir` is unknown.
    pub config: Option<Config>,
    /// Every problem, each naming its key when it is known.
    pub errors: Vec<ConfigError>,
}

impl Reading {
    /// The config when it has no problem, else its first problem.
    pub fn into_result(self) -> Result<Config, ConfigError> {
        match (self.errors.into_iter().next(), self.config) {
            (Some(e), _) => Err(e),
            (None, Some(c)) => Ok(c),
            (None, None) => Err(ConfigError::invalid("state_dir", "not read")),
        }
    }
}

/// Rounds of "leave the refused key out and read again" per section: more
/// mistakes than this in one section are reported on the next run.
const MAX_RECOVERIES: usize = 64;

impl Config {
    /// Reads, parses and validates a config file; its first problem, if
    /// any ([`Config::read`] has them all).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::read(path).into_result()
    }

    /// Parses and validates config text; `path` is used in messages and
    /// to resolve relative paths (relative to the config file's directory).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::read_toml(text, path).into_result()
    }

    /// Reads a config file with every problem it has.
    pub fn read(path: &Path) -> Reading {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::read_toml(&text, path),
            Err(source) => Reading { config: None, errors: vec![ConfigError::Read { path: path.to_path_buf(), source }] },
        }
    }

    /// [`Config::read`] of config text.
    pub fn read_toml(text: &str, path: &Path) -> Reading {
        let mut errors = Vec::new();
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let syntax = Syntax { text, path };

        let (root, parse_errors) = DeTable::parse_recoverable(text);
        errors.extend(parse_errors.into_iter().map(|e| syntax.error(e, None)));
        let span = root.span();
        let mut table = root.into_inner();
        let sources = table.remove(SOURCE);
        let mut sink_sections: Vec<(&'static dyn crate::sink::SinkKind, Spanned<DeValue<'_>>)> = Vec::new();
        for kind in crate::sink::REGISTRY {
            if let Some(v) = table.remove(kind.section()) {
                sink_sections.push((*kind, v));
            }
        }
        let unknown: Vec<Spanned<std::borrow::Cow<'_, str>>> =
            table.keys().filter(|k| !TOP_KEYS.contains(&k.get_ref().as_ref())).cloned().collect();
        for key in unknown {
            table.remove(&key);
            let hint = suggestion(key.get_ref(), top_level_keys());
            errors.push(syntax.error(unknown_key(&key), Some(key.get_ref().to_string())).hint(hint));
        }
        let top = recover(Spanned::new(span, DeValue::Table(table)), "", &syntax, &mut errors, |v| {
            Top::deserialize(ValueDeserializer::from(v)).map_err(SectionError::Toml)
        });
        // A value refused under these is not checked on the host in its
        // default's place: no status listener probed, no state_dir at all.
        let defaulted = |section: &str| top.defaulted.iter().any(|k| k == section || k.starts_with(&format!("{section}.")));
        let (status_defaulted, enrich_defaulted) = (defaulted("status"), defaulted("enrich"));
        let top = top.value.filter(|_| !defaulted("state_dir"));

        let mut sources_read = Vec::new();
        match sources {
            Some(v) => read_sources(v, &base, &syntax, &mut sources_read, &mut errors),
            None => errors.push(ConfigError::invalid(SOURCE, "at least one [[source]] section is required")),
        }
        let mut sinks = Vec::new();
        let no_sink_section = sink_sections.is_empty();
        for (kind, value) in sink_sections {
            if let Some(c) = recover(value, kind.section(), &syntax, &mut errors, |v| kind.parse(ValueDeserializer::from(v), &base)).whole()
            {
                sinks.push(c);
            }
        }
        if no_sink_section {
            let names: Vec<String> = crate::sink::REGISTRY.iter().map(|k| format!("[{}]", k.section())).collect();
            errors.push(ConfigError::invalid(
                crate::sink::REGISTRY.first().map_or("sink", |k| k.section()),
                format!("no output configured: add at least one of {}", names.join(", ")),
            ));
        }
        let config = top.map(|top| {
            let mut state_dir = top.state_dir;
            crate::settings::resolve(&base, &mut state_dir);
            let mut enrich = top.enrich;
            enrich.resolve_paths(&base);
            let enrich = keep(enrich.validate("enrich").map(|()| enrich), &mut errors).filter(|_| !enrich_defaulted).unwrap_or_default();
            let status = keep(StatusConfig::from_section(top.status, "status"), &mut errors)
                .filter(|_| !status_defaulted)
                .unwrap_or_else(|| StatusConfig { enabled: false, ..StatusConfig::default() });
            let rejects = top.rejects;
            let rejects = keep(rejects.validate("rejects").map(|()| rejects), &mut errors).unwrap_or_default();
            let memory_max_bytes = keep(footprint::memory_max_bytes(top.memory_max_bytes, "memory_max_bytes"), &mut errors)
                .unwrap_or_else(footprint::default_memory_max_bytes);
            let checkpoint_interval =
                keep(footprint::checkpoint_interval(top.checkpoint_interval_ms, "checkpoint_interval_ms"), &mut errors)
                    .unwrap_or_else(|| crate::settings::millis(footprint::default_checkpoint_interval_ms()));
            let host = keep(crate::settings::host("host", top.host), &mut errors).unwrap_or_else(crate::settings::machine_host_name);
            Config {
                state_dir,
                log_level: top.log_level,
                sources: sources_read,
                enrich,
                sinks: sinks.into_iter().collect(),
                status,
                rejects,
                memory_max_bytes,
                checkpoint_interval,
                host,
            }
        });
        // Syntax first, then values (a stable sort: each in file order).
        errors.sort_by_key(|e| !matches!(e, ConfigError::Syntax { .. } | ConfigError::Read { .. }));
        Reading { config, errors }
    }
}

/// Renders toml's errors with the file's text and path.
struct Syntax<'a> {
    /// The config text.
    text: &'a str,
    /// The config file.
    path: &'a Path,
}

impl Syntax<'_> {
    /// The error `e`, rendered with its line, about `key` when known.
    fn error(&self, mut e: toml::de::Error, key: Option<String>) -> ConfigError {
        e.set_input(Some(self.text));
        ConfigError::Syntax { path: self.path.to_path_buf(), key, message: e.to_string().trim_end().to_string() }
    }
}

/// The value, or `None` with its error kept.
fn keep<T>(r: Result<T, ConfigError>, errors: &mut Vec<ConfigError>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

/// What [`recover`] read.
struct Recovered<T> {
    /// The section, when it could be read.
    value: Option<T>,
    /// The keys left out for a value of theirs (not unknown keys, which
    /// never had an effect): the section read has a default in their place,
    /// which the host checks must not take for what the file says.
    defaulted: Vec<String>,
}

impl<T> Recovered<T> {
    /// The section, when read with every value the file gives it.
    fn whole(self) -> Option<T> {
        self.value.filter(|_| self.defaulted.is_empty())
    }
}

/// Reads `value` with `parse`. A key serde refuses (unknown, or of the
/// wrong type) is reported, left out, and the rest read again, so that
/// every such key of the section is named in one run and its values are
/// checked too; a value refused after that ends the section (its error
/// kept). `prefix` is the section's key (`channel`, `source[0]`; empty at
/// the top level).
fn recover<'i, T>(
    mut value: Spanned<DeValue<'i>>,
    prefix: &str,
    syntax: &Syntax<'_>,
    errors: &mut Vec<ConfigError>,
    mut parse: impl FnMut(Spanned<DeValue<'i>>) -> Result<T, SectionError>,
) -> Recovered<T> {
    let section = || Some(prefix.to_string()).filter(|p| !p.is_empty());
    let mut left_out: Vec<String> = Vec::new();
    let mut defaulted: Vec<String> = Vec::new();
    let value = loop {
        if left_out.len() > MAX_RECOVERIES {
            break None;
        }
        let e = match parse(value.clone()) {
            Ok(t) => break Some(t),
            Err(SectionError::Invalid(e)) => {
                errors.push(e);
                break None;
            }
            Err(SectionError::Toml(e)) => e,
        };
        // A required key left out for its own mistake: said already.
        if missing_field(e.message()).is_some_and(|f| left_out.iter().any(|k| k.rsplit('.').next() == Some(f))) {
            break None;
        }
        let found = match (e.span(), value.get_mut()) {
            (Some(span), DeValue::Table(table)) => leave_out(table, &span, prefix),
            _ => None,
        };
        let Some((key, name)) = found else {
            errors.push(syntax.error(e, section()));
            break None;
        };
        if !e.message().starts_with("unknown field") {
            defaulted.push(key.clone());
        }
        let hint = suggestion(&name, &expected_fields(e.message()));
        errors.push(syntax.error(e, Some(key.clone())).hint(hint));
        left_out.push(key);
    };
    Recovered { value, defaulted }
}

/// Removes from `table` the entry that `span` (an error's place) points
/// at, the deepest one: the key itself (an unknown key) or its value (a
/// wrong type). Returns its dotted key under `prefix` and its name.
fn leave_out(table: &mut DeTable<'_>, span: &std::ops::Range<usize>, prefix: &str) -> Option<(String, String)> {
    let dotted = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
    let mut hit = None;
    for (k, v) in table.iter_mut() {
        let key = dotted(k.get_ref());
        let vs = v.span();
        let deeper = match v.get_mut() {
            DeValue::Table(t) => leave_out(t, span, &key),
            DeValue::Array(items) => items.iter_mut().enumerate().find_map(|(i, item)| match item.get_mut() {
                DeValue::Table(t) => leave_out(t, span, &format!("{key}[{i}]")),
                _ => None,
            }),
            _ => None,
        };
        if deeper.is_some() {
            return deeper;
        }
        if k.span() == *span || (vs.start <= span.start && span.end <= vs.end) {
            hit = Some((k.clone(), key));
            break;
        }
    }
    let (k, key) = hit?;
    table.remove(&k);
    Some((key, k.get_ref().to_string()))
}

/// The field of serde's "missing field `x`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// The keys serde's "unknown field `x`, expected one of `a`, `b`" lists.
fn expected_fields(message: &str) -> Vec<&str> {
    let Some((_, expected)) = message.split_once("expected") else { return Vec::new() };
    expected.split('`').skip(1).step_by(2).collect()
}

/// "did you mean `records_per_message`?" for a mistyped key, when one of
/// `known` is close enough to be what was meant.
fn suggestion(typed: &str, known: &[&str]) -> Option<String> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let t = norm(typed);
    let (best, d) = known.iter().map(|k| (*k, edit_distance(&t, &norm(k)))).min_by_key(|(_, d)| *d)?;
    let allowed = match t.chars().count() {
        0..=4 => 1,
        5..=10 => 2,
        _ => 3,
    };
    (d <= allowed && best != typed).then(|| format!("did you mean `{best}`?"))
}

/// Optimal string alignment distance: inserting, deleting or replacing a
/// character, or swapping two neighbours, costs one.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// Each `[[source]]`: its `kind` (the first of [`crate::source::KINDS`]
/// when absent) reads it; `name` defaults to `source<N>`. A section with a
/// problem is left out, its problems kept.
fn read_sources(
    value: Spanned<DeValue<'_>>,
    base: &Path,
    syntax: &Syntax<'_>,
    out: &mut Vec<SourceConfigured>,
    errors: &mut Vec<ConfigError>,
) {
    let span = value.span();
    let items = match value.into_inner() {
        DeValue::Array(items) => items,
        // Not an array of tables: serde says so, with the line.
        other => {
            if let Err(e) = Vec::<serde::de::IgnoredAny>::deserialize(ValueDeserializer::from(Spanned::new(span, other))) {
                errors.push(syntax.error(e, Some(SOURCE.to_string())));
            }
            return;
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let key = format!("{SOURCE}[{i}]");
        let span = item.span();
        let (kind, name, item) = match item.into_inner() {
            DeValue::Table(mut t) => {
                let kind = match t.remove("kind").map(string).transpose() {
                    Ok(k) => k,
                    Err(e) => {
                        errors.push(syntax.error(e, Some(format!("{key}.kind"))));
                        continue;
                    }
                };
                let name = match t.remove("name").map(string).transpose() {
                    Ok(n) => n,
                    Err(e) => {
                        errors.push(syntax.error(e, Some(format!("{key}.name"))));
                        continue;
                    }
                };
                (kind, name, DeValue::Table(t))
            }
            other => (None, None, other),
        };
        let Some(kind) = (match &kind {
            Some(k) => crate::source::KINDS.iter().find(|s| s.kind() == k),
            None => crate::source::KINDS.first(),
        }) else {
            let known: Vec<&str> = crate::source::KINDS.iter().map(|k| k.kind()).collect();
            errors.push(ConfigError::invalid(
                format!("{key}.kind"),
                format!("unknown source kind `{}`; known: {}", kind.unwrap_or_default(), known.join(", ")),
            ));
            continue;
        };
        let config = recover(Spanned::new(span, item), &key, syntax, errors, |v| kind.parse(ValueDeserializer::from(v), &key, base));
        if let Some(config) = config.whole() {
            out.push(SourceConfigured::new(name.unwrap_or_else(|| format!("{SOURCE}{i}")), config));
        }
    }
}

/// A string value (`kind`, `name`), or serde's error with its line.
fn string(v: Spanned<DeValue<'_>>) -> Result<String, toml::de::Error> {
    String::deserialize(ValueDeserializer::from(v))
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

    /// Every mistake of a file is named in one reading, syntax first, each
    /// with its key; the parts without one are still read (and checked on
    /// the host).
    #[test]
    fn every_mistake_is_named_in_one_reading() {
        let text = r#"
state_dir = "/tmp/x"
memory_max_bytes = 1000
lgo_level = "debug"
[[source]]
paths = ["/var/log/le/access*.log"]
formatt = "le6"
[[source]]
paths = "not-a-list"
[file_output]
path = 5
[channel]
token = "aaaaaaaaaaaaaaaa"
records_per_mesage = 10
[upstream]
url = "http://collector:9000/ingest"
[status]
listen = "nowhere"
"#;
        let r = Config::read_toml(text, Path::new("/etc/c.toml"));
        let keys: Vec<Option<&str>> = r.errors.iter().map(ConfigError::key).collect();
        assert_eq!(
            keys,
            [
                Some("lgo_level"),
                Some("status.listen"),
                Some("source[0].formatt"),
                Some("source[1].paths"),
                Some("file_output.path"),
                Some("channel.records_per_mesage"),
                Some("channel.token"),
                Some("memory_max_bytes"),
            ],
            "{:#?}",
            r.errors
        );
        let text_of = |k: &str| r.errors.iter().find(|e| e.key() == Some(k)).unwrap().to_string();
        assert!(text_of("lgo_level").ends_with("did you mean `log_level`?"), "{}", text_of("lgo_level"));
        assert!(text_of("source[0].formatt").contains("line 7") && text_of("source[0].formatt").ends_with("did you mean `format`?"));
        assert!(text_of("channel.records_per_mesage").ends_with("did you mean `records_per_message`?"));
        assert!(text_of("channel.token").contains("too little variety"));
        // `path = 5` is one mistake, not also a missing `path`.
        assert!(!r.errors.iter().any(|e| e.to_string().contains("missing field")), "{:#?}", r.errors);
        // What has no problem is read: the first source, the upstream; the
        // status listener, whose address was refused, is not probed in its
        // default's place.
        let c = r.config.unwrap();
        assert_eq!(c.sources.len(), 1);
        assert_eq!(c.sinks.iter().map(|s| s.kind().section()).collect::<Vec<_>>(), ["upstream"]);
        assert!(!c.status.enabled);
    }

    #[test]
    fn a_syntax_error_does_not_hide_the_mistakes_after_it() {
        let text = format!("{MINIMAL}[status]\nlisten = \"127.0.0.1:0\nper_file_metric = true\n");
        let r = Config::read_toml(&text, Path::new("/etc/c.toml"));
        assert!(matches!(r.errors[0], ConfigError::Syntax { key: None, .. }), "{:#?}", r.errors);
        assert!(r.errors[0].to_string().contains("line 8"), "{}", r.errors[0]);
        let typo = r.errors.iter().find(|e| e.key() == Some("status.per_file_metric")).expect("the typo after it");
        assert!(typo.to_string().ends_with("did you mean `per_file_metrics`?"), "{typo}");
        // A value of the wrong type at the top: no state_dir to check.
        let r = Config::read_toml(&MINIMAL.replace("state_dir = \"/tmp/x\"", "state_dir = 7"), Path::new("/etc/c.toml"));
        assert_eq!(r.errors[0].key(), Some("state_dir"));
        assert!(r.config.is_none());
    }

    #[test]
    fn suggestions_are_the_nearest_known_key_only_when_near() {
        let known = ["records_per_message", "replay_max_bytes", "listen", "token_file", "max_connections"];
        let s = |typed: &str| suggestion(typed, &known);
        assert_eq!(s("records_per_mesage").as_deref(), Some("did you mean `records_per_message`?"));
        assert_eq!(s("records-per-message").as_deref(), Some("did you mean `records_per_message`?"));
        assert_eq!(s("lisetn").as_deref(), Some("did you mean `listen`?"));
        assert_eq!(s("tokenfile").as_deref(), Some("did you mean `token_file`?"));
        assert_eq!(s("Listen").as_deref(), Some("did you mean `listen`?"));
        assert_eq!(s("colour"), None);
        assert_eq!(s("max_lag"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(expected_fields("unknown field `x`, expected one of `a`, `b_c`"), ["a", "b_c"]);
        assert_eq!(expected_fields("unknown field `x`, expected `a` or `b`"), ["a", "b"]);
        assert_eq!(missing_field("missing field `path`"), Some("path"));
    }
}
