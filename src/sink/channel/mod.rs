//! The channel sink: a local Call Log Stream that existing stream clients
//! use unchanged, over WebSocket (`ws://`, or `wss://` with `tls_cert` /
//! `tls_key`).
//!
//! # Wire protocol
//!
//! - URL: `ws://HOST:PORT/ecls/subscribe/<channel_id>/<area>?key=<token>`
//!   (the hosted stream's form) or `ws://HOST:PORT/stream?key=<token>`.
//!   A request that is not a WebSocket upgrade (a browser, `curl`): HTTP
//!   426 with a line saying how to subscribe (405 for a method other than
//!   GET). Wrong path: HTTP 404. Missing or wrong token: HTTP 401, nothing
//!   is upgraded. Bad `since` / `status`: HTTP 400. A request head over
//!   16 KiB or 32 headers: HTTP 431. More than `max_connections` open:
//!   HTTP 503 with `Retry-After: 5` and the reason in the body (`too many
//!   connections: ...`). Every refusal has a one-line plain-text body.
//! - A handshake must complete within 10 s; besides the subscribers, at
//!   most [`MAX_PENDING_HANDSHAKES`] sockets may be in their handshake,
//!   and when they are all taken the one pending longest is closed for the
//!   newest connection ([`crate::listener`]).
//! - Each server message is a text frame `{"data":[record,...],"seq":N}`:
//!   records in the `ecls` shape (every value a JSON string), at most
//!   `records_per_message` of them (default 1, the compatibility mode; with
//!   more, a partly filled message waits at most 5 ms for more records).
//!   `seq` (a JSON number) is the sequence number of the last record in the
//!   message. Sequence numbers increase by one per record the channel
//!   receives, and keep increasing across restarts (`<state_dir>/channel.seq`,
//!   reserved in blocks growing from 1024 to a million numbers; a
//!   reservation that cannot be written holds the batch, unacknowledged,
//!   and is retried on a timer).
//! - Without `since`, a subscription starts at the live head (records
//!   appended after it is admitted). `?since=S`: replay from record S
//!   (inclusive), then live, with no gap and no duplicate, also across
//!   restarts of the bridge: the records are kept in the replay log on disk
//!   ([`replay`], `<state_dir>/replay`, within `replay_max_bytes` and
//!   `replay_max_age_secs`). A client reconnects with `since = <last seq> +
//!   1`.
//! - Notices ([`Notice`]) are messages with an empty `data` and no `seq`,
//!   with `since` (where the client asked to start, or had got to) and
//!   `next` (where the stream goes on; a reconnect after a notice asks from
//!   there). `{"data":[],"lost":N,"since":S,"first_available":F,"next":F}`:
//!   records S to F−1 are gone, `N = F - S`: S is older than the oldest
//!   record held, or damage in the replay log destroyed them (sent where
//!   the stream reaches them). (After a crash of the bridge, sequence
//!   numbers jump ahead by up to one reservation block, so N may count
//!   numbers that were never used.) `{"data":[],"since":S,"next":N}`: S is
//!   beyond the newest record, a number from another history (before a
//!   `reset-state`, another bridge); the stream goes on live at N.
//! - Filters: `service_id=a,b`, `api_key=k1,k2`, `status=200,4xx,5xx`. A
//!   filtered client's `seq` still refers to the channel's numbering.
//! - Client text frames are answered with a text frame
//!   `Response To <their text>`; binary frames are ignored. Pings are
//!   answered (the latest one, when the client does not read the answers:
//!   a connection reads on after a ping only once its pong is written,
//!   `stall`); the server pings every `ping_interval_secs` and closes a
//!   connection from which nothing was read for two intervals
//!   (1008 `ping timeout`). Whatever a client does, its connection holds
//!   at most [`CONNECTION_MEMORY_BYTES`] plus three records, charged to
//!   the memory budget while held.
//! - Close codes: 1001 on shutdown; 1013 `slow consumer` when the records a
//!   client still has to read fall out of the replay log's retention (a
//!   client that is merely behind reads from disk and is never closed for
//!   it); 1011 `replay log unreadable` when its segment cannot be read (an
//!   I/O error: damage is skipped, with a `lost` notice);
//!   1008 `token revoked` when a reload ([`ChannelHandle::reconfigure`],
//!   [`ChannelHandle::set_token`]) removes the client's token, 1008
//!   `token expired` when its `not_after` passes, 1012 `channel changed`
//!   when a reload removes its stream or changes its filter; for a client's
//!   protocol violation (RFC 6455) 1002 (unmasked frame, reserved bits, bad
//!   opcode), 1007 (text that is not UTF-8), 1009 (a frame or message over
//!   64 KiB).
//!
//! # Shape
//!
//! The sink task receives `Arc<Batch>`, serialises each record once
//! (masked with `mask_keep`, by the one rule of [`crate::mask`]), appends it to the [`replay`] log (one
//! `write()`; fsynced in groups about once a second), wakes the
//! connections, and acknowledges the batch: it never waits for a client.
//! A batch the log cannot take (a full disk) stays unacknowledged and is
//! retried, shown as a fault. Each connection (`conn`) reads the log from
//! its own cursor, from memory when it keeps up and from disk when it is
//! behind, so a stalled client costs no memory and slows nothing.
//! When `listen` has port 0, the bound address is logged and written to
//! `<state_dir>/channel.addr`.

mod close;
mod config;
mod conn;
pub mod replay;
pub mod request;
pub mod route;
pub mod slots;
mod stall;
pub mod stats;
mod streams;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::budget::MemoryBudget;
use crate::checkpoint::DamagedState;
use crate::listener::{Bound, Gate};
use crate::pipeline::{Batch, Fanout};
use crate::settings::{ConfigError, Secret};
use crate::telemetry::SinkStats;
use crate::time::now_ms;

use close::CloseReason;
pub use config::{digest_name, ChannelConfig, ChannelSection, ChannelToken, StreamConfig, TlsFiles, MAX_STREAMS};
use conn::{ConnState, Registry, Start};
pub use conn::{Notice, CONNECTION_MEMORY_BYTES};
use replay::{Damage, Entry, Evicted, Item, ReplayLog, Retention};
pub use stats::{ChannelStats, StreamStats};
use streams::{Chan, ChannelSet, Spec};

use super::{Keys, Needs, SinkContext, SinkHandle};

/// The config section.
pub const SECTION: &str = "channel";

/// The sink's name in statistics and logs.
pub const NAME: &str = "channel";

/// The config key of the listen address.
const LISTEN_KEY: &str = "channel.listen";

/// File in the state directory holding the channel's bound address.
pub const ADDR_FILE: &str = crate::state_dir::StateDir::CHANNEL_ADDR;

/// File in the state directory holding the next sequence number to use.
pub const SEQ_FILE: &str = crate::state_dir::StateDir::CHANNEL_SEQ;

/// Sequence numbers reserved on disk at a time, at most: the file is
/// rewritten (fsynced) once per block, and a crash skips at most one block.
const SEQ_BLOCK: u64 = 1_000_000;

/// The first block of a run; each next one is twice as large, up to
/// [`SEQ_BLOCK`]: a crash soon after a start skips few numbers, and a busy
/// channel still writes the file rarely (about ten extra writes per run).
const SEQ_FIRST_BLOCK: u64 = 1024;

/// Handshakes (TCP accepted, not yet upgraded or refused) in progress at
/// once, besides the `max_connections` subscribers: the listener holds at
/// most this many sockets more. When they are all taken, the one pending
/// longest is closed to admit the newest connection, so sockets that never
/// complete a handshake cannot lock legitimate clients out (a real client
/// finishes its handshake in milliseconds).
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// How often the replay log's retention and figures are checked without
/// traffic.
const TICK_INTERVAL: Duration = Duration::from_millis(250);

/// The replay log is fsynced at most this often (and at every sealed
/// segment and at shutdown), never per batch.
const REPLAY_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// At shutdown, connections may take this long to send what they have
/// not sent yet before they are closed with 1001.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The channel as a [`super::Sink`].
pub struct ChannelSink;

impl super::Sink for ChannelSink {
    const SECTION: &'static str = SECTION;
    const NAME: &'static str = NAME;
    type Section = ChannelSection;
    type Config = ChannelConfig;
    type Handle = ChannelHandle;
    type Update = ChannelConfig;

    fn config(section: ChannelSection, base: &Path) -> Result<ChannelConfig, ConfigError> {
        ChannelConfig::from_section(section, base)
    }

    fn keys(k: &mut Keys<ChannelConfig>) {
        // Fixed while the channel runs: its listener, subscribe path, TLS
        // and replay log retention.
        k.restart(LISTEN_KEY, |c| &mut c.listen)
            .restart("channel.channel_id", |c| &mut c.channel_id)
            .restart("channel.area", |c| &mut c.area)
            .restart("channel.tls_cert", |c| &mut c.tls)
            .restart("channel.replay_max_bytes", |c| &mut c.replay_max_bytes)
            .restart("channel.replay_max_age_secs", |c| &mut c.replay_max_age);
        // Applied by ChannelHandle::reconfigure: tokens at once (clients of
        // a token removed are closed, the others stay), the streams (added,
        // removed, their filters, tokens and limits), connection limits,
        // batching and pings for connections opened after the reload,
        // masking for records appended after it.
        k.live("channel.token", |c| &mut c.tokens)
            .live("channel.stream", |c| &mut c.streams)
            .live("channel.max_connections", |c| &mut c.max_connections)
            .live("channel.records_per_message", |c| &mut c.records_per_message)
            .live("channel.ping_interval_secs", |c| &mut c.ping_interval)
            .live("channel.mask_keep", |c| &mut c.mask_keep);
    }

    fn needs(cfg: &ChannelConfig, needs: &mut Needs) {
        needs.listeners.push((LISTEN_KEY, cfg.listen));
        for (i, st) in cfg.streams.iter().enumerate() {
            for (field, _) in &st.filter.fields {
                needs.lookup_fields.push((format!("channel.stream[{i}].{}", field.name()), *field));
            }
        }
    }

    fn summary(ch: &ChannelConfig) -> String {
        let scheme = if ch.tls.is_some() { "wss" } else { "ws" };
        // One line per channel: the default one, then each stream.
        let mut out = if ch.tokens.is_empty() {
            format!("{scheme}://{} (/stream: the channel of the token); default channel off (no token)", ch.listen)
        } else {
            format!(
                "{scheme}://{}/ecls/subscribe/{}/{} (and /stream), {}, every record, at most {} connection(s)",
                ch.listen,
                ch.channel_id,
                ch.area,
                describe_tokens(&ch.tokens),
                ch.max_connections
            )
        };
        for st in &ch.streams {
            out.push_str(&format!(
                "\n               stream {}: /ecls/subscribe/{}/{}, {}, {}, at most {} connection(s){}",
                st.id,
                st.id,
                ch.area,
                describe_tokens(&st.tokens),
                st.filter.describe(),
                st.max_connections,
                st.mask_keep.map(|k| format!(", keys masked keeping {k}")).unwrap_or_default()
            ));
        }
        out
    }

    async fn start(
        cfg: &ChannelConfig,
        ctx: &SinkContext,
        fanout: &mut Fanout,
        listeners: &mut Bound,
    ) -> anyhow::Result<(SinkHandle, ChannelHandle)> {
        start(cfg, ctx, fanout, listeners.take(LISTEN_KEY)).await
    }

    fn prepare(cfg: &ChannelConfig) -> anyhow::Result<ChannelConfig> {
        Ok(cfg.clone())
    }

    fn reconfigure(handle: &ChannelHandle, cfg: ChannelConfig) {
        handle.reconfigure(&cfg);
    }
}

/// The tokens of a channel, for `check-config`: how many, where from,
/// until when (never the tokens).
fn describe_tokens(tokens: &[ChannelToken]) -> String {
    let names: Vec<String> = tokens
        .iter()
        .map(|t| {
            let from = match &t.file {
                Some(p) => format!(" from {}", p.display()),
                None => " inline".into(),
            };
            let until = t.not_after.map(|na| format!(" until {}", crate::time::format_iso_seconds(na))).unwrap_or_default();
            format!("{}{from}{until}", t.name())
        })
        .collect();
    format!("{} token(s): {}", tokens.len(), names.join(", "))
}

/// The listener-wide settings a reload changes on a running channel
/// (the per-channel ones live in each [`streams::Chan`]).
pub(crate) struct LiveSettings {
    /// Ping every this long; a client silent for two intervals is closed.
    ping_interval_ms: AtomicU64,
}

impl LiveSettings {
    fn new(c: &ChannelConfig) -> Self {
        let live = LiveSettings { ping_interval_ms: AtomicU64::new(0) };
        live.set(c);
        live
    }

    fn set(&self, c: &ChannelConfig) {
        self.ping_interval_ms.store(u64::try_from(c.ping_interval.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Ping interval.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms.load(Ordering::Relaxed))
    }
}

/// State shared by the sink task, the listener and every connection.
pub(crate) struct ChannelShared {
    /// Settings as started (the fixed ones: paths, retention; the live
    /// ones are read from `live` and the channels).
    pub settings: ChannelConfig,
    /// Settings a reload changes.
    pub live: LiveSettings,
    /// The replay log (short critical sections only: append with one
    /// `write()`, plan a read, copy hot Arcs; disk reads run outside).
    log: Mutex<ReplayLog>,
    /// The log's `next_seq` after the latest append; connections wait on it.
    pub head: watch::Sender<u64>,
    /// The channels in force (swapped whole by a reload).
    channels: RwLock<Arc<ChannelSet>>,
    /// The slot file; held while a reload puts new streams in force.
    slots: tokio::sync::Mutex<slots::Slots>,
    /// Reloads so far: a reload's new streams are put in force only while
    /// no later reload came.
    generation: AtomicU64,
    /// The listener's socket cap (grows when a reload raises the
    /// channels' `max_connections`).
    gate: Gate,
    /// Open connections, for the retention check.
    conns: Registry,
    /// Id of the next connection.
    next_conn_id: AtomicU64,
    /// Channel statistics.
    pub stats: ChannelStats,
    /// The memory budget: what connections hold is charged to it.
    pub budget: Arc<MemoryBudget>,
    /// Cancelled at shutdown once no more records will come: connections
    /// send what they have, then close with 1001.
    pub draining: CancellationToken,
    /// Cancelled to stop now: the listener stops and connections close
    /// with 1001 at once.
    pub stop: CancellationToken,
}

impl ChannelShared {
    /// The channels in force.
    pub(crate) fn channel_set(&self) -> Arc<ChannelSet> {
        self.channels.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `set` in force, unless a later reload than `generation` came
    /// (its own set wins); closes the channels it drops, grows the
    /// listener's cap to fit, keeps the figures of its channels only.
    fn publish(&self, set: ChannelSet, generation: u64) {
        let old = {
            let mut cur = self.channels.write().unwrap_or_else(|e| e.into_inner());
            if self.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            std::mem::replace(&mut *cur, Arc::new(set))
        };
        let now = self.channel_set();
        for c in &old.chans {
            if !now.chans.iter().any(|n| Arc::ptr_eq(n, c)) {
                let gone = !now.chans.iter().any(|n| n.id == c.id);
                let reason = if gone { "removed" } else { "changed (its filter)" };
                info!(channel = %c.id, "channel: channel {reason} by the reload; its clients are closed");
                c.close_for(CloseReason::ChannelChanged);
            }
        }
        self.gate.grow(now.capacity() + MAX_PENDING_HANDSHAKES);
        let ids: Vec<&str> = now.chans.iter().map(|c| c.id.as_str()).collect();
        let tokens: Vec<Vec<String>> = now.chans.iter().map(|c| c.tokens().iter().map(|t| t.name.clone()).collect()).collect();
        let pairs: Vec<(&str, &str)> =
            now.chans.iter().zip(&tokens).flat_map(|(c, ts)| ts.iter().map(move |t| (c.id.as_str(), t.as_str()))).collect();
        self.stats.keep(&ids, &pairs);
    }

    /// How many of the records `first..=last` a `lost` notice to a client
    /// of `chan` counts (`None`: no notice, none of them was its). The
    /// default channel counts every number, as before channels had slots;
    /// a stream only its own records the log can still tell.
    pub(crate) fn lost_count(&self, chan: &Chan, first: u64, last: u64) -> Option<u64> {
        if last < first {
            return None;
        }
        if chan.default {
            return Some(last - first + 1);
        }
        let (known, unknown) = self.lock_log().count_for(chan.bit(), chan.slot.from_seq, first, last);
        (known > 0 || unknown > 0).then_some(known)
    }

    fn lock_log(&self) -> std::sync::MutexGuard<'_, ReplayLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection of `chan` and decides where it starts,
    /// atomically with respect to appends (under the log lock); a `lost`
    /// notice counts only `chan`'s records (none: no notice).
    pub(crate) fn register(&self, peer: SocketAddr, since: Option<u64>, chan: &Chan) -> (u64, Arc<ConnState>, Start) {
        let log = self.lock_log();
        let mut start = conn::start_for(since, log.first_seq(), log.next_seq());
        if let Some(Notice::Lost { since, first_available, .. }) = start.notice {
            if !chan.default {
                let (known, unknown) = log.count_for(chan.bit(), chan.slot.from_seq, since.max(1), first_available - 1);
                start.notice = (known > 0 || unknown > 0).then_some(Notice::Lost { since, first_available, lost: known });
            }
        }
        let state = conn::new_state(peer, log.next_seq(), start.cursor);
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        self.lock_conns().insert(id, state.clone());
        drop(log);
        (id, state, start)
    }

    /// Damage a connection's read met: kept by the log (later readers are
    /// told at once), logged and counted the first time.
    pub(crate) fn note_damage(&self, d: &Damage) {
        let new = self.lock_log().note_lost(d.lost.0, d.lost.1);
        if new > 0 {
            self.stats.replay_damaged_records.add(new);
            warn!(
                path = %d.path.display(),
                offset = d.offset,
                bytes = d.bytes,
                problem = d.problem,
                "channel: replay log damaged: records {}..={} lost, skipped to the next good record; clients get a lost notice",
                d.lost.0,
                d.lost.1
            );
        }
    }

    /// A segment file a connection found missing: its records are lost
    /// (clients get a lost notice), logged and counted.
    pub(crate) fn segment_gone(&self, path: &Path) {
        let gone = self.lock_log().segment_gone(path);
        if let Some((first, last)) = gone {
            self.stats.replay_damaged_records.add(last - first + 1);
            warn!(path = %path.display(), "channel: replay log segment removed from outside: records {first}..={last} lost; clients get a lost notice");
        }
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.lock_conns().remove(&id);
    }

    /// Plans a read of records `from..` (see [`ReplayLog::read`]).
    pub(crate) fn read_log(&self, from: u64, max_records: usize, max_bytes: usize, out: &mut Vec<Entry>) -> Result<replay::Plan, Evicted> {
        self.lock_log().read(from, max_records, max_bytes, out)
    }

    /// The oldest sequence number the log holds.
    pub(crate) fn first_seq(&self) -> u64 {
        self.lock_log().first_seq()
    }

    /// Applies the retention; closes every connection whose next record
    /// fell out of it (1013 `slow consumer`): it could not be served
    /// without a gap.
    fn retain(&self) {
        let (removed, first) = {
            let mut log = self.lock_log();
            let remade = match log.check_dir() {
                Some((first, last)) => {
                    let held = if first <= last {
                        format!("records {first}..={last} are no longer available for replay")
                    } else {
                        "it held no record".into()
                    };
                    warn!(dir = %log.dir().display(), "channel: replay log files were removed while running; new ones are written ({held})");
                    true
                }
                None => false,
            };
            let removed = log.retain(now_ms()) || remade;
            self.stats.replay(&log.figures(), log.next_seq() - 1, now_ms());
            (removed, log.first_seq())
        };
        if removed {
            for c in self.lock_conns().values() {
                if !c.close.is_cancelled() && c.cursor.load(Ordering::Relaxed) < first {
                    c.close_for(CloseReason::SlowConsumer);
                }
            }
        }
    }

    /// Appends records to the log and wakes the connections; on an error,
    /// `items` keeps the records not appended.
    fn append(&self, items: &mut Vec<Arc<Item>>) -> std::io::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let result = {
            let mut log = self.lock_log();
            let r = log.append(items, now_ms());
            self.head.send_replace(log.next_seq());
            r
        };
        match result {
            Ok(_) => {
                items.clear();
                self.retain();
                Ok(())
            }
            Err((done, e)) => {
                items.drain(..done);
                Err(e)
            }
        }
    }
}

/// Control of a running channel: its address, token reload and shutdown.
#[derive(Clone)]
pub struct ChannelHandle {
    /// ChannelShared state.
    shared: Arc<ChannelShared>,
    /// The address the listener is bound to.
    local_addr: SocketAddr,
}

impl ChannelHandle {
    /// The bound address (useful when `listen` has port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Makes `token` the default channel's only token: connections
    /// admitted with another one are closed (1008 `token revoked`); the
    /// same token again changes nothing.
    pub fn set_token(&self, token: Secret) {
        let set = self.shared.channel_set();
        if let Some(chan) = set.chans.iter().find(|c| c.default) {
            let t = ChannelToken { secret: token, file: None, not_after: None, label: None, key: "channel.token".into() };
            chan.set_tokens(&[t], &self.shared.stats);
            let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
            self.shared.publish(set.rerouted(), generation);
        }
    }

    /// Applies a reloaded `[channel]` section. Tokens at once: clients of a
    /// token the reload removed are closed (1008 `token revoked`), the
    /// others stay. Channels: one whose id and filter stay keeps its
    /// clients and takes its new tokens, limits, batching (for
    /// connections opened from now on) and masking (for records appended
    /// from now on: records already in the replay log keep theirs); a
    /// channel removed, or whose filter changed, closes its clients (1012
    /// `channel changed`); a new one (or a changed one) gets a slot in
    /// the replay log and receives the records appended from then on.
    /// `ping_interval_secs` for connections opened from now on. The other
    /// keys need a restart ([`ChannelSink`]'s keys).
    pub fn reconfigure(&self, c: &ChannelConfig) {
        let shared = &self.shared;
        shared.live.set(c);
        let generation = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let current = shared.channel_set();
        let specs = streams::specs(c);
        let mut kept: Vec<Option<Arc<Chan>>> = Vec::with_capacity(specs.len());
        for spec in &specs {
            let chan = current.find(spec).cloned();
            if let Some(chan) = &chan {
                chan.update(spec, &shared.stats);
            }
            kept.push(chan);
        }
        info!(channels = specs.len(), ping_interval_secs = c.ping_interval.as_secs(), "channel: settings reloaded");
        if kept.iter().all(Option::is_some) {
            shared.publish(ChannelSet::new(kept.into_iter().flatten().collect()), generation);
            return;
        }
        // New streams need slots, written to the slot file before any
        // record carries them: off this call, then put in force together.
        let shared = shared.clone();
        tokio::spawn(async move {
            let set = match new_channels(&shared, &specs, kept).await {
                Ok(set) => set,
                Err(e) => {
                    error!(error = %format!("{e:#}"), "channel: the reload's new streams cannot be started; the others are in force");
                    let set = shared.channel_set();
                    let kept: Vec<Arc<Chan>> =
                        set.chans.iter().filter(|c| specs.iter().any(|s| c.id == s.id && c.identity == s.identity)).cloned().collect();
                    ChannelSet::new(kept)
                }
            };
            shared.publish(set, generation);
        });
    }

    /// Stops now: no new connections; every connection is closed with 1001.
    pub fn shutdown(&self) {
        self.shared.stop.cancel();
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.lock_conns().len()
    }

    /// The ids of the channels in force (the default one first, when it
    /// has a token).
    pub fn channel_ids(&self) -> Vec<String> {
        self.shared.channel_set().chans.iter().map(|c| c.id.clone()).collect()
    }

    /// The channel's statistics.
    pub fn stats(&self) -> ChannelStats {
        self.shared.stats.clone()
    }

    /// The oldest sequence number the replay log holds.
    pub fn first_seq(&self) -> u64 {
        self.shared.first_seq()
    }

    /// The next sequence number the channel will assign.
    pub fn next_seq(&self) -> u64 {
        self.shared.lock_log().next_seq()
    }
}

/// The channels of `specs`: those in `kept` as they are, the others new,
/// with their slots assigned and written to the slot file first.
async fn new_channels(shared: &ChannelShared, specs: &[Spec], kept: Vec<Option<Arc<Chan>>>) -> anyhow::Result<ChannelSet> {
    let mut slots = shared.slots.lock().await;
    let next = shared.lock_log().next_seq();
    let wanted: Vec<(String, String)> = specs.iter().filter(|s| !s.default).map(|s| (s.id.clone(), s.identity.clone())).collect();
    let assigned = slots.assign(&wanted, next)?;
    slots.save().await?;
    let mut assigned = assigned.into_iter();
    let mut chans = Vec::with_capacity(specs.len());
    for (spec, chan) in specs.iter().zip(kept) {
        let slot = if spec.default { slots::Slot::DEFAULT } else { assigned.next().unwrap_or(slots::Slot::DEFAULT) };
        let chan = match chan {
            Some(c) => c,
            None => {
                info!(channel = %spec.id, slot = slot.slot, from_seq = slot.from_seq, filter = %spec.filter.describe(), "channel: stream started");
                Chan::new(spec, slot, &shared.stats)
            }
        };
        chans.push(chan);
    }
    Ok(ChannelSet::new(chans))
}

/// Starts the channel: binds `listen`, writes `<state_dir>/channel.addr`,
/// registers the sink's queue on `fanout`, and spawns the sink task.
pub async fn start(
    cfg: &ChannelConfig,
    ctx: &SinkContext,
    fanout: &mut Fanout,
    listener: Option<std::net::TcpListener>,
) -> anyhow::Result<(SinkHandle, ChannelHandle)> {
    let (tx, rx) = super::queue();
    let (handle, task) = spawn_on(cfg, ctx, rx, listener, fanout.budget().clone()).await?;
    fanout.add(NAME, tx);
    Ok((SinkHandle { name: NAME, task }, handle))
}

/// Like [`start`], but fed from the given queue (tests and benchmarks).
pub async fn spawn(
    cfg: &ChannelConfig,
    ctx: &SinkContext,
    rx: mpsc::Receiver<Arc<Batch>>,
) -> anyhow::Result<(ChannelHandle, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    spawn_on(cfg, ctx, rx, None, Arc::new(MemoryBudget::unbounded())).await
}

/// [`spawn`] on a listener bound beforehand ([`crate::preflight`] binds
/// every listener before the bridge starts); `None` binds `listen` here.
/// What connections hold is charged to `budget`.
pub async fn spawn_on(
    cfg: &ChannelConfig,
    ctx: &SinkContext,
    rx: mpsc::Receiver<Arc<Batch>>,
    listener: Option<std::net::TcpListener>,
    budget: Arc<MemoryBudget>,
) -> anyhow::Result<(ChannelHandle, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let settings = cfg.clone();
    let tls = match &cfg.tls {
        Some(t) => Some(TlsAcceptor::from(Arc::new(tls_config(&t.cert, &t.key)?))),
        None => None,
    };
    let listener = match listener {
        Some(l) => l,
        None => crate::listener::bind(LISTEN_KEY, cfg.listen)?,
    };
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let local_addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    info!("channel: listening on {scheme}://{local_addr}/ecls/subscribe/{}/{} (and /stream)", settings.channel_id, settings.area);
    tokio::fs::create_dir_all(&ctx.state_dir).await.with_context(|| format!("cannot create state_dir {}", ctx.state_dir.display()))?;
    // Informational (for tests and tools): a full state_dir must not stop
    // the channel from starting.
    let state = crate::state_dir::StateDir::new(&ctx.state_dir);
    if let Err(e) = write_atomic(&state.channel_addr(), format!("{local_addr}\n")).await {
        warn!(error = %format!("{e:#}"), "channel: cannot write {ADDR_FILE}");
    }
    // Where the dashboard (via /status) subscribes; never the token.
    let stats = ChannelStats::new(&ctx.telemetry);
    stats.set_endpoint(crate::telemetry::ChannelInfo { listen: local_addr.to_string(), tls: tls.is_some(), path: "/stream".into() });

    for w in &settings.deprecated {
        warn!("{w}");
    }
    let mut seqs = SeqFile::open(state.channel_seq()).await?;
    let log = open_log(&state.replay(), &settings, seqs.next, &stats).await?;
    // Numbers below the log's next are used: never again, even when
    // channel.seq was older than the log.
    seqs.next = log.next_seq();
    let (slot_file, problem) = slots::Slots::load(&ctx.state_dir);
    if let Some(p) = problem {
        warn!("channel: {p}");
    }
    let gate = Gate::new(NAME, settings.subscriber_capacity() + MAX_PENDING_HANDSHAKES);
    let shared = Arc::new(ChannelShared {
        head: watch::Sender::new(log.next_seq()),
        log: Mutex::new(log),
        channels: RwLock::new(Arc::new(ChannelSet::new(Vec::new()))),
        slots: tokio::sync::Mutex::new(slot_file),
        generation: AtomicU64::new(0),
        gate,
        conns: Mutex::new(Default::default()),
        next_conn_id: AtomicU64::new(1),
        stats,
        budget,
        draining: CancellationToken::new(),
        stop: ctx.shutdown.child_token(),
        live: LiveSettings::new(cfg),
        settings,
    });
    // The streams' slots are on disk before the first record is routed.
    let specs = streams::specs(cfg);
    let set = new_channels(&shared, &specs, specs.iter().map(|_| None).collect()).await.context("channel: cannot start the streams")?;
    for c in &set.chans {
        info!(channel = %c.id, filter = %c.filter.describe(), tokens = c.tokens().len(), "channel: serving");
    }
    shared.publish(set, 0);
    let handle = ChannelHandle { shared: shared.clone(), local_addr };
    let tracker = TaskTracker::new();
    tracker.spawn(accept_loop(shared.clone(), listener, tls, tracker.clone()));
    let sink_stats = ctx.telemetry.sink(NAME);
    let hard_stop = ctx.shutdown.clone();
    let fault = ctx.telemetry.fault(NAME);
    let task = tokio::spawn(async move {
        let result = sink_loop(&shared, rx, &sink_stats, &mut seqs, &hard_stop, &fault).await;
        // No more records: let connections send what they hold, then close.
        shared.draining.cancel();
        tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await.is_err() {
            shared.stop.cancel();
            tracker.wait().await;
        }
        shared.stop.cancel();
        // The last records reach the disk before the next number is saved.
        let job = shared.lock_log().take_sync();
        if let Err(e) = run_sync(job).await {
            warn!(error = %format!("{e:#}"), "channel: cannot fsync the replay log");
        }
        let next = shared.lock_log().next_seq();
        if let Err(e) = seqs.write_exact(next).await {
            warn!(error = %format!("{e:#}"), "channel: cannot save the next sequence number");
        }
        result
    });
    Ok((handle, task))
}

/// Receives batches until the queue closes or `hard_stop` (the bridge's
/// grace period is over). [`ChannelHandle::shutdown`] closes the clients
/// but not this loop, so the tailers never wait on a stopped channel.
async fn sink_loop(
    shared: &ChannelShared,
    mut rx: mpsc::Receiver<Arc<Batch>>,
    sink_stats: &SinkStats,
    seqs: &mut SeqFile,
    hard_stop: &CancellationToken,
    fault: &crate::telemetry::Fault,
) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut tick = tokio::time::interval(TICK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sync = Syncer::default();
    loop {
        let batch = tokio::select! {
            b = rx.recv() => match b {
                Some(b) => b,
                None => return Ok(()),
            },
            _ = tick.tick() => {
                shared.retain();
                sync.maybe_start(shared);
                continue;
            }
            _ = hard_stop.cancelled() => return Ok(()),
        };
        let n = batch.records.len();
        sink_stats.enqueued(n);
        // Each record's channels and texts, once (the filters, the
        // maskings), for every client of every channel.
        let set = shared.channel_set();
        let mut filtered = vec![0u64; set.chans.len()];
        let mut items: Vec<Arc<Item>> =
            batch.records.iter().map(|r| Arc::new(set.routes.item(r, batch.observed_ms, &mut filtered, &mut buf))).collect();
        set.note_filtered(&filtered);
        // Without a durable reservation, numbers could repeat after a
        // crash; without the records in the log, a `since` after a restart
        // would miss them. Either failure (a full state_dir) leaves the
        // batch unacknowledged, retried on a timer with the fault shown; the
        // bridge's hard stop leaves it unacknowledged (read again after the
        // restart).
        let mut failed = false;
        while !items.is_empty() {
            let next = shared.lock_log().next_seq();
            let step = match seqs.reserve(next + items.len() as u64).await {
                Ok(()) => shared.append(&mut items).map_err(|e| anyhow::Error::new(e).context("cannot append to the replay log")),
                Err(e) => Err(e.context("cannot reserve sequence numbers")),
            };
            if let Err(e) = step {
                failed = true;
                let delay = fault.failed(&format!("{e:#}"));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = hard_stop.cancelled() => return Ok(()),
                }
            }
        }
        if failed {
            fault.recovered();
        }
        batch.ack();
        // Delivered when a frame reaches a client (`frames_written`).
        sink_stats.handed_over(n);
    }
}

/// Runs the replay log's group fsyncs off the runtime, one at a time, at
/// most every [`REPLAY_SYNC_INTERVAL`].
#[derive(Default)]
struct Syncer {
    /// The fsync in progress.
    running: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// When the last one started.
    last: Option<std::time::Instant>,
}

impl Syncer {
    fn maybe_start(&mut self, shared: &ChannelShared) {
        if let Some(h) = &self.running {
            if !h.is_finished() {
                return;
            }
            if let Some(Some(Ok(Err(e)))) = self.running.take().map(futures_util::FutureExt::now_or_never) {
                warn!(error = %e, "channel: cannot fsync the replay log");
            }
        }
        if self.last.is_some_and(|t| t.elapsed() < REPLAY_SYNC_INTERVAL) {
            return;
        }
        match shared.lock_log().take_sync() {
            Ok(Some(job)) => {
                self.last = Some(std::time::Instant::now());
                self.running = Some(tokio::task::spawn_blocking(move || job.run()));
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "channel: cannot fsync the replay log"),
        }
    }
}

/// Runs a final fsync (shutdown).
async fn run_sync(job: std::io::Result<Option<replay::SyncJob>>) -> anyhow::Result<()> {
    if let Some(job) = job? {
        tokio::task::spawn_blocking(move || job.run()).await.context("replay log fsync panicked")??;
    }
    Ok(())
}

/// Opens the replay log, logging and counting what was repaired; a log
/// that cannot be read at all stops the start, naming its directory.
async fn open_log(dir: &Path, settings: &ChannelConfig, min_next: u64, stats: &ChannelStats) -> anyhow::Result<ReplayLog> {
    let max_age_ms = i64::try_from(settings.replay_max_age.as_millis()).unwrap_or(i64::MAX);
    let retention = Retention::new(settings.replay_max_bytes, max_age_ms);
    let path = dir.to_path_buf();
    let (mut log, repairs) = tokio::task::spawn_blocking(move || ReplayLog::open(&path, retention, min_next))
        .await
        .context("replay log scan panicked")?
        .with_context(|| format!("channel: cannot open the replay log {}", dir.display()))?;
    for r in &repairs {
        if r.truncated {
            // A write cut short by a kill: never acknowledged nor served.
            warn!(
                path = %r.path.display(),
                offset = r.offset,
                dropped_bytes = r.bytes,
                problem = r.problem,
                "channel: replay log segment truncated to its last whole record"
            );
            stats.replay_repaired_segments.inc();
            stats.replay_repaired_bytes.add(r.bytes);
        } else if let Some((first, last)) = r.lost {
            warn!(
                path = %r.path.display(),
                offset = r.offset,
                bytes = r.bytes,
                problem = r.problem,
                "channel: replay log damaged: records {first}..={last} lost, skipped to the next good record; clients get a lost notice"
            );
            stats.replay_damaged_records.add(last - first + 1);
        }
    }
    log.retain(now_ms());
    let f = log.figures();
    stats.replay(&f, log.next_seq() - 1, now_ms());
    info!(
        dir = %dir.display(),
        segments = f.segments,
        bytes = f.bytes,
        first_seq = f.first_seq,
        next_seq = log.next_seq(),
        "channel: replay log opened"
    );
    Ok(log)
}

/// Accepts sockets until stopped; each one is served on its own task.
/// A place in the listener's [`Gate`] is taken before each `accept`
/// (mini-redis) and filled by the accepted socket: the listener holds at
/// most every channel's `max_connections` subscribers plus
/// [`MAX_PENDING_HANDSHAKES`] sockets in their handshake.
async fn accept_loop(shared: Arc<ChannelShared>, listener: TcpListener, tls: Option<TlsAcceptor>, tracker: TaskTracker) {
    let gate = shared.gate.clone();
    loop {
        let vacancy = tokio::select! {
            s = gate.acquire() => s,
            _ = shared.stop.cancelled() => return,
            _ = shared.draining.cancelled() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shared.stop.cancelled() => return,
            _ = shared.draining.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                warn!(error = %e, "channel: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tracker.spawn(conn::serve(shared.clone(), tcp, peer, tls.clone(), vacancy.fill()));
    }
}

/// The rustls server config from PEM files (ring provider).
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let certs = {
        let pem = std::fs::read(cert).with_context(|| format!("channel.tls_cert: cannot read {}", cert.display()))?;
        rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("channel.tls_cert: {} is not a PEM certificate chain", cert.display()))?
    };
    if certs.is_empty() {
        anyhow::bail!("channel.tls_cert: no certificate in {}", cert.display());
    }
    let key = {
        let pem = std::fs::read(key).with_context(|| format!("channel.tls_key: cannot read {}", key.display()))?;
        rustls_pemfile::private_key(&mut pem.as_slice())
            .with_context(|| format!("channel.tls_key: {} is not a PEM private key", key.display()))?
            .with_context(|| format!("channel.tls_key: no private key in {}", key.display()))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("channel.tls_key: the key does not match the certificate")?;
    Ok(config)
}

/// The durable sequence-number reservation (`<state_dir>/channel.seq`).
///
/// The file holds a number below which sequence numbers may have been
/// used. Numbers are reserved a block at a time (the file is written and
/// fsynced before any number of the block is used); a clean shutdown writes
/// the exact next number, so numbering continues without a jump.
struct SeqFile {
    /// The file.
    path: PathBuf,
    /// The first number this run uses.
    next: u64,
    /// Numbers below this are reserved on disk.
    reserved_until: u64,
    /// The size of the next block reserved.
    block: u64,
}

impl SeqFile {
    async fn open(path: PathBuf) -> anyhow::Result<SeqFile> {
        let next = match tokio::fs::read(&path).await {
            Ok(bytes) => match parse_seq(&bytes) {
                Ok(n) => n,
                // Numbering again from a guess could repeat numbers clients
                // have seen: the operator decides (`reset-state`).
                Err(problem) => return Err(DamagedState { path, problem }.into()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut f = SeqFile { path, next, reserved_until: next, block: SEQ_FIRST_BLOCK };
        // A full state_dir must not stop the start: nothing is numbered
        // before a reservation is written, and the sink retries it (a
        // fault meanwhile) before its first record.
        if let Err(e) = f.reserve(next + 1).await {
            warn!(error = %format!("{e:#}"), "channel: cannot reserve sequence numbers yet; retried before the first record");
        }
        Ok(f)
    }

    /// Makes sure numbers below `until` are reserved on disk.
    async fn reserve(&mut self, until: u64) -> anyhow::Result<()> {
        if until <= self.reserved_until {
            return Ok(());
        }
        let new = until + self.block;
        write_durable(self.path.clone(), new).await?;
        self.reserved_until = new;
        self.block = (self.block * 2).min(SEQ_BLOCK);
        Ok(())
    }

    /// Records the exact next number (clean shutdown).
    async fn write_exact(&mut self, next: u64) -> anyhow::Result<()> {
        write_durable(self.path.clone(), next).await?;
        self.reserved_until = next;
        Ok(())
    }
}

/// The next sequence number a `channel.seq` holds, or what is wrong with it.
pub fn parse_seq(bytes: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "it does not hold a sequence number (not UTF-8)".to_string())?;
    match text.trim().parse::<u64>() {
        Ok(n) => Ok(n.max(1)),
        Err(e) => Err(format!("it does not hold a sequence number ({e}): {:?}", crate::parse::normalize::clip(text.trim(), 40))),
    }
}

/// Writes `value` to `path` durably (the directory fsync included: a
/// sequence number once promised is never handed out again, even after a
/// power loss), off the runtime.
async fn write_durable(path: PathBuf, value: u64) -> anyhow::Result<()> {
    let display = path.display().to_string();
    crate::state_dir::write_atomic_async(path, format!("{value}\n").into_bytes()).await.with_context(|| format!("cannot write {display}"))
}

/// Writes a small file atomically.
async fn write_atomic(path: &Path, text: String) -> anyhow::Result<()> {
    crate::state_dir::write_atomic_async(path.to_path_buf(), text.into_bytes())
        .await
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sequence_numbers_continue_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SEQ_FILE);
        let mut f = SeqFile::open(path.clone()).await.unwrap();
        assert_eq!(f.next, 1);
        // A crash after using some numbers: the next run starts past the block.
        f.reserve(10).await.unwrap();
        let g = SeqFile::open(path.clone()).await.unwrap();
        assert!(g.next >= 10, "{}", g.next);
        // Blocks grow from SEQ_FIRST_BLOCK to SEQ_BLOCK: a crash right after
        // a start skips few numbers.
        assert!(g.next <= 10 + 2 * SEQ_FIRST_BLOCK + 2, "{}", g.next);
        let mut b = SeqFile::open(path.clone()).await.unwrap();
        let mut sizes = Vec::new();
        for _ in 0..14 {
            let before = b.reserved_until;
            b.reserve(before + 1).await.unwrap();
            sizes.push(b.reserved_until - before - 1);
        }
        assert_eq!(sizes[0], 2 * SEQ_FIRST_BLOCK);
        assert_eq!(*sizes.last().unwrap(), SEQ_BLOCK);
        // A clean shutdown: exact continuation.
        let mut h = SeqFile::open(path.clone()).await.unwrap();
        h.write_exact(1234).await.unwrap();
        assert_eq!(SeqFile::open(path).await.unwrap().next, 1234);
    }
}
