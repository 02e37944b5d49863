//! The `[file_output]` sink: a local archive of records, one JSON line per
//! record (`ndjson`, or `ecls`: one `{"data":[record]}` per line).
//!
//! Invariant: a batch is acknowledged only after the bytes of all its
//! records have been written *and fsynced*; so a checkpoint never gets
//! ahead of what is durably in the archive. fsync runs at most every
//! `fsync_interval_ms` (sooner when much is pending: `SYNC_EARLY_BYTES` of
//! output, or `SYNC_EARLY_PINNED_BYTES`, at most half the memory budget, of
//! chunks and records held by the batches waiting, which input controls;
//! sooner still when the budget is reached), and every write, fsync and
//! rotation runs on the blocking pool.
//!
//! Rotation: when the file reaches `rotate_bytes` it is synced, renamed to
//! `<path>.1` (older ones shift to `.2`, ...; beyond `keep_files` they are
//! deleted) and a new file is started.
//!
//! Write failures (a full disk): nothing is acknowledged and nothing is
//! lost. The file is cut back to what was last synced (a failed write or
//! fsync leaves its tail untrusted), the batches not yet synced are
//! written again whole, on a timer with backoff, until it works; the
//! fault is logged once, then periodically, and shown in `/status`,
//! `/metrics` and `/readyz` (component `file`). Meanwhile the sink reads no
//! more batches: its queue fills and reading waits (a full disk is a
//! local fault every sink shares). If a rotation happened since the last
//! sync, records of those batches may appear in both files (at least
//! once).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Keys, Needs, SinkContext, SinkHandle};
use crate::listener::Bound;
use crate::pipeline::{Batch, Fanout};
use crate::record::Shape;
use crate::settings::{millis, parent_dir, resolve, ConfigError};
use crate::telemetry::SinkStats;

/// The config section.
pub const SECTION: &str = "file_output";

/// The sink's name in statistics, logs and the fan-out.
pub const NAME: &str = "file";

/// The `[file_output]` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutputSection {
    /// The file records are appended to; rotated files get `.1`, `.2`, ...
    pub path: PathBuf,
    /// `ndjson` (default) or `ecls` (one `{"data":[record]}` per line).
    #[serde(default)]
    pub shape: Shape,
    /// Rotate when the file reaches this size (0 = never).
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// How many rotated files to keep.
    #[serde(default = "default_keep_files")]
    pub keep_files: usize,
    /// fsync at most this often; a batch is acknowledged once it is synced.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
}

fn default_rotate_bytes() -> u64 {
    100 << 20
}
fn default_keep_files() -> usize {
    5
}
fn default_fsync_interval_ms() -> u64 {
    1000
}

/// The archive's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "FileOutputSection")]
pub struct FileOutputConfig {
    /// The file records are appended to.
    pub path: PathBuf,
    /// The JSON shape of each line.
    pub shape: Shape,
    /// Rotate when the file reaches this size (0 = never).
    pub rotate_bytes: u64,
    /// Rotated files kept.
    pub keep_files: usize,
    /// fsync at most this often (`fsync_interval_ms`).
    pub fsync_interval: Duration,
}

/// `toml::from_str::<FileOutputConfig>` (tests): paths as written.
impl TryFrom<FileOutputSection> for FileOutputConfig {
    type Error = ConfigError;

    fn try_from(s: FileOutputSection) -> Result<Self, Self::Error> {
        FileOutputConfig::from_section(s, Path::new(""))
    }
}

impl FileOutputConfig {
    /// The settings of a `[file_output]` section, `path` resolved against
    /// `base`; errors name the key.
    pub fn from_section(mut s: FileOutputSection, base: &Path) -> Result<FileOutputConfig, ConfigError> {
        resolve(base, &mut s.path);
        if s.path.as_os_str().is_empty() {
            return Err(ConfigError::invalid(format!("{SECTION}.path"), "is empty"));
        }
        if s.fsync_interval_ms == 0 {
            return Err(ConfigError::invalid(format!("{SECTION}.fsync_interval_ms"), "must be > 0"));
        }
        Ok(FileOutputConfig {
            path: s.path,
            shape: s.shape,
            rotate_bytes: s.rotate_bytes,
            keep_files: s.keep_files,
            fsync_interval: millis(s.fsync_interval_ms),
        })
    }
}

/// The archive as a [`super::Sink`].
pub struct FileSink;

impl super::Sink for FileSink {
    const SECTION: &'static str = SECTION;
    const NAME: &'static str = NAME;
    type Section = FileOutputSection;
    type Config = FileOutputConfig;
    type Handle = FileHandle;
    type Update = FileOutputConfig;

    fn config(section: FileOutputSection, base: &Path) -> Result<FileOutputConfig, ConfigError> {
        FileOutputConfig::from_section(section, base)
    }

    fn keys(k: &mut Keys<FileOutputConfig>) {
        // Every setting applies live (FileHandle::reconfigure): what was
        // written under the old ones is synced and acknowledged first.
        k.live("file_output.path", |c| &mut c.path)
            .live("file_output.shape", |c| &mut c.shape)
            .live("file_output.rotate_bytes", |c| &mut c.rotate_bytes)
            .live("file_output.keep_files", |c| &mut c.keep_files)
            .live("file_output.fsync_interval_ms", |c| &mut c.fsync_interval);
    }

    fn needs(cfg: &FileOutputConfig, needs: &mut Needs) {
        needs.dirs.push(("file_output.path", parent_dir(&cfg.path), true));
        needs.files.push(("file_output.path", cfg.path.clone()));
    }

    fn summary(f: &FileOutputConfig) -> String {
        let rotate = if f.rotate_bytes == 0 {
            "never rotated".to_string()
        } else {
            format!("rotated at {} bytes, {} kept", f.rotate_bytes, f.keep_files)
        };
        let shape = match f.shape {
            Shape::Ndjson => "ndjson",
            Shape::Ecls => "ecls",
        };
        format!("{} ({shape}, {rotate})", f.path.display())
    }

    async fn start(
        cfg: &FileOutputConfig,
        ctx: &SinkContext,
        fanout: &mut Fanout,
        _listeners: &mut Bound,
    ) -> anyhow::Result<(SinkHandle, FileHandle)> {
        start(cfg, ctx, fanout).await
    }

    fn prepare(cfg: &FileOutputConfig) -> anyhow::Result<FileOutputConfig> {
        Ok(cfg.clone())
    }

    fn reconfigure(handle: &FileHandle, cfg: FileOutputConfig) {
        handle.reconfigure(cfg)
    }
}

/// Serialised bytes held before they are written out.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Bytes written but not yet synced that trigger an early fsync: bounds
/// the batches (and their records) held waiting for their acknowledgement.
const SYNC_EARLY_BYTES: u64 = 32 << 20;

/// Memory the batches waiting for their fsync may hold (the chunks their
/// records borrow from and the records, kept to rewrite them after a
/// failed write) before an early fsync: a hostile file can make a 256 KB
/// chunk hold a single record, so output bytes alone do not bound it.
/// Never more than half the memory budget (the other half is for the
/// queues and the other sinks); and when the budget is reached, a
/// quarter of that is enough to sync, so reading never waits on the
/// archive's timer.
const SYNC_EARLY_PINNED_BYTES: usize = 16 << 20;

/// The archive file being written.
struct Archive {
    /// The configured path.
    path: PathBuf,
    /// The open file.
    file: File,
    /// Its current size.
    size: u64,
    /// Its size when last synced: what is known to be durable. After a
    /// failed write or sync the file is cut back to this.
    synced: u64,
    /// The file was renamed away by a rotation whose new file could not be
    /// created yet: the next rotation only creates it.
    rotated_away: bool,
    /// Rotate at this size (0 = never).
    rotate_bytes: u64,
    /// Rotated files kept.
    keep_files: usize,
}

impl Archive {
    fn open(cfg: &FileOutputConfig) -> std::io::Result<Archive> {
        if let Some(dir) = cfg.path.parent() {
            if !dir.as_os_str().is_empty() {
                fs::create_dir_all(dir)?;
            }
        }
        let file = OpenOptions::new().create(true).read(true).append(true).open(&cfg.path)?;
        let size = drop_torn_tail(&file, &cfg.path)?;
        Ok(Archive {
            path: cfg.path.clone(),
            file,
            size,
            synced: size,
            rotated_away: false,
            rotate_bytes: cfg.rotate_bytes,
            keep_files: cfg.keep_files,
        })
    }

    /// After a failed write or sync: cuts the file back to what was last
    /// synced, so the batches written since are written again whole (no
    /// torn or doubled line).
    fn repair(&mut self) -> std::io::Result<()> {
        // Unconditional: a write that failed half way left bytes that
        // `size` does not count.
        self.file.set_len(self.synced)?;
        self.size = self.synced;
        Ok(())
    }

    /// Appends whole lines, rotating whenever the file would pass
    /// `rotate_bytes` (a line never straddles two files).
    fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let room = if self.rotate_bytes == 0 { u64::MAX } else { self.rotate_bytes.saturating_sub(self.size) };
            let take = if bytes.len() as u64 <= room {
                bytes.len()
            } else {
                match memchr::memrchr(b'\n', &bytes[..room as usize]) {
                    Some(i) => i + 1,
                    None if self.size == 0 => memchr::memchr(b'\n', bytes).map_or(bytes.len(), |i| i + 1),
                    None => 0,
                }
            };
            if take == 0 {
                self.rotate()?;
                continue;
            }
            self.file.write_all(&bytes[..take])?;
            self.size += take as u64;
            bytes = &bytes[take..];
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.synced = self.size;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if !self.rotated_away {
            self.sync()?;
            crate::rotating::shift(&self.path, self.keep_files)?;
            self.rotated_away = true;
        }
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.rotated_away = false;
        self.size = 0;
        self.synced = 0;
        crate::rotating::sync_dir(&self.path);
        Ok(())
    }
}

/// Removes a partial last line, which only an unclean stop (`kill -9`,
/// power loss) leaves: appended to, it would merge with the next record
/// into one broken line. Its batch was never acknowledged (that needs the
/// fsync after the whole batch), so its records are read again and
/// written whole. Returns the file's size after.
fn drop_torn_tail(file: &File, path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let size = file.metadata()?.len();
    let mut end = size;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < size {
        tracing::warn!(
            file = %path.display(),
            bytes = size - end,
            "archive ended with a partial line (an unclean stop); removed it: its records are read again and written whole"
        );
        file.set_len(end)?;
        file.sync_data()?;
    }
    Ok(end)
}

pub use crate::rotating::rotated_path;

/// Controls a running file sink (reload).
#[derive(Clone)]
pub struct FileHandle {
    tx: tokio::sync::watch::Sender<FileOutputConfig>,
}

impl FileHandle {
    /// Puts new settings in force: what was written under the old ones is
    /// synced and acknowledged first; then the shape, rotation size, kept
    /// files and fsync interval apply to what follows, and a new `path`
    /// starts a new archive there (if it cannot be opened, the error is
    /// logged and the archive stays where it was).
    pub fn reconfigure(&self, cfg: FileOutputConfig) {
        self.tx.send_replace(cfg);
    }
}

/// Starts the file sink and registers its queue on the fan-out.
pub async fn start(cfg: &FileOutputConfig, ctx: &SinkContext, fanout: &mut Fanout) -> anyhow::Result<(SinkHandle, FileHandle)> {
    let c = cfg.clone();
    let archive = tokio::task::spawn_blocking(move || Archive::open(&c))
        .await?
        .with_context(|| format!("cannot open file_output.path {}", cfg.path.display()))?;
    let (tx, rx) = super::queue();
    fanout.add(NAME, tx);
    let stats = ctx.telemetry.sink(NAME);
    let (cfg_tx, cfg_rx) = tokio::sync::watch::channel(cfg.clone());
    let guard = Guard { fault: ctx.telemetry.fault(NAME), shutdown: ctx.shutdown.clone() };
    let budget = fanout.budget().clone();
    let task = tokio::spawn(run(archive, cfg_rx, rx, stats, guard, budget));
    Ok((SinkHandle { name: NAME, task }, FileHandle { tx: cfg_tx }))
}

/// What a write failure needs: the fault to report and the signal to
/// give up (the bridge's grace period is over).
struct Guard {
    /// Reports the failure (logs, `/status`, `/metrics`, `/readyz`).
    fault: crate::telemetry::Fault,
    /// Cancelled when the sink must stop now: batches not yet synced stay
    /// unacknowledged and are read again after the restart.
    shutdown: tokio_util::sync::CancellationToken,
}

/// Writes `buf` (and syncs when `sync`) on the blocking pool; on failure,
/// retries until it works: the file is cut back to its last sync and every
/// batch of `pending` is written again, on a timer with backoff. `Ok(false)`
/// when the sink must stop (`guard.shutdown`) before it worked; an error
/// only when the blocking pool is gone (the runtime is shutting down).
async fn write_out(
    archive: &mut Option<Archive>,
    buf: &mut Vec<u8>,
    sync: bool,
    pending: &[Arc<Batch>],
    shape: Shape,
    guard: &Guard,
) -> anyhow::Result<bool> {
    let Some(mut a) = archive.take() else { return Ok(false) };
    let mut attempt = std::mem::take(buf);
    let mut repair = false;
    loop {
        let (a2, b2, res) = tokio::task::spawn_blocking(move || {
            let r = (if repair { a.repair() } else { Ok(()) }).and_then(|()| a.write(&attempt)).and_then(|()| {
                if sync || repair {
                    a.sync()
                } else {
                    Ok(())
                }
            });
            (a, attempt, r)
        })
        .await
        .context("file_output: the write task failed")?;
        a = a2;
        attempt = b2;
        attempt.clear();
        let Err(e) = res else {
            if repair {
                guard.fault.recovered();
            }
            *buf = attempt;
            *archive = Some(a);
            return Ok(true);
        };
        let delay = guard.fault.failed(&format!("cannot write the archive {}: {e}", a.path.display()));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = guard.shutdown.cancelled() => {
                *buf = attempt;
                *archive = Some(a);
                return Ok(false);
            }
        }
        // What is not synced is untrusted: cut back to the last sync and
        // write every batch not yet acknowledged again.
        repair = true;
        for b in pending {
            serialize(b, shape, &mut attempt);
        }
    }
}

/// One batch's lines in the archive's shape.
fn serialize(batch: &Batch, shape: Shape, buf: &mut Vec<u8>) {
    for rec in batch.records.iter() {
        match shape {
            Shape::Ndjson => rec.write_json(Shape::Ndjson, buf),
            Shape::Ecls => crate::record::write_ecls_message(std::iter::once(rec), buf),
        }
        buf.push(b'\n');
    }
}

async fn run(
    archive: Archive,
    mut cfg_rx: tokio::sync::watch::Receiver<FileOutputConfig>,
    mut rx: mpsc::Receiver<Arc<Batch>>,
    stats: SinkStats,
    guard: Guard,
    budget: Arc<crate::budget::MemoryBudget>,
) -> anyhow::Result<()> {
    let mut archive = Some(archive);
    let sync_early_held = SYNC_EARLY_PINNED_BYTES.min(budget.max() / 2);
    let (mut shape, mut interval) = {
        let c = cfg_rx.borrow_and_update();
        (c.shape, c.fsync_interval)
    };
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BUFFER_BYTES + 64 * 1024);
    // Batches written (or buffered) but not yet synced.
    let mut pending: Vec<Arc<Batch>> = Vec::new();
    // Memory `pending` keeps alive (chunks and records).
    let mut pinned: usize = 0;
    let mut unsynced: u64 = 0;
    let mut sync_at: Option<Instant> = None;
    loop {
        let got = tokio::select! {
            b = rx.recv() => b,
            _ = sleep_until(sync_at), if sync_at.is_some() => {
                if !sync_and_ack(&mut archive, &mut buf, &mut pending, shape, &stats, &guard).await? {
                    return Ok(());
                }
                unsynced = 0;
                pinned = 0;
                sync_at = None;
                continue;
            }
            Ok(()) = cfg_rx.changed() => {
                // Everything written under the old settings first: synced
                // and acknowledged, in the old place.
                if !sync_and_ack(&mut archive, &mut buf, &mut pending, shape, &stats, &guard).await? {
                    return Ok(());
                }
                unsynced = 0;
                pinned = 0;
                sync_at = None;
                let c = cfg_rx.borrow_and_update().clone();
                if let Some(a) = archive.take() {
                    archive = Some(reconfigure(a, &c).await);
                }
                shape = c.shape;
                interval = c.fsync_interval;
                continue;
            }
        };
        let Some(batch) = got else { break };
        stats.enqueued(batch.records.len());
        serialize(&batch, shape, &mut buf);
        if pending.is_empty() {
            stats.set_oldest_pending(batch.observed_ms);
        }
        pinned += batch.records.footprint();
        pending.push(batch);
        sync_at.get_or_insert(Instant::now() + interval);
        let held_too_much = pinned >= sync_early_held || (budget.exhausted() && pinned >= sync_early_held / 4);
        if buf.len() >= WRITE_BUFFER_BYTES || held_too_much {
            unsynced += buf.len() as u64;
            let early = unsynced >= SYNC_EARLY_BYTES || held_too_much;
            if !write_out(&mut archive, &mut buf, early, &pending, shape, &guard).await? {
                return Ok(());
            }
            if early {
                unsynced = 0;
                pinned = 0;
                sync_at = None;
                ack_all(&mut pending, &stats);
            }
        }
    }
    // The queue closed: the tailers stopped. Write and sync what is left.
    sync_and_ack(&mut archive, &mut buf, &mut pending, shape, &stats, &guard).await?;
    Ok(())
}

/// Writes what is buffered, fsyncs, and acknowledges every pending batch
/// (retrying a failed write until it works). False when the sink must
/// stop first.
async fn sync_and_ack(
    archive: &mut Option<Archive>,
    buf: &mut Vec<u8>,
    pending: &mut Vec<Arc<Batch>>,
    shape: Shape,
    stats: &SinkStats,
    guard: &Guard,
) -> anyhow::Result<bool> {
    if !write_out(archive, buf, true, pending, shape, guard).await? {
        return Ok(false);
    }
    ack_all(pending, stats);
    Ok(true)
}

/// The archive under new settings: the same file with the new rotation
/// limits, or a new file at a new path (the old one stays as it is).
async fn reconfigure(mut archive: Archive, c: &FileOutputConfig) -> Archive {
    archive.rotate_bytes = c.rotate_bytes;
    archive.keep_files = c.keep_files;
    if c.path == archive.path {
        tracing::info!(path = %c.path.display(), "file_output: settings reloaded");
        return archive;
    }
    let cfg = c.clone();
    match tokio::task::spawn_blocking(move || Archive::open(&cfg)).await {
        Ok(Ok(new)) => {
            tracing::info!(from = %archive.path.display(), to = %new.path.display(), "file_output: settings reloaded; archiving to the new path");
            new
        }
        Ok(Err(e)) => {
            tracing::error!(key = "file_output.path", path = %c.path.display(), error = %e, "file_output: cannot open the new path; archiving stays at the old one");
            archive
        }
        Err(e) => {
            tracing::error!(error = %e, "file_output: reopening failed; archiving stays at the old path");
            archive
        }
    }
}

fn ack_all(pending: &mut Vec<Arc<Batch>>, stats: &SinkStats) {
    let now = crate::time::now_ms();
    for b in pending.drain(..) {
        stats.delivered(b.records.len(), b.observed_ms, now);
        b.ack();
    }
    stats.set_oldest_pending(0);
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Field, Record};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cfg(dir: &Path, rotate_bytes: u64) -> FileOutputConfig {
        toml::from_str(&format!(
            "path = {:?}\nrotate_bytes = {rotate_bytes}\nkeep_files = 2\nfsync_interval_ms = 20\n",
            dir.join("out.ndjson").to_string_lossy()
        ))
        .unwrap()
    }

    fn rec(uuid: &str) -> Record<'static> {
        let mut r = Record::new_ml();
        r.set(Field::RequestUuid, uuid.to_string());
        r
    }

    #[test]
    fn a_torn_last_line_is_removed_when_the_archive_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 0);
        fs::write(&c.path, "{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let a = Archive::open(&c).unwrap();
        assert_eq!(fs::read_to_string(&c.path).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(a.size, 16);
        drop(a);
        // Whole lines are kept as they are; a file of only a torn line is emptied.
        assert_eq!(Archive::open(&c).unwrap().size, 16);
        fs::write(&c.path, "{\"c\":").unwrap();
        assert_eq!(Archive::open(&c).unwrap().size, 0);
    }

    #[test]
    fn repair_cuts_back_to_the_last_sync() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 0);
        let mut a = Archive::open(&c).unwrap();
        a.write(b"{\"a\":1}\n").unwrap();
        a.sync().unwrap();
        // Written but not synced when a later write or sync failed: untrusted.
        a.write(b"{\"b\":2}\n{\"c\":").unwrap();
        a.repair().unwrap();
        assert_eq!(fs::read_to_string(&c.path).unwrap(), "{\"a\":1}\n");
        // A write that failed half way: bytes on disk that `size` does not count.
        a.file.write_all(b"{\"torn\":").unwrap();
        a.repair().unwrap();
        assert_eq!(fs::read_to_string(&c.path).unwrap(), "{\"a\":1}\n");
        a.write(b"{\"b\":2}\n").unwrap();
        a.sync().unwrap();
        assert_eq!(fs::read_to_string(&c.path).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
    }

    #[tokio::test]
    async fn batches_that_pin_large_chunks_are_synced_early() {
        // One record per 1 MiB chunk (a hostile file's shape): the output is
        // tiny, but what the held batches pin is not; they are synced and
        // acknowledged long before the (one hour) fsync interval.
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path(), 0);
        c.fsync_interval = Duration::from_millis(3_600_000);
        let ctx = SinkContext {
            state_dir: dir.path().to_path_buf(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            telemetry: crate::telemetry::Telemetry::new(),
        };
        let mut fanout = Fanout::new();
        let (h, _control) = start(&c, &ctx, &mut fanout).await.unwrap();
        let acked = Arc::new(AtomicUsize::new(0));
        let batches = 2 * SYNC_EARLY_PINNED_BYTES / (1 << 20);
        for i in 0..batches {
            let a = acked.clone();
            let source = crate::pipeline::RecordSource { data: vec![b'x'; 1 << 20], tables: Arc::default(), host: Arc::default() };
            let records = crate::pipeline::Records::borrowing(source, |_| vec![rec(&format!("u{i}"))]);
            assert!(records.pinned_bytes() >= 1 << 20);
            let on_acked: crate::pipeline::OnAcked = Box::new(move || {
                a.fetch_add(1, Ordering::SeqCst);
            });
            fanout.send(Batch::new("f".into(), records, 0, Some(on_acked))).await.unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while acked.load(Ordering::SeqCst) < SYNC_EARLY_PINNED_BYTES / (1 << 20) {
            assert!(std::time::Instant::now() < deadline, "{} of {batches} acknowledged", acked.load(Ordering::SeqCst));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(fanout);
        h.task.await.unwrap().unwrap();
        assert_eq!(acked.load(Ordering::SeqCst), batches);
    }

    #[tokio::test]
    async fn held_batches_never_outlast_the_memory_budget() {
        // A budget of 8 MiB and 1 MiB chunks, fsync every hour: the archive
        // syncs early at half the budget, so the sender never waits for
        // the timer (it would wait an hour).
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path(), 0);
        c.fsync_interval = Duration::from_millis(3_600_000);
        let telemetry = crate::telemetry::Telemetry::new();
        let ctx = SinkContext { state_dir: dir.path().to_path_buf(), shutdown: tokio_util::sync::CancellationToken::new(), telemetry };
        let budget = crate::budget::MemoryBudget::new(8 << 20, &ctx.telemetry);
        let mut fanout = Fanout::with_budget(budget.clone());
        let (h, _control) = start(&c, &ctx, &mut fanout).await.unwrap();
        let acked = Arc::new(AtomicUsize::new(0));
        let send_all = async {
            for i in 0..40 {
                let a = acked.clone();
                let source = crate::pipeline::RecordSource { data: vec![b'x'; 1 << 20], tables: Arc::default(), host: Arc::default() };
                let records = crate::pipeline::Records::borrowing(source, |_| vec![rec(&format!("u{i}"))]);
                let on_acked: crate::pipeline::OnAcked = Box::new(move || {
                    a.fetch_add(1, Ordering::SeqCst);
                });
                fanout.send(Batch::new("f".into(), records, 0, Some(on_acked))).await.unwrap();
                assert!(budget.used() <= (8 << 20) + (2 << 20), "{} bytes held", budget.used());
            }
        };
        tokio::time::timeout(Duration::from_secs(20), send_all).await.expect("the sender waited on the archive's timer");
        drop(fanout);
        h.task.await.unwrap().unwrap();
        assert_eq!(acked.load(Ordering::SeqCst), 40);
        assert_eq!(budget.used(), 0, "every batch's memory given back");
    }

    #[tokio::test]
    async fn acks_after_sync_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 3000);
        let ctx = SinkContext {
            state_dir: dir.path().to_path_buf(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            telemetry: crate::telemetry::Telemetry::new(),
        };
        let mut fanout = Fanout::new();
        let (h, _control) = start(&c, &ctx, &mut fanout).await.unwrap();
        let acked = Arc::new(AtomicUsize::new(0));
        for i in 0..20 {
            let a = acked.clone();
            let b = Batch::new(
                "f".into(),
                vec![rec(&format!("u{i}"))],
                0,
                Some(Box::new(move || {
                    a.fetch_add(1, Ordering::SeqCst);
                })),
            );
            fanout.send(b).await.unwrap();
        }
        drop(fanout);
        h.task.await.unwrap().unwrap();
        assert_eq!(acked.load(Ordering::SeqCst), 20);
        let mut n = 0;
        for p in [c.path.clone(), rotated_path(&c.path, 1), rotated_path(&c.path, 2)] {
            if let Ok(t) = fs::read_to_string(&p) {
                for l in t.lines() {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    assert!(v["request_uuid"].as_str().unwrap().starts_with('u'));
                    n += 1;
                }
            }
        }
        assert!(rotated_path(&c.path, 1).exists(), "rotated");
        assert!(!rotated_path(&c.path, 3).exists(), "keep_files honoured");
        assert!(n > 0 && n <= 20);
    }
}
