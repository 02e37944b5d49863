//! The running bridge: sources -> fan-out -> sinks, with checkpoints.
//!
//! [`crate::preflight::prepare`] first checks what the config points at,
//! locks `state_dir`, binds the listeners and loads the lookup tables;
//! [`Bridge::start`] then builds the pieces in dependency order: sinks
//! (every configured [`crate::sink::Sink`]), checkpoints, then the
//! readers of every `[[source]]` ([`crate::source::Source`]: a
//! [`crate::tail::Tailer`] per file source). [`Bridge::stop`] takes
//! them down in the reverse order, which is what makes shutdown lose
//! nothing:
//!
//! 1. the tailers stop reading at a batch boundary (no half batch; a batch
//!    still waiting for room in a full sink queue reached no sink and is
//!    taken back, to be read again);
//! 2. the fan-out is dropped, so each sink's queue closes and the sink
//!    drains what it holds (within [`DRAIN_GRACE`], after which sinks are
//!    told to stop now);
//! 3. the final checkpoint is written with every acknowledged offset.
//!
//! [`run`] is the whole lifetime for `calllog-bridge run`: start, wait for
//! the shutdown token, stop. [`run_with_reload`] also applies reload
//! requests (SIGHUP, see [`crate::reload`]): the reading side restarts with
//! the new sources and enricher while the sinks keep running.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{CheckpointError, Checkpointer, DamagedState};
use crate::config::Config;
use crate::enrich::Enricher;
use crate::listener::Bound;
use crate::pipeline::Fanout;
use crate::sink::{self, SinkContext, SinkHandle};
use crate::source::{SourceConfigured, SourceContext};
use crate::tail::reader::RejectSink;
use crate::telemetry::Telemetry;

/// How long sinks may take to drain at shutdown before they are told to
/// stop at once (kept below systemd's default `TimeoutStopSec` of 90 s and
/// the unit's own).
pub const DRAIN_GRACE: Duration = Duration::from_secs(20);

/// The `/status` section and `/metrics` prefix of the checkpoint writer's
/// figures.
pub const CHECKPOINT_FIGURES: &str = "checkpoints";

/// How often lookup files are checked for changes.
pub const LOOKUP_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// A running bridge.
pub struct Bridge {
    /// Statistics of files and sinks (for `/status` and `/metrics`).
    telemetry: Telemetry,
    /// Lookups and masking, shared with every reader.
    enricher: Arc<Enricher>,
    /// Durable offsets.
    checkpoints: Checkpointer,
    /// Stops the tailers (and their readers).
    stop_reading: CancellationToken,
    /// Stops the sinks now (after the grace period).
    stop_sinks: CancellationToken,
    /// Stops the background tasks (checkpoint writer, lookup reloads).
    stop_background: CancellationToken,
    /// One task per source.
    sources: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
    /// The sinks.
    sinks: Vec<SinkHandle>,
    /// The fan-out to the sinks, held until shutdown.
    fanout: Option<Fanout>,
    /// Periodic checkpoint writes and lookup reloads.
    background: Vec<JoinHandle<()>>,
    /// Where rejected lines go (shared by every tailer).
    rejects: Option<RejectSink>,
    /// The running sinks' controls (a reload's new settings).
    controls: sink::Running,
    /// Stops the current enricher's lookup reloader (replaced on reload).
    stop_lookups: CancellationToken,
    /// Checkpoint documents written (each a file and a directory fsync).
    checkpoint_writes: crate::telemetry::Counter,
    /// The top-level `host` the bridge started with (a change needs a
    /// restart).
    host: Arc<str>,
}

impl Bridge {
    /// Starts everything the config names, with the lookup tables and the
    /// channel's listener that [`crate::preflight::prepare`] made ready
    /// (`state_dir` exists and is locked).
    pub async fn start(cfg: &Config, telemetry: Telemetry, enricher: Enricher, mut listeners: Bound) -> anyhow::Result<Bridge> {
        let state_dir = cfg.state_dir.clone();
        let enricher = Arc::new(enricher);

        let stop_sinks = CancellationToken::new();
        let ctx = SinkContext { state_dir: state_dir.clone(), shutdown: stop_sinks.clone(), telemetry: telemetry.clone() };
        // One budget for what every reader reads ahead and every sink holds.
        let mut fanout = Fanout::with_budget(crate::budget::MemoryBudget::new(cfg.memory_max_bytes, &telemetry));
        let mut controls = cfg.sinks.start(&ctx, &mut fanout, &mut listeners).await?;
        let sinks = std::mem::take(&mut controls.tasks);
        // /status and /metrics show the enricher's lookup counters.
        telemetry.set_lookups(enricher.lookup_stats());

        let checkpoints = {
            let d = state_dir.clone();
            match tokio::task::spawn_blocking(move || Checkpointer::load(&d)).await? {
                Ok(c) => c,
                // Not a guess about where to resume: the operator decides
                // (exit EXIT_DAMAGED_STATE, `reset-state`).
                Err(CheckpointError::Invalid { path, message }) => return Err(DamagedState { path, problem: message }.into()),
                Err(e) => return Err(e.into()),
            }
        };

        let stop_reading = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let stop_lookups = stop_background.child_token();
        let mut background = Vec::new();
        let checkpoint_writes =
            telemetry.figures(CHECKPOINT_FIGURES).counter("writes", "Checkpoint documents written (each a file and a directory fsync)");
        background.push(tokio::spawn(checkpoint_writer(
            checkpoints.clone(),
            cfg.checkpoint_interval,
            checkpoint_writes.clone(),
            stop_background.clone(),
            telemetry.fault("checkpoints"),
        )));
        if !cfg.enrich.lookups.is_empty() {
            background.push(tokio::spawn(lookup_reloader(enricher.clone(), stop_lookups.clone())));
        }

        let rejects = rejects_file(&state_dir, &cfg.rejects).await?;
        let mut bridge = Bridge {
            telemetry,
            enricher,
            checkpoints,
            stop_reading,
            stop_sinks,
            stop_background,
            sources: Vec::new(),
            sinks,
            fanout: Some(fanout),
            background,
            rejects,
            controls,
            stop_lookups,
            checkpoint_writes,
            host: Arc::from(cfg.host.as_str()),
        };
        bridge.spawn_sources(&cfg.sources, true)?;
        Ok(bridge)
    }

    /// Starts the readers of every source, stopped by `stop_reading`;
    /// `startup`: the bridge is starting (sources run their start-up
    /// checks), not a reload.
    fn spawn_sources(&mut self, sources: &[SourceConfigured], startup: bool) -> anyhow::Result<()> {
        let fanout = self.fanout.as_ref().context("the bridge is stopping")?;
        self.telemetry.retain_sources(&sources.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
        let ctx = SourceContext {
            fanout: fanout.clone(),
            checkpoints: self.checkpoints.clone(),
            enricher: self.enricher.clone(),
            stop: self.stop_reading.clone(),
            rejects: self.rejects.clone(),
            telemetry: self.telemetry.clone(),
            startup,
            host: self.host.clone(),
        };
        let started = crate::source::start_all(sources, &ctx)?;
        self.sources = started.readers;
        self.background.extend(started.background);
        Ok(())
    }

    /// Stops every tailer at a batch boundary and waits for them.
    async fn stop_sources(&mut self) {
        self.stop_reading.cancel();
        for (name, task) in self.sources.drain(..) {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(source = %name, error = %e, "source failed"),
                Err(e) => tracing::error!(source = %name, error = %e, "source task panicked"),
            }
        }
    }

    /// The statistics registry.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The enricher (for status and reloads).
    pub fn enricher(&self) -> &Arc<Enricher> {
        &self.enricher
    }

    /// Stops reading, drains the sinks, writes the final checkpoint.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop_sources().await;
        // Every reader has stopped: closing the fan-out closes the sink
        // queues once they are drained.
        drop(self.fanout.take());
        let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
        for h in self.sinks.drain(..) {
            let mut task = h.task;
            let res = tokio::select! {
                r = &mut task => r,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(sink = h.name, "sink did not drain within the grace period; stopping it (undelivered records are read again on restart)");
                    self.stop_sinks.cancel();
                    task.await
                }
            };
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(sink = h.name, error = %crate::service::describe(&e), "sink failed"),
                Err(e) => tracing::error!(sink = h.name, error = %e, "sink task panicked"),
            }
        }
        self.stop_sinks.cancel();
        self.stop_background.cancel();
        for t in self.background.drain(..) {
            let _ = t.await;
        }
        self.checkpoints.write_async(true).await.context("cannot write the final checkpoint")?;
        self.checkpoint_writes.inc();
        tracing::info!("stopped; checkpoints written");
        Ok(())
    }
}

/// A reload (see [`crate::reload`]) puts the sinks' live settings in force
/// in place and restarts the reading side; the sinks keep running
/// throughout.
impl crate::reload::Reloadable for Bridge {
    fn reconfigure_sink(&self, update: crate::sink::Update) {
        self.controls.reconfigure(update);
    }

    async fn restart_sources(&mut self, sources: &[SourceConfigured], enricher: Option<Arc<Enricher>>) -> anyhow::Result<()> {
        // Every batch the old tailers read has reached the fan-out when they
        // return; the new ones resume at `Checkpointer::resume_offset`, so
        // batches still in flight are neither lost nor read again.
        self.stop_sources().await;
        // The state the old tailers leave is on disk before new ones start,
        // whatever the checkpoint interval (a failure is retried by the
        // writer, and shown as its fault meanwhile).
        match self.checkpoints.write_async(false).await {
            Ok(true) => self.checkpoint_writes.inc(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot write checkpoints at the reload; retried"),
        }
        self.stop_reading = CancellationToken::new();
        if let Some(e) = enricher {
            self.stop_lookups.cancel();
            self.stop_lookups = self.stop_background.child_token();
            // The old tailers are stopped, so the old enricher's counters are final.
            self.telemetry.set_lookups(e.lookup_stats());
            if !e.files().is_empty() {
                self.background.push(tokio::spawn(lookup_reloader(e.clone(), self.stop_lookups.clone())));
            }
            self.enricher = e;
        }
        self.spawn_sources(sources, false)?;
        tracing::info!(sources = self.sources.len(), "sources restarted with the reloaded config");
        Ok(())
    }
}

/// Name of the rejects file inside `state_dir`.
pub use crate::rejects::FILE_NAME as REJECTS_FILE;

/// `<state_dir>/rejects.ndjson`, bounded by `[rejects]`; lines that do not
/// parse are written there (file, line, offset, reason, raw line). Opened
/// once here, so an unwritable state directory stops the start.
async fn rejects_file(state_dir: &std::path::Path, cfg: &crate::config::RejectsConfig) -> anyhow::Result<Option<RejectSink>> {
    let path = state_dir.join(REJECTS_FILE);
    let p = path.clone();
    tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().create(true).append(true).open(&p))
        .await?
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Some(Arc::new(crate::rejects::RejectsFile::new(path, cfg.rotation()))))
}

/// Writes checkpoints as soon as an offset advanced, at most once per
/// `interval` (`checkpoint_interval_ms`): after a `kill -9` the records
/// read again are those acknowledged since the last write (at most one
/// interval's worth), plus the batches not yet acknowledged. At-least-once
/// does not depend on it: an offset on disk never passes what every sink
/// acknowledged. A failed write (a full state_dir) is retried on a timer
/// until it works, whether or not new data arrives, and reported as the
/// `checkpoints` fault meanwhile.
async fn checkpoint_writer(
    checkpoints: Checkpointer,
    interval: Duration,
    writes: crate::telemetry::Counter,
    stop: CancellationToken,
    fault: crate::telemetry::Fault,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = checkpoints.changed() => {}
        }
        let mut failed = false;
        loop {
            let e = match checkpoints.write_async(false).await {
                Ok(written) => {
                    if written {
                        writes.inc();
                    }
                    break;
                }
                Err(e) => e,
            };
            failed = true;
            let delay = fault.failed(&e.to_string());
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        if failed {
            fault.recovered();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Reloads lookup tables when their files change.
async fn lookup_reloader(enricher: Arc<Enricher>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(LOOKUP_RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let e = enricher.clone();
                match tokio::task::spawn_blocking(move || e.reload_if_changed()).await {
                    Ok(Ok(true)) => tracing::info!("lookup tables reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot reload lookup tables; keeping the old ones"),
                    Err(_) => {}
                }
            }
        }
    }
}

/// Runs the bridge until `shutdown` is cancelled, then stops it cleanly.
/// No reloads: see [`run_with_reload`].
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let c = cfg.clone();
    let prepared = tokio::task::spawn_blocking(move || crate::preflight::prepare(&c)).await??;
    run_with_reload(cfg, prepared, shutdown, None).await
}

/// Runs the bridge until `shutdown` is cancelled, applying each reload
/// request (SIGHUP) on the way, then stops it cleanly.
///
/// `prepared` ([`crate::preflight::prepare`]) holds the `state_dir` lock
/// (released when this returns) and every listener, already bound: a port
/// in use was refused before anything started. The status listener serves
/// first, so `/healthz` answers while the bridge starts; `/readyz` turns
/// 200 once sources and sinks are up, and 503 again when shutdown begins.
/// The listener keeps serving `/status` during the drain and stops last.
pub async fn run_with_reload(
    cfg: Config,
    prepared: crate::preflight::Prepared,
    shutdown: CancellationToken,
    mut reloads: Option<crate::reload::Requests>,
) -> anyhow::Result<()> {
    let crate::preflight::Prepared { lock: _lock, mut listeners, enricher, warnings } = prepared;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let telemetry = Telemetry::new();
    telemetry.history().configure(cfg.status.history_minutes, &cfg.host);
    let stop_status = CancellationToken::new();
    let status = match listeners.take(crate::preflight::STATUS_LISTEN) {
        Some(l) => {
            let srv = crate::telemetry::server::start_on(l, &cfg.status, telemetry.clone(), stop_status.clone())?;
            tracing::info!(addr = %srv.addr, "status listener: /metrics, /status, /healthz, /readyz");
            Some(srv)
        }
        None => None,
    };
    let mut bridge = Bridge::start(&cfg, telemetry.clone(), enricher, listeners).await?;
    if let Some(srv) = &status {
        if let Err(e) = crate::telemetry::server::write_addr_file(&cfg.state_dir, srv.addr).await {
            tracing::warn!(error = %e, "cannot write {}", crate::telemetry::server::addr_file(&cfg.state_dir).display());
        }
    }
    telemetry.set_ready(true);
    tracing::info!(sources = cfg.sources.len(), "bridge running");
    crate::service::notify_ready(&format!("running: {} source(s)", cfg.sources.len()));
    let watchdog = crate::service::spawn_watchdog(shutdown.clone());
    let mut cfg = cfg;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            path = crate::reload::Requests::next(&mut reloads) => {
                cfg = crate::reload::on_hup(&mut bridge, cfg, &path).await;
            }
        }
    }
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    telemetry.set_ready(false);
    tracing::info!("stopping: draining sinks");
    let res = bridge.stop().await;
    stop_status.cancel();
    if let Some(srv) = status {
        if let Err(e) = srv.wait().await {
            tracing::warn!(error = %crate::service::describe(&e), "status listener");
        }
    }
    res
}
