//! The `[export]` sink's task: takes batches from its queue, writes them
//! into slice files through the [`Exporter`] on the blocking pool, syncs
//! at most every `fsync_interval_ms` (sooner when the batches held pin
//! much memory) and acknowledges the batches synced; publishes the files
//! due (`close_after_secs` after their slice's end) and hands them to the
//! uploader when `[export.s3]` is set.
//!
//! Write failures (a full disk): nothing is acknowledged and nothing is
//! lost. The open files are cut back to their last sync
//! ([`Exporter::repair`]) and the batches not yet acknowledged are written
//! again, on a timer with backoff, until it works; the fault is shown in
//! `/status`, `/metrics` and `/readyz` (component `export`), and meanwhile
//! the sink reads no more batches.
//!
//! Stop: when its queue closes it syncs and acknowledges what it holds;
//! open slices stay `.partial` files, taken up by the next start. Uploads
//! not done stay marked for the next start.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{ExportConfig, ExportSection};
use super::exporter::{Exporter, Published};
use super::s3::{self, UploadQueue};
use super::stats::ExportStats;
use crate::listener::Bound;
use crate::pipeline::{Batch, Fanout};
use crate::settings::ConfigError;
use crate::sink::{Keys, Needs, SinkContext, SinkHandle};
use crate::telemetry::{Fault, SinkStats};

/// The config section.
pub const SECTION: &str = "export";

/// The sink's name in statistics, logs, the fan-out and its figures.
pub const NAME: &str = "export";

/// Memory the batches waiting for their sync may pin (the chunks their
/// records borrow from) before an early sync.
const SYNC_EARLY_PINNED_BYTES: usize = 16 << 20;

/// Batches held waiting for their sync before an early sync.
const SYNC_EARLY_BATCHES: usize = 256;

/// The export as a [`crate::sink::Sink`].
pub struct ExportSink;

impl crate::sink::Sink for ExportSink {
    const SECTION: &'static str = SECTION;
    const NAME: &'static str = NAME;
    type Section = ExportSection;
    type Config = ExportConfig;
    type Handle = ();
    type Update = ();

    fn config(section: ExportSection, base: &Path) -> Result<ExportConfig, ConfigError> {
        ExportConfig::from_section(section, base)
    }

    fn keys(k: &mut Keys<ExportConfig>) {
        // Fixed while running: the files open now were started under them
        // (their name, columns, compression and close time).
        k.restart("export.dir", |c| &mut c.dir)
            .restart("export.slice_minutes", |c| &mut c.slice)
            .restart("export.close_after_secs", |c| &mut c.close_after)
            .restart("export.include_org", |c| &mut c.include_org)
            .restart("export.bridge_columns", |c| &mut c.bridge_columns)
            .restart("export.header", |c| &mut c.header)
            .restart("export.gzip", |c| &mut c.gzip)
            .restart("export.fsync_interval_ms", |c| &mut c.fsync_interval)
            .restart("export.max_open_files", |c| &mut c.max_open_files)
            .restart("export.max_past_hours", |c| &mut c.max_past)
            .restart("export.max_future_minutes", |c| &mut c.max_future)
            .restart("export.escape_formulas", |c| &mut c.formulas)
            .restart("export.file_mode", |c| &mut c.access.file_mode)
            .restart("export.group", |c| &mut c.access.group)
            .restart("export.s3", |c| &mut c.s3);
    }

    fn needs(cfg: &ExportConfig, needs: &mut Needs) {
        needs.dirs.push(("export.dir", cfg.dir.clone(), true));
    }

    fn summary(c: &ExportConfig) -> String {
        let upload = match &c.s3 {
            Some(s) => format!(", uploaded to s3://{}/{} at {}", s.bucket, s.prefix, s.endpoint.as_deref().unwrap_or("AWS")),
            None => String::new(),
        };
        let readers = match (c.access.file_mode, &c.access.group) {
            (Some(m), Some(g)) => format!(", files {m:04o} group {}", g.name),
            (Some(m), None) => format!(", files {m:04o}"),
            (None, _) => String::new(),
        };
        format!(
            "{} ({}-minute slices closed {} s after their end, {} columns, {}{readers}{upload})",
            c.dir.display(),
            c.slice.as_secs() / 60,
            c.close_after.as_secs(),
            if c.include_org { 39 } else { 35 },
            if c.gzip.is_some() { "gzip" } else { "plain CSV" },
        )
    }

    async fn start(cfg: &ExportConfig, ctx: &SinkContext, fanout: &mut Fanout, _listeners: &mut Bound) -> anyhow::Result<(SinkHandle, ())> {
        start(cfg, ctx, fanout).await
    }

    fn prepare(_cfg: &ExportConfig) -> anyhow::Result<()> {
        Ok(())
    }

    fn reconfigure(_handle: &(), _update: ()) {}
}

/// Starts the export: takes up the files an earlier run left, starts the
/// uploader, registers the queue on the fan-out.
pub async fn start(cfg: &ExportConfig, ctx: &SinkContext, fanout: &mut Fanout) -> anyhow::Result<(SinkHandle, ())> {
    let stats = ExportStats::published_in(ctx.telemetry.figures(NAME));
    let (c, st) = (cfg.clone(), stats.clone());
    let (exporter, rec) = tokio::task::spawn_blocking(move || Exporter::start(&c, st, crate::time::now_ms()))
        .await?
        .with_context(|| format!("export.dir {}: cannot take up the export's files", cfg.dir.display()))?;
    if rec.files > 0 {
        tracing::info!(
            files = rec.files,
            records = rec.records,
            dropped_rows = rec.dropped_rows,
            "export: took up the slice files an earlier run left open"
        );
    }
    let uploader = match &cfg.s3 {
        Some(s3cfg) => {
            let stop = ctx.shutdown.child_token();
            let (queue, task) = s3::spawn(s3cfg.clone(), cfg.dir.clone(), stats.clone(), stop.clone())?;
            Some(Uploader { queue, task, stop })
        }
        None => None,
    };
    let (tx, rx) = crate::sink::queue();
    fanout.add(NAME, tx);
    let w = Writer {
        exporter: Arc::new(Mutex::new(exporter)),
        pending: Vec::new(),
        pinned: 0,
        stats: ctx.telemetry.sink(NAME),
        fault: ctx.telemetry.fault(NAME),
        shutdown: ctx.shutdown.clone(),
        uploads: uploader.as_ref().map(|u| u.queue.clone()),
    };
    let task = tokio::spawn(run(w, rx, cfg.fsync_interval, uploader));
    Ok((SinkHandle { name: NAME, task }, ()))
}

/// The uploader task and how to stop it.
struct Uploader {
    queue: UploadQueue,
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

/// The sink's state.
struct Writer {
    /// Used on the blocking pool, one call at a time.
    exporter: Arc<Mutex<Exporter>>,
    /// Batches written but not yet synced (acknowledged after the sync).
    pending: Vec<Arc<Batch>>,
    /// Bytes of the chunks `pending` keeps alive.
    pinned: usize,
    /// The sink's delivery figures.
    stats: SinkStats,
    /// Reports a write that cannot be made.
    fault: Fault,
    /// Cancelled when the sink must stop now.
    shutdown: CancellationToken,
    /// Where published files go, with `[export.s3]`.
    uploads: Option<UploadQueue>,
}

/// The sink must stop now: `Ok` at shutdown (what is held stays
/// unacknowledged, read again after the restart), an error when the
/// blocking pool is gone.
struct Stop(anyhow::Result<()>);

impl Writer {
    /// Runs `f` on the exporter on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Exporter) -> std::io::Result<T> + Send + 'static,
    ) -> anyhow::Result<std::io::Result<T>> {
        let ex = self.exporter.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = ex.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut g)
        })
        .await
        .context("export: the write task failed")
    }

    /// Queues published files for upload.
    fn queue_uploads(&self, files: Vec<Published>) {
        for p in files {
            tracing::info!(file = %p.path.display(), "export: published");
            if let Some(q) = &self.uploads {
                q.push(p.name);
            }
        }
    }

    /// After a failed write, sync or publish (`what` says which): reports
    /// the fault, waits, cuts the open files back to their last sync and
    /// writes every pending batch again, until that works.
    async fn recover(&mut self, what: &str, e: std::io::Error) -> Result<(), Stop> {
        let mut msg = format!("{what}: {e}");
        loop {
            let delay = self.fault.failed(&msg);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => return Err(Stop(Ok(()))),
            }
            let batches = self.pending.clone();
            let r = self
                .blocking(move |ex| {
                    ex.repair()?;
                    let now = crate::time::now_ms();
                    let mut published = Vec::new();
                    for b in &batches {
                        published.extend(ex.write(b.records.iter(), b.observed_ms, now)?);
                    }
                    ex.sync()?;
                    Ok(published)
                })
                .await
                .map_err(|e| Stop(Err(e)))?;
            match r {
                Ok(published) => {
                    self.fault.recovered();
                    self.queue_uploads(published);
                    return Ok(());
                }
                Err(e) => msg = format!("cannot write the export files again: {e}"),
            }
        }
    }

    /// Writes one batch (held until the next sync acknowledges it).
    async fn write(&mut self, batch: Arc<Batch>) -> Result<(), Stop> {
        self.stats.enqueued(batch.records.len());
        if self.pending.is_empty() {
            self.stats.set_oldest_pending(batch.observed_ms);
        }
        self.pinned += batch.records.pinned_bytes();
        self.pending.push(batch.clone());
        let r = self
            .blocking(move |ex| ex.write(batch.records.iter(), batch.observed_ms, crate::time::now_ms()))
            .await
            .map_err(|e| Stop(Err(e)))?;
        match r {
            Ok(published) => {
                self.queue_uploads(published);
                Ok(())
            }
            Err(e) => self.recover("cannot write an export file", e).await,
        }
    }

    /// Syncs the open files and acknowledges the pending batches.
    async fn sync_and_ack(&mut self) -> Result<(), Stop> {
        if !self.pending.is_empty() {
            let r = self.blocking(|ex| ex.sync()).await.map_err(|e| Stop(Err(e)))?;
            if let Err(e) = r {
                self.recover("cannot sync an export file", e).await?;
            }
        }
        let now = crate::time::now_ms();
        for b in self.pending.drain(..) {
            self.stats.delivered(b.records.len(), b.observed_ms, now);
            b.ack();
        }
        self.pinned = 0;
        self.stats.set_oldest_pending(0);
        Ok(())
    }

    /// Publishes the files due now (everything written is synced first:
    /// a published file is complete).
    async fn close_due(&mut self) -> Result<(), Stop> {
        self.sync_and_ack().await?;
        let r = self.blocking(|ex| ex.close_due(crate::time::now_ms())).await.map_err(|e| Stop(Err(e)))?;
        match r {
            Ok(published) => {
                self.queue_uploads(published);
                Ok(())
            }
            // The file stays open (a `.partial`); the next attempt comes
            // after the fault's backoff.
            Err(e) => self.recover("cannot publish an export file", e).await,
        }
    }

    /// When the next file is due, as a timer instant.
    fn next_close(&self) -> Option<Instant> {
        let at = self.exporter.lock().unwrap_or_else(|e| e.into_inner()).next_deadline()?;
        let wait = at.saturating_sub(crate::time::now_ms()).max(0) as u64;
        Some(Instant::now() + Duration::from_millis(wait))
    }
}

async fn run(mut w: Writer, mut rx: mpsc::Receiver<Arc<Batch>>, interval: Duration, uploader: Option<Uploader>) -> anyhow::Result<()> {
    let r = serve(&mut w, &mut rx, interval).await;
    if let Some(u) = uploader {
        // What is not uploaded stays marked for the next start.
        u.stop.cancel();
        let _ = u.task.await;
    }
    match r {
        Ok(()) => Ok(()),
        Err(Stop(r)) => r,
    }
}

async fn serve(w: &mut Writer, rx: &mut mpsc::Receiver<Arc<Batch>>, interval: Duration) -> Result<(), Stop> {
    let mut sync_at: Option<Instant> = None;
    loop {
        let close_at = w.next_close();
        tokio::select! {
            b = rx.recv() => {
                let Some(batch) = b else { break };
                w.write(batch).await?;
                sync_at.get_or_insert(Instant::now() + interval);
                if w.pinned >= SYNC_EARLY_PINNED_BYTES || w.pending.len() >= SYNC_EARLY_BATCHES {
                    w.sync_and_ack().await?;
                    sync_at = None;
                }
            }
            _ = sleep_until(sync_at) => {
                w.sync_and_ack().await?;
                sync_at = None;
            }
            _ = sleep_until(close_at) => {
                w.close_due().await?;
                sync_at = None;
            }
            _ = w.shutdown.cancelled() => return Ok(()),
        }
    }
    // The queue closed: the sources stopped. Sync and acknowledge what is
    // held; open slices stay `.partial` for the next start.
    w.sync_and_ack().await
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
