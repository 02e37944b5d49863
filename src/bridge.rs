//! The running bridge: sources -> fan-out -> sinks, with checkpoints.
//!
//! [`Bridge::start`] builds the pieces in dependency order: state
//! directory, telemetry, enricher, sinks (via [`crate::sink::start_all`]),
//! checkpoints, then one [`Tailer`] per `[[source]]`. [`Bridge::stop`] takes
//! them down in the reverse order, which is what makes shutdown lose
//! nothing:
//!
//! 1. the tailers stop reading at a batch boundary (no half batch);
//! 2. the fan-out is dropped, so each sink's queue closes and the sink
//!    drains what it holds (within [`DRAIN_GRACE`], after which sinks are
//!    told to stop now);
//! 3. the final checkpoint is written with every acknowledged offset.
//!
//! [`run`] is the whole lifetime for `calllog-bridge run`: start, wait for
//! the shutdown token, stop. A reload (SIGHUP) can be built as stop +
//! start with the new config, or by adding sources to a running bridge.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpointer;
use crate::config::Config;
use crate::enrich::Enricher;
use crate::pipeline::Fanout;
use crate::sink::{self, SinkContext, SinkHandle};
use crate::tail::reader::Shared;
use crate::tail::Tailer;
use crate::telemetry::Telemetry;

/// How long sinks may take to drain at shutdown before they are told to
/// stop at once (kept below systemd's default `TimeoutStopSec` of 90 s and
/// the unit's own).
pub const DRAIN_GRACE: Duration = Duration::from_secs(20);

/// How often acknowledged offsets are written to disk. A crash re-reads at
/// most this much more than the unacknowledged batches.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

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
}

impl Bridge {
    /// Starts everything the config names.
    pub async fn start(cfg: &Config, telemetry: Telemetry) -> anyhow::Result<Bridge> {
        let state_dir = cfg.state_dir.clone();
        tokio::task::spawn_blocking({
            let d = state_dir.clone();
            move || std::fs::create_dir_all(&d)
        })
        .await?
        .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;

        let enricher = {
            let c = cfg.enrich.clone();
            Arc::new(tokio::task::spawn_blocking(move || Enricher::from_config(&c)).await?.context("cannot load [enrich] lookups")?)
        };

        let stop_sinks = CancellationToken::new();
        let ctx = SinkContext { state_dir: state_dir.clone(), shutdown: stop_sinks.clone(), telemetry: telemetry.clone() };
        let mut fanout = Fanout::new();
        let sinks = sink::start_all(cfg, &ctx, &mut fanout).await?;

        let checkpoints = {
            let d = state_dir.clone();
            tokio::task::spawn_blocking(move || Checkpointer::load(&d)).await??
        };

        let stop_reading = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let mut background = Vec::new();
        background.push(tokio::spawn(checkpoint_writer(checkpoints.clone(), stop_background.clone())));
        if !cfg.enrich.lookups.is_empty() {
            background.push(tokio::spawn(lookup_reloader(enricher.clone(), stop_background.clone())));
        }

        let rejects = rejects_file(&state_dir).await?;
        let mut sources = Vec::new();
        for (i, s) in cfg.sources.iter().enumerate() {
            let name = s.name.clone().unwrap_or_else(|| format!("source{i}"));
            let shared = Shared {
                format: s.format,
                max_line_bytes: s.max_line_bytes,
                fanout: fanout.clone(),
                checkpoints: checkpoints.clone(),
                enricher: enricher.clone(),
                shutdown: stop_reading.clone(),
                rejects: rejects.clone(),
            };
            let tailer = Tailer::new(s.clone(), name.clone(), shared, telemetry.clone())?;
            sources.push((name, tokio::spawn(tailer.run())));
        }
        Ok(Bridge {
            telemetry,
            enricher,
            checkpoints,
            stop_reading,
            stop_sinks,
            stop_background,
            sources,
            sinks,
            fanout: Some(fanout),
            background,
        })
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
        self.stop_reading.cancel();
        for (name, task) in self.sources.drain(..) {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(source = %name, error = %e, "source failed"),
                Err(e) => tracing::error!(source = %name, error = %e, "source task panicked"),
            }
        }
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
                Ok(Err(e)) => tracing::error!(sink = h.name, error = %format!("{e:#}"), "sink failed"),
                Err(e) => tracing::error!(sink = h.name, error = %e, "sink task panicked"),
            }
        }
        self.stop_sinks.cancel();
        self.stop_background.cancel();
        for t in self.background.drain(..) {
            let _ = t.await;
        }
        self.checkpoints.write_async(true).await.context("cannot write the final checkpoint")?;
        tracing::info!("stopped; checkpoints written");
        Ok(())
    }
}

/// Name of the rejects file inside `state_dir`.
pub const REJECTS_FILE: &str = "rejects.ndjson";

/// Opens `<state_dir>/rejects.ndjson` for appending; lines that do not
/// parse are written there (file, line, offset, reason, raw line).
async fn rejects_file(state_dir: &std::path::Path) -> anyhow::Result<Option<crate::tail::reader::RejectSink>> {
    let path = state_dir.join(REJECTS_FILE);
    let p = path.clone();
    let file = tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().create(true).append(true).open(&p))
        .await?
        .with_context(|| format!("cannot open {}", path.display()))?;
    let writer = std::sync::Mutex::new(crate::rejects::RejectsWriter::new(file));
    let sink: crate::tail::reader::RejectSink = Arc::new(move |entry: &crate::rejects::RejectEntry<'_>| {
        let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = w.write(entry) {
            tracing::warn!(error = %e, file = %path.display(), "cannot write to the rejects file");
        }
    });
    Ok(Some(sink))
}

/// Writes changed checkpoints every [`CHECKPOINT_INTERVAL`].
async fn checkpoint_writer(checkpoints: Checkpointer, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = checkpoints.write_async(false).await {
                    tracing::error!(error = %e, "cannot write checkpoints; retrying");
                }
            }
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
///
/// The status listener (`[status]`) starts first, so `/healthz` answers
/// while the bridge starts; `/readyz` turns 200 once sources and sinks are
/// up, and 503 again when shutdown begins. The listener keeps serving
/// `/status` during the drain and stops last.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let telemetry = Telemetry::new();
    let stop_status = CancellationToken::new();
    // A status port already in use must not stop the records: the bridge
    // runs on without /status and says so loudly.
    let status = if cfg.status.enabled {
        match crate::telemetry::server::start(&cfg.status, telemetry.clone(), stop_status.clone()).await {
            Ok(srv) => {
                tracing::info!(addr = %srv.addr, "status listener: /metrics, /status, /healthz, /readyz");
                Some(srv)
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "status listener NOT running; records still flow");
                None
            }
        }
    } else {
        None
    };
    let bridge = Bridge::start(&cfg, telemetry.clone()).await?;
    if let Some(srv) = &status {
        // After Bridge::start, which creates the state directory.
        if let Err(e) = crate::telemetry::server::write_addr_file(&cfg.state_dir, srv.addr).await {
            tracing::warn!(error = %e, "cannot write {}", crate::telemetry::server::addr_file(&cfg.state_dir).display());
        }
    }
    telemetry.set_ready(true);
    tracing::info!(sources = cfg.sources.len(), "bridge running");
    shutdown.cancelled().await;
    telemetry.set_ready(false);
    tracing::info!("stopping: draining sinks");
    let res = bridge.stop().await;
    stop_status.cancel();
    if let Some(srv) = status {
        if let Err(e) = srv.wait().await {
            tracing::warn!(error = %format!("{e:#}"), "status listener");
        }
    }
    res
}
