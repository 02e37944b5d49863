//! The Kafka sink (`[kafka]`, an edge bridge of a fleet): every record
//! becomes one message on `kafka.topic` ([`crate::kafka::message`]: key
//! from `key_field`, headers `host`, `file`, `sync_delay_ms`), produced
//! with `acks = all` ([`crate::kafka::produce`]).
//!
//! Data flow: pipeline batches arrive on the sink's queue; each record is
//! encoded once into the request being built, which is sent at
//! `batch_max_records` or `batch_max_bytes`, or `linger_ms` after its first
//! record. At most `max_in_flight` requests are sent at once: while every
//! permit is held, the queue fills and the readers wait (backpressure, no
//! memory growth; the encoded messages held are charged to the memory
//! budget, [`crate::budget`]). A pipeline batch is acknowledged only when every one of
//! its messages was acknowledged by the brokers or written to the
//! dead-letter file (a message the brokers refuse for good: too large, or
//! refused by policy).
//!
//! Failures (brokers down, leader changes, an unknown topic, refused
//! credentials, timeouts) are retried with exponential backoff and jitter
//! for as long as it takes; only the messages not acknowledged are sent
//! again.
//!
//! Long outages: the disk spool works as for upstream (the same module,
//! [`super::upstream::spool`], under `<state_dir>/kafka-spool/`; its units
//! are whole encoded messages). While the brokers fail and every
//! `max_in_flight` permit is held, new requests spill to the spool if they
//! fit; once the brokers have been failing for `spool_after_ms`, every
//! request goes to the spool, including those senders hold in memory, and
//! the oldest spool files are deleted to make room if needed (logged,
//! counted as `records_spool_dropped`). A spooled request's batches are
//! acknowledged once the file is durable (written through
//! [`crate::state_dir::write_atomic_with`]): the tailers keep reading and
//! the other sinks are not held up by Kafka. One drainer sends the spool
//! oldest first (it is also what finds the brokers back); new requests
//! wait while spooled files do, so the backlog goes first, in order.
//! Spooled files survive a crash and are sent after the restart.
//!
//! Files that go away: while a reader holds a durability demand (its file
//! was deleted or rotated out of the globs with records not yet
//! acknowledged, [`crate::pipeline::Durability`]), what this sink holds in
//! memory goes to the spool at once and is acknowledged, as upstream's
//! does: the request being built (without waiting for `linger_ms`),
//! requests waiting for a permit, and requests being sent or waiting to
//! retry. Older spooled messages are never deleted for them.
//!
//! Shutdown: when the queue closes, what is batched is sent and the sink
//! waits up to `shutdown_grace_ms`. If the brokers are failing then (or
//! still after the grace period), what is held in memory goes to the spool
//! at once and is acknowledged. Without a spool, what is still
//! unacknowledged is read again after the restart (at-least-once; the topic
//! may then hold those messages twice: the client has no idempotent
//! producer).
//!
//! Figures (`/status` `kafka`, `/metrics` `calllog_bridge_kafka_*`):
//! messages produced, messages dead-lettered, produce retries, requests in
//! flight, whether the brokers are failing now, and the spool (records,
//! bytes and files held; records spooled, records dropped from a full
//! spool).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Keys, Needs, SinkContext, SinkHandle};
use crate::delivery::dead_letter::DeadLetter;
use crate::delivery::spool::{self, Spool};
use crate::delivery::{backoff, Item, Outcome, Units};
use crate::kafka::message::Encoder;
use crate::kafka::produce::Producer;
use crate::kafka::settings::{SinkConfig, SinkSection, SINK_SECTION};
use crate::listener::Bound;
use crate::logsafe::Escaped;
use crate::pipeline::{Batch, Fanout, Receipt};
use crate::settings::{parent_dir, ConfigError};
use crate::telemetry::figures::{Counter, Gauge};
use crate::telemetry::{Fault, SinkStats};
use crate::time::now_ms;

/// The sink's name in logs, the fan-out, `/status` and `/metrics`.
pub const NAME: &str = "kafka";

/// The Kafka sink as a [`super::Sink`].
pub struct KafkaSink;

impl super::Sink for KafkaSink {
    const SECTION: &'static str = SINK_SECTION;
    const NAME: &'static str = NAME;
    type Section = SinkSection;
    type Config = SinkConfig;
    type Handle = ();
    type Update = ();

    fn config(section: SinkSection, base: &Path) -> Result<SinkConfig, ConfigError> {
        SinkConfig::from_section(section, base)
    }

    fn keys(_keys: &mut Keys<SinkConfig>) {
        // Nothing applies live: the producer, its batches and the messages
        // already encoded follow the settings the sink started with, so a
        // change to `[kafka]` is reported as needing a restart.
    }

    fn needs(cfg: &SinkConfig, needs: &mut Needs) {
        if let Some(d) = &cfg.dead_letter_file {
            needs.dirs.push(("kafka.dead_letter_file", parent_dir(d), false));
        }
    }

    fn summary(c: &SinkConfig) -> String {
        format!("{} topic {} ({}, key {}, {})", c.client.for_logs(), c.topic, c.format.name(), c.key_field.name(), c.compression.name(),)
    }

    async fn start(cfg: &SinkConfig, ctx: &SinkContext, fanout: &mut Fanout, _listeners: &mut Bound) -> anyhow::Result<(SinkHandle, ())> {
        let (tx, rx) = super::queue();
        let spool = if cfg.spool_max_bytes > 0 {
            let dir = crate::state_dir::StateDir::new(&ctx.state_dir).kafka_spool();
            let (max, d) = (cfg.spool_max_bytes, dir.clone());
            let s = tokio::task::spawn_blocking(move || Spool::open(&d, max))
                .await?
                .map_err(|e| anyhow::anyhow!("kafka spool {}: {e}", dir.display()))?;
            if s.records() > 0 {
                tracing::info!(records = s.records(), bytes = s.bytes(), dir = %dir.display(), "kafka spool holds messages from a previous run; sending them first");
            }
            Some(s)
        } else {
            None
        };
        let shared = Arc::new(Shared::new(cfg, ctx, spool, fanout.budget().clone(), fanout.durability()));
        fanout.add(NAME, tx);
        let task = tokio::spawn(run(shared, rx, ctx.shutdown.clone()));
        Ok((SinkHandle { name: NAME, task }, ()))
    }

    fn prepare(_cfg: &SinkConfig) -> anyhow::Result<()> {
        Ok(())
    }

    fn reconfigure(_handle: &(), _update: ()) {}
}

/// A pipeline batch held by the sink until all its messages are handled.
struct Held {
    /// Its acknowledgement.
    receipt: Receipt,
    /// Key in the pending set.
    id: u64,
    /// Messages not yet acknowledged by the brokers, dead-lettered or
    /// spooled.
    remaining: AtomicUsize,
    /// Messages spooled (delivered later: not counted as delivered now).
    spooled: AtomicUsize,
}

/// A request: messages and, for each, the batch it belongs to (none for
/// a request read back from the spool: its batches were acknowledged).
struct Request {
    units: Units,
    owners: Vec<Arc<Held>>,
    /// The encoded messages' memory, charged to the memory budget until
    /// the request is acknowledged, spooled or dead-lettered (the pipeline
    /// batches themselves are let go once encoded).
    _charge: crate::budget::Charge,
}

impl Request {
    fn new(units: Units, owners: Vec<Arc<Held>>, budget: &Arc<crate::budget::MemoryBudget>) -> Request {
        let bytes = units.buf.capacity()
            + units.spans.capacity() * std::mem::size_of::<crate::delivery::Span>()
            + owners.capacity() * std::mem::size_of::<Arc<Held>>();
        Request { units, owners, _charge: budget.charge(bytes) }
    }
}

/// The sink's figures.
struct Figures {
    produced: Counter,
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

/// What the batcher and the senders share.
struct Shared {
    cfg: SinkConfig,
    encoder: Encoder,
    producer: Producer,
    stats: SinkStats,
    figures: Figures,
    dead_letter: DeadLetter,
    /// Reports a dead-letter file that cannot be written.
    dead_letter_fault: Fault,
    /// Reports brokers that do not take the messages.
    brokers_fault: Fault,
    /// `max_in_flight` permits.
    permits: Arc<Semaphore>,
    /// The memory budget, charged with the encoded messages held.
    budget: Arc<crate::budget::MemoryBudget>,
    /// Demands that what is held in memory be made durable now (a file
    /// went away with records not yet acknowledged).
    durability: Arc<crate::pipeline::Durability>,
    /// Observed time of each batch held, for the oldest-pending figure.
    pending: Mutex<BTreeMap<(i64, u64), ()>>,
    next_id: AtomicU64,
    /// Since when (epoch ms) the brokers fail; 0 while they take messages
    /// (one log line when they start failing, one when they are back).
    failing_since_ms: AtomicI64,
    /// The disk spool; `None` when `spool_max_bytes` is 0.
    spool: Option<Mutex<Spool>>,
    /// Signalled when the spool gains or loses a file.
    spool_changed: Notify,
    /// Reports a spool that cannot be written (a full state_dir).
    spool_fault: Fault,
    /// Cancelled when what is held in memory must go to the spool at once
    /// (stopping while the brokers fail).
    spool_now: CancellationToken,
}

impl Shared {
    fn new(
        cfg: &SinkConfig,
        ctx: &SinkContext,
        spool: Option<Spool>,
        budget: Arc<crate::budget::MemoryBudget>,
        durability: Arc<crate::pipeline::Durability>,
    ) -> Shared {
        let f = ctx.telemetry.figures(NAME);
        let figures = Figures {
            produced: f.counter("messages_produced", "Messages the brokers acknowledged (acks = all)"),
            dead_lettered: f.counter("messages_dead_lettered", "Messages the brokers refused for good, written to the dead-letter file"),
            retries: f.counter("produce_retries", "Produce attempts that failed and are retried"),
            in_flight: f.gauge("requests_in_flight", "Produce requests waiting for the brokers"),
            failing: f.gauge("brokers_failing", "1 while produce requests fail (brokers down, unknown topic, refused credentials)"),
            spool_records: f.gauge("spool_records", "Messages in the disk spool (acknowledged, to be produced)"),
            spool_bytes: f.gauge("spool_bytes", "Size of the disk spool"),
            spool_files: f.gauge("spool_files", "Files in the disk spool"),
            spooled: f.counter("messages_spooled", "Messages written to the disk spool during an outage"),
            spool_dropped: f.counter("records_spool_dropped", "Spooled messages deleted to make room in a full spool"),
        };
        if let Some(s) = &spool {
            // Held from a previous run: pending for this sink again.
            ctx.telemetry.sink(NAME).enqueued(s.records());
        }
        let dead_letter_path =
            cfg.dead_letter_file.clone().unwrap_or_else(|| crate::state_dir::StateDir::new(&ctx.state_dir).kafka_dead_letter());
        let sh = Shared {
            cfg: cfg.clone(),
            // Every record carries its host: the ingest stage stamps the
            // top-level `host` on what is read from files, and a hub keeps
            // the edge's from the message. No fallback name here.
            encoder: Encoder::new(cfg.format, cfg.key_field, ""),
            producer: Producer::new(cfg.client.clone(), cfg.topic.clone(), cfg.compression),
            stats: ctx.telemetry.sink(NAME),
            figures,
            dead_letter: DeadLetter::new(dead_letter_path),
            dead_letter_fault: ctx.telemetry.fault("kafka_dead_letter"),
            brokers_fault: ctx.telemetry.fault("kafka"),
            permits: Arc::new(Semaphore::new(cfg.max_in_flight)),
            budget,
            durability,
            pending: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            failing_since_ms: AtomicI64::new(0),
            spool: spool.map(Mutex::new),
            spool_changed: Notify::new(),
            spool_fault: ctx.telemetry.fault("kafka_spool"),
            spool_now: CancellationToken::new(),
        };
        sh.spool_figures();
        sh
    }

    fn hold(&self, batch: &Batch) -> Arc<Held> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let receipt = batch.receipt();
        lock(&self.pending).insert((receipt.observed_ms, id), ());
        self.update_oldest();
        Arc::new(Held { remaining: AtomicUsize::new(batch.records.len()), spooled: AtomicUsize::new(0), receipt, id })
    }

    /// `n` messages of `h` are handled; acknowledges the batch when none
    /// remain.
    fn handled(&self, h: &Held, n: usize) {
        if h.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            h.receipt.ack();
            let now = h.receipt.records.saturating_sub(h.spooled.load(Ordering::Acquire));
            if now > 0 {
                self.stats.delivered(now, h.receipt.observed_ms, now_ms());
            }
            lock(&self.pending).remove(&(h.receipt.observed_ms, h.id));
            self.update_oldest();
        }
    }

    /// The messages at `ix` of `req` are handled.
    fn handled_each(&self, req: &Request, ix: impl Iterator<Item = usize>) {
        if req.owners.is_empty() {
            // From the spool: acknowledged when it was spooled.
            return;
        }
        // Runs of the same batch are counted at once (a request is built
        // from whole batches in order).
        let mut run: Option<(usize, usize)> = None;
        for i in ix {
            match run {
                Some((o, n)) if Arc::ptr_eq(&req.owners[o], &req.owners[i]) => run = Some((o, n + 1)),
                Some((o, n)) => {
                    self.handled(&req.owners[o], n);
                    run = Some((i, 1));
                }
                None => run = Some((i, 1)),
            }
        }
        if let Some((o, n)) = run {
            self.handled(&req.owners[o], n);
        }
    }

    fn update_oldest(&self) {
        let mem = lock(&self.pending).keys().next().map(|(o, _)| *o);
        let spooled = self.spool.as_ref().and_then(|s| lock(s).oldest_observed_ms());
        let oldest = match (mem, spooled) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(0),
        };
        self.stats.set_oldest_pending(oldest);
    }

    /// Publishes the spool's size.
    fn spool_figures(&self) {
        if let Some(s) = &self.spool {
            let s = lock(s);
            self.figures.spool_records.set(i64::try_from(s.records()).unwrap_or(i64::MAX));
            self.figures.spool_bytes.set(i64::try_from(s.bytes()).unwrap_or(i64::MAX));
            self.figures.spool_files.set(i64::try_from(s.files()).unwrap_or(i64::MAX));
        }
    }

    /// True when the brokers have been failing for `spool_after_ms` (or
    /// the sink is stopping while they fail) and the spool is enabled:
    /// requests go to disk rather than wait in memory.
    fn spooling(&self) -> bool {
        if self.spool.is_none() {
            return false;
        }
        if self.spool_now.is_cancelled() {
            return true;
        }
        let since = self.failing_since_ms.load(Ordering::Acquire);
        since != 0 && now_ms() - since >= i64::try_from(self.cfg.spool_after.as_millis()).unwrap_or(i64::MAX)
    }

    /// True while a file went away with records not yet acknowledged (a
    /// durability demand, [`crate::pipeline::Durability`]) and the spool is
    /// enabled: what is held in memory goes to the spool at once (never
    /// evicting older spooled messages), so a crash cannot lose records
    /// whose file is gone.
    fn must_spill(&self) -> bool {
        self.spool.is_some() && self.durability.is_demanded()
    }

    /// Resolves when what a sender holds must go to the spool at once: the
    /// sink stops while the brokers fail (`spool_now`), or, with
    /// `file_gone`, a durability demand is held.
    async fn urgent(&self, spool_now: &CancellationToken, file_gone: bool) {
        tokio::select! {
            _ = spool_now.cancelled() => {}
            _ = self.durability.demanded(), if file_gone => {}
        }
    }

    fn spool_has_untaken(&self) -> bool {
        self.spool.as_ref().is_some_and(|s| lock(s).has_untaken())
    }

    /// A produce attempt failed: the brokers fail (since now, if they did
    /// not already).
    fn brokers_failed(&self, reason: &str) {
        if self.failing_since_ms.compare_exchange(0, now_ms().max(1), Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.figures.failing.set(1);
            tracing::warn!(destination = %self.producer.destination(), reason = %Escaped(reason), "kafka: the brokers do not take the messages; retrying with backoff for as long as it takes");
        }
        self.brokers_fault.failed(reason);
    }

    /// The brokers acknowledged messages.
    fn brokers_ok(&self) {
        if self.failing_since_ms.swap(0, Ordering::AcqRel) != 0 {
            self.figures.failing.set(0);
            self.brokers_fault.recovered();
            tracing::info!(destination = %self.producer.destination(), "kafka: the brokers take messages again");
        }
    }

    /// Writes the messages of `req` durably to the spool and acknowledges
    /// their batches; false when the spool is off, full (after deleting
    /// the oldest files when `evict`) or cannot be written: the caller
    /// keeps them.
    async fn spool_store(self: &Arc<Self>, req: &Request, evict: bool) -> bool {
        let Some(spool) = &self.spool else { return false };
        if req.owners.is_empty() || req.units.is_empty() {
            return false;
        }
        let need = spool::file_size_estimate(&req.units);
        let observed_ms = req.owners.iter().map(|h| h.receipt.observed_ms).min().unwrap_or_else(now_ms);
        let (seq, path) = {
            let mut s = lock(spool);
            if evict {
                let ev = s.make_room(need);
                if ev.files > 0 {
                    tracing::error!(
                        files = ev.files,
                        records = ev.records,
                        "kafka: spool full; DROPPED the oldest spooled messages to make room (the brokers have been unreachable too long)"
                    );
                    self.figures.spool_dropped.add(ev.records as u64);
                    self.stats.dropped(ev.records);
                }
            }
            if !s.fits(need) {
                return false;
            }
            s.reserve(need)
        };
        let units = req.units.clone();
        let n = units.len();
        let written = tokio::task::spawn_blocking(move || spool::write_file(&path, &units, observed_ms)).await;
        let bytes = match written {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                lock(spool).unreserve(need);
                self.spool_fault.failed(&e.to_string());
                return false;
            }
            Err(e) => {
                lock(spool).unreserve(need);
                self.spool_fault.failed(&e.to_string());
                return false;
            }
        };
        lock(spool).add(seq, bytes, n, observed_ms, need, false);
        self.spool_fault.recovered();
        self.figures.spooled.add(n as u64);
        self.spool_figures();
        tracing::debug!(seq, messages = n, "kafka: request spooled");
        for h in &req.owners {
            h.spooled.fetch_add(1, Ordering::AcqRel);
        }
        self.handled_each(req, 0..n);
        self.update_oldest();
        self.spool_changed.notify_waiters();
        true
    }

    /// Sends `req` until every message is acknowledged, dead-lettered or
    /// (a request held in memory, once the outage lasts) spooled; true
    /// then. False when `stop` is cancelled first (what is left stays
    /// unacknowledged).
    async fn send(self: Arc<Self>, mut req: Request, stop: CancellationToken) -> bool {
        let mut attempt = 0u32;
        let in_memory = !req.owners.is_empty();
        let spool_now = self.spool_now.clone();
        // A durability spill found no room in the spool.
        let mut spill_failed = false;
        loop {
            if in_memory && self.spooling() && self.spool_store(&req, true).await {
                return true;
            }
            if in_memory && !spill_failed && self.must_spill() {
                if self.spool_store(&req, false).await {
                    return true;
                }
                spill_failed = true;
            }
            let outcome = tokio::select! {
                _ = stop.cancelled() => return false,
                _ = self.urgent(&spool_now, !spill_failed), if in_memory && self.spool.is_some() => {
                    // Stopping while the brokers fail, or a file gone with
                    // records held here: to disk at once (an answer lost
                    // here may mean a duplicate). Older spooled messages
                    // are deleted for room only when stopping; a file gone
                    // does not try a spool without room again for this
                    // request.
                    let stopping = spool_now.is_cancelled();
                    if self.spool_store(&req, stopping).await {
                        return true;
                    }
                    spill_failed |= !stopping;
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        o = self.producer.attempt(&req.units) => o,
                    }
                }
                o = self.producer.attempt(&req.units) => o,
            };
            let (keep, reason) = match outcome {
                Outcome::Delivered => {
                    self.brokers_ok();
                    self.figures.produced.add(req.units.len() as u64);
                    self.handled_each(&req, 0..req.units.len());
                    (Vec::new(), String::new())
                }
                Outcome::Partial { items, reason } => {
                    let done: Vec<usize> = (0..items.len()).filter(|&i| items[i] == Item::Done).collect();
                    if !done.is_empty() {
                        self.brokers_ok();
                    }
                    self.figures.produced.add(done.len() as u64);
                    self.handled_each(&req, done.into_iter());
                    let refused: Vec<(usize, u16, String)> = items
                        .iter()
                        .enumerate()
                        .filter_map(|(i, it)| match it {
                            Item::Rejected { status, error } => Some((i, *status, error.clone())),
                            _ => None,
                        })
                        .collect();
                    let mut keep: Vec<usize> = (0..items.len()).filter(|&i| items[i] == Item::Retry).collect();
                    if !refused.is_empty() {
                        if self.dead_letter_refused(&req, &refused).await {
                            self.handled_each(&req, refused.iter().map(|r| r.0));
                        } else {
                            // Not written: keep them, the file is tried again.
                            keep.extend(refused.iter().map(|r| r.0));
                            keep.sort_unstable();
                        }
                    }
                    (keep, reason)
                }
                Outcome::Retry { reason, .. } => ((0..req.units.len()).collect(), reason),
                // The producer answers only the above; treated as a retry.
                Outcome::TooLarge | Outcome::Poison { .. } => ((0..req.units.len()).collect(), "unexpected answer".to_string()),
            };
            if keep.is_empty() {
                return true;
            }
            if keep.len() != req.units.len() {
                let owners = keep.iter().map(|&i| req.owners[i].clone()).collect();
                req = Request::new(req.units.select(&keep), owners, &self.budget);
            }
            self.figures.retries.inc();
            self.stats.retried();
            self.brokers_failed(&reason);
            let wait = backoff(attempt, self.cfg.retry_initial, self.cfg.retry_max);
            attempt = attempt.saturating_add(1);
            // Wake up early when the outage reaches `spool_after_ms`.
            let check = if in_memory && self.spool.is_some() { Duration::from_millis(200).min(wait) } else { wait };
            let until = Instant::now() + wait;
            while Instant::now() < until {
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(check.min(until - Instant::now())) => {}
                }
                if in_memory && (self.spooling() || (!spill_failed && self.must_spill())) {
                    break;
                }
            }
        }
    }

    /// Writes the refused messages to the dead-letter file; false when it
    /// cannot be written (they are kept and tried again).
    async fn dead_letter_refused(self: &Arc<Self>, req: &Request, refused: &[(usize, u16, String)]) -> bool {
        let ix: Vec<usize> = refused.iter().map(|r| r.0).collect();
        let units = req.units.select(&ix);
        let errors: Vec<(u16, String)> = refused.iter().map(|r| (r.1, r.2.clone())).collect();
        let me = self.clone();
        let written = tokio::task::spawn_blocking(move || {
            me.dead_letter.append_each(me.cfg.dead_letter_rotation, &me.producer.destination(), me.cfg.format.name(), &errors, &units)
        })
        .await;
        match written {
            Ok(Ok(_)) => {
                self.dead_letter_fault.recovered();
                self.figures.dead_lettered.add(refused.len() as u64);
                self.stats.dead_lettered(refused.len());
                tracing::error!(
                    messages = refused.len(),
                    file = %Escaped::path(self.dead_letter.path()),
                    error = %Escaped(&refused[0].2),
                    "kafka: the brokers refused messages for good; written to the dead-letter file"
                );
                true
            }
            Ok(Err(e)) => {
                self.dead_letter_fault.failed(&e.to_string());
                false
            }
            Err(e) => {
                self.dead_letter_fault.failed(&e.to_string());
                false
            }
        }
    }
}

/// The request being built.
#[derive(Default)]
struct Builder {
    units: Units,
    owners: Vec<Arc<Held>>,
}

impl Builder {
    fn take(&mut self, budget: &Arc<crate::budget::MemoryBudget>) -> Option<Request> {
        if self.units.is_empty() {
            return None;
        }
        let b = std::mem::take(self);
        Some(Request::new(b.units, b.owners, budget))
    }
}

/// Runs until the queue closes (then sends what is batched within the
/// grace period) or `shutdown` is cancelled.
async fn run(sh: Arc<Shared>, mut rx: mpsc::Receiver<Arc<Batch>>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    // Cancelled when senders must give up (shutdown, or the grace period
    // is over): what they hold stays unacknowledged.
    let abandon = shutdown.child_token();
    let drainer = sh.spool.is_some().then(|| tokio::spawn(drain(sh.clone(), abandon.clone())));
    let mut b = Builder::default();
    let mut flush_at: Option<Instant> = None;
    let far = || Instant::now() + Duration::from_secs(86_400);
    let mut closed = false;
    loop {
        if flush_at.is_some_and(|t| t <= Instant::now()) {
            flush_at = None;
            if let Some(req) = b.take(&sh.budget) {
                if !dispatch(&sh, req, &tracker, &abandon, &shutdown).await {
                    break;
                }
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(far)), if flush_at.is_some() => {}
            // A file went away with records not yet acknowledged: what is
            // being built does not wait for linger_ms.
            _ = sh.durability.demanded(), if sh.spool.is_some() && !b.units.is_empty() && flush_at.is_some_and(|t| t > Instant::now()) => {
                flush_at = Some(Instant::now());
            }
            msg = rx.recv() => match msg {
                Some(batch) => {
                    sh.stats.enqueued(batch.records.len());
                    if batch.records.is_empty() {
                        batch.ack();
                        continue;
                    }
                    let held = sh.hold(&batch);
                    let mut stopped = false;
                    for r in batch.records.iter() {
                        sh.encoder.push(r, &batch.source, &mut b.units);
                        b.owners.push(held.clone());
                        // A large pipeline batch becomes several requests
                        // of the configured size.
                        if b.units.len() >= sh.cfg.batch_max_records || b.units.buf.len() >= sh.cfg.batch_max_bytes {
                            if let Some(req) = b.take(&sh.budget) {
                                if !dispatch(&sh, req, &tracker, &abandon, &shutdown).await {
                                    stopped = true;
                                    break;
                                }
                            }
                            flush_at = None;
                        }
                    }
                    if stopped {
                        break;
                    }
                    if flush_at.is_none() && !b.units.is_empty() {
                        flush_at = Some(Instant::now() + sh.cfg.linger);
                    }
                }
                None => {
                    closed = true;
                    break;
                }
            },
        }
    }
    if closed {
        let deadline = Instant::now() + sh.cfg.shutdown_grace;
        if sh.spool.is_some() && sh.failing_since_ms.load(Ordering::Acquire) != 0 {
            // Waiting out the grace period gains nothing while the brokers
            // fail, and a kill during it would cost a re-read: to disk now.
            tracing::info!("kafka: stopping while the brokers fail; what is held goes to the spool");
            sh.spool_now.cancel();
        }
        if let Some(req) = b.take(&sh.budget) {
            tokio::select! {
                _ = dispatch(&sh, req, &tracker, &abandon, &shutdown) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        tracker.close();
        tokio::select! {
            _ = tracker.wait() => {}
            _ = tokio::time::sleep_until(deadline) => {
                if sh.spool.is_some() {
                    tracing::warn!(grace_ms = sh.cfg.shutdown_grace.as_millis() as u64, "kafka: shutdown grace period over with messages not acknowledged by the brokers; they go to the spool");
                    sh.spool_now.cancel();
                    tokio::select! {
                        _ = tracker.wait() => {}
                        _ = tokio::time::sleep(sh.cfg.shutdown_grace) => {}
                        _ = shutdown.cancelled() => {}
                    }
                } else {
                    tracing::warn!(grace_ms = sh.cfg.shutdown_grace.as_millis() as u64, "kafka: shutdown grace period over with messages not acknowledged by the brokers; they are read again after the restart");
                }
            }
            _ = shutdown.cancelled() => {}
        }
    }
    abandon.cancel();
    tracker.close();
    tracker.wait().await;
    if let Some(d) = drainer {
        if let Err(e) = d.await {
            tracing::error!(error = %e, "kafka spool drainer failed");
        }
    }
    Ok(())
}

/// The spool drainer: sends spooled files, oldest first, one at a time,
/// and deletes each once the brokers acknowledged all of it. Stops at
/// `stop` (the file being sent stays, sent again after the restart).
async fn drain(sh: Arc<Shared>, stop: CancellationToken) {
    let Some(spool) = &sh.spool else { return };
    loop {
        // Registered before looking, so a file added meanwhile wakes us.
        let changed = sh.spool_changed.notified();
        let next = lock(spool).take_oldest();
        let Some((entry, path)) = next else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        };
        let read = tokio::task::spawn_blocking(move || spool::read_file(&path)).await;
        let units = match read {
            Ok(Ok((units, _))) => units,
            Ok(Err(e)) => {
                // Left in place for the operator; forgotten here.
                let p = lock(spool).remove(entry.seq);
                tracing::error!(file = %Escaped::path(&p), error = %e, records = entry.records, "kafka: spool file cannot be read; left in place, its messages are NOT sent");
                sh.stats.dropped(entry.records);
                sh.spool_figures();
                continue;
            }
            Err(e) => {
                lock(spool).release(entry.seq);
                tracing::error!(error = %e, "kafka: reading a spool file failed");
                return;
            }
        };
        let n = units.len();
        let req = Request::new(units, Vec::new(), &sh.budget);
        if !sh.clone().send(req, stop.clone()).await {
            lock(spool).release(entry.seq);
            return;
        }
        let p = lock(spool).remove(entry.seq);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(p)).await;
        sh.stats.delivered(n, entry.observed_ms, now_ms());
        sh.spool_figures();
        sh.update_oldest();
        sh.spool_changed.notify_waiters();
    }
}

/// Sends `req` on a permit (waiting for one: backpressure); false when
/// `shutdown` came first.
async fn dispatch(
    sh: &Arc<Shared>,
    req: Request,
    tracker: &TaskTracker,
    abandon: &CancellationToken,
    shutdown: &CancellationToken,
) -> bool {
    let permit = loop {
        if sh.spool.is_some() {
            let changed = sh.spool_changed.notified();
            let full = sh.permits.available_permits() == 0;
            let failing = sh.failing_since_ms.load(Ordering::Acquire) != 0;
            if sh.spooling() {
                // The outage lasts: to disk, deleting the oldest if need be.
                if sh.spool_store(&req, true).await {
                    return true;
                }
            } else if sh.must_spill() || (failing && full) {
                // The queue is full during an outage: spill if it fits.
                if sh.spool_store(&req, false).await {
                    return true;
                }
            } else if sh.spool_has_untaken() {
                // The backlog goes first, in order.
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = changed => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            p = sh.permits.clone().acquire_owned() => match p {
                Ok(p) => break p,
                Err(_) => return false,
            },
            // Look again: the outage may now call for the spool.
            _ = tokio::time::sleep(Duration::from_millis(200)), if sh.spool.is_some() => {}
        }
    };
    let (sh, stop) = (sh.clone(), abandon.clone());
    tracker.spawn(async move {
        sh.figures.in_flight.inc();
        let _ = sh.clone().send(req, stop).await;
        sh.figures.in_flight.dec();
        drop(permit);
    });
    true
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_holds_its_encoded_messages_against_the_memory_budget_until_dropped() {
        let budget = crate::budget::MemoryBudget::new(1 << 20, &crate::telemetry::Telemetry::new());
        let mut units = Units::default();
        units.buf.extend_from_slice(&[b'x'; 4096]);
        let req = Request::new(units, Vec::new(), &budget);
        assert!(budget.used() >= 4096, "charged {}", budget.used());
        drop(req);
        assert_eq!(budget.used(), 0);
    }
}
