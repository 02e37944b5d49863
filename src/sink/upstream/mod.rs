//! The upstream sink: records re-batched into HTTP requests to a central
//! collector (NDJSON, ECLS, Elasticsearch `_bulk`, Splunk HEC), delivered at
//! least once.
//!
//! Data flow: pipeline [`Batch`]es arrive on the sink's bounded queue; each
//! record is encoded once ([`encode`]) into the request being built, which
//! is sent when it reaches `batch_max_records` or `batch_max_bytes`, or
//! `flush_interval_ms` after its first record. A pipeline batch may span
//! several requests and a request may hold several pipeline batches, so each
//! pipeline batch carries a counter of its records not yet handled; it is
//! acknowledged (its file's checkpoint may advance) when the counter reaches
//! zero, i.e. when every one of its records was delivered (2xx),
//! dead-lettered, or durably spooled.
//!
//! Sending: at most `max_in_flight` requests at once (a semaphore permit is
//! taken before a request is sent and held until it is handled). Failures
//! are classified in [`http`]: retried with exponential backoff and jitter
//! for as long as it takes (honouring `Retry-After` up to `retry_max_ms`),
//! split in halves on 413, dead-lettered on other 4xx ([`dead_letter`]).
//! A collector that judges records one by one (`_bulk` item errors, HEC
//! codes) gets only the records it did not take sent again; those it
//! refused for good are dead-lettered each with its own error.
//!
//! Backpressure and outages: one collector must not hold back the archive
//! and the channel, which share the tailers with this sink. While all
//! permits are held (a collector failing, slow or silent), built requests
//! wait for one, unless this sink's queue is full or the memory budget is
//! reached (the tailers would wait on it; what this sink holds of records
//! not yet delivered is charged to the budget, [`crate::budget`]): then
//! they spill to the disk spool ([`spool`]) and are
//! acknowledged once fsynced, so reading goes on. A spill never deletes
//! spooled records; with a full spool, requests wait as without one. When
//! upstream has been failing for `spool_after_ms`, every request goes to the
//! spool, and the oldest spool files are deleted to make room if needed
//! (with an error log line, counted in `dropped`: never silently). Spooled
//! data is acknowledged: its source file may be gone, and the spool is its
//! only copy. The spool is drained first (new requests wait) whenever
//! upstream answers, with all `max_in_flight` permits.
//!
//! Files that go away: while a reader holds a durability demand (its file
//! was deleted or rotated out of the globs with records not yet
//! acknowledged, [`crate::pipeline::Durability`]), everything this sink
//! holds in memory is written to the spool at once and acknowledged: the
//! request being built, requests waiting for a permit, and requests being
//! sent or waiting to retry (those stay with their sender, which goes on
//! sending the spool file and deletes it once delivered).
//!
//! Shutdown: when the queue closes, what is batched is sent and the sink
//! waits up to `shutdown_grace_ms` for requests in flight. If the collector
//! is failing then, what is held goes to the spool at once instead, and the
//! sink stops as soon as everything is acknowledged. When the grace period
//! ends (or the bridge cancels `shutdown`), requests still pending, and
//! batches still queued, are spooled if the spool is enabled, otherwise
//! left unacknowledged (their records are read again after a restart).

mod config;
pub(crate) mod dead_letter;
pub mod encode;
pub mod http;
pub(crate) mod spool;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::encode::{Encoder, Units};
use self::http::Outcome;
use self::spool::Spool;
use super::{Keys, Needs, SinkContext, SinkHandle};
use crate::listener::Bound;
use crate::logsafe::{self, Escaped};
use crate::pipeline::{Batch, Durability, Fanout, Receipt};
use crate::settings::{parent_dir, ConfigError};
use crate::telemetry::log_limit::LogLimit;
use crate::telemetry::SinkStats;
use crate::time::now_ms;

pub use config::{AuthFailures, Compression, CompressionName, Format, UpstreamAuth, UpstreamConfig, UpstreamFormat, UpstreamSection};

/// The config section.
pub const SECTION: &str = "upstream";

/// The sink's name in metrics, logs and the fan-out.
pub const NAME: &str = "upstream";

/// How often waiting loops re-check conditions that have no signal of their
/// own (the outage clock).
const RECHECK: Duration = Duration::from_millis(50);

/// Starts the upstream sink and registers its queue on `fanout`.
pub async fn start(cfg: &UpstreamConfig, ctx: &SinkContext, fanout: &mut Fanout) -> anyhow::Result<(SinkHandle, UpstreamHandle)> {
    let (tx, rx) = super::queue();
    let up = Upstream::new(cfg, ctx, fanout.durability(), fanout.budget().clone(), tx.downgrade()).await?;
    let handle = UpstreamHandle { shared: up.shared.clone() };
    fanout.add(NAME, tx);
    let task = tokio::spawn(up.run(rx));
    Ok((SinkHandle { name: NAME, task }, handle))
}

/// The upstream sink as a [`super::Sink`].
pub struct UpstreamSink;

impl super::Sink for UpstreamSink {
    const SECTION: &'static str = SECTION;
    const NAME: &'static str = NAME;
    type Section = UpstreamSection;
    type Config = UpstreamConfig;
    type Handle = UpstreamHandle;
    type Update = Live;

    fn config(section: UpstreamSection, base: &std::path::Path) -> Result<UpstreamConfig, ConfigError> {
        UpstreamConfig::from_section(section, base)
    }

    fn keys(k: &mut Keys<UpstreamConfig>) {
        // Fixed while the sink runs: the encoding of records already
        // batched or spooled (and the spool's directory), the spool's
        // bound, the dead-letter file and the sender permits. A format's
        // own keys (index, sourcetype) apply live.
        k.restart_unless("upstream.format", |c| &mut c.format, Format::same_kind)
            .restart("upstream.max_in_flight", |c| &mut c.max_in_flight)
            .restart("upstream.spool_max_bytes", |c| &mut c.spool_max_bytes)
            .restart("upstream.dead_letter_file", |c| &mut c.dead_letter_file);
        // Applied by UpstreamHandle::reconfigure: a new client and encoder;
        // requests already built switch to them at their next attempt.
        k.live("upstream.url", |c| &mut c.url)
            .live("upstream.compression", |c| &mut c.compression)
            .live("upstream.headers", |c| &mut c.headers)
            .live("upstream.credentials", |c| &mut c.auth)
            .live("upstream.ca_file", |c| &mut c.ca)
            .live("upstream.client_cert", |c| &mut c.client_identity)
            .live("upstream.batch_max_records", |c| &mut c.batch_max_records)
            .live("upstream.batch_max_bytes", |c| &mut c.batch_max_bytes)
            .live("upstream.flush_interval_ms", |c| &mut c.flush_interval)
            .live("upstream.request_timeout_ms", |c| &mut c.request_timeout)
            .live("upstream.retry_initial_ms", |c| &mut c.retry_initial)
            .live("upstream.retry_max_ms", |c| &mut c.retry_max)
            .live("upstream.spool_after_ms", |c| &mut c.spool_after)
            .live("upstream.auth_failures", |c| &mut c.auth_failures)
            .live("upstream.dead_letter_rotate_bytes", |c| &mut c.dead_letter_rotation)
            .live("upstream.shutdown_grace_ms", |c| &mut c.shutdown_grace);
    }

    fn needs(cfg: &UpstreamConfig, needs: &mut Needs) {
        if let Some(d) = &cfg.dead_letter_file {
            needs.dirs.push(("upstream.dead_letter_file", parent_dir(d), false));
            needs.files.push(("upstream.dead_letter_file", d.clone()));
        }
        let (ca, identity) = (cfg.ca.clone(), cfg.client_identity.clone());
        needs.peers.push(crate::probe::Peer::Http { key: "upstream.url".into(), url: cfg.url.clone(), ca, identity });
    }

    fn summary(u: &UpstreamConfig) -> String {
        let auth = match u.auth {
            UpstreamAuth::Bearer(_) => "bearer token",
            UpstreamAuth::Basic { .. } => "basic auth",
            UpstreamAuth::None => "no credentials",
        };
        let compression = match u.compression {
            Compression::Gzip { .. } => "gzip",
            Compression::None => "uncompressed",
        };
        let headers = if u.headers.is_empty() {
            String::new()
        } else {
            format!(", headers {} (values not shown)", u.headers.keys().cloned().collect::<Vec<_>>().join(", "))
        };
        format!("{} ({}, {compression}, {auth}{headers})", crate::url::redact_url(&u.url), u.format.kind().name())
    }

    async fn start(
        cfg: &UpstreamConfig,
        ctx: &SinkContext,
        fanout: &mut Fanout,
        _listeners: &mut Bound,
    ) -> anyhow::Result<(SinkHandle, UpstreamHandle)> {
        start(cfg, ctx, fanout).await
    }

    fn prepare(cfg: &UpstreamConfig) -> anyhow::Result<Live> {
        Live::build(cfg)
    }

    fn reconfigure(handle: &UpstreamHandle, live: Live) {
        handle.reconfigure(live)
    }
}

/// A pipeline batch held by the sink, with its records not yet handled.
/// Its records are encoded when it arrives; only its [`Receipt`] is kept,
/// so the chunk they were read from is not pinned while requests retry.
struct Pending {
    /// The batch's acknowledgement (when `remaining` reaches zero).
    batch: Receipt,
    /// Key in the pending set (oldest-pending statistic).
    id: u64,
    /// Records of the batch not yet delivered, dead-lettered or spooled.
    remaining: AtomicUsize,
    /// The memory its encoded records hold (in requests being built, sent
    /// or retried), charged to the memory budget until the last request
    /// covering the batch is handled.
    charge: std::sync::OnceLock<crate::budget::Charge>,
}

/// `count` consecutive records of a request that belong to one pipeline
/// batch.
struct Cover {
    /// The pipeline batch.
    pending: Arc<Pending>,
    /// How many of its records.
    count: usize,
}

/// Where a request's records come from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Origin {
    /// Pipeline batches in memory (acknowledged when handled).
    Memory,
    /// A spool file (already acknowledged; deleted when handled).
    Spool(u64),
}

/// One upstream request's records.
struct Request {
    /// The encoded records.
    units: Arc<Units>,
    /// Which pipeline batches they belong to, in order (empty for spool).
    covers: Vec<Cover>,
    /// Observed time of the oldest record (delivery delay).
    observed_ms: i64,
    /// Memory or spool.
    origin: Origin,
}

impl Request {
    /// The records at `indices` (ascending) as a request of their own, with
    /// their covers.
    fn subset(&self, indices: &[usize]) -> Request {
        let units = self.units.select(indices);
        let mut covers: Vec<Cover> = Vec::new();
        let (mut ci, mut cover_end) = (0, self.covers.first().map_or(0, |c| c.count));
        for &i in indices {
            while ci < self.covers.len() && i >= cover_end {
                ci += 1;
                cover_end += self.covers.get(ci).map_or(0, |c| c.count);
            }
            if let Some(c) = self.covers.get(ci) {
                match covers.last_mut() {
                    Some(l) if Arc::ptr_eq(&l.pending, &c.pending) => l.count += 1,
                    _ => covers.push(Cover { pending: c.pending.clone(), count: 1 }),
                }
            }
        }
        let observed_ms = covers.iter().map(|c| c.pending.batch.observed_ms).min().unwrap_or(self.observed_ms);
        Request { units: Arc::new(units), covers, observed_ms, origin: self.origin }
    }

    /// Splits by what the collector did with each record: taken, to send
    /// again, refused (with each refused record's status and error).
    #[allow(clippy::type_complexity)]
    fn partition(self, items: &[http::Item]) -> (Option<Request>, Option<Request>, Option<(Request, Vec<(u16, String)>)>) {
        let (mut done, mut retry, mut refused, mut errors) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..self.units.len() {
            match items.get(i) {
                Some(http::Item::Done) => done.push(i),
                Some(http::Item::Rejected { status, error }) => {
                    refused.push(i);
                    errors.push((*status, error.clone()));
                }
                // A record the answer does not mention is sent again.
                Some(http::Item::Retry) | None => retry.push(i),
            }
        }
        let part = |ix: &[usize]| (!ix.is_empty()).then(|| self.subset(ix));
        let refused = part(&refused).map(|r| (r, errors));
        (part(&done), part(&retry), refused)
    }

    /// Splits in halves (413), keeping the covers aligned with the records.
    fn split(self) -> (Request, Request) {
        let at = self.units.len() / 2;
        let (a, b) = self.units.split_at(at);
        let (mut ca, mut cb) = (Vec::new(), Vec::new());
        let mut seen = 0;
        for c in self.covers {
            if seen >= at {
                cb.push(c);
            } else if seen + c.count <= at {
                seen += c.count;
                ca.push(c);
            } else {
                let head = at - seen;
                seen += c.count;
                ca.push(Cover { pending: c.pending.clone(), count: head });
                cb.push(Cover { pending: c.pending, count: c.count - head });
            }
        }
        let obs = |cs: &[Cover], dflt| cs.iter().map(|c| c.pending.batch.observed_ms).min().unwrap_or(dflt);
        let (oa, ob) = (obs(&ca, self.observed_ms), obs(&cb, self.observed_ms));
        (
            Request { units: Arc::new(a), covers: ca, observed_ms: oa, origin: self.origin },
            Request { units: Arc::new(b), covers: cb, observed_ms: ob, origin: self.origin },
        )
    }
}

/// Whether a spool write may delete the oldest spooled records to make
/// room.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Evict {
    /// Yes: upstream has been failing for `spool_after_ms` (or the sink is
    /// stopping), the spool is the only place left.
    Oldest,
    /// No: without room the request waits in memory (a spill because the
    /// queue is full, or a durability demand, never costs older records).
    No,
}

/// Why records go to the dead-letter file.
enum Rejection<'a> {
    /// The whole request, with the answer's status and body.
    Whole {
        /// The HTTP status.
        status: u16,
        /// The start of the answer.
        response: &'a str,
    },
    /// Records refused one by one: each record's status and error, in
    /// order.
    PerRecord(Vec<(u16, String)>),
}

/// How a request's records were handled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Handled {
    /// 2xx.
    Delivered,
    /// Written to the dead-letter file.
    DeadLettered,
    /// Written to the spool (still to be delivered).
    Spooled,
}

/// The request being built.
#[derive(Default)]
struct Builder {
    /// Encoded records.
    units: Units,
    /// Their pipeline batches.
    covers: Vec<Cover>,
}

impl Builder {
    fn note(&mut self, p: &Arc<Pending>) {
        match self.covers.last_mut() {
            Some(c) if Arc::ptr_eq(&c.pending, p) => c.count += 1,
            _ => self.covers.push(Cover { pending: p.clone(), count: 1 }),
        }
    }

    fn unnote(&mut self) {
        if let Some(c) = self.covers.last_mut() {
            c.count -= 1;
            if c.count == 0 {
                self.covers.pop();
            }
        }
    }

    fn take(&mut self) -> Option<Request> {
        if self.units.is_empty() {
            return None;
        }
        // The next request will likely be as large: allocate once.
        let cap = self.units.buf.len();
        let b = std::mem::take(self);
        self.units.buf.reserve(cap);
        let observed_ms = b.covers.iter().map(|c| c.pending.batch.observed_ms).min().unwrap_or(0);
        Some(Request { units: Arc::new(b.units), covers: b.covers, observed_ms, origin: Origin::Memory })
    }
}

/// State shared by the batcher, the spool drainer and the senders.
struct Shared {
    /// The settings in force; a reload replaces them ([`UpstreamHandle`]).
    live: RwLock<Arc<Live>>,
    /// Sink statistics.
    stats: SinkStats,
    /// Where poison batches go.
    dead_letter: Arc<dead_letter::DeadLetter>,
    /// The disk spool; `None` when `spool_max_bytes` is 0.
    spool: Option<Mutex<Spool>>,
    /// Signalled when the spool gains or loses a file.
    spool_changed: Notify,
    /// Epoch ms since which every attempt failed; 0 = upstream healthy.
    failing_since_ms: AtomicI64,
    /// (observed_ms, id) of every pipeline batch held, for oldest-pending.
    pending: Mutex<BTreeSet<(i64, u64)>>,
    /// Next pending id.
    next_id: AtomicU64,
    /// `max_in_flight` permits.
    permits: Arc<Semaphore>,
    /// Cancelled when requests still pending must be given up (spooled when
    /// possible).
    abandon: CancellationToken,
    /// Owns every sender task.
    tracker: TaskTracker,
    /// Reports a spool that cannot be written (a full state_dir).
    spool_fault: crate::telemetry::Fault,
    /// Reports a dead-letter file that cannot be written.
    dead_letter_fault: crate::telemetry::Fault,
    /// Limits the dead-letter log lines: a collector that refuses every
    /// batch would otherwise write one error line per request.
    dead_letter_log: Mutex<LogLimit>,
    /// Demands to make what is held in memory durable now (a file gone
    /// with records not yet acknowledged; see [`Durability`]).
    durability: Arc<Durability>,
    /// The memory budget: what this sink holds of the records it has not
    /// delivered yet is charged there, and when it is reached requests
    /// spill to the spool as for a full queue.
    budget: Arc<crate::budget::MemoryBudget>,
    /// The sink's own queue (weak: it does not keep the queue open), to
    /// see when it is full: then the tailers wait on this sink.
    queue: mpsc::WeakSender<Arc<Batch>>,
}

/// The settings of a running upstream sink that a reload replaces: the
/// configuration with the HTTP client built from it (URL, headers,
/// credentials read from their files, TLS) and the body encoder. Requests
/// use the settings in force when they are built (batch limits, encoding)
/// or sent (URL, client, timeouts, backoff): a request being retried
/// switches to the new URL and credentials at its next attempt.
pub struct Live {
    /// The configuration.
    cfg: UpstreamConfig,
    /// The HTTP client (auth, TLS, headers).
    client: reqwest::Client,
    /// The URL as logs show it (no user info, no query: they may hold
    /// credentials).
    log_url: String,
    /// Body encoder.
    encoder: Encoder,
}

impl Live {
    /// Builds the client and encoder for `cfg`: reads the CA, client
    /// certificate and credential files (blocking file I/O). The error
    /// names the key.
    pub fn build(cfg: &UpstreamConfig) -> anyhow::Result<Live> {
        let client = http::client(cfg)?;
        Ok(Live { cfg: cfg.clone(), client, log_url: crate::url::redact_url(&cfg.url), encoder: Encoder::for_config(cfg) })
    }

    /// The URL as logs show it (no credentials).
    pub fn url_for_logs(&self) -> &str {
        &self.log_url
    }
}

/// Controls a running upstream sink (reload).
#[derive(Clone)]
pub struct UpstreamHandle {
    shared: Arc<Shared>,
}

impl UpstreamHandle {
    /// Puts new settings in force (see [`Live`]). The settings a running
    /// sink cannot change ([`UpstreamSink`]'s restart keys: format,
    /// `max_in_flight`, spool, dead-letter file) must be those it runs
    /// with: a reload keeps their running values.
    pub fn reconfigure(&self, new: Live) {
        let mut slot = self.shared.live.write().unwrap_or_else(|e| e.into_inner());
        tracing::info!(url = %new.log_url, "upstream: settings reloaded; requests use them from their next attempt");
        *slot = Arc::new(new);
    }
}

/// The upstream sink.
pub struct Upstream {
    /// Shared state.
    shared: Arc<Shared>,
    /// Shutdown and state directory.
    ctx: SinkContext,
}

impl Upstream {
    /// Builds the client and opens the spool (indexing what a previous run
    /// left there; it is sent first).
    pub async fn new(
        cfg: &UpstreamConfig,
        ctx: &SinkContext,
        durability: Arc<Durability>,
        budget: Arc<crate::budget::MemoryBudget>,
        queue: mpsc::WeakSender<Arc<Batch>>,
    ) -> anyhow::Result<Upstream> {
        let live = {
            let c = cfg.clone();
            tokio::task::spawn_blocking(move || Live::build(&c)).await??
        };
        let stats = ctx.telemetry.sink(NAME);
        let spool = if cfg.spool_max_bytes > 0 {
            let dir = crate::state_dir::StateDir::new(&ctx.state_dir).upstream_spool(cfg.format.kind().name());
            let max = cfg.spool_max_bytes;
            let d = dir.clone();
            let s = tokio::task::spawn_blocking(move || Spool::open(&d, max))
                .await?
                .map_err(|e| anyhow::anyhow!("upstream spool {}: {e}", dir.display()))?;
            if s.records() > 0 {
                tracing::info!(records = s.records(), bytes = s.bytes(), dir = %dir.display(), "upstream spool holds records from a previous run; sending them first");
                stats.enqueued(s.records());
            }
            Some(Mutex::new(s))
        } else {
            None
        };
        let dead_letter_path =
            cfg.dead_letter_file.clone().unwrap_or_else(|| crate::state_dir::StateDir::new(&ctx.state_dir).dead_letter());
        let dead_letter = Arc::new(dead_letter::DeadLetter::new(dead_letter_path));
        let shared = Arc::new(Shared {
            live: RwLock::new(Arc::new(live)),
            stats,
            dead_letter,
            spool,
            spool_changed: Notify::new(),
            failing_since_ms: AtomicI64::new(0),
            pending: Mutex::new(BTreeSet::new()),
            next_id: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(cfg.max_in_flight)),
            abandon: CancellationToken::new(),
            tracker: TaskTracker::new(),
            spool_fault: ctx.telemetry.fault("upstream_spool"),
            dead_letter_fault: ctx.telemetry.fault("dead_letter"),
            dead_letter_log: Mutex::new(LogLimit::default()),
            durability,
            budget,
            queue,
        });
        shared.update_oldest();
        Ok(Upstream { shared, ctx: ctx.clone() })
    }

    /// Runs until the queue closes (then flushes within the grace period) or
    /// `shutdown` is cancelled.
    pub async fn run(self, mut rx: mpsc::Receiver<Arc<Batch>>) -> anyhow::Result<()> {
        let sh = self.shared.clone();
        let shutdown = self.ctx.shutdown.clone();
        let stop_drain = CancellationToken::new();
        let drainer = tokio::spawn(drain(sh.clone(), stop_drain.clone()));
        let mut b = Builder::default();
        let mut flush_at: Option<Instant> = None;
        let far = || Instant::now() + Duration::from_secs(86_400);
        let mut closed = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(far)), if flush_at.is_some() => {
                    flush_at = None;
                    if let Some(req) = b.take() {
                        if !sh.dispatch(req, &shutdown).await {
                            break;
                        }
                    }
                }
                // A file went away with records batched here: spool them now.
                _ = sh.durability.demanded(), if sh.spool.is_some() && !b.units.is_empty() => {
                    flush_at = None;
                    if let Some(req) = b.take() {
                        if !sh.dispatch(req, &shutdown).await {
                            break;
                        }
                    }
                }
                msg = rx.recv() => match msg {
                    Some(batch) => {
                        if !sh.add(batch, &mut b, &mut flush_at, &shutdown).await {
                            break;
                        }
                    }
                    None => {
                        closed = true;
                        break;
                    }
                },
            }
        }
        let grace = sh.live().cfg.shutdown_grace;
        let grace_ms = grace.as_millis();
        let deadline = Instant::now() + grace;
        // Stopping while the collector fails: what is held goes to the
        // spool at once rather than after the grace period, so a kill
        // during the drain loses nothing.
        let _urgent = (sh.spool.is_some() && sh.failing_since_ms.load(Ordering::Relaxed) != 0).then(|| sh.durability.demand());
        if closed {
            if let Some(req) = b.take() {
                tokio::select! {
                    _ = sh.dispatch(req, &shutdown) => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
            stop_drain.cancel();
            sh.tracker.close();
            tokio::select! {
                _ = sh.tracker.wait() => {}
                // Every batch held is in the spool: nothing is gained by
                // waiting for a failing collector.
                _ = sh.all_acknowledged(), if _urgent.is_some() => {
                    tracing::info!("upstream: stopping while the collector fails; what was not delivered is in the spool");
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(grace_ms, "upstream: shutdown grace period over with requests still pending");
                }
                _ = shutdown.cancelled() => {}
            }
        } else {
            // Stopped now: what is batched or still queued goes to the spool
            // if it can (else it is unacknowledged and read again).
            let live = sh.live();
            while let Ok(batch) = rx.try_recv() {
                sh.stats.enqueued(batch.records.len());
                let p = sh.hold(&batch);
                for r in batch.records.iter() {
                    live.encoder.push(r, &mut b.units);
                    b.note(&p);
                }
            }
            if let Some(req) = b.take() {
                if let Err(req) = sh.spool_store(req, Evict::No).await {
                    drop(req);
                }
            }
        }
        stop_drain.cancel();
        sh.abandon.cancel();
        sh.tracker.close();
        sh.tracker.wait().await;
        if let Err(e) = drainer.await {
            tracing::error!(error = %e, "upstream spool drainer failed");
        }
        sh.update_oldest();
        sh.log_dead_letter_summary(true);
        Ok(())
    }
}

impl Shared {
    /// The settings in force.
    fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// True when upstream has been failing for `spool_after_ms` and the
    /// spool is enabled: requests go to disk rather than wait in memory.
    fn in_outage(&self) -> bool {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        self.spool.is_some() && since != 0 && now_ms() - since >= i64::try_from(self.live().cfg.spool_after.as_millis()).unwrap_or(i64::MAX)
    }

    fn spool_has_untaken(&self) -> bool {
        self.spool.as_ref().is_some_and(|s| lock(s).has_untaken())
    }

    /// An attempt failed: start the outage clock.
    fn failing(&self, reason: &str) {
        if self.failing_since_ms.compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::warn!(url = %self.live().log_url, reason = %Escaped(reason), "upstream: delivery failing; retrying with backoff");
        }
    }

    /// Upstream answered: stop the outage clock.
    fn healthy(&self) {
        let since = self.failing_since_ms.swap(0, Ordering::Relaxed);
        if since != 0 {
            tracing::info!(url = %self.live().log_url, failing_ms = now_ms() - since, "upstream: answering again");
        }
    }

    /// Publishes the observed time of the oldest record not yet delivered.
    fn update_oldest(&self) {
        let mem = lock(&self.pending).first().map(|&(o, _)| o);
        let spooled = self.spool.as_ref().and_then(|s| lock(s).oldest_observed_ms());
        let oldest = match (mem, spooled) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(0),
        };
        self.stats.set_oldest_pending(oldest);
    }

    /// Takes one pipeline batch into the request being built, sending
    /// requests as they fill. False when shutdown interrupted it.
    async fn add(
        self: &Arc<Self>,
        batch: Arc<Batch>,
        b: &mut Builder,
        flush_at: &mut Option<Instant>,
        shutdown: &CancellationToken,
    ) -> bool {
        let n = batch.records.len();
        self.stats.enqueued(n);
        if n == 0 {
            batch.ack();
            return true;
        }
        let p = self.hold(&batch);
        let live = self.live();
        let (cfg, encoder) = (&live.cfg, &live.encoder);
        let (max_records, max_bytes) = (cfg.batch_max_records, cfg.batch_max_bytes);
        // The bytes this batch's records take once encoded (what the sink
        // holds of them until they are delivered).
        let mut encoded = 0;
        for r in batch.records.iter() {
            if b.units.is_empty() {
                *flush_at = Some(Instant::now() + cfg.flush_interval);
            }
            let before = b.units.buf.len();
            encoder.push(r, &mut b.units);
            encoded += b.units.buf.len() - before;
            b.note(&p);
            let size = |u: &Units| u.buf.len() + encoder.framing_bytes(u.len());
            if b.units.len() > 1 && size(&b.units) > max_bytes {
                // This record overflows the request: send the others, and
                // start the next request with it.
                b.units.pop();
                b.unnote();
                if let Some(req) = b.take() {
                    if !self.dispatch(req, shutdown).await {
                        return false;
                    }
                }
                *flush_at = Some(Instant::now() + cfg.flush_interval);
                encoder.push(r, &mut b.units);
                b.note(&p);
            }
            if b.units.len() >= max_records || size(&b.units) >= max_bytes {
                *flush_at = None;
                if let Some(req) = b.take() {
                    if !self.dispatch(req, shutdown).await {
                        return false;
                    }
                }
            }
        }
        let _ = p.charge.set(self.budget.charge(encoded + n * std::mem::size_of::<encode::Span>()));
        drop(batch);
        if self.spool.is_some() && self.durability.is_demanded() {
            // A file went away with records not yet acknowledged: nothing
            // waits for the flush interval.
            *flush_at = None;
            if let Some(req) = b.take() {
                return self.dispatch(req, shutdown).await;
            }
        }
        true
    }

    /// Resolves once every pipeline batch taken was acknowledged
    /// (delivered, dead-lettered or spooled).
    async fn all_acknowledged(&self) {
        while !lock(&self.pending).is_empty() {
            tokio::time::sleep(RECHECK).await;
        }
    }

    /// Takes a non-empty pipeline batch into the pending set.
    /// The caller encodes its records right away; only the receipt is kept.
    fn hold(&self, batch: &Batch) -> Arc<Pending> {
        let n = batch.records.len();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).insert((batch.observed_ms, id));
        self.update_oldest();
        Arc::new(Pending { batch: batch.receipt(), id, remaining: AtomicUsize::new(n), charge: std::sync::OnceLock::new() })
    }

    /// True when requests should go to the spool instead of waiting for a
    /// sender: a file went away with records not yet acknowledged (a
    /// durability demand), or this sink's queue is full or the memory
    /// budget reached, so the tailers,
    /// and with them the archive and the channel, would wait on this one
    /// collector.
    fn must_spill(&self) -> bool {
        if self.spool.is_none() {
            return false;
        }
        match self.queue.upgrade() {
            // The memory budget reached counts as a full queue: the
            // tailers wait on it just the same.
            Some(tx) => self.durability.is_demanded() || tx.capacity() == 0 || self.budget.exhausted(),
            // Nothing can send any more: the bridge is stopping. While the
            // collector fails, what is held goes to the spool at once.
            None => self.durability.is_demanded() || self.failing_since_ms.load(Ordering::Relaxed) != 0,
        }
    }

    /// Hands a built request to a sender (waiting for a permit: this is the
    /// backpressure) or, during an outage, to the spool. Waits while spooled
    /// files are waiting, so the backlog goes first. Spills to the spool
    /// instead of waiting when [`Shared::must_spill`] (never evicting: a
    /// full spool means waiting, as without one). False on shutdown.
    async fn dispatch(self: &Arc<Self>, mut req: Request, shutdown: &CancellationToken) -> bool {
        loop {
            if self.in_outage() {
                match self.spool_store(req, Evict::Oldest).await {
                    Ok(()) => return true,
                    Err(r) => req = r,
                }
            } else {
                if !self.spool_has_untaken() {
                    if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                        self.send(req, permit);
                        return true;
                    }
                }
                if self.must_spill() {
                    match self.spool_store(req, Evict::No).await {
                        Ok(()) => return true,
                        Err(r) => req = r,
                    }
                }
                if !self.spool_has_untaken() {
                    tokio::select! {
                        p = self.permits.clone().acquire_owned() => {
                            let Ok(permit) = p else { return false };
                            self.send(req, permit);
                            return true;
                        }
                        _ = shutdown.cancelled() => return false,
                        _ = self.durability.demanded(), if self.spool.is_some() && !self.durability.is_demanded() => {}
                        _ = tokio::time::sleep(RECHECK) => {}
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = self.spool_changed.notified() => {}
                _ = self.durability.demanded(), if self.spool.is_some() && !self.durability.is_demanded() => {}
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
    }

    /// Starts a sender for a request.
    fn send(self: &Arc<Self>, req: Request, permit: OwnedSemaphorePermit) {
        let sh = self.clone();
        self.tracker.spawn(async move { sh.deliver(req, permit).await });
    }

    /// Sends one request until all its records are handled (splitting on
    /// 413, sending again only the records a collector did not take), or
    /// until `abandon` (then spooled if possible, else dropped
    /// unacknowledged). While a durability demand is held, the records it
    /// holds in memory are spooled at once (the spool file stays with this
    /// sender, which goes on sending it) and acknowledged.
    async fn deliver(self: Arc<Self>, req: Request, _permit: OwnedSemaphorePermit) {
        let mut stack = vec![req];
        // A spool write failed for a demand: wait a little before the next.
        let mut durable_failed = false;
        'requests: while let Some(mut r) = stack.pop() {
            let mut attempt: u32 = 0;
            let mut body: Option<http::Body> = None;
            loop {
                let body_now = match &body {
                    Some(b) => b.clone(),
                    None => match self.encode(&r).await {
                        Some(b) => body.insert(b).clone(),
                        None => return self.give_up(r, stack).await,
                    },
                };
                let live = self.live();
                let send = http::attempt(&live.client, &live.cfg.url, &body_now, live.cfg.auth_failures);
                tokio::pin!(send);
                let outcome = loop {
                    let in_memory = r.origin == Origin::Memory || stack.iter().any(|q| q.origin == Origin::Memory);
                    tokio::select! {
                        o = &mut send => break o,
                        _ = self.abandon.cancelled() => {
                            stack.push(r);
                            return self.give_up_all(stack).await;
                        }
                        _ = self.durable_wanted(durable_failed), if in_memory && self.spool.is_some() => {
                            durable_failed = !self.make_durable(&mut r, &mut stack).await;
                        }
                    }
                };
                let (reason, after) = match outcome {
                    Outcome::Delivered => {
                        self.healthy();
                        let origin = r.origin;
                        self.complete(r, Handled::Delivered);
                        self.piece_done(origin, &stack).await;
                        continue 'requests;
                    }
                    Outcome::TooLarge if r.units.len() > 1 => {
                        self.healthy();
                        tracing::warn!(
                            records = r.units.len(),
                            bytes = body_now.bytes.len(),
                            "upstream: 413 payload too large; splitting the request"
                        );
                        let (a, b) = r.split();
                        stack.push(b);
                        stack.push(a);
                        continue 'requests;
                    }
                    Outcome::TooLarge => {
                        self.healthy();
                        let origin = r.origin;
                        let why = Rejection::Whole { status: 413, response: "413 Payload Too Large for a single record" };
                        if !self.poison(r, why).await {
                            return self.give_up_all(stack).await;
                        }
                        self.piece_done(origin, &stack).await;
                        continue 'requests;
                    }
                    Outcome::Poison { status, body } => {
                        self.healthy();
                        let origin = r.origin;
                        if !self.poison(r, Rejection::Whole { status, response: &body }).await {
                            return self.give_up_all(stack).await;
                        }
                        self.piece_done(origin, &stack).await;
                        continue 'requests;
                    }
                    Outcome::Partial { items, reason } => {
                        // The collector answered and took some records: it
                        // is up. What it took is acknowledged, what it
                        // refused for good is dead-lettered, the rest is
                        // sent again after a backoff.
                        self.healthy();
                        let origin = r.origin;
                        let (done, retry, refused) = r.partition(&items);
                        if let Some(d) = done {
                            self.complete(d, Handled::Delivered);
                        }
                        if let Some((rq, errors)) = refused {
                            if !self.poison(rq, Rejection::PerRecord(errors)).await {
                                stack.extend(retry);
                                return self.give_up_all(stack).await;
                            }
                        }
                        let Some(rest) = retry else {
                            self.piece_done(origin, &stack).await;
                            continue 'requests;
                        };
                        r = rest;
                        body = None;
                        (reason, None)
                    }
                    Outcome::Retry { reason, after } => {
                        self.failing(&reason);
                        (reason, after)
                    }
                };
                self.stats.retried();
                if attempt == 0 || attempt.is_power_of_two() {
                    tracing::warn!(url = %live.log_url, reason = %Escaped(&reason), attempt = attempt + 1, records = r.units.len(), "upstream: attempt failed; will retry");
                }
                if r.origin == Origin::Memory && self.in_outage() {
                    match self.spool_store(r, Evict::Oldest).await {
                        Ok(()) => continue 'requests,
                        Err(back) => r = back,
                    }
                }
                let (delay, capped) = http::retry_delay(after, attempt, live.cfg.retry_initial, live.cfg.retry_max);
                if capped {
                    self.stats.retry_after_capped();
                    tracing::warn!(
                        retry_after_secs = after.map_or(0, |a| a.as_secs()),
                        retry_max_ms = live.cfg.retry_max.as_millis(),
                        "upstream: the collector asked to wait longer than retry_max_ms; retrying after retry_max_ms"
                    );
                }
                attempt = attempt.saturating_add(1);
                let wake = Instant::now() + delay;
                loop {
                    let in_memory = r.origin == Origin::Memory || stack.iter().any(|q| q.origin == Origin::Memory);
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => break,
                        _ = self.abandon.cancelled() => {
                            stack.push(r);
                            return self.give_up_all(stack).await;
                        }
                        _ = self.durable_wanted(durable_failed), if in_memory && self.spool.is_some() => {
                            durable_failed = !self.make_durable(&mut r, &mut stack).await;
                        }
                    }
                }
            }
        }
    }

    /// Resolves when a durability demand is held; after a failed attempt
    /// to meet one, not before [`RECHECK`] has passed.
    async fn durable_wanted(&self, failed_before: bool) {
        if failed_before {
            tokio::time::sleep(RECHECK).await;
        }
        self.durability.demanded().await
    }

    /// Writes the memory requests of a sender (the one being sent and those
    /// waiting on its stack) to the spool, acknowledges their records, and
    /// keeps them: they are sent on as spool files this sender owns. False
    /// when one could not be written (it stays in memory).
    async fn make_durable(&self, r: &mut Request, stack: &mut [Request]) -> bool {
        let mut ok = true;
        for q in std::iter::once(r).chain(stack.iter_mut()) {
            if q.origin != Origin::Memory {
                continue;
            }
            match self.write_spool(&q.units, q.observed_ms, Evict::No, true).await {
                Some(seq) => {
                    let acked = Request {
                        units: q.units.clone(),
                        covers: std::mem::take(&mut q.covers),
                        observed_ms: q.observed_ms,
                        origin: Origin::Spool(seq),
                    };
                    self.complete(acked, Handled::Spooled);
                    q.origin = Origin::Spool(seq);
                    tracing::debug!(seq, records = q.units.len(), "upstream: records of a file gone made durable in the spool");
                }
                None => ok = false,
            }
        }
        ok
    }

    /// A piece of a request is handled: its spool file goes when no other
    /// piece of this sender still needs it.
    async fn piece_done(&self, origin: Origin, stack: &[Request]) {
        if let Origin::Spool(seq) = origin {
            if !stack.iter().any(|q| q.origin == origin) {
                self.spool_delete(seq).await;
            }
        }
    }

    /// The body of a request, encoded off the runtime by the encoder in
    /// force now (its headers go with it); `None` when encoding failed.
    async fn encode(&self, r: &Request) -> Option<http::Body> {
        let units = r.units.clone();
        let enc = self.live().encoder.clone();
        let (content_type, content_encoding, format, records) =
            (enc.content_type(), enc.content_encoding(), enc.format.kind(), units.len());
        match tokio::task::spawn_blocking(move || enc.body(&units)).await {
            Ok(b) => Some(http::Body { bytes: bytes::Bytes::from(b), content_type, content_encoding, format, records }),
            Err(e) => {
                tracing::error!(error = %e, "upstream: encoding a request failed");
                None
            }
        }
    }

    /// Gives up one request and the rest of its stack.
    async fn give_up(&self, r: Request, mut stack: Vec<Request>) {
        stack.push(r);
        self.give_up_all(stack).await
    }

    /// Gives up pending requests at shutdown: memory requests are spooled
    /// when possible (else left unacknowledged, read again after restart);
    /// a spool file stays on disk for the next run.
    async fn give_up_all(&self, stack: Vec<Request>) {
        for r in stack {
            match r.origin {
                Origin::Memory => {
                    let _ = self.spool_store(r, Evict::Oldest).await;
                }
                Origin::Spool(seq) => {
                    if let Some(s) = &self.spool {
                        lock(s).release(seq);
                    }
                }
            }
        }
    }

    /// Writes a poison request to the dead-letter file (retrying on disk
    /// errors until it is written or the sink is abandoned). False when
    /// abandoned before it could be written (the records stay unhandled).
    async fn poison(&self, r: Request, why: Rejection<'_>) -> bool {
        let log = lock(&self.dead_letter_log).allow(std::time::Instant::now(), "rejected");
        match &why {
            Rejection::Whole { status, response } if log => tracing::error!(
                url = %self.live().log_url, status, records = r.units.len(),
                response = %logsafe::clip(response, 200),
                file = %Escaped::path(self.dead_letter.path()),
                "upstream: batch rejected; written to the dead-letter file"
            ),
            Rejection::PerRecord(errors) if log => tracing::error!(
                url = %self.live().log_url, records = r.units.len(),
                first_status = errors.first().map_or(0, |e| e.0),
                first_error = %logsafe::clip(errors.first().map_or("", |e| e.1.as_str()), 200),
                file = %Escaped::path(self.dead_letter.path()),
                "upstream: records refused one by one by the collector; written to the dead-letter file"
            ),
            _ => {}
        }
        self.log_dead_letter_summary(false);
        let owned = match why {
            Rejection::Whole { status, response } => Err((status, response.to_string())),
            Rejection::PerRecord(errors) => Ok(errors),
        };
        let owned = Arc::new(owned);
        let mut attempt = 0;
        loop {
            let live = self.live();
            let (dl, url, units, why) = (self.dead_letter.clone(), live.log_url.clone(), r.units.clone(), owned.clone());
            let (fmt, rotation) = (live.cfg.format.kind().name(), live.cfg.dead_letter_rotation);
            let res = tokio::task::spawn_blocking(move || match &*why {
                Err((status, resp)) => dl.append(rotation, &url, fmt, *status, resp, &units),
                Ok(errors) => dl.append_each(rotation, &url, fmt, errors, &units),
            })
            .await;
            let err = match res {
                Ok(Ok(appended)) => {
                    if attempt > 0 {
                        self.dead_letter_fault.recovered();
                    }
                    if appended.deleted_bytes > 0 && lock(&self.dead_letter_log).allow(std::time::Instant::now(), "deleted") {
                        tracing::error!(
                            file = %Escaped::path(self.dead_letter.path()), deleted_bytes = appended.deleted_bytes,
                            keep_files = rotation.keep_files,
                            "upstream: dead-letter file rotated; DELETED the oldest rotated file to stay within dead_letter_rotate_bytes x dead_letter_keep_files"
                        );
                    }
                    self.complete(r, Handled::DeadLettered);
                    return true;
                }
                Ok(Err(e)) => format!("cannot write the dead-letter file {}: {e}", self.dead_letter.path().display()),
                Err(e) => format!("the dead-letter task failed: {e}"),
            };
            // Logged once, then periodically; shown in /status and /readyz.
            let delay = self.dead_letter_fault.failed(&err);
            attempt += 1;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.abandon.cancelled() => {
                    // A spool file keeps it; memory records stay unacknowledged.
                    if let Origin::Spool(seq) = r.origin {
                        if let Some(s) = &self.spool {
                            lock(s).release(seq);
                        }
                    }
                    return false;
                }
            }
        }
    }

    /// Logs how many dead-letter log lines the limit kept out, once due (or
    /// at once with `force`).
    fn log_dead_letter_summary(&self, force: bool) {
        if let Some(s) = lock(&self.dead_letter_log).summary(std::time::Instant::now(), force) {
            tracing::error!(
                suppressed = s.total, by_kind = %s.by_label, file = %Escaped::path(self.dead_letter.path()),
                "upstream: {} similar dead-letter log lines suppressed (dead-lettered records are counted in /metrics)", s.total
            );
        }
    }

    /// Records how a request's records were handled and acknowledges the
    /// pipeline batches that are now complete.
    fn complete(&self, r: Request, how: Handled) {
        let n = r.units.len();
        match how {
            Handled::Delivered => self.stats.delivered(n, r.observed_ms, now_ms()),
            Handled::DeadLettered => self.stats.dead_lettered(n),
            Handled::Spooled => {}
        }
        let mut done = Vec::new();
        for c in r.covers {
            if c.pending.remaining.fetch_sub(c.count, Ordering::AcqRel) == c.count {
                done.push(c.pending);
            }
        }
        if !done.is_empty() {
            let mut set = lock(&self.pending);
            for p in &done {
                set.remove(&(p.batch.observed_ms, p.id));
            }
        }
        for p in done {
            p.batch.ack();
        }
        self.update_oldest();
    }

    /// Writes a memory request to the spool and acknowledges its records.
    /// Gives the request back when the spool is disabled, full (of files
    /// being sent, or at all with [`Evict::No`]), or failing.
    async fn spool_store(&self, r: Request, evict: Evict) -> Result<(), Request> {
        match self.write_spool(&r.units, r.observed_ms, evict, false).await {
            Some(seq) => {
                tracing::debug!(seq, records = r.units.len(), "upstream: request spooled");
                self.complete(r, Handled::Spooled);
                self.spool_changed.notify_waiters();
                Ok(())
            }
            None => Err(r),
        }
    }

    /// Writes units durably to a new spool file and registers it (`taken`:
    /// the caller goes on sending it). `None` when the spool is disabled,
    /// has no room, or the write failed.
    async fn write_spool(&self, units: &Arc<Units>, observed_ms: i64, evict: Evict, taken: bool) -> Option<u64> {
        let spool = self.spool.as_ref()?;
        let need = spool::file_size_estimate(units);
        let (seq, path, evicted) = {
            let mut s = lock(spool);
            let ev = if evict == Evict::Oldest { s.make_room(need) } else { spool::Evicted::default() };
            if !s.fits(need) {
                drop(s);
                self.report_evicted(&ev);
                return None;
            }
            let (seq, path) = s.reserve(need);
            (seq, path, ev)
        };
        self.report_evicted(&evicted);
        let (u, p) = (units.clone(), path.clone());
        match tokio::task::spawn_blocking(move || spool::write_file(&p, &u, observed_ms)).await {
            Ok(Ok(size)) => {
                lock(spool).add(seq, size, units.len(), observed_ms, need, taken);
                self.spool_fault.recovered();
                Some(seq)
            }
            Ok(Err(e)) => {
                lock(spool).unreserve(need);
                // Logged once, then periodically; the request stays in
                // memory (unacknowledged) and is spooled or sent later.
                self.spool_fault.failed(&format!("cannot write to the spool {}: {e}; keeping the request in memory", path.display()));
                let _ = std::fs::remove_file(path.with_extension("tmp"));
                None
            }
            Err(e) => {
                lock(spool).unreserve(need);
                tracing::error!(error = %e, "upstream: spool task failed");
                None
            }
        }
    }

    /// Logs and counts spool files deleted to make room.
    fn report_evicted(&self, ev: &spool::Evicted) {
        if ev.files > 0 {
            tracing::error!(
                files = ev.files,
                records = ev.records,
                spool_max_bytes = self.live().cfg.spool_max_bytes,
                "upstream: spool full; DROPPED the oldest spooled records to make room (upstream has been unreachable too long)"
            );
            self.stats.dropped(ev.records);
        }
    }

    /// Deletes a delivered spool file.
    async fn spool_delete(&self, seq: u64) {
        let Some(spool) = &self.spool else { return };
        let path = lock(spool).remove(seq);
        if let Err(e) = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await {
            tracing::error!(error = %e, "upstream: spool delete task failed");
        }
        self.update_oldest();
        self.spool_changed.notify_waiters();
    }
}

/// The spool drainer: hands spooled files, oldest first, to senders as
/// permits allow, until `stop`.
async fn drain(sh: Arc<Shared>, stop: CancellationToken) {
    let Some(spool) = &sh.spool else { return };
    loop {
        if !lock(spool).has_untaken() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sh.spool_changed.notified() => {}
                _ = tokio::time::sleep(RECHECK * 4) => {}
            }
            continue;
        }
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = sh.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let Some((entry, path)) = lock(spool).take_oldest() else { continue };
        let p = path.clone();
        match tokio::task::spawn_blocking(move || spool::read_file(&p)).await {
            Ok(Ok((units, observed_ms))) => {
                let req = Request { units: Arc::new(units), covers: Vec::new(), observed_ms, origin: Origin::Spool(entry.seq) };
                let s = sh.clone();
                sh.tracker.spawn(async move { s.deliver(req, permit).await });
            }
            Ok(Err(e)) => {
                tracing::error!(
                    file = %path.display(), records = entry.records, error = %e,
                    "upstream: spool file is damaged; DROPPED its records"
                );
                sh.stats.dropped(entry.records);
                sh.spool_delete(entry.seq).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "upstream: spool read task failed");
                lock(spool).release(entry.seq);
            }
        }
    }
}

/// Locks a mutex, recovering from poisoning (the data are plain indexes).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
