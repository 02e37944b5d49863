//! The engine at work: the batcher (pipeline batches into requests), the
//! dispatch (a permit, the spool, or wait: the spill rule of [`super`]),
//! the senders (attempts, retries, splits, partial answers, dead letters,
//! durability demands), the spool drainer, and the drain at shutdown. One
//! copy for every sink on the engine; what differs between sinks is their
//! [`Encode`], their [`Transport`] and what they [`Declared`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::dead_letter::DeadLetter;
use super::outcome::{retry_delay, Outcome};
use super::request::{Builder, Origin, Pending, Request};
use super::settings::Settings;
use super::spool::{self, Spool};
use super::units::{Span, Units};
use super::{Encode, Transport};
use crate::budget::MemoryBudget;
use crate::logsafe::{self, Escaped};
use crate::pipeline::{Batch, Durability, Fanout};
use crate::telemetry::figures::{Counter, Gauge};
use crate::telemetry::log_limit::LogLimit;
use crate::telemetry::{Fault, SinkStats, Telemetry};
use crate::time::now_ms;

/// How often waiting loops re-check conditions that have no signal of their
/// own (the outage clock, a full queue).
const RECHECK: Duration = Duration::from_millis(50);

/// What a sink on the engine declares once: its names in logs, faults and
/// figures.
#[derive(Debug)]
pub struct Declared {
    /// The sink's name: its log span (`sink{name=...}`), its place on the
    /// fan-out, its statistics (`/status` `sinks`, `/metrics` `sink`).
    pub name: &'static str,
    /// The fault opened while the spool cannot be written.
    pub spool_fault: &'static str,
    /// The fault opened while the dead-letter file cannot be written.
    pub dead_letter_fault: &'static str,
    /// A fault opened while the peer takes nothing (the bridge is not
    /// ready meanwhile); `None`: a failing peer shows in the log and the
    /// figures only.
    pub peer_fault: Option<&'static str>,
    /// The sink's own figures (`/status` section and `calllog_bridge_<name>_*`)
    /// under these names; `None`: the sink statistics only.
    pub figures: Option<FigureNames>,
}

/// A name and its help text.
pub type Named = (&'static str, &'static str);

/// The names of the engine's figures in a sink's section.
#[derive(Debug)]
pub struct FigureNames {
    /// Counter: records the peer took.
    pub delivered: Named,
    /// Counter: records written to the dead-letter file.
    pub dead_lettered: Named,
    /// Counter: failed attempts retried.
    pub retries: Named,
    /// Gauge: requests being sent.
    pub in_flight: Named,
    /// Gauge: 1 while the peer fails.
    pub failing: Named,
    /// Gauge: records in the spool.
    pub spool_records: Named,
    /// Gauge: bytes of the spool.
    pub spool_bytes: Named,
    /// Gauge: files of the spool.
    pub spool_files: Named,
    /// Counter: records written to the spool.
    pub spooled: Named,
    /// Counter: spooled records deleted to make room.
    pub spool_dropped: Named,
}

/// A sink's parts that a reload replaces together: the engine's settings,
/// the encoder and the transport. Requests use the parts in force when
/// they are built (batch limits, encoding) or sent (transport, backoff,
/// `spool_after_ms`): a request being retried switches to a new transport
/// at its next attempt.
pub struct Parts<E, T> {
    /// The engine's settings (`max_in_flight`, `spool_max_bytes` and
    /// `dead_letter_file` are read once, at start).
    pub settings: Settings,
    /// Records into units.
    pub encoder: E,
    /// Units to the peer.
    pub transport: T,
}

/// Where a sink's files are.
pub struct Places {
    /// The spool's directory (used when `spool_max_bytes` is not 0).
    pub spool: PathBuf,
    /// The dead-letter file when `dead_letter_file` is not set.
    pub dead_letter: PathBuf,
}

/// Controls a running sink on the engine (a reload's new parts).
pub struct Control<E, T> {
    /// The engine's state.
    shared: Arc<Shared<E, T>>,
}

impl<E, T> Clone for Control<E, T> {
    fn clone(&self) -> Self {
        Control { shared: self.shared.clone() }
    }
}

impl<E: Encode, T: Transport> Control<E, T> {
    /// Puts new parts in force. The settings a running sink cannot change
    /// (`max_in_flight`, the spool's bound, the dead-letter file) keep the
    /// values it started with.
    pub fn reconfigure(&self, parts: Parts<E, T>) {
        *self.shared.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(parts);
    }
}

/// The engine's figures of a sink that declared them.
struct Figures {
    delivered: Counter,
    dead_lettered: Counter,
    retries: Counter,
    in_flight: Gauge,
    failing: Gauge,
    spool_records: Gauge,
    spool_bytes: Gauge,
    spool_files: Gauge,
    spooled: Counter,
    spool_dropped: Counter,
}

impl Figures {
    fn declare(telemetry: &Telemetry, name: &'static str, n: &FigureNames) -> Figures {
        let f = telemetry.figures(name);
        Figures {
            delivered: f.counter(n.delivered.0, n.delivered.1),
            dead_lettered: f.counter(n.dead_lettered.0, n.dead_lettered.1),
            retries: f.counter(n.retries.0, n.retries.1),
            in_flight: f.gauge(n.in_flight.0, n.in_flight.1),
            failing: f.gauge(n.failing.0, n.failing.1),
            spool_records: f.gauge(n.spool_records.0, n.spool_records.1),
            spool_bytes: f.gauge(n.spool_bytes.0, n.spool_bytes.1),
            spool_files: f.gauge(n.spool_files.0, n.spool_files.1),
            spooled: f.counter(n.spooled.0, n.spooled.1),
            spool_dropped: f.counter(n.spool_dropped.0, n.spool_dropped.1),
        }
    }
}

/// Whether a spool write may delete the oldest spooled records to make
/// room.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Evict {
    /// Yes: the peer has been failing for `spool_after_ms` (or the sink is
    /// stopping), the spool is the only place left.
    Oldest,
    /// No: without room the request waits in memory (a spill because
    /// reading would wait, or a durability demand, never costs older
    /// records).
    No,
}

/// Why records go to the dead-letter file.
enum Rejection<'a> {
    /// The whole request, with the answer's status and body.
    Whole {
        /// The status.
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
    /// The peer took them.
    Delivered,
    /// Written to the dead-letter file.
    DeadLettered,
    /// Written to the spool (still to be delivered).
    Spooled,
}

/// State shared by the batcher, the spool drainer and the senders.
struct Shared<E, T> {
    /// The parts in force; a reload replaces them ([`Control`]).
    live: RwLock<Arc<Parts<E, T>>>,
    /// `spool_max_bytes` at start (the spool's bound is fixed).
    spool_max_bytes: u64,
    /// Sink statistics.
    stats: SinkStats,
    /// The sink's own figures, if it declared them.
    figures: Option<Figures>,
    /// Where refused records go.
    dead_letter: Arc<DeadLetter>,
    /// The disk spool; `None` when `spool_max_bytes` is 0.
    spool: Option<Mutex<Spool>>,
    /// Signalled when the spool gains or loses a file.
    spool_changed: Notify,
    /// Epoch ms since which every attempt failed; 0 = the peer is healthy.
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
    spool_fault: Fault,
    /// Reports a dead-letter file that cannot be written.
    dead_letter_fault: Fault,
    /// Reports a peer that takes nothing, if the sink declared it.
    peer_fault: Option<Fault>,
    /// Limits the dead-letter log lines: a peer that refuses every batch
    /// would otherwise write one error line per request.
    dead_letter_log: Mutex<LogLimit>,
    /// Demands to make what is held in memory durable now (a file gone
    /// with records not yet acknowledged; see [`Durability`]).
    durability: Arc<Durability>,
    /// The memory budget: what this sink holds of the records it has not
    /// delivered yet is charged there, and when it is reached requests
    /// spill to the spool as for a full queue.
    budget: Arc<MemoryBudget>,
    /// The sink's own queue (weak: it does not keep the queue open), to
    /// see when it is full: then the readers wait on this sink.
    queue: mpsc::WeakSender<Arc<Batch>>,
    /// `sink{name=...}`: every log line of the sink's tasks is in it.
    span: tracing::Span,
}

/// Starts a sink on the engine: opens its spool (indexing what a previous
/// run left there: it is sent first), registers `queue` on `fanout` under
/// the declared name and spawns the sink's task, which runs until the
/// queue closes (then delivers what it holds within `shutdown_grace_ms`)
/// or `shutdown` is cancelled.
pub async fn start<E: Encode, T: Transport>(
    declared: &'static Declared,
    parts: Parts<E, T>,
    places: Places,
    telemetry: &Telemetry,
    shutdown: CancellationToken,
    fanout: &mut Fanout,
    queue: (mpsc::Sender<Arc<Batch>>, mpsc::Receiver<Arc<Batch>>),
) -> anyhow::Result<(JoinHandle<anyhow::Result<()>>, Control<E, T>)> {
    let name = declared.name;
    let span = tracing::info_span!("sink", name);
    let stats = telemetry.sink(name);
    let settings = &parts.settings;
    let spool = if settings.spool_max_bytes > 0 {
        let (dir, max, s) = (places.spool.clone(), settings.spool_max_bytes, span.clone());
        let opened = tokio::task::spawn_blocking(move || s.in_scope(|| Spool::open(&dir, max))).await?;
        let spool = opened.map_err(|e| anyhow::anyhow!("{name} spool {}: {e}", places.spool.display()))?;
        if spool.records() > 0 {
            span.in_scope(|| {
                tracing::info!(records = spool.records(), bytes = spool.bytes(), dir = %places.spool.display(), "the spool holds records from a previous run; sending them first")
            });
            stats.enqueued(spool.records());
        }
        Some(Mutex::new(spool))
    } else {
        None
    };
    let dead_letter = Arc::new(DeadLetter::new(settings.dead_letter_file.clone().unwrap_or(places.dead_letter)));
    let (tx, rx) = queue;
    let shared = Arc::new(Shared {
        spool_max_bytes: settings.spool_max_bytes,
        permits: Arc::new(Semaphore::new(settings.max_in_flight)),
        live: RwLock::new(Arc::new(parts)),
        stats,
        figures: declared.figures.as_ref().map(|n| Figures::declare(telemetry, name, n)),
        dead_letter,
        spool,
        spool_changed: Notify::new(),
        failing_since_ms: AtomicI64::new(0),
        pending: Mutex::new(BTreeSet::new()),
        next_id: AtomicU64::new(0),
        abandon: CancellationToken::new(),
        tracker: TaskTracker::new(),
        spool_fault: telemetry.fault(declared.spool_fault),
        dead_letter_fault: telemetry.fault(declared.dead_letter_fault),
        peer_fault: declared.peer_fault.map(|f| telemetry.fault(f)),
        dead_letter_log: Mutex::new(LogLimit::default()),
        durability: fanout.durability(),
        budget: fanout.budget().clone(),
        queue: tx.downgrade(),
        span: span.clone(),
    });
    shared.update_oldest();
    shared.spool_figures();
    fanout.add(name, tx);
    let task = tokio::spawn(shared.clone().run(rx, shutdown).instrument(span));
    Ok((task, Control { shared }))
}

impl<E: Encode, T: Transport> Shared<E, T> {
    /// The parts in force.
    fn live(&self) -> Arc<Parts<E, T>> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs until the queue closes (then delivers what it holds within the
    /// grace period) or `shutdown` is cancelled.
    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Arc<Batch>>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let stop_drain = CancellationToken::new();
        let drainer = tokio::spawn(self.clone().drain(stop_drain.clone()).instrument(self.span.clone()));
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
                        if !self.dispatch(req, &shutdown).await {
                            break;
                        }
                    }
                }
                // A file went away with records batched here: spool them now.
                _ = self.durability.demanded(), if self.spool.is_some() && !b.units.is_empty() => {
                    flush_at = None;
                    if let Some(req) = b.take() {
                        if !self.dispatch(req, &shutdown).await {
                            break;
                        }
                    }
                }
                msg = rx.recv() => match msg {
                    Some(batch) => {
                        if !self.add(batch, &mut b, &mut flush_at, &shutdown).await {
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
        let grace = self.live().settings.shutdown_grace;
        let grace_ms = grace.as_millis();
        let deadline = Instant::now() + grace;
        // Stopping while the peer fails: what is held goes to the spool at
        // once rather than after the grace period, so a kill during the
        // drain loses nothing.
        let urgent = (self.spool.is_some() && self.failing_since_ms.load(Ordering::Relaxed) != 0).then(|| self.durability.demand());
        if closed {
            if let Some(req) = b.take() {
                tokio::select! {
                    _ = self.dispatch(req, &shutdown) => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
            stop_drain.cancel();
            self.tracker.close();
            tokio::select! {
                _ = self.tracker.wait() => {}
                // Every batch held is in the spool: nothing is gained by
                // waiting for a failing peer.
                _ = self.all_acknowledged(), if urgent.is_some() => {
                    tracing::info!("stopping while the peer fails; what was not delivered is in the spool");
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(grace_ms, "shutdown grace period over with requests still pending; they go to the spool if it has room, else they are read again after the restart");
                }
                _ = shutdown.cancelled() => {}
            }
        } else {
            // Stopped now: what is batched or still queued goes to the spool
            // if it can (else it is unacknowledged and read again).
            let live = self.live();
            while let Ok(batch) = rx.try_recv() {
                self.stats.enqueued(batch.records.len());
                let p = self.hold(&batch);
                for r in batch.records.iter() {
                    live.encoder.encode(r, &batch.source, &mut b.units);
                    b.note(&p);
                }
            }
            if let Some(req) = b.take() {
                if let Err(req) = self.spool_store(req, Evict::No).await {
                    drop(req);
                }
            }
        }
        stop_drain.cancel();
        self.abandon.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        if let Err(e) = drainer.await {
            tracing::error!(error = %e, "the spool drainer failed");
        }
        drop(urgent);
        self.update_oldest();
        self.log_dead_letter_summary(true);
        Ok(())
    }

    /// True when the peer has been failing for `spool_after_ms` and the
    /// spool is enabled: requests go to disk rather than wait in memory.
    fn in_outage(&self) -> bool {
        self.outage_in().is_some_and(|d| d.is_zero())
    }

    /// While the peer fails and the spool is enabled, how long until the
    /// outage reaches `spool_after_ms` (zero once it has).
    fn outage_in(&self) -> Option<Duration> {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        if self.spool.is_none() || since == 0 {
            return None;
        }
        let after = i64::try_from(self.live().settings.spool_after.as_millis()).unwrap_or(i64::MAX);
        Some(Duration::from_millis(u64::try_from(since.saturating_add(after) - now_ms()).unwrap_or(0)))
    }

    fn spool_has_untaken(&self) -> bool {
        self.spool.as_ref().is_some_and(|s| lock(s).has_untaken())
    }

    /// An attempt failed: start the outage clock.
    fn failing(&self, reason: &str) {
        if self.failing_since_ms.compare_exchange(0, now_ms().max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            if let Some(f) = &self.figures {
                f.failing.set(1);
            }
            tracing::warn!(destination = %self.live().transport.destination(), reason = %Escaped(reason), "delivery failing; retrying with backoff for as long as it takes");
        }
        if let Some(f) = &self.peer_fault {
            f.failed(reason);
        }
    }

    /// The peer answered: stop the outage clock.
    fn healthy(&self) {
        let since = self.failing_since_ms.swap(0, Ordering::Relaxed);
        if since != 0 {
            if let Some(f) = &self.figures {
                f.failing.set(0);
            }
            if let Some(f) = &self.peer_fault {
                f.recovered();
            }
            tracing::info!(destination = %self.live().transport.destination(), failing_ms = now_ms() - since, "delivering again");
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

    /// Publishes the spool's size (when the sink has figures).
    fn spool_figures(&self) {
        if let (Some(f), Some(s)) = (&self.figures, &self.spool) {
            let s = lock(s);
            let gauge = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
            gauge(&f.spool_records, s.records() as u64);
            gauge(&f.spool_bytes, s.bytes());
            gauge(&f.spool_files, s.files() as u64);
        }
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
        let (settings, encoder) = (&live.settings, &live.encoder);
        let (max_records, max_bytes) = (settings.batch_max_records, settings.batch_max_bytes);
        let size = |u: &Units| u.buf.len() + encoder.framing_bytes(u.len());
        // The bytes this batch's records take once encoded (what the sink
        // holds of them until they are delivered).
        let mut encoded = 0;
        for r in batch.records.iter() {
            if b.units.is_empty() {
                *flush_at = Some(Instant::now() + settings.flush_interval);
            }
            let before = b.units.buf.len();
            encoder.encode(r, &batch.source, &mut b.units);
            encoded += b.units.buf.len() - before;
            b.note(&p);
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
                *flush_at = Some(Instant::now() + settings.flush_interval);
                encoder.encode(r, &batch.source, &mut b.units);
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
        let _ = p.charge.set(self.budget.charge(encoded + n * std::mem::size_of::<Span>()));
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

    /// The spill rule (ARCHITECTURE.md, "Backpressure"): true when a
    /// request that finds every permit held must go to the spool instead
    /// of waiting for one: a file went away with records not yet
    /// acknowledged (a durability demand), or waiting would make the
    /// readers wait on this one peer, holding up every other sink: this
    /// sink's queue is full, or the memory budget is reached.
    fn must_spill(&self) -> bool {
        if self.spool.is_none() {
            return false;
        }
        match self.queue.upgrade() {
            Some(tx) => self.durability.is_demanded() || tx.capacity() == 0 || self.budget.exhausted(),
            // Nothing can send any more: the bridge is stopping. While the
            // peer fails, what is held goes to the spool at once.
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
        self.tracker.spawn(async move { sh.deliver(req, permit).await }.instrument(self.span.clone()));
    }

    /// Sends one request until all its records are handled (splitting a
    /// request too large, sending again only the records the peer did not
    /// take), or until `abandon` (then spooled if possible, else dropped
    /// unacknowledged). While a durability demand is held, the records it
    /// holds in memory are spooled at once (the spool file stays with this
    /// sender, which goes on sending it) and acknowledged.
    async fn deliver(self: Arc<Self>, req: Request, _permit: OwnedSemaphorePermit) {
        let _in_flight = self.figures.as_ref().map(|f| InFlight::new(&f.in_flight));
        let mut stack = vec![req];
        // A spool write failed for a demand: wait a little before the next.
        let mut durable_failed = false;
        'requests: while let Some(mut r) = stack.pop() {
            let mut attempt: u32 = 0;
            let mut body: Option<T::Body> = None;
            loop {
                if r.origin == Origin::Memory && self.in_outage() {
                    match self.spool_store(r, Evict::Oldest).await {
                        Ok(()) => continue 'requests,
                        Err(back) => r = back,
                    }
                }
                let live = self.live();
                let body_now = match &body {
                    Some(b) => b.clone(),
                    None => match live.transport.body(&r.units).await {
                        Some(b) => body.insert(b).clone(),
                        None => return self.give_up(r, stack).await,
                    },
                };
                let units = r.units.clone();
                let send = live.transport.attempt(&body_now, &units);
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
                        tracing::warn!(records = r.units.len(), "the request is too large for the peer; splitting it in halves");
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
                        // The peer judged the records one by one: it is up
                        // when it took or refused some. What it took is
                        // acknowledged, what it refused for good is
                        // dead-lettered, the rest is sent again after a
                        // backoff.
                        let origin = r.origin;
                        let judged = r.judge(&items);
                        if judged.done.is_some() || judged.refused.is_some() {
                            self.healthy();
                        } else {
                            self.failing(&reason);
                        }
                        if let Some(d) = judged.done {
                            self.complete(d, Handled::Delivered);
                        }
                        if let Some((rq, errors)) = judged.refused {
                            if !self.poison(rq, Rejection::PerRecord(errors)).await {
                                stack.extend(judged.retry);
                                return self.give_up_all(stack).await;
                            }
                        }
                        let Some(rest) = judged.retry else {
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
                if let Some(f) = &self.figures {
                    f.retries.inc();
                }
                if attempt == 0 || attempt.is_power_of_two() {
                    tracing::warn!(destination = %live.transport.destination(), reason = %Escaped(&reason), attempt = attempt + 1, records = r.units.len(), "attempt failed; will retry");
                }
                if r.origin == Origin::Memory && self.in_outage() {
                    match self.spool_store(r, Evict::Oldest).await {
                        Ok(()) => continue 'requests,
                        Err(back) => r = back,
                    }
                }
                let s = &live.settings;
                let (delay, capped) = retry_delay(after, attempt, s.retry_initial, s.retry_max);
                if capped {
                    self.stats.retry_after_capped();
                    tracing::warn!(
                        retry_after_secs = after.map_or(0, |a| a.as_secs()),
                        retry_max_ms = s.retry_max.as_millis(),
                        "the peer asked to wait longer than retry_max_ms; retrying after retry_max_ms"
                    );
                }
                attempt = attempt.saturating_add(1);
                let wake = Instant::now() + delay;
                loop {
                    let in_memory = r.origin == Origin::Memory || stack.iter().any(|q| q.origin == Origin::Memory);
                    // The outage may reach spool_after_ms before the next
                    // attempt: then this request goes to the spool at once.
                    let outage_at = self.outage_in().filter(|_| r.origin == Origin::Memory).map(|d| Instant::now() + d);
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => break,
                        _ = self.abandon.cancelled() => {
                            stack.push(r);
                            return self.give_up_all(stack).await;
                        }
                        _ = self.durable_wanted(durable_failed), if in_memory && self.spool.is_some() => {
                            durable_failed = !self.make_durable(&mut r, &mut stack).await;
                        }
                        _ = tokio::time::sleep_until(outage_at.unwrap_or(wake).max(Instant::now() + RECHECK)), if outage_at.is_some_and(|t| t < wake) => {
                            if self.in_outage() {
                                break;
                            }
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
                    tracing::debug!(seq, records = q.units.len(), "records of a file gone made durable in the spool");
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

    /// Writes refused records to the dead-letter file (retrying on disk
    /// errors until it is written or the sink is abandoned). False when
    /// abandoned before it could be written (the records stay unhandled).
    async fn poison(&self, r: Request, why: Rejection<'_>) -> bool {
        let live = self.live();
        let destination = live.transport.destination().to_string();
        let log = lock(&self.dead_letter_log).allow(std::time::Instant::now(), "rejected");
        match &why {
            Rejection::Whole { status, response } if log => tracing::error!(
                destination = %destination, status, records = r.units.len(),
                response = %logsafe::clip(response, 200),
                file = %Escaped::path(self.dead_letter.path()),
                "batch rejected; written to the dead-letter file"
            ),
            Rejection::PerRecord(errors) if log => tracing::error!(
                destination = %destination, records = r.units.len(),
                first_status = errors.first().map_or(0, |e| e.0),
                first_error = %logsafe::clip(errors.first().map_or("", |e| e.1.as_str()), 200),
                file = %Escaped::path(self.dead_letter.path()),
                "records refused one by one; written to the dead-letter file"
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
            let (dl, units, why) = (self.dead_letter.clone(), r.units.clone(), owned.clone());
            let (dest, fmt, rotation) =
                (live.transport.destination().to_string(), live.encoder.format(), live.settings.dead_letter_rotation);
            let res = tokio::task::spawn_blocking(move || match &*why {
                Err((status, resp)) => dl.append(rotation, &dest, fmt, *status, resp, &units),
                Ok(errors) => dl.append_each(rotation, &dest, fmt, errors, &units),
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
                            "dead-letter file rotated; DELETED the oldest rotated file to stay within dead_letter_rotate_bytes x dead_letter_keep_files"
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
                "{} similar dead-letter log lines suppressed (dead-lettered records are counted in /metrics)", s.total
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
        if let Some(f) = &self.figures {
            let counter = match how {
                Handled::Delivered => &f.delivered,
                Handled::DeadLettered => &f.dead_lettered,
                Handled::Spooled => &f.spooled,
            };
            counter.add(n as u64);
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
                tracing::debug!(seq, records = r.units.len(), "request spooled");
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
        let written = tokio::task::spawn_blocking(move || spool::write_file(&p, &u, observed_ms)).await;
        let err = match written {
            Ok(Ok(size)) => {
                lock(spool).add(seq, size, units.len(), observed_ms, need, taken);
                self.spool_fault.recovered();
                self.spool_figures();
                return Some(seq);
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the spool task failed: {e}"),
        };
        lock(spool).unreserve(need);
        // Logged once, then periodically; the request stays in memory
        // (unacknowledged) and is spooled or sent later.
        self.spool_fault.failed(&format!("cannot write to the spool {}: {err}; keeping the request in memory", path.display()));
        let _ = std::fs::remove_file(path.with_extension("tmp"));
        None
    }

    /// Logs and counts spool files deleted to make room.
    fn report_evicted(&self, ev: &spool::Evicted) {
        if ev.files > 0 {
            tracing::error!(
                files = ev.files,
                records = ev.records,
                spool_max_bytes = self.spool_max_bytes,
                "spool full; DROPPED the oldest spooled records to make room (the peer has been unreachable too long)"
            );
            self.stats.dropped(ev.records);
            if let Some(f) = &self.figures {
                f.spool_dropped.add(ev.records as u64);
            }
            self.spool_figures();
        }
    }

    /// Deletes a delivered spool file.
    async fn spool_delete(&self, seq: u64) {
        let Some(spool) = &self.spool else { return };
        let path = lock(spool).remove(seq);
        if let Err(e) = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await {
            tracing::error!(error = %e, "the spool delete task failed");
        }
        self.spool_figures();
        self.update_oldest();
        self.spool_changed.notify_waiters();
    }

    /// The spool drainer: hands spooled files, oldest first, to senders as
    /// permits allow, until `stop`.
    async fn drain(self: Arc<Self>, stop: CancellationToken) {
        let Some(spool) = &self.spool else { return };
        loop {
            if !lock(spool).has_untaken() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.spool_changed.notified() => {}
                    _ = tokio::time::sleep(RECHECK * 4) => {}
                }
                continue;
            }
            let permit = tokio::select! {
                _ = stop.cancelled() => return,
                p = self.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            };
            let Some((entry, path)) = lock(spool).take_oldest() else { continue };
            let p = path.clone();
            match tokio::task::spawn_blocking(move || spool::read_file(&p)).await {
                Ok(Ok((units, observed_ms))) => {
                    let req = Request { units: Arc::new(units), covers: Vec::new(), observed_ms, origin: Origin::Spool(entry.seq) };
                    self.send(req, permit);
                }
                Ok(Err(e)) => {
                    tracing::error!(
                        file = %path.display(), records = entry.records, error = %e,
                        "a spool file is damaged; DROPPED its records"
                    );
                    self.stats.dropped(entry.records);
                    self.spool_delete(entry.seq).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the spool read task failed");
                    lock(spool).release(entry.seq);
                }
            }
        }
    }
}

/// A sender counted in the in-flight gauge while it lives.
struct InFlight(Gauge);

impl InFlight {
    fn new(g: &Gauge) -> InFlight {
        g.inc();
        InFlight(g.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Locks a mutex, recovering from poisoning (the data are plain indexes).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
