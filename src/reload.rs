//! SIGHUP: re-read the config file and apply it to the running bridge.
//!
//! Invariant: a reload either applies a config that passed every check a
//! start would make ([`crate::preflight::check`], the listeners aside), or
//! changes nothing. [`prepare`] does all the fallible work first (read,
//! parse and check the file, secrets and certificates included, load the
//! lookup tables, parse the log level, build what each changed sink needs:
//! [`crate::sink::Sink::prepare`]); only then does [`apply`] touch the
//! running bridge, and what it does there cannot be refused half-way. An
//! invalid file is logged with the key it is about and the running config
//! stays in force. Configs are compared by value (`PartialEq`); each sink
//! declares which of its keys apply live ([`crate::sink::Sink::keys`]).
//!
//! What a reload applies, and how it keeps records neither lost nor repeated:
//!
//! - `[[source]]` sections and `[enrich]` (lookup paths, masking): the
//!   reading side restarts. The tailers stop at a batch boundary: every
//!   batch they read has reached every sink, or, if it was still waiting
//!   for room in a full sink queue (upstream down), none, and it is taken
//!   back ([`crate::checkpoint::Checkpointer::withdraw`]) so that a reload
//!   never waits on a backed-up sink. New tailers built from
//!   the new sections and a new enricher resume each file where the old
//!   ones stopped *reading* ([`crate::checkpoint::Checkpointer::resume_offset`]),
//!   not at the durable offset, so batches still in flight are not read
//!   twice; their acknowledgements still advance the durable offset. The
//!   sinks, the channel's clients and the upstream spool are not touched.
//! - the channel token (`token` / `token_file`, also when only the file's
//!   content changed): replaced in place; connections that used the old
//!   token are closed with 1008. The channel's `records_per_message`,
//!   `ping_interval_secs` (connections opened after the reload) and
//!   `mask_keep` (records appended after it) apply too; its listener,
//!   paths, TLS, slots and ring need a restart
//!   ([`crate::sink::channel::ChannelSink`]'s keys).
//! - `log_level`: applied at once (`RUST_LOG`, when set, keeps priority).
//! - `[upstream]`: when anything in it changed (credential and TLS files
//!   are re-read, so a new content counts), a new HTTP client is built from
//!   the new section (URL, headers, credentials, TLS files, timeouts, batch
//!   limits, compression, backoff) and replaces the running one; requests
//!   already built keep their records and switch to the new settings at
//!   their next attempt, so nothing is lost or sent twice. The keys that
//!   shape what is already batched or spooled (`format`, `max_in_flight`,
//!   `spool_max_bytes`, `dead_letter_file`) need a restart
//!   ([`crate::sink::upstream::UpstreamSink`]'s keys).
//! - `[file_output]`: what is buffered is written, synced and acknowledged
//!   under the old settings, then the new ones apply (a new `path` starts a
//!   new archive there).
//! - everything else (`host`, `state_dir`, `memory_max_bytes`,
//!   `checkpoint_interval_ms`, adding or removing a sink section, the
//!   channel's listener and TLS settings, `[status]`, `[rejects]`)
//!   needs new listeners, files or clients: the change is logged as needing
//!   a restart and the running settings stay in force (and are reported
//!   again on the next reload until the bridge restarts).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::enrich::{EnrichError, Enricher};
use crate::sink::Update;
use crate::source::SourceConfigured;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is unreadable or invalid; the message names the key.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A lookup table named in `enrich.lookups` cannot be loaded.
    #[error("invalid config key `enrich.lookups`: {0}")]
    Lookups(#[from] EnrichError),
    /// A sink's new settings cannot be put in force (a client that cannot
    /// be built); the message names the key.
    #[error("{message}")]
    Sink {
        /// The sink's section (`upstream`).
        section: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The blocking loader thread failed.
    #[error("reload task failed: {0}")]
    Task(String),
}

impl ReloadError {
    /// The config key the error is about (for the log line's `key` field).
    pub fn key(&self) -> &str {
        match self {
            ReloadError::Config(ConfigError::Invalid { key, .. } | ConfigError::Unusable { key, .. }) => key,
            ReloadError::Config(ConfigError::Syntax { key: Some(key), .. }) => key,
            ReloadError::Config(ConfigError::Syntax { key: None, .. }) => "(syntax: see the message)",
            ReloadError::Config(ConfigError::Read { .. }) => "(the file)",
            ReloadError::Lookups(_) => "enrich.lookups",
            ReloadError::Sink { section, .. } => section,
            ReloadError::Task(_) => "(none)",
        }
    }
}

/// A new config that passed every check, with what applying it needs
/// already built.
pub struct Prepared {
    /// The new config as read.
    pub config: Config,
    /// A new enricher, when `[enrich]` changed (its tables are loaded).
    pub enricher: Option<Arc<Enricher>>,
    /// New settings for the running sinks whose live keys changed (clients
    /// built, files read).
    pub sinks: Vec<Update>,
}

/// What differs between the running config and a new one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// `[[source]]` sections changed (added, removed or edited).
    pub sources: bool,
    /// `[enrich]` changed (lookup paths or masking).
    pub enrich: bool,
    /// `log_level` changed.
    pub log_level: bool,
    /// Sinks' keys that changed and apply live.
    pub live: Vec<&'static str>,
    /// Sections or keys that changed but apply only after a restart.
    pub restart_needed: Vec<&'static str>,
}

impl Changes {
    /// True when the reading side must restart (new sources or enricher).
    pub fn restart_sources(&self) -> bool {
        self.sources || self.enrich
    }
}

/// Compares two configs section by section, by value.
pub fn diff(old: &Config, new: &Config) -> Changes {
    let sinks = old.sinks.diff(&new.sinks);
    let mut c = Changes {
        sources: old.sources != new.sources,
        enrich: old.enrich != new.enrich,
        log_level: old.log_level != new.log_level,
        live: sinks.live,
        restart_needed: Vec::new(),
    };
    if old.host != new.host {
        c.restart_needed.push("host");
    }
    if old.state_dir != new.state_dir {
        c.restart_needed.push("state_dir");
    }
    if old.memory_max_bytes != new.memory_max_bytes {
        c.restart_needed.push("memory_max_bytes");
    }
    if old.checkpoint_interval != new.checkpoint_interval {
        c.restart_needed.push("checkpoint_interval_ms");
    }
    c.restart_needed.extend(sinks.restart_needed);
    if old.status != new.status {
        c.restart_needed.push("status");
    }
    if old.rejects != new.rejects {
        c.restart_needed.push("rejects");
    }
    c
}

/// Reads and checks the config at `path` against the `running` one:
/// validation, lookup tables (when `[enrich]` changed), log level, and the
/// new settings of each sink whose live keys changed. Blocking file I/O:
/// runs on a blocking thread.
pub async fn prepare(path: &Path, running: &Config) -> Result<Prepared, ReloadError> {
    let path: PathBuf = path.to_path_buf();
    let running = running.clone();
    tokio::task::spawn_blocking(move || prepare_blocking(&path, &running)).await.map_err(|e| ReloadError::Task(e.to_string()))?
}

fn prepare_blocking(path: &Path, running: &Config) -> Result<Prepared, ReloadError> {
    let config = Config::load(path)?;
    crate::service::parse_level(&config.log_level)?;
    // What a start would refuse, a reload refuses too (the listeners are
    // the running bridge's and are not probed).
    let checked = crate::preflight::check(&config, crate::preflight::Bind::Skip);
    if let Some(e) = checked.errors.into_iter().next() {
        return Err(e.into());
    }
    for w in &checked.warnings {
        tracing::warn!("{w}");
    }
    let enricher = match (config.enrich != running.enrich, checked.enricher) {
        (true, Some(e)) => Some(Arc::new(e)),
        (true, None) => Some(Arc::new(Enricher::from_config(&config.enrich)?)),
        (false, _) => None,
    };
    let mut sinks = Vec::new();
    for changed in running.sinks.diff(&config.sinks).changed {
        let section = changed.kind().section();
        sinks.push(Update::prepare(changed).map_err(|e| ReloadError::Sink { section, message: crate::service::describe(&e) })?);
    }
    Ok(Prepared { config, enricher, sinks })
}

/// The parts of a running bridge a reload changes. Implemented by
/// [`crate::bridge::Bridge`]; tests use a recording fake.
pub trait Reloadable {
    /// Puts a sink's new live settings in force (nothing when that sink
    /// does not run).
    fn reconfigure_sink(&self, update: Update);

    /// Restarts the reading side with these sources and, when given, a new
    /// enricher: stop the readers at a batch boundary, start new ones that
    /// resume where the old ones stopped reading.
    fn restart_sources(
        &mut self,
        sources: &[SourceConfigured],
        enricher: Option<Arc<Enricher>>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Applies a prepared config to the bridge and returns the config now in
/// effect: the new one, except the sections that need a restart, which
/// keep their running values.
pub async fn apply<B: Reloadable>(bridge: &mut B, running: &Config, prepared: Prepared) -> anyhow::Result<(Config, Changes)> {
    let Prepared { config: new, enricher, sinks } = prepared;
    let sink_diff = running.sinks.diff(&new.sinks);
    let changes = diff(running, &new);
    if changes.log_level {
        // Validated in `prepare`; an error here would only mean the
        // subscriber is not ours (tests).
        if let Err(e) = crate::service::set_log_level(&new.log_level) {
            tracing::warn!(error = %e, "cannot apply the new log level");
        }
    }
    for update in sinks {
        bridge.reconfigure_sink(update);
    }
    if changes.restart_sources() {
        bridge.restart_sources(&new.sources, enricher).await?;
    }
    for key in &changes.restart_needed {
        tracing::warn!(
            key = *key,
            "config change needs a restart to apply (systemctl restart calllog-bridge); the running settings stay in force"
        );
    }
    // The config in effect: live-applied parts from `new`, the rest as running.
    let mut effective = running.clone();
    effective.sources = new.sources;
    effective.enrich = new.enrich;
    effective.log_level = new.log_level;
    effective.sinks = sink_diff.effective;
    Ok((effective, changes))
}

/// Reload requests for a running bridge: each one asks for the config at
/// [`Requests::path`] to be re-read. Requests that arrive while a reload
/// runs coalesce into one more reload.
pub struct Requests {
    /// The config file to re-read.
    pub path: PathBuf,
    /// One message per pending request; capacity 1 (coalescing).
    rx: tokio::sync::mpsc::Receiver<()>,
    /// Keeps the SIGHUP listener alive as long as the requests are.
    _listener: Option<tokio::task::JoinHandle<()>>,
}

impl Requests {
    /// Requests sent through the returned sender (embedding, tests).
    pub fn channel(path: PathBuf) -> (tokio::sync::mpsc::Sender<()>, Requests) {
        // Capacity 1: a burst of requests during a reload becomes one more.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        (tx, Requests { path, rx, _listener: None })
    }

    /// One request per SIGHUP. Installs the handler at once (call it before
    /// the bridge starts: SIGHUP's default action would end the process).
    /// Must be called inside the runtime.
    pub fn on_sighup(path: PathBuf) -> std::io::Result<Requests> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let (tx, mut req) = Requests::channel(path);
        req._listener = Some(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // Full = a reload is already pending: this one joins it.
                if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = tx.try_send(()) {
                    return;
                }
            }
        }));
        Ok(req)
    }

    /// Waits for the next request; pending forever when there is none (so
    /// it can sit in a `select!` next to the shutdown signal).
    pub async fn next(requests: &mut Option<Requests>) -> PathBuf {
        match requests {
            Some(r) => match r.rx.recv().await {
                Some(()) => r.path.clone(),
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        if let Some(l) = &self._listener {
            l.abort();
        }
    }
}

/// Handles one SIGHUP: tells systemd a reload is under way, prepares and
/// applies the config at `path`, logs the outcome (an error names the key)
/// and tells systemd the bridge is ready again. Returns the config in
/// effect afterwards (the running one when the reload was refused).
pub async fn on_hup<B: Reloadable>(bridge: &mut B, running: Config, path: &Path) -> Config {
    crate::service::notify_reloading();
    tracing::info!(config = %path.display(), "reloading the configuration (SIGHUP)");
    let effective = match prepare(path, &running).await {
        Err(e) => {
            // One line, so the journal keeps it as one entry at error priority.
            let message: Vec<String> = e.to_string().lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty() && l != "|").collect();
            tracing::error!(key = e.key(), error = %message.join(" "), "reload refused: the new config is invalid; the running config stays in force");
            running
        }
        Ok(prepared) => match apply(bridge, &running, prepared).await {
            Ok((effective, changes)) => {
                tracing::info!(
                    sources_restarted = changes.restart_sources(),
                    applied_live = ?changes.live,
                    log_level_changed = changes.log_level,
                    needs_restart = ?changes.restart_needed,
                    "configuration reloaded"
                );
                effective
            }
            Err(e) => {
                tracing::error!(error = %crate::service::describe(&e), "reload failed while applying; the sources keep their previous settings");
                running
            }
        },
    };
    crate::service::notify_ready(&format!("running: {} source(s)", effective.sources.len()));
    effective
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::channel::ChannelSink;
    use crate::sink::file::FileSink;
    use crate::sink::upstream::UpstreamSink;
    use std::sync::Mutex;

    const BASE: &str = r#"
state_dir = "/tmp/state"
[[source]]
name = "a"
paths = ["/logs/a/*.log"]
[file_output]
path = "/tmp/out.ndjson"
[channel]
token = "token-one-0123456789"
"#;

    fn cfg(text: &str) -> Config {
        Config::from_toml(text, Path::new("/etc/calllog-bridge/config.toml")).unwrap()
    }

    /// What `prepare` builds, without its checks on the host.
    fn prepared(running: &Config, new: Config) -> Prepared {
        let sinks = running.sinks.diff(&new.sinks).changed.into_iter().map(|c| Update::prepare(c).unwrap()).collect();
        Prepared { config: new, enricher: None, sinks }
    }

    #[derive(Default)]
    struct Fake {
        /// What was called, in order.
        calls: Mutex<Vec<String>>,
    }

    impl Reloadable for Fake {
        fn reconfigure_sink(&self, update: Update) {
            let c = update.config();
            let call = if let Some(ch) = c.get::<ChannelSink>() {
                format!("channel token={} records_per_message={}", ch.tokens[0].secret.expose(), ch.records_per_message)
            } else if let Some(f) = c.get::<FileSink>() {
                format!("file_output {}", f.path.display())
            } else if let Some(u) = c.get::<UpstreamSink>() {
                format!("upstream {}", u.endpoint.url)
            } else {
                format!("{c:?}")
            };
            self.calls.lock().unwrap().push(call);
        }
        async fn restart_sources(&mut self, sources: &[SourceConfigured], enricher: Option<Arc<Enricher>>) -> anyhow::Result<()> {
            let names: Vec<_> = sources.iter().map(|s| s.name.clone()).collect();
            self.calls.lock().unwrap().push(format!("sources {} enricher={}", names.join(","), enricher.is_some()));
            Ok(())
        }
    }

    fn check(new_text: &str, want: Changes) {
        let got = diff(&cfg(BASE), &cfg(new_text));
        assert_eq!(got, want, "for:\n{new_text}");
    }

    #[test]
    fn diff_names_what_changed() {
        check(BASE, Changes::default());
        check(&BASE.replace("/logs/a/*.log", "/logs/b/*.log"), Changes { sources: true, ..Changes::default() });
        check(&format!("{BASE}\n[[source]]\nname = \"b\"\npaths = [\"/logs/b/*.log\"]\n"), Changes { sources: true, ..Changes::default() });
        check(&format!("log_level = \"debug\"\n{BASE}"), Changes { log_level: true, ..Changes::default() });
        check(&format!("{BASE}\n[enrich]\nmask_api_key_keep = 4\n"), Changes { enrich: true, ..Changes::default() });
        // A token change applies live; a listener change needs a restart.
        check(&BASE.replace("token-one-0123456789", "token-two-0123456789"), Changes { live: vec!["channel.token"], ..Changes::default() });
        check(
            &BASE.replace("token = \"token-one-0123456789\"", "token = \"token-one-0123456789\"\nlisten = \"127.0.0.1:9999\""),
            Changes { restart_needed: vec!["channel.listen"], ..Changes::default() },
        );
        // Batching, pings and masking apply live.
        check(
            &BASE.replace("token = \"token-one-0123456789\"", "token = \"token-one-0123456789\"\nrecords_per_message = 20\nmask_keep = 4"),
            Changes { live: vec!["channel.records_per_message", "channel.mask_keep"], ..Changes::default() },
        );
        // The archive's settings apply live; removing it needs a restart.
        check(&BASE.replace("/tmp/out.ndjson", "/tmp/other.ndjson"), Changes { live: vec!["file_output.path"], ..Changes::default() });
        check(
            &BASE.replace("[file_output]\npath = \"/tmp/out.ndjson\"\n", ""),
            Changes { restart_needed: vec!["file_output"], ..Changes::default() },
        );
        check(&BASE.replace("/tmp/state", "/tmp/state2"), Changes { restart_needed: vec!["state_dir"], ..Changes::default() });
        check(&format!("{BASE}\n[status]\nidle_after_secs = 5\n"), Changes { restart_needed: vec!["status"], ..Changes::default() });
    }

    #[tokio::test]
    async fn apply_calls_only_what_changed_and_keeps_restart_sections() {
        let running = cfg(BASE);
        let new_text = format!(
            "log_level = \"debug\"\n{}",
            BASE.replace("token-one-0123456789", "token-two-0123456789")
                .replace("/tmp/out.ndjson", "/tmp/other.ndjson")
                .replace("token = \"token-two-0123456789\"", "token = \"token-two-0123456789\"\nlisten = \"127.0.0.1:9999\"")
        ) + "\n[[source]]\nname = \"b\"\npaths = [\"/logs/b/*.log\"]\n";
        let new = cfg(&new_text);
        let mut fake = Fake::default();
        let (effective, changes) = apply(&mut fake, &running, prepared(&running, new)).await.unwrap();
        assert_eq!(
            *fake.calls.lock().unwrap(),
            vec!["file_output /tmp/other.ndjson", "channel token=token-two-0123456789 records_per_message=1", "sources a,b enricher=false"]
        );
        assert_eq!(changes.restart_needed, vec!["channel.listen"]);
        assert!(changes.log_level);
        assert_eq!(effective.sources.len(), 2);
        assert_eq!(effective.log_level, "debug");
        assert_eq!(effective.sinks.get::<FileSink>().unwrap().path, Path::new("/tmp/other.ndjson"), "applied live");
        // The channel keeps its running listener until a restart; the next
        // reload reports it again.
        let ch = effective.sinks.get::<ChannelSink>().unwrap();
        assert_eq!(ch.listen.to_string(), "127.0.0.1:8790");
        assert_eq!(ch.tokens[0].secret.expose(), "token-two-0123456789");
        assert_eq!(diff(&effective, &cfg(&new_text)).restart_needed, vec!["channel.listen"]);
    }

    #[tokio::test]
    async fn upstream_settings_apply_live_except_the_fixed_keys() {
        let up = "\n[upstream]\nurl = \"http://127.0.0.1:9/a\"\nbatch_max_records = 100\n";
        let running = cfg(&format!("{BASE}{up}"));
        let changed = up.replace("/a", "/b").replace("100", "200");
        assert_eq!(
            diff(&running, &cfg(&format!("{BASE}{changed}"))),
            Changes { live: vec!["upstream.url", "upstream.batch_max_records"], ..Changes::default() }
        );
        let fixed = format!("{BASE}{changed}format = \"ecls\"\nmax_in_flight = 9\n");
        assert_eq!(diff(&running, &cfg(&fixed)).restart_needed, vec!["upstream.format", "upstream.max_in_flight"]);
        assert_eq!(diff(&cfg(BASE), &running).restart_needed, vec!["upstream"], "adding [upstream] needs a restart");
        // A format's own keys apply live; the format does not.
        let es = |index: &str| cfg(&format!("{BASE}{up}format = \"elasticsearch\"\nelasticsearch_index = \"{index}\"\n"));
        assert_eq!(diff(&es("a"), &es("b")), Changes { live: vec!["upstream.format"], ..Changes::default() });

        let new = cfg(&fixed);
        let mut fake = Fake::default();
        let (effective, changes) = apply(&mut fake, &running, prepared(&running, new)).await.unwrap();
        assert_eq!(*fake.calls.lock().unwrap(), vec!["upstream http://127.0.0.1:9/b"]);
        assert_eq!(changes.restart_needed, vec!["upstream.format", "upstream.max_in_flight"]);
        let u = effective.sinks.get::<UpstreamSink>().unwrap();
        let r = running.sinks.get::<UpstreamSink>().unwrap();
        assert_eq!((u.endpoint.url.as_str(), u.delivery.batch_max_records), ("http://127.0.0.1:9/b", 200), "live keys from the new file");
        assert_eq!((&u.format, u.delivery.max_in_flight), (&r.format, r.delivery.max_in_flight));
    }

    #[tokio::test]
    async fn invalid_file_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let running = cfg(BASE);
        // What a start would refuse is refused: a glob whose directory is missing.
        std::fs::write(&path, BASE).unwrap();
        let e = prepare(&path, &running).await.err().unwrap();
        assert_eq!(e.key(), "source[0].paths", "{e}");
        // The other cases, on a host where the paths exist.
        let root = dir.path().display().to_string();
        for d in ["logs/a", "logs/c"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let base = BASE.replace("/logs/", &format!("{root}/logs/")).replace("/tmp/state", &format!("{root}/state"));

        std::fs::write(&path, base.replace(&format!("paths = [\"{root}/logs/a/*.log\"]"), "paths = []")).unwrap();
        let e = prepare(&path, &running).await.err().unwrap();
        assert_eq!(e.key(), "source[0].paths", "{e}");

        std::fs::write(&path, format!("log_level = \"verbose\"\n{base}")).unwrap();
        let e = prepare(&path, &running).await.err().unwrap();
        assert_eq!(e.key(), "log_level", "{e}");

        std::fs::write(&path, format!("{base}\n[enrich]\nlookups = [\"missing.csv\"]\n")).unwrap();
        let e = prepare(&path, &running).await.err().unwrap();
        assert_eq!(e.key(), "enrich.lookups", "{e}");
        assert!(e.to_string().contains("missing.csv"), "{e}");

        std::fs::write(&path, base.replace("token = \"token-one-0123456789\"", "token_file = \"nope.token\"")).unwrap();
        let e = prepare(&path, &running).await.err().unwrap();
        assert_eq!(e.key(), "channel.token_file", "{e}");

        std::fs::write(&path, format!("{base}\n[upstream]\nurl = \"http://127.0.0.1:9/\"\nbearer_token_file = \"nope.token\"\n")).unwrap();
        let e = prepare(&path, &running).await.err().unwrap();
        assert_eq!(e.key(), "upstream.bearer_token_file", "{e}");
        // A CA file that is there but holds no certificate.
        std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
        std::fs::write(&path, format!("{base}\n[upstream]\nurl = \"https://127.0.0.1:9/\"\nca_file = \"ca.pem\"\n")).unwrap();
        let e = prepare(&path, &running).await.err().unwrap();
        assert_eq!(e.key(), "upstream.ca_file", "{e}");

        std::fs::write(&path, base.replace("/logs/a/*.log", "/logs/c/*.log")).unwrap();
        let p = prepare(&path, &running).await.unwrap();
        assert!(p.enricher.is_none(), "unchanged [enrich] must not reload tables");
        assert_eq!(p.config.sinks.get::<ChannelSink>().unwrap().tokens[0].secret.expose(), "token-one-0123456789");
        assert!(p.sinks.is_empty(), "unchanged sinks are left alone: {:?}", p.sinks);
    }

    #[tokio::test]
    async fn refused_reload_keeps_the_running_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "this is not toml [").unwrap();
        let running = cfg(BASE);
        let mut fake = Fake::default();
        let effective = on_hup(&mut fake, running.clone(), &path).await;
        assert!(fake.calls.lock().unwrap().is_empty(), "nothing may be applied from an invalid file");
        assert_eq!(format!("{:?}", effective.sources), format!("{:?}", running.sources));
        assert_eq!(effective, running);
    }
}
