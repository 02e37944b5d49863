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
//! memory growth). A pipeline batch is acknowledged only when every one of
//! its messages was acknowledged by the brokers or written to the
//! dead-letter file (a message the brokers refuse for good: too large, or
//! refused by policy).
//!
//! Failures (brokers down, leader changes, an unknown topic, refused
//! credentials, timeouts) are retried with exponential backoff and jitter
//! for as long as it takes; only the messages not acknowledged are sent
//! again. Shutdown: when the queue closes, what is batched is sent and the
//! sink waits up to `shutdown_grace_ms`; what is then still unacknowledged
//! is read again after the restart (at-least-once; the topic may then hold
//! those messages twice: the client has no idempotent producer).
//!
//! Figures (`/status` `kafka`, `/metrics` `calllog_bridge_kafka_*`):
//! messages produced, messages dead-lettered, produce retries, requests in
//! flight, and whether the brokers are failing now.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::upstream::dead_letter::DeadLetter;
use super::upstream::encode::Units;
use super::upstream::http::{backoff, Item, Outcome};
use super::{Keys, Needs, SinkContext, SinkHandle};
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
        let shared = Arc::new(Shared::new(cfg, ctx));
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
    /// Messages not yet acknowledged by the brokers or dead-lettered.
    remaining: AtomicUsize,
}

/// A request: messages and, for each, the batch it belongs to.
struct Request {
    units: Units,
    owners: Vec<Arc<Held>>,
}

/// The sink's figures.
struct Figures {
    produced: Counter,
    dead_lettered: Counter,
    retries: Counter,
    in_flight: Gauge,
    failing: Gauge,
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
    /// Observed time of each batch held, for the oldest-pending figure.
    pending: Mutex<BTreeMap<(i64, u64), ()>>,
    next_id: AtomicU64,
    /// Requests failing now (for the log: one line when the brokers start
    /// failing, one when they take messages again).
    failing: AtomicUsize,
}

impl Shared {
    fn new(cfg: &SinkConfig, ctx: &SinkContext) -> Shared {
        let f = ctx.telemetry.figures(NAME);
        let figures = Figures {
            produced: f.counter("messages_produced", "Messages the brokers acknowledged (acks = all)"),
            dead_lettered: f.counter("messages_dead_lettered", "Messages the brokers refused for good, written to the dead-letter file"),
            retries: f.counter("produce_retries", "Produce attempts that failed and are retried"),
            in_flight: f.gauge("requests_in_flight", "Produce requests waiting for the brokers"),
            failing: f.gauge("brokers_failing", "1 while produce requests fail (brokers down, unknown topic, refused credentials)"),
        };
        let dead_letter_path =
            cfg.dead_letter_file.clone().unwrap_or_else(|| crate::state_dir::StateDir::new(&ctx.state_dir).kafka_dead_letter());
        Shared {
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
            pending: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            failing: AtomicUsize::new(0),
        }
    }

    fn hold(&self, batch: &Batch) -> Arc<Held> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let receipt = batch.receipt();
        lock(&self.pending).insert((receipt.observed_ms, id), ());
        self.update_oldest();
        Arc::new(Held { remaining: AtomicUsize::new(batch.records.len()), receipt, id })
    }

    /// `n` messages of `h` are handled; acknowledges the batch when none
    /// remain.
    fn handled(&self, h: &Held, n: usize) {
        if h.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            h.receipt.ack();
            self.stats.delivered(h.receipt.records, h.receipt.observed_ms, now_ms());
            lock(&self.pending).remove(&(h.receipt.observed_ms, h.id));
            self.update_oldest();
        }
    }

    /// The messages at `ix` of `req` are handled.
    fn handled_each(&self, req: &Request, ix: impl Iterator<Item = usize>) {
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
        let oldest = lock(&self.pending).keys().next().map_or(0, |(o, _)| *o);
        self.stats.set_oldest_pending(oldest);
    }

    /// Sends `req` until every message is acknowledged or dead-lettered,
    /// or `stop` is cancelled (what is left stays unacknowledged).
    async fn send(self: Arc<Self>, mut req: Request, stop: CancellationToken) {
        let mut attempt = 0u32;
        let mut failing = false;
        let mut done = false;
        while !done {
            let outcome = tokio::select! {
                _ = stop.cancelled() => break,
                o = self.producer.attempt(&req.units) => o,
            };
            let (keep, reason) = match outcome {
                Outcome::Delivered => {
                    self.figures.produced.add(req.units.len() as u64);
                    self.handled_each(&req, 0..req.units.len());
                    (Vec::new(), String::new())
                }
                Outcome::Partial { items, reason } => {
                    let done: Vec<usize> = (0..items.len()).filter(|&i| items[i] == Item::Done).collect();
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
                done = true;
                break;
            }
            if keep.len() != req.units.len() {
                req = Request { units: req.units.select(&keep), owners: keep.iter().map(|&i| req.owners[i].clone()).collect() };
            }
            self.figures.retries.inc();
            self.stats.retried();
            if !failing {
                failing = true;
                if self.failing.fetch_add(1, Ordering::AcqRel) == 0 {
                    self.figures.failing.set(1);
                    tracing::warn!(destination = %self.producer.destination(), reason = %Escaped(&reason), "kafka: the brokers do not take the messages; retrying with backoff for as long as it takes");
                }
            }
            self.brokers_fault.failed(&reason);
            let wait = backoff(attempt, self.cfg.retry_initial, self.cfg.retry_max);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if failing && self.failing.fetch_sub(1, Ordering::AcqRel) == 1 && done {
            self.figures.failing.set(0);
            self.brokers_fault.recovered();
            tracing::info!(destination = %self.producer.destination(), "kafka: the brokers take messages again");
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
    fn take(&mut self) -> Option<Request> {
        if self.units.is_empty() {
            return None;
        }
        let b = std::mem::take(self);
        Some(Request { units: b.units, owners: b.owners })
    }
}

/// Runs until the queue closes (then sends what is batched within the
/// grace period) or `shutdown` is cancelled.
async fn run(sh: Arc<Shared>, mut rx: mpsc::Receiver<Arc<Batch>>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    // Cancelled when senders must give up (shutdown, or the grace period
    // is over): what they hold stays unacknowledged.
    let abandon = shutdown.child_token();
    let mut b = Builder::default();
    let mut flush_at: Option<Instant> = None;
    let far = || Instant::now() + Duration::from_secs(86_400);
    let mut closed = false;
    loop {
        if flush_at.is_some_and(|t| t <= Instant::now()) {
            flush_at = None;
            if let Some(req) = b.take() {
                if !dispatch(&sh, req, &tracker, &abandon, &shutdown).await {
                    break;
                }
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(far)), if flush_at.is_some() => {}
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
                            if let Some(req) = b.take() {
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
        if let Some(req) = b.take() {
            tokio::select! {
                _ = dispatch(&sh, req, &tracker, &abandon, &shutdown) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        tracker.close();
        tokio::select! {
            _ = tracker.wait() => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(grace_ms = sh.cfg.shutdown_grace.as_millis() as u64, "kafka: shutdown grace period over with messages not acknowledged by the brokers; they are read again after the restart");
            }
            _ = shutdown.cancelled() => {}
        }
    }
    abandon.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
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
    let permit = tokio::select! {
        _ = shutdown.cancelled() => return false,
        p = sh.permits.clone().acquire_owned() => match p {
            Ok(p) => p,
            Err(_) => return false,
        },
    };
    let (sh, stop) = (sh.clone(), abandon.clone());
    tracker.spawn(async move {
        sh.figures.in_flight.inc();
        sh.clone().send(req, stop).await;
        sh.figures.in_flight.dec();
        drop(permit);
    });
    true
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
