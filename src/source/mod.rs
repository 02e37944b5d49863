//! Sources: where records come from, one per `[[source]]` section. The
//! section's `kind` (`file`, the default) picks a [`Source`]; its module
//! declares, once, its keys, what `check-config` and `run` check on the
//! host, its lines in the `check-config` summary, and how its readers
//! start. [`KINDS`] lists them; the config loader, preflight,
//! `check-config` and the bridge know sources only through it. Adding a
//! kind (a Kafka consumer) is one new module and one line in [`KINDS`].
//!
//! Invariant: a source hands records to the fan-out in batches whose
//! acknowledgement ([`crate::pipeline::Batch`]) is what makes its
//! position durable ([`crate::checkpoint`] for files): nothing is marked
//! read before every sink has it. Readers stop at a batch boundary when
//! [`SourceContext::stop`] is cancelled (shutdown, or a reload that
//! restarts the reading side).

pub mod file;
pub mod kafka;

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpointer;
use crate::component::{Kind, Settings};
use crate::enrich::Enricher;
use crate::pipeline::Fanout;
use crate::settings::{ConfigError, SectionError};
use crate::tail::reader::RejectSink;
use crate::telemetry::Telemetry;

/// Every source kind the bridge knows; the first is the default (a
/// `[[source]]` without `kind`). A new kind is one line here (and its
/// `pub mod` above).
pub static KINDS: &[&dyn SourceKind] = &[&Registered::<file::FileSource>::NEW, &Registered::<kafka::KafkaSource>::NEW];

/// A kind of source, declared once by its module.
pub trait Source: 'static {
    /// The `kind` value (`file`).
    const KIND: &'static str;
    /// The section as written, without `kind` and `name` (serde,
    /// `deny_unknown_fields`, defaults).
    type Section: serde::de::DeserializeOwned;
    /// The typed, checked settings of one source.
    type Config: Clone + PartialEq + fmt::Debug + Send + Sync + 'static;

    /// The settings of a section: relative paths resolved against `base`,
    /// values checked; errors name the key under `key` (`source[0]`).
    fn config(section: Self::Section, key: &str, base: &Path) -> Result<Self::Config, ConfigError>;

    /// What the host offers this source now (files a glob matches, ...);
    /// errors stop `run` (exit 64), warnings do not; both name the key
    /// under `key`.
    fn check(cfg: &Self::Config, key: &str) -> Check;

    /// The source's lines in `check-config`'s summary, after its name on
    /// the first line.
    fn summary(cfg: &Self::Config, found: &SourceFound) -> String;

    /// Starts a reader for each source of this kind (by name); with
    /// [`SourceContext::startup`], also what the kind checks once at
    /// start-up.
    fn start(sources: Vec<(String, Self::Config)>, ctx: &SourceContext) -> anyhow::Result<Started>;
}

/// What every source gets when it starts.
#[derive(Clone)]
pub struct SourceContext {
    /// Where batches go.
    pub fanout: Fanout,
    /// Durable positions, advanced when every sink acknowledged a batch.
    pub checkpoints: Checkpointer,
    /// Lookups and masking.
    pub enricher: Arc<Enricher>,
    /// Cancelled to stop reading at a batch boundary.
    pub stop: CancellationToken,
    /// Where rejected input goes.
    pub rejects: Option<RejectSink>,
    /// Statistics registry.
    pub telemetry: Telemetry,
    /// The bridge is starting (not a reload restarting the reading side).
    pub startup: bool,
    /// The top-level `host`: stamped on every record that carries none.
    pub host: Arc<str>,
}

/// Readers started by [`Source::start`].
#[derive(Default)]
pub struct Started {
    /// One task per source, by name; each ends after its source stopped
    /// at a batch boundary.
    pub readers: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
    /// Tasks of the kind as a whole (start-up checks); they end by
    /// themselves or when reading stops.
    pub background: Vec<JoinHandle<()>>,
}

/// One glob and the files it matches now.
#[derive(Debug, Clone)]
pub struct GlobFound {
    /// The glob, as resolved.
    pub glob: String,
    /// Readable files it matches.
    pub files: Vec<PathBuf>,
    /// Files it matches that cannot be opened, with why.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// One `[[source]]` and what it finds on this host.
#[derive(Debug, Clone)]
pub struct SourceFound {
    /// The source's name (`source<N>` by default).
    pub name: String,
    /// Its globs (file sources).
    pub globs: Vec<GlobFound>,
}

/// What [`Source::check`] found.
#[derive(Debug, Default)]
pub struct Check {
    /// Problems that stop `run`.
    pub errors: Vec<ConfigError>,
    /// What an operator should know.
    pub warnings: Vec<String>,
    /// The globs and their files.
    pub globs: Vec<GlobFound>,
    /// Peers it reads from, probed by `check-config` (warnings only).
    pub peers: Vec<crate::probe::Peer>,
}

/// A registered source kind, without its types.
pub trait SourceKind: Kind {
    /// [`Source::KIND`].
    fn kind(&self) -> &'static str;
    /// Reads a section (without `kind` and `name`) and its settings.
    fn parse(&self, section: toml::de::ValueDeserializer<'_>, key: &str, base: &Path) -> Result<SourceSettings, SectionError>;
    /// [`Source::check`] of `cfg` (settings this kind read).
    fn check(&self, cfg: &SourceSettings, key: &str) -> Check;
    /// [`Source::summary`] of `cfg`.
    fn summary(&self, cfg: &SourceSettings, found: &SourceFound) -> String;
    /// [`Source::start`] for the sources of this kind in `sources`.
    fn start(&self, sources: &[&SourceConfigured], ctx: &SourceContext) -> anyhow::Result<Started>;
}

/// The settings of one source without their type, with their kind.
pub type SourceSettings = Settings<dyn SourceKind>;

/// A [`Source`] as a [`SourceKind`] (an entry of [`KINDS`]).
pub struct Registered<S>(PhantomData<fn() -> S>);

impl<S> Registered<S> {
    /// The entry for `S`.
    pub const NEW: Registered<S> = Registered(PhantomData);
}

impl<S: Source> Kind for Registered<S> {
    fn tag(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(S::KIND)
    }
}

impl<S: Source> SourceKind for Registered<S> {
    fn kind(&self) -> &'static str {
        S::KIND
    }

    fn parse(&self, section: toml::de::ValueDeserializer<'_>, key: &str, base: &Path) -> Result<SourceSettings, SectionError> {
        let s: S::Section = crate::settings::section(section)?;
        Ok(Settings::new(&Registered::<S>::NEW, S::config(s, key, base)?))
    }

    fn check(&self, cfg: &SourceSettings, key: &str) -> Check {
        // Settings are made by their kind (`parse`), which is what calls this.
        cfg.get::<S::Config>().map(|c| S::check(c, key)).unwrap_or_default()
    }

    fn summary(&self, cfg: &SourceSettings, found: &SourceFound) -> String {
        cfg.get::<S::Config>().map(|c| S::summary(c, found)).unwrap_or_default()
    }

    fn start(&self, sources: &[&SourceConfigured], ctx: &SourceContext) -> anyhow::Result<Started> {
        let mut group = Vec::new();
        for s in sources {
            match s.get::<S>() {
                Some(c) => group.push((s.name.clone(), c.clone())),
                None => anyhow::bail!("source {} is not a `{}` source", s.name, S::KIND),
            }
        }
        S::start(group, ctx)
    }
}

/// One configured `[[source]]`: its name and its kind's settings.
#[derive(Clone, PartialEq)]
pub struct SourceConfigured {
    /// The name in logs, `/status` and metrics (`source<N>` by default).
    pub name: String,
    /// The settings.
    config: SourceSettings,
}

impl SourceConfigured {
    /// A source named `name` with `config` (from [`SourceKind::parse`]).
    pub fn new(name: String, config: SourceSettings) -> SourceConfigured {
        SourceConfigured { name, config }
    }

    /// The source's kind.
    pub fn kind(&self) -> &'static dyn SourceKind {
        self.config.kind()
    }

    /// The settings, if this is a source of kind `S`.
    pub fn get<S: Source>(&self) -> Option<&S::Config> {
        (self.kind().kind() == S::KIND).then(|| self.config.get::<S::Config>()).flatten()
    }

    /// What the host offers it now ([`Source::check`]); `key` is
    /// `source[<index>]`.
    pub fn check(&self, key: &str) -> Check {
        self.kind().check(&self.config, key)
    }

    /// Its lines in `check-config`.
    pub fn summary(&self, found: &SourceFound) -> String {
        self.kind().summary(&self.config, found)
    }
}

impl fmt::Debug for SourceConfigured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}", self.name, self.config)
    }
}

/// Starts a reader for every source, kind by kind.
pub fn start_all(sources: &[SourceConfigured], ctx: &SourceContext) -> anyhow::Result<Started> {
    let mut all = Started::default();
    for kind in KINDS {
        let group: Vec<&SourceConfigured> = sources.iter().filter(|s| s.kind().kind() == kind.kind()).collect();
        if group.is_empty() {
            continue;
        }
        let started = kind.start(&group, ctx)?;
        all.readers.extend(started.readers);
        all.background.extend(started.background);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_unique_and_file_is_the_default() {
        assert_eq!(KINDS[0].kind(), "file");
        for (i, a) in KINDS.iter().enumerate() {
            for b in &KINDS[i + 1..] {
                assert_ne!(a.kind(), b.kind());
            }
        }
    }
}
