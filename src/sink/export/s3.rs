//! `[export.s3]`: uploads published files to S3-compatible object storage
//! (AWS, MinIO, Ceph, Garage), through `object_store` (SigV4, path-style or
//! virtual-hosted addressing, multipart for large files).
//!
//! Which files still need uploading is kept on disk, next to them: a file
//! is published only after an empty marker `<dir>/.upload-pending/<name>`
//! exists ([`mark_pending`], called by the exporter before the rename), and
//! the marker is removed once the object is stored. A restart uploads
//! whatever is marked ([`pending`]), in name (chronological) order.
//!
//! Failures (the store is down, refuses the credentials, times out): the
//! file is tried again with backoff (1 s doubling to `max_backoff_ms`),
//! before any later file, and stays on disk; the local file is removed
//! only after the object is stored, and only when `keep_local = false`.
//! Failures are shown per slice in `/status` and counted in `/metrics`;
//! the log says so on the first failure and then once a minute.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ClientOptions, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, RetryConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::S3Config;
use super::slice::FileName;
use super::stats::ExportStats;

/// The marker directory, inside the export's directory (hidden: a glob
/// over the published files does not see it).
pub const PENDING_DIR: &str = ".upload-pending";

/// Files up to this size are one PUT; larger ones a multipart upload in
/// parts of this size (so memory per upload is bounded by it).
pub const PART_BYTES: usize = 8 << 20;

/// First wait after a failed attempt.
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);

/// A failing upload is logged again this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Marks `name` as waiting for upload (the marker is durable when this
/// returns).
pub fn mark_pending(dir: &Path, name: &FileName) -> io::Result<()> {
    let d = dir.join(PENDING_DIR);
    fs::create_dir_all(&d)?;
    let m = d.join(name.published());
    fs::File::create(&m)?.sync_all()?;
    crate::rotating::sync_dir(&m);
    Ok(())
}

/// Files marked as waiting for upload whose published file exists, in
/// chronological order.
pub fn pending(dir: &Path) -> io::Result<Vec<FileName>> {
    let d = dir.join(PENDING_DIR);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some((name, false)) = entry.file_name().to_str().and_then(FileName::parse) else { continue };
        if dir.join(name.published()).exists() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Builds the client for `[export.s3]` (no I/O: a wrong endpoint shows on
/// the first upload).
pub fn store(cfg: &S3Config) -> anyhow::Result<AmazonS3> {
    let mut opts = ClientOptions::new()
        .with_timeout(cfg.request_timeout)
        .with_connect_timeout(cfg.request_timeout.min(Duration::from_secs(10)))
        .with_user_agent(reqwest::header::HeaderValue::from_static(concat!("calllog-bridge/", env!("CARGO_PKG_VERSION"))));
    if let Some(pem) = &cfg.ca_pem {
        let cert =
            object_store::Certificate::from_pem(pem).map_err(|e| anyhow::anyhow!("export.s3.ca_file: not a PEM certificate: {e}"))?;
        opts = opts.with_root_certificate(cert);
    }
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&cfg.bucket)
        .with_region(&cfg.region)
        .with_access_key_id(cfg.access_key_id.expose())
        .with_secret_access_key(cfg.secret_access_key.expose())
        .with_virtual_hosted_style_request(!cfg.path_style)
        // Our own loop retries with backoff and reports; the client's own
        // retries stay short so a failure shows within one attempt's time.
        .with_retry(RetryConfig { max_retries: 1, retry_timeout: cfg.request_timeout, ..RetryConfig::default() });
    if let Some(ep) = &cfg.endpoint {
        opts = opts.with_allow_http(ep.starts_with("http://"));
        b = b.with_endpoint(ep);
    }
    b.with_client_options(opts).build().map_err(|e| anyhow::anyhow!("export.s3: {e}"))
}

/// Feeds published files to the uploader task.
#[derive(Clone)]
pub struct UploadQueue(mpsc::UnboundedSender<FileName>);

impl UploadQueue {
    /// Queues a published file (marked with [`mark_pending`]).
    pub fn push(&self, name: FileName) {
        let _ = self.0.send(name);
    }
}

/// The uploader task: uploads what is marked at start, then what is
/// queued, one file at a time, until `shutdown` (what is left stays
/// marked for the next start). The channel closing also ends it once
/// the queue is empty.
pub fn spawn(
    cfg: S3Config,
    dir: PathBuf,
    stats: ExportStats,
    shutdown: CancellationToken,
) -> anyhow::Result<(UploadQueue, tokio::task::JoinHandle<()>)> {
    let store = Arc::new(store(&cfg)?);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(store, cfg, dir, stats, rx, shutdown));
    Ok((UploadQueue(tx), task))
}

async fn run(
    store: Arc<AmazonS3>,
    cfg: S3Config,
    dir: PathBuf,
    stats: ExportStats,
    mut rx: mpsc::UnboundedReceiver<FileName>,
    shutdown: CancellationToken,
) {
    let mut queue: VecDeque<FileName> = VecDeque::new();
    let d = dir.clone();
    match tokio::task::spawn_blocking(move || pending(&d)).await {
        Ok(Ok(p)) => {
            for n in &p {
                stats.upload_queued(n.slice);
            }
            if !p.is_empty() {
                tracing::info!(files = p.len(), "export: uploading files left waiting by the last run");
            }
            queue.extend(p);
        }
        Ok(Err(e)) => tracing::error!(dir = %dir.display(), error = %e, "export: cannot list the files waiting for upload"),
        Err(_) => return,
    }
    let mut backoff = BACKOFF_INITIAL;
    let mut failing_since: Option<tokio::time::Instant> = None;
    let mut logged_at: Option<tokio::time::Instant> = None;
    loop {
        // Take in everything queued meanwhile (keeping the order).
        while let Ok(n) = rx.try_recv() {
            queue.push_back(n);
        }
        let Some(&name) = queue.front() else {
            tokio::select! {
                n = rx.recv() => match n {
                    Some(n) => { queue.push_back(n); continue; }
                    None => return,
                },
                _ = shutdown.cancelled() => return,
            }
        };
        let attempt = tokio::select! {
            r = upload(&store, &cfg, &dir, name) => r,
            _ = shutdown.cancelled() => return,
        };
        match attempt {
            Ok(()) => {
                queue.pop_front();
                stats.uploaded(name.slice);
                if let Some(since) = failing_since.take() {
                    tracing::info!(file = %name, failing_secs = since.elapsed().as_secs(), "export: uploading again; nothing was lost");
                }
                logged_at = None;
                backoff = BACKOFF_INITIAL;
            }
            Err(e) => {
                let msg = crate::service::describe(&e);
                stats.upload_failed(name.slice, &msg);
                let now = tokio::time::Instant::now();
                failing_since.get_or_insert(now);
                if logged_at.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
                    logged_at = Some(now);
                    tracing::error!(file = %name, error = %crate::logsafe::Escaped(&msg), retry_in_ms = backoff.as_millis() as u64, "export: upload failed; the file stays on disk and is tried again");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(cfg.max_backoff);
            }
        }
    }
}

/// Uploads one file; on success removes its marker (and the file, unless
/// `keep_local`).
async fn upload(store: &AmazonS3, cfg: &S3Config, dir: &Path, name: FileName) -> anyhow::Result<()> {
    let path = dir.join(name.published());
    let key = ObjectPath::parse(cfg.key(&name.published())).map_err(|e| anyhow::anyhow!("object key: {e}"))?;
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::ContentType, if name.gzip { "application/gzip" } else { "text/csv" }.into());
    let size = fs::metadata(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?.len();
    if size as usize <= PART_BYTES {
        let p = path.clone();
        let bytes =
            tokio::task::spawn_blocking(move || fs::read(&p)).await?.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        store.put_opts(&key, PutPayload::from(bytes), PutOptions { attributes, ..PutOptions::default() }).await?;
    } else {
        let mut up = store.put_multipart_opts(&key, PutMultipartOptions { attributes, ..PutMultipartOptions::default() }).await?;
        let mut file = Some(fs::File::open(&path)?);
        let r: anyhow::Result<()> = async {
            loop {
                let mut f = file.take().ok_or_else(|| anyhow::anyhow!("file handle lost"))?;
                let (f, part) = tokio::task::spawn_blocking(move || {
                    let mut buf = Vec::with_capacity(PART_BYTES);
                    let r = (&mut f).take(PART_BYTES as u64).read_to_end(&mut buf).map(|_| buf);
                    (f, r)
                })
                .await?;
                file = Some(f);
                let part = part?;
                if part.is_empty() {
                    break;
                }
                up.put_part(PutPayload::from(part)).await?;
            }
            up.complete().await?;
            Ok(())
        }
        .await;
        if let Err(e) = r {
            // Free what the store holds of the parts; the next attempt starts over.
            let _ = up.abort().await;
            return Err(e);
        }
    }
    let (d, keep) = (dir.to_path_buf(), cfg.keep_local);
    tokio::task::spawn_blocking(move || -> io::Result<()> {
        let marker = d.join(PENDING_DIR).join(name.published());
        match fs::remove_file(&marker) {
            Ok(()) => crate::rotating::sync_dir(&marker),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if !keep {
            fs::remove_file(d.join(name.published()))?;
            crate::rotating::sync_dir(&d.join(name.published()));
        }
        Ok(())
    })
    .await?
    .map_err(|e| anyhow::anyhow!("uploaded, but cannot update {}: {e}", dir.display()))?;
    Ok(())
}
