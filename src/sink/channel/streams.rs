//! The channels of the listener at run time: the default channel
//! (`[channel]`) and the `[[channel.stream]]` channels, each with its
//! slot in the replay log ([`super::slots`]), its record filter, its
//! tokens and its own limits and figures.
//!
//! A [`ChannelSet`] is one consistent view (the channels and the routes
//! the sink applies to each record); a reload builds a new one and swaps
//! it in whole. A channel whose identity (id and filter) stays is the
//! same [`Chan`] across a reload: its tokens, limits, batching and
//! masking change in place, and its clients stay. Tokens rotate without a
//! gap: a token that stays keeps its [`TokenState`] (its clients are
//! untouched, a new `not_after` applies to them too), a token that goes
//! is revoked (its clients close with 1008 `token revoked`), a token past
//! its `not_after` closes its clients (1008 `token expired`) and opens
//! nothing more.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::close::CloseReason;
use super::config::{ChannelConfig, ChannelToken};
use super::request::{Directory, Door, TokenDigest};
use super::route::{Route, RouteFilter, Routes};
use super::slots::Slot;
use super::stats::{ChannelStats, StreamStats};
use crate::mask::Masking;
use crate::telemetry::Gauge;

/// A token at run time (the token itself is not kept).
pub(crate) struct TokenState {
    /// The digest a presented token is compared with.
    pub digest: TokenDigest,
    /// Its name in figures and logs (label or digest prefix).
    pub name: String,
    /// Its `not_after` (epoch ms); a reload may move it (shared by the
    /// states of one token under two labels).
    pub not_after: Arc<watch::Sender<Option<i64>>>,
    /// Cancelled when a reload removes the token.
    pub revoked: CancellationToken,
    /// Its connections open now (`token_connections`).
    pub connections: Gauge,
}

/// What a stream or the default channel is configured as (from a
/// [`ChannelConfig`]).
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// The id in its path (the default channel: `channel_id`).
    pub id: String,
    /// True for the default channel.
    pub default: bool,
    /// Its identity: a digest of id and filter (empty for the default).
    pub identity: String,
    /// Its filter.
    pub filter: RouteFilter,
    /// Its tokens.
    pub tokens: Vec<ChannelToken>,
    /// Connections allowed at once.
    pub max_connections: usize,
    /// Records per message for clients that ask for none.
    pub records_per_message: usize,
    /// Characters kept at each end of masked keys.
    pub mask_keep: Option<usize>,
}

/// The channels a config asks for: the default one (when it has a
/// token), then the streams in their order.
pub(crate) fn specs(c: &ChannelConfig) -> Vec<Spec> {
    let mut out = Vec::with_capacity(c.streams.len() + 1);
    if !c.tokens.is_empty() {
        out.push(Spec {
            id: c.channel_id.clone(),
            default: true,
            identity: String::new(),
            filter: RouteFilter::default(),
            tokens: c.tokens.clone(),
            max_connections: c.max_connections,
            records_per_message: c.records_per_message,
            mask_keep: c.mask_keep,
        });
    }
    for s in &c.streams {
        out.push(Spec {
            id: s.id.clone(),
            default: false,
            identity: super::slots::identity(&s.id, &s.filter.canonical()),
            filter: s.filter.clone(),
            tokens: s.tokens.clone(),
            max_connections: s.max_connections,
            records_per_message: s.records_per_message,
            mask_keep: s.mask_keep,
        });
    }
    out
}

/// One channel at run time.
pub(crate) struct Chan {
    /// The id in its path, and its `channel` label.
    pub id: String,
    /// True for the default channel (every record; `lost` counts as before
    /// channels existed).
    pub default: bool,
    /// Its identity ([`Spec::identity`]).
    pub identity: String,
    /// Its slot in the replay log.
    pub slot: Slot,
    /// Its filter (fixed: a changed filter is a new channel).
    pub filter: RouteFilter,
    /// Its tokens.
    tokens: RwLock<Arc<Vec<Arc<TokenState>>>>,
    /// Connections allowed at once.
    max_connections: AtomicUsize,
    /// Records per message for clients that ask for none.
    records_per_message: AtomicUsize,
    /// Characters kept at each end of masked keys (`usize::MAX`: none).
    mask_keep: AtomicUsize,
    /// Connections admitted and not yet closed.
    admitted: AtomicUsize,
    /// Its figures.
    pub stats: StreamStats,
    /// Cancelled when a reload removes the channel (or changes its
    /// filter); `closing` says why.
    pub close: CancellationToken,
    /// Why it is being closed.
    pub closing: OnceLock<CloseReason>,
}

impl Chan {
    /// A channel for `spec` in `slot`.
    pub fn new(spec: &Spec, slot: Slot, stats: &ChannelStats) -> Arc<Chan> {
        let chan = Arc::new(Chan {
            id: spec.id.clone(),
            default: spec.default,
            identity: spec.identity.clone(),
            slot,
            filter: spec.filter.clone(),
            tokens: RwLock::new(Arc::new(Vec::new())),
            max_connections: AtomicUsize::new(spec.max_connections),
            records_per_message: AtomicUsize::new(spec.records_per_message),
            mask_keep: AtomicUsize::new(spec.mask_keep.unwrap_or(usize::MAX)),
            admitted: AtomicUsize::new(0),
            stats: stats.stream(&spec.id),
            close: CancellationToken::new(),
            closing: OnceLock::new(),
        });
        chan.set_tokens(&spec.tokens, stats);
        chan
    }

    /// The slot's bit.
    pub fn bit(&self) -> u64 {
        self.slot.bit()
    }

    /// True when the record numbered `seq` with channels `bits` is this
    /// channel's.
    #[inline]
    pub fn sees(&self, seq: u64, bits: u64) -> bool {
        bits & self.bit() != 0 && seq >= self.slot.from_seq
    }

    /// Records per message for clients that ask for none.
    pub fn records_per_message(&self) -> usize {
        self.records_per_message.load(Ordering::Relaxed)
    }

    /// Its masking.
    pub fn masking(&self) -> Masking {
        Masking::both(Some(self.mask_keep.load(Ordering::Relaxed)).filter(|&k| k != usize::MAX))
    }

    /// Connections allowed at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// Its tokens now.
    pub fn tokens(&self) -> Arc<Vec<Arc<TokenState>>> {
        self.tokens.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes a connection slot, unless `max_connections` are open.
    pub fn try_admit(self: &Arc<Self>) -> Option<Admission> {
        let max = self.max_connections();
        self.admitted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Admission { chan: self.clone() })
    }

    /// Puts `tokens` in force: a token that stays keeps its state (and
    /// takes its new `not_after`), a new one is added, one that is gone
    /// is revoked (its clients close). Returns how many were revoked.
    pub fn set_tokens(&self, tokens: &[ChannelToken], stats: &ChannelStats) -> usize {
        let mut cur = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<Arc<TokenState>> = Vec::with_capacity(tokens.len());
        for t in tokens {
            let name = t.name();
            let digest = TokenDigest::of(t.secret.expose());
            let state = match cur.iter().find(|s| s.digest.same(&digest)) {
                Some(s) => {
                    s.not_after.send_if_modified(|na| std::mem::replace(na, t.not_after) != t.not_after);
                    if s.name == name {
                        s.clone()
                    } else {
                        // A new label: a new series; the clients stay.
                        Arc::new(TokenState {
                            digest,
                            name: name.clone(),
                            not_after: s.not_after.clone(),
                            revoked: s.revoked.clone(),
                            connections: stats.token(&self.id, &name),
                        })
                    }
                }
                None => Arc::new(TokenState {
                    digest,
                    name: name.clone(),
                    not_after: Arc::new(watch::Sender::new(t.not_after)),
                    revoked: CancellationToken::new(),
                    connections: stats.token(&self.id, &name),
                }),
            };
            next.push(state);
        }
        let mut revoked = 0;
        for old in cur.iter() {
            if !next.iter().any(|n| n.digest.same(&old.digest)) {
                old.revoked.cancel();
                revoked += 1;
                info!(channel = %self.id, token = %old.name, "channel: token removed; its clients are closed (1008 token revoked)");
            }
        }
        *cur = Arc::new(next);
        revoked
    }

    /// Applies a reload's settings to a channel whose identity stays.
    pub fn update(&self, spec: &Spec, stats: &ChannelStats) {
        self.max_connections.store(spec.max_connections, Ordering::Relaxed);
        self.records_per_message.store(spec.records_per_message, Ordering::Relaxed);
        self.mask_keep.store(spec.mask_keep.unwrap_or(usize::MAX), Ordering::Relaxed);
        self.set_tokens(&spec.tokens, stats);
    }

    /// Closes every client of the channel (removed, or its filter changed).
    pub fn close_for(&self, reason: CloseReason) {
        let _ = self.closing.set(reason);
        self.close.cancel();
        for t in self.tokens().iter() {
            // Their series go with the channel.
            t.connections.set(0);
        }
    }
}

/// A connection slot of a channel, given back when dropped.
pub(crate) struct Admission {
    /// The channel.
    chan: Arc<Chan>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.chan.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The channels in force, and the routes the sink applies (the channels
/// in the same order).
pub(crate) struct ChannelSet {
    /// The channels: the default one first when it has a token.
    pub chans: Vec<Arc<Chan>>,
    /// Their routes, index for index.
    pub routes: Routes,
}

impl ChannelSet {
    /// The set of these channels.
    pub fn new(chans: Vec<Arc<Chan>>) -> ChannelSet {
        let routes = Routes::new(chans.iter().map(|c| Route { bit: c.bit(), filter: c.filter.clone(), masking: c.masking() }).collect());
        ChannelSet { chans, routes }
    }

    /// Rebuilds the routes (a masking changed).
    pub fn rerouted(&self) -> ChannelSet {
        ChannelSet::new(self.chans.clone())
    }

    /// The channel with this identity and id.
    pub fn find(&self, spec: &Spec) -> Option<&Arc<Chan>> {
        self.chans.iter().find(|c| c.default == spec.default && c.id == spec.id && c.identity == spec.identity)
    }

    /// Records left out by each channel's filter in a batch
    /// (`filtered[i]` for `chans[i]`).
    pub fn note_filtered(&self, filtered: &[u64]) {
        for (c, n) in self.chans.iter().zip(filtered) {
            if *n > 0 {
                c.stats.records_filtered.add(*n);
            }
        }
    }

    /// Subscribers the listener may hold: every channel's
    /// `max_connections`.
    pub fn capacity(&self) -> usize {
        self.chans.iter().fold(0usize, |n, c| n.saturating_add(c.max_connections()))
    }

    /// Admission's view: the area and every channel's id and tokens
    /// (`tokens[i]` are `chans[i]`'s, taken once for the request).
    pub fn directory<'a>(&self, area: &'a str, ids: &'a [String], tokens: &'a [Arc<Vec<Arc<TokenState>>>]) -> Directory<'a> {
        let doors = ids
            .iter()
            .zip(tokens)
            .map(|(id, ts)| Door { id, tokens: ts.iter().map(|t| (&t.digest, *t.not_after.borrow())).collect() })
            .collect();
        Directory { area, doors }
    }
}
