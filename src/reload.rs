//! SIGHUP: re-read the config file and apply it to the running bridge.
//!
//! Invariant: a reload either applies a config that passed every check a
//! start would make ([`crate::preflight::check`], the listeners aside), or
//! changes nothing. [`prepare`] does all the fallible
//! work first (read, parse, validate, load the lookup tables, resolve the
//! channel token, parse the log level); only then does [`apply`] touch the
//! running bridge, and what it does there cannot be refused half-way. An
//! invalid file is logged with the key it is about and the running config
//! stays in force.
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
//!   ([`crate::sink::channel::restart_keys`]).
//! - `log_level`: applied at once (`RUST_LOG`, when set, keeps priority).
//! - `[upstream]`: a new HTTP client is built from the new section (URL,
//!   headers, credentials re-read from their files even when only a file's
//!   content changed, TLS files, timeouts, batch limits, compression,
//!   backoff) and replaces the running one; requests already built keep
//!   their records and switch to the new settings at their next attempt,
//!   so nothing is lost or sent twice. The keys that shape what is already
//!   batched or spooled (`format`, `max_in_flight`, `spool_max_bytes`,
//!   `dead_letter_file`) need a restart
//!   ([`crate::sink::upstream::restart_keys`]).
//! - `[file_output]`: what is buffered is written, synced and acknowledged
//!   under the old settings, then the new ones apply (a new `path` starts a
//!   new archive there).
//! - everything else (`state_dir`, adding or removing `[file_output]` or
//!   `[upstream]`, the channel's listener and TLS settings, `[status]`,
//!   `[rejects]`)
//!   needs new listeners, files or clients: the change is logged as needing
//!   a restart and the running settings stay in force (and are reported
//!   again on the next reload until the bridge restarts).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{ChannelConfig, Config, ConfigError, FileOutputConfig, Secret, SourceConfig};
use crate::enrich::{EnrichError, Enricher};
use crate::sink::upstream::{self, Live as UpstreamLive};

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is unreadable or invalid; the message names the key.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A lookup table named in `enrich.lookups` cannot be loaded.
    #[error("invalid config key `enrich.lookups`: {0}")]
    Lookups(#[from] EnrichError),
    /// The new `[upstream]` section cannot be put in force (a credential,
    /// CA or certificate file unreadable or invalid); the message names the
    /// key.
    #[error("{0}")]
    Upstream(String),
    /// The blocking loader thread failed.
    #[error("reload task failed: {0}")]
    Task(String),
}

impl ReloadError {
    /// The config key the error is about (for the log line's `key` field).
    pub fn key(&self) -> &str {
        match self {
            ReloadError::Config(ConfigError::Invalid { key, .. } | ConfigError::Unusable { key, .. }) => key,
            ReloadError::Config(ConfigError::Syntax { .. }) => "(syntax: see the message)",
            ReloadError::Config(ConfigError::Read { .. }) => "(the file)",
            ReloadError::Lookups(_) => "enrich.lookups",
            ReloadError::Upstream(_) => "upstream",
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
    /// The channel token (from `token` or the current content of
    /// `token_file`), when the new config has a channel.
    pub channel_token: Option<Secret>,
    /// The upstream sink's new settings (client built, files read), when
    /// the new config has `[upstream]`.
    pub upstream: Option<UpstreamLive>,
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
    /// Sections or keys that changed but apply only after a restart.
    pub restart_needed: Vec<&'static str>,
}

impl Changes {
    /// True when the reading side must restart (new sources or enricher).
    pub fn restart_sources(&self) -> bool {
        self.sources || self.enrich
    }
}

/// True when two config values differ, compared through their `Debug`
/// form (see [`diff`]).
fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// Compares two configs section by section.
///
/// The config structs are compared through their `Debug` form: it covers
/// every field, is deterministic (maps are `BTreeMap`s) and needs no
/// `PartialEq` on types owned by other modules. Secrets print as
/// `<redacted>`, so inline tokens are never compared here: the channel token
/// is always resolved and handed to the channel, which ignores an unchanged
/// one.
pub fn diff(old: &Config, new: &Config) -> Changes {
    let mut c = Changes {
        sources: differs(&old.sources, &new.sources),
        enrich: differs(&old.enrich, &new.enrich),
        log_level: old.log_level != new.log_level,
        restart_needed: Vec::new(),
    };
    if old.state_dir != new.state_dir {
        c.restart_needed.push("state_dir");
    }
    // Both present: applied live (FileHandle::reconfigure).
    if old.file_output.is_some() != new.file_output.is_some() {
        c.restart_needed.push("file_output");
    }
    match (&old.upstream, &new.upstream) {
        (Some(a), Some(b)) => c.restart_needed.extend(upstream::restart_keys(a, b)),
        (None, None) => {}
        _ => c.restart_needed.push("upstream"),
    }
    match (&old.channel, &new.channel) {
        (Some(a), Some(b)) => c.restart_needed.extend(crate::sink::channel::restart_keys(a, b)),
        (None, None) => {}
        _ => c.restart_needed.push("channel"),
    }
    if differs(&old.status, &new.status) {
        c.restart_needed.push("status");
    }
    if old.rejects != new.rejects {
        c.restart_needed.push("rejects");
    }
    c
}

/// Reads and checks the config at `path` against the `running` one:
/// validation, lookup tables (when `[enrich]` changed), channel token, log
/// level. Blocking file I/O: runs on a blocking thread.
pub async fn prepare(path: &Path, running: &Config) -> Result<Prepared, ReloadError> {
    let path: PathBuf = path.to_path_buf();
    let old_enrich = format!("{:?}", running.enrich);
    tokio::task::spawn_blocking(move || prepare_blocking(&path, &old_enrich)).await.map_err(|e| ReloadError::Task(e.to_string()))?
}

fn prepare_blocking(path: &Path, old_enrich: &str) -> Result<Prepared, ReloadError> {
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
    let enricher = match (format!("{:?}", config.enrich) != old_enrich, checked.enricher) {
        (true, Some(e)) => Some(Arc::new(e)),
        (true, None) => Some(Arc::new(Enricher::from_config(&config.enrich)?)),
        (false, _) => None,
    };
    let channel_token = config.channel.as_ref().map(ChannelConfig::token).transpose()?;
    let upstream =
        config.upstream.as_ref().map(UpstreamLive::build).transpose().map_err(|e| ReloadError::Upstream(crate::cmd::describe(&e)))?;
    Ok(Prepared { config, enricher, channel_token, upstream })
}

/// The parts of a running bridge a reload changes. Implemented by
/// [`crate::bridge::Bridge`]; tests use a recording fake.
pub trait Reloadable {
    /// Replaces the channel's token (no-op when unchanged or no channel).
    fn set_channel_token(&self, token: Secret);

    /// Puts a reloaded `[channel]` section's live keys in force (no-op
    /// without a channel).
    fn set_channel(&self, cfg: &ChannelConfig);

    /// Puts new settings in force in the upstream sink (no-op without one).
    fn set_upstream(&self, live: UpstreamLive);

    /// Puts new settings in force in the file sink (no-op without one).
    fn set_file_output(&self, cfg: FileOutputConfig);

    /// Restarts the reading side with these sources and, when given, a new
    /// enricher: stop the tailers at a batch boundary, start new ones that
    /// resume where the old ones stopped reading.
    fn restart_sources(
        &mut self,
        sources: &[SourceConfig],
        enricher: Option<Arc<Enricher>>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Applies a prepared config to the bridge and returns the config now in
/// effect: the new one, except the sections that need a restart, which
/// keep their running values.
pub async fn apply<B: Reloadable>(bridge: &mut B, running: &Config, prepared: Prepared) -> anyhow::Result<(Config, Changes)> {
    let Prepared { config: new, enricher, channel_token, upstream: upstream_live } = prepared;
    let changes = diff(running, &new);
    if changes.log_level {
        // Validated in `prepare`; an error here would only mean the
        // subscriber is not ours (tests).
        if let Err(e) = crate::service::set_log_level(&new.log_level) {
            tracing::warn!(error = %e, "cannot apply the new log level");
        }
    }
    if let Some(token) = channel_token {
        if running.channel.is_some() {
            bridge.set_channel_token(token);
        }
    }
    if let (Some(old), Some(new_ch)) = (&running.channel, &new.channel) {
        let live = crate::sink::channel::live_config(old, new_ch);
        let key = |c: &ChannelConfig| (c.records_per_message, c.mask_keep, c.ping_interval_secs);
        if key(old) != key(&live) {
            bridge.set_channel(&live);
        }
    }
    if let (Some(live), Some(_)) = (upstream_live, &running.upstream) {
        bridge.set_upstream(live);
    }
    if let (Some(old), Some(new_file)) = (&running.file_output, &new.file_output) {
        if differs(old, new_file) {
            bridge.set_file_output(new_file.clone());
        }
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
    if let (Some(run_file), Some(new_file)) = (&mut effective.file_output, &new.file_output) {
        *run_file = new_file.clone();
    }
    if let (Some(run_up), Some(new_up)) = (&mut effective.upstream, &new.upstream) {
        *run_up = upstream::live_config(run_up, new_up);
    }
    if let (Some(run_ch), Some(new_ch)) = (&mut effective.channel, &new.channel) {
        *run_ch = crate::sink::channel::live_config(run_ch, new_ch);
    }
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
                    upstream_reloaded = effective.upstream.is_some(),
                    log_level_changed = changes.log_level,
                    needs_restart = ?changes.restart_needed,
                    "configuration reloaded"
                );
                effective
            }
            Err(e) => {
                tracing::error!(error = %crate::cmd::describe(&e), "reload failed while applying; the sources keep their previous settings");
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

    #[derive(Default)]
    struct Fake {
        /// What was called, in order.
        calls: Mutex<Vec<String>>,
    }

    impl Reloadable for Fake {
        fn set_channel_token(&self, token: Secret) {
            self.calls.lock().unwrap().push(format!("token {}", token.expose()));
        }
        fn set_upstream(&self, live: UpstreamLive) {
            self.calls.lock().unwrap().push(format!("upstream {}", live.url_for_logs()));
        }
        fn set_channel(&self, cfg: &ChannelConfig) {
            self.calls.lock().unwrap().push(format!("channel records_per_message={}", cfg.records_per_message));
        }
        fn set_file_output(&self, cfg: FileOutputConfig) {
            self.calls.lock().unwrap().push(format!("file_output {}", cfg.path.display()));
        }
        async fn restart_sources(&mut self, sources: &[SourceConfig], enricher: Option<Arc<Enricher>>) -> anyhow::Result<()> {
            let names: Vec<_> = sources.iter().map(|s| s.name.clone().unwrap_or_default()).collect();
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
        check(&BASE.replace("token-one-0123456789", "token-two-0123456789"), Changes::default());
        check(
            &BASE.replace("token = \"token-one-0123456789\"", "token = \"token-one-0123456789\"\nlisten = \"127.0.0.1:9999\""),
            Changes { restart_needed: vec!["channel.listen"], ..Changes::default() },
        );
        // Batching, pings and masking apply live.
        check(
            &BASE.replace("token = \"token-one-0123456789\"", "token = \"token-one-0123456789\"\nrecords_per_message = 20\nmask_keep = 4"),
            Changes::default(),
        );
        // The archive's settings apply live; removing it needs a restart.
        check(&BASE.replace("/tmp/out.ndjson", "/tmp/other.ndjson"), Changes::default());
        check(
            &BASE.replace("[file_output]\npath = \"/tmp/out.ndjson\"\n", ""),
            Changes { restart_needed: vec!["file_output"], ..Changes::default() },
        );
        check(&BASE.replace("/tmp/state", "/tmp/state2"), Changes { restart_needed: vec!["state_dir"], ..Changes::default() });
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
        let prepared = Prepared { channel_token: Some(Secret::new("token-two-0123456789")), enricher: None, config: new, upstream: None };
        let mut fake = Fake::default();
        let (effective, changes) = apply(&mut fake, &running, prepared).await.unwrap();
        assert_eq!(
            *fake.calls.lock().unwrap(),
            vec!["token token-two-0123456789", "file_output /tmp/other.ndjson", "sources a,b enricher=false"]
        );
        assert_eq!(changes.restart_needed, vec!["channel.listen"]);
        assert!(changes.log_level);
        assert_eq!(effective.sources.len(), 2);
        assert_eq!(effective.log_level, "debug");
        assert_eq!(effective.file_output.as_ref().unwrap().path, Path::new("/tmp/other.ndjson"), "applied live");
        // The channel keeps its running listener until a restart; the next
        // reload reports it again.
        assert_eq!(effective.channel.as_ref().unwrap().listen, "127.0.0.1:8790");
        assert_eq!(effective.channel.as_ref().unwrap().token.as_ref().map(Secret::expose), Some("token-two-0123456789"));
        assert_eq!(diff(&effective, &cfg(&new_text)).restart_needed, vec!["channel.listen"]);
    }

    #[tokio::test]
    async fn upstream_settings_apply_live_except_the_fixed_keys() {
        let up = "\n[upstream]\nurl = \"http://127.0.0.1:9/a\"\nbatch_max_records = 100\n";
        let running = cfg(&format!("{BASE}{up}"));
        let changed = up.replace("/a", "/b").replace("100", "200");
        assert_eq!(diff(&running, &cfg(&format!("{BASE}{changed}"))), Changes::default());
        let fixed = format!("{BASE}{changed}format = \"ecls\"\nmax_in_flight = 9\n");
        assert_eq!(diff(&running, &cfg(&fixed)).restart_needed, vec!["upstream.format", "upstream.max_in_flight"]);
        assert_eq!(diff(&cfg(BASE), &running).restart_needed, vec!["upstream"], "adding [upstream] needs a restart");

        let new = cfg(&fixed);
        let live = UpstreamLive::build(new.upstream.as_ref().unwrap()).unwrap();
        let prepared = Prepared { channel_token: None, enricher: None, config: new, upstream: Some(live) };
        let mut fake = Fake::default();
        let (effective, changes) = apply(&mut fake, &running, prepared).await.unwrap();
        assert_eq!(*fake.calls.lock().unwrap(), vec!["upstream http://127.0.0.1:9/b"]);
        assert_eq!(changes.restart_needed, vec!["upstream.format", "upstream.max_in_flight"]);
        let u = effective.upstream.unwrap();
        assert_eq!((u.url.as_str(), u.batch_max_records), ("http://127.0.0.1:9/b", 200), "live keys from the new file");
        assert_eq!(
            (u.format, u.max_in_flight),
            (running.upstream.as_ref().unwrap().format, running.upstream.as_ref().unwrap().max_in_flight)
        );
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
        assert_eq!(p.channel_token.unwrap().expose(), "token-one-0123456789");
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
    }
}
