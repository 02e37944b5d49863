//! Sinks: where batches go. Each sink is a task that receives
//! `Arc<Batch>` from its bounded queue (filled by [`crate::pipeline::Fanout`])
//! and calls [`crate::pipeline::Batch::ack`] once per batch when it is
//! delivered. A sink ends when its queue closes (all senders dropped, the
//! tailers have stopped) after draining what it holds, or when `shutdown`
//! is cancelled after the grace period.
//!
//! Every sink is a [`Sink`]: its module declares, once, its config section,
//! which keys a reload applies live and which need a restart
//! ([`Sink::keys`]), what the host must provide ([`Sink::needs`]: the
//! directories it writes, the files it appends to, the addresses it
//! listens on, checked by [`crate::preflight`]), its line in `check-config`,
//! how it starts, how it takes new settings, and its name in logs and
//! telemetry. [`REGISTRY`] lists them; the config loader, preflight,
//! `check-config`, the bridge and the reload code know sinks only through
//! it. Adding a sink is one new module and one line in [`REGISTRY`]
//! (ARCHITECTURE.md, "Adding a sink").
//!
//! # Adding a sink, worked through
//!
//! A CSV export, say (`src/sink/csv.rs`, then `pub mod csv;` and
//! `&Registered::<csv::CsvSink>::NEW` in [`REGISTRY`]):
//!
//! ```ignore
//! pub struct CsvSink;
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct CsvSection { path: PathBuf, #[serde(default = "..")] flush_interval_ms: u64 }
//!
//! #[derive(Clone, Debug, PartialEq)]
//! pub struct CsvConfig { pub path: PathBuf, pub flush_interval: Duration }
//!
//! impl Sink for CsvSink {
//!     const SECTION: &'static str = "csv_export";  // [csv_export], keys csv_export.*
//!     const NAME: &'static str = "csv";            // logs, fan-out, /status, /metrics
//!     type Section = CsvSection;                   // as written; defaults here
//!     type Config = CsvConfig;                     // typed; errors name the key
//!     type Handle = CsvHandle;                     // controls the running sink
//!     type Update = CsvConfig;                     // what `reconfigure` takes
//!
//!     fn config(s: CsvSection, base: &Path) -> Result<CsvConfig, ConfigError> { .. }
//!     fn keys(k: &mut Keys<CsvConfig>) {
//!         k.restart("csv_export.path", |c| &mut c.path)                    // fixed until a restart
//!          .live("csv_export.flush_interval_ms", |c| &mut c.flush_interval); // applied live
//!     }
//!     fn needs(c: &CsvConfig, n: &mut Needs) { n.dirs.push(("csv_export.path", parent_dir(&c.path), true)); }
//!     fn summary(c: &CsvConfig) -> String { c.path.display().to_string() }
//!     async fn start(c: &CsvConfig, ctx: &SinkContext, fanout: &mut Fanout, _: &mut Bound)
//!         -> anyhow::Result<(SinkHandle, CsvHandle)> { .. }           // fanout.add(NAME, tx); spawn the task
//!     fn prepare(c: &CsvConfig) -> anyhow::Result<CsvConfig> { Ok(c.clone()) }
//!     fn reconfigure(h: &CsvHandle, c: CsvConfig) { h.set(c) }
//! }
//! ```
//!
//! A key not declared in `keys` that changes on a reload is reported as
//! the whole section needing a restart (never applied silently); a
//! listener declared in `needs` is bound before anything starts and handed
//! to `start` in `Bound` by its key.

pub mod channel;
pub mod export;
pub mod file;
pub mod kafka;
pub mod otlp;
pub mod upstream;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::component::{Kind, Settings};
use crate::listener::Bound;
use crate::pipeline::{Batch, Fanout};
use crate::settings::{ConfigError, SectionError};
use crate::telemetry::Telemetry;

/// Every sink the bridge knows, in the order they start and are listed.
/// A new sink is one line here (and its `pub mod` above).
pub static REGISTRY: &[&dyn SinkKind] = &[
    &Registered::<file::FileSink>::NEW,
    &Registered::<channel::ChannelSink>::NEW,
    &Registered::<upstream::UpstreamSink>::NEW,
    &Registered::<kafka::KafkaSink>::NEW,
    &Registered::<otlp::OtlpSink>::NEW,
    &Registered::<export::ExportSink>::NEW,
];

/// Batches buffered between the fan-out and one sink. Small: backpressure
/// should reach the tailers quickly rather than grow memory.
pub const SINK_QUEUE_BATCHES: usize = 16;

/// What every sink gets when it starts.
#[derive(Clone)]
pub struct SinkContext {
    /// The bridge's state directory (spool, dead letters).
    pub state_dir: PathBuf,
    /// Cancelled when the sink must stop now (grace period over).
    pub shutdown: CancellationToken,
    /// Statistics registry.
    pub telemetry: Telemetry,
}

/// A running sink.
pub struct SinkHandle {
    /// The sink's name (`file`, `channel`, `upstream`).
    pub name: &'static str,
    /// The sink's task; ends after draining when its queue closes.
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// A new bounded queue for a sink.
pub fn queue() -> (mpsc::Sender<Arc<Batch>>, mpsc::Receiver<Arc<Batch>>) {
    mpsc::channel(SINK_QUEUE_BATCHES)
}

/// A kind of sink, declared once by its module.
///
/// Drain: the task [`Sink::start`] spawns ends once its queue has closed
/// (the bridge drops the fan-out at shutdown) and it has delivered, or
/// durably set aside, what it holds; it stops at once, leaving what it
/// holds unacknowledged (read again after a restart), when
/// [`SinkContext::shutdown`] is cancelled (the bridge's grace period is
/// over).
pub trait Sink: 'static {
    /// The config section (`[channel]`); its keys are named `channel.<key>`
    /// in messages.
    const SECTION: &'static str;
    /// The name in logs, the fan-out, `/status`, `/metrics` (`sink` label)
    /// and the fault registry.
    const NAME: &'static str;
    /// The section as written (serde, `deny_unknown_fields`, defaults).
    type Section: serde::de::DeserializeOwned;
    /// The typed, checked settings the sink runs with.
    type Config: Clone + PartialEq + fmt::Debug + Send + Sync + 'static;
    /// Controls the running sink (a reload's new settings).
    type Handle: Send + Sync + 'static;
    /// What [`Sink::reconfigure`] needs, built by [`Sink::prepare`] before a
    /// reload changes anything.
    type Update: Send + 'static;

    /// The settings of a section: relative paths resolved against `base`
    /// (the config file's directory), values checked (errors name the
    /// key), secret and certificate files read.
    fn config(section: Self::Section, base: &Path) -> Result<Self::Config, ConfigError>;

    /// Declares every setting once: applied by a reload to the running
    /// sink ([`Keys::live`]), or fixed until a restart ([`Keys::restart`]).
    /// A setting declared neither way that changes is reported as the
    /// whole section needing a restart.
    fn keys(keys: &mut Keys<Self::Config>);

    /// What the host must provide; checked by `check-config` and before
    /// `run` starts anything.
    fn needs(_cfg: &Self::Config, _needs: &mut Needs) {}

    /// The sink's line in `check-config`'s summary (after its section
    /// name).
    fn summary(cfg: &Self::Config) -> String;

    /// Starts the sink: registers its queue on `fanout` (as [`Sink::NAME`])
    /// and spawns its task. A listener it declared in [`Sink::needs`] is
    /// in `listeners`, already bound.
    fn start(
        cfg: &Self::Config,
        ctx: &SinkContext,
        fanout: &mut Fanout,
        listeners: &mut Bound,
    ) -> impl Future<Output = anyhow::Result<(SinkHandle, Self::Handle)>> + Send;

    /// Builds what putting `cfg` in force needs (files read, clients
    /// built); runs on a blocking thread before a reload changes
    /// anything. An error refuses the reload; its message names the key.
    fn prepare(cfg: &Self::Config) -> anyhow::Result<Self::Update>;

    /// Puts new settings in force in the running sink (only the live keys
    /// differ from what it runs with). Cannot fail.
    fn reconfigure(handle: &Self::Handle, update: Self::Update);
}

/// Declares which settings a reload applies live and which need a
/// restart ([`Sink::keys`]); computes, for a running and a new config,
/// the settings to put in force and the keys that changed.
pub struct Keys<C> {
    /// The settings the sink runs with.
    running: C,
    /// The settings read from the file.
    new: C,
    /// What a reload puts in force: live keys from `new`, the rest from
    /// `running`.
    effective: C,
    /// `running` with every declared key taken from `new`: equal to `new`
    /// unless an undeclared setting changed.
    probe: C,
    /// Restart-only keys that changed.
    restart: Vec<&'static str>,
    /// Live keys that changed.
    live: Vec<&'static str>,
}

impl<C: Clone + PartialEq> Keys<C> {
    fn new(running: &C, new: &C) -> Keys<C> {
        Keys {
            running: running.clone(),
            new: new.clone(),
            effective: running.clone(),
            probe: running.clone(),
            restart: Vec::new(),
            live: Vec::new(),
        }
    }

    /// `key` (`channel.records_per_message`) is applied to the running
    /// sink by [`Sink::reconfigure`].
    pub fn live<T: Clone + PartialEq>(&mut self, key: &'static str, field: impl for<'x> Fn(&'x mut C) -> &'x mut T) -> &mut Self {
        self.restart_unless(key, field, |_, _| true)
    }

    /// `key` (`channel.listen`) is fixed while the sink runs: a change is
    /// reported as needing a restart and the running value stays.
    pub fn restart<T: Clone + PartialEq>(&mut self, key: &'static str, field: impl for<'x> Fn(&'x mut C) -> &'x mut T) -> &mut Self {
        self.restart_unless(key, field, |a, b| a == b)
    }

    /// `key` applies live when `same(running, new)`, else it needs a
    /// restart (a body format whose own keys may change live, but not the
    /// format itself).
    pub fn restart_unless<T: Clone + PartialEq>(
        &mut self,
        key: &'static str,
        field: impl for<'x> Fn(&'x mut C) -> &'x mut T,
        same: impl Fn(&T, &T) -> bool,
    ) -> &mut Self {
        let new = field(&mut self.new).clone();
        let running = field(&mut self.running);
        if !same(running, &new) {
            self.restart.push(key);
        } else {
            if *running != new {
                self.live.push(key);
            }
            *field(&mut self.effective) = new.clone();
        }
        *field(&mut self.probe) = new;
        self
    }

    /// The outcome; `section` stands for a setting nobody declared.
    fn finish(mut self, section: &'static str) -> Reload<C> {
        if self.probe != self.new {
            self.restart.push(section);
        }
        Reload { effective: self.effective, restart: self.restart, live: self.live }
    }
}

/// What a reload does to one sink.
struct Reload<C> {
    /// The settings to put in force.
    effective: C,
    /// Keys that changed and need a restart.
    restart: Vec<&'static str>,
    /// Live keys that changed.
    live: Vec<&'static str>,
}

/// What a sink needs from the host, checked by [`crate::preflight`] the
/// same way for `check-config` and `run`.
#[derive(Debug, Default)]
pub struct Needs {
    /// Directories it writes in: (key, directory, may its last component
    /// be created). One declared under a key that declares no file in
    /// `files` is the sink's own: everything in it is its output (no
    /// source may read it).
    pub dirs: Vec<(&'static str, PathBuf, bool)>,
    /// Files it appends to when they already exist: (key, file).
    pub files: Vec<(&'static str, PathBuf)>,
    /// Addresses it listens on: (key, address). They are bound before
    /// anything starts and handed to [`Sink::start`] in [`Bound`].
    pub listeners: Vec<(&'static str, SocketAddr)>,
    /// Peers it sends to, probed by `check-config` (warnings only).
    pub peers: Vec<crate::probe::Peer>,
    /// Record fields its settings select on that only lookup tables may
    /// fill (a channel filter on `org_name`): (key, field). A field no
    /// loaded table provides is a warning.
    pub lookup_fields: Vec<(String, crate::record::Field)>,
}

/// A registered sink kind, without its types: what the config loader and
/// the reload code use. [`Registered`] implements it for every [`Sink`].
pub trait SinkKind: Kind {
    /// [`Sink::SECTION`].
    fn section(&self) -> &'static str;
    /// [`Sink::NAME`].
    fn name(&self) -> &'static str;
    /// Reads the section and its settings.
    fn parse(&self, section: toml::de::ValueDeserializer<'_>, base: &Path) -> Result<Configured, SectionError>;
    /// [`Sink::needs`] of `cfg` (settings this kind read).
    fn needs(&self, cfg: &Configured, needs: &mut Needs);
    /// [`Sink::summary`] of `cfg`.
    fn summary(&self, cfg: &Configured) -> String;
    /// [`Sink::start`] with `cfg`.
    fn start<'a>(&'a self, cfg: &'a Configured, ctx: &'a SinkContext, fanout: &'a mut Fanout, listeners: &'a mut Bound) -> Starting<'a>;
    /// [`Sink::keys`] between `running` and `new` settings (of this
    /// kind): the settings to put in force, the restart keys and the live
    /// keys that changed.
    fn reload(&self, running: &Configured, new: &Configured) -> (Configured, Vec<&'static str>, Vec<&'static str>);
    /// [`Sink::prepare`] of `cfg`.
    fn prepare(&self, cfg: &Configured) -> anyhow::Result<Box<dyn Any + Send>>;
    /// [`Sink::reconfigure`] (nothing when the handle or the update is not
    /// this kind's).
    fn reconfigure(&self, handle: &(dyn Any + Send + Sync), update: Box<dyn Any + Send>);
}

/// A sink starting: its task and its control ([`Sink::Handle`], erased).
pub type Starting<'a> = Pin<Box<dyn Future<Output = anyhow::Result<(SinkHandle, Box<dyn Any + Send + Sync>)>> + Send + 'a>>;

/// A [`Sink`] as a [`SinkKind`] (an entry of [`REGISTRY`]).
pub struct Registered<S>(PhantomData<fn() -> S>);

impl<S> Registered<S> {
    /// The entry for `S`.
    pub const NEW: Registered<S> = Registered(PhantomData);
}

impl<S: Sink> Registered<S> {
    /// `cfg`'s typed settings. Not failing: [`Configured`] is made by its
    /// kind ([`SinkKind::parse`], [`SinkKind::reload`]), and its kind is
    /// what calls this.
    fn typed(cfg: &Configured) -> anyhow::Result<&S::Config> {
        cfg.get::<S>().ok_or_else(|| anyhow::anyhow!("[{}] got the settings of [{}]", S::SECTION, cfg.kind().section()))
    }
}

impl<S: Sink> Kind for Registered<S> {
    fn tag(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", S::SECTION)
    }
}

impl<S: Sink> SinkKind for Registered<S> {
    fn section(&self) -> &'static str {
        S::SECTION
    }

    fn name(&self) -> &'static str {
        S::NAME
    }

    fn parse(&self, section: toml::de::ValueDeserializer<'_>, base: &Path) -> Result<Configured, SectionError> {
        let s: S::Section = crate::settings::section(section)?;
        Ok(Configured(Settings::new(&Registered::<S>::NEW, S::config(s, base)?)))
    }

    fn needs(&self, cfg: &Configured, needs: &mut Needs) {
        if let Ok(c) = Self::typed(cfg) {
            S::needs(c, needs)
        }
    }

    fn summary(&self, cfg: &Configured) -> String {
        Self::typed(cfg).map(S::summary).unwrap_or_default()
    }

    fn start<'a>(&'a self, cfg: &'a Configured, ctx: &'a SinkContext, fanout: &'a mut Fanout, listeners: &'a mut Bound) -> Starting<'a> {
        Box::pin(async move {
            let (h, control) = S::start(Self::typed(cfg)?, ctx, fanout, listeners).await?;
            Ok((h, Box::new(control) as Box<dyn Any + Send + Sync>))
        })
    }

    fn reload(&self, running: &Configured, new: &Configured) -> (Configured, Vec<&'static str>, Vec<&'static str>) {
        let (Ok(old), Ok(new)) = (Self::typed(running), Self::typed(new)) else {
            // Not reached (sinks are paired by section): treat it as a new section.
            return (running.clone(), vec![S::SECTION], Vec::new());
        };
        let mut keys = Keys::new(old, new);
        S::keys(&mut keys);
        let r = keys.finish(S::SECTION);
        (Configured(Settings::new(&Registered::<S>::NEW, r.effective)), r.restart, r.live)
    }

    fn prepare(&self, cfg: &Configured) -> anyhow::Result<Box<dyn Any + Send>> {
        Ok(Box::new(S::prepare(Self::typed(cfg)?)?))
    }

    fn reconfigure(&self, handle: &(dyn Any + Send + Sync), update: Box<dyn Any + Send>) {
        if let (Some(h), Ok(u)) = (handle.downcast_ref::<S::Handle>(), update.downcast::<S::Update>()) {
            S::reconfigure(h, *u);
        }
    }
}

/// One configured sink: its settings and its kind.
#[derive(Clone, Debug, PartialEq)]
pub struct Configured(Settings<dyn SinkKind>);

impl Configured {
    /// The sink's kind.
    pub fn kind(&self) -> &'static dyn SinkKind {
        self.0.kind()
    }

    /// The settings, if this is a sink `S`.
    pub fn get<S: Sink>(&self) -> Option<&S::Config> {
        (self.kind().section() == S::SECTION).then(|| self.0.get::<S::Config>()).flatten()
    }

    /// What it needs from the host.
    pub fn needs(&self) -> Needs {
        let mut n = Needs::default();
        self.kind().needs(self, &mut n);
        n
    }

    /// Its line in `check-config`.
    pub fn summary(&self) -> String {
        self.kind().summary(self)
    }
}

/// The configured sinks, in [`REGISTRY`] order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sinks(Vec<Configured>);

/// The sinks read one section at a time (the config loader reads each on
/// its own, so that one section's mistakes do not hide another's).
impl FromIterator<Configured> for Sinks {
    fn from_iter<I: IntoIterator<Item = Configured>>(iter: I) -> Self {
        Sinks(iter.into_iter().collect())
    }
}

impl Sinks {
    /// The settings of sink `S`, when configured.
    pub fn get<S: Sink>(&self) -> Option<&S::Config> {
        self.0.iter().find_map(Configured::get::<S>)
    }

    /// The configured sinks.
    pub fn iter(&self) -> impl Iterator<Item = &Configured> {
        self.0.iter()
    }

    /// True when no sink is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The sink of section `section`, when configured.
    fn find(&self, section: &str) -> Option<&Configured> {
        self.0.iter().find(|c| c.kind().section() == section)
    }

    /// What a reload from `self` (running) to `new` changes, sink by sink
    /// (pure: nothing is built or applied).
    pub fn diff(&self, new: &Sinks) -> Diff {
        let mut d = Diff::default();
        let mut effective = Vec::new();
        // Both are in registry order: the running sinks, then those added.
        let mut kinds: Vec<&'static dyn SinkKind> = self.0.iter().map(Configured::kind).collect();
        kinds.extend(new.0.iter().map(Configured::kind).filter(|k| self.find(k.section()).is_none()));
        for kind in kinds {
            match (self.find(kind.section()), new.find(kind.section())) {
                (Some(old), Some(new)) => {
                    let (cfg, restart, live) = kind.reload(old, new);
                    d.restart_needed.extend(restart);
                    d.live.extend(live);
                    if cfg != *old {
                        d.changed.push(cfg.clone());
                    }
                    effective.push(cfg);
                }
                (None, None) => {}
                (old, _) => {
                    // Added or removed: new queues, listeners and files.
                    d.restart_needed.push(kind.section());
                    effective.extend(old.cloned());
                }
            }
        }
        d.effective = Sinks(effective);
        d
    }

    /// Starts every configured sink, in registry order; each registers its
    /// queue on `fanout`.
    pub async fn start(&self, ctx: &SinkContext, fanout: &mut Fanout, listeners: &mut Bound) -> anyhow::Result<Running> {
        let mut running = Running::default();
        for c in &self.0 {
            let (h, control) = c.kind().start(c, ctx, fanout, listeners).await?;
            running.tasks.push(h);
            running.controls.push((c.kind(), control));
        }
        Ok(running)
    }
}

/// What differs between the running sinks and a reloaded config's.
#[derive(Debug, Default)]
pub struct Diff {
    /// The sinks' settings a reload puts in force: live keys from the new
    /// config, the rest as running.
    pub effective: Sinks,
    /// Keys (or whole sections) that changed but need a restart.
    pub restart_needed: Vec<&'static str>,
    /// Live keys that changed.
    pub live: Vec<&'static str>,
    /// The sinks whose settings in force change (their new settings).
    pub changed: Vec<Configured>,
}

/// New settings for one running sink, prepared ([`Sink::prepare`]) and
/// ready to put in force.
pub struct Update {
    /// The settings it puts in force.
    config: Configured,
    /// What [`Sink::reconfigure`] takes.
    payload: Box<dyn Any + Send>,
}

impl Update {
    /// Prepares `config` (blocking: files read, clients built).
    pub fn prepare(config: Configured) -> anyhow::Result<Update> {
        let payload = config.kind().prepare(&config)?;
        Ok(Update { config, payload })
    }

    /// The settings it puts in force.
    pub fn config(&self) -> &Configured {
        &self.config
    }
}

impl fmt::Debug for Update {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Update({:?})", self.config)
    }
}

/// The running sinks: their tasks (drained at shutdown) and their
/// controls (reload).
#[derive(Default)]
pub struct Running {
    /// One task per sink, in start order.
    pub tasks: Vec<SinkHandle>,
    /// Each sink's [`Sink::Handle`].
    controls: Vec<(&'static dyn SinkKind, Box<dyn Any + Send + Sync>)>,
}

impl Running {
    /// Puts an update in force in its sink (nothing when that sink does not
    /// run).
    pub fn reconfigure(&self, update: Update) {
        if let Some((kind, handle)) = self.controls.iter().find(|(k, _)| k.section() == update.config.kind().section()) {
            kind.reconfigure(&**handle, update.payload);
        }
    }

    /// The control of sink `S`, when it runs.
    pub fn handle<S: Sink>(&self) -> Option<&S::Handle> {
        self.controls.iter().find(|(k, _)| k.section() == S::SECTION).and_then(|(_, h)| h.downcast_ref::<S::Handle>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_names_are_unique() {
        for (i, a) in REGISTRY.iter().enumerate() {
            for b in &REGISTRY[i + 1..] {
                assert_ne!(a.section(), b.section());
                assert_ne!(a.name(), b.name());
            }
        }
    }

    /// A sink outside the registry, to show that the machinery needs
    /// nothing else: it counts what it receives and what it is told.
    struct Probe;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ProbeSection {
        listen: std::net::SocketAddr,
        batch: usize,
    }

    #[derive(Clone, Debug, PartialEq)]
    struct ProbeConfig {
        listen: std::net::SocketAddr,
        batch: usize,
    }

    #[derive(Default)]
    struct ProbeHandle {
        batches: std::sync::atomic::AtomicUsize,
        batch: std::sync::atomic::AtomicUsize,
        listener: std::sync::Mutex<Option<std::net::SocketAddr>>,
    }

    impl Sink for Probe {
        const SECTION: &'static str = "probe";
        const NAME: &'static str = "probe";
        type Section = ProbeSection;
        type Config = ProbeConfig;
        type Handle = Arc<ProbeHandle>;
        type Update = usize;

        fn config(s: ProbeSection, _base: &Path) -> Result<ProbeConfig, ConfigError> {
            if s.batch == 0 {
                return Err(ConfigError::invalid("probe.batch", "must be > 0"));
            }
            Ok(ProbeConfig { listen: s.listen, batch: s.batch })
        }

        fn keys(k: &mut Keys<ProbeConfig>) {
            k.restart("probe.listen", |c| &mut c.listen).live("probe.batch", |c| &mut c.batch);
        }

        fn needs(c: &ProbeConfig, n: &mut Needs) {
            n.listeners.push(("probe.listen", c.listen));
        }

        fn summary(c: &ProbeConfig) -> String {
            format!("batch {}", c.batch)
        }

        async fn start(
            c: &ProbeConfig,
            _ctx: &SinkContext,
            fanout: &mut Fanout,
            listeners: &mut Bound,
        ) -> anyhow::Result<(SinkHandle, Arc<ProbeHandle>)> {
            let h = Arc::new(ProbeHandle::default());
            h.batch.store(c.batch, std::sync::atomic::Ordering::SeqCst);
            *h.listener.lock().unwrap() = listeners.take("probe.listen").map(|l| l.local_addr().unwrap());
            let (tx, mut rx) = queue();
            fanout.add(Self::NAME, tx);
            let h2 = h.clone();
            let task = tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    h2.batches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    b.ack();
                }
                Ok(())
            });
            Ok((SinkHandle { name: Self::NAME, task }, h))
        }

        fn prepare(c: &ProbeConfig) -> anyhow::Result<usize> {
            Ok(c.batch)
        }

        fn reconfigure(h: &Arc<ProbeHandle>, batch: usize) {
            h.batch.store(batch, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn probe(text: &str) -> Result<Configured, SectionError> {
        Registered::<Probe>::NEW.parse(toml::de::ValueDeserializer::parse(text).unwrap(), Path::new(""))
    }

    #[tokio::test]
    async fn a_sink_is_read_checked_started_diffed_and_reconfigured_through_its_declaration_alone() {
        let bound = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = bound.local_addr().unwrap();
        let running = Sinks(vec![probe(&format!("{{ listen = \"{addr}\", batch = 1 }}")).unwrap()]);
        assert!(
            matches!(probe("{ listen = \"127.0.0.1:1\", batch = 0 }"), Err(SectionError::Invalid(e)) if e.key() == Some("probe.batch"))
        );
        assert!(matches!(probe("{ listen = \"127.0.0.1:1\", batch = 1, x = 1 }"), Err(SectionError::Toml(_))));
        let c = running.iter().next().unwrap();
        assert_eq!(c.needs().listeners, vec![("probe.listen", addr)]);
        assert_eq!((c.kind().name(), c.summary()), ("probe", "batch 1".to_string()));
        assert_eq!(running.get::<Probe>().map(|c| c.batch), Some(1));

        let mut listeners = Bound::default();
        listeners.insert("probe.listen", bound);
        let ctx = SinkContext { state_dir: PathBuf::from("/nonexistent"), shutdown: CancellationToken::new(), telemetry: Telemetry::new() };
        let mut fanout = Fanout::new();
        let mut started = running.start(&ctx, &mut fanout, &mut listeners).await.unwrap();
        let h = started.handle::<Probe>().unwrap().clone();
        assert_eq!(*h.listener.lock().unwrap(), Some(addr), "the listener bound beforehand is handed over");
        let acked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let a = acked.clone();
        let done = Box::new(move || a.store(true, std::sync::atomic::Ordering::SeqCst));
        fanout.send(Batch::new("f".into(), Vec::new(), 0, Some(done))).await.unwrap();

        // A live key changes: put in force; the fixed one changes: kept, reported.
        let new = Sinks(vec![probe("{ listen = \"127.0.0.1:1\", batch = 5 }").unwrap()]);
        let d = running.diff(&new);
        assert_eq!((d.restart_needed.clone(), d.live.clone()), (vec!["probe.listen"], vec!["probe.batch"]));
        assert_eq!(d.effective.get::<Probe>(), Some(&ProbeConfig { listen: addr, batch: 5 }));
        for changed in d.changed {
            started.reconfigure(Update::prepare(changed).unwrap());
        }
        assert_eq!(h.batch.load(std::sync::atomic::Ordering::SeqCst), 5);
        assert_eq!(running.diff(&Sinks::default()).restart_needed, vec!["probe"], "removing it needs a restart");

        drop(fanout);
        for t in started.tasks.drain(..) {
            t.task.await.unwrap().unwrap();
        }
        assert_eq!(h.batches.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(acked.load(std::sync::atomic::Ordering::SeqCst), "the batch was acknowledged");
    }

    #[derive(Clone, Debug, PartialEq)]
    struct Demo {
        fixed: u32,
        tuned: u32,
        undeclared: u32,
    }

    fn keys(running: Demo, new: Demo) -> Reload<Demo> {
        let mut k = Keys::new(&running, &new);
        k.restart("demo.fixed", |c| &mut c.fixed).live("demo.tuned", |c| &mut c.tuned);
        k.finish("demo")
    }

    #[test]
    fn keys_take_live_values_keep_fixed_ones_and_never_miss_an_undeclared_one() {
        let run = Demo { fixed: 1, tuned: 1, undeclared: 1 };
        let r = keys(run.clone(), run.clone());
        assert_eq!((r.effective, r.restart, r.live), (run.clone(), vec![], vec![]));
        let r = keys(run.clone(), Demo { fixed: 2, tuned: 2, ..run.clone() });
        assert_eq!((r.effective, r.restart, r.live), (Demo { tuned: 2, ..run.clone() }, vec!["demo.fixed"], vec!["demo.tuned"]));
        let r = keys(run.clone(), Demo { undeclared: 2, ..run.clone() });
        assert_eq!((r.effective, r.restart, r.live), (run, vec!["demo"], vec![]));
    }
}
